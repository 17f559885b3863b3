/*
 * dbkit/tx.h - transactions as closures: commit, roll back, nest, retry.
 *
 * A transaction is a function. dbk_tx_run() checks one connection out
 * of the executor it is given (a pool checks one out, a connection gives
 * itself), opens a transaction, and calls `fn` with a transaction executor:
 * a dbk_db that runs every statement on that one connection. Any query,
 * repository or cache call that takes a dbk_db works on it unchanged.
 *
 *   fn returns DBK_OK      -> COMMIT, after-commit hooks run, DBK_OK.
 *   fn returns anything    -> ROLLBACK, that code is returned and the
 *                             dbk_error fn filled reaches the caller intact.
 *   the code is retryable  -> ROLLBACK, wait, run fn again from the start
 *   (serialization failure    on a fresh transaction, within a budget of
 *   40001, deadlock 40P01,    attempts and elapsed time; when the budget
 *   SQLite busy)              runs out: DBK_ERETRY_EXHAUSTED.
 *   connection lost while  -> DBK_ECOMMIT_UNKNOWN: the transaction may or
 *   COMMIT is in flight       may not have committed. Never retried.
 *   connection lost before -> retried like a serialization failure (same
 *   COMMIT was sent, or no    backoff; bounded by max_elapsed_ms only, not
 *   server to connect to      max_attempts) when `db` hands out a
 *                             fresh connection per transaction (a pool, a
 *   (DBK_ECONN_LOST incl.     cluster's executors): the server rolled the
 *   57P01/57P02 shutdowns,    transaction back, or never saw it. On a
 *   DBK_EUNAVAILABLE when     single connection's executor it is returned
 *   checking one out)         as it came. This is what carries a
 *                             transaction across a failover.
 *
 * Because fn may run more than once, it must not have effects outside the
 * database that cannot be repeated (send no e-mail, charge no card inside
 * fn): register them with dbk_tx_after_commit() instead, which runs them
 * once, only after the commit succeeded.
 *
 * Nesting: dbk_tx_run() on a transaction executor opens a SAVEPOINT.
 * fn returning OK releases it; anything else rolls back to it, keeping the
 * outer work. A nested transaction never retries on its own: a retryable
 * error inside it propagates, and the outermost transaction re-runs the
 * whole closure.
 *
 * Engines:
 *   PostgreSQL: BEGIN ISOLATION LEVEL <level> [READ ONLY] [DEFERRABLE].
 *   SQLite:     BEGIN IMMEDIATE for read-write transactions (the write lock
 *               is taken at BEGIN, so two writers never deadlock on a lock
 *               upgrade; a busy database gives DBK_EBUSY at BEGIN, which is
 *               retried), BEGIN DEFERRED + PRAGMA query_only for read-only
 *               ones. SQLite transactions are always serializable: the
 *               isolation option has no effect there.
 *
 * Lifetime: the transaction executor passed to fn lives on the stack of
 * dbk_tx_run(). It is valid only while fn runs; do not keep it. Using
 * it after fn returned (from an after-commit hook, say) gives DBK_EMISUSE.
 *
 * Thread safety: dbk_tx_run() may be called from any number of
 * threads at once on a pool's executor; on a connection's executor only
 * from the thread that owns the connection. A transaction executor
 * belongs to the thread running fn: do not hand it to other threads.
 */
#ifndef DBKIT_TX_H
#define DBKIT_TX_H

#include <stdbool.h>
#include <stdint.h>

#include "db.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Isolation levels. DEFAULT is the engine's default: READ COMMITTED on
 * PostgreSQL (unless the server or role sets default_transaction_isolation
 * otherwise), SERIALIZABLE on SQLite (its only level). */
typedef enum dbk_isolation {
    DBK_ISOLATION_DEFAULT = 0,
    DBK_ISOLATION_READ_COMMITTED = 1,
    DBK_ISOLATION_REPEATABLE_READ = 2,
    DBK_ISOLATION_SERIALIZABLE = 3
} dbk_isolation;

/* Default retry budget and backoff (used for fields left 0). */
#define DBK_TX_DEFAULT_MAX_ATTEMPTS 5     /* runs of fn, first one included */
#define DBK_TX_DEFAULT_MAX_ELAPSED_MS 2000 /* no new attempt starts after this */
#define DBK_TX_DEFAULT_BASE_BACKOFF_MS 5  /* first retry waits up to this */
#define DBK_TX_DEFAULT_MAX_BACKOFF_MS 200 /* cap on one wait */
/* Default transaction timeout (Prisma's interactive transactions: 5 s). */
#define DBK_TX_DEFAULT_TIMEOUT_MS 5000
/* timeout_ms value that means "no transaction timeout at all". */
#define DBK_TX_NO_TIMEOUT (-1)

/* Called before each wait between attempts: `attempt` is the number of the
 * attempt that just failed (1 for the first run), `rc` and `err` what it
 * failed with (err is borrowed for the call), `delay_ms` the wait about to
 * happen. Runs on the thread of dbk_tx_run(), with no connection
 * pinned. `rc` is a retryable code (dbk_rc_is_retryable) or, for a lost
 * connection before COMMIT, DBK_ECONN_LOST / DBK_EUNAVAILABLE. Use it for
 * logging and metrics; it cannot stop the retry. */
typedef void (*dbk_tx_retry_fn)(void *ctx, int attempt, dbk_rc rc, int delay_ms,
                                const dbk_error *err);

/* Options. Start from DBK_TX_OPTS_INIT and set what you need; every field
 * left 0 takes its default (a zero-initialized struct works too: its
 * version 0 reads as 1). NULL options = all defaults. */
typedef struct dbk_tx_opts {
    /* The struct's version: DBK_TX_OPTS_VERSION, set by DBK_TX_OPTS_INIT or
     * dbk_tx_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    dbk_isolation isolation; /* DEFAULT: engine default (see above) */
    bool read_only;          /* writes fail with DBK_EREADONLY */
    bool deferrable;         /* PostgreSQL SERIALIZABLE READ ONLY DEFERRABLE:
                                waits for a safe snapshot, then never fails
                                with a serialization error; no effect elsewhere */
    int max_attempts;        /* runs of fn in all, >= 1; 1 disables retries
                                (default DBK_TX_DEFAULT_MAX_ATTEMPTS) */
    int max_elapsed_ms;      /* no retry starts (or sleeps) past this much time
                                since the first BEGIN (default 2000) */
    int base_backoff_ms;     /* backoff base: retry n waits a uniformly random
                                time in [0, min(max_backoff, base * 2^(n-1))]
                                ("full jitter"; default 5) */
    int max_backoff_ms;      /* backoff cap (default 200) */
    int timeout_ms;          /* transaction timeout per attempt: past it the
                                transaction is rolled back and the call fails
                                with DBK_ETIMEOUT (default 5000;
                                DBK_TX_NO_TIMEOUT for none) */
    dbk_tx_retry_fn on_retry; /* may be NULL */
    void *on_retry_ctx;
} dbk_tx_opts;

/* The version of dbk_tx_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_TX_OPTS_VERSION 1
#define DBK_TX_OPTS_INIT {.version = DBK_TX_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_TX_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_TX_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_tx_opts_init(dbk_tx_opts *opts, unsigned int version, dbk_error *err);

/* The closure. `tx` is the transaction executor (valid only during the
 * call), `ctx` the caller's pointer, `err` a record to fill on failure
 * (never NULL; what fn writes there reaches the caller of
 * dbk_tx_run() unchanged when fn's code is returned). Return DBK_OK to
 * commit; any other code rolls back. Return the code a dbkit call gave you
 * unchanged when you give up because of it: that is how a serialization
 * failure or deadlock gets the transaction retried. */
typedef dbk_rc (*dbk_tx_fn)(dbk_db *tx, void *ctx, dbk_error *err);

/*
 * Runs fn inside a transaction on `db` (see the top of this header).
 *
 * db:   a pool's, a connection's or a transaction's executor (the last one
 *       nests: SAVEPOINT; `opts` is then ignored, the outermost
 *       transaction's settings apply).
 * opts: NULL for all defaults; copied, not kept.
 * err:  may be NULL.
 *
 * Returns DBK_OK when fn returned DBK_OK and the commit succeeded, else:
 *   fn's own code, err as fn filled it (after a clean rollback);
 *   DBK_ERETRY_EXHAUSTED: fn kept failing with retryable errors until the
 *       budget ran out; the message carries the last error's message and
 *       err->sqlstate the last SQLSTATE;
 *   DBK_ECOMMIT_UNKNOWN: the connection was lost during COMMIT; the
 *       outcome is unknown (see docs/transactions.md on idempotency);
 *   DBK_ETIMEOUT: the transaction outlived opts->timeout_ms and was rolled
 *       back;
 *   DBK_EMISUSE: db or fn NULL, a transaction executor already finished,
 *       bad options;
 *   errors from BEGIN/COMMIT themselves (DBK_ECONN_LOST, DBK_EPOOL_TIMEOUT,
 *       ...), and from checking a connection out.
 * When fn returned OK but a statement inside failed and left the
 * transaction aborted (PostgreSQL), the transaction is rolled back and that
 * statement's error is returned (and retried if it was retryable).
 */
DBK_API dbk_rc dbk_tx_run(dbk_db *db, dbk_tx_fn fn, void *ctx, const dbk_tx_opts *opts,
                               dbk_error *err);

/* Deprecated in 0.2 (removed in 0.3): the old name of dbk_tx_run(). */
DBK_API DBK_DEPRECATED("use dbk_tx_run")
dbk_rc dbk_transaction(dbk_db *db, dbk_tx_fn fn, void *ctx, const dbk_tx_opts *opts,
                       dbk_error *err);

/* An after-commit action. */
typedef void (*dbk_tx_hook_fn)(void *ctx);

/*
 * Registers fn(ctx) to run after the outermost transaction commits, in
 * registration order, on the committing thread, after the connection was
 * given back. A rollback discards it (and a rollback to a savepoint
 * discards the hooks registered inside that savepoint); before a retry
 * every hook of the failed attempt is discarded, since fn registers them
 * again. When `db` is not a transaction executor, fn(ctx) runs at once:
 * code that invalidates a cache can always just register.
 *
 * `ctx` is borrowed: it must stay valid until the hook ran or was
 * discarded; use dbk_tx_after_commit_ex() when it needs freeing.
 * DBK_EMISUSE (db or fn NULL, finished transaction), DBK_ENOMEM.
 */
DBK_API dbk_rc dbk_tx_after_commit(dbk_db *db, dbk_tx_hook_fn fn, void *ctx, dbk_error *err);

/*
 * Like dbk_tx_after_commit(), and release(ctx) (may be NULL) is called
 * exactly once when the hook is done with: right after it ran, when it is
 * discarded, or at once when registration fails. Ownership of ctx passes
 * to dbk on this call. (Added with the transaction module so that hooks can
 * own heap-allocated context.)
 */
DBK_API dbk_rc dbk_tx_after_commit_ex(dbk_db *db, dbk_tx_hook_fn fn, void *ctx,
                                      void (*release)(void *ctx), dbk_error *err);

/* True when `db` is a live transaction executor (inside fn). */
DBK_API bool dbk_db_in_transaction(const dbk_db *db);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_TX_H */
