-- The web engine faithful to the phone (issue 12 items 1-3): history sync, names,
-- groups and profile pictures.

-- 1: imported from WhatsApp's history sync. History rows fire no message.received
-- event, so no webhook and no automation (runbook/messaging.md, "History sync").
ALTER TABLE messages ADD COLUMN history INTEGER NOT NULL DEFAULT 0
    CHECK (history IN (0, 1));

-- The sender's name as the message carried it (WhatsApp's push name): group messages
-- name who wrote them.
ALTER TABLE messages ADD COLUMN sender_name TEXT;

-- The names WhatsApp tells us, each kept as WhatsApp last said it: the contact's own
-- push name, a business's verified name, and the name saved in the phone's address
-- book (when WhatsApp shares it). `name` stays the best of them (saved, business,
-- push); `display_name` (the team's own name for the contact) is never overwritten.
ALTER TABLE contacts ADD COLUMN push_name TEXT;
ALTER TABLE contacts ADD COLUMN business_name TEXT;
ALTER TABLE contacts ADD COLUMN saved_name TEXT;

-- A group's description (its subject is chats.name).
ALTER TABLE chats ADD COLUMN description TEXT;

-- A group's members as WhatsApp last reported them.
CREATE TABLE chat_participants (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    chat_jid   TEXT NOT NULL,
    jid        TEXT NOT NULL,
    role       TEXT NOT NULL DEFAULT 'member'
               CHECK (role IN ('member', 'admin', 'superadmin')),
    updated_at REAL NOT NULL,
    PRIMARY KEY (account_id, chat_jid, jid)
) STRICT;

-- Profile pictures (contacts and groups), fetched lazily: `state` ok (media_id in the
-- media store), none (the jid has no picture) or hidden (privacy settings hide it).
-- checked_at: when we last asked WhatsApp; asked again after the refresh age only.
CREATE TABLE profile_pictures (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid        TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('ok', 'none', 'hidden')),
    media_id   TEXT,
    picture_id TEXT,                                -- WhatsApp's id of the picture
    checked_at REAL NOT NULL,
    stale      INTEGER NOT NULL DEFAULT 0,          -- 1: WhatsApp said it changed
    PRIMARY KEY (account_id, jid)
) STRICT;

-- History sync progress per account (the account status's `sync`).
CREATE TABLE history_sync (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    state      TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    progress   INTEGER NOT NULL DEFAULT 0,          -- WhatsApp's percentage, 0-100
    chunks     INTEGER NOT NULL DEFAULT 0,          -- chunks imported
    messages   INTEGER NOT NULL DEFAULT 0,          -- messages stored
    chats      INTEGER NOT NULL DEFAULT 0,          -- chats seen
    contacts   INTEGER NOT NULL DEFAULT 0,          -- contact names stored
    skipped    INTEGER NOT NULL DEFAULT 0,          -- messages left out by history_limit
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
) STRICT;

-- Chunks already imported (by sync type, chunk order and a digest of the content): a
-- chunk WhatsApp sends again is skipped. A chunk is recorded in the transaction of
-- its last batch, so one cut short by a crash is imported again (its messages are
-- stored once by their WhatsApp ids).
CREATE TABLE history_sync_chunks (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    chunk_key   TEXT NOT NULL,
    messages    INTEGER NOT NULL,
    imported_at REAL NOT NULL,
    PRIMARY KEY (account_id, chunk_key)
) STRICT;
