/*
 * The connection pool.
 *
 * One mutex guards all of a pool's state; nothing slow ever runs under it
 * (connects, pings, resets, closes and hooks run after unlocking, with the
 * slot accounted for in `n_opening` / `n_closing` so the max_size bound
 * counts connections the server may still see). The uncontended
 * acquire + release pair is two lock/unlock pairs, two coarse clock reads
 * and one driver txstate() call, which keeps it well under 100 ns.
 *
 * Connections: idle ones sit on a LIFO list (the most recently used is lent
 * first, so surplus connections age at the tail where the idle timeout
 * finds them); lent ones sit on a list ordered by acquire time, so the
 * timeout message and the leak scan read the longest holders from its tail
 * without sorting. Waiters queue FIFO, each with its own condition variable
 * on the monotonic clock; a release hands the connection straight to the
 * head waiter (its call site is recorded at hand-off), so a newcomer never
 * overtakes a waiter.
 *
 * One background thread per pool opens every new connection. A caller that
 * needs one queues like any waiter and is served by whichever comes first:
 * the new connection or a release; so an acquire never waits past its own
 * timeout even when a connect hangs (libpq counts connect_timeout in whole
 * seconds). The same thread keeps min_idle ready, retires idle connections
 * (idle timeout, max lifetime with -10% jitter so they do not all leave at
 * once, old generation after a failover), reports leaks, and drives the
 * circuit breaker: after DBK_POOL_BREAKER_FAILURES failed connects in a row
 * it opens, waiters fail with DBK_EUNAVAILABLE, acquires that find nothing
 * idle fail at once until the cool-down ends; then the next demand makes one
 * probe connect, which closes it or re-opens it with a doubled cool-down.
 * The thread sleeps on a condition variable with a bounded deadline (its
 * tick adapts to the smallest timeout configured, 5 ms .. 1 s).
 *
 * Every connection lent out runs through a thin executor wrapped around its
 * own (conn->db.ops), so the pool sees each statement no matter whether it
 * came from the pool's dbk_db, a transaction that pinned it, or user code
 * holding it: a statement that may change the session (SET, set_config(),
 * PREPARE, LISTEN, temporary objects, advisory locks on PostgreSQL; PRAGMA,
 * ATTACH, temporary objects on SQLite), read with the shared SQL scanner so
 * that quotes and comments cannot hide it, marks the connection dirty and
 * it is reset on release; DBK_ECONN_LOST marks it broken
 * and makes every idle connection suspect (pinged before its next loan),
 * DBK_EREADONLY on PostgreSQL bumps the pool generation (failover: every
 * connection is recycled). On SQLite, writers wait for each other inside
 * SQLite (busy_timeout); a plain BEGIN runs as BEGIN IMMEDIATE so that a
 * transaction takes the write lock before it has read anything (a deferred
 * one could only fail later, with SQLITE_BUSY, when it upgrades), and an
 * autocommit statement or BEGIN that still meets SQLITE_BUSY is retried
 * within another busy_timeout budget; readers run in parallel under WAL.
 * An in-process write gate (one writer at a time, FIFO-ish hand-off on a
 * condition variable) is kept as an option: it cut the slowest write but
 * halved throughput or worse in bench/pool_bench.c, so it is off (see
 * docs/pool.md for the figures).
 *
 * fork(): every entry point compares the process-wide fork generation with
 * the pool's (src/core/process.c: one relaxed load, cheaper than getpid()).
 * The child never touches the parent's sockets; the drivers check the same
 * generation for connections that were lent out before the fork.
 */
#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/rand.h"
#include "../core/sqlscan.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_int.h"
#include "pool_impl.h"

static const int64_t lat_bounds_us[DBK_POOL_LATENCY_BUCKETS] = {
    50, 250, 1000, 5000, 10000, 50000, 100000, 500000, 1000000, INT64_MAX};

void dbk__pool_count_latency(dbk_pool *p, int64_t ns)
{
    int64_t us = ns / 1000;
    int i = 0;
    while (i < DBK_POOL_LATENCY_BUCKETS - 1 && us > lat_bounds_us[i])
        i++;
    p->lat[i]++;
}

/* ---- lists (pool lock held) ---- */

/* Push at the head; the idle list lends from the head (most recently used)
 * and retires from the tail, the busy list reports holders from the tail. */
static void list_push(struct slot_list *l, struct slot *s)
{
    s->prev = NULL;
    s->next = l->head;
    if (l->head)
        l->head->prev = s;
    else
        l->tail = s;
    l->head = s;
    l->n++;
}

static void list_remove(struct slot_list *l, struct slot *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    s->prev = s->next = NULL;
    l->n--;
}

static void idle_push(dbk_pool *p, struct slot *s)
{
    list_push(&p->idle, s);
    s->on_idle = true;
}

void dbk__pool_idle_remove(dbk_pool *p, struct slot *s)
{
    list_remove(&p->idle, s);
    s->on_idle = false;
}

void dbk__pool_busy_push(dbk_pool *p, struct slot *s)
{
    list_push(&p->busy, s);
    s->busy = true;
}

void dbk__pool_busy_remove(dbk_pool *p, struct slot *s)
{
    list_remove(&p->busy, s);
    s->busy = false;
    if (s->pipe) {
        s->pipe = false;
        p->n_pipe_busy--;
    }
}

void dbk__pool_wq_push(dbk_pool *p, struct waiter *w)
{
    w->next = NULL;
    w->prev = p->wq_tail;
    if (p->wq_tail)
        p->wq_tail->next = w;
    else
        p->wq_head = w;
    p->wq_tail = w;
    p->n_waiting++;
}

void dbk__pool_wq_remove(dbk_pool *p, struct waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        p->wq_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->wq_tail = w->prev;
    w->prev = w->next = NULL;
    p->n_waiting--;
}

int dbk__pool_capacity_used(const dbk_pool *p)
{
    return p->idle.n + p->busy.n + p->n_opening + p->n_closing;
}

bool dbk__pool_forked(const dbk_pool *p)
{
    return dbk__owner_forked(&p->owner);
}

dbk_rc dbk__pool_fork_error(const dbk_pool *p, dbk_error *err)
{
    return dbk__owner_error(&p->owner, "pool", err);
}

/* Lends slot s to the head waiter, or puts it on the idle list. While
 * plain statements hold pipeline_conns connections, a waiter carrying one
 * (it rides the next pipeline of those) lets the first waiter that wants a
 * whole connection go first. */
void dbk__pool_give_slot(dbk_pool *p, struct slot *s, int64_t now)
{
    struct waiter *w = p->wq_head;
    if (p->pipe_cap > 0 && p->n_pipe_busy >= p->pipe_cap)
        while (w && w->req)
            w = w->next;
    if (w) {
        dbk__pool_wq_remove(p, w);
        if (w->req) {
            s->pipe = true;
            p->n_pipe_busy++;
        }
        s->site = w->site;
        s->acquired_ns = now;
        s->leak_reported = false;
        dbk__pool_busy_push(p, s);
        w->slot = s;
        w->done = true;
        dbk__pevent_post(&w->ev);
        return;
    }
    s->idle_since_ns = now;
    idle_push(p, s);
}

/* Fails every waiter with a copy of e. */
void dbk__pool_fail_all_waiters(dbk_pool *p, const dbk_error *e)
{
    while (p->wq_head) {
        struct waiter *w = p->wq_head;
        dbk__pool_wq_remove(p, w);
        w->e = *e;
        w->rc = e->code;
        w->done = true;
        dbk__pevent_post(&w->ev);
    }
}

void dbk__pool_wake_worker(dbk_pool *p)
{
    pthread_cond_signal(&p->worker_cv);
}

/* ---- reporting (no lock held) ---- */

void dbk__pool_report_error_h(const dbk_pool_hooks *h, dbk_log_level level, const dbk_error *e)
{
    dbk__log(level, "pool: %s: %s", dbk_rc_name(e->code), e->message);
    if (h->on_error)
        h->on_error(h->ctx, e);
}

/* From a thread that synchronized with dbk_pool_set_hooks() through the
 * pool lock (any caller of the pool); the background thread uses its own
 * copy taken under the lock. */
void dbk__pool_report_error(dbk_pool *p, dbk_log_level level, const dbk_error *e)
{
    dbk__pool_report_error_h(&p->hooks, level, e);
}

/* ---- opening and closing connections (no lock held) ---- */

/* Closes a connection that is in no list, restoring its own executor. In
 * a forked child nothing is touched. */
void dbk__pool_close_slot(dbk_pool *p, struct slot *s)
{
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < POOL_AFFINITY; i++)
        if (p->affinity[i] == s)
            p->affinity[i] = NULL;
    s->on_idle = false;
    pthread_mutex_unlock(&p->mu);
    if (s->gate_held) {
        pthread_mutex_lock(&p->gate_mu);
        if (p->gate_owner == s)
            p->gate_owner = NULL;
        s->gate_held = false;
        pthread_cond_signal(&p->gate_cv);
        pthread_mutex_unlock(&p->gate_mu);
    }
    dbk_conn *c = s->conn;
    c->db.ops = s->orig_ops;
    c->pool_slot = NULL;
    dbk_conn_close(c);
    free(s);
}

dbk_rc dbk__pool_run_on_connect(const dbk_pool_hooks *h, struct slot *s, dbk_error *err)
{
    if (!h->on_connect)
        return DBK_OK;
    dbk_error_clear(err);
    dbk_rc rc = h->on_connect(h->ctx, s->conn, err);
    if (rc != DBK_OK && err && err->code == DBK_OK)
        dbk__err(err, rc, "the pool's on_connect hook failed");
    s->dirty = false; /* what on_connect sets is the baseline */
    return rc;
}

uint64_t dbk__pool_rng_next(uint64_t *st)
{
    return dbk__rand_next(st);
}

/* Opens one connection for the pool (worker thread). */
dbk_rc dbk__pool_open_slot(dbk_pool *p, const dbk_pool_hooks *h, struct slot **out,
                        dbk_error *err)
{
    *out = NULL;
    struct slot *s = calloc(1, sizeof *s);
    if (!s)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a pooled connection");
    dbk_conn *c = NULL;
    dbk_rc rc = dbk_conn_open(p->cfg, &c, err);
    if (rc != DBK_OK) {
        free(s);
        return rc;
    }
    s->conn = c;
    s->pool = p;
    s->orig_ops = c->db.ops;
    c->db.ops = &dbk__pool_conn_ops;
    c->pool_slot = s;
    rc = dbk__pool_run_on_connect(h, s, err);
    if (rc != DBK_OK) {
        dbk__pool_close_slot(p, s);
        return rc;
    }
    *out = s;
    return DBK_OK;
}

/* ---- the pool's dbk_db ---- */

static dbk_rc pdb_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                      dbk_result **out, int64_t *affected, dbk_error *err)
{
    dbk_pool *p = db->self;
    if (p->auto_pipeline && dbk__pool_sql_pipelinable(sql))
        return dbk__pool_pipe_run(p, sql, params, nparams, out, affected, err);
    struct site st = {"dbk_db", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = dbk__pool_acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->run(&c->db, sql, params, nparams, out, affected, err);
    dbk__pool_release(p, c, false);
    return rc;
}

static dbk_rc pdb_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db script", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = dbk__pool_acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->script(&c->db, sql, timeout_ms, err);
    dbk__pool_release(p, c, false);
    return rc;
}

static dbk_rc pdb_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db pin (transaction)", NULL, NULL, 0};
    return dbk__pool_acquire(p, &st, out, err);
}

static void pdb_unpin(dbk_db *db, dbk_conn *conn)
{
    dbk__pool_release(db->self, conn, false);
}

static dbk_rc pdb_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_batch_run", NULL, n ? items[0].sql : NULL, 0};
    dbk_conn *c = NULL;
    dbk_error e;
    dbk_rc rc = dbk__pool_acquire(p, &st, &c, &e);
    if (rc != DBK_OK) {
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], rc, &e);
        return rc;
    }
    rc = c->db.ops->batch(&c->db, items, n, atomic);
    dbk__pool_release(p, c, false);
    return rc;
}

static dbk_rc pdb_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                          int64_t *rows, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db copy", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = dbk__pool_acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->copy_in(&c->db, sql, fill, ctx, rows, err);
    dbk__pool_release(p, c, false);
    return rc;
}

/* As many as the pool may lend at once. */
static int pdb_max_parallel(dbk_db *db)
{
    dbk_pool *p = db->self;
    return p->o.max_size > 0 ? p->o.max_size : 1;
}

static const struct dbk__db_ops pool_db_ops = {pdb_run,   pdb_script, pdb_pin,         pdb_unpin,
                                               pdb_batch, pdb_copy_in, pdb_max_parallel};

dbk_db *dbk_pool_db(dbk_pool *pool)
{
    return pool ? &pool->db : NULL;
}

/* ---- open / close ---- */

static int pick(int from_opts, int from_cfg)
{
    return from_opts != 0 ? from_opts : from_cfg;
}

dbk_rc dbk_pool_open(const dbk_config *cfg, const dbk_pool_opts *opts, dbk_pool **out,
                     dbk_error *err)
{
    if (!cfg || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_open: config and out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_POOL_OPTS_VERSION, "dbk_pool_opts", err))
        return DBK_EMISUSE;

    const struct dbk__pool_settings *cp = &cfg->pool;
    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION,
                       .max_size = cp->max_size,
                       .min_idle = cp->min_idle,
                       .acquire_timeout_ms = cp->acquire_timeout_ms,
                       .connect_timeout_ms = cp->connect_timeout_ms,
                       .idle_timeout_ms = cp->idle_timeout_ms,
                       .max_lifetime_ms = cp->max_lifetime_ms,
                       .validate_after_ms = cp->validate_after_ms,
                       .validate_timeout_ms = cp->validate_timeout_ms,
                       .max_waiters = cp->max_waiters,
                       .leak_threshold_ms = cp->leak_threshold_ms};
    if (opts) {
        o.max_size = pick(opts->max_size, o.max_size);
        o.min_idle = pick(opts->min_idle, o.min_idle);
        o.acquire_timeout_ms = pick(opts->acquire_timeout_ms, o.acquire_timeout_ms);
        o.connect_timeout_ms = pick(opts->connect_timeout_ms, o.connect_timeout_ms);
        o.idle_timeout_ms = pick(opts->idle_timeout_ms, o.idle_timeout_ms);
        o.max_lifetime_ms = pick(opts->max_lifetime_ms, o.max_lifetime_ms);
        o.validate_after_ms = pick(opts->validate_after_ms, o.validate_after_ms);
        o.validate_timeout_ms = pick(opts->validate_timeout_ms, o.validate_timeout_ms);
        o.max_waiters = pick(opts->max_waiters, o.max_waiters);
        o.leak_threshold_ms = pick(opts->leak_threshold_ms, o.leak_threshold_ms);
    }
    if (o.connect_timeout_ms == 0)
        o.connect_timeout_ms = cfg->connect_timeout_ms;
    /* DBK_POOL_OFF: the fields below compare > 0, so it already means off
     * for them; min_idle counts, so its off is 0. */
    if (o.min_idle == DBK_POOL_OFF)
        o.min_idle = 0;
    if (o.max_size < 1)
        return dbk__err(err, DBK_ECONFIG, "pool_max must be at least 1 (got %d)", o.max_size);
    if (o.min_idle < 0 || o.min_idle > o.max_size)
        return dbk__err(err, DBK_ECONFIG, "pool_min_idle must be between 0 and pool_max %d "
                                          "(got %d)",
                        o.max_size, o.min_idle);
    if (o.acquire_timeout_ms < 1)
        return dbk__err(err, DBK_ECONFIG, "acquire_timeout must be at least 1 ms (got %d)",
                        o.acquire_timeout_ms);
    if (o.validate_timeout_ms < 1)
        return dbk__err(err, DBK_ECONFIG, "validate_timeout must be at least 1 ms (got %d)",
                        o.validate_timeout_ms);
    if (cfg->engine == DBK_ENGINE_SQLITE &&
        (cfg->sqlite_memory || (cfg->sqlite_path && strcmp(cfg->sqlite_path, ":memory:") == 0))) {
        /* Each connection would see its own database: keep exactly one, forever. */
        o.max_size = 1;
        o.min_idle = 1;
        o.idle_timeout_ms = -1;
        o.max_lifetime_ms = -1;
    }

    dbk_pool *p = calloc(1, sizeof *p);
    if (!p)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a pool");
    dbk_rc rc = dbk_config_clone(cfg, &p->cfg, err);
    if (rc != DBK_OK) {
        free(p);
        return rc;
    }
    if (o.connect_timeout_ms > 0)
        p->cfg->connect_timeout_ms = o.connect_timeout_ms;
    p->o = o;
    p->engine = cfg->engine;
    dbk__owner_init(&p->owner);
    p->cooldown_ms = DBK_POOL_BREAKER_MIN_MS;
    p->rng = (uint64_t)dbk__now_ns() ^ ((uint64_t)(uintptr_t)p << 16) ^ 0x9e3779b97f4a7c15ULL;
    if (!p->rng)
        p->rng = 1;
    /* Auto-pipelining needs the driver's pipeline and a session of our own
     * behind each connection: not behind a transaction-mode pooler. */
    p->auto_pipeline = cfg->auto_pipeline && cfg->engine == DBK_ENGINE_POSTGRES &&
                       dbk__driver_postgres.pipeline &&
                       !(p->cfg->pooler && p->cfg->pooler[0] == 't');
    p->pipe_cap = p->auto_pipeline ? cfg->pipeline_conns : 0;
    p->use_gate = false; /* see the top of this file */
    p->gate_timeout_ms = cfg->busy_timeout_ms > 0 ? cfg->busy_timeout_ms : o.acquire_timeout_ms;

    /* The pool lock is held for a few hundred nanoseconds twice per
     * statement: a thread that finds it taken spins briefly before it
     * sleeps (glibc's adaptive mutex), as the holder is almost always
     * running and about to let go. Sleeping at once cost 6-20 % of the
     * pooled PK lookup rate at 2 and 8 threads (bench/pool_bench pk). */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&p->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&p->gate_mu, NULL);
    pthread_condattr_init(&p->cattr);
    pthread_condattr_setclock(&p->cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->worker_cv, &p->cattr);
    pthread_cond_init(&p->drain_cv, &p->cattr);
    pthread_cond_init(&p->gate_cv, &p->cattr);

    p->db.ops = &pool_db_ops;
    p->db.self = p;
    p->db.engine = cfg->engine;
    p->db.kind = DBK__DB_POOL;
    p->db.observer = NULL;
    p->db.observer_ctx = NULL;

    if (pthread_create(&p->worker, NULL, dbk__pool_worker_main, p) != 0) {
        dbk__pool_free_pool(p);
        return dbk__err(err, DBK_EINTERNAL, "could not start the pool's background thread");
    }
    p->worker_started = true;
    *out = p;
    return DBK_OK;
}

void dbk__pool_free_pool(dbk_pool *p)
{
    pthread_cond_destroy(&p->worker_cv);
    pthread_cond_destroy(&p->drain_cv);
    pthread_cond_destroy(&p->gate_cv);
    pthread_condattr_destroy(&p->cattr);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->gate_mu);
    dbk_config_free(p->cfg);
    free(p);
}

void dbk_pool_close(dbk_pool *pool, int drain_timeout_ms)
{
    dbk_pool *p = pool;
    if (!p)
        return;
    if (dbk__pool_forked(p))
        return; /* the parent's connections: forget them, never touch their sockets */

    pthread_mutex_lock(&p->mu);
    p->closing = true;
    p->stop_worker = true;
    dbk_error ce;
    dbk__err(&ce, DBK_EPOOL_CLOSED, "the connection pool closed while waiting");
    dbk__pool_fail_all_waiters(p, &ce);
    pthread_cond_signal(&p->worker_cv);
    pthread_mutex_unlock(&p->mu);
    if (p->worker_started)
        pthread_join(p->worker, NULL);

    pthread_mutex_lock(&p->mu);
    /* Woken waiters leave within microseconds; they must be gone before
     * the pool's memory may go. The bound only guards against a bug. */
    struct timespec wts = ns_to_ts(dbk__now_ns() + MS(5000));
    while (p->n_wait_threads > 0) {
        if (pthread_cond_timedwait(&p->drain_cv, &p->mu, &wts) == ETIMEDOUT)
            break;
    }
    if (drain_timeout_ms > 0 && p->busy.n > 0) {
        struct timespec ts = ns_to_ts(dbk__now_ns() + MS(drain_timeout_ms));
        while (p->busy.n > 0) {
            if (pthread_cond_timedwait(&p->drain_cv, &p->mu, &ts) == ETIMEDOUT)
                break;
        }
    }
    /* Idle connections: close them all. */
    struct slot *idle = p->idle.head;
    int nidle = p->idle.n;
    p->idle.head = p->idle.tail = NULL;
    p->idle.n = 0;
    p->n_closing += nidle;
    int64_t now = coarse_now_ns();
    char late[DBK_ERROR_MESSAGE_MAX];
    late[0] = '\0';
    int nlate = p->busy.n;
    if (nlate) {
        size_t n = 0;
        for (struct slot *s = p->busy.tail; s && n < sizeof late - 64; s = s->prev) {
            char one[128];
            struct site st = s->site;
            st.sql = NULL;
            if (!st.line && !st.file)
                st.file = "?";
            dbk__pool_format_site(one, sizeof one, &st, (now - s->acquired_ns) / 1000000);
            n += (size_t)snprintf(late + n, sizeof late - n, "%s%s", n ? ", " : "", one);
        }
    }
    pthread_mutex_unlock(&p->mu);

    while (idle) {
        struct slot *next = idle->next;
        dbk__pool_close_slot(p, idle);
        idle = next;
    }

    pthread_mutex_lock(&p->mu);
    p->n_closing -= nidle;
    p->closed += (uint64_t)nidle;
    bool free_now = p->busy.n == 0 && p->n_closing == 0 && p->n_wait_threads == 0;
    if (!free_now)
        p->orphaned = true;
    pthread_mutex_unlock(&p->mu);
    if (nlate)
        dbk__log(DBK_LOG_WARN,
                 "pool: closed with %d connection(s) still borrowed after the %d ms drain "
                 "deadline; they close when released: %s",
                 nlate, drain_timeout_ms, late);
    if (free_now)
        dbk__pool_free_pool(p);
}

/* ---- settings and stats ---- */

dbk_rc dbk_pool_set_hooks(dbk_pool *pool, const dbk_pool_hooks *hooks, dbk_error *err)
{
    if (!pool)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_set_hooks: pool must not be NULL");
    if (dbk__pool_forked(pool))
        return dbk__pool_fork_error(pool, err);
    pthread_mutex_lock(&pool->mu);
    if (hooks)
        pool->hooks = *hooks;
    else
        memset(&pool->hooks, 0, sizeof pool->hooks);
    pthread_mutex_unlock(&pool->mu);
    return DBK_OK;
}

dbk_rc dbk_pool_set_reset_policy(dbk_pool *pool, dbk_pool_reset_policy policy, dbk_error *err)
{
    if (!pool)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_set_reset_policy: pool must not be NULL");
    if (policy != DBK_POOL_RESET_DIRTY && policy != DBK_POOL_RESET_ALWAYS)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_set_reset_policy: unknown policy %d",
                        (int)policy);
    pthread_mutex_lock(&pool->mu);
    pool->reset_policy = (int)policy;
    pthread_mutex_unlock(&pool->mu);
    return DBK_OK;
}

void dbk__pool_set_sqlite_gate(dbk_pool *pool, bool on)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->use_gate = on && pool->engine == DBK_ENGINE_SQLITE;
    pthread_mutex_unlock(&pool->mu);
}

dbk_rc dbk_pool_get_stats(dbk_pool *pool, dbk_pool_stats *out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_stats: pool and out must not be NULL");
    if (dbk__pool_forked(pool))
        return dbk__pool_fork_error(pool, err);
    memset(out, 0, sizeof *out);
    dbk_pool *p = pool;
    pthread_mutex_lock(&p->mu);
    out->max_size = p->o.max_size;
    out->idle = p->idle.n;
    out->in_use = p->busy.n;
    out->total = p->idle.n + p->busy.n;
    out->waiting = p->n_waiting;
    out->opening = p->n_opening;
    out->created = p->created;
    out->closed = p->closed;
    out->acquires = p->acquires;
    out->acquire_timeouts = p->acquire_timeouts;
    out->connect_failures = p->connect_failures;
    out->discarded = p->discarded;
    out->resets = p->resets;
    out->leaks = p->leaks;
    out->recycles = p->recycles;
    out->pipelines = p->pipelines;
    out->pipelined = p->pipelined;
    out->breaker_open = p->breaker_until_ns != 0 && coarse_now_ns() < p->breaker_until_ns;
    for (int i = 0; i < DBK_POOL_LATENCY_BUCKETS; i++) {
        out->latency_le_us[i] = lat_bounds_us[i];
        out->latency_count[i] = p->lat[i];
    }
    pthread_mutex_unlock(&p->mu);
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_pool_opts, DBK_POOL_OPTS_VERSION)

dbk_rc dbk_pool_get_opts(const dbk_pool *pool, dbk_pool_opts *out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_get_opts: pool and out must not be NULL");
    *out = pool->o;
    /* Off (0 or negative inside) reads DBK_POOL_OFF, so that passing the
     * result back to dbk_pool_open() (a cluster does, for each replica)
     * keeps it off instead of taking the other configuration's value. */
    int *offable[] = {&out->min_idle,          &out->idle_timeout_ms, &out->max_lifetime_ms,
                      &out->validate_after_ms, &out->max_waiters,     &out->leak_threshold_ms};
    for (size_t i = 0; i < sizeof offable / sizeof offable[0]; i++)
        if (*offable[i] <= 0)
            *offable[i] = DBK_POOL_OFF;
    return DBK_OK;
}

/* The deprecated name (one release), a wrapper so it stays in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_pool_stats_get(dbk_pool *pool, dbk_pool_stats *out, dbk_error *err)
{
    return dbk_pool_get_stats(pool, out, err);
}
#pragma GCC diagnostic pop
