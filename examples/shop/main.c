/*
 * main.c - the shop's life cycle: configuration from the environment,
 * start-up, serving, and the graceful shutdown.
 *
 * Start-up order matters: the configuration and the pool first (opening a
 * pool does not connect), then the schema (the embedded migrations and the
 * top-level seeds, applied through the pool: a second instance starting at
 * the same time waits on the migration lock; a database not reachable yet is
 * waited for, up to STARTUP_WAIT_MS), the cache and the cached user
 * repository, and only then the HTTP daemon, so no request ever sees a
 * half-built schema. SIGINT and SIGTERM are blocked in every thread and
 * taken by the main thread with sigwait(), so the shutdown runs in plain
 * code, not in a signal handler: turn new requests away (503), wait (bounded) for the
 * requests in flight, stop the daemon, write out the buffered access log,
 * close the cache and drain the pool.
 *
 * Environment (docs/example-service.md has the table):
 *   DATABASE_URL  default sqlite:$TMPDIR/dbkit-shop.db (TMPDIR default /tmp)
 *   DATABASE_REPLICA_URLS  read replicas (PostgreSQL): GETs read there,
 *                 writes get the dbkit_pos cookie (replicas.c)
 *   SHOP_POS_MAX_AGE  Max-Age of that cookie in seconds (5)
 *   HOST, PORT    127.0.0.1, 8080 (PORT=0 picks a free port; the first line
 *                 printed says which)
 *   CACHE_URL     memory (default), off, or redis://host:port/db;
 *                 REDIS_URL alone also selects Redis; CACHE_AUTO_PIPELINE
 *                 0|1 (read through dbk_cache_opts_from_env)
 *   CACHE_PREFIX  Redis key prefix (default "shop:"), for instances sharing a
 *                 Redis but not a database
 *   POOL_MAX      pool size (default: pool_max of the URL / DB_POOL_MAX, else
 *                 2 x cores)
 *   DATABASE_DIRECT_URL  the server itself, for the schema step when
 *                 DATABASE_URL goes through a transaction-mode pooler
 *   HTTP_THREADS  N loop threads serving all connections (default: the
 *                 cores), each one request at a time, or "per-connection"
 *                 (a thread for each HTTP connection)
 *   HTTP_COALESCE 0 turns off the coalescing of each loop turn's
 *                 GET /users/{id} into one lookup (http.c)
 *   HTTP_WORKERS  with epoll threads, the worker threads that run every
 *                 request but the point reads by id (default 32 x cores;
 *                 0: every request on its epoll thread); http.c says why
 *   SHOP_PWHASH   "fast" uses libsodium's minimum Argon2id limits (tests)
 *   ACCESS_LOG    "off" silences the per-request line
 *   ACCESS_LOG_FLUSH_MS  longest wait of a buffered access-log line before
 *                 it is written (100; accesslog.c)
 *   SLOW_QUERY_MS statements at least this slow are logged (default 200)
 *   SHUTDOWN_TIMEOUT_MS  longest wait for requests in flight (10000)
 *   STARTUP_WAIT_MS      longest wait for an unreachable database at start
 *                        (30000; 0: fail at once)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <sodium.h>

#include "handlers.h" /* shop.h, and the reviews store opened below */

shop_app shop;

int shop_env_int(const char *name, int dflt, int min, int max)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    int64_t n = 0;
    shop_int_rc rc = shop_parse_int(v, strlen(v), min, max, &n);
    if (rc != SHOP_INT_OK) {
        fprintf(stderr, "shop: %s=\"%s\" is %s; using %d\n", name, v,
                rc == SHOP_INT_RANGE ? "out of range" : "not an integer", dflt);
        fprintf(stderr, "shop: hint: %s takes an integer in %d..%d\n", name, min, max);
        return dflt;
    }
    return (int)n;
}

typedef struct pool_max_probe {
    bool from_default;
    bool replicas; /* DATABASE_REPLICA_URLS / replicas is set */
} pool_max_probe;

static void probe_pool_max(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    pool_max_probe *p = ctx;
    if (strcmp(key, "pool_max") == 0)
        p->from_default = src == DBK_CONFIG_SOURCE_DEFAULT;
    else if (strcmp(key, "replicas") == 0)
        p->replicas = value && *value;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int open_cache(dbk_error *err)
{
    const char *cache_url = getenv("CACHE_URL");
    if (cache_url && strcmp(cache_url, "off") == 0) {
        shop.cache_kind = "off";
        return 0;
    }
    dbk_cache_opts co = DBK_CACHE_OPTS_INIT;
    const char *prefix = getenv("CACHE_PREFIX");
    co.key_prefix = prefix && *prefix ? prefix : "shop:";
    /* CACHE_URL (memory, memory: or a redis URL), else REDIS_URL, else the
     * memory backend; CACHE_AUTO_PIPELINE. */
    dbk_cache_env *cenv = NULL;
    dbk_rc rc = dbk_cache_opts_from_env(&co, &cenv, err);
    if (rc == DBK_OK)
        rc = dbk_cache_open(&co, &shop.cache, err);
    dbk_cache_env_free(cenv);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: cache: %s (%s)\n", err->message, dbk_rc_name(rc));
        return -1;
    }
    shop.cache_kind = dbk_cache_backend(shop.cache);
    rc = dbk_cached_repo_new(shop.cache, &shop_user_entity, NULL, &shop.users, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: cached repository: %s\n", err->message);
        return -1;
    }
    return 0;
}

/* A service may start before its database (a compose file, a host
 * reboot): wait for it, bounded by STARTUP_WAIT_MS (default 30 s), trying
 * through the pool every 250 ms. Only "not reachable yet" is waited for;
 * a wrong password or database name fails at once. */
static int wait_for_database(dbk_error *err)
{
    int wait_ms = shop_env_int("STARTUP_WAIT_MS", 30000, 0, 3600000);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t until = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + wait_ms;
    bool said = false;
    for (;;) {
        int64_t one = 0;
        dbk_rc rc = dbk_db_query_int64(shop.db, "SELECT 1", NULL, 0, &one, err);
        if (rc == DBK_OK)
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        bool transient = rc == DBK_EUNAVAILABLE || rc == DBK_ECONN_LOST ||
                         rc == DBK_EPOOL_TIMEOUT || rc == DBK_ETIMEOUT;
        if (!transient || now >= until) {
            fprintf(stderr, "shop: database: %s (%s)\n", err->message, dbk_rc_name(rc));
            if (err->hint[0])
                fprintf(stderr, "shop: hint: %s\n", err->hint);
            return -1;
        }
        if (!said) {
            fprintf(stderr, "shop: waiting up to %d ms for the database: %s\n", wait_ms,
                    err->message);
            said = true;
        }
        sleep_ms(250);
    }
}

/* Migrations take a session-level advisory lock, which a transaction-mode
 * pooler (PgBouncer, pooler=transaction) cannot give: with
 * DATABASE_DIRECT_URL set (the server itself, as for `dbkit migrate`) the
 * schema step runs on one connection of its own opened from it, and the
 * service's pool may sit behind the pooler. */
static int apply_schema(dbk_error *err)
{
    dbk_migrate_source src = {NULL, shop_migs, shop_nmigs};
    dbk_migrate_source seeds = {NULL, shop_seeds, shop_nseeds};
    int applied = 0, ran = 0;
    dbk_db *db = shop.db;
    dbk_conn *direct = NULL;
    const char *durl = getenv("DATABASE_DIRECT_URL");
    if (durl && *durl) {
        dbk_config *dcfg = NULL;
        dbk_rc drc = dbk_config_from_url(durl, &dcfg, err);
        if (drc == DBK_OK)
            drc = dbk_conn_open(dcfg, &direct, err);
        dbk_config_free(dcfg);
        if (drc != DBK_OK) {
            fprintf(stderr, "shop: DATABASE_DIRECT_URL: %s (%s)\n", err->message, dbk_rc_name(drc));
            return -1;
        }
        db = dbk_conn_db(direct);
    }
    dbk_rc rc = dbk_migrate_up(db, &src, NULL, &applied, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: migrations failed: %s (%s)\n", err->message, dbk_rc_name(rc));
        if (err->hint[0])
            fprintf(stderr, "shop: hint: %s\n", err->hint);
        if (rc == DBK_EMISUSE && !direct)
            fprintf(stderr, "shop: hint: behind a transaction-mode pooler set "
                            "DATABASE_DIRECT_URL to the server itself for the schema step\n");
        dbk_conn_close(direct);
        return -1;
    }
    rc = dbk_seed_run(db, &seeds, NULL, &ran, err);
    dbk_conn_close(direct);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: seeds failed: %s (%s)\n", err->message, dbk_rc_name(rc));
        return -1;
    }
    printf("shop: schema ready (%d migration%s applied, %d seed%s ran)\n", applied,
           applied == 1 ? "" : "s", ran, ran == 1 ? "" : "s");
    return 0;
}

static void print_banner(const char *host, int port)
{
    char base[128];
    if (strchr(host, ':'))
        snprintf(base, sizeof base, "http://[%s]:%d", host, port);
    else
        snprintf(base, sizeof base, "http://%s:%d", host, port);
    char dburl[512];
    dbk_config_redacted_url(shop.cfg, dburl, sizeof dburl);
    printf("shop: listening on %s\n", base);
    printf("shop: database %s, cache %s\n", dburl, shop.cache_kind);
    printf("\nTry:\n");
    printf("  curl -s %s/health\n", base);
    printf("  curl -s '%s/users?limit=2&order=name&include=posts'\n", base);
    printf("  curl -s %s/users/1\n", base);
    printf("  curl -s -X POST %s/users -H 'Content-Type: application/json' \\\n"
           "       -d '{\"name\":\"Alan Turing\",\"email\":\"alan@example.com\","
           "\"password\":\"correct horse battery\"}'\n",
           base);
    printf("  curl -s -X POST %s/orders -d '{\"user_id\":1,\"items\":"
           "[{\"product_id\":3,\"quantity\":2}]}'\n",
           base);
    printf("  curl -s -X POST %s/transfers -d '{\"from_account\":1,\"to_account\":2,"
           "\"amount_cents\":2500}'\n",
           base);
    printf("  curl -s %s/metrics\n", base);
    printf("\nStop with Ctrl-C (SIGINT) or SIGTERM.\n");
    fflush(stdout);
}

int main(void)
{
    dbk_error err;
    int status = 1;

    if (sodium_init() < 0) {
        fprintf(stderr, "shop: libsodium failed to initialise\n");
        return 1;
    }
    const char *pw = getenv("SHOP_PWHASH");
    if (pw && strcmp(pw, "fast") == 0) {
        shop.pw_ops = crypto_pwhash_OPSLIMIT_MIN;
        shop.pw_mem = crypto_pwhash_MEMLIMIT_MIN;
    } else {
        shop.pw_ops = crypto_pwhash_OPSLIMIT_INTERACTIVE;
        shop.pw_mem = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    }
    const char *al = getenv("ACCESS_LOG");
    shop.access_log = !(al && strcmp(al, "off") == 0);
    dbk_set_log(dbk_log_stderr, NULL, DBK_LOG_WARN);

    /* Signals: blocked here so every thread started later inherits the
     * mask; only sigwait() below takes them. SIGPIPE is ignored before the
     * cache opens (see cache.h). */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        cores = 1;

    const char *dburl = getenv("DATABASE_URL");
    char dflt[512];
    dbk_rc rc;
    if (dburl && *dburl) {
        rc = dbk_config_from_env(&shop.cfg, &err);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dflt, sizeof dflt, "sqlite:%s/dbkit-shop.db", tmp && *tmp ? tmp : "/tmp");
        rc = dbk_config_from_url(dflt, &shop.cfg, &err);
    }
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: configuration: %s\n", err.message);
        if (err.hint[0])
            fprintf(stderr, "shop: hint: %s\n", err.hint);
        return 1;
    }
    shop.engine = dbk_config_engine(shop.cfg);

    dbk_pool_opts po = DBK_POOL_OPTS_INIT;
    pool_max_probe probe = {false, false};
    dbk_config_dump(shop.cfg, probe_pool_max, &probe);
    po.max_size = shop_env_int("POOL_MAX", probe.from_default ? (int)(2 * cores) : 0, 1, 10000);
    if (probe.replicas) {
        /* The primary's pool is the cluster's; each replica's takes its
         * limits (replica.h). */
        dbk_cluster_opts co = DBK_CLUSTER_OPTS_INIT;
        co.pool_opts = &po;
        rc = dbk_cluster_open(shop.cfg, &co, &shop.cluster, &err);
        if (rc != DBK_OK) {
            fprintf(stderr, "shop: replicas: %s\n", err.message);
            if (err.hint[0])
                fprintf(stderr, "shop: hint: %s\n", err.hint);
            goto out_cfg;
        }
        shop.pool = dbk_cluster_pool(shop.cluster);
        shop.pos_max_age = shop_env_int("SHOP_POS_MAX_AGE", 5, 1, 3600);
    } else {
        rc = dbk_pool_open(shop.cfg, &po, &shop.pool, &err);
        if (rc != DBK_OK) {
            fprintf(stderr, "shop: pool: %s\n", err.message);
            goto out_cfg;
        }
    }
    shop.db = dbk_pool_db(shop.pool);

    rc = shop_model_init(&err);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: model: %s\n", err.message);
        goto out_pool;
    }
    if (wait_for_database(&err) != 0 || apply_schema(&err) != 0)
        goto out_pool;

#ifdef SHOP_HAVE_DIAG
    if (shop_diag_open(&err) != 0)
        goto out_pool;
#endif
    /* The observer goes on after the schema step, so start-up statements do
     * not count as request queries. */
    if (shop.cluster)
        shop_metrics_attach_cluster(shop.cluster);
    else
        shop_metrics_attach(shop.db);

    if (open_cache(&err) != 0)
        goto out_cache;
    if (shop_reviews_open(&err) != 0)
        goto out_cache;

    const char *host = getenv("HOST");
    if (!host || !*host)
        host = "127.0.0.1";
    int port = shop_env_int("PORT", 8080, 0, 65535);
    /* HTTP_THREADS: a number of epoll threads (the default) or
     * "per-connection". An epoll thread serves its connections one request
     * at a time, so a slow request would delay every other request of its
     * thread: the requests that may wait (everything but point reads by id)
     * go to HTTP_WORKERS worker threads. Measured on 2 cores at 64
     * connections (docs/benchmarks.md): a thread per connection keeps slow
     * routes from holding up others but wakes a thread per request and
     * lets 64 runnable threads share 2 CPUs, which put the point reads'
     * p99 at 18-44 ms; 16 epoll threads alone kept it at 5-9 ms but held
     * pages of users up to 110-160 ms behind each other. With only point
     * reads left on them, 2 x cores epoll threads beat 8 x cores on most
     * cached and uncached rows at 8 and 64 connections; since the loops
     * coalesce user reads, as many loops as cores gather bigger batches:
     * uncached at 8 connections 38k req/s against 29k with 2 x cores. */
    const char *ht = getenv("HTTP_THREADS");
    bool per_conn = ht && strcmp(ht, "per-connection") == 0;
    int threads = per_conn ? 0 : shop_env_int("HTTP_THREADS", (int)cores, 1, 1024);
    int nworkers = per_conn ? 0 : shop_env_int("HTTP_WORKERS", (int)(32 * cores), 0, 1024);
    int flush_ms = shop_env_int("ACCESS_LOG_FLUSH_MS", 100, 1, 60000);
    if (shop.access_log && shop_access_log_open(STDERR_FILENO, flush_ms) != 0) {
        fprintf(stderr, "shop: cannot start the access log's flusher thread\n");
        goto out_cache;
    }
    int bound = shop_http_start(host, port, threads, nworkers);
    if (bound < 0)
        goto out_log;
    print_banner(host, bound);

    int sig = 0;
    sigwait(&stop_set, &sig);
    fprintf(stderr, "shop: %s received: finishing requests in flight\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");

    shop_http_quiesce();
    int timeout_ms = shop_env_int("SHUTDOWN_TIMEOUT_MS", 10000, 0, 3600000);
    for (int waited = 0; atomic_load(&shop.in_flight) > 0 && waited < timeout_ms; waited += 10)
        sleep_ms(10);
    if (atomic_load(&shop.in_flight) > 0)
        fprintf(stderr, "shop: %d request(s) still running after %d ms; closing anyway\n",
                atomic_load(&shop.in_flight), timeout_ms);
    shop_http_stop();
    status = 0;

out_log:
    /* After the HTTP threads have stopped, so every line is in; before the
     * pool and cache close, whose messages then follow the last lines. */
    shop_access_log_close();
out_cache:
    shop_reviews_close();
    dbk_cached_repo_free(shop.users);
    dbk_cache_close(shop.cache);
#ifdef SHOP_HAVE_DIAG
    dbk_diag_free(shop.diag);
#endif
out_pool:
    if (shop.cluster)
        dbk_cluster_close(shop.cluster, 5000); /* closes shop.pool */
    else
        dbk_pool_close(shop.pool, 5000);
    shop_model_release();
out_cfg:
    dbk_config_free(shop.cfg);
    if (status == 0)
        fprintf(stderr, "shop: stopped\n");
    return status;
}
