-- migrate:up engine:sqlite
PRAGMA foreign_keys = OFF;
DROP TABLE t;
-- migrate:down engine:sqlite
-- migrate:up engine:postgres
ALTER TABLE t ALTER COLUMN a TYPE bigint USING a::bigint;
-- migrate:down engine:postgres
