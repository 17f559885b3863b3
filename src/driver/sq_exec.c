/*
 * sq_exec.c - the SQLite driver running statements: binding parameters,
 * stepping with a deadline checked by the progress handler, building
 * results, scripts, ping, the transaction state and the reset that
 * restores every session setting sq_open left.
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <sys/stat.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "sq_int.h"

/* ---- running statements ---- */

static dbk_rc param_count_error(const sq_entry *e, size_t nparams, dbk_error *err)
{
    if (nparams < (size_t)e->need) {
        if (e->dollar)
            dbk__err(err, DBK_EMISUSE, "statement uses $%d but %zu parameter%s given", e->need,
                     nparams, nparams == 1 ? " was" : "s were");
        else
            dbk__err(err, DBK_EMISUSE, "statement has %d placeholders but %zu parameter%s given",
                     e->need, nparams, nparams == 1 ? " was" : "s were");
    } else if (nparams > (size_t)e->need) {
        dbk__err(err, DBK_EMISUSE, "statement uses %d parameter%s but %zu were given", e->need,
                 e->need == 1 ? "" : "s", nparams);
    } else {
        dbk__err(err, DBK_EMISUSE, "parameter $%d is given but the statement does not use it",
                 e->gap);
    }
    dbk__err_hint(err, "pass exactly one value for each of $1..$n, and use each at least once");
    return DBK_EMISUSE;
}

static dbk_rc bind_all(sq_conn *c, sq_entry *e, const dbk_value *params,
                       char (*tsbuf)[SQ_TS_LEN], dbk_error *err)
{
    sqlite3_stmt *st = e->st;
    int nts = 0;
    for (int j = 0; j < e->nvars; j++) {
        const dbk_value *v = &params[e->map[j]];
        int idx = j + 1;
        int rc;
        switch (v->type) {
        case DBK_TYPE_NULL:
            rc = sqlite3_bind_null(st, idx);
            break;
        case DBK_TYPE_BOOL:
            rc = sqlite3_bind_int(st, idx, v->u.b ? 1 : 0);
            break;
        case DBK_TYPE_INT64:
            rc = sqlite3_bind_int64(st, idx, v->u.i);
            break;
        case DBK_TYPE_DOUBLE:
            if (isnan(v->u.d)) {
                dbk__err(err, DBK_EINVALID, "parameter $%d is NaN, which SQLite cannot store "
                         "(it would become NULL)", e->map[j] + 1);
                return DBK_EINVALID;
            }
            rc = sqlite3_bind_double(st, idx, v->u.d);
            break;
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
            if (!v->u.bytes.ptr && v->u.bytes.len)
                goto null_bytes;
            if (v->u.bytes.len > (sqlite3_uint64)c->max_length)
                goto too_long;
            rc = sqlite3_bind_text64(st, idx, v->u.bytes.ptr ? v->u.bytes.ptr : "",
                                     v->u.bytes.len, SQLITE_STATIC, SQLITE_UTF8);
            break;
        case DBK_TYPE_BLOB:
            if (!v->u.bytes.ptr && v->u.bytes.len)
                goto null_bytes;
            if (v->u.bytes.len > (sqlite3_uint64)c->max_length)
                goto too_long;
            if (v->u.bytes.len == 0)
                rc = sqlite3_bind_zeroblob(st, idx, 0);
            else
                rc = sqlite3_bind_blob64(st, idx, v->u.bytes.ptr, v->u.bytes.len,
                                         SQLITE_STATIC);
            break;
        case DBK_TYPE_TIMESTAMP: {
            char local[SQ_TS_LEN];
            char *buf = nts < SQ_STACK_TS ? tsbuf[nts] : local;
            if (dbk_timestamp_format(v->u.i, buf, SQ_TS_LEN) != DBK_OK) {
                dbk__err(err, DBK_EINVALID, "parameter $%d: timestamp %lld is outside years "
                         "0001..9999", e->map[j] + 1, (long long)v->u.i);
                return DBK_EINVALID;
            }
            rc = sqlite3_bind_text(st, idx, buf, -1,
                                   nts < SQ_STACK_TS ? SQLITE_STATIC : SQLITE_TRANSIENT);
            nts++;
            break;
        }
        default:
            dbk__err(err, DBK_EMISUSE, "parameter $%d has unknown type %d", e->map[j] + 1,
                     (int)v->type);
            return DBK_EMISUSE;
        }
        if (rc != SQLITE_OK)
            return dbk__sq_fail(c, rc, NULL, err);
        continue;
    null_bytes:
        dbk__err(err, DBK_EMISUSE, "parameter $%d has a NULL pointer and length %zu",
                 e->map[j] + 1, v->u.bytes.len);
        return DBK_EMISUSE;
    too_long:
        /* Checked before binding: SQLite would answer SQLITE_TOOBIG too,
         * but naming the parameter and the limit is the useful part. */
        dbk__err(err, DBK_EINVALID,
                 "%s parameter $%d is %zu bytes; this SQLite database accepts at most %lld "
                 "(SQLITE_LIMIT_LENGTH)", dbk_type_name(v->type), e->map[j] + 1,
                 v->u.bytes.len, (long long)c->max_length);
        dbk__err_hint(err, "store large objects outside the database (a file or object "
                           "store) and keep their path or key in the row");
        return DBK_EINVALID;
    }
    return DBK_OK;
}

/* The statement's column names and their lengths, read from SQLite once
 * per (re)prepare. NULL on out of memory. */
static int entry_names(sq_entry *e)
{
    sqlite3_stmt *st = e->st;
    int reprep = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0);
    if (e->ncols >= 0 && reprep == e->names_reprepare)
        return 0;
    int ncols = sqlite3_column_count(st);
    if (ncols > e->names_cap) {
        void *p = malloc((size_t)ncols * (sizeof *e->names + sizeof *e->lens));
        if (!p)
            return -1;
        free(e->names);
        e->names = p;
        e->lens = (size_t *)(e->names + ncols);
        e->names_cap = ncols;
    } else if (ncols > 0) {
        e->lens = (size_t *)(e->names + e->names_cap);
    }
    for (int i = 0; i < ncols; i++) {
        const char *n = sqlite3_column_name(st, i);
        if (!n) {
            e->ncols = -1;
            return -1; /* only on out of memory */
        }
        e->names[i] = n;
        e->lens[i] = strlen(n);
    }
    e->ncols = ncols;
    e->names_reprepare = reprep;
    return 0;
}

/* An empty result carrying the statement's column names. */
static dbk_result *result_for(sq_entry *e)
{
    if (entry_names(e) != 0)
        return NULL;
    return dbk__result_new(e->ncols, e->names, e->lens);
}

/* Copies the current row of st into r. */
static dbk_rc add_row(dbk_result *r, sqlite3_stmt *st)
{
    struct dbk__cell *row = dbk__result_add_row(r);
    if (!row)
        return DBK_ENOMEM;
    int ncols = r->ncols;
    for (int i = 0; i < ncols; i++) {
        struct dbk__cell *cell = &row[i];
        /* sqlite3_column_value() gives an "unprotected" value: safe here
         * because a connection is used by one thread at a time, and one
         * lookup per cell is cheaper than a column_* call per property. */
        sqlite3_value *v = sqlite3_column_value(st, i);
        switch (sqlite3_value_type(v)) {
        case SQLITE_INTEGER:
            cell->type = DBK_TYPE_INT64;
            cell->v.i = sqlite3_value_int64(v);
            break;
        case SQLITE_FLOAT:
            cell->type = DBK_TYPE_DOUBLE;
            cell->v.d = sqlite3_value_double(v);
            break;
        case SQLITE_TEXT: {
            const unsigned char *p = sqlite3_value_text(v);
            size_t n = (size_t)sqlite3_value_bytes(v);
            if (!p)
                return DBK_ENOMEM;
            if (dbk__result_set_bytes(r, cell, DBK_TYPE_TEXT, p, n) != DBK_OK)
                return DBK_ENOMEM;
            break;
        }
        case SQLITE_BLOB: {
            const void *p = sqlite3_value_blob(v);
            size_t n = (size_t)sqlite3_value_bytes(v);
            if (!p && n)
                return DBK_ENOMEM;
            if (dbk__result_set_bytes(r, cell, DBK_TYPE_BLOB, p, n) != DBK_OK)
                return DBK_ENOMEM;
            break;
        }
        default:
            break; /* NULL: the cell is already zeroed */
        }
    }
    return DBK_OK;
}

dbk_rc dbk__sq_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    sq_conn *c = impl;
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    if (dbk__owner_forked(&c->owner))
        return dbk__owner_error(&c->owner, "SQLite connection", err);
    if (!sql || (nparams && !params))
        return dbk__err(err, DBK_EMISUSE, "sql and params must not be NULL");
    dbk__sq_arm_deadline(c, c->stmt_timeout_ms);

    sq_entry *e = NULL;
    dbk_rc rc = dbk__sq_entry_get(c, sql, &e, err);
    if (rc)
        return rc;
    if (nparams != (size_t)e->need || e->gap) {
        rc = param_count_error(e, nparams, err);
        dbk__sq_entry_release(e);
        return rc;
    }
    char tsbuf[SQ_STACK_TS][SQ_TS_LEN];
    if (e->nvars && (rc = bind_all(c, e, params, tsbuf, err)) != DBK_OK) {
        dbk__sq_entry_release(e);
        return rc;
    }

    sqlite3_stmt *st = e->st;
    int64_t before = e->readonly ? 0 : sqlite3_total_changes64(c->db);
    dbk_result *r = NULL;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (!out)
            continue;
        if (!r && !(r = result_for(e)))
            goto nomem;
        if (add_row(r, st) != DBK_OK)
            goto nomem;
    }
    if (src != SQLITE_DONE) {
        rc = dbk__sq_fail(c, src, NULL, err);
        goto fail;
    }
    int64_t aff = 0;
    if (!e->readonly && sqlite3_total_changes64(c->db) != before)
        aff = sqlite3_changes64(c->db);
    if (out) {
        if (!r && !(r = result_for(e)))
            goto nomem;
        r->affected = aff;
        *out = r;
    }
    if (affected)
        *affected = aff;
    dbk__sq_entry_release(e);
    return DBK_OK;

nomem:
    rc = dbk__err(err, DBK_ENOMEM, "out of memory reading a result");
fail:
    dbk_result_free(r);
    dbk__sq_entry_release(e);
    return rc;
}

dbk_rc dbk__sq_script(void *impl, const char *sql, int timeout_ms, dbk_error *err)
{
    sq_conn *c = impl;
    (void)timeout_ms; /* no network to wait on: the progress handler bounds each statement */
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    if (dbk__owner_forked(&c->owner))
        return dbk__owner_error(&c->owner, "SQLite connection", err);
    if (!sql)
        return dbk__err(err, DBK_EMISUSE, "sql must not be NULL");
    /* Scripts carry DDL and migrations (an index build on a large table):
     * like the PostgreSQL driver, the whole script gets at least
     * SQ_SCRIPT_FLOOR_MS, or statement_timeout when that is longer. */
    dbk__sq_arm_deadline(c, c->stmt_timeout_ms > SQ_SCRIPT_FLOOR_MS ? c->stmt_timeout_ms
                                                                : SQ_SCRIPT_FLOOR_MS);
    const char *p = sql;
    int nth = 0;
    for (;;) {
        p = dbk__sq_skip_blank(p);
        if (!*p)
            return DBK_OK;
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        nth++;
        int rc = sqlite3_prepare_v2(c->db, p, -1, &st, &tail);
        if (rc == SQLITE_OK && st) {
            while ((rc = sqlite3_step(st)) == SQLITE_ROW)
                ;
            if (rc == SQLITE_DONE)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK) {
            /* Name the failing statement: its number and its first line. */
            char where[128];
            size_t n = 0;
            while (p[n] && p[n] != '\n' && n < 60)
                n++;
            snprintf(where, sizeof where, "(statement %d of the script: \"%.*s%s\")", nth,
                     (int)n, p, p[n] && p[n] != '\n' ? "..." : "");
            dbk_rc drc = dbk__sq_fail(c, rc, where, err);
            sqlite3_finalize(st);
            return drc;
        }
        sqlite3_finalize(st);
        if (!tail || tail == p)
            return DBK_OK;
        p = tail;
    }
}

dbk_rc dbk__sq_ping(void *impl, int timeout_ms, dbk_error *err)
{
    (void)timeout_ms; /* a local call: nothing to wait for */
    sq_conn *c = impl;
    int64_t one = 0;
    dbk_result *r = NULL;
    dbk_rc rc = dbk__sq_run(c, "SELECT 1", NULL, 0, &r, NULL, err);
    if (rc == DBK_OK) {
        if (r && r->nrows == 1 && r->cells[0].type == DBK_TYPE_INT64)
            one = r->cells[0].v.i;
        if (one != 1)
            rc = dbk__err(err, DBK_EINTERNAL, "sqlite ping returned an unexpected result");
    }
    dbk_result_free(r);
    return rc;
}

dbk__txstate dbk__sq_txstate(void *impl)
{
    sq_conn *c = impl;
    if (!c || !c->db || dbk__owner_forked(&c->owner))
        return DBK__TX_BROKEN;
    return sqlite3_get_autocommit(c->db) ? DBK__TX_IDLE : DBK__TX_OPEN;
}

/* Connection settings a borrower can change with PRAGMA, in the order they
 * are restored: query_only and writable_schema first, so that nothing after
 * them is refused or let through. Their values as of the end of sq_open
 * (dbkit's own settings applied) become the connection's restore_sql.
 * journal_mode is not among them: it belongs to the database file, which
 * other connections share. case_sensitive_like cannot be read back; its
 * default (off) is restored. */
static const char *const SQ_SESSION_PRAGMAS[] = {
    "query_only",         "writable_schema",        "foreign_keys",
    "defer_foreign_keys", "recursive_triggers",     "reverse_unordered_selects",
    "ignore_check_constraints", "read_uncommitted", "legacy_alter_table",
    "trusted_schema",     "cell_size_check",        "automatic_index",
    "cache_size",         "cache_spill",            "temp_store",
    "synchronous",        "secure_delete",          "wal_autocheckpoint",
    "journal_size_limit", "mmap_size",              "analysis_limit",
    "threads",            "locking_mode",           "fullfsync",
    "checkpoint_fullfsync", NULL};

int dbk__sq_pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size);

/* Builds c->restore_sql from the settings in force now. */
int dbk__sq_restore_sql_build(sq_conn *c)
{
    size_t cap = 4096, n = 0; /* the list above needs about 1 KB */
    char *buf = malloc(cap);
    if (!buf)
        return SQLITE_NOMEM;
    n += (size_t)snprintf(buf, cap, "PRAGMA case_sensitive_like=0;");
    for (const char *const *p = SQ_SESSION_PRAGMAS; *p; p++) {
        char sql[64], val[64];
        snprintf(sql, sizeof sql, "PRAGMA %s", *p);
        int rc = dbk__sq_pragma_text(c->db, sql, val, sizeof val);
        if (rc != SQLITE_OK) {
            free(buf);
            return rc;
        }
        if (!val[0])
            continue; /* not in this build of SQLite */
        for (const char *v = val; *v; v++)
            if (!isalnum((unsigned char)*v) && *v != '-')
                goto next; /* not a plain value: leave it alone */
        if (n + strlen(*p) + strlen(val) + 16 >= cap) {
            free(buf);
            return SQLITE_NOMEM;
        }
        n += (size_t)snprintf(buf + n, cap - n, "PRAGMA %s=%s;", *p, val);
    next:;
    }
    /* Back in locking_mode=normal, a lock kept by exclusive mode goes at
     * the next read of the file. */
    snprintf(buf + n, cap - n, "PRAGMA main.schema_version;");
    c->restore_sql = buf;
    return SQLITE_OK;
}

/* Appends `"name"` (quotes doubled) to a growing statement list. */
static int append_stmt(char **buf, size_t *len, size_t *cap, const char *pre, const char *name)
{
    size_t need = *len + strlen(pre) + 2 * strlen(name) + 8;
    if (need > *cap) {
        size_t ncap = need * 2;
        char *p = realloc(*buf, ncap);
        if (!p)
            return SQLITE_NOMEM;
        *buf = p;
        *cap = ncap;
    }
    char *o = *buf + *len;
    memcpy(o, pre, strlen(pre));
    o += strlen(pre);
    *o++ = '"';
    for (const char *q = name; *q; q++) {
        if (*q == '"')
            *o++ = '"';
        *o++ = *q;
    }
    *o++ = '"';
    *o++ = ';';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return SQLITE_OK;
}

/* Statements that drop every temporary object and detach every attached
 * database (read first, run after: the schema cannot change under a read
 * of it). *out is NULL when there is nothing to undo. */
static int undo_sql(sqlite3 *db, char **out)
{
    *out = NULL;
    size_t len = 0, cap = 0;
    static const char *const reads[] = {
        /* triggers first: a temporary trigger may sit on a main table */
        "SELECT 'DROP TRIGGER IF EXISTS temp.', name FROM temp.sqlite_master "
        "WHERE type = 'trigger' UNION ALL "
        "SELECT 'DROP VIEW IF EXISTS temp.', name FROM temp.sqlite_master WHERE type = 'view' "
        "UNION ALL SELECT 'DROP TABLE IF EXISTS temp.', name FROM temp.sqlite_master "
        "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        "SELECT 'DETACH ', name FROM pragma_database_list WHERE seq > 1"};
    int rc = SQLITE_OK;
    for (size_t i = 0; i < sizeof reads / sizeof reads[0] && rc == SQLITE_OK; i++) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db, reads[i], -1, &st, NULL);
        while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *pre = (const char *)sqlite3_column_text(st, 0);
            const char *name = (const char *)sqlite3_column_text(st, 1);
            rc = pre && name ? append_stmt(out, &len, &cap, pre, name) : SQLITE_OK;
        }
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* Puts the session back as sq_open left it, for the next borrower: rolls
 * back, restores the busy timeout and every setting of SQ_SESSION_PRAGMAS,
 * drops temporary tables, views and triggers, detaches attached databases
 * and forgets last_insert_rowid(). Costs tens of microseconds: the pool
 * calls it only when a statement changed the session, or when asked to. */
dbk_rc dbk__sq_reset(void *impl, dbk_error *err)
{
    sq_conn *c = impl;
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    dbk__sq_arm_deadline(c, c->stmt_timeout_ms);
    int rc;
    if (!sqlite3_get_autocommit(c->db)) {
        /* No statement is left active between calls (each run resets its
         * own), so ROLLBACK cannot be refused for pending reads. */
        rc = sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return dbk__sq_fail(c, rc, "(rolling back for the next borrower)", err);
    }
    sqlite3_busy_timeout(c->db, c->busy_timeout_ms);
    rc = sqlite3_exec(c->db, c->restore_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return dbk__sq_fail(c, rc, "(restoring the session settings for the next borrower)", err);
    char *undo = NULL;
    rc = undo_sql(c->db, &undo);
    if (rc == SQLITE_OK && undo)
        rc = sqlite3_exec(c->db, undo, NULL, NULL, NULL);
    free(undo);
    if (rc != SQLITE_OK)
        return dbk__sq_fail(c, rc, "(dropping temporary objects for the next borrower)", err);
    sqlite3_set_last_insert_rowid(c->db, 0);
    return DBK_OK;
}

/* For tests only (tests/integration/sqlite_test.c declares it too): how
 * many statements the connection keeps prepared. Not part of any interface. */
int dbk__sqlite_cached_statements(const void *impl);
int dbk__sqlite_cached_statements(const void *impl)
{
    const sq_conn *c = impl;
    return c ? c->ncached : -1;
}

const char *dbk__sq_server_version(void *impl)
{
    (void)impl;
    return sqlite3_libversion();
}
