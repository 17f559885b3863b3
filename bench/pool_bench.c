/*
 * The connection pool's own costs, each next to its baseline in the same run:
 *
 *   micro    acquire + release of an idle connection, one thread (target
 *            < 100 ns per pair), next to a bare mutex lock/unlock pair; then
 *            8 threads contending on a pool of 8 (lock contention only) and
 *            on a pool of 2 (every loan a hand-off), ns per acquire+release.
 *   sqlite   8 writer + 8 reader threads on one SQLite file through the pool,
 *            with the pool's write gate and without it (busy_timeout + retry
 *            only): writes/s, reads/s and busy errors reaching the caller.
 *   inspect  the session-change detector the pool runs on every statement
 *            (ns per statement), next to a pooled SQLite primary-key
 *            SELECT, with and without a reset on every release.
 *   pipe     auto-pipelining: primary-key lookups from N threads (64) on a
 *            pool of 2 connections with it on and off, next to hand-written
 *            libpq pipelining of the same lookups on 2 connections.
 *   sqpk     SQLite primary-key lookups through the pool's dbk_db from N
 *            threads, next to N raw sqlite3 connections (prepare once, bind,
 *            step, reset) reading the same columns.
 *   pk       primary-key lookups through the pool's dbk_db from N threads on
 *            PostgreSQL, next to N raw libpq connections (PQexecPrepared)
 *            running the same SELECT. bench/pool_pgbench.sh runs this mode
 *            next to pgbench on the same table.
 *
 * usage: pool_bench [micro] [sqlite] [pk] [pipe] [sqpk] [inspect] [--pg-url URL] [--threads N]
 *                   [--seconds S] [--rows N] [--setup] [--held] [--sqlite-mmap MIB]
 * Without a mode: micro, sqlite and inspect, plus pk when a PostgreSQL URL is given
 * (--pg-url, else DBKIT_TEST_PG_URL). pk expects the users table of
 * pool_pgbench.sh; --setup creates it (--rows rows) first.
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dbkit/dbkit.h>

#include "pool/pool_int.h"

static const char *PK_SQL = "SELECT id, name, email, created_at FROM users WHERE id = $1";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const dbk_error *err)
{
    fprintf(stderr, "pool_bench: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

static dbk_pool *open_pool(const char *url, const dbk_pool_opts *o)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_pool *pool = NULL;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err) != DBK_OK)
        die("config", &err);
    if (dbk_pool_open(cfg, o, &pool, &err) != DBK_OK)
        die("pool open", &err);
    dbk_config_free(cfg);
    return pool;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    if (tmpdir[0])
        return;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pool_bench.XXXXXX");
    if (!mkdtemp(tmpdir))
        die("mkdtemp", NULL);
}

static void rm_db(const char *path)
{
    char p[300];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

/* ---- micro ---- */

struct micro {
    dbk_pool *pool;
    long iters;
    atomic_int go;
    atomic_long errors;
};

static void *micro_thread(void *arg)
{
    struct micro *m = arg;
    while (!atomic_load(&m->go))
        usleep(200);
    for (long i = 0; i < m->iters; i++) {
        dbk_conn *c;
        dbk_error err;
        if (dbk_pool_acquire(m->pool, &c, &err) != DBK_OK) {
            atomic_fetch_add(&m->errors, 1);
            continue;
        }
        dbk_pool_release(m->pool, c);
    }
    return NULL;
}

static double contended_ns(const char *url, int max_size, int threads, long iters)
{
    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION,
                       .max_size = max_size,
                       .min_idle = max_size,
                       .acquire_timeout_ms = 30000};
    dbk_pool *pool = open_pool(url, &o);
    /* wait for min_idle */
    for (int i = 0; i < 500; i++) {
        dbk_pool_stats st;
        dbk_pool_get_stats(pool, &st, NULL);
        if (st.idle == max_size)
            break;
        usleep(2000);
    }
    struct micro m = {.pool = pool, .iters = iters};
    pthread_t th[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, micro_thread, &m);
    double t0 = now_s();
    atomic_store(&m.go, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double t = now_s() - t0;
    if (atomic_load(&m.errors))
        fprintf(stderr, "pool_bench: %ld acquire errors\n", atomic_load(&m.errors));
    dbk_pool_close(pool, 1000);
    return t * 1e9 / ((double)iters * threads);
}

static void run_micro(void)
{
    make_tmpdir();
    char path[200], url[256];
    snprintf(path, sizeof path, "%s/micro.db", tmpdir);
    snprintf(url, sizeof url, "sqlite:%s", path);

    /* baseline: a bare mutex pair */
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    const long N = 5000000;
    volatile long sink = 0;
    double t0 = now_s();
    for (long i = 0; i < N; i++) {
        pthread_mutex_lock(&mu);
        sink++;
        pthread_mutex_unlock(&mu);
    }
    double mutex_ns = (now_s() - t0) * 1e9 / (double)N;

    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION, .max_size = 1, .min_idle = 1};
    dbk_pool *pool = open_pool(url, &o);
    dbk_conn *c;
    dbk_error err;
    if (dbk_pool_acquire(pool, &c, &err) != DBK_OK) /* opens it */
        die("acquire", &err);
    dbk_pool_release(pool, c);
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        t0 = now_s();
        for (long i = 0; i < N; i++) {
            if (dbk_pool_acquire(pool, &c, &err) != DBK_OK)
                die("acquire", &err);
            dbk_pool_release(pool, c);
        }
        double ns = (now_s() - t0) * 1e9 / (double)N;
        if (ns < best)
            best = ns;
    }
    dbk_pool_close(pool, 0);

    printf("micro: acquire+release of an idle connection (SQLite pool, best of 3 x %ld)\n", N);
    printf("  %-44s %8.1f ns/pair\n", "baseline: pthread mutex lock+unlock", mutex_ns);
    printf("  %-44s %8.1f ns/pair   (target < 100 ns: %s)\n", "dbkit uncontended, 1 thread", best,
           best < 100 ? "met" : "MISSED");
    printf("  %-44s %8.2f x the mutex pair\n", "ratio", best / mutex_ns);
    double c8 = contended_ns(url, 8, 8, 400000);
    printf("  %-44s %8.1f ns/op\n", "8 threads, pool of 8 (lock contention)", c8);
    double c2 = contended_ns(url, 2, 8, 100000);
    printf("  %-44s %8.1f ns/op\n", "8 threads, pool of 2 (hand-offs)", c2);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("  (%ld CPUs online)\n", cpus);
    rm_db(path);
}

/* ---- sqlite writers + readers ---- */

struct mix {
    dbk_pool *pool;
    int writer;
    int rmw; /* writers run BEGIN; SELECT; UPDATE; COMMIT on a borrowed connection */
    double end;
    atomic_long ops, busy, other;
    atomic_long max_us; /* slowest successful operation */
    char first[700];
    pthread_mutex_t mu;
};

static void *mix_thread(void *arg)
{
    struct mix *m = arg;
    dbk_db *db = dbk_pool_db(m->pool);
    for (long i = 0; i < 10000000 && now_s() < m->end; i++) {
        dbk_error err;
        dbk_rc rc;
        double t_op = now_s();
        if (m->writer && m->rmw) {
            dbk_conn *c = NULL;
            rc = dbk_pool_acquire(m->pool, &c, &err);
            if (rc == DBK_OK) {
                dbk_db *cdb = dbk_conn_db(c);
                int64_t n = 0;
                rc = dbk_db_exec(cdb, "BEGIN", NULL, 0, NULL, &err);
                if (rc == DBK_OK)
                    rc = dbk_db_query_int64(cdb, "SELECT n FROM total", NULL, 0, &n, &err);
                if (rc == DBK_OK) {
                    dbk_value v = dbk_int64(n + 1);
                    rc = dbk_db_exec(cdb, "UPDATE total SET n = $1", &v, 1, NULL, &err);
                }
                if (rc == DBK_OK)
                    rc = dbk_db_exec(cdb, "COMMIT", NULL, 0, NULL, &err);
                dbk_pool_release(m->pool, c); /* rolls back what failed */
            }
        } else if (m->writer) {
            dbk_value v = dbk_int64(i);
            rc = dbk_db_exec(db, "INSERT INTO kv (v) VALUES ($1)", &v, 1, NULL, &err);
        } else {
            dbk_value v = dbk_int64(i % 1000);
            int64_t n;
            rc = dbk_db_query_int64(db, "SELECT count(*) FROM kv WHERE v = $1", &v, 1, &n, &err);
        }
        if (rc == DBK_OK) {
            atomic_fetch_add(&m->ops, 1);
            long us = (long)((now_s() - t_op) * 1e6);
            long cur = atomic_load(&m->max_us);
            while (us > cur && !atomic_compare_exchange_weak(&m->max_us, &cur, us))
                ;
        } else {
            atomic_fetch_add(rc == DBK_EBUSY ? &m->busy : &m->other, 1);
            pthread_mutex_lock(&m->mu);
            if (!m->first[0])
                snprintf(m->first, sizeof m->first, "%s: %s", dbk_rc_name(rc), err.message);
            pthread_mutex_unlock(&m->mu);
        }
    }
    return NULL;
}

static void sqlite_mix(bool gate, double seconds, const char *busy_ms, int readers, int rmw)
{
    make_tmpdir();
    char path[200], url[300];
    snprintf(path, sizeof path, "%s/mix_%d_%s.db", tmpdir, gate, busy_ms);
    rm_db(path);
    snprintf(url, sizeof url, "sqlite:%s?busy_timeout=%s", path, busy_ms);
    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION, .max_size = 16};
    dbk_pool *pool = open_pool(url, &o);
    dbk__pool_set_sqlite_gate(pool, gate);
    dbk_error err;
    if (dbk_db_exec(dbk_pool_db(pool), "CREATE TABLE kv (id INTEGER PRIMARY KEY, v INTEGER)",
                    NULL, 0, NULL, &err) ||
        dbk_db_exec(dbk_pool_db(pool), "CREATE INDEX kv_v ON kv (v)", NULL, 0, NULL, &err))
        die("create", &err);
    if (dbk_db_exec_script(dbk_pool_db(pool), "CREATE TABLE total (n INTEGER); "
                                              "INSERT INTO total VALUES (0);",
                           &err))
        die("create", &err);
    struct mix w = {.pool = pool, .writer = 1, .rmw = rmw}, r = {.pool = pool, .writer = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_mutex_init(&r.mu, NULL);
    w.end = r.end = now_s() + seconds;
    pthread_t th[16];
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, mix_thread, &w);
    for (int i = 0; i < readers; i++)
        pthread_create(&th[8 + i], NULL, mix_thread, &r);
    for (int i = 0; i < 8 + readers; i++)
        pthread_join(th[i], NULL);
    int64_t total = 0;
    if (rmw)
        dbk_db_query_int64(dbk_pool_db(pool), "SELECT n FROM total", NULL, 0, &total, &err);
    printf("  %-6s %-8s %-36s %7.0f %-8s %8.0f reads/s  slowest write %5.1f ms  busy w/r "
           "%ld/%ld, other %ld%s%s%s%s\n",
           rmw ? "rmw tx" : "insert", readers ? "+readers" : "alone",
           gate ? "in-process write gate" : "BEGIN IMMEDIATE+busy_timeout+retry",
           (double)atomic_load(&w.ops) / seconds, rmw ? "tx/s" : "writes/s",
           (double)atomic_load(&r.ops) / seconds, (double)atomic_load(&w.max_us) / 1000.0,
           atomic_load(&w.busy), atomic_load(&r.busy),
           atomic_load(&w.other) + atomic_load(&r.other), w.first[0] ? "  writer: " : "", w.first,
           r.first[0] ? "  reader: " : "", r.first);
    if (rmw && total != atomic_load(&w.ops))
        printf("  LOST UPDATES: counter %lld, committed %ld\n", (long long)total,
               atomic_load(&w.ops));
    dbk_pool_close(pool, 1000);
    pthread_mutex_destroy(&w.mu);
    pthread_mutex_destroy(&r.mu);
    rm_db(path);
}

static void run_sqlite(double seconds)
{
    printf("sqlite: 8 writer threads (+ 8 reader threads), one WAL file, pool of 16, "
           "busy_timeout 5000 ms, %.0f s each\n",
           seconds);
    for (int rmw = 0; rmw < 2; rmw++)
        for (int readers = 0; readers <= 8; readers += 8)
            for (int gate = 1; gate >= 0; gate--)
                sqlite_mix(gate, seconds, "5000", readers, rmw);
}

/* ---- pk lookups ---- */

struct pk {
    dbk_pool *pool;
    const char *url;
    int depth; /* raw pipelining: lookups per round trip */
    int64_t rows;
    double end;
    atomic_int go;
    atomic_long ops, errors;
};

static uint64_t xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static volatile size_t sink;

/* --held: each pool thread acquires one connection before the clock starts
 * and runs every lookup on it, which leaves out the pool's per-statement
 * work (acquire, release, auto-pipelining) and keeps the connection's. */
static bool held;

static void *pk_pool_thread(void *arg)
{
    struct pk *p = arg;
    uint64_t rng = 88172645463325252ULL ^ (uint64_t)(uintptr_t)&rng;
    dbk_db *db = dbk_pool_db(p->pool);
    dbk_conn *lc = NULL;
    if (held) {
        dbk_error err;
        if (dbk_pool_acquire(p->pool, &lc, &err) != DBK_OK)
            die("acquire", &err);
        db = dbk_conn_db(lc);
    }
    while (!atomic_load(&p->go))
        usleep(500); /* no spinning: the server shares these CPUs */
    long n = 0;
    while (now_s() < p->end) {
        for (int i = 0; i < 64; i++) {
            int64_t id = (int64_t)(xs(&rng) % (uint64_t)p->rows) + 1;
            dbk_value v = dbk_int64(id);
            dbk_result *r = NULL;
            dbk_error err;
            if (dbk_db_query(db, PK_SQL, &v, 1, &r, &err) != DBK_OK ||
                dbk_result_nrows(r) != 1) {
                atomic_fetch_add(&p->errors, 1);
                dbk_result_free(r);
                continue;
            }
            const char *name, *email;
            size_t l1, l2;
            int64_t rid, ts;
            dbk_result_get_int64(r, 0, 0, &rid, &err);
            dbk_result_get_text(r, 0, 1, &name, &l1, &err);
            dbk_result_get_text(r, 0, 2, &email, &l2, &err);
            dbk_result_get_timestamp(r, 0, 3, &ts, &err);
            sink += (size_t)rid + l1 + l2;
            dbk_result_free(r);
            n++;
        }
    }
    atomic_fetch_add(&p->ops, n);
    if (lc)
        dbk_pool_release(p->pool, lc);
    return NULL;
}

static void *pk_raw_thread(void *arg)
{
    struct pk *p = arg;
    uint64_t rng = 88172645463325252ULL ^ (uint64_t)(uintptr_t)&rng;
    PGconn *c = PQconnectdb(p->url);
    if (PQstatus(c) != CONNECTION_OK) {
        atomic_fetch_add(&p->errors, 1);
        PQfinish(c);
        return NULL;
    }
    PGresult *pr = PQprepare(c, "pk", PK_SQL, 1, NULL);
    PQclear(pr);
    while (!atomic_load(&p->go))
        usleep(500); /* no spinning: the server shares these CPUs */
    long n = 0;
    while (now_s() < p->end) {
        for (int i = 0; i < 64; i++) {
            char buf[24];
            snprintf(buf, sizeof buf, "%llu",
                     (unsigned long long)(xs(&rng) % (uint64_t)p->rows) + 1);
            const char *vals[1] = {buf};
            PGresult *r = PQexecPrepared(c, "pk", 1, vals, NULL, NULL, 0);
            if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
                atomic_fetch_add(&p->errors, 1);
            else
                sink += strlen(PQgetvalue(r, 0, 1)) + strlen(PQgetvalue(r, 0, 2));
            PQclear(r);
            n++;
        }
    }
    atomic_fetch_add(&p->ops, n);
    PQfinish(c);
    return NULL;
}

/* A pool of `size` connections, all of them open before it is returned. */
static dbk_pool *open_warm_pool(const char *url, int size)
{
    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION,
                       .max_size = size,
                       .min_idle = size,
                       .acquire_timeout_ms = 30000};
    dbk_pool *pool = open_pool(url, &o);
    for (int i = 0; i < 1000; i++) {
        dbk_pool_stats st;
        dbk_pool_get_stats(pool, &st, NULL);
        if (st.idle == size)
            break;
        usleep(5000);
    }
    return pool;
}

/* Runs `threads` copies of fn on p for `seconds` (they start together once
 * every thread is ready) and returns operations per second. Closes p's
 * pool, if any; reports errors under `what`. */
static double run_threads(struct pk *p, void *(*fn)(void *), int threads, double seconds,
                          const char *what, uint64_t *pipelined)
{
    pthread_t th[256];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, fn, p);
    usleep(200000); /* raw threads connect and prepare */
    p->end = now_s() + seconds;
    double t0 = now_s();
    atomic_store(&p->go, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double t = now_s() - t0;
    if (p->pool && pipelined) {
        dbk_pool_stats st;
        dbk_pool_get_stats(p->pool, &st, NULL);
        *pipelined = st.pipelined;
    }
    if (p->pool)
        dbk_pool_close(p->pool, 1000);
    if (atomic_load(&p->errors))
        fprintf(stderr, "pool_bench: %ld errors in %s\n", atomic_load(&p->errors), what);
    return (double)atomic_load(&p->ops) / t;
}

static double pk_run(const char *url, bool raw, int threads, double seconds, int64_t rows)
{
    struct pk p = {.url = url, .rows = rows};
    if (!raw)
        p.pool = open_warm_pool(url, threads);
    return run_threads(&p, raw ? pk_raw_thread : pk_pool_thread, threads, seconds,
                       raw ? "pk (raw)" : "pk (pool)", NULL);
}

/* Hand-written libpq pipelining: one connection, `depth` lookups sent per
 * round trip, each followed by its own Sync (each its own implicit
 * transaction, as auto-pipelining runs them), answers read in order. */
static void *pk_rawpipe_thread(void *arg)
{
    struct pk *p = arg;
    uint64_t rng = 88172645463325252ULL ^ (uint64_t)(uintptr_t)&rng;
    PGconn *c = PQconnectdb(p->url);
    if (PQstatus(c) != CONNECTION_OK) {
        atomic_fetch_add(&p->errors, 1);
        PQfinish(c);
        return NULL;
    }
    PGresult *pr = PQprepare(c, "pk", PK_SQL, 1, NULL);
    PQclear(pr);
    while (!atomic_load(&p->go))
        usleep(500);
    long n = 0;
    PQenterPipelineMode(c);
    while (now_s() < p->end) {
        for (int i = 0; i < p->depth; i++) {
            char buf[24];
            snprintf(buf, sizeof buf, "%llu",
                     (unsigned long long)(xs(&rng) % (uint64_t)p->rows) + 1);
            const char *vals[1] = {buf};
            PQsendQueryPrepared(c, "pk", 1, vals, NULL, NULL, 0);
            PQpipelineSync(c);
        }
        PQflush(c);
        for (int i = 0; i < p->depth; i++) {
            PGresult *r = PQgetResult(c);
            if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
                atomic_fetch_add(&p->errors, 1);
            else
                sink += strlen(PQgetvalue(r, 0, 1)) + strlen(PQgetvalue(r, 0, 2));
            PQclear(r);
            PQclear(PQgetResult(c)); /* NULL after the statement's results */
            PQclear(PQgetResult(c)); /* PGRES_PIPELINE_SYNC */
            n++;
        }
    }
    PQexitPipelineMode(c);
    atomic_fetch_add(&p->ops, n);
    PQfinish(c);
    return NULL;
}

/* `threads` threads of pk_pool_thread on a pool of `size` connections, with
 * auto-pipelining on or off (the auto_pipeline URL setting). */
static double pipe_pool_run(const char *url, int threads, int size, bool autopipe, double seconds,
                            int64_t rows, uint64_t *pipelined)
{
    char u[1024];
    snprintf(u, sizeof u, "%s%sauto_pipeline=%d", url, strchr(url, '?') ? "&" : "?",
             autopipe ? 1 : 0);
    struct pk p = {.url = u, .rows = rows};
    p.pool = open_warm_pool(u, size);
    return run_threads(&p, pk_pool_thread, threads, seconds, "pipe (pool)", pipelined);
}

static double pipe_raw_run(const char *url, int conns, int depth, double seconds, int64_t rows)
{
    struct pk p = {.url = url, .rows = rows, .depth = depth};
    return run_threads(&p, pk_rawpipe_thread, conns, seconds, "pipe (raw)", NULL);
}

/* pipe: PK lookups from `threads` threads on a pool of 2 connections, with
 * and without auto-pipelining, next to hand-written libpq pipelining of the
 * same lookups on 2 connections (threads / 2 per round trip). */
static void run_pipe(const char *url, int threads, double seconds, int64_t rows, bool only_on,
                     bool only_raw)
{
    const int size = 2;
    if (only_on) { /* for profiling: the auto-pipelining side alone, one run */
        uint64_t pl = 0;
        printf("pipe_on_qps %.0f\n", pipe_pool_run(url, threads, size, true, seconds, rows, &pl));
        return;
    }
    if (only_raw) { /* for profiling: the hand-written side alone, one run */
        printf("pipe_raw_qps %.0f\n",
               pipe_raw_run(url, size, threads / size > 0 ? threads / size : 1, seconds, rows));
        return;
    }
    printf("pipe: primary-key lookups, %d threads on a pool of %d, %.0f s, %lld rows "
           "(best of 3 rounds, each side first once)\n",
           threads, size, seconds, (long long)rows);
    double best_raw = 0, best_on = 0, best_off = 0;
    uint64_t piped = 0;
    for (int r = 0; r < 3; r++) {
        /* the three sides take turns at going first */
        for (int k = 0; k < 3; k++) {
            int side = (r + k) % 3;
            uint64_t pl = 0;
            if (side == 0) {
                double a =
                    pipe_raw_run(url, size, threads / size > 0 ? threads / size : 1, seconds, rows);
                best_raw = a > best_raw ? a : best_raw;
            } else if (side == 1) {
                double b = pipe_pool_run(url, threads, size, true, seconds, rows, &pl);
                if (b > best_on) {
                    best_on = b;
                    piped = pl;
                }
            } else {
                double c = pipe_pool_run(url, threads, size, false, seconds, rows, &pl);
                best_off = c > best_off ? c : best_off;
            }
        }
    }
    printf("  %-52s %9.0f q/s\n", "baseline: raw libpq pipelining, 2 conns, Sync each", best_raw);
    printf("  %-52s %9.0f q/s\n", "dbkit pool, auto-pipelining off", best_off);
    printf("  %-52s %9.0f q/s   %.2fx off, %.3f of raw pipelining (%llu rode)\n",
           "dbkit pool, auto-pipelining on", best_on, best_on / best_off, best_on / best_raw,
           (unsigned long long)piped);
}

static void pk_setup(const char *url, int64_t rows)
{
    dbk_pool *pool = open_pool(url, NULL);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "DROP TABLE IF EXISTS users; CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT "
             "NOT NULL, email TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now()); "
             "INSERT INTO users (id, name, email) SELECT g, 'user ' || g, 'user' || g || "
             "'@example.com' FROM generate_series(1, %lld) g; ANALYZE users;",
             (long long)rows);
    dbk_error err;
    if (dbk_db_exec_script(dbk_pool_db(pool), sql, &err) != DBK_OK)
        die("setup", &err);
    dbk_pool_close(pool, 1000);
}

/* ---- sqpk: SQLite primary-key lookups from N threads ---- */

/* --sqlite-mmap MIB: memory-mapped reads on both sides (the URL parameter
 * mmap_size on the pool, the PRAGMA on the raw connections) */
static int sq_mmap_mib;


static const char *SQ_PK_SQL = "SELECT id, name, email, created_at FROM users WHERE id = $1";

static void *sqpk_raw_thread(void *arg)
{
    struct pk *p = arg;
    uint64_t rng = 88172645463325252ULL ^ (uint64_t)(uintptr_t)&rng;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(p->url, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db, SQ_PK_SQL, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        atomic_fetch_add(&p->errors, 1);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    if (sq_mmap_mib > 0) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA mmap_size=%lld", (long long)sq_mmap_mib << 20);
        sqlite3_exec(db, pragma, NULL, NULL, NULL);
    }
    while (!atomic_load(&p->go))
        usleep(500);
    long n = 0;
    while (now_s() < p->end) {
        for (int i = 0; i < 64; i++) {
            sqlite3_bind_int64(st, 1, (sqlite3_int64)(xs(&rng) % (uint64_t)p->rows) + 1);
            if (sqlite3_step(st) != SQLITE_ROW) {
                atomic_fetch_add(&p->errors, 1);
            } else {
                sink += (size_t)sqlite3_column_int64(st, 0) + (size_t)sqlite3_column_bytes(st, 1) +
                        (size_t)sqlite3_column_bytes(st, 2) + (size_t)sqlite3_column_bytes(st, 3);
                (void)sqlite3_column_text(st, 1);
                (void)sqlite3_column_text(st, 2);
                (void)sqlite3_column_text(st, 3);
            }
            sqlite3_reset(st);
            n++;
        }
    }
    atomic_fetch_add(&p->ops, n);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return NULL;
}

/* The pool side reads the same columns through dbk_result (pk_pool_thread
 * reads created_at as a timestamp: text on SQLite, converted). */
static double sqpk_run(const char *path, bool raw, int threads, double seconds, int64_t rows)
{
    struct pk p = {.url = path, .rows = rows};
    char url[300];
    if (sq_mmap_mib > 0)
        snprintf(url, sizeof url, "sqlite:%s?mmap_size=%d", path, sq_mmap_mib);
    else
        snprintf(url, sizeof url, "sqlite:%s", path);
    if (!raw)
        p.pool = open_warm_pool(url, threads);
    return run_threads(&p, raw ? sqpk_raw_thread : pk_pool_thread, threads, seconds,
                       raw ? "sqpk (raw)" : "sqpk (pool)", NULL);
}

static void run_sqpk(int threads, double seconds, int64_t rows)
{
    make_tmpdir();
    char path[256];
    snprintf(path, sizeof path, "%s/sqpk.db", tmpdir);
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s", path);
    dbk_pool *pool = open_pool(url, NULL);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT "
             "NULL, created_at TEXT NOT NULL DEFAULT '2026-01-01 00:00:00'); "
             "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < %lld) "
             "INSERT INTO users (id, name, email) SELECT i, 'user ' || i, 'user' || i || "
             "'@example.com' FROM g;",
             (long long)rows);
    dbk_error err;
    if (dbk_db_exec_script(dbk_pool_db(pool), sql, &err) != DBK_OK)
        die("sqpk setup", &err);
    dbk_pool_close(pool, 1000);
    printf("sqpk: SQLite primary-key lookups, %d threads, %.0f s, %lld rows (best of 4 "
           "rounds, ABBA order)%s\n",
           threads, seconds, (long long)rows, sq_mmap_mib > 0 ? ", mmap_size on both sides" : "");
    double best_raw = 0, best_pool = 0;
    for (int r = 0; r < 4; r++) {
        bool raw_first = r % 2 == 0;
        double a = sqpk_run(path, raw_first, threads, seconds, rows);
        double b = sqpk_run(path, !raw_first, threads, seconds, rows);
        double raw = raw_first ? a : b, pooled = raw_first ? b : a;
        best_raw = raw > best_raw ? raw : best_raw;
        best_pool = pooled > best_pool ? pooled : best_pool;
    }
    printf("  %-52s %9.0f q/s\n", "baseline: raw sqlite3, 1 connection/thread", best_raw);
    printf("  %-52s %9.0f q/s   ratio %.3f\n", "dbkit pool dbk_db_query", best_pool,
           best_pool / best_raw);
    rm_db(path);
}

static void run_pk(const char *url, int threads, double seconds, int64_t rows, bool only_pool,
                   bool only_raw)
{
    /* machine-readable, for pool_pgbench.sh */
    if (only_pool) {
        printf("pool_qps %.0f\n", pk_run(url, false, threads, seconds, rows));
        return;
    }
    if (only_raw) {
        printf("raw_qps %.0f\n", pk_run(url, true, threads, seconds, rows));
        return;
    }
    printf("pk: primary-key lookups, %d threads, %.0f s, %lld rows\n", threads, seconds,
           (long long)rows);
    double best_raw = 0, best_pool = 0;
    /* ABBA...: which side runs first in a round moved the ratio by 0.3
     * on a busy machine, so the order alternates; best of 4 each. */
    for (int r = 0; r < 4; r++) {
        bool raw_first = r % 2 == 0;
        double a = pk_run(url, raw_first, threads, seconds, rows);
        double b = pk_run(url, !raw_first, threads, seconds, rows);
        double raw = raw_first ? a : b, pool = raw_first ? b : a;
        best_raw = raw > best_raw ? raw : best_raw;
        best_pool = pool > best_pool ? pool : best_pool;
    }
    printf("  %-44s %9.0f q/s\n", "baseline: raw libpq PQexecPrepared, 1 conn/thread", best_raw);
    printf("  %-44s %9.0f q/s   ratio %.3f\n", "dbkit pool dbk_db_query", best_pool,
           best_pool / best_raw);
}

/* ---- inspect ---- */

/* ns per call of the pool's session-change detector (run on every
 * statement of a lent connection), next to what the statement itself costs
 * on a pooled SQLite connection: a primary-key SELECT through the pool's
 * dbk_db, and the same with a reset on every release (the strongest
 * policy). */
static double detector_ns(const char *sql, dbk_engine engine, long iters)
{
    volatile bool flagged = false;
    double t0 = now_s();
    for (long i = 0; i < iters; i++)
        flagged ^= dbk__pool_sql_changes_session(sql, engine);
    (void)flagged;
    return (now_s() - t0) * 1e9 / (double)iters;
}

static double sqlite_pk_ns(dbk_pool *pool, long iters)
{
    dbk_db *db = dbk_pool_db(pool);
    dbk_error err;
    double t0 = now_s();
    for (long i = 0; i < iters; i++) {
        dbk_value id = dbk_int64(1 + i % 1000);
        dbk_result *r = NULL;
        if (dbk_db_query(db, "SELECT id, v FROM t WHERE id = $1", &id, 1, &r, &err) != DBK_OK)
            die("sqlite pk", &err);
        dbk_result_free(r);
    }
    return (now_s() - t0) * 1e9 / (double)iters;
}

static void run_inspect(void)
{
    static const struct {
        const char *sql;
        dbk_engine engine;
    } stmts[] = {
        {"SELECT id, name, email, created_at FROM users WHERE id = $1", DBK_ENGINE_POSTGRES},
        {"INSERT INTO orders (user_id, total, note) VALUES ($1, $2, $3) RETURNING id",
         DBK_ENGINE_POSTGRES},
        {"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout = 5000; "
         "SET LOCAL idle_in_transaction_session_timeout = 5000",
         DBK_ENGINE_POSTGRES},
        {"SELECT id, v FROM t WHERE id = $1", DBK_ENGINE_SQLITE},
    };
    const long iters = 1000000;
    printf("inspect: session-change detector, ns per statement\n");
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        printf("  %-9s %6.1f ns  %.60s\n",
               stmts[i].engine == DBK_ENGINE_SQLITE ? "sqlite" : "postgres",
               detector_ns(stmts[i].sql, stmts[i].engine, iters), stmts[i].sql);

    make_tmpdir();
    char path[128], url[160];
    snprintf(path, sizeof path, "%s/inspect.db", tmpdir);
    rm_db(path);
    snprintf(url, sizeof url, "sqlite:%s", path);
    dbk_pool_opts o = {.version = DBK_POOL_OPTS_VERSION, .max_size = 1};
    dbk_pool *pool = open_pool(url, &o);
    dbk_error err;
    if (dbk_db_exec_script(dbk_pool_db(pool),
                           "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); "
                           "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                           "WHERE i < 1000) INSERT INTO t SELECT i, i FROM n",
                           &err) != DBK_OK)
        die("sqlite setup", &err);
    const long q = 200000;
    sqlite_pk_ns(pool, q / 10); /* warm the statement cache */
    double det = detector_ns(stmts[3].sql, DBK_ENGINE_SQLITE, iters);
    double pk = sqlite_pk_ns(pool, q);
    printf("  sqlite PK SELECT through the pool's dbk_db: %.0f ns per query; the detector is "
           "%.1f %% of it\n",
           pk, 100.0 * det / pk);
    if (dbk_pool_set_reset_policy(pool, DBK_POOL_RESET_ALWAYS, &err) != DBK_OK)
        die("policy", &err);
    double always = sqlite_pk_ns(pool, q / 10);
    printf("  same with DBK_POOL_RESET_ALWAYS (reset on every release): %.0f ns per query "
           "(%.1fx)\n",
           always, always / pk);
    dbk_pool_close(pool, 1000);
    rm_db(path);
}

int main(int argc, char **argv)
{
    bool micro = false, sqlite = false, pk = false, setup = false, pool_only = false,
         pipe = false, sqpk = false;
    bool inspect = false;
    bool raw_only = false;
    const char *url = NULL;
    int threads = 8;
    double seconds = 5;
    int64_t rows = 100000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "micro"))
            micro = true;
        else if (!strcmp(argv[i], "sqlite"))
            sqlite = true;
        else if (!strcmp(argv[i], "sqpk"))
            sqpk = true;
        else if (!strcmp(argv[i], "pipe"))
            pipe = true;
        else if (!strcmp(argv[i], "pk"))
            pk = true;
        else if (!strcmp(argv[i], "inspect"))
            inspect = true;
        else if (!strcmp(argv[i], "--pg-url") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = strtoll(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--setup"))
            setup = true;
        else if (!strcmp(argv[i], "--pool-only"))
            pool_only = true;
        else if (!strcmp(argv[i], "--raw-only"))
            raw_only = true;
        else if (!strcmp(argv[i], "--held"))
            held = true;
        else if (!strcmp(argv[i], "--sqlite-mmap") && i + 1 < argc)
            sq_mmap_mib = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [micro] [sqlite] [pk] [pipe] [sqpk] [inspect] [--pg-url URL] [--threads N] "
                            "[--seconds S] [--rows N] [--setup] [--pool-only | --raw-only] [--held] "
                            "[--sqlite-mmap MIB]\n",
                    argv[0]);
            return 2;
        }
    }
    if (threads < 1 || threads > 64 || seconds <= 0 || seconds > 120 || rows < 1) {
        fprintf(stderr, "pool_bench: 1 <= threads <= 64, 0 < seconds <= 120, rows >= 1\n");
        return 2;
    }
    if (!url)
        url = getenv("DBKIT_TEST_PG_URL");
    if (!micro && !sqlite && !pk && !inspect && !pipe && !sqpk) {
        micro = sqlite = inspect = true;
        pk = url != NULL;
    }
    if (micro)
        run_micro();
    if (inspect)
        run_inspect();
    if (sqlite)
        run_sqlite(seconds < 3 ? seconds : 3);
    if (pk) {
        if (!url) {
            fprintf(stderr, "pool_bench: pk needs --pg-url or DBKIT_TEST_PG_URL\n");
            return 2;
        }
        if (setup)
            pk_setup(url, rows);
        run_pk(url, threads, seconds, rows, pool_only, raw_only);
    }
    if (sqpk)
        run_sqpk(threads, seconds, rows);
    if (pipe) {
        if (!url) {
            fprintf(stderr, "pool_bench: pipe needs --pg-url or DBKIT_TEST_PG_URL\n");
            return 2;
        }
        if (setup && !pk)
            pk_setup(url, rows);
        run_pipe(url, threads, seconds, rows, pool_only, raw_only);
    }
    if (tmpdir[0])
        rmdir(tmpdir);
    return 0;
}
