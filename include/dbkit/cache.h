/*
 * dbkit/cache.h - the cache: in-process LRU or Redis, cache-aside that stays
 * correct under concurrent writes, and never fails a request.
 *
 * One handle, two backends:
 *   memory  a sharded LRU with TTL, bounded by entries and by bytes, one
 *           mutex per shard. The embedded default.
 *   redis   hiredis, a small pool of connections, short connect and command
 *           timeouts, a circuit breaker. Keys and values are binary-safe.
 *
 * Layers of the API, lowest first:
 *   get / set / delete           plain key-value with TTL;
 *   ns_version / ns_bump         a namespace version counter for lists and
 *                                pages: put the version in their keys, bump it
 *                                to drop them all (never KEYS or SCAN);
 *   lease / set_leased           the stale-set guard (see "Guarantee");
 *   get_or_load                  cache-aside: hit, or ONE load per key per
 *                                process (single-flight), stored only if no
 *                                invalidation of the key happened since the
 *                                load began;
 *   invalidate_on_commit         delete a key after the surrounding
 *                                transaction commits (at once outside one).
 * Values stored by get_or_load carry a one-byte envelope (found / not found);
 * keep keys written with dbk_cache_set() apart from keys read with
 * dbk_cache_get_or_load().
 *
 * Guarantee ("correct invalidation"). Let a writer commit a change to the
 * row behind key K and then, after the commit, call dbk_cache_delete(K)
 * (directly or through dbk_cache_invalidate_on_commit()), and let that
 * delete succeed. Then no dbk_cache_get_or_load(K) whose load began before
 * that delete can store its result, and none that starts after the delete
 * returned can take such a load's result through single-flight (the delete
 * detaches the load): every later reader sees either a value loaded after
 * the delete, or loads itself. Precisely: set_leased stores
 * only if the key's generation is the one read by dbk_cache_lease() before
 * the load, the backend was not restarted/flushed in between, and the lease
 * is younger than lease_ms (default 10 s; a slower load is served but not
 * stored). Memory: generations are compared under the shard lock. Redis:
 * a Lua script compares the generation key (a random token written by every
 * delete, kept for 3 x lease_ms) and a per-server epoch key, then SETs.
 * When a delete cannot reach Redis, the key is remembered (up to 10000 keys)
 * and Redis is not read again by this process until they are all replayed
 * (dbk_cache_close() makes a last, bounded attempt and logs what is left);
 * other processes that can still reach Redis may serve the old value until
 * its TTL runs out: the TTL is the bound on staleness in a partition.
 *
 * Degradation. Every Redis call is bounded by command_timeout_ms (connects
 * by connect_timeout_ms). After breaker_failures consecutive failures the
 * breaker opens: Redis is skipped for breaker_cooldown_ms, then one call
 * probes it. One log line per breaker state change. get_or_load never fails
 * because of the cache: a cache error is a miss, the loader answers.
 *
 * SIGPIPE: hiredis writes with write(2). If SIGPIPE is not ignored when a
 * Redis cache opens, each command blocks it on the calling thread (four
 * extra system calls); servers should ignore SIGPIPE before opening.
 *
 * Thread safety: a dbk_cache is thread-safe: every function may be called
 * from any number of threads at once, except dbk_cache_close() (once, when
 * no other thread uses the handle).
 */
#ifndef DBKIT_CACHE_H
#define DBKIT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "db.h"
#include "error.h"
#include "repo.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_cache dbk_cache;

/* Defaults (used for option fields left 0). */
#define DBK_CACHE_DEFAULT_MAX_ENTRIES 100000
#define DBK_CACHE_DEFAULT_MAX_BYTES (64u * 1024u * 1024u)
#define DBK_CACHE_DEFAULT_SHARDS 16
#define DBK_CACHE_DEFAULT_POOL_SIZE 4
#define DBK_CACHE_DEFAULT_CONNECT_TIMEOUT_MS 100
#define DBK_CACHE_DEFAULT_COMMAND_TIMEOUT_MS 50
#define DBK_CACHE_DEFAULT_BREAKER_FAILURES 3
#define DBK_CACHE_DEFAULT_BREAKER_COOLDOWN_MS 1000
#define DBK_CACHE_DEFAULT_LEASE_MS 10000
#define DBK_CACHE_DEFAULT_FLIGHT_WAIT_MS 2000
#define DBK_CACHE_DEFAULT_JITTER_PCT 10
#define DBK_CACHE_DEFAULT_KEY_PREFIX "dbk:"
#define DBK_CACHE_DEFAULT_MAX_VALUE_BYTES (1024u * 1024u)
#define DBK_CACHE_DEFAULT_CLOSE_TIMEOUT_MS 1000
/* Longest key accepted by every backend, in bytes. */
#define DBK_CACHE_MAX_KEY 4096
/* Longest value any backend holds, in bytes: Redis's string limit (512 MiB)
 * less the one-byte envelope that get_or_load puts in front of a value. The
 * upper bound of max_value_bytes and of an encoded row. */
#define DBK_CACHE_MAX_VALUE (512u * 1024u * 1024u - 1u)

/* Breaker states (memory backend: always CLOSED). */
typedef enum dbk_cache_breaker {
    DBK_CACHE_BREAKER_CLOSED = 0,    /* calls go to Redis */
    DBK_CACHE_BREAKER_OPEN = 1,      /* Redis skipped until the cool-down ends */
    DBK_CACHE_BREAKER_HALF_OPEN = 2  /* one probe call in flight */
} dbk_cache_breaker;

/*
 * Options. Start from DBK_CACHE_OPTS_INIT and set what you need; every
 * field left 0 takes its default (a zero-initialized struct works too: its
 * version 0 reads as 1). NULL options = all defaults.
 */
typedef struct dbk_cache_opts {
    /* The struct's version: DBK_CACHE_OPTS_VERSION, set by DBK_CACHE_OPTS_INIT or
     * dbk_cache_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* Backend. NULL or "memory:" gives the memory backend (the environment
     * is not read here: see dbk_cache_opts_from_env()). Otherwise
     * "redis://[[user]:password@]host[:port][/db]" (port 6379, db 0; user,
     * password percent-decoded; "[::1]" for IPv6),
     * "redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]"
     * (sentinels, port 26379 by default; the master they name, checked with
     * ROLE), "redis-cluster://[[user]:password@]host[:port][,...]" (seed
     * nodes of a Redis Cluster; key_prefix may not hold '{' or '}'), at most
     * 16 hosts, or "memory:". See docs/caching.md for both modes.
     * Query parameters: "auto_pipeline=0|1" (concurrent calls share
     * connections as pipelines; unset: on), and
     * for redis-sentinel:// "sentinel_password" / "sentinel_user" (AUTH to
     * the sentinels; the userinfo is the master's). Others: DBK_ECONFIG.
     * "rediss://" (TLS) is DBK_ECONFIG: this build has no TLS. */
    const char *url;
    /* memory backend */
    size_t max_entries; /* whole cache, tombstones included (default 100000) */
    size_t max_bytes;   /* keys + values + ~64 bytes per entry (default 64 MiB) */
    int shards;         /* rounded up to a power of two (default 16) */
    /* redis backend */
    const char *key_prefix;  /* put before every key (default "dbk:"); copied */
    int pool_size;           /* connections (default 4; cluster: per master) */
    int connect_timeout_ms;  /* added to a call's deadline when it connects
                                (default 100) */
    int command_timeout_ms;  /* a call's deadline, from its start: the wait
                                for a connection and every write and read
                                (default 50) */
    int breaker_failures;    /* consecutive failures that open it (default 3) */
    int breaker_cooldown_ms; /* skip Redis this long, then probe (default 1000) */
    /* both */
    int lease_ms;          /* oldest load result still stored (default 10000) */
    int flight_wait_ms;    /* longest a single-flight follower waits for the
                              leader before loading itself (default 2000) */
    int jitter_pct;        /* get_or_load TTLs are shortened by a random
                              0..jitter_pct percent (default 10; <0: none) */
    int negative_ttl_ms;   /* get_or_load caches "not found" this long
                              (default 0: off) */
    size_t max_value_bytes; /* longest value the cache holds (default 1 MiB,
                               at most DBK_CACHE_MAX_VALUE): get_or_load
                               returns a longer loaded value without storing
                               it; dbk_cache_set refuses one (DBK_EINVALID) */
    int close_timeout_ms;   /* redis: longest dbk_cache_close() spends
                               delivering invalidations still queued because
                               Redis was unreachable (default 1000; <0: do
                               not try) */
} dbk_cache_opts;

/* The version of dbk_cache_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_CACHE_OPTS_VERSION 1
#define DBK_CACHE_OPTS_INIT {.version = DBK_CACHE_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_CACHE_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_CACHE_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_cache_opts_init(dbk_cache_opts *opts, unsigned int version, dbk_error *err);

/*
 * Opens a cache (see dbk_cache_opts.url for the backend choice). Reads only
 * its arguments, never the environment. Opening a
 * Redis cache does not connect: a Redis that is down does not fail it.
 * On DBK_OK *out is owned by the caller (dbk_cache_close). Errors:
 * DBK_EMISUSE (out NULL), DBK_ECONFIG (malformed URL or option; the message
 * never contains the password), DBK_ENOMEM.
 */
DBK_API dbk_rc dbk_cache_open(const dbk_cache_opts *opts, dbk_cache **out, dbk_error *err);

/* What dbk_cache_opts_from_env() read: owns the URL opts->url points to. */
typedef struct dbk_cache_env dbk_cache_env;

/*
 * Reads the cache's settings from the process environment into *opts, the
 * cache's counterpart of dbk_config_from_env(); dbk_cache_open() itself
 * reads no variable. Empty variables count as unset.
 *   CACHE_URL, else REDIS_URL: opts->url, when the caller left it NULL
 *     (neither set: opts->url stays NULL, the memory backend);
 *   CACHE_AUTO_PIPELINE (0/1, off/on, false/true, no/yes): added to a
 *     redis URL (the environment's or the caller's) as auto_pipeline=0|1,
 *     unless the URL names auto_pipeline itself, which wins.
 * Other fields of *opts are left as they are. On DBK_OK *env is owned by
 * the caller (dbk_cache_env_free) and opts->url, when set by this call,
 * points into it: free it after dbk_cache_open(), which copies what it
 * keeps. Errors: DBK_EMISUSE (opts or env NULL), DBK_ECONFIG (a bad
 * CACHE_AUTO_PIPELINE, a URL over 4096 bytes; the message names the
 * variable, never its value), DBK_ENOMEM; *env is NULL and *opts unchanged
 * on failure. Reads the environment with getenv(): do not call while
 * another thread modifies it.
 */
DBK_API dbk_rc dbk_cache_opts_from_env(dbk_cache_opts *opts, dbk_cache_env **env,
                                       dbk_error *err);

/* Frees what dbk_cache_opts_from_env() returned, wiping the URL (it may
 * hold a password). Accepts NULL. */
DBK_API void dbk_cache_env_free(dbk_cache_env *env);

/*
 * Closes the cache and frees everything it holds. Accepts NULL.
 * Redis: deletes still queued because Redis could not be reached (see
 * "Guarantee") are delivered first, over fresh connections, retrying until
 * close_timeout_ms (default 1 s) has passed; each connect and command is
 * also bounded by its own timeout, so the call returns within
 * close_timeout_ms + command_timeout_ms. What could not be delivered is
 * logged at DBK_LOG_WARN with the count: other processes may serve those
 * keys' old values until their TTL runs out. A process that exits without
 * closing the cache drops its queue the same way (with no log line).
 */
DBK_API void dbk_cache_close(dbk_cache *cache);

/* "memory" or "redis". Static. */
DBK_API const char *dbk_cache_backend(const dbk_cache *cache);

/*
 * Reads a key. DBK_OK: *val is a copy owned by the caller (dbk_free()), *vallen
 * its length (a 0-length value still gives a non-NULL pointer).
 * DBK_ENOT_FOUND: no live entry. Redis errors: DBK_EUNAVAILABLE (down, or
 * breaker open), DBK_ETIMEOUT, DBK_ENOMEM; callers treat them as a miss.
 * DBK_EMISUSE: NULL arguments, keylen 0 or > DBK_CACHE_MAX_KEY.
 */
DBK_API dbk_rc dbk_cache_get(dbk_cache *cache, const void *key, size_t keylen, void **val,
                             size_t *vallen, dbk_error *err);

/* The most keys one dbk_cache_get_many() reads, and the most ids one
 * dbk_cached_repo_find_by_ids() looks up. */
#define DBK_CACHE_MAX_MANY 1024

/*
 * dbk_cache_get() of n keys at once (0..DBK_CACHE_MAX_MANY), in one round
 * trip on Redis (one MGET) with a single server or a Sentinel master; a
 * Cluster spreads keys over slots, so there it is one GET per key. For each
 * key i, rcs[i] is what dbk_cache_get() would have returned for it alone:
 * DBK_OK with vals[i] (owned by the caller, dbk_free()) and vallens[i],
 * DBK_ENOT_FOUND, or the error of the read that carried it (DBK_EUNAVAILABLE,
 * DBK_ETIMEOUT, DBK_ENOMEM, DBK_EINTERNAL for a reply Redis should not have
 * sent: treat it as a miss); vals[i] is NULL unless
 * DBK_OK. Keys may repeat. Returns DBK_OK when every key was read (found or
 * not), else the first error, described in err. DBK_EMISUSE, with nothing
 * read and the arrays untouched: NULL arrays, n over the maximum, a NULL
 * key, a key length 0 or over DBK_CACHE_MAX_KEY.
 */
DBK_API dbk_rc dbk_cache_get_many(dbk_cache *cache, size_t n, const void *const *keys,
                                  const size_t *keylens, void **vals, size_t *vallens,
                                  dbk_rc *rcs, dbk_error *err);

/*
 * Stores a value for ttl_ms milliseconds (> 0). Unconditional: it may store
 * a value older than a concurrent delete; use dbk_cache_get_or_load() (or
 * lease + set_leased) for values read from the database. The bytes are
 * copied. A value longer than max_value_bytes is DBK_EINVALID (nothing is
 * sent or allocated). Memory: a value larger than a shard's byte budget is
 * not stored (DBK_OK, nothing kept). Errors as dbk_cache_get().
 */
DBK_API dbk_rc dbk_cache_set(dbk_cache *cache, const void *key, size_t keylen, const void *val,
                             size_t vallen, int64_t ttl_ms, dbk_error *err);

/*
 * Invalidates a key: drops its value and changes its generation, so that a
 * load that began before this call cannot store its result (see
 * "Guarantee" above), and detaches that load from single-flight: a
 * dbk_cache_get_or_load(key) that starts after this call returned never
 * takes the result of a load that began before it (callers that were
 * already waiting for that load still get it). DBK_OK also when the key had
 * no value. When Redis cannot be reached the key is queued for replay (see
 * above) and the Redis error is returned; the detach happens regardless.
 */
DBK_API dbk_rc dbk_cache_delete(dbk_cache *cache, const void *key, size_t keylen,
                                dbk_error *err);

/*
 * The current version of namespace `ns` (NUL-terminated, 1..200 bytes), 0
 * when never bumped. Put it in the keys of lists and pages:
 * "users:list:v<version>:page:3". Errors as dbk_cache_get().
 */
DBK_API dbk_rc dbk_cache_ns_version(dbk_cache *cache, const char *ns, uint64_t *version,
                                    dbk_error *err);

/* Increments the namespace version (every key built with the old version
 * becomes unreachable and expires by its TTL). *version (may be NULL) gets
 * the new value. Also detaches from single-flight every load in flight for
 * a key that starts with "<ns>:" (as dbk_cache_delete() does for one key),
 * and such a detached load does not store its result. */
DBK_API dbk_rc dbk_cache_ns_bump(dbk_cache *cache, const char *ns, uint64_t *version,
                                 dbk_error *err);

/* A lease: the key's generation as read before a load. Plain data. */
typedef struct dbk_cache_lease {
    uint64_t gen;     /* backend-specific generation of the key */
    uint64_t epoch;   /* backend incarnation (Redis: epoch key) */
    int64_t taken_ns; /* monotonic clock when taken */
    bool valid;       /* false: the lease could not be taken; never stores */
} dbk_cache_lease;

/*
 * Takes a lease on a key: call BEFORE reading the value from the database.
 * On a Redis error the lease is returned invalid (lease->valid false) with
 * the error code; set_leased with it stores nothing.
 */
DBK_API dbk_rc dbk_cache_lease_take(dbk_cache *cache, const void *key, size_t keylen,
                                    dbk_cache_lease *lease, dbk_error *err);

/*
 * Stores the value only if no dbk_cache_delete() of the key happened since
 * the lease was taken (and the lease is younger than lease_ms). *stored (may
 * be NULL) says whether it was. DBK_OK in both cases; errors as
 * dbk_cache_get().
 */
DBK_API dbk_rc dbk_cache_set_leased(dbk_cache *cache, const void *key, size_t keylen,
                                    const dbk_cache_lease *lease, const void *val,
                                    size_t vallen, int64_t ttl_ms, bool *stored,
                                    dbk_error *err);

/*
 * A loader for dbk_cache_get_or_load(): reads the value behind `key` (from
 * the database) and returns DBK_OK with *val from malloc() (ownership passes
 * to the cache, which releases it with free(); *val may be NULL when *vallen is 0), DBK_ENOT_FOUND when there
 * is no such row, or any other code on failure (err filled).
 */
typedef dbk_rc (*dbk_cache_load_fn)(void *ctx, const void *key, size_t keylen, void **val,
                                    size_t *vallen, dbk_error *err);

/*
 * Cache-aside read. A hit returns the cached value. A miss (or a cache
 * error: never surfaced) runs `load`; concurrent misses on one key in this
 * process run ONE load, the others wait up to flight_wait_ms and take its
 * result (on timeout they load themselves, without storing). A call that
 * starts after a dbk_cache_delete() of the key (or a dbk_cache_ns_bump() of
 * its "<ns>:" prefix) returned never joins a load that began before it. The
 * result is stored for ttl_ms minus jitter, through a lease taken before
 * the load, so an invalidation during the load wins. A value longer than
 * max_value_bytes is returned but not stored. With negative_ttl_ms set,
 * "not found" is cached too.
 *
 * Do not run a loader that reads through a transaction executor holding
 * uncommitted writes: it could cache rows that are later rolled back
 * (dbk_cache_find_row() bypasses the cache inside a transaction for you).
 *
 * DBK_OK: *val owned by the caller (dbk_free()), *vallen set. DBK_ENOT_FOUND: no such row
 * (loaded or negatively cached). Otherwise the loader's code and error.
 * DBK_EMISUSE for bad arguments.
 */
DBK_API dbk_rc dbk_cache_get_or_load(dbk_cache *cache, const void *key, size_t keylen,
                                     dbk_cache_load_fn load, void *ctx, int64_t ttl_ms,
                                     void **val, size_t *vallen, dbk_error *err);

/*
 * Deletes `key` after the transaction running on `db` commits (through
 * dbk_tx_after_commit_ex; a rollback discards it), or at once when `db` is
 * not a transaction executor. The key is copied. The delete's own failure
 * is handled as in dbk_cache_delete() (queued, logged), never reported to
 * the committer. DBK_EMISUSE, DBK_ENOMEM, registration errors.
 */
DBK_API dbk_rc dbk_cache_invalidate_on_commit(dbk_cache *cache, dbk_db *db, const void *key,
                                              size_t keylen, dbk_error *err);

/* dbk_cache_ns_bump() after commit, like dbk_cache_invalidate_on_commit(). */
DBK_API dbk_rc dbk_cache_ns_bump_on_commit(dbk_cache *cache, dbk_db *db, const char *ns,
                                           dbk_error *err);

/* Deprecated in 0.2 (removed in 0.3): the executor-first forms of
 * dbk_cache_invalidate_on_commit() and dbk_cache_ns_bump_on_commit(). */
DBK_API DBK_DEPRECATED("use dbk_cache_invalidate_on_commit (cache first, then db)")
dbk_rc dbk_cache_invalidate_after_commit(dbk_db *db, dbk_cache *cache, const void *key,
                                         size_t keylen, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cache_ns_bump_on_commit (cache first, then db)")
dbk_rc dbk_cache_ns_bump_after_commit(dbk_db *db, dbk_cache *cache, const char *ns,
                                      dbk_error *err);

/* Counters since open. */
typedef struct dbk_cache_stats {
    uint64_t hits;          /* get / get_or_load served from the cache */
    uint64_t misses;        /* not in the cache (including errors) */
    uint64_t errors;        /* backend calls that failed (Redis down, timeout) */
    uint64_t skipped;       /* calls not made because the breaker was open */
    uint64_t loads;         /* loader runs */
    uint64_t flight_waits;  /* get_or_load calls that waited for another's load */
    uint64_t stale_rejects; /* loads not stored because an invalidation won
                               (set_leased refusals, namespace bumps) */
    uint64_t evictions;     /* memory: entries dropped for space */
    uint64_t entries;       /* memory: live entries now (tombstones included) */
    uint64_t bytes;         /* memory: bytes accounted now */
    uint64_t pending_invalidations; /* redis: deletes waiting for replay */
    dbk_cache_breaker breaker;
    uint64_t breaker_opens; /* times the breaker opened */
} dbk_cache_stats;

/* Fills *out. DBK_EMISUSE for NULL arguments. */
DBK_API dbk_rc dbk_cache_get_stats(dbk_cache *cache, dbk_cache_stats *out, dbk_error *err);

/* Deprecated in 0.2 (removed in 0.3): the old name of dbk_cache_get_stats(). */
DBK_API DBK_DEPRECATED("use dbk_cache_get_stats")
dbk_rc dbk_cache_stats_get(dbk_cache *cache, dbk_cache_stats *out, dbk_error *err);

/* ------------------------------------------------------------------------
 * Value encoding: a compact, versioned row format for cached entities.
 *
 *   "dK" | version 1 | 0 | layout hash (u64 LE) | count (u32 LE) | fields
 *   field: type (u8) then NULL: nothing; BOOL: 1 byte 0/1; INT64,
 *   TIMESTAMP: i64 LE; DOUBLE: IEEE-754 bits LE; TEXT, JSON, BLOB: length
 *   (u32 LE), bytes, and for TEXT/JSON a NUL byte.
 *
 * The layout hash covers the entity name and every field's name and type,
 * so a struct that changed never decodes bytes written for the old one
 * (DBK_ETYPE "layout changed": treat as a miss). Every length is checked
 * against the buffer; trailing bytes are an error.
 * ------------------------------------------------------------------------ */

/* One field of a cached layout. */
typedef struct dbk_cache_field {
    const char *name;
    dbk_type type;
} dbk_cache_field;

/* FNV-1a 64 over the entity name and each field's name and type. */
DBK_API uint64_t dbk_cache_layout_hash(const char *entity, const dbk_cache_field *fields,
                                       size_t nfields);

/*
 * Encodes n values (each of its field's type, or NULL). *out is owned by
 * the caller (dbk_free()). DBK_EMISUSE, DBK_EINVALID (an unknown type, or an encoding
 * longer than DBK_CACHE_MAX_VALUE: the message names the field or the
 * limit; checked before anything is allocated, nothing is truncated),
 * DBK_ENOMEM.
 */
DBK_API dbk_rc dbk_cache_encode_row(uint64_t layout, const dbk_value *vals, size_t n, void **out,
                                    size_t *outlen, dbk_error *err);

/*
 * Decodes into vals[0..n-1]. Text, JSON and blob values borrow `buf` (valid
 * while buf is); text and JSON are NUL-terminated. DBK_ETYPE when the magic,
 * version, layout hash or count differ ("written for another layout"),
 * DBK_EINVALID when the bytes are malformed (a length past the end, a bad
 * type or bool, trailing bytes). Never reads outside buf[0..len).
 */
DBK_API dbk_rc dbk_cache_decode_row(const void *buf, size_t len, uint64_t layout, dbk_value *vals,
                                    size_t n, dbk_error *err);

/* ------------------------------------------------------------------------
 * Cached row reads on a dbk_db (the layer under the cached repository).
 * ------------------------------------------------------------------------ */

/*
 * Reads one row through the cache. `sql` must select exactly the layout's
 * fields in order, with $1..$nparams; the key is `key`. Outside a
 * transaction: get_or_load with a loader that runs sql on db and encodes the
 * row (dbk_cache_encode_row with `layout`). Inside a transaction (db is a
 * transaction executor) the cache is bypassed entirely: the row is read
 * from the database and nothing is stored, so uncommitted data never
 * reaches the cache and the transaction reads its own writes.
 *
 * DBK_OK: *row the encoded row (decode with dbk_cache_decode_row;
 * dbk_free()), *rowlen set. DBK_ENOT_FOUND when no row. Database errors as
 * dbk_db_query_row().
 */
DBK_API dbk_rc dbk_cache_find_row(dbk_cache *cache, dbk_db *db, const void *key, size_t keylen,
                                  uint64_t layout, const char *sql, const dbk_value *params,
                                  size_t nparams, int64_t ttl_ms, void **row, size_t *rowlen,
                                  dbk_error *err);

/* ------------------------------------------------------------------------
 * The cached repository: dbk_repo_* with cache-aside reads and
 * invalidation after commit.
 *
 *   reads   find_by_id and find_by (a unique column) read through the cache
 *           (get_or_load: single-flight, lease, TTL with jitter, optional
 *           negative caching). Inside a transaction they go to the database
 *           and store nothing.
 *   writes  create, update, upsert, delete and create_many run the
 *           repository call on `db`, then invalidate, after commit (at once
 *           outside a transaction), the id key and the key of every unique
 *           column for the row's values before and after the write, and bump
 *           the entity's list namespace "<table>:list". A rollback leaves
 *           the cache untouched. Update and upsert read the old row first
 *           (one query) when the entity has unique columns other than its
 *           primary key (update also when the id has no canonical key, see
 *           below); delete always takes the deleted row back (RETURNING).
 * Keys: "<table>:<column>:" + the value as the column stores it: an int64
 * in decimal (a lookup of an integer column by a text of decimal digits,
 * "0005" or "+5", is converted and sent as that int64), text and blobs as
 * their bytes. A text column is keyed by its bytes only if it compares
 * bytes: the database is asked once per column and engine (SQLite: a
 * collation under which 'a' = 'A' or 'a' = 'a ', i.e. NOCASE or RTRIM, is
 * not byte equality; PostgreSQL: text or varchar with a deterministic
 * collation is, a uuid column only for its canonical lower-case spelling,
 * anything else is not). Every lookup that has no such key (another type,
 * another spelling, NULL, a double, a column that does not compare bytes,
 * a key over 1 KiB) bypasses the cache: it runs the uncached dbk_repo_*
 * call and stores nothing, so it answers exactly what the database answers.
 * A found row whose stored value differs from the key's bytes is returned
 * but not stored. A row longer than max_value_bytes is served, not stored.
 * Values: the row's non-hidden fields in the dbk_cache_encode_row format,
 * with a layout hash over the table, struct size and each field's column,
 * type, offset and size: a changed struct never decodes old bytes (they
 * count as a miss and are reloaded).
 * Only writes made through the cached repository invalidate; a write made
 * elsewhere is seen when the entry's TTL runs out.
 * ------------------------------------------------------------------------ */

typedef struct dbk_cached_repo dbk_cached_repo;

/* Default TTL of cached rows (5 minutes). */
#define DBK_CACHED_REPO_DEFAULT_TTL_MS 300000

typedef struct dbk_cached_repo_opts {
    /* The struct's version: DBK_CACHED_REPO_OPTS_VERSION, set by DBK_CACHED_REPO_OPTS_INIT or
     * dbk_cached_repo_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    int64_t ttl_ms; /* 0 (or negative): DBK_CACHED_REPO_DEFAULT_TTL_MS (jitter from
                       the cache); entries always expire, there is no "off" */
} dbk_cached_repo_opts;

/* The version of dbk_cached_repo_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_CACHED_REPO_OPTS_VERSION 1
#define DBK_CACHED_REPO_OPTS_INIT {.version = DBK_CACHED_REPO_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_CACHED_REPO_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_CACHED_REPO_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_cached_repo_opts_init(dbk_cached_repo_opts *opts, unsigned int version,
                                         dbk_error *err);

/* Wraps entity `e` with `cache` (both borrowed: they must outlive the
 * cached repository and any transaction that used it). DBK_EMISUSE,
 * DBK_ENOMEM, errors of dbk_entity_init(). *out is owned by the caller. */
DBK_API dbk_rc dbk_cached_repo_new(dbk_cache *cache, const dbk_entity *e,
                                   const dbk_cached_repo_opts *opts, dbk_cached_repo **out,
                                   dbk_error *err);

/* Frees it (not the cache, not the entity). Accepts NULL. */
DBK_API void dbk_cached_repo_free(dbk_cached_repo *r);

/* dbk_repo_find_by_id() through the cache. Strings go into `arena`. */
DBK_API dbk_rc dbk_cached_repo_find_by_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                                          dbk_arena *arena, dbk_error *err);

/*
 * dbk_cached_repo_find_by_id() of n ids at once (0..DBK_CACHE_MAX_MANY),
 * for a service that gathers the lookups of many requests (an event loop's
 * iteration, a page's foreign keys): the rows the cache holds come back in
 * one dbk_cache_get_many() (one round trip on Redis, see there). The ids it
 * does not hold (or holds in a form this layout cannot read, or could not
 * be read because the cache failed) are loaded as
 * dbk_cached_repo_find_by_id() loads one, with its guarantees (one load per
 * key in the process, a lease taken before the read, the store refused
 * after an invalidation, a cached "not found" when negative_ttl_ms is
 * set), except that with an integer primary key the rows of every id this
 * call loads come from ONE statement (primary key IN the ids); ids another
 * thread is loading at that moment are waited for, as there. Other
 * primary keys are loaded one id at a time. A repeated id is loaded once.
 * Inside a transaction every id is read from the database, as there.
 * outs[i] (a struct of the entity's type)
 * receives row i, its strings in `arena`; rcs[i] is that lookup's outcome:
 * DBK_OK, DBK_ENOT_FOUND, or its error. Ids may repeat. Returns DBK_OK when
 * every outcome is DBK_OK or DBK_ENOT_FOUND, else the first other one,
 * described in err. DBK_EMISUSE, with nothing read: a NULL argument (an
 * outs[i] included), n over the maximum.
 */
DBK_API dbk_rc dbk_cached_repo_find_by_ids(dbk_cached_repo *r, dbk_db *db, size_t n,
                                           const dbk_value *ids, void *const *outs, dbk_rc *rcs,
                                           dbk_arena *arena, dbk_error *err);

/* dbk_repo_find_by() through the cache (`column` the PK or a DBK_F_UNIQUE
 * field, else DBK_EINVALID_COLUMN). */
DBK_API dbk_rc dbk_cached_repo_find_by(dbk_cached_repo *r, dbk_db *db, const char *column,
                                       dbk_value value, void *out, dbk_arena *arena,
                                       dbk_error *err);

/* The repository writes, with invalidation as described above. Arguments
 * and results as the dbk_repo_* call of the same name. */
DBK_API dbk_rc dbk_cached_repo_create(dbk_cached_repo *r, dbk_db *db, const void *in, void *out,
                                      dbk_arena *arena, dbk_error *err);
DBK_API dbk_rc dbk_cached_repo_update(dbk_cached_repo *r, dbk_db *db, dbk_value id, const void *in,
                                      const char *const *fields, size_t nfields, void *out,
                                      dbk_arena *arena, dbk_error *err);
DBK_API dbk_rc dbk_cached_repo_upsert(dbk_cached_repo *r, dbk_db *db, const char *const *conflict,
                                      size_t nconflict, const char *const *update_fields,
                                      size_t nupdate, const void *in, void *out, dbk_arena *arena,
                                      dbk_error *err);
DBK_API dbk_rc dbk_cached_repo_delete(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                                      dbk_arena *arena, dbk_error *err);
DBK_API dbk_rc dbk_cached_repo_create_many(dbk_cached_repo *r, dbk_db *db, const void *rows,
                                           size_t n, void *out_rows, dbk_arena *arena,
                                           dbk_error *err);

/* The version of the entity's list namespace ("<table>:list"): put it in the
 * keys of cached lists and pages; every write bumps it after commit. */
DBK_API dbk_rc dbk_cached_repo_list_version(dbk_cached_repo *r, uint64_t *version, dbk_error *err);

/* Deprecated in 0.2 (removed in 0.3): the old names of the calls above,
 * without the object's full prefix (docs/api-conventions.md). */
DBK_API DBK_DEPRECATED("use dbk_cached_repo_find_by_id")
dbk_rc dbk_cached_find_by_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                             dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_find_by")
dbk_rc dbk_cached_find_by(dbk_cached_repo *r, dbk_db *db, const char *column, dbk_value value,
                          void *out, dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_create")
dbk_rc dbk_cached_create(dbk_cached_repo *r, dbk_db *db, const void *in, void *out,
                         dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_update")
dbk_rc dbk_cached_update(dbk_cached_repo *r, dbk_db *db, dbk_value id, const void *in,
                         const char *const *fields, size_t nfields, void *out, dbk_arena *arena,
                         dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_upsert")
dbk_rc dbk_cached_upsert(dbk_cached_repo *r, dbk_db *db, const char *const *conflict,
                         size_t nconflict, const char *const *update_fields, size_t nupdate,
                         const void *in, void *out, dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_delete")
dbk_rc dbk_cached_delete(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                         dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_create_many")
dbk_rc dbk_cached_create_many(dbk_cached_repo *r, dbk_db *db, const void *rows, size_t n,
                              void *out_rows, dbk_arena *arena, dbk_error *err);
DBK_API DBK_DEPRECATED("use dbk_cached_repo_list_version")
dbk_rc dbk_cached_list_version(dbk_cached_repo *r, uint64_t *version, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_CACHE_H */
