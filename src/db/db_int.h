/*
 * The executor behind dbk_db: a small vtable so that a connection, a pool
 * and a transaction all answer the same calls.
 */
#ifndef DBK_DB_INT_H
#define DBK_DB_INT_H

#include "dbkit/db.h"
#include "../driver/driver.h"

struct dbk__db_ops {
    /* One statement (see dbk__driver.run). */
    dbk_rc (*run)(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                  dbk_result **out, int64_t *affected, dbk_error *err);
    /* Several statements (see dbk__driver.script; timeout_ms 0: the
     * statement deadline). */
    dbk_rc (*script)(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err);
    /* Pins one connection for a unit of several statements (transaction,
     * batch): a connection's executor gives itself, a pool checks one out,
     * a transaction gives its own. unpin() gives it back. */
    dbk_rc (*pin)(dbk_db *db, dbk_conn **out, dbk_error *err);
    void (*unpin)(dbk_db *db, dbk_conn *conn);
    /* A batch of independent statements on one connection (see
     * dbk__batch_item in driver.h); returns the first failure or OK. */
    dbk_rc (*batch)(dbk_db *db, struct dbk__batch_item *items, size_t n, bool atomic);
    /* COPY ... FROM STDIN with streamed data; DBK_EMISUSE where the engine
     * has none (see dbk__driver.copy_in). */
    dbk_rc (*copy_in)(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                      int64_t *rows, dbk_error *err);
    /* Optional (NULL: one). How many statements may run on this executor
     * at once: a pool answers its max_size; dbk_parallel_run sizes its threads
     * by it instead of testing what kind of executor it was given. */
    int (*max_parallel)(dbk_db *db);
    /* Optional (NULL: no). Whether this executor is a transaction's: the
     * layers that must run outside one (migrate) ask this instead of
     * testing what kind of executor they were given. */
    bool (*in_tx)(dbk_db *db);
};

enum dbk__db_kind { DBK__DB_CONN = 1, DBK__DB_POOL = 2, DBK__DB_TX = 3 };

struct dbk_db {
    const struct dbk__db_ops *ops;
    void *self;           /* the dbk_conn, pool or transaction behind it */
    dbk_engine engine;
    int kind;             /* enum dbk__db_kind: set by each executor for
                           * debugging; no layer branches on it (ops
                           * above answer what a caller needs to know) */
    dbk_observer_fn observer;
    void *observer_ctx;
};

/* Whether pin() may hand out another connection than the last one: the
 * executors over several connections (a pool, a topology) are the ones
 * that answer max_parallel; a connection's own executor, a lent one and a
 * transaction's always pin the same connection. A transaction that lost
 * its connection retries only where this holds. */
static inline bool dbk__db_pins_fresh(const dbk_db *db)
{
    return db->ops->max_parallel != NULL;
}

/* Whether db is a transaction's executor (its in_tx op). */
static inline bool dbk__db_in_tx(dbk_db *db)
{
    return db->ops->in_tx && db->ops->in_tx(db);
}

/* Runs a COPY FROM STDIN through the executor (observer included). */
dbk_rc dbk__db_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx, int64_t *rows,
                       dbk_error *err);

/* How long the client waits for one migration statement before it gives
 * up on the server (the statement deadline when that is longer): DDL may
 * legitimately run for minutes. Nothing else waits this long. */
#define DBK__MIGRATION_WAIT_MS (10 * 60 * 1000)

/* dbk_db_exec_script with a longer client wait (observer included). */
dbk_rc dbk__db_exec_script_within(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err);

/* A connection: a driver handle plus its executor. The pool keeps its own
 * bookkeeping in `pool_slot`. */
struct dbk_conn {
    const dbk__driver *drv;
    void *impl;
    struct dbk_db db;
    void *pool_slot;
};

/* A connection's own operations, for the layers below db that hold one
 * pinned (tx, migrate): they go through these, not through the driver
 * vtable. No observer is told (the executor's ops do that). */
static inline dbk__txstate dbk__conn_txstate(dbk_conn *c)
{
    return c->drv->txstate(c->impl);
}
static inline dbk_rc dbk__conn_run(dbk_conn *c, const char *sql, const dbk_value *params,
                                   size_t nparams, dbk_result **out, int64_t *affected,
                                   dbk_error *err)
{
    return c->drv->run(c->impl, sql, params, nparams, out, affected, err);
}
static inline dbk_rc dbk__conn_script(dbk_conn *c, const char *sql, int timeout_ms,
                                      dbk_error *err)
{
    return c->drv->script(c->impl, sql, timeout_ms, err);
}
static inline dbk_rc dbk__conn_reset(dbk_conn *c, dbk_error *err)
{
    return c->drv->reset(c->impl, err);
}
/* The session's statement timeout in ms (0: none or unknown). */
static inline int dbk__conn_statement_timeout_ms(dbk_conn *c)
{
    return c->drv->statement_timeout_ms ? c->drv->statement_timeout_ms(c->impl) : 0;
}

/* Runs items[0..n) one after another through db->ops->run (engines without
 * a pipeline, and the fallback). atomic: outside a transaction the items
 * run inside BEGIN/COMMIT, inside one within a SAVEPOINT, and the first
 * failure undoes the others (marked DBK_ENOT_RUN). in_tx tells which.
 * Returns the first failure's rc, or DBK_OK. (db_batch.c) */
dbk_rc dbk__db_batch_serial(dbk_db *db, dbk__batch_item *items, size_t n, bool atomic,
                            bool in_tx);

/* Initializes the executor of a connection. */
void dbk__db_init_conn(dbk_db *db, dbk_conn *conn, dbk_engine engine);

#endif
