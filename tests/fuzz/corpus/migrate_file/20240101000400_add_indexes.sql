-- Indexes for the example service's lookups. Portable SQL: one section
-- serves both engines.

-- migrate:up
CREATE INDEX posts_user_id_idx ON posts (user_id);
CREATE INDEX orders_user_id_idx ON orders (user_id, created_at);
CREATE INDEX order_items_product_id_idx ON order_items (product_id);

-- migrate:down
DROP INDEX order_items_product_id_idx;
DROP INDEX orders_user_id_idx;
DROP INDEX posts_user_id_idx;
