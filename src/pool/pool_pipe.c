/*
 * pool_pipe.c - auto-pipelining: statements of many threads share the
 * round trips of a few connections (PostgreSQL, DB_AUTO_PIPELINE).
 *
 * Why. A pool of N connections answers at most N statements per round
 * trip; a thread that finds all N busy used to wait for one to come back.
 * With auto-pipelining it queues its statement instead, and whichever
 * caller gets the next connection sends every queued statement with its own
 * in one pipeline: N busy connections serve any number of threads at about
 * one round trip per pipeline.
 *
 * How. A statement run on the pool's dbk_db outside a transaction (plain
 * queries and DML only: dbk__pool_sql_pipelinable) acquires as before: an
 * idle connection is taken at once, and the statement runs alone, exactly as
 * without auto-pipelining - so a quiet pool pays nothing. Only when the
 * caller has to wait does its waiter carry the statement (struct pipe_req).
 * The waiter queue stays one FIFO: a released connection goes to the head
 * waiter; when that waiter carries a statement it becomes the runner: it
 * takes every other queued statement (up to PIPE_MAX, transactions and
 * acquires that want a whole connection keep their place in the queue),
 * sends them all in one pipeline with a Sync after each, and hands every
 * rider its own outcome.
 *
 * Semantics are those of one statement on its own: each statement is its
 * own implicit transaction (committed or failed alone, its locks held only
 * for itself, never sent twice: the driver's pipeline op, not the batch
 * layer's optimistic single Sync), gets its own result and error, and the
 * query observer (src/db/db.c) sees it as one statement with its own
 * latency. A statement the connection never sent (the connection was lost
 * before it) is queued again while its acquire timeout lasts, and is
 * DBK_EUNAVAILABLE past it (never DBK_ENOT_RUN, a batch's code). Waits: a queued statement
 * leaves at its acquire timeout like any waiter; once taken it is in
 * flight and its outcome comes within the runner's statement deadlines
 * (each answer of a pipeline is waited for with the statement timeout).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_impl.h"

/* Statements in one pipeline, the runner's own included. Bounded so that
 * one answer does not wait behind an unbounded queue, and so the items fit
 * on the runner's stack. */
#define PIPE_MAX 64

/* Takes up to max queued statements out of the wait queue (pool lock not
 * held). Waiters that want a whole connection keep their place. */
static int take_riders(dbk_pool *p, struct waiter **out, int max)
{
    int n = 0;
    pthread_mutex_lock(&p->mu);
    for (struct waiter *w = p->wq_head, *next; w && n < max; w = next) {
        next = w->next;
        if (!w->req || w->taken)
            continue;
        dbk__pool_wq_remove(p, w);
        w->taken = true;
        out[n++] = w;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* Wakes the riders: their items are filled. Each rider returns as soon as
 * it sees its event without taking the pool lock, so its accounting is
 * done here, once for all; after its post the runner must not touch a
 * rider (it lives on the rider's stack). */
static void riders_done(dbk_pool *p, struct waiter **riders, int n)
{
    pthread_mutex_lock(&p->mu);
    p->pipelines++;
    p->pipelined += (uint64_t)n;
    p->n_wait_threads -= n;
    if (p->closing)
        pthread_cond_broadcast(&p->drain_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++) {
        __atomic_store_n(&riders[i]->rode, 1, __ATOMIC_RELAXED);
        dbk__pevent_post(&riders[i]->ev); /* release: the item and rode */
    }
}

/* Hands an item's outcome to the caller: the result (freed when not
 * wanted), the affected count, the error. */
static dbk_rc deliver(dbk__batch_item *it, dbk_result **out, int64_t *affected, dbk_error *err)
{
    dbk_rc rc = it->rc;
    if (rc == DBK_OK) {
        if (out)
            *out = it->res;
        else
            dbk_result_free(it->res);
        if (affected)
            *affected = it->affected;
    } else {
        dbk_result_free(it->res);
        if (err) {
            if (it->err)
                *err = *it->err;
            else
                dbk__err(err, rc, "the statement failed in a pipeline");
        }
    }
    it->res = NULL;
    free(it->err);
    it->err = NULL;
    return rc;
}

static void item_init(dbk__batch_item *it, const char *sql, const dbk_value *params, size_t nparams)
{
    memset(it, 0, sizeof *it);
    it->sql = sql;
    it->params = params;
    it->nparams = nparams;
    it->rc = DBK_ENOT_RUN;
    it->affected = -1;
}

/* A statement that was never sent (the connection it was to ride on died
 * first) is queued again while its acquire timeout lasts; past it the
 * caller hears what a statement of its own would have said. */
static bool requeue(const dbk_pool *p, int64_t t0, dbk__batch_item *it)
{
    if (it->rc != DBK_ENOT_RUN)
        return false;
    if (dbk__now_ns() - t0 < (int64_t)p->o.acquire_timeout_ms * 1000000LL) {
        dbk_result_free(it->res);
        free(it->err);
        it->res = NULL;
        it->err = NULL;
        return true;
    }
    dbk_error e;
    dbk__err(&e, DBK_EUNAVAILABLE,
             "database unavailable: the statement was never sent, the connections it was queued "
             "on were lost first, for %d ms (%s)",
             p->o.acquire_timeout_ms, it->err ? it->err->message : "not run");
    dbk__err_hint(&e, "check that the server is running (`dbkit doctor`); the pool reconnects by "
                      "itself, and the statement did not run: it is safe to retry");
    dbk__driver_item_fail(it, DBK_EUNAVAILABLE, &e);
    return false;
}

dbk_rc dbk__pool_pipe_run(dbk_pool *p, const char *sql, const dbk_value *params, size_t nparams,
                          dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct site st = {"dbk_db", NULL, sql, 0};
    int64_t t0 = dbk__now_ns();
    for (;;) {
        struct pipe_req me;
        item_init(&me.item, sql, params, nparams);
        dbk_conn *c = NULL;
        bool rode = false;
        dbk_rc rc = dbk__pool_acquire_or_ride(p, &st, &me, &c, &rode, err);
        if (rc != DBK_OK)
            return rc;
        if (rode) {
            /* Not sent (the runner's connection was lost first): queue again. */
            if (requeue(p, t0, &me.item))
                continue;
            return deliver(&me.item, out, affected, err);
        }

        /* We hold a connection: take whoever queued behind us. */
        struct waiter *riders[PIPE_MAX - 1];
        int nr = take_riders(p, riders, PIPE_MAX - 1);
        if (nr == 0) {
            rc = c->db.ops->run(&c->db, sql, params, nparams, out, affected, err);
            dbk__pool_release(p, c, false);
            return rc;
        }
        dbk__batch_item items[PIPE_MAX];
        items[0] = me.item;
        for (int i = 0; i < nr; i++)
            items[i + 1] = riders[i]->req->item;
        dbk__pool_lent_pipeline(c, items, (size_t)nr + 1);
        for (int i = 0; i < nr; i++)
            riders[i]->req->item = items[i + 1];
        riders_done(p, riders, nr);
        dbk__pool_release(p, c, false);
        if (requeue(p, t0, &items[0]))
            continue;
        return deliver(&items[0], out, affected, err);
    }
}
