/*
 * The driver interface: one vtable per engine. Drivers are the only code
 * that includes libpq-fe.h or sqlite3.h; they translate engine errors into
 * dbk_rc + dbk_error at this boundary and nowhere else.
 */
#ifndef DBK_DRIVER_H
#define DBK_DRIVER_H

#include <stdbool.h>

#include "dbkit/result.h"
#include "dbkit/value.h"
#include "../core/config_int.h"
#include "../core/internal.h"

/* Maps a PostgreSQL SQLSTATE (5 chars) to a result code. NULL/unknown ->
 * DBK_ESQL. (errmap.c: engine codes are translated in this layer only) */
dbk_rc dbk__rc_from_sqlstate(const char *sqlstate);

/* Maps an SQLite extended result code to a result code. (errmap.c) */
dbk_rc dbk__rc_from_sqlite(int extended_code);

/* Transaction state of a connection, as the driver knows it. */
typedef enum dbk__txstate {
    DBK__TX_IDLE = 0,   /* no transaction open */
    DBK__TX_OPEN = 1,   /* inside a transaction block */
    DBK__TX_FAILED = 2, /* inside a failed transaction block */
    DBK__TX_BROKEN = 3  /* connection unusable */
} dbk__txstate;

/* One statement of a batch, as every layer below dbk_batch_run sees it.
 * The layer that runs it fills the outputs: rc always (DBK_ENOT_RUN for a
 * statement never sent, or undone with the batch), err only on failure (a
 * malloc'ed copy; dbk__driver_item_fail), res with the rows on success, and
 * done_ns when its outcome became known (for the observer). */
typedef struct dbk__batch_item {
    const char *sql;
    const dbk_value *params;
    size_t nparams;
    dbk_result *res;
    int64_t affected;
    dbk_rc rc;
    dbk_error *err;
    int64_t done_ns;
} dbk__batch_item;

/* Records a failure on an item (rc, and a heap copy of e when e is given
 * and memory allows). Frees any result the item held. Returns rc.
 * (batch_item.c) */
dbk_rc dbk__driver_item_fail(dbk__batch_item *it, dbk_rc rc, const dbk_error *e);

/* Same, with a formatted message (printf) and no hint. */
dbk_rc dbk__driver_item_failf(dbk__batch_item *it, dbk_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Produces the next piece of COPY text-format data into buf (at most cap
 * bytes): returns the byte count, 0 at the end, or -1 after filling err. */
typedef long (*dbk__copy_fill)(void *ctx, char *buf, size_t cap, dbk_error *err);

typedef struct dbk__driver {
    dbk_engine engine;
    const char *name;
    /* Opens a connection; *impl owned by the driver until close(). */
    dbk_rc (*open)(const struct dbk_config *cfg, void **impl, dbk_error *err);
    void (*close)(void *impl);
    /* One parameterized statement. out NULL: discard rows. affected may be
     * NULL. Must fail (not crash) on a broken connection. */
    dbk_rc (*run)(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                  dbk_result **out, int64_t *affected, dbk_error *err);
    /* Several statements, no parameters. The client waits as for run()
     * (the statement deadline); timeout_ms > 0 lets it wait that long
     * instead when that is longer (migrations: DBK__MIGRATION_WAIT_MS). */
    dbk_rc (*script)(void *impl, const char *sql, int timeout_ms, dbk_error *err);
    /* Round trip within timeout_ms. */
    dbk_rc (*ping)(void *impl, int timeout_ms, dbk_error *err);
    dbk__txstate (*txstate)(void *impl);
    /* Bring the session back to a fresh state for the next borrower: roll
     * back any transaction, reset session settings. */
    dbk_rc (*reset)(void *impl, dbk_error *err);
    const char *(*server_version)(void *impl);
    /* Optional (NULL: unknown). The statement timeout the session was
     * configured with, in ms (0: none). The tx layer reads it to set a
     * transaction-local statement_timeout that never loosens it. */
    int (*statement_timeout_ms)(void *impl);
    /* Optional (NULL: the statements run one by one). Runs a batch in one
     * round trip; atomic: one unit that fails as a whole. Fills every
     * item (see dbk__batch_item); returns the first failure's rc or OK. */
    dbk_rc (*batch)(void *impl, dbk__batch_item *items, size_t n, bool atomic);
    /* Optional (NULL: not supported). Runs `sql`, a COPY ... FROM STDIN,
     * streaming the data fill() produces; *rows gets the rows copied. A
     * fill error aborts the COPY (nothing is written) and is returned. */
    dbk_rc (*copy_in)(void *impl, const char *sql, dbk__copy_fill fill, void *ctx, int64_t *rows,
                      dbk_error *err);
    /* Optional (NULL: not supported). Independent statements of different
     * callers in one round trip, each in its own implicit transaction (it
     * commits or fails alone; none is sent twice). Outside a transaction
     * block only. Fills every item; returns the first failure's rc or OK. */
    dbk_rc (*pipeline)(void *impl, dbk__batch_item *items, size_t n);
} dbk__driver;

extern const dbk__driver dbk__driver_sqlite;
extern const dbk__driver dbk__driver_postgres;

#endif
