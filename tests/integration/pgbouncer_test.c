/* dbkit:topology */
/*
 * dbkit behind PgBouncer 1.18 in transaction mode (pool_mode=transaction,
 * a server pool of 2) with 16 client threads on one dbkit pool of 16
 * connections: plain statements, transactions and batches, every answer
 * checked against what the row must hold, so a statement name that
 * resolves to another client's statement on another backend shows up as a
 * wrong answer, not only as an error.
 *
 * Worker threads never assert; the main thread does after joining them.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "pgtopo.h"
#include "testutil.h"

#define THREADS 16
#define ITERS 120
#define ROWS 64

struct load {
    dbk_db *db;
    atomic_int errors;
    atomic_int ps_errors; /* "prepared statement ... does not exist / already exists" */
    atomic_int wrong;
    atomic_int done;
    pthread_mutex_t mu;
    char first_err[DBK_ERROR_MESSAGE_MAX];
    char first_wrong[200];
};

struct worker {
    struct load *l;
    int id;
};

static void note_err(struct load *l, const dbk_error *err)
{
    if (strstr(err->message, "prepared statement"))
        atomic_fetch_add(&l->ps_errors, 1);
    pthread_mutex_lock(&l->mu);
    if (atomic_fetch_add(&l->errors, 1) == 0)
        snprintf(l->first_err, sizeof l->first_err, "%s", err->message);
    pthread_mutex_unlock(&l->mu);
}

static void note_wrong(struct load *l, const char *what, long long id, const char *got)
{
    pthread_mutex_lock(&l->mu);
    if (atomic_fetch_add(&l->wrong, 1) == 0)
        snprintf(l->first_wrong, sizeof l->first_wrong, "%s %lld gave \"%s\"", what, id, got);
    pthread_mutex_unlock(&l->mu);
}

static dbk_rc tx_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    int64_t *id = ctx;
    dbk_value p[1] = {dbk_int64(*id)};
    dbk_rc rc = dbk_db_exec(tx, "UPDATE kv SET n = n + 1 WHERE id = $1", p, 1, NULL, err);
    if (rc)
        return rc;
    char buf[32];
    rc = dbk_db_query_text(tx, "SELECT v FROM kv WHERE id = $1", p, 1, buf, sizeof buf, NULL, err);
    if (rc)
        return rc;
    char want[32];
    snprintf(want, sizeof want, "v%lld", (long long)*id);
    return strcmp(buf, want) == 0 ? DBK_OK : DBK_EINVALID;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct load *l = w->l;
    for (int i = 0; i < ITERS; i++) {
        int64_t id = (w->id * 7 + i) % ROWS + 1;
        dbk_value p[1] = {dbk_int64(id)};
        dbk_error err;
        char buf[32], want[32];
        snprintf(want, sizeof want, "v%lld", (long long)id);
        switch ((w->id + i) % 4) {
        case 0: {
            if (dbk_db_query_text(l->db, "SELECT v FROM kv WHERE id = $1", p, 1, buf, sizeof buf,
                                  NULL, &err))
                note_err(l, &err);
            else if (strcmp(buf, want) != 0)
                note_wrong(l, "v of", (long long)id, buf);
            break;
        }
        case 1: {
            dbk_value q[1] = {dbk_text(want)};
            int64_t got = 0;
            if (dbk_db_query_int64(l->db, "SELECT id FROM kv WHERE v = $1", q, 1, &got, &err))
                note_err(l, &err);
            else if (got != id) {
                snprintf(buf, sizeof buf, "%lld", (long long)got);
                note_wrong(l, "id of v", (long long)id, buf);
            }
            break;
        }
        case 2: {
            dbk_rc rc = dbk_tx_run(l->db, tx_fn, &id, NULL, &err);
            if (rc == DBK_EINVALID)
                note_wrong(l, "tx v of", (long long)id, "?");
            else if (rc)
                note_err(l, &err);
            break;
        }
        default: {
            dbk_batch *b = NULL;
            if (dbk_batch_new(&b, &err)) {
                note_err(l, &err);
                break;
            }
            int64_t id2 = id % ROWS + 1;
            dbk_value p2[1] = {dbk_int64(id2)};
            dbk_batch_add(b, "SELECT v FROM kv WHERE id = $1", p, 1, &err);
            dbk_batch_add(b, "SELECT length(v) FROM kv WHERE id = $1", p2, 1, &err);
            if (dbk_batch_run(l->db, b, DBK_BATCH_INDEPENDENT, &err)) {
                note_err(l, &err);
            } else {
                const dbk_result *r0 = dbk_batch_result(b, 0);
                const char *v = NULL;
                if (!r0 || dbk_result_nrows(r0) != 1 ||
                    dbk_result_get_text(r0, 0, 0, &v, NULL, &err))
                    v = NULL;
                if (!v || strcmp(v, want) != 0)
                    note_wrong(l, "batch v of", (long long)id, v ? v : "(none)");
            }
            dbk_batch_free(b);
            break;
        }
        }
    }
    atomic_fetch_add(&l->done, 1);
    return NULL;
}

/* Runs the load through the bouncer with `params` appended to its URL;
 * returns the number of distinct backend PIDs one client connection saw
 * while the load ran. */
static int run_load(const char *params, struct load *l)
{
    dbkt_pgtopo *t = dbkt_pgtopo_start(0);
    char sql[200];
    snprintf(sql, sizeof sql,
             "CREATE TABLE kv (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0);"
             "INSERT INTO kv (id, v) SELECT g, 'v' || g FROM generate_series(1, %d) g",
             ROWS);
    assert_int_equal(dbkt_pgtopo_exec(t, 0, sql), 0);
    const char *burl = dbkt_pgtopo_bouncer_start(t, 0, 2);
    assert_non_null(burl);
    char url[300];
    snprintf(url, sizeof url, "%s?pool_max=%d%s", burl, THREADS, params);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_conn *one = NULL;
    DBKT_OK(dbk_conn_open(cfg, &one, &err), &err);
    dbk_config_free(cfg);

    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->db = dbk_pool_db(pool);
    static struct worker w[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){l, i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    /* One client connection asks for its backend while the load runs. */
    int64_t pids[8] = {0};
    int npids = 0;
    for (int k = 0; k < 2000 && atomic_load(&l->done) < THREADS; k++) {
        int64_t pid = 0;
        if (dbk_db_query_int64(dbk_conn_db(one), "SELECT pg_backend_pid()", NULL, 0, &pid, &err))
            continue;
        bool seen = false;
        for (int j = 0; j < npids; j++)
            seen |= pids[j] == pid;
        if (!seen && npids < 8)
            pids[npids++] = pid;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    fprintf(stderr,
            "pgbouncer (%s): %d errors (%d prepared-statement), %d wrong answers, %d backends "
            "seen by one client connection%s%s%s%s\n",
            params[0] ? params : "no pooler setting", atomic_load(&l->errors),
            atomic_load(&l->ps_errors), atomic_load(&l->wrong), npids,
            l->first_err[0] ? "; first error: " : "", l->first_err,
            l->first_wrong[0] ? "; first wrong: " : "", l->first_wrong);
    dbk_conn_close(one);
    dbk_pool_close(pool, 2000);
    pthread_mutex_destroy(&l->mu);
    dbkt_pgtopo_stop(t);
    return npids;
}

/* pooler=transaction: zero errors of any kind, zero wrong answers, and the
 * backends really switch under one client connection. */
static void pgbouncer_transaction_mode_zero_errors(void **state)
{
    (void)state;
    static struct load l;
    int backends = run_load("&pooler=transaction", &l);
    assert_int_equal(atomic_load(&l.wrong), 0);
    assert_int_equal(atomic_load(&l.errors), 0);
    assert_true(backends > 1);
}

/* Nobody set the mode: answers must still be right (statement names that
 * cannot resolve to another client's statement; the connection switches
 * to unnamed statements at the first sign of a pooler). */
static void pgbouncer_undeclared_never_wrong(void **state)
{
    (void)state;
    static struct load l;
    int backends = run_load("", &l);
    assert_int_equal(atomic_load(&l.wrong), 0);
    assert_true(backends > 1);
}

static dbk_rc set_local_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)ctx;
    dbk_rc rc = dbk_db_exec(tx, "SET LOCAL statement_timeout = 1000", NULL, 0, NULL, err);
    if (rc)
        return rc;
    return dbk_db_exec(tx, "SELECT pg_advisory_xact_lock(42)", NULL, 0, NULL, err);
}

static dbk_rc sleep_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)ctx;
    return dbk_db_exec(tx, "SELECT pg_sleep(3)", NULL, 0, NULL, err);
}

/* pooler=transaction refuses what would outlive the transaction in a
 * shared server session, with an error that says so; transaction-scoped
 * equivalents work. */
static void pgbouncer_session_statements_refused(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(0);
    const char *burl = dbkt_pgtopo_bouncer_start(t, 0, 2);
    assert_non_null(burl);
    char url[300];
    snprintf(url, sizeof url, "%s?pooler=transaction&statement_timeout=60000", burl);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);
    dbk_db *db = dbk_pool_db(pool);
    const char *refused[] = {"SET statement_timeout = 0",
                             "RESET ALL",
                             "PREPARE p AS SELECT 1",
                             "LISTEN chan",
                             "CREATE TEMP TABLE tmp (a int)",
                             "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                             "SELECT pg_advisory_lock(1)",
                             "SELECT set_config('search_path', 'x', false)",
                             NULL};
    for (int i = 0; refused[i]; i++) {
        dbk_rc rc = dbk_db_exec(db, refused[i], NULL, 0, NULL, &err);
        if (rc != DBK_EMISUSE)
            fail_msg("%s: expected DBK_EMISUSE, got %s", refused[i], dbk_rc_name(rc));
        assert_non_null(strstr(err.message, "pooler=transaction"));
        rc = dbk_db_exec_script(db, refused[i], &err);
        if (rc != DBK_EMISUSE)
            fail_msg("%s as a script: expected DBK_EMISUSE, got %s", refused[i], dbk_rc_name(rc));
    }
    DBKT_OK(dbk_tx_run(db, set_local_fn, NULL, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT 1"), 1);
    /* The transaction timeout is still enforced by the server (SET LOCAL
     * statement_timeout at BEGIN), through the pooler. */
    dbk_tx_opts o = {0};
    o.timeout_ms = 300;
    o.max_attempts = 1;
    DBKT_RC(DBK_ETIMEOUT, dbk_tx_run(db, sleep_fn, NULL, &o, &err));
    /* No session setting of ours was left in a shared server session:
     * every server session still has the server's default. */
    for (int i = 0; i < 8; i++) {
        char buf[32];
        dbkt_text(db, "SELECT current_setting('statement_timeout')", buf, sizeof buf);
        assert_string_equal(buf, "0");
    }
    dbk_pool_close(pool, 1000);
    dbkt_pgtopo_stop(t);
}

static dbkt_proc doctor(const char *url)
{
    char env[400];
    snprintf(env, sizeof env, "DATABASE_URL=%s", url);
    const char *set[] = {env, NULL};
    const char *unset[] = {"DB_POOLER", "DB_HOST", "DB_NAME", NULL};
    const char *args[] = {"doctor", NULL};
    int out_fd, err_fd;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, args, unset, set, &out_fd, &err_fd);
    return dbkt_collect(pid, out_fd, err_fd, 60000, "dbkit doctor");
}

/* `dbkit doctor` tells a transaction-mode pooler from a direct server and
 * says whether pooler=transaction is set. */
static void pgbouncer_doctor_detects_pooler(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(0);
    const char *burl = dbkt_pgtopo_bouncer_start(t, 0, 2);
    assert_non_null(burl);
    dbkt_proc p = doctor(burl);
    if (p.code != 0 || !strstr(p.out, "transaction-mode pooler is in front") ||
        !strstr(p.out, "NOT set"))
        fail_msg("doctor through the bouncer (exit %d):\n%s\n%s", p.code, p.out, p.err);
    dbkt_proc_free(&p);
    char url[300];
    snprintf(url, sizeof url, "%s?pooler=transaction", burl);
    p = doctor(url);
    if (p.code != 0 || !strstr(p.out, "pooler=transaction is set"))
        fail_msg("doctor with pooler=transaction (exit %d):\n%s\n%s", p.code, p.out, p.err);
    dbkt_proc_free(&p);
    p = doctor(dbkt_pgtopo_url(t, 0));
    if (p.code != 0 || !strstr(p.out, "none in transaction mode"))
        fail_msg("doctor on the server itself (exit %d):\n%s\n%s", p.code, p.out, p.err);
    dbkt_proc_free(&p);
    dbkt_pgtopo_stop(t);
}

/* Migrations go to DATABASE_DIRECT_URL when it is set: here DATABASE_URL
 * points at nothing at all, so only the direct URL can have worked. */
static void pgbouncer_migrations_use_direct_url(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(0);
    char *dir = dbkt_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/20240101000000_create_t.sql", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("-- migrate:up\nCREATE TABLE via_direct (a int);\n\n-- migrate:down\nDROP TABLE "
          "via_direct;\n",
          f);
    fclose(f);
    char env1[400], env2[400];
    snprintf(env1, sizeof env1,
             "DATABASE_URL=postgres://postgres@127.0.0.1:1/postgres?pooler=transaction");
    snprintf(env2, sizeof env2, "DATABASE_DIRECT_URL=%s", dbkt_pgtopo_url(t, 0));
    const char *set[] = {env1, env2, NULL};
    const char *unset[] = {"DB_POOLER", "DB_HOST", "DB_NAME", NULL};
    const char *args[] = {"--migrations-dir", dir, "migrate", "up", NULL};
    int out_fd, err_fd;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, args, unset, set, &out_fd, &err_fd);
    dbkt_proc p = dbkt_collect(pid, out_fd, err_fd, 60000, "dbkit migrate up");
    if (p.code != 0)
        fail_msg("migrate up (exit %d):\n%s\n%s", p.code, p.out, p.err);
    dbkt_proc_free(&p);
    assert_int_equal(dbkt_pgtopo_exec(t, 0, "SELECT * FROM via_direct"), 0);
    free(dir);
    dbkt_pgtopo_stop(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pgbouncer_transaction_mode_zero_errors),
        cmocka_unit_test(pgbouncer_undeclared_never_wrong),
        cmocka_unit_test(pgbouncer_session_statements_refused),
        cmocka_unit_test(pgbouncer_doctor_detects_pooler),
        cmocka_unit_test(pgbouncer_migrations_use_direct_url),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
