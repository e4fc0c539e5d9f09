-- The admin API's view of users: when each last signed in with a password, and the order its
-- pages follow (by creation, then id; a row the seed left without `created_at` sorts first).
ALTER TABLE users ADD COLUMN IF NOT EXISTS last_login_at timestamp with time zone;

CREATE INDEX IF NOT EXISTS sentinel_users_by_creation
    ON users ((COALESCE(created_at, timestamp 'epoch')), id);
