-- User ids never come back after a delete: a new user must not inherit another's
-- idempotency records, rate counters or audit attribution. SQLite only guarantees
-- that with AUTOINCREMENT, which needs the table rebuilt.
--
-- Dropping a parent table runs its ON DELETE actions (foreign keys are on, and a
-- PRAGMA cannot change inside this transaction), so the child tables are rebuilt
-- too and dropped first; renaming the new parent makes their references follow.
CREATE TABLE users_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'manager', 'agent')),
    all_accounts  INTEGER NOT NULL DEFAULT 0,   -- 1: every account, present and future
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
) STRICT;
INSERT INTO users_new (id, username, password_hash, role, all_accounts, active, created_at,
                       updated_at)
    SELECT id, username, password_hash, role, all_accounts, active, created_at, updated_at
    FROM users;

CREATE TABLE user_grants_new (
    user_id    INTEGER NOT NULL REFERENCES users_new (id) ON DELETE CASCADE,
    account_id TEXT    NOT NULL,
    PRIMARY KEY (user_id, account_id)
) STRICT;
INSERT INTO user_grants_new SELECT user_id, account_id FROM user_grants;

CREATE TABLE sessions_new (
    token_hash   TEXT    PRIMARY KEY,          -- HMAC of the cookie value; never the value
    user_id      INTEGER NOT NULL REFERENCES users_new (id) ON DELETE CASCADE,
    csrf_token   TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    last_seen_at REAL    NOT NULL,
    expires_at   REAL    NOT NULL,             -- absolute expiry
    client_addr  TEXT
) STRICT;
INSERT INTO sessions_new
    SELECT token_hash, user_id, csrf_token, created_at, last_seen_at, expires_at, client_addr
    FROM sessions;

DROP TABLE user_grants;
DROP TABLE sessions;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
ALTER TABLE user_grants_new RENAME TO user_grants;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_user ON sessions (user_id);

-- Ids deleted before this migration are remembered by the audit log: start above them.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'users', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'users');
UPDATE sqlite_sequence SET seq = MAX(seq, (
    SELECT COALESCE(MAX(id), 0) FROM (
        SELECT id FROM users
        UNION ALL SELECT CAST(substr(target, 6) AS INTEGER) FROM audit_log
            WHERE target GLOB 'user:[0-9]*'
        UNION ALL SELECT CAST(substr(actor, 6) AS INTEGER) FROM audit_log
            WHERE actor GLOB 'user:[0-9]*'
    ))) WHERE name = 'users';
