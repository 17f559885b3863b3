/*
 * Bulk insert: dbk_db_copy_from, and the COPY text encoder it shares with
 * the repository's create_many.
 *
 * PostgreSQL gets one COPY ... FROM STDIN: a single statement, so it
 * writes every row or none, on any executor (a connection, a pool, a
 * transaction), and rows are encoded one at a time as the driver asks for
 * data, so memory stays at one row whatever the input size. SQLite has no
 * COPY: the same rows go as multi-row INSERTs under the engine's parameter
 * limit, all inside one savepoint on one pinned connection, rolled back on
 * the first failure, so the all-or-nothing promise is the same.
 *
 * The encoder lives here, below the repository layer, so that there is one
 * encoder and one set of size limits (PostgreSQL reads at most 1 GiB per
 * value and per encoded row). Limits are checked from lengths before a
 * value is read or the row buffer grows: a value that cannot go is refused
 * without being touched.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "copy_int.h"
#include "db_int.h"

/* ---- the encoder ---- */

static bool row_reserve(dbk__copy_row *r, size_t more)
{
    if (r->len + more <= r->cap)
        return true;
    size_t cap = r->cap ? r->cap : 256;
    while (cap < r->len + more)
        cap *= 2;
    char *p = realloc(r->p, cap);
    if (!p)
        return false;
    r->p = p;
    r->cap = cap;
    return true;
}

bool dbk__copy_put(dbk__copy_row *r, const char *s, size_t n)
{
    if (!row_reserve(r, n))
        return false;
    memcpy(r->p + r->len, s, n);
    r->len += n;
    return true;
}

/* PostgreSQL's limits on COPY: one value at most DBK__PG_MAX_VALUE bytes,
 * one encoded row (the server reads a line into one buffer) at most
 * DBK__PG_MAX_MESSAGE. */
static dbk_rc copy_limits(const dbk__copy_row *r, size_t raw, size_t encoded, const char *column,
                          dbk_error *err)
{
    if (raw > DBK__PG_MAX_VALUE)
        dbk__err(err, DBK_EINVALID,
                 "%s: value is %zu bytes; PostgreSQL accepts at most %zu bytes (1 GiB) in one "
                 "value",
                 column, raw, DBK__PG_MAX_VALUE);
    else if (encoded > DBK__PG_MAX_MESSAGE - 1 - r->len)
        dbk__err(err, DBK_EINVALID,
                 "%s: the row would be more than %zu bytes in COPY text format, the most "
                 "PostgreSQL reads as one row (1 GiB)",
                 column, DBK__PG_MAX_MESSAGE);
    else
        return DBK_OK;
    dbk__err_hint(err, "store large objects outside the database and keep their path or key in "
                       "the row, or insert this row on its own (dbk_db_exec, "
                       "dbk_repo_create)");
    return DBK_EINVALID;
}

dbk_rc dbk__copy_value(dbk__copy_row *r, dbk_value v, const char *column, dbk_error *err)
{
    char tmp[64];
    switch (v.type) {
    case DBK_TYPE_NULL:
        return dbk__copy_put(r, "\\N", 2) ? DBK_OK : DBK_ENOMEM;
    case DBK_TYPE_BOOL:
        return dbk__copy_put(r, v.u.b ? "t" : "f", 1) ? DBK_OK : DBK_ENOMEM;
    case DBK_TYPE_INT64: {
        int k = snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i);
        return dbk__copy_put(r, tmp, (size_t)k) ? DBK_OK : DBK_ENOMEM;
    }
    case DBK_TYPE_DOUBLE: {
        int k;
        if (v.u.d != v.u.d)
            k = snprintf(tmp, sizeof tmp, "NaN");
        else if (v.u.d > 1.7976931348623157e308)
            k = snprintf(tmp, sizeof tmp, "Infinity");
        else if (v.u.d < -1.7976931348623157e308)
            k = snprintf(tmp, sizeof tmp, "-Infinity");
        else
            k = snprintf(tmp, sizeof tmp, "%.17g", v.u.d);
        return dbk__copy_put(r, tmp, (size_t)k) ? DBK_OK : DBK_ENOMEM;
    }
    case DBK_TYPE_TIMESTAMP:
        if (dbk_timestamp_format(v.u.i, tmp, sizeof tmp) != DBK_OK)
            return dbk__err(err, DBK_EINVALID, "%s: timestamp %lld us is outside the years 1..9999",
                            column, (long long)v.u.i);
        return dbk__copy_put(r, tmp, strlen(tmp)) ? DBK_OK : DBK_ENOMEM;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON: {
        const unsigned char *p = v.u.bytes.ptr;
        size_t n = v.u.bytes.len;
        if (n && !p)
            return dbk__err(err, DBK_EMISUSE, "%s: NULL text with length %zu", column, n);
        size_t enc = n;
        if (n <= DBK__PG_MAX_VALUE)
            for (size_t i = 0; i < n; i++)
                enc += p[i] == '\\' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t';
        dbk_rc lrc = copy_limits(r, n, enc, column, err);
        if (lrc)
            return lrc;
        if (!row_reserve(r, enc))
            return DBK_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = p[i];
            char *o = r->p + r->len;
            switch (ch) {
            case '\0':
                dbk__err(err, DBK_EINVALID,
                         "%s: text contains a NUL byte, which PostgreSQL cannot store", column);
                dbk__err_hint(err, "store binary data as a blob (dbk_blob) in a bytea column");
                return DBK_EINVALID;
            case '\\':
                o[0] = '\\';
                o[1] = '\\';
                r->len += 2;
                break;
            case '\n':
                o[0] = '\\';
                o[1] = 'n';
                r->len += 2;
                break;
            case '\r':
                o[0] = '\\';
                o[1] = 'r';
                r->len += 2;
                break;
            case '\t':
                o[0] = '\\';
                o[1] = 't';
                r->len += 2;
                break;
            default:
                o[0] = (char)ch;
                r->len += 1;
                break;
            }
        }
        return DBK_OK;
    }
    case DBK_TYPE_BLOB: {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = v.u.bytes.ptr;
        size_t n = v.u.bytes.len;
        if (n && !p)
            return dbk__err(err, DBK_EMISUSE, "%s: NULL blob with length %zu", column, n);
        dbk_rc lrc = copy_limits(r, n, n <= DBK__PG_MAX_VALUE ? 3 + 2 * n : n, column, err);
        if (lrc)
            return lrc;
        if (!row_reserve(r, 3 + 2 * n))
            return DBK_ENOMEM;
        memcpy(r->p + r->len, "\\\\x", 3); /* bytea hex input, backslash escaped */
        r->len += 3;
        for (size_t i = 0; i < n; i++) {
            r->p[r->len++] = hex[p[i] >> 4];
            r->p[r->len++] = hex[p[i] & 15];
        }
        return DBK_OK;
    }
    }
    return dbk__err(err, DBK_EMISUSE, "%s: unknown value type %d", column, (int)v.type);
}

/* ---- dbk_db_copy_from ---- */

/* "name" with embedded quotes doubled: the same quoting on both engines. */
static bool put_ident(dbk__copy_row *r, const char *id)
{
    if (!dbk__copy_put(r, "\"", 1))
        return false;
    for (const char *s = id; *s; s++)
        if (!dbk__copy_put(r, s, 1) || (*s == '"' && !dbk__copy_put(r, "\"", 1)))
            return false;
    return dbk__copy_put(r, "\"", 1);
}

/* `prefix "table" ("a", "b")` NUL-terminated in r; false when out of memory. */
static bool head_sql(dbk__copy_row *r, const char *prefix, const char *table,
                     const char *const *columns, size_t ncolumns)
{
    if (!dbk__copy_put(r, prefix, strlen(prefix)) || !put_ident(r, table) ||
        !dbk__copy_put(r, " (", 2))
        return false;
    for (size_t k = 0; k < ncolumns; k++)
        if ((k && !dbk__copy_put(r, ", ", 2)) || !put_ident(r, columns[k]))
            return false;
    return dbk__copy_put(r, ")", 1);
}

struct from_state {
    const char *table;
    const char *const *columns;
    size_t ncolumns;
    const dbk_value *values;
    size_t nrows, next;
    dbk__copy_row row;
};

/* Prefixes the message with the failing row and keeps the hint. */
static dbk_rc row_error(dbk_rc rc, size_t row, const char *table, dbk_error *err)
{
    if (rc == DBK_ENOMEM)
        return dbk__err(err, DBK_ENOMEM, "out of memory encoding row %zu of %s", row, table);
    if (!err)
        return rc;
    char msg[sizeof err->message], hint[sizeof err->hint];
    dbk__strlcpy(msg, err->message, sizeof msg);
    dbk__strlcpy(hint, err->hint, sizeof hint);
    dbk__err(err, rc, "row %zu of %s: %s", row, table, msg);
    if (hint[0])
        dbk__err_hint(err, "%s", hint);
    return rc;
}

size_t dbk__copy_row_drain(dbk__copy_row *r, char *buf, size_t cap)
{
    size_t k = r->len - r->off;
    if (k == 0) /* nothing encoded yet: r->p may still be NULL */
        return 0;
    if (k > cap)
        k = cap;
    memcpy(buf, r->p + r->off, k);
    r->off += k;
    return k;
}

static long from_fill(void *ctx, char *buf, size_t cap, dbk_error *err)
{
    struct from_state *s = ctx;
    dbk__copy_row *r = &s->row;
    size_t used = 0;
    while (used < cap) {
        used += dbk__copy_row_drain(r, buf + used, cap - used);
        if (r->off < r->len)
            continue;
        if (s->next == s->nrows)
            break;
        const dbk_value *in = s->values + s->next * s->ncolumns;
        r->len = r->off = 0;
        for (size_t k = 0; k < s->ncolumns; k++) {
            dbk_rc rc = (k && !dbk__copy_put(r, "\t", 1))
                            ? DBK_ENOMEM
                            : dbk__copy_value(r, in[k], s->columns[k], err);
            if (rc) {
                row_error(rc, s->next, s->table, err);
                return -1;
            }
        }
        if (!dbk__copy_put(r, "\n", 1)) {
            row_error(DBK_ENOMEM, s->next, s->table, err);
            return -1;
        }
        s->next++;
    }
    return (long)used;
}

static dbk_rc copy_pg(dbk_db *db, struct from_state *s, int64_t *written, dbk_error *err)
{
    dbk__copy_row sql = {0};
    if (!head_sql(&sql, "COPY ", s->table, s->columns, s->ncolumns) ||
        !dbk__copy_put(&sql, " FROM STDIN", 12)) {
        free(sql.p);
        return dbk__err(err, DBK_ENOMEM, "out of memory building COPY into %s", s->table);
    }
    int64_t n = 0;
    dbk_rc rc = dbk__db_copy_in(db, sql.p, from_fill, s, &n, err);
    if (rc == DBK_OK && n != (int64_t)s->nrows)
        rc = dbk__err(err, DBK_EINTERNAL, "COPY into %s wrote %lld rows for %zu", s->table,
                      (long long)n, s->nrows);
    if (rc == DBK_OK)
        *written = n;
    free(sql.p);
    free(s->row.p);
    return rc;
}

/* SQLite's default limit on parameters in one statement. */
#define SQLITE_PARAMS 999

/* Chunks of multi-row INSERT on one pinned connection inside a savepoint. */
static dbk_rc insert_chunks(dbk_db *cdb, struct from_state *s, int64_t *written, dbk_error *err)
{
    size_t per = SQLITE_PARAMS / s->ncolumns;
    if (per > 500)
        per = 500;
    dbk__copy_row sql = {0};
    dbk_rc rc = DBK_OK;
    while (rc == DBK_OK && s->next < s->nrows) {
        size_t k = s->nrows - s->next < per ? s->nrows - s->next : per;
        sql.len = 0;
        bool ok = head_sql(&sql, "INSERT INTO ", s->table, s->columns, s->ncolumns) &&
                  dbk__copy_put(&sql, " VALUES ", 8);
        size_t param = 1;
        for (size_t i = 0; ok && i < k; i++) {
            ok = dbk__copy_put(&sql, i ? ", (" : "(", i ? 3 : 1);
            for (size_t c = 0; ok && c < s->ncolumns; c++) {
                char tmp[24];
                int m = snprintf(tmp, sizeof tmp, "%s$%zu", c ? ", " : "", param++);
                ok = dbk__copy_put(&sql, tmp, (size_t)m);
            }
            ok = ok && dbk__copy_put(&sql, ")", 1);
        }
        if (!ok || !dbk__copy_put(&sql, "", 1)) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory building INSERT into %s", s->table);
            break;
        }
        int64_t affected = 0;
        rc = cdb->ops->run(cdb, sql.p, s->values + s->next * s->ncolumns, k * s->ncolumns, NULL,
                           &affected, err);
        if (rc == DBK_OK && affected != (int64_t)k)
            rc = dbk__err(err, DBK_EINTERNAL, "INSERT into %s wrote %lld rows for %zu", s->table,
                          (long long)affected, k);
        if (rc == DBK_OK) {
            s->next += k;
            *written += affected;
        }
    }
    free(sql.p);
    return rc;
}

static dbk_rc copy_sqlite(dbk_db *db, struct from_state *s, int64_t *written, dbk_error *err)
{
    dbk_conn *conn = NULL;
    dbk_rc rc = db->ops->pin(db, &conn, err);
    if (rc)
        return rc;
    dbk_db *cdb = &conn->db;
    int64_t n = 0;
    rc = cdb->ops->script(cdb, "SAVEPOINT dbk_copy_from", 0, err);
    if (rc == DBK_OK) {
        rc = insert_chunks(cdb, s, &n, err);
        if (rc) {
            dbk_error ignored;
            cdb->ops->script(cdb, "ROLLBACK TO dbk_copy_from", 0, &ignored);
            cdb->ops->script(cdb, "RELEASE dbk_copy_from", 0, &ignored);
        } else {
            rc = cdb->ops->script(cdb, "RELEASE dbk_copy_from", 0, err);
        }
    }
    db->ops->unpin(db, conn);
    if (rc == DBK_OK)
        *written = n;
    return rc;
}

dbk_rc dbk_db_copy_from(dbk_db *db, const char *table, const char *const *columns, size_t ncolumns,
                        const dbk_value *values, size_t nrows, int64_t *rows_written,
                        dbk_error *err)
{
    if (rows_written)
        *rows_written = 0;
    if (!db || !table || !table[0] || !columns || ncolumns == 0 || (nrows && !values))
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_db_copy_from: db, a table name, columns (at least one) and values "
                        "(when nrows > 0) are required");
    if (ncolumns > SQLITE_PARAMS)
        return dbk__err(err, DBK_EMISUSE, "dbk_db_copy_from: %zu columns; at most %d", ncolumns,
                        SQLITE_PARAMS);
    for (size_t k = 0; k < ncolumns; k++)
        if (!columns[k] || !columns[k][0])
            return dbk__err(err, DBK_EMISUSE, "dbk_db_copy_from: column %zu has no name", k);
    if (nrows > SIZE_MAX / ncolumns)
        return dbk__err(err, DBK_EMISUSE, "dbk_db_copy_from: %zu rows of %zu columns overflow",
                        nrows, ncolumns);
    if (nrows == 0)
        return DBK_OK;
    struct from_state s = {
        .table = table, .columns = columns, .ncolumns = ncolumns, .values = values, .nrows = nrows};
    int64_t n = 0;
    if (db->engine == DBK_ENGINE_POSTGRES) {
        dbk_rc rc = copy_pg(db, &s, &n, err);
        if (rc == DBK_OK && rows_written)
            *rows_written = n;
        return rc;
    }
    int64_t t0 = db->observer ? dbk__now_ns() : 0;
    dbk_rc rc = copy_sqlite(db, &s, &n, err);
    if (db->observer) {
        dbk_query_event ev = {"INSERT (dbk_db_copy_from)",
                              0,
                              dbk__now_ns() - t0,
                              rc ? 0 : n,
                              rc,
                              db->engine,
                              NULL,
                              rc ? err : NULL,
                              0,
                              0};
        db->observer(db->observer_ctx, &ev);
    }
    if (rc == DBK_OK && rows_written)
        *rows_written = n;
    return rc;
}
