/*
 * dbkit/gen.h - typed C from SQL, checked against the real schema
 * (`dbkit gen`).
 *
 * Input: the migrations and annotated query files (sqlc's format):
 *
 *     -- name: GetUserByEmail :one
 *     SELECT id, email, name FROM users WHERE email = @email;
 *
 * Kinds: :one (exactly one row; DBK_ENOT_FOUND for none, DBK_EINVALID for
 * several), :many (every row, in the
 * arena), :exec, :execrows (rows affected), :batch (a list of parameter
 * sets, one dbk_batch round trip, all or nothing) and :copyfrom (rows for
 * an INSERT, the same atomic batch; not COPY). Parameters: $1..$n, or
 * named: @email / sqlc.arg(email) / sqlc.narg(email) (rewritten to $n in
 * the generated query text; one name, one parameter). Number, boolean and
 * timestamp parameters are passed by value, except sqlc.narg() ones: a
 * pointer, NULL for SQL NULL; text, JSON and blob parameters take NULL.
 *
 * Types come from the server: a throwaway database is made from the
 * migrations with dbk_testdb_new() and every query is prepared on it.
 * PostgreSQL describes parameter and result types; a result column's NOT
 * NULL comes from its origin table column in the catalog. SQLite gives the
 * declared type and NOT NULL of result columns that are table columns;
 * parameters and expressions are typed from the statement text (the column
 * a parameter is compared with or inserted into, LIMIT/OFFSET, CAST, count,
 * avg/total), else text. Nullable unless proved otherwise: expressions
 * (count(...) is proved NOT NULL), columns of a table on the nullable side
 * of a LEFT JOIN, every column of a query with a RIGHT or FULL join.
 * A query that does not prepare fails generation with "file:line: ...".
 *
 * Output, per query file q.sql: q.h and q.c in out_dir, plus models.h with
 * a struct per table. C types follow repo.h: int64_t, double, bool,
 * const char * (text, JSON, arrays and other types as text; NULL pointer
 * for SQL NULL, copied into the caller's dbk_arena), dbk_bytes, int64_t
 * microseconds for timestamps; a nullable number gets a `bool <col>_null`.
 * The generated code uses only the public API and carries each query's
 * text as a constant. Same input, byte-identical output.
 */
#ifndef DBKIT_GEN_H
#define DBKIT_GEN_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_gen_opts {
    /* The struct's version: DBK_GEN_OPTS_VERSION, set by DBK_GEN_OPTS_INIT or
     * dbk_gen_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* The server for the throwaway database (see dbk_testdb_new()). */
    const dbk_config *cfg;
    const char *migrations_dir; /* NULL: "db/migrations" */
    const char *queries_dir;    /* NULL: "db/queries" */
    const char *out_dir;        /* NULL: "db/gen" */
    /* Write nothing; count the files that differ from what would be
     * written (missing ones included). */
    bool check;
} dbk_gen_opts;

/* The version of dbk_gen_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_GEN_OPTS_VERSION 1
#define DBK_GEN_OPTS_INIT {.version = DBK_GEN_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_GEN_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_GEN_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_gen_opts_init(dbk_gen_opts *opts, unsigned int version, dbk_error *err);

typedef struct dbk_gen_report {
    size_t files;      /* files generated (or compared) */
    size_t queries;    /* queries described */
    size_t written;    /* files written because they changed (not with check) */
    size_t drift;      /* check: files that differ */
    char first_drift[512]; /* check: the first of them */
} dbk_gen_report;

/* Generates (or, with check, compares) the code. DBK_EINVALID for a
 * malformed query file or a query that does not prepare (message
 * "<file>:<line>: <query>: ..."), the testdb / migration errors, DBK_EIO,
 * DBK_ENOMEM. rep may be NULL. */
DBK_API dbk_rc dbk_gen_run(const dbk_gen_opts *opts, dbk_gen_report *rep, dbk_error *err);

#ifdef __cplusplus
}
#endif

#endif
