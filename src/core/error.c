/*
 * Result codes, the error record and the logging hook.
 *
 * dbk_rc is the one vocabulary every layer speaks; this file owns its text
 * (dbk_strerror, dbk_rc_name) and the default hints: the fix a user would
 * otherwise look up ("relation does not exist" -> run the migrations). The
 * engine-specific tables that translate SQLSTATEs and SQLite codes live at
 * the driver boundary (src/driver/errmap.c).
 *
 * The logging hook is process-wide. Setting it takes a mutex; logging reads
 * it under the same mutex, which is cheap because the library logs only on
 * rare events (leaks, breaker changes), never per query.
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    const char *text;
} rc_table[] = {
    [DBK_OK] = {"DBK_OK", "ok"},
    [DBK_ECONFIG] = {"DBK_ECONFIG", "invalid configuration"},
    [DBK_EAUTH] = {"DBK_EAUTH", "authentication failed"},
    [DBK_ETLS] = {"DBK_ETLS", "tls failure"},
    [DBK_EUNAVAILABLE] = {"DBK_EUNAVAILABLE", "database unavailable"},
    [DBK_ECONN_LOST] = {"DBK_ECONN_LOST", "connection lost"},
    [DBK_EPOOL_TIMEOUT] = {"DBK_EPOOL_TIMEOUT", "timed out waiting for a pooled connection"},
    [DBK_EPOOL_CLOSED] = {"DBK_EPOOL_CLOSED", "pool is closed"},
    [DBK_ETIMEOUT] = {"DBK_ETIMEOUT", "operation timed out"},
    [DBK_ECANCELLED] = {"DBK_ECANCELLED", "operation cancelled"},
    [DBK_ESERIALIZATION] = {"DBK_ESERIALIZATION", "serialization failure"},
    [DBK_EDEADLOCK] = {"DBK_EDEADLOCK", "deadlock detected"},
    [DBK_ERETRY_EXHAUSTED] = {"DBK_ERETRY_EXHAUSTED", "transaction retries exhausted"},
    [DBK_ECOMMIT_UNKNOWN] = {"DBK_ECOMMIT_UNKNOWN", "commit outcome unknown"},
    [DBK_EUNIQUE] = {"DBK_EUNIQUE", "unique constraint violated"},
    [DBK_EFOREIGN_KEY] = {"DBK_EFOREIGN_KEY", "foreign key constraint violated"},
    [DBK_ENOT_NULL] = {"DBK_ENOT_NULL", "not-null constraint violated"},
    [DBK_ECHECK] = {"DBK_ECHECK", "check constraint violated"},
    [DBK_ENOT_FOUND] = {"DBK_ENOT_FOUND", "not found"},
    [DBK_EINVALID] = {"DBK_EINVALID", "invalid input"},
    [DBK_EINVALID_COLUMN] = {"DBK_EINVALID_COLUMN", "invalid column"},
    [DBK_EINVALID_SORT] = {"DBK_EINVALID_SORT", "invalid sort key"},
    [DBK_EBUSY] = {"DBK_EBUSY", "database busy or locked"},
    [DBK_EDISK_FULL] = {"DBK_EDISK_FULL", "disk full"},
    [DBK_ENOMEM] = {"DBK_ENOMEM", "out of memory"},
    [DBK_EIO] = {"DBK_EIO", "i/o error"},
    [DBK_EMISUSE] = {"DBK_EMISUSE", "api misuse"},
    [DBK_ETYPE] = {"DBK_ETYPE", "wrong type or value does not convert"},
    [DBK_ESQL] = {"DBK_ESQL", "sql error"},
    [DBK_ESCHEMA] = {"DBK_ESCHEMA", "undefined table, column or function"},
    [DBK_EREADONLY] = {"DBK_EREADONLY", "database is read-only"},
    [DBK_EINTERNAL] = {"DBK_EINTERNAL", "internal error"},
    [DBK_EN_PLUS_ONE] = {"DBK_EN_PLUS_ONE", "N+1 query pattern detected"},
    [DBK_ENOT_RUN] = {"DBK_ENOT_RUN", "statement not executed"},
};

const char *dbk_strerror(dbk_rc rc)
{
    if ((int)rc < 0 || (int)rc > DBK_RC_MAX)
        return "unknown error";
    return rc_table[rc].text;
}

const char *dbk_rc_name(dbk_rc rc)
{
    if ((int)rc < 0 || (int)rc > DBK_RC_MAX)
        return "DBK_E?";
    return rc_table[rc].name;
}

bool dbk_rc_is_retryable(dbk_rc rc)
{
    return rc == DBK_ESERIALIZATION || rc == DBK_EDEADLOCK || rc == DBK_EBUSY;
}

void dbk_error_clear(dbk_error *err)
{
    if (!err)
        return;
    err->code = DBK_OK;
    err->sqlstate[0] = '\0';
    err->constraint_name[0] = '\0';
    err->table_name[0] = '\0';
    err->message[0] = '\0';
    err->hint[0] = '\0';
}

size_t dbk__strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size) {
        size_t c = n < size - 1 ? n : size - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

dbk_rc dbk__err(dbk_error *err, dbk_rc rc, const char *fmt, ...)
{
    if (!err)
        return rc;
    dbk_error_clear(err);
    err->code = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return rc;
}

void dbk__err_hint(dbk_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->hint, sizeof err->hint, fmt, ap);
    va_end(ap);
}

/* The fixes users look up, by SQLSTATE first, then by code. */
static const struct {
    const char *sqlstate;
    const char *hint;
} state_hints[] = {
    {"42P01", "the table does not exist: run the migrations (`dbkit migrate up`) or check the "
              "table name and search_path"},
    {"42703", "the column does not exist: check the schema and the migrations "
              "(`dbkit migrate status`)"},
    {"42883", "the function does not exist: check its name and argument types, or add a cast "
              "such as $1::int"},
    {"3F000", "the schema does not exist: run the migrations or check search_path"},
    {"25P02", "an earlier statement failed: the transaction must be rolled back"},
    {"53300", "the server has no free connection slots: lower pool_max or raise the server's "
              "max_connections"},
    {"55P03", "another transaction holds the lock: keep transactions short or raise "
              "lock_timeout"},
};

static const char *code_hint(dbk_rc rc)
{
    switch (rc) {
    case DBK_EAUTH:
        return "check the user name and DB_PASSWORD / DB_PASSWORD_FILE / ~/.pgpass";
    case DBK_EUNAVAILABLE:
        return "check that the server is running and the host and port in DATABASE_URL "
               "(`dbkit doctor`)";
    case DBK_ECONN_LOST:
        return "the connection broke (server restart or network); a pool replaces it: retry "
               "if the operation is idempotent";
    case DBK_EPOOL_TIMEOUT:
        return "raise pool_max (DB_POOL_MAX) or find the holders: they keep connections "
               "longer than expected";
    case DBK_EPOOL_CLOSED:
        return "the pool is shutting down; no new work is accepted";
    case DBK_ETIMEOUT:
        return "the statement ran past statement_timeout: optimize it with an index "
               "(`dbkit explain \"SQL\"`) or raise DB_STATEMENT_TIMEOUT_MS";
    case DBK_ESERIALIZATION:
        return "concurrent transactions conflicted: dbk_tx_run() retries them "
               "automatically";
    case DBK_EDEADLOCK:
        return "transactions run with dbk_tx_run() retry deadlocks automatically; "
               "take row locks in a consistent order";
    case DBK_ECOMMIT_UNKNOWN:
        return "the commit may or may not have happened: make the operation idempotent "
               "(a unique request key) and check before retrying";
    case DBK_EBUSY:
        return "another connection holds the write lock: keep write transactions short; "
               "busy_timeout sets how long to wait";
    case DBK_EREADONLY:
        return "the database is read-only (a standby, or mode=ro): connect to the primary, "
               "e.g. with target_session_attrs=read-write";
    case DBK_ESCHEMA:
        return "an object does not exist: run the migrations (`dbkit migrate up`)";
    case DBK_EDISK_FULL:
        return "free disk space on the database server";
    default:
        return NULL;
    }
}

void dbk__err_default_hint(dbk_error *err)
{
    if (!err || err->hint[0])
        return;
    if (err->sqlstate[0]) {
        for (size_t i = 0; i < sizeof state_hints / sizeof state_hints[0]; i++) {
            if (strcmp(err->sqlstate, state_hints[i].sqlstate) == 0) {
                dbk__strlcpy(err->hint, state_hints[i].hint, sizeof err->hint);
                return;
            }
        }
    }
    const char *h = code_hint(err->code);
    if (h)
        dbk__strlcpy(err->hint, h, sizeof err->hint);
}

/* ---- logging ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static dbk_log_fn log_fn;
static void *log_ctx;
static volatile int log_min = DBK_LOG_ERROR + 1; /* nothing until a hook is set */

void dbk_set_log(dbk_log_fn fn, void *ctx, dbk_log_level min_level)
{
    pthread_mutex_lock(&log_mu);
    log_fn = fn;
    log_ctx = ctx;
    __atomic_store_n(&log_min, fn ? (int)min_level : DBK_LOG_ERROR + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&log_mu);
}

int dbk__log_enabled(dbk_log_level level)
{
    return (int)level >= __atomic_load_n(&log_min, __ATOMIC_ACQUIRE);
}

void dbk__log(dbk_log_level level, const char *fmt, ...)
{
    if (!dbk__log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mu);
    dbk_log_fn fn = log_fn;
    void *ctx = log_ctx;
    pthread_mutex_unlock(&log_mu);
    if (fn)
        fn(ctx, level, msg);
}

void dbk_log_stderr(void *ctx, dbk_log_level level, const char *msg)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    (void)ctx;
    fprintf(stderr, "dbkit %s: %s\n", names[(unsigned)level & 3u], msg);
}
