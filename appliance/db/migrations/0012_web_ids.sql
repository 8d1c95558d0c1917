-- The web engine's message id map, moved from a SQLite file per session
-- (<session>/ids.db) into the main database. neonize cannot send under our id, so
-- WhatsApp assigns one: the row is written before the hand-over (attempts counts
-- them) and wa_id the moment WhatsApp accepts. Not cloud_wamids: there Graph's id is
-- the key and known when the row is written; here it is unknown until acceptance.

CREATE TABLE web_ids (
    account_id  TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_id  TEXT    NOT NULL,                   -- our pre-assigned id
    wa_id       TEXT,                               -- WhatsApp's id, once it accepted
    chat        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,         -- hand-overs started
    created_at  REAL    NOT NULL,
    PRIMARY KEY (account_id, message_id)
) STRICT;

CREATE INDEX web_ids_wa ON web_ids (account_id, wa_id);
CREATE INDEX web_ids_created ON web_ids (account_id, created_at);
