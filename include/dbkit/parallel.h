/*
 * dbkit/parallel.h - work on several pooled connections at once.
 *
 * dbk_parallel_run() is C's `Promise.all`: it runs an array of tasks at the
 * same time and waits for all of them. A task is a function given the
 * executor and a context, so it may make any dbkit call (repositories,
 * transactions, batches):
 *
 *     dbk_parallel_task tasks[] = {{.fn = get_user, .ctx = &u},
 *                                  {.fn = get_orders, .ctx = &o}};
 *     dbk_rc rc = dbk_parallel_run(dbk_pool_db(pool), tasks, 2, 0, &err);
 *
 * Names. The object of these calls is the parallel run, so they read
 * dbk_parallel_<verb> (docs/api-conventions.md): dbk_parallel_run for
 * tasks, dbk_parallel_run_batches for batches, and the types
 * dbk_parallel_task / dbk_parallel_fn. Up to 0.1 they lived in batch.h as
 * dbk_parallel, dbk_batch_run_parallel, dbk_task and dbk_task_fn; those
 * names remain below, deprecated, until 0.3. batch.h includes this header,
 * so a program that included only batch.h still compiles.
 *
 * Thread safety: every call here is thread-safe; the task array belongs to
 * the call until it returns. Each task runs on some thread of the run (the
 * caller's or a short-lived one), so its code and context must allow that.
 */
#ifndef DBKIT_PARALLEL_H
#define DBKIT_PARALLEL_H

#include <stddef.h>

#include "batch.h"
#include "db.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One unit of work: runs with the executor given to the call that runs it
 * (dbk_parallel_run, dbk_async_call) and the task's ctx. Returns DBK_OK or
 * a code with *err filled (err is never NULL). */
typedef dbk_rc (*dbk_parallel_fn)(dbk_db *db, void *ctx, dbk_error *err);

/* A task of dbk_parallel_run: fn and ctx are the caller's; rc and error are
 * written by the run (error meaningful when rc != DBK_OK). */
typedef struct dbk_parallel_task {
    dbk_parallel_fn fn;
    void *ctx;
    dbk_rc rc;       /* out */
    dbk_error error; /* out, meaningful when rc != DBK_OK */
} dbk_parallel_task;

/* Runs tasks[0..n) at the same time and waits for all of them. On a pool
 * executor the tasks run on up to max_parallel threads (0: the pool's
 * max_size; never more than max_size), the caller's thread being one of
 * them, so each task's statements use their own pooled connections; when
 * the pool has fewer free connections than tasks, tasks wait for
 * connections as any acquire does (bounded by the acquire timeout) and
 * never deadlock one another. On a connection or transaction executor,
 * which can run one statement at a time, the tasks run one after another on
 * the caller's thread. Every task runs even when another fails; nothing is
 * left checked out or unfreed. Returns DBK_OK when every task succeeded,
 * else the rc of the first failed task (lowest index) with its error in
 * *err. DBK_EMISUSE for NULL db, NULL tasks with n > 0 or a task without
 * fn; DBK_ENOMEM / DBK_EINTERNAL when no thread could be started (then the
 * tasks run on the caller's thread). Thread-safe. */
DBK_API dbk_rc dbk_parallel_run(dbk_db *db, dbk_parallel_task *tasks, size_t n, int max_parallel,
                                dbk_error *err);

/* dbk_parallel_run over batches: batch i runs with dbk_batch_run(db,
 * batches[i], mode) on its own pooled connection. Outcomes are in each
 * batch; the return code as dbk_parallel_run's. DBK_EMISUSE for NULL db,
 * NULL batches with n > 0 or a NULL batch; DBK_ENOMEM. Thread-safe as long
 * as no batch is used elsewhere during the call. */
DBK_API dbk_rc dbk_parallel_run_batches(dbk_db *db, dbk_batch *const *batches, size_t n,
                                        dbk_batch_mode mode, int max_parallel, dbk_error *err);

/* ---- deprecated in 0.2, removed in 0.3 (docs/api-conventions.md) ---- */

/* The old names of dbk_parallel_fn and dbk_parallel_task (same types; the
 * struct tag `struct dbk_task` is gone: use the typedef). */
typedef dbk_parallel_fn dbk_task_fn DBK_DEPRECATED("use dbk_parallel_fn");
typedef dbk_parallel_task dbk_task DBK_DEPRECATED("use dbk_parallel_task");

/* The old name of dbk_parallel_run(). */
DBK_API DBK_DEPRECATED("use dbk_parallel_run")
dbk_rc dbk_parallel(dbk_db *db, dbk_parallel_task *tasks, size_t n, int max_parallel,
                    dbk_error *err);

/* The old name of dbk_parallel_run_batches(). */
DBK_API DBK_DEPRECATED("use dbk_parallel_run_batches")
dbk_rc dbk_batch_run_parallel(dbk_db *db, dbk_batch *const *batches, size_t n,
                              dbk_batch_mode mode, int max_parallel, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_PARALLEL_H */
