-- The catalogue, upserted on the SKU. Stock is only set when the product
-- is new, so re-running the seed does not undo sales.
INSERT INTO products (sku, name, price_cents, stock) VALUES
    ('BOOK-001', 'The Art of Computer Programming', 19900, 10),
    ('BOOK-002', 'Structure and Interpretation of Computer Programs', 5500, 25),
    ('MUG-001', 'Semicolon mug', 1200, 100),
    ('PEN-001', 'Fountain pen', 3500, 40)
ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents;
