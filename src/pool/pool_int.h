/*
 * Internal knobs of the pool, for the benchmarks and tests that measure the
 * pool's own choices. Not exported from the shared library.
 */
#ifndef DBK_POOL_INT_H
#define DBK_POOL_INT_H

#include <stdbool.h>

#include "dbkit/pool.h"

/* SQLite only: whether statements that may write pass through an
 * in-process write gate (one writer at a time; default off). Without it,
 * concurrent writers rely on SQLite's busy_timeout, BEGIN run as BEGIN
 * IMMEDIATE and the pool's bounded retry of DBK_EBUSY for autocommit
 * statements. bench/pool_bench.c measures both. Call before the pool is
 * shared. */
void dbk__pool_set_sqlite_gate(dbk_pool *pool, bool on);

/* Statement classification used by the pool (exposed for unit tests):
 * true when `sql` (after whitespace and comments) may change session state
 * that outlives the statement on PostgreSQL: SET (except SET LOCAL and SET
 * TRANSACTION), RESET, or a call of set_config(), at the start of any
 * ';'-separated statement. */
bool dbk__pool_sql_sets_session(const char *sql);

/* True for "BEGIN" / "BEGIN TRANSACTION" (any case, comments, an optional
 * ';'): on SQLite the pool runs it as BEGIN IMMEDIATE. */
bool dbk__pool_sql_is_plain_begin(const char *sql);

/* True when `sql` certainly does not write on SQLite (SELECT, VALUES,
 * EXPLAIN first); anything else may write. */
bool dbk__pool_sql_is_read(const char *sql);

#endif
