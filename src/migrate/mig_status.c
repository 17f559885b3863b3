/*
 * mig_status.c - status, validate and repair: read-only views of the
 * history against the files, and the one call that records what a person
 * decided about a dirty row.
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
        const hist_row *row = dbk__mig_history_find(h, f->version);
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
        if (dbk__mig_set_find(set, row->version))
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
    rc = dbk__mig_table_exists(&m, "dbkit_migrations", &exists, err);
    if (rc == DBK_OK && exists)
        rc = dbk__mig_load_history(&m, &h, err);
    if (rc == DBK_OK)
        rc = build_status(&m, &set, &h, out, err);
    dbk__mig_history_free(&h);
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
    if (opts && dbk__opts_check(opts->version, DBK_MIGRATE_OPTS_VERSION, "dbk_migrate_opts", err))
        return DBK_EMISUSE;
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
        rc = dbk__mig_ensure_history(&m, err);
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
