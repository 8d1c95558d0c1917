-- Tracing (appliance/observability/tracing.py): an event keeps the W3C traceparent of the
-- span that wrote it, so its webhook deliveries join the send's or the inbound
-- message's trace. NULL while tracing is off (the default) and for older events.
ALTER TABLE events ADD COLUMN traceparent TEXT;
