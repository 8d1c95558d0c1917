-- Scheduled messages (appliance/automations/schedules_store.py): one row per schedule,
-- one row per run. The scheduler finds due rows by next_run_at; a run's sends, its run
-- row and the schedule's advance are one transaction, so a crash never loses or
-- doubles a run (and each send's client_key names the occurrence and chat).
CREATE TABLE schedules (
    id            TEXT    PRIMARY KEY,                  -- sch_...
    account_id    TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL DEFAULT '',
    kind          TEXT    NOT NULL CHECK (kind IN ('once', 'cron')),
    at            TEXT,                                 -- once: RFC 3339 as given
    cron          TEXT,                                 -- cron: 5 fields
    timezone      TEXT,                                 -- cron: IANA zone
    recipients    TEXT    NOT NULL,                     -- JSON list, as given
    content       TEXT    NOT NULL,                     -- JSON message content
    missed        TEXT    NOT NULL CHECK (missed IN ('skip', 'run_once')),
    grace_s       REAL    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'paused', 'completed')),
    state_reason  TEXT,
    next_run_at   REAL,                                 -- Unix time; NULL unless active
    last_run_at   REAL,
    runs          INTEGER NOT NULL DEFAULT 0,
    created_by    TEXT,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    CHECK ((kind = 'once' AND at IS NOT NULL AND cron IS NULL AND timezone IS NULL)
        OR (kind = 'cron' AND at IS NULL AND cron IS NOT NULL AND timezone IS NOT NULL)),
    CHECK (state = 'active' OR next_run_at IS NULL)
) STRICT;
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE state = 'active';
CREATE INDEX schedules_account ON schedules (account_id, id);

CREATE TABLE schedule_runs (
    id               INTEGER PRIMARY KEY,
    schedule_id      TEXT    NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    account_id       TEXT    NOT NULL,
    occurrence_at    REAL    NOT NULL,      -- the occurrence this run is for (Unix time)
    ran_at           REAL    NOT NULL,
    outcome          TEXT    NOT NULL CHECK (outcome IN ('sent', 'skipped', 'failed')),
    late_s           REAL    NOT NULL,
    skipped          INTEGER NOT NULL DEFAULT 0,  -- earlier due occurrences not sent
    first_skipped_at REAL,
    messages         TEXT    NOT NULL DEFAULT '[]', -- JSON [{to, chat_id, message_id}]
    error            TEXT,
    UNIQUE (schedule_id, occurrence_at)
) STRICT;
CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule_id, id);
