-- Every running gateway caches the state of users it has seen on proxied requests. This
-- trigger tells them (NOTIFY sentinel_user_changed, '<id>') the moment a user row changes or
-- goes, so that deactivation takes effect everywhere within a second.
CREATE OR REPLACE FUNCTION sentinel_notify_user_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sentinel_user_changed', OLD.id);
    IF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM pg_notify('sentinel_user_changed', NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS users_notify_changed ON users;
CREATE TRIGGER users_notify_changed
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION sentinel_notify_user_changed();
