/*
 * The driver interface: one vtable per engine. Drivers are the only code
 * that includes libpq-fe.h or sqlite3.h; they translate engine errors into
 * dbk_rc + dbk_error at this boundary and nowhere else.
 */
#ifndef DBK_DRIVER_H
#define DBK_DRIVER_H

#include <stdbool.h>

#include "dbkit/db.h"
#include "../core/config_int.h"
#include "../db/db_int.h"

/* Transaction state of a connection, as the driver knows it. */
typedef enum dbk__txstate {
    DBK__TX_IDLE = 0,   /* no transaction open */
    DBK__TX_OPEN = 1,   /* inside a transaction block */
    DBK__TX_FAILED = 2, /* inside a failed transaction block */
    DBK__TX_BROKEN = 3  /* connection unusable */
} dbk__txstate;

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
    /* Several statements, no parameters. */
    dbk_rc (*script)(void *impl, const char *sql, dbk_error *err);
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
} dbk__driver;

extern const dbk__driver dbk__driver_sqlite;
extern const dbk__driver dbk__driver_postgres;

/* A connection: a driver handle plus its executor. The pool keeps its own
 * bookkeeping in `pool_slot`. */
struct dbk_conn {
    const dbk__driver *drv;
    void *impl;
    struct dbk_db db;
    void *pool_slot;
};

#endif
