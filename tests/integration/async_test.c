/*
 * The asynchronous API on both engines, through pools on a real SQLite file
 * and a real PostgreSQL: results and errors equal the blocking calls'
 * (unique violation, schema error, statement timeout), parameters copied at
 * submit, a full queue refused, queued operations cancelled and timed out
 * while every worker is busy, close with work in flight, callbacks only on
 * the processing thread, 10,000 submits from one loop under a small bound,
 * the observer seeing each statement, batches, task functions and the
 * cache; and the libuv example (examples/uvhttp) serving a user over
 * HTTP/1.1 keep-alive.
 *
 * Workers are held busy with a gate: a dbk_async_call whose function waits
 * (bounded) until the test opens it, so "queued" and "running" are states
 * the test sets up, not timing guesses.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dbkit/async.h"
#include "testutil.h"

static pthread_t loop_thread;

static dbk_pool *open_pool(const char *url, int max)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool_opts o = {.max_size = max, .acquire_timeout_ms = 20000};
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, &o, &pool, &err), &err);
    dbk_config_free(cfg);
    return pool;
}

static dbk_async *open_async(dbk_db *db, int workers, size_t max_pending)
{
    dbk_error err;
    dbk_async_opts o = {.workers = workers, .max_pending = max_pending};
    dbk_async *a = NULL;
    DBKT_OK(dbk_async_open(db, &o, &a, &err), &err);
    assert_true(dbk_async_fd(a) >= 0);
    loop_thread = pthread_self();
    return a;
}

/* What one callback saw. */
typedef struct rec {
    int calls;
    bool off_loop; /* a callback ran on another thread than the loop's */
    dbk_async_op op;
    dbk_rc rc;
    dbk_error err;
    dbk_result *res;
    int64_t affected;
    dbk_batch *batch;
    void *value;
    size_t vlen;
} rec;

static void on_done(void *ctx, dbk_async_done *d)
{
    rec *r = ctx;
    r->calls++;
    if (!pthread_equal(pthread_self(), loop_thread))
        r->off_loop = true;
    r->op = d->op;
    r->rc = d->rc;
    memset(&r->err, 0, sizeof r->err);
    if (d->error)
        r->err = *d->error;
    assert_true((d->rc == DBK_OK) == (d->error == NULL));
    r->res = d->result;
    d->result = NULL; /* taken */
    r->affected = d->affected;
    r->batch = d->batch;
    r->value = d->value;
    d->value = NULL;
    r->vlen = d->value_len;
}

static void rec_free(rec *r)
{
    dbk_result_free(r->res);
    dbk_free(r->value);
    memset(r, 0, sizeof *r);
}

/* Runs the loop (poll on the descriptor, then process) until at most
 * `target` operations are in flight; fails past 30 s. */
static void loop_until(dbk_async *a, size_t target)
{
    int64_t until = dbkt_mono_ms() + 30000;
    while (dbk_async_pending(a) > target) {
        if (dbkt_mono_ms() > until)
            fail_msg("%zu operations still in flight after 30 s", dbk_async_pending(a));
        struct pollfd p = {dbk_async_fd(a), POLLIN, 0};
        poll(&p, 1, 100);
        dbk_async_process(a, 0);
    }
}

/* ---- the gate: holds a worker until the test opens it ---- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, open;
    rec r; /* the gate's own completion */
} gate;

static void gate_init(gate *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
}

static dbk_rc gate_fn(dbk_db *db, void *ctx, dbk_error *err)
{
    (void)db;
    (void)err;
    gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20; /* bounded: a broken test does not hang */
    while (!g->open)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) != 0)
            break;
    pthread_mutex_unlock(&g->mu);
    return DBK_OK;
}

static void gate_done(void *ctx, dbk_async_done *d)
{
    on_done(&((gate *)ctx)->r, d);
}

/* Submits a gate and waits (bounded) until a worker holds it. */
static dbk_async_op gate_hold(dbk_async *a, gate *g)
{
    dbk_error err;
    dbk_async_op op = 0;
    DBKT_OK(dbk_async_call(a, gate_fn, 0, gate_done, g, &op, &err), &err);
    pthread_mutex_lock(&g->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    while (!g->entered)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) != 0)
            break;
    bool in = g->entered;
    pthread_mutex_unlock(&g->mu);
    assert_true(in);
    return op;
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(gate *g)
{
    rec_free(&g->r);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

static const char *text_at(const dbk_result *r, size_t row, int col)
{
    dbk_error err;
    const char *t = NULL;
    assert_non_null(r);
    DBKT_OK(dbk_result_get_text(r, row, col, &t, NULL, &err), &err);
    return t;
}

static const char *users_ddl(dbk_engine e)
{
    return e == DBK_ENGINE_POSTGRES
               ? "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL UNIQUE, "
                 "photo bytea)"
               : "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                 "photo BLOB)";
}

/* ---- results and errors equal the blocking API's ---- */

static void same_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 4);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 0, 0);
    dbk_error err;
    rec r = {0};

    dbk_value p[3] = {dbk_int64(1), dbk_text("ada"), dbk_blob("\0\1\2", 3)};
    DBKT_OK(dbk_async_exec(a, "INSERT INTO people (id, name, photo) VALUES ($1, $2, $3)", p, 3, 0,
                           on_done, &r, NULL, &err),
            &err);
    loop_until(a, 0);
    assert_int_equal(r.calls, 1);
    DBKT_OK(r.rc, &r.err);
    assert_int_equal(r.affected, 1);
    rec_free(&r);

    /* The same row through both APIs. */
    dbk_value id = dbk_int64(1);
    dbk_async_op op = 0;
    DBKT_OK(dbk_async_query(a, "SELECT id, name, photo FROM people WHERE id = $1", &id, 1, 0,
                            on_done, &r, &op, &err),
            &err);
    assert_true(op != 0);
    loop_until(a, 0);
    DBKT_OK(r.rc, &r.err);
    assert_int_equal(r.op, op);
    assert_int_equal(r.affected, 1);
    dbk_result *blocking = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT id, name, photo FROM people WHERE id = $1", &id, 1, &blocking,
                         &err),
            &err);
    assert_int_equal(dbk_result_nrows(r.res), dbk_result_nrows(blocking));
    assert_string_equal(text_at(r.res, 0, 1), text_at(blocking, 0, 1));
    const void *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    DBKT_OK(dbk_result_get_blob(r.res, 0, 2, &b1, &l1, &err), &err);
    DBKT_OK(dbk_result_get_blob(blocking, 0, 2, &b2, &l2, &err), &err);
    assert_int_equal(l1, 3);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, 3);
    dbk_result_free(blocking);
    rec_free(&r);

    /* A unique violation: the same code, SQLSTATE, constraint and message. */
    dbk_value dup[2] = {dbk_int64(2), dbk_text("ada")};
    const char *ins = "INSERT INTO people (id, name) VALUES ($1, $2)";
    DBKT_OK(dbk_async_exec(a, ins, dup, 2, 0, on_done, &r, NULL, &err), &err);
    loop_until(a, 0);
    dbk_error berr;
    dbk_rc brc = dbk_db_exec(db, ins, dup, 2, NULL, &berr);
    DBKT_RC(DBK_EUNIQUE, r.rc);
    DBKT_RC(brc, r.rc);
    assert_int_equal(r.affected, -1);
    assert_string_equal(r.err.sqlstate, berr.sqlstate);
    assert_string_equal(r.err.message, berr.message);
    assert_string_equal(r.err.hint, berr.hint);
    assert_string_equal(r.err.constraint_name, berr.constraint_name);
    rec_free(&r);

    /* A schema error. */
    DBKT_OK(dbk_async_query(a, "SELECT nope FROM people", NULL, 0, 0, on_done, &r, NULL, &err),
            &err);
    loop_until(a, 0);
    brc = dbk_db_query(db, "SELECT nope FROM people", NULL, 0, &blocking, &berr);
    DBKT_RC(DBK_ESCHEMA, r.rc);
    DBKT_RC(brc, r.rc);
    assert_string_equal(r.err.message, berr.message);
    assert_null(r.res);
    assert_false(r.off_loop);
    rec_free(&r);

    dbk_async_close(a);
    dbk_pool_close(pool, 1000);
}

static void async_results_and_errors_equal_blocking(void **state)
{
    (void)state;
    dbkt_each_engine("async_same", same_on);
}

/* ---- parameters are copied at submit ---- */

static void copied_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 1, 0);
    dbk_error err;
    gate g;
    gate_init(&g);
    gate_hold(a, &g); /* the insert stays queued while the buffers change */
    rec r = {0};
    {
        char *name = strdup("grace hopper");
        unsigned char *photo = malloc(1000);
        assert_non_null(name);
        assert_non_null(photo);
        for (int i = 0; i < 1000; i++)
            photo[i] = (unsigned char)i;
        dbk_value p[3] = {dbk_int64(7), dbk_text(name), dbk_blob(photo, 1000)};
        DBKT_OK(dbk_async_exec(a, "INSERT INTO people (id, name, photo) VALUES ($1, $2, $3)", p, 3,
                               0, on_done, &r, NULL, &err),
                &err);
        memset(name, 'X', strlen(name));
        memset(photo, 0xEE, 1000);
        free(name);
        free(photo);
    }
    gate_open(&g);
    loop_until(a, 0);
    DBKT_OK(r.rc, &r.err);
    rec_free(&r);
    dbk_result *res = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT name, photo FROM people WHERE id = 7", NULL, 0, &res, &err),
            &err);
    assert_string_equal(text_at(res, 0, 0), "grace hopper");
    const void *b = NULL;
    size_t len = 0;
    DBKT_OK(dbk_result_get_blob(res, 0, 1, &b, &len, &err), &err);
    assert_int_equal(len, 1000);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(((const unsigned char *)b)[i], (unsigned char)i);
    dbk_result_free(res);
    dbk_async_close(a);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);
}

static void async_params_copied_at_submit(void **state)
{
    (void)state;
    dbkt_each_engine("async_copied", copied_on);
}

/* ---- a full queue is refused at once ---- */

static void async_full_queue_refused(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("async_full");
    dbk_pool *pool = open_pool(url, 1);
    dbk_async *a = open_async(dbk_pool_db(pool), 1, 4);
    dbk_error err;
    gate g;
    gate_init(&g);
    gate_hold(a, &g); /* 1 of 4 in flight */
    rec r[4] = {{0}};
    for (int i = 0; i < 3; i++)
        DBKT_OK(dbk_async_query(a, "SELECT 1", NULL, 0, 0, on_done, &r[i], NULL, &err), &err);
    assert_int_equal(dbk_async_pending(a), 4);
    dbk_async_op op = 99;
    DBKT_RC(DBK_EBUSY, dbk_async_query(a, "SELECT 1", NULL, 0, 0, on_done, &r[3], &op, &err));
    assert_int_equal(err.code, DBK_EBUSY);
    assert_non_null(strstr(err.message, "max_pending 4"));
    assert_true(err.hint[0] != '\0');
    assert_int_equal(op, 0);
    gate_open(&g);
    loop_until(a, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        DBKT_OK(r[i].rc, &r[i].err);
        rec_free(&r[i]);
    }
    assert_int_equal(r[3].calls, 0); /* a refused submit never calls back */
    /* Room again. */
    DBKT_OK(dbk_async_query(a, "SELECT 1", NULL, 0, 0, on_done, &r[3], NULL, &err), &err);
    loop_until(a, 0);
    DBKT_OK(r[3].rc, &r[3].err);
    rec_free(&r[3]);
    dbk_async_close(a);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* ---- cancel ---- */

static void cancel_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 1);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 1, 0);
    dbk_error err;
    gate g;
    gate_init(&g);
    dbk_async_op gop = gate_hold(a, &g);
    rec r[3] = {{0}};
    dbk_async_op ops[3];
    const char *names[3] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        dbk_value p[2] = {dbk_int64(i + 1), dbk_text(names[i])};
        DBKT_OK(dbk_async_exec(a, "INSERT INTO people (id, name) VALUES ($1, $2)", p, 2, 0, on_done,
                               &r[i], &ops[i], &err),
                &err);
    }
    DBKT_OK(dbk_async_cancel(a, ops[1], &err), &err);
    DBKT_RC(DBK_ENOT_FOUND, dbk_async_cancel(a, ops[1], &err)); /* already cancelled */
    DBKT_RC(DBK_EBUSY, dbk_async_cancel(a, gop, &err));         /* running */
    DBKT_RC(DBK_ENOT_FOUND, dbk_async_cancel(a, 123456, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_cancel(NULL, ops[0], &err));
    /* The cancelled one completes at once, while the worker is still held. */
    loop_until(a, 3);
    assert_int_equal(r[1].calls, 1);
    DBKT_RC(DBK_ECANCELLED, r[1].rc);
    assert_int_equal(r[0].calls + r[2].calls, 0);
    gate_open(&g);
    loop_until(a, 0);
    DBKT_OK(r[0].rc, &r[0].err);
    DBKT_OK(r[2].rc, &r[2].err);
    DBKT_OK(g.r.rc, &g.r.err);
    /* The cancelled insert never ran. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM people"), 2);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM people WHERE name = 'two'"), 0);
    for (int i = 0; i < 3; i++)
        rec_free(&r[i]);
    dbk_async_close(a);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);
}

static void async_cancel_queued(void **state)
{
    (void)state;
    dbkt_each_engine("async_cancel", cancel_on);
}

/* ---- deadlines ---- */

static void deadline_on(const char *url, dbk_engine engine)
{
    /* The queue deadline: a query waiting behind a held worker fails with
     * DBK_ETIMEOUT without running, before the worker is released. */
    dbk_pool *pool = open_pool(url, 1);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 1, 0);
    dbk_error err;
    gate g;
    gate_init(&g);
    gate_hold(a, &g);
    rec r = {0}, r2 = {0};
    dbk_value p[2] = {dbk_int64(1), dbk_text("late")};
    DBKT_OK(dbk_async_exec(a, "INSERT INTO people (id, name) VALUES ($1, $2)", p, 2, 50, on_done,
                           &r, NULL, &err),
            &err);
    DBKT_OK(dbk_async_query(a, "SELECT 1", NULL, 0, 0, on_done, &r2, NULL, &err), &err);
    loop_until(a, 2); /* the gate and the query without a deadline remain */
    assert_int_equal(r.calls, 1);
    DBKT_RC(DBK_ETIMEOUT, r.rc);
    assert_non_null(strstr(r.err.message, "50 ms"));
    assert_int_equal(r2.calls, 0);
    gate_open(&g);
    loop_until(a, 0);
    DBKT_OK(r2.rc, &r2.err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM people"), 0);
    rec_free(&r);
    rec_free(&r2);
    dbk_async_close(a);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);

    /* A running statement keeps the executor's deadline: the same
     * DBK_ETIMEOUT as the blocking call. */
    char u2[1024];
    snprintf(u2, sizeof u2, "%s%cstatement_timeout=200", url, strchr(url, '?') ? '&' : '?');
    pool = open_pool(u2, 2);
    db = dbk_pool_db(pool);
    a = open_async(db, 0, 0);
    const char *slow = engine == DBK_ENGINE_POSTGRES
                           ? "SELECT pg_sleep(20)"
                           : "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                             "WHERE x < 2000000000) SELECT count(*) FROM c";
    DBKT_OK(dbk_async_query(a, slow, NULL, 0, 0, on_done, &r, NULL, &err), &err);
    loop_until(a, 0);
    dbk_result *res = NULL;
    dbk_error berr;
    dbk_rc brc = dbk_db_query(db, slow, NULL, 0, &res, &berr);
    DBKT_RC(DBK_ETIMEOUT, brc);
    DBKT_RC(brc, r.rc);
    assert_string_equal(r.err.sqlstate, berr.sqlstate);
    rec_free(&r);
    dbk_async_close(a);
    dbk_pool_close(pool, 1000);
}

static void async_deadline(void **state)
{
    (void)state;
    dbkt_each_engine("async_deadline", deadline_on);
}

/* ---- close with work in flight ---- */

typedef struct closer {
    dbk_async *a;
    rec r;
    dbk_rc resubmit; /* what a submit from inside a callback during close got */
} closer;

static void on_done_resubmit(void *ctx, dbk_async_done *d)
{
    closer *c = ctx;
    on_done(&c->r, d);
    dbk_error err;
    rec unused = {0};
    c->resubmit = dbk_async_query(c->a, "SELECT 1", NULL, 0, 0, on_done, &unused, NULL, &err);
}

static void *open_gate_later(void *arg)
{
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    gate_open(arg);
    return NULL;
}

static void close_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 1);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 1, 0);
    dbk_error err;
    gate g;
    gate_init(&g);
    gate_hold(a, &g);
    closer c[5];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 5; i++) {
        c[i].a = a;
        c[i].resubmit = DBK_OK;
        char name[16];
        snprintf(name, sizeof name, "queued-%d", i);
        dbk_value q[2] = {dbk_int64(i + 1), dbk_text(name)};
        DBKT_OK(dbk_async_exec(a, "INSERT INTO people (id, name) VALUES ($1, $2)", q, 2, 0,
                               on_done_resubmit, &c[i], NULL, &err),
                &err);
    }
    /* The worker is held while close runs; a thread opens the gate so the
     * running operation can finish (close waits for it). */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, open_gate_later, &g), 0);
    dbk_async_close(a); /* delivers every callback itself, on this thread */
    pthread_join(t, NULL);
    assert_int_equal(g.r.calls, 1);
    DBKT_OK(g.r.rc, &g.r.err);
    assert_false(g.r.off_loop);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(c[i].r.calls, 1);
        DBKT_RC(DBK_ECANCELLED, c[i].r.rc);
        assert_non_null(strstr(c[i].r.err.message, "closed"));
        DBKT_RC(DBK_EMISUSE, c[i].resubmit);
        assert_false(c[i].r.off_loop);
        rec_free(&c[i].r);
    }
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM people"), 0);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);
}

static void async_close_with_work_in_flight(void **state)
{
    (void)state;
    dbkt_each_engine("async_close", close_on);
}

/* ---- many submits from one loop, callbacks on the loop thread, observer ---- */

typedef struct counter {
    pthread_mutex_t mu;
    size_t events, off_loop_events, ok;
    size_t batch_events;
} counter;

static void observe(void *ctx, const dbk_query_event *ev)
{
    counter *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->events++;
    if (!pthread_equal(pthread_self(), loop_thread))
        c->off_loop_events++;
    if (ev->batch_size)
        c->batch_events++;
    if (ev->rc == DBK_OK)
        c->ok++;
    pthread_mutex_unlock(&c->mu);
}

typedef struct many {
    size_t done, wrong, off_loop;
} many;

typedef struct many_slot {
    many *m;
    int64_t want;
} many_slot;

static void on_many(void *ctx, dbk_async_done *d)
{
    many_slot *s = ctx;
    s->m->done++;
    if (!pthread_equal(pthread_self(), loop_thread))
        s->m->off_loop++;
    int64_t v = -1;
    dbk_error err;
    if (d->rc != DBK_OK || dbk_result_get_int64(d->result, 0, 0, &v, &err) != DBK_OK ||
        v != s->want)
        s->m->wrong++;
}

static void many_on(const char *url, dbk_engine engine)
{
    (void)engine;
    enum { N = 10000 };
    dbk_pool *pool = open_pool(url, 4);
    dbk_db *db = dbk_pool_db(pool);
    counter cnt;
    memset(&cnt, 0, sizeof cnt);
    pthread_mutex_init(&cnt.mu, NULL);
    dbk_db_set_observer(db, observe, &cnt);
    dbk_async *a = open_async(db, 0, 256);
    many m = {0};
    many_slot *slots = calloc(N, sizeof *slots);
    assert_non_null(slots);
    size_t submitted = 0, refused = 0;
    int64_t until = dbkt_mono_ms() + 120000;
    dbk_error err;
    while (m.done < N) {
        if (dbkt_mono_ms() > until)
            fail_msg("%zu of %d done after 120 s", m.done, N);
        /* Submit until the bound says no, then let the loop run. */
        while (submitted < N) {
            slots[submitted].m = &m;
            slots[submitted].want = (int64_t)submitted * 3 + 1;
            dbk_value p = dbk_int64((int64_t)submitted * 3);
            dbk_rc rc = dbk_async_query(a, "SELECT $1 + 1", &p, 1, 0, on_many, &slots[submitted],
                                        NULL, &err);
            if (rc == DBK_EBUSY) {
                refused++;
                break;
            }
            DBKT_OK(rc, &err);
            submitted++;
        }
        assert_true(dbk_async_pending(a) <= 256);
        struct pollfd pf = {dbk_async_fd(a), POLLIN, 0};
        poll(&pf, 1, 100);
        dbk_async_process(a, 0);
    }
    assert_int_equal(m.done, N);
    assert_int_equal(m.wrong, 0);
    assert_int_equal(m.off_loop, 0);
    assert_true(refused > 0); /* the bound was reached, and held */

    /* The observer saw each statement, on the workers. A batch of two and
     * an exec add three more. */
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    DBKT_OK(dbk_batch_add(b, "SELECT 1", NULL, 0, &err), &err);
    DBKT_OK(dbk_batch_add(b, "SELECT 2", NULL, 0, &err), &err);
    rec rb = {0}, re = {0};
    DBKT_OK(dbk_async_batch(a, b, DBK_BATCH_INDEPENDENT, 0, on_done, &rb, NULL, &err), &err);
    DBKT_OK(dbk_async_exec(a, "SELECT 3", NULL, 0, 0, on_done, &re, NULL, &err), &err);
    loop_until(a, 0);
    DBKT_OK(rb.rc, &rb.err);
    assert_ptr_equal(rb.batch, b);
    DBKT_OK(re.rc, &re.err);
    pthread_mutex_lock(&cnt.mu);
    assert_int_equal(cnt.events, N + 3);
    assert_int_equal(cnt.ok, N + 3);
    assert_int_equal(cnt.batch_events, 2);
    assert_int_equal(cnt.off_loop_events, N + 3);
    pthread_mutex_unlock(&cnt.mu);
    rec_free(&rb);
    rec_free(&re);
    dbk_batch_free(b);
    dbk_async_close(a);
    dbk_db_set_observer(db, NULL, NULL);
    dbk_pool_close(pool, 1000);
    pthread_mutex_destroy(&cnt.mu);
    free(slots);
}

static void async_many_submits_bounded_and_observed(void **state)
{
    (void)state;
    dbkt_each_engine("async_many", many_on);
}

/* ---- batches and task functions ---- */

typedef struct task_ctx {
    rec r;
    int64_t count;  /* output of the task */
    bool on_worker; /* the task ran off the loop thread */
} task_ctx;

static dbk_rc count_task(dbk_db *db, void *ctx, dbk_error *err)
{
    task_ctx *t = ctx;
    t->on_worker = !pthread_equal(pthread_self(), loop_thread);
    return dbk_db_query_int64(db, "SELECT count(*) FROM people", NULL, 0, &t->count, err);
}

static dbk_rc failing_task(dbk_db *db, void *ctx, dbk_error *err)
{
    (void)ctx;
    dbk_value p[2] = {dbk_int64(100), dbk_text("ada")};
    return dbk_db_exec(db, "INSERT INTO people (id, name) VALUES ($1, $2)", p, 2, NULL, err);
}

static void task_done(void *ctx, dbk_async_done *d)
{
    on_done(&((task_ctx *)ctx)->r, d);
}

static void batch_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, users_ddl(engine));
    dbk_async *a = open_async(db, 0, 0);
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    dbk_value p1[2] = {dbk_int64(1), dbk_text("ada")};
    dbk_value p2[2] = {dbk_int64(2), dbk_text("ada")};
    dbk_value p3[2] = {dbk_int64(3), dbk_text("alan")};
    const char *ins = "INSERT INTO people (id, name) VALUES ($1, $2)";
    DBKT_OK(dbk_batch_add(b, ins, p1, 2, &err), &err);
    DBKT_OK(dbk_batch_add(b, ins, p2, 2, &err), &err);
    DBKT_OK(dbk_batch_add(b, ins, p3, 2, &err), &err);
    rec r = {0};
    DBKT_OK(dbk_async_batch(a, b, DBK_BATCH_INDEPENDENT, 0, on_done, &r, NULL, &err), &err);
    loop_until(a, 0);
    DBKT_RC(DBK_EUNIQUE, r.rc);
    assert_ptr_equal(r.batch, b);
    DBKT_OK(dbk_batch_rc(b, 0), &err);
    DBKT_RC(DBK_EUNIQUE, dbk_batch_rc(b, 1));
    DBKT_OK(dbk_batch_rc(b, 2), &err);
    rec_free(&r);
    dbk_batch_free(b);

    task_ctx t = {0};
    DBKT_OK(dbk_async_call(a, count_task, 0, task_done, &t, NULL, &err), &err);
    loop_until(a, 0);
    DBKT_OK(t.r.rc, &t.r.err);
    assert_int_equal(t.count, 2);
    assert_true(t.on_worker);
    assert_false(t.r.off_loop);
    task_ctx f = {0};
    DBKT_OK(dbk_async_call(a, failing_task, 0, task_done, &f, NULL, &err), &err);
    loop_until(a, 0);
    DBKT_RC(DBK_EUNIQUE, f.r.rc);
    assert_true(f.r.err.message[0] != '\0');
    dbk_async_close(a);
    dbk_pool_close(pool, 1000);
}

static void async_batch_and_task(void **state)
{
    (void)state;
    dbkt_each_engine("async_batch", batch_on);
}

/* ---- the cache ---- */

typedef struct loader {
    int runs;
    bool on_worker;
} loader;

static dbk_rc load_value(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                         dbk_error *err)
{
    (void)err;
    loader *l = ctx;
    l->runs++;
    l->on_worker = !pthread_equal(pthread_self(), loop_thread);
    if (keylen == 4 && memcmp(key, "gone", 4) == 0)
        return DBK_ENOT_FOUND;
    *val = malloc(6);
    if (!*val)
        return DBK_ENOMEM;
    memcpy(*val, "loaded", 6);
    *vallen = 6;
    return DBK_OK;
}

static void async_cache_get_and_load(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("async_cache");
    dbk_pool *pool = open_pool(url, 2);
    dbk_async *a = open_async(dbk_pool_db(pool), 0, 0);
    dbk_error err;
    dbk_cache_opts co = {.url = "memory:"};
    dbk_cache *cache = NULL;
    DBKT_OK(dbk_cache_open(&co, &cache, &err), &err);
    DBKT_OK(dbk_cache_set(cache, "k", 1, "value", 5, 60000, &err), &err);
    char key[8];
    strcpy(key, "k");
    rec r = {0};
    DBKT_OK(dbk_async_cache_get(a, cache, key, 1, 0, on_done, &r, NULL, &err), &err);
    key[0] = 'z'; /* the key was copied */
    loop_until(a, 0);
    DBKT_OK(r.rc, &r.err);
    assert_int_equal(r.vlen, 5);
    assert_memory_equal(r.value, "value", 5);
    rec_free(&r);
    DBKT_OK(dbk_async_cache_get(a, cache, "missing", 7, 0, on_done, &r, NULL, &err), &err);
    loop_until(a, 0);
    DBKT_RC(DBK_ENOT_FOUND, r.rc);
    assert_null(r.value);
    rec_free(&r);

    loader l = {0};
    for (int i = 0; i < 2; i++) { /* the second is a hit: one load */
        DBKT_OK(dbk_async_cache_get_or_load(a, cache, "lk", 2, load_value, &l, 60000, 0, on_done,
                                            &r, NULL, &err),
                &err);
        loop_until(a, 0);
        DBKT_OK(r.rc, &r.err);
        assert_int_equal(r.vlen, 6);
        assert_memory_equal(r.value, "loaded", 6);
        rec_free(&r);
    }
    assert_int_equal(l.runs, 1);
    assert_true(l.on_worker);
    DBKT_OK(dbk_async_cache_get_or_load(a, cache, "gone", 4, load_value, &l, 60000, 0, on_done, &r,
                                        NULL, &err),
            &err);
    loop_until(a, 0);
    DBKT_RC(DBK_ENOT_FOUND, r.rc);
    rec_free(&r);
    DBKT_RC(DBK_EMISUSE, dbk_async_cache_get(a, cache, "", 0, 0, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_cache_get_or_load(a, cache, "x", 1, NULL, NULL, 1000, 0, on_done,
                                                     &r, NULL, &err));
    dbk_async_close(a);
    dbk_cache_close(cache);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* ---- misuse ---- */

static void async_misuse_reported(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("async_misuse");
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    dbk_error err;
    dbk_async *a = NULL;
    DBKT_RC(DBK_EMISUSE, dbk_async_open(NULL, NULL, &a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_open(db, NULL, NULL, &err));
    dbk_async_opts bad = {.workers = -1};
    DBKT_RC(DBK_EMISUSE, dbk_async_open(db, &bad, &a, &err));
    bad.workers = 0;
    bad.max_pending = (size_t)DBK_ASYNC_MAX_PENDING + 1;
    DBKT_RC(DBK_EMISUSE, dbk_async_open(db, &bad, &a, &err));
    assert_null(a);
    a = open_async(db, 0, 0);
    rec r = {0};
    DBKT_RC(DBK_EMISUSE, dbk_async_query(a, NULL, NULL, 0, 0, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_query(a, "SELECT 1", NULL, 0, 0, NULL, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_query(a, "SELECT $1", NULL, 1, 0, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_query(a, "SELECT 1", NULL, 0, -5, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_query(NULL, "SELECT 1", NULL, 0, 0, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE,
            dbk_async_batch(a, NULL, DBK_BATCH_INDEPENDENT, 0, on_done, &r, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_async_call(a, NULL, 0, on_done, &r, NULL, &err));
    /* A value no engine takes is refused from its length, before a copy. */
    size_t huge = (size_t)1 << 31;
    void *unreadable = dbkt_unreadable(huge);
    dbk_value v = dbk_blob(unreadable, huge);
    DBKT_RC(DBK_EINVALID, dbk_async_query(a, "SELECT $1", &v, 1, 0, on_done, &r, NULL, &err));
    assert_non_null(strstr(err.message, "$1"));
    dbkt_unreadable_free(unreadable, huge);
    assert_int_equal(r.calls, 0);
    assert_int_equal(dbk_async_pending(a), 0);
    assert_int_equal(dbk_async_process(a, 0), 0); /* nothing ready: returns at once */
    assert_int_equal(dbk_async_fd(NULL), -1);
    assert_int_equal(dbk_async_process(NULL, 0), 0);
    dbk_async_close(a);
    dbk_async_close(NULL);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* ---- process(max) leaves the rest for the next call ---- */

static void async_process_max_keeps_fd_readable(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("async_max");
    dbk_pool *pool = open_pool(url, 1);
    dbk_async *a = open_async(dbk_pool_db(pool), 1, 0);
    dbk_error err;
    gate g;
    gate_init(&g);
    gate_hold(a, &g);
    rec r[5] = {{0}};
    for (int i = 0; i < 5; i++)
        DBKT_OK(dbk_async_query(a, "SELECT 1", NULL, 0, 0, on_done, &r[i], NULL, &err), &err);
    gate_open(&g);
    /* At most two callbacks per call; the descriptor is readable whenever
     * completions wait (a wake-up with nothing left may happen: 0 runs). */
    size_t total = 0;
    for (int i = 0; i < 40 && total < 6; i++) {
        struct pollfd p = {dbk_async_fd(a), POLLIN, 0};
        assert_int_equal(poll(&p, 1, 5000), 1);
        size_t n = dbk_async_process(a, 2);
        assert_true(n <= 2);
        total += n;
    }
    assert_int_equal(total, 6);
    assert_int_equal(dbk_async_pending(a), 0);
    for (int i = 0; i < 5; i++) {
        DBKT_OK(r[i].rc, &r[i].err);
        rec_free(&r[i]);
    }
    dbk_async_close(a);
    gate_destroy(&g);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* ---- submits from other threads ---- */

typedef struct submitter {
    dbk_async *a;
    many *m;
    many_slot slots[500];
} submitter;

static void *submit_main(void *arg)
{
    submitter *s = arg;
    dbk_error err;
    for (int i = 0; i < 500; i++) {
        s->slots[i].m = s->m;
        s->slots[i].want = i + 1;
        dbk_value p = dbk_int64(i);
        /* The loop thread frees slots; a full queue is retried (bounded). */
        for (int tries = 0;; tries++) {
            dbk_rc rc =
                dbk_async_query(s->a, "SELECT $1 + 1", &p, 1, 0, on_many, &s->slots[i], NULL, &err);
            if (rc == DBK_OK)
                break;
            if (rc != DBK_EBUSY || tries > 100000)
                return (void *)1;
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void async_submits_from_other_threads(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("async_threads");
    dbk_pool *pool = open_pool(url, 4);
    dbk_async *a = open_async(dbk_pool_db(pool), 0, 64);
    many m = {0};
    submitter s[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].a = a;
        s[i].m = &m;
        assert_int_equal(pthread_create(&t[i], NULL, submit_main, &s[i]), 0);
    }
    /* The loop: callbacks (and `m`) only on this thread. */
    int64_t until = dbkt_mono_ms() + 60000;
    while (m.done < 2000) {
        if (dbkt_mono_ms() > until)
            fail_msg("%zu of 2000 done after 60 s", m.done);
        struct pollfd p = {dbk_async_fd(a), POLLIN, 0};
        poll(&p, 1, 100);
        dbk_async_process(a, 0);
    }
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        assert_null(r);
    }
    assert_int_equal(m.wrong, 0);
    assert_int_equal(m.off_loop, 0);
    dbk_async_close(a);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* ---- the libuv example ---- */

#ifdef DBKIT_UVHTTP_PATH
/* Answers read from the one test connection; bytes past an answer (the
 * next pipelined one) stay for the next call. */
static char http_buf[16384];
static size_t http_len;

static int http_read(int fd, const char *what, char *body, size_t bodylen)
{
    int64_t until = dbkt_mono_ms() + 10000;
    for (;;) {
        http_buf[http_len] = '\0';
        char *end = strstr(http_buf, "\r\n\r\n");
        if (end) {
            char *cl = strstr(http_buf, "Content-Length: ");
            assert_non_null(cl);
            assert_true(cl < end);
            size_t want = (size_t)atol(cl + 16);
            size_t headlen = (size_t)(end + 4 - http_buf);
            if (http_len - headlen >= want) {
                assert_memory_equal(http_buf, "HTTP/1.1 ", 9);
                int status = atoi(http_buf + 9);
                snprintf(body, bodylen, "%.*s", (int)want, end + 4);
                memmove(http_buf, http_buf + headlen + want, http_len - headlen - want);
                http_len -= headlen + want;
                return status;
            }
        }
        if (dbkt_mono_ms() > until || http_len + 1 >= sizeof http_buf)
            fail_msg("no complete answer to %s within 10 s: %s", what, http_buf);
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        ssize_t r = read(fd, http_buf + http_len, sizeof http_buf - 1 - http_len);
        if (r <= 0)
            fail_msg("connection closed during %s", what);
        http_len += (size_t)r;
    }
}

static void http_send(int fd, const char *method, const char *path, bool close_after)
{
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", method, path,
                     close_after ? "Connection: close\r\n" : "");
    assert_int_equal(write(fd, req, (size_t)n), n);
}

static int http_get(int fd, const char *path, bool close_after, char *body, size_t bodylen)
{
    http_send(fd, "GET", path, close_after);
    return http_read(fd, path, body, bodylen);
}

/* 32 connections each send one GET /users/{id} before any answer is read:
 * ids of existing users (some asked for by several connections at once)
 * and of missing ones. Each must get its own user or its own 404: the
 * lookups the service coalesces into one statement are answered from the
 * rows of that statement. */
#define UVH_CONC 32
static void uvhttp_concurrent_round(int port, const int64_t *ids);

static void uvhttp_concurrent(int port, const char *url)
{
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    int64_t ids[8];
    for (int i = 0; i < 8; i++) {
        char name[32], email[48];
        snprintf(name, sizeof name, "user %d", i);
        snprintf(email, sizeof email, "u%d@example.com", i);
        dbk_value p[2] = {dbk_text(name), dbk_text(email)};
        DBKT_OK(dbk_db_query_int64(dbk_conn_db(c),
                                   "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id",
                                   p, 2, &ids[i], &err),
                &err);
    }
    dbk_conn_close(c);
    /* Twice: with a cache, the second round is served from it. */
    for (int round = 0; round < 2; round++)
        uvhttp_concurrent_round(port, ids);
}

static void uvhttp_concurrent_round(int port, const int64_t *ids)
{
    int fds[UVH_CONC];
    int64_t want[UVH_CONC]; /* 0: a missing user */
    for (int i = 0; i < UVH_CONC; i++)
        fds[i] = dbkt_tcp_connect(port);
    for (int i = 0; i < UVH_CONC; i++) {
        char path[64];
        want[i] = i % 4 == 3 ? 0 : ids[i % 8];
        snprintf(path, sizeof path, "/users/%lld", want[i] ? (long long)want[i] : 900000LL + i);
        http_send(fds[i], "GET", path, false);
    }
    for (int i = 0; i < UVH_CONC; i++) {
        char body[4096], what[32];
        snprintf(what, sizeof what, "concurrent %d", i);
        http_len = 0;
        int status = http_read(fds[i], what, body, sizeof body);
        if (!want[i]) {
            assert_int_equal(status, 404);
            assert_non_null(strstr(body, "not_found"));
        } else {
            char id[64], name[64];
            snprintf(id, sizeof id, "\"id\":%lld,", (long long)want[i]);
            snprintf(name, sizeof name, "\"name\":\"user %d\"", i % 8);
            assert_int_equal(status, 200);
            if (!strstr(body, id) || !strstr(body, name))
                fail_msg("connection %d asked for user %lld and got %s", i, (long long)want[i],
                         body);
        }
        close(fds[i]);
    }
    http_len = 0;
}

/* The counts uvhttp prints when it stops ("N user lookups in M
 * batches"). */
static void uvhttp_counts(const char *err, unsigned long long *lookups,
                          unsigned long long *statements)
{
    const char *l = err ? strstr(err, "uvhttp: ") : NULL;
    while (l && sscanf(l, "uvhttp: %llu user lookups in %llu batches", lookups, statements) != 2)
        l = strstr(l + 1, "uvhttp: ");
    if (!l)
        fail_msg("uvhttp printed no counts: %s", err ? err : "");
}

static bool uvhttp_batch = true;  /* UVHTTP_BATCH of the next uvhttp_on */
static bool uvhttp_cached = false; /* CACHE_URL: the test Redis, else off */

static void uvhttp_on(const char *url, dbk_engine engine)
{
    char dburl[1200];
    snprintf(dburl, sizeof dburl, "DATABASE_URL=%s", url);
    char cache[1200] = "CACHE_URL=off", prefix[96];
    if (uvhttp_cached)
        snprintf(cache, sizeof cache, "CACHE_URL=%s", dbkt_redis_url());
    /* keys of this run only: ids repeat across engines and runs */
    snprintf(prefix, sizeof prefix, "CACHE_PREFIX=uvhttp-test-%d-%d:", (int)getpid(), (int)engine);
    const char *const set[] = {dburl, "PORT=0", "HOST=127.0.0.1",
                               uvhttp_batch ? "UVHTTP_BATCH=1" : "UVHTTP_BATCH=0", cache,
                               prefix, NULL};
    const char *const unset[] = {"REDIS_URL", "CACHE_URL", "DB_POOL_MAX", NULL};
    const char *const no_args[] = {NULL};
    int o = -1, e = -1;
    fflush(NULL);
    pid_t pid = dbkt_spawn(DBKIT_UVHTTP_PATH, NULL, no_args, unset, set, &o, &e);
    /* The "listening on" line, at most 20 s. */
    char buf[4096];
    size_t len = 0;
    int port = 0;
    int64_t until = dbkt_mono_ms() + 20000;
    while (port == 0 && dbkt_mono_ms() < until) {
        struct pollfd p = {o, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0)
            continue;
        ssize_t n = read(o, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        const char *l = strstr(buf, "listening on http://127.0.0.1:");
        if (l && strchr(l, '\n'))
            port = atoi(l + strlen("listening on http://127.0.0.1:"));
    }
    if (port <= 0) {
        kill(pid, SIGKILL);
        dbkt_proc pr = dbkt_collect(pid, o, e, 10000, "uvhttp");
        fail_msg("uvhttp did not start: %s %s", buf, pr.err);
    }
    /* A user written by the blocking API, read by the service. */
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_value p[2] = {dbk_text("Ada Lovelace"), dbk_text("ada@example.com")};
    int64_t id = 0;
    DBKT_OK(dbk_db_query_int64(dbk_conn_db(c),
                               "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", p, 2,
                               &id, &err),
            &err);
    dbk_conn_close(c);

    int fd = dbkt_tcp_connect(port);
    char body[4096], path[64];
    snprintf(path, sizeof path, "/users/%lld", (long long)id);
    /* Keep-alive: several requests on one connection. */
    assert_int_equal(http_get(fd, path, false, body, sizeof body), 200);
    assert_non_null(strstr(body, "\"name\":\"Ada Lovelace\""));
    assert_non_null(strstr(body, "\"email\":\"ada@example.com\""));
    char want_id[64];
    snprintf(want_id, sizeof want_id, "\"id\":%lld", (long long)id);
    assert_non_null(strstr(body, want_id));
    assert_int_equal(http_get(fd, "/users/999999", false, body, sizeof body), 404);
    assert_non_null(strstr(body, "not_found"));
    assert_int_equal(http_get(fd, "/users/abc", false, body, sizeof body), 400);
    assert_non_null(strstr(body, "invalid_id"));
    assert_int_equal(http_get(fd, "/users/0", false, body, sizeof body), 400);
    assert_int_equal(http_get(fd, "/nowhere", false, body, sizeof body), 404);
    assert_int_equal(http_get(fd, "/health", false, body, sizeof body), 200);
    assert_string_equal(body, "{\"status\":\"ok\"}");
    http_send(fd, "DELETE", path, false);
    assert_int_equal(http_read(fd, "DELETE", body, sizeof body), 405);
    /* Pipelined: three requests in one write, answered in order. */
    char three[512];
    int tn = snprintf(three, sizeof three,
                      "GET /users/999999 HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /users/x HTTP/1.1\r\nHost: x\r\n\r\n",
                      path);
    assert_int_equal(write(fd, three, (size_t)tn), tn);
    assert_int_equal(http_read(fd, "pipelined 1", body, sizeof body), 404);
    assert_int_equal(http_read(fd, "pipelined 2", body, sizeof body), 200);
    assert_non_null(strstr(body, want_id));
    assert_int_equal(http_read(fd, "pipelined 3", body, sizeof body), 400);
    assert_int_equal(http_get(fd, path, true, body, sizeof body), 200);
    /* Connection: close was honoured: the server closes its end. */
    char one;
    struct pollfd pc = {fd, POLLIN, 0};
    assert_int_equal(poll(&pc, 1, 10000), 1);
    assert_int_equal(read(fd, &one, 1), 0);
    close(fd);
    http_len = 0;
    /* 5 lookups so far (the 400s and 404 of routing make none), each on
     * its own: one request at a time. */
    uvhttp_concurrent(port, url);

    kill(pid, SIGTERM);
    dbkt_proc pr = dbkt_collect(pid, o, e, 20000, "uvhttp");
    if (pr.code != 0)
        fail_msg("uvhttp exited with %d: %s", pr.code, pr.err);
    unsigned long long lookups = 0, statements = 0;
    uvhttp_counts(pr.err, &lookups, &statements);
    assert_int_equal(lookups, 5 + 2 * UVH_CONC);
    if (uvhttp_batch) {
        /* The 32 requests were all sent before any answer was read: at
         * least two of them shared a statement. */
        if (statements >= lookups)
            fail_msg("%llu lookups took %llu batches: none were coalesced", lookups,
                     statements);
    } else {
        assert_int_equal(statements, lookups);
    }
    if (uvhttp_cached) {
        /* the second round's lookups of existing users (24 of 32: every
         * fourth id is missing, and "not found" is not cached by default)
         * came from Redis */
        const char *l = strstr(pr.err, "uvhttp: cache redis: ");
        unsigned long long hits = 0, misses = 0;
        if (!l || sscanf(l, "uvhttp: cache redis: %llu hits, %llu misses", &hits, &misses) != 2)
            fail_msg("uvhttp printed no cache counts: %s", pr.err);
        if (hits < UVH_CONC * 3 / 4)
            fail_msg("%llu cache hits (%llu misses): the second round did not come from Redis",
                     hits, misses);
    }
    dbkt_proc_free(&pr);
}
#endif

static void async_uvhttp_serves_user(void **state)
{
    (void)state;
#ifdef DBKIT_UVHTTP_PATH
    uvhttp_batch = true;
    dbkt_each_engine("async_uvhttp", uvhttp_on);
#else
    dbkt_skip(1, "examples/uvhttp was not built (libuv and jansson are needed: pkg-config libuv)");
#endif
}

/* The same through a Redis cache (CACHE_URL): the lookups of an iteration
 * are one dbk_cached_repo_find_by_ids on a worker; the second round of
 * concurrent requests is answered from Redis, each with its own user. */
static void async_uvhttp_redis_cache(void **state)
{
    (void)state;
#ifdef DBKIT_UVHTTP_PATH
    uvhttp_batch = true;
    uvhttp_cached = true;
    dbkt_each_engine("async_uvhttp_cached", uvhttp_on);
    uvhttp_cached = false;
#else
    dbkt_skip(1, "examples/uvhttp was not built (libuv and jansson are needed: pkg-config libuv)");
#endif
}

/* The same with UVHTTP_BATCH=0: every lookup its own statement. */
static void async_uvhttp_one_statement_per_request(void **state)
{
    (void)state;
#ifdef DBKIT_UVHTTP_PATH
    uvhttp_batch = false;
    dbkt_each_engine("async_uvhttp_unbatched", uvhttp_on);
#else
    dbkt_skip(1, "examples/uvhttp was not built (libuv and jansson are needed: pkg-config libuv)");
#endif
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(async_results_and_errors_equal_blocking),
        cmocka_unit_test(async_params_copied_at_submit),
        cmocka_unit_test(async_full_queue_refused),
        cmocka_unit_test(async_cancel_queued),
        cmocka_unit_test(async_deadline),
        cmocka_unit_test(async_close_with_work_in_flight),
        cmocka_unit_test(async_many_submits_bounded_and_observed),
        cmocka_unit_test(async_batch_and_task),
        cmocka_unit_test(async_cache_get_and_load),
        cmocka_unit_test(async_misuse_reported),
        cmocka_unit_test(async_process_max_keeps_fd_readable),
        cmocka_unit_test(async_submits_from_other_threads),
        cmocka_unit_test(async_uvhttp_serves_user),
        cmocka_unit_test(async_uvhttp_one_statement_per_request),
        cmocka_unit_test(async_uvhttp_redis_cache),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
