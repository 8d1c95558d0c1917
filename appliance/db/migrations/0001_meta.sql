-- Facts about this installation's database.
CREATE TABLE app_meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
) STRICT;

INSERT INTO app_meta (key, value, updated_at)
VALUES ('installation_id', lower(hex(randomblob(16))), (julianday('now') - 2440587.5) * 86400.0);
