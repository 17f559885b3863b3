/*
 * `dbkit migrate lint` and `dbkit check --lint`, run as a separate process:
 * exit codes (6 on findings), the human and --json output (parsed back with
 * jansson), pending migrations read from a real database on both engines,
 * FILE arguments and --all without a database, and the example service's
 * migrations (examples/db), which must pass.
 *
 * The binary's path comes from the build (DBKIT_CLI_PATH); each run is
 * bounded (60 s).
 */
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#ifndef DBKIT_CLI_PATH
#error "DBKIT_CLI_PATH must name the built dbkit binary (tests/CMakeLists.txt)"
#endif

typedef dbkt_proc run;

static const char *const DB_VARS[] = {"DATABASE_URL",
                                      "DB_HOST",
                                      "DB_PORT",
                                      "DB_NAME",
                                      "DB_USER",
                                      "DB_PASSWORD",
                                      "DB_PASSWORD_FILE",
                                      "DB_MIGRATION_LOCK_TIMEOUT_MS",
                                      NULL};

static run cli_env(const char *cwd, const char *const *env, const char *const *args)
{
    int o, e;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, cwd, args, DB_VARS, env, &o, &e);
    return dbkt_collect(pid, o, e, 60000, "dbkit");
}

#define CLI(cwd, ...) cli_env((cwd), NULL, (const char *const[]){__VA_ARGS__, NULL})

static void expect_code(const run *r, int code)
{
    if (r->code != code)
        fail_msg("expected exit %d, got %d\nstdout:\n%s\nstderr:\n%s", code, r->code, r->out,
                 r->err);
}

static void has(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected \"%s\" in:\n%s", needle, hay);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* <tmp>/<name>/db/migrations with the given files. */
static char *project(const char *name, const char *const *files)
{
    char *base = dbkt_tmpdir();
    char *d = malloc(4096);
    assert_non_null(d);
    snprintf(d, 4096, "%s/%s", base, name);
    mkdir(d, 0755);
    char p[4200];
    snprintf(p, sizeof p, "%s/db", d);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/db/migrations", d);
    mkdir(p, 0755);
    for (size_t i = 0; files && files[i]; i += 2) {
        snprintf(p, sizeof p, "%s/db/migrations/%s", d, files[i]);
        write_text(p, files[i + 1]);
    }
    free(base);
    return d;
}

static const char *const SHOP_FILES[] = {
    "20240101000000_items.sql",
    "-- migrate:up\nCREATE TABLE items (id bigint PRIMARY KEY, name text);\n"
    "CREATE INDEX items_name_idx ON items (name);\n-- migrate:down\nDROP TABLE items;\n",
    "20240102000000_items_sku.sql",
    "-- migrate:up\nALTER TABLE items ADD COLUMN sku text;\n\n"
    "CREATE INDEX items_sku_idx ON items (sku);\n-- migrate:down\n",
    NULL};

static void examples_pass(const char *url, dbk_engine engine)
{
    (void)engine;
    const char *dir = DBKIT_SOURCE_DIR "/examples/db/migrations";
    run r = CLI(NULL, "--url", url, "--migrations-dir", dir, "migrate", "lint");
    expect_code(&r, 0);
    has(r.out, "7 files");
    has(r.out, "no findings");
    dbkt_proc_free(&r);
    r = CLI(NULL, "--url", url, "--migrations-dir", dir, "check", "--lint");
    expect_code(&r, 0);
    has(r.out, "ok   migration-lint 7 pending migrations, no findings");
    dbkt_proc_free(&r);
    r = CLI(NULL, "--url", url, "--migrations-dir", dir, "-q", "migrate", "up");
    expect_code(&r, 0);
    dbkt_proc_free(&r);
    r = CLI(NULL, "--url", url, "--migrations-dir", dir, "--json", "migrate", "lint");
    expect_code(&r, 0);
    has(r.out, "\"ok\":true,\"pending\":0");
    dbkt_proc_free(&r);
}

/* The example service's migrations, pending on a fresh database (how the
 * shop applies them at start-up), pass the lint on both engines. */
static void cli_lint_example_migrations_pass(void **state)
{
    (void)state;
    dbkt_each_engine("cli_lint_examples", examples_pass);
}

/* A pending migration that builds an index on a table an applied one
 * created: exit 6, file:line, rule, why and fix; --json parsed back;
 * `check --lint` fails with it. */
static void cli_lint_pending_findings_exit_6(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("cli_lint_pending");
    char *proj = project("lint_pending", SHOP_FILES);
    run r = CLI(proj, "--url", url, "-q", "migrate", "up", "--to", "20240101000000");
    expect_code(&r, 0);
    dbkt_proc_free(&r);

    r = CLI(proj, "--url", url, "migrate", "lint");
    expect_code(&r, 6);
    has(r.out, "db/migrations/20240102000000_items_sku.sql:4: error [index-not-concurrent]");
    has(r.out, "    CREATE INDEX items_sku_idx ON items (sku)");
    has(r.out, "    why: ");
    has(r.out, "    fix: CREATE INDEX CONCURRENTLY");
    has(r.out, "1 finding in 1 file");
    dbkt_proc_free(&r);

    r = CLI(proj, "--url", url, "--json", "migrate", "lint");
    expect_code(&r, 6);
    json_error_t je;
    json_t *j = json_loads(r.out, 0, &je);
    if (!j)
        fail_msg("not JSON: %s", r.out);
    assert_true(json_is_false(json_object_get(j, "ok")));
    assert_int_equal(json_integer_value(json_object_get(j, "pending")), 1);
    json_t *f = json_array_get(json_object_get(j, "findings"), 0);
    assert_non_null(f);
    assert_string_equal(json_string_value(json_object_get(f, "rule")), "index-not-concurrent");
    assert_int_equal(json_integer_value(json_object_get(f, "line")), 4);
    assert_int_equal(json_integer_value(json_object_get(f, "version")), 20240102000000LL);
    assert_string_equal(json_string_value(json_object_get(f, "table")), "items");
    assert_string_equal(json_string_value(json_object_get(f, "severity")), "error");
    assert_non_null(json_string_value(json_object_get(f, "fix")));
    json_decref(j);
    dbkt_proc_free(&r);

    r = CLI(proj, "--url", url, "check", "--lint");
    expect_code(&r, 6);
    has(r.out, "FAIL migration-lint db/migrations/20240102000000_items_sku.sql:4: "
               "[index-not-concurrent]");
    dbkt_proc_free(&r);

    /* lint --all (no database) lints the applied file too: its index is on
     * a table created in the same file, so it stays clean */
    r = CLI(proj, "migrate", "lint", "--all", "--engine", "postgres");
    expect_code(&r, 6);
    has(r.out, "1 finding in 2 files");
    dbkt_proc_free(&r);
    free(proj);
    free(url);
}

/* FILE arguments need no database; a directive without a reason is a
 * finding; DB_MIGRATION_LOCK_TIMEOUT_MS=0 (dbkit sets no lock_timeout)
 * makes an ALTER TABLE a finding; --rules lists the rules. */
static void cli_lint_files_directives_and_env(void **state)
{
    (void)state;
    static const char *const files[] = {
        "1_alter.sql", "-- migrate:up\nALTER TABLE items ADD COLUMN note text;\n-- migrate:down\n",
        "2_ignored.sql",
        "-- migrate:up\n-- lint:ignore column-type-rewrite items holds 30 rows\n"
        "ALTER TABLE items ALTER COLUMN id TYPE bigint;\n-- migrate:down\n",
        "3_no_reason.sql",
        "-- migrate:up\n-- lint:ignore column-type-rewrite\n"
        "ALTER TABLE items ALTER COLUMN id TYPE bigint;\n-- migrate:down\n",
        NULL};
    char *proj = project("lint_files", files);
    run r = CLI(proj, "migrate", "lint", "db/migrations/1_alter.sql",
                "db/migrations/2_ignored.sql");
    expect_code(&r, 0);
    has(r.out, "2 files, 2 statements: no findings (1 ignored by lint:ignore)");
    dbkt_proc_free(&r);

    r = CLI(proj, "migrate", "lint", "db/migrations/3_no_reason.sql");
    expect_code(&r, 6);
    has(r.out, "3_no_reason.sql:2: error [lint-directive] lint:ignore column-type-rewrite needs a "
               "reason");
    has(r.out, "3_no_reason.sql:3: error [column-type-rewrite]");
    dbkt_proc_free(&r);

    const char *env[] = {"DB_MIGRATION_LOCK_TIMEOUT_MS=0", NULL};
    r = cli_env(proj, env,
                (const char *const[]){"migrate", "lint", "db/migrations/1_alter.sql", NULL});
    expect_code(&r, 6);
    has(r.out, "1_alter.sql:2: error [lock-timeout]");
    dbkt_proc_free(&r);

    r = CLI(proj, "migrate", "lint", "db/migrations/nope.sql");
    expect_code(&r, 1);
    dbkt_proc_free(&r);

    r = CLI(proj, "--json", "migrate", "lint", "--rules");
    expect_code(&r, 0);
    has(r.out, "\"rule\":\"lock-timeout\"");
    has(r.out, "\"rule\":\"sqlite-table-rebuild\",\"engine\":\"sqlite\"");
    dbkt_proc_free(&r);
    free(proj);
}

/* `migrate trace` on a throwaway database migrated to the version before
 * the file: varchar(20) -> varchar(50) takes ACCESS EXCLUSIVE but does not
 * rewrite, int -> bigint rewrites; `lint --trace` dismisses the first
 * column-type-rewrite finding and confirms the second. The throwaway
 * database is gone afterwards and the real one untouched. */
static void cli_lint_trace_confirms_and_dismisses(void **state)
{
    (void)state;
    static const char *const files[] = {
        "1_items.sql",
        "-- migrate:up\nCREATE TABLE items (id bigint PRIMARY KEY, name varchar(20), n int);\n"
        "-- migrate:down\nDROP TABLE items;\n",
        "2_types.sql",
        "-- migrate:up\nALTER TABLE items ALTER COLUMN name TYPE varchar(50);\n"
        "ALTER TABLE items ALTER COLUMN n TYPE bigint;\n-- migrate:down\n",
        NULL};
    char *url = dbkt_pg_fresh_db("cli_lint_trace");
    char *proj = project("lint_trace", files);
    run r = CLI(proj, "--url", url, "-q", "migrate", "up", "--to", "1");
    expect_code(&r, 0);
    dbkt_proc_free(&r);

    r = CLI(proj, "--url", url, "migrate", "trace", "db/migrations/2_types.sql");
    expect_code(&r, 0);
    has(r.out, "2     ALTER TABLE items ALTER COLUMN name TYPE var items AccessExclusiveLock");
    has(r.out, "3     ALTER TABLE items ALTER COLUMN n TYPE bigint");
    dbkt_proc_free(&r);
    r = CLI(proj, "--url", url, "--json", "migrate", "trace", "db/migrations/2_types.sql");
    expect_code(&r, 0);
    json_error_t je;
    json_t *j = json_loads(r.out, 0, &je);
    if (!j)
        fail_msg("not JSON: %s", r.out);
    json_t *st = json_object_get(j, "statements");
    assert_int_equal(json_array_size(st), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 0), "rewritten")),
                        "");
    assert_true(json_is_true(json_object_get(json_array_get(st, 0), "access_exclusive")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 1), "rewritten")),
                        "items");
    json_decref(j);
    dbkt_proc_free(&r);

    r = CLI(proj, "--url", url, "migrate", "lint");
    expect_code(&r, 6);
    has(r.out, "2 findings in 1 file");
    dbkt_proc_free(&r);
    r = CLI(proj, "--url", url, "migrate", "lint", "--trace");
    expect_code(&r, 6);
    has(r.out, "2_types.sql:2: [column-type-rewrite] dismissed by the trace");
    has(r.out, "2_types.sql:3: error [column-type-rewrite]");
    has(r.out, "(confirmed, trace: rewrote items)");
    has(r.out, "1 finding in 1 file");
    dbkt_proc_free(&r);

    /* nothing left behind: no throwaway database, the real one still at 1 */
    dbk_conn *c = dbkt_open(url);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM pg_database WHERE datname "
                                              "LIKE 'dbkit_trace_%'"),
                     0);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM dbkit_migrations"), 1);
    char type[32];
    dbkt_text(dbk_conn_db(c),
              "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' "
              "AND column_name = 'n'",
              type, sizeof type);
    assert_string_equal(type, "integer");
    dbk_conn_close(c);

    /* SQLite has no trace */
    char *sq = dbkt_sqlite_url("cli_lint_trace");
    r = CLI(proj, "--url", sq, "migrate", "trace", "db/migrations/2_types.sql");
    expect_code(&r, 2);
    dbkt_proc_free(&r);
    free(sq);
    free(proj);
    free(url);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cli_lint_example_migrations_pass),
        cmocka_unit_test(cli_lint_pending_findings_exit_6),
        cmocka_unit_test(cli_lint_files_directives_and_env),
        cmocka_unit_test(cli_lint_trace_confirms_and_dismisses),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
