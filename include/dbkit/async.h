/*
 * dbkit/async.h - calls that never block, for event-loop servers (libuv,
 * libevent, a hand-written epoll loop).
 *
 * A dbk_async sits on any executor (normally a pool's, dbk_pool_db) and
 * owns a fixed set of worker threads. The loop thread submits an operation
 * with a completion callback; a worker runs the ordinary blocking call
 * (dbk_db_query, dbk_db_exec, dbk_batch_run, your own function,
 * dbk_cache_get / dbk_cache_get_or_load) and queues the outcome; the loop
 * learns about it through one pollable descriptor and runs the callbacks on
 * its own thread:
 *
 *     dbk_async *a;
 *     dbk_async_open(dbk_pool_db(pool), NULL, &a, &err);
 *     watch dbk_async_fd(a) for POLLIN in the loop; when readable:
 *         dbk_async_process(a, 0);         runs the ready callbacks here
 *     dbk_async_query(a, "SELECT name FROM users WHERE id = $1", &id, 1,
 *                     0, on_user, req, NULL, &err);
 *     ...
 *     dbk_async_close(a);
 *
 * include/dbkit/async_uv.h does the watching for libuv (header-only, so
 * libdbkit does not link libuv).
 *
 * Same semantics as the blocking API. Every operation is the blocking call
 * run on a worker, so its result codes, dbk_error (SQLSTATE, message, hint),
 * deadlines (acquire timeout, statement deadline) and the executor's query
 * observer are exactly those of that call. Three codes are the async
 * layer's own:
 *   DBK_EBUSY       at submit: max_pending operations are already in flight
 *                   (the submit fails at once, nothing is queued, the
 *                   callback never runs);
 *   DBK_ECANCELLED  in the callback: the operation was cancelled while
 *                   queued (dbk_async_cancel), or the handle closed before a
 *                   worker took it;
 *   DBK_ETIMEOUT    in the callback: the operation's timeout_ms passed
 *                   before a worker could start it (it never ran).
 *
 * Timeouts. Each submit takes timeout_ms: the longest the operation may
 * wait in the queue for a worker, from the submit (0: no limit of its own;
 * the queue then drains at the pace of the executor's deadlines). Once a
 * worker has started it, the operation runs under the executor's own
 * deadlines, as a blocking call would (statement_timeout + 2 s, the pool's
 * acquire timeout; docs/deadlines.md): the public executor API has no
 * per-call statement deadline, and a running statement is never abandoned
 * with its outcome unknown.
 *
 * Cancellation. dbk_async_cancel() of a queued operation completes it with
 * DBK_ECANCELLED at once (its callback runs at the next
 * dbk_async_process()). A running operation is not interrupted: dbkit's
 * drivers cancel a statement on the server only when its deadline passes,
 * and offer no cancel call; the operation completes with its real outcome
 * when the statement returns, bounded by its deadline.
 *
 * Threading rules.
 *   - Callbacks run only inside dbk_async_process() or dbk_async_close(),
 *     on the thread that called it: never on a worker, never inside a
 *     submit or a cancel (a submit that fails returns its code and never
 *     calls its callback).
 *   - dbk_async_process() must not run on two threads at once; call it from
 *     the loop thread. A callback may submit and cancel (also on this
 *     handle), but must not call dbk_async_process() or dbk_async_close().
 *   - Submits, cancels, dbk_async_fd() and dbk_async_pending() may be called
 *     from any thread.
 *   - Whatever an operation borrows (the batch, a dbk_async_call context, a
 *     cache loader's context) belongs to the worker from the submit until
 *     the callback starts: the loop does not touch it in between. Everything
 *     the operation copies (SQL text, parameter values including text and
 *     blob bytes, cache keys) may go away right after the submit.
 *   - The query observer of the executor and cache loaders run on worker
 *     threads, as they would for any thread using a pool: they must be
 *     thread-safe.
 *   - The executor must allow statements from several threads (a pool's
 *     does); on a connection's executor the workers are capped at one, and
 *     the connection must not be used by anything else while the handle is
 *     open.
 */
#ifndef DBKIT_ASYNC_H
#define DBKIT_ASYNC_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "cache.h"
#include "db.h"
#include "error.h"
#include "parallel.h"
#include "result.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Announces this header's API (for code that builds against several
 * versions). */
#define DBKIT_HAS_ASYNC 1

typedef struct dbk_async dbk_async;

/* An operation's id, unique for the handle's life; 0 is never an id. */
typedef uint64_t dbk_async_op;

/* Defaults (used for option fields left 0). */
#define DBK_ASYNC_DEFAULT_MAX_WORKERS 16
#define DBK_ASYNC_DEFAULT_MAX_PENDING 1024
/* Upper bounds of the options. */
#define DBK_ASYNC_MAX_WORKERS 256
#define DBK_ASYNC_MAX_PENDING 1048576

typedef struct dbk_async_opts {
    /* The struct's version: DBK_ASYNC_OPTS_VERSION, set by DBK_ASYNC_OPTS_INIT or
     * dbk_async_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* Worker threads (default: the executor's parallelism, i.e. a pool's
     * max_size, capped at DBK_ASYNC_DEFAULT_MAX_WORKERS; 1 on a connection
     * or transaction executor). Never more than the executor's parallelism:
     * a worker that could not get a connection would only wait. */
    int workers;
    /* Operations in flight at once: submitted and not yet delivered to
     * their callback (default 1024, at most DBK_ASYNC_MAX_PENDING). A
     * submit past it fails at once with DBK_EBUSY. This bounds the memory
     * the handle holds. */
    size_t max_pending;
} dbk_async_opts;

/* The version of dbk_async_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_ASYNC_OPTS_VERSION 1
#define DBK_ASYNC_OPTS_INIT {.version = DBK_ASYNC_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_ASYNC_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_ASYNC_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_async_opts_init(dbk_async_opts *opts, unsigned int version, dbk_error *err);

typedef enum dbk_async_kind {
    DBK_ASYNC_QUERY = 1,    /* dbk_async_query */
    DBK_ASYNC_EXEC = 2,     /* dbk_async_exec */
    DBK_ASYNC_BATCH = 3,    /* dbk_async_batch */
    DBK_ASYNC_CALL = 4,     /* dbk_async_call */
    DBK_ASYNC_CACHE_GET = 5 /* dbk_async_cache_get, dbk_async_cache_get_or_load */
} dbk_async_kind;

/*
 * What a callback receives. The struct and `error` are borrowed for the
 * duration of the callback.
 *
 * Ownership of `result` and `value`: they belong to the callback. To keep
 * one, copy the pointer and set the field to NULL; whatever is still set
 * when the callback returns is freed by dbkit (dbk_result_free, free).
 */
typedef struct dbk_async_done {
    dbk_async_op op;
    dbk_async_kind kind;
    dbk_rc rc;
    const dbk_error *error; /* the failure when rc != DBK_OK, else NULL */
    /* QUERY, DBK_OK: the rows (dbk_result_free when kept). */
    dbk_result *result;
    /* QUERY: rows returned; EXEC: rows affected; -1 when rc != DBK_OK. */
    int64_t affected;
    /* BATCH: the batch that was submitted, handed back with its outcomes
     * (dbk_batch_rc, dbk_batch_result, ...); still owned by the caller. */
    dbk_batch *batch;
    /* CACHE_GET, DBK_OK: the value (the caller's: dbk_free() when kept) and its
     * length. */
    void *value;
    size_t value_len;
} dbk_async_done;

/* A completion callback: `ctx` is the pointer given at submit. */
typedef void (*dbk_async_cb)(void *ctx, dbk_async_done *done);

/*
 * Starts a handle on `db` (borrowed: it must outlive the handle) with its
 * worker threads and its completion descriptor. opts NULL: all defaults.
 * On DBK_OK *out is owned by the caller (dbk_async_close).
 * Errors: DBK_EMISUSE (db or out NULL, a negative worker count,
 * max_pending over DBK_ASYNC_MAX_PENDING, workers over
 * DBK_ASYNC_MAX_WORKERS), DBK_ENOMEM, DBK_EINTERNAL (no descriptor or thread
 * could be made; the message names the system error).
 */
DBK_API dbk_rc dbk_async_open(dbk_db *db, const dbk_async_opts *opts, dbk_async **out,
                              dbk_error *err);

/*
 * Closes the handle: refuses new submits (DBK_EMISUSE), completes every
 * queued operation with DBK_ECANCELLED, waits for the running ones (each
 * bounded by its executor's deadlines), stops the workers, then runs every
 * callback not yet delivered on the calling thread, and frees the handle
 * and its descriptor. Call it from the thread that runs
 * dbk_async_process(), never from a callback (there it is logged at
 * DBK_LOG_ERROR and does nothing); stop watching the descriptor first (it
 * is closed here). Accepts NULL.
 */
DBK_API void dbk_async_close(dbk_async *a);

/*
 * The descriptor to watch for readability (POLLIN / EPOLLIN / UV_READABLE):
 * it is readable while completions wait for dbk_async_process(). An eventfd
 * on Linux, the read end of a pipe elsewhere. Owned by the handle: do not
 * read, write or close it. -1 for NULL.
 */
DBK_API int dbk_async_fd(const dbk_async *a);

/*
 * Runs the callbacks of completed operations on the calling thread, oldest
 * first, at most `max` of them (0: every one ready now), and returns how
 * many ran. Never blocks: with nothing ready it returns 0. When some are
 * left (max reached) the descriptor stays readable. Called from inside a
 * callback it returns 0 and runs nothing. See the threading rules at the
 * top.
 */
DBK_API size_t dbk_async_process(dbk_async *a, size_t max);

/* Operations submitted and not yet delivered to their callback. Thread-safe. */
DBK_API size_t dbk_async_pending(const dbk_async *a);

/*
 * Submits dbk_db_query(sql, params) (see db.h). sql and params (text, json
 * and blob bytes included) are copied. The callback gets the rows in
 * done->result. *op (may be NULL) gets the operation's id.
 * Submit errors (returned, callback never called): DBK_EMISUSE (a NULL
 * handle, sql or cb, params NULL with nparams > 0, more than 65535
 * parameters, negative timeout_ms, a closing handle), DBK_EBUSY (max_pending
 * reached), DBK_ENOMEM. The statement's own errors arrive in the callback.
 */
DBK_API dbk_rc dbk_async_query(dbk_async *a, const char *sql, const dbk_value *params,
                               size_t nparams, int timeout_ms, dbk_async_cb cb, void *ctx,
                               dbk_async_op *op, dbk_error *err);

/* Submits dbk_db_exec(sql, params): done->affected gets the rows affected.
 * Arguments and errors as dbk_async_query(). */
DBK_API dbk_rc dbk_async_exec(dbk_async *a, const char *sql, const dbk_value *params,
                              size_t nparams, int timeout_ms, dbk_async_cb cb, void *ctx,
                              dbk_async_op *op, dbk_error *err);

/* Submits dbk_batch_run(b, mode) (see batch.h). The batch is borrowed until
 * the callback, which gets it back in done->batch with every outcome; rc
 * and error are dbk_batch_run's. A cancelled or timed-out batch did not run
 * (its outcomes are those before the submit). Errors as dbk_async_query()
 * (DBK_EMISUSE for a NULL batch). */
DBK_API dbk_rc dbk_async_batch(dbk_async *a, dbk_batch *b, dbk_batch_mode mode, int timeout_ms,
                               dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err);

/* Submits fn(db, ctx, err) on a worker, with the handle's executor: any
 * blocking code (repository calls, a dbk_tx_run) runs this way. fn is a
 * task function as dbk_parallel_run's (parallel.h). fn's
 * return code and error arrive in the callback, which gets the same ctx;
 * put outputs in ctx. fn must not call dbk_async_process() or
 * dbk_async_close() and should not wait on the loop thread. Errors as
 * dbk_async_query() (DBK_EMISUSE for a NULL fn). */
DBK_API dbk_rc dbk_async_call(dbk_async *a, dbk_parallel_fn fn, int timeout_ms,
                              dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err);

/* Submits dbk_cache_get(cache, key) (see cache.h): DBK_OK with the value in
 * done->value, DBK_ENOT_FOUND on a miss, a cache error otherwise. The key is
 * copied; the cache is borrowed (it must outlive the handle). Errors as
 * dbk_async_query() (DBK_EMISUSE for a NULL cache or key, keylen 0 or over
 * DBK_CACHE_MAX_KEY). */
DBK_API dbk_rc dbk_async_cache_get(dbk_async *a, dbk_cache *cache, const void *key, size_t keylen,
                                   int timeout_ms, dbk_async_cb cb, void *ctx, dbk_async_op *op,
                                   dbk_error *err);

/* Submits dbk_cache_get_or_load(cache, key, load, load_ctx, ttl_ms) (see
 * cache.h): a hit, or one load per key in this process, run on a worker
 * (load_ctx is borrowed until the callback). The callback sees what
 * dbk_cache_get_or_load returned. Errors as dbk_async_cache_get()
 * (DBK_EMISUSE for a NULL load or ttl_ms <= 0). */
DBK_API dbk_rc dbk_async_cache_get_or_load(dbk_async *a, dbk_cache *cache, const void *key,
                                           size_t keylen, dbk_cache_load_fn load, void *load_ctx,
                                           int64_t ttl_ms, int timeout_ms, dbk_async_cb cb,
                                           void *ctx, dbk_async_op *op, dbk_error *err);

/*
 * Cancels operation `op`:
 *   DBK_OK          it was queued: it completes with DBK_ECANCELLED (callback
 *                   at the next dbk_async_process()) and never runs;
 *   DBK_EBUSY       a worker is running it: it completes with its real
 *                   outcome (see "Cancellation");
 *   DBK_ENOT_FOUND  no such operation in flight (an unknown id, or one that
 *                   already completed: its callback ran or is on its way).
 * DBK_EMISUSE for a NULL handle. err (may be NULL) gets the message of
 * every code but DBK_OK. Thread-safe; cost: linear in the queued
 * operations.
 */
DBK_API dbk_rc dbk_async_cancel(dbk_async *a, dbk_async_op op, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_ASYNC_H */
