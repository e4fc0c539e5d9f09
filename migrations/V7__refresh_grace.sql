-- When each recent refresh token was rotated away, newest last: the token of generation
-- `generation - 1 - k` was rotated at `recent_rotations[cardinality - k]`. Every token rotated
-- away within the grace period (parallel tabs, retries) gets the session's current pair, not
-- just the one before the current. Only rotations within the grace period are kept (at most
-- 64), so the array stays small.
ALTER TABLE sentinel_sessions
    ADD COLUMN IF NOT EXISTS recent_rotations timestamp with time zone[] NOT NULL DEFAULT '{}';
