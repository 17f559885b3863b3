/*
 * Transactions as closures (see dbkit/tx.h).
 *
 * dbk_tx_run() pins one connection from the executor it is given
 * (ops->pin: a pool checks one out, a connection gives itself), opens a
 * transaction on it and hands the closure a transaction executor: a dbk_db
 * of kind DBK__DB_TX, living on this function's stack, whose ops run every
 * statement on the pinned connection through the driver. Everything the
 * executors of one transaction share - the connection, the deadline, the
 * after-commit hooks, the first retryable error - lives in a `tx_root`, also
 * on the outermost call's stack; each nesting level adds a `struct dbk__tx`
 * that points at it, so a nested dbk_tx_run() costs one SAVEPOINT
 * round trip and no allocation.
 *
 * Retrying is the outermost call's job only, and it re-runs the whole
 * closure: a serialization failure or deadlock invalidates everything the
 * transaction read, so no smaller unit can be repeated safely. To make that
 * hold even when user code swallows the error, the first retryable error of
 * a statement "dooms" the attempt: every later statement fails with it, and
 * the outermost call rolls back and retries whatever fn returned. Waits
 * between attempts use exponential backoff with full jitter (uniform in
 * [0, min(cap, base * 2^(n-1))]), drawn from a per-thread xorshift
 * generator, so that colliding transactions spread out instead of
 * colliding again in lock step.
 *
 * The transaction timeout is enforced on both sides: the client checks the
 * deadline before every statement and before COMMIT, and on PostgreSQL the
 * BEGIN round trip also sets statement_timeout (lowered, never raised) and
 * idle_in_transaction_session_timeout with SET LOCAL, so a server never
 * holds the transaction's locks much past the deadline even if the client
 * stalls.
 *
 * Every statement, the closure's and the control statements (BEGIN,
 * COMMIT, ROLLBACK, SAVEPOINT), runs through the pinned connection's own
 * executor, so a pool sees each one as it sees any other statement; each
 * costs one round trip on PostgreSQL, like a hand-written transaction.
 * Control statements are reported to the parent executor's observer when
 * one is installed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dbkit/tx.h"
#include "../core/internal.h"
#include "../core/rand.h"
#include "../db/db_int.h"
#include "../driver/dialect.h"
#include "../driver/driver.h"

/* One after-commit hook. */
struct tx_hook {
    dbk_tx_hook_fn fn;
    void *ctx;
    void (*release)(void *ctx);
};

/* How long after the client's deadline the server ends an idle transaction. */
#define TX_SERVER_GRACE_MS 1000

/* Hooks kept inline before the first allocation. */
#define TX_INLINE_HOOKS 4

/* What the executors of one transaction attempt share. */
typedef struct tx_root {
    dbk_db *parent;          /* executor the connection was pinned from */
    dbk_conn *conn;          /* the pinned connection */
    dbk_engine engine;
    int timeout_ms;          /* > 0, or 0 for none */
    int64_t deadline_ns;     /* 0: none */
    bool timed_out;          /* the deadline passed during the attempt */
    bool server_deadline;    /* BEGIN set the server's statement_timeout to
                                timeout_ms: a statement-timeout cancel
                                (57014) is this transaction's timeout */
    const char *read_only_end; /* what undoes a read-only BEGIN's session
                                  change (the dialect's read_only_end_sql,
                                  SQLite's PRAGMA query_only), NULL: nothing */
    bool direct;             /* control statements bypass the connection's
                                executor (a read-only transaction that
                                takes no write lock, see ctl_exec) */
    bool retry_lost;         /* a lost connection before COMMIT is retried: the
                                executor gives a fresh connection per pin
                                (a pool), not the same dead one */
    dbk_rc doomed_rc;        /* first retryable statement error, or OK */
    dbk_error doomed_err;
    dbk_rc stmt_rc;          /* last failed statement, for "aborted" reports */
    dbk_error stmt_err;
    struct dbk__tx *top;     /* the outermost executor: in outermost()'s frame,
                                so still readable (finished) while hooks run */
    struct tx_hook inline_hooks[TX_INLINE_HOOKS];
    struct tx_hook *hooks;   /* inline_hooks or heap */
    size_t nhooks;
    size_t cap_hooks;
} tx_root;

/* One nesting level: the executor handed to fn. */
struct dbk__tx {
    dbk_db db;               /* kind DBK__DB_TX, self = this */
    tx_root *root;
    int depth;               /* 0 outermost */
    bool finished;           /* fn returned: the executor is dead */
};

/* ---------------------------------------------------------------------- */
/* Random numbers and sleeping                                            */
/* ---------------------------------------------------------------------- */

static _Thread_local uint64_t tls_rng;

/* A xorshift64* stream per thread (core/rand.h), seeded from the
 * process-wide generator, so threads started together draw different
 * sequences. */
static uint64_t rng_next(void)
{
    return dbk__rand_next(&tls_rng);
}

/* Uniform in [0, max] (max >= 0). */
static int rng_uniform(int max)
{
    if (max <= 0)
        return 0;
    return (int)(rng_next() % ((uint64_t)max + 1));
}

static void sleep_ms(int ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---------------------------------------------------------------------- */
/* Internal statements                                                    */
/* ---------------------------------------------------------------------- */

/*
 * One control statement. It normally goes through the pinned connection's
 * own executor, like the closure's statements, so that a pool sees it (a
 * connection lost during COMMIT is marked broken; on SQLite the pool's
 * optional write gate is taken by BEGIN IMMEDIATE and left after COMMIT).
 * The control statements of a read-only SQLite transaction go straight to
 * the driver (`direct`): it takes no write lock, so it must not queue on
 * or hold the pool's write gate either. A single statement goes through
 * run() (drivers cache its preparation), several through script() (one
 * round trip).
 */
static dbk_rc ctl_exec(dbk_conn *c, const char *sql, bool direct, dbk_error *err)
{
    bool multi = strchr(sql, ';') != NULL;
    if (direct)
        return multi ? dbk__conn_script(c, sql, 0, err)
                     : dbk__conn_run(c, sql, NULL, 0, NULL, NULL, err);
    return multi ? c->db.ops->script(&c->db, sql, 0, err)
                 : c->db.ops->run(&c->db, sql, NULL, 0, NULL, NULL, err);
}

/* Runs a control statement (BEGIN, COMMIT, ...) on the pinned connection,
 * reporting it to the parent's observer. */
static dbk_rc ctl_as(tx_root *r, const char *sql, bool direct, dbk_error *err)
{
    dbk_conn *c = r->conn;
    dbk_db *p = r->parent;
    if (!p->observer)
        return ctl_exec(c, sql, direct, err);
    int64_t t0 = dbk__now_ns();
    dbk_rc rc = ctl_exec(c, sql, direct, err);
    dbk_query_event ev = {sql, 0, dbk__now_ns() - t0, 0, rc, r->engine, NULL, rc ? err : NULL, 0, 0};
    p->observer(p->observer_ctx, &ev);
    return rc;
}

static dbk_rc ctl(tx_root *r, const char *sql, dbk_error *err)
{
    return ctl_as(r, sql, r->direct, err);
}

static dbk__txstate txstate(tx_root *r)
{
    return dbk__conn_txstate(r->conn);
}

/* ---------------------------------------------------------------------- */
/* Hooks                                                                  */
/* ---------------------------------------------------------------------- */

static void hooks_discard_from(tx_root *r, size_t from)
{
    /* Release newest first: a later hook's context may refer to an
     * earlier one's. */
    while (r->nhooks > from) {
        struct tx_hook *h = &r->hooks[--r->nhooks];
        if (h->release)
            h->release(h->ctx);
    }
}

static void hooks_free(tx_root *r)
{
    if (r->hooks != r->inline_hooks)
        free(r->hooks);
    r->hooks = r->inline_hooks;
    r->nhooks = 0;
    r->cap_hooks = TX_INLINE_HOOKS;
}

/* ---------------------------------------------------------------------- */
/* The transaction executor                                               */
/* ---------------------------------------------------------------------- */

static dbk_rc finished_err(dbk_error *err)
{
    dbk__err(err, DBK_EMISUSE, "transaction executor used after its closure returned");
    dbk__err_hint(err, "a transaction's dbk_db is valid only while its closure runs; "
                       "run later work on the pool or connection instead");
    return DBK_EMISUSE;
}

static dbk_rc timeout_err(tx_root *r, dbk_error *err)
{
    r->timed_out = true;
    dbk__err(err, DBK_ETIMEOUT, "transaction exceeded its timeout of %d ms", r->timeout_ms);
    dbk__err_hint(err, "the transaction was rolled back; keep slow work (network calls, "
                       "large reads) out of the closure or raise dbk_tx_opts.timeout_ms");
    return DBK_ETIMEOUT;
}

static void copy_err(dbk_error *dst, const dbk_error *src)
{
    if (dst && src && dst != src)
        memcpy(dst, src, sizeof *dst);
}

/* Before a statement: dead executor, doomed attempt, passed deadline. */
static dbk_rc tx_check(struct dbk__tx *t, dbk_error *err)
{
    if (t->finished)
        return finished_err(err);
    tx_root *r = t->root;
    if (r->doomed_rc) {
        copy_err(err, &r->doomed_err);
        return r->doomed_rc;
    }
    if (r->timed_out || (r->deadline_ns && dbk__now_ns() >= r->deadline_ns))
        return timeout_err(r, err);
    return DBK_OK;
}

/* Whether an attempt that failed with rc may run again: a serialization
 * failure, deadlock or busy database; or, when the executor hands out a
 * fresh connection per pin, a connection lost (or a server shut down,
 * 57P01/57P02) before COMMIT was sent: the server rolled the transaction
 * back. Losses during COMMIT never come here (DBK_ECOMMIT_UNKNOWN). */
static bool may_retry(const tx_root *r, dbk_rc rc)
{
    return dbk_rc_is_retryable(rc) || (r->retry_lost && rc == DBK_ECONN_LOST);
}

/* After a failed statement: remember it; a retryable error dooms the
 * attempt; an error caused by the server enforcing our timeout is
 * reported as the transaction timeout. */
static dbk_rc tx_failed(tx_root *r, dbk_rc rc, dbk_error *err)
{
    /* The server's timer is not the client's clock: its cancel can arrive
     * a moment before the client's deadline (seen in CI), and is still the
     * transaction's timeout when BEGIN set it. */
    bool server_said = r->server_deadline && rc == DBK_ETIMEOUT &&
                       strcmp(err->sqlstate, "57014") == 0;
    if (r->deadline_ns &&
        (server_said || (dbk__now_ns() >= r->deadline_ns &&
                         (rc == DBK_ETIMEOUT || rc == DBK_ECANCELLED || rc == DBK_ECONN_LOST)))) {
        char sqlstate[sizeof err->sqlstate];
        dbk__strlcpy(sqlstate, err->sqlstate, sizeof sqlstate);
        rc = timeout_err(r, err);
        dbk__strlcpy(err->sqlstate, sqlstate, sizeof err->sqlstate);
    } else if (may_retry(r, rc) && r->doomed_rc == DBK_OK) {
        r->doomed_rc = rc;
        copy_err(&r->doomed_err, err);
    }
    r->stmt_rc = rc;
    copy_err(&r->stmt_err, err);
    return rc;
}

static dbk_rc tx_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct dbk__tx *t = db->self;
    dbk_error local;
    if (!err)
        err = &local;
    dbk_rc rc = tx_check(t, err);
    if (rc)
        return rc;
    dbk_conn *c = t->root->conn;
    rc = c->db.ops->run(&c->db, sql, params, nparams, out, affected, err);
    if (rc)
        return tx_failed(t->root, rc, err);
    return DBK_OK;
}

static dbk_rc tx_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    struct dbk__tx *t = db->self;
    dbk_error local;
    if (!err)
        err = &local;
    dbk_rc rc = tx_check(t, err);
    if (rc)
        return rc;
    dbk_conn *c = t->root->conn;
    rc = c->db.ops->script(&c->db, sql, timeout_ms, err);
    if (rc)
        return tx_failed(t->root, rc, err);
    return DBK_OK;
}

/* A unit of work inside a transaction runs on the transaction's connection. */
static dbk_rc tx_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    struct dbk__tx *t = db->self;
    if (t->finished)
        return finished_err(err);
    *out = t->root->conn;
    return DBK_OK;
}

static void tx_unpin(dbk_db *db, dbk_conn *conn)
{
    (void)db;
    (void)conn;
}

/* A batch inside the transaction: on its connection, and a failure counts
 * for the transaction as a failed statement would (a retryable one dooms
 * the attempt). */
static dbk_rc tx_batch(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic)
{
    struct dbk__tx *t = db->self;
    dbk_error e;
    dbk_rc rc = tx_check(t, &e);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], rc, &e);
        return rc;
    }
    dbk_conn *c = t->root->conn;
    rc = c->db.ops->batch(&c->db, items, n, atomic);
    if (rc == DBK_OK)
        return DBK_OK;
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc == DBK_OK || items[i].rc == DBK_ENOT_RUN)
            continue;
        if (items[i].err) {
            rc = tx_failed(t->root, items[i].rc, items[i].err);
            items[i].rc = rc;
        } else {
            dbk__err(&e, items[i].rc, "%s", dbk_strerror(items[i].rc));
            rc = tx_failed(t->root, items[i].rc, &e);
        }
        break;
    }
    return rc;
}

static dbk_rc tx_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err)
{
    struct dbk__tx *t = db->self;
    dbk_error local;
    if (!err)
        err = &local;
    dbk_rc rc = tx_check(t, err);
    if (rc)
        return rc;
    dbk_conn *c = t->root->conn;
    rc = c->db.ops->copy_in(&c->db, sql, fill, ctx, rows, err);
    if (rc)
        return tx_failed(t->root, rc, err);
    return DBK_OK;
}

static bool tx_in_tx(dbk_db *db)
{
    (void)db;
    return true;
}

static const struct dbk__db_ops tx_ops = {
    .run = tx_run,     .script = tx_script,   .pin = tx_pin,     .unpin = tx_unpin,
    .batch = tx_batch, .copy_in = tx_copy_in, .in_tx = tx_in_tx};

static void tx_init(struct dbk__tx *t, tx_root *r, const dbk_db *parent, int depth)
{
    memset(&t->db, 0, sizeof t->db);
    t->db.ops = &tx_ops;
    t->db.self = t;
    t->db.engine = r->engine;
    t->db.kind = DBK__DB_TX;
    t->db.observer = parent->observer;
    t->db.observer_ctx = parent->observer_ctx;
    t->root = r;
    t->depth = depth;
    t->finished = false;
}

/* ---------------------------------------------------------------------- */
/* Options                                                                */
/* ---------------------------------------------------------------------- */

typedef struct tx_conf {
    dbk_isolation isolation;
    bool read_only;
    bool deferrable;
    int max_attempts;
    int max_elapsed_ms;
    int base_backoff_ms;
    int max_backoff_ms;
    int timeout_ms; /* 0: none */
    dbk_tx_retry_fn on_retry;
    void *on_retry_ctx;
} tx_conf;

static dbk_rc resolve_opts(const dbk_tx_opts *o, tx_conf *c, dbk_error *err)
{
    static const dbk_tx_opts zero;
    if (!o)
        o = &zero;
    if ((int)o->isolation < DBK_ISOLATION_DEFAULT || (int)o->isolation > DBK_ISOLATION_SERIALIZABLE)
        return dbk__err(err, DBK_EMISUSE, "dbk_tx_run: unknown isolation level %d",
                        (int)o->isolation);
    if (o->max_attempts < 0 || o->max_elapsed_ms < 0 || o->base_backoff_ms < 0 ||
        o->max_backoff_ms < 0)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_tx_run: negative retry option (max_attempts %d, "
                        "max_elapsed_ms %d, base_backoff_ms %d, max_backoff_ms %d)",
                        o->max_attempts, o->max_elapsed_ms, o->base_backoff_ms,
                        o->max_backoff_ms);
    if (o->timeout_ms < 0 && o->timeout_ms != DBK_TX_NO_TIMEOUT)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_tx_run: timeout_ms %d is negative (use DBK_TX_NO_TIMEOUT "
                        "for none)",
                        o->timeout_ms);
    c->isolation = o->isolation;
    c->read_only = o->read_only;
    c->deferrable = o->deferrable;
    c->max_attempts = o->max_attempts ? o->max_attempts : DBK_TX_DEFAULT_MAX_ATTEMPTS;
    c->max_elapsed_ms = o->max_elapsed_ms ? o->max_elapsed_ms : DBK_TX_DEFAULT_MAX_ELAPSED_MS;
    c->base_backoff_ms = o->base_backoff_ms ? o->base_backoff_ms : DBK_TX_DEFAULT_BASE_BACKOFF_MS;
    c->max_backoff_ms = o->max_backoff_ms ? o->max_backoff_ms : DBK_TX_DEFAULT_MAX_BACKOFF_MS;
    if (c->max_backoff_ms < c->base_backoff_ms)
        c->max_backoff_ms = c->base_backoff_ms;
    c->timeout_ms = o->timeout_ms == DBK_TX_NO_TIMEOUT ? 0
                    : o->timeout_ms                    ? o->timeout_ms
                                                       : DBK_TX_DEFAULT_TIMEOUT_MS;
    c->on_retry = o->on_retry;
    c->on_retry_ctx = o->on_retry_ctx;
    return DBK_OK;
}

/* What the BEGIN round trip asks for (the engine's dialect writes it).
 * `stmt_timeout_ms` is the statement timeout the session was configured
 * with (0: none). */
static dbk__begin_opts begin_opts(const tx_conf *c, int stmt_timeout_ms)
{
    return (dbk__begin_opts){c->isolation, c->read_only,     c->deferrable,
                             c->timeout_ms, stmt_timeout_ms, TX_SERVER_GRACE_MS};
}

/* ---------------------------------------------------------------------- */
/* Nested: savepoints                                                     */
/* ---------------------------------------------------------------------- */

static dbk_rc nested(struct dbk__tx *outer, dbk_tx_fn fn, void *ctx, dbk_error *err)
{
    tx_root *r = outer->root;
    dbk_error local;
    if (!err)
        err = &local;
    dbk_rc rc = tx_check(outer, err);
    if (rc)
        return rc;

    char sp[32], sql[128];
    /* Named by depth: siblings reuse a name only after the previous one
     * was released or rolled back, and the drivers' statement caches see
     * a handful of texts rather than one per savepoint. */
    const dbk__dialect *dia = dbk__dialect_of(r->engine);
    snprintf(sp, sizeof sp, "dbk_sp_%d", outer->depth + 1);
    dia->savepoint_sql(DBK__SP_SET, sp, sql, sizeof sql);
    rc = ctl(r, sql, err);
    if (rc)
        return tx_failed(r, rc, err);

    size_t hooks_mark = r->nhooks;
    struct dbk__tx inner;
    tx_init(&inner, r, &outer->db, outer->depth + 1);
    dbk_error_clear(err);
    rc = fn(&inner.db, ctx, err);
    inner.finished = true;

    if (may_retry(r, rc) && r->doomed_rc == DBK_OK) {
        /* Only the outermost transaction retries, and it must do so even
         * if the outer closure swallows this code. */
        r->doomed_rc = rc;
        copy_err(&r->doomed_err, err);
    }

    if (rc == DBK_OK && r->doomed_rc) {
        /* fn swallowed a retryable error: the outermost re-runs it all. */
        copy_err(err, &r->doomed_err);
        return r->doomed_rc;
    }
    if (rc == DBK_OK && r->timed_out)
        return timeout_err(r, err);
    if (rc == DBK_OK && txstate(r) == DBK__TX_FAILED) {
        /* A statement failed and fn carried on: the savepoint's work is
         * void. Report that statement's error. */
        rc = r->stmt_rc ? r->stmt_rc : DBK_ESQL;
        if (r->stmt_rc)
            copy_err(err, &r->stmt_err);
        else
            dbk__err(err, rc, "a statement failed inside the savepoint");
    }
    if (rc == DBK_OK) {
        dia->savepoint_sql(DBK__SP_RELEASE, sp, sql, sizeof sql);
        rc = ctl(r, sql, err);
        if (rc == DBK_OK)
            return DBK_OK;
        rc = tx_failed(r, rc, err);
        /* fall through: roll back to the savepoint, keep the RELEASE error */
    }
    hooks_discard_from(r, hooks_mark);
    if (r->doomed_rc || r->timed_out)
        return rc; /* the outermost rolls everything back anyway */

    dbk_error rb;
    dia->savepoint_sql(DBK__SP_ROLLBACK, sp, sql, sizeof sql);
    dbk_rc rrc = ctl(r, sql, &rb);
    if (rrc) {
        /* The outer transaction cannot continue: doom it with this error
         * unless it is already doomed, but keep fn's error for the caller. */
        tx_failed(r, rrc, &rb);
        if (!dbk_rc_is_retryable(rrc) && r->doomed_rc == DBK_OK) {
            r->doomed_rc = rrc;
            copy_err(&r->doomed_err, &rb);
        }
        dbk__log(DBK_LOG_WARN, "rollback to savepoint failed: %s", rb.message);
    }
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Outermost: BEGIN ... COMMIT with retries                               */
/* ---------------------------------------------------------------------- */

/* Outcome of one attempt. */
enum attempt_end { END_DONE, END_RETRY };

/* Ends the transaction with ROLLBACK when one is still open, and puts the
 * session back (query_only). Failures are logged, not reported: the
 * caller reports what made it roll back. When the connection could not be
 * brought back to idle, it asks the driver to reset it; the pool discards
 * connections that are still not idle when given back. */
static void rollback(tx_root *r)
{
    dbk_error rb;
    dbk__txstate st = txstate(r);
    if (st == DBK__TX_OPEN || st == DBK__TX_FAILED) {
        if (ctl(r, "ROLLBACK", &rb) != DBK_OK)
            dbk__log(DBK_LOG_WARN, "rollback failed: %s", rb.message);
    }
    if (r->read_only_end) {
        const char *end_sql = r->read_only_end;
        r->read_only_end = NULL;
        if (ctl(r, end_sql, &rb) != DBK_OK)
            dbk__log(DBK_LOG_WARN, "could not leave query_only mode: %s", rb.message);
    }
    st = txstate(r);
    if (st == DBK__TX_OPEN || st == DBK__TX_FAILED) {
        dbk_conn *c = r->conn;
        if (dbk__conn_reset(c, &rb) != DBK_OK)
            dbk__log(DBK_LOG_WARN, "could not reset the connection after a failed rollback: %s",
                     rb.message);
    }
}

/*
 * One attempt on a pinned connection. Returns the attempt's code, with
 * *end saying whether the caller should retry (the code is then the
 * retryable error, in *err).
 */
static dbk_rc attempt(tx_root *r, const tx_conf *cf, dbk_tx_fn fn, void *ctx, dbk_error *err,
                      enum attempt_end *end)
{
    *end = END_DONE;
    char sql[512];
    dbk_conn *c = r->conn;
    dbk__begin_opts bo = begin_opts(cf, dbk__conn_statement_timeout_ms(c));
    const dbk__dialect *dia = dbk__dialect_of(r->engine);
    dia->begin_sql(&bo, sql, sizeof sql);
    if (cf->timeout_ms > 0)
        r->deadline_ns = dbk__now_ns() + (int64_t)cf->timeout_ms * 1000000LL;
    r->server_deadline = r->engine == DBK_ENGINE_POSTGRES && dbk__begin_bounds_statements(&bo);
    r->direct = dia->read_only_unlocked && cf->read_only;
    dbk_rc rc = ctl(r, sql, err);
    if (rc) {
        rollback(r);
        if (may_retry(r, rc))
            *end = END_RETRY;
        return rc;
    }
    r->read_only_end = cf->read_only ? dia->read_only_end_sql : NULL;

    struct dbk__tx *t = r->top;
    tx_init(t, r, r->parent, 0);
    dbk_error_clear(err);
    rc = fn(&t->db, ctx, err);
    t->finished = true;

    if (r->doomed_rc) {
        /* A retryable error happened, whatever fn made of it. */
        if (rc == DBK_OK || !may_retry(r, rc)) {
            rc = r->doomed_rc;
            copy_err(err, &r->doomed_err);
        }
    } else if (r->timed_out || (rc == DBK_OK && r->deadline_ns && dbk__now_ns() >= r->deadline_ns)) {
        rc = timeout_err(r, err);
    } else if (rc == DBK_OK && txstate(r) != DBK__TX_OPEN) {
        /* fn carried on after a statement aborted the transaction (or the
         * engine ended it on its own): it cannot commit. */
        rc = r->stmt_rc ? r->stmt_rc : DBK_ESQL;
        if (r->stmt_rc) {
            copy_err(err, &r->stmt_err);
        } else {
            dbk__err(err, rc, "the transaction was aborted before COMMIT");
        }
    }
    if (rc) {
        rollback(r);
        if (may_retry(r, rc))
            *end = END_RETRY;
        return rc;
    }

    rc = ctl(r, "COMMIT", err);
    /* Lost connection, or the driver gave up waiting and closed it (its
     * client deadline): the server may have committed or not. An error
     * the server itself reported on a live connection is a known outcome. */
    if (rc == DBK_ECONN_LOST || rc == DBK_ECOMMIT_UNKNOWN ||
        (rc != DBK_OK && txstate(r) == DBK__TX_BROKEN)) {
        char msg[DBK_ERROR_MESSAGE_MAX];
        dbk__strlcpy(msg, err->message, sizeof msg);
        dbk__err(err, DBK_ECOMMIT_UNKNOWN,
                 "the connection failed while COMMIT was in flight; the transaction may or "
                 "may not have committed: %s",
                 msg);
        dbk__err_hint(err, "do not blindly re-run it: check whether its effects are there, or "
                           "make it idempotent with a unique request key (see "
                           "docs/transactions.md)");
        return DBK_ECOMMIT_UNKNOWN;
    }
    if (rc) {
        /* PostgreSQL ends the transaction when COMMIT fails (a deferred
         * constraint, a serialization failure at commit); SQLite keeps it
         * open on SQLITE_BUSY. Either way nothing was committed. */
        rollback(r);
        if (may_retry(r, rc))
            *end = END_RETRY;
        return rc;
    }
    if (r->read_only_end)
        rollback(r); /* no transaction left: only leaves query_only mode */
    return DBK_OK;
}

static void run_hooks(tx_root *r)
{
    for (size_t i = 0; i < r->nhooks; i++) {
        struct tx_hook *h = &r->hooks[i];
        h->fn(h->ctx);
        if (h->release)
            h->release(h->ctx);
    }
    r->nhooks = 0;
}

static dbk_rc exhausted(dbk_error *err, const dbk_error *last, dbk_rc last_rc, int attempts,
                        int64_t elapsed_ms)
{
    char sqlstate[sizeof last->sqlstate];
    dbk__strlcpy(sqlstate, last->sqlstate, sizeof sqlstate);
    char msg[DBK_ERROR_MESSAGE_MAX];
    dbk__strlcpy(msg, last->message, sizeof msg);
    dbk__err(err, DBK_ERETRY_EXHAUSTED,
             "transaction gave up after %d attempt%s in %lld ms; last error (%s): %s", attempts,
             attempts == 1 ? "" : "s", (long long)elapsed_ms, dbk_rc_name(last_rc), msg);
    dbk__strlcpy(err->sqlstate, sqlstate, sizeof err->sqlstate);
    dbk__err_hint(err, "the transaction kept conflicting with concurrent ones: touch rows in a "
                       "consistent order, keep transactions short, or raise "
                       "dbk_tx_opts.max_attempts / max_elapsed_ms");
    return DBK_ERETRY_EXHAUSTED;
}

/* The budget ran out while the server stayed unreachable: the caller gets
 * that error (a service answers 503 to it), saying how long it tried, not
 * DBK_ERETRY_EXHAUSTED (which means conflicts with other transactions). */
static dbk_rc still_unreachable(dbk_error *err, dbk_rc rc, int attempts, int64_t elapsed_ms)
{
    char msg[DBK_ERROR_MESSAGE_MAX];
    dbk__strlcpy(msg, err->message, sizeof msg);
    char sqlstate[sizeof err->sqlstate];
    dbk__strlcpy(sqlstate, err->sqlstate, sizeof sqlstate);
    dbk__err(err, rc, "%s (transaction tried %d attempt%s in %lld ms)", msg, attempts,
             attempts == 1 ? "" : "s", (long long)elapsed_ms);
    dbk__strlcpy(err->sqlstate, sqlstate, sizeof err->sqlstate);
    dbk__err_hint(err, "the server stayed unreachable for the transaction's whole retry budget "
                       "(dbk_tx_opts.max_elapsed_ms); during a failover, give it longer");
    return rc;
}

static dbk_rc outermost(dbk_db *db, dbk_tx_fn fn, void *ctx, const tx_conf *cf, dbk_error *uerr)
{
    dbk_error local;
    dbk_error *err = uerr ? uerr : &local;
    int64_t start = dbk__now_ns();
    int64_t budget_end = start + (int64_t)cf->max_elapsed_ms * 1000000LL;

    tx_root r;
    struct dbk__tx top;
    memset(&r, 0, sizeof r);
    memset(&top, 0, sizeof top);
    top.finished = true;
    r.top = &top;
    r.parent = db;
    r.engine = db->engine;
    r.timeout_ms = cf->timeout_ms;
    r.hooks = r.inline_hooks;
    r.cap_hooks = TX_INLINE_HOOKS;
    r.retry_lost = dbk__db_pins_fresh(db);

    for (int n = 1;; n++) {
        dbk_conn *conn = NULL;
        dbk_rc rc = db->ops->pin(db, &conn, err);
        if (rc && !(r.retry_lost && rc == DBK_EUNAVAILABLE))
            return rc; /* nothing pinned, no hooks yet */
        enum attempt_end end = END_RETRY;
        if (rc)
            goto retry; /* no server to connect to (a failover under way): nothing was sent */
        r.conn = conn;
        r.engine = db->engine;
        dbk__txstate st = txstate(&r);
        if (st == DBK__TX_OPEN || st == DBK__TX_FAILED) {
            db->ops->unpin(db, conn);
            hooks_free(&r);
            dbk__err(err, DBK_EMISUSE, "dbk_tx_run: the connection is already inside a "
                                       "transaction");
            dbk__err_hint(err, "to nest, pass the transaction's own dbk_db (the one the closure "
                               "received): that opens a savepoint");
            return DBK_EMISUSE;
        }
        r.deadline_ns = 0;
        r.timed_out = false;
        r.server_deadline = false;
        r.read_only_end = NULL;
        r.doomed_rc = DBK_OK;
        r.stmt_rc = DBK_OK;

        rc = attempt(&r, cf, fn, ctx, err, &end);
        db->ops->unpin(db, conn);
        r.conn = NULL;

        if (rc == DBK_OK) {
            run_hooks(&r);
            hooks_free(&r);
            return DBK_OK;
        }
        hooks_discard_from(&r, 0);
    retry:
        if (end != END_RETRY) {
            hooks_free(&r);
            return rc;
        }

        int64_t now = dbk__now_ns();
        int64_t elapsed_ms = (now - start) / 1000000LL;
        if (cf->max_attempts == 1) {
            hooks_free(&r);
            return rc; /* retries switched off: the error as it came */
        }
        /* An unreachable server (a failover under way) is waited out for
         * the whole elapsed-time budget, whatever max_attempts says: each
         * such attempt costs the server nothing. */
        bool unreachable = rc == DBK_ECONN_LOST || rc == DBK_EUNAVAILABLE;
        if ((n >= cf->max_attempts && !unreachable) || now >= budget_end) {
            hooks_free(&r);
            if (unreachable)
                return still_unreachable(err, rc, n, elapsed_ms);
            return exhausted(err, err, rc, n, elapsed_ms);
        }
        /* Full jitter: uniform in [0, min(cap, base * 2^(n-1))], and never
         * past the elapsed-time budget. */
        int64_t ceil_ms = cf->base_backoff_ms;
        for (int i = 1; i < n && ceil_ms < cf->max_backoff_ms; i++)
            ceil_ms *= 2;
        if (ceil_ms > cf->max_backoff_ms)
            ceil_ms = cf->max_backoff_ms;
        int64_t left_ms = (budget_end - now) / 1000000LL;
        if (ceil_ms > left_ms)
            ceil_ms = left_ms;
        int delay = rng_uniform((int)ceil_ms);
        if (cf->on_retry)
            cf->on_retry(cf->on_retry_ctx, n, rc, delay, err);
        dbk__log(DBK_LOG_DEBUG, "transaction attempt %d failed with %s, retrying in %d ms", n,
                 dbk_rc_name(rc), delay);
        sleep_ms(delay);
    }
}

/* ---------------------------------------------------------------------- */
/* Public calls                                                           */
/* ---------------------------------------------------------------------- */

DBK__OPTS_INIT_FN(dbk_tx_opts, DBK_TX_OPTS_VERSION)

dbk_rc dbk_tx_run(dbk_db *db, dbk_tx_fn fn, void *ctx, const dbk_tx_opts *opts,
                       dbk_error *err)
{
    if (!db || !db->ops)
        return dbk__err(err, DBK_EMISUSE, "dbk_tx_run: executor must not be NULL");
    if (!fn)
        return dbk__err(err, DBK_EMISUSE, "dbk_tx_run: closure must not be NULL");
    if (opts && dbk__opts_check(opts->version, DBK_TX_OPTS_VERSION, "dbk_tx_opts", err))
        return DBK_EMISUSE;
    if (db->ops == &tx_ops)
        return nested(db->self, fn, ctx, err);
    tx_conf cf;
    dbk_rc rc = resolve_opts(opts, &cf, err);
    if (rc)
        return rc;
    return outermost(db, fn, ctx, &cf, err);
}

dbk_rc dbk_tx_after_commit_ex(dbk_db *db, dbk_tx_hook_fn fn, void *ctx,
                              void (*release)(void *ctx), dbk_error *err)
{
    if (!db || !fn) {
        if (release)
            release(ctx);
        return dbk__err(err, DBK_EMISUSE, "dbk_tx_after_commit: %s must not be NULL",
                        db ? "hook" : "executor");
    }
    if (db->ops != &tx_ops) {
        fn(ctx);
        if (release)
            release(ctx);
        return DBK_OK;
    }
    struct dbk__tx *t = db->self;
    if (t->finished) {
        if (release)
            release(ctx);
        return finished_err(err);
    }
    tx_root *r = t->root;
    if (r->nhooks == r->cap_hooks) {
        size_t cap = r->cap_hooks * 2;
        struct tx_hook *h = malloc(cap * sizeof *h);
        if (!h) {
            if (release)
                release(ctx);
            return dbk__err(err, DBK_ENOMEM, "out of memory registering an after-commit hook");
        }
        memcpy(h, r->hooks, r->nhooks * sizeof *h);
        if (r->hooks != r->inline_hooks)
            free(r->hooks);
        r->hooks = h;
        r->cap_hooks = cap;
    }
    r->hooks[r->nhooks++] = (struct tx_hook){fn, ctx, release};
    return DBK_OK;
}

dbk_rc dbk_tx_after_commit(dbk_db *db, dbk_tx_hook_fn fn, void *ctx, dbk_error *err)
{
    return dbk_tx_after_commit_ex(db, fn, ctx, NULL, err);
}

bool dbk_db_in_transaction(const dbk_db *db)
{
    if (!db || db->ops != &tx_ops)
        return false;
    const struct dbk__tx *t = db->self;
    return !t->finished;
}

/* The deprecated name (one release), a wrapper so it stays in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_transaction(dbk_db *db, dbk_tx_fn fn, void *ctx, const dbk_tx_opts *opts,
                       dbk_error *err)
{
    return dbk_tx_run(db, fn, ctx, opts, err);
}
#pragma GCC diagnostic pop
