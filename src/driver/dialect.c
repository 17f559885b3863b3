/*
 * The dialects of PostgreSQL and SQLite (see dialect.h). Each is a constant
 * table of the SQL text that differs between the engines, owned by the
 * driver layer next to the drivers that run it.
 */
#include "dialect.h"

#include <stdio.h>

static void pg_begin_sql(const dbk__begin_opts *o, char *buf, size_t len)
{
    static const char *const levels[] = {"", " ISOLATION LEVEL READ COMMITTED",
                                         " ISOLATION LEVEL REPEATABLE READ",
                                         " ISOLATION LEVEL SERIALIZABLE"};
    int iso = o->isolation >= 0 && o->isolation <= 3 ? o->isolation : 0;
    int n = snprintf(buf, len, "BEGIN%s%s%s", levels[iso], o->read_only ? " READ ONLY" : "",
                     o->deferrable ? " DEFERRABLE" : "");
    if (o->timeout_ms <= 0 || n < 0 || (size_t)n >= len)
        return;
    /* The server-side bound for the same deadline, local to the
     * transaction and in the BEGIN round trip (SET LOCAL: utility
     * statements, no planning; measured at about 1 us against 8-25 us for
     * a set_config() SELECT). No statement runs longer than the whole
     * transaction may - unless the session's own statement_timeout is
     * smaller, which is kept: raising it would outlast the driver's client
     * deadline. A transaction left idle by a stalled client is ended by the
     * server a grace period after the client's own deadline, which
     * normally ends it first, cleanly. */
    if (o->session_stmt_timeout_ms <= 0 || o->session_stmt_timeout_ms > o->timeout_ms)
        n += snprintf(buf + n, len - (size_t)n, "; SET LOCAL statement_timeout = %d",
                      o->timeout_ms);
    if (n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, "; SET LOCAL idle_in_transaction_session_timeout = %lld",
                 (long long)o->timeout_ms + o->idle_grace_ms);
}

static void sq_begin_sql(const dbk__begin_opts *o, char *buf, size_t len)
{
    /* IMMEDIATE takes the write lock now: two writers can never both hold
     * read locks and deadlock on the upgrade. A read-only transaction takes
     * no lock up front and refuses writes. */
    snprintf(buf, len, "%s",
             o->read_only ? "BEGIN DEFERRED; PRAGMA query_only = 1" : "BEGIN IMMEDIATE");
}

static const dbk__dialect pg_dialect = {
    .engine = DBK_ENGINE_POSTGRES,
    .begin_sql = pg_begin_sql,
    .count_estimate_sql = "SELECT COALESCE((SELECT reltuples::bigint FROM pg_class "
                          "WHERE oid = to_regclass($1)), -1)",
    .offset_without_limit = "",
};

static const dbk__dialect sq_dialect = {
    .engine = DBK_ENGINE_SQLITE,
    .begin_sql = sq_begin_sql,
    .count_estimate_sql = NULL,
    .offset_without_limit = " LIMIT -1",
};

const dbk__dialect *dbk__dialect_of(dbk_engine engine)
{
    return engine == DBK_ENGINE_SQLITE ? &sq_dialect : &pg_dialect;
}
