-- Script triggers beyond inbound messages: outbound messages, schedules (cron + IANA
-- zone), event types from the event log; and the durable trigger's bookkeeping.
--
-- The CHECK constraints of scripts.trigger_type and script_runs.trigger change, which
-- SQLite can only do by rebuilding the tables. Dropping a parent table runs its ON
-- DELETE actions (foreign keys are on), so the child tables are rebuilt and dropped
-- first; renaming the new parent makes their references follow (as in 0010).
CREATE TABLE scripts_new (
    id                   TEXT    PRIMARY KEY,                 -- scr_...
    account_id           TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                 TEXT    NOT NULL,
    description          TEXT    NOT NULL DEFAULT '',
    code                 TEXT    NOT NULL,
    trigger_type         TEXT    NOT NULL
                         CHECK (trigger_type IN ('message', 'outbound', 'schedule', 'event',
                                                 'manual')),
    trigger_filter       TEXT    NOT NULL DEFAULT '{}',       -- JSON: chats, senders, chat_type, contains, regex
    schedule_cron        TEXT,                                -- schedule: 5-field cron
    schedule_tz          TEXT,                                -- schedule: IANA zone
    next_run_at          REAL,                                -- schedule: next occurrence (UTC epoch)
    event_types          TEXT    NOT NULL DEFAULT '[]',       -- event: JSON list of event types
    http_allow_hosts     TEXT    NOT NULL DEFAULT '[]',       -- JSON list of host names
    active               INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    paused_reason        TEXT,                                -- set when failures paused it
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    created_by           TEXT,
    created_at           REAL    NOT NULL,
    updated_at           REAL    NOT NULL,
    CHECK (trigger_type != 'schedule' OR (schedule_cron IS NOT NULL AND schedule_tz IS NOT NULL))
) STRICT;
INSERT INTO scripts_new (id, account_id, name, description, code, trigger_type, trigger_filter,
                         http_allow_hosts, active, paused_reason, consecutive_failures,
                         created_by, created_at, updated_at)
    SELECT id, account_id, name, description, code, trigger_type, trigger_filter,
           http_allow_hosts, active, paused_reason, consecutive_failures, created_by,
           created_at, updated_at
    FROM scripts;

-- trigger_key: the triggering message id (message, outbound), event id (event) or
-- occurrence (schedule); a durable trigger runs a script once per key.
CREATE TABLE script_runs_new (
    id              TEXT    PRIMARY KEY,                      -- run_...
    script_id       TEXT    NOT NULL REFERENCES scripts_new (id) ON DELETE CASCADE,
    account_id      TEXT    NOT NULL,
    trigger         TEXT    NOT NULL
                    CHECK (trigger IN ('message', 'outbound', 'schedule', 'event', 'manual')),
    trigger_key     TEXT,
    state           TEXT    NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'ok', 'error')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    limit_hit       TEXT,                                     -- wall, cpu, heap, host_calls, ...
    logs            TEXT    NOT NULL DEFAULT '[]',            -- JSON list of {level, text, t_ms}
    effects         TEXT    NOT NULL DEFAULT '[]',            -- JSON list: sends, storage writes
    host_calls      INTEGER NOT NULL DEFAULT 0,
    wall_ms         REAL,
    cpu_ms          REAL,
    started_at      REAL    NOT NULL,
    finished_at     REAL,
    UNIQUE (script_id, trigger, trigger_key)
) STRICT;
INSERT INTO script_runs_new SELECT id, script_id, account_id, trigger, trigger_key, state,
    attempts, error, limit_hit, logs, effects, host_calls, wall_ms, cpu_ms, started_at,
    finished_at FROM script_runs;

CREATE TABLE script_storage_new (
    script_id  TEXT NOT NULL REFERENCES scripts_new (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,                                 -- JSON
    updated_at REAL NOT NULL,
    PRIMARY KEY (script_id, key)
) STRICT;
INSERT INTO script_storage_new SELECT script_id, key, value, updated_at FROM script_storage;

DROP TABLE script_storage;
DROP TABLE script_runs;
DROP TABLE scripts;
ALTER TABLE scripts_new RENAME TO scripts;
ALTER TABLE script_runs_new RENAME TO script_runs;
ALTER TABLE script_storage_new RENAME TO script_storage;
CREATE INDEX scripts_account ON scripts (account_id, trigger_type, active);
CREATE INDEX scripts_due ON scripts (next_run_at) WHERE trigger_type = 'schedule' AND active = 1;
CREATE INDEX script_runs_script ON script_runs (script_id, started_at DESC);
CREATE INDEX script_runs_state ON script_runs (state, started_at);

-- How far the worker read the event log for outbound and event triggers: the jobs of
-- the events up to last_event_id are queued in the transaction that moves it.
CREATE TABLE script_event_cursor (
    name          TEXT    PRIMARY KEY,
    last_event_id INTEGER NOT NULL
) STRICT;
