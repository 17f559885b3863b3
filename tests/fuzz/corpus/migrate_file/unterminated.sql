-- migrate:up
SELECT 'open;
