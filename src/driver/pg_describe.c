/*
 * PostgreSQL statement description for `dbkit gen`: PQprepare of the
 * unnamed statement, then PQdescribePrepared for the parameter and result
 * type OIDs and, per result column, its origin table and column
 * (PQftable / PQftablecol), whose NOT NULL comes from pg_attribute.
 *
 * Its own session (built from the configuration with PQconnectdbParams),
 * so that nothing here depends on the internals of postgres.c: generation
 * is a development-time tool, not a hot path.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../core/url.h"
#include "describe.h"
#include "driver.h"

typedef struct pg_describer {
    dbk__describer base;
    PGconn *conn;
} pg_describer;

static dbk_type type_of(Oid t)
{
    switch (t) {
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
        return DBK_TYPE_INT64;
    case 700: /* float4 */
    case 701: /* float8 */
        return DBK_TYPE_DOUBLE;
    case 16:
        return DBK_TYPE_BOOL;
    case 17:
        return DBK_TYPE_BLOB;
    case 1114:
    case 1184:
        return DBK_TYPE_TIMESTAMP;
    case 114:
    case 3802:
        return DBK_TYPE_JSON;
    default:
        return DBK_TYPE_TEXT;
    }
}

static dbk_rc pg_fail(PGconn *c, const PGresult *r, const char *what, dbk_error *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    dbk_rc rc = state ? dbk__rc_from_sqlstate(state) : DBK_ESQL;
    if (!msg) {
        msg = PQerrorMessage(c);
        rc = PQstatus(c) == CONNECTION_OK ? DBK_ESQL : DBK_ECONN_LOST;
    }
    dbk__err(err, rc, "%s: %s", what, msg);
    if (err && state)
        dbk__strlcpy(err->sqlstate, state, sizeof err->sqlstate);
    const char *hint = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_HINT) : NULL;
    if (hint)
        dbk__err_hint(err, "%s", hint);
    return rc;
}

/* One text row of a parameterized catalog query; NULL on failure. */
static PGresult *cat_query(PGconn *c, const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

static void type_name(PGconn *c, Oid t, char *out, size_t n)
{
    char oid[16];
    snprintf(oid, sizeof oid, "%u", t);
    const char *v[] = {oid};
    PGresult *r = cat_query(c, "SELECT format_type($1::oid, NULL)", 1, v);
    dbk__strlcpy(out, r && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "", n);
    PQclear(r);
}

static void pg_close(dbk__describer *d)
{
    pg_describer *p = (pg_describer *)d;
    PQfinish(p->conn);
    free(p);
}

static dbk_rc pg_describe(dbk__describer *d, const char *sql, dbk__desc *out, int *errpos,
                          dbk_error *err)
{
    pg_describer *p = (pg_describer *)d;
    memset(out, 0, sizeof *out);
    *errpos = -1;
    PGresult *r = PQprepare(p->conn, "", sql, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
        long long at = 0; /* 1-based characters; ASCII SQL assumed */
        if (pos && dbk__parse_decimal(pos, strlen(pos), 1, INT_MAX, &at))
            *errpos = (int)at - 1;
        dbk_rc rc = pg_fail(p->conn, r, "does not prepare", err);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    r = PQdescribePrepared(p->conn, "");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        dbk_rc rc = pg_fail(p->conn, r, "cannot describe", err);
        PQclear(r);
        return rc;
    }
    int np = PQnparams(r), nf = PQnfields(r);
    out->params = calloc((size_t)np + 1, sizeof *out->params);
    out->cols = calloc((size_t)nf + 1, sizeof *out->cols);
    if (!out->params || !out->cols) {
        PQclear(r);
        dbk__desc_free(out);
        return dbk__err(err, DBK_ENOMEM, "out of memory describing a statement");
    }
    out->nparams = (size_t)np;
    out->ncols = (size_t)nf;
    for (int i = 0; i < np; i++) {
        Oid t = PQparamtype(r, i);
        out->params[i].type = type_of(t);
        out->params[i].known = true;
        type_name(p->conn, t, out->params[i].sqltype, sizeof out->params[i].sqltype);
    }
    for (int i = 0; i < nf; i++) {
        dbk__desc_col *c = &out->cols[i];
        Oid t = PQftype(r, i);
        dbk__strlcpy(c->name, PQfname(r, i), sizeof c->name);
        c->type = type_of(t);
        c->known = true;
        type_name(p->conn, t, c->sqltype, sizeof c->sqltype);
        Oid tab = PQftable(r, i);
        int col = PQftablecol(r, i);
        if (tab == InvalidOid || col <= 0)
            continue;
        char toid[16], tcol[16];
        snprintf(toid, sizeof toid, "%u", tab);
        snprintf(tcol, sizeof tcol, "%d", col);
        const char *v[] = {toid, tcol};
        PGresult *a = cat_query(p->conn,
                                "SELECT a.attnotnull::int, c.relname, a.attname FROM pg_attribute a "
                                "JOIN pg_class c ON c.oid = a.attrelid "
                                "WHERE a.attrelid = $1::oid AND a.attnum = $2::int2",
                                2, v);
        if (a && PQntuples(a) == 1) {
            c->notnull = strcmp(PQgetvalue(a, 0, 0), "1") == 0;
            dbk__strlcpy(c->table, PQgetvalue(a, 0, 1), sizeof c->table);
            dbk__strlcpy(c->column, PQgetvalue(a, 0, 2), sizeof c->column);
        }
        PQclear(a);
    }
    PQclear(r);
    return DBK_OK;
}

static dbk_rc pg_column(dbk__describer *d, const char *table, const char *column,
                        dbk__desc_col *out, bool *found, dbk_error *err)
{
    pg_describer *p = (pg_describer *)d;
    (void)err;
    memset(out, 0, sizeof *out);
    *found = false;
    const char *v[] = {table, column};
    PGresult *a = cat_query(p->conn,
                            "SELECT a.attnotnull::int, a.atttypid::int8, "
                            "format_type(a.atttypid, NULL) FROM pg_attribute a "
                            "WHERE a.attrelid = to_regclass($1) AND a.attname = $2 "
                            "AND a.attnum > 0 AND NOT a.attisdropped",
                            2, v);
    if (a && PQntuples(a) == 1) {
        *found = true;
        out->notnull = strcmp(PQgetvalue(a, 0, 0), "1") == 0;
        out->type = type_of((Oid)strtoul(PQgetvalue(a, 0, 1), NULL, 10));
        out->known = true;
        dbk__strlcpy(out->sqltype, PQgetvalue(a, 0, 2), sizeof out->sqltype);
        dbk__strlcpy(out->table, table, sizeof out->table);
        dbk__strlcpy(out->column, column, sizeof out->column);
        dbk__strlcpy(out->name, column, sizeof out->name);
    }
    PQclear(a);
    return DBK_OK;
}

dbk_rc dbk__pg_describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err)
{
    const char *keys[16], *vals[16];
    int n = 0;
    char timeout[16];
#define KV(k, v)                 \
    do {                         \
        if (v) {                 \
            keys[n] = (k);       \
            vals[n] = (v);       \
            n++;                 \
        }                        \
    } while (0)
    KV("host", cfg->host);
    KV("port", cfg->port);
    KV("dbname", cfg->dbname);
    KV("user", cfg->user);
    KV("password", cfg->password);
    KV("sslmode", cfg->sslmode);
    snprintf(timeout, sizeof timeout, "%d", (cfg->connect_timeout_ms + 999) / 1000);
    keys[n] = "connect_timeout";
    vals[n++] = timeout;
    keys[n] = "application_name";
    vals[n++] = "dbkit gen";
#undef KV
    keys[n] = vals[n] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory connecting");
    if (PQstatus(c) != CONNECTION_OK) {
        dbk__err(err, DBK_EUNAVAILABLE, "cannot connect to describe statements: %s",
                 PQerrorMessage(c));
        PQfinish(c);
        return DBK_EUNAVAILABLE;
    }
    pg_describer *p = calloc(1, sizeof *p);
    if (!p) {
        PQfinish(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory connecting");
    }
    p->base.close = pg_close;
    p->base.describe = pg_describe;
    p->base.column = pg_column;
    p->conn = c;
    *out = &p->base;
    return DBK_OK;
}

/* ---- engine-independent entry points ---- */

dbk_rc dbk__describer_open(const dbk_config *cfg, dbk__describer **out, dbk_error *err)
{
    *out = NULL;
    return cfg->engine == DBK_ENGINE_POSTGRES ? dbk__pg_describer_open(cfg, out, err)
                                              : dbk__sq_describer_open(cfg, out, err);
}

void dbk__describer_close(dbk__describer *d)
{
    if (d)
        d->close(d);
}

dbk_rc dbk__describe(dbk__describer *d, const char *sql, dbk__desc *out, int *errpos,
                     dbk_error *err)
{
    return d->describe(d, sql, out, errpos, err);
}

dbk_rc dbk__describe_column(dbk__describer *d, const char *table, const char *column,
                            dbk__desc_col *out, bool *found, dbk_error *err)
{
    return d->column(d, table, column, out, found, err);
}

void dbk__desc_free(dbk__desc *d)
{
    if (!d)
        return;
    free(d->params);
    free(d->cols);
    memset(d, 0, sizeof *d);
}
