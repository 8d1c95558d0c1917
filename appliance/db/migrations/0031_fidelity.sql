-- Finished actions that reached WhatsApp (issue 12) leave with the event log's age
-- (retention_settings.events_days): the daily retention pass deletes them in batches,
-- oldest first, from this index (done_at is set when an action is done or failed).
CREATE INDEX engine_actions_finished ON engine_actions (done_at) WHERE done_at IS NOT NULL;
