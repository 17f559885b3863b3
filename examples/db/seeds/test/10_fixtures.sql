-- A deterministic fixture for tests (dbkit seed --env test): an empty
-- account to test overdraft checks against.
INSERT INTO accounts (name, balance_cents) VALUES ('test-empty', 0)
ON CONFLICT (name) DO UPDATE SET balance_cents = 0;
