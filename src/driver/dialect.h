/*
 * The SQL dialect of an engine: what differs in the SQL text that the
 * layers above the driver write (transactions, repository queries). Each
 * engine has one constant dialect; a layer asks dbk__dialect_of(engine)
 * instead of branching on the engine, so a third engine is one more
 * dialect (and its driver), not edits in every module.
 *
 * docs/architecture.md ("Engine dialect") lists what a new engine
 * implements. Moved onto it so far: the BEGIN round trip with isolation,
 * read-only, deferrable and the transaction-local timeouts; the COUNT
 * estimate; a page's OFFSET without a LIMIT. Still branching on the engine
 * above the driver: identifier quoting and placeholders (identical on the
 * two engines today), upserts and RETURNING in repo/crud.c, catalog queries
 * in migrate and the CLI, type names in the code generator.
 */
#ifndef DBK_DIALECT_H
#define DBK_DIALECT_H

#include <stdbool.h>
#include <stddef.h>

#include "dbkit/config.h"

/* What a transaction asks BEGIN for. */
typedef struct dbk__begin_opts {
    int isolation;               /* 0 the server's default, 1 read committed,
                                  * 2 repeatable read, 3 serializable */
    bool read_only;
    bool deferrable;
    int timeout_ms;              /* the transaction's deadline (0: none) */
    int session_stmt_timeout_ms; /* the session's statement_timeout (0: none) */
    int idle_grace_ms;           /* how long after timeout_ms the server ends an
                                  * idle transaction */
} dbk__begin_opts;

typedef struct dbk__dialect {
    dbk_engine engine;
    /* The BEGIN round trip (possibly several statements) into buf. */
    void (*begin_sql)(const dbk__begin_opts *o, char *buf, size_t len);
    /* A query of one int64: the table's estimated row count, -1 when
     * unknown, with the quoted table name as $1. NULL: no estimate (the
     * caller counts exactly). */
    const char *count_estimate_sql;
    /* What a page query needs before OFFSET when it has no LIMIT ("" when
     * OFFSET alone is valid; SQLite wants " LIMIT -1"). */
    const char *offset_without_limit;
} dbk__dialect;

/* The dialect of an engine (PostgreSQL for any unknown engine). */
const dbk__dialect *dbk__dialect_of(dbk_engine engine);

#endif
