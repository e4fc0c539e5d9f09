-- What the gateway adds to the seed's table, without removing anything the seed relies on.
--
-- Emails are unique regardless of letter case. Start-up refuses (and changes nothing) when an
-- adopted table already holds two emails equal but for case, so this index cannot fail there.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));

-- Defaults for rows written by anything other than SQLAlchemy (which supplied them itself).
-- Timestamps stay "timestamp without time zone" holding UTC, as the seed wrote them.
ALTER TABLE users ALTER COLUMN is_active SET DEFAULT true;
ALTER TABLE users ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'utc');
ALTER TABLE users ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'utc');

-- Rows without a creation time get their update time (or now): answers always carry one.
UPDATE users SET created_at = COALESCE(updated_at, now() AT TIME ZONE 'utc') WHERE created_at IS NULL;
