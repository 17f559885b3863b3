20240101000000_create_users.sql
-- migrate:up
SELECT 1;
-- migrate:down
