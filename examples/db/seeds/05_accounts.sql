-- Two accounts for the transfer example. The balances are only set when
-- the account is created: a re-run must not reset money that moved since.
INSERT INTO accounts (name, user_id, balance_cents)
SELECT 'ada-checking', id, 100000 FROM users WHERE email = 'ada@example.com'
ON CONFLICT (name) DO NOTHING;
INSERT INTO accounts (name, user_id, balance_cents)
SELECT 'grace-checking', id, 50000 FROM users WHERE email = 'grace@example.com'
ON CONFLICT (name) DO NOTHING;
