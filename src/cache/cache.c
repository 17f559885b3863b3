/*
 * The cache front: options and backend choice, argument checks, statistics,
 * and cache-aside with single-flight (dbk_cache_get_or_load).
 *
 * Why the front owns single-flight and the envelope: both backends must
 * behave the same for the cached repository, and a stampede is a property
 * of this process, not of the store. In-flight loads live in a small hash
 * table (64 chained buckets) under one mutex that is taken only on a miss;
 * a hit never touches it. The first miss on a key becomes the leader: it
 * takes a lease, runs the loader without holding any lock, stores the result
 * through the lease and publishes it to the followers, who wait on the
 * flight's condition variable against a monotonic deadline (flight_wait_ms)
 * and then copy the leader's result. A follower whose wait runs out loads
 * for itself and stores nothing. Values written by get_or_load start with a
 * one-byte envelope, 'V' (a value follows) or 'N' (cached "not found").
 *
 * Invalidation detaches flights. dbk_cache_delete(K) unlinks the flight of
 * K (dbk_cache_ns_bump(ns) every flight whose key starts with "<ns>:")
 * from the table BEFORE it touches the backend. A flight that began before
 * the invalidation may have read the database before the writer's commit;
 * once it is detached, a reader that arrives later cannot join it and
 * starts a load of its own, which reads after the commit (the caller
 * invalidates after COMMIT). Readers that had already joined keep waiting
 * on the detached flight and get its result: they overlapped the write.
 * The detached leader still holds its lease, which the delete has made
 * stale, so the backend refuses its store. A namespace bump changes no
 * key's generation, so a leader detached by one skips the store itself
 * when it sees the mark (counted as a stale reject); a bump that lands
 * after that check is not caught: for namespaces the version in the key
 * is what protects readers.
 *
 * Oversized values are not cached: a loaded value longer than
 * max_value_bytes is returned to its callers and not stored (a slow,
 * huge SET would also trip the Redis command timeout and the breaker).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../core/hash.h"
#include "../core/internal.h"
#include "../core/rand.h"
#include "cache_int.h"

#define FLIGHT_BUCKETS 64
#define ENV_VALUE 'V'
#define ENV_NOT_FOUND 'N'

struct flight {
    struct flight *next;
    unsigned char *key;
    size_t klen;
    uint64_t hash;
    int refs;
    bool done;
    bool ns_detached; /* unlinked by a namespace bump: do not store the result */
    dbk_rc rc;
    dbk_error err;
    unsigned char *env; /* envelope + value, owned by the flight */
    size_t envlen;
    pthread_cond_t cv;
};

struct dbk_cache {
    const struct dbk__cache_ops *ops;
    void *impl;
    struct dbk__cache_cfg cfg;
    pthread_mutex_t fl_mu;
    struct flight *flights[FLIGHT_BUCKETS];
    _Atomic uint64_t hits, misses, loads, flight_waits, ns_skips;
};

/* ---- randomness --------------------------------------------------------- */

uint64_t dbk__cache_rand64(void)
{
    return dbk__rand64();
}

/* ---- open / close ------------------------------------------------------- */

static dbk_rc resolve(const dbk_cache_opts *o, struct dbk__cache_cfg *c, dbk_error *err)
{
    static const dbk_cache_opts zero;
    if (!o)
        o = &zero;
    memset(c, 0, sizeof *c);
    if (o->shards < 0 || o->pool_size < 0 || o->connect_timeout_ms < 0 ||
        o->command_timeout_ms < 0 || o->breaker_failures < 0 || o->breaker_cooldown_ms < 0 ||
        o->lease_ms < 0 || o->flight_wait_ms < 0 || o->negative_ttl_ms < 0)
        return dbk__err(err, DBK_ECONFIG, "cache options must not be negative (0 means default)");
    c->max_entries = o->max_entries ? o->max_entries : DBK_CACHE_DEFAULT_MAX_ENTRIES;
    c->max_bytes = o->max_bytes ? o->max_bytes : DBK_CACHE_DEFAULT_MAX_BYTES;
    c->shards = o->shards ? o->shards : DBK_CACHE_DEFAULT_SHARDS;
    c->pool_size = o->pool_size ? o->pool_size : DBK_CACHE_DEFAULT_POOL_SIZE;
    c->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms
                                                  : DBK_CACHE_DEFAULT_CONNECT_TIMEOUT_MS;
    c->command_timeout_ms = o->command_timeout_ms ? o->command_timeout_ms
                                                  : DBK_CACHE_DEFAULT_COMMAND_TIMEOUT_MS;
    c->breaker_failures = o->breaker_failures ? o->breaker_failures
                                              : DBK_CACHE_DEFAULT_BREAKER_FAILURES;
    c->breaker_cooldown_ms = o->breaker_cooldown_ms ? o->breaker_cooldown_ms
                                                    : DBK_CACHE_DEFAULT_BREAKER_COOLDOWN_MS;
    c->lease_ms = o->lease_ms ? o->lease_ms : DBK_CACHE_DEFAULT_LEASE_MS;
    c->flight_wait_ms = o->flight_wait_ms ? o->flight_wait_ms : DBK_CACHE_DEFAULT_FLIGHT_WAIT_MS;
    c->jitter_pct = o->jitter_pct == 0 ? DBK_CACHE_DEFAULT_JITTER_PCT
                                       : (o->jitter_pct < 0 ? 0 : o->jitter_pct);
    if (c->jitter_pct > 90)
        return dbk__err(err, DBK_ECONFIG, "cache jitter_pct must be at most 90");
    c->negative_ttl_ms = o->negative_ttl_ms;
    c->max_value_bytes = o->max_value_bytes ? o->max_value_bytes
                                            : DBK_CACHE_DEFAULT_MAX_VALUE_BYTES;
    if (c->max_value_bytes > DBK_CACHE_MAX_VALUE)
        return dbk__err(err, DBK_ECONFIG, "cache max_value_bytes must be at most %u "
                        "(DBK_CACHE_MAX_VALUE, the redis string limit)",
                        (unsigned)DBK_CACHE_MAX_VALUE);
    c->close_timeout_ms = o->close_timeout_ms == 0 ? DBK_CACHE_DEFAULT_CLOSE_TIMEOUT_MS
                                                   : (o->close_timeout_ms < 0 ? 0
                                                                              : o->close_timeout_ms);
    if (c->pool_size > 256)
        return dbk__err(err, DBK_ECONFIG, "cache pool_size must be at most 256");
    const char *prefix = o->key_prefix ? o->key_prefix : DBK_CACHE_DEFAULT_KEY_PREFIX;
    if (strlen(prefix) >= sizeof c->key_prefix)
        return dbk__err(err, DBK_ECONFIG, "cache key_prefix is longer than %zu bytes",
                        sizeof c->key_prefix - 1);
    dbk__strlcpy(c->key_prefix, prefix, sizeof c->key_prefix);
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_cache_opts, DBK_CACHE_OPTS_VERSION)

dbk_rc dbk_cache_open(const dbk_cache_opts *opts, dbk_cache **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_open: out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_CACHE_OPTS_VERSION, "dbk_cache_opts", err))
        return DBK_EMISUSE;
    struct dbk__cache_cfg cfg;
    dbk_rc rc = resolve(opts, &cfg, err);
    if (rc != DBK_OK)
        return rc;
    const char *url = opts ? opts->url : NULL;
    dbk_cache *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a cache");
    c->cfg = cfg;
    pthread_mutex_init(&c->fl_mu, NULL);
    if (!url || !*url || strcmp(url, "memory:") == 0 || strcmp(url, "memory") == 0) {
        c->ops = &dbk__cache_memory_ops;
        rc = dbk__cache_memory_new(&cfg, &c->impl, err);
    } else {
        struct dbk__redis_url ru;
        rc = dbk__redis_url_parse(url, &ru, err);
        if (rc == DBK_OK) {
            c->ops = &dbk__cache_redis_ops;
            rc = dbk__cache_redis_new(&cfg, &ru, &c->impl, err);
        }
        memset(&ru, 0, sizeof ru);
    }
    if (rc != DBK_OK) {
        pthread_mutex_destroy(&c->fl_mu);
        free(c);
        return rc;
    }
    *out = c;
    return DBK_OK;
}

void dbk_cache_close(dbk_cache *cache)
{
    if (!cache)
        return;
    cache->ops->close(cache->impl);
    pthread_mutex_destroy(&cache->fl_mu);
    free(cache);
}

const char *dbk_cache_backend(const dbk_cache *cache)
{
    return cache ? cache->ops->name : "none";
}

/* ---- plain operations --------------------------------------------------- */

static uint64_t hash_key(const void *key, size_t len)
{
    return dbk__fnv64(DBK__FNV64_OFFSET, key, len);
}

/* Unlinks from the flight table the flight of `key` (prefix false) or every
 * flight whose key starts with `key` (prefix true). Readers that arrive later
 * start a load of their own; those already waiting on a detached flight keep
 * it (the leader still publishes to them and frees it with the last
 * reference). O(flights in one bucket), or O(flights) for a prefix. */
static void flights_detach(dbk_cache *c, const void *key, size_t klen, bool prefix)
{
    pthread_mutex_lock(&c->fl_mu);
    size_t first = 0, last = FLIGHT_BUCKETS;
    uint64_t h = 0;
    if (!prefix) {
        h = hash_key(key, klen);
        first = h % FLIGHT_BUCKETS;
        last = first + 1;
    }
    for (size_t b = first; b < last; b++) {
        struct flight **pp = &c->flights[b];
        while (*pp) {
            struct flight *f = *pp;
            bool match = prefix ? f->klen >= klen && memcmp(f->key, key, klen) == 0
                                : f->hash == h && f->klen == klen &&
                                      memcmp(f->key, key, klen) == 0;
            if (match) {
                *pp = f->next;
                f->next = NULL;
                /* A key delete changed the key's generation: the leader's
                 * lease refuses the store. A namespace bump changed none. */
                if (prefix)
                    f->ns_detached = true;
            } else {
                pp = &f->next;
            }
        }
    }
    pthread_mutex_unlock(&c->fl_mu);
}


static dbk_rc check_key(const char *fn, dbk_cache *cache, const void *key, size_t keylen,
                        dbk_error *err)
{
    if (!cache || !key)
        return dbk__err(err, DBK_EMISUSE, "%s: cache and key must not be NULL", fn);
    if (keylen == 0 || keylen > DBK_CACHE_MAX_KEY)
        return dbk__err(err, DBK_EMISUSE, "%s: key length %zu outside 1..%d", fn, keylen,
                        DBK_CACHE_MAX_KEY);
    return DBK_OK;
}

dbk_rc dbk_cache_get(dbk_cache *cache, const void *key, size_t keylen, void **val,
                     size_t *vallen, dbk_error *err)
{
    dbk_rc rc = check_key("dbk_cache_get", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    if (!val || !vallen)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_get: val and vallen must not be NULL");
    *val = NULL;
    *vallen = 0;
    rc = cache->ops->get(cache->impl, key, keylen, val, vallen, err);
    atomic_fetch_add(rc == DBK_OK ? &cache->hits : &cache->misses, 1);
    return rc;
}

/* Reads n keys through the backend's get_many, or one get each. */
static dbk_rc get_many_raw(dbk_cache *cache, size_t n, const void *const *keys,
                           const size_t *klens, void **vals, size_t *vallens, dbk_rc *rcs,
                           dbk_error *err)
{
    for (size_t i = 0; i < n; i++) {
        vals[i] = NULL;
        vallens[i] = 0;
    }
    if (n == 0)
        return DBK_OK;
    if (cache->ops->get_many)
        return cache->ops->get_many(cache->impl, n, keys, klens, vals, vallens, rcs, err);
    dbk_rc first = DBK_OK;
    for (size_t i = 0; i < n; i++) {
        rcs[i] = cache->ops->get(cache->impl, keys[i], klens[i], &vals[i], &vallens[i],
                                 first == DBK_OK ? err : NULL);
        if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && first == DBK_OK)
            first = rcs[i];
    }
    return first;
}

dbk_rc dbk_cache_get_many(dbk_cache *cache, size_t n, const void *const *keys,
                          const size_t *keylens, void **vals, size_t *vallens, dbk_rc *rcs,
                          dbk_error *err)
{
    if (!cache || (n && (!keys || !keylens || !vals || !vallens || !rcs)))
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_get_many: NULL argument");
    if (n > DBK_CACHE_MAX_MANY)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_get_many: %zu keys, at most %d in one call",
                        n, DBK_CACHE_MAX_MANY);
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || keylens[i] == 0 || keylens[i] > DBK_CACHE_MAX_KEY)
            return dbk__err(err, DBK_EMISUSE,
                            "dbk_cache_get_many: key %zu is NULL or its length %zu is outside "
                            "1..%d",
                            i, keys[i] ? keylens[i] : (size_t)0, DBK_CACHE_MAX_KEY);
    }
    dbk_rc rc = get_many_raw(cache, n, keys, keylens, vals, vallens, rcs, err);
    for (size_t i = 0; i < n; i++)
        atomic_fetch_add(rcs[i] == DBK_OK ? &cache->hits : &cache->misses, 1);
    return rc;
}

dbk_rc dbk_cache_set(dbk_cache *cache, const void *key, size_t keylen, const void *val,
                     size_t vallen, int64_t ttl_ms, dbk_error *err)
{
    dbk_rc rc = check_key("dbk_cache_set", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    if ((!val && vallen) || ttl_ms <= 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_set: need a value and a ttl > 0");
    if (vallen > cache->cfg.max_value_bytes)
        return dbk__err(err, DBK_EINVALID, "dbk_cache_set: value of %zu bytes is larger than "
                        "the cache's max_value_bytes (%zu); not stored",
                        vallen, cache->cfg.max_value_bytes);
    return cache->ops->set(cache->impl, key, keylen, val, vallen, ttl_ms, err);
}

dbk_rc dbk_cache_delete(dbk_cache *cache, const void *key, size_t keylen, dbk_error *err)
{
    dbk_rc rc = check_key("dbk_cache_delete", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    flights_detach(cache, key, keylen, false);
    return cache->ops->del(cache->impl, key, keylen, err);
}

static dbk_rc check_ns(const char *fn, dbk_cache *cache, const char *ns, dbk_error *err)
{
    if (!cache || !ns)
        return dbk__err(err, DBK_EMISUSE, "%s: cache and ns must not be NULL", fn);
    size_t n = strlen(ns);
    if (n == 0 || n > 200)
        return dbk__err(err, DBK_EMISUSE, "%s: namespace length %zu outside 1..200", fn, n);
    return DBK_OK;
}

dbk_rc dbk_cache_ns_version(dbk_cache *cache, const char *ns, uint64_t *version, dbk_error *err)
{
    dbk_rc rc = check_ns("dbk_cache_ns_version", cache, ns, err);
    if (rc != DBK_OK)
        return rc;
    if (!version)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_ns_version: version must not be NULL");
    *version = 0;
    return cache->ops->ns_get(cache->impl, ns, version, err);
}

dbk_rc dbk_cache_ns_bump(dbk_cache *cache, const char *ns, uint64_t *version, dbk_error *err)
{
    dbk_rc rc = check_ns("dbk_cache_ns_bump", cache, ns, err);
    if (rc != DBK_OK)
        return rc;
    char prefix[202];
    size_t pl = strlen(ns);
    memcpy(prefix, ns, pl);
    prefix[pl++] = ':';
    flights_detach(cache, prefix, pl, true);
    uint64_t v = 0;
    rc = cache->ops->ns_bump(cache->impl, ns, &v, err);
    if (version)
        *version = v;
    return rc;
}

dbk_rc dbk_cache_lease_take(dbk_cache *cache, const void *key, size_t keylen,
                            dbk_cache_lease *lease, dbk_error *err)
{
    dbk_rc rc = check_key("dbk_cache_lease_take", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    if (!lease)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_lease_take: lease must not be NULL");
    memset(lease, 0, sizeof *lease);
    rc = cache->ops->lease(cache->impl, key, keylen, lease, err);
    if (rc != DBK_OK)
        lease->valid = false;
    return rc;
}

dbk_rc dbk_cache_set_leased(dbk_cache *cache, const void *key, size_t keylen,
                            const dbk_cache_lease *lease, const void *val, size_t vallen,
                            int64_t ttl_ms, bool *stored, dbk_error *err)
{
    if (stored)
        *stored = false;
    dbk_rc rc = check_key("dbk_cache_set_leased", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    if (!lease || (!val && vallen) || ttl_ms <= 0)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cache_set_leased: need a lease, a value and a ttl > 0");
    bool s = false;
    rc = cache->ops->set_leased(cache->impl, key, keylen, lease, val, vallen, ttl_ms, &s, err);
    if (stored)
        *stored = s;
    return rc;
}

dbk_rc dbk_cache_get_stats(dbk_cache *cache, dbk_cache_stats *out, dbk_error *err)
{
    if (!cache || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_get_stats: cache and out must not be NULL");
    memset(out, 0, sizeof *out);
    out->hits = atomic_load(&cache->hits);
    out->misses = atomic_load(&cache->misses);
    out->loads = atomic_load(&cache->loads);
    out->flight_waits = atomic_load(&cache->flight_waits);
    cache->ops->stats(cache->impl, out);
    out->stale_rejects += atomic_load(&cache->ns_skips);
    return DBK_OK;
}

/* ---- get_or_load -------------------------------------------------------- */

static int64_t jittered(const dbk_cache *c, int64_t ttl_ms)
{
    if (c->cfg.jitter_pct <= 0 || ttl_ms < 2)
        return ttl_ms;
    uint64_t span = (uint64_t)ttl_ms * (uint64_t)c->cfg.jitter_pct / 100;
    if (span == 0)
        return ttl_ms;
    int64_t t = ttl_ms - (int64_t)(dbk__cache_rand64() % (span + 1));
    return t < 1 ? 1 : t;
}

/* Splits an envelope: DBK_OK with *val (moved into a fresh buffer or the
 * same one) for 'V', DBK_ENOT_FOUND for 'N', DBK_ETYPE for foreign bytes.
 * Frees or hands over `env`. */
static dbk_rc open_envelope(unsigned char *env, size_t len, void **val, size_t *vallen)
{
    if (len >= 1 && env[0] == ENV_VALUE) {
        memmove(env, env + 1, len - 1);
        *val = env;
        *vallen = len - 1;
        return DBK_OK;
    }
    bool not_found = len == 1 && env[0] == ENV_NOT_FOUND;
    free(env);
    return not_found ? DBK_ENOT_FOUND : DBK_ETYPE;
}

void dbk__cache_count_hits(dbk_cache *cache, uint64_t n)
{
    atomic_fetch_add(&cache->hits, n);
}

void dbk__cache_peek_many(dbk_cache *cache, size_t n, const void *const *keys,
                          const size_t *klens, void **vals, size_t *vallens, int *states)
{
    dbk_rc stack_rcs[64];
    dbk_rc *rcs = n <= 64 ? stack_rcs : malloc(n * sizeof *rcs);
    if (!rcs) {
        for (size_t i = 0; i < n; i++) {
            vals[i] = NULL;
            states[i] = CACHE_PEEK_MISS;
        }
        return;
    }
    (void)get_many_raw(cache, n, keys, klens, vals, vallens, rcs, NULL);
    for (size_t i = 0; i < n; i++) {
        states[i] = CACHE_PEEK_MISS;
        if (rcs[i] != DBK_OK) {
            vals[i] = NULL;
            continue;
        }
        void *v = NULL;
        size_t vl = 0;
        dbk_rc rc = open_envelope((unsigned char *)vals[i], vallens[i], &v, &vl); /* frees it unless a value */
        vals[i] = NULL;
        if (rc == DBK_OK) {
            vals[i] = v;
            vallens[i] = vl;
            states[i] = CACHE_PEEK_VALUE;
        } else if (rc == DBK_ENOT_FOUND) {
            states[i] = CACHE_PEEK_NOT_FOUND;
        }
    }
    if (rcs != stack_rcs)
        free(rcs);
}

static void flight_unref_locked(struct flight *f)
{
    if (--f->refs == 0) {
        pthread_cond_destroy(&f->cv);
        free(f->env);
        free(f->key);
        free(f);
    }
}

static dbk_rc copy_result(const struct flight *f, void **val, size_t *vallen, dbk_error *err)
{
    if (f->rc != DBK_OK) {
        if (err)
            *err = f->err;
        return f->rc;
    }
    size_t n = f->envlen - 1;
    void *v = malloc(n ? n : 1);
    if (!v)
        return dbk__err(err, DBK_ENOMEM, "out of memory copying a loaded value");
    memcpy(v, f->env + 1, n);
    *val = v;
    *vallen = n;
    return DBK_OK;
}

/* Runs the loader; on DBK_OK builds the 'V' envelope in *env (the value is
 * moved into it). *nostore: the loader asked not to store the value. */
static dbk_rc run_loader(dbk_cache *c, const void *key, size_t keylen, dbk__cache_load_ex_fn load,
                         void *ctx, unsigned char **env, size_t *envlen, bool *nostore,
                         dbk_error *err)
{
    *env = NULL;
    *envlen = 0;
    *nostore = false;
    void *v = NULL;
    size_t vl = 0;
    atomic_fetch_add(&c->loads, 1);
    dbk_rc rc = load(ctx, key, keylen, &v, &vl, nostore, err);
    if (rc != DBK_OK) {
        free(v);
        return rc;
    }
    if (!v && vl)
        return dbk__err(err, DBK_EMISUSE, "cache loader returned a length without a value");
    if (vl > SIZE_MAX - 1) {
        free(v);
        return dbk__err(err, DBK_EINVALID, "cache loader returned a value of %zu bytes", vl);
    }
    unsigned char *e = malloc(vl + 1);
    if (!e) {
        free(v);
        return dbk__err(err, DBK_ENOMEM, "out of memory storing a loaded value");
    }
    e[0] = ENV_VALUE;
    if (vl)
        memcpy(e + 1, v, vl);
    free(v);
    *env = e;
    *envlen = vl + 1;
    return DBK_OK;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    int64_t ns = ts->tv_nsec + (int64_t)ms * 1000000LL;
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

/* A new flight for key, led by the caller, in the table (fl_mu held).
 * NULL when out of memory. */
static struct flight *flight_start_locked(struct flight **bucket, const void *key, size_t keylen,
                                          uint64_t h)
{
    struct flight *f = calloc(1, sizeof *f);
    unsigned char *kcopy = f ? malloc(keylen ? keylen : 1) : NULL;
    if (!f || !kcopy) {
        free(f);
        free(kcopy);
        return NULL;
    }
    memcpy(kcopy, key, keylen);
    f->key = kcopy;
    f->klen = keylen;
    f->hash = h;
    f->refs = 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cv, &ca);
    pthread_condattr_destroy(&ca);
    f->next = *bucket;
    *bucket = f;
    return f;
}

/* The leader's store of what it loaded, through the lease it took before
 * the load: the value, or a cached "not found" when negative caching is
 * on; nothing when the loader said so, when a namespace bump detached the
 * flight, or when the value is over max_value_bytes. */
static const unsigned char env_not_found = ENV_NOT_FOUND;

static bool store_plan(dbk_cache *cache, const dbk_cache_lease *lease, dbk_rc rc,
                       const unsigned char *env, size_t envlen, bool nostore, bool detached,
                       int64_t ttl_ms, const void **val, size_t *len, int64_t *ttl)
{
    if (detached)
        atomic_fetch_add(&cache->ns_skips, 1);
    if (rc == DBK_OK && lease->valid && !nostore && !detached &&
        envlen - 1 <= cache->cfg.max_value_bytes) {
        *val = env;
        *len = envlen;
        *ttl = jittered(cache, ttl_ms);
        return true;
    }
    if (rc == DBK_ENOT_FOUND && cache->cfg.negative_ttl_ms > 0 && lease->valid && !nostore &&
        !detached) {
        *val = &env_not_found;
        *len = 1;
        *ttl = cache->cfg.negative_ttl_ms;
        return true;
    }
    return false;
}

static void store_loaded(dbk_cache *cache, const void *key, size_t keylen,
                         const dbk_cache_lease *lease, dbk_rc rc, const unsigned char *env,
                         size_t envlen, bool nostore, bool detached, int64_t ttl_ms)
{
    const void *val;
    size_t len;
    int64_t ttl;
    bool stored;
    if (store_plan(cache, lease, rc, env, envlen, nostore, detached, ttl_ms, &val, &len, &ttl))
        cache->ops->set_leased(cache->impl, key, keylen, lease, val, len, ttl, &stored, NULL);
}

/* Ends the flight f with its result (fl_mu held): out of the table (when a
 * delete has not already taken it out), done, the followers woken. The
 * flight owns env from here; the caller still holds its reference. */
static void flight_publish_locked(struct flight **bucket, struct flight *f, dbk_rc rc,
                                  const dbk_error *lerr, unsigned char *env, size_t envlen)
{
    struct flight **pp = bucket;
    while (*pp && *pp != f)
        pp = &(*pp)->next;
    if (*pp)
        *pp = f->next;
    f->done = true;
    f->rc = rc;
    f->err = *lerr;
    f->env = env;
    f->envlen = envlen;
    pthread_cond_broadcast(&f->cv);
}

/* The public loader seen through the internal interface (never "no store"). */
struct plain_loader {
    dbk_cache_load_fn fn;
    void *ctx;
};

static dbk_rc plain_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                         bool *nostore, dbk_error *err)
{
    struct plain_loader *pl = ctx;
    *nostore = false;
    return pl->fn(pl->ctx, key, keylen, val, vallen, err);
}

dbk_rc dbk_cache_get_or_load(dbk_cache *cache, const void *key, size_t keylen,
                             dbk_cache_load_fn load, void *ctx, int64_t ttl_ms, void **val,
                             size_t *vallen, dbk_error *err)
{
    if (!load)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cache_get_or_load: need a loader, val, vallen and a ttl > 0");
    struct plain_loader pl = {load, ctx};
    return dbk__cache_get_or_load_ex(cache, key, keylen, plain_load, &pl, ttl_ms, val, vallen,
                                     err);
}

dbk_rc dbk__cache_get_or_load_ex(dbk_cache *cache, const void *key, size_t keylen,
                                 dbk__cache_load_ex_fn load, void *ctx, int64_t ttl_ms,
                                 void **val, size_t *vallen, dbk_error *err)
{
    dbk_rc rc = check_key("dbk_cache_get_or_load", cache, key, keylen, err);
    if (rc != DBK_OK)
        return rc;
    if (!load || !val || !vallen || ttl_ms <= 0)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cache_get_or_load: need a loader, val, vallen and a ttl > 0");
    *val = NULL;
    *vallen = 0;

    /* 1. the cache */
    void *raw = NULL;
    size_t rawlen = 0;
    rc = cache->ops->get(cache->impl, key, keylen, &raw, &rawlen, NULL);
    if (rc == DBK_OK) {
        rc = open_envelope(raw, rawlen, val, vallen);
        if (rc != DBK_ETYPE) {
            atomic_fetch_add(&cache->hits, 1);
            if (rc == DBK_ENOT_FOUND)
                return dbk__err(err, DBK_ENOT_FOUND, "not found (cached)");
            return rc;
        }
    }
    atomic_fetch_add(&cache->misses, 1);

    /* 2. join or lead the flight for this key (detached flights are not in
     * the table: an invalidation since they began makes a reader that
     * arrives now load for itself) */
    uint64_t h = hash_key(key, keylen);
    struct flight **bucket = &cache->flights[h % FLIGHT_BUCKETS];
    pthread_mutex_lock(&cache->fl_mu);
    struct flight *f = *bucket;
    while (f && !(f->hash == h && f->klen == keylen && memcmp(f->key, key, keylen) == 0))
        f = f->next;
    if (f) {
        f->refs++;
        atomic_fetch_add(&cache->flight_waits, 1);
        struct timespec dl;
        deadline_in(&dl, cache->cfg.flight_wait_ms);
        while (!f->done)
            if (pthread_cond_timedwait(&f->cv, &cache->fl_mu, &dl) == ETIMEDOUT)
                break;
        bool done = f->done;
        if (done)
            rc = copy_result(f, val, vallen, err);
        flight_unref_locked(f);
        pthread_mutex_unlock(&cache->fl_mu);
        if (done)
            return rc;
        /* the leader is too slow: load ourselves, store nothing */
        unsigned char *env;
        size_t envlen;
        bool nostore;
        rc = run_loader(cache, key, keylen, load, ctx, &env, &envlen, &nostore, err);
        if (rc == DBK_OK)
            rc = open_envelope(env, envlen, val, vallen);
        return rc;
    }
    f = flight_start_locked(bucket, key, keylen, h);
    pthread_mutex_unlock(&cache->fl_mu);
    if (!f)
        return dbk__err(err, DBK_ENOMEM, "out of memory starting a cache load");

    /* 3. lead: lease BEFORE the load, load, store through the lease */
    dbk_cache_lease lease;
    memset(&lease, 0, sizeof lease);
    if (cache->ops->lease(cache->impl, key, keylen, &lease, NULL) != DBK_OK)
        lease.valid = false;
    unsigned char *env = NULL;
    size_t envlen = 0;
    bool nostore = false;
    dbk_error lerr;
    dbk_error_clear(&lerr);
    rc = run_loader(cache, key, keylen, load, ctx, &env, &envlen, &nostore, &lerr);
    pthread_mutex_lock(&cache->fl_mu);
    bool detached = f->ns_detached;
    pthread_mutex_unlock(&cache->fl_mu);
    store_loaded(cache, key, keylen, &lease, rc, env, envlen, nostore, detached, ttl_ms);

    /* 4. publish (to the followers that joined, detached or not) */
    pthread_mutex_lock(&cache->fl_mu);
    flight_publish_locked(bucket, f, rc, &lerr, env, envlen);
    if (rc == DBK_OK)
        rc = copy_result(f, val, vallen, err);
    else if (err)
        *err = lerr;
    flight_unref_locked(f);
    pthread_mutex_unlock(&cache->fl_mu);
    return rc;
}

/* ---- many keys missing at once -------------------------------------------- */

void dbk__cache_load_peeked_many(dbk_cache *cache, size_t n, const void *const *keys,
                                 const size_t *klens, dbk__cache_load_many_fn load, void *ctx,
                                 int64_t ttl_ms, void **vals, size_t *vallens, dbk_rc *rcs,
                                 bool *led, dbk_error *err)
{
    for (size_t i = 0; i < n; i++) {
        vals[i] = NULL;
        vallens[i] = 0;
        led[i] = false;
        rcs[i] = DBK_ENOT_RUN;
    }
    if (n == 0)
        return;
    atomic_fetch_add(&cache->misses, n);
    struct flight **fl = calloc(n, sizeof *fl);
    size_t *which = malloc(n * sizeof *which); /* the keys this caller leads */
    dbk_cache_lease *leases = malloc(n * sizeof *leases);
    void **lvals = calloc(n, sizeof *lvals);
    size_t *lvlens = calloc(n, sizeof *lvlens);
    dbk_rc *lrcs = malloc(n * sizeof *lrcs);
    bool *nostore = calloc(n, sizeof *nostore);
    const void **lkeys = malloc(n * sizeof *lkeys);
    size_t *lklens = malloc(n * sizeof *lklens);
    unsigned char **envs = malloc(n * sizeof *envs);
    size_t *envlens = malloc(n * sizeof *envlens);
    bool *nomem = calloc(n, sizeof *nomem);
    /* the stores: key, lease, value, ttl, outcome */
    const void **skeys = malloc(n * sizeof *skeys);
    size_t *sklens = malloc(n * sizeof *sklens);
    const dbk_cache_lease **sleases = malloc(n * sizeof *sleases);
    const void **svals = malloc(n * sizeof *svals);
    size_t *svlens = malloc(n * sizeof *svlens);
    int64_t *sttls = malloc(n * sizeof *sttls);
    bool *stored = malloc(n * sizeof *stored);
    if (!fl || !which || !leases || !lvals || !lvlens || !lrcs || !nostore || !lkeys || !lklens ||
        !envs || !envlens || !nomem || !skeys || !sklens || !sleases || !svals || !svlens ||
        !sttls || !stored) {
        for (size_t i = 0; i < n; i++)
            rcs[i] = DBK_ENOMEM;
        dbk__err(err, DBK_ENOMEM, "out of memory loading %zu keys", n);
        goto out;
    }

    /* 1. lead the flight of every key nobody loads yet, join the others */
    size_t nl = 0;
    pthread_mutex_lock(&cache->fl_mu);
    for (size_t i = 0; i < n; i++) {
        uint64_t h = hash_key(keys[i], klens[i]);
        struct flight **bucket = &cache->flights[h % FLIGHT_BUCKETS];
        struct flight *f = *bucket;
        while (f && !(f->hash == h && f->klen == klens[i] &&
                      memcmp(f->key, keys[i], klens[i]) == 0))
            f = f->next;
        if (f) {
            f->refs++;
            atomic_fetch_add(&cache->flight_waits, 1);
        } else if ((f = flight_start_locked(bucket, keys[i], klens[i], h)) != NULL) {
            led[i] = true;
            which[nl++] = i;
        } else {
            rcs[i] = DBK_ENOMEM;
            if (err && err->code == DBK_OK)
                dbk__err(err, DBK_ENOMEM, "out of memory starting a cache load");
        }
        fl[i] = f;
    }
    pthread_mutex_unlock(&cache->fl_mu);

    /* 2. lead: a lease per key BEFORE the load, one load for all of them,
     * each stored through its lease and published. All of it before this
     * caller waits on anyone: a caller that follows one of our keys while
     * we follow one of its own never waits on us for long. */
    if (nl > 0) {
        for (size_t k = 0; k < nl; k++) {
            lkeys[k] = keys[which[k]];
            lklens[k] = klens[which[k]];
            lrcs[k] = DBK_ENOT_RUN;
        }
        if (cache->ops->lease_many) {
            cache->ops->lease_many(cache->impl, nl, lkeys, lklens, leases);
        } else {
            for (size_t k = 0; k < nl; k++) {
                memset(&leases[k], 0, sizeof leases[k]);
                if (cache->ops->lease(cache->impl, lkeys[k], lklens[k], &leases[k], NULL) !=
                    DBK_OK)
                    leases[k].valid = false;
            }
        }
        dbk_error lerr;
        dbk_error_clear(&lerr);
        atomic_fetch_add(&cache->loads, nl);
        load(ctx, nl, which, lvals, lvlens, lrcs, nostore, &lerr);
        bool detached[DBK_CACHE_MAX_MANY];
        pthread_mutex_lock(&cache->fl_mu);
        for (size_t k = 0; k < nl; k++)
            detached[k] = fl[which[k]]->ns_detached;
        pthread_mutex_unlock(&cache->fl_mu);
        /* the envelopes, and what goes to the store (in one call where
         * the backend can) */
        size_t ns = 0;
        for (size_t k = 0; k < nl; k++) {
            envs[k] = NULL;
            envlens[k] = 0;
            if (lrcs[k] == DBK_OK) {
                envs[k] = malloc(lvlens[k] + 1);
                if (envs[k]) {
                    envs[k][0] = ENV_VALUE;
                    if (lvlens[k])
                        memcpy(envs[k] + 1, lvals[k], lvlens[k]);
                    envlens[k] = lvlens[k] + 1;
                } else {
                    lrcs[k] = DBK_ENOMEM;
                    nomem[k] = true;
                }
            }
            free(lvals[k]);
            lvals[k] = NULL;
            if (store_plan(cache, &leases[k], lrcs[k], envs[k], envlens[k], nostore[k],
                           detached[k], ttl_ms, &svals[ns], &svlens[ns], &sttls[ns])) {
                skeys[ns] = lkeys[k];
                sklens[ns] = lklens[k];
                sleases[ns] = &leases[k];
                ns++;
            }
        }
        if (ns > 0 && cache->ops->set_leased_many) {
            cache->ops->set_leased_many(cache->impl, ns, skeys, sklens, sleases, svals, svlens,
                                        sttls, stored);
        } else {
            for (size_t k = 0; k < ns; k++)
                cache->ops->set_leased(cache->impl, skeys[k], sklens[k], sleases[k], svals[k],
                                       svlens[k], sttls[k], &stored[k], NULL);
        }
        pthread_mutex_lock(&cache->fl_mu);
        for (size_t k = 0; k < nl; k++) {
            size_t i = which[k];
            /* each flight keeps words of its own outcome: a follower of
             * this key (a find_by_id alone, say) hears them */
            dbk_error ke = lerr;
            if (nomem[k])
                dbk__err(&ke, DBK_ENOMEM, "out of memory storing a loaded value");
            else if (lrcs[k] == DBK_ENOT_FOUND)
                dbk__err(&ke, DBK_ENOT_FOUND, "not found");
            else if (lrcs[k] == DBK_OK)
                dbk_error_clear(&ke);
            rcs[i] = lrcs[k];
            flight_publish_locked(&cache->flights[fl[i]->hash % FLIGHT_BUCKETS], fl[i], lrcs[k],
                                  &ke, envs[k], envlens[k]);
            flight_unref_locked(fl[i]);
            fl[i] = NULL;
            if (lrcs[k] != DBK_OK && lrcs[k] != DBK_ENOT_FOUND && err && err->code == DBK_OK)
                *err = ke;
        }
        pthread_mutex_unlock(&cache->fl_mu);
    }

    /* 3. follow: every key another caller leads, within one flight wait */
    struct timespec dl;
    deadline_in(&dl, cache->cfg.flight_wait_ms);
    pthread_mutex_lock(&cache->fl_mu);
    for (size_t i = 0; i < n; i++) {
        struct flight *f = fl[i];
        if (!f)
            continue;
        while (!f->done)
            if (pthread_cond_timedwait(&f->cv, &cache->fl_mu, &dl) == ETIMEDOUT)
                break;
        if (f->done) {
            dbk_error fe;
            rcs[i] = copy_result(f, &vals[i], &vallens[i], &fe);
            if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && err && err->code == DBK_OK)
                *err = fe;
        } /* else DBK_ENOT_RUN: the leader is too slow, the caller loads it */
        flight_unref_locked(f);
        fl[i] = NULL;
    }
    pthread_mutex_unlock(&cache->fl_mu);
out:
    free(fl);
    free(which);
    free(leases);
    free(lvals);
    free(lvlens);
    free(lrcs);
    free(nostore);
    free(lkeys);
    free(lklens);
    free(envs);
    free(envlens);
    free(nomem);
    free(skeys);
    free(sklens);
    free(sleases);
    free(svals);
    free(svlens);
    free(sttls);
    free(stored);
}

/* The deprecated name (one release), a wrapper so it stays in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_cache_stats_get(dbk_cache *cache, dbk_cache_stats *out, dbk_error *err)
{
    return dbk_cache_get_stats(cache, out, err);
}
#pragma GCC diagnostic pop
