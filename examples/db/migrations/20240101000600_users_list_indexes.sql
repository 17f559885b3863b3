-- Indexes for the example service's user listing (GET /users): each page
-- is ordered by created_at or name with the primary key as tie-breaker, so
-- (column, id) lets both engines read a page from the index, in either
-- direction, instead of sorting the whole table. Portable SQL.

-- migrate:up
CREATE INDEX users_created_at_id_idx ON users (created_at, id);
CREATE INDEX users_name_id_idx ON users (name, id);

-- migrate:down
DROP INDEX users_name_id_idx;
DROP INDEX users_created_at_id_idx;
