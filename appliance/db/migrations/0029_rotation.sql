-- Secret rotations (appliancectl rotate; runbook/secrets.md). One row per rotation:
-- a data-key rotation stays unfinished (finished_at NULL) until every stored ciphertext
-- is re-encrypted under the new key; a re-run resumes it. Key ids are digests of the
-- keys (appliance/crypto.py), never the keys.
CREATE TABLE secret_rotations (
    id           INTEGER PRIMARY KEY,
    secret       TEXT NOT NULL CHECK (secret IN
                     ('data-key', 'session-key', 'metrics-token', 'admin-password')),
    old_key_id   TEXT,
    new_key_id   TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    reencrypted  INTEGER NOT NULL DEFAULT 0,
    actor        TEXT
) STRICT;
