/*
 * Batches and parallel tasks on both engines: outcomes line up with the
 * statements, all-or-nothing rolls back, batches inside transactions, the
 * seed's user + orders pair in one round trip (counted by a TCP relay
 * between dbkit and PostgreSQL that counts request bursts), a backend
 * killed in the middle of a large batch, prepared statements reused, the
 * observer, and dbk_parallel_run with more tasks than pooled connections.
 */
/* dbkit:valgrind */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dbkit/batch.h"
#include "pgserver.h"
#include "testutil.h"

static dbk_pool *open_pool(const char *url, int max)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool_opts o = {.max_size = max, .acquire_timeout_ms = 20000};
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, &o, &pool, &err), &err);
    dbk_config_free(cfg);
    return pool;
}

static void add(dbk_batch *b, const char *sql, const dbk_value *p, size_t n)
{
    dbk_error err;
    DBKT_OK(dbk_batch_add(b, sql, p, n, &err), &err);
}

static void add_insert(dbk_batch *b, int64_t id, const char *v)
{
    dbk_value p[2] = {dbk_int64(id), dbk_text(v)};
    add(b, "INSERT INTO t (id, v) VALUES ($1, $2)", p, 2);
}

static int64_t cell_int(const dbk_result *r, size_t row, int col)
{
    dbk_error err;
    int64_t v = -1;
    assert_non_null(r);
    DBKT_OK(dbk_result_get_int64(r, row, col, &v, &err), &err);
    return v;
}

/* ---- mixed reads and writes, one failing statement ---- */

static void mixed_on(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    char big[64];
    for (int round = 0; round < 2; round++) {
        /* The same batch object cleared and refilled: nothing leaks. */
        dbk_batch_clear(b);
        dbkt_exec(db, "DELETE FROM t");
        snprintf(big, sizeof big, "one-%d", round);
        add_insert(b, 1, big);                               /* 0 ok */
        add(b, "SELECT count(*) FROM t", NULL, 0);            /* 1 ok: 1 */
        add_insert(b, 1, "dup");                             /* 2 unique violation */
        add_insert(b, 2, "two");                             /* 3 ok */
        dbk_value id = dbk_int64(2);
        add(b, "SELECT v FROM t WHERE id = $1", &id, 1);      /* 4 ok: two */
        add(b, "SELECT nope FROM t", NULL, 0);                /* 5 schema error */
        dbk_value zero = dbk_int64(0);
        add(b, "UPDATE t SET v = 'x' WHERE id > $1", &zero, 1); /* 6: 2 rows */
        assert_int_equal(dbk_batch_count(b), 7);
        DBKT_RC(DBK_EUNIQUE, dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err));
        assert_non_null(strstr(err.message, "batch statement 2"));
        DBKT_RC(DBK_OK, dbk_batch_rc(b, 0));
        DBKT_RC(DBK_OK, dbk_batch_rc(b, 1));
        DBKT_RC(DBK_EUNIQUE, dbk_batch_rc(b, 2));
        DBKT_RC(DBK_OK, dbk_batch_rc(b, 3));
        DBKT_RC(DBK_OK, dbk_batch_rc(b, 4));
        DBKT_RC(DBK_ESCHEMA, dbk_batch_rc(b, 5));
        DBKT_RC(DBK_OK, dbk_batch_rc(b, 6));
        assert_int_equal(cell_int(dbk_batch_result(b, 1), 0, 0), 1);
        const char *v = NULL;
        size_t vl = 0;
        DBKT_OK(dbk_result_get_text(dbk_batch_result(b, 4), 0, 0, &v, &vl, &err), &err);
        assert_string_equal(v, "two");
        assert_int_equal(dbk_batch_affected(b, 6), 2);
        assert_int_equal(dbk_batch_affected(b, 0), 1);
        assert_null(dbk_batch_result(b, 2));
        assert_non_null(dbk_batch_error(b, 2));
        assert_int_equal(dbk_batch_error(b, 2)->code, DBK_EUNIQUE);
        assert_null(dbk_batch_error(b, 0));
        assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 2);
        /* A taken result belongs to the caller. */
        dbk_result *taken = dbk_batch_take_result(b, 1);
        assert_non_null(taken);
        assert_null(dbk_batch_result(b, 1));
        dbk_result_free(taken);
    }
    /* Out of range and not-run answers. */
    DBKT_RC(DBK_EMISUSE, dbk_batch_rc(b, 99));
    assert_null(dbk_batch_result(b, 99));
    assert_int_equal(dbk_batch_affected(b, 99), -1);
    dbk_batch_clear(b);
    DBKT_RC(DBK_EMISUSE, dbk_batch_rc(b, 0));
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err), &err); /* empty */
    dbk_batch_free(b);
    dbk_conn_close(c);
}

static void batch_mixed_outcomes_line_up(void **state)
{
    (void)state;
    dbkt_each_engine("batch_mixed", mixed_on);
}

/* ---- all or nothing ---- */

static void atomic_on(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    dbkt_exec(db, "INSERT INTO t VALUES (100, 'old')");
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    add_insert(b, 1, "a");
    add(b, "UPDATE t SET v = 'new' WHERE id = 100", NULL, 0);
    add_insert(b, 100, "dup"); /* fails */
    add_insert(b, 2, "b");
    DBKT_RC(DBK_EUNIQUE, dbk_batch_run(db, b, DBK_BATCH_ATOMIC, &err));
    DBKT_RC(DBK_ENOT_RUN, dbk_batch_rc(b, 0));
    DBKT_RC(DBK_ENOT_RUN, dbk_batch_rc(b, 1));
    DBKT_RC(DBK_EUNIQUE, dbk_batch_rc(b, 2));
    DBKT_RC(DBK_ENOT_RUN, dbk_batch_rc(b, 3));
    assert_non_null(strstr(dbk_batch_error(b, 0)->message, "rolled back"));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    char v[16];
    dbkt_text(db, "SELECT v FROM t WHERE id = 100", v, sizeof v);
    assert_string_equal(v, "old");

    /* The same statements without the duplicate commit together. */
    dbk_batch_clear(b);
    add_insert(b, 1, "a");
    add(b, "UPDATE t SET v = 'new' WHERE id = 100", NULL, 0);
    add_insert(b, 2, "b");
    add(b, "SELECT count(*) FROM t", NULL, 0);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_ATOMIC, &err), &err);
    assert_int_equal(cell_int(dbk_batch_result(b, 3), 0, 0), 3);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 3);
    dbkt_text(db, "SELECT v FROM t WHERE id = 100", v, sizeof v);
    assert_string_equal(v, "new");
    /* The pool got its connection back clean. */
    dbk_pool_stats s;
    DBKT_OK(dbk_pool_get_stats(pool, &s, &err), &err);
    assert_int_equal(s.in_use, 0);
    dbk_batch_free(b);
    dbk_pool_close(pool, 1000);
}

static void batch_atomic_rolls_back_everything(void **state)
{
    (void)state;
    dbkt_each_engine("batch_atomic", atomic_on);
}

/* ---- inside a transaction ---- */

struct txc {
    dbk_batch *b;
    dbk_rc then; /* returned by the closure after the batch */
    dbk_rc batch_rc;
};

static dbk_rc tx_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct txc *c = ctx;
    c->batch_rc = dbk_batch_run(tx, c->b, DBK_BATCH_INDEPENDENT, err);
    if (c->batch_rc != DBK_OK && c->then == DBK_OK)
        return c->batch_rc;
    if (c->then != DBK_OK)
        err->code = c->then;
    return c->then;
}

static void intx_on(const char *url, dbk_engine engine)
{
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    add_insert(b, 1, "a");
    add_insert(b, 2, "b");
    add(b, "SELECT count(*) FROM t", NULL, 0);

    /* The closure fails after the batch: the batch's writes go too. */
    struct txc c = {b, DBK_EINVALID, DBK_OK};
    DBKT_RC(DBK_EINVALID, dbk_tx_run(db, tx_fn, &c, NULL, &err));
    DBKT_RC(DBK_OK, c.batch_rc);
    assert_int_equal(cell_int(dbk_batch_result(b, 2), 0, 0), 2); /* seen inside */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);

    /* It commits: they stay. */
    c.then = DBK_OK;
    DBKT_OK(dbk_tx_run(db, tx_fn, &c, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 2);

    /* A failing statement inside a transaction. */
    dbk_batch_clear(b);
    add_insert(b, 3, "c");
    add_insert(b, 1, "dup");
    add_insert(b, 4, "d");
    c.then = DBK_OK;
    DBKT_RC(DBK_EUNIQUE, dbk_tx_run(db, tx_fn, &c, NULL, &err));
    DBKT_RC(DBK_OK, dbk_batch_rc(b, 0));
    DBKT_RC(DBK_EUNIQUE, dbk_batch_rc(b, 1));
    /* PostgreSQL aborted the transaction at the failure; SQLite runs on. */
    DBKT_RC(engine == DBK_ENGINE_POSTGRES ? DBK_ENOT_RUN : DBK_OK, dbk_batch_rc(b, 2));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 2); /* rolled back */
    dbk_batch_free(b);
    dbk_pool_close(pool, 1000);
}

static void batch_runs_inside_transactions(void **state)
{
    (void)state;
    dbkt_each_engine("batch_intx", intx_on);
}

/* ---- the observer ---- */

struct seen {
    int events, in_batch;
    size_t last_index, size;
    int failed;
};

static void observe(void *ctx, const dbk_query_event *ev)
{
    struct seen *s = ctx;
    s->events++;
    if (ev->batch_size) {
        if (ev->batch_index != (size_t)s->in_batch)
            s->failed = 1;
        s->in_batch++;
        s->size = ev->batch_size;
        s->last_index = ev->batch_index;
        if (ev->rc != DBK_OK && !ev->error)
            s->failed = 1;
    }
}

static void observer_on(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    struct seen s = {0};
    dbk_db_set_observer(db, observe, &s);
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    for (int i = 0; i < 5; i++)
        add_insert(b, i, "x");
    add_insert(b, 0, "dup");
    DBKT_RC(DBK_EUNIQUE, dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err));
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.events, 6);
    assert_int_equal(s.in_batch, 6);
    assert_int_equal(s.size, 6);
    assert_int_equal(s.last_index, 5);
    dbk_db_set_observer(db, NULL, NULL);
    dbk_batch_free(b);
    dbk_conn_close(c);
}

static void batch_observer_sees_each_statement(void **state)
{
    (void)state;
    dbkt_each_engine("batch_observer", observer_on);
}

/* ---- round trips, counted on the wire ---- */

/* A one-connection TCP relay that counts client bursts: a burst starts
 * when the client sends after the server has answered (or first). A
 * request/response exchange is one burst; a pipeline is one burst. */
struct relay {
    int lfd, port, target_port;
    pthread_t th;
    int bursts;   /* atomic */
    int stop;     /* atomic */
};

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    int cfd = accept(r->lfd, NULL, NULL);
    if (cfd < 0)
        return NULL;
    int sfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->target_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(sfd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(cfd);
        close(sfd);
        return NULL;
    }
    bool server_spoke = true;
    char buf[65536];
    while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
        struct pollfd p[2] = {{cfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        int n = poll(p, 2, 100);
        if (n <= 0)
            continue;
        if (p[0].revents) {
            ssize_t k = read(cfd, buf, sizeof buf);
            if (k <= 0)
                break;
            if (server_spoke)
                __atomic_add_fetch(&r->bursts, 1, __ATOMIC_RELAXED);
            server_spoke = false;
            for (ssize_t o = 0; o < k;) {
                ssize_t w = write(sfd, buf + o, (size_t)(k - o));
                if (w <= 0)
                    goto done;
                o += w;
            }
        }
        if (p[1].revents) {
            ssize_t k = read(sfd, buf, sizeof buf);
            if (k <= 0)
                break;
            server_spoke = true;
            for (ssize_t o = 0; o < k;) {
                ssize_t w = write(cfd, buf + o, (size_t)(k - o));
                if (w <= 0)
                    goto done;
                o += w;
            }
        }
    }
done:
    close(cfd);
    close(sfd);
    return NULL;
}

static void relay_start(struct relay *r, int target_port)
{
    memset(r, 0, sizeof *r);
    r->target_port = target_port;
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->lfd, 1), 0);
    socklen_t al = sizeof a;
    getsockname(r->lfd, (struct sockaddr *)&a, &al);
    r->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_stop(struct relay *r)
{
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
    pthread_join(r->th, NULL);
    close(r->lfd);
}

static int bursts(struct relay *r)
{
    return __atomic_load_n(&r->bursts, __ATOMIC_RELAXED);
}

/* The seed's user + orders pair. */
static const char USER_SQL[] = "SELECT id, name FROM users WHERE id = $1";
static const char ORDERS_SQL[] = "SELECT id, total FROM orders WHERE user_id = $1 ORDER BY id";

static void seed_users_orders(dbk_db *db)
{
    dbkt_exec(db, "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);"
                  "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL "
                  "REFERENCES users(id), total bigint NOT NULL);"
                  "INSERT INTO users VALUES (1, 'ada'), (2, 'bob');"
                  "INSERT INTO orders VALUES (10, 1, 500), (11, 1, 700), (12, 2, 100);");
}

static void check_pair(dbk_batch *b)
{
    const dbk_result *u = dbk_batch_result(b, 0), *o = dbk_batch_result(b, 1);
    assert_non_null(u);
    assert_non_null(o);
    assert_int_equal(dbk_result_nrows(u), 1);
    assert_int_equal(dbk_result_nrows(o), 2);
    assert_int_equal(cell_int(o, 0, 1), 500);
    assert_int_equal(cell_int(o, 1, 1), 700);
}

static void batch_user_and_orders_in_one_round_trip(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("batch_rtt");
    /* postgres://user@127.0.0.1:PORT/db -> the relay's port */
    const char *hp = strstr(url, "@127.0.0.1:");
    assert_non_null(hp);
    int port = atoi(hp + 11);
    const char *path = strchr(hp + 11, '/');
    struct relay r;
    relay_start(&r, port);
    char rurl[512];
    snprintf(rurl, sizeof rurl, "%.*s@127.0.0.1:%d%s", (int)(hp - url), url, r.port, path);
    dbk_conn *c = dbkt_open(rurl);
    dbk_db *db = dbk_conn_db(c);
    seed_users_orders(db);
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    dbk_value id = dbk_int64(1);
    add(b, USER_SQL, &id, 1);
    add(b, ORDERS_SQL, &id, 1);

    /* First run prepares both statements inside the pipeline. */
    int before = bursts(&r);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err), &err);
    check_pair(b);
    assert_int_equal(bursts(&r) - before, 1);

    /* Cached now: still one round trip; one by one it is two. */
    before = bursts(&r);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err), &err);
    check_pair(b);
    assert_int_equal(bursts(&r) - before, 1);
    before = bursts(&r);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_ATOMIC, &err), &err);
    check_pair(b);
    assert_int_equal(bursts(&r) - before, 1);

    before = bursts(&r);
    dbk_result *u = NULL, *o = NULL;
    DBKT_OK(dbk_db_query(db, USER_SQL, &id, 1, &u, &err), &err);
    DBKT_OK(dbk_db_query(db, ORDERS_SQL, &id, 1, &o, &err), &err);
    assert_int_equal(bursts(&r) - before, 2);
    dbk_result_free(u);
    dbk_result_free(o);

    /* Both statements were prepared once on this connection and reused
     * by every later run. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements "
                                  "WHERE statement LIKE 'SELECT id, % WHERE %id = $1%'"),
                     2);
    dbk_batch_free(b);
    dbk_conn_close(c);
    relay_stop(&r);
    free(url);
}

static void pair_sqlite(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("batch_pair");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    seed_users_orders(db);
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    dbk_value id = dbk_int64(1);
    add(b, USER_SQL, &id, 1);
    add(b, ORDERS_SQL, &id, 1);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err), &err);
    check_pair(b);
    dbk_batch_free(b);
    dbk_conn_close(c);
    free(url);
}

static void batch_user_and_orders_on_sqlite(void **state)
{
    pair_sqlite(state);
}

/* ---- same SQL many times, many parameters, COPY refused ---- */

static void batch_repeated_sql_and_wide_rows(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("batch_wide");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE w (a int, b int, c int, d int, e int, f int, g int, h int, "
                  "i int, j int, k int, l int, m int, n int, o int, p int, q int, r int, "
                  "s int, t text)");
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    char sql[512] = "INSERT INTO w VALUES (";
    for (int i = 1; i <= 20; i++)
        snprintf(sql + strlen(sql), sizeof sql - strlen(sql), "$%d%s", i, i < 20 ? ", " : ")");
    for (int row = 0; row < 50; row++) {
        dbk_value v[20];
        for (int i = 0; i < 19; i++)
            v[i] = dbk_int64(row * 100 + i);
        char t[32];
        snprintf(t, sizeof t, "row %d", row);
        v[19] = dbk_text(t); /* copied by add: t goes out of scope */
        add(b, sql, v, 20);
    }
    add(b, "COPY w TO STDOUT", NULL, 0);
    add(b, "SELECT sum(a), count(DISTINCT t) FROM w", NULL, 0);
    DBKT_RC(DBK_EMISUSE, dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err));
    for (int row = 0; row < 50; row++)
        DBKT_RC(DBK_OK, dbk_batch_rc(b, (size_t)row));
    DBKT_RC(DBK_EMISUSE, dbk_batch_rc(b, 50));
    assert_int_equal(cell_int(dbk_batch_result(b, 51), 0, 1), 50);
    assert_int_equal(cell_int(dbk_batch_result(b, 51), 0, 0), 100 * (49 * 50 / 2));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements "
                                  "WHERE statement LIKE 'INSERT INTO w%'"),
                     1);
    /* An atomic batch with a refused statement runs nothing. */
    DBKT_RC(DBK_EMISUSE, dbk_batch_run(db, b, DBK_BATCH_ATOMIC, &err));
    DBKT_RC(DBK_ENOT_RUN, dbk_batch_rc(b, 0));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM w"), 50);
    /* A bad parameter (NUL in text) fails that statement only. */
    dbk_batch_clear(b);
    dbk_value ok[2] = {dbk_int64(1), dbk_text("fine")};
    dbk_value bad[2] = {dbk_int64(2), dbk_textn("a\0b", 3)};
    add(b, "INSERT INTO w (a, t) VALUES ($1, $2)", ok, 2);
    add(b, "INSERT INTO w (a, t) VALUES ($1, $2)", bad, 2);
    add(b, "SELECT count(*) FROM w", NULL, 0);
    DBKT_RC(DBK_EINVALID, dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err));
    DBKT_RC(DBK_OK, dbk_batch_rc(b, 0));
    DBKT_RC(DBK_EINVALID, dbk_batch_rc(b, 1));
    assert_int_equal(cell_int(dbk_batch_result(b, 2), 0, 0), 51);
    dbk_batch_free(b);
    dbk_conn_close(c);
    free(url);
}

/* ---- the backend killed in the middle of a large batch ---- */

/* A pool of 2 on url with table t, and a batch of n inserts with a
 * `sleep_sql` at index sleep_at, for the tests that break the server in
 * the middle of a batch. */
static dbk_batch *kill_batch(dbk_pool **pool, const char *url, int n, int sleep_at,
                             const char *sleep_sql)
{
    *pool = open_pool(url, 2);
    dbkt_exec(dbk_pool_db(*pool), "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    for (int i = 0; i < n; i++) {
        if (i == sleep_at)
            add(b, sleep_sql, NULL, 0);
        else
            add_insert(b, i, "row");
    }
    return b;
}

/* After a loss at statement lost_at: nothing from there on succeeded, every
 * failure is a loss, an unknown outcome or not run (or, when the whole
 * server went away, unavailable); returns how many succeeded (they must all
 * be in the table). */
static int successes_before_loss(const dbk_batch *b, int n, int lost_at, bool server_down)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        dbk_rc ri = dbk_batch_rc(b, (size_t)i);
        if (ri == DBK_OK && i >= lost_at)
            fail_msg("statement %d after the loss reported success", i);
        if (ri == DBK_OK)
            ok++;
        else if (ri != DBK_ECONN_LOST && ri != DBK_ENOT_RUN &&
                 !(server_down && ri == DBK_EUNAVAILABLE))
            fail_msg("statement %d reported %s", i, dbk_rc_name(ri));
    }
    return ok;
}

struct killer {
    char dbname[64];
    int killed;
};

static void *kill_main(void *arg)
{
    struct killer *k = arg;
    /* Wait (bounded) until the batch is inside its pg_sleep, then terminate
     * that backend. */
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '%s' "
             "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%' AND pid <> pg_backend_pid()",
             k->dbname);
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    dbk_error err;
    if (dbk_config_from_url(dbkt_pg_admin_url(), &cfg, &err) || dbk_conn_open(cfg, &c, &err)) {
        dbk_config_free(cfg);
        return NULL;
    }
    dbk_config_free(cfg);
    for (int i = 0; i < 400; i++) { /* 20 s at most */
        int64_t n = 0;
        if (dbk_db_query_int64(dbk_conn_db(c), sql, NULL, 0, &n, &err) == DBK_OK && n > 0) {
            k->killed = 1;
            break;
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    dbk_conn_close(c);
    return NULL;
}

static void batch_backend_killed_mid_batch(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("batch_kill");
    enum { N = 2000, SLEEP_AT = 700 };
    dbk_pool *pool;
    dbk_batch *b = kill_batch(&pool, url, N, SLEEP_AT, "SELECT pg_sleep(5)");
    dbk_db *db = dbk_pool_db(pool);
    dbk_error err;
    struct killer k = {.killed = 0};
    snprintf(k.dbname, sizeof k.dbname, "dbkt_batch_kill");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, kill_main, &k), 0);
    dbk_rc rc = dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err);
    pthread_join(th, NULL);
    assert_int_equal(k.killed, 1);
    assert_int_equal(rc, DBK_ECONN_LOST);
    /* The batch ran as one implicit transaction that never committed:
     * nothing may be reported as succeeded unless it is in the table. */
    int ok = successes_before_loss(b, N, SLEEP_AT, false);
    assert_non_null(strstr(dbk_batch_error(b, 0)->message, "outcome unknown"));
    /* The last statement was unanswered ("outcome unknown") or, when the
     * loss came while the batch was still being sent (a slow client), never
     * sent ("not run"). */
    const char *last = dbk_batch_error(b, N - 1)->message;
    if (!strstr(last, "outcome unknown") && !strstr(last, "not run"))
        fail_msg("last statement: %s", last);
    /* Every statement reported as succeeded is in the table, no more. The
     * pool replaced the broken connection. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), ok);
    dbk_pool_stats s;
    DBKT_OK(dbk_pool_get_stats(pool, &s, &err), &err);
    assert_int_equal(s.in_use, 0);
    dbk_batch_free(b);
    dbk_pool_close(pool, 1000);
    free(url);
}

/* The server itself killed (`pg_ctl restart -m immediate`, a private
 * server) while a large batch of writes runs: nothing after the loss is
 * reported as succeeded, what is reported as succeeded is in the table,
 * and the pool serves again afterwards without being reopened. */
struct restarter {
    dbkt_pgserver *srv;
    int rc;
};

static void *restart_main(void *arg)
{
    struct restarter *r = arg;
    struct timespec ts = {0, 400 * 1000000L};
    nanosleep(&ts, NULL);
    r->rc = dbkt_pgserver_restart(r->srv, "immediate");
    return NULL;
}

static void batch_server_killed_mid_batch(void **state)
{
    (void)state;
    dbkt_pgserver *srv = dbkt_pgserver_start();
    enum { N = 3000, SLEEP_AT = 1000 };
    dbk_pool *pool;
    dbk_batch *b = kill_batch(&pool, dbkt_pgserver_url(srv), N, SLEEP_AT, "SELECT pg_sleep(3)");
    dbk_db *db = dbk_pool_db(pool);
    dbk_error err;
    struct restarter r = {srv, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, restart_main, &r), 0);
    dbk_rc rc = dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err);
    pthread_join(th, NULL);
    assert_int_equal(r.rc, 0);
    if (rc != DBK_ECONN_LOST && rc != DBK_EUNAVAILABLE)
        fail_msg("the batch returned %s: %s", dbk_rc_name(rc), err.message);
    int ok = successes_before_loss(b, N, SLEEP_AT, true);
    /* The pool recovers by itself: the next batch runs. */
    dbk_batch_clear(b);
    add(b, "SELECT count(*) FROM t", NULL, 0);
    add_insert(b, N + 1, "after");
    rc = DBK_ECONN_LOST;
    for (int attempt = 0; attempt < 50 && rc != DBK_OK; attempt++) {
        rc = dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err);
        if (rc != DBK_OK) {
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    DBKT_OK(rc, &err);
    assert_int_equal(cell_int(dbk_batch_result(b, 0), 0, 0), ok);
    dbk_batch_free(b);
    dbk_pool_close(pool, 1000);
    dbkt_pgserver_stop(srv);
}

/* ---- parallel: 4 tasks, a pool of 2 ---- */

struct ptask {
    int64_t id;
    int64_t got;
    bool fail;
};

static dbk_rc ptask_fn(dbk_db *db, void *ctx, dbk_error *err)
{
    struct ptask *t = ctx;
    if (t->fail)
        return dbk_db_exec(db, "INSERT INTO nowhere VALUES (1)", NULL, 0, NULL, err);
    dbk_value p = dbk_int64(t->id);
    dbk_rc rc = dbk_db_exec(db,
                            dbk_db_engine(db) == DBK_ENGINE_POSTGRES ? "SELECT pg_sleep(0.05)"
                                                                     : "SELECT 1",
                            NULL, 0, NULL, err);
    if (rc)
        return rc;
    return dbk_db_query_int64(db, "SELECT count(*) FROM orders WHERE user_id = $1", &p, 1,
                              &t->got, err);
}

static void parallel_on(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    seed_users_orders(db);
    dbk_error err;
    struct ptask pt[4] = {{1, -1, false}, {2, -1, false}, {1, -1, false}, {3, -1, false}};
    dbk_parallel_task tasks[4];
    for (int i = 0; i < 4; i++)
        tasks[i] = (dbk_parallel_task){.fn = ptask_fn, .ctx = &pt[i]};
    DBKT_OK(dbk_parallel_run(db, tasks, 4, 0, &err), &err);
    assert_int_equal(pt[0].got, 2);
    assert_int_equal(pt[1].got, 1);
    assert_int_equal(pt[2].got, 2);
    assert_int_equal(pt[3].got, 0);
    for (int i = 0; i < 4; i++)
        DBKT_RC(DBK_OK, tasks[i].rc);

    /* One failing task: the others still finish, nothing stays checked out. */
    pt[1].fail = true;
    pt[0].got = pt[2].got = -1;
    DBKT_RC(DBK_ESCHEMA, dbk_parallel_run(db, tasks, 4, 8, &err));
    assert_non_null(strstr(err.message, "task 1"));
    assert_int_equal(pt[0].got, 2);
    assert_int_equal(pt[2].got, 2);
    DBKT_RC(DBK_ESCHEMA, tasks[1].rc);
    dbk_pool_stats s;
    DBKT_OK(dbk_pool_get_stats(pool, &s, &err), &err);
    assert_int_equal(s.in_use, 0);
    assert_true(s.total <= 2);

    /* Batches in parallel, 4 on 2 connections. */
    dbk_batch *bs[4];
    for (int i = 0; i < 4; i++) {
        DBKT_OK(dbk_batch_new(&bs[i], &err), &err);
        dbk_value id = dbk_int64(1 + i % 2);
        add(bs[i], USER_SQL, &id, 1);
        add(bs[i], ORDERS_SQL, &id, 1);
    }
    DBKT_OK(dbk_parallel_run_batches(db, bs, 4, DBK_BATCH_INDEPENDENT, 0, &err), &err);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(dbk_result_nrows(dbk_batch_result(bs[i], 1)), i % 2 ? 1 : 2);
        dbk_batch_free(bs[i]);
    }
    /* On a single connection the tasks run one after another. */
    dbk_conn *c = dbkt_open(url);
    pt[1].fail = false;
    DBKT_OK(dbk_parallel_run(dbk_conn_db(c), tasks, 4, 4, &err), &err);
    assert_int_equal(pt[1].got, 1);
    dbk_conn_close(c);
    DBKT_RC(DBK_EMISUSE, dbk_parallel_run(NULL, tasks, 4, 0, &err));
    dbk_pool_close(pool, 1000);
}

static void batch_parallel_more_tasks_than_connections(void **state)
{
    (void)state;
    dbkt_each_engine("batch_parallel", parallel_on);
}

/* The names renamed in 0.2 (dbk_parallel, dbk_batch_run_parallel, dbk_task,
 * dbk_task_fn) still work for one release: deprecated wrappers and typedefs
 * of parallel.h's, with the same behaviour. */
static void batch_deprecated_parallel_names_still_work(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("batch_deprecated");
    dbk_pool *pool = open_pool(url, 2);
    dbk_db *db = dbk_pool_db(pool);
    seed_users_orders(db);
    dbk_error err;
    struct ptask pt[2] = {{1, -1, false}, {3, -1, true}};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    dbk_task_fn fn = ptask_fn;
    dbk_task tasks[2] = {{.fn = fn, .ctx = &pt[0]}, {.fn = fn, .ctx = &pt[1]}};
    DBKT_RC(DBK_ESCHEMA, dbk_parallel(db, tasks, 2, 0, &err));
    assert_non_null(strstr(err.message, "task 1"));
    DBKT_RC(DBK_EMISUSE, dbk_parallel(NULL, tasks, 2, 0, &err));
    dbk_batch *b;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    dbk_value id = dbk_int64(1);
    add(b, ORDERS_SQL, &id, 1);
    DBKT_OK(dbk_batch_run_parallel(db, &b, 1, DBK_BATCH_INDEPENDENT, 0, &err), &err);
    DBKT_RC(DBK_EMISUSE, dbk_batch_run_parallel(NULL, &b, 1, DBK_BATCH_INDEPENDENT, 0, &err));
#pragma GCC diagnostic pop
    assert_int_equal(pt[0].got, 2);
    DBKT_RC(DBK_OK, tasks[0].rc);
    DBKT_RC(DBK_ESCHEMA, tasks[1].rc);
    assert_int_equal(dbk_result_nrows(dbk_batch_result(b, 0)), 2);
    dbk_batch_free(b);
    dbk_pool_close(pool, 1000);
    free(url);
}


/* ---- values too large for any engine: refused at add, before the copy ---- */

static void huge_on(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE big (a TEXT, b TEXT)");
    const size_t G = (size_t)1 << 30, maplen = 4 * G + 5;
    char *huge = dbkt_unreadable(maplen); /* reading it crashes the test */
    const size_t sizes[] = {G - 4, G + 1, 2 * G + 16, 4 * G + 5};
    dbk_batch *b = NULL;
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    dbk_value ok[2] = {dbk_text("1"), dbk_text("one")};
    add(b, "INSERT INTO big (a, b) VALUES ($1, $2)", ok, 2);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (int t = 0; t < 3; t++) {
            dbk_value p[2] = {dbk_text("2"), dbk_null()};
            p[1].type = t == 0 ? DBK_TYPE_TEXT : t == 1 ? DBK_TYPE_JSON : DBK_TYPE_BLOB;
            p[1].u.bytes.ptr = huge;
            p[1].u.bytes.len = sizes[k];
            DBKT_RC(DBK_EINVALID,
                    dbk_batch_add(b, "INSERT INTO big (a, b) VALUES ($1, $2)", p, 2, &err));
            assert_non_null(strstr(err.message, "$2"));
            assert_non_null(strstr(err.message, "1073741819"));
        }
    }
    /* Two values under the limit that together are over what one
     * statement carries. */
    dbk_value two[2] = {dbk_blob(huge, 600u << 20), dbk_blob(huge, 600u << 20)};
    DBKT_RC(DBK_EINVALID, dbk_batch_add(b, "INSERT INTO big (a, b) VALUES ($1, $2)", two, 2, &err));
    assert_int_equal(dbk_batch_count(b), 1);
    dbkt_unreadable_free(huge, maplen);
    /* The batch holds what was accepted, and runs. */
    dbk_value ok2[2] = {dbk_text("3"), dbk_text("three")};
    add(b, "INSERT INTO big (a, b) VALUES ($1, $2)", ok2, 2);
    DBKT_OK(dbk_batch_run(db, b, DBK_BATCH_ATOMIC, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM big"), 2);
    dbk_batch_free(b);
    dbk_conn_close(c);
}

static void batch_huge_parameters_refused_before_copy(void **state)
{
    (void)state;
    dbkt_each_engine("batch_huge", huge_on);
}

static void batch_misuse_is_reported(void **state)
{
    (void)state;
    dbk_error err;
    dbk_batch *b = NULL;
    DBKT_RC(DBK_EMISUSE, dbk_batch_new(NULL, &err));
    DBKT_OK(dbk_batch_new(&b, &err), &err);
    DBKT_RC(DBK_EMISUSE, dbk_batch_add(b, NULL, NULL, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_batch_add(b, "SELECT $1", NULL, 1, &err));
    DBKT_RC(DBK_EMISUSE, dbk_batch_add(NULL, "SELECT 1", NULL, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_batch_run(NULL, b, DBK_BATCH_INDEPENDENT, &err));
    assert_int_equal(dbk_batch_count(b), 0);
    assert_int_equal(dbk_batch_count(NULL), 0);
    dbk_batch_free(b);
    dbk_batch_free(NULL);
    dbk_batch_clear(NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_mixed_outcomes_line_up),
        cmocka_unit_test(batch_atomic_rolls_back_everything),
        cmocka_unit_test(batch_runs_inside_transactions),
        cmocka_unit_test(batch_observer_sees_each_statement),
        cmocka_unit_test(batch_user_and_orders_in_one_round_trip),
        cmocka_unit_test(batch_user_and_orders_on_sqlite),
        cmocka_unit_test(batch_repeated_sql_and_wide_rows),
        cmocka_unit_test(batch_backend_killed_mid_batch),
        cmocka_unit_test(batch_server_killed_mid_batch),
        cmocka_unit_test(batch_parallel_more_tasks_than_connections),
        cmocka_unit_test(batch_deprecated_parallel_names_still_work),
        cmocka_unit_test(batch_misuse_is_reported),
        cmocka_unit_test(batch_huge_parameters_refused_before_copy),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
