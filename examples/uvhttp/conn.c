/*
 * conn.c - one HTTP/1.1 connection of the libuv example: read a request,
 * route it, answer GET /users/{id} through dbk_async, write, and go on with
 * the next request of a keep-alive connection.
 *
 * Everything here runs on the loop thread and never blocks: the database
 * read is submitted with dbk_async_query() and answered in its completion
 * callback, which dbk_async_process() (through the libuv watcher) runs on
 * this same thread. The reads of one loop iteration are coalesced into one
 * statement (below, "coalescing"). A connection answers one request at a time: it stops
 * reading while a request is in the database and resumes after the answer
 * is written, so pipelined requests wait in the buffer in order and a slow
 * database pushes back on the clients (nothing queues without bound). When
 * the async queue is full (DBK_EBUSY) the answer is 503 at once.
 *
 * Deliberately small: no chunked bodies (501), requests up to 8 KiB of
 * header (431 past it), bodies read and ignored up to the same size (413
 * past it).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "uvhttp.h"

#define UVH_BUF 8192

struct uvh_conn {
    uv_tcp_t tcp;
    uvh_conn *prev, *next;
    char in[UVH_BUF];
    size_t inlen;
    size_t consumed; /* bytes of `in` that the request being answered used */
    bool busy;       /* a request is being answered */
    bool keep_alive; /* of the request being answered */
    bool closing;
    uv_write_t wr;
    char *out; /* the answer being written (malloc'd) */
};

static void conn_unlink(uvh_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        uvh.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uvh.nconns--;
}

static void on_closed(uv_handle_t *h)
{
    uvh_conn *c = h->data;
    free(c->out);
    free(c);
    if (uvh.stopping && uvh.nconns == 0)
        uvh_shutdown_connections(); /* the last one: let the loop end */
}

static void conn_close(uvh_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    conn_unlink(c);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void try_request(uvh_conn *c);
static void start_reading(uvh_conn *c);

static void on_written(uv_write_t *w, int status)
{
    uvh_conn *c = w->data;
    free(c->out);
    c->out = NULL;
    c->busy = false;
    if (status < 0 || !c->keep_alive || uvh.stopping) {
        conn_close(c);
        return;
    }
    /* The next request of a keep-alive connection: already buffered, or
     * read on. */
    memmove(c->in, c->in + c->consumed, c->inlen - c->consumed);
    c->inlen -= c->consumed;
    c->consumed = 0;
    try_request(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* Writes status + JSON body (consumed: json_decref). */
static void reply_json(uvh_conn *c, int status, json_t *j)
{
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
    }
    size_t blen = body ? strlen(body) : 0;
    size_t cap = blen + 256;
    c->out = malloc(cap);
    if (!c->out) {
        free(body);
        conn_close(c);
        return;
    }
    int n = snprintf(c->out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "%s%s\r\n",
                     status, reason(status), blen, status == 405 ? "Allow: GET\r\n" : "",
                     c->keep_alive && !uvh.stopping ? "" : "Connection: close\r\n");
    memcpy(c->out + n, body, blen);
    free(body);
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)((size_t)n + blen));
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
        free(c->out);
        c->out = NULL;
        conn_close(c);
    }
}

static void reply_error(uvh_conn *c, int status, const char *code, const char *msg)
{
    reply_json(c, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

/* ---- GET /users/{id} ---- */

static json_t *time_json(const dbk_result *r, size_t row, int col)
{
    int64_t usec;
    char buf[40];
    if (dbk_result_get_timestamp(r, row, col, &usec, NULL) != DBK_OK ||
        dbk_timestamp_format(usec, buf, sizeof buf) != DBK_OK)
        return json_null();
    if (strlen(buf) > 10 && buf[10] == ' ')
        buf[10] = 'T'; /* ISO 8601, as the shop answers */
    return json_string(buf);
}

static json_t *text_json(const dbk_result *r, size_t row, int col)
{
    const char *s = NULL;
    if (dbk_result_is_null(r, row, col) || dbk_result_get_text(r, row, col, &s, NULL, NULL) != DBK_OK)
        return json_null();
    return json_string(s);
}

/* The answer for row `row` of r (a row of SELECT id, name, email, status,
 * created_at). */
static void reply_user(uvh_conn *c, const dbk_result *r, size_t row)
{
    int64_t id = 0;
    dbk_result_get_int64(r, row, 0, &id, NULL);
    reply_json(c, 200,
               json_pack("{s:I,s:o,s:o,s:o,s:o}", "id", (json_int_t)id, "name",
                         text_json(r, row, 1), "email", text_json(r, row, 2), "status",
                         text_json(r, row, 3), "created_at", time_json(r, row, 4)));
}

/* The answer to a lookup whose statement failed. */
static void reply_failed(uvh_conn *c, dbk_rc rc)
{
    bool unavailable = rc == DBK_EPOOL_TIMEOUT || rc == DBK_EUNAVAILABLE ||
                       rc == DBK_ECONN_LOST || rc == DBK_EPOOL_CLOSED || rc == DBK_ETIMEOUT ||
                       rc == DBK_ECANCELLED || rc == DBK_EBUSY;
    if (unavailable)
        reply_error(c, 503, "unavailable", "the database is unavailable, retry later");
    else
        reply_error(c, 500, "internal", "internal error");
}

/* The completion of one user's query (batching off): runs on the loop
 * thread. */
static void on_user(void *ctx, dbk_async_done *d)
{
    uvh_conn *c = ctx;
    if (d->rc != DBK_OK) {
        fprintf(stderr, "uvhttp: %s: %s\n", dbk_rc_name(d->rc), d->error->message);
        reply_failed(c, d->rc);
    } else if (dbk_result_nrows(d->result) == 0) {
        reply_error(c, 404, "not_found", "user not found");
    } else {
        reply_user(c, d->result, 0);
    }
}

static const char USER_SQL[] = "SELECT id, name, email, status, created_at FROM users ";

static void get_user_alone(uvh_conn *c, int64_t id)
{
    dbk_value p = dbk_int64(id);
    dbk_error err;
    char sql[128];
    snprintf(sql, sizeof sql, "%sWHERE id = $1", USER_SQL);
    dbk_rc rc = dbk_async_query(uvh.async, sql, &p, 1, 0, on_user, c, NULL, &err);
    uvh.statements += rc == DBK_OK;
    if (rc != DBK_OK)
        reply_failed(c, rc);
}

/* ---- coalescing: one statement for the lookups of one loop iteration ----
 *
 * A request for a user does not send its own statement: it joins
 * uvh.batch, and the check handle (run by libuv once per iteration, after
 * the callbacks of every ready socket) sends the whole batch as one
 * statement, id = ANY($1) on PostgreSQL, id IN (SELECT value FROM
 * json_each($1)) on SQLite. Its one completion answers each request from
 * its own row (404 when its id has none; the statement's error for all
 * when it fails). Under load an iteration gathers many requests, so they
 * share one round trip, one worker hand-off and one wake of the loop; a
 * lone request waits for nothing (the check phase of its own iteration
 * sends it). */

#define BATCH_MAX 256 /* lookups per statement; a fuller batch is sent at once */

/* A user as the cached repository reads it. */
struct uvh_user {
    int64_t id;
    const char *name, *email, *status;
    int64_t created_at;
};

static const dbk_field user_fields[] = {
    DBK_FIELD(struct uvh_user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct uvh_user, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct uvh_user, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct uvh_user, status, "status", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct uvh_user, created_at, "created_at", DBK_TYPE_TIMESTAMP, 0),
};
const dbk_entity uvh_user_entity = DBK_ENTITY_PLAIN("users", struct uvh_user, user_fields);

struct uvh_batch {
    size_t n;
    uvh_conn *conn[BATCH_MAX];
    int64_t id[BATCH_MAX];
    /* with a cache: filled on the worker by dbk_cached_repo_find_by_ids */
    bool ran;
    dbk_arena *arena;
    struct uvh_user row[BATCH_MAX];
    dbk_rc rc[BATCH_MAX];
};

struct id_row {
    int64_t id;
    size_t row;
};

static int cmp_id_row(const void *a, const void *b)
{
    int64_t x = ((const struct id_row *)a)->id, y = ((const struct id_row *)b)->id;
    return (x > y) - (x < y);
}

static void on_batch(void *ctx, dbk_async_done *d)
{
    uvh_batch *b = ctx;
    if (d->rc != DBK_OK) {
        fprintf(stderr, "uvhttp: %s: %s (%zu lookups)\n", dbk_rc_name(d->rc), d->error->message,
                b->n);
        for (size_t i = 0; i < b->n; i++)
            reply_failed(b->conn[i], d->rc);
        free(b);
        return;
    }
    /* Rows by id (each id at most once: it is the primary key), then each
     * lookup finds its own. */
    const dbk_result *r = d->result;
    size_t nrows = dbk_result_nrows(r);
    struct id_row rows[BATCH_MAX];
    size_t m = 0;
    for (size_t k = 0; k < nrows && m < BATCH_MAX; k++)
        if (dbk_result_get_int64(r, k, 0, &rows[m].id, NULL) == DBK_OK)
            rows[m++].row = k;
    qsort(rows, m, sizeof rows[0], cmp_id_row);
    for (size_t i = 0; i < b->n; i++) {
        struct id_row key = {b->id[i], 0};
        const struct id_row *hit = bsearch(&key, rows, m, sizeof rows[0], cmp_id_row);
        if (hit)
            reply_user(b->conn[i], r, hit->row);
        else
            reply_error(b->conn[i], 404, "not_found", "user not found");
    }
    free(b);
}

/* With a cache: the batch's users through the cached repository, on a
 * worker (the rows it holds in one round trip, the others loaded). */
static dbk_rc find_cached(dbk_db *db, void *ctx, dbk_error *err)
{
    uvh_batch *b = ctx;
    dbk_value ids[BATCH_MAX];
    void *outs[BATCH_MAX];
    for (size_t i = 0; i < b->n; i++) {
        ids[i] = dbk_int64(b->id[i]);
        outs[i] = &b->row[i];
    }
    b->arena = dbk_arena_new(0);
    if (!b->arena) {
        memset(err, 0, sizeof *err);
        err->code = DBK_ENOMEM;
        snprintf(err->message, sizeof err->message, "out of memory");
        return DBK_ENOMEM;
    }
    b->ran = true;
    return dbk_cached_repo_find_by_ids(uvh.users, db, b->n, ids, outs, b->rc, b->arena, err);
}

static void on_batch_cached(void *ctx, dbk_async_done *d)
{
    uvh_batch *b = ctx;
    if (d->rc != DBK_OK)
        fprintf(stderr, "uvhttp: %s: %s (%zu lookups)\n", dbk_rc_name(d->rc), d->error->message,
                b->n);
    for (size_t i = 0; i < b->n; i++) {
        dbk_rc rc = b->ran ? b->rc[i] : d->rc;
        const struct uvh_user *u = &b->row[i];
        if (rc == DBK_ENOT_FOUND) {
            reply_error(b->conn[i], 404, "not_found", "user not found");
        } else if (rc != DBK_OK) {
            reply_failed(b->conn[i], rc);
        } else {
            char ts[40];
            json_t *created = json_null();
            if (dbk_timestamp_format(u->created_at, ts, sizeof ts) == DBK_OK) {
                if (strlen(ts) > 10 && ts[10] == ' ')
                    ts[10] = 'T';
                created = json_string(ts);
            }
            reply_json(b->conn[i], 200,
                       json_pack("{s:I,s:s?,s:s?,s:s?,s:o}", "id", (json_int_t)u->id, "name",
                                 u->name, "email", u->email, "status", u->status, "created_at",
                                 created));
        }
    }
    dbk_arena_free(b->arena);
    free(b);
}

/* Submits batch b: one statement, or one cached lookup. */
static dbk_rc submit_batch(uvh_batch *b, dbk_error *err)
{
    if (uvh.users)
        return dbk_async_call(uvh.async, find_cached, 0, on_batch_cached, b, NULL, err);
    bool pg = dbk_db_engine(dbk_pool_db(uvh.pool)) == DBK_ENGINE_POSTGRES;
    char ids[BATCH_MAX * 21 + 3]; /* "{" or "[", ids of up to 20 characters and commas, "}" or "]" */
    size_t n = 0;
    ids[n++] = pg ? '{' : '[';
    for (size_t i = 0; i < b->n; i++)
        n += (size_t)snprintf(ids + n, sizeof ids - n, "%s%lld", i ? "," : "", (long long)b->id[i]);
    ids[n++] = pg ? '}' : ']';
    ids[n] = '\0';
    char sql[160];
    snprintf(sql, sizeof sql, "%s%s", USER_SQL,
             pg ? "WHERE id = ANY($1::bigint[])" : "WHERE id IN (SELECT value FROM json_each($1))");
    dbk_value p = dbk_text(ids);
    return dbk_async_query(uvh.async, sql, &p, 1, 0, on_batch, b, NULL, err);
}

/* Sends the gathered lookups; when the submit fails every request of the
 * batch gets its error at once. */
static void send_batch(void)
{
    uvh_batch *b = uvh.batch;
    uvh.batch = NULL;
    if (!b)
        return;
    dbk_error err;
    dbk_rc rc = submit_batch(b, &err);
    if (rc != DBK_OK) {
        for (size_t i = 0; i < b->n; i++)
            reply_failed(b->conn[i], rc);
        free(b);
        return;
    }
    uvh.statements++;
}

static void on_check(uv_check_t *h)
{
    (void)h;
    send_batch();
}

int uvh_batching_start(void)
{
    int r = uv_check_init(uvh.loop, &uvh.flush);
    if (r != 0)
        return r;
    r = uv_check_start(&uvh.flush, on_check);
    if (r != 0) {
        uv_close((uv_handle_t *)&uvh.flush, NULL);
        return r;
    }
    uv_unref((uv_handle_t *)&uvh.flush); /* it alone does not keep the loop running */
    return 0;
}

static void get_user(uvh_conn *c, int64_t id)
{
    uvh.lookups++;
    if (!uvh.batching && !uvh.users) {
        get_user_alone(c, id);
        return;
    }
    if (!uvh.batch && !(uvh.batch = calloc(1, sizeof *uvh.batch))) {
        reply_error(c, 500, "internal", "out of memory");
        return;
    }
    uvh.batch->conn[uvh.batch->n] = c;
    uvh.batch->id[uvh.batch->n++] = id;
    /* batching off (with a cache): each lookup is a batch of its own */
    if (!uvh.batching || uvh.batch->n == BATCH_MAX)
        send_batch();
}

/* ---- parsing and routing ---- */

/* The shop's id rules: not an integer -> invalid_id; an integer that is no
 * id (0, negative, above INT64_MAX) -> out_of_range. */
static void route_user(uvh_conn *c, const char *s, size_t n)
{
    size_t i = 0;
    bool neg = n > 0 && s[0] == '-';
    if (neg)
        i = 1;
    if (i == n) {
        reply_error(c, 400, "invalid_id", "the id must be a positive integer");
        return;
    }
    uint64_t v = 0;
    bool big = false;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            reply_error(c, 400, "invalid_id", "the id must be a positive integer");
            return;
        }
        if (v > (UINT64_MAX - 9) / 10)
            big = true;
        else
            v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (neg || big || v == 0 || v > (uint64_t)INT64_MAX) {
        reply_error(c, 400, "out_of_range", "the id is out of range: 1..9223372036854775807");
        return;
    }
    get_user(c, (int64_t)v);
}

static bool header_is(const char *line, size_t len, const char *name, const char **value)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return false;
    const char *v = line + nl + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    *value = v;
    return true;
}

/* Parses one complete request at the front of the buffer, if there is one,
 * and answers it. */
static void try_request(uvh_conn *c)
{
    if (c->busy || c->closing)
        return;
    char *end = NULL;
    for (size_t i = 0; i + 3 < c->inlen; i++)
        if (memcmp(c->in + i, "\r\n\r\n", 4) == 0) {
            end = c->in + i;
            break;
        }
    if (!end) {
        if (c->inlen == UVH_BUF) {
            c->busy = true;
            c->keep_alive = false;
            uv_read_stop((uv_stream_t *)&c->tcp);
            reply_error(c, 431, "header_too_large", "request header over 8 KiB");
            return;
        }
        start_reading(c); /* UV_EALREADY when reading: fine */
        return;
    }
    /* One request: stop reading until it is answered. */
    c->busy = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    *end = '\0';
    size_t head = (size_t)(end - c->in) + 4;
    /* Request line. */
    char *line_end = strstr(c->in, "\r\n");
    size_t llen = line_end ? (size_t)(line_end - c->in) : strlen(c->in);
    char *sp1 = memchr(c->in, ' ', llen);
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', llen - (size_t)(sp1 + 1 - c->in)) : NULL;
    bool http10 = sp2 && strncmp(sp2 + 1, "HTTP/1.0", 8) == 0;
    c->keep_alive = !http10;
    if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        c->keep_alive = false;
        c->consumed = c->inlen;
        reply_error(c, 400, "bad_request", "malformed request line");
        return;
    }
    /* Headers. */
    size_t body = 0;
    bool chunked = false;
    for (char *h = line_end ? line_end + 2 : NULL; h && *h;) {
        char *e = strstr(h, "\r\n");
        size_t hl = e ? (size_t)(e - h) : strlen(h);
        const char *v;
        if (header_is(h, hl, "Connection", &v)) {
            if (strncasecmp(v, "close", 5) == 0)
                c->keep_alive = false;
            else if (strncasecmp(v, "keep-alive", 10) == 0)
                c->keep_alive = true;
        } else if (header_is(h, hl, "Content-Length", &v)) {
            body = (size_t)strtoull(v, NULL, 10);
        } else if (header_is(h, hl, "Transfer-Encoding", &v)) {
            chunked = true;
        }
        h = e ? e + 2 : NULL;
    }
    if (chunked || body > UVH_BUF - head) {
        c->keep_alive = false;
        c->consumed = c->inlen;
        reply_error(c, chunked ? 501 : 413, chunked ? "not_implemented" : "body_too_large",
                    chunked ? "chunked request bodies are not supported"
                            : "request body over 8 KiB");
        return;
    }
    if (head + body > c->inlen) {
        /* The body has not arrived yet: read on, parse again. */
        *end = '\r';
        c->busy = false;
        start_reading(c);
        return;
    }
    c->consumed = head + body;
    /* Route: GET /users/{id} (a query string is ignored). */
    const char *path = sp1 + 1;
    size_t plen = (size_t)(sp2 - path);
    const char *q = memchr(path, '?', plen);
    if (q)
        plen = (size_t)(q - path);
    bool get = (size_t)(sp1 - c->in) == 3 && memcmp(c->in, "GET", 3) == 0;
    if (plen == 7 && memcmp(path, "/health", 7) == 0) {
        /* Liveness, as the shop answers it (benchmark scripts wait on it). */
        if (!get)
            reply_error(c, 405, "method_not_allowed", "only GET is allowed here");
        else
            reply_json(c, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (plen > 7 && memcmp(path, "/users/", 7) == 0 && !memchr(path + 7, '/', plen - 7)) {
        if (!get)
            reply_error(c, 405, "method_not_allowed", "only GET is allowed here");
        else
            route_user(c, path + 7, plen - 7);
        return;
    }
    reply_error(c, 404, "not_found", "no such endpoint");
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    uvh_conn *c = h->data;
    *buf = uv_buf_init(c->in + c->inlen, (unsigned)(UVH_BUF - c->inlen));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    uvh_conn *c = s->data;
    if (n < 0) {
        if (!c->busy)
            conn_close(c);
        return;
    }
    c->inlen += (size_t)n;
    try_request(c);
}

static void start_reading(uvh_conn *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

void uvh_on_connection(uv_stream_t *server, int status)
{
    if (status < 0 || uvh.stopping)
        return;
    uvh_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    uv_tcp_init(uvh.loop, &c->tcp);
    c->tcp.data = c;
    c->next = uvh.conns;
    if (uvh.conns)
        uvh.conns->prev = c;
    uvh.conns = c;
    uvh.nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    start_reading(c);
}

void uvh_shutdown_connections(void)
{
    for (uvh_conn *c = uvh.conns, *next; c; c = next) {
        next = c->next;
        if (!c->busy)
            conn_close(c);
        /* a busy one closes after its answer (on_written sees stopping) */
    }
    if (uvh.nconns == 0 && !uv_is_closing((uv_handle_t *)&uvh.watcher.poll)) {
        dbk_async_uv_stop(&uvh.watcher);
        if (uvh.batching && !uv_is_closing((uv_handle_t *)&uvh.flush))
            uv_close((uv_handle_t *)&uvh.flush, NULL);
    }
}
