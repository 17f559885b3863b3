/*
 * pool_lent.c - the executor of a lent connection: the dbk_db the pool
 * hands out with a connection. It notes failures that break the connection
 * (so release closes it), marks the connection dirty when a statement may
 * change the session, retries DBK_EBUSY for SQLite autocommit writes and
 * passes writes through the optional SQLite write gate.
 */
#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../core/sqlscan.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_int.h"
#include "pool_impl.h"

/* ---- the SQLite write gate ---- */

static dbk_rc gate_enter(dbk_pool *p, struct slot *s, dbk_error *err)
{
    if (s->gate_held)
        return DBK_OK;
    dbk_rc rc = DBK_OK;
    pthread_mutex_lock(&p->gate_mu);
    if (p->gate_owner) {
        int64_t deadline = dbk__now_ns() + MS(p->gate_timeout_ms);
        struct timespec ts = ns_to_ts(deadline);
        while (p->gate_owner) {
            int w = pthread_cond_timedwait(&p->gate_cv, &p->gate_mu, &ts);
            if (w == ETIMEDOUT && p->gate_owner) {
                rc = dbk__err(err, DBK_EBUSY,
                              "sqlite write lock still held by another pooled connection "
                              "after %d ms",
                              p->gate_timeout_ms);
                dbk__err_hint(err, "keep write transactions short, or raise busy_timeout");
                break;
            }
        }
    }
    if (rc == DBK_OK) {
        p->gate_owner = s;
        s->gate_held = true;
    }
    pthread_mutex_unlock(&p->gate_mu);
    return rc;
}

void dbk__pool_gate_leave(dbk_pool *p, struct slot *s)
{
    if (!s->gate_held)
        return;
    pthread_mutex_lock(&p->gate_mu);
    if (p->gate_owner == s)
        p->gate_owner = NULL;
    s->gate_held = false;
    pthread_cond_signal(&p->gate_cv);
    pthread_mutex_unlock(&p->gate_mu);
}

/* ---- the executor of a lent connection ---- */

static struct slot *slot_of_db(dbk_db *db)
{
    dbk_conn *c = (dbk_conn *)(void *)((char *)db - offsetof(struct dbk_conn, db));
    return c->pool_slot;
}

/* What a failed statement says about its connection and the pool. */
static void note_failure(dbk_pool *p, struct slot *s, dbk_rc rc, const dbk_error *err)
{
    if (rc == DBK_ECONN_LOST) {
        s->broken = true;
        __atomic_add_fetch(&p->suspect_epoch, 1, __ATOMIC_RELAXED);
    } else if (rc == DBK_EREADONLY && p->engine == DBK_ENGINE_POSTGRES) {
        pthread_mutex_lock(&p->mu);
        bool bump = s->gen == p->generation; /* one bump per generation */
        if (bump) {
            p->generation++;
            p->recycles++;
            dbk__pool_wake_worker(p);
        }
        pthread_mutex_unlock(&p->mu);
        if (bump) {
            dbk_error e;
            dbk__err(&e, DBK_EREADONLY,
                     "a write failed because the server is read-only (%s): recycling every "
                     "pooled connection",
                     err && err->message[0] ? err->message : "SQLSTATE 25006");
            dbk__err_hint(&e, "the pool reached a standby (failover?); list every host in "
                              "DATABASE_URL with target_session_attrs=read-write");
            dbk__pool_report_error(p, DBK_LOG_WARN, &e);
        }
    }
}

/* Reads sql once for what it does to the session: marks the connection
 * dirty (reset on release) when it may change it, and behind a
 * transaction-mode pooler (pooler=transaction), where the next statement
 * may run in another server session, refuses it instead of leaking the
 * change into some other client's session. A connection already dirty
 * needs no second look unless the pooler rule applies. */
static dbk_rc inspect_session_change(const dbk_pool *p, struct slot *s, const char *sql,
                                     dbk_error *err)
{
    bool pooler = p->cfg->pooler && p->cfg->pooler[0] == 't';
    if (s->dirty && !pooler)
        return DBK_OK;
    if (!dbk__pool_sql_changes_session(sql, p->engine))
        return DBK_OK;
    if (!pooler) {
        s->dirty = true;
        return DBK_OK;
    }
    dbk__err(err, DBK_EMISUSE,
             "refused behind a transaction-mode pooler (pooler=transaction): the statement "
             "changes the session (SET, RESET, PREPARE, LISTEN, temporary objects, WITH HOLD "
             "cursors, session advisory locks...), and the next transaction may run in another "
             "server session");
    dbk__err_hint(err, "use SET LOCAL or a transaction-level lock inside a transaction, or run "
                       "it on a direct connection to the server");
    return DBK_EMISUSE;
}

static dbk_rc pc_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    dbk_rc rc;

    if ((rc = inspect_session_change(p, s, sql, err)) != DBK_OK)
        return rc;
    if (p->engine == DBK_ENGINE_POSTGRES) {
        rc = s->orig_ops->run(db, sql, params, nparams, out, affected, err);
        if (rc != DBK_OK)
            note_failure(p, s, rc, err);
        return rc;
    }

    /* SQLite: the optional write gate, then bounded retry of busy
     * autocommit statements. A plain BEGIN becomes BEGIN IMMEDIATE: the
     * write lock is taken (and waited for, and retried) while nothing has
     * happened yet, instead of failing with SQLITE_BUSY in the middle of
     * the transaction. */
    bool gated = p->use_gate && !dbk__pool_sql_is_read(sql);
    if (dbk__pool_sql_is_plain_begin(sql))
        sql = "BEGIN IMMEDIATE";
    bool was_idle = c->drv->txstate(c->impl) == DBK__TX_IDLE;
    int64_t deadline = 0;
    int64_t backoff_us = 500;
    for (;;) {
        if (gated && !s->gate_held) {
            rc = gate_enter(p, s, err);
            if (rc != DBK_OK)
                return rc;
        }
        rc = s->orig_ops->run(db, sql, params, nparams, out, affected, err);
        dbk__txstate ts = c->drv->txstate(c->impl);
        if (s->gate_held && ts == DBK__TX_IDLE)
            dbk__pool_gate_leave(p, s);
        if (rc != DBK_EBUSY || !was_idle || ts != DBK__TX_IDLE)
            break;
        int64_t now = dbk__now_ns();
        if (!deadline)
            deadline = now + MS(p->gate_timeout_ms);
        if (now >= deadline)
            break;
        if (out && *out) {
            dbk_result_free(*out);
            *out = NULL;
        }
        int64_t sleep_ns = backoff_us * 1000;
        if (sleep_ns > deadline - now)
            sleep_ns = deadline - now;
        struct timespec req = ns_to_ts(sleep_ns);
        nanosleep(&req, NULL);
        if (backoff_us < 16000)
            backoff_us *= 2;
    }
    if (rc != DBK_OK)
        note_failure(p, s, rc, err);
    return rc;
}

static dbk_rc pc_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    dbk_rc rc;
    if ((rc = inspect_session_change(p, s, sql, err)) != DBK_OK)
        return rc;
    if (p->engine == DBK_ENGINE_POSTGRES) {
        rc = s->orig_ops->script(db, sql, timeout_ms, err);
    } else {
        if (p->use_gate) {
            rc = gate_enter(p, s, err);
            if (rc != DBK_OK)
                return rc;
        }
        rc = s->orig_ops->script(db, sql, timeout_ms, err);
        if (s->gate_held && c->drv->txstate(c->impl) == DBK__TX_IDLE)
            dbk__pool_gate_leave(p, s);
    }
    if (rc != DBK_OK)
        note_failure(p, s, rc, err);
    return rc;
}

static dbk_rc pc_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    return s->orig_ops->pin(db, out, err);
}

static void pc_unpin(dbk_db *db, dbk_conn *conn)
{
    struct slot *s = slot_of_db(db);
    s->orig_ops->unpin(db, conn);
}

/* A batch on a pooled connection: PostgreSQL sends it in one pipeline and
 * the failures are noted as pc_run would (a lost connection is discarded,
 * a read-only server recycles the pool); SQLite runs it statement by
 * statement through pc_run, so the write gate and busy retry apply. */
static dbk_rc pc_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    struct slot *s = slot_of_db(db);
    dbk_pool *p = s->pool;
    dbk_conn *c = s->conn;
    if (p->engine != DBK_ENGINE_POSTGRES)
        return dbk__db_batch_serial(db, items, n, atomic, c->drv->txstate(c->impl) != DBK__TX_IDLE);
    for (size_t i = 0; i < n && !s->dirty; i++)
        if (dbk__pool_sql_changes_session(items[i].sql, p->engine))
            s->dirty = true;
    dbk_rc rc = s->orig_ops->batch(db, items, n, atomic);
    if (rc != DBK_OK) {
        bool lost = false, ro = false;
        for (size_t i = 0; i < n; i++) {
            if (items[i].rc == DBK_ECONN_LOST && !lost) {
                lost = true;
                note_failure(p, s, DBK_ECONN_LOST, items[i].err);
            } else if (items[i].rc == DBK_EREADONLY && !ro) {
                ro = true;
                note_failure(p, s, DBK_EREADONLY, items[i].err);
            }
        }
    }
    return rc;
}

void dbk__pool_lent_pipeline(dbk_conn *c, dbk__batch_item *items, size_t n)
{
    struct slot *s = c->pool_slot;
    dbk_pool *p = s->pool;
    c->drv->pipeline(c->impl, items, n);
    bool lost = false, ro = false;
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc == DBK_ECONN_LOST && !lost) {
            lost = true;
            note_failure(p, s, DBK_ECONN_LOST, items[i].err);
        } else if (items[i].rc == DBK_EREADONLY && !ro) {
            ro = true;
            note_failure(p, s, DBK_EREADONLY, items[i].err);
        }
    }
}

static dbk_rc pc_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err)
{
    struct slot *s = slot_of_db(db);
    dbk_rc rc = s->orig_ops->copy_in(db, sql, fill, ctx, rows, err);
    if (rc != DBK_OK)
        note_failure(s->pool, s, rc, err);
    return rc;
}

const struct dbk__db_ops dbk__pool_conn_ops = {pc_run,   pc_script, pc_pin,
                                                   pc_unpin, pc_batch,  pc_copy_in};
