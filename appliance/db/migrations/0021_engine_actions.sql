-- Actions that reach WhatsApp (issue 12): mark read, archive, pin, mute, typing, delete
-- for everyone, edit. Each is a row here and a job of the "action" queue, written in one
-- transaction before the API answers 202 (appliance/messaging/actions.py); the worker's
-- action loop hands it to the account's engine and records the outcome here, with its
-- events, in the transaction that acks the job.
CREATE TABLE engine_actions (
    id          TEXT    PRIMARY KEY,           -- act_<random>
    account_id  TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    chat_jid    TEXT    NOT NULL,
    type        TEXT    NOT NULL,              -- read, archive, ..., revoke, edit
    message_id  TEXT,                          -- revoke and edit: the message acted on
    params      TEXT    NOT NULL DEFAULT '{}', -- JSON: until, state, text, ...
    -- The id of the protocol message an edit or revoke is sent as, chosen before the
    -- engine sees it (like a send's id): an engine that already handed this id to
    -- WhatsApp does not send it again, so a retry after a crash is not a second edit.
    send_id     TEXT,
    status      TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'done', 'failed')),
    error       TEXT,
    client_key  TEXT,                          -- <caller>|<Idempotency-Key>
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    done_at     REAL
) STRICT;
CREATE UNIQUE INDEX engine_actions_client_key ON engine_actions (account_id, client_key)
    WHERE client_key IS NOT NULL;
CREATE INDEX engine_actions_recent ON engine_actions (account_id, created_at DESC);

-- What WhatsApp keeps per chat besides archived (chats.archived, migration 0004).
ALTER TABLE chats ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN muted_until REAL;

-- An own text message edited (by an edit action or on the phone): when.
ALTER TABLE messages ADD COLUMN edited_at REAL;

-- The sandbox engine's simulated WhatsApp: every action it accepted, once per action
-- (or per send_id), with how often it was offered (tests count effects here).
CREATE TABLE sandbox_server_actions (
    account_id  TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key         TEXT    NOT NULL,   -- send_id (revoke, edit), else the action id
    type        TEXT    NOT NULL,
    chat_jid    TEXT    NOT NULL,
    message_id  TEXT,
    params      TEXT    NOT NULL DEFAULT '{}',
    offered     INTEGER NOT NULL DEFAULT 1,
    accepted_at REAL    NOT NULL,
    PRIMARY KEY (account_id, key)
) STRICT;
