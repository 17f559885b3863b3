/*
 * Statement description for code generation (`dbkit gen`): what the server
 * says a statement takes and returns, without running it. Driver layer,
 * because only the drivers include libpq-fe.h / sqlite3.h; kept out of the
 * driver vtable and the per-engine driver files: a describer is a separate
 * session opened from a configuration, used by src/gen only.
 */
#ifndef DBK_DESCRIBE_H
#define DBK_DESCRIBE_H

#include <stdbool.h>
#include <stddef.h>

#include "dbkit/config.h"
#include "dbkit/error.h"
#include "dbkit/value.h"

/* One parameter or result column. */
typedef struct dbk__desc_col {
    char name[64];     /* result column name; "" for parameters */
    dbk_type type;     /* what the driver hands back / takes for it */
    char sqltype[64];  /* the server's type name ("integer", "text[]", "jsonb"; SQLite: the
                          declared type, "" when unknown) */
    bool known;        /* type known (SQLite expressions and parameters: false) */
    bool notnull;      /* a table column declared NOT NULL */
    char table[64];    /* origin table; "" for expressions */
    char column[64];   /* origin column */
} dbk__desc_col;

typedef struct dbk__desc {
    dbk__desc_col *params;
    size_t nparams;
    dbk__desc_col *cols;
    size_t ncols;
} dbk__desc;

typedef struct dbk__describer dbk__describer;

/* Opens a describer on the database `cfg` names (its own session). */
dbk_rc dbk__describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err);
void dbk__describer_close(dbk__describer *d);

/* Prepares `sql` and describes it. When it does not prepare: the engine's
 * rc and message, and *errpos the 0-based byte offset the server points at
 * (-1 when it does not say). *out owned by the caller: dbk__desc_free. */
dbk_rc dbk__describe(dbk__describer *d, const char *sql, dbk__desc *out, int *errpos,
                     dbk_error *err);
void dbk__desc_free(dbk__desc *d);

/* A table column's type and NOT NULL, by name. *found false when there is
 * no such column. */
dbk_rc dbk__describe_column(dbk__describer *d, const char *table, const char *column,
                            dbk__desc_col *out, bool *found, dbk_error *err);

/* Engine-specific halves (pg_describe.c, sqlite_describe.c). */
dbk_rc dbk__pg_describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err);
dbk_rc dbk__sq_describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err);

/* The ops every describer starts with. */
struct dbk__describer {
    void (*close)(dbk__describer *d);
    dbk_rc (*describe)(dbk__describer *d, const char *sql, dbk__desc *out, int *errpos,
                       dbk_error *err);
    dbk_rc (*column)(dbk__describer *d, const char *table, const char *column,
                     dbk__desc_col *out, bool *found, dbk_error *err);
};

#endif
