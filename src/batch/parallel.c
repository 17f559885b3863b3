/*
 * dbk_parallel_run is the `Promise.all` of C: the caller's thread plus up to
 * max_parallel - 1 short-lived threads take tasks from a shared counter.
 * Tasks on a pool check out their own connections per statement (or per
 * batch or transaction), so the pool's bound and its fair queue are what
 * limit them; a task never holds one connection while waiting for another
 * unless its own code does.
 *
 * How many threads: the executor's max_parallel op (a pool answers its
 * max_size; executors without the op run the tasks on the caller's thread
 * alone), capped by the caller's max_parallel.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/batch.h"
#include "dbkit/parallel.h"
#include "../core/internal.h"
#include "../db/db_int.h"
#include "batch_int.h"

struct par {
    dbk_db *db;
    dbk_parallel_task *tasks;
    size_t n;
    size_t next; /* atomic */
};

static void run_tasks(struct par *p)
{
    for (;;) {
        size_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= p->n)
            return;
        dbk_parallel_task *t = &p->tasks[i];
        memset(&t->error, 0, sizeof t->error);
        t->rc = t->fn(p->db, t->ctx, &t->error);
        if (t->rc != DBK_OK && t->error.code == DBK_OK)
            dbk__err(&t->error, t->rc, "%s", dbk_strerror(t->rc));
    }
}

static void *worker_main(void *arg)
{
    run_tasks(arg);
    return NULL;
}

dbk_rc dbk_parallel_run(dbk_db *db, dbk_parallel_task *tasks, size_t n, int max_parallel,
                        dbk_error *err)
{
    if (!db || (n && !tasks))
        return dbk__err(err, DBK_EMISUSE, "dbk_parallel_run: db and tasks must not be NULL");
    for (size_t i = 0; i < n; i++) {
        if (!tasks[i].fn)
            return dbk__err(err, DBK_EMISUSE, "dbk_parallel_run: task %zu has no function", i);
        tasks[i].rc = DBK_ENOT_RUN;
    }
    /* The executor says how many statements may run on it at once (a
     * pool: its max_size; a connection or a transaction: one). */
    size_t width = 1;
    int conc = db->ops->max_parallel ? db->ops->max_parallel(db) : 1;
    if (conc > 1) {
        size_t cap = (size_t)conc;
        if (max_parallel > 0 && (size_t)max_parallel < cap)
            cap = (size_t)max_parallel;
        width = n < cap ? n : cap;
    }
    struct par p = {db, tasks, n, 0};
    enum { MAX_THREADS = 64 };
    pthread_t th[MAX_THREADS];
    size_t started = 0;
    dbk_rc start_rc = DBK_OK;
    for (size_t i = 1; i < width && started < MAX_THREADS; i++) {
        if (pthread_create(&th[started], NULL, worker_main, &p) != 0) {
            start_rc = DBK_EINTERNAL;
            break;
        }
        started++;
    }
    run_tasks(&p);
    for (size_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    (void)start_rc; /* fewer threads only means less parallelism */
    for (size_t i = 0; i < n; i++) {
        if (tasks[i].rc == DBK_OK)
            continue;
        if (err) {
            *err = tasks[i].error;
            dbk__batch_prefix(err, "task", i, tasks[i].error.message);
        }
        return tasks[i].rc;
    }
    return DBK_OK;
}

struct batch_task {
    dbk_batch *b;
    dbk_batch_mode mode;
};

static dbk_rc batch_task(dbk_db *db, void *ctx, dbk_error *err)
{
    struct batch_task *t = ctx;
    return dbk_batch_run(db, t->b, t->mode, err);
}

dbk_rc dbk_parallel_run_batches(dbk_db *db, dbk_batch *const *batches, size_t n,
                                dbk_batch_mode mode, int max_parallel, dbk_error *err)
{
    if (!db || (n && !batches))
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_parallel_run_batches: db and batches must not be NULL");
    for (size_t i = 0; i < n; i++)
        if (!batches[i])
            return dbk__err(err, DBK_EMISUSE, "dbk_parallel_run_batches: batch %zu is NULL", i);
    if (n == 0)
        return DBK_OK;
    dbk_parallel_task *tasks = calloc(n, sizeof *tasks);
    struct batch_task *ctx = calloc(n, sizeof *ctx);
    if (!tasks || !ctx) {
        free(tasks);
        free(ctx);
        return dbk__err(err, DBK_ENOMEM, "out of memory starting %zu batches", n);
    }
    for (size_t i = 0; i < n; i++) {
        ctx[i].b = batches[i];
        ctx[i].mode = mode;
        tasks[i].fn = batch_task;
        tasks[i].ctx = &ctx[i];
    }
    dbk_rc rc = dbk_parallel_run(db, tasks, n, max_parallel, err);
    free(tasks);
    free(ctx);
    return rc;
}

/* The names deprecated in 0.2 (removed in 0.3), wrappers so they stay in
 * the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_parallel(dbk_db *db, dbk_parallel_task *tasks, size_t n, int max_parallel,
                    dbk_error *err)
{
    return dbk_parallel_run(db, tasks, n, max_parallel, err);
}

dbk_rc dbk_batch_run_parallel(dbk_db *db, dbk_batch *const *batches, size_t n,
                              dbk_batch_mode mode, int max_parallel, dbk_error *err)
{
    return dbk_parallel_run_batches(db, batches, n, mode, max_parallel, err);
}
#pragma GCC diagnostic pop
