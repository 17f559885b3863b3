/*
 * pool_worker.c - the pool's background thread: closes idle connections
 * past idle_timeout and any past max_lifetime, keeps min_idle open, pings
 * idle connections for keepalive and reports connections held past the
 * leak threshold. It does its I/O with no pool lock held.
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

/* ---- the background thread ---- */

#define LEAK_BATCH 16

struct leak_report {
    struct site site;
    int64_t held_ms;
};

/* Pool lock held. Moves idle connections that must go to `out` (counted
 * in n_closing) and collects leak reports. Returns how many to close. */
static int maintenance_scan(dbk_pool *p, struct slot **out, int cap, struct leak_report *leaks,
                            int *nleaks)
{
    int64_t now = coarse_now_ns();
    int n = 0;
    struct slot *s = p->idle.tail;
    while (s && n < cap) {
        struct slot *prev = s->prev;
        bool go = s->gen != p->generation || (s->retire_ns && now >= s->retire_ns) ||
                  (p->o.idle_timeout_ms > 0 && p->idle.n > p->o.min_idle &&
                   now - s->idle_since_ns >= MS(p->o.idle_timeout_ms));
        if (go) {
            dbk__pool_idle_remove(p, s);
            p->n_closing++;
            out[n++] = s;
        }
        s = prev;
    }
    *nleaks = 0;
    if (p->o.leak_threshold_ms > 0) {
        for (s = p->busy.tail; s && *nleaks < LEAK_BATCH; s = s->prev) {
            int64_t held = now - s->acquired_ns;
            if (held < MS(p->o.leak_threshold_ms))
                break; /* the list is ordered by acquire time */
            if (s->leak_reported)
                continue;
            s->leak_reported = true;
            p->leaks++;
            leaks[*nleaks].site = s->site;
            leaks[*nleaks].site.sql = NULL; /* not valid outside the lock */
            leaks[*nleaks].held_ms = held / 1000000;
            (*nleaks)++;
        }
    }
    return n;
}

static bool needs_connect(dbk_pool *p, int64_t now)
{
    if (p->closing || dbk__pool_capacity_used(p) >= p->o.max_size)
        return false;
    if (p->breaker_until_ns && now < p->breaker_until_ns)
        return false;
    return p->n_waiting > 0 || p->idle.n < p->o.min_idle;
}

static int64_t worker_tick_ns(const dbk_pool *p)
{
    int64_t tick = MS(1000);
    int cand[3] = {p->o.idle_timeout_ms / 2, p->o.leak_threshold_ms / 4,
                   p->o.max_lifetime_ms / 20};
    for (int i = 0; i < 3; i++)
        if (cand[i] > 0 && MS(cand[i]) < tick)
            tick = MS(cand[i]);
    if (tick < MS(5))
        tick = MS(5);
    return tick;
}

void *dbk__pool_worker_main(void *arg)
{
    dbk_pool *p = arg;
    const int64_t tick = worker_tick_ns(p);
    pthread_mutex_lock(&p->mu);
    while (!p->stop_worker) {
        int64_t now = coarse_now_ns();
        if (needs_connect(p, now)) {
            bool probe = p->breaker_until_ns != 0;
            dbk_pool_hooks h = p->hooks;
            p->n_opening++;
            pthread_mutex_unlock(&p->mu);
            struct slot *s = NULL;
            dbk_error e;
            dbk_error_clear(&e);
            dbk_rc rc = dbk__pool_open_slot(p, &h, &s, &e);
            if (rc != DBK_OK) /* before any caller hears of it, outside the lock */
                dbk__pool_report_error_h(&h, DBK_LOG_WARN, &e);
            pthread_mutex_lock(&p->mu);
            p->n_opening--;
            now = coarse_now_ns();
            if (rc == DBK_OK) {
                p->created++;
                p->consecutive_failures = 0;
                p->outage_since_ns = 0;
                p->breaker_until_ns = 0;
                p->cooldown_ms = DBK_POOL_BREAKER_MIN_MS;
                s->gen = p->generation;
                s->created_ns = now;
                s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
                if (p->o.max_lifetime_ms > 0) {
                    int64_t life = MS(p->o.max_lifetime_ms);
                    int64_t jitter = (int64_t)(dbk__pool_rng_next(&p->rng) % (uint64_t)(life / 10 + 1));
                    s->retire_ns = now + life - jitter;
                }
                if (p->closing) {
                    p->n_closing++;
                    pthread_mutex_unlock(&p->mu);
                    dbk__pool_close_slot(p, s);
                    pthread_mutex_lock(&p->mu);
                    p->n_closing--;
                    p->closed++;
                    pthread_cond_broadcast(&p->drain_cv);
                } else {
                    dbk__pool_give_slot(p, s, now);
                }
                continue;
            }
            p->connect_failures++;
            p->consecutive_failures++;
            p->last_connect_err = e;
            if (!p->outage_since_ns)
                p->outage_since_ns = now;
            /* A passing failure keeps the waiters waiting (each until its
             * own acquire timeout): the next connect may find the server
             * back, or the new primary. Any other fails them now. */
            bool passing = dbk__pool_connect_err_passing(rc);
            p->outage_passing = passing;
            bool trip = probe || p->consecutive_failures >= DBK_POOL_BREAKER_FAILURES;
            dbk_error be;
            if (trip) {
                int cd = p->cooldown_ms ? p->cooldown_ms : DBK_POOL_BREAKER_MIN_MS;
                p->breaker_until_ns = now + MS(cd);
                p->cooldown_ms = cd * 2 > DBK_POOL_BREAKER_MAX_MS ? DBK_POOL_BREAKER_MAX_MS
                                                                  : cd * 2;
                dbk__err(&be, DBK_EUNAVAILABLE,
                         "database unavailable: %d connects failed in a row (last: %s); "
                         "next connect in %d ms",
                         p->consecutive_failures, e.message, cd);
                dbk__err_hint(&be, "check that the server is running and the host and port in "
                                   "DATABASE_URL (`dbkit doctor`); the pool retries by itself");
                if (!passing)
                    dbk__pool_fail_all_waiters(p, &be);
            } else if (p->wq_head && !passing) {
                /* The caller this connect was for learns why it failed. */
                struct waiter *w = p->wq_head;
                dbk__pool_wq_remove(p, w);
                w->e = e;
                if (!w->e.hint[0])
                    dbk__err_default_hint(&w->e);
                w->rc = rc;
                w->done = true;
                dbk__pevent_post(&w->ev);
            }
            if (trip) {
                pthread_mutex_unlock(&p->mu);
                dbk__pool_report_error_h(&h, DBK_LOG_WARN, &be);
                pthread_mutex_lock(&p->mu);
            }
            continue;
        }

        struct slot *gone[32];
        struct leak_report leaks[LEAK_BATCH];
        int nleaks = 0;
        int ngone = maintenance_scan(p, gone, 32, leaks, &nleaks);
        if (ngone || nleaks) {
            int idle_ms = p->o.idle_timeout_ms;
            int leak_ms = p->o.leak_threshold_ms;
            pthread_mutex_unlock(&p->mu);
            for (int i = 0; i < nleaks; i++) {
                char where[160];
                dbk__pool_format_site(where, sizeof where, &leaks[i].site, leaks[i].held_ms);
                dbk__log(DBK_LOG_WARN,
                         "pool: possible connection leak: held by %s, longer than "
                         "leak_threshold %d ms; every dbk_pool_acquire needs a "
                         "dbk_pool_release",
                         where, leak_ms);
            }
            for (int i = 0; i < ngone; i++)
                dbk__pool_close_slot(p, gone[i]);
            (void)idle_ms;
            pthread_mutex_lock(&p->mu);
            p->n_closing -= ngone;
            p->closed += (uint64_t)ngone;
            continue;
        }

        int64_t wake = dbk__now_ns() + tick;
        if (p->breaker_until_ns && (p->n_waiting > 0 || p->idle.n < p->o.min_idle)) {
            int64_t until = dbk__now_ns() + (p->breaker_until_ns - coarse_now_ns()) + MS(1);
            if (until < wake)
                wake = until;
        }
        struct timespec ts = ns_to_ts(wake);
        pthread_cond_timedwait(&p->worker_cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}
