/*
 * The dbkit command, run as a separate process the way a person or a
 * script runs it: exit codes, human output, --json output parsed back with
 * jansson, redaction of secrets, and four `dbkit migrate up` processes at
 * once. Both engines: a SQLite file and a fresh PostgreSQL database.
 *
 * The binary's path comes from the build (DBKIT_CLI_PATH). Each run is
 * bounded: a command still running after 60 s is killed and fails the test.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef DBKIT_CLI_PATH
#error "DBKIT_CLI_PATH must name the built dbkit binary (tests/CMakeLists.txt)"
#endif

typedef dbkt_proc run;
#define run_free dbkt_proc_free
#define mono_ms dbkt_mono_ms
#define append dbkt_append

/* The variables that would point dbkit elsewhere than the test says. */
static const char *const DB_VARS[] = {"DATABASE_URL", "DB_HOST",     "DB_PORT",          "DB_NAME",
                                      "DB_USER",      "DB_PASSWORD", "DB_PASSWORD_FILE", NULL};

/* Starts dbkit with args in cwd, with DATABASE_URL and DB_* cleared and
 * then `env` ("K=V" strings, may be NULL) added. */
static pid_t spawn_cli(const char *cwd, const char *const *env, const char *const *args,
                       int *out_fd, int *err_fd)
{
    return dbkt_spawn(DBKIT_CLI_PATH, cwd, args, DB_VARS, env, out_fd, err_fd);
}

static run collect(pid_t pid, int ofd, int efd)
{
    return dbkt_collect(pid, ofd, efd, 60000, "dbkit");
}

static run cli_env(const char *cwd, const char *const *env, const char *const *args)
{
    int o, e;
    pid_t pid = spawn_cli(cwd, env, args, &o, &e);
    return collect(pid, o, e);
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

static void lacks(const char *hay, const char *needle)
{
    if (strstr(hay, needle))
        fail_msg("did not expect \"%s\" in:\n%s", needle, hay);
}

static json_t *parse_json(const run *r)
{
    json_error_t je;
    json_t *j = json_loads(r->out, 0, &je);
    if (!j)
        fail_msg("stdout is not JSON (%s at line %d):\n%s", je.text, je.line, r->out);
    return j;
}

static json_int_t jint(json_t *obj, const char *path)
{
    /* dotted path of object keys */
    json_t *cur = obj;
    const char *p = path;
    while (cur && *p) {
        size_t n = strcspn(p, ".");
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        cur = json_object_get(cur, key);
        p += n + (p[n] == '.');
    }
    if (!json_is_integer(cur))
        fail_msg("%s is not an integer in the JSON output", path);
    return json_integer_value(cur);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static char *project(const char *name)
{
    char *base = dbkt_tmpdir();
    size_t n = strlen(base) + strlen(name) + 32;
    char *d = malloc(n);
    assert_non_null(d);
    snprintf(d, n, "%s/%s", base, name);
    free(base);
    assert_true(mkdir(d, 0777) == 0 || errno == EEXIST);
    char sub[1024];
    snprintf(sub, sizeof sub, "%s/db", d);
    mkdir(sub, 0777);
    snprintf(sub, sizeof sub, "%s/db/seeds", d);
    mkdir(sub, 0777);
    return d;
}

/* ---- no database needed ---- */

static void cli_help_and_usage_errors(void **state)
{
    (void)state;
    run r = CLI(NULL, "--help");
    expect_code(&r, 0);
    has(r.out, "usage: dbkit");
    has(r.out, "Exit codes");
    run_free(&r);
    const char *cmds[][3] = {{"migrate", "--help", NULL},
                             {"migrate", "up", "--help"},
                             {"migrate", "status", "-h"},
                             {"seed", "--help", NULL},
                             {"query", "--help", NULL},
                             {"doctor", "--help", NULL},
                             {"config", "--help", NULL},
                             {"--help", "seed", NULL}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        r = cli_env(NULL, NULL, cmds[i]);
        expect_code(&r, 0);
        has(r.out, "usage: dbkit");
        run_free(&r);
    }
    r = CLI(NULL, "version");
    expect_code(&r, 0);
    has(r.out, "dbkit ");
    run_free(&r);

    /* usage errors: exit 2, a message and a pointer to --help */
    const char *bad[][4] = {{"frobnicate", NULL},
                            {"migrate", "sideways", NULL},
                            {"migrate", "down", "--steps", "x"},
                            {"migrate", "down", "--steps", "0"},
                            {"migrate", "up", "--to", "abc"},
                            {"migrate", "new", NULL},
                            {"migrate", "repair", "--mark-applied", "-3"},
                            {"seed", "--wat", NULL},
                            {"query", NULL},
                            {"--lock-timeout", "soon", "doctor", NULL},
                            {"--url", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = cli_env(NULL, NULL, bad[i]);
        expect_code(&r, 2);
        assert_true(strlen(r.err) > 0);
        run_free(&r);
    }
    r = cli_env(NULL, NULL, (const char *const[]){NULL});
    expect_code(&r, 2);
    has(r.err, "usage: dbkit");
    run_free(&r);
    r = CLI(NULL, "--json", "frobnicate");
    expect_code(&r, 2);
    json_t *j = parse_json(&r);
    assert_true(json_is_false(json_object_get(j, "ok")));
    json_decref(j);
    run_free(&r);
}

static void cli_config_redacts_password(void **state)
{
    (void)state;
    const char *url = "postgres://alice:s3cr3tpw@db.example:5433/app?sslmode=require&pool_max=7";
    run r = CLI(NULL, "--url", url, "config");
    expect_code(&r, 0);
    lacks(r.out, "s3cr3tpw");
    lacks(r.err, "s3cr3tpw");
    has(r.out, "***");
    has(r.out, "pool_max");
    run_free(&r);

    /* from DATABASE_URL, as JSON, with sources */
    char env_url[256];
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    const char *env[] = {env_url, "DB_POOL_MAX=9", NULL};
    r = cli_env(NULL, env, (const char *const[]){"--json", "config", NULL});
    expect_code(&r, 0);
    lacks(r.out, "s3cr3tpw");
    json_t *j = parse_json(&r);
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_string_equal(json_string_value(json_object_get(j, "engine")), "postgres");
    has(json_string_value(json_object_get(j, "url")), "alice:***@db.example:5433/app");
    json_t *settings = json_object_get(j, "settings");
    assert_true(json_is_array(settings));
    bool saw_pw = false, saw_pool = false;
    for (size_t i = 0; i < json_array_size(settings); i++) {
        json_t *s = json_array_get(settings, i);
        const char *k = json_string_value(json_object_get(s, "key"));
        const char *v = json_string_value(json_object_get(s, "value"));
        const char *src = json_string_value(json_object_get(s, "source"));
        if (strcmp(k, "password") == 0) {
            assert_string_equal(v, "***");
            saw_pw = true;
        }
        if (strcmp(k, "pool_max") == 0) {
            /* the URL parameter beats the environment */
            assert_string_equal(v, "7");
            assert_string_equal(src, "url");
            saw_pool = true;
        }
    }
    assert_true(saw_pw && saw_pool);
    json_decref(j);
    run_free(&r);

    /* a secret in DB_PASSWORD never shows either */
    const char *env2[] = {"DB_HOST=db.example", "DB_USER=bob", "DB_PASSWORD=pw-in-env-42",
                          "DB_NAME=app", NULL};
    r = cli_env(NULL, env2, (const char *const[]){"config", NULL});
    expect_code(&r, 0);
    lacks(r.out, "pw-in-env-42");
    has(r.out, "env");
    run_free(&r);
}

static void cli_connect_failure_exit_code(void **state)
{
    (void)state;
    const char *url = "postgres://u:hunter2pw@127.0.0.1:1/nodb?connect_timeout=2";
    run r = CLI(NULL, "--url", url, "doctor");
    expect_code(&r, 5);
    lacks(r.out, "hunter2pw");
    lacks(r.err, "hunter2pw");
    has(r.err, "error:");
    run_free(&r);
    r = CLI(NULL, "--json", "--url", url, "migrate", "status");
    expect_code(&r, 5);
    lacks(r.out, "hunter2pw");
    json_t *j = parse_json(&r);
    assert_true(json_is_false(json_object_get(j, "ok")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "DBK_EUNAVAILABLE");
    json_decref(j);
    run_free(&r);
    /* a malformed URL is a configuration error (1), password hidden */
    r = CLI(NULL, "--url", "postgres://u:hunter2pw@[::1/x", "doctor");
    expect_code(&r, 1);
    lacks(r.err, "hunter2pw");
    run_free(&r);
}

/* ---- the whole workflow, both engines ---- */

static const char *MIG1 = "-- migrate:up\n"
                          "CREATE TABLE items (code TEXT PRIMARY KEY, qty INTEGER NOT NULL);\n"
                          "-- migrate:down\n"
                          "DROP TABLE items;\n";

static void workflow_body(const char *url, dbk_engine engine)
{
    char *dir = project(engine == DBK_ENGINE_SQLITE ? "wf_sqlite" : "wf_pg");
    const char *U = url;

    /* migrate new writes a timestamped file */
    run r = CLI(dir, "--url", U, "migrate", "new", "create_items");
    expect_code(&r, 0);
    has(r.out, "db/migrations/");
    has(r.out, "_create_items.sql");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, strstr(r.out, "db/migrations/"));
    path[strcspn(path, "\n")] = '\0';
    run_free(&r);
    const char *base = strrchr(path, '/') + 1;
    assert_int_equal(strspn(base, "0123456789"), 14);
    write_text(path, MIG1);
    char version[32];
    snprintf(version, sizeof version, "%.14s", base);

    /* pending */
    r = CLI(dir, "--url", U, "migrate", "status", "--exit-code");
    expect_code(&r, 3);
    has(r.out, "pending");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "migrate", "status");
    expect_code(&r, 0);
    json_t *j = parse_json(&r);
    assert_int_equal(jint(j, "counts.pending"), 1);
    assert_int_equal(jint(j, "current_version"), 0);
    json_decref(j);
    run_free(&r);

    /* up, one line per migration with its time */
    r = CLI(dir, "--url", U, "migrate", "up");
    expect_code(&r, 0);
    has(r.out, "_create_items ... ");
    has(r.out, " ms\n");
    has(r.out, "1 migration applied");
    run_free(&r);
    r = CLI(dir, "--url", U, "migrate", "status", "--exit-code");
    expect_code(&r, 0);
    has(r.out, "applied");
    run_free(&r);

    /* a second migration through --json */
    char p2[1024];
    snprintf(p2, sizeof p2, "%s/db/migrations/%s", dir, "99990101000000_add_note.sql");
    write_text(p2, "-- migrate:up\nALTER TABLE items ADD COLUMN note TEXT;\n"
                   "-- migrate:down\nALTER TABLE items DROP COLUMN note;\n");
    r = CLI(dir, "--url", U, "--json", "migrate", "up");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_t *applied = json_object_get(j, "applied");
    assert_int_equal(json_array_size(applied), 1);
    assert_int_equal(jint(json_array_get(applied, 0), "version"), 99990101000000LL);
    assert_string_equal(json_string_value(json_object_get(json_array_get(applied, 0), "name")),
                        "add_note");
    assert_int_equal(jint(j, "current_version"), 99990101000000LL);
    json_decref(j);
    run_free(&r);

    /* seeds: run, skip, force (same data) */
    char sp[1024];
    snprintf(sp, sizeof sp, "%s/db/seeds/01_items.sql", dir);
    write_text(sp, "INSERT INTO items (code, qty) VALUES ('a', 1), ('b', 2)\n"
                   "ON CONFLICT (code) DO UPDATE SET qty = excluded.qty;\n");
    r = CLI(dir, "--url", U, "seed");
    expect_code(&r, 0);
    has(r.out, "01_items.sql ... ");
    has(r.out, "1 seed ran");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "seed");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(jint(j, "ran"), 0);
    assert_int_equal(jint(j, "skipped"), 1);
    json_decref(j);
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "seed", "--force");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(jint(j, "ran"), 1);
    json_decref(j);
    run_free(&r);

    /* query: parameters as text, table and JSON */
    r = CLI(dir, "--url", U, "query", "SELECT code, qty FROM items WHERE code = $1", "b");
    expect_code(&r, 0);
    has(r.out, " code | qty");
    has(r.out, "(1 row)");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "query", "SELECT code, qty, note FROM items ORDER BY code");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(jint(j, "row_count"), 2);
    json_t *rows = json_object_get(j, "rows");
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "code")), "a");
    assert_int_equal(jint(json_array_get(rows, 1), "qty"), 2);
    assert_true(json_is_null(json_object_get(json_array_get(rows, 0), "note")));
    json_decref(j);
    run_free(&r);
    r = CLI(dir, "--url", U, "query", "UPDATE items SET qty = qty + 1 WHERE code = $1", "a");
    expect_code(&r, 0);
    has(r.out, "1 row affected");
    run_free(&r);
    /* an injection attempt stays a value */
    r = CLI(dir, "--url", U, "--json", "query", "SELECT count(*) AS n FROM items WHERE code = $1",
            "a' OR '1'='1");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(jint(json_array_get(json_object_get(j, "rows"), 0), "n"), 0);
    json_decref(j);
    run_free(&r);
    /* a failing query: message and hint, exit 1 */
    r = CLI(dir, "--url", U, "query", "SELECT * FROM no_such_table");
    expect_code(&r, 1);
    has(r.err, "error:");
    has(r.err, "no_such_table");
    has(r.err, "hint:");
    run_free(&r);

    /* doctor */
    r = CLI(dir, "--url", U, "doctor");
    expect_code(&r, 0);
    has(r.out, "connect      ok");
    has(r.out, engine == DBK_ENGINE_SQLITE ? "SQLite 3." : "PostgreSQL ");
    has(r.out, "pool_max=");
    has(r.out, "2 applied, 0 pending");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "doctor");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(jint(j, "migrations.applied"), 2);
    assert_int_equal(jint(j, "migrations.pending"), 0);
    assert_non_null(json_string_value(json_object_get(j, "server_time")));
    assert_true(json_is_object(json_object_get(j, "pool")));
    json_decref(j);
    run_free(&r);

    /* dump */
    r = CLI(dir, "--url", U, "migrate", "dump");
    expect_code(&r, 0);
    has(r.out, "wrote db/schema.sql");
    run_free(&r);
    char schema[1024];
    snprintf(schema, sizeof schema, "%s/db/schema.sql", dir);
    char *text = NULL;
    size_t tl = 0;
    FILE *f = fopen(schema, "rb");
    assert_non_null(f);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        append(&text, &tl, chunk, n);
    fclose(f);
    has(text, "items");
    has(text, "add_note");
    free(text);

    /* validate, then tamper */
    r = CLI(dir, "--url", U, "migrate", "validate");
    expect_code(&r, 0);
    run_free(&r);
    write_text(path, "-- migrate:up\nCREATE TABLE items (code TEXT PRIMARY KEY);\n"
                     "-- migrate:down\nDROP TABLE items;\n");
    r = CLI(dir, "--url", U, "migrate", "validate");
    expect_code(&r, 4);
    has(r.out, "changed");
    has(r.out, "on disk");
    has(r.out, "recorded");
    has(r.err, "changed after it was applied");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "migrate", "validate");
    expect_code(&r, 4);
    j = parse_json(&r);
    assert_true(json_is_false(json_object_get(j, "ok")));
    assert_int_equal(jint(j, "counts.changed"), 1);
    json_decref(j);
    run_free(&r);
    r = CLI(dir, "--url", U, "migrate", "status", "--exit-code");
    expect_code(&r, 4);
    run_free(&r);
    r = CLI(dir, "--url", U, "migrate", "up");
    expect_code(&r, 1);
    has(r.err, "changed after it was applied");
    has(r.err, "hint:");
    run_free(&r);
    write_text(path, MIG1);

    /* down and redo through --json */
    r = CLI(dir, "--url", U, "--json", "migrate", "down");
    expect_code(&r, 0);
    j = parse_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "reverted")), 1);
    assert_int_equal(jint(j, "pending"), 1);
    json_decref(j);
    run_free(&r);
    r = CLI(dir, "--url", U, "migrate", "up", "--to", version);
    expect_code(&r, 0);
    has(r.out, "no pending migrations");
    run_free(&r);
    r = CLI(dir, "--url", U, "migrate", "redo");
    expect_code(&r, 0);
    has(r.out, "migration redone");
    run_free(&r);

    /* a failing migration: file, line, statement, server error, hint */
    char p3[1024];
    snprintf(p3, sizeof p3, "%s/db/migrations/99990102000000_broken.sql", dir);
    write_text(p3, "-- migrate:up\nCREATE TABLE broken_one (id INTEGER);\n\n"
                   "INSERT INTO nowhere VALUES (1);\n-- migrate:down\nDROP TABLE broken_one;\n");
    r = CLI(dir, "--url", U, "migrate", "up");
    expect_code(&r, 1);
    has(r.out, "_broken ... FAILED");
    has(r.err, "failing statement");
    has(r.err, "INSERT INTO nowhere VALUES (1)");
    has(r.err, "99990102000000_broken.sql:4: ");
    has(r.err, "nowhere");
    has(r.err, "hint:");
    run_free(&r);
    r = CLI(dir, "--url", U, "--json", "migrate", "up");
    expect_code(&r, 1);
    j = parse_json(&r);
    assert_int_equal(jint(j, "failed.line"), 4);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "failed"),
                                                          "statement")),
                        "INSERT INTO nowhere VALUES (1)");
    json_decref(j);
    run_free(&r);
    unlink(p3);

    /* a malformed file is named */
    char p4[1024];
    snprintf(p4, sizeof p4, "%s/db/migrations/99990103000000_bad.sql", dir);
    write_text(p4, "-- migrate:down\nSELECT 1;\n");
    r = CLI(dir, "--url", U, "migrate", "status");
    expect_code(&r, 1);
    has(r.err, "99990103000000_bad.sql:1: a -- migrate:down section without a -- migrate:up");
    run_free(&r);
    write_text(p4, "");
    r = CLI(dir, "--url", U, "migrate", "up");
    expect_code(&r, 1);
    has(r.err, "99990103000000_bad.sql: the file is empty");
    run_free(&r);
    unlink(p4);

    /* -q prints nothing on success */
    r = CLI(dir, "--url", U, "-q", "migrate", "up");
    expect_code(&r, 0);
    assert_string_equal(r.out, "");
    run_free(&r);
    free(dir);
}

static void cli_workflow_both_engines(void **state)
{
    (void)state;
    dbkt_each_engine("cli_workflow", workflow_body);
}

/* A dirty migration: status exit 4, repair explains, then resolves. */
static void repair_body(const char *url, dbk_engine engine)
{
    char *dir = project(engine == DBK_ENGINE_SQLITE ? "rp_sqlite" : "rp_pg");
    char mig[1024], p[1100];
    snprintf(mig, sizeof mig, "%s/db/migrations", dir);
    mkdir(mig, 0777);
    snprintf(p, sizeof p, "%s/1_nontx.sql", mig);
    write_text(p, "-- migrate:up transaction:false\nCREATE TABLE r_one (id INTEGER);\n"
                  "INSERT INTO r_nowhere VALUES (1);\n-- migrate:down\nDROP TABLE r_one;\n");
    run r = CLI(dir, "--url", url, "migrate", "up");
    expect_code(&r, 1);
    has(r.out, "(no transaction)");
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "status", "--exit-code");
    expect_code(&r, 4);
    has(r.out, "dirty");
    has(r.out, "up interrupted after 1 statement");
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "up");
    expect_code(&r, 1);
    has(r.err, "is dirty");
    has(r.err, "dbkit migrate repair");
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "repair");
    expect_code(&r, 4);
    has(r.out, "dbkit migrate repair --mark-applied 1");
    has(r.out, "dbkit migrate repair --mark-pending 1");
    run_free(&r);
    r = CLI(dir, "--url", url, "--json", "migrate", "repair");
    expect_code(&r, 4);
    json_t *j = parse_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "dirty")), 1);
    json_decref(j);
    run_free(&r);
    /* undo by hand, mark pending, fix the file, run again */
    r = CLI(dir, "--url", url, "query", "DROP TABLE r_one");
    expect_code(&r, 0);
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "repair", "--mark-pending", "1");
    expect_code(&r, 0);
    has(r.out, "will run it again");
    run_free(&r);
    write_text(p, "-- migrate:up transaction:false\nCREATE TABLE r_one (id INTEGER);\n"
                  "-- migrate:down\nDROP TABLE r_one;\n");
    r = CLI(dir, "--url", url, "migrate", "up");
    expect_code(&r, 0);
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "repair");
    expect_code(&r, 0);
    has(r.out, "nothing to repair");
    run_free(&r);
    r = CLI(dir, "--url", url, "migrate", "repair", "--mark-applied", "1");
    expect_code(&r, 1);
    has(r.err, "not dirty");
    run_free(&r);
    free(dir);
}

static void cli_dirty_migration_and_repair(void **state)
{
    (void)state;
    dbkt_each_engine("cli_repair", repair_body);
}

/* Four `dbkit migrate up` processes at once apply each migration once. */
static void concurrent_body(const char *url, dbk_engine engine)
{
    char *dir = project(engine == DBK_ENGINE_SQLITE ? "cc_sqlite" : "cc_pg");
    char mig[1024], p[1100];
    snprintf(mig, sizeof mig, "%s/db/migrations", dir);
    mkdir(mig, 0777);
    for (int i = 1; i <= 4; i++) {
        char text[512];
        snprintf(p, sizeof p, "%s/%d_t%d.sql", mig, i, i);
        snprintf(text, sizeof text,
                 "-- migrate:up\nCREATE TABLE cc_%d (id INTEGER);\n%s-- migrate:down\nDROP TABLE "
                 "cc_%d;\n",
                 i,
                 engine == DBK_ENGINE_POSTGRES
                     ? "SELECT pg_sleep(0.1);\n"
                     : "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < "
                       "100000) SELECT count(*) FROM r;\n",
                 i);
        write_text(p, text);
    }
    pid_t pids[4];
    int ofd[4], efd[4];
    for (int i = 0; i < 4; i++)
        pids[i] = spawn_cli(dir, NULL,
                            (const char *const[]){"--url", url, "--json", "migrate", "up", NULL},
                            &ofd[i], &efd[i]);
    json_int_t total = 0;
    for (int i = 0; i < 4; i++) {
        run r = collect(pids[i], ofd[i], efd[i]);
        expect_code(&r, 0);
        json_t *j = parse_json(&r);
        total += (json_int_t)json_array_size(json_object_get(j, "applied"));
        assert_int_equal(jint(j, "current_version"), 4);
        json_decref(j);
        run_free(&r);
    }
    assert_int_equal(total, 4);
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    int64_t n = 0;
    DBKT_OK(dbk_db_query_int64(dbk_conn_db(c), "SELECT count(*) FROM dbkit_migrations", NULL, 0,
                               &n, &err),
            &err);
    assert_int_equal(n, 4);
    dbk_conn_close(c);
    free(dir);
}

static void cli_four_concurrent_migrate_up(void **state)
{
    (void)state;
    dbkt_each_engine("cli_concurrent", concurrent_body);
}

/* One HTTP/1.0 GET on 127.0.0.1:port; returns the whole response
 * (malloc'd) or NULL. Bounded by SO_RCVTIMEO. */
static char *http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return NULL;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    char *out = NULL;
    size_t len = 0;
    append(&out, &len, "", 0);
    char buf[4096];
    ssize_t k;
    while ((k = read(fd, buf, sizeof buf)) > 0)
        append(&out, &len, buf, (size_t)k);
    close(fd);
    return out;
}

/* `make demo` in miniature: the demo script starts the example service
 * on a fresh SQLite database (PORT=0: a free port), it answers /health and
 * a seeded user, and SIGINT stops it cleanly. */
static void cli_demo_script_runs(void **state)
{
    (void)state;
    char bindir[1024];
    snprintf(bindir, sizeof bindir, "%s", DBKIT_CLI_PATH);
    char *slash = strrchr(bindir, '/');
    assert_non_null(slash);
    *slash = '\0';
    int o[2];
    assert_int_equal(pipe(o), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        dup2(o[1], 1);
        dup2(o[1], 2);
        close(o[0]);
        close(o[1]);
        if (chdir(DBKIT_SOURCE_DIR) != 0)
            _exit(126);
        setenv("PORT", "0", 1);
        setenv("SHOP_PWHASH", "fast", 1);
        execlp("bash", "bash", "scripts/demo.sh", bindir, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    close(o[1]);
    char *out = NULL;
    size_t len = 0;
    append(&out, &len, "", 0);
    int port = 0;
    int64_t deadline = mono_ms() + 60000;
    while (!port && mono_ms() < deadline) {
        struct pollfd pf = {o[0], POLLIN, 0};
        if (poll(&pf, 1, 500) <= 0)
            continue;
        char buf[4096];
        ssize_t k = read(o[0], buf, sizeof buf);
        if (k <= 0)
            break;
        append(&out, &len, buf, (size_t)k);
        const char *l = strstr(out, "listening on http://127.0.0.1:");
        if (l && strchr(l, '\n'))
            port = atoi(l + strlen("listening on http://127.0.0.1:"));
    }
    char *health = port ? http_get(port, "/health") : NULL;
    char *user = port ? http_get(port, "/users/1") : NULL;
    kill(-pid, SIGINT);
    int status = 0;
    int64_t stop_deadline = mono_ms() + 20000;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && mono_ms() < stop_deadline) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (w == 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    char buf[4096];
    ssize_t k;
    fcntl(o[0], F_SETFL, O_NONBLOCK);
    while ((k = read(o[0], buf, sizeof buf)) > 0)
        append(&out, &len, buf, (size_t)k);
    close(o[0]);
    if (!port)
        fail_msg("the demo service did not start:\n%s", out);
    if (!health || !strstr(health, " 200 ") || !strstr(health, "\"sqlite\""))
        fail_msg("/health: %s\n%s", health ? health : "(no answer)", out);
    if (!user || !strstr(user, " 200 ") || !strstr(user, "Ada Lovelace"))
        fail_msg("/users/1: %s\n%s", user ? user : "(no answer)", out);
    if (w == 0)
        fail_msg("the demo did not stop within 20 s of SIGINT:\n%s", out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the demo ended with status 0x%x after SIGINT:\n%s", (unsigned)status, out);
    has(out, "curl -s http://127.0.0.1:");
    free(health);
    free(user);
    free(out);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cli_help_and_usage_errors),
    cmocka_unit_test(cli_config_redacts_password),
    cmocka_unit_test(cli_connect_failure_exit_code),
    cmocka_unit_test(cli_workflow_both_engines),
    cmocka_unit_test(cli_dirty_migration_and_repair),
    cmocka_unit_test(cli_four_concurrent_migrate_up),
    cmocka_unit_test(cli_demo_script_runs),
};

DBKT_MAIN(tests)
