-- Email verification, password reset and the mail they send.

-- Whether the user proved they read mail at their address. Users adopted from the seed have
-- not (false); a verification link or a password reset sets it.
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_verified boolean NOT NULL DEFAULT false;

-- The secrets of reset and verification links, kept only as SHA-256 (a copy of this table
-- opens nothing). A token ends when used, when a newer one of the same purpose is issued to
-- the user, when the password changes (reset tokens), or at `expires_at`.
CREATE TABLE IF NOT EXISTS sentinel_account_tokens (
    token_hash bytea PRIMARY KEY,
    user_id character varying NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('password_reset', 'verify_email')),
    -- The address the link was sent to: verifying proves this address, not a later one.
    email character varying NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    expires_at timestamp with time zone NOT NULL,
    ended_at timestamp with time zone
);

CREATE INDEX IF NOT EXISTS sentinel_account_tokens_user
    ON sentinel_account_tokens (user_id, purpose, created_at);

-- Mail waiting to go out, written in the transaction of the change that causes it (so a
-- change is never without its mail, nor a mail without its change), and delivered by every
-- running gateway's mail worker: a row is claimed by moving `next_attempt_at` forward, so two
-- workers never send one mail at the same time. A mail's link secret, if it has one, is
-- sealed (`sealed_token`, see src/credentials/one_time.rs) and erased once the mail is out.
CREATE TABLE IF NOT EXISTS sentinel_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    kind text NOT NULL,
    recipient character varying NOT NULL,
    subject text NOT NULL,
    -- The text; "{token}" marks where the unsealed token goes.
    body text NOT NULL,
    sealed_token bytea,
    -- A mail whose link has expired is not sent.
    expires_at timestamp with time zone,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamp with time zone NOT NULL DEFAULT now(),
    last_error text,
    sent_at timestamp with time zone,
    -- Not sent, and never will be: expired, refused by the server for good, or too old.
    abandoned_at timestamp with time zone
);

CREATE INDEX IF NOT EXISTS sentinel_outbox_due
    ON sentinel_outbox (next_attempt_at) WHERE sent_at IS NULL AND abandoned_at IS NULL;

-- Sessions (V4) announced every change of a row, refreshes included. Only a session that
-- starts, ends or goes is a change to its user now: a refresh (a new generation, a later idle
-- end) is not announced, since the cached end of a session is then earlier than the real one,
-- never later, and the cache reads users again within its TTL anyway. (This halves the cost of
-- a refresh; V4 stays as it was applied.)
DROP TRIGGER IF EXISTS sentinel_sessions_notify_changed ON sentinel_sessions;
CREATE TRIGGER sentinel_sessions_notify_changed
    AFTER INSERT OR DELETE ON sentinel_sessions
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_session_changed();
DROP TRIGGER IF EXISTS sentinel_sessions_notify_ended ON sentinel_sessions;
CREATE TRIGGER sentinel_sessions_notify_ended
    AFTER UPDATE ON sentinel_sessions
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.absolute_expires_at IS DISTINCT FROM NEW.absolute_expires_at
          OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION sentinel_notify_session_changed();
