-- Users, upserted on their natural key (email): running this seed again
-- updates the names and never duplicates a row.
INSERT INTO users (name, email) VALUES
    ('Ada Lovelace', 'ada@example.com'),
    ('Grace Hopper', 'grace@example.com'),
    ('Edsger Dijkstra', 'edsger@example.com'),
    ('Barbara Liskov', 'barbara@example.com')
ON CONFLICT (email) DO UPDATE SET name = excluded.name;
