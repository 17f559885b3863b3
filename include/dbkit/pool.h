/*
 * dbkit/pool.h - the connection pool.
 *
 * (Options are declared here first because the configuration carries them;
 * the pool API itself follows below.)
 *
 * Every option is an int where 0 means "use the default"; defaults live in
 * one table in src/core/config.c and are printed by `dbkit config`. A
 * negative value switches off the optional behaviours (idle_timeout_ms,
 * max_lifetime_ms, validate_after_ms, max_waiters, leak_threshold_ms).
 *
 * In a configuration (dbk_config_from*()), every field already holds its
 * effective value; for those optional behaviours, 0 from the URL, the
 * environment or dbk_config_set() means "off". Defaults: max_size 10,
 * min_idle 0, acquire 5000 ms, connect = the connect timeout (5000 ms),
 * idle 600000 ms, lifetime 1800000 ms, validate_after 30000 ms,
 * validate_timeout 1000 ms, max_waiters 1000, leak_threshold 0 (off).
 * Variables not named below: DB_POOL_VALIDATE_AFTER_MS,
 * DB_POOL_VALIDATE_TIMEOUT_MS, DB_POOL_MAX_WAITERS, DB_POOL_LEAK_THRESHOLD_MS.
 * The full table is in docs/configuration.md.
 */
#ifndef DBKIT_POOL_H
#define DBKIT_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The "off" of a dbk_pool_opts field whose configuration spells off as 0
 * (see the struct). */
#define DBK_POOL_OFF (-1)

/*
 * Pool options. Each field names, in parentheses, its environment variable
 * and/or its DATABASE_URL query parameter (the key dbk_config_set() takes).
 * A field left 0 takes the value of the configuration the pool is opened
 * with, which in turn falls back to the built-in default. Where the
 * configuration spells "off" as 0 (never, no limit, none), the field spells
 * it DBK_POOL_OFF, so that code can turn it off whatever the configuration
 * says; dbk_pool_get_opts() reports such a field that is off as
 * DBK_POOL_OFF too, so its result can be passed back to dbk_pool_open().
 */
typedef struct dbk_pool_opts {
    /* The struct's version: DBK_POOL_OPTS_VERSION, set by DBK_POOL_OPTS_INIT or
     * dbk_pool_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    int max_size;            /* most connections open at once (DB_POOL_MAX, pool_max) */
    int min_idle;            /* idle connections kept ready (DB_POOL_MIN_IDLE, pool_min_idle);
                                DBK_POOL_OFF: none */
    int acquire_timeout_ms;  /* longest wait for a connection (DB_ACQUIRE_TIMEOUT_MS, acquire_timeout) */
    int connect_timeout_ms;  /* longest wait to open one (DB_CONNECT_TIMEOUT_MS) */
    int idle_timeout_ms;     /* idle connections above min_idle close after this (DB_IDLE_TIMEOUT_MS, idle_timeout);
                                DBK_POOL_OFF: never */
    int max_lifetime_ms;     /* connections retire after this, with jitter (DB_MAX_LIFETIME_MS, max_lifetime);
                                DBK_POOL_OFF: never */
    int validate_after_ms;   /* ping a connection idle longer than this before lending it (validate_after);
                                DBK_POOL_OFF: never ping */
    int validate_timeout_ms; /* the ping's own deadline (validate_timeout) */
    int max_waiters;         /* acquires allowed to queue; more fail at once (pool_max_waiters);
                                DBK_POOL_OFF: no limit */
    int leak_threshold_ms;   /* a connection held longer is reported once (leak_threshold);
                                DBK_POOL_OFF: never reported (the built-in default) */
} dbk_pool_opts;

/* The version of dbk_pool_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_POOL_OPTS_VERSION 1
#define DBK_POOL_OPTS_INIT {.version = DBK_POOL_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_POOL_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_POOL_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_pool_opts_init(dbk_pool_opts *opts, unsigned int version, dbk_error *err);

/* ------------------------------------------------------------------------
 * The pool API.
 *
 * A dbk_pool owns up to max_size connections to one database and lends
 * them out. It is thread-safe: every function below may be called from any
 * thread at once, except dbk_pool_set_hooks() and
 * dbk_pool_set_reset_policy() (before the pool is shared) and
 * dbk_pool_close() (once; calls racing with it fail with DBK_EPOOL_CLOSED,
 * but none may start after it returned).
 *
 * Behaviour in short (docs/pool.md has the long form):
 *  - Waiters are served in arrival order; a released connection goes
 *    straight to the longest waiter.
 *  - An acquire never waits past acquire_timeout_ms (monotonic clock). The
 *    DBK_EPOOL_TIMEOUT message lists max / in use / idle / waiting and the
 *    current holders, longest-held first, with their call sites.
 *  - Connections are opened by one background thread per pool, which also
 *    keeps min_idle ready, retires idle and old connections and reports
 *    leaks. A caller never blocks on a connect longer than its own acquire
 *    timeout.
 *  - A connection that lost its server, failed validation or is in an
 *    unknown state is closed, never lent again. A PostgreSQL restart costs
 *    only the statements in flight.
 *  - DBK_EREADONLY (SQLSTATE 25006) on PostgreSQL means the pool reached a
 *    standby: every connection is recycled (closed when next idle).
 *  - During an outage (connects refused, unreachable, timed out, no
 *    read-write host yet: a restart or failover) callers wait, each until
 *    its acquire timeout, and are served when a connect succeeds; one whose
 *    timeout passes gets DBK_EUNAVAILABLE with the last connect error.
 *    Other connect errors (authentication, TLS) fail the caller at once.
 *    After DBK_POOL_BREAKER_FAILURES failures in a row the pool waits a
 *    cool-down between connects; while it lasts, acquires that need a new
 *    connection fail at once only if the outage is older than the acquire
 *    timeout (or not passing).
 *  - Released connections carry no state to the next borrower (see
 *    dbk_pool_release()).
 *  - Auto-pipelining (PostgreSQL, on unless DB_AUTO_PIPELINE=0): a plain
 *    query or DML statement run on dbk_pool_db() that finds every
 *    connection busy queues its statement instead of waiting for a
 *    connection of its own; the next caller to get a connection sends its
 *    statement and every queued one in one pipeline. Each keeps the
 *    semantics of a statement on its own: its own implicit transaction
 *    (a Sync after each), result, error and observer event. Transaction
 *    control, COPY, CALL, session changes, transactions and lent
 *    connections never ride. A queued statement leaves at the acquire
 *    timeout; one in flight waits for its answer under the statement
 *    timeout. Not behind pooler=transaction.
 *  - A pool used in a child process after fork() refuses with DBK_EMISUSE.
 *  - SQLite: readers run in parallel under WAL; writers wait for each other
 *    inside SQLite (busy_timeout); a plain "BEGIN" on a pooled connection
 *    runs as BEGIN IMMEDIATE, and an autocommit statement that still meets
 *    SQLITE_BUSY is retried within another busy_timeout. Concurrent writers
 *    and readers never see DBK_EBUSY unless a write waits that long.
 * ------------------------------------------------------------------------ */

typedef struct dbk_pool dbk_pool;
typedef struct dbk_config dbk_config;
typedef struct dbk_conn dbk_conn;
typedef struct dbk_db dbk_db;

/* Consecutive connect failures that open the circuit breaker. */
#define DBK_POOL_BREAKER_FAILURES 5
/* First cool-down of the open breaker; doubles while probes keep failing,
 * up to DBK_POOL_BREAKER_MAX_MS, and resets when a connect succeeds. */
#define DBK_POOL_BREAKER_MIN_MS 100
#define DBK_POOL_BREAKER_MAX_MS 500

/*
 * Opens a pool for `cfg` (copied; the caller may free it afterwards). With
 * `opts` NULL every option comes from the configuration; otherwise each
 * non-zero field of *opts overrides it. Connections are opened lazily by
 * the pool's background thread (min_idle of them right away); open itself
 * does not connect, so a database that is down does not fail it.
 *
 * On SQLite, ":memory:" databases get a pool of one connection (each
 * connection would see its own empty database).
 *
 * Returns DBK_OK with *out owned by the caller (dbk_pool_close), or
 * DBK_EMISUSE (NULL arguments), DBK_ECONFIG (a resolved option out of
 * range: max_size < 1, min_idle > max_size, ...), DBK_ENOMEM, DBK_EINTERNAL
 * (the background thread could not start).
 */
DBK_API dbk_rc dbk_pool_open(const dbk_config *cfg, const dbk_pool_opts *opts, dbk_pool **out,
                             dbk_error *err);

/*
 * Closes the pool gracefully. From the call on, acquires (and the pool's
 * dbk_db) fail with DBK_EPOOL_CLOSED and waiting acquires are woken with it.
 * Borrowed connections are waited for up to drain_timeout_ms (0: do not
 * wait; the wait is on the monotonic clock); then every idle connection is
 * closed. Connections still borrowed after the deadline are reported through
 * the logging hook (WARN, with their call sites) and closed when released;
 * the pool's memory goes with the last of them, so a late dbk_pool_release()
 * remains valid. Any other use of the handle after close is undefined.
 *
 * In a child process after fork() nothing is closed: the parent's sockets
 * and files are forgotten, never touched. Accepts NULL.
 */
DBK_API void dbk_pool_close(dbk_pool *pool, int drain_timeout_ms);

/*
 * The pool's executor: every call on it checks a connection out, runs the
 * statement and checks the connection back in. Safe from any number of
 * threads at once. Borrowed: valid until dbk_pool_close(). NULL for NULL.
 * Transactions on it (the tx layer) pin one connection for their duration.
 */
DBK_API dbk_db *dbk_pool_db(dbk_pool *pool);

/*
 * Checks a connection out: idle ones first (most recently used first),
 * else a new one if the pool is below max_size, else the caller queues
 * (first come, first served) for at most acquire_timeout_ms.
 *
 * `file`, `line` and `func` name the call site for the pool-timeout error
 * and leak reports; they must stay valid while the connection is held
 * (string literals). Use the dbk_pool_acquire() macro, which passes them.
 *
 * On DBK_OK *out is borrowed from the pool and belongs to the calling
 * thread until dbk_pool_release(); run SQL on dbk_conn_db(*out). Never
 * dbk_conn_close() a borrowed connection: release it. Errors:
 * DBK_EMISUSE (NULL arguments; a pool used after fork()), DBK_EPOOL_CLOSED,
 * DBK_EPOOL_TIMEOUT (the timeout passed, or max_waiters callers already
 * queue - the message says which), DBK_EUNAVAILABLE / DBK_EAUTH / ... (the
 * connect made for this caller failed, or the circuit breaker is open).
 */
DBK_API dbk_rc dbk_pool_acquire_at(dbk_pool *pool, const char *file, int line, const char *func,
                                   dbk_conn **out, dbk_error *err);

/* dbk_pool_acquire(pool, &conn, &err): dbk_pool_acquire_at() with the
 * caller's file, line and function. */
#define dbk_pool_acquire(pool, out, err) \
    dbk_pool_acquire_at((pool), __FILE__, __LINE__, __func__, (out), (err))

/*
 * Gives a connection back. What happens to it:
 *  - connection lost, broken, or in a state the driver cannot read: closed;
 *  - inside a transaction (open or failed): rolled back and its session
 *    reset by the driver (on PostgreSQL what DISCARD ALL does, in one
 *    round trip; on SQLite the settings of open time restored, temporary
 *    objects dropped, attached databases detached), then the on_connect
 *    hook runs again; if any of that fails: closed;
 *  - a statement that may change the session ran on it (SET, RESET,
 *    set_config(), PREPARE, LISTEN, temporary objects, WITH HOLD cursors,
 *    advisory locks, DO on PostgreSQL; PRAGMA, ATTACH, temporary objects on
 *    SQLite; read through quotes and comments, docs/pool.md has the list):
 *    reset as above. What a function does inside its body, and sequence
 *    state or last_insert_rowid(), is not detected: use
 *    dbk_pool_release_reset() or the DBK_POOL_RESET_ALWAYS policy;
 *  - retired (old generation after a failover, past max_lifetime, pool
 *    closing): closed;
 *  - otherwise handed to the longest waiter, or kept idle.
 * A NULL conn is ignored; a connection of another pool, or one released
 * twice, is reported through the logging hook (ERROR) and left alone.
 * Thread-safe; the connection must not be used afterwards.
 */
DBK_API void dbk_pool_release(dbk_pool *pool, dbk_conn *conn);

/* Like dbk_pool_release() but always resets the session first (one round
 * trip on PostgreSQL; on SQLite about 30 local statements): nothing the
 * borrower did to the session is visible to the next one (docs/pool.md
 * lists what the reset clears, and the few things no reset can). */
DBK_API void dbk_pool_release_reset(dbk_pool *pool, dbk_conn *conn);

/* When dbk_pool_release() resets a healthy connection. */
typedef enum dbk_pool_reset_policy {
    DBK_POOL_RESET_DIRTY = 0, /* default: in a transaction, or after a statement that may
                                 change the session (see dbk_pool_release) */
    DBK_POOL_RESET_ALWAYS = 1 /* every release, as dbk_pool_release_reset: costs a round trip
                                 (PostgreSQL) or ~30 local statements (SQLite) */
} dbk_pool_reset_policy;

/* Sets the reset policy. Call before the pool is shared. DBK_EMISUSE on
 * NULL or an unknown policy. */
DBK_API dbk_rc dbk_pool_set_reset_policy(dbk_pool *pool, dbk_pool_reset_policy policy,
                                         dbk_error *err);

/*
 * Hooks, the counterpart of node-postgres' pool.on('connect' | 'acquire' |
 * 'release' | 'error'). Every member may be NULL. Hooks run without any
 * pool lock held, on whichever thread triggers them (on_connect on the
 * pool's background thread), so they must be thread-safe; they must not
 * call dbk_pool_close().
 */
typedef struct dbk_pool_hooks {
    void *ctx; /* passed to every hook */
    /* A new connection, before anyone uses it, and again after each session
     * reset (a reset clears what this hook set). It may run SQL on
     * dbk_conn_db(conn), e.g. SET search_path. A non-OK result (fill err)
     * discards the connection and counts as a connect failure. */
    dbk_rc (*on_connect)(void *ctx, dbk_conn *conn, dbk_error *err);
    /* A connection was handed to a caller (its thread, before return). */
    void (*on_acquire)(void *ctx, dbk_conn *conn);
    /* A connection is being given back (before the pool inspects it). */
    void (*on_release)(void *ctx, dbk_conn *conn);
    /* Something went wrong that no caller will see otherwise, or that the
     * operator should know: a failed connect, a connection discarded as
     * lost or invalid, the breaker opening, a recycle after failover.
     * `err` is borrowed for the call. */
    void (*on_error)(void *ctx, const dbk_error *err);
} dbk_pool_hooks;

/* Installs the hooks (copied). Call before the pool is shared - at least
 * before the first acquire if on_connect must see every connection.
 * `hooks` NULL removes them. DBK_EMISUSE on a NULL pool. */
DBK_API dbk_rc dbk_pool_set_hooks(dbk_pool *pool, const dbk_pool_hooks *hooks, dbk_error *err);

/* Number of acquire-latency buckets in dbk_pool_stats. */
#define DBK_POOL_LATENCY_BUCKETS 10

/* A snapshot of the pool, for metrics. Counters are since open. */
typedef struct dbk_pool_stats {
    int max_size;
    int total;      /* open connections: idle + in use (not counting those being opened) */
    int idle;
    int in_use;
    int waiting;    /* callers queued in acquire */
    int opening;    /* connects under way */
    uint64_t created;          /* connections opened successfully */
    uint64_t closed;           /* connections closed, for any reason */
    uint64_t acquires;         /* successful acquires (dbk_db calls included) */
    uint64_t acquire_timeouts; /* DBK_EPOOL_TIMEOUT returned (max_waiters refusals included) */
    uint64_t connect_failures; /* connects (or on_connect hooks) that failed */
    uint64_t discarded;        /* closed because lost, broken, invalid or not resettable */
    uint64_t resets;           /* session resets on release */
    uint64_t leaks;            /* leak reports logged */
    uint64_t recycles;         /* generation bumps after DBK_EREADONLY (failover) */
    bool breaker_open;         /* in a cool-down between failed connects */
    /* Acquire latency histogram: latency_count[i] acquires took at most
     * latency_le_us[i] microseconds (and more than latency_le_us[i-1]); the
     * last bound is INT64_MAX. */
    int64_t latency_le_us[DBK_POOL_LATENCY_BUCKETS];
    uint64_t latency_count[DBK_POOL_LATENCY_BUCKETS];
    /* Auto-pipelining (PostgreSQL, DB_AUTO_PIPELINE): pipelines that carried
     * statements of other callers, and those statements (each also counted
     * in neither acquires nor acquire latency: they borrowed no connection). */
    uint64_t pipelines;
    uint64_t pipelined;
} dbk_pool_stats;

/* Fills *out with a consistent snapshot (taken under the pool lock).
 * DBK_EMISUSE on NULL arguments or after fork(). */
DBK_API dbk_rc dbk_pool_get_stats(dbk_pool *pool, dbk_pool_stats *out, dbk_error *err);

/* Deprecated in 0.2 (removed in 0.3): the old name of dbk_pool_get_stats(). */
DBK_API DBK_DEPRECATED("use dbk_pool_get_stats")
dbk_rc dbk_pool_stats_get(dbk_pool *pool, dbk_pool_stats *out, dbk_error *err);

/* The options in effect after defaults were applied (copied to *out, with
 * version DBK_POOL_OPTS_VERSION; a field that is off reads DBK_POOL_OFF).
 * DBK_EMISUSE on NULL arguments. */
DBK_API dbk_rc dbk_pool_get_opts(const dbk_pool *pool, dbk_pool_opts *out, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_POOL_H */
