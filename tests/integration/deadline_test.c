/*
 * Every public call that waits on the network returns within its
 * documented deadline whatever the network does (docs/deadlines.md has the
 * table these tests follow, one test per row and network mode).
 *
 * The "network" is a TCP proxy in this process (tests/support/tcpproxy.h)
 * between dbkit and the test PostgreSQL or Redis: it forwards, goes silent
 * (sockets stay open, nothing comes back), goes half-open (requests reach
 * the server, answers are dropped) or resets every connection. Each call
 * runs on a worker thread; the main thread waits for it at most its
 * deadline plus a generous margin (a correctness bound, not a performance
 * figure) and fails if it is still blocked. Afterwards the process must be
 * back to the threads and descriptors it had before the test (bounded
 * polling of /proc/self/task and /proc/self/fd): no cancel thread, socket
 * or proxy connection left behind.
 *
 * Deadlines are short through configuration: statement_timeout 100 ms
 * (client deadline 100 + 2000 ms), connect_timeout 1 s, ping and pool
 * waits of a few hundred ms, the Redis cache's own 50 ms command timeout.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tcpproxy.h"
#include "testutil.h"

#define STMT_TIMEOUT_MS 100
#define STMT_DEADLINE_MS (STMT_TIMEOUT_MS + 2000) /* the driver's client deadline */
#define CONNECT_TIMEOUT_MS 1000                   /* connect_timeout=1 (seconds in a URL) */
#define MARGIN_MS 3000                            /* correctness bound, not a performance one */
#define CANCEL_SETTLE_MS 1000                     /* a cancel attempt's own deadline */

/* ---- running a call under a bound ---- */

typedef dbk_rc (*call_fn)(void *ctx, dbk_error *err);

struct call {
    call_fn fn;
    void *ctx;
    dbk_rc rc;
    dbk_error err;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    pthread_t th;
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    memset(&c->err, 0, sizeof c->err);
    dbk_rc rc = c->fn(c->ctx, &c->err);
    pthread_mutex_lock(&c->mu);
    c->rc = rc;
    c->done = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Starts fn(ctx) on a worker thread. */
static struct call *call_start(call_fn fn, void *ctx, int64_t *t0)
{
    struct call *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fn = fn;
    c->ctx = ctx;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    *t0 = dbkt_mono_ms();
    assert_int_equal(pthread_create(&c->th, NULL, call_main, c), 0);
    return c;
}

/* Waits until limit_ms after t0 for the call. A call still blocked then
 * fails the test (the worker is left behind: the process ends with the
 * test). Returns its rc; *err gets its error and *elapsed_ms how long it
 * took. */
static dbk_rc call_wait(struct call *c, const char *what, int64_t t0, int limit_ms,
                        dbk_error *err, int64_t *elapsed_ms)
{
    pthread_mutex_lock(&c->mu);
    while (!c->done && dbkt_mono_ms() - t0 < limit_ms) {
        pthread_mutex_unlock(&c->mu);
        usleep(5000);
        pthread_mutex_lock(&c->mu);
    }
    int done = c->done;
    pthread_mutex_unlock(&c->mu);
    if (!done)
        fail_msg("%s still blocked after %d ms (its deadline plus a %d ms margin)", what,
                 limit_ms, MARGIN_MS);
    pthread_join(c->th, NULL);
    *elapsed_ms = dbkt_mono_ms() - t0;
    dbk_rc rc = c->rc;
    if (err)
        *err = c->err;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    return rc;
}

static dbk_rc bounded(const char *what, call_fn fn, void *ctx, int limit_ms, dbk_error *err,
                      int64_t *elapsed_ms)
{
    int64_t t0;
    struct call *c = call_start(fn, ctx, &t0);
    return call_wait(c, what, t0, limit_ms, err, elapsed_ms);
}

/* Runs the call and checks it returned `expected` within deadline_ms +
 * MARGIN_MS. */
static void expect_within(const char *what, call_fn fn, void *ctx, int deadline_ms,
                          dbk_rc expected)
{
    dbk_error err;
    int64_t ms = 0;
    dbk_rc rc = bounded(what, fn, ctx, deadline_ms + MARGIN_MS, &err, &ms);
    print_message("%s: %s after %lld ms (deadline %d ms): %s\n", what, dbk_rc_name(rc),
                  (long long)ms, deadline_ms, err.message);
    if (rc != expected)
        fail_msg("%s: expected %s, got %s: %s", what, dbk_rc_name(expected), dbk_rc_name(rc),
                 err.message);
}

/* ---- the process's own resources ---- */

struct baseline {
    int threads, fds;
};

static struct baseline baseline_now(void)
{
    struct baseline b = {dbkt_count_threads(), dbkt_count_fds()};
    assert_true(b.threads > 0 && b.fds > 0);
    return b;
}

/* Polls (bounded) until threads and descriptors are back to b. */
static void expect_settled(struct baseline b, int within_ms)
{
    int64_t until = dbkt_mono_ms() + within_ms;
    int t, f;
    for (;;) {
        t = dbkt_count_threads();
        f = dbkt_count_fds();
        if ((t <= b.threads && f <= b.fds) || dbkt_mono_ms() >= until)
            break;
        usleep(10000);
    }
    if (t > b.threads || f > b.fds)
        fail_msg("after %d ms the process still has %d threads and %d descriptors "
                 "(%d and %d before)",
                 within_ms, t, f, b.threads, b.fds);
}

/* ---- PostgreSQL behind the proxy ---- */

struct pgenv {
    char *direct;      /* fresh database, straight to the server */
    char proxied[512]; /* the same through the proxy, with short deadlines */
    dbkt_proxy *px;
};

/* A proxy to the test server's admin database and a warm-up connection
 * (one-time library state is created before the baseline). The tests
 * create only temporary tables, so they share that database and need no
 * fresh one (which would cost each test a CREATE DATABASE). */
static struct baseline pg_setup(struct pgenv *e, const char *name)
{
    (void)name;
    e->direct = strdup(dbkt_pg_admin_url());
    assert_non_null(e->direct);
    dbk_conn *warm = dbkt_open(e->direct);
    dbk_conn_close(warm);
    struct baseline b = baseline_now();
    /* postgres://user@127.0.0.1:PORT/db[?params] -> the proxy's port */
    const char *hp = strstr(e->direct, "@127.0.0.1:");
    if (!hp)
        fail_msg("the test PostgreSQL URL is not user@127.0.0.1:port: cannot put a proxy in "
                 "front of it");
    int port = atoi(hp + 11);
    const char *path = strchr(hp + 11, '/');
    assert_non_null(path);
    e->px = dbkt_proxy_start("127.0.0.1", port);
    snprintf(e->proxied, sizeof e->proxied,
             "%.*s@127.0.0.1:%d%s%cstatement_timeout=%d&connect_timeout=%d", (int)(hp - e->direct),
             e->direct, dbkt_proxy_port(e->px), path, strchr(path, '?') ? '&' : '?',
             STMT_TIMEOUT_MS, CONNECT_TIMEOUT_MS / 1000);
    return b;
}

static void pg_teardown(struct pgenv *e)
{
    dbkt_proxy_stop(e->px);
    e->px = NULL;
    free(e->direct);
    e->direct = NULL;
}

static dbk_config *config_of(const char *url)
{
    dbk_config *cfg = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    return cfg;
}

/* The connection is no use after a timeout: it fails at once. */
static void expect_broken(dbk_conn *c)
{
    dbk_error err;
    int64_t t0 = dbkt_mono_ms();
    DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(dbk_conn_db(c), "SELECT 1", NULL, 0, NULL, &err));
    assert_true(dbkt_mono_ms() - t0 < MARGIN_MS);
}

/* ---- the calls ---- */

static dbk_rc do_query(void *ctx, dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(ctx, "SELECT 1", NULL, 0, &r, err);
    dbk_result_free(r);
    return rc;
}

static dbk_rc do_exec(void *ctx, dbk_error *err)
{
    return dbk_db_exec(ctx, "UPDATE t SET v = v + 1", NULL, 0, NULL, err);
}

static dbk_rc do_exec_select(void *ctx, dbk_error *err)
{
    return dbk_db_exec(ctx, "SELECT 1", NULL, 0, NULL, err);
}

static dbk_rc do_script(void *ctx, dbk_error *err)
{
    return dbk_db_exec_script(ctx, "SELECT 1; SELECT 2", err);
}

struct open_ctx {
    dbk_config *cfg;
    dbk_conn *conn;
};

static dbk_rc do_open(void *ctx, dbk_error *err)
{
    struct open_ctx *o = ctx;
    return dbk_conn_open(o->cfg, &o->conn, err);
}

/* ---- dbk_conn_open ---- */

static void deadline_conn_open_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "open_silent");
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    struct open_ctx o = {config_of(e.proxied), NULL};
    expect_within("dbk_conn_open (silent)", do_open, &o, CONNECT_TIMEOUT_MS, DBK_EUNAVAILABLE);
    assert_null(o.conn);
    dbk_config_free(o.cfg);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_conn_open_reset(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "open_reset");
    /* Accepted, never connected on, then reset under the handshake. */
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    struct open_ctx o = {config_of(e.proxied), NULL};
    int64_t t0;
    struct call *c = call_start(do_open, &o, &t0);
    /* Reset once the proxy holds the connection the open is waiting on. */
    while (dbkt_proxy_connections(e.px) == 0 && dbkt_mono_ms() - t0 < CONNECT_TIMEOUT_MS)
        usleep(2000);
    dbkt_proxy_reset_all(e.px);
    dbk_error err;
    int64_t ms = 0;
    dbk_rc rc = call_wait(c, "dbk_conn_open (reset)", t0, CONNECT_TIMEOUT_MS + MARGIN_MS, &err,
                          &ms);
    print_message("dbk_conn_open (reset): %s after %lld ms: %s\n", dbk_rc_name(rc),
                  (long long)ms, err.message);
    DBKT_RC(DBK_EUNAVAILABLE, rc);
    dbk_config_free(o.cfg);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* ---- one statement on a connection ---- */

/* Opens a connection through the proxy (forwarding), with its own
 * temporary table t. The server-side statement_timeout is lifted for the
 * session (creating the first temporary table of a session can take longer
 * than the short test value); the client deadline under test comes from
 * the configuration and does not change. */
static dbk_conn *open_proxied(struct pgenv *e)
{
    dbk_conn *c = dbkt_open(e->proxied);
    dbkt_exec(dbk_conn_db(c), "SET statement_timeout = 0; "
                              "CREATE TEMP TABLE t (id int PRIMARY KEY, v int); "
                              "INSERT INTO t VALUES (1, 0)");
    return c;
}

static void conn_call(const char *name, dbkt_proxy_mode mode, call_fn fn, const char *what)
{
    struct pgenv e;
    struct baseline b = pg_setup(&e, name);
    dbk_conn *c = open_proxied(&e);
    dbkt_proxy_set_mode(e.px, mode);
    expect_within(what, fn, dbk_conn_db(c), STMT_DEADLINE_MS, DBK_ETIMEOUT);
    expect_broken(c);
    dbk_conn_close(c);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_conn_query_silent(void **state)
{
    (void)state;
    conn_call("query_silent", DBKT_PROXY_SILENT, do_query, "dbk_db_query on a conn (silent)");
}

static void deadline_conn_query_half_open(void **state)
{
    (void)state;
    conn_call("query_half", DBKT_PROXY_HALF_OPEN, do_query,
              "dbk_db_query on a conn (half-open)");
}

static void deadline_conn_exec_script_silent(void **state)
{
    (void)state;
    conn_call("script_silent", DBKT_PROXY_SILENT, do_script,
              "dbk_db_exec_script on a conn (silent)");
}

/* The proxy resets every connection before the call: DBK_ECONN_LOST. */
static void conn_reset_call(const char *name, call_fn fn, const char *what)
{
    struct pgenv e;
    struct baseline b = pg_setup(&e, name);
    dbk_conn *c = open_proxied(&e);
    dbkt_proxy_reset_all(e.px);
    expect_within(what, fn, dbk_conn_db(c), STMT_DEADLINE_MS, DBK_ECONN_LOST);
    expect_broken(c);
    dbk_conn_close(c);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_conn_query_reset(void **state)
{
    (void)state;
    conn_reset_call("query_reset", do_query, "dbk_db_query on a conn (reset)");
}

static void deadline_conn_exec_reset(void **state)
{
    (void)state;
    conn_reset_call("exec_reset", do_exec, "dbk_db_exec on a conn (reset)");
}

/* ---- ping ---- */

#define PING_MS 300

static dbk_rc do_ping(void *ctx, dbk_error *err)
{
    return dbk_conn_ping(ctx, PING_MS, err);
}

static void deadline_conn_ping_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "ping_silent");
    dbk_conn *c = open_proxied(&e);
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    expect_within("dbk_conn_ping (silent)", do_ping, c, PING_MS, DBK_ETIMEOUT);
    expect_broken(c);
    dbk_conn_close(c);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* ---- close ---- */

static dbk_rc do_close(void *ctx, dbk_error *err)
{
    (void)err;
    dbk_conn_close(ctx);
    return DBK_OK;
}

static void deadline_conn_close_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "close_silent");
    dbk_conn *c = open_proxied(&e);
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    /* Closing sends Terminate without waiting for anything. */
    expect_within("dbk_conn_close (silent)", do_close, c, 0, DBK_OK);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* ---- transactions ---- */

struct txctx {
    dbkt_proxy *px;
    dbkt_proxy_mode mode; /* set inside the closure */
    bool statement;       /* then run a statement */
    dbk_db *db;
};

static dbk_rc tx_body(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct txctx *t = ctx;
    dbk_rc rc = dbk_db_exec(tx, "UPDATE t SET v = v + 1 WHERE id = 1", NULL, 0, NULL, err);
    if (rc)
        return rc;
    if (t->mode != DBKT_PROXY_FORWARD)
        dbkt_proxy_set_mode(t->px, t->mode);
    if (t->statement)
        return dbk_db_exec(tx, "UPDATE t SET v = v + 1 WHERE id = 1", NULL, 0, NULL, err);
    return DBK_OK; /* COMMIT next */
}

static dbk_rc do_tx(void *ctx, dbk_error *err)
{
    struct txctx *t = ctx;
    dbk_tx_opts o = {0};
    o.max_attempts = 1;
    o.timeout_ms = 5000;
    return dbk_tx_run(t->db, tx_body, t, &o, err);
}

static void tx_case(const char *name, bool pool, dbkt_proxy_mode before_begin,
                    dbkt_proxy_mode in_closure, bool statement, dbk_rc expected, const char *what)
{
    struct pgenv e;
    struct baseline b = pg_setup(&e, name);
    dbk_conn *c = open_proxied(&e);
    dbk_pool *p = NULL;
    dbk_error err;
    if (pool) {
        dbk_conn_close(c);
        c = NULL;
        dbk_config *cfg = config_of(e.proxied);
        dbk_pool_opts po = {0};
        po.max_size = 2;
        DBKT_OK(dbk_pool_open(cfg, &po, &p, &err), &err);
        dbk_config_free(cfg);
        dbkt_exec(dbk_pool_db(p), "SELECT 1"); /* one connection, idle */
    }
    struct txctx t = {e.px, in_closure, statement, pool ? dbk_pool_db(p) : dbk_conn_db(c)};
    if (before_begin != DBKT_PROXY_FORWARD)
        dbkt_proxy_set_mode(e.px, before_begin);
    expect_within(what, do_tx, &t, STMT_DEADLINE_MS, expected);
    if (c) {
        expect_broken(c);
        dbk_conn_close(c);
    }
    dbk_pool_close(p, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* The BEGIN round trip (BEGIN; SET LOCAL ...) goes through the script
 * path: it used to wait 10 minutes. */
static void deadline_tx_begin_silent(void **state)
{
    (void)state;
    tx_case("tx_begin_silent", false, DBKT_PROXY_SILENT, DBKT_PROXY_FORWARD, false, DBK_ETIMEOUT,
            "dbk_tx_run BEGIN (silent)");
}

static void deadline_tx_statement_silent(void **state)
{
    (void)state;
    tx_case("tx_stmt_silent", false, DBKT_PROXY_FORWARD, DBKT_PROXY_SILENT, true, DBK_ETIMEOUT,
            "dbk_tx_run statement (silent)");
}

static void deadline_tx_commit_half_open(void **state)
{
    (void)state;
    tx_case("tx_commit_half", false, DBKT_PROXY_FORWARD, DBKT_PROXY_HALF_OPEN, false,
            DBK_ECOMMIT_UNKNOWN, "dbk_tx_run COMMIT (half-open)");
}

static void deadline_pool_tx_begin_silent(void **state)
{
    (void)state;
    tx_case("ptx_begin_silent", true, DBKT_PROXY_SILENT, DBKT_PROXY_FORWARD, false,
            DBK_ETIMEOUT, "dbk_tx_run BEGIN on a pool (silent)");
}

/* ---- pools ---- */

#define ACQUIRE_MS 500
#define VALIDATE_MS 300

static dbk_pool *pool_open(struct pgenv *e, int validate_after_ms)
{
    dbk_config *cfg = config_of(e->proxied);
    dbk_pool_opts po = {0};
    po.max_size = 1;
    po.acquire_timeout_ms = ACQUIRE_MS;
    po.connect_timeout_ms = 1000; /* longer than the acquire: the acquire's bound shows */
    po.validate_after_ms = validate_after_ms;
    po.validate_timeout_ms = VALIDATE_MS;
    dbk_pool *p = NULL;
    dbk_error err;
    DBKT_OK(dbk_pool_open(cfg, &po, &p, &err), &err);
    dbk_config_free(cfg);
    return p;
}

static void deadline_pool_query_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "pool_query_silent");
    dbk_pool *p = pool_open(&e, 600000);
    dbkt_exec(dbk_pool_db(p), "SELECT 1");
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    expect_within("dbk_db_query on a pool (silent)", do_query, dbk_pool_db(p), STMT_DEADLINE_MS,
                  DBK_ETIMEOUT);
    dbk_pool_close(p, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_pool_exec_half_open(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "pool_exec_half");
    dbk_pool *p = pool_open(&e, 600000);
    dbkt_exec(dbk_pool_db(p), "SELECT 1");
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_HALF_OPEN);
    expect_within("dbk_db_exec on a pool (half-open)", do_exec_select, dbk_pool_db(p), STMT_DEADLINE_MS,
                  DBK_ETIMEOUT);
    dbk_pool_close(p, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

struct acq_ctx {
    dbk_pool *pool;
};

static dbk_rc do_acquire(void *ctx, dbk_error *err)
{
    struct acq_ctx *a = ctx;
    dbk_conn *c = NULL;
    dbk_rc rc = dbk_pool_acquire(a->pool, &c, err);
    if (rc == DBK_OK)
        dbk_pool_release(a->pool, c);
    return rc;
}

static void deadline_pool_acquire_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "acquire_silent");
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    struct acq_ctx a = {pool_open(&e, 600000)};
    expect_within("dbk_pool_acquire (silent, no connection yet)", do_acquire, &a, ACQUIRE_MS,
                  DBK_EPOOL_TIMEOUT);
    dbk_pool_close(a.pool, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* An idle connection is validated (pinged) before it is lent: the ping
 * meets the silent network, then a new connect does. */
static void deadline_pool_validate_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "validate_silent");
    struct acq_ctx a = {pool_open(&e, 1)};
    dbkt_exec(dbk_pool_db(a.pool), "SELECT 1");
    usleep(20000); /* idle past validate_after */
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    expect_within("dbk_pool_acquire with validation (silent)", do_acquire, &a, ACQUIRE_MS,
                  DBK_EPOOL_TIMEOUT);
    dbk_pool_close(a.pool, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

struct rel_ctx {
    dbk_pool *pool;
    dbk_conn *conn;
};

static dbk_rc do_release_reset(void *ctx, dbk_error *err)
{
    (void)err;
    struct rel_ctx *r = ctx;
    dbk_pool_release_reset(r->pool, r->conn);
    return DBK_OK;
}

static void deadline_pool_release_reset_silent(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "reset_silent");
    struct rel_ctx r = {pool_open(&e, 600000), NULL};
    dbk_error err;
    DBKT_OK(dbk_pool_acquire(r.pool, &r.conn, &err), &err);
    dbkt_exec(dbk_conn_db(r.conn), "SET application_name = 'dirty'");
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    expect_within("dbk_pool_release_reset (silent)", do_release_reset, &r, STMT_DEADLINE_MS,
                  DBK_OK);
    dbk_pool_close(r.pool, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* ---- batches and COPY ---- */

static dbk_rc do_batch(void *ctx, dbk_error *err)
{
    dbk_batch *bt = NULL;
    dbk_rc rc = dbk_batch_new(&bt, err);
    if (rc)
        return rc;
    dbk_value id = dbk_int64(1);
    if (!(rc = dbk_batch_add(bt, "SELECT v FROM t WHERE id = $1", &id, 1, err)) &&
        !(rc = dbk_batch_add(bt, "UPDATE t SET v = v + 1 WHERE id = $1", &id, 1, err)))
        rc = dbk_batch_run(ctx, bt, DBK_BATCH_INDEPENDENT, err);
    dbk_batch_free(bt);
    return rc;
}

static void deadline_batch_run_reset(void **state)
{
    (void)state;
    conn_reset_call("batch_reset", do_batch, "dbk_batch_run (reset)");
}

static void deadline_batch_run_silent(void **state)
{
    (void)state;
    conn_call("batch_silent", DBKT_PROXY_SILENT, do_batch, "dbk_batch_run (silent)");
}

struct item {
    int64_t id;
    const char *name;
};

static const dbk_field item_fields[] = {
    DBK_FIELD(struct item, id, "id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(struct item, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity item_entity = DBK_ENTITY_PLAIN("items", struct item, item_fields);

#define COPY_ROWS 200 /* above the COPY threshold */

static dbk_rc do_copy(void *ctx, dbk_error *err)
{
    struct item rows[COPY_ROWS];
    for (int i = 0; i < COPY_ROWS; i++)
        rows[i] = (struct item){i + 1, "x"};
    return dbk_repo_create_many(ctx, &item_entity, rows, COPY_ROWS, NULL, NULL, err);
}

static void copy_case(const char *name, dbkt_proxy_mode mode, const char *what)
{
    struct pgenv e;
    struct baseline b = pg_setup(&e, name);
    dbk_conn *c = open_proxied(&e);
    dbkt_exec(dbk_conn_db(c), "CREATE TEMP TABLE items (id bigint PRIMARY KEY, name text)");
    dbkt_proxy_set_mode(e.px, mode);
    expect_within(what, do_copy, dbk_conn_db(c), STMT_DEADLINE_MS, DBK_ETIMEOUT);
    expect_broken(c);
    dbk_conn_close(c);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_repo_create_many_copy_reset(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "copy_reset");
    dbk_conn *c = open_proxied(&e);
    dbkt_exec(dbk_conn_db(c), "CREATE TEMP TABLE items (id bigint PRIMARY KEY, name text)");
    dbkt_proxy_reset_all(e.px);
    expect_within("dbk_repo_create_many COPY (reset)", do_copy, dbk_conn_db(c), STMT_DEADLINE_MS,
                  DBK_ECONN_LOST);
    expect_broken(c);
    dbk_conn_close(c);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

static void deadline_repo_create_many_copy_silent(void **state)
{
    (void)state;
    copy_case("copy_silent", DBKT_PROXY_SILENT, "dbk_repo_create_many COPY (silent)");
}

/* ---- cancellation: bounded in time, threads and sockets ---- */

#define STALLS 20

struct stall {
    dbk_conn *conn;
    dbk_rc rc;
    int64_t ms;
    pthread_t th;
};

static void *stall_main(void *arg)
{
    struct stall *s = arg;
    dbk_error err;
    int64_t t0 = dbkt_mono_ms();
    s->rc = dbk_db_exec(dbk_conn_db(s->conn), "SELECT 1", NULL, 0, NULL, &err);
    s->ms = dbkt_mono_ms() - t0;
    return NULL;
}

/* 20 statements stall behind a silent network at once: each returns at
 * its deadline, and the cancel attempts they start (threads, sockets) are
 * gone within a cancel's own deadline afterwards. */
static void deadline_cancel_stalls_bounded(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "stalls");
    struct stall s[STALLS];
    for (int i = 0; i < STALLS; i++)
        s[i].conn = dbkt_open(e.proxied);
    dbkt_proxy_set_mode(e.px, DBKT_PROXY_SILENT);
    int64_t t0 = dbkt_mono_ms();
    for (int i = 0; i < STALLS; i++)
        assert_int_equal(pthread_create(&s[i].th, NULL, stall_main, &s[i]), 0);
    for (int i = 0; i < STALLS; i++)
        pthread_join(s[i].th, NULL); /* bounded: each call has its deadline */
    int64_t all = dbkt_mono_ms() - t0;
    print_message("%d stalled statements returned within %lld ms (deadline %d ms)\n", STALLS,
                  (long long)all, STMT_DEADLINE_MS);
    for (int i = 0; i < STALLS; i++) {
        if (s[i].rc != DBK_ETIMEOUT)
            fail_msg("stall %d: expected DBK_ETIMEOUT, got %s", i, dbk_rc_name(s[i].rc));
        if (s[i].ms > STMT_DEADLINE_MS + MARGIN_MS)
            fail_msg("stall %d returned after %lld ms", i, (long long)s[i].ms);
    }
    for (int i = 0; i < STALLS; i++)
        dbk_conn_close(s[i].conn);
    /* The proxy stays up and silent: a cancel still waiting on it keeps
     * its thread and socket, so this is where a leak would show. */
    struct baseline with_proxy = {b.threads + 1, b.fds + 3}; /* its thread, listener, pipe */
    expect_settled(with_proxy, CANCEL_SETTLE_MS + MARGIN_MS);
    pg_teardown(&e);
    expect_settled(b, MARGIN_MS);
}

/* With a working network the cancel reaches the server: a statement the
 * server does not time out itself (statement_timeout turned off for the
 * session) is cancelled at the client deadline and leaves no backend busy. */
static void deadline_cancel_reaches_server(void **state)
{
    (void)state;
    struct pgenv e;
    struct baseline b = pg_setup(&e, "cancel_reaches");
    dbk_conn *c = open_proxied(&e);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "SET application_name = 'dbkt_cancel_reaches'; SET statement_timeout = 0");
    dbk_error err;
    int64_t t0 = dbkt_mono_ms();
    DBKT_RC(DBK_ETIMEOUT, dbk_db_exec(db, "SELECT pg_sleep(30)", NULL, 0, NULL, &err));
    int64_t ms = dbkt_mono_ms() - t0;
    print_message("pg_sleep(30) cut after %lld ms: %s\n", (long long)ms, err.message);
    assert_true(ms < STMT_DEADLINE_MS + MARGIN_MS);
    dbk_conn_close(c);
    /* The backend stops sleeping (cancelled; the closed socket alone would
     * not stop pg_sleep until it ends). */
    dbk_conn *admin = dbkt_open(dbkt_pg_admin_url());
    int64_t busy = 1;
    int64_t until = dbkt_mono_ms() + MARGIN_MS;
    while (dbkt_mono_ms() < until) {
        busy = dbkt_int(dbk_conn_db(admin),
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'dbkt_cancel_reaches' AND state = 'active'");
        if (!busy)
            break;
        usleep(20000);
    }
    dbk_conn_close(admin);
    assert_int_equal(busy, 0);
    pg_teardown(&e);
    expect_settled(b, CANCEL_SETTLE_MS + MARGIN_MS);
}

/* ---- the Redis cache (read only: its own timeouts) ---- */

#define REDIS_CMD_MS 50
#define REDIS_CONNECT_MS 100

struct cache_env {
    dbkt_proxy *px;
    dbk_cache *cache;
};

static struct baseline cache_setup(struct cache_env *ce)
{
    const char *u = dbkt_redis_url(); /* redis://127.0.0.1:PORT/db */
    const char *hp = strstr(u, "127.0.0.1:");
    if (!hp)
        fail_msg("the test Redis URL is not 127.0.0.1:port");
    int port = atoi(hp + 10);
    struct baseline b = baseline_now();
    ce->px = dbkt_proxy_start("127.0.0.1", port);
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", dbkt_proxy_port(ce->px));
    dbk_cache_opts o = {0};
    o.url = url;
    o.key_prefix = "dbkt_deadline:";
    o.pool_size = 2;
    o.connect_timeout_ms = REDIS_CONNECT_MS;
    o.command_timeout_ms = REDIS_CMD_MS;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &ce->cache, &err), &err);
    DBKT_OK(dbk_cache_set(ce->cache, "k", 1, "v", 1, 60000, &err), &err);
    return b;
}

static dbk_rc do_cache_get(void *ctx, dbk_error *err)
{
    void *val = NULL;
    size_t len = 0;
    dbk_rc rc = dbk_cache_get(ctx, "k", 1, &val, &len, err);
    dbk_free(val);
    return rc;
}

static dbk_rc do_cache_set(void *ctx, dbk_error *err)
{
    return dbk_cache_set(ctx, "k", 1, "w", 1, 60000, err);
}

/* A connect, AUTH/SELECT and the command: a few command timeouts at most. */
#define REDIS_BOUND_MS (REDIS_CONNECT_MS + 4 * REDIS_CMD_MS)

static void cache_case(dbkt_proxy_mode mode, call_fn fn, const char *what)
{
    struct cache_env ce;
    struct baseline b = cache_setup(&ce);
    dbkt_proxy_set_mode(ce.px, mode);
    expect_within(what, fn, ce.cache, REDIS_BOUND_MS, DBK_ETIMEOUT);
    dbk_cache_close(ce.cache);
    dbkt_proxy_stop(ce.px);
    expect_settled(b, MARGIN_MS);
}

static void deadline_cache_get_silent(void **state)
{
    (void)state;
    cache_case(DBKT_PROXY_SILENT, do_cache_get, "dbk_cache_get (silent)");
}

static void deadline_cache_set_silent(void **state)
{
    (void)state;
    cache_case(DBKT_PROXY_SILENT, do_cache_set, "dbk_cache_set (silent)");
}

static void deadline_cache_get_half_open(void **state)
{
    (void)state;
    cache_case(DBKT_PROXY_HALF_OPEN, do_cache_get, "dbk_cache_get (half-open)");
}

/* A peer that trickles a large reply (8 bytes every 10 ms: each socket read
 * returns well within the 50 ms command timeout, the 16 KiB reply would take
 * 20 s) is cut at the call's deadline, on a pooled connection and on a call
 * that has to connect first (the epoch write, then the GET). */
#define TRICKLE_VALUE 16384

static dbk_rc do_cache_get_big(void *ctx, dbk_error *err)
{
    void *val = NULL;
    size_t len = 0;
    dbk_rc rc = dbk_cache_get(ctx, "big", 3, &val, &len, err);
    dbk_free(val);
    return rc;
}

static void cache_trickle_case(bool fresh, const char *what)
{
    struct cache_env ce;
    struct baseline b = cache_setup(&ce);
    char *big = malloc(TRICKLE_VALUE);
    assert_non_null(big);
    memset(big, 'x', TRICKLE_VALUE);
    dbk_error err;
    DBKT_OK(dbk_cache_set(ce.cache, "big", 3, big, TRICKLE_VALUE, 60000, &err), &err);
    free(big);
    dbk_cache *c = ce.cache, *second = NULL;
    if (fresh) {
        char url[128];
        snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", dbkt_proxy_port(ce.px));
        dbk_cache_opts o = {0};
        o.url = url;
        o.key_prefix = "dbkt_deadline:";
        o.pool_size = 1;
        o.connect_timeout_ms = REDIS_CONNECT_MS;
        o.command_timeout_ms = REDIS_CMD_MS;
        DBKT_OK(dbk_cache_open(&o, &second, &err), &err);
        c = second;
    }
    dbkt_proxy_set_delay(ce.px, 10);
    dbkt_proxy_set_trickle(ce.px, 8);
    expect_within(what, do_cache_get_big, c, REDIS_CONNECT_MS + REDIS_CMD_MS, DBK_ETIMEOUT);
    dbk_cache_close(second);
    dbk_cache_close(ce.cache);
    dbkt_proxy_stop(ce.px);
    expect_settled(b, MARGIN_MS);
}

static void deadline_cache_get_trickle(void **state)
{
    (void)state;
    cache_trickle_case(false, "dbk_cache_get (trickled reply)");
}

static void deadline_cache_get_connect_trickle(void **state)
{
    (void)state;
    cache_trickle_case(true, "dbk_cache_get (connect, then a trickled reply)");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(deadline_conn_open_silent),
        cmocka_unit_test(deadline_conn_open_reset),
        cmocka_unit_test(deadline_conn_query_silent),
        cmocka_unit_test(deadline_conn_query_half_open),
        cmocka_unit_test(deadline_conn_query_reset),
        cmocka_unit_test(deadline_conn_exec_reset),
        cmocka_unit_test(deadline_conn_exec_script_silent),
        cmocka_unit_test(deadline_conn_ping_silent),
        cmocka_unit_test(deadline_conn_close_silent),
        cmocka_unit_test(deadline_tx_begin_silent),
        cmocka_unit_test(deadline_tx_statement_silent),
        cmocka_unit_test(deadline_tx_commit_half_open),
        cmocka_unit_test(deadline_pool_tx_begin_silent),
        cmocka_unit_test(deadline_pool_query_silent),
        cmocka_unit_test(deadline_pool_exec_half_open),
        cmocka_unit_test(deadline_pool_acquire_silent),
        cmocka_unit_test(deadline_pool_validate_silent),
        cmocka_unit_test(deadline_pool_release_reset_silent),
        cmocka_unit_test(deadline_batch_run_silent),
        cmocka_unit_test(deadline_batch_run_reset),
        cmocka_unit_test(deadline_repo_create_many_copy_silent),
        cmocka_unit_test(deadline_repo_create_many_copy_reset),
        cmocka_unit_test(deadline_cancel_stalls_bounded),
        cmocka_unit_test(deadline_cancel_reaches_server),
        cmocka_unit_test(deadline_cache_get_silent),
        cmocka_unit_test(deadline_cache_set_silent),
        cmocka_unit_test(deadline_cache_get_half_open),
        cmocka_unit_test(deadline_cache_get_trickle),
        cmocka_unit_test(deadline_cache_get_connect_trickle),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
