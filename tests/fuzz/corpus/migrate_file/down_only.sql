-- migrate:down
SELECT 1;
