-- Contacts of the team inbox (display name, typed custom attributes, blocked) and
-- retention (per-account message age, event-log and audit-log age, the runs of the
-- daily job).

-- What the team calls a contact (never overwritten by WhatsApp's push name, which
-- stays in `name`), its custom attributes (JSON object: key -> value, typed by
-- contact_attribute_defs) and whether it is blocked at WhatsApp.
ALTER TABLE contacts ADD COLUMN display_name TEXT;
ALTER TABLE contacts ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';
ALTER TABLE contacts ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
CREATE INDEX contacts_phone ON contacts (account_id, phone);

-- The custom attributes an account's contacts may carry, and the type of each.
CREATE TABLE contact_attribute_defs (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    type       TEXT NOT NULL CHECK (type IN ('string', 'number', 'boolean', 'date')),
    position   INTEGER NOT NULL,                    -- the order of export columns
    created_at REAL NOT NULL,
    PRIMARY KEY (account_id, key)
) STRICT;

-- The sandbox's simulated WhatsApp server: the contacts each account has blocked.
CREATE TABLE sandbox_server_blocked (
    account_id TEXT NOT NULL,
    jid        TEXT NOT NULL,
    blocked_at REAL NOT NULL,
    PRIMARY KEY (account_id, jid)
) STRICT;

-- Retention. One row of appliance-wide ages (days; NULL keeps for ever); the defaults
-- keep what a small team needs: events 90 days, audit 365 days, messages for ever.
CREATE TABLE retention_settings (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    events_days INTEGER CHECK (events_days IS NULL OR events_days BETWEEN 1 AND 36500),
    audit_days  INTEGER CHECK (audit_days IS NULL OR audit_days BETWEEN 1 AND 36500),
    updated_at  REAL NOT NULL
) STRICT;
INSERT INTO retention_settings (id, events_days, audit_days, updated_at) VALUES (1, 90, 365, 0);

-- Per-account message age; an account without a row keeps its messages for ever.
CREATE TABLE account_retention (
    account_id   TEXT    PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    message_days INTEGER NOT NULL CHECK (message_days BETWEEN 1 AND 36500),
    updated_at   REAL    NOT NULL
) STRICT;

-- One row per pass of the retention job: what it deleted, in how many batches.
CREATE TABLE retention_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger     TEXT    NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    started_at  REAL    NOT NULL,
    finished_at REAL,
    deleted     TEXT    NOT NULL DEFAULT '{}',      -- JSON: kind -> count
    batches     INTEGER NOT NULL DEFAULT 0,
    error       TEXT
) STRICT;

-- The job walks each kind oldest first, a bounded batch at a time.
CREATE INDEX messages_account_created ON messages (account_id, created_at);
CREATE INDEX messages_media ON messages (account_id, media_id) WHERE media_id IS NOT NULL;
CREATE INDEX media_account_created ON media (account_id, created_at);
CREATE INDEX events_created ON events (created_at);
