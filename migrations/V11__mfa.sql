-- Two-factor authentication. A session's assurance level (1: a password; 2: a second factor
-- in the same session) and the methods it used (RFC 8176: pwd, otp, hwk) are session state:
-- raising a session is an update of its row, announced (below) like a session that ends.
ALTER TABLE sentinel_sessions ADD COLUMN IF NOT EXISTS aal smallint NOT NULL DEFAULT 1
    CHECK (aal IN (1, 2));
ALTER TABLE sentinel_sessions ADD COLUMN IF NOT EXISTS amr text[] NOT NULL DEFAULT '{pwd}';

DROP TRIGGER IF EXISTS sentinel_sessions_notify_raised ON sentinel_sessions;
CREATE TRIGGER sentinel_sessions_notify_raised
    AFTER UPDATE ON sentinel_sessions
    FOR EACH ROW
    WHEN (OLD.aal IS DISTINCT FROM NEW.aal)
    EXECUTE FUNCTION sentinel_notify_session_changed();

-- A user's second factors. A TOTP secret is kept sealed (an AEAD under a key derived from the
-- server secret; `key_id` names the key). A factor counts once activated.
CREATE TABLE IF NOT EXISTS sentinel_mfa_factors (
    id uuid PRIMARY KEY,
    user_id character varying NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type text NOT NULL CHECK (type IN ('totp', 'webauthn')),
    name text NOT NULL DEFAULT '',
    sealed_secret bytea,
    key_id smallint,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    activated_at timestamp with time zone,
    last_used_at timestamp with time zone,
    -- The last TOTP time step accepted: a code is accepted once.
    last_step bigint NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS sentinel_mfa_factors_user ON sentinel_mfa_factors (user_id);

-- Recovery codes: stored hashed, each used once.
CREATE TABLE IF NOT EXISTS sentinel_recovery_codes (
    user_id character varying NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash bytea NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    used_at timestamp with time zone,
    PRIMARY KEY (user_id, code_hash)
);

-- A factor added, activated or removed changes what the user's sessions may do: every
-- instance reads the user again (the sessions' notifier of V4 serves: it names NEW/OLD.user_id).
DROP TRIGGER IF EXISTS sentinel_mfa_factors_notify_changed ON sentinel_mfa_factors;
CREATE TRIGGER sentinel_mfa_factors_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF activated_at ON sentinel_mfa_factors
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_session_changed();
