-- Webhook endpoints, one durable delivery per event and endpoint, every attempt.
CREATE TABLE webhook_endpoints (
    id                    TEXT    PRIMARY KEY,          -- wh_...
    url                   TEXT    NOT NULL,
    description           TEXT    NOT NULL DEFAULT '',
    event_types           TEXT    NOT NULL,             -- JSON list; ["*"] for all
    accounts              TEXT,                         -- JSON list; NULL for every account
    headers               TEXT    NOT NULL DEFAULT '{}',-- JSON object of custom headers
    timeout_s             REAL    NOT NULL DEFAULT 15,
    max_concurrency       INTEGER NOT NULL DEFAULT 4,
    enabled               INTEGER NOT NULL DEFAULT 1,
    disabled_reason       TEXT,
    secret                BLOB    NOT NULL,             -- encrypted with the data key
    previous_secret       BLOB,                         -- still signing until it expires
    previous_expires_at   REAL,
    failing_since         REAL,
    created_by            TEXT,
    created_at            REAL    NOT NULL,
    updated_at            REAL    NOT NULL
) STRICT;

CREATE TABLE webhook_deliveries (
    id            INTEGER PRIMARY KEY,
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
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (endpoint_id, state, id);
CREATE INDEX webhook_deliveries_updated ON webhook_deliveries (state, updated_at);

CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at          REAL    NOT NULL,
    duration_ms REAL    NOT NULL,
    status      INTEGER,                                -- HTTP status, NULL when none
    response    TEXT,                                   -- first bytes of the answer
    error       TEXT
) STRICT;
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- How far the dispatcher has fanned the event log out into deliveries.
CREATE TABLE webhook_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
) STRICT;
INSERT INTO webhook_cursor (id, last_event_id) VALUES (1, 0);
