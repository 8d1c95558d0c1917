-- The cloud engine (WhatsApp Business Cloud API): webhook posts stored before they are
-- answered, and the Graph message ids (wamid...) of the messages we sent.

CREATE TABLE cloud_inbox (
    seq         INTEGER PRIMARY KEY,
    account_id  TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    payload     BLOB    NOT NULL,                   -- the raw, signature-checked body
    received_at REAL    NOT NULL
) STRICT;

CREATE INDEX cloud_inbox_account ON cloud_inbox (account_id, seq);

CREATE TABLE cloud_wamids (
    account_id  TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    wamid       TEXT    NOT NULL,                   -- Graph's id for a message we sent
    message_id  TEXT    NOT NULL,                   -- our pre-assigned id
    created_at  REAL    NOT NULL,
    PRIMARY KEY (account_id, wamid)
) STRICT;

CREATE UNIQUE INDEX cloud_wamids_message ON cloud_wamids (account_id, message_id);
