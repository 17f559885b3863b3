-- migrate:up engine:sqlite
CREATE TRIGGER tr AFTER INSERT ON t BEGIN
  UPDATE t SET x = CASE WHEN new.y THEN 1 ELSE 2 END;
  INSERT INTO log VALUES ('end;');
END;
-- migrate:down engine:sqlite
DROP TRIGGER tr;
-- migrate:up engine:postgres
CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN RAISE NOTICE '$$;'; RETURN NEW; END $body$;
SELECT E'a\';b', $1, /* a /* nested; */ */ 'x''y';
-- migrate:down engine:postgres
DROP FUNCTION f();
