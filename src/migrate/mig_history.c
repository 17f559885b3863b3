/*
 * mig_history.c - the migrator's history table: created when missing, read
 * whole at the start of every step, checked against the files (a changed
 * file, a dirty row, a missing file) and written with each applied or
 * reverted migration in the same transaction.
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
#include "../driver/dialect.h"
#include "migrate_int.h"
#include "migrate_impl.h"

/* ---- the history table ---- */

/* The column types are the dialect's (BIGINT / INTEGER, TIMESTAMPTZ /
 * TEXT); `dirty` and `statements_done` are INTEGER on every engine. */
dbk_rc dbk__mig_ensure_history(dbk__mctx *m, dbk_error *err)
{
    const dbk__dialect *dia = dbk__dialect_of(m->engine);
    const char *i64 = dia->type_name(DBK_TYPE_INT64);
    char ddl[512];
    snprintf(ddl, sizeof ddl,
             "CREATE TABLE IF NOT EXISTS dbkit_migrations ("
             "version %s PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, "
             "applied_at %s NOT NULL, duration_ms %s NOT NULL DEFAULT 0, "
             "dirty INTEGER NOT NULL DEFAULT 0, statements_done INTEGER NOT NULL DEFAULT 0, "
             "owner TEXT)",
             i64, dia->type_name(DBK_TYPE_TIMESTAMP), i64);
    return dbk__mig_exec0(m, ddl, err);
}

void dbk__mig_history_free(history *h)
{
    free(h->rows);
    h->rows = NULL;
    h->n = 0;
}

const hist_row *dbk__mig_history_find(const history *h, int64_t version)
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
dbk_rc dbk__mig_table_exists(dbk__mctx *m, const char *table, bool *exists, dbk_error *err)
{
    int64_t n = 0;
    dbk_value p = dbk_text(table);
    dbk_rc rc =
        dbk_db_query_int64(m->db, dbk__dialect_of(m->engine)->table_exists_sql, &p, 1, &n, err);
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

dbk_rc dbk__mig_load_history(dbk__mctx *m, history *h, dbk_error *err)
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
        dbk__mig_prefix_error(err, "dbkit_migrations", 0);
        dbk__mig_history_free(h);
    }
    return rc;
}

const dbk__migfile *dbk__mig_set_find(const dbk__migset *set, int64_t version)
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
    if (!dbk__mctx_tx_locks(m) || !owner[0])
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
dbk_rc dbk__mig_check_history(dbk__mctx *m, const dbk__migset *set, const history *h,
                            bool *warned_missing, bool *in_progress, dbk_error *err)
{
    *in_progress = false;
    for (size_t i = 0; i < h->n; i++) {
        const hist_row *row = &h->rows[i];
        const dbk__migfile *f = dbk__mig_set_find(set, row->version);
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
                dbk_migrate_event ev = {.kind = DBK_MIGRATE_EVENT_WARNING, .version = row->version,
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

dbk_rc dbk__mig_insert_history(dbk__mctx *m, const dbk__migfile *f, int64_t duration_ms, int dirty,
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
        dbk__mig_prefix_error(err, "recording the migration in dbkit_migrations", 0);
    return rc;
}
