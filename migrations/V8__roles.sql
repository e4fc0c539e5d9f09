-- Roles: a user holds zero or more, each a name like `admin` or `billing.read`. Route rules
-- ask for them, upstreams receive them (`X-User-Roles`), and the admin API needs `admin`.
CREATE TABLE IF NOT EXISTS sentinel_user_roles (
    user_id character varying NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role ~ '^[a-z][a-z0-9_.:-]{0,63}$'),
    granted_at timestamp with time zone NOT NULL DEFAULT now(),
    -- Who granted it (a user id; none when granted from the command line).
    granted_by character varying,
    PRIMARY KEY (user_id, role)
);

CREATE INDEX IF NOT EXISTS sentinel_user_roles_role ON sentinel_user_roles (role, user_id);

-- A grant or a revocation is a change to its user: every instance reads them again (the
-- sessions' notifier of V4 serves: it names NEW/OLD.user_id).
DROP TRIGGER IF EXISTS sentinel_user_roles_notify_changed ON sentinel_user_roles;
CREATE TRIGGER sentinel_user_roles_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON sentinel_user_roles
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_session_changed();
