/*
 * dbkit/result.h - query results.
 *
 * A dbk_result holds every row of one statement in memory it owns. It does
 * not refer to the connection it came from: it stays valid after the
 * connection is released or closed, until dbk_result_free().
 *
 * Cells are typed. PostgreSQL cells take the column's type (int2/4/8 ->
 * INT64, float4/8 -> DOUBLE, bool -> BOOL, bytea -> BLOB, timestamp(tz) ->
 * TIMESTAMP, json(b) -> JSON, everything else -> TEXT in PostgreSQL's text
 * form, e.g. numeric "12.50"). SQLite cells take their storage class
 * (INTEGER, REAL, TEXT, BLOB, NULL).
 *
 * Getters never guess: asking for another type than the cell holds is
 * DBK_ETYPE, with these exact conversions allowed:
 *   int64     <- INT64, BOOL (0/1), DOUBLE with an integral value in range
 *   double    <- DOUBLE, INT64
 *   bool      <- BOOL, INT64 0 or 1
 *   text      <- TEXT, JSON
 *   blob      <- BLOB, TEXT, JSON (the bytes)
 *   timestamp <- TIMESTAMP, TEXT that parses as a timestamp (SQLite)
 * Numeric getters on a NULL cell return DBK_ETYPE ("value is null"); text
 * and blob getters return DBK_OK with a NULL pointer and length 0.
 *
 * Out-of-range rows or columns and NULL results are DBK_EMISUSE.
 *
 * Thread safety: a result belongs to one thread at a time; const reads from
 * several threads are safe.
 */
#ifndef DBKIT_RESULT_H
#define DBKIT_RESULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_result dbk_result;

/* Frees the result and everything borrowed from it. Accepts NULL. */
DBK_API void dbk_result_free(dbk_result *r);

/* Number of rows (0 for NULL). */
DBK_API size_t dbk_result_nrows(const dbk_result *r);

/* Number of columns (0 for NULL). */
DBK_API int dbk_result_ncols(const dbk_result *r);

/* Rows inserted, updated or deleted by the statement (0 for a plain SELECT). */
DBK_API int64_t dbk_result_affected(const dbk_result *r);

/* Column name, borrowed until dbk_result_free(); NULL when out of range. */
DBK_API const char *dbk_result_colname(const dbk_result *r, int col);

/* Index of the first column with this exact name, or -1. */
DBK_API int dbk_result_colindex(const dbk_result *r, const char *name);

/* Type of one cell (DBK_TYPE_NULL for NULL and out of range). */
DBK_API dbk_type dbk_result_type(const dbk_result *r, size_t row, int col);

/* True when the cell is NULL (or out of range). */
DBK_API bool dbk_result_is_null(const dbk_result *r, size_t row, int col);

DBK_API dbk_rc dbk_result_get_int64(const dbk_result *r, size_t row, int col, int64_t *out,
                                    dbk_error *err);
DBK_API dbk_rc dbk_result_get_double(const dbk_result *r, size_t row, int col, double *out,
                                     dbk_error *err);
DBK_API dbk_rc dbk_result_get_bool(const dbk_result *r, size_t row, int col, bool *out,
                                   dbk_error *err);
/* *out is borrowed until dbk_result_free() and NUL-terminated; *len (may be
 * NULL) excludes the terminator. */
DBK_API dbk_rc dbk_result_get_text(const dbk_result *r, size_t row, int col, const char **out,
                                   size_t *len, dbk_error *err);
/* *out is borrowed until dbk_result_free(). */
DBK_API dbk_rc dbk_result_get_blob(const dbk_result *r, size_t row, int col, const void **out,
                                   size_t *len, dbk_error *err);
/* Microseconds since the epoch, UTC. */
DBK_API dbk_rc dbk_result_get_timestamp(const dbk_result *r, size_t row, int col, int64_t *out,
                                        dbk_error *err);

/* The same getters by column name; an unknown name is DBK_EINVALID_COLUMN. */
DBK_API dbk_rc dbk_result_get_int64_by_name(const dbk_result *r, size_t row, const char *name,
                                            int64_t *out, dbk_error *err);
DBK_API dbk_rc dbk_result_get_double_by_name(const dbk_result *r, size_t row, const char *name,
                                             double *out, dbk_error *err);
DBK_API dbk_rc dbk_result_get_bool_by_name(const dbk_result *r, size_t row, const char *name,
                                           bool *out, dbk_error *err);
DBK_API dbk_rc dbk_result_get_text_by_name(const dbk_result *r, size_t row, const char *name,
                                           const char **out, size_t *len, dbk_error *err);
DBK_API dbk_rc dbk_result_get_blob_by_name(const dbk_result *r, size_t row, const char *name,
                                           const void **out, size_t *len, dbk_error *err);
DBK_API dbk_rc dbk_result_get_timestamp_by_name(const dbk_result *r, size_t row,
                                                const char *name, int64_t *out, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_RESULT_H */
