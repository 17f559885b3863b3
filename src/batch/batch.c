/*
 * Batches.
 *
 * A batch owns copies of its statements (SQL text, values and the bytes
 * they point to) in one arena, so adding costs a few bump allocations and a
 * batch cleared and refilled per request allocates nothing after warm-up.
 * Running hands the array of dbk__batch_item to the executor's batch op:
 * the pool checks out one connection, a transaction checks its state, and
 * the connection either has a driver batch (PostgreSQL: one pipeline, see
 * pg_batch) or falls back to dbk__db_batch_serial (src/db/db_batch.c), which
 * runs the items one by one through the executor's run op (SQLite, where a
 * round trip is a function call anyway). An item's outcome is recorded with
 * dbk__driver_item_fail (src/driver/batch_item.c).
 *
 * Errors stay per statement. Only failures allocate: an item's error is a
 * heap copy made when it fails, so a batch of 100 successful lookups does
 * not carry 100 zeroed dbk_error structs.
 *
 * dbk_parallel_run lives in parallel.c.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/batch.h"
#include "dbkit/arena.h"
#include "../core/internal.h"
#include "../db/db_int.h"
#include "batch_int.h"

struct dbk_batch {
    dbk__batch_item *items;
    size_t n, cap;
    dbk_arena *arena;
    bool ran;
};

static void item_reset(dbk__batch_item *it)
{
    dbk_result_free(it->res);
    it->res = NULL;
    free(it->err);
    it->err = NULL;
    it->rc = DBK_ENOT_RUN;
    it->affected = -1;
    it->done_ns = 0;
}

/* ---- the batch object ---- */

dbk_rc dbk_batch_new(dbk_batch **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_batch_new: out must not be NULL");
    *out = NULL;
    dbk_batch *b = calloc(1, sizeof *b);
    if (!b || !(b->arena = dbk_arena_new(4096))) {
        free(b);
        return dbk__err(err, DBK_ENOMEM, "out of memory creating a batch");
    }
    *out = b;
    return DBK_OK;
}

static void clear_outcomes(dbk_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        item_reset(&b->items[i]);
    b->ran = false;
}

void dbk_batch_clear(dbk_batch *b)
{
    if (!b)
        return;
    clear_outcomes(b);
    b->n = 0;
    dbk_arena_reset(b->arena);
}

void dbk_batch_free(dbk_batch *b)
{
    if (!b)
        return;
    clear_outcomes(b);
    free(b->items);
    dbk_arena_free(b->arena);
    free(b);
}

size_t dbk_batch_count(const dbk_batch *b)
{
    return b ? b->n : 0;
}

dbk_rc dbk_batch_add(dbk_batch *b, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_error *err)
{
    if (!b || !sql)
        return dbk__err(err, DBK_EMISUSE, "dbk_batch_add: batch and sql must not be NULL");
    if (nparams && !params)
        return dbk__err(err, DBK_EMISUSE, "dbk_batch_add: %zu parameters but params is NULL",
                        nparams);
    if (nparams > 65535)
        return dbk__err(err, DBK_EMISUSE, "%zu parameters exceed the limit of 65535", nparams);
    /* Values are copied into the batch, so the size limits are checked
     * here, before the copy: no value over what any engine accepts (and no
     * statement over what one PostgreSQL message carries) costs memory. */
    size_t total = 0;
    dbk_rc prc = dbk__params_size(params, nparams, &total, err);
    if (prc != DBK_OK)
        return prc;
    if (b->ran)
        clear_outcomes(b);
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        dbk__batch_item *p = realloc(b->items, cap * sizeof *p);
        if (!p)
            return dbk__err(err, DBK_ENOMEM, "out of memory growing a batch");
        b->items = p;
        b->cap = cap;
    }
    /* The previous statement's SQL is reused when it is the same text: a
     * batch of 100 lookups keeps one copy. */
    const char *copy = NULL;
    if (b->n && strcmp(b->items[b->n - 1].sql, sql) == 0)
        copy = b->items[b->n - 1].sql;
    else
        copy = dbk_arena_strdup(b->arena, sql);
    dbk_value *vals = NULL;
    if (copy && nparams) {
        vals = dbk_arena_alloc(b->arena, nparams * sizeof *vals);
        if (vals) {
            memcpy(vals, params, nparams * sizeof *vals);
            for (size_t i = 0; i < nparams && vals; i++) {
                dbk_type t = vals[i].type;
                if ((t == DBK_TYPE_TEXT || t == DBK_TYPE_BLOB || t == DBK_TYPE_JSON) &&
                    vals[i].u.bytes.ptr) {
                    void *d = dbk_arena_memdup(b->arena, vals[i].u.bytes.ptr,
                                               vals[i].u.bytes.len ? vals[i].u.bytes.len : 1);
                    if (!d)
                        vals = NULL;
                    else
                        vals[i].u.bytes.ptr = d;
                }
            }
        }
    }
    if (!copy || (nparams && !vals))
        return dbk__err(err, DBK_ENOMEM, "out of memory copying a batch statement");
    dbk__batch_item *it = &b->items[b->n++];
    memset(it, 0, sizeof *it);
    it->sql = copy;
    it->params = vals;
    it->nparams = nparams;
    it->rc = DBK_ENOT_RUN;
    it->affected = -1;
    return DBK_OK;
}

void dbk__batch_prefix(dbk_error *err, const char *what, size_t i, const char *msg)
{
    char copy[sizeof err->message];
    dbk__strlcpy(copy, msg, sizeof copy);
    int k = snprintf(err->message, sizeof err->message, "%s %zu: ", what, i);
    if (k > 0 && (size_t)k < sizeof err->message)
        dbk__strlcpy(err->message + k, copy, sizeof err->message - (size_t)k);
}

static void report(dbk_db *db, dbk_batch *b, int64_t t0)
{
    int64_t prev = t0;
    for (size_t i = 0; i < b->n; i++) {
        dbk__batch_item *it = &b->items[i];
        int64_t done = it->done_ns ? it->done_ns : prev;
        dbk_query_event ev = {it->sql,
                              it->nparams,
                              done > prev ? done - prev : 0,
                              it->rc == DBK_OK ? it->affected : 0,
                              it->rc,
                              db->engine,
                              it->params,
                              it->rc ? it->err : NULL,
                              i,
                              b->n};
        prev = done;
        db->observer(db->observer_ctx, &ev);
    }
}

dbk_rc dbk_batch_run(dbk_db *db, dbk_batch *b, dbk_batch_mode mode, dbk_error *err)
{
    if (!db || !b)
        return dbk__err(err, DBK_EMISUSE, "dbk_batch_run: db and batch must not be NULL");
    if (mode != DBK_BATCH_INDEPENDENT && mode != DBK_BATCH_ATOMIC)
        return dbk__err(err, DBK_EMISUSE, "dbk_batch_run: unknown mode %d", (int)mode);
    clear_outcomes(b);
    b->ran = true;
    if (b->n == 0)
        return DBK_OK;
    int64_t t0 = db->observer ? dbk__now_ns() : 0;
    dbk_rc rc = db->ops->batch(db, b->items, b->n, mode == DBK_BATCH_ATOMIC);
    if (db->observer)
        report(db, b, t0);
    if (rc == DBK_OK)
        return DBK_OK;
    /* The first statement that failed on its own account. */
    for (size_t i = 0; i < b->n; i++) {
        dbk__batch_item *it = &b->items[i];
        if (it->rc == DBK_OK || it->rc == DBK_ENOT_RUN)
            continue;
        if (err) {
            if (it->err) {
                *err = *it->err;
                dbk__batch_prefix(err, "batch statement", i, it->err->message);
            } else {
                dbk__err(err, it->rc, "batch statement %zu: %s", i, dbk_strerror(it->rc));
            }
        }
        return it->rc;
    }
    if (err) {
        const dbk__batch_item *it = &b->items[0];
        if (it->err)
            *err = *it->err;
        else
            dbk__err(err, rc, "%s", dbk_strerror(rc));
    }
    return rc;
}

dbk_rc dbk_batch_rc(const dbk_batch *b, size_t i)
{
    if (!b || !b->ran || i >= b->n)
        return DBK_EMISUSE;
    return b->items[i].rc;
}

const dbk_error *dbk_batch_error(const dbk_batch *b, size_t i)
{
    if (!b || !b->ran || i >= b->n || b->items[i].rc == DBK_OK)
        return NULL;
    return b->items[i].err;
}

const dbk_result *dbk_batch_result(const dbk_batch *b, size_t i)
{
    if (!b || !b->ran || i >= b->n || b->items[i].rc != DBK_OK)
        return NULL;
    return b->items[i].res;
}

dbk_result *dbk_batch_take_result(dbk_batch *b, size_t i)
{
    if (!b || !b->ran || i >= b->n || b->items[i].rc != DBK_OK)
        return NULL;
    dbk_result *r = b->items[i].res;
    b->items[i].res = NULL;
    return r;
}

int64_t dbk_batch_affected(const dbk_batch *b, size_t i)
{
    if (!b || !b->ran || i >= b->n || b->items[i].rc != DBK_OK)
        return -1;
    return b->items[i].affected;
}
