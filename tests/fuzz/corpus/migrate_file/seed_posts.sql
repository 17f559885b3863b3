-- Posts refer to users through their email, not a hard-coded id: ids are
-- generated and differ between databases. Written to run unchanged on
-- SQLite and PostgreSQL: the rows come from a WITH list (SQLite has no
-- column aliases on a VALUES subquery), and the SELECT has a WHERE clause,
-- which SQLite needs to tell ON CONFLICT apart from a join condition.
WITH p (email, slug, title, body, published) AS (VALUES
    ('ada@example.com', 'notes-on-the-engine', 'Notes on the Analytical Engine',
     'The engine might compose elaborate pieces of music.', true),
    ('grace@example.com', 'first-bug', 'The first actual bug',
     'A moth, found in relay #70, panel F; the semicolon here is inside a string.', true),
    ('edsger@example.com', 'goto-considered-harmful', 'Go To Statement Considered Harmful',
     'Draft; letters welcome.', false)
)
INSERT INTO posts (user_id, slug, title, body, published)
SELECT u.id, p.slug, p.title, p.body, p.published
FROM p JOIN users u ON u.email = p.email
WHERE true
ON CONFLICT (slug) DO UPDATE SET title = excluded.title, body = excluded.body,
    published = excluded.published;
