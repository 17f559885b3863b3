/*
 * migrate_impl.h - what the files of the migrator share: the history as
 * read from the database and the functions one file calls in another.
 *
 *   migrate.c     apply and revert: up, down, redo, one step per transaction
 *   mig_session.c the session: the pinned connection, the lock, BEGIN,
 *                 running one section of a file
 *   mig_history.c the history table: create, read, check against the files,
 *                 insert
 *   mig_status.c  status, validate, repair
 *   mig_create.c  dbkit migrate new: a new file from the template
 *
 * migrate.c's opening comment says how the migrator works.
 */
#ifndef DBK_MIGRATE_IMPL_H
#define DBK_MIGRATE_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/internal.h"
#include "../db/db_int.h"
#include "../driver/dialect.h"
#include "../driver/driver.h"
#include "migrate_int.h"

#define DEFAULT_LOCK_TIMEOUT_MS 60000

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

dbk_rc dbk__mig_exec0(dbk__mctx *m, const char *sql, dbk_error *err);

void dbk__mig_prefix_error(dbk_error *err, const char *path, int line);

dbk_rc dbk__mig_ensure_history(dbk__mctx *m, dbk_error *err);

void dbk__mig_history_free(history *h);

const hist_row *dbk__mig_history_find(const history *h, int64_t version);

dbk_rc dbk__mig_table_exists(dbk__mctx *m, const char *table, bool *exists, dbk_error *err);

dbk_rc dbk__mig_load_history(dbk__mctx *m, history *h, dbk_error *err);

const dbk__migfile *dbk__mig_set_find(const dbk__migset *set, int64_t version);

dbk_rc dbk__mig_check_history(dbk__mctx *m, const dbk__migset *set, const history *h,
                            bool *warned_missing, bool *in_progress, dbk_error *err);

dbk_rc dbk__mig_insert_history(dbk__mctx *m, const dbk__migfile *f, int64_t duration_ms, int dirty,
                             dbk_error *err);

#endif
