-- The lease-based durable queue (appliance/db/queue.py). One table serves every
-- named queue; outboxes of later features are queues in it.
CREATE TABLE queue_jobs (
    id               INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL,
    unique_key       TEXT,
    payload          TEXT    NOT NULL,            -- JSON
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'leased', 'done', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           REAL    NOT NULL,
    lease_token      TEXT,
    lease_expires_at REAL,
    last_error       TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    UNIQUE (queue, unique_key)
) STRICT;

CREATE INDEX queue_jobs_due ON queue_jobs (queue, state, run_at, id);
CREATE INDEX queue_jobs_lease ON queue_jobs (state, lease_expires_at) WHERE state = 'leased';
