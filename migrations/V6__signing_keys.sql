-- The Ed25519 keys gateways sign identity assertions with (`X-Identity-Assertion`), shared
-- by every instance so that a new instance brings no new key. The private half is sealed
-- under a key derived from auth.secret_key (HMAC-SHA256 pad and tag, as the outbox's link
-- secrets): this table alone signs nothing, and whoever holds the secret can already mint
-- bearer tokens. Each key is published (GET /.well-known/jwks.json) from its creation, a whole
-- rotation period before it signs, until every assertion it signed has expired.
CREATE TABLE IF NOT EXISTS sentinel_signing_keys (
    -- RFC 7638 thumbprint of the public key (the JWT header's `kid`).
    kid text PRIMARY KEY,
    -- The raw 32-byte Ed25519 public key (the JWK's `x`).
    public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
    sealed_private_key bytea NOT NULL,
    -- It signs from then until the next key's activates_at.
    activates_at timestamp with time zone NOT NULL UNIQUE,
    -- Published until then: its successor's activation plus the assertions' lifetime and a
    -- margin for clocks.
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now()
);

-- Every instance reloads its keys the moment one is added or changes.
CREATE OR REPLACE FUNCTION sentinel_notify_signing_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sentinel_signing_keys', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS signing_keys_notify ON sentinel_signing_keys;
CREATE TRIGGER signing_keys_notify
    AFTER INSERT OR UPDATE ON sentinel_signing_keys
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_signing_keys();
