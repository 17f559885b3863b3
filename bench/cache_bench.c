/*
 * The cache's read path, next to what it saves and what it is built on,
 * measured in the same run:
 *   1. memory cache hit through the cached repository (dbk_cached_repo_find_by_id)
 *      vs an uncached dbk_repo_find_by_id on SQLite and on PostgreSQL;
 *   2. Redis hit through the cached repository vs a raw hiredis GET loop on
 *      a value of the same size (the target: cached >= 0.9x raw);
 *   3. the same hit through Sentinel (redis-sentinel://, from
 *      DBKIT_BENCH_SENTINEL_URL) and through a Cluster (redis-cluster://,
 *      from DBKIT_BENCH_CLUSTER_URL) vs the hit on the plain redis:// of 2
 *      (the target: >= 0.95x); each row only when its variable is set.
 *      The Cluster hit is also set against raw hiredis GETs spread over the
 *      cluster's masters the same way (rawcl_setup), which tells the cost
 *      of the client from that of waking several servers per loop.
 *   4. concurrency: dbk_cache_get hits on the plain redis:// from 1, 8 and
 *      64 threads sharing one cache (pool_size 4), auto-pipelining on and
 *      off side by side, next to hand-written hiredis threads with one
 *      connection each (the same GETs, no pipelining); rounds alternate
 *      the three and the best of each is printed, in thousands of GETs/s.
 * Every read in 1-3 maps the whole row into the struct (strings into an
 * arena).
 *
 *   5. `ha` mode: a hit on plain redis://, on redis-sentinel:// and on
 *      redis-cluster:// (DBKIT_TEST_REDIS_URL, DBKIT_TEST_REDIS_SENTINEL_URL,
 *      DBKIT_TEST_REDIS_CLUSTER_URL: scripts/testenv.sh --redis-sentinel
 *      --redis-cluster), through the cached repository and through
 *      dbk_cache_get, in hits/s with the ratio to plain (the target: >= 0.95).
 *      On a small machine the wall clock of Cluster is mostly its six server
 *      processes; `ha --hits N [--get] URL` does a fixed number of hits
 *      after a fixed set-up, for bench/cache_ha_cost.sh, which counts the
 *      client's instructions per hit under callgrind (N hits minus 0 hits).
 *
 *   6. `cold` mode: 64 ids none of which is cached (their keys deleted
 *      first), looked up through Redis by one dbk_cached_repo_find_by_ids
 *      (the misses loaded in one statement) next to the same 64 ids by
 *      dbk_cached_repo_find_by_id one at a time (one statement, one lease
 *      and one store each: what find_by_ids did for its misses before), on
 *      SQLite and on PostgreSQL, in milliseconds per 64 ids.
 *
 * usage: cache_bench [--seconds S] [--rounds R] [--concurrency]
 *        cache_bench cold [--rounds R]
 *        cache_bench ha [--seconds S] [--rounds R]
 *        cache_bench ha --hits N [--get] URL
 * (--concurrency: only the rows of 4, after the Redis set-up)
 * PostgreSQL from DBKIT_TEST_PG_URL (skipped without it), Redis from
 * DBKIT_TEST_REDIS_URL or REDIS_URL (skipped without it). Rounds alternate
 * baseline and dbkit; the best round of each is printed.
 */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dbkit/dbkit.h>

#define ROWS 1000
#define HOT 100 /* ids read in the loops: all cached */

struct user {
    int64_t id;
    const char *email;
    const char *name;
    int64_t created_at;
};
static const dbk_field user_fields[] = {
    DBK_FIELD(struct user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct user, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct user, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct user, created_at, "created_at", DBK_TYPE_TIMESTAMP, 0),
};
static const dbk_entity user_entity = DBK_ENTITY_PLAIN("bench_users", struct user, user_fields);

static double seconds = 1.0;
static int rounds = 3;
static bool conc_only; /* --concurrency: only the rows of 4 */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const dbk_error *err)
{
    fprintf(stderr, "cache_bench: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

typedef void (*read_fn)(void *ctx, int64_t id);

/* ns per read over `seconds` */
static double measure(read_fn fn, void *ctx)
{
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 256; i++)
            fn(ctx, (n + i) % HOT + 1);
        n += 256;
        t = now_s();
    } while (t - t0 < seconds);
    return (t - t0) * 1e9 / (double)n;
}

/* best of `rounds`, alternating */
static void compare(const char *label, const char *base_label, read_fn base, void *bctx,
                    read_fn mine, void *mctx)
{
    double best_b = 1e30, best_m = 1e30;
    for (int r = 0; r < rounds; r++) {
        double b = measure(base, bctx), m = measure(mine, mctx);
        if (b < best_b)
            best_b = b;
        if (m < best_m)
            best_m = m;
    }
    printf("%-44s %10.0f ns/read   %-34s %10.0f ns/read   speed ratio %.2fx\n", label, best_m,
           base_label, best_b, best_b / best_m);
}

struct rctx {
    dbk_db *db;
    dbk_cached_repo *r;
    dbk_arena *arena;
};

static void read_repo(void *ctx, int64_t id)
{
    struct rctx *c = ctx;
    struct user u;
    dbk_error err;
    if (dbk_repo_find_by_id(c->db, &user_entity, dbk_int64(id), &u, c->arena, &err) != DBK_OK)
        die("find_by_id", &err);
    dbk_arena_reset(c->arena);
}

static void read_cached(void *ctx, int64_t id)
{
    struct rctx *c = ctx;
    struct user u;
    dbk_error err;
    if (dbk_cached_repo_find_by_id(c->r, c->db, dbk_int64(id), &u, c->arena, &err) != DBK_OK)
        die("cached find_by_id", &err);
    dbk_arena_reset(c->arena);
}

struct rawctx {
    redisContext *rc;
    char keys[HOT][64];
    size_t klen[HOT];
};

static void read_raw(void *ctx, int64_t id)
{
    struct rawctx *c = ctx;
    const char *argv[2] = {"GET", c->keys[id - 1]};
    size_t lens[2] = {3, c->klen[id - 1]};
    redisReply *rep = redisCommandArgv(c->rc, 2, argv, lens);
    if (!rep || rep->type != REDIS_REPLY_STRING)
        die("raw GET", NULL);
    /* the same work the cached path does with the bytes: copy them out */
    char *copy = malloc(rep->len);
    memcpy(copy, rep->str, rep->len);
    free(copy);
    freeReplyObject(rep);
}

/* The raw floor of a Cluster hit: a hiredis GET of a value of the same
 * size on the master owning its key (found by following MOVED once while
 * storing it), so the reads spread over the masters as the cached ones
 * do. On one machine that spread alone costs: every read wakes another
 * server process. */
struct rawcl {
    redisContext *node[16];
    int port[16];
    int nnodes;
    redisContext *at[HOT];
    char keys[HOT][64];
    size_t klen[HOT];
};

static redisContext *rawcl_node(struct rawcl *c, const char *host, int port)
{
    for (int i = 0; i < c->nnodes; i++)
        if (c->port[i] == port)
            return c->node[i];
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout(host, port, tv);
    if (!rc || rc->err || c->nnodes == 16)
        die("raw cluster connect", NULL);
    c->port[c->nnodes] = port;
    return c->node[c->nnodes++] = rc;
}

static void rawcl_setup(struct rawcl *c, const char *url, const void *val, size_t n)
{
    char host[256] = "127.0.0.1";
    int port = 6379;
    memset(c, 0, sizeof *c);
    sscanf(url, "redis-cluster://%255[^:/,]:%d", host, &port);
    redisContext *seed = rawcl_node(c, host, port);
    for (int id = 1; id <= HOT; id++) {
        c->klen[id - 1] = (size_t)snprintf(c->keys[id - 1], 64, "dbkbench:rawcl:%d", id);
        const char *av[3] = {"SET", c->keys[id - 1], val};
        size_t al[3] = {3, c->klen[id - 1], n};
        redisContext *to = seed;
        redisReply *rep = redisCommandArgv(to, 3, av, al);
        char mh[256];
        int mp, slot;
        if (rep && rep->type == REDIS_REPLY_ERROR &&
            sscanf(rep->str, "MOVED %d %255[^:]:%d", &slot, mh, &mp) == 3) {
            freeReplyObject(rep);
            to = rawcl_node(c, mh, mp);
            rep = redisCommandArgv(to, 3, av, al);
        }
        if (!rep || rep->type == REDIS_REPLY_ERROR)
            die("raw cluster SET", NULL);
        freeReplyObject(rep);
        c->at[id - 1] = to;
    }
}

static void read_rawcl(void *ctx, int64_t id)
{
    struct rawcl *c = ctx;
    const char *argv[2] = {"GET", c->keys[id - 1]};
    size_t lens[2] = {3, c->klen[id - 1]};
    redisReply *rep = redisCommandArgv(c->at[id - 1], 2, argv, lens);
    if (!rep || rep->type != REDIS_REPLY_STRING)
        die("raw cluster GET", NULL);
    char *copy = malloc(rep->len);
    memcpy(copy, rep->str, rep->len);
    free(copy);
    freeReplyObject(rep);
}

/* ---- 4: concurrent hits ------------------------------------------------- */

#define MAX_THREADS 64

struct conc {
    dbk_cache *cache;     /* NULL: raw hiredis, one connection per thread */
    const char *host;
    int port;
    int nthreads;
    atomic_bool go, stop;
    atomic_long ops;
    atomic_int ready, failed;
};

static void *conc_main(void *arg)
{
    struct conc *c = arg;
    redisContext *rc = NULL;
    if (!c->cache) {
        struct timeval tv = {2, 0};
        rc = redisConnectWithTimeout(c->host, c->port, tv);
        if (!rc || rc->err)
            die("raw connect", NULL);
    }
    long n = 0;
    char key[64];
    atomic_fetch_add(&c->ready, 1);
    while (!atomic_load(&c->go))
        ;
    while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
        int id = (int)(n % HOT) + 1;
        if (c->cache) {
            int kl = snprintf(key, sizeof key, "conc:%d", id);
            void *v;
            size_t len;
            dbk_error err;
            if (dbk_cache_get(c->cache, key, (size_t)kl, &v, &len, &err) != DBK_OK) {
                atomic_fetch_add(&c->failed, 1);
            } else {
                dbk_free(v);
            }
        } else {
            int kl = snprintf(key, sizeof key, "dbkbench:v:conc:%d", id); /* the cache's own key */
            const char *av[2] = {"GET", key};
            size_t al[2] = {3, (size_t)kl};
            redisReply *rep = redisCommandArgv(rc, 2, av, al);
            if (!rep || rep->type != REDIS_REPLY_STRING)
                die("raw GET", NULL);
            char *copy = malloc(rep->len);
            memcpy(copy, rep->str, rep->len);
            free(copy);
            freeReplyObject(rep);
        }
        n++;
    }
    atomic_fetch_add(&c->ops, n);
    redisFree(rc);
    return NULL;
}

/* GETs per second from n threads over `seconds` */
static double conc_rate(dbk_cache *cache, const char *host, int port, int n)
{
    struct conc c;
    memset(&c, 0, sizeof c);
    c.cache = cache;
    c.host = host;
    c.port = port;
    c.nthreads = n;
    pthread_t th[MAX_THREADS];
    for (int i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, conc_main, &c) != 0)
            die("pthread_create", NULL);
    while (atomic_load(&c.ready) < n)
        usleep(1000);
    double t0 = now_s();
    atomic_store(&c.go, true);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&c.stop, true);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    double t = now_s() - t0;
    if (atomic_load(&c.failed))
        fprintf(stderr, "cache_bench: %d failed GETs (timeouts count as misses)\n",
                atomic_load(&c.failed));
    return (double)atomic_load(&c.ops) / t;
}

static dbk_cache *open_cache_pipe(const char *url, bool on)
{
    char u[512];
    snprintf(u, sizeof u, "%s%sauto_pipeline=%d", url, strchr(url, '?') ? "&" : "?", on ? 1 : 0);
    dbk_cache_opts o = DBK_CACHE_OPTS_INIT;
    o.url = u;
    o.key_prefix = "dbkbench:";
    o.command_timeout_ms = 1000;
    dbk_cache *c;
    dbk_error err;
    if (dbk_cache_open(&o, &c, &err) != DBK_OK)
        die("cache", &err);
    return c;
}

static void concurrency_rows(const char *url, const char *host, int port, const void *val,
                             size_t vlen)
{
    dbk_cache *on = open_cache_pipe(url, true), *off = open_cache_pipe(url, false);
    dbk_error err;
    for (int id = 1; id <= HOT; id++) {
        char key[64];
        int kl = snprintf(key, sizeof key, "conc:%d", id);
        if (dbk_cache_set(on, key, (size_t)kl, val, vlen, 600000, &err) != DBK_OK)
            die("conc set", &err);
    }
    printf("concurrent redis GET hits (dbk_cache_get, pool_size 4; k GETs/s, best of %d)\n",
           rounds);
    printf("%8s %16s %16s %22s %10s %10s\n", "threads", "auto-pipeline on", "off",
           "raw hiredis threads", "on/off", "on/raw");
    static const int nt[] = {1, 8, 64};
    for (int k = 0; k < 3; k++) {
        double b_on = 0, b_off = 0, b_raw = 0;
        for (int r = 0; r < rounds; r++) {
            double x = conc_rate(on, host, port, nt[k]);
            double y = conc_rate(off, host, port, nt[k]);
            double z = conc_rate(NULL, host, port, nt[k]);
            b_on = x > b_on ? x : b_on;
            b_off = y > b_off ? y : b_off;
            b_raw = z > b_raw ? z : b_raw;
        }
        printf("%8d %16.1f %16.1f %22.1f %9.2fx %9.2fx\n", nt[k], b_on / 1e3, b_off / 1e3,
               b_raw / 1e3, b_on / b_off, b_on / b_raw);
    }
    dbk_cache_close(on);
    dbk_cache_close(off);
}

static dbk_conn *setup_db(const char *url, dbk_engine *engine)
{
    dbk_error err;
    dbk_config *cfg;
    if (dbk_config_from_url(url, &cfg, &err) != DBK_OK)
        die("config", &err);
    dbk_conn *c;
    if (dbk_conn_open(cfg, &c, &err) != DBK_OK)
        die("connect", &err);
    dbk_config_free(cfg);
    *engine = dbk_db_engine(dbk_conn_db(c));
    dbk_db *db = dbk_conn_db(c);
    const char *ddl = *engine == DBK_ENGINE_POSTGRES
                          ? "DROP TABLE IF EXISTS bench_users; CREATE TABLE bench_users (id BIGSERIAL "
                            "PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL, created_at "
                            "TIMESTAMPTZ NOT NULL)"
                          : "DROP TABLE IF EXISTS bench_users; CREATE TABLE bench_users (id INTEGER "
                            "PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL, created_at "
                            "TEXT NOT NULL)";
    if (dbk_db_exec_script(db, ddl, &err) != DBK_OK)
        die("schema", &err);
    struct user *rows = calloc(ROWS, sizeof *rows);
    char (*emails)[48] = calloc(ROWS, 48);
    for (int i = 0; i < ROWS; i++) {
        snprintf(emails[i], 48, "user%d@example.com", i + 1);
        rows[i].email = emails[i];
        rows[i].name = "A. Typical Name";
        rows[i].created_at = 1700000000000000LL + i;
    }
    if (dbk_repo_create_many(db, &user_entity, rows, ROWS, NULL, NULL, &err) != DBK_OK)
        die("seed", &err);
    free(rows);
    free(emails);
    return c;
}

static dbk_cache *open_cache(const char *url)
{
    dbk_cache_opts o = DBK_CACHE_OPTS_INIT;
    o.url = url;
    o.key_prefix = "dbkbench:";
    o.command_timeout_ms = 1000;
    dbk_cache *c;
    dbk_error err;
    if (dbk_cache_open(&o, &c, &err) != DBK_OK)
        die("cache", &err);
    return c;
}

/* ---- 5: ha mode: plain vs Sentinel vs Cluster hits ---------------------- */

struct hactx {
    dbk_cache *cache;
    dbk_cached_repo *repo;
    struct rctx rc;
    char keys[HOT][64];
    size_t klen[HOT];
};

static void read_get(void *ctx, int64_t id)
{
    struct hactx *h = ctx;
    void *v;
    size_t n;
    dbk_error err;
    if (dbk_cache_get(h->cache, h->keys[id - 1], h->klen[id - 1], &v, &n, &err) != DBK_OK)
        die("dbk_cache_get (expected a hit)", &err);
    dbk_free(v);
}

static void read_ha_repo(void *ctx, int64_t id)
{
    read_cached(&((struct hactx *)ctx)->rc, id);
}

/* Opens the cache on `url`, loads the HOT rows into it through the cached
 * repository (three passes: a fresh node epoch may refuse the first store)
 * and checks that every key is then a hit. A fixed amount of work, so
 * `--hits 0` measures all of it. */
static void ha_open(struct hactx *h, const char *url, dbk_db *db)
{
    dbk_error err;
    memset(h, 0, sizeof *h);
    h->cache = open_cache(url);
    if (dbk_cached_repo_new(h->cache, &user_entity, NULL, &h->repo, &err) != DBK_OK)
        die("cached repo", &err);
    h->rc = (struct rctx){db, h->repo, dbk_arena_new(0)};
    for (int pass = 0; pass < 3; pass++)
        for (int id = 1; id <= HOT; id++)
            read_cached(&h->rc, id);
    for (int id = 1; id <= HOT; id++) {
        h->klen[id - 1] = (size_t)snprintf(h->keys[id - 1], 64, "bench_users:id:%d", id);
        read_get(h, id);
    }
}

static void ha_close(struct hactx *h)
{
    dbk_arena_free(h->rc.arena);
    dbk_cached_repo_free(h->repo);
    dbk_cache_close(h->cache);
}

/* Kept out of line: the hit loop callgrind's per-function output shows. */
__attribute__((noinline)) static void ha_hits(read_fn fn, struct hactx *h, long n)
{
    for (long i = 0; i < n; i++)
        fn(h, i % HOT + 1);
}

static int ha_main(int argc, char **argv)
{
    long hits = -1;
    bool get = false;
    const char *one = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--hits") == 0 && i + 1 < argc)
            hits = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--get") == 0)
            get = true;
        else if (argv[i][0] != '-')
            one = argv[i];
        else {
            fprintf(stderr, "cache_bench ha: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    char sqlite_url[128], sqlite_path[128];
    snprintf(sqlite_url, sizeof sqlite_url, "sqlite:/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    snprintf(sqlite_path, sizeof sqlite_path, "/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    dbk_engine eng;

    if (hits >= 0) { /* one URL, a fixed number of hits, nothing printed but a count */
        if (!one) {
            fprintf(stderr, "cache_bench ha --hits N [--get] URL: no URL\n");
            return 2;
        }
        dbk_conn *sq = setup_db(sqlite_url, &eng);
        struct hactx *h = malloc(sizeof *h);
        if (!h)
            die("out of memory", NULL);
        ha_open(h, one, dbk_conn_db(sq));
        ha_hits(get ? read_get : read_ha_repo, h, hits);
        printf("%ld %s hits\n", hits, get ? "dbk_cache_get" : "cached repo");
        ha_close(h);
        free(h);
        dbk_conn_close(sq);
        unlink(sqlite_path);
        return 0;
    }

    static const char *const names[3] = {"redis:// (plain)", "redis-sentinel://",
                                         "redis-cluster://"};
    const char *urls[3] = {getenv("DBKIT_TEST_REDIS_URL"), getenv("DBKIT_TEST_REDIS_SENTINEL_URL"),
                           getenv("DBKIT_TEST_REDIS_CLUSTER_URL")};
    if (!urls[0] || !*urls[0]) {
        fprintf(stderr, "cache_bench ha: DBKIT_TEST_REDIS_URL not set (scripts/testenv.sh "
                        "--redis-sentinel --redis-cluster -- ...)\n");
        return 2;
    }
    dbk_conn *sq = setup_db(sqlite_url, &eng);
    struct hactx *h = calloc(3, sizeof *h);
    if (!h)
        die("out of memory", NULL);
    bool have[3];
    for (int k = 0; k < 3; k++) {
        have[k] = urls[k] && *urls[k];
        if (have[k])
            ha_open(&h[k], urls[k], dbk_conn_db(sq));
        else
            printf("(%s skipped: not set)\n", names[k]);
    }
    /* rounds alternate the topologies; best of each */
    double best[2][3];
    for (int m = 0; m < 2; m++)
        for (int k = 0; k < 3; k++)
            best[m][k] = 1e30;
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < 2; m++)
            for (int k = 0; k < 3; k++) {
                if (!have[k])
                    continue;
                double ns = measure(m ? read_get : read_ha_repo, &h[k]);
                if (ns < best[m][k])
                    best[m][k] = ns;
            }
    printf("cache_bench ha: redis hits from one thread, %d hot keys, best of %d rounds of %.1f s "
           "(target: >= 0.95x plain)\n",
           HOT, rounds, seconds);
    printf("%-20s %16s %14s %16s %14s\n", "", "cached repo hit/s", "ratio", "cache_get hit/s",
           "ratio");
    for (int k = 0; k < 3; k++) {
        if (!have[k])
            continue;
        printf("%-20s %16.0f %13.2fx %16.0f %13.2fx\n", names[k], 1e9 / best[0][k],
               best[0][0] / best[0][k], 1e9 / best[1][k], best[1][0] / best[1][k]);
    }
    for (int k = 0; k < 3; k++)
        if (have[k])
            ha_close(&h[k]);
    free(h);
    dbk_conn_close(sq);
    unlink(sqlite_path);
    return 0;
}

/* ---- 6: cold mode: the misses of many ids at once ------------------------ */

#define COLD_IDS 64
#define COLD_BATCHES 20

static void cold_forget(dbk_cache *c, int64_t first)
{
    for (int64_t id = first; id < first + COLD_IDS; id++) {
        char key[64];
        int kl = snprintf(key, sizeof key, "bench_users:id:%lld", (long long)id);
        dbk_cache_delete(c, key, (size_t)kl, NULL);
    }
}

/* Milliseconds per COLD_IDS cold ids, batch or one at a time (best of rounds). */
static void cold_rows(const char *label, dbk_db *db, dbk_cache *c, dbk_cached_repo *r)
{
    dbk_arena *a = dbk_arena_new(0);
    double best[2] = {1e9, 1e9};
    for (int round = 0; round < rounds; round++) {
        for (int side = 0; side < 2; side++) {
            int s = (round % 2) ? 1 - side : side; /* alternate who goes first */
            double t = 0;
            for (int b = 0; b < COLD_BATCHES; b++) {
                int64_t first = 1 + (int64_t)((b * 7 + round) % (ROWS / COLD_IDS)) * COLD_IDS;
                cold_forget(c, first);
                dbk_value ids[COLD_IDS];
                struct user rows[COLD_IDS];
                void *outs[COLD_IDS];
                dbk_rc rcs[COLD_IDS];
                for (int i = 0; i < COLD_IDS; i++) {
                    ids[i] = dbk_int64(first + i);
                    outs[i] = &rows[i];
                }
                dbk_error err;
                double t0 = now_s();
                if (s == 0) {
                    if (dbk_cached_repo_find_by_ids(r, db, COLD_IDS, ids, outs, rcs, a, &err) !=
                        DBK_OK)
                        die("find_by_ids", &err);
                } else {
                    for (int i = 0; i < COLD_IDS; i++)
                        if (dbk_cached_repo_find_by_id(r, db, ids[i], outs[i], a, &err) != DBK_OK)
                            die("find_by_id", &err);
                }
                t += now_s() - t0;
                for (int i = 0; i < COLD_IDS; i++)
                    if (rows[i].id != first + i)
                        die("cold: wrong row", NULL);
                dbk_arena_reset(a);
            }
            double ms = t * 1000 / COLD_BATCHES;
            if (ms < best[s])
                best[s] = ms;
        }
    }
    printf("  %-40s %8.2f ms   one find_by_id each: %8.2f ms   ratio %.2fx\n", label, best[0],
           best[1], best[1] / best[0]);
    dbk_arena_free(a);
}

static int cold_main(void)
{
    const char *ru = getenv("DBKIT_TEST_REDIS_URL");
    if (!ru || !*ru)
        ru = getenv("REDIS_URL");
    if (!ru || !*ru) {
        fprintf(stderr, "cache_bench cold: set DBKIT_TEST_REDIS_URL\n");
        return 2;
    }
    printf("cache_bench cold: %d ids not cached, through Redis, one dbk_cached_repo_find_by_ids "
           "(best of %d rounds of %d batches)\n",
           COLD_IDS, rounds, COLD_BATCHES);
    char sqlite_url[128];
    snprintf(sqlite_url, sizeof sqlite_url, "sqlite:/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    const char *urls[2] = {sqlite_url, getenv("DBKIT_TEST_PG_URL")};
    for (int k = 0; k < 2; k++) {
        if (!urls[k] || !*urls[k]) {
            printf("  (PostgreSQL skipped: DBKIT_TEST_PG_URL not set)\n");
            continue;
        }
        dbk_engine eng;
        dbk_conn *conn = setup_db(urls[k], &eng);
        dbk_cache *c = open_cache(ru);
        dbk_cached_repo *r;
        dbk_error err;
        if (dbk_cached_repo_new(c, &user_entity, NULL, &r, &err) != DBK_OK)
            die("cached repo", &err);
        cold_rows(k ? "PostgreSQL + Redis, 64 cold ids" : "SQLite + Redis, 64 cold ids",
                  dbk_conn_db(conn), c, r);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
        dbk_conn_close(conn);
    }
    char p[160];
    snprintf(p, sizeof p, "/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    unlink(p);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* as any server does: no per-call SIGPIPE guard needed */
    if (argc > 1 && strcmp(argv[1], "ha") == 0)
        return ha_main(argc, argv);
    bool cold = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--concurrency") == 0)
            conc_only = true;
        else if (strcmp(argv[i], "cold") == 0)
            cold = true;
    }
    if (cold)
        return cold_main();
    char sqlite_url[128];
    snprintf(sqlite_url, sizeof sqlite_url, "sqlite:/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    dbk_engine eng;
    dbk_conn *sq = setup_db(sqlite_url, &eng);
    dbk_error err;
    dbk_cache *mem = open_cache("memory:");
    dbk_cached_repo *mr;
    if (dbk_cached_repo_new(mem, &user_entity, NULL, &mr, &err) != DBK_OK)
        die("cached repo", &err);
    struct rctx sq_plain = {dbk_conn_db(sq), NULL, dbk_arena_new(0)};
    struct rctx sq_cached = {dbk_conn_db(sq), mr, dbk_arena_new(0)};
    for (int id = 1; id <= HOT; id++)
        read_cached(&sq_cached, id); /* warm */
    printf("cache_bench: %d hot rows, best of %d rounds of %.1f s\n", HOT, rounds, seconds);
    compare("memory cache hit (cached repo, SQLite)", "uncached SQLite find_by_id", read_repo,
            &sq_plain, read_cached, &sq_cached);

    const char *pg = getenv("DBKIT_TEST_PG_URL");
    if (pg && *pg) {
        dbk_conn *pc = setup_db(pg, &eng);
        dbk_cache *mem2 = open_cache("memory:");
        dbk_cached_repo *mr2;
        if (dbk_cached_repo_new(mem2, &user_entity, NULL, &mr2, &err) != DBK_OK)
            die("cached repo", &err);
        struct rctx pg_plain = {dbk_conn_db(pc), NULL, dbk_arena_new(0)};
        struct rctx pg_cached = {dbk_conn_db(pc), mr2, dbk_arena_new(0)};
        for (int id = 1; id <= HOT; id++)
            read_cached(&pg_cached, id);
        compare("memory cache hit (cached repo, PostgreSQL)", "uncached PostgreSQL find_by_id",
                read_repo, &pg_plain, read_cached, &pg_cached);
        dbk_cached_repo_free(mr2);
        dbk_cache_close(mem2);
        dbk_conn_close(pc);
    } else {
        printf("(PostgreSQL skipped: DBKIT_TEST_PG_URL not set)\n");
    }

    const char *ru = getenv("DBKIT_TEST_REDIS_URL");
    if (!ru || !*ru)
        ru = getenv("REDIS_URL");
    if (ru && *ru) {
        dbk_cache *rc = open_cache(ru);
        dbk_cached_repo *rr;
        if (dbk_cached_repo_new(rc, &user_entity, NULL, &rr, &err) != DBK_OK)
            die("cached repo", &err);
        struct rctx r_cached = {dbk_conn_db(sq), rr, dbk_arena_new(0)};
        for (int id = 1; id <= HOT; id++)
            read_cached(&r_cached, id);
        /* the raw baseline: the same bytes under keys of our own */
        struct rawctx raw;
        char host[256] = "127.0.0.1";
        int port = 6379;
        sscanf(ru, "redis://%255[^:/]:%d", host, &port);
        struct timeval tv = {1, 0};
        raw.rc = redisConnectWithTimeout(host, port, tv);
        if (!raw.rc || raw.rc->err)
            die("raw connect", NULL);
        size_t vsize = 0;
        static char rawval[4096];
        for (int id = 1; id <= HOT; id++) {
            char key[64];
            int kl = snprintf(key, sizeof key, "bench_users:id:%d", id);
            void *v;
            size_t n;
            if (dbk_cache_get(rc, key, (size_t)kl, &v, &n, &err) != DBK_OK)
                die("read back", &err);
            raw.klen[id - 1] = (size_t)snprintf(raw.keys[id - 1], 64, "dbkbench:raw:%d", id);
            const char *av[3] = {"SET", raw.keys[id - 1], v};
            size_t al[3] = {3, raw.klen[id - 1], n};
            freeReplyObject(redisCommandArgv(raw.rc, 3, av, al));
            vsize = n;
            if (id == HOT)
                memcpy(rawval, v, n < sizeof rawval ? n : sizeof rawval);
            dbk_free(v);
        }
        printf("(redis value size: %zu bytes)\n", vsize);
        if (conc_only) {
            concurrency_rows(ru, host, port, rawval, vsize < sizeof rawval ? vsize : sizeof rawval);
            redisFree(raw.rc);
            dbk_cached_repo_free(rr);
            dbk_cache_close(rc);
            return 0;
        }
        compare("redis hit (cached repo, decoded)", "raw hiredis GET", read_raw, &raw, read_cached,
                &r_cached);
        const char *ha[2][2] = {{"DBKIT_BENCH_SENTINEL_URL", "redis hit via sentinel (cached repo)"},
                                {"DBKIT_BENCH_CLUSTER_URL", "redis hit via cluster (cached repo)"}};
        for (int k = 0; k < 2; k++) {
            const char *hu = getenv(ha[k][0]);
            if (!hu || !*hu) {
                printf("(%s skipped: %s not set)\n", k ? "Cluster" : "Sentinel", ha[k][0]);
                continue;
            }
            dbk_cache *hc = open_cache(hu);
            dbk_cached_repo *hr;
            if (dbk_cached_repo_new(hc, &user_entity, NULL, &hr, &err) != DBK_OK)
                die("cached repo", &err);
            struct rctx h_cached = {dbk_conn_db(sq), hr, dbk_arena_new(0)};
            for (int pass = 0; pass < 3; pass++) /* a fresh node epoch may refuse the first store */
                for (int id = 1; id <= HOT; id++)
                    read_cached(&h_cached, id);
            compare(ha[k][1], "redis hit via redis:// (cached repo)", read_cached, &r_cached,
                    read_cached, &h_cached);
            if (k == 1) {
                struct rawcl *rcl = malloc(sizeof *rcl);
                rawcl_setup(rcl, hu, rawval, vsize < sizeof rawval ? vsize : sizeof rawval);
                printf("(raw GETs spread over %d cluster masters)\n", rcl->nnodes);
                compare(ha[k][1], "raw hiredis GET on the cluster", read_rawcl, rcl, read_cached,
                        &h_cached);
                for (int i = 0; i < rcl->nnodes; i++)
                    redisFree(rcl->node[i]);
                free(rcl);
            }
            dbk_arena_free(h_cached.arena);
            dbk_cached_repo_free(hr);
            dbk_cache_close(hc);
        }
        concurrency_rows(ru, host, port, rawval, vsize < sizeof rawval ? vsize : sizeof rawval);
        redisFree(raw.rc);
        dbk_cached_repo_free(rr);
        dbk_cache_close(rc);
    } else {
        printf("(Redis skipped: DBKIT_TEST_REDIS_URL not set)\n");
    }
    dbk_cached_repo_free(mr);
    dbk_cache_close(mem);
    dbk_conn_close(sq);
    snprintf(sqlite_url, sizeof sqlite_url, "/tmp/dbkit_cache_bench_%d.db", (int)getpid());
    unlink(sqlite_url);
    return 0;
}
