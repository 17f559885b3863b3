/*
 * http.c - the libmicrohttpd side of the shop: loop threads, each running a
 * daemon of its own, with worker threads (or one daemon with a thread per
 * connection), request bodies, the checks every request target passes,
 * coalesced user reads, responses, error mapping and the integer parser.
 *
 * Why shaped so: small keep-alive requests are the common case, so each
 * loop thread owns its connections, its turn ends with one lookup for
 * every GET /users/{id} it read (see "the loops" below), and the requests
 * that may wait run on worker threads (see "workers" below);
 * every thread keeps one dbkit arena that is reset, not freed, between
 * requests, and a GET answered on its loop thread allocates no
 * per-request context (a static marker stands in for it) unless it is
 * coalesced. Bodies
 * (POST, PATCH) are collected into a buffer bounded by SHOP_MAX_BODY; a
 * declared Content-Length above it is refused with 413 before the body is
 * read, an undeclared one (chunked) is read and dropped, then refused.
 *
 * The request target is checked once, before routing: libmicrohttpd
 * percent-decodes the path and the query arguments into C strings, so a
 * "%00" would silently cut "/users/1%00junk" down to "/users/1". The shop
 * installs its own decoder (url_unescape), identical to libmicrohttpd's
 * except that a decoded NUL becomes the byte 0xFF, which is never valid
 * UTF-8; then a path or query argument that is not clean text
 * (shop_text_ok: UTF-8 without NUL or control characters) is a 400
 * invalid_path / invalid_query, whatever the route.
 *
 * The number of requests in flight is counted from the first handler call
 * to MHD's completion callback (after the response was sent), which is what
 * the graceful shutdown waits for.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "shop.h"

static struct MHD_Daemon *daemon_;
/* One arena per HTTP thread, freed by the key's destructor when the thread
 * ends (MHD_stop_daemon joins them). */
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_free(void *a)
{
    dbk_arena_free(a);
}

static void arena_key_init(void)
{
    (void)pthread_key_create(&arena_key, arena_free);
}

static dbk_arena *thread_arena(void)
{
    pthread_once(&arena_once, arena_key_init);
    dbk_arena *a = pthread_getspecific(arena_key);
    if (a) {
        dbk_arena_reset(a);
        return a;
    }
    a = dbk_arena_new(0);
    if (a && pthread_setspecific(arena_key, a) != 0) {
        dbk_arena_free(a);
        a = NULL;
    }
    return a;
}

/* Requests without a body context: not answered yet / answered. */
static char nobody_marker, answered_marker, refused_marker;

/* Set by shop_http_quiesce(): requests that start from now on are answered
 * 503 with "Connection: close"; those already started run to the end. (Not
 * MHD_quiesce_daemon: with epoll worker threads it can race a worker that
 * removes the listening socket from its epoll set at the same moment, and
 * libmicrohttpd then aborts the process.) */
static atomic_int stopping;

/* What one request's answer is made of: filled by the routing, on the
 * thread that ran the handler (an HTTP thread or a worker). */
typedef struct answer {
    shop_resp rs;
    uint64_t queries;
    bool has_cookie;
    char cookie[128];
} answer;

enum { CTX_BODY, CTX_QUEUED, CTX_DONE, CTX_SENT };

struct loop;

/* A request's context: its body while it is read, and, handed to a
 * worker, everything the worker needs and what it answers. */
typedef struct req_ctx {
    char *buf;
    size_t len, cap;
    bool too_big;
    int64_t start_ns;
    atomic_int state;
    struct req_ctx *next; /* the worker queue */
    struct loop *loop;    /* the loop serving its connection (woken after a resume) */
    struct MHD_Connection *conn;
    const char *method, *url; /* libmicrohttpd's, valid until the request completes */
    json_t *body;             /* owned */
    answer ans;
} req_ctx;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- responses ---- */

void shop_reply_json(shop_resp *rs, int status, json_t *j)
{
    rs->status = status;
    rs->ctype = NULL;
    free(rs->body);
    rs->body = NULL;
    rs->len = 0;
    if (!j) {
        rs->status = 500;
        return;
    }
    rs->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!rs->body) {
        rs->status = 500;
        return;
    }
    rs->len = strlen(rs->body);
}

void shop_reply_error(shop_resp *rs, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    shop_reply_json(rs, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
    rs->status = status;
}

void shop_reply_rc(shop_resp *rs, dbk_rc rc, const dbk_error *err, const char *what)
{
    switch (rc) {
    case DBK_ENOT_FOUND:
        shop_reply_error(rs, 404, "not_found", "%s not found", what ? what : "resource");
        return;
    case DBK_EUNIQUE:
        shop_reply_error(rs, 409, "conflict", "%s already exists",
                         what ? what : "a resource with these values");
        return;
    case DBK_EFOREIGN_KEY:
        shop_reply_error(rs, 409, "conflict", "%s is still referenced or refers to a missing row",
                         what ? what : "resource");
        return;
    case DBK_ECHECK:
    case DBK_ENOT_NULL:
    case DBK_EINVALID:
    case DBK_ETYPE:
    case DBK_EINVALID_COLUMN:
    case DBK_EINVALID_SORT:
        shop_reply_error(rs, 400, "invalid", "invalid value");
        return;
    case DBK_EPOOL_TIMEOUT:
    case DBK_EUNAVAILABLE:
    case DBK_ECONN_LOST:
    case DBK_EPOOL_CLOSED:
    case DBK_EBUSY:
    case DBK_ETIMEOUT:
    case DBK_ERETRY_EXHAUSTED:
        fprintf(stderr, "shop: database unavailable: %s: %s\n", dbk_rc_name(rc),
                err ? err->message : "");
        shop_reply_error(rs, 503, "unavailable", "the database is unavailable, retry later");
        return;
    default:
        /* The dbkit message never carries parameter values or passwords,
         * but it may carry SQL: log it, answer generically. */
        fprintf(stderr, "shop: internal error: %s: %s\n", dbk_rc_name(rc),
                err ? err->message : "");
        shop_reply_error(rs, 500, "internal", "internal error");
        return;
    }
}

const char *shop_query_arg(const shop_req *rq, const char *name)
{
    const char *v = NULL;
    size_t vlen = 0;
    if (MHD_lookup_connection_value_n(rq->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v,
                                      &vlen) != MHD_YES)
        return NULL;
    return v ? v : ""; /* "?limit" without '=' is given, empty */
}

shop_int_rc shop_parse_int(const char *s, size_t len, int64_t min, int64_t max, int64_t *out)
{
    size_t i = 0;
    bool neg = len > 0 && s[0] == '-';
    if (neg)
        i = 1;
    if (i == len)
        return SHOP_INT_SYNTAX;
    if (s[i] == '0' && (neg || len - i > 1)) /* "-0", "01", "00" */
        return SHOP_INT_SYNTAX;
    uint64_t mag = 0;
    bool over = false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return SHOP_INT_SYNTAX;
        unsigned d = (unsigned)(s[i] - '0');
        if (over || mag > (UINT64_MAX - d) / 10)
            over = true; /* keep scanning: trailing garbage is still SYNTAX */
        else
            mag = mag * 10 + d;
    }
    if (over || mag > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return SHOP_INT_RANGE;
    int64_t v = !neg ? (int64_t)mag : mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    if (v < min || v > max)
        return SHOP_INT_RANGE;
    *out = v;
    return SHOP_INT_OK;
}

bool shop_utf8_ok(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned min;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            min = 0x10000;
        } else {
            return false;
        }
        if (i + n >= len)
            return false;
        unsigned cp = c & (0x3F >> n);
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

bool shop_text_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F)
            return false;
    }
    return shop_utf8_ok(s, len);
}

/* ---- the request target ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* libmicrohttpd's %HH decoding (an invalid escape stays as it is), except
 * that %00 becomes 0xFF: the string keeps its full length as a C string
 * and fails shop_text_ok(), so "/users/1%00" is refused instead of being
 * read as "/users/1". Runs on the path and on every query key and value
 * (after libmicrohttpd turned '+' into a space there). */
static size_t url_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    char *w = s;
    for (const char *r = s; *r;) {
        int hi, lo;
        if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0) {
            int v = hi * 16 + lo;
            *w++ = (char)(unsigned char)(v == 0 ? 0xFF : v);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

static enum MHD_Result check_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    bool *bad = cls;
    if (!key || !shop_text_ok(key, key_size) || (value && !shop_text_ok(value, value_size))) {
        *bad = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* False, with the 400 in *rs, when the path or a query argument is not
 * clean text (a decoded NUL, a control character, invalid UTF-8). */
static bool target_ok(struct MHD_Connection *conn, const char *url, shop_resp *rs)
{
    if (!shop_text_ok(url, strlen(url))) {
        shop_reply_error(rs, 400, "invalid_path",
                         "the path holds a NUL, a control character or invalid UTF-8");
        return false;
    }
    bool bad = false;
    MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, check_arg, &bad);
    if (bad) {
        shop_reply_error(rs, 400, "invalid_query",
                         "the query string holds a NUL, a control character or invalid UTF-8");
        return false;
    }
    return true;
}

/* ---- the request cycle ---- */

static enum MHD_Result send_response(struct MHD_Connection *conn, shop_resp *rs, uint64_t queries,
                                     const char *set_cookie)
{
    struct MHD_Response *r;
    if (rs->body)
        r = MHD_create_response_from_buffer(rs->len, rs->body, MHD_RESPMEM_MUST_FREE);
    else
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(rs->body);
        rs->body = NULL;
        return MHD_NO;
    }
    rs->body = NULL; /* owned by the response now */
    if (rs->status != 204)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                rs->ctype ? rs->ctype : "application/json");
    char q[24];
    snprintf(q, sizeof q, "%llu", (unsigned long long)queries);
    MHD_add_response_header(r, "X-DB-Queries", q);
    if (set_cookie)
        MHD_add_response_header(r, MHD_HTTP_HEADER_SET_COOKIE, set_cookie);
    if (atomic_load(&stopping))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)rs->status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Runs the route on the calling thread and fills *a: the response, the
 * statements it ran and, after a write with replicas, the position cookie
 * (both read from this thread's state, so on the thread that ran it). */
static void route_request(struct MHD_Connection *conn, const char *method, const char *url,
                          json_t *body, answer *a)
{
    dbk_arena *arena = thread_arena();
    shop_req rq = {method, url, conn, body, arena};
    shop_thread_queries_reset();
#ifdef SHOP_HAVE_DIAG
    if (shop.diag)
        dbk_diag_scope_begin(shop.diag, url);
#endif
    if (!arena)
        shop_reply_error(&a->rs, 500, "internal", "out of memory");
    else
        shop_route(&rq, &a->rs);
#ifdef SHOP_HAVE_DIAG
    if (shop.diag) {
        dbk_error derr;
        (void)dbk_diag_scope_end(shop.diag, &derr);
    }
#endif
    a->queries = shop_thread_queries();
    a->has_cookie = shop_pos_cookie(method, a->rs.status, a->cookie, sizeof a->cookie);
}

/* Sends an answer and logs it (on the connection's HTTP thread). */
static enum MHD_Result send_answer(struct MHD_Connection *conn, const char *method,
                                   const char *url, int64_t start_ns, answer *a)
{
    if (a->rs.status < 100 || a->rs.status > 599)
        a->rs.status = 500;
    int status = a->rs.status;
    atomic_fetch_add(&shop.responses_by_class[status / 100], 1);
    enum MHD_Result ret = send_response(conn, &a->rs, a->queries,
                                        a->has_cookie ? a->cookie : NULL);
    if (shop.access_log)
        shop_access_log(method, url, status, now_ns() - start_ns, a->queries);
    return ret;
}

static enum MHD_Result finish(struct MHD_Connection *conn, const char *method, const char *url,
                              json_t *body, int64_t start_ns, shop_resp *preset)
{
    answer a = {0};
    if (preset)
        a.rs = *preset;
    else
        route_request(conn, method, url, body, &a);
    return send_answer(conn, method, url, start_ns, &a);
}

/* ---- workers (HTTP_WORKERS) ----
 *
 * With epoll threads, a request that may wait (a page with its total, a
 * transaction behind a row lock, any write) would hold up every other
 * connection of its thread. Such requests go to a pool of worker threads
 * instead: the HTTP thread suspends the connection (libmicrohttpd stops
 * reading it), queues the request, and goes on with its other
 * connections; the worker runs the handler and resumes the connection,
 * and libmicrohttpd calls on_request again, which sends the answer on the
 * HTTP thread. Point reads by id (and /health, /metrics) stay on the HTTP
 * threads: one short statement, or none with the cache, where a hand-off
 * would cost more than it saves. Every other request pays the hand-off's
 * two thread wakes (measured on 2 CPUs at 8 connections: transfers at
 * 5.1-5.3k req/s through workers against 6.1-6.4k with a thread per
 * connection). Running a slow request on its epoll thread when that thread
 * serves no other connection was tried and dropped: the acceptor below
 * goes on dealing new connections to a thread whatever it is doing, and a
 * connection dealt to a thread busy with a slow request waits for it. The
 * queue is FIFO and unbounded (the connection limit bounds it); workers
 * drain it before they stop. */

static pthread_mutex_t wq_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wq_cv = PTHREAD_COND_INITIALIZER;
static req_ctx *wq_head, *wq_tail;
static bool wq_stop;
static pthread_t *workers;
static int n_workers;
static atomic_ullong handed_off;

static void loop_wake(struct loop *lp);
static _Thread_local struct loop *tl_loop; /* the loop this thread runs */

static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&wq_mu);
        while (!wq_head && !wq_stop)
            pthread_cond_wait(&wq_cv, &wq_mu);
        req_ctx *c = wq_head;
        if (!c) {
            pthread_mutex_unlock(&wq_mu);
            return NULL; /* stopping, and nothing queued */
        }
        wq_head = c->next;
        if (!wq_head)
            wq_tail = NULL;
        pthread_mutex_unlock(&wq_mu);
        route_request(c->conn, c->method, c->url, c->body, &c->ans);
        struct MHD_Connection *conn = c->conn;
        struct loop *lp = c->loop;
        /* After the resume the HTTP thread may answer and free c at once. */
        atomic_store_explicit(&c->state, CTX_DONE, memory_order_release);
        MHD_resume_connection(conn);
        if (lp)
            loop_wake(lp);
    }
}

/* A point read by id, or /health, /metrics: answered on the HTTP thread. */
static bool runs_inline(const char *method, const char *url)
{
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return false;
    if (strcmp(url, "/health") == 0 || strcmp(url, "/metrics") == 0)
        return true;
#define COLL(s) {s, sizeof s - 1}
    static const struct {
        const char *prefix;
        size_t len;
    } colls[] = {COLL("/users/"), COLL("/products/"), COLL("/posts/"), COLL("/accounts/"),
                 COLL("/orders/")};
#undef COLL
    for (size_t i = 0; i < sizeof colls / sizeof *colls; i++) {
        if (strncmp(url, colls[i].prefix, colls[i].len) == 0) {
            const char *d = url + colls[i].len;
            if (!*d)
                return false;
            for (; *d; d++)
                if (*d < '0' || *d > '9')
                    return false;
            return true;
        }
    }
    return false;
}

enum { RUN_HERE, HANDED };

/* Queues c for a worker and suspends its connection; false (nothing done)
 * when the workers are stopping: the caller answers. */
static bool hand_off(struct MHD_Connection *conn, req_ctx *c, const char *method, const char *url,
                     json_t *body)
{
    pthread_mutex_lock(&wq_mu);
    if (wq_stop) {
        pthread_mutex_unlock(&wq_mu);
        return false;
    }
    c->conn = conn;
    c->method = method;
    c->url = url;
    c->body = body;
    c->next = NULL;
    c->loop = tl_loop;
    atomic_store_explicit(&c->state, CTX_QUEUED, memory_order_relaxed);
    /* Suspended before any worker can see it, so the resume never comes
     * first. */
    MHD_suspend_connection(conn);
    if (wq_tail)
        wq_tail->next = c;
    else
        wq_head = c;
    wq_tail = c;
    pthread_cond_signal(&wq_cv);
    pthread_mutex_unlock(&wq_mu);
    atomic_fetch_add(&handed_off, 1);
    return true;
}

/* Where a request runs: on this thread (point reads, or no workers) or on
 * a worker (HANDED; *cp is then the queued context, allocated here for a
 * request without a body). */
static int dispatch(struct MHD_Connection *conn, req_ctx **cp, const char *method, const char *url,
                    json_t *body, int64_t start_ns)
{
    if (n_workers == 0 || runs_inline(method, url))
        return RUN_HERE;
    req_ctx *c = *cp;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return RUN_HERE;
        c->start_ns = start_ns;
    }
    if (!hand_off(conn, c, method, url, body)) {
        if (!*cp)
            free(c);
        return RUN_HERE;
    }
    *cp = c;
    return HANDED;
}

uint64_t shop_http_handed_off(void)
{
    return atomic_load(&handed_off);
}

static void workers_stop(void)
{
    pthread_mutex_lock(&wq_mu);
    wq_stop = true;
    pthread_cond_broadcast(&wq_cv);
    pthread_mutex_unlock(&wq_mu);
    for (int i = 0; i < n_workers; i++)
        pthread_join(workers[i], NULL);
    free(workers);
    workers = NULL;
    n_workers = 0;
}

static int workers_start(int n)
{
    wq_stop = false;
    if (n <= 0)
        return 0;
    workers = calloc((size_t)n, sizeof *workers);
    if (!workers)
        return -1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1024 * 1024);
    for (; n_workers < n; n_workers++) {
        if (pthread_create(&workers[n_workers], &attr, worker_main, NULL) != 0) {
            pthread_attr_destroy(&attr);
            workers_stop();
            return -1;
        }
    }
    pthread_attr_destroy(&attr);
    return 0;
}

/* ---- the loops (epoll threads) and coalescing ----
 *
 * Each epoll thread runs a libmicrohttpd daemon of its own in external
 * mode: the thread calls MHD_run_wait() itself, so it has a point in each
 * turn of its loop after every ready connection was served. The shop uses
 * it to coalesce: a GET /users/{id} (a point read, answered on this thread)
 * does not run its own lookup; its connection is suspended and its id
 * joins the thread's batch, and after MHD_run_wait() returns the batch runs
 * as one lookup: dbk_cached_repo_find_by_ids() through the cache (the
 * cached users in one round trip, an MGET on Redis, the others in one
 * statement), else dbk_repo_find_by_ids() (one statement, id IN the
 * batch). Each request is then answered
 * from its own row (404 when it has none, the lookup's error when that
 * failed) and resumed; the loop's next turn sends the answers. Under load a
 * turn gathers many requests, which then cost one round trip and one wait
 * of the thread instead of one each (measured on 2 CPUs at 64 connections,
 * docs/benchmarks.md); a lone request runs alone in the turn that read it.
 * Not coalesced, so answered as before: requests with the in-process
 * cache (no round trip to save), when replicas are configured without a
 * cache (each read picks its executor from its own
 * read-your-writes cookie), and with HTTP_COALESCE=0. A batch runs outside
 * the diagnostics' per-request N+1 scopes: it is no request (and its cache
 * misses are one statement: dbk_cached_repo_find_by_ids). */

#define COALESCE_MAX 256 /* lookups in one batch; a full batch runs at once */

/* A connection the acceptor took, waiting for its loop to add it. */
struct new_conn {
    struct new_conn *next;
    int fd;
    socklen_t len;
    struct sockaddr_storage peer;
};

struct loop {
    struct MHD_Daemon *d;
    pthread_t th;
    bool started;
    /* Wakes the loop: a connection to add, a request a worker resumed, the
     * stop. Only the loop's own thread may add a connection to its daemon
     * in external mode, and the wait below watches this descriptor beside
     * the daemon's (a worker's resume also wakes the daemon's own, through
     * libmicrohttpd's inter-thread channel: the eventfd makes it not
     * depend on that). */
    int efd;
    int mfd;            /* the daemon's epoll descriptor */
    pthread_mutex_t mu; /* guards incoming */
    struct new_conn *incoming;
    req_ctx *batch[COALESCE_MAX];
    int64_t ids[COALESCE_MAX];
    size_t n;
};

static struct loop *loops;
static int n_loops;
static atomic_int loops_stop;
static atomic_uint next_loop;
static bool coalesce_on = true;
static atomic_ullong coalesced, batches;

uint64_t shop_http_coalesced(void)
{
    return atomic_load(&coalesced);
}

uint64_t shop_http_batches(void)
{
    return atomic_load(&batches);
}

/* The id of a GET /users/{id} this thread may coalesce, else 0. */
static int64_t coalescable(const char *method, const char *url)
{
    if (!tl_loop || !coalesce_on || strcmp(method, "GET") != 0 || strncmp(url, "/users/", 7) != 0)
        return 0;
    if (shop.cluster && !shop.users)
        return 0;
    const char *d = url + 7;
    size_t n = strlen(d);
    int64_t id = 0;
    if (n == 0 || strspn(d, "0123456789") != n ||
        shop_parse_int(d, n, 1, INT64_MAX /* SHOP_MAX_ID */, &id) != SHOP_INT_OK)
        return 0; /* the router answers it (400s) */
    return id;
}

/* Answers c from its outcome: the user, or rc with err (404 names "user"). */
static void answer_user(req_ctx *c, dbk_rc rc, const dbk_error *err, const shop_user *u)
{
    if (rc == DBK_OK)
        shop_reply_json(&c->ans.rs, 200, shop_user_json(u, false));
    else
        shop_reply_rc(&c->ans.rs, rc, err, "user");
}

/* Runs the loop's batch (on its thread) and resumes every request in it. */
static void run_batch(struct loop *lp)
{
    size_t n = lp->n;
    if (n == 0)
        return;
    lp->n = 0;
    dbk_arena *arena = thread_arena();
    shop_thread_queries_reset();
    dbk_error err;
    memset(&err, 0, sizeof err);
    if (!arena) {
        dbk_error oom = {.code = DBK_ENOMEM};
        snprintf(oom.message, sizeof oom.message, "out of memory");
        for (size_t i = 0; i < n; i++)
            answer_user(lp->batch[i], DBK_ENOMEM, &oom, NULL);
    } else {
        /* through the cache: the cached users in one round trip, the others
         * in one statement; without (and without replicas, else not
         * coalesced, so every read goes to shop.db): one statement, id IN
         * the batch */
        shop_user rows[COALESCE_MAX];
        void *outs[COALESCE_MAX];
        dbk_value ids[COALESCE_MAX];
        dbk_rc rcs[COALESCE_MAX];
        for (size_t i = 0; i < n; i++) {
            outs[i] = &rows[i];
            ids[i] = dbk_int64(lp->ids[i]);
        }
        dbk_rc rc = shop.users ? dbk_cached_repo_find_by_ids(shop.users, shop.db, n, ids, outs,
                                                             rcs, arena, &err)
                               : dbk_repo_find_by_ids(shop.db, &shop_user_entity, n, ids, outs,
                                                      rcs, arena, &err);
        if (rc == DBK_EMISUSE) /* cannot happen (n <= COALESCE_MAX, no NULL); never unanswered */
            for (size_t i = 0; i < n; i++)
                rcs[i] = rc;
        /* err: the first failure's words, for the log of any failed one */
        dbk_error nf = {.code = DBK_ENOT_FOUND};
        snprintf(nf.message, sizeof nf.message, "not found");
        for (size_t i = 0; i < n; i++)
            answer_user(lp->batch[i], rcs[i], rcs[i] == DBK_ENOT_FOUND ? &nf : &err, &rows[i]);
    }
    uint64_t queries = shop_thread_queries();
    for (size_t i = 0; i < n; i++) {
        req_ctx *c = lp->batch[i];
        c->ans.queries = queries; /* the statements of the batch it was in */
        c->ans.has_cookie = false; /* a read sets no position cookie */
        struct MHD_Connection *conn = c->conn;
        /* After the resume this thread's next MHD_run answers and frees c. */
        atomic_store_explicit(&c->state, CTX_DONE, memory_order_release);
        MHD_resume_connection(conn);
    }
    atomic_fetch_add(&coalesced, n);
    atomic_fetch_add(&batches, 1);
}

/* Suspends conn and puts its lookup in this thread's batch (a full batch
 * runs at once). False (nothing done) when out of memory: the caller
 * answers it alone. */
static bool coalesce(struct MHD_Connection *conn, req_ctx **cp, const char *method,
                     const char *url, int64_t id, int64_t start_ns)
{
    struct loop *lp = tl_loop;
    if (lp->n == COALESCE_MAX)
        run_batch(lp);
    req_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return false;
    c->start_ns = start_ns;
    c->conn = conn;
    c->method = method;
    c->url = url;
    atomic_store_explicit(&c->state, CTX_QUEUED, memory_order_relaxed);
    MHD_suspend_connection(conn);
    lp->batch[lp->n] = c;
    lp->ids[lp->n++] = id;
    *cp = c;
    return true;
}

static void loop_wake(struct loop *lp)
{
    (void)eventfd_write(lp->efd, 1);
}

/* Adds the connections the acceptor queued for this loop (on its thread:
 * libmicrohttpd's lists are the loop's alone in external mode). */
static void add_incoming(struct loop *lp)
{
    pthread_mutex_lock(&lp->mu);
    struct new_conn *q = lp->incoming, *fifo = NULL;
    lp->incoming = NULL;
    pthread_mutex_unlock(&lp->mu);
    while (q) { /* pushed newest first: oldest first again */
        struct new_conn *next = q->next;
        q->next = fifo;
        fifo = q;
        q = next;
    }
    q = fifo;
    while (q) {
        struct new_conn *next = q->next;
        /* Closes the socket itself when it cannot take it. */
        (void)MHD_add_connection(lp->d, q->fd, (const struct sockaddr *)&q->peer, q->len);
        free(q);
        q = next;
    }
}

/* One turn: wait for the daemon's sockets or a wake-up (at most its own
 * next timeout, and 100 ms), add new connections, serve every ready
 * connection, run the turn's batch. `now`: do not wait (answers resumed
 * by the last batch are waiting to be sent). */
static size_t loop_turn(struct loop *lp, int mfd, bool now)
{
    int tmo = 100;
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (now)
        tmo = 0;
    else if (MHD_get_timeout(lp->d, &to) == MHD_YES && to < 100)
        tmo = (int)to;
    struct pollfd p[2] = {{mfd, POLLIN, 0}, {lp->efd, POLLIN, 0}};
    if (poll(p, 2, tmo) > 0 && (p[1].revents & POLLIN)) {
        eventfd_t v;
        (void)eventfd_read(lp->efd, &v);
    }
    add_incoming(lp);
    MHD_run(lp->d);
    size_t n = lp->n;
    run_batch(lp);
    return n;
}

static void *loop_main(void *arg)
{
    struct loop *lp = arg;
    tl_loop = lp;
    int mfd = lp->mfd;
    bool now = false;
    while (!atomic_load(&loops_stop))
        now = loop_turn(lp, mfd, now) > 0;
    /* What the last batches resumed goes out before the daemon stops:
     * turns without waiting until one gathers no batch and libmicrohttpd
     * has nothing due at once (at most 50 turns). */
    for (int i = 0; i < 50; i++) {
        MHD_UNSIGNED_LONG_LONG to = 0;
        size_t n = loop_turn(lp, mfd, true);
        if (n == 0 && !(MHD_get_timeout(lp->d, &to) == MHD_YES && to == 0))
            break;
    }
    return NULL;
}

static void loops_stop_join(void)
{
    atomic_store(&loops_stop, 1);
    for (int i = 0; i < n_loops; i++) {
        if (loops[i].started) {
            loop_wake(&loops[i]);
            pthread_join(loops[i].th, NULL);
        }
    }
    for (int i = 0; i < n_loops; i++) {
        struct loop *lp = &loops[i];
        for (struct new_conn *q = lp->incoming, *next; q; q = next) {
            next = q->next;
            close(q->fd);
            free(q);
        }
        if (lp->d)
            MHD_stop_daemon(lp->d);
        if (lp->efd >= 0)
            close(lp->efd);
        pthread_mutex_destroy(&lp->mu);
    }
    free(loops);
    loops = NULL;
    n_loops = 0;
}

static bool has_body(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0 ||
           strcmp(method, "PUT") == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)cls;
    (void)version;
    if (*con_cls == NULL) {
        int64_t start = now_ns();
        atomic_fetch_add(&shop.in_flight, 1);
        atomic_fetch_add(&shop.requests, 1);
        if (atomic_load(&stopping)) {
            if (!has_body(method)) {
                *con_cls = &refused_marker; /* answered in the next call */
                return MHD_YES;
            }
            *con_cls = &answered_marker;
            shop_resp rs = {0};
            shop_reply_error(&rs, 503, "shutting_down", "the service is stopping");
            return finish(conn, method, url, NULL, start, &rs);
        }
        if (!has_body(method)) {
            /* Answered in the next call: a response queued before MHD has
             * finished reading the request makes it close the connection,
             * which would defeat keep-alive. */
            *con_cls = &nobody_marker;
            return MHD_YES;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > SHOP_MAX_BODY) {
            *con_cls = &answered_marker;
            shop_resp rs = {0};
            shop_reply_error(&rs, 413, "too_large", "request body over %d bytes",
                             SHOP_MAX_BODY);
            return finish(conn, method, url, NULL, start, &rs);
        }
        req_ctx *b = calloc(1, sizeof *b);
        if (!b)
            return MHD_NO;
        b->start_ns = start;
        *con_cls = b;
        return MHD_YES;
    }
    if (*con_cls == &nobody_marker) {
        if (*upload_data_size > 0) { /* a body on a GET or DELETE: ignored */
            *upload_data_size = 0;
            return MHD_YES;
        }
        *con_cls = &answered_marker;
        shop_resp rs = {0};
        int64_t start = now_ns();
        if (!target_ok(conn, url, &rs))
            return finish(conn, method, url, NULL, start, &rs);
        req_ctx *c = NULL;
        int64_t uid = coalescable(method, url);
        if (uid > 0 && coalesce(conn, &c, method, url, uid, start)) {
            *con_cls = c; /* answered after the batch, in a later call */
            return MHD_YES;
        }
        int where = dispatch(conn, &c, method, url, NULL, start);
        if (where == HANDED) {
            *con_cls = c;
            return MHD_YES;
        }
        return finish(conn, method, url, NULL, start, NULL);
    }
    if (*con_cls == &answered_marker) {
        *upload_data_size = 0; /* a body after an early answer is dropped */
        return MHD_YES;
    }
    if (*con_cls == &refused_marker) {
        if (*upload_data_size > 0) {
            *upload_data_size = 0;
            return MHD_YES;
        }
        *con_cls = &answered_marker;
        shop_resp rs = {0};
        shop_reply_error(&rs, 503, "shutting_down", "the service is stopping");
        return finish(conn, method, url, NULL, now_ns(), &rs);
    }
    req_ctx *b = *con_cls;
    int state = atomic_load_explicit(&b->state, memory_order_acquire);
    if (state == CTX_DONE) { /* a worker answered: send it from this thread */
        atomic_store_explicit(&b->state, CTX_SENT, memory_order_relaxed);
        return send_answer(conn, method, url, b->start_ns, &b->ans);
    }
    if (state != CTX_BODY) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (b->too_big || b->len + n > SHOP_MAX_BODY) {
            b->too_big = true;
            return MHD_YES;
        }
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap : 1024;
            while (cap < b->len + n + 1)
                cap *= 2;
            char *nb = realloc(b->buf, cap);
            if (!nb)
                return MHD_NO;
            b->buf = nb;
            b->cap = cap;
        }
        memcpy(b->buf + b->len, upload_data, n);
        b->len += n;
        return MHD_YES;
    }
    /* The whole body is in. */
    shop_resp rs = {0};
    if (b->too_big) {
        shop_reply_error(&rs, 413, "too_large", "request body over %d bytes", SHOP_MAX_BODY);
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    if (!target_ok(conn, url, &rs))
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    if (b->len == 0) {
        shop_reply_error(&rs, 400, "invalid_json", "a JSON object body is required");
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    if (!shop_utf8_ok(b->buf, b->len)) {
        shop_reply_error(&rs, 400, "invalid_utf8", "the body is not valid UTF-8");
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    json_error_t jerr;
    json_t *j = json_loadb(b->buf, b->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j && json_error_code(&jerr) == json_error_numeric_overflow) {
        /* 99999999999999999999 or 1e400: a number, but none the shop takes */
        shop_reply_error(&rs, 400, "out_of_range",
                         "the number at line %d column %d is out of range", jerr.line, jerr.column);
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    if (!j) {
        shop_reply_error(&rs, 400, "invalid_json", "malformed JSON at line %d column %d",
                         jerr.line, jerr.column);
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    if (!json_is_object(j)) {
        json_decref(j);
        shop_reply_error(&rs, 400, "invalid_json", "the body must be a JSON object");
        return finish(conn, method, url, NULL, b->start_ns, &rs);
    }
    int where = dispatch(conn, &b, method, url, j, b->start_ns);
    if (where == HANDED)
        return MHD_YES; /* the worker's answer comes in a later call; b owns j */
    enum MHD_Result ret = finish(conn, method, url, j, b->start_ns, NULL);
    json_decref(j);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    if (*con_cls == NULL)
        return;
    if (*con_cls != &answered_marker && *con_cls != &nobody_marker &&
        *con_cls != &refused_marker) {
        req_ctx *b = *con_cls;
        free(b->buf);
        json_decref(b->body);
        free(b->ans.rs.body);
        free(b);
    }
    *con_cls = NULL;
    atomic_fetch_sub(&shop.in_flight, 1);
}

/* ---- the acceptor (epoll threads) ----
 *
 * libmicrohttpd's epoll threads all watch the listening socket, and the one
 * that wakes accepts every pending connection at once: a burst of
 * connections (a client opening its keep-alive pool) lands on one or two
 * threads, which then serve them one request at a time while the others
 * idle. Measured on 2 CPUs, 8 connections on 4 epoll threads: 8.2k req/s
 * uncached in one run, 42.9k in the next, depending on that split. So the
 * shop accepts on a thread of its own and deals the connections out to
 * the loops in turn (each loop adds its own: MHD_add_connection is only
 * safe on the thread that runs the daemon in external mode). */

static int listen_fd = -1;
static pthread_t acceptor;
static bool acceptor_running;
static atomic_int acceptor_stop;

static void *acceptor_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&acceptor_stop)) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(listen_fd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (atomic_load(&acceptor_stop))
                break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(10000); /* out of descriptors or memory: try again soon, not at once */
            else if (errno != EINTR)
                usleep(1000); /* a connection reset before it was taken, or worse: never spin */
            continue;
        }
        /* Round robin over the loops; each adds its own connections. */
        struct loop *lp = &loops[atomic_fetch_add(&next_loop, 1) % (unsigned)n_loops];
        struct new_conn *q = malloc(sizeof *q);
        if (!q) {
            close(fd);
            continue;
        }
        q->fd = fd;
        q->len = len;
        memcpy(&q->peer, &peer, sizeof peer);
        pthread_mutex_lock(&lp->mu);
        q->next = lp->incoming;
        lp->incoming = q;
        pthread_mutex_unlock(&lp->mu);
        loop_wake(lp);
    }
    return NULL;
}

/* A listening socket on ss; -1 (reported) when it cannot be had. */
static int listen_on(const struct sockaddr_storage *ss, const char *host, int port)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (ss->ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, SOMAXCONN) != 0) {
        fprintf(stderr, "shop: cannot listen on %s:%d (%s)\n", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void acceptor_stop_join(void)
{
    if (acceptor_running) {
        atomic_store(&acceptor_stop, 1);
        shutdown(listen_fd, SHUT_RDWR); /* wakes accept4 */
        pthread_join(acceptor, NULL);
        acceptor_running = false;
    }
    if (listen_fd >= 0)
        close(listen_fd);
    listen_fd = -1;
}

/* The daemons of the loops: one per epoll thread, in external mode (the
 * loop thread runs it), fed by the acceptor. */
static int loops_start(int threads, unsigned flags)
{
    loops = calloc((size_t)threads, sizeof *loops);
    if (!loops)
        return -1;
    n_loops = threads;
    atomic_store(&loops_stop, 0);
    /* 4096 connections in all, as one daemon had */
    int per_loop = 4096 / threads > 64 ? 4096 / threads : 64;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, 60, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, per_loop, NULL},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)url_unescape, NULL},
        /* Each connection's buffer for a request's line and headers (and
         * libmicrohttpd's own bookkeeping), zeroed before each request:
         * 16 KiB instead of the default 32 cut that memset's share of the
         * CPU (Redis-cached reads at 64 connections: 75-78k req/s against
         * 71-72k); requests with more header than fits are refused. */
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, 16384, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    for (int i = 0; i < threads; i++) {
        loops[i].efd = -1;
        pthread_mutex_init(&loops[i].mu, NULL);
    }
    for (int i = 0; i < threads; i++) {
        loops[i].efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        loops[i].d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_ARRAY,
                                      opts, MHD_OPTION_END);
        if (loops[i].efd < 0 || !loops[i].d)
            return -1;
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(loops[i].d, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info || info->epoll_fd < 0)
            return -1;
        loops[i].mfd = info->epoll_fd;
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&loops[i].th, NULL, loop_main, &loops[i]) != 0)
            return -1;
        loops[i].started = true;
    }
    return 0;
}

int shop_http_start(const char *host, int port, int threads, int nworkers)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    /* threads > 0: that many loops (epoll threads), each serving its share
     * of the connections one request at a time, fed by the acceptor above.
     * 0: a thread of its own for each connection. */
    unsigned flags = MHD_USE_ITC | MHD_USE_ERROR_LOG;
    flags |= threads > 0 ? MHD_USE_EPOLL | MHD_USE_NO_LISTEN_SOCKET | MHD_ALLOW_SUSPEND_RESUME
                         : MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                               MHD_USE_POLL;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        fprintf(stderr, "shop: HOST \"%s\" is not a numeric IPv4 or IPv6 address\n", host);
        return -1;
    }
    /* Coalescing saves round trips: none to save with the in-process
     * cache, where a hit is a local lookup (measured at 8 connections:
     * 70k req/s coalesced against 80k not; at 64 even). */
    const char *co = getenv("HTTP_COALESCE");
    coalesce_on = !(co && strcmp(co, "0") == 0) &&
                  !(shop.cache && strcmp(dbk_cache_backend(shop.cache), "memory") == 0);
    if (threads > 0) {
        listen_fd = listen_on(&ss, host, port);
        if (listen_fd < 0)
            return -1;
        int bound = port;
        struct sockaddr_storage got;
        socklen_t glen = sizeof got;
        if (getsockname(listen_fd, (struct sockaddr *)&got, &glen) == 0)
            bound = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                    : ((struct sockaddr_in *)&got)->sin_port);
        if (nworkers > 0 && workers_start(nworkers) != 0) {
            fprintf(stderr, "shop: cannot start %d HTTP worker threads\n", nworkers);
            acceptor_stop_join();
            return -1;
        }
        if (loops_start(threads, flags) != 0) {
            fprintf(stderr, "shop: cannot start %d HTTP threads\n", threads);
            workers_stop();
            loops_stop_join();
            acceptor_stop_join();
            return -1;
        }
        if (pthread_create(&acceptor, NULL, acceptor_main, NULL) != 0) {
            fprintf(stderr, "shop: cannot start the HTTP acceptor thread\n");
            workers_stop();
            loops_stop_join();
            acceptor_stop_join();
            return -1;
        }
        acceptor_running = true;
        return bound;
    }
    /* A thread per connection: a bounded stack; libmicrohttpd listens. */
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_THREAD_STACK_SIZE, 1024 * 1024, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, 60, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, 4096, NULL},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)url_unescape, NULL},
        /* Without MHD_OPTION_LISTENING_ADDRESS_REUSE libmicrohttpd sets
         * SO_REUSEADDR (a restart binds at once); with it set to 1 it also
         * set SO_REUSEPORT, and a second shop on the same port started and
         * shared the connections instead of failing. */
        {MHD_OPTION_SOCK_ADDR, 0, &ss},
        {MHD_OPTION_END, 0, NULL},
    };
    daemon_ = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, NULL,
                               MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!daemon_) {
        fprintf(stderr, "shop: cannot listen on %s:%d (in use, or not allowed)\n", host, port);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    return info ? (int)info->port : port;
}

void shop_http_quiesce(void)
{
    atomic_store(&stopping, 1);
}

void shop_http_stop(void)
{
    /* Every queued request runs to its end and its connection is resumed
     * first: libmicrohttpd refuses to stop with a connection still
     * suspended. (When main's wait for requests in flight ran out, an answer
     * a worker finishes now may not reach its client: the daemon closes the
     * connection; the work itself is done once.) A request that reaches
     * hand_off after this runs on its HTTP thread. */
    acceptor_stop_join(); /* no new connections */
    workers_stop();       /* their answers go out through the loops, still running */
    loops_stop_join();    /* each runs its last batch and sends what it resumed */
    if (daemon_)
        MHD_stop_daemon(daemon_);
    daemon_ = NULL;
}
