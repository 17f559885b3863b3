/*
 * pool_acquire.c - taking a connection from the pool and giving it back.
 *
 * acquire: an idle connection (the most recently used first), else a new one
 * while under max, else a place in the FIFO wait queue until the acquire
 * timeout, whose message names who holds the connections and for how long.
 * release: the connection is checked (broken, dirty, too old) and reset,
 * closed or handed straight to the first waiter.
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
#include "../core/sqlscan.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_int.h"
#include "pool_impl.h"

/* ---- the timeout message ---- */

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

void dbk__pool_format_site(char *buf, size_t n, const struct site *st, int64_t held_ms)
{
    if (st->sql) {
        char sql[40];
        size_t i = 0;
        for (const char *q = dbk__pool_first_token(st->sql); *q && i < sizeof sql - 1; q++)
            sql[i++] = (*q == '\n' || *q == '\t' || *q == '\r') ? ' ' : *q;
        sql[i] = '\0';
        snprintf(buf, n, "%s \"%s%s\" %lld ms", st->file, sql,
                 strlen(st->sql) > i ? "..." : "", (long long)held_ms);
    } else if (st->line > 0) {
        snprintf(buf, n, "%s:%d %s() %lld ms", base_name(st->file), st->line,
                 st->func ? st->func : "?", (long long)held_ms);
    } else {
        snprintf(buf, n, "%s %lld ms", st->file ? st->file : "?", (long long)held_ms);
    }
}

/* Appends to buf (of size cap, holding *len bytes) without ever running
 * past the end. */
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...) DBK__PRINTF(4, 5);
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    if (*len >= cap - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len = (size_t)n >= cap - *len ? cap - 1 : *len + (size_t)n;
}

/* Pool lock held. */
static dbk_rc timeout_error(dbk_pool *p, int64_t waited_ms, dbk_error *err)
{
    if (!err)
        return DBK_EPOOL_TIMEOUT;
    char msg[DBK_ERROR_MESSAGE_MAX];
    size_t n = 0;
    append(msg, sizeof msg, &n,
           "no pooled connection within %lld ms (max %d, in use %d, idle %d, waiting %d",
           (long long)waited_ms, p->o.max_size, p->busy.n, p->idle.n, p->n_waiting);
    if (p->n_opening)
        append(msg, sizeof msg, &n, ", opening %d", p->n_opening);
    append(msg, sizeof msg, &n, ")");
    if (p->busy.tail) {
        append(msg, sizeof msg, &n, "; held longest first: ");
        int64_t now = coarse_now_ns();
        int shown = 0;
        const size_t reserve = 24; /* "; and 99999 more" */
        for (struct slot *s = p->busy.tail; s; s = s->prev) {
            char one[128];
            dbk__pool_format_site(one, sizeof one, &s->site, (now - s->acquired_ns) / 1000000);
            size_t need = strlen(one) + (shown ? 2 : 0);
            if (n + need + reserve >= sizeof msg) {
                append(msg, sizeof msg, &n, "; and %d more", p->busy.n - shown);
                break;
            }
            append(msg, sizeof msg, &n, "%s%s", shown ? ", " : "", one);
            shown++;
        }
    }
    dbk__err(err, DBK_EPOOL_TIMEOUT, "%s", msg);
    dbk__err_hint(err, "if the load is legitimate raise pool_max (DB_POOL_MAX, now %d); "
                       "otherwise the holders above keep connections too long: a missing "
                       "dbk_pool_release() or a slow transaction",
                  p->o.max_size);
    return DBK_EPOOL_TIMEOUT;
}

/* Pool lock held. The acquire timeout passed while the pool could not
 * connect: the caller learns why. */
static dbk_rc outage_error(dbk_pool *p, int64_t waited_ms, dbk_error *err)
{
    if (!err)
        return DBK_EUNAVAILABLE;
    dbk__err(err, DBK_EUNAVAILABLE,
             "database unavailable: no connection within %lld ms, %d connects failed in a row "
             "(last: %s)",
             (long long)waited_ms, p->consecutive_failures, p->last_connect_err.message);
    dbk__err_hint(err, "check that the server is running and the host and port in "
                       "DATABASE_URL (`dbkit doctor`); the pool retries by itself");
    return DBK_EUNAVAILABLE;
}

/* ---- acquire ---- */

/* A small number for the calling thread, the same on every call (threads
 * are numbered in the order they first acquire). Threads that share a
 * number share an affinity hint: a hint is only a preference. */
static unsigned thread_key(void)
{
    static unsigned next;
    static _Thread_local unsigned key;
    if (!key)
        key = __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED) | 0x80000000u;
    return key;
}

static dbk_rc acquire(dbk_pool *p, const struct site *site, struct pipe_req *req, dbk_conn **out,
                      bool *rode, dbk_error *err)
{
    if (dbk__pool_forked(p))
        return dbk__pool_fork_error(p, err);
    int64_t t0 = 0; /* precise start, read lazily: the fast path does not need it */
    dbk_rc rc;
    unsigned aff = thread_key() & (POOL_AFFINITY - 1);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->closing) {
            pthread_mutex_unlock(&p->mu);
            return dbk__err(err, DBK_EPOOL_CLOSED, "the connection pool is closed");
        }
        struct slot *s = p->affinity[aff];
        if (!s || !s->on_idle)
            s = p->idle.head;
        /* plain statements beyond pipeline_conns connections ride theirs */
        bool capped = req && p->pipe_cap > 0 && p->n_pipe_busy >= p->pipe_cap;
        if (capped)
            s = NULL;
        if (s) {
            dbk__pool_idle_remove(p, s);
            int64_t now = coarse_now_ns();
            if (s->gen != p->generation || (s->retire_ns && now >= s->retire_ns)) {
                if (!t0)
                    t0 = dbk__now_ns();
                p->n_closing++;
                pthread_mutex_unlock(&p->mu);
                dbk__pool_close_slot(p, s);
                pthread_mutex_lock(&p->mu);
                p->n_closing--;
                p->closed++;
                dbk__pool_wake_worker(p);
                continue;
            }
            s->site = *site;
            s->acquired_ns = now;
            s->leak_reported = false;
            dbk__pool_busy_push(p, s);
            p->affinity[aff] = s;
            if (req) {
                s->pipe = true;
                p->n_pipe_busy++;
            }
            unsigned epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
            bool validate = s->checked_epoch != epoch ||
                            (p->o.validate_after_ms > 0 &&
                             now - s->idle_since_ns >= MS(p->o.validate_after_ms));
            if (validate) {
                if (!t0)
                    t0 = dbk__now_ns();
                pthread_mutex_unlock(&p->mu);
                int64_t left_ms = (t0 + MS(p->o.acquire_timeout_ms) - dbk__now_ns()) / 1000000;
                int tmo = p->o.validate_timeout_ms;
                if (left_ms < tmo)
                    tmo = left_ms > 1 ? (int)left_ms : 1;
                dbk_error pe;
                dbk_rc prc = s->conn->drv->ping(s->conn->impl, tmo, &pe);
                pthread_mutex_lock(&p->mu);
                if (prc != DBK_OK) {
                    dbk__pool_busy_remove(p, s);
                    p->n_closing++;
                    p->discarded++;
                    pthread_mutex_unlock(&p->mu);
                    dbk_error e;
                    dbk__err(&e, prc, "discarding a pooled connection that failed validation: %s",
                             pe.message);
                    dbk__pool_report_error(p, DBK_LOG_INFO, &e);
                    dbk__pool_close_slot(p, s);
                    pthread_mutex_lock(&p->mu);
                    p->n_closing--;
                    p->closed++;
                    dbk__pool_wake_worker(p);
                    if (dbk__now_ns() >= t0 + MS(p->o.acquire_timeout_ms)) {
                        p->acquire_timeouts++;
                        rc = timeout_error(p, (dbk__now_ns() - t0) / 1000000, err);
                        pthread_mutex_unlock(&p->mu);
                        return rc;
                    }
                    continue;
                }
                s->checked_epoch = epoch;
            }
            p->acquires++;
            if (t0)
                dbk__pool_count_latency(p, dbk__now_ns() - t0);
            else
                p->lat[0]++;
            pthread_mutex_unlock(&p->mu);
            if (p->hooks.on_acquire)
                p->hooks.on_acquire(p->hooks.ctx, s->conn);
            *out = s->conn;
            return DBK_OK;
        }

        /* Nothing idle. */
        int64_t cnow = coarse_now_ns();
        if (p->breaker_until_ns && cnow < p->breaker_until_ns &&
            (!p->outage_passing ||
             cnow - p->outage_since_ns >= MS(p->o.acquire_timeout_ms))) {
            int left = (int)((p->breaker_until_ns - coarse_now_ns()) / 1000000);
            dbk__err(err, DBK_EUNAVAILABLE,
                     "database unavailable: %d connects failed in a row, the pool fails fast "
                     "for %d ms more; last: %s",
                     p->consecutive_failures, left, p->last_connect_err.message);
            pthread_mutex_unlock(&p->mu);
            dbk__err_hint(err, "check that the server is running and the host and port in "
                               "DATABASE_URL (`dbkit doctor`); the pool retries by itself");
            return DBK_EUNAVAILABLE;
        }
        if (p->o.max_waiters > 0 && p->n_waiting >= p->o.max_waiters) {
            p->acquire_timeouts++;
            int nw = p->n_waiting;
            pthread_mutex_unlock(&p->mu);
            dbk__err(err, DBK_EPOOL_TIMEOUT,
                     "acquire refused at once: %d callers already wait for a pooled connection "
                     "(max_waiters %d, max %d)",
                     nw, p->o.max_waiters, p->o.max_size);
            dbk__err_hint(err, "the service takes more work than the database keeps up with: "
                               "shed load upstream, or raise pool_max_waiters / pool_max");
            return DBK_EPOOL_TIMEOUT;
        }

        if (!t0)
            t0 = dbk__now_ns();
        int64_t deadline = t0 + MS(p->o.acquire_timeout_ms);
        struct waiter w;
        memset(&w, 0, sizeof w);
        w.site = *site;
        w.req = req;
        dbk__pool_wq_push(p, &w);
        p->n_wait_threads++;
        if (!capped && dbk__pool_capacity_used(p) < p->o.max_size)
            dbk__pool_wake_worker(p);
        pthread_mutex_unlock(&p->mu);
        /* Sleep outside the pool lock: whoever decides this waiter's fate
         * (a release, the worker, close, a pipeline runner) posts its event
         * once. */
        bool posted = dbk__pevent_wait(&w.ev, deadline);
        if (posted && __atomic_load_n(&w.rode, __ATOMIC_ACQUIRE)) {
            *rode = true; /* the runner accounted for us (pool_pipe.c) */
            return DBK_OK;
        }
        pthread_mutex_lock(&p->mu);
        if (!posted && w.taken) {
            /* Taken into a pipeline as the deadline passed: the statement
             * is in flight, its outcome comes within the runner's
             * statement deadlines. */
            pthread_mutex_unlock(&p->mu);
            dbk__pevent_wait(&w.ev, 0);
            *rode = true;
            return DBK_OK;
        }
        /* Not taken: a post, if any, happened under the lock we hold. */
        p->n_wait_threads--;
        if (p->closing)
            pthread_cond_broadcast(&p->drain_cv);
        if (!w.done) {
            dbk__pool_wq_remove(p, &w);
            if (p->consecutive_failures > 0 && dbk__pool_capacity_used(p) < p->o.max_size) {
                rc = outage_error(p, (dbk__now_ns() - t0) / 1000000, err);
            } else {
                p->acquire_timeouts++;
                rc = timeout_error(p, (dbk__now_ns() - t0) / 1000000, err);
            }
            pthread_mutex_unlock(&p->mu);
            return rc;
        }
        if (!w.slot) {
            pthread_mutex_unlock(&p->mu);
            if (err)
                *err = w.e;
            return w.rc;
        }
        s = w.slot; /* handed over: already on the busy list with our site */
        p->affinity[aff] = s;
        s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
        p->acquires++;
        dbk__pool_count_latency(p, dbk__now_ns() - t0);
        pthread_mutex_unlock(&p->mu);
        if (p->hooks.on_acquire)
            p->hooks.on_acquire(p->hooks.ctx, s->conn);
        *out = s->conn;
        return DBK_OK;
    }
}

dbk_rc dbk__pool_acquire(dbk_pool *p, const struct site *site, dbk_conn **out, dbk_error *err)
{
    return acquire(p, site, NULL, out, NULL, err);
}

dbk_rc dbk__pool_acquire_or_ride(dbk_pool *p, const struct site *site, struct pipe_req *req,
                                 dbk_conn **out, bool *rode, dbk_error *err)
{
    *rode = false;
    *out = NULL;
    return acquire(p, site, req, out, rode, err);
}

dbk_rc dbk_pool_acquire_at(dbk_pool *pool, const char *file, int line, const char *func,
                           dbk_conn **out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_acquire: pool and out must not be NULL");
    *out = NULL;
    struct site st = {file ? file : "?", func, NULL, line};
    return dbk__pool_acquire(pool, &st, out, err);
}

/* ---- release ---- */

void dbk__pool_free_pool(dbk_pool *p);

void dbk__pool_release(dbk_pool *p, dbk_conn *c, bool force_reset)
{
    if (!p || !c)
        return;
    if (dbk__pool_forked(p)) {
        dbk__log(DBK_LOG_ERROR, "pool: dbk_pool_release after fork(): connection forgotten");
        return;
    }
    struct slot *s = c->pool_slot;
    if (!s || s->pool != p || !s->busy || s->conn != c) {
        dbk__log(DBK_LOG_ERROR, "pool: dbk_pool_release of a connection not lent by this pool "
                                "(released twice, or from another pool): ignored");
        return;
    }
    if (p->hooks.on_release)
        p->hooks.on_release(p->hooks.ctx, c);

    bool discard = s->broken;
    bool did_reset = false;
    dbk_error e;
    e.message[0] = '\0';
    if (!discard) {
        dbk__txstate ts = c->drv->txstate(c->impl);
        if (ts == DBK__TX_BROKEN) {
            discard = true;
            dbk__err(&e, DBK_ECONN_LOST, "discarding a pooled connection in a broken state");
        } else if (ts != DBK__TX_IDLE || s->dirty || force_reset ||
                   p->reset_policy == DBK_POOL_RESET_ALWAYS) {
            did_reset = true;
            dbk_rc rc = c->drv->reset(c->impl, &e);
            if (rc == DBK_OK) {
                s->dirty = false;
                rc = dbk__pool_run_on_connect(&p->hooks, s, &e);
            }
            if (rc != DBK_OK)
                discard = true;
        }
    } else {
        dbk__err(&e, DBK_ECONN_LOST, "discarding a pooled connection whose server went away");
    }
    if (s->gate_held)
        dbk__pool_gate_leave(p, s);

    int64_t now = coarse_now_ns();
    pthread_mutex_lock(&p->mu);
    dbk__pool_busy_remove(p, s);
    if (did_reset)
        p->resets++;
    if (discard || s->gen != p->generation || (s->retire_ns && now >= s->retire_ns) ||
        p->closing) {
        p->n_closing++;
        if (discard)
            p->discarded++;
        pthread_mutex_unlock(&p->mu);
        if (discard)
            dbk__pool_report_error(p, DBK_LOG_INFO, &e);
        dbk__pool_close_slot(p, s);
        pthread_mutex_lock(&p->mu);
        p->n_closing--;
        p->closed++;
        bool free_now = false;
        if (p->closing) {
            pthread_cond_broadcast(&p->drain_cv);
            free_now = p->orphaned && p->busy.n == 0 && p->n_closing == 0 &&
                       p->n_wait_threads == 0;
        } else {
            dbk__pool_wake_worker(p);
        }
        pthread_mutex_unlock(&p->mu);
        if (free_now)
            dbk__pool_free_pool(p);
        return;
    }
    s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
    dbk__pool_give_slot(p, s, now);
    pthread_mutex_unlock(&p->mu);
}

void dbk_pool_release(dbk_pool *pool, dbk_conn *conn)
{
    dbk__pool_release(pool, conn, false);
}

void dbk_pool_release_reset(dbk_pool *pool, dbk_conn *conn)
{
    dbk__pool_release(pool, conn, true);
}
