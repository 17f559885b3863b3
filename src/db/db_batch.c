/*
 * The serial fallback of a batch: the items run one after another through
 * the executor's run op, for engines without a pipeline (SQLite, where a
 * round trip is a function call anyway) and for connections that cannot
 * pipeline. An all-or-nothing batch runs inside BEGIN / COMMIT, or inside
 * a SAVEPOINT when a transaction is already open, and the first failure
 * undoes the others (marked DBK_ENOT_RUN).
 *
 * It belongs to the db layer: the connection's and the pool's executors
 * call it, and it uses only the executor and the driver layer's items.
 */
#include <stdio.h>

#include "db_int.h"

static dbk_rc ctl(dbk_db *db, const char *sql, dbk_error *err)
{
    return db->ops->run(db, sql, NULL, 0, NULL, NULL, err);
}

dbk_rc dbk__db_batch_serial(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic, bool in_tx)
{
    dbk_error e;
    dbk_rc first = DBK_OK;
    size_t failed_at = n;
    if (atomic) {
        dbk_rc rc = ctl(db, in_tx ? "SAVEPOINT dbk_batch" : "BEGIN", &e);
        if (rc) {
            for (size_t i = 0; i < n; i++)
                dbk__driver_item_fail(&items[i], i ? DBK_ENOT_RUN : rc, i ? NULL : &e);
            return rc;
        }
    }
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (atomic && failed_at < n) {
            dbk__driver_item_failf(it, DBK_ENOT_RUN,
                             "not run: statement %zu of the all-or-nothing batch failed",
                             failed_at);
            continue;
        }
        int64_t aff = 0;
        dbk_rc rc = db->ops->run(db, it->sql, it->params, it->nparams, &it->res, &aff, &e);
        it->done_ns = dbk__now_ns();
        if (rc) {
            dbk__driver_item_fail(it, rc, &e);
            if (first == DBK_OK) {
                first = rc;
                failed_at = i;
            }
            if (rc == DBK_ECONN_LOST) {
                /* Nothing after this can run on this connection. */
                for (size_t k = i + 1; k < n; k++)
                    dbk__driver_item_failf(&items[k], DBK_ENOT_RUN,
                                     "not run: the connection was lost at statement %zu", i);
                break;
            }
        } else {
            it->rc = DBK_OK;
            size_t nr = it->res ? dbk_result_nrows(it->res) : 0;
            it->affected = nr ? (int64_t)nr : aff;
        }
    }
    if (!atomic)
        return first;
    if (first == DBK_OK) {
        dbk_rc rc = ctl(db, in_tx ? "RELEASE SAVEPOINT dbk_batch" : "COMMIT", &e);
        if (rc == DBK_OK)
            return DBK_OK;
        for (size_t i = 0; i < n; i++)
            dbk__driver_item_fail(&items[i], rc == DBK_ECONN_LOST ? DBK_ECONN_LOST : rc, &e);
        return rc;
    }
    if (in_tx) {
        if (ctl(db, "ROLLBACK TO SAVEPOINT dbk_batch", &e) == DBK_OK)
            ctl(db, "RELEASE SAVEPOINT dbk_batch", &e);
    } else {
        ctl(db, "ROLLBACK", &e);
    }
    for (size_t i = 0; i < failed_at; i++)
        dbk__driver_item_failf(&items[i], DBK_ENOT_RUN,
                         "rolled back: statement %zu of the all-or-nothing batch failed",
                         failed_at);
    return first;
}
