/*
 * Internal view of dbk_config, shared by the drivers and the pool. Only the
 * config module writes it.
 */
#ifndef DBK_CONFIG_INT_H
#define DBK_CONFIG_INT_H

#include "dbkit/config.h"

/* One libpq connection keyword dbkit does not interpret itself
 * (keepalives, sslrootcert, ...); passed through and checked by the driver. */
struct dbk__cfg_extra {
    char *key;
    char *value;
};

struct dbk_config {
    dbk_engine engine;

    /* PostgreSQL. Strings are NULL when unset. host and port may be
     * comma-separated lists (multi-host failover). */
    char *host;
    char *port;
    char *dbname;
    char *user;
    char *password;          /* secret: never printed */
    char *sslmode;
    char *application_name;
    char *target_session_attrs;
    int connect_timeout_ms;  /* > 0 */
    int statement_timeout_ms; /* 0 = no server-side limit (client deadline still applies) */
    int lock_timeout_ms;     /* 0 = none */
    int stmt_cache_size;     /* prepared statements kept per connection; 0 = off (PgBouncer) */
    struct dbk__cfg_extra *extra;
    size_t nextra;

    /* SQLite. */
    char *sqlite_path;       /* ":memory:" for in-memory */
    bool sqlite_readonly;    /* mode=ro */
    bool sqlite_memory;
    bool sqlite_create;      /* mode=rwc (default): create the file when missing;
                              * false for mode=ro and mode=rw */
    int busy_timeout_ms;
    char *journal_mode;      /* "wal" by default */
    char *synchronous;       /* "normal" by default */
    int sqlite_cache_kib;    /* page cache per connection in KiB; 0: SQLite's (2000) */
    int sqlite_mmap_mib;     /* memory-mapped reads in MiB; 0: off (SQLite's default) */

    /* Read replicas (see dbkit/replica.h): comma-separated postgres://
     * URLs (secret: they may carry passwords), the lag that takes one out
     * of rotation and the read-your-writes wait. */
    char *replicas;
    /* "transaction" behind a transaction-mode pooler (PgBouncer): no named
     * prepared statements; NULL or "none" otherwise. */
    char *pooler;
    /* 1 (default): statements run on a pool's executor by threads that
     * find every connection busy ride in the pipeline of a connection
     * that is running (PostgreSQL; see src/pool/pool_pipe.c); 0: each
     * waits for a connection of its own. */
    int auto_pipeline;
    /* With auto-pipelining: the most connections that plain statements
     * hold at once (the others stay for transactions and whole-connection
     * acquires; statements beyond ride pipelines); 0: no bound but the
     * pool's size. */
    int pipeline_conns;
    int replica_max_lag_ms;
    int read_your_writes_wait_ms;

    /* Pool settings: the configuration's side of dbk_pool_opts (same
     * names and meanings, see dbkit/pool.h), a type of the core layer so
     * that core does not depend on the pool; dbk_pool_open copies them. */
    struct dbk__pool_settings {
        int max_size, min_idle, acquire_timeout_ms, connect_timeout_ms, idle_timeout_ms,
            max_lifetime_ms, validate_after_ms, validate_timeout_ms, max_waiters,
            leak_threshold_ms;
    } pool;

    /* Source of each setting, indexed like the settings table in config.c. */
    unsigned char src[64];
};

#endif
