-- Users, panel sessions, API keys, idempotency records and the audit log.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'manager', 'agent')),
    all_accounts  INTEGER NOT NULL DEFAULT 0,   -- 1: every account, present and future
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
) STRICT;

-- Account grants; account ids are text so grants may name accounts created later.
CREATE TABLE user_grants (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id TEXT    NOT NULL,
    PRIMARY KEY (user_id, account_id)
) STRICT;

CREATE TABLE sessions (
    token_hash   TEXT    PRIMARY KEY,          -- HMAC of the cookie value; never the value
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    last_seen_at REAL    NOT NULL,
    expires_at   REAL    NOT NULL,             -- absolute expiry
    client_addr  TEXT
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL UNIQUE,      -- shown in lists; finds the row
    secret_hash  TEXT    NOT NULL,             -- SHA-256 of the whole key
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'manager', 'agent')),
    all_accounts INTEGER NOT NULL DEFAULT 0,
    created_by   TEXT,
    created_at   REAL    NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
) STRICT;

CREATE TABLE api_key_grants (
    api_key_id INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    account_id TEXT    NOT NULL,
    PRIMARY KEY (api_key_id, account_id)
) STRICT;

CREATE TABLE idempotency_keys (
    principal    TEXT NOT NULL,                -- 'user:ID' or 'key:ID'
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,                -- SHA-256 of method, path and body
    state        TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status       INTEGER,
    content_type TEXT,
    body         BLOB,                         -- encrypted with the data key
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (principal, key)
) STRICT;
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    actor       TEXT,                          -- 'user:ID', 'key:ID', 'cli', 'system'
    actor_name  TEXT,
    action      TEXT NOT NULL,                 -- e.g. 'login.failed', 'user.create'
    target      TEXT,
    details     TEXT NOT NULL DEFAULT '{}',    -- JSON, never secrets
    client_addr TEXT,
    request_id  TEXT
) STRICT;
CREATE INDEX audit_at ON audit_log (at);
