-- Scripts: user JavaScript run in V8 isolates by the scripts process, on triggers.
CREATE TABLE scripts (
    id                   TEXT    PRIMARY KEY,                 -- scr_...
    account_id           TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                 TEXT    NOT NULL,
    description          TEXT    NOT NULL DEFAULT '',
    code                 TEXT    NOT NULL,
    trigger_type         TEXT    NOT NULL CHECK (trigger_type IN ('message', 'manual')),
    trigger_filter       TEXT    NOT NULL DEFAULT '{}',       -- JSON: chats, chat_type, contains, regex
    http_allow_hosts     TEXT    NOT NULL DEFAULT '[]',       -- JSON list of host names
    active               INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    paused_reason        TEXT,                                -- set when failures paused it
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    created_by           TEXT,
    created_at           REAL    NOT NULL,
    updated_at           REAL    NOT NULL
) STRICT;
CREATE INDEX scripts_account ON scripts (account_id, trigger_type, active);

-- One row per run; a message-triggered run is unique per (script, message), so a
-- retried pipeline or a restarted worker never runs a script twice for one message.
CREATE TABLE script_runs (
    id              TEXT    PRIMARY KEY,                      -- run_...
    script_id       TEXT    NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    account_id      TEXT    NOT NULL,
    trigger         TEXT    NOT NULL CHECK (trigger IN ('message', 'manual')),
    trigger_key     TEXT,                                     -- the triggering message id
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
CREATE INDEX script_runs_script ON script_runs (script_id, started_at DESC);
CREATE INDEX script_runs_state ON script_runs (state, started_at);

-- storage.get/set/delete: persistent per script, size-capped by the worker.
CREATE TABLE script_storage (
    script_id  TEXT NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,                                 -- JSON
    updated_at REAL NOT NULL,
    PRIMARY KEY (script_id, key)
) STRICT;
