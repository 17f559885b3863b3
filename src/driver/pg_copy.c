/*
 * pg_copy.c - the PostgreSQL driver's COPY FROM STDIN (bulk insert): rows
 * produced by the caller's fill callback are written under the statement
 * deadline and the COPY ended with an error message when the fill fails.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

/* ---- COPY FROM STDIN (bulk insert) ---- */

/* Queues one piece of data, waiting (bounded) while libpq's buffer is full
 * in nonblocking mode. */
static dbk_rc copy_put(pg_conn *pc, const char *buf, int len, int64_t deadline, dbk_error *err)
{
    for (;;) {
        int r = PQputCopyData(pc->conn, buf, len);
        if (r == 1)
            return DBK_OK;
        if (r < 0)
            return dbk__pg_lost(pc, err);
        dbk_rc rc = dbk__pg_flush_out(pc, deadline, dbk__pg_budget_of(deadline), true, err);
        if (rc)
            return rc;
    }
}

static dbk_rc copy_end(pg_conn *pc, const char *errmsg, int64_t deadline, dbk_error *err)
{
    for (;;) {
        int r = PQputCopyEnd(pc->conn, errmsg);
        if (r == 1)
            return dbk__pg_flush_out(pc, deadline, dbk__pg_budget_of(deadline), true, err);
        if (r < 0)
            return dbk__pg_lost(pc, err);
        dbk_rc rc = dbk__pg_flush_out(pc, deadline, dbk__pg_budget_of(deadline), true, err);
        if (rc)
            return rc;
    }
}

dbk_rc dbk__pg_copy_in(void *impl, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err)
{
    pg_conn *pc = impl;
    dbk_rc rc0 = dbk__pg_ready(pc, err);
    if (rc0)
        return rc0;
    int64_t deadline = dbk__pg_stmt_deadline(pc);
    if (!PQsendQueryParams(pc->conn, sql, 0, NULL, NULL, NULL, NULL, 0))
        return dbk__pg_lost(pc, err);
    dbk_rc rc = dbk__pg_flush_out(pc, deadline, dbk__pg_budget_of(deadline), true, err);
    if (rc)
        return rc;
    if ((rc = dbk__pg_await_ready(pc, deadline, dbk__pg_budget_of(deadline), true, err)))
        return rc;
    PGresult *res = PQgetResult(pc->conn);
    if (!res)
        return dbk__pg_lost(pc, err);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        /* Refused before any data (no such table, a column, ...): the
         * ordinary error, after the rest of the command's results. */
        PGresult *keep = res, *r;
        while (!(rc = dbk__pg_await_ready(pc, deadline, dbk__pg_budget_of(deadline), true, err)) &&
               (r = PQgetResult(pc->conn)))
            PQclear(r);
        if (rc) {
            PQclear(keep);
            return rc;
        }
        return dbk__pg_finish(pc, keep, false, NULL, rows, err);
    }
    PQclear(res);
    enum { CHUNK = 256 * 1024 };
    char *buf = malloc(CHUNK);
    dbk_error fill_err;
    dbk_rc fill_rc = DBK_OK;
    if (!buf) {
        fill_rc = dbk__err(&fill_err, DBK_ENOMEM, "out of memory buffering COPY data");
    } else {
        for (;;) {
            long k = fill(ctx, buf, CHUNK, &fill_err);
            if (k < 0) {
                fill_rc = fill_err.code ? fill_err.code : DBK_EINTERNAL;
                break;
            }
            if (k == 0)
                break;
            deadline = dbk__pg_stmt_deadline(pc);
            if ((rc = copy_put(pc, buf, (int)k, deadline, err))) {
                free(buf);
                return rc;
            }
        }
        free(buf);
    }
    /* On a fill error the server is told to abandon the COPY: nothing of
     * it is written. */
    deadline = dbk__pg_stmt_deadline(pc);
    rc = copy_end(pc, fill_rc ? "dbkit: the data could not be encoded" : NULL, deadline, err);
    if (rc)
        return rc;
    bool copy_refused = false;
    if ((rc = dbk__pg_collect(pc, deadline, dbk__pg_budget_of(deadline), true, &res, &copy_refused, err)))
        return rc;
    if (fill_rc) {
        PQclear(res);
        if (err)
            *err = fill_err;
        return fill_rc;
    }
    return dbk__pg_finish(pc, res, copy_refused, NULL, rows, err);
}
