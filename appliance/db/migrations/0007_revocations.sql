-- Messages deleted for everyone (WhatsApp "revoke") are kept and flagged, not removed.
ALTER TABLE messages ADD COLUMN deleted_at REAL;

-- A revoke can arrive before the message it deletes (or for one never stored): it is
-- remembered here, and a message stored later under that id starts out deleted.
CREATE TABLE message_revocations (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,                        -- the deleted message's id
    revoked_by TEXT,                                 -- the jid that deleted it
    revoked_at REAL NOT NULL,
    PRIMARY KEY (account_id, message_id)
) STRICT;
