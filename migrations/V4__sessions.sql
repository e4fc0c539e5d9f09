-- Sessions: one per login (or registration), refreshed with rotating refresh tokens. A refresh
-- token is derived from the session id and its generation with a key only the gateway has
-- (an HMAC), so what is stored here cannot be turned into a token. Rotating is one update of
-- the row that compares and increments `generation`.
CREATE TABLE IF NOT EXISTS sentinel_sessions (
    id uuid PRIMARY KEY,
    user_id character varying NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    last_used_at timestamp with time zone NOT NULL DEFAULT now(),
    -- Not refreshed for this long: over. Moves with each refresh, never past the absolute end.
    idle_expires_at timestamp with time zone NOT NULL,
    absolute_expires_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone,
    user_agent text,
    client_address text,
    -- The generation of the live refresh token; the previous one is honoured for a grace
    -- period after `rotated_at` (parallel tabs, a lost answer).
    generation integer NOT NULL DEFAULT 0,
    rotated_at timestamp with time zone
);

CREATE INDEX IF NOT EXISTS sentinel_sessions_user ON sentinel_sessions (user_id);

-- Global logout, a password change or a reset also ends the tokens that belong to no session
-- (the seed's, and any without `sid`): those issued before this time are refused.
ALTER TABLE users ADD COLUMN IF NOT EXISTS tokens_valid_after timestamp with time zone;

-- Running gateways cache each user's live sessions with the user: a change to a session is a
-- change to its user.
CREATE OR REPLACE FUNCTION sentinel_notify_session_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('sentinel_user_changed', OLD.user_id);
    ELSE
        PERFORM pg_notify('sentinel_user_changed', NEW.user_id);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS sentinel_sessions_notify_changed ON sentinel_sessions;
CREATE TRIGGER sentinel_sessions_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON sentinel_sessions
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_session_changed();
