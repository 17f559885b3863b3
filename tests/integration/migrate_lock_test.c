/*
 * Lock timeouts of migration statements on a real PostgreSQL: a second
 * connection holds a lock on the table in an open transaction (ACCESS
 * SHARE from a SELECT, ROW EXCLUSIVE from an UPDATE); `up` must give up
 * while that transaction is still open, name the holding session, leave
 * nothing behind, and succeed on a retry once the holder goes away.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"

#define assert_contains(hay, needle)                                                       \
    do {                                                                                   \
        if (!strstr((hay), (needle)))                                                      \
            fail_msg("\"%s\" does not contain \"%s\"", (hay), (needle));                   \
    } while (0)

static const dbk_migration_file BASE[] = {
    {"1_items.sql",
     "-- migrate:up\nCREATE TABLE items (id bigint PRIMARY KEY, name text);\n"
     "INSERT INTO items VALUES (1, 'a'), (2, 'b');\n-- migrate:down\nDROP TABLE items;\n",
     0},
    {"2_add_note.sql",
     "-- migrate:up\nCREATE TABLE other (id bigint PRIMARY KEY);\n"
     "ALTER TABLE items ADD COLUMN note text;\n-- migrate:down\n"
     "ALTER TABLE items DROP COLUMN note;\nDROP TABLE other;\n",
     0},
};

static int64_t backend_pid(dbk_conn *c)
{
    return dbkt_int(dbk_conn_db(c), "SELECT pg_backend_pid()");
}

static bool table_exists(dbk_conn *c, const char *t)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_class WHERE relname = '%s'", t);
    return dbkt_int(dbk_conn_db(c), sql) > 0;
}

/* Applies 1, then holds `hold_sql` in an open transaction on another
 * connection and applies 2 with a 300 ms lock timeout and no retry. */
static void blocked_by(const char *name, const char *hold_sql, const char *mode)
{
    char *url = dbkt_pg_fresh_db(name);
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_migrate_source src = {NULL, BASE, 1};
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);

    dbk_conn *holder = dbkt_open(url);
    dbkt_exec(dbk_conn_db(holder), "SET application_name = 'lock-holder'");
    dbkt_exec(dbk_conn_db(holder), "BEGIN");
    dbkt_exec(dbk_conn_db(holder), hold_sql);
    int64_t pid = backend_pid(holder);

    src.nfiles = 2;
    o.statement_lock_timeout_ms = 300;
    o.lock_retries = -1;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_EBUSY, dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err));
    int64_t ms = (dbk__now_ns() - t0) / 1000000;
    print_message("  %s: failed after %lld ms (lock_timeout 300 ms)\n", name, (long long)ms);
    /* The holder's transaction is still open: `up` gave up on its own.
     * The upper bound is a correctness bound (it did not wait for the
     * default 5 s or the 10 min statement wait), not a speed target. */
    assert_true(ms >= 250 && ms < 2300);
    char want[64];
    snprintf(want, sizeof want, "server pid %lld", (long long)pid);
    assert_contains(err.message, "2_add_note.sql:3:");
    assert_contains(err.message, "could not get a lock within lock_timeout 300 ms");
    assert_contains(err.message, want);
    assert_contains(err.message, "'lock-holder'");
    assert_contains(err.message, "idle in transaction");
    assert_contains(err.message, mode);
    assert_contains(err.message, "on items");
    assert_true(err.hint[0] != '\0');
    /* rolled back as a whole: the table of the same migration is not there */
    assert_false(table_exists(c, "other"));
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM dbkit_migrations"), 1);

    dbkt_exec(dbk_conn_db(holder), "ROLLBACK");
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);
    assert_true(table_exists(c, "other"));
    dbk_conn_close(holder);
    dbk_conn_close(c);
    free(url);
}

static void migrate_lock_timeout_access_share_holder(void **state)
{
    (void)state;
    blocked_by("mlock_share", "SELECT count(*) FROM items", "AccessShareLock");
}

static void migrate_lock_timeout_row_exclusive_holder(void **state)
{
    (void)state;
    blocked_by("mlock_rowx", "UPDATE items SET name = 'x' WHERE id = 1", "RowExclusiveLock");
}

/* The holder lets go after the first attempt timed out: the retry (under a
 * savepoint, so the statement before it stays) succeeds. */
typedef struct release_ctx {
    const char *url;
    dbk_conn *holder;
    bool saw_wait, released;
} release_ctx;

static int64_t waiting_on_items(dbk_conn *watch)
{
    return dbkt_int(dbk_conn_db(watch),
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'items' AND NOT l.granted");
}

static void *release_after_first_timeout(void *arg)
{
    release_ctx *r = arg;
    dbk_conn *watch = dbkt_open(r->url);
    /* Bounded polling (at most 20 s): first a waiting request on items,
     * then none (that attempt timed out), then let go. */
    int64_t deadline = dbkt_mono_ms() + 20000;
    while (dbkt_mono_ms() < deadline && !r->saw_wait) {
        if (waiting_on_items(watch) > 0)
            r->saw_wait = true;
        else
            nanosleep(&(struct timespec){0, 5 * 1000000L}, NULL);
    }
    while (dbkt_mono_ms() < deadline && waiting_on_items(watch) > 0)
        nanosleep(&(struct timespec){0, 5 * 1000000L}, NULL);
    dbk_error err;
    dbk_db_exec(dbk_conn_db(r->holder), "ROLLBACK", NULL, 0, NULL, &err);
    r->released = true;
    dbk_conn_close(watch);
    return NULL;
}

static void migrate_lock_timeout_retried_until_holder_leaves(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("mlock_retry");
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_migrate_source src = {NULL, BASE, 1};
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);
    release_ctx r = {url, dbkt_open(url), false, false};
    dbkt_exec(dbk_conn_db(r.holder), "BEGIN");
    dbkt_exec(dbk_conn_db(r.holder), "SELECT count(*) FROM items");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, release_after_first_timeout, &r), 0);
    src.nfiles = 2;
    o.statement_lock_timeout_ms = 300;
    o.lock_retries = 8; /* back-off 200, 400, 800 ... ms: ample for the watcher */
    dbk_rc rc = dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err);
    pthread_join(th, NULL);
    assert_true(r.saw_wait);
    assert_true(r.released);
    DBKT_OK(rc, &err);
    assert_true(table_exists(c, "other"));
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM dbkit_migrations"), 2);
    dbk_conn_close(r.holder);
    dbk_conn_close(c);
    free(url);
}

/* The timeouts are set per migration with SET LOCAL: they do not stay on
 * the connection afterwards. */
static void migrate_lock_timeout_is_local_to_the_migration(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("mlock_local");
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    static const dbk_migration_file f[] = {
        {"1_probe.sql",
         "-- migrate:up\nCREATE TABLE probe AS SELECT current_setting('lock_timeout') AS lt, "
         "current_setting('statement_timeout') AS st;\n-- migrate:down\nDROP TABLE probe;\n",
         0}};
    dbk_migrate_source src = {NULL, f, 1};
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.statement_lock_timeout_ms = 1234;
    o.statement_timeout_ms = 56789;
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);
    char lt[32], st[32];
    dbkt_text(dbk_conn_db(c), "SELECT lt FROM probe", lt, sizeof lt);
    dbkt_text(dbk_conn_db(c), "SELECT st FROM probe", st, sizeof st);
    assert_string_equal(lt, "1234ms");
    assert_string_equal(st, "56789ms");
    dbkt_text(dbk_conn_db(c), "SELECT current_setting('lock_timeout')", lt, sizeof lt);
    assert_string_equal(lt, "0");
    dbk_conn_close(c);
    free(url);
}

/* dbk_migrate_up() reads no environment variable: with the two
 * DB_MIGRATION_* variables set, a migration with zeroed options runs with
 * the defaults (5 s, 10 min); dbk_migrate_opts_from_env() is what applies
 * them. */
static void migrate_lock_timeout_env_read_only_when_asked(void **state)
{
    (void)state;
    static const dbk_migration_file f[] = {
        {"1_probe.sql",
         "-- migrate:up\nCREATE TABLE probe AS SELECT current_setting('lock_timeout') AS lt, "
         "current_setting('statement_timeout') AS st;\n-- migrate:down\nDROP TABLE probe;\n",
         0}};
    dbk_migrate_source src = {NULL, f, 1};
    setenv("DB_MIGRATION_LOCK_TIMEOUT_MS", "2222", 1);
    setenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS", "33333", 1);
    for (int from_env = 0; from_env < 2; from_env++) {
        char *url = dbkt_pg_fresh_db(from_env ? "mlock_env_on" : "mlock_env_off");
        dbk_conn *c = dbkt_open(url);
        dbk_error err;
        dbk_migrate_opts o;
        memset(&o, 0, sizeof o);
        if (from_env)
            DBKT_OK(dbk_migrate_opts_from_env(&o, &err), &err);
        DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);
        char lt[32], st[32];
        dbkt_text(dbk_conn_db(c), "SELECT lt FROM probe", lt, sizeof lt);
        dbkt_text(dbk_conn_db(c), "SELECT st FROM probe", st, sizeof st);
        assert_string_equal(lt, from_env ? "2222ms" : "5s");
        assert_string_equal(st, from_env ? "33333ms" : "10min");
        dbk_conn_close(c);
        free(url);
    }
    unsetenv("DB_MIGRATION_LOCK_TIMEOUT_MS");
    unsetenv("DB_MIGRATION_STATEMENT_TIMEOUT_MS");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(migrate_lock_timeout_access_share_holder),
        cmocka_unit_test(migrate_lock_timeout_row_exclusive_holder),
        cmocka_unit_test(migrate_lock_timeout_retried_until_holder_leaves),
        cmocka_unit_test(migrate_lock_timeout_is_local_to_the_migration),
        cmocka_unit_test(migrate_lock_timeout_env_read_only_when_asked),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
