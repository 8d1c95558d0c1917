-- Every API key belongs to a user; deactivating or deleting the user revokes the key,
-- and a key whose owner is gone or inactive is refused even if a revocation was missed.
ALTER TABLE api_keys ADD COLUMN owner_user_id INTEGER REFERENCES users (id) ON DELETE SET NULL;

-- Existing keys: the user who created them when known and still there, else `admin`,
-- else the oldest active admin.
UPDATE api_keys SET owner_user_id = COALESCE(
    (SELECT u.id FROM users u WHERE api_keys.created_by GLOB 'user:[0-9]*'
        AND u.id = CAST(substr(api_keys.created_by, 6) AS INTEGER)),
    (SELECT u.id FROM users u WHERE u.username = 'admin'),
    (SELECT u.id FROM users u WHERE u.role = 'admin' AND u.active = 1 ORDER BY u.id LIMIT 1)
);
CREATE INDEX api_keys_owner ON api_keys (owner_user_id);
