/*
 * pg_pipeline.c - the PostgreSQL driver's batches: many statements in one
 * round trip in libpq's pipeline mode, each item hitting or filling the
 * statement cache, atomic batches inside one implicit transaction.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

/* ---- batches: many statements, one round trip ---- */

enum { B_SKIP = 0, B_UNNAMED = 1, B_HIT = 2, B_MISS = 3 };

struct bstate {
    unsigned char kind;
    uint64_t hash;
    char name[PG_NAME_MAX];
};

/* Forgets a statement this batch prepared whose Parse did not happen (it
 * may have been evicted again meanwhile: then there is nothing to do). */
static void cache_forget(pg_conn *pc, uint64_t h, const char *name)
{
    if (!pc->buckets)
        return;
    for (struct pg_stmt *s = pc->buckets[h & (pc->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && strcmp(s->name, name) == 0) {
            dbk__pg_cache_remove(pc, s);
            free(s);
            return;
        }
}

/* The connection failed at item `from`: items from `from` on that were
 * sent (index < sent_end) have an unknown outcome, the others did not run.
 * The item at `from` gets rc itself when that is more precise (a timeout).
 * Items before `from` that were sent but never answered (the loss came
 * while the batch was still being sent) are unknown too. In an atomic
 * batch nothing is known to be committed, so the items that had answered
 * are unknown as well. */
static void batch_abandon(dbk__batch_item *items, const struct bstate *st, size_t from, size_t n,
                          size_t sent_end, bool atomic, dbk_rc rc, const dbk_error *why)
{
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        if (i < from) {
            if (atomic && it->rc == DBK_OK)
                dbk__driver_item_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the "
                                 "all-or-nothing batch committed (%s)",
                                 why->message);
            else if (it->rc == DBK_ENOT_RUN && !it->err) /* sent, never answered */
                dbk__driver_item_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the answer "
                                 "to this statement arrived (%s)",
                                 why->message);
        } else if (i < sent_end) {
            if (i == from && rc != DBK_ECONN_LOST)
                dbk__driver_item_fail(it, rc, why);
            else
                dbk__driver_item_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the answer "
                                 "to this statement arrived (%s)",
                                 why->message);
        } else {
            dbk__driver_item_failf(it, DBK_ENOT_RUN,
                             "not run: the connection was lost before it was sent (%s)",
                             why->message);
        }
    }
}

/* The batch's answer: the first statement that failed on its own. */
static dbk_rc batch_outcome(const dbk__batch_item *items, size_t n)
{
    dbk_rc any = DBK_OK;
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc != DBK_OK && items[i].rc != DBK_ENOT_RUN)
            return items[i].rc;
        if (items[i].rc == DBK_ENOT_RUN)
            any = DBK_ENOT_RUN;
    }
    return any;
}

/* How a pass over the batch is synced. */
enum bmode {
    BM_ATOMIC = 0,     /* one Sync: one implicit transaction, all or nothing */
    BM_OPTIMISTIC = 1, /* one Sync; on a failure the caller runs BM_EACH */
    BM_EACH = 2        /* a Sync after every statement: each stands alone */
};

/* One pass: sends the items not yet decided (kind != B_SKIP) in pipeline
 * mode - [Parse,] Bind/Execute [, Sync] each, Sync per mode - flushes once
 * and reads the answers in order. Statements come from the connection's
 * statement cache like single ones; a miss is prepared inside the
 * pipeline and cached at once, so a later entry with the same SQL reuses
 * it. *stmt_failed tells whether a statement failed on its own while the
 * connection stayed usable. */
static void pg_batch_pass(pg_conn *pc, dbk__batch_item *items, struct bstate *st, size_t n,
                          enum bmode mode, bool in_tx, bool mark_undone, bool *stmt_failed)
{
    dbk_error e;
    bool one_sync = mode != BM_EACH;
    bool atomic = mode == BM_ATOMIC;
    *stmt_failed = false;
    const char *sv[PG_STACK_PARAMS];
    int sl[PG_STACK_PARAMS], sf[PG_STACK_PARAMS];
    Oid sty[PG_STACK_PARAMS];
    char ssig[PG_STACK_PARAMS + 1];
    char scratch[PG_STACK_SCRATCH];
    struct pg_params pp = {0, sv, sl, sf, sty, ssig};
    size_t maxp = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].nparams > maxp)
            maxp = items[i].nparams;
    if (maxp > PG_STACK_PARAMS) {
        if (!dbk__pg_grow_param_arrays(pc, maxp)) {
            dbk__err(&e, DBK_ENOMEM, "out of memory binding %zu parameters", maxp);
            for (size_t i = 0; i < n; i++)
                if (st[i].kind != B_SKIP)
                    dbk__driver_item_fail(&items[i], DBK_ENOMEM, &e);
            return;
        }
        pp.values = pc->pvals;
        pp.lengths = pc->plens;
        pp.formats = pc->pfmts;
        pp.types = pc->ptypes;
        pp.sig = pc->psig;
    }
    dbk_rc rc;
    if (!PQenterPipelineMode(pc->conn)) {
        dbk__pg_lost(pc, &e);
        batch_abandon(items, st, 0, n, 0, one_sync, DBK_ECONN_LOST, &e);
        return;
    }
    size_t nsent = 0;
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        pp.n = 0;
        rc = dbk__pg_bind_params(pc, it->params, it->nparams, &pp, scratch, &e);
        if (rc) {
            dbk__driver_item_fail(it, rc, &e);
            st[i].kind = B_SKIP;
            if (atomic) {
                for (size_t k = 0; k < n; k++)
                    if (k != i)
                        dbk__driver_item_failf(&items[k], DBK_ENOT_RUN,
                                         "not run: statement %zu of the all-or-nothing batch "
                                         "has a bad parameter",
                                         i);
                /* The statements before it sit unsynced in libpq's
                 * buffer and cannot be taken back: the connection is
                 * closed rather than sent on. */
                dbk__pg_mark_broken(pc);
                return;
            }
            continue;
        }
        int ok;
        st[i].kind = B_UNNAMED;
        if (pc->cache_cap == 0) {
            ok = PQsendQueryParams(pc->conn, it->sql, pp.n, pp.types, pp.values, pp.lengths,
                                   pp.formats, 0);
        } else {
            size_t len = strlen(it->sql);
            uint64_t h = dbk__pg_hash_key(it->sql, len, pp.sig, it->nparams);
            struct pg_stmt *s = dbk__pg_cache_find(pc, h, it->sql, len, pp.sig, it->nparams);
            if (s) {
                dbk__lru_touch(&pc->lru, &s->lru);
                st[i].kind = B_HIT;
                ok = PQsendQueryPrepared(pc->conn, s->name, pp.n, pp.values, pp.lengths,
                                         pp.formats, 0);
            } else {
                dbk__pg_cache_make_room(pc);
                s = dbk__pg_stmt_new(pc, h, it->sql, len, pp.sig, it->nparams);
                if (s && dbk__pg_cache_insert(pc, s)) {
                    st[i].kind = B_MISS;
                    st[i].hash = h;
                    memcpy(st[i].name, s->name, sizeof st[i].name);
                    ok = PQsendPrepare(pc->conn, s->name, s->sql, pp.n, pp.types) &&
                         PQsendQueryPrepared(pc->conn, s->name, pp.n, pp.values, pp.lengths,
                                             pp.formats, 0);
                } else {
                    free(s);
                    ok = PQsendQueryParams(pc->conn, it->sql, pp.n, pp.types, pp.values,
                                           pp.lengths, pp.formats, 0);
                }
            }
        }
        if (!ok || (!one_sync && !PQpipelineSync(pc->conn))) {
            dbk__pg_lost(pc, &e);
            batch_abandon(items, st, i, n, i, one_sync, DBK_ECONN_LOST, &e);
            return;
        }
        nsent++;
    }
    if (nsent == 0) {
        if (!PQexitPipelineMode(pc->conn))
            dbk__pg_mark_broken(pc);
        return;
    }
    if (one_sync && !PQpipelineSync(pc->conn)) {
        dbk__pg_lost(pc, &e);
        batch_abandon(items, st, 0, n, n, one_sync, DBK_ECONN_LOST, &e);
        return;
    }
    int64_t deadline = dbk__pg_stmt_deadline(pc);
    rc = dbk__pg_flush_out(pc, deadline, dbk__pg_budget_of(deadline), true, &e);
    if (rc) {
        batch_abandon(items, st, 0, n, n, one_sync, rc, &e);
        return;
    }

    /* Answers, in order: [Parse,] the statement's result [, Sync]. */
    size_t failed_at = n;
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        PGresult *r = NULL, *prep = NULL;
        deadline = dbk__pg_stmt_deadline(pc);
        int64_t budget = dbk__pg_budget_of(deadline);
        if (st[i].kind == B_MISS && (rc = dbk__pg_pipeline_next(pc, deadline, budget, &prep, &e))) {
            batch_abandon(items, st, i, n, n, one_sync, rc, &e);
            return;
        }
        if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &r, &e))) {
            PQclear(prep);
            batch_abandon(items, st, i, n, n, one_sync, rc, &e);
            return;
        }
        it->done_ns = dbk__now_ns();
        /* A failed Parse explains the statement's failure. */
        PGresult *ans = r;
        if (prep && PQresultStatus(prep) != PGRES_COMMAND_OK) {
            cache_forget(pc, st[i].hash, st[i].name);
            ans = prep;
        }
        ExecStatusType s = PQresultStatus(ans);
        const char *state = dbk__pg_is_error_status(s) ? PQresultErrorField(ans, PG_DIAG_SQLSTATE) : NULL;
        if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK || s == PGRES_EMPTY_QUERY) {
            dbk__pg_note_command(pc, r);
            rc = dbk__pg_build_result(r, &it->res, &e);
            if (rc == DBK_OK) {
                it->rc = DBK_OK;
                size_t nr = dbk_result_nrows(it->res);
                it->affected = nr ? (int64_t)nr : it->res->affected;
            } else {
                dbk__driver_item_fail(it, rc, &e);
            }
        } else if (s == PGRES_PIPELINE_ABORTED) {
            rc = DBK_ENOT_RUN;
            dbk__driver_item_failf(it, rc, "not run: statement %zu of the all-or-nothing batch failed",
                             failed_at);
        } else if (state && strcmp(state, "25P02") == 0 && failed_at < n) {
            rc = DBK_ENOT_RUN;
            dbk__driver_item_failf(it, rc,
                             "not run: statement %zu of the batch failed and aborted the "
                             "transaction",
                             failed_at);
        } else if (dbk__pg_is_error_status(s)) {
            rc = dbk__pg_result_error(pc, ans, &e);
            dbk__driver_item_fail(it, rc, &e);
        } else {
            /* COPY got past is_copy, or a protocol surprise: libpq cannot
             * leave this state in pipeline mode. */
            PQclear(r);
            PQclear(prep);
            dbk__pg_mark_broken(pc);
            dbk__err(&e, DBK_EINTERNAL, "unexpected %s in a batch; the connection was closed",
                     PQresStatus(s));
            batch_abandon(items, st, i, n, n, one_sync, DBK_EINTERNAL, &e);
            return;
        }
        PQclear(r);
        PQclear(prep);
        if (rc != DBK_OK && rc != DBK_ENOT_RUN && failed_at == n)
            failed_at = i;
        if (rc == DBK_ECONN_LOST) {
            batch_abandon(items, st, i + 1, n, n, one_sync, DBK_ECONN_LOST,
                          it->err ? it->err : &e);
            return;
        }
        if (!one_sync) {
            if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &r, &e))) {
                batch_abandon(items, st, i + 1, n, n, one_sync, rc, &e);
                return;
            }
            PQclear(r); /* PGRES_PIPELINE_SYNC */
        }
    }
    if (one_sync) {
        PGresult *r = NULL;
        deadline = dbk__pg_stmt_deadline(pc);
        if ((rc = dbk__pg_pipeline_next(pc, deadline, dbk__pg_budget_of(deadline), &r, &e))) {
            batch_abandon(items, st, n, n, n, one_sync, rc, &e);
            return;
        }
        PQclear(r); /* PGRES_PIPELINE_SYNC: the implicit transaction ended */
        for (size_t i = 0; mark_undone && i < failed_at && failed_at < n; i++)
            if (items[i].rc == DBK_OK)
                dbk__driver_item_failf(&items[i], DBK_ENOT_RUN,
                                 in_tx ? "undone: statement %zu of the all-or-nothing batch "
                                         "failed and aborted the transaction"
                                       : "rolled back: statement %zu of the all-or-nothing "
                                         "batch failed",
                                 failed_at);
    }
    if (!PQexitPipelineMode(pc->conn))
        dbk__pg_mark_broken(pc);
    *stmt_failed = failed_at < n && dbk__pg_conn_usable(pc);
}

/* A batch. Atomic: one pass with one Sync. Independent: outside a
 * transaction block the first pass is optimistic - one Sync, so the
 * server runs the batch as one implicit transaction instead of starting
 * and ending one per statement (about 4x the throughput measured on 100
 * lookups) - and only when a statement fails, which rolls that implicit
 * transaction back and leaves nothing of it behind, the batch is sent
 * again with a Sync after every statement, so that each outcome is the
 * statement's own. Inside a transaction block a failure aborts the block
 * anyway, so one pass with one Sync gives the same outcomes. */
static dbk_rc batch_run(void *impl, dbk__batch_item *items, size_t n, bool atomic, bool each)
{
    pg_conn *pc = impl;
    dbk_error e;
    if (!dbk__pg_conn_usable(pc)) {
        dbk_rc urc = dbk__pg_unusable_err(pc, &e);
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], i ? DBK_ENOT_RUN : urc, &e);
        return urc;
    }
    if (PQtransactionStatus(pc->conn) == PQTRANS_ACTIVE) {
        dbk__pg_mark_broken(pc);
        dbk__err(&e, DBK_EINTERNAL, "a previous statement is still in flight");
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], i ? DBK_ENOT_RUN : DBK_EINTERNAL, &e);
        return DBK_EINTERNAL;
    }
    bool in_tx = PQtransactionStatus(pc->conn) != PQTRANS_IDLE;
    struct bstate stack_st[32];
    struct bstate *st = n <= 32 ? stack_st : malloc(n * sizeof *st);
    if (!st) {
        dbk__err(&e, DBK_ENOMEM, "out of memory running a batch of %zu statements", n);
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], i ? DBK_ENOT_RUN : DBK_ENOMEM, &e);
        return DBK_ENOMEM;
    }

    /* Refusals before anything is sent: in an atomic batch one refused
     * statement means none runs. */
    size_t refused = n;
    for (size_t i = 0; i < n; i++) {
        st[i].kind = B_UNNAMED;
        dbk_rc prc = DBK_OK;
        if (dbk__pg_is_copy(items[i].sql))
            prc = dbk__pg_copy_refused_err(&e);
        else
            prc = dbk__pg_check_params(items[i].params, items[i].nparams, &e);
        if (prc) {
            dbk__driver_item_fail(&items[i], prc, &e);
            st[i].kind = B_SKIP;
            if (refused == n)
                refused = i;
        }
    }
    if (atomic && refused < n) {
        for (size_t i = 0; i < n; i++)
            if (i != refused)
                dbk__driver_item_failf(&items[i], DBK_ENOT_RUN,
                                 "not run: statement %zu of the all-or-nothing batch was refused",
                                 refused);
    } else if (atomic || in_tx) {
        bool failed;
        /* In a transaction an independent batch keeps the outcomes of
         * the statements before a failure: they ran, and go with the
         * transaction. */
        pg_batch_pass(pc, items, st, n, BM_ATOMIC, in_tx, atomic, &failed);
    } else if (each) {
        bool failed;
        pg_batch_pass(pc, items, st, n, BM_EACH, false, false, &failed);
    } else {
        bool failed;
        pg_batch_pass(pc, items, st, n, BM_OPTIMISTIC, false, false, &failed);
        if (failed) {
            for (size_t i = 0; i < n; i++) {
                if (st[i].kind == B_SKIP)
                    continue;
                dbk_result_free(items[i].res);
                items[i].res = NULL;
                free(items[i].err);
                items[i].err = NULL;
                items[i].rc = DBK_ENOT_RUN;
                items[i].affected = -1;
            }
            pg_batch_pass(pc, items, st, n, BM_EACH, false, false, &failed);
        }
    }
    if (st != stack_st)
        free(st);
    return batch_outcome(items, n);
}

dbk_rc dbk__pg_batch(void *impl, dbk__batch_item *items, size_t n, bool atomic)
{
    return batch_run(impl, items, n, atomic, false);
}

/* Statements of different callers (the pool's auto-pipelining): a Sync
 * after every statement from the start, so each runs in its own implicit
 * transaction - committed on its own, holding its locks only for itself,
 * failing without touching the others - and none is ever sent twice. One
 * flush, one round trip. Outside a transaction block only. */
dbk_rc dbk__pg_pipeline(void *impl, dbk__batch_item *items, size_t n)
{
    pg_conn *pc = impl;
    PGTransactionStatusType ts = dbk__pg_conn_usable(pc) ? PQtransactionStatus(pc->conn) : PQTRANS_IDLE;
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        dbk_error e;
        dbk__err(&e, DBK_EINTERNAL, "a pipeline of independent statements inside a transaction");
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], i ? DBK_ENOT_RUN : DBK_EINTERNAL, &e);
        return DBK_EINTERNAL;
    }
    return batch_run(impl, items, n, false, true);
}
