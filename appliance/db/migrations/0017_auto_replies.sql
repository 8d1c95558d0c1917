-- Auto-reply rules (issue 14, section 1) and the journal of the durable automation
-- trigger (appliance/automations/trigger.py).

-- One rule of an account; tried in (priority, created_at, id) order. conditions and
-- actions are JSON lists of typed objects (appliance/automations/auto_reply_rules.py).
CREATE TABLE auto_reply_rules (
    id            TEXT    PRIMARY KEY,                  -- ar_...
    account_id    TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    match_type    TEXT    NOT NULL
                  CHECK (match_type IN ('contains', 'exact', 'starts', 'ends', 'regex')),
    pattern       TEXT    NOT NULL,
    conditions    TEXT    NOT NULL DEFAULT '[]',        -- JSON list
    actions       TEXT    NOT NULL,                     -- JSON list
    cooldown_s    INTEGER NOT NULL DEFAULT 0 CHECK (cooldown_s >= 0),
    stop          INTEGER NOT NULL DEFAULT 1 CHECK (stop IN (0, 1)),
    fired_count   INTEGER NOT NULL DEFAULT 0,
    last_fired_at REAL,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
) STRICT;
CREATE INDEX auto_reply_rules_account ON auto_reply_rules (account_id, priority, created_at, id);

-- When a rule last fired in a chat: its cooldown there.
CREATE TABLE auto_reply_cooldowns (
    rule_id    TEXT NOT NULL REFERENCES auto_reply_rules (id) ON DELETE CASCADE,
    chat_jid   TEXT NOT NULL,
    fired_at   REAL NOT NULL,                           -- the triggering message's time
    message_id TEXT NOT NULL,                           -- the triggering message
    PRIMARY KEY (rule_id, chat_jid)
) STRICT;

-- Which steps of the automation pipeline (auto_replies, scripts, ...) have run for an
-- inbound message. A step's effects commit with its row, so a trigger job retried after
-- a crash skips the steps that already ran.
CREATE TABLE automation_step_runs (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    step       TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (account_id, message_id, step)
) STRICT;
CREATE INDEX automation_step_runs_at ON automation_step_runs (at);
