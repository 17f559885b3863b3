/* dbkit:topology */
/*
 * Read replicas: routing, lag, down replicas and read-your-writes tokens,
 * on a real primary with streaming replicas (tests/support/pgtopo.h).
 *
 * Lag is made visible on purpose with pg_wal_replay_pause() on a replica,
 * so nothing depends on timing: every wait is a bounded poll of the
 * cluster's own statistics. Which server answered is read from the server
 * itself (inet_server_port()).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pgtopo.h"
#include "testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static dbk_cluster *open_cluster(dbkt_pgtopo *t, int max_lag_ms, int ryw_wait_ms)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(dbkt_pgtopo_url(t, 0), &cfg, &err), &err);
    const char *urls[8];
    int n = dbkt_pgtopo_nodes(t) - 1;
    for (int i = 0; i < n; i++)
        urls[i] = dbkt_pgtopo_url(t, i + 1);
    dbk_cluster_opts o = {.replica_urls = urls,
                          .nreplicas = (size_t)n,
                          .max_lag_ms = max_lag_ms,
                          .read_your_writes_wait_ms = ryw_wait_ms,
                          .sample_interval_ms = 50};
    dbk_cluster *c = NULL;
    DBKT_OK(dbk_cluster_open(cfg, &o, &c, &err), &err);
    dbk_config_free(cfg);
    return c;
}

static dbk_cluster_stats stats(dbk_cluster *c)
{
    dbk_error err;
    dbk_cluster_stats s;
    DBKT_OK(dbk_cluster_get_stats(c, &s, &err), &err);
    return s;
}

/* Polls (at most 30 s) until replica i is in `state`. */
static void wait_state(dbk_cluster *c, int i, dbk_replica_state state)
{
    for (int k = 0; k < 3000; k++) {
        if (stats(c).replica[i].state == state)
            return;
        sleep_ms(10);
    }
    fail_msg("replica %d never reached state %d (now %d)", i + 1, (int)state,
             (int)stats(c).replica[i].state);
}

static int64_t port_of(dbk_db *db)
{
    return dbkt_int(db, "SELECT inet_server_port()");
}

/* ---- tokens ---- */

static void replica_token_parse(void **state)
{
    (void)state;
    uint64_t lsn = 0;
    assert_true(dbk_token_parse("0/3000148", &lsn));
    assert_true(lsn == 0x3000148u);
    assert_true(dbk_token_parse("1A/FF", &lsn));
    assert_true(lsn == ((uint64_t)0x1A << 32 | 0xFF));
    const char *bad[] = {"",      "/",           "0/",          "/1",   "x/1",
                         "0/1/2", "123456789/0", "0/123456789", "0 /1", NULL};
    for (int i = 0; bad[i]; i++)
        if (dbk_token_parse(bad[i], NULL))
            fail_msg("accepted malformed token \"%s\"", bad[i]);
    assert_false(dbk_token_parse(NULL, NULL));
}

/* ---- routing ---- */

/* Marked reads go to replicas, both of them; writes, transactions and
 * scripts started on the read executor go to the primary. */
static void replica_reads_on_replicas_writes_on_primary(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(2);
    dbk_cluster *c = open_cluster(t, 60000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    wait_state(c, 1, DBK_REPLICA_UP);
    int p0 = dbkt_pgtopo_port(t, 0), p1 = dbkt_pgtopo_port(t, 1), p2 = dbkt_pgtopo_port(t, 2);
    int seen1 = 0, seen2 = 0;
    for (int i = 0; i < 20; i++) {
        int64_t p = port_of(dbk_cluster_read_db(c));
        assert_true(p == p1 || p == p2);
        seen1 += p == p1;
        seen2 += p == p2;
    }
    assert_true(seen1 > 0 && seen2 > 0);
    assert_int_equal(port_of(dbk_cluster_db(c)), p0);
    /* A script on the read executor may write: primary. */
    dbkt_exec(dbk_cluster_read_db(c), "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    assert_int_equal(dbkt_int(dbk_cluster_db(c), "SELECT count(*) FROM t"), 1);
    dbk_cluster_stats s = stats(c);
    assert_true(s.replica[0].reads + s.replica[1].reads >= 20);
    assert_int_equal(s.primary_fallbacks, 0);
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

static dbk_rc tx_port(dbk_db *tx, void *ctx, dbk_error *err)
{
    return dbk_db_query_int64(tx, "SELECT inet_server_port()", NULL, 0, ctx, err);
}

/* dbk_parallel_run on the cluster's executors runs its tasks at once, as on a
 * pool: each task waits (bounded) until all three have started, so tasks
 * run one after another fail with DBK_ETIMEOUT. */
static atomic_int par_started;

static dbk_rc par_task(dbk_db *db, void *ctx, dbk_error *err)
{
    (void)ctx;
    int64_t one = 0;
    dbk_rc rc = dbk_db_query_int64(db, "SELECT 1", NULL, 0, &one, err);
    if (rc)
        return rc;
    atomic_fetch_add(&par_started, 1);
    for (int k = 0; k < 1000 && atomic_load(&par_started) < 3; k++)
        sleep_ms(10);
    if (atomic_load(&par_started) < 3) {
        snprintf(err->message, sizeof err->message, "the tasks did not run at the same time");
        err->code = DBK_ETIMEOUT;
        return DBK_ETIMEOUT;
    }
    return DBK_OK;
}

static void replica_parallel_tasks_run_at_once(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    dbk_cluster *c = open_cluster(t, 60000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    dbk_db *execs[] = {dbk_cluster_read_db(c), dbk_cluster_db(c)};
    for (size_t e = 0; e < 2; e++) {
        atomic_store(&par_started, 0);
        dbk_parallel_task tasks[3] = {{par_task, NULL, 0, {0}}, {par_task, NULL, 0, {0}},
                                      {par_task, NULL, 0, {0}}};
        dbk_error err;
        DBKT_OK(dbk_parallel_run(execs[e], tasks, 3, 0, &err), &err);
    }
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

static void replica_transaction_on_read_executor_runs_on_primary(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    dbk_cluster *c = open_cluster(t, 60000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    dbk_error err;
    int64_t port = 0;
    DBKT_OK(dbk_tx_run(dbk_cluster_read_db(c), tx_port, &port, NULL, &err), &err);
    assert_int_equal(port, dbkt_pgtopo_port(t, 0));
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

struct slow {
    dbk_db *db;
    dbk_rc rc;
};

static void *slow_read(void *arg)
{
    struct slow *s = arg;
    dbk_error err;
    s->rc = dbk_db_exec(s->db, "SELECT pg_sleep(1.5)", NULL, 0, NULL, &err);
    return NULL;
}

/* Least outstanding work: while one replica runs a long statement, every
 * other read goes to the idle one. */
static void replica_balance_least_outstanding(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(2);
    dbk_cluster *c = open_cluster(t, 60000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    wait_state(c, 1, DBK_REPLICA_UP);
    struct slow s = {dbk_cluster_read_db(c), DBK_OK};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_read, &s), 0);
    int busy = -1;
    for (int k = 0; k < 3000 && busy < 0; k++) {
        dbk_cluster_stats st = stats(c);
        for (int i = 0; i < 2; i++)
            if (st.replica[i].in_flight == 1)
                busy = i;
        if (busy < 0)
            sleep_ms(1);
    }
    assert_true(busy >= 0);
    int idle_port = dbkt_pgtopo_port(t, busy == 0 ? 2 : 1);
    /* Only while the slow statement is still in flight does a read prove
     * anything: count those. */
    int proven = 0;
    for (int i = 0; i < 10; i++) {
        int64_t p = port_of(dbk_cluster_read_db(c));
        if (stats(c).replica[busy].in_flight == 1) {
            assert_int_equal(p, idle_port);
            proven++;
        }
    }
    pthread_join(th, NULL);
    assert_int_equal(s.rc, DBK_OK);
    assert_true(proven > 0);
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

/* ---- lag ---- */

/* A replica whose replay is paused falls behind, leaves the rotation
 * (reads go to the other one) and returns once replay resumes. */
static void replica_lagging_leaves_and_returns(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(2);
    /* 2 s, not less: on a loaded CI machine the replica that is not
     * paused once lagged past 300 ms for a moment and left the rotation
     * too, and the read went to the primary. */
    dbk_cluster *c = open_cluster(t, 2000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    wait_state(c, 1, DBK_REPLICA_UP);
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_pause()"), 0);
    dbkt_exec(dbk_cluster_db(c), "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    wait_state(c, 0, DBK_REPLICA_LAGGING);
    assert_true(stats(c).replica[0].lag_ms > 2000);
    wait_state(c, 1, DBK_REPLICA_UP);
    for (int i = 0; i < 10; i++)
        assert_int_equal(port_of(dbk_cluster_read_db(c)), dbkt_pgtopo_port(t, 2));
    assert_int_equal(stats(c).replica[1].state, DBK_REPLICA_UP);
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_resume()"), 0);
    wait_state(c, 0, DBK_REPLICA_UP);
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

/* With every replica lagging, reads go to the primary and are counted. */
static void replica_all_lagging_reads_on_primary(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    dbk_cluster *c = open_cluster(t, 300, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_pause()"), 0);
    dbkt_exec(dbk_cluster_db(c), "CREATE TABLE t (id int)");
    wait_state(c, 0, DBK_REPLICA_LAGGING);
    uint64_t before = stats(c).primary_fallbacks;
    for (int i = 0; i < 5; i++)
        assert_int_equal(port_of(dbk_cluster_read_db(c)), dbkt_pgtopo_port(t, 0));
    assert_true(stats(c).primary_fallbacks == before + 5);
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

/* ---- down replicas ---- */

/* A stopped replica leaves the rotation at its first failure; reads still
 * succeed (on the other targets); it returns after it is started again. */
static void replica_down_leaves_and_returns(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    dbk_cluster *c = open_cluster(t, 60000, 100);
    wait_state(c, 0, DBK_REPLICA_UP);
    assert_int_equal(port_of(dbk_cluster_read_db(c)), dbkt_pgtopo_port(t, 1));
    assert_int_equal(dbkt_pgtopo_kill_node(t, 1), 0);
    for (int i = 0; i < 5; i++) {
        dbk_error err;
        int64_t p = 0;
        dbk_rc rc = dbk_db_query_int64(dbk_cluster_read_db(c), "SELECT inet_server_port()", NULL, 0,
                                       &p, &err);
        /* The one read that was on a connection the kill broke may fail;
         * after it every read is served by the primary. */
        if (rc != DBK_OK) {
            assert_int_equal(i, 0);
            assert_int_equal(rc, DBK_ECONN_LOST);
            continue;
        }
        assert_int_equal(p, dbkt_pgtopo_port(t, 0));
    }
    assert_int_equal(stats(c).replica[0].state, DBK_REPLICA_DOWN);
    assert_true(stats(c).primary_fallbacks >= 4);
    assert_int_equal(dbkt_pgtopo_start_node(t, 1), 0);
    wait_state(c, 0, DBK_REPLICA_UP);
    for (int i = 0; i < 3; i++)
        assert_int_equal(port_of(dbk_cluster_read_db(c)), dbkt_pgtopo_port(t, 1));
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

/* ---- read-your-writes ---- */

static void replica_read_your_writes_token(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    /* A long max lag keeps the paused replica in the rotation: only the
     * token may keep reads off it. */
    dbk_cluster *c = open_cluster(t, 600000, 200);
    dbkt_exec(dbk_cluster_db(c), "CREATE TABLE t (id int)");
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    wait_state(c, 0, DBK_REPLICA_UP);
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_pause()"), 0);
    dbkt_exec(dbk_cluster_db(c), "INSERT INTO t VALUES (42)");
    dbk_error err;
    char token[DBK_TOKEN_MAX];
    DBKT_OK(dbk_cluster_token(c, token, sizeof token, &err), &err);
    assert_true(dbk_token_parse(token, NULL));

    /* Without the token the replica answers, and has not seen the row:
     * the lag is real. */
    assert_int_equal(port_of(dbk_cluster_read_db(c)), dbkt_pgtopo_port(t, 1));
    assert_int_equal(dbkt_int(dbk_cluster_read_db(c), "SELECT count(*) FROM t"), 0);

    /* With it: the primary, after the bounded wait, counted. */
    dbk_db *db = NULL;
    DBKT_OK(dbk_cluster_read_db_after(c, token, &db, &err), &err);
    assert_int_equal(port_of(db), dbkt_pgtopo_port(t, 0));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t WHERE id = 42"), 1);
    assert_int_equal(stats(c).ryw_fallbacks, 1);

    /* Replay resumes: the same token now picks the replica, which sees it. */
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_resume()"), 0);
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    DBKT_OK(dbk_cluster_read_db_after(c, token, &db, &err), &err);
    assert_int_equal(port_of(db), dbkt_pgtopo_port(t, 1));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t WHERE id = 42"), 1);
    assert_int_equal(stats(c).ryw_fallbacks, 1);

    /* A malformed token is an error, not a silent primary read. */
    DBKT_RC(DBK_EINVALID, dbk_cluster_read_db_after(c, "not-a-token", &db, &err));
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

/* The wait itself: a replica that replays the token while the read waits
 * serves it (replay resumed from another thread during the wait). */
struct resume_ctx {
    dbkt_pgtopo *t;
};

static void *resume_later(void *arg)
{
    struct resume_ctx *r = arg;
    sleep_ms(100);
    dbkt_pgtopo_exec(r->t, 1, "SELECT pg_wal_replay_resume()");
    return NULL;
}

static void replica_read_your_writes_waits_for_replay(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    dbk_cluster *c = open_cluster(t, 600000, 30000);
    dbkt_exec(dbk_cluster_db(c), "CREATE TABLE t (id int)");
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    wait_state(c, 0, DBK_REPLICA_UP);
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_pause()"), 0);
    dbkt_exec(dbk_cluster_db(c), "INSERT INTO t VALUES (7)");
    dbk_error err;
    char token[DBK_TOKEN_MAX];
    DBKT_OK(dbk_cluster_token(c, token, sizeof token, &err), &err);
    struct resume_ctx r = {t};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, resume_later, &r), 0);
    dbk_db *db = NULL;
    DBKT_OK(dbk_cluster_read_db_after(c, token, &db, &err), &err);
    pthread_join(th, NULL);
    assert_int_equal(port_of(db), dbkt_pgtopo_port(t, 1));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t WHERE id = 7"), 1);
    assert_int_equal(stats(c).ryw_fallbacks, 0);
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

static void replica_open_rejects_bad_input(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url("postgres://u:secretpw@127.0.0.1:1/x", &cfg, &err), &err);
    const char *bad[] = {"sqlite:x.db"};
    dbk_cluster_opts o = {.replica_urls = bad, .nreplicas = 1};
    dbk_cluster *c = NULL;
    DBKT_RC(DBK_ECONFIG, dbk_cluster_open(cfg, &o, &c, &err));
    assert_null(c);
    assert_non_null(strstr(err.message, "replica 1"));
    const char *pw[] = {"postgres://u:topsecret@h:99999999/x"};
    o.replica_urls = pw;
    DBKT_RC(DBK_ECONFIG, dbk_cluster_open(cfg, &o, &c, &err));
    assert_null(strstr(err.message, "topsecret"));
    assert_null(strstr(err.hint, "topsecret"));
    dbk_config_free(cfg);
    DBKT_OK(dbk_config_from_url("sqlite::memory:", &cfg, &err), &err);
    DBKT_RC(DBK_ECONFIG, dbk_cluster_open(cfg, NULL, &c, &err));
    dbk_config_free(cfg);
    DBKT_RC(DBK_EMISUSE, dbk_cluster_open(NULL, NULL, &c, &err));
}

/* The replicas come from the configuration (the `replicas` key, as
 * DATABASE_REPLICA_URLS would give them) when the options name none. */
static void replica_config_replicas_key(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(2);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(dbkt_pgtopo_url(t, 0), &cfg, &err), &err);
    char list[300];
    snprintf(list, sizeof list, "%s,%s", dbkt_pgtopo_url(t, 1), dbkt_pgtopo_url(t, 2));
    DBKT_OK(dbk_config_set(cfg, "replicas", list, &err), &err);
    DBKT_OK(dbk_config_set(cfg, "replica_max_lag", "60000", &err), &err);
    dbk_cluster *c = NULL;
    DBKT_OK(dbk_cluster_open(cfg, NULL, &c, &err), &err);
    dbk_config_free(cfg);
    assert_int_equal(stats(c).nreplicas, 2);
    wait_state(c, 0, DBK_REPLICA_UP);
    wait_state(c, 1, DBK_REPLICA_UP);
    for (int i = 0; i < 4; i++) {
        int64_t p = port_of(dbk_cluster_read_db(c));
        assert_true(p == dbkt_pgtopo_port(t, 1) || p == dbkt_pgtopo_port(t, 2));
    }
    dbk_cluster_close(c, 1000);
    dbkt_pgtopo_stop(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(replica_token_parse),
        cmocka_unit_test(replica_open_rejects_bad_input),
        cmocka_unit_test(replica_reads_on_replicas_writes_on_primary),
        cmocka_unit_test(replica_parallel_tasks_run_at_once),
        cmocka_unit_test(replica_transaction_on_read_executor_runs_on_primary),
        cmocka_unit_test(replica_balance_least_outstanding),
        cmocka_unit_test(replica_lagging_leaves_and_returns),
        cmocka_unit_test(replica_all_lagging_reads_on_primary),
        cmocka_unit_test(replica_down_leaves_and_returns),
        cmocka_unit_test(replica_read_your_writes_token),
        cmocka_unit_test(replica_read_your_writes_waits_for_replay),
        cmocka_unit_test(replica_config_replicas_key),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
