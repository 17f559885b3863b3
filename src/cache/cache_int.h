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

/* A parsed redis:// URL. */
struct dbk__redis_url {
    char host[256];
    int port;
    int db;
    char user[128];
    char password[256];
};

dbk_rc dbk__redis_url_parse(const char *url, struct dbk__redis_url *out, dbk_error *err);

dbk_rc dbk__cache_memory_new(const struct dbk__cache_cfg *cfg, void **impl, dbk_error *err);
dbk_rc dbk__cache_redis_new(const struct dbk__cache_cfg *cfg, const struct dbk__redis_url *url,
                            void **impl, dbk_error *err);
extern const struct dbk__cache_ops dbk__cache_memory_ops;
extern const struct dbk__cache_ops dbk__cache_redis_ops;

/* 64-bit random (getrandom-seeded splitmix), thread-safe. Never 0. */
uint64_t dbk__cache_rand64(void);

#endif
