/*
 * Schema dump: the database's schema as SQL text, for db/schema.sql.
 *
 * The dump is meant to be committed and diffed, so it is deterministic: no
 * timestamps, a fixed order per object kind, the applied migrations listed
 * in a comment header. SQLite keeps the original CREATE text in
 * sqlite_master, which is printed as is. PostgreSQL is rebuilt from the
 * catalogs with the server's own pg_get_*def() functions, in dependency
 * order (extensions, enum types, sequences, functions, tables, then
 * constraints, indexes, views and triggers), limited to the schemas in the
 * search path. That covers what migrations normally create; `pg_dump
 * --schema-only` remains the tool for a complete, restorable dump. The
 * catalog queries are the engine dialect's (dump_parts in
 * src/driver/dialect.c); this file only runs them in order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../core/sb.h"
#include "../driver/dialect.h"
#include "migrate_int.h"

/* Appends every row's first column followed by `sep`, under a heading. */
static dbk_rc dump_query(dbk_db *db, dbk__sb *b, const char *heading, const char *sql,
                         const char *sep, dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, sql, NULL, 0, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    if (n && heading) {
        dbk__sb_puts(b, "\n-- ");
        dbk__sb_puts(b, heading);
        dbk__sb_puts(b, "\n\n");
    }
    for (size_t i = 0; i < n && rc == DBK_OK; i++) {
        const char *s = NULL;
        size_t len = 0;
        rc = dbk_result_get_text(r, i, 0, &s, &len, err);
        if (rc == DBK_OK && s) {
            dbk__sb_putn(b, s, len);
            dbk__sb_puts(b, sep);
        }
    }
    dbk_result_free(r);
    return rc;
}

static dbk_rc dump_history(dbk_db *db, dbk__sb *b, dbk_error *err)
{
    int64_t exists = 0;
    dbk_value p = dbk_text("dbkit_migrations");
    dbk_rc rc = dbk_db_query_int64(db, dbk__dialect_of(dbk_db_engine(db))->table_exists_sql, &p,
                                   1, &exists, err);
    if (rc)
        return rc;
    if (!exists) {
        dbk__sb_puts(b, "-- applied migrations: none\n");
        return DBK_OK;
    }
    dbk_result *r = NULL;
    rc = dbk_db_query(db,
                      "SELECT version, name, dirty FROM dbkit_migrations ORDER BY version", NULL,
                      0, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    dbk__sb_puts(b, n ? "-- applied migrations:\n" : "-- applied migrations: none\n");
    for (size_t i = 0; i < n; i++) {
        int64_t v = 0, dirty = 0;
        const char *name = NULL;
        dbk_error e;
        dbk_result_get_int64(r, i, 0, &v, &e);
        dbk_result_get_text(r, i, 1, &name, NULL, &e);
        dbk_result_get_int64(r, i, 2, &dirty, &e);
        char line[256];
        snprintf(line, sizeof line, "--   %lld %s%s\n", (long long)v, name ? name : "",
                 dirty ? " (dirty)" : "");
        dbk__sb_puts(b, line);
    }
    dbk_result_free(r);
    return DBK_OK;
}

dbk_rc dbk_schema_dump(dbk_db *db, char **out, size_t *len, dbk_error *err)
{
    if (!db || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_schema_dump: db and out must not be NULL");
    *out = NULL;
    if (len)
        *len = 0;
    dbk__mctx m;
    dbk_rc rc = dbk__mctx_open(&m, db, NULL, 0, err);
    if (rc)
        return rc;
    dbk__sb b = {0};
    const char *ver = dbk_conn_server_version(m.conn);
    dbk__sb_puts(&b, "-- Schema dumped by `dbkit migrate dump` from ");
    const dbk__dialect *dia = dbk__dialect_of(m.engine);
    dbk__sb_puts(&b, dia->name);
    dbk__sb_puts(&b, " ");
    dbk__sb_puts(&b, ver ? ver : "");
    dbk__sb_puts(&b, ".\n-- Generated file: do not edit; change the schema with a migration.\n");
    rc = dump_history(m.db, &b, err);
    dbk__sb_puts(&b, "\n");
    /* The dialect's catalog queries, in dependency order. */
    if (rc == DBK_OK)
        dbk__sb_puts(&b, dia->dump_preamble);
    for (size_t i = 0; i < dia->ndump_parts && rc == DBK_OK; i++)
        rc = dump_query(m.db, &b, dia->dump_parts[i].heading, dia->dump_parts[i].sql,
                        dia->dump_parts[i].sep, err);
    dbk__mctx_close(&m);
    if (rc == DBK_OK && b.oom)
        rc = dbk__err(err, DBK_ENOMEM, "out of memory dumping the schema");
    if (rc) {
        free(b.p);
        return rc;
    }
    if (!b.p) {
        b.p = calloc(1, 1);
        if (!b.p)
            return dbk__err(err, DBK_ENOMEM, "out of memory dumping the schema");
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return DBK_OK;
}
