-- migrate:up
-- lint:ignore
UPDATE t SET a = 1;
-- lint:ignor x y
/* a /* nested */ block */
CREATE INDEX i ON t (a);
-- migrate:down
