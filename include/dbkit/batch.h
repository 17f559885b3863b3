/*
 * dbkit/batch.h - independent statements in one round trip (work on
 * several pooled connections at once is in parallel.h).
 *
 * A batch collects parameterized statements, runs them together on one
 * connection and keeps one outcome per statement, in order:
 *
 *     dbk_batch *b;
 *     dbk_batch_new(&b, &err);
 *     dbk_batch_add(b, "SELECT id, name FROM users WHERE id = $1", &id, 1, &err);
 *     dbk_batch_add(b, "SELECT id, total FROM orders WHERE user_id = $1", &id, 1, &err);
 *     if (dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err) == DBK_OK) {
 *         const dbk_result *user = dbk_batch_result(b, 0);
 *         const dbk_result *orders = dbk_batch_result(b, 1);
 *         ...
 *     }
 *     dbk_batch_free(b);
 *
 * On PostgreSQL the whole batch goes out in libpq pipeline mode: every
 * statement is written before any answer is read, so the batch costs one
 * network round trip instead of one per statement. Statements use the
 * connection's prepared-statement cache; a statement repeated in the batch
 * is prepared once. On SQLite there is no network: the statements run one
 * after another on one connection, with the same results and errors.
 *
 * Modes. DBK_BATCH_INDEPENDENT (the default, 0): each statement stands
 * alone (on PostgreSQL each is followed by its own Sync, i.e. runs in its
 * own implicit transaction), so a failing statement does not stop the
 * others. It is the default because a batch usually gathers unrelated
 * reads (the `Promise.all` case), where one failure should not cost the
 * other answers. DBK_BATCH_ATOMIC: all or nothing; outside a transaction
 * the batch runs as one transaction (PostgreSQL: one Sync for the whole
 * pipeline, which the server runs as one implicit transaction; SQLite:
 * BEGIN ... COMMIT), inside a transaction within a savepoint on SQLite; the
 * first failure undoes the statements before it and skips the ones after.
 *
 * Inside a transaction (db from dbk_tx_run) the batch runs in that
 * transaction. PostgreSQL aborts a transaction at its first failed
 * statement, so there the statements after a failure report DBK_ENOT_RUN
 * in either mode, and the transaction fails as it would for a single
 * statement (a serialization failure still makes dbk_tx_run retry).
 *
 * Outcomes per statement: DBK_OK with a result (rows, or none for writes;
 * dbk_batch_affected() for the count), or the statement's own error, or
 * DBK_ENOT_RUN: not executed (an atomic batch stopped before it, the
 * transaction was already aborted) or executed and undone (an atomic batch
 * rolled back). When the connection is lost mid-batch, the statements whose
 * answers had not arrived report DBK_ECONN_LOST with a message saying the
 * outcome is unknown; a statement is never reported as succeeded unless
 * its answer arrived (and, for an atomic batch, the batch committed).
 *
 * Thread safety: a batch is one caller's object; distinct batches may run
 * on distinct threads at once (on a pool, each checks out its own
 * connection).
 */
#ifndef DBKIT_BATCH_H
#define DBKIT_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "dbkit/db.h"
#include "dbkit/error.h"
#include "dbkit/result.h"
#include "dbkit/value.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Announces this header's API (for code that builds against several
 * versions). */
#define DBKIT_HAS_BATCH 1

typedef struct dbk_batch dbk_batch;

typedef enum dbk_batch_mode {
    DBK_BATCH_INDEPENDENT = 0, /* each statement stands alone (default) */
    DBK_BATCH_ATOMIC = 1       /* all or nothing */
} dbk_batch_mode;

/* A new, empty batch (owned by the caller: dbk_batch_free). DBK_ENOMEM. */
DBK_API dbk_rc dbk_batch_new(dbk_batch **out, dbk_error *err);

/* Frees the batch, its copies of the statements and every result not
 * taken. NULL is a no-op. */
DBK_API void dbk_batch_free(dbk_batch *b);

/* Forgets every statement and result, keeping the memory for reuse (a
 * batch built per request costs no allocation after the first). */
DBK_API void dbk_batch_clear(dbk_batch *b);

/* Appends a statement with its parameters ($1.. on both engines). The SQL
 * text and the values (text and blob bytes included) are copied, so the
 * caller's buffers may go away. Its index is dbk_batch_count() - 1 after
 * the call. Adding to a batch that has run first clears its outcomes.
 * DBK_EMISUSE for NULL sql or NULL params with nparams > 0, or more than
 * 65535 parameters; DBK_ENOMEM. */
DBK_API dbk_rc dbk_batch_add(dbk_batch *b, const char *sql, const dbk_value *params,
                             size_t nparams, dbk_error *err);

/* Statements in the batch. */
DBK_API size_t dbk_batch_count(const dbk_batch *b);

/* Runs every statement on db (a connection, a pool - one connection is
 * checked out for the whole batch - or a transaction) and records each
 * outcome, replacing those of an earlier run. Returns DBK_OK when every
 * statement succeeded; otherwise the code of the first statement that
 * failed on its own (not DBK_ENOT_RUN), with that statement's error in
 * *err prefixed by its index. An empty batch is DBK_OK. The observer of db
 * sees one event per statement (batch_index / batch_size set). */
DBK_API dbk_rc dbk_batch_run(dbk_db *db, dbk_batch *b, dbk_batch_mode mode, dbk_error *err);

/* The outcome of statement i after a run: DBK_OK, its error code, or
 * DBK_ENOT_RUN; DBK_EMISUSE for an index out of range or a batch not run. */
DBK_API dbk_rc dbk_batch_rc(const dbk_batch *b, size_t i);

/* The error of statement i (borrowed, valid until the batch is cleared,
 * run again or freed), or NULL when it succeeded or i is out of range. */
DBK_API const dbk_error *dbk_batch_error(const dbk_batch *b, size_t i);

/* The rows of statement i (borrowed, as above), or NULL when it failed,
 * was taken, or i is out of range. */
DBK_API const dbk_result *dbk_batch_result(const dbk_batch *b, size_t i);

/* Hands the result of statement i over to the caller (free it with
 * dbk_result_free); NULL as for dbk_batch_result. */
DBK_API dbk_result *dbk_batch_take_result(dbk_batch *b, size_t i);

/* Rows affected by statement i (writes), or returned (reads); -1 when it
 * did not succeed. */
DBK_API int64_t dbk_batch_affected(const dbk_batch *b, size_t i);

#ifdef __cplusplus
}
#endif

/* Tasks and batches on several connections at once (dbk_parallel_run,
 * dbk_parallel_run_batches) moved to parallel.h in 0.2; it is included here
 * so that programs using the old names from this header still compile. */
#include "parallel.h"

#endif /* DBKIT_BATCH_H */
