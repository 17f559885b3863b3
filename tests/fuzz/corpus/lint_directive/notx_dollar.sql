-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY i ON t (a);
SELECT $$ -- lint:ignore syntax in a body $$;
-- migrate:down
