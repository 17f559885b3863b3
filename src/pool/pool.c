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
#include "../core/sqlscan.h"
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

static struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

#define MS(x) ((int64_t)(x) * 1000000LL)

/* ---- structures ---- */

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
};

/* A doubly linked list of slots with its length (the idle and busy lists). */
struct slot_list {
    struct slot *head, *tail;
    int n;
};

struct waiter {
    pthread_cond_t cv;
    struct waiter *prev, *next;
    struct site site;
    struct slot *slot; /* set on hand-off */
    dbk_rc rc;         /* set on failure */
    dbk_error e;
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

    /* SQLite write gate */
    bool use_gate;
    int gate_timeout_ms;
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cv;
    struct slot *gate_owner;
};

static const int64_t lat_bounds_us[DBK_POOL_LATENCY_BUCKETS] = {
    50, 250, 1000, 5000, 10000, 50000, 100000, 500000, 1000000, INT64_MAX};

static void count_latency(dbk_pool *p, int64_t ns)
{
    int64_t us = ns / 1000;
    int i = 0;
    while (i < DBK_POOL_LATENCY_BUCKETS - 1 && us > lat_bounds_us[i])
        i++;
    p->lat[i]++;
}

/* ---- statement classification ---- */

/* Every statement on a lent connection is read with the shared scanner
 * (src/core/sqlscan.c), by the rules of the engine that runs it, so that
 * quotes and comments neither hide a session change nor invent one. */

static void scan_sql(dbk__sqlscan *sc, const char *sql, dbk_engine engine)
{
    dbk__sqlscan_init(sc, sql, strlen(sql), 1, dbk__sqlscan_rules(engine));
}

/* The statement text from its first token on (for messages). */
static const char *first_token(const char *sql)
{
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_POSTGRES);
    return dbk__sqlscan_next(&sc) == DBK__SQLTOK_ERROR ? sql : sql + sc.off;
}

/* What a word can mean to the detector (bits). */
enum {
    K_PG_VERB = 1 << 0,     /* leads a PostgreSQL statement that changes the session */
    K_SQ_VERB = 1 << 1,     /* same on SQLite */
    K_PG_FUNC = 1 << 2,     /* a PostgreSQL function whose call changes the session or runs
                               SQL given as a string */
    K_SQ_FUNC = 1 << 3,     /* same on SQLite */
    K_SET = 1 << 4,         /* SET (PostgreSQL) */
    K_CREATE = 1 << 5,      /* CREATE */
    K_DECLARE = 1 << 6,     /* DECLARE (PostgreSQL) */
    K_TX_SCOPED = 1 << 7,   /* SET <this>: ends with the transaction */
    K_BEFORE_TEMP = 1 << 8, /* TEMP after this makes a temporary object */
    K_TEMP = 1 << 9,        /* TEMP, TEMPORARY */
    K_WITH = 1 << 10,
    K_HOLD = 1 << 11,
    K_PG_TEMP = 1 << 12,    /* pg_temp (a schema name) */
    K_SQ_TEMP = 1 << 13,    /* temp (a schema name on SQLite) */
};

static const struct keyword {
    const char *w;
    unsigned roles;
} KEYWORDS[] = {
    {"reset", K_PG_VERB},
    {"discard", K_PG_VERB},
    {"prepare", K_PG_VERB},
    {"listen", K_PG_VERB},
    {"do", K_PG_VERB},
    {"load", K_PG_VERB},
    {"pragma", K_SQ_VERB},
    {"attach", K_SQ_VERB},
    {"detach", K_SQ_VERB},
    {"set_config", K_PG_FUNC},
    {"pg_advisory_lock", K_PG_FUNC},
    {"pg_advisory_lock_shared", K_PG_FUNC},
    {"pg_try_advisory_lock", K_PG_FUNC},
    {"pg_try_advisory_lock_shared", K_PG_FUNC},
    {"query_to_xml", K_PG_FUNC},
    {"query_to_xmlschema", K_PG_FUNC},
    {"query_to_xml_and_xmlschema", K_PG_FUNC},
    {"dblink_connect", K_PG_FUNC},
    {"dblink_connect_u", K_PG_FUNC},
    {"load_extension", K_SQ_FUNC},
    {"set", K_SET},
    {"create", K_CREATE | K_BEFORE_TEMP},
    {"declare", K_DECLARE},
    {"local", K_TX_SCOPED | K_BEFORE_TEMP},
    {"transaction", K_TX_SCOPED},
    {"constraints", K_TX_SCOPED},
    {"replace", K_BEFORE_TEMP},
    {"global", K_BEFORE_TEMP},
    {"into", K_BEFORE_TEMP},
    {"temp", K_TEMP | K_SQ_TEMP},
    {"temporary", K_TEMP},
    {"with", K_WITH},
    {"hold", K_HOLD},
    {"pg_temp", K_PG_TEMP},
};

#define KW_MAXLEN 32
#define NKEYWORDS (sizeof KEYWORDS / sizeof KEYWORDS[0])

/* kw_first[n]: bit (c - 'a') set when a keyword of length n starts with c.
 * Most words of a statement (SELECT, FROM, column names) fail this test;
 * the others are compared with the at most KW_PER_SLOT keywords of their
 * length and first letter. */
#define KW_PER_SLOT 3
static uint32_t kw_first[KW_MAXLEN];
static uint8_t kw_slot[KW_MAXLEN][26][KW_PER_SLOT]; /* index + 1 into KEYWORDS; 0: none */
static pthread_once_t kw_once = PTHREAD_ONCE_INIT;

static void kw_init(void)
{
    for (size_t i = 0; i < NKEYWORDS; i++) {
        size_t n = strlen(KEYWORDS[i].w);
        unsigned c = (unsigned)(KEYWORDS[i].w[0] - 'a');
        kw_first[n] |= 1u << c;
        for (int k = 0; k < KW_PER_SLOT; k++) {
            if (!kw_slot[n][c][k]) {
                kw_slot[n][c][k] = (uint8_t)(i + 1);
                break;
            }
        }
    }
}

static inline char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* The roles of the word w[0, n) (any case; 0 for none). */
static unsigned kw_match(const char *w, size_t n)
{
    unsigned c = (unsigned)(unsigned char)ascii_lower(w[0]) - 'a';
    if (n == 0 || n >= KW_MAXLEN || c >= 26 || !(kw_first[n] & (1u << c)))
        /* pg_temp_3: the temporary schema by its own name */
        return n > 8 && strncasecmp(w, "pg_temp_", 8) == 0 ? K_PG_TEMP : 0;
    for (int k = 0; k < KW_PER_SLOT && kw_slot[n][c][k]; k++) {
        const struct keyword *kw = &KEYWORDS[kw_slot[n][c][k] - 1];
        size_t i = 1;
        while (i < n && ascii_lower(w[i]) == kw->w[i])
            i++;
        if (i == n)
            return kw->roles;
    }
    return n > 8 && strncasecmp(w, "pg_temp_", 8) == 0 ? K_PG_TEMP : 0;
}

/* The roles of the current WORD or QNAME token (0 for anything else). */
static unsigned kw_roles(const dbk__sqlscan *sc)
{
    const char *p = sc->text + sc->off;
    if (sc->tok == DBK__SQLTOK_WORD)
        return kw_match(p, sc->n);
    if (sc->tok != DBK__SQLTOK_QNAME)
        return 0;
    char buf[KW_MAXLEN];
    size_t n = 0;
    char q = p[0];
    for (size_t i = 1; i + 1 < sc->n; i++) {
        if (n == KW_MAXLEN - 1)
            return 0;
        buf[n++] = p[i];
        if (q != '[' && p[i] == q)
            i++; /* a doubled quote stands for one */
    }
    return kw_match(buf, n);
}

static inline bool word_byte(unsigned char c)
{
    return dbk__sqlscan_cls[c] & DBK__SQLSCAN_C_TAG;
}

/* Could w[0, n) be a keyword? (one shift and mask for most words) */
static inline bool kw_candidate(const char *w, size_t n)
{
    unsigned c = (unsigned)(((unsigned char)w[0] | 0x20) - 'a');
    if (n >= KW_MAXLEN)
        return c == 'p' - 'a'; /* pg_temp_<n> */
    return c < 26 && ((kw_first[n] >> c & 1) || (n > 8 && c == 'p' - 'a'));
}

/* The fast path: every way a statement changes the session needs one of
 * the `needed` words (a leading verb, SET, a function, TEMP, HOLD, a
 * temporary schema) or a U&"..." name. Runs of letters, digits, '_' and
 * bytes >= 0x80 cut from the raw text, quotes and comments included, are a
 * superset of the words the scanner would find (a word of the scanner is
 * such a run, or contains '$' and then holds more runs), so when none of
 * them is needed the scan cannot flag anything and is skipped. */
static bool may_change_session(const char *sql, unsigned needed)
{
    const unsigned char *p = (const unsigned char *)sql;
    for (;;) {
        while (*p && !word_byte(*p)) {
            if (*p == '&')
                return true;
            p++;
        }
        if (!*p)
            return false;
        const unsigned char *w = p;
        while (word_byte(*p))
            p++;
        size_t n = (size_t)(p - w);
        if (kw_candidate((const char *)w, n) && (kw_match((const char *)w, n) & needed))
            return true;
    }
}

enum { LEAD_NONE, LEAD_OTHER, LEAD_SET, LEAD_CREATE, LEAD_DECLARE };

bool dbk__pool_sql_changes_session(const char *sql, dbk_engine engine)
{
    if (!sql)
        return false;
    pthread_once(&kw_once, kw_init);
    const bool pg = engine != DBK_ENGINE_SQLITE;
    const unsigned verb = pg ? K_PG_VERB : K_SQ_VERB, func = pg ? K_PG_FUNC : K_SQ_FUNC;
    const unsigned temp_schema = pg ? K_PG_TEMP : K_SQ_TEMP;
    if (!may_change_session(sql, verb | func | temp_schema | K_TEMP |
                                     (pg ? K_SET | K_HOLD : 0)))
        return false;
    dbk__sqlscan sc;
    scan_sql(&sc, sql, engine);
    int lead = LEAD_NONE, pos = 0;
    bool set_scoped = false; /* SET LOCAL ...: unless the next token is '.' */
    unsigned prev = 0;       /* roles of the previous token */
    bool prev_uname = false; /* the previous token was a U&"..." name */
    for (;;) {
        dbk__sqltok tok = dbk__sqlscan_next(&sc);
        if (tok == DBK__SQLTOK_ERROR)
            return true; /* unreadable: assume the worst, it only costs a reset */
        if (tok == DBK__SQLTOK_END)
            return false;
        if (tok == DBK__SQLTOK_SEMI) {
            lead = LEAD_NONE;
            pos = 0;
            set_scoped = prev_uname = false;
            prev = 0;
            continue;
        }
        unsigned k = kw_roles(&sc);
        bool word = tok == DBK__SQLTOK_WORD;
        if (!word)
            k &= func | temp_schema; /* a quoted name is never a keyword */
        if (pos == 0) {
            lead = LEAD_OTHER;
            if (k & verb)
                return true;
            if (pg && (k & K_SET))
                lead = LEAD_SET;
            else if (k & K_CREATE)
                lead = LEAD_CREATE;
            else if (pg && (k & K_DECLARE))
                lead = LEAD_DECLARE;
        } else if (lead == LEAD_SET && pos == 1) {
            if (!(k & K_TX_SCOPED))
                return true;
            set_scoped = true;
        } else if (set_scoped && pos == 2) {
            if (dbk__sqlscan_punct(&sc, '.'))
                return true; /* SET local.x = ...: a setting named local.x */
            set_scoped = false;
        }
        if (tok == DBK__SQLTOK_PUNCT) {
            char ch = sql[sc.off];
            if (ch == '(' && ((prev & func) || prev_uname))
                return true;
            if (ch == '.' && (prev & temp_schema))
                return true;
        }
        if ((k & K_TEMP) && (lead == LEAD_CREATE || (prev & K_BEFORE_TEMP)))
            return true;
        if (lead == LEAD_DECLARE && (prev & K_WITH) && (k & K_HOLD))
            return true;
        /* U&"..." names may spell anything with escapes: any call counts. */
        prev_uname = pg && tok == DBK__SQLTOK_QNAME && sc.off > 0 && sql[sc.off - 1] == '&';
        prev = k;
        pos++;
    }
}

bool dbk__pool_sql_is_plain_begin(const char *sql)
{
    if (!sql)
        return false;
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_SQLITE);
    dbk__sqlscan_next(&sc);
    if (!dbk__sqlscan_is(&sc, "begin"))
        return false;
    dbk__sqlscan_next(&sc);
    if (dbk__sqlscan_is(&sc, "transaction"))
        dbk__sqlscan_next(&sc);
    if (sc.tok == DBK__SQLTOK_SEMI)
        dbk__sqlscan_next(&sc);
    return sc.tok == DBK__SQLTOK_END;
}

bool dbk__pool_sql_is_read(const char *sql)
{
    if (!sql)
        return false;
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_SQLITE);
    dbk__sqlscan_next(&sc);
    return dbk__sqlscan_is(&sc, "select") || dbk__sqlscan_is(&sc, "values") ||
           dbk__sqlscan_is(&sc, "explain");
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
}

static void idle_remove(dbk_pool *p, struct slot *s)
{
    list_remove(&p->idle, s);
}

static void busy_push(dbk_pool *p, struct slot *s)
{
    list_push(&p->busy, s);
    s->busy = true;
}

static void busy_remove(dbk_pool *p, struct slot *s)
{
    list_remove(&p->busy, s);
    s->busy = false;
}

static void wq_push(dbk_pool *p, struct waiter *w)
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

static void wq_remove(dbk_pool *p, struct waiter *w)
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

static int capacity_used(const dbk_pool *p)
{
    return p->idle.n + p->busy.n + p->n_opening + p->n_closing;
}

static bool forked(const dbk_pool *p)
{
    return dbk__owner_forked(&p->owner);
}

static dbk_rc fork_error(const dbk_pool *p, dbk_error *err)
{
    return dbk__owner_error(&p->owner, "pool", err);
}

/* Lends slot s to the head waiter, or puts it on the idle list. */
static void give_slot(dbk_pool *p, struct slot *s, int64_t now)
{
    struct waiter *w = p->wq_head;
    if (w) {
        wq_remove(p, w);
        s->site = w->site;
        s->acquired_ns = now;
        s->leak_reported = false;
        busy_push(p, s);
        w->slot = s;
        w->done = true;
        pthread_cond_signal(&w->cv);
        return;
    }
    s->idle_since_ns = now;
    idle_push(p, s);
}

/* Fails every waiter with a copy of e. */
static void fail_all_waiters(dbk_pool *p, const dbk_error *e)
{
    while (p->wq_head) {
        struct waiter *w = p->wq_head;
        wq_remove(p, w);
        w->e = *e;
        w->rc = e->code;
        w->done = true;
        pthread_cond_signal(&w->cv);
    }
}

static void wake_worker(dbk_pool *p)
{
    pthread_cond_signal(&p->worker_cv);
}

/* ---- reporting (no lock held) ---- */

static void report_error_h(const dbk_pool_hooks *h, dbk_log_level level, const dbk_error *e)
{
    dbk__log(level, "pool: %s: %s", dbk_rc_name(e->code), e->message);
    if (h->on_error)
        h->on_error(h->ctx, e);
}

/* From a thread that synchronized with dbk_pool_set_hooks() through the
 * pool lock (any caller of the pool); the background thread uses its own
 * copy taken under the lock. */
static void report_error(dbk_pool *p, dbk_log_level level, const dbk_error *e)
{
    report_error_h(&p->hooks, level, e);
}

/* ---- opening and closing connections (no lock held) ---- */

static const struct dbk__db_ops pooled_conn_ops;

/* Closes a connection that is in no list, restoring its own executor. In
 * a forked child nothing is touched. */
static void close_slot(dbk_pool *p, struct slot *s)
{
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

static dbk_rc run_on_connect(const dbk_pool_hooks *h, struct slot *s, dbk_error *err)
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

static uint64_t rng_next(uint64_t *st)
{
    uint64_t x = *st;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *st = x;
    return x;
}

/* Opens one connection for the pool (worker thread). */
static dbk_rc open_slot(dbk_pool *p, const dbk_pool_hooks *h, struct slot **out,
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
    c->db.ops = &pooled_conn_ops;
    c->pool_slot = s;
    rc = run_on_connect(h, s, err);
    if (rc != DBK_OK) {
        close_slot(p, s);
        return rc;
    }
    *out = s;
    return DBK_OK;
}

/* ---- the SQLite write gate ---- */

static dbk_rc gate_enter(dbk_pool *p, struct slot *s, dbk_error *err)
{
    if (s->gate_held)
        return DBK_OK;
    dbk_rc rc = DBK_OK;
    pthread_mutex_lock(&p->gate_mu);
    if (p->gate_owner) {
        int64_t deadline = dbk__now_ns() + MS(p->gate_timeout_ms);
        struct timespec ts = ns_to_ts(deadline);
        while (p->gate_owner) {
            int w = pthread_cond_timedwait(&p->gate_cv, &p->gate_mu, &ts);
            if (w == ETIMEDOUT && p->gate_owner) {
                rc = dbk__err(err, DBK_EBUSY,
                              "sqlite write lock still held by another pooled connection "
                              "after %d ms",
                              p->gate_timeout_ms);
                dbk__err_hint(err, "keep write transactions short, or raise busy_timeout");
                break;
            }
        }
    }
    if (rc == DBK_OK) {
        p->gate_owner = s;
        s->gate_held = true;
    }
    pthread_mutex_unlock(&p->gate_mu);
    return rc;
}

static void gate_leave(dbk_pool *p, struct slot *s)
{
    if (!s->gate_held)
        return;
    pthread_mutex_lock(&p->gate_mu);
    if (p->gate_owner == s)
        p->gate_owner = NULL;
    s->gate_held = false;
    pthread_cond_signal(&p->gate_cv);
    pthread_mutex_unlock(&p->gate_mu);
}

/* ---- the executor of a lent connection ---- */

static struct slot *slot_of_db(dbk_db *db)
{
    dbk_conn *c = (dbk_conn *)(void *)((char *)db - offsetof(struct dbk_conn, db));
    return c->pool_slot;
}

/* What a failed statement says about its connection and the pool. */
static void note_failure(dbk_pool *p, struct slot *s, dbk_rc rc, const dbk_error *err)
{
    if (rc == DBK_ECONN_LOST) {
        s->broken = true;
        __atomic_add_fetch(&p->suspect_epoch, 1, __ATOMIC_RELAXED);
    } else if (rc == DBK_EREADONLY && p->engine == DBK_ENGINE_POSTGRES) {
        pthread_mutex_lock(&p->mu);
        bool bump = s->gen == p->generation; /* one bump per generation */
        if (bump) {
            p->generation++;
            p->recycles++;
            wake_worker(p);
        }
        pthread_mutex_unlock(&p->mu);
        if (bump) {
            dbk_error e;
            dbk__err(&e, DBK_EREADONLY,
                     "a write failed because the server is read-only (%s): recycling every "
                     "pooled connection",
                     err && err->message[0] ? err->message : "SQLSTATE 25006");
            dbk__err_hint(&e, "the pool reached a standby (failover?); list every host in "
                              "DATABASE_URL with target_session_attrs=read-write");
            report_error(p, DBK_LOG_WARN, &e);
        }
    }
}

static dbk_rc pc_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    dbk_rc rc;

    if (!s->dirty && dbk__pool_sql_changes_session(sql, p->engine))
        s->dirty = true;
    if (p->engine == DBK_ENGINE_POSTGRES) {
        rc = s->orig_ops->run(db, sql, params, nparams, out, affected, err);
        if (rc != DBK_OK)
            note_failure(p, s, rc, err);
        return rc;
    }

    /* SQLite: the optional write gate, then bounded retry of busy
     * autocommit statements. A plain BEGIN becomes BEGIN IMMEDIATE: the
     * write lock is taken (and waited for, and retried) while nothing has
     * happened yet, instead of failing with SQLITE_BUSY in the middle of
     * the transaction. */
    bool gated = p->use_gate && !dbk__pool_sql_is_read(sql);
    if (dbk__pool_sql_is_plain_begin(sql))
        sql = "BEGIN IMMEDIATE";
    bool was_idle = c->drv->txstate(c->impl) == DBK__TX_IDLE;
    int64_t deadline = 0;
    int64_t backoff_us = 500;
    for (;;) {
        if (gated && !s->gate_held) {
            rc = gate_enter(p, s, err);
            if (rc != DBK_OK)
                return rc;
        }
        rc = s->orig_ops->run(db, sql, params, nparams, out, affected, err);
        dbk__txstate ts = c->drv->txstate(c->impl);
        if (s->gate_held && ts == DBK__TX_IDLE)
            gate_leave(p, s);
        if (rc != DBK_EBUSY || !was_idle || ts != DBK__TX_IDLE)
            break;
        int64_t now = dbk__now_ns();
        if (!deadline)
            deadline = now + MS(p->gate_timeout_ms);
        if (now >= deadline)
            break;
        if (out && *out) {
            dbk_result_free(*out);
            *out = NULL;
        }
        int64_t sleep_ns = backoff_us * 1000;
        if (sleep_ns > deadline - now)
            sleep_ns = deadline - now;
        struct timespec req = ns_to_ts(sleep_ns);
        nanosleep(&req, NULL);
        if (backoff_us < 16000)
            backoff_us *= 2;
    }
    if (rc != DBK_OK)
        note_failure(p, s, rc, err);
    return rc;
}

static dbk_rc pc_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    dbk_rc rc;
    if (!s->dirty && dbk__pool_sql_changes_session(sql, p->engine))
        s->dirty = true;
    if (p->engine == DBK_ENGINE_POSTGRES) {
        rc = s->orig_ops->script(db, sql, timeout_ms, err);
    } else {
        if (p->use_gate) {
            rc = gate_enter(p, s, err);
            if (rc != DBK_OK)
                return rc;
        }
        rc = s->orig_ops->script(db, sql, timeout_ms, err);
        if (s->gate_held && c->drv->txstate(c->impl) == DBK__TX_IDLE)
            gate_leave(p, s);
    }
    if (rc != DBK_OK)
        note_failure(p, s, rc, err);
    return rc;
}

static dbk_rc pc_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    return s->orig_ops->pin(db, out, err);
}

static void pc_unpin(dbk_db *db, dbk_conn *conn)
{
    struct slot *s = slot_of_db(db);
    s->orig_ops->unpin(db, conn);
}

/* A batch on a pooled connection: PostgreSQL sends it in one pipeline and
 * the failures are noted as pc_run would (a lost connection is discarded,
 * a read-only server recycles the pool); SQLite runs it statement by
 * statement through pc_run, so the write gate and busy retry apply. */
static dbk_rc pc_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    if (p->engine != DBK_ENGINE_POSTGRES)
        return dbk__batch_serial(db, items, n, atomic, c->drv->txstate(c->impl) != DBK__TX_IDLE);
    for (size_t i = 0; i < n && !s->dirty; i++)
        if (dbk__pool_sql_changes_session(items[i].sql, p->engine))
            s->dirty = true;
    dbk_rc rc = s->orig_ops->batch(db, items, n, atomic);
    if (rc != DBK_OK) {
        bool lost = false, ro = false;
        for (size_t i = 0; i < n; i++) {
            if (items[i].rc == DBK_ECONN_LOST && !lost) {
                lost = true;
                note_failure(p, s, DBK_ECONN_LOST, items[i].err);
            } else if (items[i].rc == DBK_EREADONLY && !ro) {
                ro = true;
                note_failure(p, s, DBK_EREADONLY, items[i].err);
            }
        }
    }
    return rc;
}

static dbk_rc pc_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_rc rc = s->orig_ops->copy_in(db, sql, fill, ctx, rows, err);
    if (rc != DBK_OK)
        note_failure(s->pool, s, rc, err);
    return rc;
}

static const struct dbk__db_ops pooled_conn_ops = {pc_run,   pc_script, pc_pin,
                                                   pc_unpin, pc_batch,  pc_copy_in};

/* ---- the timeout message ---- */

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static void format_site(char *buf, size_t n, const struct site *st, int64_t held_ms)
{
    if (st->sql) {
        char sql[40];
        size_t i = 0;
        for (const char *q = first_token(st->sql); *q && i < sizeof sql - 1; q++)
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
            format_site(one, sizeof one, &s->site, (now - s->acquired_ns) / 1000000);
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

/* ---- acquire ---- */

static dbk_rc acquire(dbk_pool *p, const struct site *site, dbk_conn **out, dbk_error *err)
{
    if (forked(p))
        return fork_error(p, err);
    int64_t t0 = 0; /* precise start, read lazily: the fast path does not need it */
    dbk_rc rc;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->closing) {
            pthread_mutex_unlock(&p->mu);
            return dbk__err(err, DBK_EPOOL_CLOSED, "the connection pool is closed");
        }
        struct slot *s = p->idle.head;
        if (s) {
            idle_remove(p, s);
            int64_t now = coarse_now_ns();
            if (s->gen != p->generation || (s->retire_ns && now >= s->retire_ns)) {
                if (!t0)
                    t0 = dbk__now_ns();
                p->n_closing++;
                pthread_mutex_unlock(&p->mu);
                close_slot(p, s);
                pthread_mutex_lock(&p->mu);
                p->n_closing--;
                p->closed++;
                wake_worker(p);
                continue;
            }
            s->site = *site;
            s->acquired_ns = now;
            s->leak_reported = false;
            busy_push(p, s);
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
                    busy_remove(p, s);
                    p->n_closing++;
                    p->discarded++;
                    pthread_mutex_unlock(&p->mu);
                    dbk_error e;
                    dbk__err(&e, prc, "discarding a pooled connection that failed validation: %s",
                             pe.message);
                    report_error(p, DBK_LOG_INFO, &e);
                    close_slot(p, s);
                    pthread_mutex_lock(&p->mu);
                    p->n_closing--;
                    p->closed++;
                    wake_worker(p);
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
                count_latency(p, dbk__now_ns() - t0);
            else
                p->lat[0]++;
            pthread_mutex_unlock(&p->mu);
            if (p->hooks.on_acquire)
                p->hooks.on_acquire(p->hooks.ctx, s->conn);
            *out = s->conn;
            return DBK_OK;
        }

        /* Nothing idle. */
        if (p->breaker_until_ns && coarse_now_ns() < p->breaker_until_ns) {
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
        pthread_cond_init(&w.cv, &p->cattr);
        w.site = *site;
        wq_push(p, &w);
        p->n_wait_threads++;
        if (capacity_used(p) < p->o.max_size)
            wake_worker(p);
        struct timespec ts = ns_to_ts(deadline);
        while (!w.done) {
            int wr = pthread_cond_timedwait(&w.cv, &p->mu, &ts);
            if (wr == ETIMEDOUT && !w.done)
                break;
        }
        pthread_cond_destroy(&w.cv);
        p->n_wait_threads--;
        if (p->closing)
            pthread_cond_broadcast(&p->drain_cv);
        if (!w.done) {
            wq_remove(p, &w);
            p->acquire_timeouts++;
            rc = timeout_error(p, (dbk__now_ns() - t0) / 1000000, err);
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
        s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
        p->acquires++;
        count_latency(p, dbk__now_ns() - t0);
        pthread_mutex_unlock(&p->mu);
        if (p->hooks.on_acquire)
            p->hooks.on_acquire(p->hooks.ctx, s->conn);
        *out = s->conn;
        return DBK_OK;
    }
}

dbk_rc dbk_pool_acquire_at(dbk_pool *pool, const char *file, int line, const char *func,
                           dbk_conn **out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_acquire: pool and out must not be NULL");
    *out = NULL;
    struct site st = {file ? file : "?", func, NULL, line};
    return acquire(pool, &st, out, err);
}

/* ---- release ---- */

static void free_pool(dbk_pool *p);

static void release(dbk_pool *p, dbk_conn *c, bool force_reset)
{
    if (!p || !c)
        return;
    if (forked(p)) {
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
                rc = run_on_connect(&p->hooks, s, &e);
            }
            if (rc != DBK_OK)
                discard = true;
        }
    } else {
        dbk__err(&e, DBK_ECONN_LOST, "discarding a pooled connection whose server went away");
    }
    if (s->gate_held)
        gate_leave(p, s);

    int64_t now = coarse_now_ns();
    pthread_mutex_lock(&p->mu);
    busy_remove(p, s);
    if (did_reset)
        p->resets++;
    if (discard || s->gen != p->generation || (s->retire_ns && now >= s->retire_ns) ||
        p->closing) {
        p->n_closing++;
        if (discard)
            p->discarded++;
        pthread_mutex_unlock(&p->mu);
        if (discard)
            report_error(p, DBK_LOG_INFO, &e);
        close_slot(p, s);
        pthread_mutex_lock(&p->mu);
        p->n_closing--;
        p->closed++;
        bool free_now = false;
        if (p->closing) {
            pthread_cond_broadcast(&p->drain_cv);
            free_now = p->orphaned && p->busy.n == 0 && p->n_closing == 0 &&
                       p->n_wait_threads == 0;
        } else {
            wake_worker(p);
        }
        pthread_mutex_unlock(&p->mu);
        if (free_now)
            free_pool(p);
        return;
    }
    s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
    give_slot(p, s, now);
    pthread_mutex_unlock(&p->mu);
}

void dbk_pool_release(dbk_pool *pool, dbk_conn *conn)
{
    release(pool, conn, false);
}

void dbk_pool_release_reset(dbk_pool *pool, dbk_conn *conn)
{
    release(pool, conn, true);
}

/* ---- the pool's dbk_db ---- */

static dbk_rc pdb_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                      dbk_result **out, int64_t *affected, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->run(&c->db, sql, params, nparams, out, affected, err);
    release(p, c, false);
    return rc;
}

static dbk_rc pdb_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db script", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->script(&c->db, sql, timeout_ms, err);
    release(p, c, false);
    return rc;
}

static dbk_rc pdb_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db pin (transaction)", NULL, NULL, 0};
    return acquire(p, &st, out, err);
}

static void pdb_unpin(dbk_db *db, dbk_conn *conn)
{
    release(db->self, conn, false);
}

static dbk_rc pdb_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_batch_run", NULL, n ? items[0].sql : NULL, 0};
    dbk_conn *c = NULL;
    dbk_error e;
    dbk_rc rc = acquire(p, &st, &c, &e);
    if (rc != DBK_OK) {
        for (size_t i = 0; i < n; i++)
            dbk__batch_fail(&items[i], rc, &e);
        return rc;
    }
    rc = c->db.ops->batch(&c->db, items, n, atomic);
    release(p, c, false);
    return rc;
}

static dbk_rc pdb_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                          int64_t *rows, dbk_error *err)
{
    dbk_pool *p = db->self;
    struct site st = {"dbk_db copy", NULL, sql, 0};
    dbk_conn *c = NULL;
    dbk_rc rc = acquire(p, &st, &c, err);
    if (rc != DBK_OK)
        return rc;
    rc = c->db.ops->copy_in(&c->db, sql, fill, ctx, rows, err);
    release(p, c, false);
    return rc;
}

static const struct dbk__db_ops pool_db_ops = {pdb_run,   pdb_script, pdb_pin,
                                               pdb_unpin, pdb_batch,  pdb_copy_in};

dbk_db *dbk_pool_db(dbk_pool *pool)
{
    return pool ? &pool->db : NULL;
}

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
            idle_remove(p, s);
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
    if (p->closing || capacity_used(p) >= p->o.max_size)
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

static void *worker_main(void *arg)
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
            dbk_rc rc = open_slot(p, &h, &s, &e);
            if (rc != DBK_OK) /* before any caller hears of it, outside the lock */
                report_error_h(&h, DBK_LOG_WARN, &e);
            pthread_mutex_lock(&p->mu);
            p->n_opening--;
            now = coarse_now_ns();
            if (rc == DBK_OK) {
                p->created++;
                p->consecutive_failures = 0;
                p->breaker_until_ns = 0;
                p->cooldown_ms = DBK_POOL_BREAKER_MIN_MS;
                s->gen = p->generation;
                s->created_ns = now;
                s->checked_epoch = __atomic_load_n(&p->suspect_epoch, __ATOMIC_RELAXED);
                if (p->o.max_lifetime_ms > 0) {
                    int64_t life = MS(p->o.max_lifetime_ms);
                    int64_t jitter = (int64_t)(rng_next(&p->rng) % (uint64_t)(life / 10 + 1));
                    s->retire_ns = now + life - jitter;
                }
                if (p->closing) {
                    p->n_closing++;
                    pthread_mutex_unlock(&p->mu);
                    close_slot(p, s);
                    pthread_mutex_lock(&p->mu);
                    p->n_closing--;
                    p->closed++;
                    pthread_cond_broadcast(&p->drain_cv);
                } else {
                    give_slot(p, s, now);
                }
                continue;
            }
            p->connect_failures++;
            p->consecutive_failures++;
            p->last_connect_err = e;
            bool trip = probe || p->consecutive_failures >= DBK_POOL_BREAKER_FAILURES;
            dbk_error be;
            if (trip) {
                int cd = p->cooldown_ms ? p->cooldown_ms : DBK_POOL_BREAKER_MIN_MS;
                p->breaker_until_ns = now + MS(cd);
                p->cooldown_ms = cd * 2 > DBK_POOL_BREAKER_MAX_MS ? DBK_POOL_BREAKER_MAX_MS
                                                                  : cd * 2;
                dbk__err(&be, DBK_EUNAVAILABLE,
                         "database unavailable: %d connects failed in a row (last: %s); "
                         "acquires fail fast for %d ms",
                         p->consecutive_failures, e.message, cd);
                dbk__err_hint(&be, "check that the server is running and the host and port in "
                                   "DATABASE_URL (`dbkit doctor`); the pool retries by itself");
                fail_all_waiters(p, &be);
            } else if (p->wq_head) {
                /* The caller this connect was for learns why it failed. */
                struct waiter *w = p->wq_head;
                wq_remove(p, w);
                w->e = e;
                if (!w->e.hint[0])
                    dbk__err_default_hint(&w->e);
                w->rc = rc;
                w->done = true;
                pthread_cond_signal(&w->cv);
            }
            if (trip) {
                pthread_mutex_unlock(&p->mu);
                report_error_h(&h, DBK_LOG_WARN, &be);
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
                format_site(where, sizeof where, &leaks[i].site, leaks[i].held_ms);
                dbk__log(DBK_LOG_WARN,
                         "pool: possible connection leak: held by %s, longer than "
                         "leak_threshold %d ms; every dbk_pool_acquire needs a "
                         "dbk_pool_release",
                         where, leak_ms);
            }
            for (int i = 0; i < ngone; i++)
                close_slot(p, gone[i]);
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

    dbk_pool_opts o = cfg->pool;
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
    p->use_gate = false; /* see the top of this file */
    p->gate_timeout_ms = cfg->busy_timeout_ms > 0 ? cfg->busy_timeout_ms : o.acquire_timeout_ms;

    pthread_mutex_init(&p->mu, NULL);
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

    if (pthread_create(&p->worker, NULL, worker_main, p) != 0) {
        free_pool(p);
        return dbk__err(err, DBK_EINTERNAL, "could not start the pool's background thread");
    }
    p->worker_started = true;
    *out = p;
    return DBK_OK;
}

static void free_pool(dbk_pool *p)
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
    if (forked(p))
        return; /* the parent's connections: forget them, never touch their sockets */

    pthread_mutex_lock(&p->mu);
    p->closing = true;
    p->stop_worker = true;
    dbk_error ce;
    dbk__err(&ce, DBK_EPOOL_CLOSED, "the connection pool closed while waiting");
    fail_all_waiters(p, &ce);
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
            format_site(one, sizeof one, &st, (now - s->acquired_ns) / 1000000);
            n += (size_t)snprintf(late + n, sizeof late - n, "%s%s", n ? ", " : "", one);
        }
    }
    pthread_mutex_unlock(&p->mu);

    while (idle) {
        struct slot *next = idle->next;
        close_slot(p, idle);
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
        free_pool(p);
}

/* ---- settings and stats ---- */

dbk_rc dbk_pool_set_hooks(dbk_pool *pool, const dbk_pool_hooks *hooks, dbk_error *err)
{
    if (!pool)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_set_hooks: pool must not be NULL");
    if (forked(pool))
        return fork_error(pool, err);
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

dbk_rc dbk_pool_stats_get(dbk_pool *pool, dbk_pool_stats *out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_stats: pool and out must not be NULL");
    if (forked(pool))
        return fork_error(pool, err);
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
    out->breaker_open = p->breaker_until_ns != 0 && coarse_now_ns() < p->breaker_until_ns;
    for (int i = 0; i < DBK_POOL_LATENCY_BUCKETS; i++) {
        out->latency_le_us[i] = lat_bounds_us[i];
        out->latency_count[i] = p->lat[i];
    }
    pthread_mutex_unlock(&p->mu);
    return DBK_OK;
}

dbk_rc dbk_pool_get_opts(const dbk_pool *pool, dbk_pool_opts *out, dbk_error *err)
{
    if (!pool || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_pool_get_opts: pool and out must not be NULL");
    *out = pool->o;
    return DBK_OK;
}
