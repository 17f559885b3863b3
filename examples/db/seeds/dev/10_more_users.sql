-- Extra users for local development only (dbkit seed --env dev).
INSERT INTO users (name, email) VALUES
    ('Alan Turing', 'alan@example.com'),
    ('Donald Knuth', 'donald@example.com')
ON CONFLICT (email) DO UPDATE SET name = excluded.name;
