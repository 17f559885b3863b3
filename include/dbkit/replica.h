/*
 * dbkit/replica.h - a PostgreSQL primary with streaming read replicas.
 *
 * A dbk_cluster owns one pool per server: the primary's and one per
 * replica. It hands out executors (dbk_db), so repositories, transactions
 * and the cache keep taking a dbk_db and do not know about replicas:
 *
 *   - dbk_cluster_db(): the primary. Writes, transactions, scripts and
 *     anything not marked as a read go here.
 *   - dbk_cluster_read_db(): marked reads. Each statement goes to a healthy
 *     replica, the one with the fewest statements in flight (ties: the
 *     lowest lag, then in rotation); a script, a transaction or a batch started on it runs on
 *     the primary (they may write).
 *   - dbk_cluster_read_db_after(token): reads that must see the writes a
 *     position token stands for: a replica that has replayed past the
 *     token, else the primary (see Read-your-writes).
 *
 * Health. A background thread samples every sample_interval_ms the
 * primary's pg_current_wal_lsn() and each replica's
 * pg_last_wal_replay_lsn() (never per query). A replica's lag is the time
 * since the primary first reported a WAL position the replica has not yet
 * replayed (0 when it has replayed everything the primary had at the last
 * sample, so an idle primary never makes a replica look late). A replica
 * whose lag exceeds max_lag_ms leaves the rotation and returns when it is
 * back under it. A replica whose connect fails (DBK_EUNAVAILABLE, DBK_EAUTH,
 * DBK_ETLS) or whose connection breaks leaves the rotation at once; the
 * read that hit it is sent to the next target if it never reached a server
 * (connect failure) and fails otherwise. A down replica is probed by the
 * background thread with back-off (100 ms, doubling to 5 s) and returns
 * after a successful sample. With no healthy replica, reads go to the
 * primary and dbk_cluster_stats.primary_fallbacks counts them.
 *
 * Read-your-writes. dbk_cluster_token() returns the primary's WAL insert
 * position (pg_current_wal_insert_lsn()) as a short string ("0/3000148",
 * at most DBK_TOKEN_MAX bytes with the NUL). Taken after a write or a
 * transaction committed, it is at or past that commit's record. It costs
 * one round trip on the primary (see docs/replicas.md for why). Tokens are
 * plain text: carry them in a cookie, a header or a session, across
 * requests and processes. A read given a token is served by a replica whose
 * replay position is at or past it; when none is, the call polls the
 * candidate replica's replay position for at most read_your_writes_wait_ms
 * and then uses the primary (counted in ryw_fallbacks).
 *
 * Thread safety: a cluster's executors may be used from any number of
 * threads at once, like a pool's.
 */
#ifndef DBKIT_REPLICA_H
#define DBKIT_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "db.h"
#include "error.h"
#include "pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_cluster dbk_cluster;

/* Most replicas per cluster. */
#define DBK_CLUSTER_MAX_REPLICAS 16
/* Room for a position token with its NUL ("FFFFFFFF/FFFFFFFF"). */
#define DBK_TOKEN_MAX 24

/* Options; zero fields take the configuration's value: replica_urls from
 * `replicas` / DATABASE_REPLICA_URLS (URLs separated by the comma before
 * each "postgres"), max_lag_ms from `replica_max_lag` /
 * DB_REPLICA_MAX_LAG_MS (default 1000), read_your_writes_wait_ms from
 * `read_your_writes_wait` / DB_READ_YOUR_WRITES_WAIT_MS (default 100; 0
 * there means do not wait). */
typedef struct dbk_cluster_opts {
    /* The struct's version: DBK_CLUSTER_OPTS_VERSION, set by DBK_CLUSTER_OPTS_INIT or
     * dbk_cluster_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    const char *const *replica_urls; /* postgres:// URLs, nreplicas of them */
    size_t nreplicas;
    int max_lag_ms;
    int read_your_writes_wait_ms; /* -1: do not wait */
    int sample_interval_ms;       /* default 100 */
    const dbk_pool_opts *pool_opts; /* the primary's pool; NULL: defaults */
} dbk_cluster_opts;

/* The version of dbk_cluster_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_CLUSTER_OPTS_VERSION 1
#define DBK_CLUSTER_OPTS_INIT {.version = DBK_CLUSTER_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_CLUSTER_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_CLUSTER_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_cluster_opts_init(dbk_cluster_opts *opts, unsigned int version, dbk_error *err);

/* Opens the cluster: a pool on `cfg` for the primary (with
 * opts->pool_opts) and one per replica, each replica's configuration being
 * its URL's.
 * Each replica's pool takes the primary pool's limits and timeouts
 * (dbk_pool_get_opts); its session settings come from its URL and the
 * DB_* environment. Does not connect (pools open lazily); the sampler
 * starts at once.
 * DBK_OK with *out owned by the caller (dbk_cluster_close), DBK_EMISUSE,
 * DBK_ECONFIG (not PostgreSQL, a bad replica URL, too many replicas; the
 * message names the replica by position, never its password),
 * DBK_ENOMEM, DBK_EINTERNAL (the thread did not start). */
DBK_API dbk_rc dbk_cluster_open(const dbk_config *cfg, const dbk_cluster_opts *opts,
                                dbk_cluster **out, dbk_error *err);

/* Stops the sampler and closes every pool (each drained for up to
 * drain_timeout_ms). Accepts NULL. */
DBK_API void dbk_cluster_close(dbk_cluster *c, int drain_timeout_ms);

/* The primary's executor; borrowed until close. */
DBK_API dbk_db *dbk_cluster_db(dbk_cluster *c);

/* The read executor (see above); borrowed until close. */
DBK_API dbk_db *dbk_cluster_read_db(dbk_cluster *c);

/* The primary's pool (its stats, dbk_pool_get_stats); borrowed until
 * close. Do not close it. NULL when c is NULL. */
DBK_API dbk_pool *dbk_cluster_pool(dbk_cluster *c);

/* Installs fn as the observer (dbk_db_set_observer) of every executor the
 * cluster hands out: the primary's, the read router, the primary as a
 * read target and each replica's. Each statement is reported once, by the
 * executor the caller ran it on. Same rule as dbk_db_set_observer(): call
 * before the executors are shared. NULL c does nothing. */
DBK_API void dbk_cluster_set_observer(dbk_cluster *c, dbk_observer_fn fn, void *ctx);

/* Chooses, now, the target of reads that must see `token` (NULL or "":
 * no constraint, same as dbk_cluster_read_db()) and gives its executor in
 * *out (borrowed until close). Use it for the reads of one request. May
 * wait up to read_your_writes_wait_ms. DBK_EINVALID for a malformed
 * token, DBK_EMISUSE. */
DBK_API dbk_rc dbk_cluster_read_db_after(dbk_cluster *c, const char *token, dbk_db **out,
                                         dbk_error *err);

/* Writes the primary's current position token into buf (DBK_TOKEN_MAX
 * bytes suffice). One round trip on the primary. DBK_EINVALID when buflen
 * is too small, or the primary's error. */
DBK_API dbk_rc dbk_cluster_token(dbk_cluster *c, char *buf, size_t buflen, dbk_error *err);

/* Parses a token; false when malformed. *lsn (may be NULL) gets the
 * position as a number. */
DBK_API bool dbk_token_parse(const char *token, uint64_t *lsn);

typedef enum dbk_replica_state {
    DBK_REPLICA_UNKNOWN = 0, /* not sampled yet: not used */
    DBK_REPLICA_UP = 1,      /* in the rotation */
    DBK_REPLICA_LAGGING = 2, /* lag above max_lag_ms: out until it catches up */
    DBK_REPLICA_DOWN = 3     /* connect failed or connection lost: probed with back-off */
} dbk_replica_state;

typedef struct dbk_replica_stats {
    dbk_replica_state state;
    int64_t lag_ms;      /* at the last sample; -1 when unknown */
    uint64_t replay_lsn; /* at the last sample */
    uint64_t reads;      /* marked reads (statements) it served */
    int in_flight;       /* statements running now */
} dbk_replica_stats;

typedef struct dbk_cluster_stats {
    size_t nreplicas;
    dbk_replica_stats replica[DBK_CLUSTER_MAX_REPLICAS];
    uint64_t primary_reads;     /* marked reads (statements) the primary served */
    uint64_t primary_fallbacks; /* reads routed to the primary because no replica was
                                   healthy: per statement on dbk_cluster_read_db(), per
                                   call of dbk_cluster_read_db_after() */
    uint64_t ryw_fallbacks;     /* dbk_cluster_read_db_after() calls answered with the
                                   primary because no replica replayed the token in time */
    uint64_t samples;           /* sampler rounds completed */
} dbk_cluster_stats;

/* A snapshot of the counters and states. DBK_EMISUSE on NULL. */
DBK_API dbk_rc dbk_cluster_get_stats(dbk_cluster *c, dbk_cluster_stats *out, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_REPLICA_H */
