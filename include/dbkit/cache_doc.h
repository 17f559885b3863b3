/*
 * dbkit/cache_doc.h - a cached document collection: dbk_doc_find_by_id()
 * through the cache, invalidated by the writes made through the same
 * handle.
 *
 * What the cached repository (cache.h) is for rows, this is for documents:
 *
 *   reads   dbk_cached_doc_find_by_id() is dbk_cache_get_or_load() on the
 *           key "doc:<collection>:id:<id bytes>" with a loader that runs
 *           dbk_doc_find_by_id() and stores the document's JSON text
 *           (dbk_doc_to_json). So it has the cache's guarantees: concurrent
 *           misses of one id in a process run one load (single-flight), a
 *           load that began before an invalidation of the key never stores
 *           its result (lease), TTLs carry jitter, and "not found" is
 *           cached when the cache has negative_ttl_ms. A cache that is down
 *           is a miss, never an error.
 *   writes  create, find_by_id_and_update and find_by_id_and_delete run the
 *           collection's call, then invalidate the id's key (the id the
 *           caller gave and the stored "_id" of the document written, when
 *           they differ) and bump the list namespace
 *           "doc:<collection>:list", after commit: when the collection's
 *           executor is a transaction (dbk_doc_coll_open() on a dbk_tx_run
 *           executor) the invalidation is registered with
 *           dbk_cache_invalidate_on_commit() and dropped on rollback;
 *           on a pool or a connection the collection's own transaction has
 *           committed when its call returns, and the key is deleted then.
 *           On MongoDB (no transactions) the key is deleted after the
 *           server acknowledged the write.
 *   in a transaction
 *           a collection opened on a transaction executor reads around the
 *           cache: the document comes from the database and nothing is
 *           stored, so uncommitted data never reaches the cache and the
 *           transaction reads its own writes.
 *
 * A document read back whose stored "_id" is not byte for byte the id
 * asked for (possible only where the backend's equality is not byte
 * equality) is returned but not stored. A document whose JSON is longer
 * than the cache's max_value_bytes is returned but not stored.
 *
 * Only writes made through the cached handle invalidate. A write made
 * through the plain collection, another process, or a filter-based call is
 * seen when the entry's TTL runs out: keep the TTL as short as that
 * staleness allows, or route every write of the collection through here.
 *
 * Thread safety: a dbk_cached_doc is immutable after creation and may be
 * used from any number of threads at once when its collection may (one
 * opened on a pool, or on MongoDB). The cache and the collection are
 * borrowed and must outlive it.
 */
#ifndef DBKIT_CACHE_DOC_H
#define DBKIT_CACHE_DOC_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "doc.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Announces this header's API. */
#define DBKIT_HAS_CACHED_DOC 1

typedef struct dbk_cached_doc dbk_cached_doc;

/* Default TTL of cached documents (5 minutes, as cached rows). */
#define DBK_CACHED_DOC_DEFAULT_TTL_MS 300000

typedef struct dbk_cached_doc_opts {
    /* The struct's version: DBK_CACHED_DOC_OPTS_VERSION, set by DBK_CACHED_DOC_OPTS_INIT or
     * dbk_cached_doc_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    int64_t ttl_ms; /* 0: DBK_CACHED_DOC_DEFAULT_TTL_MS (jitter from the cache);
                       negative: DBK_EMISUSE; entries always expire, no "off" */
} dbk_cached_doc_opts;

/* The version of dbk_cached_doc_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_CACHED_DOC_OPTS_VERSION 1
#define DBK_CACHED_DOC_OPTS_INIT {.version = DBK_CACHED_DOC_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_CACHED_DOC_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_CACHED_DOC_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_cached_doc_opts_init(dbk_cached_doc_opts *opts, unsigned int version,
                                        dbk_error *err);

/* Wraps `coll` with `cache` (both borrowed: they must outlive the cached
 * collection and any transaction that used it). Runs nothing. DBK_EMISUSE
 * (NULL cache, coll or out; ttl_ms negative), DBK_ENOMEM. *out is owned by
 * the caller: dbk_cached_doc_free(). */
DBK_API dbk_rc dbk_cached_doc_new(dbk_cache *cache, dbk_doc_coll *coll,
                                  const dbk_cached_doc_opts *opts, dbk_cached_doc **out,
                                  dbk_error *err);

/* Frees it (not the cache, not the collection). Accepts NULL. */
DBK_API void dbk_cached_doc_free(dbk_cached_doc *cd);

/* The wrapped collection (borrowed), for the calls that do not go through
 * the cache (find, count, find_one). Writes made on it directly do not
 * invalidate. */
DBK_API dbk_doc_coll *dbk_cached_doc_coll(const dbk_cached_doc *cd);

/* dbk_doc_find_by_id() through the cache. *out is owned by the caller
 * (dbk_doc_free), a document of its own on every call (never shared with
 * the cache or other callers). DBK_ENOT_FOUND (loaded, or cached with
 * negative_ttl_ms), DBK_EINVALID for an id that is not 1..DBK_DOC_ID_MAX
 * bytes, the collection's errors for a failed load. */
DBK_API dbk_rc dbk_cached_doc_find_by_id(dbk_cached_doc *cd, const char *id, dbk_doc **out,
                                         dbk_error *err);

/* dbk_doc_create(), then the new document's key is invalidated (it may hold
 * a cached "not found") and the list namespace bumped. Arguments and
 * errors as dbk_doc_create(); *out may be NULL. */
DBK_API dbk_rc dbk_cached_doc_create(dbk_cached_doc *cd, const char *json, size_t len,
                                     dbk_doc **out, dbk_error *err);

/* dbk_doc_find_by_id_and_update(), then invalidation as above. */
DBK_API dbk_rc dbk_cached_doc_find_by_id_and_update(dbk_cached_doc *cd, const char *id,
                                                    const char *update, dbk_doc **out,
                                                    dbk_error *err);

/* dbk_doc_find_by_id_and_delete(), then invalidation as above. */
DBK_API dbk_rc dbk_cached_doc_find_by_id_and_delete(dbk_cached_doc *cd, const char *id,
                                                    dbk_doc **out, dbk_error *err);

/* The version of the collection's list namespace ("doc:<collection>:list"):
 * put it in the keys of cached pages and counts; every write through this
 * handle bumps it after commit. Errors as dbk_cache_ns_version(). */
DBK_API dbk_rc dbk_cached_doc_list_version(dbk_cached_doc *cd, uint64_t *version,
                                           dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_CACHE_DOC_H */
