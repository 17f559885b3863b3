/*
 * pool_impl.h - what the files of the pool share: its structures, its
 * clocks and the functions one file calls in another.
 *
 *   pool.c        the core: lists, opening and closing connections, the
 *                 pool's own dbk_db, open / close, settings and stats
 *   pool_acquire.c acquire (with the timeout message) and release
 *   pool_lent.c   the executor of a lent connection, and the SQLite write
 *                 gate it passes writes through
 *   pool_worker.c the background thread (idle timeout, max lifetime,
 *                 keepalive, min_idle, leak reports)
 *   pool_sql.c    statement classification (session changes, plain BEGIN,
 *                 reads), pure
 *
 * pool.c's opening comment says how the pool works.
 */
#ifndef DBK_POOL_IMPL_H
#define DBK_POOL_IMPL_H

#include <linux/futex.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <time.h>

#include "../core/internal.h"
#include "../core/sqlscan.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_int.h"

/* ---- clocks ---- */

/* Coarse monotonic clock (a few ns; resolution of a scheduler tick): good
 * enough for idle ages, lifetimes and held durations. Deadlines and latency
 * use dbk__now_ns(). */
static inline int64_t coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

#define MS(x) ((int64_t)(x) * 1000000LL)

/* ---- structures ---- */

#define POOL_AFFINITY 64 /* thread-affinity hints (a power of two) */

/* Where a connection was taken: a call site, or a statement of the pool's
 * own dbk_db (sql borrowed for the duration of that call). */
struct site {
    const char *file;
    const char *func;
    const char *sql;
    int line;
};

struct slot {
    dbk_conn *conn;
    struct dbk_pool *pool;
    const struct dbk__db_ops *orig_ops;
    struct slot *prev, *next; /* idle or busy list */
    uint64_t gen;             /* pool generation at creation */
    unsigned checked_epoch;   /* suspect epoch when last known good */
    int64_t created_ns;
    int64_t retire_ns;        /* 0: no max lifetime */
    int64_t idle_since_ns;
    int64_t acquired_ns;
    struct site site;
    bool busy;
    bool leak_reported;
    bool dirty;      /* a session setting changed: reset on release */
    bool broken;     /* connection lost: never reuse */
    bool gate_held;  /* SQLite write gate */
    bool on_idle;    /* on the idle list */
    bool pipe;       /* lent to a plain statement (counts in n_pipe_busy) */
};

/* A doubly linked list of slots with its length (the idle and busy lists). */
struct slot_list {
    struct slot *head, *tail;
    int n;
};

/* A statement that may ride in another caller's pipeline (pool_pipe.c). */
struct pipe_req {
    dbk__batch_item item;
};

/* A one-shot event a waiter sleeps on (a futex word): posted once, by
 * whoever decides the waiter's fate. Every post but a pipeline runner's is
 * made under the pool lock, so a waiter that holds the lock and sees its
 * outcome knows the post is complete. The word is read with acquire
 * ordering, so what the poster wrote before posting is visible after. */
struct pevent {
    int state; /* 0, then 1 once posted */
};

static inline void dbk__pevent_post(struct pevent *e)
{
    __atomic_store_n(&e->state, 1, __ATOMIC_RELEASE);
    /* After the store the waiter may return and its frame be reused: the
     * wake only names the address, it does not touch the memory. */
    syscall(SYS_futex, &e->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Sleeps until posted (true) or until the monotonic deadline deadline_ns
 * passes (false; 0: no deadline). */
static inline bool dbk__pevent_wait(struct pevent *e, int64_t deadline_ns)
{
    while (!__atomic_load_n(&e->state, __ATOMIC_ACQUIRE)) {
        struct timespec ts, *tp = NULL;
        if (deadline_ns) {
            if (dbk__now_ns() >= deadline_ns)
                return __atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != 0;
            ts = ns_to_ts(deadline_ns); /* absolute, CLOCK_MONOTONIC */
            tp = &ts;
        }
        syscall(SYS_futex, &e->state, FUTEX_WAIT_BITSET_PRIVATE, 0, tp, NULL,
                FUTEX_BITSET_MATCH_ANY);
    }
    return true;
}

struct waiter {
    struct pevent ev;
    struct waiter *prev, *next;
    struct site site;
    struct slot *slot; /* set on hand-off */
    dbk_rc rc;         /* set on failure */
    dbk_error e;
    struct pipe_req *req; /* non-NULL: may be served by riding a pipeline */
    bool taken;           /* req taken into a pipeline: wait for it, no timeout */
    int rode;             /* 1: req ran in another caller's pipeline, item filled
                             (atomic: set by the runner outside the lock) */
    bool done;
};

struct dbk_pool {
    pthread_mutex_t mu;
    pthread_condattr_t cattr;
    pthread_cond_t worker_cv;
    pthread_cond_t drain_cv;

    struct dbk_config *cfg; /* owned clone */
    dbk_pool_opts o;        /* resolved options */
    dbk_engine engine;
    struct dbk_db db;
    dbk_pool_hooks hooks;
    int reset_policy;
    dbk__owner owner; /* the process that opened it (src/core/process.c) */

    /* lists */
    struct slot_list idle;
    /* Thread affinity: the connection each thread (hashed) used last, so a
     * thread gets its own connection back when it is idle (pool_acquire.c).
     * Cleared for a slot before the slot is freed. */
    struct slot *affinity[POOL_AFFINITY];
    struct slot_list busy; /* head: most recent acquire */
    struct waiter *wq_head, *wq_tail;
    int n_opening, n_closing, n_waiting;
    int n_wait_threads; /* threads inside the wait loop (close waits them out) */

    uint64_t generation;
    unsigned suspect_epoch; /* atomic */

    /* circuit breaker */
    int consecutive_failures;
    int cooldown_ms;
    int64_t breaker_until_ns; /* 0: closed */
    dbk_error last_connect_err;
    /* Since when connects fail (0: the last one succeeded), and whether the
     * last failure looks passing (server down, refused, unreachable,
     * timed out, read-only during a failover) rather than a setting that
     * will not fix itself (authentication, TLS, no such database). While a
     * passing outage is younger than the acquire timeout, callers wait for
     * the pool to reconnect instead of failing at once. */
    int64_t outage_since_ns;
    bool outage_passing;

    /* counters */
    uint64_t created, closed, acquires, acquire_timeouts, connect_failures, discarded, resets,
        leaks, recycles;
    uint64_t lat[DBK_POOL_LATENCY_BUCKETS];

    /* lifecycle */
    bool closing;
    bool stop_worker;
    bool worker_started;
    bool orphaned; /* close returned with connections still lent: last release frees */
    pthread_t worker;
    uint64_t rng;

    /* auto-pipelining (pool_pipe.c) */
    bool auto_pipeline;
    uint64_t pipelines, pipelined;
    int pipe_cap;    /* pipeline_conns: 0 none */
    int n_pipe_busy; /* connections lent to plain statements (slot.pipe) */

    /* SQLite write gate */
    bool use_gate;
    int gate_timeout_ms;
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cv;
    struct slot *gate_owner;
};

void dbk__pool_idle_remove(dbk_pool *p, struct slot *s);

void dbk__pool_wq_remove(dbk_pool *p, struct waiter *w);

int dbk__pool_capacity_used(const dbk_pool *p);

void dbk__pool_give_slot(dbk_pool *p, struct slot *s, int64_t now);

void dbk__pool_fail_all_waiters(dbk_pool *p, const dbk_error *e);

void dbk__pool_wake_worker(dbk_pool *p);

/* True for connect failures a failover or restart causes. */
static inline bool dbk__pool_connect_err_passing(dbk_rc rc)
{
    return rc == DBK_EUNAVAILABLE || rc == DBK_ECONN_LOST || rc == DBK_ETIMEOUT ||
           rc == DBK_EREADONLY;
}

void dbk__pool_report_error_h(const dbk_pool_hooks *h, dbk_log_level level, const dbk_error *e);

void dbk__pool_report_error(dbk_pool *p, dbk_log_level level, const dbk_error *e);

void dbk__pool_close_slot(dbk_pool *p, struct slot *s);

uint64_t dbk__pool_rng_next(uint64_t *st);

dbk_rc dbk__pool_open_slot(dbk_pool *p, const dbk_pool_hooks *h, struct slot **out,
                        dbk_error *err);

void dbk__pool_format_site(char *buf, size_t n, const struct site *st, int64_t held_ms);

const char *dbk__pool_first_token(const char *sql);

void dbk__pool_gate_leave(dbk_pool *p, struct slot *s);

void *dbk__pool_worker_main(void *arg);

void dbk__pool_count_latency(dbk_pool *p, int64_t ns);

void dbk__pool_busy_push(dbk_pool *p, struct slot *s);

void dbk__pool_busy_remove(dbk_pool *p, struct slot *s);

void dbk__pool_wq_push(dbk_pool *p, struct waiter *w);

bool dbk__pool_forked(const dbk_pool *p);

dbk_rc dbk__pool_fork_error(const dbk_pool *p, dbk_error *err);

dbk_rc dbk__pool_run_on_connect(const dbk_pool_hooks *h, struct slot *s, dbk_error *err);

void dbk__pool_free_pool(dbk_pool *p);

dbk_rc dbk__pool_acquire(dbk_pool *p, const struct site *site, dbk_conn **out, dbk_error *err);

/* As dbk__pool_acquire, but while every connection is busy the caller's
 * statement may be taken into the pipeline of a caller that holds one: then
 * *rode is set, *out stays NULL and req->item holds the outcome. */
dbk_rc dbk__pool_acquire_or_ride(dbk_pool *p, const struct site *site, struct pipe_req *req,
                                 dbk_conn **out, bool *rode, dbk_error *err);

/* The pool's dbk_db run with auto-pipelining (pool_pipe.c). */
dbk_rc dbk__pool_pipe_run(dbk_pool *p, const char *sql, const dbk_value *params, size_t nparams,
                          dbk_result **out, int64_t *affected, dbk_error *err);

/* Runs statements of several callers in one pipeline on the lent
 * connection c, noting failures as a statement of its own would
 * (pool_lent.c). */
void dbk__pool_lent_pipeline(dbk_conn *c, dbk__batch_item *items, size_t n);


void dbk__pool_release(dbk_pool *p, dbk_conn *c, bool force_reset);

/* The executor of a lent connection (pool_lent.c). */
extern const struct dbk__db_ops dbk__pool_conn_ops;

#endif
