-- The example service's statements that no repository serves. The code in
-- examples/shop/gen/ is generated from this file (`dbkit gen`, see
-- docs/codegen.md); gen_example_shop_up_to_date checks that it is current.

-- name: TakeStock :one
UPDATE products SET stock = stock - @quantity
WHERE id = @product_id AND stock >= @quantity
RETURNING price_cents;

-- name: ProductStock :one
SELECT stock FROM products WHERE id = @product_id;

-- name: MoveBalances :execrows
UPDATE accounts SET balance_cents = balance_cents +
    CASE WHEN id = @from_id THEN -CAST(@amount AS BIGINT) ELSE CAST(@amount AS BIGINT) END,
    updated_at = @updated_at
WHERE id IN (@from_id, @to_id);
