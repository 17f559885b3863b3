/*
 * main.c - the libuv example: GET /users/{id} on the shop's schema, served
 * by one event-loop thread over dbk_async (include/dbkit/async.h).
 *
 * Why it is shaped so: the loop thread never blocks. It accepts, parses and
 * writes; every database read goes to dbk_async's workers, which run the
 * ordinary blocking dbk_db_query on the pool, and comes back as a callback
 * on this thread through the watcher of include/dbkit/async_uv.h. The only
 * blocking work is at startup (the pool, the migrations), before the loop
 * runs.
 *
 * Environment: DATABASE_URL (and the DB_* settings), HOST (127.0.0.1), PORT
 * (8080; 0 picks a free one), MIGRATIONS_DIR (the examples/db migrations by
 * default), ASYNC_WORKERS and ASYNC_MAX_PENDING (dbk_async_opts),
 * UVHTTP_BATCH (1: the lookups of one loop iteration share one statement,
 * conn.c; 0: one lookup per request), CACHE_URL (unset or "off": no
 * cache; memory, or a redis:// URL: users read through a cached
 * repository, each iteration's lookups in one cache round trip) and
 * CACHE_PREFIX (its keys' prefix, "uvhttp:"). Prints
 * "listening on http://HOST:PORT" when ready; SIGTERM or SIGINT stops it
 * after the answers in flight are written.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uvhttp.h"

#ifndef UVHTTP_MIGRATIONS_DIR
#define UVHTTP_MIGRATIONS_DIR "examples/db/migrations"
#endif

uvh_service uvh;

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < lo || n > hi) {
        fprintf(stderr, "uvhttp: %s=%s is not a number in %ld..%ld; using %ld\n", name, v, lo, hi,
                def);
        return def;
    }
    return n;
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    if (uvh.stopping)
        return;
    uvh.stopping = true;
    uv_close((uv_handle_t *)&uvh.server, NULL);
    uv_close((uv_handle_t *)&uvh.sigterm, NULL);
    uv_close((uv_handle_t *)&uvh.sigint, NULL);
    uvh_shutdown_connections();
}

static int open_database(dbk_error *err)
{
    dbk_config *cfg = NULL;
    dbk_rc rc = dbk_config_from_env(&cfg, err);
    if (rc == DBK_OK) {
        rc = dbk_pool_open(cfg, NULL, &uvh.pool, err);
        dbk_config_free(cfg);
    }
    if (rc != DBK_OK) {
        fprintf(stderr, "uvhttp: database: %s (%s)\n", err->message, dbk_rc_name(rc));
        return -1;
    }
    const char *dir = getenv("MIGRATIONS_DIR");
    dbk_migrate_source src = {dir && *dir ? dir : UVHTTP_MIGRATIONS_DIR, NULL, 0};
    int applied = 0;
    rc = dbk_migrate_up(dbk_pool_db(uvh.pool), &src, NULL, &applied, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "uvhttp: migrations: %s (%s)\n", err->message, dbk_rc_name(rc));
        if (err->hint[0])
            fprintf(stderr, "uvhttp: hint: %s\n", err->hint);
        return -1;
    }
    const char *cache_url = getenv("CACHE_URL");
    if (cache_url && *cache_url && strcmp(cache_url, "off") != 0) {
        /* CACHE_URL: memory, memory: or a redis:// (redis-sentinel://,
         * redis-cluster://) URL, read with the other CACHE_* settings */
        dbk_cache_opts co = DBK_CACHE_OPTS_INIT;
        const char *prefix = getenv("CACHE_PREFIX");
        co.key_prefix = prefix && *prefix ? prefix : "uvhttp:";
        dbk_cache_env *cenv = NULL;
        rc = dbk_cache_opts_from_env(&co, &cenv, err);
        if (rc == DBK_OK)
            rc = dbk_cache_open(&co, &uvh.cache, err);
        dbk_cache_env_free(cenv);
        if (rc == DBK_OK)
            rc = dbk_cached_repo_new(uvh.cache, &uvh_user_entity, NULL, &uvh.users, err);
        if (rc != DBK_OK) {
            fprintf(stderr, "uvhttp: cache: %s (%s)\n", err->message, dbk_rc_name(rc));
            return -1;
        }
    }
    dbk_async_opts ao = {.version = DBK_ASYNC_OPTS_VERSION,
                         .workers = (int)env_long("ASYNC_WORKERS", 0, 0, DBK_ASYNC_MAX_WORKERS),
                         .max_pending =
                             (size_t)env_long("ASYNC_MAX_PENDING", 0, 0, DBK_ASYNC_MAX_PENDING)};
    rc = dbk_async_open(dbk_pool_db(uvh.pool), &ao, &uvh.async, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "uvhttp: async: %s (%s)\n", err->message, dbk_rc_name(rc));
        return -1;
    }
    return 0;
}

static int listen_on(void)
{
    const char *host = getenv("HOST");
    if (!host || !*host)
        host = "127.0.0.1";
    int port = (int)env_long("PORT", 8080, 0, 65535);
    struct sockaddr_storage sa;
    int r = uv_ip4_addr(host, port, (struct sockaddr_in *)&sa);
    if (r != 0)
        r = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa);
    if (r == 0)
        r = uv_tcp_init(uvh.loop, &uvh.server);
    if (r == 0)
        r = uv_tcp_bind(&uvh.server, (const struct sockaddr *)&sa, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&uvh.server, 511, uvh_on_connection);
    if (r != 0) {
        fprintf(stderr, "uvhttp: cannot listen on %s:%d: %s\n", host, port, uv_strerror(r));
        return -1;
    }
    struct sockaddr_storage got;
    int len = sizeof got;
    uv_tcp_getsockname(&uvh.server, (struct sockaddr *)&got, &len);
    int bound = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                : ((struct sockaddr_in *)&got)->sin_port);
    printf("listening on http://%s:%d\n", host, bound);
    fflush(stdout);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    dbk_error err;
    uvh.loop = uv_default_loop();
    int code = 1;
    if (open_database(&err) != 0)
        goto out;
    if (dbk_async_uv_start(&uvh.watcher, uvh.loop, uvh.async) != 0) {
        fprintf(stderr, "uvhttp: cannot watch the async descriptor\n");
        goto out;
    }
    if (listen_on() != 0) {
        dbk_async_uv_stop(&uvh.watcher);
        uv_run(uvh.loop, UV_RUN_DEFAULT);
        goto out;
    }
    uvh.batching = env_long("UVHTTP_BATCH", 1, 0, 1) == 1;
    if (uvh.batching && uvh_batching_start() != 0) {
        fprintf(stderr, "uvhttp: cannot start the batching check handle\n");
        uvh.batching = false;
    }
    uv_signal_init(uvh.loop, &uvh.sigterm);
    uv_signal_start(&uvh.sigterm, on_signal, SIGTERM);
    uv_signal_init(uvh.loop, &uvh.sigint);
    uv_signal_start(&uvh.sigint, on_signal, SIGINT);
    /* Runs until a signal closed the server and the connections, and the
     * last connection stopped the watcher. */
    uv_run(uvh.loop, UV_RUN_DEFAULT);
    code = 0;
    /* a batch is one statement, or one cached lookup (one cache round trip
     * and a statement per miss) */
    fprintf(stderr, "uvhttp: %llu user lookups in %llu batches\n",
            (unsigned long long)uvh.lookups, (unsigned long long)uvh.statements);
    dbk_cache_stats cs;
    if (uvh.cache && dbk_cache_get_stats(uvh.cache, &cs, NULL) == DBK_OK)
        fprintf(stderr, "uvhttp: cache %s: %llu hits, %llu misses\n", dbk_cache_backend(uvh.cache),
                (unsigned long long)cs.hits, (unsigned long long)cs.misses);
out:
    dbk_async_close(uvh.async); /* nothing in flight by now; NULL is fine */
    dbk_cached_repo_free(uvh.users);
    dbk_cache_close(uvh.cache);
    dbk_pool_close(uvh.pool, 1000);
    uv_loop_close(uvh.loop);
    return code;
}
