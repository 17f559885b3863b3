/*
 * The outcome of one statement of a batch (dbk__batch_item, driver.h),
 * recorded by whichever layer runs it: a driver's pipeline, the db layer's
 * serial fallback, a pool or a transaction that refuses the batch. It
 * lives in the driver layer because the drivers are the lowest code that
 * fills items, and every layer may use the layers above it.
 *
 * Only failures allocate: an item's error is a heap copy made when it
 * fails, so a batch of 100 successful lookups carries no dbk_error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

dbk_rc dbk__driver_item_fail(dbk__batch_item *it, dbk_rc rc, const dbk_error *e)
{
    if (it->res) {
        dbk_result_free(it->res);
        it->res = NULL;
    }
    it->rc = rc;
    it->affected = -1;
    if (!it->err)
        it->err = malloc(sizeof *it->err);
    if (it->err) {
        if (e && e != it->err)
            memcpy(it->err, e, sizeof *e);
        else if (!e)
            dbk__err(it->err, rc, "%s", dbk_strerror(rc));
        it->err->code = rc;
    }
    return rc;
}

dbk_rc dbk__driver_item_failf(dbk__batch_item *it, dbk_rc rc, const char *fmt, ...)
{
    dbk_error e;
    memset(&e, 0, sizeof e);
    e.code = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return dbk__driver_item_fail(it, rc, &e);
}
