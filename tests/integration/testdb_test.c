/*
 * dbk_testdb: fresh migrated databases cloned from a template per
 * migrations hash, on a real PostgreSQL and real SQLite files; pruning of
 * databases whose owner died; `dbkit testdb`.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A migrations directory unique to the test (its name goes into a comment,
 * so each test gets its own hash and template). */
static char *mig_dir(const char *test, const char *extra)
{
    char *base = dbkt_tmpdir();
    char *dir = malloc(strlen(base) + strlen(test) + 16);
    assert_non_null(dir);
    sprintf(dir, "%s/%s_mig", base, test);
    free(base);
    mkdir(dir, 0755);
    char path[1024];
    snprintf(path, sizeof path, "%s/1_items.sql", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    /* the pid and clock make the hash (and so the template) new on every run:
     * each run builds its templates from cold */
    fprintf(f, "-- %s %ld %lld\n-- migrate:up\nCREATE TABLE items (id integer PRIMARY KEY, name text NOT "
               "NULL);\nINSERT INTO items VALUES (1, 'seeded');\n-- migrate:down\nDROP TABLE "
               "items;\n",
            test, (long)getpid(), (long long)dbkt_mono_ms());
    fclose(f);
    if (extra) {
        snprintf(path, sizeof path, "%s/2_extra.sql", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "-- migrate:up\n%s\n-- migrate:down\n", extra);
        fclose(f);
    }
    return dir;
}

static dbk_config *admin_cfg(dbk_engine engine)
{
    dbk_config *cfg = NULL;
    dbk_error err;
    char *url = engine == DBK_ENGINE_POSTGRES ? strdup(dbkt_pg_admin_url())
                                              : dbkt_sqlite_url("testdb_admin");
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    free(url);
    return cfg;
}

static int64_t admin_int(const char *sql)
{
    dbk_conn *c = dbkt_open(dbkt_pg_admin_url());
    int64_t v = dbkt_int(dbk_conn_db(c), sql);
    dbk_conn_close(c);
    return v;
}

static bool pg_db_exists(const char *name)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_database WHERE datname = '%.63s'", name);
    return admin_int(sql) == 1;
}

/* A fresh database holds the migrated schema and the migrations' rows; a
 * second one is another database from the same template; drop removes it. */
static void fresh_migrated(dbk_engine engine, const char *test)
{
    dbk_config *cfg = admin_cfg(engine);
    char *dir = mig_dir(test, NULL);
    dbk_error err;
    dbk_testdb *a = NULL, *b = NULL;
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &a, &err), &err);
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &b, &err), &err);
    assert_string_not_equal(dbk_testdb_name(a), dbk_testdb_name(b));
    assert_string_equal(dbk_testdb_template(a), dbk_testdb_template(b));
    assert_non_null(strstr(dbk_testdb_name(a), "dbkit_t_"));

    dbk_conn *ca = dbkt_open(dbk_testdb_url(a));
    dbk_conn *cb = NULL;
    DBKT_OK(dbk_conn_open(dbk_testdb_config(b), &cb, &err), &err);
    assert_int_equal(dbkt_int(dbk_conn_db(ca), "SELECT count(*) FROM items"), 1);
    dbkt_exec(dbk_conn_db(ca), "INSERT INTO items VALUES (2, 'only in a')");
    assert_int_equal(dbkt_int(dbk_conn_db(ca), "SELECT count(*) FROM items"), 2);
    assert_int_equal(dbkt_int(dbk_conn_db(cb), "SELECT count(*) FROM items"), 1);
    assert_int_equal(dbkt_int(dbk_conn_db(cb), "SELECT count(*) FROM dbkit_migrations"), 1);
    dbk_conn_close(ca);
    /* drop terminates the connection still open on b */
    char bname[4096];
    snprintf(bname, sizeof bname, "%s", dbk_testdb_name(b));
    DBKT_OK(dbk_testdb_drop(a, &err), &err);
    DBKT_OK(dbk_testdb_drop(b, &err), &err);
    dbk_conn_close(cb);
    if (engine == DBK_ENGINE_POSTGRES)
        assert_false(pg_db_exists(bname));
    else
        assert_int_not_equal(access(bname, F_OK), 0);
    dbk_config_free(cfg);
    free(dir);
}

static void testdb_pg_fresh_migrated(void **state)
{
    (void)state;
    fresh_migrated(DBK_ENGINE_POSTGRES, "testdb_pg_fresh_migrated");
}

static void testdb_sqlite_fresh_migrated(void **state)
{
    (void)state;
    fresh_migrated(DBK_ENGINE_SQLITE, "testdb_sqlite_fresh_migrated");
}

/* The template is built once per set of files: the same files reuse it (same
 * oid / same file), a changed file gives a new template with the change. */
static void template_per_hash(dbk_engine engine, const char *test)
{
    dbk_config *cfg = admin_cfg(engine);
    char *dir = mig_dir(test, NULL);
    dbk_error err;
    dbk_testdb *a = NULL, *b = NULL, *c = NULL;
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &a, &err), &err);
    char sql[256];
    int64_t oid = 0, oid2 = 0;
    struct stat st1, st2;
    if (engine == DBK_ENGINE_POSTGRES) {
        snprintf(sql, sizeof sql, "SELECT oid::bigint FROM pg_database WHERE datname = '%s'",
                 dbk_testdb_template(a));
        oid = admin_int(sql);
    } else {
        assert_int_equal(stat(dbk_testdb_template(a), &st1), 0);
    }
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &b, &err), &err);
    assert_string_equal(dbk_testdb_template(a), dbk_testdb_template(b));
    if (engine == DBK_ENGINE_POSTGRES) {
        oid2 = admin_int(sql);
        assert_int_equal(oid, oid2);
    } else {
        assert_int_equal(stat(dbk_testdb_template(b), &st2), 0);
        assert_int_equal(st1.st_ino, st2.st_ino);
        assert_int_equal(st1.st_mtime, st2.st_mtime);
    }
    /* a new migration file: a new template, holding the new table */
    free(mig_dir(test, "CREATE TABLE extra (id integer);"));
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &c, &err), &err);
    assert_string_not_equal(dbk_testdb_template(a), dbk_testdb_template(c));
    dbk_conn *cc = dbkt_open(dbk_testdb_url(c));
    assert_int_equal(dbkt_int(dbk_conn_db(cc), "SELECT count(*) FROM extra"), 0);
    dbk_conn_close(cc);
    DBKT_OK(dbk_testdb_drop(a, &err), &err);
    DBKT_OK(dbk_testdb_drop(b, &err), &err);
    DBKT_OK(dbk_testdb_drop(c, &err), &err);
    dbk_config_free(cfg);
    free(dir);
}

static void testdb_pg_template_per_hash(void **state)
{
    (void)state;
    template_per_hash(DBK_ENGINE_POSTGRES, "testdb_pg_template_per_hash");
}

static void testdb_sqlite_template_per_hash(void **state)
{
    (void)state;
    template_per_hash(DBK_ENGINE_SQLITE, "testdb_sqlite_template_per_hash");
}

/* 32 concurrent new calls on a template nobody has built yet: one builds it,
 * every clone succeeds (no "source database is being accessed by other
 * users"), every database is distinct. */
struct par {
    const dbk_config *cfg;
    const char *dir;
    dbk_testdb *t;
    dbk_rc rc;
    dbk_error err;
};

static void *par_main(void *arg)
{
    struct par *p = arg;
    p->rc = dbk_testdb_new(p->cfg, p->dir, NULL, &p->t, &p->err);
    return NULL;
}

static void parallel(dbk_engine engine, const char *test)
{
    enum { N = 32 };
    dbk_config *cfg = admin_cfg(engine);
    char *dir = mig_dir(test, NULL);
    struct par ps[N];
    pthread_t th[N];
    memset(ps, 0, sizeof ps);
    for (int i = 0; i < N; i++) {
        ps[i].cfg = cfg;
        ps[i].dir = dir;
        assert_int_equal(pthread_create(&th[i], NULL, par_main, &ps[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        if (ps[i].rc != DBK_OK)
            fail_msg("new #%d: %s: %s", i, dbk_rc_name(ps[i].rc), ps[i].err.message);
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            assert_string_not_equal(dbk_testdb_name(ps[i].t), dbk_testdb_name(ps[j].t));
    dbk_conn *c = dbkt_open(dbk_testdb_url(ps[N - 1].t));
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM items"), 1);
    dbk_conn_close(c);
    dbk_error err;
    for (int i = 0; i < N; i++)
        DBKT_OK(dbk_testdb_drop(ps[i].t, &err), &err);
    dbk_config_free(cfg);
    free(dir);
}

static void testdb_pg_parallel_new(void **state)
{
    (void)state;
    parallel(DBK_ENGINE_POSTGRES, "testdb_pg_parallel_new");
}

static void testdb_sqlite_parallel_new(void **state)
{
    (void)state;
    parallel(DBK_ENGINE_SQLITE, "testdb_sqlite_parallel_new");
}

/* A pid that has exited and been reaped. */
static long dead_pid(void)
{
    pid_t p = fork();
    assert_true(p >= 0);
    if (p == 0)
        _exit(0);
    assert_int_equal(waitpid(p, NULL, 0), p);
    return (long)p;
}

/* prune drops the databases of a dead owner and keeps the live owner's. */
static void prune(dbk_engine engine, const char *test)
{
    dbk_config *cfg = admin_cfg(engine);
    char *dir = mig_dir(test, NULL);
    dbk_error err;
    dbk_testdb_opts o;
    memset(&o, 0, sizeof o);
    o.owner_pid = dead_pid();
    o.no_prune = true;
    dbk_testdb *dead = NULL, *live = NULL;
    DBKT_OK(dbk_testdb_new(cfg, dir, &o, &dead, &err), &err);
    o.owner_pid = 0;
    DBKT_OK(dbk_testdb_new(cfg, dir, &o, &live, &err), &err);
    char dname[4096];
    snprintf(dname, sizeof dname, "%s", dbk_testdb_name(dead));
    int dropped = -1;
    DBKT_OK(dbk_testdb_prune(cfg, &dropped, &err), &err);
    /* Every first dbk_testdb_new of a process prunes too, so a test
     * program running beside this one may have dropped the dead owner's
     * database first: the count may be 0, what is asserted is that it is
     * gone and the live one is not. */
    assert_true(dropped >= 0);
    if (engine == DBK_ENGINE_POSTGRES) {
        assert_false(pg_db_exists(dname));
        assert_true(pg_db_exists(dbk_testdb_name(live)));
    } else {
        assert_int_not_equal(access(dname, F_OK), 0);
        assert_int_equal(access(dbk_testdb_name(live), F_OK), 0);
    }
    dbk_testdb_free(dead);
    DBKT_OK(dbk_testdb_drop(live, &err), &err);

    /* the first new of a process prunes by itself */
    o.owner_pid = dead_pid();
    DBKT_OK(dbk_testdb_new(cfg, dir, &o, &dead, &err), &err);
    snprintf(dname, sizeof dname, "%s", dbk_testdb_name(dead));
    dbk_testdb_free(dead);
    DBKT_OK(dbk_testdb_new(cfg, dir, NULL, &live, &err), &err);
    if (engine == DBK_ENGINE_POSTGRES)
        assert_false(pg_db_exists(dname));
    else
        assert_int_not_equal(access(dname, F_OK), 0);
    DBKT_OK(dbk_testdb_drop(live, &err), &err);
    dbk_config_free(cfg);
    free(dir);
}

static void testdb_pg_prune_dead_owner(void **state)
{
    (void)state;
    prune(DBK_ENGINE_POSTGRES, "testdb_pg_prune_dead_owner");
}

static void testdb_sqlite_prune_dead_owner(void **state)
{
    (void)state;
    prune(DBK_ENGINE_SQLITE, "testdb_sqlite_prune_dead_owner");
}

/* drop_url refuses a database that is not a fresh test database. */
static void testdb_drop_url_refuses_other_databases(void **state)
{
    (void)state;
    dbk_config *cfg = admin_cfg(DBK_ENGINE_POSTGRES);
    dbk_error err;
    DBKT_RC(DBK_EINVALID, dbk_testdb_drop_url(cfg, dbkt_pg_admin_url(), &err));
    assert_true(pg_db_exists("postgres"));
    DBKT_RC(DBK_EINVALID, dbk_testdb_drop_url(cfg, "sqlite:/tmp/app.db", &err));
    dbk_config_free(cfg);
}

/* A migration that fails: new fails naming the file, and no template is left. */
static void testdb_pg_bad_migration(void **state)
{
    (void)state;
    dbk_config *cfg = admin_cfg(DBK_ENGINE_POSTGRES);
    char *dir = mig_dir("testdb_pg_bad_migration", "CREATE TABLE oops (id nosuchtype);");
    dbk_error err;
    dbk_testdb *t = NULL;
    dbk_rc rc = dbk_testdb_new(cfg, dir, NULL, &t, &err);
    assert_int_not_equal(rc, DBK_OK);
    assert_null(t);
    assert_non_null(strstr(err.message, "2_extra.sql:2"));
    dbk_config_free(cfg);
    free(dir);
}

/* `dbkit testdb new` prints a URL that connects; `drop URL` drops it. */
static void testdb_cli_new_drop(void **state)
{
    (void)state;
    char *dir = mig_dir("testdb_cli_new_drop", NULL);
    const char *args[] = {"--url", dbkt_pg_admin_url(), "--migrations-dir", dir, "testdb", "new",
                          NULL};
    int o, e;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, args, NULL, NULL, &o, &e);
    dbkt_proc r = dbkt_collect(pid, o, e, 60000, "dbkit testdb new");
    if (r.code != 0)
        fail_msg("dbkit testdb new: exit %d: %s", r.code, r.err);
    char *nl = strchr(r.out, '\n');
    assert_non_null(nl);
    *nl = '\0';
    dbk_conn *c = dbkt_open(r.out);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT count(*) FROM items"), 1);
    char name[128];
    dbkt_text(dbk_conn_db(c), "SELECT current_database()::text", name, sizeof name);
    dbk_conn_close(c);
    assert_true(pg_db_exists(name));
    const char *dargs[] = {"--url", dbkt_pg_admin_url(), "testdb", "drop", r.out, NULL};
    pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, dargs, NULL, NULL, &o, &e);
    dbkt_proc d = dbkt_collect(pid, o, e, 60000, "dbkit testdb drop");
    if (d.code != 0)
        fail_msg("dbkit testdb drop: exit %d: %s", d.code, d.err);
    assert_false(pg_db_exists(name));
    const char *bad[] = {"--url", dbkt_pg_admin_url(), "testdb", "drop", dbkt_pg_admin_url(),
                         NULL};
    pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, bad, NULL, NULL, &o, &e);
    dbkt_proc b = dbkt_collect(pid, o, e, 60000, "dbkit testdb drop (refused)");
    assert_int_equal(b.code, 1);
    dbkt_proc_free(&r);
    dbkt_proc_free(&d);
    dbkt_proc_free(&b);
    free(dir);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(testdb_pg_fresh_migrated),
        cmocka_unit_test(testdb_sqlite_fresh_migrated),
        cmocka_unit_test(testdb_pg_template_per_hash),
        cmocka_unit_test(testdb_sqlite_template_per_hash),
        cmocka_unit_test(testdb_pg_parallel_new),
        cmocka_unit_test(testdb_sqlite_parallel_new),
        cmocka_unit_test(testdb_pg_prune_dead_owner),
        cmocka_unit_test(testdb_sqlite_prune_dead_owner),
        cmocka_unit_test(testdb_drop_url_refuses_other_databases),
        cmocka_unit_test(testdb_pg_bad_migration),
        cmocka_unit_test(testdb_cli_new_drop),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
