-- Team inbox, part 1: a chat is a conversation with a status and an owner, each user
-- has their own read position per chat, users say whether they take new chats.

-- status: open | pending | resolved | snoozed (until snoozed_until).
-- assignee_id: the user working the chat, or NULL.
-- opened_at: when the current conversation began (the chat's creation, or the inbound
--   message that reopened it after it was resolved); first_response_at: the first
--   reply by a person (API or phone, not automations) after a message waited;
--   resolved_at: when it was resolved. waiting_since: the oldest inbound message not
--   answered yet (NULL when nothing waits).
-- last_inbound_seq: messages.seq of the newest inbound message (unread for a user =
--   inbound messages after that user's read position).
ALTER TABLE chats ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'pending', 'resolved', 'snoozed'));
ALTER TABLE chats ADD COLUMN snoozed_until REAL;
ALTER TABLE chats ADD COLUMN assignee_id INTEGER REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE chats ADD COLUMN opened_at REAL;
ALTER TABLE chats ADD COLUMN waiting_since REAL;
ALTER TABLE chats ADD COLUMN first_response_at REAL;
ALTER TABLE chats ADD COLUMN resolved_at REAL;
ALTER TABLE chats ADD COLUMN last_inbound_seq INTEGER;

UPDATE chats SET opened_at = created_at,
    last_inbound_seq = (SELECT MAX(m.seq) FROM messages m WHERE m.account_id = chats.account_id
                        AND m.chat_jid = chats.jid AND m.direction = 'in');

-- The inbox filters: by status, by assignee (with or without a status), newest activity
-- first (an assignee's chats are walked newest first, so "mine and open" stops early).
CREATE INDEX chats_status ON chats (account_id, status, last_message_at DESC, jid);
CREATE INDEX chats_assignee ON chats (account_id, assignee_id, last_message_at DESC, jid);
-- The worker's snooze timer: the next snooze to end.
CREATE INDEX chats_snoozed ON chats (snoozed_until) WHERE status = 'snoozed';

-- A new chat (from any path) starts its first conversation when it is created.
CREATE TRIGGER chats_opened AFTER INSERT ON chats WHEN new.opened_at IS NULL BEGIN
    UPDATE chats SET opened_at = new.created_at
    WHERE account_id = new.account_id AND jid = new.jid;
END;

-- A reply by a person answers what waited: the first one is the first response.
CREATE TRIGGER chats_answered AFTER INSERT ON messages
WHEN new.direction = 'out' AND new.origin IN ('api', 'phone') BEGIN
    UPDATE chats SET
        first_response_at = CASE WHEN first_response_at IS NULL AND waiting_since IS NOT NULL
                                 THEN new.created_at ELSE first_response_at END,
        waiting_since = NULL
    WHERE account_id = new.account_id AND jid = new.chat_jid;
END;

-- Each user's read position per chat: every message up to read_seq (messages.seq).
CREATE TABLE chat_reads (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id TEXT    NOT NULL,
    chat_jid   TEXT    NOT NULL,
    read_seq   INTEGER NOT NULL,
    read_at    REAL    NOT NULL,
    PRIMARY KEY (user_id, account_id, chat_jid),
    FOREIGN KEY (account_id, chat_jid) REFERENCES chats (account_id, jid) ON DELETE CASCADE
) STRICT;
CREATE INDEX chat_reads_chat ON chat_reads (account_id, chat_jid);

-- Who takes new conversations (auto-assignment picks among available users).
CREATE TABLE user_availability (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    available  INTEGER NOT NULL DEFAULT 0,
    updated_at REAL    NOT NULL
) STRICT;

-- Round-robin position of each account's auto-assignment: the user picked last.
CREATE TABLE inbox_assignment_state (
    account_id   TEXT    PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    last_user_id INTEGER,
    updated_at   REAL    NOT NULL
) STRICT;
