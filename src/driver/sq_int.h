/*
 * sq_int.h - what the files of the SQLite driver share: the connection,
 * a cached statement and the functions one file calls in another.
 *
 *   sqlite.c       open / close, the vtable, small helpers and errors
 *   sq_stmtcache.c the LRU cache of prepared statements
 *   sq_exec.c      binding, running statements and scripts, ping, the
 *                  transaction state and the reset
 *
 * sqlite.c's opening comment says how the driver works.
 */
#ifndef DBK_SQ_INT_H
#define DBK_SQ_INT_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "../core/internal.h"
#include "../core/lru.h"
#include "../core/result_int.h"
#include "driver.h"

#define SQ_DEFAULT_BUSY_MS 5000
#define SQ_DEFAULT_CACHE 128
#define SQ_MAX_BUCKETS (1u << 16)
#define SQ_SCRIPT_FLOOR_MS (10 * 60 * 1000)
#define SQ_PROGRESS_OPS 4000   /* VM instructions between deadline checks */
#define SQ_STACK_TS 8          /* timestamp parameters formatted on the stack */
#define SQ_TS_LEN 40

/* One prepared statement, cached or not. The SQL copy and the parameter map
 * live in the same allocation as the entry. */
typedef struct sq_entry {
    dbk__lru_node lru;            /* in sq_conn.lru while cached */
    struct sq_entry *hnext;       /* hash chain */
    uint64_t hash;
    size_t len;
    const char *sql;
    sqlite3_stmt *st;
    int nvars;     /* sqlite3_bind_parameter_count */
    int need;      /* parameters the caller must pass */
    int gap;       /* smallest $k <= need the SQL never uses; 0 when none */
    int dollar;    /* placeholders are $N (else ? / ?NNN) */
    int readonly;  /* sqlite3_stmt_readonly */
    int cached;
    uint16_t *map; /* nvars entries: SQLite index j+1 binds params[map[j]] */
    /* Column names as SQLite hands them out: the pointers stay valid until
     * the statement is finalized or re-prepared (after a schema change), so
     * they are kept with the REPREPARE counter they belong to. */
    int ncols;              /* -1: not read yet */
    int names_cap;
    int names_reprepare;
    const char **names;     /* ncols entries, then lens */
    size_t *lens;
} sq_entry;

typedef struct sq_conn {
    sqlite3 *db;
    dbk__owner owner;     /* the process that opened it: a forked child never touches db */
    sqlite3_int64 max_length; /* SQLITE_LIMIT_LENGTH: the largest text or blob bound */
    char *path;           /* for messages; a path is not a secret */
    int busy_timeout_ms;
    int stmt_timeout_ms;  /* 0: none */
    int64_t deadline_ns;  /* of the current call; 0 until the handler first runs */
    int armed_ms;         /* the limit that deadline_ns stands for */
    int timed_out;        /* set by the progress handler */
    char *restore_sql;    /* PRAGMAs that put the session settings back (sq_reset) */
    /* statement cache */
    int cache_cap;
    int ncached;
    size_t mask;          /* nbuckets - 1 */
    sq_entry **buckets;
    dbk__lru lru;         /* cached entries, most recent first */
} sq_conn;

uint64_t dbk__sq_hash(const char *s, size_t len);

const char *dbk__sq_skip_blank(const char *p);

void dbk__sq_arm_deadline(sq_conn *c, int ms);

dbk_rc dbk__sq_fail(sq_conn *c, int rc, const char *what, dbk_error *err);

int dbk__sq_pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size);

void dbk__sq_cache_clear(sq_conn *c);

dbk_rc dbk__sq_entry_get(sq_conn *c, const char *sql, sq_entry **out, dbk_error *err);

void dbk__sq_entry_release(sq_entry *e);

dbk_rc dbk__sq_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err);

dbk_rc dbk__sq_script(void *impl, const char *sql, int timeout_ms, dbk_error *err);

dbk_rc dbk__sq_ping(void *impl, int timeout_ms, dbk_error *err);

dbk__txstate dbk__sq_txstate(void *impl);

int dbk__sq_restore_sql_build(sq_conn *c);

dbk_rc dbk__sq_reset(void *impl, dbk_error *err);

const char *dbk__sq_server_version(void *impl);

#endif
