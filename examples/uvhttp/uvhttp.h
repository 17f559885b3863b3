/*
 * uvhttp.h - what the two files of the libuv example share: the service's
 * state (one loop thread owns all of it) and the connection calls main.c
 * makes.
 */
#ifndef UVHTTP_H
#define UVHTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include <dbkit/async_uv.h>
#include <dbkit/dbkit.h>

typedef struct uvh_conn uvh_conn;
typedef struct uvh_batch uvh_batch;

typedef struct uvh_service {
    uv_loop_t *loop;
    dbk_pool *pool;
    dbk_async *async;
    dbk_cache *cache;        /* CACHE_URL set (and not "off"), else NULL */
    dbk_cached_repo *users;  /* the users through the cache, when there is one */
    dbk_async_uv watcher;
    uv_tcp_t server;
    uv_signal_t sigterm, sigint;
    uvh_conn *conns; /* open connections, for the shutdown */
    size_t nconns;
    bool stopping;
    /* Coalescing (conn.c): the user lookups of one loop iteration go out
     * as one statement, sent from the check phase (after the loop has
     * handled every ready socket). Off with UVHTTP_BATCH=0. */
    bool batching;
    uv_check_t flush;
    uvh_batch *batch; /* the lookups gathered in this iteration, or NULL */
    uint64_t lookups, statements; /* statements: batches sent (one statement or cached lookup each) */
} uvh_service;

extern uvh_service uvh;

/* The listening socket's connection callback (conn.c). */
void uvh_on_connection(uv_stream_t *server, int status);

/* The users table as the cached repository reads it (conn.c). */
extern const dbk_entity uvh_user_entity;

/* Starts the check handle that sends each iteration's lookups (batching
 * on); 0 or a libuv error. */
int uvh_batching_start(void);

/* Shutdown: closes idle connections now and busy ones after their answer;
 * when none is left, stops the async watcher so the loop can end. */
void uvh_shutdown_connections(void);

#endif
