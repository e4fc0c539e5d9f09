-- The audit log: security events, each written in the transaction of the change it records.
-- Never a password, token or link: `detail` holds small facts (a reason, a scope, role names).
-- No foreign keys: the record of a user outlives the user.
CREATE TABLE IF NOT EXISTS sentinel_audit_events (
    id bigserial PRIMARY KEY,
    at timestamp with time zone NOT NULL DEFAULT now(),
    type text NOT NULL,
    -- Whom it is about, and who did it when that was someone else (an administrator).
    user_id character varying,
    actor_id character varying,
    session_id uuid,
    client_address text,
    user_agent text,
    request_id text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX IF NOT EXISTS sentinel_audit_events_user ON sentinel_audit_events (user_id, id);
CREATE INDEX IF NOT EXISTS sentinel_audit_events_type ON sentinel_audit_events (type, id);
CREATE INDEX IF NOT EXISTS sentinel_audit_events_at ON sentinel_audit_events (at);
