-- Team inbox, part two: tags on chats and contacts, private notes on chats (with the
-- notifications their @mentions raise), and quick replies (local message templates).
-- Everything belongs to one account and goes with it (ON DELETE CASCADE); ids come
-- from AUTOINCREMENT, so they are never reused.

-- A tag's name is unique per account, compared by name_key (the name case-folded, as
-- appliance.inbox.tags.tag_key makes it); chats and contacts refer to the tag by id,
-- so a rename shows on every chat at once and a delete takes it off all of them.
CREATE TABLE tags (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    name_key   TEXT    NOT NULL,
    color      TEXT    NOT NULL CHECK (color GLOB '#[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'),
    created_at REAL    NOT NULL,
    updated_at REAL    NOT NULL,
    UNIQUE (account_id, name_key)
) STRICT;

CREATE TABLE chat_tags (
    account_id TEXT    NOT NULL,
    chat_jid   TEXT    NOT NULL,
    tag_id     INTEGER NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    created_at REAL    NOT NULL,
    PRIMARY KEY (account_id, chat_jid, tag_id),
    FOREIGN KEY (account_id, chat_jid) REFERENCES chats (account_id, jid) ON DELETE CASCADE
) STRICT;
-- Filter and count by tag (and the cascade of a tag's delete).
CREATE INDEX chat_tags_tag ON chat_tags (tag_id, account_id, chat_jid);

CREATE TABLE contact_tags (
    account_id  TEXT    NOT NULL,
    contact_jid TEXT    NOT NULL,
    tag_id      INTEGER NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (account_id, contact_jid, tag_id),
    FOREIGN KEY (account_id, contact_jid) REFERENCES contacts (account_id, jid) ON DELETE CASCADE
) STRICT;
CREATE INDEX contact_tags_tag ON contact_tags (tag_id, account_id, contact_jid);

-- Private notes: never sent to WhatsApp. author is the principal ('user:3', 'key:7');
-- author_user_id the user behind it (a key's owner), kept for "my notes" and lost
-- (NULL) when that user is deleted; author_name as it was when written.
CREATE TABLE notes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT    NOT NULL,
    chat_jid       TEXT    NOT NULL,
    author         TEXT    NOT NULL,
    author_name    TEXT    NOT NULL,
    author_user_id INTEGER REFERENCES users (id) ON DELETE SET NULL,
    body           TEXT    NOT NULL,
    mentions       TEXT    NOT NULL DEFAULT '[]',  -- JSON [{user_id, username}] of the body
    created_at     REAL    NOT NULL,
    edited_at      REAL,
    FOREIGN KEY (account_id, chat_jid) REFERENCES chats (account_id, jid) ON DELETE CASCADE
) STRICT;
CREATE INDEX notes_chat ON notes (account_id, chat_jid, id);
CREATE INDEX notes_author_user ON notes (author_user_id) WHERE author_user_id IS NOT NULL;

-- Full-text search over notes (FTS5, like messages_fts), for the inbox search.
CREATE VIRTUAL TABLE notes_fts USING fts5 (
    body, content = 'notes', content_rowid = 'id', tokenize = 'unicode61'
);
CREATE TRIGGER notes_fts_insert AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER notes_fts_delete AFTER DELETE ON notes BEGIN
    INSERT INTO notes_fts (notes_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TRIGGER notes_fts_update AFTER UPDATE OF body ON notes BEGIN
    INSERT INTO notes_fts (notes_fts, rowid, body) VALUES ('delete', old.id, old.body);
    INSERT INTO notes_fts (rowid, body) VALUES (new.id, new.body);
END;

-- A user's notifications: today the @mentions in notes. One per (note, user): editing
-- a note notifies only the users it newly mentions. Gone with the note or the user.
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('mention')),
    account_id TEXT    NOT NULL,
    chat_jid   TEXT    NOT NULL,
    note_id    INTEGER NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    by         TEXT,                                -- who wrote the mention ('user:3')
    by_name    TEXT,
    created_at REAL    NOT NULL,
    read_at    REAL,
    UNIQUE (note_id, user_id)
) STRICT;
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id, id) WHERE read_at IS NULL;

-- Quick replies: local templates an agent sends by shortcut ('/price'). body holds
-- {{variables}}; media (JSON {type, link | id, filename}) is optional, body then its
-- caption. Sending one renders it and queues a normal send (messaging.sends).
CREATE TABLE quick_replies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    shortcut   TEXT    NOT NULL,
    body       TEXT,
    media      TEXT,
    created_by TEXT,
    created_at REAL    NOT NULL,
    updated_at REAL    NOT NULL,
    CHECK (body IS NOT NULL OR media IS NOT NULL),
    UNIQUE (account_id, shortcut)
) STRICT;
