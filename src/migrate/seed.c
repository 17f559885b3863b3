/*
 * Seeds: plain SQL files that fill a database with reference or demo data,
 * tracked so that each runs once per version of its file.
 *
 * A seed runs in one transaction together with its row in dbkit_seeds
 * (name, checksum, applied_at), so a failing seed leaves nothing behind and
 * a killed process leaves the seed unrecorded, to run again next time.
 * Concurrency follows the migrator: the PostgreSQL advisory lock (its own
 * key, so seeding never waits behind an unrelated migration lock holder
 * for long), BEGIN EXCLUSIVE on SQLite with the checksum re-read inside.
 * Seeds are expected to be idempotent (upserts on natural keys; see
 * docs/migrations.md): `--force` re-runs them all and must leave the same
 * data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../core/internal.h"
#include "migrate_int.h"

static dbk_rc ensure_seeds(dbk__mctx *m, dbk_error *err)
{
    char ddl[256];
    snprintf(ddl, sizeof ddl,
             "CREATE TABLE IF NOT EXISTS dbkit_seeds (name TEXT PRIMARY KEY, checksum TEXT NOT "
             "NULL, applied_at %s NOT NULL)",
             dbk__dialect_of(m->engine)->type_name(DBK_TYPE_TIMESTAMP));
    return dbk_db_exec(m->db, ddl, NULL, 0, NULL, err);
}

/* Runs one seed if needed. *ran is set when it ran. */
static dbk_rc seed_one(dbk__mctx *m, const dbk__migfile *f, bool *ran, dbk_error *err)
{
    *ran = false;
    dbk__mctx_wait_from_now(m);
    dbk_rc rc = dbk__mctx_begin(m, err);
    if (rc)
        return rc;
    if (dbk__mctx_tx_locks(m))
        rc = ensure_seeds(m, err);
    char sum[80] = "";
    bool found = false;
    if (rc == DBK_OK) {
        dbk_value name = dbk_text(f->filename);
        rc = dbk_db_query_text(m->db, "SELECT checksum FROM dbkit_seeds WHERE name = $1", &name,
                               1, sum, sizeof sum, NULL, err);
        if (rc == DBK_OK)
            found = true;
        else if (rc == DBK_ENOT_FOUND)
            rc = DBK_OK;
    }
    if (rc) {
        dbk__mctx_rollback(m);
        return rc;
    }
    dbk_migrate_event ev = {.action = DBK_MIGRATE_ACTION_SEED,
                            .name = f->filename,
                            .path = f->path,
                            .transactional = true};
    if (found && strcmp(sum, f->checksum) == 0 && !m->opts.force) {
        dbk__mctx_rollback(m);
        ev.kind = DBK_MIGRATE_EVENT_SKIPPED;
        dbk__mctx_report(m, &ev);
        return DBK_OK;
    }
    int64_t t0 = dbk__now_ns();
    ev.kind = DBK_MIGRATE_EVENT_START;
    dbk__mctx_report(m, &ev);
    rc = dbk__mctx_run_section(m, f, &f->sec[0], DBK_MIGRATE_ACTION_SEED, 0, NULL, NULL, t0, err);
    if (rc == DBK_OK) {
        dbk_value p[3] = {dbk_text(f->filename), dbk_text(f->checksum),
                          dbk_timestamp(dbk__wall_us())};
        rc = dbk_db_exec(m->db,
                         "INSERT INTO dbkit_seeds (name, checksum, applied_at) VALUES ($1, $2, $3) "
                         "ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, "
                         "applied_at = excluded.applied_at",
                         p, 3, NULL, err);
    }
    if (rc == DBK_OK)
        rc = dbk__mctx_commit(m, err);
    if (rc) {
        dbk__mctx_rollback(m);
        return rc;
    }
    ev.kind = DBK_MIGRATE_EVENT_DONE;
    ev.duration_ms = (dbk__now_ns() - t0) / 1000000;
    dbk__mctx_report(m, &ev);
    *ran = true;
    return DBK_OK;
}

dbk_rc dbk_seed_run(dbk_db *db, const dbk_migrate_source *src, const dbk_migrate_opts *opts,
                    int *ran, dbk_error *err)
{
    if (ran)
        *ran = 0;
    if (!db || !src)
        return dbk__err(err, DBK_EMISUSE, "dbk_seed_run: db and src must not be NULL");
    if (opts && dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
    const char *env = opts ? opts->env : NULL;
    dbk__migset set;
    dbk_rc rc = dbk__seedset_load(src, env, &set, err);
    if (rc)
        return rc;
    dbk__mctx m;
    rc = dbk__mctx_open(&m, db, opts, DBK__LOCK_SEED, err);
    if (rc) {
        dbk__migset_free(&set);
        return rc;
    }
    if (env && src->dir) {
        char sub[4096];
        struct stat stt;
        snprintf(sub, sizeof sub, "%s/%s", src->dir, env);
        if (stat(sub, &stt) != 0 || !S_ISDIR(stt.st_mode)) {
            char msg[256];
            int n = snprintf(msg, sizeof msg, "no seeds for environment '%s' (%.150s does not "
                             "exist)", env, sub);
            (void)n;
            dbk_migrate_event ev = {.kind = DBK_MIGRATE_EVENT_WARNING,
                                    .action = DBK_MIGRATE_ACTION_SEED,
                                    .name = "",
                                    .path = "",
                                    .message = msg};
            dbk__mctx_report(&m, &ev);
        }
    }
    rc = dbk__mctx_lock(&m, err);
    if (rc == DBK_OK && !dbk__mctx_tx_locks(&m))
        rc = ensure_seeds(&m, err);
    int count = 0;
    for (size_t i = 0; i < set.n && rc == DBK_OK; i++) {
        bool did = false;
        rc = seed_one(&m, &set.files[i], &did, err);
        count += did;
    }
    dbk__mctx_close(&m);
    dbk__migset_free(&set);
    if (ran)
        *ran = count;
    return rc;
}
