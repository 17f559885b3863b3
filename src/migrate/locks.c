/*
 * Lock timeouts for migration statements on PostgreSQL.
 *
 * Why. A migration that asks for an ACCESS EXCLUSIVE lock on a table held
 * by a long transaction waits; every query that arrives after it queues
 * behind its request, so the table is down until the long transaction
 * ends. With a lock_timeout the statement gives up instead, quickly, and
 * the queue drains. Most such waits are short (an autovacuum, a report), so
 * the statement is retried a bounded number of times with back-off before
 * `up` fails; when it does fail, the error names the sessions that hold
 * locks on the statement's tables (found from the statement's own parse
 * tree, pg_locks and pg_stat_activity), which is what the person on call
 * needs to know.
 *
 * Shape. dbk__mctx_section_timeouts() sets lock_timeout and
 * statement_timeout before a section runs: SET LOCAL inside the section's
 * transaction, plain SET (reset after the section) for a transaction:false
 * section. dbk__mctx_exec_pg() runs one statement; inside a transaction it
 * wraps it in a savepoint so that a lock timeout can be rolled back to and
 * the statement retried without losing the statements before it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "../db/db_int.h"
#include "lint_int.h"
#include "migrate_int.h"

#define DEFAULT_STMT_LOCK_TIMEOUT_MS 5000
#define DEFAULT_LOCK_RETRIES 2
#define RETRY_BACKOFF_MS 200 /* doubled per retry: 200, 400, 800 ... */
#define RETRY_BACKOFF_MAX_MS 5000

/* One timeout variable into *slot, when the caller left it 0: a number
 * of milliseconds, 0 meaning none (-1 in the options). Unset or empty
 * leaves *slot alone. The message names the variable, not its value. */
static dbk_rc env_timeout(const char *name, int *slot, dbk_error *err)
{
    const char *v = getenv(name);
    if (!v || !*v || *slot != 0)
        return DBK_OK;
    long long n;
    if (!dbk__parse_decimal(v, strlen(v), 0, 86400000LL, &n)) {
        dbk__err(err, DBK_ECONFIG, "%s must be a whole number of milliseconds from 0 to "
                 "86400000", name);
        dbk__err_hint(err, "0 sets no timeout; unset the variable for dbkit's default");
        return DBK_ECONFIG;
    }
    *slot = n == 0 ? -1 : (int)n;
    return DBK_OK;
}

/* The environment is read here, when the program asks, and never inside
 * dbk_migrate_up(): the same rule as dbk_config_from_env(). */
dbk_rc dbk_migrate_opts_from_env(dbk_migrate_opts *opts, dbk_error *err)
{
    if (!opts)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_opts_from_env: opts is NULL");
    if (dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
    dbk_migrate_opts o = *opts;
    dbk_rc rc = env_timeout("DB_MIGRATION_LOCK_TIMEOUT_MS", &o.statement_lock_timeout_ms, err);
    if (rc == DBK_OK)
        rc = env_timeout("DB_MIGRATION_STATEMENT_TIMEOUT_MS", &o.statement_timeout_ms, err);
    if (rc == DBK_OK)
        *opts = o;
    return rc;
}

int dbk_migrate_default_lock_timeout_ms(void)
{
    return DEFAULT_STMT_LOCK_TIMEOUT_MS;
}

static int lock_timeout_of(const dbk__mctx *m)
{
    int v = m->opts.statement_lock_timeout_ms;
    if (v == 0)
        v = DEFAULT_STMT_LOCK_TIMEOUT_MS;
    return v < 0 ? 0 : v;
}

static int statement_timeout_of(const dbk__mctx *m)
{
    int v = m->opts.statement_timeout_ms;
    if (v == 0)
        v = DBK__MIGRATION_WAIT_MS;
    return v < 0 ? 0 : v;
}

dbk_rc dbk__mctx_section_timeouts(dbk__mctx *m, bool transactional, dbk_error *err)
{
    const dbk__dialect *dia = dbk__dialect_of(m->engine);
    if (!dia->timeouts_sql)
        return DBK_OK;
    char sql[160];
    dia->timeouts_sql(transactional, lock_timeout_of(m), statement_timeout_of(m), sql, sizeof sql);
    return dbk__db_exec_script_within(m->db, sql, DBK__MIGRATION_WAIT_MS, err);
}

void dbk__mctx_section_timeouts_reset(dbk__mctx *m, bool transactional)
{
    const char *reset = dbk__dialect_of(m->engine)->timeouts_reset_sql;
    if (!reset || transactional)
        return;
    dbk_error e;
    dbk__db_exec_script_within(m->db, reset, DBK__MIGRATION_WAIT_MS, &e);
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* "; held by pid 123 (application 'x', idle in transaction since 12:00:01, AccessShareLock on
 * orders)" for every other session holding a lock on the statement's tables. */
static void blockers(dbk__mctx *m, const char *sql, char *buf, size_t n)
{
    buf[0] = '\0';
    char rels[8][128];
    size_t nr = dbk__lint_relations(sql, rels, 8);
    if (nr == 0)
        return;
    char list[8 * 130] = "";
    size_t o = 0;
    for (size_t i = 0; i < nr; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? "," : "", rels[i]);
    dbk_value p = dbk_text(list);
    dbk_result *r = NULL;
    dbk_error e;
    if (dbk_db_query(m->db,
                     "SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), "
                     "coalesce(to_char(a.xact_start AT TIME ZONE 'UTC', "
                     "'YYYY-MM-DD HH24:MI:SS'), ''), string_agg(DISTINCT l.mode, ','), "
                     "c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                     "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                     "WHERE l.granted AND l.pid <> pg_backend_pid() AND l.relation = ANY("
                     "SELECT to_regclass(x)::oid FROM unnest(string_to_array($1, ',')) x) "
                     "GROUP BY 1, 2, 3, 4, 6 ORDER BY 1 LIMIT 5",
                     &p, 1, &r, &e) != DBK_OK) {
        return;
    }
    size_t w = 0;
    for (size_t i = 0; i < dbk_result_nrows(r) && w + 1 < n; i++) {
        int64_t pid = 0;
        const char *app = "", *state = "", *since = "", *modes = "", *rel = "";
        dbk_result_get_int64(r, i, 0, &pid, &e);
        dbk_result_get_text(r, i, 1, &app, NULL, &e);
        dbk_result_get_text(r, i, 2, &state, NULL, &e);
        dbk_result_get_text(r, i, 3, &since, NULL, &e);
        dbk_result_get_text(r, i, 4, &modes, NULL, &e);
        dbk_result_get_text(r, i, 5, &rel, NULL, &e);
        int k = snprintf(buf + w, n - w,
                         "%s server pid %lld (application '%s', %s%s%s%s, holding %s on %s)",
                         i ? ";" : "; blocked by", (long long)pid, app ? app : "",
                         state && *state ? state : "state unknown",
                         since && *since ? ", transaction open since " : "",
                         since ? since : "", since && *since ? " UTC" : "", modes ? modes : "",
                         rel ? rel : "");
        if (k < 0 || (size_t)k >= n - w)
            break;
        w += (size_t)k;
    }
    dbk_result_free(r);
}

static bool is_lock_timeout(const dbk_error *err)
{
    return err && strcmp(err->sqlstate, "55P03") == 0;
}

dbk_rc dbk__mctx_exec_pg(dbk__mctx *m, const char *sql, bool transactional, dbk_error *err)
{
    int retries = m->opts.lock_retries == 0 ? DEFAULT_LOCK_RETRIES
                  : m->opts.lock_retries < 0 ? 0
                                             : m->opts.lock_retries;
    /* In a transaction the savepoint lets us both retry and, after the
     * last attempt, still query who holds the lock. */
    bool guard = transactional && lock_timeout_of(m) > 0;
    int64_t backoff = RETRY_BACKOFF_MS;
    for (int attempt = 0;; attempt++) {
        dbk_rc rc;
        if (guard) {
            rc = dbk_db_exec(m->db, "SAVEPOINT dbkit_lock_retry", NULL, 0, NULL, err);
            if (rc)
                return rc;
        }
        rc = dbk__db_exec_script_within(m->db, sql, DBK__MIGRATION_WAIT_MS, err);
        if (rc == DBK_OK) {
            if (guard)
                rc = dbk_db_exec(m->db, "RELEASE SAVEPOINT dbkit_lock_retry", NULL, 0, NULL,
                                 err);
            return rc;
        }
        if (!is_lock_timeout(err))
            return rc;
        /* Timed out on a lock: undo this statement only (in a transaction)
         * and try again after a pause, or name who holds the lock. */
        if (guard) {
            dbk_error e2;
            if (dbk_db_exec(m->db, "ROLLBACK TO SAVEPOINT dbkit_lock_retry", NULL, 0, NULL,
                            &e2) != DBK_OK)
                return rc;
        }
        if (attempt >= retries || (transactional && !guard)) {
            char who[700];
            dbk_error saved = *err;
            if (!transactional || guard)
                blockers(m, sql, who, sizeof who);
            else
                who[0] = '\0';
            *err = saved;
            char msg[DBK_ERROR_MESSAGE_MAX];
            snprintf(msg, sizeof msg,
                     "could not get a lock within lock_timeout %d ms (%d attempt%s)%.380s",
                     lock_timeout_of(m), attempt + 1, attempt ? "s" : "", who);
            dbk__strlcpy(err->message, msg, sizeof err->message);
            dbk__err_hint(err, "another session holds a lock on the table: let it finish (or "
                               "end it), then run the migration again; "
                               "DB_MIGRATION_LOCK_TIMEOUT_MS sets the wait");
            err->code = rc;
            return rc;
        }
        sleep_ms(backoff);
        backoff = backoff * 2 > RETRY_BACKOFF_MAX_MS ? RETRY_BACKOFF_MAX_MS : backoff * 2;
    }
}
