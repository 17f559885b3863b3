/*
 * The cache's backend interface: the front (cache.c) does argument checks,
 * statistics, single-flight and envelopes; a backend (memory.c, redis.c)
 * stores bytes, keeps per-key generations and namespace counters.
 */
#ifndef DBK_CACHE_INT_H
#define DBK_CACHE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "dbkit/cache.h"

struct dbk__cache_ops {
    const char *name;
    dbk_rc (*get)(void *impl, const void *key, size_t keylen, void **val, size_t *vallen,
                  dbk_error *err);
    dbk_rc (*set)(void *impl, const void *key, size_t keylen, const void *val, size_t vallen,
                  int64_t ttl_ms, dbk_error *err);
    dbk_rc (*del)(void *impl, const void *key, size_t keylen, dbk_error *err);
    dbk_rc (*lease)(void *impl, const void *key, size_t keylen, dbk_cache_lease *out,
                    dbk_error *err);
    /* *stored false when the guard refused */
    dbk_rc (*set_leased)(void *impl, const void *key, size_t keylen, const dbk_cache_lease *l,
                         const void *val, size_t vallen, int64_t ttl_ms, bool *stored,
                         dbk_error *err);
    dbk_rc (*ns_get)(void *impl, const char *ns, uint64_t *version, dbk_error *err);
    dbk_rc (*ns_bump)(void *impl, const char *ns, uint64_t *version, dbk_error *err);
    void (*stats)(void *impl, dbk_cache_stats *out);
    void (*close)(void *impl);
    /* Optional (NULL: the front calls get once per key). Reads n keys as
     * get would each: rcs[i] DBK_OK with vals[i]/vallens[i], DBK_ENOT_FOUND,
     * or an error; returns DBK_OK or the first error (described in err). */
    dbk_rc (*get_many)(void *impl, size_t n, const void *const *keys, const size_t *klens,
                       void **vals, size_t *vallens, dbk_rc *rcs, dbk_error *err);
    /* Optional (NULL: lease, once per key). n leases as lease would take
     * each; a key whose lease failed gets out[i].valid false. */
    void (*lease_many)(void *impl, size_t n, const void *const *keys, const size_t *klens,
                       dbk_cache_lease *out);
    /* Optional (NULL: set_leased, once per entry). n stores as set_leased
     * would do each; stored[i] false when refused or failed. */
    void (*set_leased_many)(void *impl, size_t n, const void *const *keys, const size_t *klens,
                            const dbk_cache_lease *const *ls, const void *const *vals,
                            const size_t *vallens, const int64_t *ttls, bool *stored);
};

/* Resolved options (every default applied). */
struct dbk__cache_cfg {
    size_t max_entries, max_bytes;
    int shards, pool_size, connect_timeout_ms, command_timeout_ms;
    int breaker_failures, breaker_cooldown_ms, lease_ms, flight_wait_ms, jitter_pct;
    int negative_ttl_ms;
    size_t max_value_bytes; /* get_or_load stores nothing longer; set refuses it */
    int close_timeout_ms;   /* redis: time dbk_cache_close() gives queued deletes (0: none) */
    char key_prefix[64];
};

/*
 * The loader behind dbk_cache_get_or_load(), with one more output: *nostore
 * (false on entry) set to true returns the value to every caller of the
 * flight without storing it (the cached repository uses it for a row whose
 * key is not canonical). Same ownership rules as dbk_cache_load_fn.
 */
typedef dbk_rc (*dbk__cache_load_ex_fn)(void *ctx, const void *key, size_t keylen, void **val,
                                        size_t *vallen, bool *nostore, dbk_error *err);

dbk_rc dbk__cache_get_or_load_ex(dbk_cache *cache, const void *key, size_t keylen,
                                 dbk__cache_load_ex_fn load, void *ctx, int64_t ttl_ms,
                                 void **val, size_t *vallen, dbk_error *err);

/* The first step of dbk_cache_get_or_load() for n keys at once (one round
 * trip where the backend can): states[i] is CACHE_PEEK_VALUE with vals[i]
 * (owned by the caller) and vallens[i], CACHE_PEEK_NOT_FOUND for a cached
 * "not found", or CACHE_PEEK_MISS (not cached, unreadable, or the read
 * failed: get_or_load would load it). Nothing is counted: the caller counts
 * the hits it could use (dbk__cache_count_hits) and runs
 * dbk__cache_load_peeked_many for the rest. Arguments already checked. */
enum { CACHE_PEEK_MISS = 0, CACHE_PEEK_VALUE = 1, CACHE_PEEK_NOT_FOUND = 2 };
void dbk__cache_peek_many(dbk_cache *cache, size_t n, const void *const *keys,
                          const size_t *klens, void **vals, size_t *vallens, int *states);
void dbk__cache_count_hits(dbk_cache *cache, uint64_t n);

/*
 * The loader of many keys (dbk__cache_load_peeked_many): loads the n keys
 * whose indices (into the caller's key array) are which[0..n), for each k
 * setting rcs[k] as a dbk__cache_load_ex_fn would for that key alone:
 * DBK_OK with vals[k] (malloc'd, taken over) and vallens[k], DBK_ENOT_FOUND,
 * or an error (*err says what failed first); nostore[k] as *nostore.
 * rcs[k] comes in as DBK_ENOT_RUN.
 */
typedef void (*dbk__cache_load_many_fn)(void *ctx, size_t n, const size_t *which, void **vals,
                                        size_t *vallens, dbk_rc *rcs, bool *nostore,
                                        dbk_error *err);

/* dbk__cache_get_or_load_ex() for n distinct keys (n <= DBK_CACHE_MAX_MANY)
 * dbk__cache_peek_many() has just found missing, without reading the cache
 * again (a miss is counted per key). Each key ends as it would alone:
 *   - a key no other caller is loading is led here: leased, loaded,
 *     stored through its lease and published to whoever joined it, except
 *     that ONE call of `load` loads every key led here (the cached
 *     repository's: one statement for an integer primary key). led[i] is then true; rcs[i] is the loader's
 *     outcome and vals[i] stays NULL (the loader's ctx holds the row);
 *   - a key another caller is loading is joined: rcs[i] and vals[i]
 *     (malloc'd) are that load's, or DBK_ENOT_RUN when it did not finish
 *     within flight_wait_ms (the caller then reads it itself and stores
 *     nothing, as a follower alone would).
 * Every key this caller leads is published before it waits on any other
 * caller's. *err is the first failure's.
 */
void dbk__cache_load_peeked_many(dbk_cache *cache, size_t n, const void *const *keys,
                                 const size_t *klens, dbk__cache_load_many_fn load, void *ctx,
                                 int64_t ttl_ms, void **vals, size_t *vallens, dbk_rc *rcs,
                                 bool *led, dbk_error *err);

/* How the Redis backend finds its server(s). */
enum dbk__redis_mode {
    DBK__REDIS_SINGLE = 0,   /* redis://host:port/db */
    DBK__REDIS_SENTINEL = 1, /* redis-sentinel://h:p[,h:p...]/master[/db] */
    DBK__REDIS_CLUSTER = 2   /* redis-cluster://h:p[,h:p...] */
};

#define DBK__REDIS_MAX_SEEDS 16

struct dbk__redis_addr {
    char host[256];
    int port;
};

/* A parsed redis://, redis-sentinel:// or redis-cluster:// URL. host/port
 * is the server (single), else seeds[0]; seeds are the sentinels or the
 * cluster's seed nodes (nseeds >= 1). */
struct dbk__redis_url {
    int mode; /* enum dbk__redis_mode */
    char host[256];
    int port;
    int db;
    char user[128];
    char password[256];
    char master[128]; /* sentinel: the master's name */
    char sentinel_user[128];     /* sentinel: AUTH to the sentinels (query parameters */
    char sentinel_password[256]; /* sentinel_user, sentinel_password); "": no AUTH */
    int auto_pipeline;           /* ?auto_pipeline=0|1; -1 when absent */
    int nseeds;
    struct dbk__redis_addr seeds[DBK__REDIS_MAX_SEEDS];
};

dbk_rc dbk__redis_url_parse(const char *url, struct dbk__redis_url *out, dbk_error *err);

/* ---- Redis Cluster helpers (redis_proto.c; pure, no I/O) ---- */

#define DBK__REDIS_SLOTS 16384

/* The cluster key slot of key[0..len): CRC16-XMODEM of the hash tag (the
 * bytes between the first '{' and the next '}', when not empty) or of the
 * whole key, mod 16384. */
unsigned dbk__redis_key_slot(const void *key, size_t len);

/* A short string (1-4 of [0-9a-z], static) whose key slot is `slot`: the
 * cache puts "{tag}" in every key of one entry, and in the slot's epoch
 * key, so a script over them stays on one slot. */
const char *dbk__redis_slot_tag(unsigned slot);

/* One master's slot range out of CLUSTER SLOTS. */
struct dbk__redis_range {
    unsigned lo, hi; /* inclusive */
    struct dbk__redis_addr master;
};

/* Parses a CLUSTER SLOTS reply (a hiredis reply tree, passed as void * to
 * keep hiredis out of this header) into at most max ranges. Returns the
 * count, or -1 when the reply is malformed. A master given with an empty
 * host ("" or "?") takes `fallback_host` (the node that answered). */
int dbk__redis_parse_slots(const void *reply, const char *fallback_host,
                           struct dbk__redis_range *out, int max);

/* Parses "-MOVED 3999 127.0.0.1:6381" / "-ASK ..." (without the '-').
 * Returns 1 MOVED, 2 ASK, 0 when the error is neither or malformed. */
int dbk__redis_parse_redirect(const char *msg, size_t len, unsigned *slot,
                              struct dbk__redis_addr *to);

dbk_rc dbk__cache_memory_new(const struct dbk__cache_cfg *cfg, void **impl, dbk_error *err);
dbk_rc dbk__cache_redis_new(const struct dbk__cache_cfg *cfg, const struct dbk__redis_url *url,
                            void **impl, dbk_error *err);
extern const struct dbk__cache_ops dbk__cache_memory_ops;
extern const struct dbk__cache_ops dbk__cache_redis_ops;

/* 64-bit random (getrandom-seeded splitmix), thread-safe. Never 0. */
uint64_t dbk__cache_rand64(void);

#endif
