/*
 * The cache workload the Redis topology tests share (Sentinel, Cluster):
 * DBKT_LOAD_READERS readers and DBKT_LOAD_WRITERS writers through a cached
 * repository over a PostgreSQL table `vrows (id, version, name)`. Each
 * writer bumps its own row's version in a transaction (after-commit
 * invalidation) and publishes the version once the transaction returned;
 * a reader that then sees an older version counts a stale read. Workers
 * run on pools, as a service would, so a server restart by another test
 * running alongside costs a reconnect, not a broken worker.
 */
#ifndef DBKT_CACHELOAD_H
#define DBKT_CACHELOAD_H

#include <stdint.h>

#include "dbkit/dbkit.h"

#define DBKT_LOAD_READERS 8
#define DBKT_LOAD_WRITERS 2

typedef struct dbkt_cacheload dbkt_cacheload;

typedef struct dbkt_cacheload_result {
    int reads, writes, errors, stale;
    int stale_at_end; /* rows whose last read after the stop was not the last version */
    char last_error[256];
} dbkt_cacheload_result;

/* Creates and fills `vrows` in the database at url (fails the test on
 * error), a cached repository over `cache`, and starts the workers. */
dbkt_cacheload *dbkt_cacheload_start(const char *url, dbk_cache *cache);

/* Stops and joins the workers, reads every row once more through the cache,
 * frees everything and fills *out. */
void dbkt_cacheload_stop(dbkt_cacheload *l, dbkt_cacheload_result *out);

/* The cache's hit count. */
uint64_t dbkt_cache_hits(dbk_cache *c);

/* dbk_cache_get_many through a topology: 40 keys (spread over the slots of
 * a cluster) stored one by one, then read in one call with one that was
 * never stored; each must come back with its own value, the missing one
 * DBK_ENOT_FOUND. Fails the test otherwise. */
void dbkt_cache_get_many_check(dbk_cache *c);

/* dbk_cached_repo_find_by_ids through a topology (on a SQLite table of
 * its own; c caches "not found"s: negative_ttl_ms set): 40 cold ids and 2
 * missing ones in one statement, stored (a
 * later call runs none), an invalidated id read again, a row changed and
 * invalidated while the batch statement runs not stored by the batch. */
void dbkt_cache_find_by_ids_check(dbk_cache *c);

/* dbkt_cache_get_many_check and dbkt_cache_find_by_ids_check on a cache
 * opened on `url` with key prefix `prefix` (closed after). */
void dbkt_cache_get_many_check_url(const char *url, const char *prefix);

#endif
