/*
 * dbk_db: the one handle SQL runs through, and single connections.
 *
 * Every public query call lands here, checks its arguments, dispatches to
 * the executor's ops (a connection, a pool or a transaction) and, only when
 * an observer is installed, reads the monotonic clock around the call and
 * reports the statement. With no observer the cost is one branch.
 *
 * The helpers (query_row, query_int64, query_text) are written once on top
 * of dbk_db_query so that every executor kind gets them for free.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "../driver/driver.h"
#include "db_int.h"

/* ---- the executor of a single connection ---- */

static dbk_rc conn_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                       dbk_result **out, int64_t *affected, dbk_error *err)
{
    dbk_conn *c = db->self;
    return c->drv->run(c->impl, sql, params, nparams, out, affected, err);
}

static dbk_rc conn_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    dbk_conn *c = db->self;
    return c->drv->script(c->impl, sql, timeout_ms, err);
}

static dbk_rc conn_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    (void)err;
    *out = db->self;
    return DBK_OK;
}

static void conn_unpin(dbk_db *db, dbk_conn *conn)
{
    (void)db;
    (void)conn;
}

static dbk_rc conn_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    dbk_conn *c = db->self;
    if (c->drv->batch)
        return c->drv->batch(c->impl, items, n, atomic);
    return dbk__db_batch_serial(db, items, n, atomic, c->drv->txstate(c->impl) != DBK__TX_IDLE);
}

static dbk_rc conn_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                           int64_t *rows, dbk_error *err)
{
    dbk_conn *c = db->self;
    if (!c->drv->copy_in)
        return dbk__err(err, DBK_EMISUSE, "%s has no COPY", c->drv->name);
    return c->drv->copy_in(c->impl, sql, fill, ctx, rows, err);
}

static const struct dbk__db_ops conn_ops = {conn_run,   conn_script, conn_pin,
                                            conn_unpin, conn_batch,  conn_copy_in};

dbk_rc dbk__db_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx, int64_t *rows,
                       dbk_error *err)
{
    if (!db->observer)
        return db->ops->copy_in(db, sql, fill, ctx, rows, err);
    int64_t t0 = dbk__now_ns();
    int64_t n = 0;
    dbk_rc rc = db->ops->copy_in(db, sql, fill, ctx, &n, err);
    dbk_query_event ev = {sql,     0,    dbk__now_ns() - t0, rc ? 0 : n, rc, db->engine, NULL,
                          rc ? err : NULL, 0, 0};
    db->observer(db->observer_ctx, &ev);
    if (rows)
        *rows = n;
    return rc;
}

void dbk__db_init_conn(dbk_db *db, dbk_conn *conn, dbk_engine engine)
{
    memset(db, 0, sizeof *db);
    db->ops = &conn_ops;
    db->self = conn;
    db->engine = engine;
    db->kind = DBK__DB_CONN;
}

dbk_rc dbk_conn_open(const dbk_config *cfg, dbk_conn **out, dbk_error *err)
{
    if (!cfg || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_conn_open: config and out must not be NULL");
    *out = NULL;
    const dbk__driver *drv;
    switch (cfg->engine) {
    case DBK_ENGINE_SQLITE:
        drv = &dbk__driver_sqlite;
        break;
    case DBK_ENGINE_POSTGRES:
        drv = &dbk__driver_postgres;
        break;
    default:
        return dbk__err(err, DBK_ECONFIG, "unknown engine %d in configuration", (int)cfg->engine);
    }
    dbk_conn *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a connection");
    dbk_rc rc = drv->open(cfg, &c->impl, err);
    if (rc != DBK_OK) {
        free(c);
        return rc;
    }
    c->drv = drv;
    dbk__db_init_conn(&c->db, c, cfg->engine);
    *out = c;
    return DBK_OK;
}

void dbk_conn_close(dbk_conn *conn)
{
    if (!conn)
        return;
    conn->drv->close(conn->impl);
    free(conn);
}

dbk_db *dbk_conn_db(dbk_conn *conn)
{
    return conn ? &conn->db : NULL;
}

dbk_rc dbk_conn_ping(dbk_conn *conn, int timeout_ms, dbk_error *err)
{
    if (!conn)
        return dbk__err(err, DBK_EMISUSE, "dbk_conn_ping: connection must not be NULL");
    if (timeout_ms < 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_conn_ping: negative timeout %d", timeout_ms);
    return conn->drv->ping(conn->impl, timeout_ms ? timeout_ms : 1000, err);
}

const char *dbk_conn_server_version(dbk_conn *conn)
{
    return conn ? conn->drv->server_version(conn->impl) : NULL;
}

/* ---- the public calls ---- */

dbk_engine dbk_db_engine(const dbk_db *db)
{
    return db ? db->engine : (dbk_engine)0;
}

void dbk_db_set_observer(dbk_db *db, dbk_observer_fn fn, void *ctx)
{
    if (!db)
        return;
    db->observer = fn;
    db->observer_ctx = ctx;
}

static dbk_rc check_args(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                         dbk_error *err)
{
    if (!db || !db->ops)
        return dbk__err(err, DBK_EMISUSE, "executor must not be NULL");
    if (!sql)
        return dbk__err(err, DBK_EMISUSE, "sql must not be NULL");
    if (nparams && !params)
        return dbk__err(err, DBK_EMISUSE, "%zu parameters announced but params is NULL", nparams);
    if (nparams > 65535)
        return dbk__err(err, DBK_EMISUSE, "%zu parameters exceed the limit of 65535", nparams);
    return DBK_OK;
}

/* Runs one statement through the executor, reporting to the observer. */
static dbk_rc run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                  dbk_result **out, int64_t *affected, dbk_error *err)
{
    dbk_rc rc = check_args(db, sql, params, nparams, err);
    if (rc)
        return rc;
    if (!db->observer)
        return db->ops->run(db, sql, params, nparams, out, affected, err);

    int64_t aff = 0;
    int64_t t0 = dbk__now_ns();
    rc = db->ops->run(db, sql, params, nparams, out, &aff, err);
    dbk_query_event ev = {sql, nparams, dbk__now_ns() - t0, 0, rc, db->engine, params,
                          rc ? err : NULL, 0, 0};
    if (rc == DBK_OK)
        ev.rows = (out && *out && (*out)->nrows) ? (int64_t)(*out)->nrows : aff;
    if (affected)
        *affected = aff;
    db->observer(db->observer_ctx, &ev);
    return rc;
}

dbk_rc dbk_db_query(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                    dbk_result **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_db_query: out must not be NULL");
    *out = NULL;
    return run(db, sql, params, nparams, out, NULL, err);
}

dbk_rc dbk_db_exec(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                   int64_t *affected, dbk_error *err)
{
    if (affected)
        *affected = 0;
    return run(db, sql, params, nparams, NULL, affected, err);
}

dbk_rc dbk_db_query_row(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                        dbk_result **out, dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, sql, params, nparams, &r, err);
    if (rc)
        return rc;
    if (r->nrows != 1) {
        size_t n = r->nrows;
        dbk_result_free(r);
        if (n == 0)
            return dbk__err(err, DBK_ENOT_FOUND, "query returned no row");
        return dbk__err(err, DBK_EINVALID, "query returned %zu rows, expected one", n);
    }
    if (r->ncols < 1) {
        dbk_result_free(r);
        return dbk__err(err, DBK_EMISUSE, "statement returns no columns");
    }
    *out = r;
    return DBK_OK;
}

dbk_rc dbk_db_query_int64(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                          int64_t *out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_db_query_int64: out must not be NULL");
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query_row(db, sql, params, nparams, &r, err);
    if (rc == DBK_OK)
        rc = dbk_result_get_int64(r, 0, 0, out, err);
    dbk_result_free(r);
    return rc;
}

dbk_rc dbk_db_query_text(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                         char *buf, size_t buflen, bool *is_null, dbk_error *err)
{
    if (!buf || buflen == 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_db_query_text: buffer must not be empty");
    buf[0] = '\0';
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query_row(db, sql, params, nparams, &r, err);
    if (rc)
        return rc;
    const char *s;
    size_t len;
    rc = dbk_result_get_text(r, 0, 0, &s, &len, err);
    if (rc == DBK_OK) {
        if (is_null)
            *is_null = s == NULL;
        if (s && len >= buflen)
            rc = dbk__err(err, DBK_EINVALID, "value of %zu bytes does not fit a %zu-byte buffer",
                          len, buflen);
        else if (s)
            memcpy(buf, s, len + 1);
    }
    dbk_result_free(r);
    return rc;
}

dbk_rc dbk_db_exec_script(dbk_db *db, const char *sql, dbk_error *err)
{
    return dbk__db_exec_script_within(db, sql, 0, err);
}

dbk_rc dbk__db_exec_script_within(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    dbk_rc rc = check_args(db, sql, NULL, 0, err);
    if (rc)
        return rc;
    if (!db->observer)
        return db->ops->script(db, sql, timeout_ms, err);
    int64_t t0 = dbk__now_ns();
    rc = db->ops->script(db, sql, timeout_ms, err);
    dbk_query_event ev = {sql, 0, dbk__now_ns() - t0, 0, rc, db->engine, NULL, rc ? err : NULL, 0, 0};
    db->observer(db->observer_ctx, &ev);
    return rc;
}
