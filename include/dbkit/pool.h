/*
 * dbkit/pool.h - the connection pool.
 *
 * (Options are declared here first because the configuration carries them;
 * the pool API itself follows below.)
 *
 * Every option is an int where 0 means "use the default"; defaults live in
 * one table in src/core/config.c and are printed by `dbkit config`.
 */
#ifndef DBKIT_POOL_H
#define DBKIT_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_pool_opts {
    int max_size;            /* most connections open at once (DB_POOL_MAX, pool_max) */
    int min_idle;            /* idle connections kept ready (DB_POOL_MIN_IDLE, pool_min_idle) */
    int acquire_timeout_ms;  /* longest wait for a connection (DB_ACQUIRE_TIMEOUT_MS, acquire_timeout) */
    int connect_timeout_ms;  /* longest wait to open one (DB_CONNECT_TIMEOUT_MS) */
    int idle_timeout_ms;     /* idle connections above min_idle close after this (DB_IDLE_TIMEOUT_MS, idle_timeout) */
    int max_lifetime_ms;     /* connections retire after this, with jitter (DB_MAX_LIFETIME_MS, max_lifetime) */
    int validate_after_ms;   /* ping a connection idle longer than this before lending it (validate_after) */
    int validate_timeout_ms; /* the ping's own deadline (validate_timeout) */
    int max_waiters;         /* acquires allowed to queue; more fail at once (pool_max_waiters) */
    int leak_threshold_ms;   /* a connection held longer is reported once (leak_threshold) */
} dbk_pool_opts;

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_POOL_H */
