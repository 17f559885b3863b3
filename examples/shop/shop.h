/*
 * shop.h - the example HTTP/JSON service: what its files share.
 *
 * main.c      configuration from the environment, start-up (migrations,
 *             seeds), the HTTP daemon, signals and the graceful shutdown;
 * http.c      libmicrohttpd glue: request bodies, the checks every request
 *             target passes, responses, error mapping, the integer parser;
 * accesslog.c the access log: per-thread buffers, a background flusher;
 * model.c     the entity descriptors (users, posts, products, orders,
 *             order_items, accounts) and their JSON forms;
 * router.c    the router; handlers.h the endpoints, one file per resource
 *             (users.c, posts.c, products.c, orders.c, accounts.c) and the
 *             helpers they share (handler_util.c);
 * metrics.c   the query observer, /health and /metrics;
 * replicas.c  read replicas (DATABASE_REPLICA_URLS): the read executor of
 *             a request and the position-token cookie.
 *
 * Only public dbkit headers are used.
 */
#ifndef SHOP_H
#define SHOP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "dbkit/dbkit.h"

#ifdef SHOP_HAVE_DIAG
#include "dbkit/diag.h"
#endif

/* Largest request body accepted; larger ones get 413. */
#define SHOP_MAX_BODY (64 * 1024)

/* The migrations and seeds compiled into the binary (shop_embedded.c). */
extern const dbk_migration_file shop_migs[];
extern const size_t shop_nmigs;
extern const dbk_migration_file shop_seeds[];
extern const size_t shop_nseeds;

/* Query duration histogram bounds (seconds), for /metrics. */
#define SHOP_QHIST_N 11

/* The process-wide state. Set up once by main() before the daemon starts;
 * read-only afterwards except for the atomic counters. */
typedef struct shop_app {
    dbk_config *cfg;
    dbk_pool *pool;       /* the primary's pool (the cluster's when there are replicas) */
    dbk_db *db;           /* the pool's executor: writes, transactions, cache loads */
    dbk_cluster *cluster; /* NULL without DATABASE_REPLICA_URLS */
    int pos_max_age;      /* Max-Age of the position cookie, seconds */
    dbk_engine engine;
    dbk_cache *cache;            /* NULL when CACHE_URL=off */
    const char *cache_kind;      /* "memory", "redis" or "off" */
    dbk_cached_repo *users;      /* NULL when the cache is off */
    unsigned long long pw_ops;   /* Argon2id limits */
    size_t pw_mem;
    bool access_log;
#ifdef SHOP_HAVE_DIAG
    dbk_diag *diag;
#endif
    /* counters */
    atomic_uint_fast64_t tx_retries;
    atomic_uint_fast64_t requests;
    atomic_uint_fast64_t responses_by_class[6]; /* index status/100 */
    atomic_uint_fast64_t queries;
    atomic_uint_fast64_t query_errors;
    atomic_uint_fast64_t query_ns_sum;
    atomic_uint_fast64_t query_hist[SHOP_QHIST_N + 1];
    atomic_int in_flight;
} shop_app;

extern shop_app shop;

/* ---- requests and responses (http.c) ---- */

typedef struct shop_req {
    const char *method;
    const char *path;
    struct MHD_Connection *conn;
    json_t *body;     /* the parsed JSON object for POST / PATCH, else NULL */
    dbk_arena *arena; /* per-thread, reset before each request */
    dbk_db *rdb;      /* the request's read executor once chosen (shop_read_db) */
} shop_req;

typedef struct shop_resp {
    int status;
    char *body;        /* malloc'd, or NULL for an empty body */
    size_t len;
    const char *ctype; /* static; NULL means application/json */
} shop_resp;

/* Serialises j (stolen) as the response body with `status`. */
void shop_reply_json(shop_resp *rs, int status, json_t *j);
/* {"error":{"code":code,"message":msg}} with `status`. */
void shop_reply_error(shop_resp *rs, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Maps a dbkit result code to a status and error body; 5xx are logged with
 * the dbkit message and answered with a generic one. `what` names the
 * resource for 404s ("user"). */
void shop_reply_rc(shop_resp *rs, dbk_rc rc, const dbk_error *err, const char *what);
/* Query-string argument, or NULL when absent; "" when given without a
 * value ("?limit" as well as "?limit="). Every argument has passed
 * shop_text_ok() before a handler runs. */
const char *shop_query_arg(const shop_req *rq, const char *name);
/* True when s[0..len) is well-formed UTF-8 (control characters allowed:
 * this is the check for whole JSON bodies). */
bool shop_utf8_ok(const char *s, size_t len);
/* True when s[0..len) is well-formed UTF-8 without NUL, other C0 control
 * characters or DEL: the check for the path and every query argument. */
bool shop_text_ok(const char *s, size_t len);

/* What shop_parse_int() found. */
typedef enum shop_int_rc {
    SHOP_INT_OK,     /* an integer in [min, max]; *out set */
    SHOP_INT_SYNTAX, /* not an integer as the shop writes them */
    SHOP_INT_RANGE,  /* an integer, but outside [min, max] (or int64) */
} shop_int_rc;
/* The one integer parser for paths, query arguments and the environment:
 * s[0..len) must be "0" or an optional '-' then a digit 1-9 and more
 * digits; nothing else (no '+', spaces, leading zeros, trailing bytes,
 * NUL). Any length of digits is read, so a huge value is RANGE, not
 * SYNTAX. */
shop_int_rc shop_parse_int(const char *s, size_t len, int64_t min, int64_t max, int64_t *out);

/* Queries run by this thread since the counter was last reset (metrics.c). */
uint64_t shop_thread_queries(void);
void shop_thread_queries_reset(void);

/* The integer in environment variable `name`, in [min, max]; `dflt` when it
 * is unset or empty, and (with a message on stderr) when it is not a valid
 * one (main.c). */
int shop_env_int(const char *name, int dflt, int min, int max);

/* ---- the access log (accesslog.c) ---- */

/* Starts the background flusher writing to fd every `flush_ms` (main,
 * before the HTTP daemon starts); -1 when no thread could be started. */
int shop_access_log_open(int fd, int flush_ms);
/* One line for an answered request; any thread, no syscall unless this
 * thread's buffer is full. */
void shop_access_log(const char *method, const char *path, int status, int64_t dur_ns,
                     uint64_t queries);
/* Stops the flusher and writes every buffered line (main, after the HTTP
 * threads have stopped). */
void shop_access_log_close(void);
/* Lines logged, write calls made, lines lost to write errors, the times a
 * request had to wait for stderr because its buffer was at its largest,
 * and the per-thread buffers that exist (/metrics). */
void shop_access_log_stats(uint64_t *lines, uint64_t *writes, uint64_t *dropped,
                           uint64_t *waits, uint64_t *buffers);

/* Starts / stops the HTTP daemon (http.c): threads > 0 epoll threads,
 * and then nworkers > 0 worker threads for the requests that are not
 * point reads; threads == 0 a thread per connection. Returns the port. */
int shop_http_start(const char *host, int port, int threads, int nworkers);
/* Requests handed to a worker so far (/metrics). */
uint64_t shop_http_handed_off(void);
/* GET /users/{id} requests answered by a coalesced lookup, and the
 * lookups (batches) that answered them (/metrics). */
uint64_t shop_http_coalesced(void);
uint64_t shop_http_batches(void);
void shop_http_quiesce(void);
void shop_http_stop(void);

/* ---- read replicas (replicas.c) ---- */

/* The cookie that carries a client's position token (see replicas.c). */
#define SHOP_POS_COOKIE "dbkit_pos"

/* The executor for the reads of this request: shop.db without replicas
 * and for every method but GET and HEAD; else, with a valid position
 * cookie, a target that has replayed it (dbk_cluster_read_db_after), and
 * without one the cluster's read router. Chosen once per request. */
dbk_db *shop_read_db(shop_req *rq);
/* After a successful write request with replicas: writes the Set-Cookie
 * value carrying the primary's position token into buf; false when there
 * is none to send (no replicas, not a write, not 2xx, the token failed). */
bool shop_pos_cookie(const char *method, int status, char *buf, size_t buflen);

/* ---- routing (router.c) ---- */
void shop_route(shop_req *rq, shop_resp *rs);

/* ---- model (model.c) ---- */

struct shop_post;

typedef struct shop_user {
    int64_t id;
    const char *name;
    const char *email;
    const char *password_hash;
    const char *status;
    int64_t created_at;
    struct shop_post *posts;
    size_t nposts;
} shop_user;

typedef struct shop_post {
    int64_t id;
    int64_t user_id;
    const char *slug;
    const char *title;
    const char *body;
    bool published;
    int64_t created_at;
} shop_post;

typedef struct shop_product {
    int64_t id;
    const char *sku;
    const char *name;
    int64_t price_cents;
    int64_t stock;
} shop_product;

struct shop_order_item;

typedef struct shop_order {
    int64_t id;
    const char *reference;
    int64_t user_id;
    const char *status;
    int64_t created_at;
    struct shop_order_item *items;
    size_t nitems;
} shop_order;

typedef struct shop_order_item {
    int64_t order_id;
    int64_t product_id;
    int64_t quantity;
    int64_t unit_price_cents;
} shop_order_item;

typedef struct shop_account {
    int64_t id;
    const char *name;
    int64_t user_id;
    bool user_id_null;
    int64_t balance_cents;
    int64_t updated_at;
} shop_account;

extern const dbk_entity shop_user_entity, shop_post_entity, shop_product_entity, shop_order_entity,
    shop_item_entity, shop_account_entity;

/* Validates every descriptor (start-up). */
dbk_rc shop_model_init(dbk_error *err);
void shop_model_release(void);

json_t *shop_user_json(const shop_user *u, bool with_posts);
json_t *shop_post_json(const shop_post *p);
json_t *shop_product_json(const shop_product *p);
json_t *shop_order_json(const shop_order *o);
json_t *shop_account_json(const shop_account *a);
/* ISO-8601-ish text of a timestamp, as a JSON string. */
json_t *shop_time_json(int64_t usec);

/* Statements no repository serves, generated by `dbkit gen` from
 * examples/db/queries/queries.sql (gen/queries.h). take_stock_sql, the
 * per-line stock decrement of an order, runs once per order line on purpose
 * (lines locked in product order, each checked), so the diagnostics hub is
 * told it is not an N+1. */
#include "gen/queries.h"

/* ---- metrics (metrics.c) ---- */
void shop_metrics_attach(dbk_db *db);
/* The same observer on every executor of the cluster. */
void shop_metrics_attach_cluster(dbk_cluster *c);
void shop_handle_metrics(shop_req *rq, shop_resp *rs);
void shop_handle_health(shop_req *rq, shop_resp *rs);
void shop_on_tx_retry(void *ctx, int attempt, dbk_rc rc, int delay_ms, const dbk_error *err);
#ifdef SHOP_HAVE_DIAG
int shop_diag_open(dbk_error *err);
#endif

#endif /* SHOP_H */
