-- Messaging core: accounts, contacts, chats, messages (+ full-text search), media,
-- the event log, and the sandbox engine's simulated WhatsApp server.

CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,               -- [A-Za-z0-9_-]{1,64}
    name            TEXT NOT NULL,
    engine          TEXT NOT NULL CHECK (engine IN ('sandbox', 'web', 'cloud')),
    engine_settings TEXT NOT NULL DEFAULT '{}',     -- JSON; secrets in it are encrypted
    settings        TEXT NOT NULL DEFAULT '{}',     -- JSON: mark_as_read, download_media, ...
    desired         TEXT NOT NULL DEFAULT 'connected'
                    CHECK (desired IN ('connected', 'disconnected', 'logged_out')),
    state           TEXT NOT NULL DEFAULT 'disconnected'
                    CHECK (state IN ('disconnected', 'connecting', 'pairing', 'connected',
                                     'logged_out', 'failed')),
    state_reason    TEXT,
    phone           TEXT,                           -- the account's own number, once known
    engine_state    TEXT NOT NULL DEFAULT '{}',     -- JSON kept by the engine (e.g. paired)
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
) STRICT;

CREATE TABLE contacts (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid        TEXT NOT NULL,                       -- 905551112233@s.whatsapp.net
    phone      TEXT,                                -- +905551112233
    name       TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (account_id, jid)
) STRICT;

CREATE TABLE chats (
    account_id      TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid             TEXT    NOT NULL,
    name            TEXT,
    is_group        INTEGER NOT NULL DEFAULT 0,
    archived        INTEGER NOT NULL DEFAULT 0,
    unread_count    INTEGER NOT NULL DEFAULT 0,
    last_message_id TEXT,
    last_message_at REAL,
    created_at      REAL    NOT NULL,
    PRIMARY KEY (account_id, jid)
) STRICT;
CREATE INDEX chats_recent ON chats (account_id, last_message_at DESC, jid);

-- id is the WhatsApp message id: generated and stored before an outbound send, so a
-- retry after a crash re-sends the same id; for inbound, the sender's id.
CREATE TABLE messages (
    -- An explicit INTEGER PRIMARY KEY: the full-text index and list cursors use it, and
    -- unlike an implicit rowid it survives VACUUM.
    seq          INTEGER PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    chat_jid     TEXT NOT NULL,
    direction    TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    sender_jid   TEXT,
    type         TEXT NOT NULL,                     -- text, image, document, audio, video, reaction
    body         TEXT,                              -- text, or a media caption
    content      TEXT NOT NULL,                     -- JSON in the Cloud API shape
    reply_to     TEXT,
    media_id     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'delivered',
                                                 'read', 'failed', 'received')),
    error        TEXT,
    client_key   TEXT,                              -- caller + Idempotency-Key of the send
    wa_timestamp REAL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    UNIQUE (account_id, id)
) STRICT;
-- Newest-first pages walk these in seq order (the key's implicit last column).
CREATE INDEX messages_account ON messages (account_id);
CREATE INDEX messages_chat ON messages (account_id, chat_jid);
CREATE UNIQUE INDEX messages_client_key ON messages (account_id, client_key)
    WHERE client_key IS NOT NULL;

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body, content = 'messages', content_rowid = 'seq', tokenize = 'unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.body IS NOT NULL BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.body IS NOT NULL BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
        SELECT 'delete', old.seq, old.body WHERE old.body IS NOT NULL;
    INSERT INTO messages_fts (rowid, body) SELECT new.seq, new.body WHERE new.body IS NOT NULL;
END;

CREATE TABLE media (
    account_id   TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id           TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    filename     TEXT,
    source_url   TEXT,
    created_at   REAL    NOT NULL,
    PRIMARY KEY (account_id, id)
) STRICT;

-- The event log: ids only grow (AUTOINCREMENT never reuses one) and each row is
-- written in the same transaction as the change it describes.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    account_id TEXT,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL                        -- JSON
);
CREATE INDEX events_account ON events (account_id, id);

-- The sandbox engine's simulated WhatsApp server: what it accepted (by message id,
-- which WhatsApp de-duplicates) and what waits for delivery to the appliance.
CREATE TABLE sandbox_server_sent (
    account_id    TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    to_jid        TEXT    NOT NULL,
    first_at      REAL    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (account_id, message_id)
) STRICT;

CREATE TABLE sandbox_server_inbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused
    account_id   TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    from_jid     TEXT NOT NULL,
    content      TEXT NOT NULL,                     -- JSON, Cloud API shape
    injected_at  REAL NOT NULL,
    UNIQUE (account_id, message_id)
) STRICT;
