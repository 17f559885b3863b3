-- migrate:up
-- lint:ignore lock-timeout dbkit sets it
ALTER TABLE t ADD COLUMN c text;
-- migrate:down
