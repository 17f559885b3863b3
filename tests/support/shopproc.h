/*
 * The example shop (examples/shop) as a child process of a test, and HTTP
 * calls to it: what shop_test, shop_replica_test, shop_redis_ha_test and
 * shop_failover_test share.
 *
 * dbkt_shop_start() runs the built binary (its path is compiled in:
 * DBKIT_SHOP_PATH, set by examples/CMakeLists.txt) on a free loopback
 * port (PORT=0; the port is read from its "listening on" line), with its
 * stdout on a pipe and its stderr in a file of the test's directory. The
 * child dies with the test process (PR_SET_PDEATHSIG) and is stopped by
 * its PID: SIGTERM, then SIGKILL after a bounded wait.
 *
 * The HTTP calls use libcurl and parse JSON answers with jansson; they
 * assert nothing, so worker threads may use them (one handle per thread).
 * This file, like shopproc.c, is only compiled when libcurl and the shop
 * are there (SHOP_TEST_HAVE_CURL); without them the shop tests build as
 * stubs that skip.
 *
 * Every wait is bounded: start-up 20 s, each call its timeout (15 s by
 * default), the stop the caller's timeout.
 */
#ifndef DBKT_SHOPPROC_H
#define DBKT_SHOPPROC_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <jansson.h>

typedef struct dbkt_shop {
    pid_t pid; /* 0 when not running */
    int port;
    char base[64];         /* http://127.0.0.1:<port> */
    char errlog[PATH_MAX]; /* the shop's stderr */
} dbkt_shop;

/* The built shop's path; fails the test when it is not executable. */
const char *dbkt_shop_path(void);

/* Starts the shop and waits (20 s) until it listens; fails the test (after
 * printing its stderr) when it does not. The child's environment is the
 * test's without REDIS_URL, DB_POOL_MAX, HTTP_THREADS and HTTP_WORKERS (so
 * the default loop threads and workers), with HOST=127.0.0.1, PORT=0, SHOP_PWHASH=fast
 * (libsodium's minimum Argon2id limits), then every "NAME=value" of `env`
 * (NULL-terminated, may be
 * NULL; a later entry wins over an earlier one). */
void dbkt_shop_start(dbkt_shop *s, const char *const *env);

/* SIGTERM, then waits up to timeout_ms; SIGKILL when still running. The
 * exit status, or -1 when it was killed, was not started or is not our
 * child. Sets s->pid to 0. */
int dbkt_shop_stop(dbkt_shop *s, int timeout_ms);

/* Prints up to 200 lines of the shop's stderr to the test's stderr. */
void dbkt_shop_dump_log(const dbkt_shop *s);

/* True when the shop's stderr holds `needle` (polled for up to 1 s). */
bool dbkt_shop_log_contains(const dbkt_shop *s, const char *needle);

/* ---- HTTP ---- */

typedef struct dbkt_http_res {
    long status; /* 0 when no answer came (transport error) */
    char *body;  /* NUL-terminated, NULL when empty */
    size_t len;
    json_t *json;         /* the body parsed when it is an object, else NULL */
    long queries;         /* the X-DB-Queries header, -1 when absent */
    char set_cookie[256]; /* the last Set-Cookie header's value, "" when none */
    char error[128];      /* the transport error, "" when an answer came */
} dbkt_http_res;

/* A handle kept between calls (keep-alive), for one thread at a time;
 * NULL when curl cannot allocate one. */
CURL *dbkt_http_handle(void);
void dbkt_http_handle_free(CURL *c);

/* Sends `method` `path` to base (http://host:port) with the JSON `body`
 * (NULL: none; body_len < 0: strlen(body)) and, when `cookie` is not
 * NULL, "Cookie: <cookie>"; waits at most timeout_ms. On handle `keep`,
 * or on a handle made for this call when it is NULL. Fills *r (the caller
 * frees it with dbkt_http_res_free); true when an answer came. Asserts
 * nothing: safe off the main thread. */
bool dbkt_http_call(CURL *keep, const char *base, const char *method, const char *path,
                    const char *body, long body_len, const char *cookie, long timeout_ms,
                    dbkt_http_res *r);

void dbkt_http_res_free(dbkt_http_res *r);

/* The value of the first sample named exactly `name` (labels included) in
 * the Prometheus text of /metrics, or -1 when there is none. */
double dbkt_metrics_value(const char *text, const char *name);

#endif
