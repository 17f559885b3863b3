/*
 * pg_int.h - what the files of the PostgreSQL driver share: the connection,
 * the statement cache entry, the parameter arrays and the functions one file
 * calls in another. The driver is dbk__driver on top of libpq, split the way
 * libpq splits itself:
 *
 *   pg_connect.c   connecting (hosts one by one under a deadline, startup
 *                  options, the vtable), close
 *   pg_io.c        I/O with deadlines: flush, await, collect, cancel with a
 *                  bound, connection state and errors
 *   pg_stmtcache.c the LRU cache of named prepared statements
 *   pg_types.c     type conversion: parameters to text, results to dbk_result
 *   pg_exec.c      running one statement, scripts, ping, reset
 *   pg_pipeline.c  batches: many statements in one round trip
 *   pg_copy.c      COPY FROM STDIN
 *
 * How the driver works:
 *
 * Every statement goes through the extended protocol with parameters; SQL
 * text never carries a value. A connection keeps a bounded LRU cache of
 * named prepared statements keyed by the SQL text plus the parameter type
 * signature (a NULL and a text value are both "unknown" to the server, an
 * int64 is bigint, ...). A cache hit is one round trip (Bind/Execute/Sync);
 * a miss prepares and executes in one pipelined round trip, preceded in the
 * same pipeline by the DEALLOCATE of whatever the LRU evicted, so the
 * server never holds more than stmt_cache_size of our statements while no
 * transaction is open. With stmt_cache_size 0 every statement is sent
 * unnamed (PQsendQueryParams), which is what PgBouncer's transaction mode
 * needs.
 *
 * Nothing waits without a deadline. Connecting uses PQconnectStartParams +
 * PQconnectPoll + poll() against a monotonic deadline per host (with several
 * hosts the driver tries them one by one itself, because libpq's own
 * per-host connect_timeout only applies to its blocking connect). The
 * connection is non-blocking: sends flush under the deadline, results are
 * awaited with poll() + PQconsumeInput + PQisBusy. A statement's client
 * deadline is statement_timeout + 2 s (the server normally cancels first
 * and reports 57014); past it the driver closes the connection and
 * returns DBK_ETIMEOUT at once, leaving a cancel request to a short-lived
 * helper thread that is bounded in number, time and sockets (see "cancel
 * with a bound" below). Scripts get the same deadline unless their caller
 * passes a longer one (migrations do). libpq itself sends with MSG_NOSIGNAL on Linux
 * (plain and TLS sockets alike, TLS writes go through its own socket BIO),
 * so no process-wide SIGPIPE handler is installed.
 *
 * Session settings (statement_timeout, lock_timeout, DateStyle=ISO,
 * TimeZone=UTC) travel in the startup packet through the libpq `options`
 * keyword, which makes them the session defaults: RESET ALL in reset()
 * restores them for free and costs no extra round trip at connect. A
 * pooler that refuses `options` (older PgBouncer) is retried without it;
 * one that silently ignores it is detected from the reported DateStyle /
 * TimeZone; in both cases the settings are applied with SET after connect
 * and after every reset.
 *
 * Results are fetched in text format and converted by column type into an
 * owned dbk_result; the PGresult is always cleared before returning.
 */
#ifndef DBK_PG_INT_H
#define DBK_PG_INT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "../core/internal.h"
#include "../core/lru.h"
#include "../core/result_int.h"
#include "driver.h"

/* Type OIDs (src/include/catalog/pg_type.dat). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_TIMESTAMP 1114
#define OID_TIMESTAMPTZ 1184
#define OID_JSONB 3802

#define PG_STACK_PARAMS 16        /* parameters handled without any allocation */
#define PG_STACK_SCRATCH 1024     /* bytes of parameter text kept on the stack */
#define PG_DEADLINE_GRACE_MS 2000 /* client deadline = statement_timeout + this */
#define PG_NO_LIMIT_DEADLINE_MS (10 * 60 * 1000) /* when statement_timeout is 0 */
#define PG_CANCEL_WAIT_MS 1000    /* a cancel attempt's own deadline (the caller never waits) */
#define PG_CANCEL_MAX 4           /* cancel attempts outstanding in the process at most */
#define PG_NAME_MAX 48 /* "dbk_" + 16 hex (the connection's nonce) + "_" + a counter */

/* ---- the connection ---- */

struct pg_stmt {
    struct pg_stmt *hnext;      /* hash chain */
    dbk__lru_node lru;          /* in pg_conn.lru while cached */
    uint64_t hash;
    size_t sql_len;
    size_t nsig;
    char *sql; /* these two point into the same allocation */
    char *sig;
    char name[PG_NAME_MAX];
};

typedef struct pg_conn {
    PGconn *conn; /* NULL once broken and closed */
    bool broken;
    dbk__owner owner; /* the process that opened it: a forked child never touches conn */
    bool sets_via_sql; /* the startup `options` were refused or ignored */
    bool user_datestyle, user_timezone; /* set by the caller's own `options` */
    int statement_timeout_ms;
    int lock_timeout_ms;
    int connect_timeout_ms;
    int server_version_num;
    char server_version[32];

    /* Prepared-statement cache: chained hash + LRU list. */
    size_t cache_cap;
    struct pg_stmt **buckets;
    size_t nbuckets; /* power of two */
    size_t nstmts;
    dbk__lru lru; /* cached statements, head = most recent (core/lru.h) */
    uint64_t next_id;
    /* Statement names carry this per-connection random nonce, so a name
     * can never resolve to another client's statement on a backend a
     * transaction-mode pooler shares between clients. */
    uint64_t name_nonce;
    /* Behind a transaction-mode pooler (declared with pooler=transaction,
     * or detected: a cached statement gone between transactions): unnamed
     * statements only, cache_cap 0. */
    bool pooler_txn;
    /* Evicted statements still to DEALLOCATE (sent with the next prepare
     * outside a transaction block), or all of them. */
    char (*pending)[PG_NAME_MAX];
    size_t npending, cap_pending;
    bool pending_all;

    /* Reused buffers for statements with many parameters or long texts. */
    char *scratch;
    size_t scratch_cap;
    const char **pvals;
    int *plens, *pfmts;
    Oid *ptypes;
    char *psig;
    size_t pcap;
} pg_conn;

/* ---- parameters ---- */

struct pg_params {
    int n;
    const char **values;
    int *lengths;
    int *formats;
    Oid *types;
    char *sig; /* one character per parameter: the cache key's type part */
};

locale_t dbk__pg_get_c_locale(void);

void dbk__pg_clean_message(char *dst, size_t size, const char *src);

char *dbk__pg_redact_dup(const char *src, const char *secret);

int dbk__pg_wait_fd(int fd, short events, int64_t deadline_ns);

int64_t dbk__pg_deadline_after_ms(int64_t ms);

int64_t dbk__pg_stmt_deadline(const pg_conn *pc);

void dbk__pg_mark_broken(pg_conn *pc);

dbk_rc dbk__pg_broken_err(dbk_error *err);

dbk_rc dbk__pg_lost(pg_conn *pc, dbk_error *err);

dbk_rc dbk__pg_flush_out(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                        dbk_error *err);

dbk_rc dbk__pg_await_ready(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                          dbk_error *err);

bool dbk__pg_is_error_status(ExecStatusType st);

void dbk__pg_note_command(pg_conn *pc, const PGresult *r);

dbk_rc dbk__pg_collect(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                      PGresult **out, bool *copy_refused, dbk_error *err);

dbk_rc dbk__pg_result_error(pg_conn *pc, const PGresult *res, dbk_error *err);

uint64_t dbk__pg_hash_key(const char *sql, size_t len, const char *sig, size_t nsig);

struct pg_stmt *dbk__pg_cache_find(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                  const char *sig, size_t nsig);

void dbk__pg_cache_remove(pg_conn *pc, struct pg_stmt *s);

void dbk__pg_cache_clear(pg_conn *pc);

void dbk__pg_pending_push(pg_conn *pc, const char *name);

void dbk__pg_cache_make_room(pg_conn *pc);

struct pg_stmt *dbk__pg_stmt_new(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                const char *sig, size_t nsig);

bool dbk__pg_cache_insert(pg_conn *pc, struct pg_stmt *s);

dbk_rc dbk__pg_build_result(PGresult *res, dbk_result **out, dbk_error *err);

dbk_rc dbk__pg_copy_refused_err(dbk_error *err);

dbk_rc dbk__pg_finish(pg_conn *pc, PGresult *res, bool copy_refused, dbk_result **out,
                     int64_t *affected, dbk_error *err);

bool dbk__pg_grow_param_arrays(pg_conn *pc, size_t n);

dbk_rc dbk__pg_check_params(const dbk_value *params, size_t n, dbk_error *err);

dbk_rc dbk__pg_bind_params(pg_conn *pc, const dbk_value *params, size_t n, struct pg_params *pp,
                          char *stack_scratch, dbk_error *err);

bool dbk__pg_conn_usable(const pg_conn *pc);

dbk_rc dbk__pg_unusable_err(const pg_conn *pc, dbk_error *err);

int64_t dbk__pg_budget_of(int64_t deadline);

dbk_rc dbk__pg_pipeline_next(pg_conn *pc, int64_t deadline, int64_t budget, PGresult **r,
                            dbk_error *err);

bool dbk__pg_is_copy(const char *sql);

dbk_rc dbk__pg_ready(pg_conn *pc, dbk_error *err);

dbk_rc dbk__pg_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err);

dbk_rc dbk__pg_run_script(pg_conn *pc, const char *sql, int64_t deadline, dbk_error *err);

dbk_rc dbk__pg_script(void *impl, const char *sql, int timeout_ms, dbk_error *err);

dbk_rc dbk__pg_ping(void *impl, int timeout_ms, dbk_error *err);

dbk__txstate dbk__pg_txstate(void *impl);

void dbk__pg_session_sets(const pg_conn *pc, char *buf, size_t size);

dbk_rc dbk__pg_reset(void *impl, dbk_error *err);

const char *dbk__pg_server_version(void *impl);

int dbk__pg_statement_timeout_ms(void *impl);

dbk_rc dbk__pg_batch(void *impl, dbk__batch_item *items, size_t n, bool atomic);
dbk_rc dbk__pg_pipeline(void *impl, dbk__batch_item *items, size_t n);

dbk_rc dbk__pg_copy_in(void *impl, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err);

#endif
