-- What the example service needs on top of the user table: a password hash
-- (Argon2id, written by POST /users; NULL for seeded users, who cannot log
-- in) and an account status the listing filters on. Portable SQL: one
-- section serves both engines.

-- migrate:up
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
CREATE INDEX users_status_idx ON users (status, created_at);

-- migrate:down
DROP INDEX users_status_idx;
ALTER TABLE users DROP COLUMN status;
ALTER TABLE users DROP COLUMN password_hash;
