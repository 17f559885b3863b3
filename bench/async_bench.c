/*
 * async_bench - primary-key lookups from ONE event-loop thread through
 * dbk_async, against the same lookups from N blocking threads on the same
 * pool (the baseline: what a thread-per-request service does).
 *
 *   async_bench [--seconds S] [--rounds R] [--pool P] [sqlite]
 *
 * PostgreSQL from DATABASE_URL / DBKIT_TEST_PG_URL (or a temporary SQLite
 * file with `sqlite`). For each concurrency C (8, 64) the async row keeps C
 * lookups in flight from one thread (submit, poll the descriptor, process,
 * submit again), the blocking row runs C threads each doing
 * dbk_db_query_row in a loop. Both use a pool of P connections (default 4)
 * and the async handle's workers default to P. Rounds alternate
 * blocking/async and the best of R is printed, with the ratio async /
 * blocking. Never asserts on time.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dbkit/async.h>

#include "benchutil.h"

static const int64_t nrows = 10000; /* rows in the table (setup) */
static const char *lookup = "SELECT id, name FROM async_bench WHERE id = $1";

static dbk_pool *open_pool(const char *url, int size)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    if (dbk_config_from_url(url, &cfg, &err) != DBK_OK)
        die("config", err.message);
    dbk_pool_opts o = {
        .version = DBK_POOL_OPTS_VERSION, .max_size = size, .acquire_timeout_ms = 30000};
    dbk_pool *pool = NULL;
    if (dbk_pool_open(cfg, &o, &pool, &err) != DBK_OK)
        die("pool", err.message);
    dbk_config_free(cfg);
    return pool;
}

static void setup(dbk_db *db, bool pg)
{
    dbk_error err;
    const char *ddl = pg ? "DROP TABLE IF EXISTS async_bench; CREATE TABLE async_bench (id "
                           "bigint PRIMARY KEY, name text NOT NULL); INSERT INTO async_bench "
                           "SELECT g, 'user ' || g FROM generate_series(1, 10000) g"
                         : "DROP TABLE IF EXISTS async_bench; CREATE TABLE async_bench (id "
                           "INTEGER PRIMARY KEY, name TEXT NOT NULL); WITH RECURSIVE g(x) AS "
                           "(SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 10000) INSERT INTO "
                           "async_bench SELECT x, 'user ' || x FROM g";
    if (dbk_db_exec_script(db, ddl, &err) != DBK_OK)
        die("setup", err.message);
}

/* ---- blocking threads ---- */

typedef struct blk {
    dbk_db *db;
    double end;
    atomic_long ops;
    atomic_int failed;
} blk;

static void *blk_main(void *arg)
{
    blk *b = arg;
    uint64_t x = (uint64_t)(uintptr_t)&x;
    long n = 0;
    dbk_error err;
    while (now_s() < b->end) {
        for (int i = 0; i < 64; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            dbk_value id = dbk_int64((int64_t)((x >> 33) % (uint64_t)nrows) + 1);
            dbk_result *r = NULL;
            if (dbk_db_query_row(b->db, lookup, &id, 1, &r, &err) != DBK_OK)
                atomic_store(&b->failed, 1);
            dbk_result_free(r);
            n++;
        }
    }
    atomic_fetch_add(&b->ops, n);
    return NULL;
}

static double blocking_run(dbk_db *db, int threads, double seconds)
{
    blk b = {.db = db, .end = now_s() + seconds};
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    if (!t)
        die("blocking", "out of memory");
    double start = now_s();
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, blk_main, &b);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    double took = now_s() - start;
    free(t);
    if (atomic_load(&b.failed))
        die("blocking", "a lookup failed");
    return (double)atomic_load(&b.ops) / took;
}

/* ---- one loop thread ---- */

typedef struct loop {
    dbk_async *a;
    uint64_t x;
    long done;
    int inflight;
    bool failed;
} loop;

static void submit_one(loop *l);

static void on_row(void *ctx, dbk_async_done *d)
{
    loop *l = ctx;
    l->done++;
    l->inflight--;
    if (d->rc != DBK_OK || dbk_result_nrows(d->result) != 1)
        l->failed = true;
}

static void submit_one(loop *l)
{
    l->x = l->x * 6364136223846793005ULL + 1442695040888963407ULL;
    dbk_value id = dbk_int64((int64_t)((l->x >> 33) % (uint64_t)nrows) + 1);
    dbk_error err;
    if (dbk_async_query(l->a, lookup, &id, 1, 0, on_row, l, NULL, &err) != DBK_OK)
        die("async submit", err.message);
    l->inflight++;
}

static double async_run(dbk_db *db, int depth, double seconds)
{
    dbk_error err;
    loop l = {.x = 88172645463325252ULL};
    dbk_async_opts o = {.version = DBK_ASYNC_OPTS_VERSION, .max_pending = (size_t)depth};
    if (dbk_async_open(db, &o, &l.a, &err) != DBK_OK)
        die("async open", err.message);
    double start = now_s(), end = start + seconds;
    while (l.inflight < depth)
        submit_one(&l);
    while (now_s() < end) {
        struct pollfd p = {dbk_async_fd(l.a), POLLIN, 0};
        poll(&p, 1, 100);
        dbk_async_process(l.a, 0);
        while (l.inflight < depth)
            submit_one(&l);
    }
    double took = now_s() - start;
    long done = l.done;
    /* Drain what is still in flight (not counted), bounded by the pool's
     * deadlines, then close with nothing queued. */
    while (l.inflight > 0) {
        struct pollfd p = {dbk_async_fd(l.a), POLLIN, 0};
        poll(&p, 1, 100);
        dbk_async_process(l.a, 0);
    }
    dbk_async_close(l.a);
    if (l.failed)
        die("async", "a lookup failed");
    return (double)done / took;
}

int main(int argc, char **argv)
{
    bench_prog = "async_bench";
    double seconds = 2;
    int rounds = 3, pool_size = 4;
    bool sqlite = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--pool") == 0 && i + 1 < argc)
            pool_size = atoi(argv[++i]);
        else if (strcmp(argv[i], "sqlite") == 0)
            sqlite = true;
        else {
            fprintf(stderr, "usage: async_bench [--seconds S] [--rounds R] [--pool P] [sqlite]\n");
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 600 || rounds < 1 || rounds > 100 || pool_size < 1 ||
        pool_size > 256) {
        fprintf(stderr, "async_bench: --seconds 0..600, --rounds 1..100, --pool 1..256\n");
        return 2;
    }
    char sqlite_url[512], dir[] = "/tmp/async_bench.XXXXXX";
    const char *url;
    if (sqlite) {
        if (!mkdtemp(dir))
            die("mkdtemp", "failed");
        snprintf(sqlite_url, sizeof sqlite_url, "sqlite:%s/bench.db", dir);
        url = sqlite_url;
    } else if (!(url = bench_pg_url())) {
        return 0;
    }
    dbk_pool *pool = open_pool(url, pool_size);
    dbk_db *db = dbk_pool_db(pool);
    setup(db, !sqlite);
    printf("async_bench: PK lookups on %s, pool of %d, %.1f s per run, best of %d alternating "
           "rounds\n",
           sqlite ? "SQLite" : "PostgreSQL", pool_size, seconds, rounds);
    printf("%-12s %16s %16s %8s\n", "concurrency", "blocking q/s", "async 1-loop q/s", "ratio");
    const int conc[] = {8, 64};
    for (size_t k = 0; k < sizeof conc / sizeof conc[0]; k++) {
        double best_b = 0, best_a = 0;
        for (int r = 0; r < rounds; r++) {
            double b = blocking_run(db, conc[k], seconds);
            double a = async_run(db, conc[k], seconds);
            if (b > best_b)
                best_b = b;
            if (a > best_a)
                best_a = a;
        }
        printf("%-12d %16.0f %16.0f %7.2fx\n", conc[k], best_b, best_a, best_a / best_b);
    }
    dbk_db_exec_script(db, "DROP TABLE async_bench", NULL);
    dbk_pool_close(pool, 1000);
    if (sqlite) {
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            char f[600];
            snprintf(f, sizeof f, "%s/bench.db%s", dir, suffix[i]);
            unlink(f);
        }
        rmdir(dir);
    }
    return 0;
}
