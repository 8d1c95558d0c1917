-- Tracing (appliance/messaging/trace_links.py): a sent message keeps the traceparent
-- of its send span, so a receipt after a worker restart still joins the send's trace.
-- NULL while tracing is off (the default) and for messages not sent by this worker.
ALTER TABLE messages ADD COLUMN traceparent TEXT;
