/*
 * The migrator: applies, reverts and inspects versioned migrations on one
 * connection.
 *
 * Shape. Every public call loads and parses the whole migration set first
 * (a malformed file stops the run before the database is touched), then
 * pins exactly one connection from the caller's executor: transactions and
 * session-level locks need one session, and one connection is also all a
 * migrator ever needs. Work proceeds in steps; each step is one
 * transaction that re-reads the history, picks the next migration and
 * applies it together with its history row, so the history and the schema
 * can never disagree:
 *
 *   PostgreSQL  pg_try_advisory_lock in a bounded loop before the history
 *               table is touched (released on unlock or when the session
 *               dies, so a killed migrator frees it); then BEGIN per step.
 *   SQLite      BEGIN EXCLUSIVE per step (retried on busy until the lock
 *               deadline, each attempt's busy wait capped by the time
 *               left): the check and the apply are one exclusive
 *               transaction, so concurrent processes apply each migration
 *               exactly once.
 *
 * Non-transactional sections (transaction:false) cannot be rolled back, so
 * their history row is committed first with dirty = 1 (2 when reverting),
 * the statement count is advanced after each statement, and the row is
 * cleared at the end. A process killed in between leaves the row dirty;
 * `up` then refuses until dbk_migrate_repair() records what a person
 * decided. On SQLite, where there is no session lock, a dirty row whose
 * owner process is still alive on this host means "in progress": the
 * others wait for it (bounded) instead of reporting it dirty.
 *
 * Applied files are compared with their recorded SHA-256 on every run:
 * a changed file stops `up` with the file and both checksums.
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
#include "../driver/driver.h"
#include "migrate_int.h"

#define DEFAULT_LOCK_TIMEOUT_MS 60000

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
    if (db->kind == DBK__DB_TX) {
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
    if (m->conn->drv->txstate(m->conn->impl) != DBK__TX_IDLE) {
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
static dbk_rc exec0(dbk__mctx *m, const char *sql, dbk_error *err)
{
    return dbk_db_exec(m->db, sql, NULL, 0, NULL, err);
}

void dbk__mctx_rollback(dbk__mctx *m)
{
    if (!m->conn)
        return;
    if (m->conn->drv->txstate(m->conn->impl) == DBK__TX_IDLE)
        return;
    dbk_error e;
    exec0(m, "ROLLBACK", &e);
}

void dbk__mctx_close(dbk__mctx *m)
{
    if (!m->conn)
        return;
    dbk__mctx_rollback(m);
    if (m->locked) {
        dbk_error e;
        dbk_value k = dbk_int64(m->lock_key);
        dbk_db_exec(m->db, "SELECT pg_advisory_unlock($1)", &k, 1, NULL, &e);
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
        dbk_migrate_event ev = {.kind = DBK_MIGRATE_EV_WAITING, .name = "", .path = "",
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
    if (m->engine != DBK_ENGINE_POSTGRES)
        return DBK_OK;
    dbk_value k = dbk_int64(m->lock_key);
    for (;;) {
        dbk_result *r = NULL;
        dbk_rc rc = dbk_db_query_row(m->db, "SELECT pg_try_advisory_lock($1)", &k, 1, &r, err);
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
    return m->conn->drv->run(m->conn->impl, sql, NULL, 0, NULL, NULL, err);
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
    dbk_rc rc = c->drv->run(c->impl, "PRAGMA busy_timeout", NULL, 0, &r, NULL, err);
    if (rc == DBK_OK)
        rc = dbk_result_get_int64(r, 0, 0, &busy, err);
    dbk_result_free(r);
    if (rc)
        return rc;
    for (;;) {
        int64_t left = (m->deadline_ns - dbk__now_ns()) / 1000000;
        rc = set_busy_timeout(m, left < 0 ? 0 : left < busy ? left : busy, err);
        if (rc == DBK_OK)
            rc = c->drv->run(c->impl, "BEGIN EXCLUSIVE", NULL, 0, NULL, NULL, err);
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
    if (m->engine != DBK_ENGINE_SQLITE)
        return exec0(m, "BEGIN", err);
    return sqlite_begin_exclusive(m, err);
}

dbk_rc dbk__mctx_commit(dbk__mctx *m, dbk_error *err)
{
    return exec0(m, "COMMIT", err);
}

/* Rewrites err->message as "<path>:<line>: <message>", keeping the rest.
 * Built piecewise: on truncation the start, which names the file, stays. */
static void prefix_error(dbk_error *err, const char *path, int line)
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
        prefix_error(err, f->path, 0);
        return rc;
    }
    /* lock_timeout / statement_timeout for a migration's section (locks.c);
     * seeds keep the executor's settings */
    bool timeouts = action != DBK_MIGRATE_ACTION_SEED;
    if (timeouts)
        rc = dbk__mctx_section_timeouts(m, sec->transactional, err);
    if (rc) {
        prefix_error(err, f->path, 0);
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
        if (m->engine == DBK_ENGINE_POSTGRES && timeouts)
            rc = dbk__mctx_exec_pg(m, buf, sec->transactional, err);
        else if (m->engine == DBK_ENGINE_POSTGRES)
            rc = dbk__db_exec_script_within(m->db, buf, DBK__MIGRATION_WAIT_MS, err);
        else
            rc = dbk_db_exec(m->db, buf, NULL, 0, NULL, err);
        if (rc) {
            prefix_error(err, f->path, st[i].line);
            if (err && !err->hint[0])
                dbk__err_hint(err, "%s", sec->transactional
                                             ? "the step was rolled back: fix the statement and "
                                               "run the command again"
                                             : "this section runs without a transaction: see "
                                               "`dbkit migrate repair`");
            dbk_migrate_event ev = {.kind = DBK_MIGRATE_EV_FAILED,
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

/* ---- the history table ---- */

static const char *const HISTORY_DDL_PG =
    "CREATE TABLE IF NOT EXISTS dbkit_migrations ("
    "version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, "
    "applied_at TIMESTAMPTZ NOT NULL, duration_ms BIGINT NOT NULL DEFAULT 0, "
    "dirty INTEGER NOT NULL DEFAULT 0, statements_done INTEGER NOT NULL DEFAULT 0, "
    "owner TEXT)";
static const char *const HISTORY_DDL_SQLITE =
    "CREATE TABLE IF NOT EXISTS dbkit_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, "
    "applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL DEFAULT 0, "
    "dirty INTEGER NOT NULL DEFAULT 0, statements_done INTEGER NOT NULL DEFAULT 0, "
    "owner TEXT)";

static dbk_rc ensure_history(dbk__mctx *m, dbk_error *err)
{
    return exec0(m, m->engine == DBK_ENGINE_SQLITE ? HISTORY_DDL_SQLITE : HISTORY_DDL_PG, err);
}

typedef struct hist_row {
    int64_t version;
    char name[128];
    char checksum[65];
    int64_t applied_at_us;
    int64_t duration_ms;
    int dirty;
    int statements_done;
    char owner[128];
} hist_row;

typedef struct history {
    hist_row *rows;
    size_t n;
} history;

static void history_free(history *h)
{
    free(h->rows);
    h->rows = NULL;
    h->n = 0;
}

static const hist_row *history_find(const history *h, int64_t version)
{
    size_t lo = 0, hi = h->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->rows[mid].version == version)
            return &h->rows[mid];
        if (h->rows[mid].version < version)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* True when the table exists (read-only check for status). */
static dbk_rc table_exists(dbk__mctx *m, const char *table, bool *exists, dbk_error *err)
{
    int64_t n = 0;
    dbk_value p = dbk_text(table);
    dbk_rc rc = dbk_db_query_int64(
        m->db,
        m->engine == DBK_ENGINE_SQLITE
            ? "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
            : "SELECT count(*) FROM (SELECT to_regclass($1) AS t) x WHERE t IS NOT NULL",
        &p, 1, &n, err);
    *exists = n > 0;
    return rc;
}

static void copy_text(const dbk_result *r, size_t row, int col, char *dst, size_t n)
{
    const char *s = NULL;
    dbk_error e;
    dst[0] = '\0';
    if (dbk_result_get_text(r, row, col, &s, NULL, &e) == DBK_OK && s)
        dbk__strlcpy(dst, s, n);
}

static dbk_rc load_history(dbk__mctx *m, history *h, dbk_error *err)
{
    memset(h, 0, sizeof *h);
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(m->db,
                             "SELECT version, name, checksum, applied_at, duration_ms, dirty, "
                             "statements_done, owner FROM dbkit_migrations ORDER BY version",
                             NULL, 0, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    if (n) {
        h->rows = calloc(n, sizeof *h->rows);
        if (!h->rows) {
            dbk_result_free(r);
            return dbk__err(err, DBK_ENOMEM, "out of memory reading the migration history");
        }
    }
    for (size_t i = 0; i < n && rc == DBK_OK; i++) {
        hist_row *row = &h->rows[i];
        int64_t v = 0;
        rc = dbk_result_get_int64(r, i, 0, &row->version, err);
        if (rc == DBK_OK)
            rc = dbk_result_get_timestamp(r, i, 3, &row->applied_at_us, err);
        if (rc == DBK_OK)
            rc = dbk_result_get_int64(r, i, 4, &row->duration_ms, err);
        if (rc == DBK_OK)
            rc = dbk_result_get_int64(r, i, 5, &v, err);
        row->dirty = (int)v;
        if (rc == DBK_OK)
            rc = dbk_result_get_int64(r, i, 6, &v, err);
        row->statements_done = (int)v;
        copy_text(r, i, 1, row->name, sizeof row->name);
        copy_text(r, i, 2, row->checksum, sizeof row->checksum);
        copy_text(r, i, 7, row->owner, sizeof row->owner);
    }
    h->n = n;
    dbk_result_free(r);
    if (rc) {
        prefix_error(err, "dbkit_migrations", 0);
        history_free(h);
    }
    return rc;
}

static const dbk__migfile *set_find(const dbk__migset *set, int64_t version)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set->files[mid].version == version)
            return &set->files[mid];
        if (set->files[mid].version < version)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Is the owner of a dirty row a live process of this host (SQLite: a
 * migration in progress rather than an interrupted one)? */
static bool owner_alive(const dbk__mctx *m, const char *owner)
{
    if (m->engine != DBK_ENGINE_SQLITE || !owner[0])
        return false;
    char *at = strchr(owner, '@');
    const char *myat = strchr(m->owner, '@');
    if (!at || !myat || strcmp(at, myat) != 0)
        return false;
    char *end = NULL;
    long pid = strtol(owner, &end, 10);
    if (end != at || pid <= 0 || pid == (long)getpid())
        return false;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static dbk_rc dirty_error(const hist_row *row, const dbk__migfile *f, dbk_error *err)
{
    const char *what = row->dirty == 2 ? "reverting" : "applying";
    dbk__err(err, DBK_EINVALID,
             "migration %lld (%s) is dirty: %s it without a transaction was interrupted after "
             "%d statement%s",
             (long long)row->version, f ? f->path : row->name, what, row->statements_done,
             row->statements_done == 1 ? "" : "s");
    dbk__err_hint(err, "look at the database, then run `dbkit migrate repair` (library: "
                       "dbk_migrate_repair): it shows the statements and how to mark the "
                       "migration applied or pending");
    return DBK_EINVALID;
}

static dbk_rc changed_error(const hist_row *row, const dbk__migfile *f, dbk_error *err)
{
    dbk__err(err, DBK_EINVALID,
             "%s was changed after it was applied: checksum on disk %s, recorded %s", f->path,
             f->checksum, row->checksum);
    dbk__err_hint(err, "restore the applied version of the file (e.g. `git checkout` it) and "
                       "put the change in a new migration (`dbkit migrate new NAME`); `dbkit "
                       "migrate validate` lists every changed file");
    return DBK_EINVALID;
}

/* Checks the history against the files before a step. Returns DBK_OK,
 * an error, or DBK_EBUSY-with-wait-needed signalled by *in_progress. */
static dbk_rc check_history(dbk__mctx *m, const dbk__migset *set, const history *h,
                            bool *warned_missing, bool *in_progress, dbk_error *err)
{
    *in_progress = false;
    for (size_t i = 0; i < h->n; i++) {
        const hist_row *row = &h->rows[i];
        const dbk__migfile *f = set_find(set, row->version);
        if (row->dirty) {
            if (owner_alive(m, row->owner)) {
                *in_progress = true;
                return DBK_OK;
            }
            return dirty_error(row, f, err);
        }
        if (!f) {
            if (!*warned_missing) {
                char msg[256];
                snprintf(msg, sizeof msg,
                         "migration %lld (%s) is applied but its file is missing", 
                         (long long)row->version, row->name);
                dbk_migrate_event ev = {.kind = DBK_MIGRATE_EV_WARNING, .version = row->version,
                                        .name = row->name, .path = "", .message = msg};
                dbk__mctx_report(m, &ev);
            }
            continue;
        }
        if (strcmp(f->checksum, row->checksum) != 0)
            return changed_error(row, f, err);
    }
    *warned_missing = true;
    return DBK_OK;
}

static dbk_rc insert_history(dbk__mctx *m, const dbk__migfile *f, int64_t duration_ms, int dirty,
                             dbk_error *err)
{
    dbk_value p[7] = {dbk_int64(f->version),   dbk_text(f->name),        dbk_text(f->checksum),
                      dbk_timestamp(dbk__wall_us()), dbk_int64(duration_ms), dbk_int64(dirty),
                      dirty ? dbk_text(m->owner) : dbk_null()};
    dbk_rc rc = dbk_db_exec(m->db,
                            "INSERT INTO dbkit_migrations (version, name, checksum, applied_at, "
                            "duration_ms, dirty, statements_done, owner) "
                            "VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
                            p, 7, NULL, err);
    if (rc)
        prefix_error(err, "recording the migration in dbkit_migrations", 0);
    return rc;
}

static dbk_rc progress_update(dbk__mctx *m, void *ctx, int done, dbk_error *err)
{
    const dbk__migfile *f = ctx;
    dbk_value p[2] = {dbk_int64(done), dbk_int64(f->version)};
    return dbk_db_exec(m->db, "UPDATE dbkit_migrations SET statements_done = $1 WHERE version = $2",
                       p, 2, NULL, err);
}

static dbk_migrate_event event_of(dbk_migrate_event_kind kind, dbk_migrate_action action,
                                  const dbk__migfile *f, const dbk__section *sec)
{
    dbk_migrate_event ev = {.kind = kind,
                            .action = action,
                            .version = f->version,
                            .name = f->name,
                            .path = f->path,
                            .transactional = sec ? sec->transactional : true};
    return ev;
}

static dbk_rc no_section_error(const dbk__migfile *f, int dir, dbk_engine engine, dbk_error *err)
{
    return dbk__err(err, DBK_EINVALID, "%s has no -- migrate:%s section for %s", f->path,
                    dir == DBK__DIR_UP ? "up" : "down",
                    engine == DBK_ENGINE_SQLITE ? "sqlite" : "postgres");
}

/* Applies one migration inside the step transaction that is open. On
 * return the transaction is closed (committed or rolled back). */
static dbk_rc apply_one(dbk__mctx *m, const dbk__migfile *f, dbk_error *err)
{
    const dbk__section *sec = dbk__mig_section(f, DBK__DIR_UP, m->engine);
    if (!sec) {
        dbk__mctx_rollback(m);
        return no_section_error(f, DBK__DIR_UP, m->engine, err);
    }
    int64_t t0 = dbk__now_ns();
    dbk_migrate_event ev = event_of(DBK_MIGRATE_EV_START, DBK_MIGRATE_ACTION_UP, f, sec);
    dbk__mctx_report(m, &ev);
    dbk_rc rc;
    if (sec->transactional) {
        rc = dbk__mctx_run_section(m, f, sec, DBK_MIGRATE_ACTION_UP, 0, NULL, NULL, t0, err);
        if (rc == DBK_OK)
            rc = insert_history(m, f, (dbk__now_ns() - t0) / 1000000, 0, err);
        if (rc == DBK_OK)
            rc = dbk__mctx_commit(m, err);
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
    } else {
        /* Record the attempt first: if we die midway, the row says so. */
        rc = insert_history(m, f, 0, 1, err);
        if (rc == DBK_OK)
            rc = dbk__mctx_commit(m, err);
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
        rc = dbk__mctx_run_section(m, f, sec, DBK_MIGRATE_ACTION_UP, 0, progress_update,
                                   (void *)f, t0, err);
        if (rc)
            return rc; /* the row stays dirty */
        dbk_value p[4] = {dbk_int64((dbk__now_ns() - t0) / 1000000),
                          dbk_timestamp(dbk__wall_us()), dbk_int64(f->version)};
        rc = dbk_db_exec(m->db,
                         "UPDATE dbkit_migrations SET dirty = 0, statements_done = 0, "
                         "owner = NULL, duration_ms = $1, applied_at = $2 WHERE version = $3",
                         p, 3, NULL, err);
        if (rc)
            return rc;
    }
    ev = event_of(DBK_MIGRATE_EV_DONE, DBK_MIGRATE_ACTION_UP, f, sec);
    ev.duration_ms = (dbk__now_ns() - t0) / 1000000;
    dbk__mctx_report(m, &ev);
    return DBK_OK;
}

/* Reverts one migration inside the open step transaction. */
static dbk_rc revert_one(dbk__mctx *m, const dbk__migfile *f, dbk_error *err)
{
    const dbk__section *sec = dbk__mig_section(f, DBK__DIR_DOWN, m->engine);
    int64_t t0 = dbk__now_ns();
    dbk_migrate_event ev = event_of(DBK_MIGRATE_EV_START, DBK_MIGRATE_ACTION_DOWN, f, sec);
    dbk__mctx_report(m, &ev);
    dbk_value v = dbk_int64(f->version);
    dbk_rc rc;
    if (sec->transactional) {
        rc = dbk__mctx_run_section(m, f, sec, DBK_MIGRATE_ACTION_DOWN, 0, NULL, NULL, t0, err);
        if (rc == DBK_OK)
            rc = dbk_db_exec(m->db, "DELETE FROM dbkit_migrations WHERE version = $1", &v, 1,
                             NULL, err);
        if (rc == DBK_OK)
            rc = dbk__mctx_commit(m, err);
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
    } else {
        dbk_value p[2] = {dbk_text(m->owner), dbk_int64(f->version)};
        rc = dbk_db_exec(m->db,
                         "UPDATE dbkit_migrations SET dirty = 2, statements_done = 0, owner = $1 "
                         "WHERE version = $2",
                         p, 2, NULL, err);
        if (rc == DBK_OK)
            rc = dbk__mctx_commit(m, err);
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
        rc = dbk__mctx_run_section(m, f, sec, DBK_MIGRATE_ACTION_DOWN, 0, progress_update,
                                   (void *)f, t0, err);
        if (rc)
            return rc;
        rc = dbk_db_exec(m->db, "DELETE FROM dbkit_migrations WHERE version = $1", &v, 1, NULL,
                         err);
        if (rc)
            return rc;
    }
    ev = event_of(DBK_MIGRATE_EV_DONE, DBK_MIGRATE_ACTION_DOWN, f, sec);
    ev.duration_ms = (dbk__now_ns() - t0) / 1000000;
    dbk__mctx_report(m, &ev);
    return DBK_OK;
}

/* Opens a step: transaction, history table, history, checks. On DBK_OK a
 * transaction is open and *h is loaded. */
static dbk_rc step_open(dbk__mctx *m, const dbk__migset *set, history *h, bool *warned_missing,
                        dbk_error *err)
{
    dbk__mctx_wait_from_now(m); /* each step waits for the lock at most the lock timeout */
    for (;;) {
        dbk_rc rc = dbk__mctx_begin(m, err);
        if (rc)
            return rc;
        if (m->engine == DBK_ENGINE_SQLITE)
            rc = ensure_history(m, err);
        if (rc == DBK_OK)
            rc = load_history(m, h, err);
        bool busy = false;
        if (rc == DBK_OK) {
            rc = check_history(m, set, h, warned_missing, &busy, err);
            if (rc)
                history_free(h);
        }
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
        if (!busy)
            return DBK_OK;
        /* SQLite: another live process is applying a non-transactional
         * migration. Let it finish. */
        history_free(h);
        dbk__mctx_rollback(m);
        rc = dbk__mctx_wait(m, "a non-transactional migration another process is applying",
                            err);
        if (rc)
            return rc;
    }
}

static dbk_rc begin_run(dbk__mctx *m, dbk_db *db, const dbk_migrate_source *src,
                        const dbk_migrate_opts *opts, dbk__migset *set, dbk_error *err)
{
    dbk_rc rc = dbk__migset_load(src, set, err);
    if (rc)
        return rc;
    rc = dbk__mctx_open(m, db, opts, DBK__LOCK_MIGRATE, err);
    if (rc == DBK_OK)
        rc = dbk__mctx_lock(m, err);
    if (rc == DBK_OK && m->engine == DBK_ENGINE_POSTGRES)
        rc = ensure_history(m, err);
    if (rc) {
        dbk__mctx_close(m);
        dbk__migset_free(set);
    }
    return rc;
}

dbk_rc dbk_migrate_up(dbk_db *db, const dbk_migrate_source *src, const dbk_migrate_opts *opts,
                      int *applied, dbk_error *err)
{
    if (applied)
        *applied = 0;
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_up: db and src must not be NULL");
    dbk__mctx m;
    dbk__migset set;
    dbk_rc rc = begin_run(&m, db, src, opts, &set, err);
    if (rc)
        return rc;
    bool warned = false;
    int count = 0;
    for (;;) {
        history h;
        rc = step_open(&m, &set, &h, &warned, err);
        if (rc)
            break;
        const dbk__migfile *next = NULL;
        for (size_t i = 0; i < set.n && !next; i++) {
            const dbk__migfile *f = &set.files[i];
            if (m.opts.has_target && f->version > m.opts.target)
                break;
            if (!history_find(&h, f->version))
                next = f;
        }
        history_free(&h);
        if (!next) {
            rc = dbk__mctx_commit(&m, err);
            break;
        }
        rc = apply_one(&m, next, err);
        if (rc)
            break;
        count++;
    }
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    if (applied)
        *applied = count;
    return rc;
}

/* The migrations a down would revert, newest first, checked up front. */
static dbk_rc plan_down(dbk__mctx *m, const dbk__migset *set, const history *h, int *nplan,
                        dbk_error *err)
{
    int steps = m->opts.steps ? m->opts.steps : 1;
    int n = 0;
    for (size_t i = h->n; i-- > 0;) {
        const hist_row *row = &h->rows[i];
        if (m->opts.has_target ? row->version <= m->opts.target : n >= steps)
            break;
        const dbk__migfile *f = set_find(set, row->version);
        if (!f) {
            dbk__err(err, DBK_EINVALID,
                     "cannot revert migration %lld (%s): its file is missing",
                     (long long)row->version, row->name);
            dbk__err_hint(err, "restore the file (e.g. from git) to use its down section");
            return DBK_EINVALID;
        }
        const dbk__section *sec = dbk__mig_section(f, DBK__DIR_DOWN, m->engine);
        if (!sec)
            return no_section_error(f, DBK__DIR_DOWN, m->engine, err);
        dbk__stmt *st = NULL;
        size_t nst = 0;
        dbk_rc rc = dbk__sql_split(f->text + sec->off, sec->len, sec->line, m->engine, &st, &nst,
                                   err);
        free(st);
        if (rc)
            return rc;
        if (nst == 0) {
            dbk__err(err, DBK_EINVALID,
                     "%s is irreversible: its -- migrate:down section is empty", f->path);
            dbk__err_hint(err, "write the down statements into the file only if it was never "
                               "applied anywhere; otherwise write a new migration that undoes "
                               "it");
            return DBK_EINVALID;
        }
        n++;
    }
    *nplan = n;
    return DBK_OK;
}

static dbk_rc do_down(dbk__mctx *m, const dbk__migset *set, int *reverted, int64_t *lowest,
                      dbk_error *err)
{
    bool warned = false;
    int planned = -1, count = 0;
    dbk_rc rc;
    for (;;) {
        history h;
        rc = step_open(m, set, &h, &warned, err);
        if (rc)
            break;
        if (planned < 0) {
            rc = plan_down(m, set, &h, &planned, err);
            if (rc) {
                history_free(&h);
                dbk__mctx_rollback(m);
                break;
            }
        }
        const hist_row *top = h.n ? &h.rows[h.n - 1] : NULL;
        bool done = !top || count >= planned ||
                    (m->opts.has_target && top->version <= m->opts.target);
        int64_t v = top ? top->version : 0;
        history_free(&h);
        if (done) {
            rc = dbk__mctx_commit(m, err);
            break;
        }
        const dbk__migfile *f = set_find(set, v);
        rc = revert_one(m, f, err);
        if (rc)
            break;
        count++;
        *lowest = v;
    }
    *reverted = count;
    return rc;
}

dbk_rc dbk_migrate_down(dbk_db *db, const dbk_migrate_source *src, const dbk_migrate_opts *opts,
                        int *reverted, dbk_error *err)
{
    if (reverted)
        *reverted = 0;
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_down: db and src must not be NULL");
    dbk__mctx m;
    dbk__migset set;
    dbk_rc rc = begin_run(&m, db, src, opts, &set, err);
    if (rc)
        return rc;
    int count = 0;
    int64_t lowest = 0;
    rc = do_down(&m, &set, &count, &lowest, err);
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    if (reverted)
        *reverted = count;
    return rc;
}

dbk_rc dbk_migrate_redo(dbk_db *db, const dbk_migrate_source *src, const dbk_migrate_opts *opts,
                        dbk_error *err)
{
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_redo: db and src must not be NULL");
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    if (opts)
        o = *opts;
    o.has_target = false;
    o.steps = 1;
    dbk__mctx m;
    dbk__migset set;
    dbk_rc rc = begin_run(&m, db, src, &o, &set, err);
    if (rc)
        return rc;
    int count = 0;
    int64_t v = 0;
    rc = do_down(&m, &set, &count, &v, err);
    if (rc == DBK_OK && count == 0)
        rc = dbk__err(err, DBK_ENOT_FOUND, "nothing to redo: no migration is applied");
    if (rc == DBK_OK) {
        /* Apply exactly the reverted version again. */
        bool warned = true;
        history h;
        rc = step_open(&m, &set, &h, &warned, err);
        if (rc == DBK_OK) {
            history_free(&h);
            rc = apply_one(&m, set_find(&set, v), err);
        }
    }
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    return rc;
}

/* ---- status, validate, repair ---- */

void dbk_migrate_status_free(dbk_migration_status *st)
{
    if (!st)
        return;
    free(st->items);
    free(st);
}

static int cmp_info(const void *a, const void *b)
{
    const dbk_migration_info *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

static dbk_rc build_status(dbk__mctx *m, const dbk__migset *set, const history *h,
                           dbk_migration_status **out, dbk_error *err)
{
    dbk_migration_status *st = calloc(1, sizeof *st);
    size_t cap = set->n + h->n;
    if (!st || (cap && !(st->items = calloc(cap, sizeof *st->items)))) {
        free(st);
        return dbk__err(err, DBK_ENOMEM, "out of memory building the migration status");
    }
    for (size_t i = 0; i < set->n; i++) {
        const dbk__migfile *f = &set->files[i];
        dbk_migration_info *it = &st->items[st->count++];
        it->version = f->version;
        dbk__strlcpy(it->name, f->name, sizeof it->name);
        dbk__strlcpy(it->filename, f->filename, sizeof it->filename);
        dbk__strlcpy(it->file_checksum, f->checksum, sizeof it->file_checksum);
        const dbk__section *sec = dbk__mig_section(f, DBK__DIR_UP, m->engine);
        it->transactional = sec ? sec->transactional : true;
        const hist_row *row = history_find(h, f->version);
        if (!row) {
            it->state = DBK_MIGRATION_PENDING;
            continue;
        }
        dbk__strlcpy(it->applied_checksum, row->checksum, sizeof it->applied_checksum);
        it->applied_at_us = row->applied_at_us;
        it->duration_ms = row->duration_ms;
        it->dirty = row->dirty;
        it->statements_done = row->statements_done;
        dbk__strlcpy(it->owner, row->owner, sizeof it->owner);
        it->state = row->dirty ? DBK_MIGRATION_DIRTY
                    : strcmp(row->checksum, f->checksum) != 0 ? DBK_MIGRATION_CHANGED
                                                               : DBK_MIGRATION_APPLIED;
    }
    for (size_t i = 0; i < h->n; i++) {
        const hist_row *row = &h->rows[i];
        if (set_find(set, row->version))
            continue;
        dbk_migration_info *it = &st->items[st->count++];
        it->version = row->version;
        dbk__strlcpy(it->name, row->name, sizeof it->name);
        dbk__strlcpy(it->applied_checksum, row->checksum, sizeof it->applied_checksum);
        it->applied_at_us = row->applied_at_us;
        it->duration_ms = row->duration_ms;
        it->dirty = row->dirty;
        it->statements_done = row->statements_done;
        dbk__strlcpy(it->owner, row->owner, sizeof it->owner);
        it->transactional = true;
        it->state = row->dirty ? DBK_MIGRATION_DIRTY : DBK_MIGRATION_MISSING;
    }
    if (st->count > 1)
        qsort(st->items, st->count, sizeof *st->items, cmp_info);
    for (size_t i = 0; i < st->count; i++) {
        switch (st->items[i].state) {
        case DBK_MIGRATION_PENDING:
            st->pending++;
            break;
        case DBK_MIGRATION_APPLIED:
            st->applied++;
            break;
        case DBK_MIGRATION_CHANGED:
            st->changed++;
            break;
        case DBK_MIGRATION_MISSING:
            st->missing++;
            break;
        case DBK_MIGRATION_DIRTY:
            st->dirty++;
            break;
        }
    }
    if (h->n)
        st->current_version = h->rows[h->n - 1].version;
    *out = st;
    return DBK_OK;
}

dbk_rc dbk_migrate_status(dbk_db *db, const dbk_migrate_source *src, dbk_migration_status **out,
                          dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_status: out must not be NULL");
    *out = NULL;
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_status: db and src must not be NULL");
    dbk__migset set;
    dbk_rc rc = dbk__migset_load(src, &set, err);
    if (rc)
        return rc;
    dbk__mctx m;
    rc = dbk__mctx_open(&m, db, NULL, DBK__LOCK_MIGRATE, err);
    if (rc) {
        dbk__migset_free(&set);
        return rc;
    }
    history h;
    memset(&h, 0, sizeof h);
    bool exists = false;
    rc = table_exists(&m, "dbkit_migrations", &exists, err);
    if (rc == DBK_OK && exists)
        rc = load_history(&m, &h, err);
    if (rc == DBK_OK)
        rc = build_status(&m, &set, &h, out, err);
    history_free(&h);
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    return rc;
}

dbk_rc dbk_migrate_validate(dbk_db *db, const dbk_migrate_source *src,
                            dbk_migration_status **out, dbk_error *err)
{
    if (out)
        *out = NULL;
    dbk_migration_status *st = NULL;
    dbk_rc rc = dbk_migrate_status(db, src, &st, err);
    if (rc)
        return rc;
    size_t problems = st->changed + st->missing + st->dirty;
    for (size_t i = 0; i < st->count && problems; i++) {
        const dbk_migration_info *it = &st->items[i];
        const char *dir = src->dir ? src->dir : "";
        const char *sep = src->dir ? "/" : "";
        if (it->state == DBK_MIGRATION_CHANGED) {
            dbk__err(err, DBK_EINVALID,
                     "%s%s%s was changed after it was applied: checksum on disk %s, recorded %s"
                     "%s",
                     dir, sep, it->filename, it->file_checksum, it->applied_checksum,
                     problems > 1 ? " (and more problems)" : "");
            dbk__err_hint(err, "restore the applied version of the file and put the change in a "
                               "new migration");
        } else if (it->state == DBK_MIGRATION_MISSING) {
            dbk__err(err, DBK_EINVALID,
                     "migration %lld (%s) is applied but its file is missing%s",
                     (long long)it->version, it->name,
                     problems > 1 ? " (and more problems)" : "");
            dbk__err_hint(err, "restore the file from version control, or run from the checkout "
                               "that applied it");
        } else if (it->state == DBK_MIGRATION_DIRTY) {
            dbk__err(err, DBK_EINVALID, "migration %lld (%s) is dirty%s",
                     (long long)it->version, it->name,
                     problems > 1 ? " (and more problems)" : "");
            dbk__err_hint(err, "run `dbkit migrate repair`");
        } else {
            continue;
        }
        rc = DBK_EINVALID;
        break;
    }
    if (out)
        *out = st;
    else
        dbk_migrate_status_free(st);
    return rc;
}

dbk_rc dbk_migrate_repair(dbk_db *db, int64_t version, bool mark_applied,
                          const dbk_migrate_opts *opts, dbk_error *err)
{
    if (!db)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_repair: db must not be NULL");
    if (version <= 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_repair: bad version %lld",
                        (long long)version);
    dbk__mctx m;
    dbk_rc rc = dbk__mctx_open(&m, db, opts, DBK__LOCK_MIGRATE, err);
    if (rc == DBK_OK)
        rc = dbk__mctx_lock(&m, err);
    if (rc == DBK_OK)
        rc = dbk__mctx_begin(&m, err);
    if (rc == DBK_OK)
        rc = ensure_history(&m, err);
    int64_t dirty = 0;
    dbk_value v = dbk_int64(version);
    if (rc == DBK_OK) {
        rc = dbk_db_query_int64(m.db, "SELECT dirty FROM dbkit_migrations WHERE version = $1", &v,
                                1, &dirty, err);
        if (rc == DBK_ENOT_FOUND || (rc == DBK_OK && dirty == 0)) {
            rc = dbk__err(err, DBK_ENOT_FOUND, "migration %lld is not dirty: nothing to repair",
                          (long long)version);
            dbk__err_hint(err, "`dbkit migrate status` shows dirty migrations");
        }
    }
    if (rc == DBK_OK) {
        rc = dbk_db_exec(m.db,
                         mark_applied
                             ? "UPDATE dbkit_migrations SET dirty = 0, statements_done = 0, "
                               "owner = NULL WHERE version = $1"
                             : "DELETE FROM dbkit_migrations WHERE version = $1",
                         &v, 1, NULL, err);
    }
    if (rc == DBK_OK)
        rc = dbk__mctx_commit(&m, err);
    dbk__mctx_close(&m);
    return rc;
}

/* ---- migrate new ---- */

static dbk_rc mkdir_p(const char *dir, dbk_error *err)
{
    char path[4096];
    size_t n = dbk__strlcpy(path, dir, sizeof path);
    if (n >= sizeof path)
        return dbk__err(err, DBK_EINVALID, "directory name too long");
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return dbk__err(err, DBK_EIO, "cannot create directory %s: %s", path, strerror(errno));
        path[i] = c;
    }
    return DBK_OK;
}

static const char TEMPLATE[] =
    "-- migrate:up\n"
    "-- The statements that make the change. dbkit runs them in one transaction\n"
    "-- (add transaction:false to the line above for CREATE INDEX CONCURRENTLY).\n"
    "\n"
    "\n"
    "-- migrate:down\n"
    "-- The statements that undo the up section, in reverse order.\n"
    "-- Leave empty if the migration cannot be undone.\n"
    "\n";

dbk_rc dbk_migrate_create(const char *dir, const char *name, int64_t now_unix, char *path_out,
                          size_t path_len, dbk_error *err)
{
    if (path_out && path_len)
        path_out[0] = '\0';
    if (!dir || !*dir || !name)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_create: dir and name must be set");
    char clean[101];
    size_t n = 0;
    for (const char *p = name; *p; p++) {
        char c = *p == ' ' ? '_' : *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            dbk__err(err, DBK_EINVALID, "bad migration name '%.100s': use letters, digits, '_' "
                                        "and '-'", name);
            return DBK_EINVALID;
        }
        if (n >= 100)
            return dbk__err(err, DBK_EINVALID, "the migration name is longer than 100 bytes");
        clean[n++] = c;
    }
    clean[n] = '\0';
    if (n == 0)
        return dbk__err(err, DBK_EINVALID, "the migration name is empty");
    dbk_rc rc = mkdir_p(dir, err);
    if (rc)
        return rc;
    time_t t = now_unix ? (time_t)now_unix : time(NULL);
    for (int attempt = 0; attempt < 600; attempt++, t++) {
        struct tm tm;
        gmtime_r(&t, &tm);
        char version[32];
        snprintf(version, sizeof version, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        char path[4096];
        int pl = snprintf(path, sizeof path, "%s/%s_%s.sql", dir, version, clean);
        if (pl < 0 || (size_t)pl >= sizeof path)
            return dbk__err(err, DBK_EINVALID, "path too long");
        /* Another file with the same version (other name) counts as taken. */
        bool taken = false;
        char prefix[40];
        snprintf(prefix, sizeof prefix, "%s_", version);
        DIR *d = opendir(dir);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL)
                if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
                    taken = true;
            closedir(d);
        }
        if (taken)
            continue;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno == EEXIST)
            continue;
        if (fd < 0)
            return dbk__err(err, DBK_EIO, "cannot create %s: %s", path, strerror(errno));
        size_t off = 0, len = sizeof TEMPLATE - 1;
        while (off < len) {
            ssize_t w = write(fd, TEMPLATE + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = errno;
                close(fd);
                unlink(path);
                return dbk__err(err, DBK_EIO, "cannot write %s: %s", path, strerror(e));
            }
            off += (size_t)w;
        }
        if (close(fd) != 0)
            return dbk__err(err, DBK_EIO, "cannot write %s: %s", path, strerror(errno));
        if (path_out && path_len)
            dbk__strlcpy(path_out, path, path_len);
        return DBK_OK;
    }
    return dbk__err(err, DBK_EIO, "no free migration version in the next 10 minutes in %s", dir);
}
