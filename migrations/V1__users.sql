-- The users table exactly as the seed's FastAPI backend (SQLAlchemy) creates it, so that a fresh
-- database and an adopted one have the same shape. IF NOT EXISTS makes this a no-op on adoption.
CREATE TABLE IF NOT EXISTS users (
    id character varying NOT NULL,
    email character varying NOT NULL,
    full_name character varying,
    hashed_password character varying NOT NULL,
    is_active boolean,
    created_at timestamp without time zone,
    updated_at timestamp without time zone,
    CONSTRAINT users_pkey PRIMARY KEY (id)
);

CREATE UNIQUE INDEX IF NOT EXISTS ix_users_email ON users USING btree (email);
CREATE INDEX IF NOT EXISTS ix_users_id ON users USING btree (id);
