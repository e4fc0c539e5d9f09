-- When each recent refresh token was rotated away, newest last: the token of generation
-- `generation - 1 - k` was rotated at `recent_rotations[cardinality - k]`. Every token rotated
-- away within the grace period (parallel tabs, retries) gets the session's current pair, not
-- just the one before the current. The last 63 rotations are kept (a slice and an append per
-- refresh, no sort): a token further behind than that is past any grace period in practice.
ALTER TABLE sentinel_sessions
    ADD COLUMN IF NOT EXISTS recent_rotations timestamp with time zone[] NOT NULL DEFAULT '{}';

-- A user holds at most `auth.max_sessions_per_user` live sessions: a login past it ends the
-- least recently used, and every read of a user's sessions takes the most recently used ones
-- only. This index finds a user's sessions without touching the ended ones, however many a
-- user had. It does not hold `last_used_at`, which every refresh changes: a refresh stays a
-- heap-only update.
CREATE INDEX IF NOT EXISTS sentinel_sessions_live
    ON sentinel_sessions (user_id) WHERE revoked_at IS NULL;
