-- One order with two lines; the order reference is its natural key.
INSERT INTO orders (reference, user_id, status)
SELECT 'ORD-1001', id, 'paid' FROM users WHERE email = 'grace@example.com'
ON CONFLICT (reference) DO NOTHING;

WITH x (sku, quantity) AS (VALUES ('BOOK-002', 1), ('MUG-001', 2))
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
SELECT o.id, p.id, x.quantity, p.price_cents
FROM x
JOIN products p ON p.sku = x.sku
JOIN orders o ON o.reference = 'ORD-1001'
WHERE true
ON CONFLICT (order_id, product_id) DO UPDATE SET quantity = excluded.quantity;
