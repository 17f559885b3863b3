/*
 * SQLite statement description for `dbkit gen`: sqlite3_prepare_v2, then
 * per result column its origin (sqlite3_column_table_name /
 * sqlite3_column_origin_name, which need SQLite built with
 * SQLITE_ENABLE_COLUMN_METADATA, as Debian's is) and the declared type and
 * NOT NULL of that column (sqlite3_table_column_metadata). SQLite does not
 * type parameters or expressions: those come back with known = false and
 * the generator infers them from the statement text.
 */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/config_int.h"
#include "../core/internal.h"
#include "describe.h"
#include "driver.h"

typedef struct sq_describer {
    dbk__describer base;
    sqlite3 *db;
} sq_describer;

/* The dbk_type a declared type reads as (the getters convert from the
 * stored class: 0/1 to bool, text to timestamp). */
static dbk_type affinity(const char *decl)
{
    if (!decl || !*decl)
        return DBK_TYPE_TEXT;
    if (strcasestr(decl, "BOOL"))
        return DBK_TYPE_BOOL;
    if (strcasestr(decl, "TIMESTAMP") || strcasestr(decl, "DATETIME"))
        return DBK_TYPE_TIMESTAMP;
    if (strcasestr(decl, "JSON"))
        return DBK_TYPE_JSON;
    if (strcasestr(decl, "INT"))
        return DBK_TYPE_INT64;
    if (strcasestr(decl, "CHAR") || strcasestr(decl, "CLOB") || strcasestr(decl, "TEXT"))
        return DBK_TYPE_TEXT;
    if (strcasestr(decl, "BLOB"))
        return DBK_TYPE_BLOB;
    if (strcasestr(decl, "REAL") || strcasestr(decl, "FLOA") || strcasestr(decl, "DOUB") ||
        strcasestr(decl, "NUMERIC") || strcasestr(decl, "DECIMAL"))
        return DBK_TYPE_DOUBLE; /* NUMERIC affinity stores numbers as INTEGER or REAL */
    return DBK_TYPE_TEXT; /* DATE, ...: read as text */
}

static void sq_close(dbk__describer *d)
{
    sq_describer *s = (sq_describer *)d;
    sqlite3_close_v2(s->db);
    free(s);
}

static void fill_origin(sqlite3 *db, const char *table, const char *column, dbk__desc_col *c)
{
    const char *decl = NULL, *coll = NULL;
    int notnull = 0, pk = 0, autoinc = 0;
    if (sqlite3_table_column_metadata(db, "main", table, column, &decl, &coll, &notnull, &pk,
                                      &autoinc) != SQLITE_OK)
        return;
    c->type = affinity(decl);
    c->known = true;
    dbk__strlcpy(c->sqltype, decl ? decl : "", sizeof c->sqltype);
    /* An INTEGER PRIMARY KEY is the rowid: never NULL. */
    c->notnull = notnull || (pk && decl && strcasecmp(decl, "INTEGER") == 0);
    dbk__strlcpy(c->table, table, sizeof c->table);
    dbk__strlcpy(c->column, column, sizeof c->column);
}

static dbk_rc sq_describe(dbk__describer *d, const char *sql, dbk__desc *out, int *errpos,
                          dbk_error *err)
{
    sq_describer *s = (sq_describer *)d;
    memset(out, 0, sizeof *out);
    *errpos = -1;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, &tail);
    if (rc != SQLITE_OK) {
#if SQLITE_VERSION_NUMBER >= 3038000
        *errpos = sqlite3_error_offset(s->db);
#endif
        return dbk__err(err, dbk__rc_from_sqlite(sqlite3_extended_errcode(s->db)),
                        "does not prepare: %s", sqlite3_errmsg(s->db));
    }
    if (!st)
        return dbk__err(err, DBK_EINVALID, "does not prepare: no statement");
    int np = sqlite3_bind_parameter_count(st), nf = sqlite3_column_count(st);
    out->params = calloc((size_t)np + 1, sizeof *out->params);
    out->cols = calloc((size_t)nf + 1, sizeof *out->cols);
    if (!out->params || !out->cols) {
        sqlite3_finalize(st);
        dbk__desc_free(out);
        return dbk__err(err, DBK_ENOMEM, "out of memory describing a statement");
    }
    out->nparams = (size_t)np;
    out->ncols = (size_t)nf;
    for (int i = 0; i < np; i++) {
        const char *n = sqlite3_bind_parameter_name(st, i + 1);
        dbk__strlcpy(out->params[i].name, n ? n : "", sizeof out->params[i].name);
        out->params[i].type = DBK_TYPE_TEXT;
    }
    for (int i = 0; i < nf; i++) {
        dbk__desc_col *c = &out->cols[i];
        const char *n = sqlite3_column_name(st, i);
        dbk__strlcpy(c->name, n ? n : "", sizeof c->name);
        c->type = DBK_TYPE_TEXT;
        const char *decl = sqlite3_column_decltype(st, i);
        if (decl) {
            c->type = affinity(decl);
            c->known = true;
            dbk__strlcpy(c->sqltype, decl, sizeof c->sqltype);
        }
        const char *tab = sqlite3_column_table_name(st, i);
        const char *col = sqlite3_column_origin_name(st, i);
        if (tab && col)
            fill_origin(s->db, tab, col, c);
    }
    sqlite3_finalize(st);
    return DBK_OK;
}

static dbk_rc sq_column(dbk__describer *d, const char *table, const char *column,
                        dbk__desc_col *out, bool *found, dbk_error *err)
{
    sq_describer *s = (sq_describer *)d;
    (void)err;
    memset(out, 0, sizeof *out);
    fill_origin(s->db, table, column, out);
    *found = out->known;
    if (*found)
        dbk__strlcpy(out->name, column, sizeof out->name);
    return DBK_OK;
}

dbk_rc dbk__sq_describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(cfg->sqlite_path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        dbk_rc rc = dbk__err(err, DBK_EUNAVAILABLE, "cannot open %s to describe statements: %s",
                             cfg->sqlite_path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close_v2(db);
        return rc;
    }
    sq_describer *s = calloc(1, sizeof *s);
    if (!s) {
        sqlite3_close_v2(db);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a describer");
    }
    s->base.close = sq_close;
    s->base.describe = sq_describe;
    s->base.column = sq_column;
    s->db = db;
    *out = &s->base;
    return DBK_OK;
}
