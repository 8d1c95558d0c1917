-- Per-chat send order (issue 10, section 2). NOTE for merging: only the number of this
-- file may need to change if another branch also added a 0008.
--
-- Jobs that share an order key (sends: "<account>:<chat jid>") are claimed one at a
-- time in id order: a job is claimable only while no earlier job with its key is still
-- queued (a retry waiting) or leased (in flight). NULL keys are unordered.
ALTER TABLE queue_jobs ADD COLUMN order_key TEXT;

-- The claim's "is an earlier job of this key unfinished?" probe: one seek. Partial, so
-- finished jobs (the bulk of the table) are not in it.
CREATE INDEX queue_jobs_order ON queue_jobs (queue, order_key, id)
    WHERE order_key IS NOT NULL AND state IN ('queued', 'leased');

-- Sends queued before this version get their key, so they keep their order too.
UPDATE queue_jobs
SET order_key = json_extract(payload, '$.account_id') || ':' || json_extract(payload, '$.chat')
WHERE queue = 'send' AND state IN ('queued', 'leased')
  AND json_extract(payload, '$.account_id') IS NOT NULL
  AND json_extract(payload, '$.chat') IS NOT NULL;

-- What the sandbox's simulated WhatsApp server received, in the order it received it:
-- one row per accepted offer (a re-offer of an id after a crash is a second row), so
-- tests can compare a chat's order with the order the API accepted its sends.
CREATE TABLE sandbox_server_received (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused
    account_id  TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    to_jid      TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    received_at REAL    NOT NULL
) STRICT;
CREATE INDEX sandbox_server_received_chat ON sandbox_server_received (account_id, to_jid, seq);
