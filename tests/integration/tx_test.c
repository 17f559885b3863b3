/*
 * Transactions as closures, on both engines: commit, rollback, the seed's
 * transfer_money and create_order, savepoints, isolation levels, read-only,
 * retries (a concurrent bank with deadlocks provoked on purpose, an
 * exhausted budget, errors that must not be retried), commit-unknown,
 * the transaction timeout and after-commit hooks.
 *
 * Each test runs once on a fresh SQLite file and once on a fresh
 * PostgreSQL database (dbkt_each_engine), except the few that only make
 * sense on one engine (they say why).
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

/* ---- helpers ---- */

/* What a closure reports when it fails on its own account. */
static dbk_rc app_err(dbk_error *err, dbk_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static dbk_rc app_err(dbk_error *err, dbk_rc rc, const char *fmt, ...)
{
    dbk_error_clear(err);
    err->code = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return rc;
}

static void exec_ok(dbk_db *db, const char *sql)
{
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db, sql, &err), &err);
}

static int64_t q_int(dbk_db *db, const char *sql)
{
    dbk_error err;
    int64_t v = -1;
    DBKT_OK(dbk_db_query_int64(db, sql, NULL, 0, &v, &err), &err);
    return v;
}

static int64_t q_int1(dbk_db *db, const char *sql, int64_t p)
{
    dbk_error err;
    int64_t v = -1;
    dbk_value pv = dbk_int64(p);
    DBKT_OK(dbk_db_query_int64(db, sql, &pv, 1, &v, &err), &err);
    return v;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ======================================================================
 * Commit and rollback
 * ====================================================================== */

struct kv_ctx {
    const char *key;
    int64_t val;
    dbk_rc fail_with; /* returned after the insert; DBK_OK commits */
    int runs;
};

static dbk_rc insert_kv(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct kv_ctx *c = ctx;
    c->runs++;
    assert_true(dbk_db_in_transaction(tx));
    dbk_value p[] = {dbk_text(c->key), dbk_int64(c->val)};
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ($1, $2)", p, 2, NULL, err);
    if (rc)
        return rc;
    if (c->fail_with)
        return app_err(err, c->fail_with, "closure chose to fail after inserting %s", c->key);
    return DBK_OK;
}

static void commit_rollback(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    assert_false(dbk_db_in_transaction(db));

    struct kv_ctx a = {"a", 1, DBK_OK, 0};
    DBKT_OK(dbk_tx_run(db, insert_kv, &a, NULL, &err), &err);
    assert_int_equal(a.runs, 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'a'"), 1);

    /* fn's own code and message come back, and nothing is left behind */
    struct kv_ctx b = {"b", 2, DBK_ENOT_FOUND, 0};
    DBKT_RC(DBK_ENOT_FOUND, dbk_tx_run(db, insert_kv, &b, NULL, &err));
    assert_int_equal(err.code, DBK_ENOT_FOUND);
    assert_string_equal(err.message, "closure chose to fail after inserting b");
    assert_int_equal(b.runs, 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'b'"), 0);

    /* a NULL error record is fine */
    struct kv_ctx c = {"c", 3, DBK_EINVALID, 0};
    DBKT_RC(DBK_EINVALID, dbk_tx_run(db, insert_kv, &c, NULL, NULL));
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 1);

    /* the connection is idle again: a plain statement autocommits */
    exec_ok(db, "INSERT INTO kv (k, v) VALUES ('d', 4)");
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    dbk_conn_close(conn);
}

static void tx_commit_and_rollback(void **state)
{
    (void)state;
    dbkt_each_engine("tx_commit", commit_rollback);
}

/* ======================================================================
 * The seed's transferMoney
 * ====================================================================== */

static void accounts_setup(dbk_db *db, int n, int64_t balance)
{
    dbk_error err;
    exec_ok(db, "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)");
    for (int i = 1; i <= n; i++) {
        dbk_value p[] = {dbk_int64(i), dbk_int64(balance)};
        DBKT_OK(dbk_db_exec(db, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", p, 2, NULL,
                            &err),
                &err);
    }
}

struct transfer {
    int64_t from, to, amount;
};

/* The seed: debit, fail if the balance went negative, credit. */
static dbk_rc transfer_money_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    const struct transfer *t = ctx;
    dbk_value debit[] = {dbk_int64(t->amount), dbk_int64(t->from)};
    int64_t balance;
    dbk_rc rc = dbk_db_query_int64(tx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2 "
                                       "RETURNING balance",
                                   debit, 2, &balance, err);
    if (rc)
        return rc;
    if (balance < 0)
        return app_err(err, DBK_EINVALID, "insufficient funds in account %lld",
                       (long long)t->from);
    dbk_value credit[] = {dbk_int64(t->amount), dbk_int64(t->to)};
    int64_t n = 0;
    rc = dbk_db_exec(tx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", credit, 2,
                     &n, err);
    if (rc)
        return rc;
    if (n != 1)
        return app_err(err, DBK_ENOT_FOUND, "no account %lld to credit", (long long)t->to);
    return DBK_OK;
}

static dbk_rc transfer_money(dbk_db *db, int64_t from, int64_t to, int64_t amount,
                             dbk_error *err)
{
    struct transfer t = {from, to, amount};
    return dbk_tx_run(db, transfer_money_fn, &t, NULL, err);
}

static void transfer(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    accounts_setup(db, 2, 100);

    DBKT_OK(transfer_money(db, 1, 2, 30, &err), &err);
    assert_int_equal(q_int(db, "SELECT balance FROM accounts WHERE id = 1"), 70);
    assert_int_equal(q_int(db, "SELECT balance FROM accounts WHERE id = 2"), 130);

    /* overdraft: the debit is rolled back */
    DBKT_RC(DBK_EINVALID, transfer_money(db, 1, 2, 71, &err));
    assert_string_equal(err.message, "insufficient funds in account 1");
    assert_int_equal(q_int(db, "SELECT balance FROM accounts WHERE id = 1"), 70);
    assert_int_equal(q_int(db, "SELECT balance FROM accounts WHERE id = 2"), 130);

    /* unknown recipient: the debit is rolled back */
    DBKT_RC(DBK_ENOT_FOUND, transfer_money(db, 1, 99, 10, &err));
    assert_int_equal(q_int(db, "SELECT balance FROM accounts WHERE id = 1"), 70);
    assert_int_equal(q_int(db, "SELECT CAST(sum(balance) AS BIGINT) FROM accounts"), 200);
    dbk_conn_close(conn);
}

static void tx_transfer_money(void **state)
{
    (void)state;
    dbkt_each_engine("tx_transfer", transfer);
}

/* ======================================================================
 * The seed's OrderRepository.createOrder
 * ====================================================================== */

struct order_item {
    int64_t product_id;
    int64_t quantity;
    int64_t price;
};

struct create_order {
    int64_t user_id;
    const struct order_item *items;
    size_t nitems;
    int64_t order_id; /* out */
};

static dbk_rc create_order_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct create_order *o = ctx;
    int64_t total = 0;
    for (size_t i = 0; i < o->nitems; i++)
        total += o->items[i].quantity * o->items[i].price;
    dbk_value op[] = {dbk_int64(o->user_id), dbk_int64(total), dbk_text("pending")};
    dbk_rc rc = dbk_db_query_int64(tx, "INSERT INTO orders (user_id, total, status) "
                                       "VALUES ($1, $2, $3) RETURNING id",
                                   op, 3, &o->order_id, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < o->nitems; i++) {
        const struct order_item *it = &o->items[i];
        dbk_value ip[] = {dbk_int64(o->order_id), dbk_int64(it->product_id),
                          dbk_int64(it->quantity), dbk_int64(it->price)};
        rc = dbk_db_exec(tx, "INSERT INTO order_items (order_id, product_id, quantity, price) "
                             "VALUES ($1, $2, $3, $4)",
                         ip, 4, NULL, err);
        if (rc)
            return rc; /* unknown product: foreign key violation */
        dbk_value sp[] = {dbk_int64(it->quantity), dbk_int64(it->product_id)};
        int64_t n = 0;
        rc = dbk_db_exec(tx, "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1",
                         sp, 2, &n, err);
        if (rc)
            return rc;
        if (n != 1)
            return app_err(err, DBK_ECHECK, "insufficient stock for product %lld",
                           (long long)it->product_id);
    }
    return DBK_OK;
}

static void orders(const char *url, dbk_engine e)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    if (e == DBK_ENGINE_SQLITE)
        exec_ok(db, "PRAGMA foreign_keys = ON");
    exec_ok(db, e == DBK_ENGINE_POSTGRES
                    ? "CREATE TABLE products (id BIGINT PRIMARY KEY, name TEXT NOT NULL, "
                      "price BIGINT NOT NULL, stock BIGINT NOT NULL);"
                      "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, "
                      "total BIGINT NOT NULL, status TEXT NOT NULL, "
                      "created_at TIMESTAMPTZ NOT NULL DEFAULT now());"
                      "CREATE TABLE order_items (order_id BIGINT NOT NULL REFERENCES orders(id), "
                      "product_id BIGINT NOT NULL REFERENCES products(id), "
                      "quantity BIGINT NOT NULL, price BIGINT NOT NULL)"
                    : "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                      "price INTEGER NOT NULL, stock INTEGER NOT NULL);"
                      "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
                      "total INTEGER NOT NULL, status TEXT NOT NULL, "
                      "created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);"
                      "CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id), "
                      "product_id INTEGER NOT NULL REFERENCES products(id), "
                      "quantity INTEGER NOT NULL, price INTEGER NOT NULL)");
    exec_ok(db, "INSERT INTO products VALUES (1, 'pen', 150, 10), (2, 'ink', 900, 3)");

    const struct order_item good[] = {{1, 2, 150}, {2, 3, 900}};
    struct create_order o = {42, good, 2, 0};
    DBKT_OK(dbk_tx_run(db, create_order_fn, &o, NULL, &err), &err);
    assert_true(o.order_id > 0);
    assert_int_equal(q_int1(db, "SELECT total FROM orders WHERE id = $1", o.order_id), 3000);
    assert_int_equal(q_int(db, "SELECT count(*) FROM order_items"), 2);
    assert_int_equal(q_int(db, "SELECT stock FROM products WHERE id = 1"), 8);
    assert_int_equal(q_int(db, "SELECT stock FROM products WHERE id = 2"), 0);

    /* unknown product: nothing is left behind */
    const struct order_item unknown[] = {{1, 1, 150}, {77, 1, 5}};
    struct create_order o2 = {42, unknown, 2, 0};
    DBKT_RC(DBK_EFOREIGN_KEY, dbk_tx_run(db, create_order_fn, &o2, NULL, &err));
    assert_true(err.message[0] != '\0');

    /* insufficient stock on the second item: the first one's decrement goes too */
    const struct order_item short_[] = {{1, 1, 150}, {2, 1, 900}};
    struct create_order o3 = {42, short_, 2, 0};
    DBKT_RC(DBK_ECHECK, dbk_tx_run(db, create_order_fn, &o3, NULL, &err));
    assert_string_equal(err.message, "insufficient stock for product 2");

    assert_int_equal(q_int(db, "SELECT count(*) FROM orders"), 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM order_items"), 2);
    assert_int_equal(q_int(db, "SELECT stock FROM products WHERE id = 1"), 8);
    assert_int_equal(q_int(db, "SELECT stock FROM products WHERE id = 2"), 0);
    dbk_conn_close(conn);
}

static void tx_create_order(void **state)
{
    (void)state;
    dbkt_each_engine("tx_orders", orders);
}

/* ======================================================================
 * Savepoints
 * ====================================================================== */

struct nest_ctx {
    int inner_mode;   /* 0 ok, 1 app failure, 2 statement failure (duplicate key) */
    bool outer_fails; /* outer returns an error after the inner one */
    dbk_rc inner_rc;
    bool inner_was_tx;
};

static dbk_rc nest_inner(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct nest_ctx *c = ctx;
    c->inner_was_tx = dbk_db_in_transaction(tx);
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('inner', 2)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    if (c->inner_mode == 1)
        return app_err(err, DBK_EINVALID, "inner gives up");
    if (c->inner_mode == 2) /* 'outer' exists: unique violation, aborts on PostgreSQL */
        return dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('outer', 3)", NULL, 0, NULL, err);
    return DBK_OK;
}

static dbk_rc nest_outer(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct nest_ctx *c = ctx;
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('outer', 1)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    dbk_error ierr;
    c->inner_rc = dbk_tx_run(tx, nest_inner, c, NULL, &ierr);
    /* the outer transaction goes on after an inner failure */
    rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('after', 4)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    if (c->outer_fails)
        return app_err(err, DBK_EINVALID, "outer gives up");
    return DBK_OK;
}

static void savepoints(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");

    /* inner success: both kept */
    struct nest_ctx ok = {0, false, -1, false};
    DBKT_OK(dbk_tx_run(db, nest_outer, &ok, NULL, &err), &err);
    assert_int_equal(ok.inner_rc, DBK_OK);
    assert_true(ok.inner_was_tx);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 3);
    exec_ok(db, "DELETE FROM kv");

    /* inner failure (its own decision): outer work kept, inner dropped */
    struct nest_ctx f1 = {1, false, -1, false};
    DBKT_OK(dbk_tx_run(db, nest_outer, &f1, NULL, &err), &err);
    assert_int_equal(f1.inner_rc, DBK_EINVALID);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'outer'"), 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'inner'"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'after'"), 1);
    exec_ok(db, "DELETE FROM kv");

    /* inner statement failure (aborts the transaction on PostgreSQL until
     * the rollback to the savepoint): outer still commits its own work */
    struct nest_ctx f2 = {2, false, -1, false};
    DBKT_OK(dbk_tx_run(db, nest_outer, &f2, NULL, &err), &err);
    assert_int_equal(f2.inner_rc, DBK_EUNIQUE);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv WHERE k = 'inner'"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    exec_ok(db, "DELETE FROM kv");

    /* outer failure: everything goes, the released savepoint too */
    struct nest_ctx f3 = {0, true, -1, false};
    DBKT_RC(DBK_EINVALID, dbk_tx_run(db, nest_outer, &f3, NULL, &err));
    assert_string_equal(err.message, "outer gives up");
    assert_int_equal(f3.inner_rc, DBK_OK);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 0);
    dbk_conn_close(conn);
}

static void tx_savepoints(void **state)
{
    (void)state;
    dbkt_each_engine("tx_savepoints", savepoints);
}

/* ======================================================================
 * Isolation levels and read-only
 * ====================================================================== */

struct show_ctx {
    char iso[64];
    char ro[16];
};

static dbk_rc show_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct show_ctx *c = ctx;
    if (dbk_db_engine(tx) != DBK_ENGINE_POSTGRES) {
        /* SQLite: one level; the transaction still works */
        int64_t one = 0;
        return dbk_db_query_int64(tx, "SELECT 1", NULL, 0, &one, err);
    }
    dbk_rc rc = dbk_db_query_text(tx, "SHOW transaction_isolation", NULL, 0, c->iso,
                                  sizeof c->iso, NULL, err);
    if (rc)
        return rc;
    return dbk_db_query_text(tx, "SHOW transaction_read_only", NULL, 0, c->ro, sizeof c->ro,
                             NULL, err);
}

static void isolation(const char *url, dbk_engine e)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    static const struct {
        dbk_isolation level;
        bool read_only;
        bool deferrable;
        const char *iso, *ro;
    } cases[] = {
        {DBK_ISOLATION_DEFAULT, false, false, "read committed", "off"},
        {DBK_ISOLATION_READ_COMMITTED, false, false, "read committed", "off"},
        {DBK_ISOLATION_REPEATABLE_READ, false, false, "repeatable read", "off"},
        {DBK_ISOLATION_SERIALIZABLE, false, false, "serializable", "off"},
        {DBK_ISOLATION_SERIALIZABLE, true, true, "serializable", "on"},
        {DBK_ISOLATION_REPEATABLE_READ, true, false, "repeatable read", "on"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk_tx_opts o = {0};
        o.isolation = cases[i].level;
        o.read_only = cases[i].read_only;
        o.deferrable = cases[i].deferrable;
        struct show_ctx c = {"", ""};
        DBKT_OK(dbk_tx_run(db, show_fn, &c, &o, &err), &err);
        if (e == DBK_ENGINE_POSTGRES) {
            assert_string_equal(c.iso, cases[i].iso);
            assert_string_equal(c.ro, cases[i].ro);
        }
    }
    /* and the session is back to its defaults afterwards */
    if (e == DBK_ENGINE_POSTGRES) {
        char buf[64];
        DBKT_OK(dbk_db_query_text(db, "SHOW transaction_isolation", NULL, 0, buf, sizeof buf, NULL,
                                  &err),
                &err);
        assert_string_equal(buf, "read committed");
    }
    dbk_tx_opts bad = {0};
    bad.isolation = (dbk_isolation)9;
    struct show_ctx c = {"", ""};
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(db, show_fn, &c, &bad, &err));
    dbk_conn_close(conn);
}

static void tx_isolation_levels_applied(void **state)
{
    (void)state;
    dbkt_each_engine("tx_isolation", isolation);
}

static dbk_rc write_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)ctx;
    return dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('w', 1)", NULL, 0, NULL, err);
}

static dbk_rc read_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    return dbk_db_query_int64(tx, "SELECT count(*) FROM kv", NULL, 0, ctx, err);
}

static void read_only(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    dbk_tx_opts ro = {0};
    ro.read_only = true;
    DBKT_RC(DBK_EREADONLY, dbk_tx_run(db, write_fn, NULL, &ro, &err));
    assert_true(err.message[0] != '\0');
    int64_t n = -1;
    DBKT_OK(dbk_tx_run(db, read_fn, &n, &ro, &err), &err);
    assert_int_equal(n, 0);
    /* the connection writes again afterwards, in and out of transactions */
    DBKT_OK(dbk_tx_run(db, write_fn, NULL, NULL, &err), &err);
    exec_ok(db, "INSERT INTO kv (k, v) VALUES ('x', 2)");
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    dbk_conn_close(conn);
}

static void tx_read_only_rejects_writes(void **state)
{
    (void)state;
    dbkt_each_engine("tx_read_only", read_only);
}

/* ======================================================================
 * The bank: 16 threads, random transfers among 20 accounts, deadlocks
 * provoked on purpose, an auditor checking the invariants concurrently.
 * ====================================================================== */

#define BANK_THREADS 16
#define BANK_ACCOUNTS 20
#define BANK_START 1000
#define BANK_SECONDS 3
#define BANK_MAX_PER_THREAD 1500

struct bank_worker {
    dbk_conn *conn; /* own connection, or NULL with `db` a pool's executor */
    dbk_db *db;
    dbk_engine engine;
    dbk_isolation level;
    uint64_t rng;
    int64_t deadline_ms;
    /* results, read by the main thread after join */
    int committed, insufficient, exhausted, other_failed, unclear;
    int retries[DBK_RC_MAX + 1];
    int attempts;
    char first_other[600];
};

struct bank_xfer {
    struct bank_worker *w;
    int64_t from, to, amount;
    bool plain_reads; /* read without locking (serialization failures) */
};

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static dbk_rc bank_xfer_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct bank_xfer *x = ctx;
    x->w->attempts++;
    bool pg = x->w->engine == DBK_ENGINE_POSTGRES;
    /* Lock (PostgreSQL: FOR UPDATE) the source, then the destination: two
     * opposite transfers lock in opposite orders and deadlock. */
    const char *sel = pg && !x->plain_reads ? "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE"
                                            : "SELECT balance FROM accounts WHERE id = $1";
    dbk_value pf = dbk_int64(x->from), pt = dbk_int64(x->to);
    int64_t bf, bt;
    dbk_rc rc = dbk_db_query_int64(tx, sel, &pf, 1, &bf, err);
    if (rc)
        return rc;
    rc = dbk_db_query_int64(tx, sel, &pt, 1, &bt, err);
    if (rc)
        return rc;
    if (bf < x->amount)
        return app_err(err, DBK_EINVALID, "insufficient funds: account %lld has %lld, needs %lld",
                       (long long)x->from, (long long)bf, (long long)x->amount);
    dbk_value d[] = {dbk_int64(bf - x->amount), pf};
    rc = dbk_db_exec(tx, "UPDATE accounts SET balance = $1 WHERE id = $2", d, 2, NULL, err);
    if (rc)
        return rc;
    dbk_value c[] = {dbk_int64(bt + x->amount), pt};
    return dbk_db_exec(tx, "UPDATE accounts SET balance = $1 WHERE id = $2", c, 2, NULL, err);
}

static void bank_on_retry(void *ctx, int attempt, dbk_rc rc, int delay_ms, const dbk_error *err)
{
    (void)attempt;
    (void)delay_ms;
    (void)err;
    struct bank_worker *w = ctx;
    if ((int)rc >= 0 && (int)rc <= DBK_RC_MAX)
        w->retries[rc]++;
}

static void *bank_worker_main(void *arg)
{
    struct bank_worker *w = arg;
    dbk_tx_opts o = {0};
    o.isolation = w->level;
    o.on_retry = bank_on_retry;
    o.on_retry_ctx = w;
    for (int i = 0; i < BANK_MAX_PER_THREAD && now_ms() < w->deadline_ms; i++) {
        struct bank_xfer x = {w, 0, 0, 0, false};
        x.from = 1 + (int64_t)(xorshift(&w->rng) % BANK_ACCOUNTS);
        do
            x.to = 1 + (int64_t)(xorshift(&w->rng) % BANK_ACCOUNTS);
        while (x.to == x.from);
        x.amount = 1 + (int64_t)(xorshift(&w->rng) % 400);
        x.plain_reads = w->level == DBK_ISOLATION_SERIALIZABLE && (xorshift(&w->rng) & 1);
        dbk_error err;
        dbk_rc rc = dbk_tx_run(w->db, bank_xfer_fn, &x, &o, &err);
        if (rc == DBK_OK) {
            w->committed++;
            continue;
        }
        if (err.code != rc || err.message[0] == '\0')
            w->unclear++;
        if (rc == DBK_EINVALID && strstr(err.message, "insufficient funds"))
            w->insufficient++;
        else if (rc == DBK_ERETRY_EXHAUSTED && strstr(err.message, "gave up after"))
            w->exhausted++;
        else if (w->other_failed++ == 0)
            snprintf(w->first_other, sizeof w->first_other, "%s: %s", dbk_rc_name(rc),
                     err.message);
    }
    return NULL;
}

struct auditor {
    dbk_conn *conn;
    dbk_db *db;
    dbk_engine engine;
    volatile int stop; /* written before join only: see below */
    pthread_mutex_t mu;
    int checks, bad_sum, bad_min, failed;
    int64_t last_sum, last_min;
    char first_failure[600];
};

struct audit_row {
    int64_t sum, min;
};

static dbk_rc audit_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct audit_row *a = ctx;
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query_row(tx, "SELECT CAST(sum(balance) AS BIGINT), min(balance) FROM accounts", NULL, 0,
                                 &r, err);
    if (rc)
        return rc;
    rc = dbk_result_get_int64(r, 0, 0, &a->sum, err);
    if (rc == DBK_OK)
        rc = dbk_result_get_int64(r, 0, 1, &a->min, err);
    dbk_result_free(r);
    return rc;
}

static void *auditor_main(void *arg)
{
    struct auditor *a = arg;
    dbk_tx_opts o = {0};
    o.read_only = true;
    o.isolation = DBK_ISOLATION_REPEATABLE_READ; /* one snapshot for both aggregates */
    for (int i = 0; i < 100000; i++) {
        pthread_mutex_lock(&a->mu);
        int stop = a->stop;
        pthread_mutex_unlock(&a->mu);
        if (stop)
            break;
        struct audit_row row = {0, 0};
        dbk_error err;
        dbk_rc rc = dbk_tx_run(a->db, audit_fn, &row, &o, &err);
        if (rc) {
            if (a->failed++ == 0)
                snprintf(a->first_failure, sizeof a->first_failure, "%s: %s", dbk_rc_name(rc),
                         err.message);
        } else {
            a->checks++;
            if (row.sum != (int64_t)BANK_ACCOUNTS * BANK_START)
                a->bad_sum++;
            if (row.min < 0)
                a->bad_min++;
            a->last_sum = row.sum;
            a->last_min = row.min;
        }
        sleep_ms(5);
    }
    return NULL;
}

static const char *level_name(dbk_isolation l)
{
    return l == DBK_ISOLATION_SERIALIZABLE ? "serializable" : "read committed";
}

/* pool_size 0: one connection per thread; else all threads (and the
 * auditor) share a pool of that many connections. */
static void bank_run(const char *url, dbk_engine e, dbk_isolation level, int pool_size)
{
    if (e == DBK_ENGINE_POSTGRES) {
        /* Deadlocks are the point here: detect them in 20 ms instead of 1 s. */
        const char *db = strrchr(url, '/') + 1;
        char sql[256];
        snprintf(sql, sizeof sql, "ALTER DATABASE %.*s SET deadlock_timeout = '20ms'",
                 (int)strcspn(db, "?"), db);
        dbkt_pg_admin_exec(sql);
    }
    dbk_conn *setup = dbkt_open(url);
    accounts_setup(dbk_conn_db(setup), BANK_ACCOUNTS, BANK_START);

    static struct bank_worker w[BANK_THREADS];
    static struct auditor a;
    memset(w, 0, sizeof w);
    memset(&a, 0, sizeof a);
    pthread_mutex_init(&a.mu, NULL);
    dbk_pool *pool = NULL;
    if (pool_size) {
        dbk_error perr;
        dbk_config *cfg = NULL;
        DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &perr), &perr);
        dbk_pool_opts po = {0};
        po.max_size = pool_size;
        po.acquire_timeout_ms = 10000;
        DBKT_OK(dbk_pool_open(cfg, &po, &pool, &perr), &perr);
        dbk_config_free(cfg);
        a.db = dbk_pool_db(pool);
    } else {
        a.conn = dbkt_open(url);
        a.db = dbk_conn_db(a.conn);
    }
    a.engine = e;
    int64_t deadline = now_ms() + BANK_SECONDS * 1000;
    pthread_t th[BANK_THREADS], ath;
    for (int i = 0; i < BANK_THREADS; i++) {
        if (pool) {
            w[i].db = dbk_pool_db(pool);
        } else {
            w[i].conn = dbkt_open(url); /* one connection per thread */
            w[i].db = dbk_conn_db(w[i].conn);
        }
        w[i].engine = e;
        w[i].level = level;
        w[i].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1) + (uint64_t)level;
        w[i].deadline_ms = deadline;
    }
    assert_int_equal(pthread_create(&ath, NULL, auditor_main, &a), 0);
    for (int i = 0; i < BANK_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, bank_worker_main, &w[i]), 0);
    for (int i = 0; i < BANK_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_lock(&a.mu);
    a.stop = 1;
    pthread_mutex_unlock(&a.mu);
    pthread_join(ath, NULL);

    struct bank_worker tot;
    memset(&tot, 0, sizeof tot);
    for (int i = 0; i < BANK_THREADS; i++) {
        tot.committed += w[i].committed;
        tot.insufficient += w[i].insufficient;
        tot.exhausted += w[i].exhausted;
        tot.other_failed += w[i].other_failed;
        tot.unclear += w[i].unclear;
        tot.attempts += w[i].attempts;
        for (int k = 0; k <= DBK_RC_MAX; k++)
            tot.retries[k] += w[i].retries[k];
        if (w[i].other_failed)
            fprintf(stderr, "  worker %d unexpected failure: %s\n", i, w[i].first_other);
        dbk_conn_close(w[i].conn);
    }
    fprintf(stderr,
            "bank %s %s %s: %d committed, %d insufficient funds, %d retry budget exhausted, "
            "%d other failures; %d closure runs; retries: %d serialization, %d deadlock, "
            "%d busy; auditor: %d checks (%d failed)\n",
            e == DBK_ENGINE_POSTGRES ? "postgres" : "sqlite", level_name(level),
            pool ? "(pool)" : "(connection per thread)", tot.committed,
            tot.insufficient, tot.exhausted, tot.other_failed, tot.attempts,
            tot.retries[DBK_ESERIALIZATION], tot.retries[DBK_EDEADLOCK], tot.retries[DBK_EBUSY],
            a.checks, a.failed);
    if (a.failed)
        fprintf(stderr, "  auditor failure: %s\n", a.first_failure);

    dbk_db *db = dbk_conn_db(setup);
    assert_int_equal(q_int(db, "SELECT CAST(sum(balance) AS BIGINT) FROM accounts"),
                     (int64_t)BANK_ACCOUNTS * BANK_START);
    assert_true(q_int(db, "SELECT min(balance) FROM accounts") >= 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM accounts"), BANK_ACCOUNTS);
    assert_int_equal(a.bad_sum, 0);
    assert_int_equal(a.bad_min, 0);
    assert_true(a.checks > 0);
    assert_int_equal(tot.unclear, 0);
    assert_int_equal(tot.other_failed, 0);
    assert_true(tot.committed > 0);
    if (e == DBK_ENGINE_POSTGRES) {
        /* the deadlocks we provoked happened, and were retried */
        assert_true(tot.retries[DBK_EDEADLOCK] + tot.retries[DBK_ESERIALIZATION] > 0);
    }
    dbk_conn_close(a.conn);
    if (pool) {
        dbk_pool_stats ps;
        dbk_error perr;
        DBKT_OK(dbk_pool_get_stats(pool, &ps, &perr), &perr);
        fprintf(stderr, "  pool: %d open, %llu acquires, %llu acquire timeouts, %llu resets, "
                        "%llu discarded\n",
                ps.total, (unsigned long long)ps.acquires,
                (unsigned long long)ps.acquire_timeouts, (unsigned long long)ps.resets,
                (unsigned long long)ps.discarded);
        assert_int_equal(ps.in_use, 0); /* every transaction gave its connection back */
        assert_int_equal(ps.discarded, 0);
        dbk_pool_close(pool, 1000);
    }
    pthread_mutex_destroy(&a.mu);
    dbk_conn_close(setup);
}

static void bank_serializable(const char *url, dbk_engine e)
{
    bank_run(url, e, DBK_ISOLATION_SERIALIZABLE, 0);
}

static void bank_read_committed(const char *url, dbk_engine e)
{
    bank_run(url, e, DBK_ISOLATION_READ_COMMITTED, 0);
}

static void bank_pooled(const char *url, dbk_engine e)
{
    /* 16 workers and the auditor share 8 connections */
    bank_run(url, e, DBK_ISOLATION_SERIALIZABLE, 8);
}

static void tx_bank_serializable(void **state)
{
    (void)state;
    dbkt_each_engine("tx_bank_ser", bank_serializable);
}

static void tx_bank_read_committed(void **state)
{
    (void)state;
    dbkt_each_engine("tx_bank_rc", bank_read_committed);
}

static void tx_bank_through_a_pool(void **state)
{
    (void)state;
    dbkt_each_engine("tx_bank_pool", bank_pooled);
}

/* ======================================================================
 * What is not retried, and what happens when retries run out
 * ====================================================================== */

struct count_ctx {
    int runs;
    int retries;
    int last_delay_ms;
    dbk_rc last_rc;
};

static void count_retry(void *ctx, int attempt, dbk_rc rc, int delay_ms, const dbk_error *err)
{
    struct count_ctx *c = ctx;
    c->retries++;
    assert_int_equal(attempt, c->retries);
    assert_true(dbk_rc_is_retryable(rc));
    assert_int_equal(err->code, rc);
    c->last_delay_ms = delay_ms;
    c->last_rc = rc;
}

static dbk_rc dup_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct count_ctx *c = ctx;
    c->runs++;
    return dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('dup', 1)", NULL, 0, NULL, err);
}

static void unique_not_retried(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL);"
                "INSERT INTO kv (k, v) VALUES ('dup', 0)");
    struct count_ctx c = {0, 0, 0, DBK_OK};
    dbk_tx_opts o = {0};
    o.on_retry = count_retry;
    o.on_retry_ctx = &c;
    DBKT_RC(DBK_EUNIQUE, dbk_tx_run(db, dup_fn, &c, &o, &err));
    assert_int_equal(err.code, DBK_EUNIQUE);
    assert_true(err.message[0] != '\0');
    assert_int_equal(c.runs, 1);
    assert_int_equal(c.retries, 0);
    dbk_conn_close(conn);
}

static void tx_unique_violation_not_retried(void **state)
{
    (void)state;
    dbkt_each_engine("tx_unique", unique_not_retried);
}

/* PostgreSQL: a closure that always fails with 40001. SQLite: a closure
 * that always meets a database locked by another connection (BEGIN
 * IMMEDIATE gives SQLITE_BUSY after the busy timeout). */
static dbk_rc always_40001(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct count_ctx *c = ctx;
    c->runs++;
    return dbk_db_exec(tx, "DO $$ BEGIN RAISE EXCEPTION 'conflict, attempt %', 1 USING "
                           "ERRCODE = '40001'; END $$",
                       NULL, 0, NULL, err);
}

static void exhausted_run(const char *url, dbk_engine e)
{
    dbk_error err;
    struct count_ctx c = {0, 0, 0, DBK_OK};
    dbk_tx_opts o = {0};
    o.max_attempts = 4;
    o.base_backoff_ms = 1;
    o.max_backoff_ms = 4;
    o.on_retry = count_retry;
    o.on_retry_ctx = &c;
    if (e == DBK_ENGINE_POSTGRES) {
        dbk_conn *conn = dbkt_open(url);
        int64_t t0 = now_ms();
        DBKT_RC(DBK_ERETRY_EXHAUSTED, dbk_tx_run(dbk_conn_db(conn), always_40001, &c, &o, &err));
        assert_int_equal(c.runs, 4);
        assert_int_equal(c.retries, 3);
        assert_int_equal(c.last_rc, DBK_ESERIALIZATION);
        assert_true(c.last_delay_ms <= 4);
        assert_true(now_ms() - t0 < 1000);
        assert_string_equal(err.sqlstate, "40001");
        assert_non_null(strstr(err.message, "gave up after 4 attempts"));
        assert_non_null(strstr(err.message, "conflict, attempt 1")); /* the last error's message */
        assert_true(err.hint[0] != '\0');

        /* max_attempts 1: no retry, the error as it came */
        struct count_ctx c1 = {0, 0, 0, DBK_OK};
        o.max_attempts = 1;
        o.on_retry_ctx = &c1;
        DBKT_RC(DBK_ESERIALIZATION, dbk_tx_run(dbk_conn_db(conn), always_40001, &c1, &o, &err));
        assert_int_equal(c1.runs, 1);

        /* the elapsed-time budget also ends it */
        struct count_ctx c2 = {0, 0, 0, DBK_OK};
        o.max_attempts = 1000;
        o.max_elapsed_ms = 200;
        o.base_backoff_ms = 20;
        o.max_backoff_ms = 40;
        o.on_retry_ctx = &c2;
        t0 = now_ms();
        DBKT_RC(DBK_ERETRY_EXHAUSTED, dbk_tx_run(dbk_conn_db(conn), always_40001, &c2, &o, &err));
        assert_true(c2.runs > 1 && c2.runs < 1000);
        assert_true(now_ms() - t0 < 1000);
        dbk_conn_close(conn);
        return;
    }
    /* SQLite: a real busy database */
    char u[1024];
    snprintf(u, sizeof u, "%s?busy_timeout=20", url);
    dbk_conn *holder = dbkt_open(u);
    dbk_conn *conn = dbkt_open(u);
    exec_ok(dbk_conn_db(holder), "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    exec_ok(dbk_conn_db(holder), "BEGIN IMMEDIATE");
    struct kv_ctx k = {"z", 1, DBK_OK, 0};
    DBKT_RC(DBK_ERETRY_EXHAUSTED, dbk_tx_run(dbk_conn_db(conn), insert_kv, &k, &o, &err));
    assert_int_equal(k.runs, 0); /* BEGIN IMMEDIATE itself was busy every time */
    assert_int_equal(c.retries, 3);
    assert_int_equal(c.last_rc, DBK_EBUSY);
    assert_non_null(strstr(err.message, "gave up after 4 attempts"));
    exec_ok(dbk_conn_db(holder), "ROLLBACK");
    /* and once the lock is gone it goes through */
    DBKT_OK(dbk_tx_run(dbk_conn_db(conn), insert_kv, &k, &o, &err), &err);
    assert_int_equal(k.runs, 1);
    dbk_conn_close(holder);
    dbk_conn_close(conn);
}

static void tx_retry_budget_exhausted(void **state)
{
    (void)state;
    dbkt_each_engine("tx_exhausted", exhausted_run);
}

/* A retryable error inside a savepoint is not retried by the savepoint,
 * and not lost when the outer closure swallows it: the outermost
 * transaction re-runs everything. */
struct nested_retry_ctx {
    int outer_runs, inner_runs;
};

static dbk_rc nr_inner(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct nested_retry_ctx *c = ctx;
    c->inner_runs++;
    if (c->outer_runs == 1) {
        if (dbk_db_engine(tx) == DBK_ENGINE_POSTGRES)
            return dbk_db_exec(tx, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING "
                                   "ERRCODE = '40P01'; END $$",
                               NULL, 0, NULL, err);
        return app_err(err, DBK_EBUSY, "simulated busy database");
    }
    return dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('inner', 1)", NULL, 0, NULL, err);
}

static dbk_rc nr_outer(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct nested_retry_ctx *c = ctx;
    c->outer_runs++;
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('outer', 1)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    dbk_error ierr;
    (void)dbk_tx_run(tx, nr_inner, c, NULL, &ierr); /* the error is swallowed */
    return DBK_OK;
}

static void nested_retry(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    struct nested_retry_ctx c = {0, 0};
    DBKT_OK(dbk_tx_run(db, nr_outer, &c, NULL, &err), &err);
    assert_int_equal(c.outer_runs, 2);
    assert_int_equal(c.inner_runs, 2);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    dbk_conn_close(conn);
}

static void tx_nested_retryable_error_retries_outermost(void **state)
{
    (void)state;
    dbkt_each_engine("tx_nested_retry", nested_retry);
}

/* ======================================================================
 * Connection lost during COMMIT (PostgreSQL only: SQLite has no
 * connection to lose)
 * ====================================================================== */

struct kill_ctx {
    int runs;
    int hook_runs;
};

static void kill_hook(void *ctx)
{
    struct kill_ctx *c = ctx;
    c->hook_runs++;
}

static dbk_rc kill_before_commit(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct kill_ctx *c = ctx;
    c->runs++;
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('maybe', 1)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    rc = dbk_tx_after_commit(tx, kill_hook, c, err);
    if (rc)
        return rc;
    int64_t pid = 0;
    rc = dbk_db_query_int64(tx, "SELECT pg_backend_pid()", NULL, 0, &pid, err);
    if (rc)
        return rc;
    /* The backend dies right now; the COMMIT that follows meets a dead
     * connection. pg_terminate_backend(pid, timeout) waits for the exit. */
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld, 5000)", (long long)pid);
    dbkt_pg_admin_exec(sql);
    return DBK_OK;
}

static void tx_connection_lost_during_commit_is_unknown(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("tx_commit_unknown");
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    struct kill_ctx c = {0, 0};
    struct count_ctx rc_count = {0, 0, 0, DBK_OK};
    dbk_tx_opts o = {0};
    o.on_retry = count_retry;
    o.on_retry_ctx = &rc_count;
    DBKT_RC(DBK_ECOMMIT_UNKNOWN, dbk_tx_run(db, kill_before_commit, &c, &o, &err));
    assert_int_equal(c.runs, 1); /* never retried */
    assert_int_equal(c.hook_runs, 0); /* no commit seen: no after-commit hook */
    fprintf(stderr, "commit unknown: %s (hint: %s)\n", err.message, err.hint);
    assert_int_equal(rc_count.retries, 0);
    assert_non_null(strstr(err.message, "COMMIT"));
    assert_non_null(strstr(err.hint, "idempotent"));
    dbk_conn_close(conn);

    /* here the server had not committed: the row is not there */
    conn = dbkt_open(url);
    assert_int_equal(q_int(dbk_conn_db(conn), "SELECT count(*) FROM kv"), 0);
    dbk_conn_close(conn);
    free(url);
}

/* Lost before COMMIT was sent: the server rolled it back, so the closure
 * may run again on a fresh connection (failover, a restarted server, a
 * terminated backend), even when the closure swallowed the error. */
struct lost_ctx {
    int runs;
    bool swallow;
    const char *key;
};

static dbk_rc lose_first_attempt(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct lost_ctx *c = ctx;
    c->runs++;
    dbk_value p[2] = {dbk_text(c->key), dbk_int64(c->runs)};
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ($1, $2)", p, 2, NULL, err);
    if (rc || c->runs > 1)
        return rc;
    int64_t pid = 0;
    rc = dbk_db_query_int64(tx, "SELECT pg_backend_pid()", NULL, 0, &pid, err);
    if (rc)
        return rc;
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld, 5000)", (long long)pid);
    dbkt_pg_admin_exec(sql);
    rc = dbk_db_exec(tx, "SELECT 1", NULL, 0, NULL, err);
    return c->swallow ? DBK_OK : rc;
}

static void tx_connection_lost_before_commit_is_retried(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("tx_lost_retried");
    dbk_config *cfg = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);
    dbk_db *db = dbk_pool_db(pool);
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    struct lost_ctx a = {0, false, "returned"};
    DBKT_OK(dbk_tx_run(db, lose_first_attempt, &a, NULL, &err), &err);
    assert_int_equal(a.runs, 2);
    struct lost_ctx b = {0, true, "swallowed"};
    DBKT_OK(dbk_tx_run(db, lose_first_attempt, &b, NULL, &err), &err);
    assert_int_equal(b.runs, 2);
    /* Each applied once, by the second run. */
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    assert_int_equal(q_int(db, "SELECT sum(v)::bigint FROM kv"), 4);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* A server that stays away: the re-runs end with the budget and the
 * caller gets the connection error itself (DBK_EUNAVAILABLE, what a
 * service maps to 503), not DBK_ERETRY_EXHAUSTED. */
static void tx_server_down_keeps_its_error(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url("postgres://postgres@127.0.0.1:1/x?connect_timeout=1", &cfg, &err),
            &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);
    struct lost_ctx a = {0, false, "k"};
    dbk_tx_opts o = {0};
    o.max_elapsed_ms = 300;
    DBKT_RC(DBK_EUNAVAILABLE, dbk_tx_run(dbk_pool_db(pool), lose_first_attempt, &a, &o, &err));
    assert_int_equal(a.runs, 0);
    assert_non_null(strstr(err.message, "attempt"));
    dbk_pool_close(pool, 0);
}

/* On a single connection there is no fresh connection to retry on: the
 * loss is reported as it came. */
static void tx_connection_lost_on_a_connection_not_retried(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("tx_lost_conn");
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    struct lost_ctx a = {0, false, "k"};
    DBKT_RC(DBK_ECONN_LOST, dbk_tx_run(db, lose_first_attempt, &a, NULL, &err));
    assert_int_equal(a.runs, 1);
    dbk_conn_close(conn);
    free(url);
}

/* ======================================================================
 * Transaction timeout
 * ====================================================================== */

struct slow_ctx {
    int sleep_ms;
    int mode; /* 0: insert, sleep, insert; 1: insert, sleep, return OK; 2: server-side sleep */
    dbk_rc second_rc;
};

static dbk_rc slow_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct slow_ctx *c = ctx;
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('first', 1)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    if (c->mode == 2)
        return dbk_db_exec(tx, "SELECT pg_sleep(3)", NULL, 0, NULL, err);
    sleep_ms(c->sleep_ms);
    if (c->mode == 1)
        return DBK_OK;
    c->second_rc = dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('second', 2)", NULL, 0, NULL,
                               err);
    return c->second_rc;
}

struct show_timeout {
    char stmt[32], idle[32];
};

static dbk_rc show_timeout_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct show_timeout *s = ctx;
    dbk_rc rc = dbk_db_query_text(tx, "SHOW statement_timeout", NULL, 0, s->stmt, sizeof s->stmt,
                                  NULL, err);
    if (rc)
        return rc;
    return dbk_db_query_text(tx, "SHOW idle_in_transaction_session_timeout", NULL, 0, s->idle,
                             sizeof s->idle, NULL, err);
}

static void timeout_run(const char *url, dbk_engine e)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    dbk_tx_opts o = {0};
    o.timeout_ms = 150;

    /* a statement after the deadline fails; the transaction is rolled back */
    struct slow_ctx c0 = {250, 0, DBK_OK};
    DBKT_RC(DBK_ETIMEOUT, dbk_tx_run(db, slow_fn, &c0, &o, &err));
    assert_int_equal(c0.second_rc, DBK_ETIMEOUT);
    assert_string_equal(err.message, "transaction exceeded its timeout of 150 ms");
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 0);

    /* returning OK past the deadline does not commit */
    struct slow_ctx c1 = {250, 1, DBK_OK};
    DBKT_RC(DBK_ETIMEOUT, dbk_tx_run(db, slow_fn, &c1, &o, &err));
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 0);

    /* within the limit all is well */
    struct slow_ctx c2 = {10, 0, DBK_OK};
    DBKT_OK(dbk_tx_run(db, slow_fn, &c2, &o, &err), &err);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 2);
    exec_ok(db, "DELETE FROM kv");

    if (e == DBK_ENGINE_POSTGRES) {
        char st_before[64], idle_before[64];
        DBKT_OK(dbk_db_query_text(db, "SHOW statement_timeout", NULL, 0, st_before,
                                  sizeof st_before, NULL, &err),
                &err);
        DBKT_OK(dbk_db_query_text(db, "SHOW idle_in_transaction_session_timeout", NULL, 0,
                                  idle_before, sizeof idle_before, NULL, &err),
                &err);
        /* the server enforces it too: a long statement is cancelled */
        struct slow_ctx c3 = {0, 2, DBK_OK};
        o.timeout_ms = 300;
        int64_t t0 = now_ms();
        DBKT_RC(DBK_ETIMEOUT, dbk_tx_run(db, slow_fn, &c3, &o, &err));
        int64_t took = now_ms() - t0;
        assert_true(took < 2000);
        assert_string_equal(err.message, "transaction exceeded its timeout of 300 ms");
        assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 0);

        /* and the connection is clean afterwards: no transaction, the
         * session's own timeouts back */
        char buf[64];
        DBKT_OK(dbk_db_query_text(db, "SHOW statement_timeout", NULL, 0, buf, sizeof buf, NULL,
                                  &err),
                &err);
        assert_string_equal(buf, st_before);
        DBKT_OK(dbk_db_query_text(db, "SHOW idle_in_transaction_session_timeout", NULL, 0, buf,
                                  sizeof buf, NULL, &err),
                &err);
        assert_string_equal(buf, idle_before);

        /* inside: statement_timeout is the transaction timeout, unless the
         * session's configured one is smaller, which is kept */
        struct show_timeout st = {"", ""};
        o.timeout_ms = 4000;
        DBKT_OK(dbk_tx_run(db, show_timeout_fn, &st, &o, &err), &err);
        assert_string_equal(st.stmt, "4s");
        assert_string_equal(st.idle, "5s"); /* + 1 s grace */
        char u[1024];
        snprintf(u, sizeof u, "%s%sstatement_timeout=1500", url, strchr(url, '?') ? "&" : "?");
        dbk_conn *small = dbkt_open(u);
        DBKT_OK(dbk_tx_run(dbk_conn_db(small), show_timeout_fn, &st, &o, &err), &err);
        assert_string_equal(st.stmt, "1500ms");
        assert_string_equal(st.idle, "5s");
        o.timeout_ms = DBK_TX_NO_TIMEOUT;
        DBKT_OK(dbk_tx_run(dbk_conn_db(small), show_timeout_fn, &st, &o, &err), &err);
        assert_string_equal(st.stmt, "1500ms");
        assert_string_equal(st.idle, idle_before);
        dbk_conn_close(small);
    }
    /* a statement outside a transaction autocommits: the connection is idle */
    exec_ok(db, "INSERT INTO kv (k, v) VALUES ('x', 1)");
    dbk_conn_close(conn);
    conn = dbkt_open(url);
    assert_int_equal(q_int(dbk_conn_db(conn), "SELECT count(*) FROM kv"), 1);
    dbk_conn_close(conn);
}

static void tx_timeout_rolls_back(void **state)
{
    (void)state;
    dbkt_each_engine("tx_timeout", timeout_run);
}

/* ======================================================================
 * After-commit hooks
 * ====================================================================== */

struct hook_log {
    char seq[64];
    int released;
    dbk_db *saved_tx;
    dbk_rc use_after_rc;
    bool in_tx_at_hook;
};

struct hook_arg {
    struct hook_log *log;
    char tag;
};

static void hook_append(void *ctx)
{
    struct hook_arg *a = ctx;
    size_t n = strlen(a->log->seq);
    a->log->seq[n] = a->tag;
    a->log->seq[n + 1] = '\0';
}

static void hook_release(void *ctx)
{
    struct hook_arg *a = ctx;
    a->log->released++;
}

struct hook_case {
    struct hook_log *log;
    struct hook_arg a, b, c, d;
    int mode; /* 0 commit; 1 rollback; 2 inner savepoint rolls back; 3 retry once */
    int runs;
};

static dbk_rc hook_inner(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct hook_case *h = ctx;
    DBKT_OK(dbk_tx_after_commit_ex(tx, hook_append, &h->c, hook_release, err), err);
    if (h->mode == 2)
        return app_err(err, DBK_EINVALID, "inner rolls back");
    return DBK_OK;
}

static void hook_use_tx(void *ctx)
{
    struct hook_log *l = ctx;
    dbk_error err;
    l->in_tx_at_hook = dbk_db_in_transaction(l->saved_tx);
    l->use_after_rc = dbk_db_exec(l->saved_tx, "SELECT 1", NULL, 0, NULL, &err);
}

static dbk_rc hook_outer(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct hook_case *h = ctx;
    h->runs++;
    h->log->saved_tx = tx;
    DBKT_OK(dbk_tx_after_commit_ex(tx, hook_append, &h->a, hook_release, err), err);
    DBKT_OK(dbk_tx_after_commit(tx, hook_append, &h->b, err), err);
    dbk_error ierr;
    dbk_rc irc = dbk_tx_run(tx, hook_inner, h, NULL, &ierr);
    assert_int_equal(irc, h->mode == 2 ? DBK_EINVALID : DBK_OK);
    DBKT_OK(dbk_tx_after_commit_ex(tx, hook_append, &h->d, hook_release, err), err);
    DBKT_OK(dbk_tx_after_commit(tx, hook_use_tx, h->log, err), err);
    if (h->mode == 1)
        return app_err(err, DBK_EINVALID, "outer rolls back");
    if (h->mode == 3 && h->runs == 1)
        return app_err(err, DBK_ESERIALIZATION, "simulated conflict");
    return dbk_db_exec(tx, "INSERT INTO kv (k, v) VALUES ('h', 1) "
                           "ON CONFLICT (k) DO UPDATE SET v = kv.v + 1",
                       NULL, 0, NULL, err);
}

static void hooks_run(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");

    static const struct {
        int mode;
        dbk_rc rc;
        const char *seq;
        int released; /* of a, c and d (b has no release) */
    } cases[] = {
        {0, DBK_OK, "abcd", 3},   /* in registration order, after commit */
        {1, DBK_EINVALID, "", 3}, /* rollback: none ran, all released */
        {2, DBK_OK, "abd", 3},    /* the rolled-back savepoint's hook is discarded */
        {3, DBK_OK, "abcd", 6},   /* the failed attempt's hooks discarded, then run once */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hook_log log;
        memset(&log, 0, sizeof log);
        log.use_after_rc = -1;
        struct hook_case h = {&log, {&log, 'a'}, {&log, 'b'}, {&log, 'c'}, {&log, 'd'},
                              cases[i].mode, 0};
        dbk_tx_opts o = {0};
        o.base_backoff_ms = 1;
        DBKT_RC(cases[i].rc, dbk_tx_run(db, hook_outer, &h, &o, &err));
        assert_string_equal(log.seq, cases[i].seq);
        assert_int_equal(log.released, cases[i].released);
        if (cases[i].rc == DBK_OK) {
            /* a hook that tries to use the finished transaction gets EMISUSE */
            assert_int_equal(log.use_after_rc, DBK_EMISUSE);
            assert_false(log.in_tx_at_hook);
        }
    }

    /* outside a transaction a hook runs at once */
    struct hook_log log;
    memset(&log, 0, sizeof log);
    struct hook_arg x = {&log, 'x'};
    DBKT_OK(dbk_tx_after_commit_ex(db, hook_append, &x, hook_release, &err), &err);
    assert_string_equal(log.seq, "x");
    assert_int_equal(log.released, 1);
    dbk_conn_close(conn);
}

static void tx_after_commit_hooks(void **state)
{
    (void)state;
    dbkt_each_engine("tx_hooks", hooks_run);
}

/* ======================================================================
 * Misuse is an error, not a crash
 * ====================================================================== */

static dbk_rc nested_on_conn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)tx;
    dbk_db *conn_db = ctx;
    /* a second top-level transaction on the same connection while one is open */
    dbk_rc rc = dbk_tx_run(conn_db, write_fn, NULL, NULL, err);
    assert_int_equal(rc, DBK_EMISUSE);
    assert_non_null(strstr(err->hint, "savepoint"));
    return DBK_OK;
}

static void misuse(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(NULL, write_fn, NULL, NULL, &err));
    assert_true(err.message[0] != '\0');
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(db, NULL, NULL, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(NULL, NULL, NULL, NULL, NULL));
    dbk_tx_opts bad = {0};
    bad.max_attempts = -1;
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(db, write_fn, NULL, &bad, &err));
    bad.max_attempts = 0;
    bad.timeout_ms = -5;
    DBKT_RC(DBK_EMISUSE, dbk_tx_run(db, write_fn, NULL, &bad, &err));
    DBKT_RC(DBK_EMISUSE, dbk_tx_after_commit(NULL, hook_append, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_tx_after_commit(db, NULL, NULL, &err));
    assert_false(dbk_db_in_transaction(NULL));
    assert_false(dbk_db_in_transaction(db));

    DBKT_OK(dbk_tx_run(db, nested_on_conn, db, NULL, &err), &err);
    assert_int_equal(q_int(db, "SELECT count(*) FROM kv"), 0);
    dbk_conn_close(conn);
}

static void tx_misuse_is_an_error(void **state)
{
    (void)state;
    dbkt_each_engine("tx_misuse", misuse);
}

/* ======================================================================
 * The observer sees the transaction's statements, BEGIN and COMMIT too
 * ====================================================================== */

struct obs_log {
    int n;
    char sql[16][48];
};

static void obs_fn(void *ctx, const dbk_query_event *ev)
{
    struct obs_log *l = ctx;
    if (l->n < 16)
        snprintf(l->sql[l->n++], sizeof l->sql[0], "%s", ev->sql);
}

static void observed(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    exec_ok(db, "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)");
    struct obs_log l;
    memset(&l, 0, sizeof l);
    dbk_db_set_observer(db, obs_fn, &l);
    dbk_tx_opts o = {0};
    o.timeout_ms = DBK_TX_NO_TIMEOUT;
    DBKT_OK(dbk_tx_run(db, write_fn, NULL, &o, &err), &err);
    dbk_db_set_observer(db, NULL, NULL);
    assert_int_equal(l.n, 3);
    assert_non_null(strstr(l.sql[0], "BEGIN"));
    assert_non_null(strstr(l.sql[1], "INSERT INTO kv"));
    assert_string_equal(l.sql[2], "COMMIT");
    dbk_conn_close(conn);
}

static void tx_observer_sees_transaction(void **state)
{
    (void)state;
    dbkt_each_engine("tx_observer", observed);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tx_commit_and_rollback),
        cmocka_unit_test(tx_transfer_money),
        cmocka_unit_test(tx_create_order),
        cmocka_unit_test(tx_savepoints),
        cmocka_unit_test(tx_isolation_levels_applied),
        cmocka_unit_test(tx_read_only_rejects_writes),
        cmocka_unit_test(tx_bank_serializable),
        cmocka_unit_test(tx_bank_read_committed),
        cmocka_unit_test(tx_bank_through_a_pool),
        cmocka_unit_test(tx_unique_violation_not_retried),
        cmocka_unit_test(tx_retry_budget_exhausted),
        cmocka_unit_test(tx_nested_retryable_error_retries_outermost),
        cmocka_unit_test(tx_connection_lost_during_commit_is_unknown),
        cmocka_unit_test(tx_connection_lost_before_commit_is_retried),
        cmocka_unit_test(tx_connection_lost_on_a_connection_not_retried),
        cmocka_unit_test(tx_server_down_keeps_its_error),
        cmocka_unit_test(tx_timeout_rolls_back),
        cmocka_unit_test(tx_after_commit_hooks),
        cmocka_unit_test(tx_misuse_is_an_error),
        cmocka_unit_test(tx_observer_sees_transaction),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
