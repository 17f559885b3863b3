/*
 * mig_session.c - the migrator's session: one pinned connection, the
 * migration lock (a PostgreSQL advisory lock taken in a bounded loop, SQLite
 * BEGIN EXCLUSIVE retried until the lock deadline), BEGIN / COMMIT per step
 * and running one section of a migration file with its statement count and
 * file:line in errors.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../db/db_int.h"
#include "../driver/dialect.h"
#include "../driver/driver.h"
#include "migrate_int.h"
#include "migrate_impl.h"

int64_t dbk__wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

const char *dbk_migration_state_name(dbk_migration_state s)
{
    switch (s) {
    case DBK_MIGRATION_PENDING:
        return "pending";
    case DBK_MIGRATION_APPLIED:
        return "applied";
    case DBK_MIGRATION_CHANGED:
        return "changed";
    case DBK_MIGRATION_MISSING:
        return "missing";
    case DBK_MIGRATION_DIRTY:
        return "dirty";
    }
    return "unknown";
}

/* ---- the session ---- */

void dbk__mctx_report(dbk__mctx *m, const dbk_migrate_event *ev)
{
    if (m->opts.report)
        m->opts.report(m->opts.report_ctx, ev);
}

dbk_rc dbk__mctx_open(dbk__mctx *m, dbk_db *db, const dbk_migrate_opts *opts, int64_t lock_key,
                      dbk_error *err)
{
    memset(m, 0, sizeof *m);
    if (!db || !db->ops)
        return dbk__err(err, DBK_EMISUSE, "executor must not be NULL");
    if (dbk__db_in_tx(db)) {
        dbk__err(err, DBK_EMISUSE, "migrations and seeds cannot run on a transaction's executor");
        dbk__err_hint(err, "pass the pool's or the connection's dbk_db: every migration runs in "
                           "its own transaction");
        return DBK_EMISUSE;
    }
    if (opts)
        m->opts = *opts;
    if (m->opts.lock_timeout_ms < 0)
        return dbk__err(err, DBK_EMISUSE, "negative lock_timeout_ms %d", m->opts.lock_timeout_ms);
    if (m->opts.steps < 0)
        return dbk__err(err, DBK_EMISUSE, "negative steps %d", m->opts.steps);
    if (m->opts.lock_timeout_ms == 0)
        m->opts.lock_timeout_ms = DEFAULT_LOCK_TIMEOUT_MS;
    m->lock_key = lock_key;
    dbk__mctx_wait_from_now(m);
    char host[64];
    if (gethostname(host, sizeof host) != 0)
        dbk__strlcpy(host, "unknown", sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(m->owner, sizeof m->owner, "%ld@%s", (long)getpid(), host);

    m->outer = db;
    dbk_rc rc = db->ops->pin(db, &m->conn, err);
    if (rc)
        return rc;
    m->db = dbk_conn_db(m->conn);
    m->engine = dbk_db_engine(m->db);
    if (dbk__conn_txstate(m->conn) != DBK__TX_IDLE) {
        db->ops->unpin(db, m->conn);
        m->conn = NULL;
        dbk__err(err, DBK_EMISUSE, "the connection is inside a transaction");
        dbk__err_hint(err, "commit or roll back first: every migration runs in its own "
                           "transaction");
        return DBK_EMISUSE;
    }
    return DBK_OK;
}

/* Runs a statement with no parameters, discarding rows. */
dbk_rc dbk__mig_exec0(dbk__mctx *m, const char *sql, dbk_error *err)
{
    return dbk_db_exec(m->db, sql, NULL, 0, NULL, err);
}

void dbk__mctx_rollback(dbk__mctx *m)
{
    if (!m->conn)
        return;
    if (dbk__conn_txstate(m->conn) == DBK__TX_IDLE)
        return;
    dbk_error e;
    dbk__mig_exec0(m, "ROLLBACK", &e);
}

void dbk__mctx_close(dbk__mctx *m)
{
    if (!m->conn)
        return;
    dbk__mctx_rollback(m);
    if (m->locked) {
        dbk_error e;
        dbk_value k = dbk_int64(m->lock_key);
        dbk_db_exec(m->db, dbk__dialect_of(m->engine)->unlock_sql, &k, 1, NULL, &e);
        m->locked = false;
    }
    m->outer->ops->unpin(m->outer, m->conn);
    m->conn = NULL;
}

dbk_rc dbk__mctx_wait(dbk__mctx *m, const char *what, dbk_error *err)
{
    int64_t now = dbk__now_ns();
    if (now >= m->deadline_ns) {
        dbk__err(err, DBK_EBUSY, "timed out after %d ms waiting for %s", m->opts.lock_timeout_ms,
                 what);
        dbk__err_hint(err, "another migrator is still running: wait for it, or raise the lock "
                           "timeout (--lock-timeout / dbk_migrate_opts.lock_timeout_ms)");
        return DBK_EBUSY;
    }
    if (!m->waited) {
        m->waited = true;
        char msg[256];
        snprintf(msg, sizeof msg, "waiting for %s", what);
        dbk_migrate_event ev = {.kind = DBK_MIGRATE_EVENT_WAITING, .name = "", .path = "",
                                .message = msg};
        dbk__mctx_report(m, &ev);
    }
    /* 20..120 ms, jittered so that waiting processes do not move in step. */
    int64_t ms = 20 + (int64_t)((dbk__now_ns() / 1000) % 100);
    int64_t left = (m->deadline_ns - now) / 1000000 + 1;
    if (ms > left)
        ms = left;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return DBK_OK;
}

/* Who holds the advisory lock, for the timeout message. */
static void lock_holder(dbk__mctx *m, char *buf, size_t n)
{
    buf[0] = '\0';
    dbk_value p[2] = {dbk_int64((int64_t)((uint64_t)m->lock_key >> 32)),
                      dbk_int64((int64_t)((uint64_t)m->lock_key & 0xffffffffu))};
    dbk_result *r = NULL;
    dbk_error e;
    if (dbk_db_query(m->db,
                     "SELECT l.pid, coalesce(a.application_name, ''), "
                     "coalesce(a.client_addr::text, 'local') FROM pg_locks l "
                     "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                     "WHERE l.locktype = 'advisory' AND l.granted "
                     "AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1",
                     p, 2, &r, &e) == DBK_OK &&
        dbk_result_nrows(r) > 0) {
        int64_t pid = 0;
        const char *app = NULL, *addr = NULL;
        dbk_result_get_int64(r, 0, 0, &pid, &e);
        dbk_result_get_text(r, 0, 1, &app, NULL, &e);
        dbk_result_get_text(r, 0, 2, &addr, NULL, &e);
        snprintf(buf, n, " (held by server pid %lld, application '%s', from %s)", (long long)pid,
                 app ? app : "", addr ? addr : "?");
    }
    dbk_result_free(r);
}

dbk_rc dbk__mctx_lock(dbk__mctx *m, dbk_error *err)
{
    /* An engine without a session lock (SQLite) is locked by its exclusive
     * migration transaction instead (dbk__mctx_begin). */
    const char *try_sql = dbk__dialect_of(m->engine)->lock_try_sql;
    if (!try_sql)
        return DBK_OK;
    dbk_value k = dbk_int64(m->lock_key);
    for (;;) {
        dbk_result *r = NULL;
        dbk_rc rc = dbk_db_query_row(m->db, try_sql, &k, 1, &r, err);
        bool got = false;
        if (rc == DBK_OK)
            rc = dbk_result_get_bool(r, 0, 0, &got, err);
        dbk_result_free(r);
        if (rc)
            return rc;
        if (got) {
            m->locked = true;
            return DBK_OK;
        }
        if (dbk__now_ns() >= m->deadline_ns) {
            char who[200];
            lock_holder(m, who, sizeof who);
            dbk__err(err, DBK_EBUSY,
                     "timed out after %d ms waiting for the migration lock (advisory lock "
                     "%lld)%s",
                     m->opts.lock_timeout_ms, (long long)m->lock_key, who);
            dbk__err_hint(err, "another `dbkit migrate` or service start-up is migrating this "
                               "database: wait for it, or raise the lock timeout "
                               "(--lock-timeout)");
            return DBK_EBUSY;
        }
        rc = dbk__mctx_wait(m, "the migration lock held by another migrator", err);
        if (rc)
            return rc;
    }
}

void dbk__mctx_wait_from_now(dbk__mctx *m)
{
    m->deadline_ns = dbk__now_ns() + (int64_t)m->opts.lock_timeout_ms * 1000000;
}

/* Sets SQLite's busy timeout of the pinned connection (the driver's own
 * statement, so the pool neither retries nor inspects it). */
static dbk_rc set_busy_timeout(dbk__mctx *m, int64_t ms, dbk_error *err)
{
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA busy_timeout = %lld", (long long)ms);
    return dbk__conn_run(m->conn, sql, NULL, 0, NULL, NULL, err);
}

/* SQLite: BEGIN EXCLUSIVE until the lock deadline. Each attempt waits in
 * SQLite's busy handler for the connection's busy timeout, capped by the
 * time left (one full busy timeout per attempt overran a short lock
 * timeout by seconds); the attempts run on the driver directly, because the
 * pool would retry a busy statement for another busy timeout. The busy
 * timeout is put back afterwards. */
static dbk_rc sqlite_begin_exclusive(dbk__mctx *m, dbk_error *err)
{
    dbk_conn *c = m->conn;
    dbk_result *r = NULL;
    int64_t busy = 0;
    dbk_rc rc = dbk__conn_run(c, "PRAGMA busy_timeout", NULL, 0, &r, NULL, err);
    if (rc == DBK_OK)
        rc = dbk_result_get_int64(r, 0, 0, &busy, err);
    dbk_result_free(r);
    if (rc)
        return rc;
    for (;;) {
        int64_t left = (m->deadline_ns - dbk__now_ns()) / 1000000;
        rc = set_busy_timeout(m, left < 0 ? 0 : left < busy ? left : busy, err);
        if (rc == DBK_OK)
            rc = dbk__conn_run(c, "BEGIN EXCLUSIVE", NULL, 0, NULL, NULL, err);
        if (rc == DBK_EBUSY)
            rc = dbk__mctx_wait(m, "the exclusive lock on the SQLite database", err);
        else
            break;
        if (rc)
            break;
    }
    dbk_error e;
    dbk_rc brc = set_busy_timeout(m, busy, &e);
    if (rc == DBK_OK && brc != DBK_OK) {
        if (err)
            *err = e;
        dbk__mctx_rollback(m);
        return brc;
    }
    return rc;
}

dbk_rc dbk__mctx_begin(dbk__mctx *m, dbk_error *err)
{
    if (!dbk__mctx_tx_locks(m))
        return dbk__mig_exec0(m, "BEGIN", err);
    return sqlite_begin_exclusive(m, err);
}

dbk_rc dbk__mctx_commit(dbk__mctx *m, dbk_error *err)
{
    return dbk__mig_exec0(m, "COMMIT", err);
}

/* Rewrites err->message as "<path>:<line>: <message>", keeping the rest.
 * Built piecewise: on truncation the start, which names the file, stays. */
void dbk__mig_prefix_error(dbk_error *err, const char *path, int line)
{
    if (!err)
        return;
    char msg[DBK_ERROR_MESSAGE_MAX], num[24] = "";
    dbk__strlcpy(msg, err->message, sizeof msg);
    if (line > 0) {
        int n = snprintf(num, sizeof num, ":%d", line);
        (void)n;
    }
    size_t cap = sizeof err->message, o = 0;
    const char *parts[4] = {path, num, ": ", msg};
    for (int i = 0; i < 4; i++) {
        size_t len = strlen(parts[i]);
        if (o + len >= cap)
            len = cap - 1 - o;
        memcpy(err->message + o, parts[i], len);
        o += len;
    }
    err->message[o] = '\0';
}

dbk_rc dbk__mctx_run_section(dbk__mctx *m, const dbk__migfile *f, const dbk__section *sec,
                             dbk_migrate_action action, int skip, dbk__after_stmt_fn after,
                             void *after_ctx, int64_t t0_ns, dbk_error *err)
{
    dbk__stmt *st = NULL;
    size_t n = 0;
    dbk_rc rc = dbk__sql_split(f->text + sec->off, sec->len, sec->line,
                               sec->engine ? sec->engine : m->engine, &st, &n, err);
    if (rc) {
        dbk__mig_prefix_error(err, f->path, 0);
        return rc;
    }
    /* lock_timeout / statement_timeout for a migration's section (locks.c);
     * seeds keep the executor's settings */
    bool timeouts = action != DBK_MIGRATE_ACTION_SEED;
    if (timeouts)
        rc = dbk__mctx_section_timeouts(m, sec->transactional, err);
    if (rc) {
        dbk__mig_prefix_error(err, f->path, 0);
        free(st);
        return rc;
    }
    char *buf = NULL;
    size_t bufcap = 0;
    for (size_t i = (size_t)skip; i < n; i++) {
        if (st[i].len + 1 > bufcap) {
            char *p = realloc(buf, st[i].len + 1);
            if (!p) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory running %s", f->path);
                break;
            }
            buf = p;
            bufcap = st[i].len + 1;
        }
        memcpy(buf, f->text + sec->off + st[i].off, st[i].len);
        buf[st[i].len] = '\0';
        /* PostgreSQL: the simple protocol, which takes any statement
         * (utility commands, CREATE INDEX CONCURRENTLY) without preparing
         * it. SQLite: one prepared statement, whose errors are plain. */
        bool via_script = dbk__dialect_of(m->engine)->migrate_via_script;
        if (via_script && timeouts)
            rc = dbk__mctx_exec_pg(m, buf, sec->transactional, err);
        else if (via_script)
            rc = dbk__db_exec_script_within(m->db, buf, DBK__MIGRATION_WAIT_MS, err);
        else
            rc = dbk_db_exec(m->db, buf, NULL, 0, NULL, err);
        if (rc) {
            dbk__mig_prefix_error(err, f->path, st[i].line);
            if (err && !err->hint[0])
                dbk__err_hint(err, "%s", sec->transactional
                                             ? "the step was rolled back: fix the statement and "
                                               "run the command again"
                                             : "this section runs without a transaction: see "
                                               "`dbkit migrate repair`");
            dbk_migrate_event ev = {.kind = DBK_MIGRATE_EVENT_FAILED,
                                    .action = action,
                                    .version = f->version,
                                    .name = f->name,
                                    .path = f->path,
                                    .transactional = sec->transactional,
                                    .duration_ms = (dbk__now_ns() - t0_ns) / 1000000,
                                    .line = st[i].line,
                                    .statement = buf,
                                    .error = err};
            dbk__mctx_report(m, &ev);
            break;
        }
        if (after) {
            rc = after(m, after_ctx, (int)i + 1, err);
            if (rc)
                break;
        }
    }
    if (timeouts)
        dbk__mctx_section_timeouts_reset(m, sec->transactional);
    free(buf);
    free(st);
    return rc;
}
