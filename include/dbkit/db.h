/*
 * dbkit/db.h - connections and dbk_db, the one handle SQL runs through.
 *
 * A dbk_db is an executor. A connection gives one (dbk_conn_db), a pool
 * gives one (each call checks a connection out and back in), a transaction
 * gives one. Queries, repositories and the cache take a dbk_db and do not
 * care which kind it is.
 *
 * Parameters only: values travel as dbk_value parameters, never inside the
 * SQL text. Placeholders are $1..$n on every engine; on SQLite they are
 * bound by name, so "$2 ... $1" works and a placeholder may repeat.
 *
 * Size limits: a text, json or blob parameter longer than the engine takes
 * (PostgreSQL: 1073741819 bytes per value and 1 GiB for all the values of
 * one statement; SQLite: SQLITE_LIMIT_LENGTH, 1e9 by default) is
 * DBK_EINVALID naming the parameter and the limit, decided from its length
 * before anything is read, copied or sent; the connection stays usable.
 *
 * Thread safety: a dbk_conn and its dbk_db belong to one thread at a time.
 * A pool's dbk_db may be used from any number of threads at once.
 *
 * Processes: a connection belongs to the process that opened it. After
 * fork(), every use of it in the child (query, exec, script, batch, ping,
 * a transaction, a connection borrowed from a pool before the fork) fails
 * with DBK_EMISUSE, message naming fork(), without touching the socket or
 * the SQLite handle; dbk_conn_close() in the child frees dbkit's wrapper
 * only and leaves the engine handle to the child's exit, so the parent's
 * session stays intact. Open new connections in the child.
 */
#ifndef DBKIT_DB_H
#define DBKIT_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "result.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_db dbk_db;
typedef struct dbk_conn dbk_conn;

/* Opens one connection as configured. DBK_EUNAVAILABLE, DBK_EAUTH,
 * DBK_ETLS, DBK_ECONFIG (e.g. an unknown libpq parameter), DBK_ENOMEM.
 * *out is owned by the caller: close with dbk_conn_close(). `cfg` is not
 * kept. */
DBK_API dbk_rc dbk_conn_open(const dbk_config *cfg, dbk_conn **out, dbk_error *err);

/* Closes the connection (rolling back an open transaction). Accepts NULL.
 * In a process forked after the open it only forgets the connection (see
 * Processes above). */
DBK_API void dbk_conn_close(dbk_conn *conn);

/* The connection's executor, borrowed until dbk_conn_close(). */
DBK_API dbk_db *dbk_conn_db(dbk_conn *conn);

/* Round trip to the server within timeout_ms (0: the default of 1000). */
DBK_API dbk_rc dbk_conn_ping(dbk_conn *conn, int timeout_ms, dbk_error *err);

/* Server version as text ("15.18", "3.40.1"); borrowed until close. */
DBK_API const char *dbk_conn_server_version(dbk_conn *conn);

/* Engine behind an executor. */
DBK_API dbk_engine dbk_db_engine(const dbk_db *db);

/* Runs one statement and returns its rows. On success *out is owned by the
 * caller (dbk_result_free). nparams may be 0 with params NULL. Statements
 * with RETURNING give rows on both engines. */
DBK_API dbk_rc dbk_db_query(dbk_db *db, const char *sql, const dbk_value *params,
                            size_t nparams, dbk_result **out, dbk_error *err);

/* Runs one statement, discarding rows; *affected (may be NULL) gets the
 * number of rows inserted, updated or deleted. */
DBK_API dbk_rc dbk_db_exec(dbk_db *db, const char *sql, const dbk_value *params,
                           size_t nparams, int64_t *affected, dbk_error *err);

/* Like dbk_db_query() but the statement must give exactly one row:
 * DBK_ENOT_FOUND for none, DBK_EINVALID for more than one. */
DBK_API dbk_rc dbk_db_query_row(dbk_db *db, const char *sql, const dbk_value *params,
                                size_t nparams, dbk_result **out, dbk_error *err);

/* One row, first column, as int64 (see dbk_result_get_int64). */
DBK_API dbk_rc dbk_db_query_int64(dbk_db *db, const char *sql, const dbk_value *params,
                                  size_t nparams, int64_t *out, dbk_error *err);

/* One row, first column, as text copied into buf (NUL-terminated).
 * DBK_EINVALID when it does not fit; a NULL value gives "" and *is_null
 * (may be NULL) true. */
DBK_API dbk_rc dbk_db_query_text(dbk_db *db, const char *sql, const dbk_value *params,
                                 size_t nparams, char *buf, size_t buflen, bool *is_null,
                                 dbk_error *err);

/* Runs a script of several statements separated by semicolons, without
 * parameters (DDL, migrations). Stops at the first error. */
DBK_API dbk_rc dbk_db_exec_script(dbk_db *db, const char *sql, dbk_error *err);

/* Bulk insert: nrows rows of ncolumns values each (values row-major:
 * row i, column k is values[i * ncolumns + k]) into `table` (columns[k]
 * names column k). Names are quoted as given, so case and special
 * characters are kept; a schema prefix is not split (set search_path).
 * All or nothing: on PostgreSQL one COPY ... FROM STDIN (a single
 * statement), on SQLite multi-row INSERTs inside one savepoint that is
 * rolled back on the first failure. Works on a connection, a pool and a
 * transaction (on a pool, one connection does the whole call). Values are
 * borrowed for the call; each row is encoded as it is sent, so memory does
 * not grow with nrows. *rows_written (may be NULL) gets the rows written,
 * 0 on failure. nrows 0: DBK_OK, nothing sent.
 * Errors: DBK_EMISUSE for a NULL db/table/columns, no columns or a column
 * without a name, values NULL with nrows > 0, more than 999 columns;
 * DBK_EINVALID (naming the row and column, nothing written) for text with
 * a NUL byte on PostgreSQL, a value over 1 GiB or a row over 1 GiB in COPY
 * text format on PostgreSQL (refused from its length, before the value is
 * read), a timestamp outside 1..9999; a constraint violation or a wrong
 * type as the server classifies it (nothing written). Thread safety: as
 * dbk_db_exec on the same executor. */
DBK_API dbk_rc dbk_db_copy_from(dbk_db *db, const char *table, const char *const *columns,
                                size_t ncolumns, const dbk_value *values, size_t nrows,
                                int64_t *rows_written, dbk_error *err);

/* What an observer sees after each statement. All pointers are borrowed for
 * the duration of the callback. `sql` is the text with placeholders; the
 * parameter values are in `params` so that an observer that was asked to can
 * show them (the diagnostics query log does not by default: values may be
 * secrets). */
typedef struct dbk_query_event {
    const char *sql;
    size_t nparams;
    int64_t duration_ns; /* monotonic clock, whole call */
    int64_t rows;        /* rows returned, or affected for writes */
    dbk_rc rc;
    dbk_engine engine;
    const dbk_value *params; /* nparams values, NULL when there are none */
    const dbk_error *error;  /* the failure when rc != DBK_OK, else NULL */
    /* Statements of one dbk_batch_run: batch_size > 0 and batch_index
     * 0..batch_size-1, one event each, sent together (on PostgreSQL in one
     * round trip); duration_ns is the time from the previous statement's
     * outcome (or the start) to this one's. Single statements: 0 and 0. */
    size_t batch_index;
    size_t batch_size;
} dbk_query_event;

typedef void (*dbk_observer_fn)(void *ctx, const dbk_query_event *ev);

/* Installs (fn NULL removes) the query observer of this executor. Executors
 * derived from it (a transaction on it) inherit it. When no observer is
 * set, no clock is read. Not thread-safe against concurrent queries: set it
 * before sharing the executor. */
DBK_API void dbk_db_set_observer(dbk_db *db, dbk_observer_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_DB_H */
