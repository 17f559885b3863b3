/*
 * Internal knobs of the pool, for the benchmarks and tests that measure the
 * pool's own choices. Not exported from the shared library.
 */
#ifndef DBK_POOL_INT_H
#define DBK_POOL_INT_H

#include <stdbool.h>

#include "dbkit/config.h"
#include "dbkit/pool.h"

/* SQLite only: whether statements that may write pass through an
 * in-process write gate (one writer at a time; default off). Without it,
 * concurrent writers rely on SQLite's busy_timeout, BEGIN run as BEGIN
 * IMMEDIATE and the pool's bounded retry of DBK_EBUSY for autocommit
 * statements. bench/pool_bench.c measures both. Call before the pool is
 * shared. */
void dbk__pool_set_sqlite_gate(dbk_pool *pool, bool on);

/* Statement classification used by the pool (exposed for unit tests):
 * true when `sql`, read by the engine's lexical rules (quotes, comments,
 * dollar bodies), may leave session state behind for the next borrower.
 * PostgreSQL: a statement led by SET (not SET LOCAL / TRANSACTION /
 * CONSTRAINTS), RESET, DISCARD, PREPARE, LISTEN, DO or LOAD; DECLARE ...
 * WITH HOLD; TEMP / TEMPORARY after CREATE, OR REPLACE, GLOBAL, LOCAL or
 * INTO; a name qualified by pg_temp; a call of set_config, the session
 * advisory-lock functions, query_to_xml* or dblink_connect*, however
 * quoted or qualified, or of any U&"..." name. SQLite: PRAGMA, ATTACH,
 * DETACH, CREATE TEMP, a name qualified by temp, load_extension(). An
 * unterminated comment or quote counts as a change. */
bool dbk__pool_sql_changes_session(const char *sql, dbk_engine engine);

/* True when sql may ride in a pipeline: not transaction control, not
 * COPY, no session change (pool_sql.c). Both answers are remembered per
 * thread for the statements it ran last (by their whole text). */
bool dbk__pool_sql_pipelinable(const char *sql);

/* True for "BEGIN" / "BEGIN TRANSACTION" (any case, comments, an optional
 * ';'): on SQLite the pool runs it as BEGIN IMMEDIATE. */
bool dbk__pool_sql_is_plain_begin(const char *sql);

/* True when `sql` certainly does not write on SQLite (SELECT, VALUES,
 * EXPLAIN first); anything else may write. */
bool dbk__pool_sql_is_read(const char *sql);

#endif
