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
#include "migrate_impl.h"

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
    dbk_migrate_event ev = event_of(DBK_MIGRATE_EVENT_START, DBK_MIGRATE_ACTION_UP, f, sec);
    dbk__mctx_report(m, &ev);
    dbk_rc rc;
    if (sec->transactional) {
        rc = dbk__mctx_run_section(m, f, sec, DBK_MIGRATE_ACTION_UP, 0, NULL, NULL, t0, err);
        if (rc == DBK_OK)
            rc = dbk__mig_insert_history(m, f, (dbk__now_ns() - t0) / 1000000, 0, err);
        if (rc == DBK_OK)
            rc = dbk__mctx_commit(m, err);
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
    } else {
        /* Record the attempt first: if we die midway, the row says so. */
        rc = dbk__mig_insert_history(m, f, 0, 1, err);
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
    ev = event_of(DBK_MIGRATE_EVENT_DONE, DBK_MIGRATE_ACTION_UP, f, sec);
    ev.duration_ms = (dbk__now_ns() - t0) / 1000000;
    dbk__mctx_report(m, &ev);
    return DBK_OK;
}

/* Reverts one migration inside the open step transaction. */
static dbk_rc revert_one(dbk__mctx *m, const dbk__migfile *f, dbk_error *err)
{
    const dbk__section *sec = dbk__mig_section(f, DBK__DIR_DOWN, m->engine);
    int64_t t0 = dbk__now_ns();
    dbk_migrate_event ev = event_of(DBK_MIGRATE_EVENT_START, DBK_MIGRATE_ACTION_DOWN, f, sec);
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
    ev = event_of(DBK_MIGRATE_EVENT_DONE, DBK_MIGRATE_ACTION_DOWN, f, sec);
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
        if (dbk__mctx_tx_locks(m))
            rc = dbk__mig_ensure_history(m, err);
        if (rc == DBK_OK)
            rc = dbk__mig_load_history(m, h, err);
        bool busy = false;
        if (rc == DBK_OK) {
            rc = dbk__mig_check_history(m, set, h, warned_missing, &busy, err);
            if (rc)
                dbk__mig_history_free(h);
        }
        if (rc) {
            dbk__mctx_rollback(m);
            return rc;
        }
        if (!busy)
            return DBK_OK;
        /* SQLite: another live process is applying a non-transactional
         * migration. Let it finish. */
        dbk__mig_history_free(h);
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
    if (rc == DBK_OK && !dbk__mctx_tx_locks(m))
        rc = dbk__mig_ensure_history(m, err);
    if (rc) {
        dbk__mctx_close(m);
        dbk__migset_free(set);
    }
    return rc;
}

DBK__OPTS_INIT_FN(dbk_migrate_opts, DBK_MIGRATE_OPTS_VERSION)

dbk_rc dbk_migrate_up(dbk_db *db, const dbk_migrate_source *src, const dbk_migrate_opts *opts,
                      int *applied, dbk_error *err)
{
    if (applied)
        *applied = 0;
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_up: db and src must not be NULL");
    if (opts && dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
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
            if (!dbk__mig_history_find(&h, f->version))
                next = f;
        }
        dbk__mig_history_free(&h);
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
        const dbk__migfile *f = dbk__mig_set_find(set, row->version);
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
                dbk__mig_history_free(&h);
                dbk__mctx_rollback(m);
                break;
            }
        }
        const hist_row *top = h.n ? &h.rows[h.n - 1] : NULL;
        bool done = !top || count >= planned ||
                    (m->opts.has_target && top->version <= m->opts.target);
        int64_t v = top ? top->version : 0;
        dbk__mig_history_free(&h);
        if (done) {
            rc = dbk__mctx_commit(m, err);
            break;
        }
        const dbk__migfile *f = dbk__mig_set_find(set, v);
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
    if (opts && dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
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
    if (opts && dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
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
            dbk__mig_history_free(&h);
            rc = apply_one(&m, dbk__mig_set_find(&set, v), err);
        }
    }
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    return rc;
}
