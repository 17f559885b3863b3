/*
 * The cache meets the database: invalidation after commit and cached row
 * reads on a dbk_db.
 *
 * Why a separate file: this is the only part of the cache that knows about
 * transactions and results. Invalidation is registered as an after-commit
 * hook (dbk_tx_after_commit_ex), so a rollback (or a retried attempt)
 * discards it and the cache is untouched; outside a transaction the hook
 * runs at once. Cached reads bypass the cache inside a transaction: the
 * transaction must read its own uncommitted writes, and those must never
 * reach a shared cache.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "cache_int.h"
#include "dbkit/tx.h"

struct inval {
    dbk_cache *cache;
    bool ns;
    size_t len;
    unsigned char data[]; /* key bytes, or the namespace NUL-terminated */
};

static void inval_run(void *ctx)
{
    struct inval *iv = ctx;
    dbk_error e;
    dbk_rc rc = iv->ns ? dbk_cache_ns_bump(iv->cache, (const char *)iv->data, NULL, &e)
                       : dbk_cache_delete(iv->cache, iv->data, iv->len, &e);
    if (rc != DBK_OK)
        dbk__log(DBK_LOG_DEBUG, "cache invalidation after commit deferred: %s", e.message);
}

static dbk_rc register_inval(dbk_db *db, dbk_cache *cache, bool ns, const void *data,
                             size_t len, dbk_error *err)
{
    struct inval *iv = malloc(sizeof *iv + len + 1);
    if (!iv)
        return dbk__err(err, DBK_ENOMEM, "out of memory registering a cache invalidation");
    iv->cache = cache;
    iv->ns = ns;
    iv->len = len;
    memcpy(iv->data, data, len);
    iv->data[len] = 0;
    return dbk_tx_after_commit_ex(db, inval_run, iv, free, err);
}

dbk_rc dbk_cache_invalidate_on_commit(dbk_cache *cache, dbk_db *db, const void *key,
                                      size_t keylen, dbk_error *err)
{
    if (!db || !cache || !key)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cache_invalidate_on_commit: cache, db and key must not be NULL");
    if (keylen == 0 || keylen > DBK_CACHE_MAX_KEY)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_invalidate_on_commit: key length %zu "
                        "outside 1..%d", keylen, DBK_CACHE_MAX_KEY);
    return register_inval(db, cache, false, key, keylen, err);
}

dbk_rc dbk_cache_ns_bump_on_commit(dbk_cache *cache, dbk_db *db, const char *ns, dbk_error *err)
{
    if (!db || !cache || !ns)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cache_ns_bump_on_commit: cache, db and ns must not be NULL");
    size_t n = strlen(ns);
    if (n == 0 || n > 200)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_ns_bump_on_commit: namespace length "
                        "%zu outside 1..200", n);
    return register_inval(db, cache, true, ns, n, err);
}

/* The deprecated names (executor first; one release), wrappers so they
 * stay in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_cache_invalidate_after_commit(dbk_db *db, dbk_cache *cache, const void *key,
                                         size_t keylen, dbk_error *err)
{
    return dbk_cache_invalidate_on_commit(cache, db, key, keylen, err);
}

dbk_rc dbk_cache_ns_bump_after_commit(dbk_db *db, dbk_cache *cache, const char *ns,
                                      dbk_error *err)
{
    return dbk_cache_ns_bump_on_commit(cache, db, ns, err);
}
#pragma GCC diagnostic pop

struct row_load {
    dbk_db *db;
    const char *sql;
    const dbk_value *params;
    size_t nparams;
    uint64_t layout;
};

#define MAX_ROW_COLS 256

/* Runs the statement and encodes its one row. */
static dbk_rc load_row(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                       dbk_error *err)
{
    (void)key;
    (void)keylen;
    struct row_load *rl = ctx;
    dbk_result *res = NULL;
    dbk_rc rc = dbk_db_query(rl->db, rl->sql, rl->params, rl->nparams, &res, err);
    if (rc != DBK_OK)
        return rc;
    if (dbk_result_nrows(res) == 0) {
        dbk_result_free(res);
        return dbk__err(err, DBK_ENOT_FOUND, "no row");
    }
    if (dbk_result_nrows(res) > 1) {
        dbk_result_free(res);
        return dbk__err(err, DBK_EINVALID, "cached row query returned more than one row");
    }
    int ncols = dbk_result_ncols(res);
    if (ncols > MAX_ROW_COLS) {
        dbk_result_free(res);
        return dbk__err(err, DBK_EINVALID, "cached row has more than %d columns", MAX_ROW_COLS);
    }
    dbk_value vals[MAX_ROW_COLS];
    for (int i = 0; i < ncols && rc == DBK_OK; i++) {
        dbk_type t = dbk_result_type(res, 0, i);
        vals[i] = dbk_null();
        switch (t) {
        case DBK_TYPE_NULL: break;
        case DBK_TYPE_BOOL: {
            bool b;
            rc = dbk_result_get_bool(res, 0, i, &b, err);
            vals[i] = dbk_bool(b);
            break;
        }
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP: {
            int64_t x;
            rc = t == DBK_TYPE_INT64 ? dbk_result_get_int64(res, 0, i, &x, err)
                                     : dbk_result_get_timestamp(res, 0, i, &x, err);
            vals[i] = t == DBK_TYPE_INT64 ? dbk_int64(x) : dbk_timestamp(x);
            break;
        }
        case DBK_TYPE_DOUBLE: {
            double d;
            rc = dbk_result_get_double(res, 0, i, &d, err);
            vals[i] = dbk_double(d);
            break;
        }
        case DBK_TYPE_BLOB: {
            const void *p;
            size_t n;
            rc = dbk_result_get_blob(res, 0, i, &p, &n, err);
            vals[i] = dbk_blob(p, n);
            break;
        }
        default: { /* TEXT, JSON */
            const char *p;
            size_t n;
            rc = dbk_result_get_text(res, 0, i, &p, &n, err);
            vals[i] = dbk_textn(p, n);
            vals[i].type = t;
            break;
        }
        }
    }
    if (rc == DBK_OK)
        rc = dbk_cache_encode_row(rl->layout, vals, (size_t)ncols, val, vallen, err);
    dbk_result_free(res);
    return rc;
}

dbk_rc dbk_cache_find_row(dbk_cache *cache, dbk_db *db, const void *key, size_t keylen,
                          uint64_t layout, const char *sql, const dbk_value *params,
                          size_t nparams, int64_t ttl_ms, void **row, size_t *rowlen,
                          dbk_error *err)
{
    if (!cache || !db || !key || !sql || !row || !rowlen || (!params && nparams))
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_find_row: NULL argument");
    *row = NULL;
    *rowlen = 0;
    struct row_load rl = {db, sql, params, nparams, layout};
    if (dbk_db_in_transaction(db))
        return load_row(&rl, key, keylen, row, rowlen, err);
    return dbk_cache_get_or_load(cache, key, keylen, load_row, &rl, ttl_ms, row, rowlen, err);
}
