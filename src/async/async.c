/*
 * The asynchronous API (include/dbkit/async.h): blocking calls run on a
 * fixed set of worker threads, outcomes handed back to the event loop
 * through one descriptor.
 *
 * Why threads over the blocking calls, and not a second, non-blocking
 * engine: the blocking path already owns every error mapping, deadline,
 * retry rule and observer event; running exactly that code on a worker is
 * how the async API keeps the same semantics by construction (the design
 * page's "both share one engine so semantics cannot drift"). The loop
 * thread never waits on anything but one mutex held for list operations.
 *
 * Shape. One mutex guards three things: the submission queue (doubly
 * linked, FIFO, so a cancel can unlink from the middle), the completion
 * queue (singly linked, FIFO) and the counters. Workers sleep on `work`;
 * a watchdog thread sleeps until the earliest queued deadline and fails
 * what expired, so an operation's timeout holds even while every worker is
 * busy. `inflight` counts operations from submit to delivery and is what
 * max_pending bounds, so the memory held is bounded whatever the loop does.
 *
 * The descriptor: an eventfd (a pipe off Linux). A worker writes to it only
 * when the completion queue goes from "signalled nothing" to "has work"
 * (`signalled`), so a burst of completions costs one write; the loop drains
 * it BEFORE taking the queue under the lock, so a completion pushed after
 * the take writes again and no wake-up is lost. When dbk_async_process()
 * stops at `max` with work left, it re-signals so a level-triggered loop
 * comes back.
 *
 * Each operation is one allocation: the op, then its SQL text, its
 * parameter array and the parameters' bytes (or the cache key) behind it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "dbkit/async.h"
#include "../core/internal.h"
#include "../db/db_int.h"

enum op_state { OP_QUEUED = 1, OP_RUNNING = 2, OP_DONE = 3 };

struct op {
    struct op *next, *prev; /* submission queue; `next` only in the completion queue */
    dbk_async_op id;
    dbk_async_kind kind;
    int state;
    int timeout_ms;
    int64_t deadline_ns; /* 0: none */
    dbk_async_cb cb;
    void *ctx;
    /* inputs */
    const char *sql;
    dbk_value *params;
    size_t nparams;
    dbk_batch *batch;
    dbk_batch_mode mode;
    dbk_parallel_fn fn;
    dbk_cache *cache;
    const void *key;
    size_t keylen;
    dbk_cache_load_fn load;
    void *load_ctx;
    int64_t ttl_ms;
    /* outcome */
    dbk_rc rc;
    dbk_error error;
    dbk_result *result;
    int64_t affected;
    void *value;
    size_t value_len;
};

struct dbk_async {
    dbk_db *db;
    pthread_mutex_t mu;
    pthread_cond_t work;      /* workers: the queue has an op, or stop */
    pthread_cond_t wd;        /* watchdog: a new earlier deadline, or stop */
    struct op *qhead, *qtail; /* submission queue */
    struct op *chead, *ctail; /* completion queue */
    struct op *rhead;         /* running, doubly linked (for cancel) */
    size_t queued, running, inflight, max_pending;
    int idle;             /* workers waiting on `work` */
    int64_t wd_target_ns; /* the deadline the watchdog sleeps to (0: none) */
    dbk_async_op next_id;
    bool closing, stop, signalled;
    int rfd, wfd; /* the same eventfd twice, or a pipe's ends */
    int nworkers;
    bool wd_started;
    bool processing; /* callbacks are running (the processing thread only) */
    pthread_t wd_thread;
    pthread_t *workers;
};

/* ---- the completion descriptor ---- */

static void fd_signal(dbk_async *a)
{
#ifdef __linux__
    uint64_t one = 1;
    ssize_t w = write(a->wfd, &one, sizeof one);
#else
    char one = 1;
    ssize_t w = write(a->wfd, &one, 1);
#endif
    (void)w; /* EAGAIN: already readable, which is all a signal means */
}

static void fd_drain(dbk_async *a)
{
    char buf[64];
    /* eventfd: one read resets the counter; pipe: read until empty (the
     * pipe holds at most one byte per signal, and signals are coalesced). */
    while (read(a->rfd, buf, sizeof buf) > 0) {
#ifdef __linux__
        break;
#endif
    }
}

static int fd_open(dbk_async *a)
{
#ifdef __linux__
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -1;
    a->rfd = a->wfd = fd;
#else
    int p[2];
    if (pipe(p) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    a->rfd = p[0];
    a->wfd = p[1];
#endif
    return 0;
}

static void fd_close(dbk_async *a)
{
    if (a->rfd >= 0)
        close(a->rfd);
    if (a->wfd >= 0 && a->wfd != a->rfd)
        close(a->wfd);
    a->rfd = a->wfd = -1;
}

/* ---- queues (a->mu held) ---- */

static void q_unlink(dbk_async *a, struct op *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        a->qhead = o->next;
    if (o->next)
        o->next->prev = o->prev;
    else
        a->qtail = o->prev;
    o->next = o->prev = NULL;
    a->queued--;
}

static void r_link(dbk_async *a, struct op *o)
{
    o->prev = NULL;
    o->next = a->rhead;
    if (a->rhead)
        a->rhead->prev = o;
    a->rhead = o;
    a->running++;
}

static void r_unlink(dbk_async *a, struct op *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        a->rhead = o->next;
    if (o->next)
        o->next->prev = o->prev;
    o->next = o->prev = NULL;
    a->running--;
}

/* Puts a finished op on the completion queue and wakes the loop. */
static void complete_locked(dbk_async *a, struct op *o)
{
    o->state = OP_DONE;
    o->next = NULL;
    if (a->ctail)
        a->ctail->next = o;
    else
        a->chead = o;
    a->ctail = o;
    if (!a->signalled) {
        a->signalled = true;
        fd_signal(a);
    }
}

/* Completes a queued op without running it. */
static void fail_queued_locked(dbk_async *a, struct op *o, dbk_rc rc)
{
    q_unlink(a, o);
    o->rc = rc;
    if (rc == DBK_ETIMEOUT) {
        dbk__err(&o->error, rc,
                 "the operation waited in the async queue past its timeout of %d ms and did "
                 "not run",
                 o->timeout_ms);
        dbk__err_hint(&o->error, "more workers (dbk_async_opts.workers, a larger pool) or a "
                                 "longer timeout; every worker was busy");
    } else if (a->closing) {
        dbk__err(&o->error, rc, "the async handle closed before the operation ran");
    } else {
        dbk__err(&o->error, rc, "the operation was cancelled before it ran");
    }
    complete_locked(a, o);
}

/* ---- running one operation (on a worker, without the lock) ---- */

static void run_op(dbk_async *a, struct op *o)
{
    dbk_error *e = &o->error;
    o->affected = -1;
    switch (o->kind) {
    case DBK_ASYNC_QUERY:
        o->rc = dbk_db_query(a->db, o->sql, o->params, o->nparams, &o->result, e);
        if (o->rc == DBK_OK)
            o->affected = (int64_t)dbk_result_nrows(o->result);
        break;
    case DBK_ASYNC_EXEC: {
        int64_t n = 0;
        o->rc = dbk_db_exec(a->db, o->sql, o->params, o->nparams, &n, e);
        if (o->rc == DBK_OK)
            o->affected = n;
        break;
    }
    case DBK_ASYNC_BATCH:
        o->rc = dbk_batch_run(a->db, o->batch, o->mode, e);
        break;
    case DBK_ASYNC_CALL:
        o->rc = o->fn(a->db, o->ctx, e);
        if (o->rc != DBK_OK && e->code == DBK_OK)
            dbk__err(e, o->rc, "%s", dbk_strerror(o->rc));
        break;
    case DBK_ASYNC_CACHE_GET:
        if (o->load)
            o->rc = dbk_cache_get_or_load(o->cache, o->key, o->keylen, o->load, o->load_ctx,
                                          o->ttl_ms, &o->value, &o->value_len, e);
        else
            o->rc = dbk_cache_get(o->cache, o->key, o->keylen, &o->value, &o->value_len, e);
        break;
    }
    if (o->rc != DBK_OK && e->code == DBK_OK)
        dbk__err(e, o->rc, "%s", dbk_strerror(o->rc));
}

static void *worker_main(void *arg)
{
    dbk_async *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->qhead && !a->stop) {
            a->idle++;
            pthread_cond_wait(&a->work, &a->mu);
            a->idle--;
        }
        if (!a->qhead)
            break; /* stop, and nothing left */
        struct op *o = a->qhead;
        if (o->deadline_ns && dbk__now_ns() >= o->deadline_ns) {
            fail_queued_locked(a, o, DBK_ETIMEOUT);
            continue;
        }
        q_unlink(a, o);
        o->state = OP_RUNNING;
        r_link(a, o);
        pthread_mutex_unlock(&a->mu);
        run_op(a, o);
        pthread_mutex_lock(&a->mu);
        r_unlink(a, o);
        complete_locked(a, o);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* The watchdog: fails queued operations whose deadline passed, so that a
 * timeout holds while every worker is busy. Sleeps until the earliest
 * queued deadline (a scan of the queue per wake-up; wake-ups happen only at
 * deadlines and when a submit brings an earlier one). */
static void *watchdog_main(void *arg)
{
    dbk_async *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        int64_t now = dbk__now_ns(), earliest = 0;
        for (struct op *o = a->qhead, *next; o; o = next) {
            next = o->next;
            if (!o->deadline_ns)
                continue;
            if (o->deadline_ns <= now)
                fail_queued_locked(a, o, DBK_ETIMEOUT);
            else if (!earliest || o->deadline_ns < earliest)
                earliest = o->deadline_ns;
        }
        a->wd_target_ns = earliest;
        if (!earliest) {
            pthread_cond_wait(&a->wd, &a->mu);
        } else {
            struct timespec ts = {(time_t)(earliest / 1000000000LL),
                                  (long)(earliest % 1000000000LL)};
            pthread_cond_timedwait(&a->wd, &a->mu, &ts);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ---- open / close ---- */

static dbk_rc cond_init_mono(pthread_cond_t *c)
{
    pthread_condattr_t at;
    if (pthread_condattr_init(&at) != 0)
        return DBK_EINTERNAL;
    pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
    int r = pthread_cond_init(c, &at);
    pthread_condattr_destroy(&at);
    return r == 0 ? DBK_OK : DBK_EINTERNAL;
}

static void stop_threads(dbk_async *a)
{
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_broadcast(&a->work);
    pthread_cond_broadcast(&a->wd);
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < a->nworkers; i++)
        pthread_join(a->workers[i], NULL);
    a->nworkers = 0;
    if (a->wd_started)
        pthread_join(a->wd_thread, NULL);
    a->wd_started = false;
}

static void free_handle(dbk_async *a)
{
    fd_close(a);
    pthread_cond_destroy(&a->work);
    pthread_cond_destroy(&a->wd);
    pthread_mutex_destroy(&a->mu);
    free(a->workers);
    free(a);
}

DBK__OPTS_INIT_FN(dbk_async_opts, DBK_ASYNC_OPTS_VERSION)

dbk_rc dbk_async_open(dbk_db *db, const dbk_async_opts *opts, dbk_async **out, dbk_error *err)
{
    if (out)
        *out = NULL;
    if (!db || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_open: db and out must not be NULL");
    if (opts && dbk__opts_check(opts->version, DBK_ASYNC_OPTS_VERSION, "dbk_async_opts", err))
        return DBK_EMISUSE;
    dbk_async_opts o;
    memset(&o, 0, sizeof o);
    if (opts)
        o = *opts;
    if (o.workers < 0 || o.workers > DBK_ASYNC_MAX_WORKERS)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_open: workers %d is outside 0..%d", o.workers,
                        DBK_ASYNC_MAX_WORKERS);
    if (o.max_pending > DBK_ASYNC_MAX_PENDING)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_open: max_pending %zu is over %d",
                        o.max_pending, DBK_ASYNC_MAX_PENDING);
    /* The executor says how many statements may run on it at once (a
     * pool: its max_size; a connection or a transaction: one). */
    int width = db->ops->max_parallel ? db->ops->max_parallel(db) : 1;
    if (width < 1)
        width = 1;
    int nworkers = o.workers ? o.workers : DBK_ASYNC_DEFAULT_MAX_WORKERS;
    if (nworkers > width)
        nworkers = width;

    dbk_async *a = calloc(1, sizeof *a);
    if (!a)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    a->db = db;
    a->max_pending = o.max_pending ? o.max_pending : DBK_ASYNC_DEFAULT_MAX_PENDING;
    a->next_id = 1;
    a->rfd = a->wfd = -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->work, NULL);
    if (cond_init_mono(&a->wd) != DBK_OK) {
        pthread_cond_destroy(&a->work);
        pthread_mutex_destroy(&a->mu);
        free(a);
        return dbk__err(err, DBK_EINTERNAL, "dbk_async_open: no monotonic condition variable");
    }
    a->workers = calloc((size_t)nworkers, sizeof *a->workers);
    if (!a->workers) {
        free_handle(a);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    if (fd_open(a) != 0) {
        int e = errno;
        free_handle(a);
        return dbk__err(err, DBK_EINTERNAL, "dbk_async_open: no completion descriptor: %s",
                        strerror(e));
    }
    int r = pthread_create(&a->wd_thread, NULL, watchdog_main, a);
    if (r == 0) {
        a->wd_started = true;
        for (int i = 0; i < nworkers && r == 0; i++) {
            r = pthread_create(&a->workers[i], NULL, worker_main, a);
            if (r == 0)
                a->nworkers++;
        }
    }
    if (r != 0) {
        stop_threads(a);
        free_handle(a);
        return dbk__err(err, r == EAGAIN ? DBK_ENOMEM : DBK_EINTERNAL,
                        "dbk_async_open: cannot start a thread: %s", strerror(r));
    }
    *out = a;
    return DBK_OK;
}

/* Hands one finished op to its callback and frees it. */
static void deliver(struct op *o)
{
    dbk_async_done d;
    memset(&d, 0, sizeof d);
    d.op = o->id;
    d.kind = o->kind;
    d.rc = o->rc;
    d.error = o->rc == DBK_OK ? NULL : &o->error;
    d.result = o->result;
    d.affected = o->rc == DBK_OK ? o->affected : -1;
    d.batch = o->batch;
    d.value = o->value;
    d.value_len = o->value_len;
    o->cb(o->ctx, &d);
    dbk_result_free(d.result);
    free(d.value);
    free(o);
}

size_t dbk_async_process(dbk_async *a, size_t max)
{
    if (!a || a->processing) /* NULL, or called again from a callback */
        return 0;
    fd_drain(a);
    pthread_mutex_lock(&a->mu);
    struct op *head = a->chead, *last = NULL;
    size_t n = 0;
    for (struct op *o = head; o && (max == 0 || n < max); o = o->next) {
        last = o;
        n++;
    }
    if (n) {
        a->chead = last->next;
        if (!a->chead)
            a->ctail = NULL;
        last->next = NULL;
        /* The slots free up now, so a callback may submit again. */
        a->inflight -= n;
    }
    if (a->chead)
        fd_signal(a); /* work left: keep the descriptor readable */
    else
        a->signalled = false;
    pthread_mutex_unlock(&a->mu);
    a->processing = true;
    for (struct op *o = head, *next; n && o; o = next) {
        next = o->next;
        deliver(o);
    }
    a->processing = false;
    return n;
}

void dbk_async_close(dbk_async *a)
{
    if (!a)
        return;
    if (a->processing) {
        /* From inside a callback: freeing the handle here would pull it
         * from under dbk_async_process(). Refuse loudly, change nothing. */
        dbk__log(DBK_LOG_ERROR, "dbk_async_close called from a completion callback: ignored "
                                "(close from the loop after dbk_async_process returned)");
        return;
    }
    pthread_mutex_lock(&a->mu);
    a->closing = true;
    while (a->qhead)
        fail_queued_locked(a, a->qhead, DBK_ECANCELLED);
    pthread_mutex_unlock(&a->mu);
    /* Workers finish what they run (bounded by its deadlines) and leave:
     * the queue is empty and stays so (submits are refused). */
    stop_threads(a);
    /* Every op is on the completion queue now; callbacks may submit, which
     * is refused, so this ends. */
    while (dbk_async_process(a, 0) > 0) {
    }
    free_handle(a);
}

int dbk_async_fd(const dbk_async *a)
{
    return a ? a->rfd : -1;
}

size_t dbk_async_pending(const dbk_async *a)
{
    if (!a)
        return 0;
    dbk_async *m = (dbk_async *)a;
    pthread_mutex_lock(&m->mu);
    size_t n = m->inflight;
    pthread_mutex_unlock(&m->mu);
    return n;
}

/* ---- submits ---- */

/* Checks the parameters and sizes their copies (as dbk_batch_add does:
 * the limits are checked before anything is copied). */
static dbk_rc params_size(const dbk_value *params, size_t nparams, size_t *bytes, dbk_error *err)
{
    if (nparams && !params)
        return dbk__err(err, DBK_EMISUSE, "dbk_async: %zu parameters but params is NULL", nparams);
    if (nparams > 65535)
        return dbk__err(err, DBK_EMISUSE, "%zu parameters exceed the limit of 65535", nparams);
    return dbk__params_size(params, nparams, bytes, err);
}

/* One allocation for the op and `extra` bytes behind it (aligned for
 * dbk_value). */
static struct op *op_alloc(size_t extra, dbk_error *err)
{
    size_t head = (sizeof(struct op) + 15) & ~(size_t)15;
    if (extra > SIZE_MAX - head) {
        dbk__err(err, DBK_ENOMEM, "out of memory");
        return NULL;
    }
    struct op *o = calloc(1, head + extra);
    if (!o)
        dbk__err(err, DBK_ENOMEM, "out of memory");
    return o;
}

static char *op_extra(struct op *o)
{
    return (char *)o + ((sizeof(struct op) + 15) & ~(size_t)15);
}

/* Queues a prepared op, or fails it back to the caller (freeing it). */
static dbk_rc submit(dbk_async *a, struct op *o, int timeout_ms, dbk_async_cb cb, void *ctx,
                     dbk_async_op *op, dbk_error *err)
{
    o->cb = cb;
    o->ctx = ctx;
    o->timeout_ms = timeout_ms;
    o->deadline_ns = timeout_ms > 0 ? dbk__now_ns() + (int64_t)timeout_ms * 1000000LL : 0;
    pthread_mutex_lock(&a->mu);
    if (a->closing) {
        pthread_mutex_unlock(&a->mu);
        free(o);
        return dbk__err(err, DBK_EMISUSE, "dbk_async: the handle is closing");
    }
    if (a->inflight >= a->max_pending) {
        size_t n = a->inflight;
        pthread_mutex_unlock(&a->mu);
        free(o);
        dbk__err(err, DBK_EBUSY, "dbk_async: %zu operations already in flight (max_pending %zu)", n,
                 a->max_pending);
        dbk__err_hint(err, "answer with back-pressure (503, stop reading) or raise "
                           "dbk_async_opts.max_pending; check that the loop calls "
                           "dbk_async_process");
        return DBK_EBUSY;
    }
    o->id = a->next_id++;
    o->state = OP_QUEUED;
    o->prev = a->qtail;
    o->next = NULL;
    if (a->qtail)
        a->qtail->next = o;
    else
        a->qhead = o;
    a->qtail = o;
    a->queued++;
    a->inflight++;
    if (op)
        *op = o->id;
    /* A busy worker looks at the queue before it waits again: only an idle
     * one needs waking (saves a futex call per submit under load). */
    if (a->idle > 0)
        pthread_cond_signal(&a->work);
    if (o->deadline_ns && (!a->wd_target_ns || o->deadline_ns < a->wd_target_ns)) {
        a->wd_target_ns = o->deadline_ns;
        pthread_cond_signal(&a->wd);
    }
    pthread_mutex_unlock(&a->mu);
    return DBK_OK;
}

static dbk_rc check_common(dbk_async *a, int timeout_ms, dbk_async_cb cb, dbk_error *err)
{
    if (!a || !cb)
        return dbk__err(err, DBK_EMISUSE, "dbk_async: NULL handle or callback");
    if (timeout_ms < 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_async: timeout_ms %d is negative", timeout_ms);
    return DBK_OK;
}

static dbk_rc submit_statement(dbk_async *a, dbk_async_kind kind, const char *sql,
                               const dbk_value *params, size_t nparams, int timeout_ms,
                               dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err)
{
    if (op)
        *op = 0;
    dbk_rc rc = check_common(a, timeout_ms, cb, err);
    if (rc != DBK_OK)
        return rc;
    if (!sql)
        return dbk__err(err, DBK_EMISUSE, "dbk_async: sql must not be NULL");
    size_t bytes = 0;
    if ((rc = params_size(params, nparams, &bytes, err)) != DBK_OK)
        return rc;
    size_t sqllen = strlen(sql);
    size_t vals = nparams * sizeof(dbk_value);
    if (bytes > SIZE_MAX - vals - sqllen - 1)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    struct op *o = op_alloc(vals + bytes + sqllen + 1, err);
    if (!o)
        return DBK_ENOMEM;
    char *p = op_extra(o);
    o->kind = kind;
    o->params = nparams ? (dbk_value *)p : NULL;
    o->nparams = nparams;
    p += vals;
    for (size_t i = 0; i < nparams; i++) {
        o->params[i] = params[i];
        dbk_type t = params[i].type;
        if (t != DBK_TYPE_TEXT && t != DBK_TYPE_BLOB && t != DBK_TYPE_JSON)
            continue;
        size_t len = params[i].u.bytes.len;
        if (len)
            memcpy(p, params[i].u.bytes.ptr, len);
        o->params[i].u.bytes.ptr = p;
        p += len;
    }
    memcpy(p, sql, sqllen + 1);
    o->sql = p;
    return submit(a, o, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_query(dbk_async *a, const char *sql, const dbk_value *params, size_t nparams,
                       int timeout_ms, dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err)
{
    return submit_statement(a, DBK_ASYNC_QUERY, sql, params, nparams, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_exec(dbk_async *a, const char *sql, const dbk_value *params, size_t nparams,
                      int timeout_ms, dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err)
{
    return submit_statement(a, DBK_ASYNC_EXEC, sql, params, nparams, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_batch(dbk_async *a, dbk_batch *b, dbk_batch_mode mode, int timeout_ms,
                       dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err)
{
    if (op)
        *op = 0;
    dbk_rc rc = check_common(a, timeout_ms, cb, err);
    if (rc != DBK_OK)
        return rc;
    if (!b)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_batch: the batch must not be NULL");
    struct op *o = op_alloc(0, err);
    if (!o)
        return DBK_ENOMEM;
    o->kind = DBK_ASYNC_BATCH;
    o->batch = b;
    o->mode = mode;
    return submit(a, o, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_call(dbk_async *a, dbk_parallel_fn fn, int timeout_ms, dbk_async_cb cb,
                      void *ctx, dbk_async_op *op, dbk_error *err)
{
    if (op)
        *op = 0;
    dbk_rc rc = check_common(a, timeout_ms, cb, err);
    if (rc != DBK_OK)
        return rc;
    if (!fn)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_call: fn must not be NULL");
    struct op *o = op_alloc(0, err);
    if (!o)
        return DBK_ENOMEM;
    o->kind = DBK_ASYNC_CALL;
    o->fn = fn;
    return submit(a, o, timeout_ms, cb, ctx, op, err);
}

static dbk_rc submit_cache(dbk_async *a, dbk_cache *cache, const void *key, size_t keylen,
                           dbk_cache_load_fn load, void *load_ctx, int64_t ttl_ms, int timeout_ms,
                           dbk_async_cb cb, void *ctx, dbk_async_op *op, dbk_error *err)
{
    if (op)
        *op = 0;
    dbk_rc rc = check_common(a, timeout_ms, cb, err);
    if (rc != DBK_OK)
        return rc;
    if (!cache || !key || keylen == 0 || keylen > DBK_CACHE_MAX_KEY)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_async: a cache and a key of 1..%d bytes are needed (got %zu)",
                        DBK_CACHE_MAX_KEY, keylen);
    struct op *o = op_alloc(keylen, err);
    if (!o)
        return DBK_ENOMEM;
    memcpy(op_extra(o), key, keylen);
    o->kind = DBK_ASYNC_CACHE_GET;
    o->cache = cache;
    o->key = op_extra(o);
    o->keylen = keylen;
    o->load = load;
    o->load_ctx = load_ctx;
    o->ttl_ms = ttl_ms;
    return submit(a, o, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_cache_get(dbk_async *a, dbk_cache *cache, const void *key, size_t keylen,
                           int timeout_ms, dbk_async_cb cb, void *ctx, dbk_async_op *op,
                           dbk_error *err)
{
    return submit_cache(a, cache, key, keylen, NULL, NULL, 0, timeout_ms, cb, ctx, op, err);
}

dbk_rc dbk_async_cache_get_or_load(dbk_async *a, dbk_cache *cache, const void *key, size_t keylen,
                                   dbk_cache_load_fn load, void *load_ctx, int64_t ttl_ms,
                                   int timeout_ms, dbk_async_cb cb, void *ctx, dbk_async_op *op,
                                   dbk_error *err)
{
    if (op)
        *op = 0;
    if (!load || ttl_ms <= 0)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_async_cache_get_or_load: a loader and ttl_ms > 0 are needed");
    return submit_cache(a, cache, key, keylen, load, load_ctx, ttl_ms, timeout_ms, cb, ctx, op,
                        err);
}

dbk_rc dbk_async_cancel(dbk_async *a, dbk_async_op op, dbk_error *err)
{
    if (!a)
        return dbk__err(err, DBK_EMISUSE, "dbk_async_cancel: the handle must not be NULL");
    pthread_mutex_lock(&a->mu);
    for (struct op *o = a->qhead; o; o = o->next) {
        if (o->id == op) {
            fail_queued_locked(a, o, DBK_ECANCELLED);
            pthread_mutex_unlock(&a->mu);
            return DBK_OK;
        }
    }
    for (struct op *o = a->rhead; o; o = o->next) {
        if (o->id == op) {
            pthread_mutex_unlock(&a->mu);
            return dbk__err(err, DBK_EBUSY,
                            "dbk_async_cancel: operation %llu is running; it completes with its "
                            "own outcome",
                            (unsigned long long)op);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return dbk__err(err, DBK_ENOT_FOUND, "dbk_async_cancel: operation %llu is not in flight",
                    (unsigned long long)op);
}
