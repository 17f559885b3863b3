/* dbkit:valgrind
 * The migration linter without a server: a corpus of dangerous / safe pairs
 * (each rule has statements it must catch and a close variant it must
 * leave alone), directives, line numbers, scopes, and the example service's
 * migrations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/lint.h"
#include "migrate/lint_int.h"
#include "testutil.h"

#ifndef DBKIT_SOURCE_DIR
#define DBKIT_SOURCE_DIR "."
#endif

enum {
    PG = DBK_ENGINE_POSTGRES,
    SQ = DBK_ENGINE_SQLITE,
    NOTX_D = 1, /* the dangerous file's section is transaction:false */
    NOTX_S = 2, /* the safe file's section is transaction:false */
    NO_LT = 4   /* dbkit sets no lock_timeout (DB_MIGRATION_LOCK_TIMEOUT_MS=0) */
};

typedef struct pair {
    const char *rule;
    int engine;
    int flags;
    const char *dangerous;
    const char *safe;
} pair;

/* "t", "users" and "orders" are existing tables with data in every case. */
static const pair CORPUS[] = {
    {"add-column-volatile-default", PG, 0,
     "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();",
     "ALTER TABLE t ADD COLUMN created_at timestamptz DEFAULT now();"},
    {"add-column-volatile-default", PG, 0, "ALTER TABLE t ADD COLUMN n bigserial;",
     "CREATE TABLE t2 (id bigint PRIMARY KEY);\nALTER TABLE t2 ADD COLUMN n bigserial;"},
    {"add-column-volatile-default", PG, 0,
     "ALTER TABLE t ADD COLUMN r double precision DEFAULT random();",
     "ALTER TABLE t ADD COLUMN r double precision DEFAULT 0.5;"},
    {"add-column-volatile-default", PG, 0,
     "ALTER TABLE t ADD COLUMN twice bigint GENERATED ALWAYS AS (a * 2) STORED;",
     "ALTER TABLE t ADD COLUMN twice bigint;"},
    {"add-column-not-null", PG, 0, "ALTER TABLE t ADD COLUMN status text NOT NULL;",
     "ALTER TABLE t ADD COLUMN status text NOT NULL DEFAULT 'active';"},
    {"set-not-null", PG, 0, "ALTER TABLE t ALTER COLUMN email SET NOT NULL;",
     "ALTER TABLE t VALIDATE CONSTRAINT t_email_not_null;\n"
     "ALTER TABLE t ALTER COLUMN email SET NOT NULL;"},
    {"set-not-null", PG, 0,
     "ALTER TABLE t ADD CONSTRAINT t_email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE t ALTER COLUMN email SET NOT NULL;",
     "CREATE TABLE t2 (email text);\nALTER TABLE t2 ALTER COLUMN email SET NOT NULL;"},
    {"index-not-concurrent", PG, 0, "CREATE INDEX t_a_idx ON t (a);",
     "CREATE TABLE t2 (a bigint);\nCREATE INDEX t2_a_idx ON t2 (a);"},
    {"index-not-concurrent", PG, NOTX_S, "CREATE INDEX t_a_idx ON t (a);",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON t (a);"},
    {"index-not-concurrent", PG, NOTX_S, "DROP INDEX t_a_idx;",
     "DROP INDEX CONCURRENTLY IF EXISTS t_a_idx;"},
    {"index-not-concurrent", PG, NOTX_S, "CREATE UNIQUE INDEX t_email_idx ON t (email);",
     "CREATE UNIQUE INDEX CONCURRENTLY t_email_idx ON t (email);"},
    {"index-not-concurrent", PG, 0, "DROP INDEX orders_user_id_idx;",
     "CREATE TABLE t2 (a bigint);\nCREATE INDEX t2_a_idx ON t2 (a);\nDROP INDEX t2_a_idx;"},
    {"concurrently-in-transaction", PG, NOTX_S, "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);",
     "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);"},
    {"concurrently-in-transaction", PG, NOTX_S, "DROP INDEX CONCURRENTLY t_a_idx;",
     "DROP INDEX CONCURRENTLY t_a_idx;"},
    {"constraint-not-valid", PG, 0,
     "ALTER TABLE t ADD CONSTRAINT t_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
     "ALTER TABLE t ADD CONSTRAINT t_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT "
     "VALID;"},
    {"constraint-not-valid", PG, 0, "ALTER TABLE t ADD CONSTRAINT t_price CHECK (price >= 0);",
     "ALTER TABLE t ADD CONSTRAINT t_price CHECK (price >= 0) NOT VALID;"},
    {"constraint-not-valid", PG, 0,
     "ALTER TABLE t ADD CONSTRAINT t_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT "
     "VALID;\nALTER TABLE t VALIDATE CONSTRAINT t_user_fk;",
     "ALTER TABLE t VALIDATE CONSTRAINT t_user_fk;"},
    {"constraint-not-valid", PG, 0,
     "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users;",
     "CREATE TABLE t2 (id bigint PRIMARY KEY, user_id bigint);\n"
     "ALTER TABLE t2 ADD CONSTRAINT t2_user_fk FOREIGN KEY (user_id) REFERENCES users (id);"},
    {"add-unique-constraint", PG, 0, "ALTER TABLE t ADD CONSTRAINT t_email_key UNIQUE (email);",
     "ALTER TABLE t ADD CONSTRAINT t_email_key UNIQUE USING INDEX t_email_idx;"},
    {"add-unique-constraint", PG, 0, "ALTER TABLE t ADD PRIMARY KEY (id);",
     "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_id_idx;"},
    {"column-type-rewrite", PG, 0, "ALTER TABLE t ALTER COLUMN n TYPE bigint;",
     "ALTER TABLE t ALTER COLUMN name TYPE text;"},
    {"column-type-rewrite", PG, 0, "ALTER TABLE t ALTER COLUMN name TYPE varchar(50);",
     "ALTER TABLE t ALTER COLUMN name TYPE varchar;"},
    {"column-type-rewrite", PG, 0, "ALTER TABLE t ALTER COLUMN code TYPE text USING upper(code);",
     "CREATE TABLE t2 (code int);\nALTER TABLE t2 ALTER COLUMN code TYPE text USING code::text;"},
    {"rename-or-drop", PG, 0, "ALTER TABLE t RENAME COLUMN a TO b;",
     "CREATE TABLE t2 (a bigint);\nALTER TABLE t2 RENAME COLUMN a TO b;"},
    {"rename-or-drop", PG, 0, "ALTER TABLE t DROP COLUMN legacy;",
     "-- lint:ignore rename-or-drop no code has read legacy since release 41\n"
     "ALTER TABLE t DROP COLUMN legacy;"},
    {"rename-or-drop", PG, 0, "DROP TABLE old_sessions;",
     "CREATE TABLE scratch (a bigint);\nDROP TABLE scratch;"},
    {"rename-or-drop", PG, 0, "ALTER TABLE t RENAME TO t_old;",
     "CREATE TABLE t2 (a bigint);\nALTER TABLE t2 RENAME TO t3;\nCREATE INDEX t3_a ON t3 (a);"},
    {"lock-timeout", PG, NO_LT, "ALTER TABLE t ADD COLUMN c text;",
     "SET LOCAL lock_timeout = '2s';\nALTER TABLE t ADD COLUMN c text;"},
    {"lock-timeout", PG, 0, "SET LOCAL lock_timeout = 0;\nALTER TABLE t ADD COLUMN c text;",
     "ALTER TABLE t ADD COLUMN c text;"},
    {"lock-timeout", PG, NO_LT | NOTX_D | NOTX_S,
     "SET LOCAL lock_timeout = '2s';\nALTER TABLE t ADD COLUMN c text;",
     "SET lock_timeout = '2s';\nALTER TABLE t ADD COLUMN c text;"},
    {"lock-timeout", PG, 0, "RESET lock_timeout;\nALTER TABLE t ADD COLUMN c text;",
     "SET lock_timeout TO 3000;\nALTER TABLE t ADD COLUMN c text;"},
    {"lock-timeout", PG, NO_LT, "CREATE TRIGGER t_audit AFTER UPDATE ON t FOR EACH ROW EXECUTE "
                                "FUNCTION audit();",
     "SET LOCAL lock_timeout = '1min';\nCREATE TRIGGER t_audit AFTER UPDATE ON t FOR EACH ROW "
     "EXECUTE FUNCTION audit();"},
    {"unbounded-backfill", PG, 0, "UPDATE t SET status = 'active';",
     "UPDATE t SET status = 'active' WHERE id BETWEEN 1 AND 10000;"},
    {"unbounded-backfill", PG, 0, "DELETE FROM t;",
     "CREATE TABLE t2 (a bigint);\nINSERT INTO t2 VALUES (1);\nDELETE FROM t2;"},
    {"int-primary-key", PG, 0, "CREATE TABLE t2 (id serial PRIMARY KEY, name text);",
     "CREATE TABLE t2 (id bigserial PRIMARY KEY, name text);"},
    {"int-primary-key", PG, 0, "CREATE TABLE t2 (id integer, name text, PRIMARY KEY (id));",
     "CREATE TABLE t2 (id bigint, name text, PRIMARY KEY (id));"},
    {"int-primary-key", PG, 0,
     "CREATE TABLE t2 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);",
     "CREATE TABLE t2 (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);"},
    {"vacuum-full-cluster", PG, NOTX_D | NOTX_S, "VACUUM FULL t;", "VACUUM (ANALYZE) t;"},
    {"vacuum-full-cluster", PG, 0, "CLUSTER t USING t_pkey;",
     "CREATE TABLE t2 (a bigint);\nCREATE INDEX t2_a ON t2 (a);\nCLUSTER t2 USING t2_a;"},
    {"sqlite-table-rebuild", SQ, NOTX_S,
     "CREATE TABLE t_new (id INTEGER PRIMARY KEY, a TEXT);\n"
     "INSERT INTO t_new (id, a) SELECT id, a FROM t;\n"
     "DROP TABLE t;\nALTER TABLE t_new RENAME TO t;",
     "PRAGMA foreign_keys = OFF;\nBEGIN;\nCREATE TABLE t_new (id INTEGER PRIMARY KEY, a TEXT);\n"
     "INSERT INTO t_new (id, a) SELECT id, a FROM t;\n"
     "-- lint:ignore rename-or-drop the rebuilt table takes the name back below\n"
     "DROP TABLE t;\nALTER TABLE t_new RENAME TO t;\nPRAGMA foreign_key_check;\nCOMMIT;\n"
     "PRAGMA foreign_keys = ON;"},
    {"sqlite-add-column-not-null", SQ, 0, "ALTER TABLE t ADD COLUMN status TEXT NOT NULL;",
     "ALTER TABLE t ADD COLUMN status TEXT NOT NULL DEFAULT 'active';"},
    {"sqlite-pragma-in-transaction", SQ, NOTX_S, "PRAGMA foreign_keys = OFF;",
     "PRAGMA foreign_keys = OFF;"},
    {"unbounded-backfill", SQ, 0, "UPDATE t SET a = 1;",
     "UPDATE t SET a = 1 WHERE id <= 1000;"},
    {"rename-or-drop", SQ, 0, "ALTER TABLE t RENAME COLUMN a TO b;",
     "CREATE TABLE t2 (a TEXT);\nALTER TABLE t2 RENAME COLUMN a TO b;"},
    {"lint-directive", PG, 0,
     "-- lint:ignore column-type-rewrite\nALTER TABLE t ALTER COLUMN n TYPE bigint;",
     "-- lint:ignore column-type-rewrite t has 40 rows, an admin-only table\n"
     "ALTER TABLE t ALTER COLUMN n TYPE bigint;"},
    {"lint-directive", PG, 0,
     "-- lint:ignore no-such-rule because\nALTER TABLE t ALTER COLUMN n TYPE text;",
     "-- an ordinary comment: lint rules are listed by dbkit migrate lint --rules\n"
     "ALTER TABLE t ALTER COLUMN n TYPE text;"},
};

#define NCORPUS (sizeof CORPUS / sizeof CORPUS[0])

static char *make_file(const char *body, bool notx)
{
    size_t n = strlen(body) + 128;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "-- a corpus case\n-- migrate:up%s\n%s\n-- migrate:down\n",
             notx ? " transaction:false" : "", body);
    return s;
}

static dbk_lint_report *lint_text(const char *file, int engine, int lock_timeout_ms)
{
    dbk_lint_opts o;
    memset(&o, 0, sizeof o);
    o.engine = (dbk_engine)engine;
    o.lock_timeout_ms = lock_timeout_ms;
    dbk_lint_report *r = NULL;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_lint_file("20240101000000_case.sql", file, 0, &o, &r, &err);
    if (rc != DBK_OK)
        fail_msg("lint failed: %s", err.message);
    return r;
}

static void print_findings(const char *what, const dbk_lint_report *r)
{
    for (size_t i = 0; i < r->count; i++)
        print_message("  %s: %s line %d [%s] %s\n", what, r->items[i].file, r->items[i].line,
                      r->items[i].rule->id, r->items[i].message);
}

static bool has_rule(const dbk_lint_report *r, const char *rule)
{
    for (size_t i = 0; i < r->count; i++)
        if (strcmp(r->items[i].rule->id, rule) == 0)
            return true;
    return false;
}

/* Runs every pair of one rule: the dangerous file must have a finding of
 * that rule, the safe one no finding at all. */
static void run_pairs(const char *rule)
{
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    int ran = 0;
    for (size_t i = 0; i < NCORPUS; i++) {
        const pair *p = &CORPUS[i];
        if (strcmp(p->rule, rule) != 0)
            continue;
        ran++;
        int lt = (p->flags & NO_LT) ? -1 : 0;
        char *d = make_file(p->dangerous, p->flags & NOTX_D);
        char *s = make_file(p->safe, p->flags & NOTX_S);
        dbk_lint_report *rd = lint_text(d, p->engine, lt);
        dbk_lint_report *rs = lint_text(s, p->engine, lt);
        if (!has_rule(rd, rule)) {
            print_findings("dangerous", rd);
            fail_msg("case %zu: not caught by %s:\n%s", i, rule, p->dangerous);
        }
        if (rs->count != 0) {
            print_findings("safe", rs);
            fail_msg("case %zu: safe variant flagged:\n%s", i, p->safe);
        }
        dbk_lint_report_free(rd);
        dbk_lint_report_free(rs);
        free(d);
        free(s);
    }
    assert_true(ran > 0);
}

static void lint_add_column_volatile_default(void **state)
{
    (void)state;
    run_pairs("add-column-volatile-default");
}

static void lint_add_column_not_null(void **state)
{
    (void)state;
    run_pairs("add-column-not-null");
}

static void lint_set_not_null(void **state)
{
    (void)state;
    run_pairs("set-not-null");
}

static void lint_index_not_concurrent(void **state)
{
    (void)state;
    run_pairs("index-not-concurrent");
}

static void lint_concurrently_in_transaction(void **state)
{
    (void)state;
    run_pairs("concurrently-in-transaction");
}

static void lint_constraint_not_valid(void **state)
{
    (void)state;
    run_pairs("constraint-not-valid");
}

static void lint_add_unique_constraint(void **state)
{
    (void)state;
    run_pairs("add-unique-constraint");
}

static void lint_column_type_rewrite(void **state)
{
    (void)state;
    run_pairs("column-type-rewrite");
}

static void lint_rename_or_drop(void **state)
{
    (void)state;
    run_pairs("rename-or-drop");
}

static void lint_lock_timeout(void **state)
{
    (void)state;
    run_pairs("lock-timeout");
}

static void lint_unbounded_backfill(void **state)
{
    (void)state;
    run_pairs("unbounded-backfill");
}

static void lint_int_primary_key(void **state)
{
    (void)state;
    run_pairs("int-primary-key");
}

static void lint_vacuum_full_cluster(void **state)
{
    (void)state;
    run_pairs("vacuum-full-cluster");
}

static void lint_sqlite_rules(void **state)
{
    (void)state;
    run_pairs("sqlite-table-rebuild");
    run_pairs("sqlite-add-column-not-null");
    run_pairs("sqlite-pragma-in-transaction");
}

static void lint_directive_findings(void **state)
{
    (void)state;
    run_pairs("lint-directive");
}

/* DBK_LINT_WARNING / DBK_LINT_ERROR, renamed DBK_LINT_SEVERITY_* in 0.2,
 * still work for one release with the same values: a rule's severity
 * compares equal to the old name. */
static void lint_deprecated_severity_names_still_work(void **state)
{
    (void)state;
    const dbk_lint_rule *r = dbk_lint_rule_find("index-not-concurrent");
    assert_non_null(r);
    assert_int_equal(r->severity, DBK_LINT_SEVERITY_ERROR);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    assert_int_equal(r->severity, DBK_LINT_ERROR);
    assert_int_equal(DBK_LINT_WARNING, DBK_LINT_SEVERITY_WARNING);
    assert_int_equal(DBK_LINT_ERROR, DBK_LINT_SEVERITY_ERROR);
#pragma GCC diagnostic pop
}

/* At least 30 pairs, and every rule but "syntax" has one. */
static void lint_corpus_covers_every_rule(void **state)
{
    (void)state;
    assert_true(NCORPUS >= 30);
    size_t n = 0;
    const dbk_lint_rule *rules = dbk_lint_rules(&n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(rules[i].id, "syntax") == 0)
            continue;
        bool found = false;
        for (size_t k = 0; k < NCORPUS && !found; k++)
            found = strcmp(CORPUS[k].rule, rules[i].id) == 0;
        if (!found)
            fail_msg("rule %s has no dangerous/safe pair", rules[i].id);
        assert_non_null(rules[i].why);
        assert_non_null(rules[i].fix);
        assert_ptr_equal(dbk_lint_rule_find(rules[i].id), &rules[i]);
    }
    assert_null(dbk_lint_rule_find("nope"));
}

/* Findings carry the file's own line numbers, past comments and earlier
 * sections; the statement text is the statement's, not its comments. */
static void lint_line_numbers_are_the_files(void **state)
{
    (void)state;
    const char *file = "-- header\n"
                       "-- migrate:up engine:sqlite\n"
                       "CREATE TABLE a (x INTEGER);\n"
                       "-- migrate:down engine:sqlite\n"
                       "DROP TABLE a;\n"
                       "-- migrate:up engine:postgres\n"
                       "CREATE TABLE a (x bigint);\n"
                       "\n"
                       "/* a block\n comment */\n"
                       "-- a line comment\n"
                       "CREATE INDEX t_x\n    ON t (x);\n"
                       "UPDATE t SET x = 1;\n"
                       "-- migrate:down engine:postgres\n"
                       "DROP TABLE a;\n";
    dbk_lint_report *r = lint_text(file, 0, 0);
    if (r->count != 2)
        print_findings("found", r);
    assert_int_equal(r->count, 2);
    assert_string_equal(r->items[0].rule->id, "index-not-concurrent");
    assert_int_equal(r->items[0].line, 12);
    assert_string_equal(r->items[0].statement, "CREATE INDEX t_x ON t (x)");
    assert_string_equal(r->items[0].table, "t");
    assert_int_equal(r->items[0].version, 20240101000000LL);
    assert_string_equal(r->items[1].rule->id, "unbounded-backfill");
    assert_int_equal(r->items[1].line, 14);
    assert_int_equal(r->items[1].engine, DBK_ENGINE_POSTGRES);
    assert_int_equal(r->statements, 4);
    dbk_lint_report_free(r);
}

/* A directive suppresses only the statement right below it, and text that
 * looks like one inside a string is not one. */
static void lint_directive_applies_to_next_statement_only(void **state)
{
    (void)state;
    const char *file = "-- migrate:up\n"
                       "-- lint:ignore unbounded-backfill t holds 12 rows\n"
                       "UPDATE t SET a = 1;\n"
                       "UPDATE t SET b = '\n-- lint:ignore unbounded-backfill in a string\n';\n"
                       "UPDATE t SET c = 1;\n"
                       "-- migrate:down\n";
    dbk_lint_report *r = lint_text(file, PG, 0);
    if (r->count != 2)
        print_findings("found", r);
    assert_int_equal(r->count, 2);
    assert_int_equal(r->items[0].line, 4);
    assert_int_equal(r->items[1].line, 7);
    assert_int_equal(r->ignored, 1);
    dbk_lint_report_free(r);
}

static void lint_directive_parser(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int kind;
        const char *rule;
    } cases[] = {
        {" lint:ignore lock-timeout dbkit sets it", DBK__LINT_DIR_IGNORE, "lock-timeout"},
        {"\tlint:ignore\tint-primary-key\ta lookup table of 12 rows", DBK__LINT_DIR_IGNORE,
         "int-primary-key"},
        {" lint:ignore lock-timeout", DBK__LINT_DIR_BAD, NULL},
        {" lint:ignore lock-timeout   \t ", DBK__LINT_DIR_BAD, NULL},
        {" lint:ignore", DBK__LINT_DIR_BAD, NULL},
        {" lint:ignore nope reason", DBK__LINT_DIR_BAD, NULL},
        {" lint:ignor lock-timeout reason", DBK__LINT_DIR_BAD, NULL},
        {" lint:", DBK__LINT_DIR_BAD, NULL},
        {" linting is good", DBK__LINT_DIR_NONE, NULL},
        {" a comment", DBK__LINT_DIR_NONE, NULL},
        {"", DBK__LINT_DIR_NONE, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk__lint_dir d;
        dbk__lint_directive_parse(cases[i].text, strlen(cases[i].text), &d);
        if ((int)d.kind != cases[i].kind)
            fail_msg("\"%s\": kind %d, want %d (%s)", cases[i].text, d.kind, cases[i].kind,
                     d.problem);
        if (cases[i].rule)
            assert_string_equal(d.rule->id, cases[i].rule);
        if (d.kind == DBK__LINT_DIR_BAD)
            assert_true(d.problem[0] != '\0');
    }
}

/* File scope: a table created by an earlier file is an existing table;
 * run scope: it is new (pending, applied first in the same run). */
static void lint_scope_file_and_run(void **state)
{
    (void)state;
    dbk_migration_file files[] = {
        {"1_a.sql", "-- migrate:up\nCREATE TABLE a (x bigint);\n-- migrate:down\n", 0},
        {"2_b.sql", "-- migrate:up\nCREATE INDEX a_x ON a (x);\n-- migrate:down\n", 0},
    };
    dbk_migrate_source src = {NULL, files, 2};
    dbk_lint_opts o;
    memset(&o, 0, sizeof o);
    o.engine = DBK_ENGINE_POSTGRES;
    dbk_lint_report *r = NULL;
    dbk_error err;
    assert_int_equal(dbk_lint_source(&src, &o, &r, &err), DBK_OK);
    assert_int_equal(r->count, 1);
    assert_string_equal(r->items[0].rule->id, "index-not-concurrent");
    assert_int_equal(r->items[0].version, 2);
    assert_int_equal(r->files, 2);
    dbk_lint_report_free(r);
    o.scope = DBK_LINT_SCOPE_RUN;
    assert_int_equal(dbk_lint_source(&src, &o, &r, &err), DBK_OK);
    assert_int_equal(r->count, 0);
    dbk_lint_report_free(r);
    /* versions: only file 2 linted, so "a" is not known to be new */
    int64_t v = 2;
    o.versions = &v;
    o.nversions = 1;
    assert_int_equal(dbk_lint_source(&src, &o, &r, &err), DBK_OK);
    assert_int_equal(r->count, 1);
    assert_int_equal(r->files, 1);
    dbk_lint_report_free(r);
}

/* A section PostgreSQL's parser rejects is a "syntax" finding on its line;
 * a malformed file is an error naming it. */
static void lint_syntax_error_and_malformed_file(void **state)
{
    (void)state;
    dbk_lint_report *r = lint_text("-- migrate:up\nCREATE TABLE a (x bigint);\n"
                                   "ALTER TABLE a ADD COLUM y int;\n-- migrate:down\n",
                                   PG, 0);
    assert_int_equal(r->count, 1);
    assert_string_equal(r->items[0].rule->id, "syntax");
    assert_int_equal(r->items[0].line, 3);
    dbk_lint_report_free(r);
    dbk_lint_report *out = (dbk_lint_report *)1;
    dbk_error err;
    assert_int_equal(dbk_lint_file("1_x.sql", "CREATE TABLE a (x int);\n", 0, NULL, &out, &err),
                     DBK_EINVALID);
    assert_null(out);
    assert_non_null(strstr(err.message, "1_x.sql"));
}

/* The library reads no migration variable by itself: the default
 * lock_timeout (and what the lock-timeout rule assumes for 0) stays 5000
 * whatever DB_MIGRATION_LOCK_TIMEOUT_MS says; dbk_migrate_opts_from_env()
 * reads it (0: none, -1 in the options), and the linter given that value
 * agrees with the migrator. */
static void lint_follows_migration_lock_timeout_env(void **state)
{
    (void)state;
    char *f = make_file("ALTER TABLE t ADD COLUMN c text;", false);
    setenv("DB_MIGRATION_LOCK_TIMEOUT_MS", "0", 1);
    assert_int_equal(dbk_migrate_default_lock_timeout_ms(), 5000);
    dbk_lint_report *r = lint_text(f, PG, 0);
    assert_int_equal(r->count, 0);
    dbk_lint_report_free(r);
    dbk_migrate_opts mo = DBK_MIGRATE_OPTS_INIT;
    dbk_error err;
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_lock_timeout_ms, -1);
    assert_int_equal(mo.statement_timeout_ms, 0);
    r = lint_text(f, PG, mo.statement_lock_timeout_ms);
    assert_true(has_rule(r, "lock-timeout"));
    dbk_lint_report_free(r);
    setenv("DB_MIGRATION_LOCK_TIMEOUT_MS", "2500", 1);
    mo = (dbk_migrate_opts)DBK_MIGRATE_OPTS_INIT;
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_lock_timeout_ms, 2500);
    r = lint_text(f, PG, mo.statement_lock_timeout_ms);
    assert_int_equal(r->count, 0);
    dbk_lint_report_free(r);
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    assert_int_equal(dbk_migrate_default_lock_timeout_ms(), 5000);
    free(f);
}

/* dbk_migrate_opts_from_env(): both variables, fields the caller set are
 * kept, empty counts as unset, bad values are DBK_ECONFIG naming the
 * variable (never its value) with a hint, and leave the options alone. */
static void lint_migrate_opts_from_env(void **state)
{
    (void)state;
    dbk_error err;
    dbk_migrate_opts mo = DBK_MIGRATE_OPTS_INIT;
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    unsetenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS");
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_lock_timeout_ms, 0);
    assert_int_equal(mo.statement_timeout_ms, 0);

    setenv("DB_MIGRATION_LOCK_TIMEOUT_MS", "", 1);
    setenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS", "86400000", 1);
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_lock_timeout_ms, 0);
    assert_int_equal(mo.statement_timeout_ms, 86400000);

    /* a field the caller set wins */
    mo = (dbk_migrate_opts)DBK_MIGRATE_OPTS_INIT;
    mo.statement_timeout_ms = 1234;
    setenv("DB_MIGRATION_LOCK_TIMEOUT_MS", "700", 1);
    setenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS", "0", 1);
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_lock_timeout_ms, 700);
    assert_int_equal(mo.statement_timeout_ms, 1234);
    mo.statement_timeout_ms = 0;
    DBKT_OK(dbk_migrate_opts_from_env(&mo, &err), &err);
    assert_int_equal(mo.statement_timeout_ms, -1);

    static const char *const bad[] = {"abc", "-1", "86400001", " 5", "5 ", "1e3", "0x10",
                                      "99999999999999999999", "s3cret"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int which = 0; which < 2; which++) {
            const char *name =
                which ? "DB_MIGRATION_STATEMENT_TIMEOUT_MS" : "DB_MIGRATION_LOCK_TIMEOUT_MS";
            unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
            unsetenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS");
            setenv(name, bad[i], 1);
            mo = (dbk_migrate_opts)DBK_MIGRATE_OPTS_INIT;
            dbk_rc rc = dbk_migrate_opts_from_env(&mo, &err);
            if (rc != DBK_ECONFIG || !strstr(err.message, name))
                fail_msg("%s=\"%s\": %s \"%s\"", name, bad[i], dbk_rc_name(rc), err.message);
            assert_null(strstr(err.message, "s3cret"));
            assert_non_null(strstr(err.hint, "0 sets no timeout"));
            assert_int_equal(mo.statement_lock_timeout_ms, 0);
            assert_int_equal(mo.statement_timeout_ms, 0);
        }
    }
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    unsetenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS");
    DBKT_RC(DBK_EMISUSE, dbk_migrate_opts_from_env(NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_opts_from_env(NULL, NULL));
}

/* The example service's migrations (examples/db), all pending on a fresh
 * database as the shop applies them at start-up, pass on both engines. */
static void lint_example_migrations_pass(void **state)
{
    (void)state;
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    dbk_migrate_source src = {DBKIT_SOURCE_DIR "/examples/db/migrations", NULL, 0};
    dbk_lint_opts o;
    memset(&o, 0, sizeof o);
    o.scope = DBK_LINT_SCOPE_RUN;
    dbk_lint_report *r = NULL;
    dbk_error err;
    assert_int_equal(dbk_lint_source(&src, &o, &r, &err), DBK_OK);
    print_findings("example", r);
    assert_int_equal(r->count, 0);
    assert_true(r->files >= 7);
    dbk_lint_report_free(r);
}

/* The tables a statement names, for the lock-wait message. */
static void lint_relations_of_a_statement(void **state)
{
    (void)state;
    char names[8][128];
    size_t n = dbk__lint_relations(
        "ALTER TABLE shop.Orders ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users (id)", names,
        8);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "shop.orders");
    assert_string_equal(names[1], "users");
    assert_int_equal(dbk__lint_relations("not sql at all", names, 8), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lint_add_column_volatile_default),
        cmocka_unit_test(lint_add_column_not_null),
        cmocka_unit_test(lint_set_not_null),
        cmocka_unit_test(lint_index_not_concurrent),
        cmocka_unit_test(lint_concurrently_in_transaction),
        cmocka_unit_test(lint_constraint_not_valid),
        cmocka_unit_test(lint_add_unique_constraint),
        cmocka_unit_test(lint_column_type_rewrite),
        cmocka_unit_test(lint_rename_or_drop),
        cmocka_unit_test(lint_lock_timeout),
        cmocka_unit_test(lint_unbounded_backfill),
        cmocka_unit_test(lint_int_primary_key),
        cmocka_unit_test(lint_vacuum_full_cluster),
        cmocka_unit_test(lint_sqlite_rules),
        cmocka_unit_test(lint_directive_findings),
        cmocka_unit_test(lint_corpus_covers_every_rule),
        cmocka_unit_test(lint_deprecated_severity_names_still_work),
        cmocka_unit_test(lint_line_numbers_are_the_files),
        cmocka_unit_test(lint_directive_applies_to_next_statement_only),
        cmocka_unit_test(lint_directive_parser),
        cmocka_unit_test(lint_scope_file_and_run),
        cmocka_unit_test(lint_syntax_error_and_malformed_file),
        cmocka_unit_test(lint_follows_migration_lock_timeout_env),
        cmocka_unit_test(lint_migrate_opts_from_env),
        cmocka_unit_test(lint_example_migrations_pass),
        cmocka_unit_test(lint_relations_of_a_statement),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
