-- Per-chat send order (issue 10, section 2). NOTE for merging: only the number of this
-- file may need to change if another branch also added a 0008.
--
-- Jobs that share an order key (sends: "<account>:<chat jid>") are claimed one at a
-- time in id order. Of the unfinished (queued or leased) jobs of a key, exactly one is
-- not `held`: the head. Only heads are claimable; a head waiting for a retry, paced or
-- in flight keeps its key's later jobs held until it is done or dead, then the
-- triggers below release the next one. NULL keys are unordered (never held).
ALTER TABLE queue_jobs ADD COLUMN order_key TEXT;
ALTER TABLE queue_jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

-- "The earliest unfinished job of this key": one seek. Partial, so finished jobs (the
-- bulk of the table) are not in it.
CREATE INDEX queue_jobs_order ON queue_jobs (queue, order_key, id)
    WHERE order_key IS NOT NULL AND state IN ('queued', 'leased');

-- The claim walks due jobs that are not held, so a long backlog in one chat costs the
-- claim nothing.
CREATE INDEX queue_jobs_ready ON queue_jobs (queue, run_at, id)
    WHERE state = 'queued' AND held = 0;

-- A head that finished (done or dead) or was deleted releases the next job of its key.
CREATE TRIGGER queue_jobs_order_next AFTER UPDATE OF state ON queue_jobs
WHEN old.order_key IS NOT NULL AND old.held = 0
     AND old.state IN ('queued', 'leased') AND new.state NOT IN ('queued', 'leased')
BEGIN
    UPDATE queue_jobs SET held = 0 WHERE id = (
        SELECT MIN(id) FROM queue_jobs
        WHERE queue = old.queue AND order_key = old.order_key
          AND order_key IS NOT NULL AND state IN ('queued', 'leased'));
END;

CREATE TRIGGER queue_jobs_order_deleted AFTER DELETE ON queue_jobs
WHEN old.order_key IS NOT NULL AND old.held = 0 AND old.state IN ('queued', 'leased')
BEGIN
    UPDATE queue_jobs SET held = 0 WHERE id = (
        SELECT MIN(id) FROM queue_jobs
        WHERE queue = old.queue AND order_key = old.order_key
          AND order_key IS NOT NULL AND state IN ('queued', 'leased'));
END;

-- Sends queued before this version get their key and keep their order too.
UPDATE queue_jobs
SET order_key = json_extract(payload, '$.account_id') || ':' || json_extract(payload, '$.chat')
WHERE queue = 'send' AND state IN ('queued', 'leased')
  AND json_extract(payload, '$.account_id') IS NOT NULL
  AND json_extract(payload, '$.chat') IS NOT NULL;
UPDATE queue_jobs AS j SET held = 1
WHERE j.order_key IS NOT NULL AND j.state IN ('queued', 'leased')
  AND EXISTS (SELECT 1 FROM queue_jobs AS e
              WHERE e.queue = j.queue AND e.order_key = j.order_key AND e.id < j.id
                AND e.order_key IS NOT NULL AND e.state IN ('queued', 'leased'));

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
