/*
 * The cached document collection: find-by-id through the cache, writes
 * followed by invalidation after commit.
 *
 * Why it is this thin: the hard parts are the cache's and the
 * transaction layer's. A read is dbk__cache_get_or_load_ex() (single
 * flight, the lease that makes an invalidation during a load win, TTL
 * jitter, negative caching) whose loader is dbk_doc_find_by_id() and whose
 * value is the document's JSON text, the form every backend returns the
 * same (docs/documents.md). A write is the collection's own call followed
 * by dbk_cache_invalidate_on_commit() on the collection's executor:
 * inside a caller's transaction the delete waits for COMMIT and a rollback
 * drops it; on a pool or a connection the collection's call has committed
 * when it returns, so the hook runs at once. MongoDB collections have no
 * executor: the key is deleted when the server has acknowledged the write.
 *
 * Keys. A document is cached under "doc:<collection>:id:" + the id's
 * bytes. Every backend finds "_id" by byte equality for the ids dbkit
 * stores (SQLite's TEXT primary key compares bytes; PostgreSQL's text with
 * the database's deterministic collation; MongoDB strings and, for object
 * id collections, ObjectIds whose text dbkit always writes lower-case), so
 * the key a read builds from its argument is the key a write builds from
 * the stored "_id". The loader still checks: a document whose "_id" is not
 * the id's bytes is served but not stored, so no entry can exist that a
 * write would not reach. Writes invalidate both the caller's id and the
 * stored one when they differ.
 *
 * The leader of a load keeps the document it read (no re-parse); a
 * follower and a hit parse the cached JSON text (dbk_doc_parse, with the
 * layer's size and depth limits).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "cache_int.h"
#include "dbkit/cache_doc.h"
#include "dbkit/tx.h"
#include "doc/doc_int.h"

struct dbk_cached_doc {
    dbk_cache *cache;
    dbk_doc_coll *coll;
    int64_t ttl_ms;
    char key_prefix[80]; /* "doc:<collection>:id:" */
    size_t prefix_len;
    char list_ns[80];    /* "doc:<collection>:list" */
};

/* "doc:" + a 48-byte collection name + ":id:" + a 64-byte id */
#define KEYMAX (80 + DBK_DOC_ID_MAX + 1)

DBK__OPTS_INIT_FN(dbk_cached_doc_opts, DBK_CACHED_DOC_OPTS_VERSION)

dbk_rc dbk_cached_doc_new(dbk_cache *cache, dbk_doc_coll *coll, const dbk_cached_doc_opts *opts,
                          dbk_cached_doc **out, dbk_error *err)
{
    if (!cache || !coll || !out)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cached_doc_new: cache, collection and out must not be NULL");
    *out = NULL;
    if (opts &&
        dbk__opts_check(opts->version, DBK_CACHED_DOC_OPTS_VERSION, "dbk_cached_doc_opts", err))
        return DBK_EMISUSE;
    if (opts && opts->ttl_ms < 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_new: ttl_ms must not be negative");
    dbk_cached_doc *cd = calloc(1, sizeof *cd);
    if (!cd)
        return dbk__err(err, DBK_ENOMEM, "out of memory creating a cached document collection");
    cd->cache = cache;
    cd->coll = coll;
    cd->ttl_ms = opts && opts->ttl_ms > 0 ? opts->ttl_ms : DBK_CACHED_DOC_DEFAULT_TTL_MS;
    /* the collection name was checked at open: [a-z_][a-z0-9_]*, <= 48 bytes */
    int n = snprintf(cd->key_prefix, sizeof cd->key_prefix, "doc:%s:id:",
                     coll->schema->collection);
    cd->prefix_len = (size_t)n;
    snprintf(cd->list_ns, sizeof cd->list_ns, "doc:%s:list", coll->schema->collection);
    *out = cd;
    return DBK_OK;
}

void dbk_cached_doc_free(dbk_cached_doc *cd)
{
    free(cd);
}

dbk_doc_coll *dbk_cached_doc_coll(const dbk_cached_doc *cd)
{
    return cd ? cd->coll : NULL;
}

dbk_rc dbk_cached_doc_list_version(dbk_cached_doc *cd, uint64_t *version, dbk_error *err)
{
    if (!cd || !version)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_list_version: NULL argument");
    return dbk_cache_ns_version(cd->cache, cd->list_ns, version, err);
}

/* The key of an id; false when the id cannot be keyed (wrong length: the
 * collection call answers it). */
static bool id_key(const dbk_cached_doc *cd, const char *id, char *key, size_t *klen)
{
    size_t n = strlen(id);
    if (n == 0 || n > DBK_DOC_ID_MAX)
        return false;
    memcpy(key, cd->key_prefix, cd->prefix_len);
    memcpy(key + cd->prefix_len, id, n);
    *klen = cd->prefix_len + n;
    return true;
}

/* ---- reads ---- */

struct load_ctx {
    dbk_cached_doc *cd;
    const char *id;
    dbk_doc *doc; /* the leader's own document */
};

static dbk_rc find_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                        bool *nostore, dbk_error *err)
{
    (void)key;
    (void)keylen;
    struct load_ctx *lc = ctx;
    dbk_rc rc = dbk_doc_find_by_id(lc->cd->coll, lc->id, &lc->doc, err);
    if (rc != DBK_OK)
        return rc;
    const char *stored = dbk_doc_id(lc->doc);
    if (!stored || strcmp(stored, lc->id) != 0)
        *nostore = true; /* another spelling of the id: no write would reach this key */
    char *text = NULL;
    if ((rc = dbk_doc_to_json(lc->doc, &text, err)) != DBK_OK) {
        dbk_doc_free(lc->doc);
        lc->doc = NULL;
        return rc;
    }
    *val = text;
    *vallen = strlen(text);
    return DBK_OK;
}

dbk_rc dbk_cached_doc_find_by_id(dbk_cached_doc *cd, const char *id, dbk_doc **out,
                                 dbk_error *err)
{
    if (!cd || !id || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_find_by_id: NULL argument");
    *out = NULL;
    char key[KEYMAX];
    size_t klen = 0;
    if ((cd->coll->db && dbk_db_in_transaction(cd->coll->db)) || !id_key(cd, id, key, &klen))
        return dbk_doc_find_by_id(cd->coll, id, out, err);
    struct load_ctx lc = {cd, id, NULL};
    void *buf = NULL;
    size_t len = 0;
    dbk_rc rc = dbk__cache_get_or_load_ex(cd->cache, key, klen, find_load, &lc, cd->ttl_ms, &buf,
                                          &len, err);
    if (rc != DBK_OK) {
        dbk_doc_free(lc.doc);
        return rc;
    }
    if (lc.doc) {
        free(buf); /* our own load: the document is already parsed */
        *out = lc.doc;
        return DBK_OK;
    }
    rc = dbk_doc_parse(buf, len, out, NULL);
    free(buf);
    if (rc != DBK_OK) {
        /* not what this layer stores (corrupt, or another writer's key):
         * drop it and answer from the collection */
        dbk_cache_delete(cd->cache, key, klen, NULL);
        rc = dbk_doc_find_by_id(cd->coll, id, out, err);
    }
    return rc;
}

/* ---- writes ---- */

/* Deletes `id`'s key after the collection's commit (see the top). */
static dbk_rc invalidate(dbk_cached_doc *cd, const char *id, dbk_error *err)
{
    char key[KEYMAX];
    size_t klen = 0;
    if (!id || !id_key(cd, id, key, &klen))
        return DBK_OK; /* nothing is ever cached under such an id */
    if (cd->coll->db)
        return dbk_cache_invalidate_on_commit(cd->cache, cd->coll->db, key, klen, err);
    dbk_error e;
    if (dbk_cache_delete(cd->cache, key, klen, &e) != DBK_OK) /* queued for replay */
        dbk__log(DBK_LOG_DEBUG, "cached documents %s: invalidation deferred: %s",
                 cd->coll->schema->collection, e.message);
    return DBK_OK;
}

static dbk_rc bump_lists(dbk_cached_doc *cd, dbk_error *err)
{
    if (cd->coll->db)
        return dbk_cache_ns_bump_on_commit(cd->cache, cd->coll->db, cd->list_ns, err);
    dbk_error e;
    if (dbk_cache_ns_bump(cd->cache, cd->list_ns, NULL, &e) != DBK_OK)
        dbk__log(DBK_LOG_DEBUG, "cached documents %s: list bump failed: %s",
                 cd->coll->schema->collection, e.message);
    return DBK_OK;
}

/* Invalidates the caller's id and the written document's stored id, then
 * bumps the lists; frees *doc when the caller did not ask for it. */
static dbk_rc after_write(dbk_cached_doc *cd, const char *id, dbk_doc *doc, dbk_doc **out,
                          dbk_error *err)
{
    const char *stored = doc ? dbk_doc_id(doc) : NULL;
    dbk_rc rc = invalidate(cd, id, err);
    if (rc == DBK_OK && stored && (!id || strcmp(stored, id) != 0))
        rc = invalidate(cd, stored, err);
    if (rc == DBK_OK)
        rc = bump_lists(cd, err);
    if (out)
        *out = doc;
    else
        dbk_doc_free(doc);
    return rc;
}

dbk_rc dbk_cached_doc_create(dbk_cached_doc *cd, const char *json, size_t len, dbk_doc **out,
                             dbk_error *err)
{
    if (!cd || !json)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_create: NULL argument");
    if (out)
        *out = NULL;
    dbk_doc *doc = NULL;
    dbk_rc rc = dbk_doc_create(cd->coll, json, len, &doc, err);
    if (rc != DBK_OK)
        return rc;
    return after_write(cd, NULL, doc, out, err);
}

dbk_rc dbk_cached_doc_find_by_id_and_update(dbk_cached_doc *cd, const char *id,
                                            const char *update, dbk_doc **out, dbk_error *err)
{
    if (!cd || !id || !update)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_find_by_id_and_update: NULL argument");
    if (out)
        *out = NULL;
    dbk_doc *doc = NULL;
    dbk_rc rc = dbk_doc_find_by_id_and_update(cd->coll, id, update, &doc, err);
    if (rc != DBK_OK)
        return rc;
    return after_write(cd, id, doc, out, err);
}

dbk_rc dbk_cached_doc_find_by_id_and_delete(dbk_cached_doc *cd, const char *id, dbk_doc **out,
                                            dbk_error *err)
{
    if (!cd || !id)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_doc_find_by_id_and_delete: NULL argument");
    if (out)
        *out = NULL;
    dbk_doc *doc = NULL; /* always taken back: it carries the stored _id */
    dbk_rc rc = dbk_doc_find_by_id_and_delete(cd->coll, id, &doc, err);
    if (rc != DBK_OK)
        return rc;
    return after_write(cd, id, doc, out, err);
}
