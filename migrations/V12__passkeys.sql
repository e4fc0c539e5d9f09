-- Passkeys (WebAuthn) as second factors and for passwordless sign-in. A passkey factor keeps
-- the credential as webauthn-rs stores it (its public key, counter and flags: nothing secret)
-- and its credential id, unique across users: a passwordless sign-in finds the user by it.
ALTER TABLE sentinel_mfa_factors ADD COLUMN IF NOT EXISTS credential_id bytea;
ALTER TABLE sentinel_mfa_factors ADD COLUMN IF NOT EXISTS credential jsonb;
CREATE UNIQUE INDEX IF NOT EXISTS sentinel_mfa_factors_credential_id
    ON sentinel_mfa_factors (credential_id) WHERE credential_id IS NOT NULL;

-- A ceremony begun and not yet finished: the state webauthn-rs needs to check the browser's
-- answer, found by the challenge that answer signs. Finishing takes the row (one DELETE), so
-- an answer is accepted once; rows expire after five minutes.
CREATE TABLE IF NOT EXISTS sentinel_webauthn_ceremonies (
    challenge bytea PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('register', 'verify', 'passwordless')),
    user_id character varying REFERENCES users (id) ON DELETE CASCADE,
    session_id uuid,
    name text NOT NULL DEFAULT '',
    state jsonb NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE INDEX IF NOT EXISTS sentinel_webauthn_ceremonies_expiry
    ON sentinel_webauthn_ceremonies (expires_at);
CREATE INDEX IF NOT EXISTS sentinel_webauthn_ceremonies_session
    ON sentinel_webauthn_ceremonies (session_id) WHERE session_id IS NOT NULL;
