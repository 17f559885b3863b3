/*
 * The SQLite driver: dbkit's embedded engine behind the dbk__driver vtable.
 *
 * One sq_conn wraps one sqlite3 handle opened in multi-thread mode
 * (SQLITE_OPEN_NOMUTEX): a connection belongs to one thread at a time, so
 * SQLite's per-connection mutex would only cost time. Opening applies the
 * settings every service wants and SQLite does not default to: WAL,
 * synchronous=NORMAL under WAL, foreign keys on, a non-zero busy timeout,
 * extended result codes, and double-quoted string literals off (as on
 * PostgreSQL, "x" is an identifier, never a string).
 *
 * The hot path is a primary-key lookup, so run() is built to cost little
 * more than a hand-written prepare-once / bind / step / reset loop:
 *   - prepared statements are cached per connection, keyed by the SQL text:
 *     a hash table of chains over entries that also sit on an LRU list
 *     (bounded by stmt_cache_size; a hit is one hash of the text, one
 *     memcmp and a move to the front of the list, no allocation);
 *   - dbkit's placeholders are $1..$n; SQLite numbers parameters by first
 *     appearance, so "$2 ... $1" gives $2 index 1. Each entry carries the
 *     mapping from SQLite's index to the caller's parameter, computed once
 *     at prepare time together with the checks (too few, too many, unused);
 *   - parameters are bound SQLITE_STATIC: they live until run() returns,
 *     and bindings are cleared before it does;
 *   - the only allocations per call are the result's own.
 *
 * Statement timeouts use a progress handler that compares the monotonic
 * clock with a per-call deadline every few thousand VM instructions; it is
 * installed only when a timeout is configured.
 *
 * Errors are translated here and nowhere else: the extended result code
 * through dbk__rc_from_sqlite(), then refinements SQLite only states in its
 * message ("no such table" -> DBK_ESCHEMA; the table and columns of a
 * UNIQUE / NOT NULL failure, the name of a CHECK).
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

#include "../core/hash.h"
#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "sq_int.h"

/* ---- small helpers ---- */

/* Hash of the SQL text for the statement cache (core/hash.h). */
uint64_t dbk__sq_hash(const char *s, size_t len)
{
    return dbk__hash_words(s, len, 0);
}

/* Skips whitespace, comments and stray semicolons; returns the first byte of
 * anything else (or the terminating NUL). */
const char *dbk__sq_skip_blank(const char *p)
{
    for (;;) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v' ||
            *p == ';') {
            p++;
        } else if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            if (!e)
                return p + strlen(p); /* SQLite accepts an unterminated comment at the end */
            p = e + 2;
        } else {
            return p;
        }
    }
}

/* The deadline starts at the handler's first call, SQ_PROGRESS_OPS
 * instructions (about a microsecond) into the statement: a point lookup
 * finishes before that and never reads the clock at all. */
static int sq_progress(void *ctx)
{
    sq_conn *c = ctx;
    int64_t now = dbk__now_ns();
    if (c->deadline_ns == 0) {
        c->deadline_ns = now + (int64_t)c->armed_ms * 1000000LL;
        return 0;
    }
    if (now > c->deadline_ns) {
        c->timed_out = 1;
        return 1;
    }
    return 0;
}

/* Arms the limit of one call (the statement timeout, or the script
 * floor), when a timeout is configured at all. */
void dbk__sq_arm_deadline(sq_conn *c, int ms)
{
    c->timed_out = 0;
    c->armed_ms = ms;
    c->deadline_ns = 0;
}

static void copy_name(char *dst, size_t size, const char *src, size_t n)
{
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Fills err from the connection's last SQLite error `rc` (an extended code).
 * `what` (may be NULL) is appended to the message for context. */
dbk_rc dbk__sq_fail(sq_conn *c, int rc, const char *what, dbk_error *err)
{
    int primary = rc & 0xff;
    const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
    if (!msg)
        msg = sqlite3_errstr(rc);

    if (primary == SQLITE_INTERRUPT && c->timed_out) {
        dbk__err(err, DBK_ETIMEOUT, "statement cancelled after %s of %d ms%s%s",
                 c->armed_ms == c->stmt_timeout_ms ? "statement_timeout" : "the script limit",
                 c->armed_ms, what ? " " : "", what ? what : "");
        dbk__err_default_hint(err);
        return DBK_ETIMEOUT;
    }

    dbk_rc code = dbk__rc_from_sqlite(rc);
    const char *hint = NULL;
    const char *table = NULL, *cons = NULL;
    size_t table_len = 0, cons_len = 0;

    if (primary == SQLITE_ERROR) {
        static const struct {
            const char *prefix;
            const char *hint;
        } schema[] = {
            {"no such table: ", "the table does not exist: run the migrations (`dbkit migrate "
                                "up`) or check the table name"},
            {"no such column: ", "the column does not exist: check the schema and the "
                                 "migrations (`dbkit migrate status`)"},
            {"no such function: ", "the function does not exist in SQLite: check its name "
                                   "(SQLite has fewer built-in functions than PostgreSQL)"},
            {"no such index: ", "the index does not exist: run the migrations (`dbkit "
                                "migrate up`)"},
            {"no such view: ", "the view does not exist: run the migrations (`dbkit migrate "
                               "up`)"},
        };
        for (size_t i = 0; i < sizeof schema / sizeof schema[0]; i++) {
            size_t n = strlen(schema[i].prefix);
            if (strncmp(msg, schema[i].prefix, n) == 0) {
                code = DBK_ESCHEMA;
                hint = schema[i].hint;
                if (i == 0 || i == 4) {
                    /* "no such table: main.users" -> "users" */
                    table = msg + n;
                    const char *dot = strchr(table, '.');
                    if (dot)
                        table = dot + 1;
                    table_len = strlen(table);
                }
                break;
            }
        }
    } else if (primary == SQLITE_CONSTRAINT) {
        /* "UNIQUE constraint failed: users.email[, users.org]",
         * "UNIQUE constraint failed: index 'name'",
         * "NOT NULL constraint failed: users.email",
         * "CHECK constraint failed: name_or_expression". */
        const char *colon = strstr(msg, "constraint failed: ");
        if (colon) {
            const char *detail = colon + strlen("constraint failed: ");
            if (strncmp(detail, "index '", 7) == 0) {
                cons = detail + 7;
                const char *q = strchr(cons, '\'');
                cons_len = q ? (size_t)(q - cons) : strlen(cons);
            } else {
                cons = detail;
                cons_len = strlen(detail);
                if (rc != SQLITE_CONSTRAINT_CHECK) {
                    const char *dot = strchr(detail, '.');
                    if (dot) {
                        table = detail;
                        table_len = (size_t)(dot - detail);
                    }
                }
            }
        }
        if (code == DBK_EFOREIGN_KEY)
            hint = "the referenced row does not exist (or rows still refer to the one being "
                   "deleted); SQLite does not say which foreign key";
    }

    if (what)
        dbk__err(err, code, "%s %s", msg, what);
    else
        dbk__err(err, code, "%s", msg);
    if (err) {
        if (table)
            copy_name(err->table_name, sizeof err->table_name, table, table_len);
        if (cons)
            copy_name(err->constraint_name, sizeof err->constraint_name, cons, cons_len);
        if (code == DBK_EBUSY && c->db) {
            size_t n = strlen(err->message);
            snprintf(err->message + n, sizeof err->message - n, " (busy_timeout is %d ms)",
                     c->busy_timeout_ms);
        }
    }
    if (rc == SQLITE_BUSY_SNAPSHOT)
        hint = "another connection wrote since this transaction first read, so it cannot "
               "write without restarting (waiting cannot help); dbk_tx_run() retries it, "
               "and BEGIN IMMEDIATE avoids it for read-then-write transactions";
    if (hint)
        dbk__err_hint(err, "%s", hint);
    dbk__err_default_hint(err);
    return code;
}

/* ---- open / close ---- */

static void sq_close(void *impl)
{
    sq_conn *c = impl;
    if (!c)
        return;
    if (dbk__owner_forked(&c->owner)) {
        /* The handle, its statements and its file locks are the parent's:
         * closing them here could checkpoint or unlink its WAL. They are
         * left to the child's exit; only this wrapper goes. */
        free(c->path);
        free(c);
        return;
    }
    dbk__sq_cache_clear(c);
    free(c->buckets);
    if (c->db)
        sqlite3_progress_handler(c->db, 0, NULL, NULL);
    if (c->db)
        sqlite3_close_v2(c->db); /* rolls back an open transaction */
    free(c->restore_sql);
    free(c->path);
    free(c);
}

static int one_of(const char *v, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcasecmp(v, *allowed) == 0)
            return 1;
    return 0;
}

/* Reads the single text value of a PRAGMA into buf. */
int dbk__sq_pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size)
{
    sqlite3_stmt *st = NULL;
    buf[0] = '\0';
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t)
            dbk__strlcpy(buf, (const char *)t, size);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Why opening failed, for a person: which path, and the likely fix. */
static dbk_rc open_error(sq_conn *c, int rc, const struct dbk_config *cfg, dbk_error *err)
{
    int primary = rc & 0xff;
    const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
    dbk_rc code;
    if (primary == SQLITE_CANTOPEN || primary == SQLITE_PERM || primary == SQLITE_AUTH)
        code = DBK_EUNAVAILABLE;
    else if (primary == SQLITE_NOMEM)
        code = DBK_ENOMEM;
    else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        code = DBK_EBUSY;
    else
        code = DBK_EIO;
    dbk__err(err, code, "cannot open sqlite database \"%s\": %s", c->path, msg);

    if (primary == SQLITE_CANTOPEN) {
        /* Say whether the directory is the problem. */
        char dir[1024];
        dbk__strlcpy(dir, c->path, sizeof dir);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            dbk__strlcpy(dir, ".", sizeof dir);
        struct stat sb;
        if (stat(dir, &sb) != 0)
            dbk__err_hint(err, "the directory \"%s\" does not exist: create it first (dbkit "
                          "creates the database file, not its directory)", dir);
        else if (cfg->sqlite_readonly || !cfg->sqlite_create)
            dbk__err_hint(err, "mode=%s opens an existing file only: check the path, or use "
                          "mode=rwc (the default) to create it", cfg->sqlite_readonly ? "ro" : "rw");
        else
            dbk__err_hint(err, "check that \"%s\" is writable by this process and the path "
                          "names a file, not a directory", dir);
    } else if (primary == SQLITE_NOTADB) {
        dbk__err_hint(err, "the file exists but is not an sqlite database: check the path in "
                           "DATABASE_URL");
    } else if (code == DBK_EBUSY) {
        dbk__err_hint(err, "another process holds an exclusive lock on the database");
    }
    return code;
}

static dbk_rc sq_open(const struct dbk_config *cfg, void **impl, dbk_error *err)
{
    if (!cfg || !impl)
        return dbk__err(err, DBK_EMISUSE, "sqlite open: config and impl must not be NULL");
    *impl = NULL;
    if (!sqlite3_threadsafe())
        return dbk__err(err, DBK_ECONFIG, "the sqlite library was built without thread "
                        "support (SQLITE_THREADSAFE=0); dbkit needs 1 or 2");

    int memory = cfg->sqlite_memory ||
                 (cfg->sqlite_path && strcmp(cfg->sqlite_path, ":memory:") == 0);
    const char *path = memory ? ":memory:" : cfg->sqlite_path;
    if (!path || !*path)
        return dbk__err(err, DBK_ECONFIG, "no sqlite database path configured");

    const char *jm = cfg->journal_mode && *cfg->journal_mode ? cfg->journal_mode : "wal";
    static const char *const journal_modes[] = {"delete", "truncate", "persist", "memory",
                                                "wal",    "off",      NULL};
    if (!one_of(jm, journal_modes))
        return dbk__err(err, DBK_ECONFIG, "journal_mode \"%s\" is not one of delete, truncate, "
                        "persist, memory, wal, off", jm);
    const char *sync = cfg->synchronous && *cfg->synchronous ? cfg->synchronous : NULL;
    static const char *const sync_modes[] = {"off", "normal", "full", "extra",
                                             "0",   "1",      "2",    "3",   NULL};
    if (sync && !one_of(sync, sync_modes))
        return dbk__err(err, DBK_ECONFIG, "synchronous \"%s\" is not one of off, normal, full, "
                        "extra", sync);

    sq_conn *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    dbk__owner_init(&c->owner);
    c->path = strdup(path);
    if (!c->path) {
        free(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    }
    c->busy_timeout_ms = cfg->busy_timeout_ms >= 0 ? cfg->busy_timeout_ms : SQ_DEFAULT_BUSY_MS;
    c->stmt_timeout_ms = cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms : 0;
    c->cache_cap = cfg->stmt_cache_size >= 0 ? cfg->stmt_cache_size : SQ_DEFAULT_CACHE;
    if (c->cache_cap > 0) {
        size_t nb = 16;
        while (nb < (size_t)c->cache_cap * 2 && nb < SQ_MAX_BUCKETS)
            nb *= 2;
        c->buckets = calloc(nb, sizeof *c->buckets);
        if (!c->buckets) {
            sq_close(c);
            return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
        }
        c->mask = nb - 1;
    }

    int flags = SQLITE_OPEN_NOMUTEX;
    if (cfg->sqlite_readonly && !memory)
        flags |= SQLITE_OPEN_READONLY;
    else if (cfg->sqlite_create || memory)
        flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    else
        flags |= SQLITE_OPEN_READWRITE; /* mode=rw: the file must exist */
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    int rc = sqlite3_open_v2(path, &c->db, flags, NULL);
    if (rc == SQLITE_OK)
        c->max_length = sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, -1);
    if (rc != SQLITE_OK) {
        dbk_rc drc = open_error(c, rc, cfg, err);
        sq_close(c);
        return drc;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, c->busy_timeout_ms);
    /* As on PostgreSQL, "x" is an identifier, never a string literal. */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);

    char sqlbuf[96], got[32];
    int wal = 0;
    if (!memory && !cfg->sqlite_readonly) {
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA journal_mode=%s", jm);
        /* Switching a new file to WAL takes an exclusive lock; when several
         * processes open the same new file at once, SQLite may answer
         * SQLITE_BUSY at once instead of calling the busy handler (the
         * switch cannot wait while it holds a shared lock), so the switch is
         * retried here, bounded by the busy timeout. */
        int64_t give_up = dbk__now_ns() + (int64_t)c->busy_timeout_ms * 1000000;
        long nap_us = 1000;
        while ((rc = dbk__sq_pragma_text(c->db, sqlbuf, got, sizeof got)) != SQLITE_OK &&
               ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) &&
               dbk__now_ns() < give_up) {
            struct timespec nap = {0, nap_us * 1000};
            nanosleep(&nap, NULL);
            if (nap_us < 16000)
                nap_us *= 2;
        }
        if (rc != SQLITE_OK)
            goto pragma_failed;
        if (strcasecmp(got, jm) != 0)
            dbk__log(DBK_LOG_WARN, "sqlite database \"%s\": journal_mode=%s was requested but "
                     "the database uses %s", c->path, jm, got);
        wal = strcasecmp(got, "wal") == 0;
    }
    if (!memory && !cfg->sqlite_readonly && (sync || wal)) {
        /* NORMAL is durable against application crashes under WAL; in the
         * rollback-journal modes SQLite's own default (FULL) stays unless
         * synchronous is configured. */
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA synchronous=%s", sync ? sync : "normal");
        rc = sqlite3_exec(c->db, sqlbuf, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto pragma_failed;
    }
    rc = sqlite3_exec(c->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto pragma_failed;
    /* cache_size (KiB, a negative cache_size to SQLite) and mmap_size
     * (MiB): per connection, and restored by a reset like the rest. */
    if (cfg->sqlite_cache_kib > 0) {
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA cache_size=-%d", cfg->sqlite_cache_kib);
        if ((rc = sqlite3_exec(c->db, sqlbuf, NULL, NULL, NULL)) != SQLITE_OK)
            goto pragma_failed;
    }
    if (cfg->sqlite_mmap_mib > 0) {
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA mmap_size=%lld",
                 (long long)cfg->sqlite_mmap_mib * 1048576LL);
        if ((rc = sqlite3_exec(c->db, sqlbuf, NULL, NULL, NULL)) != SQLITE_OK)
            goto pragma_failed;
    }
    rc = dbk__sq_restore_sql_build(c); /* the settings above are what a reset restores */
    if (rc == SQLITE_NOMEM) {
        sq_close(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    }
    if (rc != SQLITE_OK)
        goto pragma_failed;
    if (c->stmt_timeout_ms > 0)
        sqlite3_progress_handler(c->db, SQ_PROGRESS_OPS, sq_progress, c);

    *impl = c;
    return DBK_OK;

pragma_failed: {
    dbk_rc drc = open_error(c, sqlite3_extended_errcode(c->db), cfg, err);
    sq_close(c);
    return drc;
}
}

const dbk__driver dbk__driver_sqlite = {
    .engine = DBK_ENGINE_SQLITE,
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .run = dbk__sq_run,
    .script = dbk__sq_script,
    .ping = dbk__sq_ping,
    .txstate = dbk__sq_txstate,
    .reset = dbk__sq_reset,
    .server_version = dbk__sq_server_version,
};
