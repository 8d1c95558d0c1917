-- Operations (issue 17).
--
-- 1. One row per restore of a backup archive. A restore raises every AUTOINCREMENT
--    sequence (events: also the webhook-id) to a floor above anything the installation
--    the backup came from can have issued since (appliance/ops/ids.py), and records here
--    what it set, so `appliancectl check` and an operator can see when ids jumped and why.
CREATE TABLE restore_epochs (
    epoch              INTEGER PRIMARY KEY AUTOINCREMENT,
    restored_at        REAL    NOT NULL,
    archive_created_at REAL    NOT NULL,
    archive_host       TEXT    NOT NULL DEFAULT '',
    archive_sha256     TEXT    NOT NULL,
    gap                INTEGER NOT NULL,       -- added to every sequence's high-water mark
    floors             TEXT    NOT NULL        -- JSON: table -> sequence after the restore
) STRICT;

-- 2. Webhook delivery and attempt ids (GET /api/webhooks/{id}/deliveries/{delivery},
--    replay) never come back: not after housekeeping deletes old ones, and a restore can
--    raise them past anything issued before it. SQLite guarantees that only with
--    AUTOINCREMENT, which needs the tables rebuilt (as 0010 did for users): dropping the
--    parent runs its ON DELETE actions, so the child is rebuilt too and dropped first;
--    renaming the new parent makes the child's reference follow.
CREATE TABLE webhook_deliveries_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id   TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id      INTEGER NOT NULL,
    event_type    TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_status   INTEGER,
    last_error    TEXT,
    next_attempt_at REAL,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    delivered_at  REAL,
    UNIQUE (endpoint_id, event_id)
) STRICT;
INSERT INTO webhook_deliveries_new (id, endpoint_id, event_id, event_type, state, attempts,
                                    last_status, last_error, next_attempt_at, created_at,
                                    updated_at, delivered_at)
    SELECT id, endpoint_id, event_id, event_type, state, attempts, last_status, last_error,
           next_attempt_at, created_at, updated_at, delivered_at
    FROM webhook_deliveries;

CREATE TABLE webhook_attempts_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries_new (id) ON DELETE CASCADE,
    at          REAL    NOT NULL,
    duration_ms REAL    NOT NULL,
    status      INTEGER,                                -- HTTP status, NULL when none
    response    TEXT,                                   -- first bytes of the answer
    error       TEXT
) STRICT;
INSERT INTO webhook_attempts_new (id, delivery_id, at, duration_ms, status, response, error)
    SELECT id, delivery_id, at, duration_ms, status, response, error FROM webhook_attempts;

DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
ALTER TABLE webhook_attempts_new RENAME TO webhook_attempts;
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (endpoint_id, state, id);
CREATE INDEX webhook_deliveries_updated ON webhook_deliveries (state, updated_at);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
