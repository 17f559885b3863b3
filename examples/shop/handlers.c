/*
 * handlers.c - the shop's endpoints and its router.
 *
 * Each handler validates its input completely before touching the
 * database: unknown fields, wrong JSON types, out-of-range numbers, bad
 * e-mail addresses and over-long strings are 400s with a code naming the
 * problem, so a database error reaching the client is always a real one
 * (a conflict, a missing row, an outage). Values only ever travel as
 * parameters: no handler builds SQL from input.
 *
 * Users go through the cached repository (cache.h) when a cache is
 * configured: reads are cache-aside, and PATCH / DELETE invalidate the id
 * and e-mail keys after the write, so a GET after a PATCH never sees the
 * old row. Orders and transfers are closures run by dbk_transaction() with
 * its automatic retry; the closures only touch the database, so running
 * them again is safe. A closure that decides to give up (unknown product,
 * not enough stock or money) records why in its context and returns a
 * non-OK code, which rolls everything back.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "shop.h"

/* ---- small helpers ---- */

/* The bounds the API puts on integers. Ids are the tables' BIGINT keys, so
 * every id from 1 to INT64_MAX is a valid one (one no row has is a 404). */
#define SHOP_MAX_ID INT64_MAX
#define SHOP_MAX_OFFSET 1000000000LL
#define SHOP_MAX_QUANTITY 10000

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void random_hex(char *out, size_t nbytes)
{
    unsigned char raw[16];
    if (nbytes > sizeof raw)
        nbytes = sizeof raw;
    randombytes_buf(raw, nbytes);
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* Rejects any member not in `allowed`. */
static bool only_fields(shop_resp *rs, json_t *o, const char *const *allowed, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        (void)v;
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            char shown[64];
            snprintf(shown, sizeof shown, "%s", key);
            for (char *p = shown; *p; p++)
                if ((unsigned char)*p < 0x20)
                    *p = '?';
            shop_reply_error(rs, 400, "unknown_field", "unknown field \"%s\"", shown);
            return false;
        }
    }
    return true;
}

/* 1: present and valid (*out set), 0: absent and optional, -1: replied. */
static int get_str(shop_resp *rs, json_t *o, const char *name, bool required, size_t minlen,
                   size_t maxlen, bool multiline, const char **out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (!required)
            return 0;
        shop_reply_error(rs, 400, "missing_field", "field \"%s\" is required", name);
        return -1;
    }
    if (!json_is_string(v)) {
        shop_reply_error(rs, 400, "invalid_type", "field \"%s\" must be a string", name);
        return -1;
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (len < minlen || len > maxlen || strlen(s) != len) {
        shop_reply_error(rs, 400, "invalid_value", "field \"%s\" must be %zu to %zu bytes", name,
                         minlen, maxlen);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && !(multiline && (c == '\n' || c == '\r' || c == '\t'))) || c == 0x7F) {
            shop_reply_error(rs, 400, "invalid_value",
                             "field \"%s\" contains a control character", name);
            return -1;
        }
    }
    *out = s;
    return 1;
}

static int get_int(shop_resp *rs, json_t *o, const char *name, bool required, int64_t min,
                   int64_t max, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (!required)
            return 0;
        shop_reply_error(rs, 400, "missing_field", "field \"%s\" is required", name);
        return -1;
    }
    if (!json_is_integer(v)) {
        shop_reply_error(rs, 400, "invalid_type", "field \"%s\" must be an integer", name);
        return -1;
    }
    json_int_t n = json_integer_value(v);
    if (n < min || n > max) {
        shop_reply_error(rs, 400, "out_of_range", "field \"%s\" is out of range: %lld..%lld", name,
                         (long long)min, (long long)max);
        return -1;
    }
    *out = (int64_t)n;
    return 1;
}

/* A plausible address, lower-cased into the arena: local@domain.tld, no
 * spaces or control characters, at most 254 bytes. */
static const char *normalize_email(dbk_arena *a, const char *s, size_t len)
{
    if (len < 3 || len > 254 || !shop_utf8_ok(s, len))
        return NULL;
    const char *at = memchr(s, '@', len);
    if (!at || at == s || memchr(at + 1, '@', len - (size_t)(at - s) - 1))
        return NULL;
    const char *dom = at + 1;
    size_t domlen = len - (size_t)(dom - s);
    if (domlen < 3 || !memchr(dom, '.', domlen) || dom[0] == '.' || dom[domlen - 1] == '.')
        return NULL;
    char *out = dbk_arena_strndup(a, s, len);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c <= 0x20 || c == 0x7F || c == '"' || c == '<' || c == '>' || c == ',' ||
            c == ';' || c == '\\')
            return NULL;
        if (c < 0x80)
            out[i] = (char)tolower(c);
    }
    return out;
}

static const char *const user_statuses[] = {"active", "suspended", "closed"};

static bool valid_status(const char *s)
{
    for (size_t i = 0; i < sizeof user_statuses / sizeof user_statuses[0]; i++)
        if (strcmp(s, user_statuses[i]) == 0)
            return true;
    return false;
}

/* Why a transaction closure gave up: the status, code and message the
 * client gets. Decided inside the closure, which resets it first since a
 * retried attempt may succeed; status 0 means it did not give up. */
typedef struct tx_fail {
    int status;
    const char *code;
    char msg[160];
} tx_fail;

/* Records why the closure gives up (the closure then returns non-OK). */
static void tx_fail_set(tx_fail *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void tx_fail_set(tx_fail *f, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->status = status;
    f->code = code;
}

/* Runs closure fn in a transaction with the automatic retry (each retry
 * counted in /metrics) and answers a failure: the closure's own reason when
 * it recorded one in *f, else the mapped rc with 404s naming `what`. True
 * when the transaction committed and the caller is to reply. */
static bool run_tx(shop_resp *rs, dbk_tx_fn fn, void *ctx, tx_fail *f, const char *what)
{
    dbk_tx_opts o;
    memset(&o, 0, sizeof o);
    o.on_retry = shop_on_tx_retry;
    dbk_error err;
    dbk_rc rc = dbk_transaction(shop.db, fn, ctx, &o, &err);
    if (rc == DBK_OK)
        return true;
    if (f->status)
        shop_reply_error(rs, f->status, f->code, "%s", f->msg);
    else
        shop_reply_rc(rs, rc, &err, what);
    return false;
}

/* The reply path every handler ends a database call with: when rc is not
 * DBK_OK, answers with the mapped error (404s name `what`) and returns true,
 * so the caller just returns. Handlers map the codes they expect (a unique
 * or foreign-key violation) themselves before calling this. */
static bool reply_failed(shop_resp *rs, dbk_rc rc, const dbk_error *err, const char *what)
{
    if (rc == DBK_OK)
        return false;
    shop_reply_rc(rs, rc, err, what);
    return true;
}

/* Answers a failure the handler expects and names itself (a unique or
 * foreign-key violation): when rc is `expected`, replies `status` with
 * `code` and `msg` and returns true. */
static bool reply_expected(shop_resp *rs, dbk_rc rc, dbk_rc expected, int status, const char *code,
                           const char *msg)
{
    if (rc != expected)
        return false;
    shop_reply_error(rs, status, code, "%s", msg);
    return true;
}

/* Reads row `id` of entity e straight from the repository into *row (a
 * struct of the entity's type, allocated by the caller); false when it
 * failed and the error has been answered, 404 naming `what`. */
static bool find_or_reply(shop_req *rq, shop_resp *rs, dbk_entity *e, int64_t id,
                          void *row, const char *what)
{
    dbk_error err;
    dbk_rc rc = dbk_repo_find_by_id(shop.db, e, dbk_int64(id), row, rq->arena, &err);
    return !reply_failed(rs, rc, &err, what);
}

/* ---- users: cached when a cache is configured ---- */

/* Reads user `id`, through the cache when there is one; false when it
 * failed and the error has been answered, 404 naming `what` ("user", or the
 * role the user plays in the request: "author", "owner"). */
static bool user_find(shop_req *rq, shop_resp *rs, int64_t id, shop_user *u, const char *what)
{
    dbk_error err;
    dbk_rc rc = shop.users
                    ? dbk_cached_find_by_id(shop.users, shop.db, dbk_int64(id), u, rq->arena, &err)
                    : dbk_repo_find_by_id(shop.db, &shop_user_entity, dbk_int64(id), u, rq->arena,
                                          &err);
    return !reply_failed(rs, rc, &err, what);
}

/* The posts of user `user_id` in id order: every one of them, or when
 * `capped` at most one page of DBK_REPO_MAX_LIMIT. */
static dbk_rc user_posts_find(shop_req *rq, int64_t user_id, bool capped, dbk_list *list,
                              dbk_error *err)
{
    dbk_filter f = DBK_WHERE("user_id", DBK_EQ, dbk_int64(user_id));
    dbk_query q;
    memset(&q, 0, sizeof q);
    q.filters = &f;
    q.nfilters = 1;
    q.order_by = "id";
    q.has_limit = capped;
    q.limit = capped ? DBK_REPO_MAX_LIMIT : 0;
    return dbk_repo_find_many(shop.db, &shop_post_entity, &q, list, rq->arena, err);
}

static void users_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"name", "email", "password"};
    if (!only_fields(rs, rq->body, allowed, 3))
        return;
    const char *name, *email_in, *password;
    if (get_str(rs, rq->body, "name", true, 1, 200, false, &name) < 0 ||
        get_str(rs, rq->body, "email", true, 3, 254, false, &email_in) < 0 ||
        get_str(rs, rq->body, "password", true, 8, 1024, false, &password) < 0)
        return;
    const char *email = normalize_email(rq->arena, email_in, strlen(email_in));
    if (!email) {
        shop_reply_error(rs, 400, "invalid_value", "field \"email\" is not an e-mail address");
        return;
    }
    char hash[crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str(hash, password, strlen(password), shop.pw_ops, shop.pw_mem) != 0) {
        shop_reply_error(rs, 503, "unavailable", "password hashing ran out of memory");
        return;
    }
    shop_user in = {0}, out;
    in.name = name;
    in.email = email;
    in.password_hash = hash;
    in.status = "active";
    dbk_error err;
    dbk_rc rc = shop.users ? dbk_cached_create(shop.users, shop.db, &in, &out, rq->arena, &err)
                           : dbk_repo_create(shop.db, &shop_user_entity, &in, &out, rq->arena,
                                             &err);
    sodium_memzero(hash, sizeof hash);
    if (reply_expected(rs, rc, DBK_EUNIQUE, 409, "email_taken",
                       "a user with this e-mail already exists"))
        return;
    if (reply_failed(rs, rc, &err, "user"))
        return;
    shop_reply_json(rs, 201, shop_user_json(&out, false));
}

static void users_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_user u;
    if (user_find(rq, rs, id, &u, "user"))
        shop_reply_json(rs, 200, shop_user_json(&u, false));
}

static void users_by_email(shop_req *rq, shop_resp *rs)
{
    const char *q = shop_query_arg(rq, "email");
    if (!q || !*q) {
        shop_reply_error(rs, 400, "missing_parameter", "query parameter \"email\" is required");
        return;
    }
    const char *email = normalize_email(rq->arena, q, strlen(q));
    if (!email) {
        shop_reply_error(rs, 400, "invalid_value", "\"email\" is not an e-mail address");
        return;
    }
    shop_user u;
    dbk_error err;
    dbk_rc rc = shop.users ? dbk_cached_find_by(shop.users, shop.db, "email", dbk_text(email), &u,
                                                rq->arena, &err)
                           : dbk_repo_find_by(shop.db, &shop_user_entity, "email",
                                              dbk_text(email), &u, rq->arena, &err);
    if (reply_failed(rs, rc, &err, "user"))
        return;
    shop_reply_json(rs, 200, shop_user_json(&u, false));
}

/* Query argument `name` as an integer in [min, max] into *out; absent
 * leaves *out (the default) alone. False when it has been answered: 400
 * invalid_parameter for anything that is not an integer ("", "1abc", "+1",
 * "01"), 400 out_of_range for an integer outside the bounds. */
static bool query_int(shop_req *rq, shop_resp *rs, const char *name, int64_t min, int64_t max,
                      int64_t *out)
{
    const char *v = shop_query_arg(rq, name);
    if (!v)
        return true;
    switch (shop_parse_int(v, strlen(v), min, max, out)) {
    case SHOP_INT_OK:
        return true;
    case SHOP_INT_RANGE:
        shop_reply_error(rs, 400, "out_of_range", "\"%s\" is out of range: %lld..%lld", name,
                         (long long)min, (long long)max);
        return false;
    default:
        shop_reply_error(rs, 400, "invalid_parameter", "\"%s\" must be an integer in %lld..%lld",
                         name, (long long)min, (long long)max);
        return false;
    }
}

static void users_list(shop_req *rq, shop_resp *rs)
{
    int64_t limit = 20, offset = 0;
    if (!query_int(rq, rs, "limit", 1, 100, &limit) ||
        !query_int(rq, rs, "offset", 0, SHOP_MAX_OFFSET, &offset))
        return;
    const char *order = shop_query_arg(rq, "order");
    static const char *const orders[] = {"created_at", "-created_at", "name", "-name"};
    if (!order)
        order = "-created_at";
    bool known = false;
    for (size_t i = 0; i < 4 && !known; i++)
        known = strcmp(order, orders[i]) == 0;
    if (!known) {
        shop_reply_error(rs, 400, "invalid_parameter",
                         "\"order\" must be created_at, -created_at, name or -name");
        return;
    }
    const char *include = shop_query_arg(rq, "include");
    bool with_posts = false;
    if (include) {
        if (strcmp(include, "posts") != 0) {
            shop_reply_error(rs, 400, "invalid_parameter", "\"include\" can only be posts");
            return;
        }
        with_posts = true;
    }
    /* include_mode=loop loads the posts the N+1 way (one query per user),
     * the way the seed's Express code does it, so the diagnostics report can
     * be seen in the log and in dbkit_n_plus_one_total. */
    const char *mode = shop_query_arg(rq, "include_mode");
    bool loop = false;
    if (mode) {
        if (!with_posts || (strcmp(mode, "loop") != 0 && strcmp(mode, "batch") != 0)) {
            shop_reply_error(rs, 400, "invalid_parameter",
                             "\"include_mode\" is batch or loop, with include=posts");
            return;
        }
        loop = strcmp(mode, "loop") == 0;
    }
    const char *status = shop_query_arg(rq, "status");
    dbk_filter filter;
    if (status) {
        if (!valid_status(status)) {
            shop_reply_error(rs, 400, "invalid_parameter",
                             "\"status\" must be active, suspended or closed");
            return;
        }
        filter = DBK_WHERE("status", DBK_EQ, dbk_text(status));
    }
    static const char *const inc[] = {"posts"};
    dbk_query q;
    memset(&q, 0, sizeof q);
    q.filters = status ? &filter : NULL;
    q.nfilters = status ? 1 : 0;
    q.order_by = order;
    q.limit = limit;
    q.has_limit = true;
    q.offset = offset;
    q.count = DBK_COUNT_EXACT;
    if (with_posts && !loop) {
        q.include = inc;
        q.ninclude = 1;
    }
    dbk_list list;
    dbk_error err;
    dbk_rc rc = dbk_repo_find_many(shop.db, &shop_user_entity, &q, &list, rq->arena, &err);
    if (reply_failed(rs, rc, &err, "user"))
        return;
    shop_user *items = list.items;
    for (size_t i = 0; loop && i < list.count; i++) {
        dbk_list posts;
        rc = user_posts_find(rq, items[i].id, false, &posts, &err);
        if (rc != DBK_OK) {
            shop_reply_rc(rs, rc, &err, "post");
            return;
        }
        items[i].posts = posts.items;
        items[i].nposts = posts.count;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < list.count; i++)
        json_array_append_new(arr, shop_user_json(&items[i], with_posts));
    shop_reply_json(rs, 200,
                    json_pack("{s:o,s:I,s:I,s:I}", "users", arr, "total", (json_int_t)list.total,
                              "limit", (json_int_t)limit, "offset", (json_int_t)offset));
}

static void users_patch(shop_req *rq, shop_resp *rs, int64_t id)
{
    static const char *const allowed[] = {"name", "email", "status"};
    if (!only_fields(rs, rq->body, allowed, 3))
        return;
    shop_user in = {0};
    const char *fields[3];
    size_t nf = 0;
    const char *name, *email_in, *status;
    int r;
    if ((r = get_str(rs, rq->body, "name", false, 1, 200, false, &name)) < 0)
        return;
    if (r) {
        in.name = name;
        fields[nf++] = "name";
    }
    if ((r = get_str(rs, rq->body, "email", false, 3, 254, false, &email_in)) < 0)
        return;
    if (r) {
        in.email = normalize_email(rq->arena, email_in, strlen(email_in));
        if (!in.email) {
            shop_reply_error(rs, 400, "invalid_value", "field \"email\" is not an e-mail address");
            return;
        }
        fields[nf++] = "email";
    }
    if ((r = get_str(rs, rq->body, "status", false, 1, 32, false, &status)) < 0)
        return;
    if (r) {
        if (!valid_status(status)) {
            shop_reply_error(rs, 400, "invalid_value",
                             "field \"status\" must be active, suspended or closed");
            return;
        }
        in.status = status;
        fields[nf++] = "status";
    }
    if (nf == 0) {
        shop_reply_error(rs, 400, "missing_field", "give at least one of name, email, status");
        return;
    }
    shop_user out;
    dbk_error err;
    dbk_rc rc = shop.users ? dbk_cached_update(shop.users, shop.db, dbk_int64(id), &in, fields, nf,
                                               &out, rq->arena, &err)
                           : dbk_repo_update(shop.db, &shop_user_entity, dbk_int64(id), &in,
                                             fields, nf, &out, rq->arena, &err);
    if (reply_expected(rs, rc, DBK_EUNIQUE, 409, "email_taken",
                       "a user with this e-mail already exists"))
        return;
    if (reply_failed(rs, rc, &err, "user"))
        return;
    shop_reply_json(rs, 200, shop_user_json(&out, false));
}

static void users_delete(shop_req *rq, shop_resp *rs, int64_t id)
{
    dbk_error err;
    dbk_rc rc = shop.users
                    ? dbk_cached_delete(shop.users, shop.db, dbk_int64(id), NULL, rq->arena, &err)
                    : dbk_repo_delete(shop.db, &shop_user_entity, dbk_int64(id), NULL, rq->arena,
                                      &err);
    if (reply_expected(rs, rc, DBK_EFOREIGN_KEY, 409, "in_use",
                       "the user still has orders or accounts"))
        return;
    if (reply_failed(rs, rc, &err, "user"))
        return;
    rs->status = 204;
}

static void users_posts(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_user u;
    if (!user_find(rq, rs, id, &u, "user"))
        return;
    dbk_list list;
    dbk_error err;
    dbk_rc rc = user_posts_find(rq, id, true, &list, &err);
    if (reply_failed(rs, rc, &err, "post"))
        return;
    json_t *arr = json_array();
    const shop_post *p = list.items;
    for (size_t i = 0; i < list.count; i++)
        json_array_append_new(arr, shop_post_json(&p[i]));
    shop_reply_json(rs, 200, json_pack("{s:o}", "posts", arr));
}

/* ---- posts ---- */

static void posts_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"author_id", "title", "body", "published"};
    if (!only_fields(rs, rq->body, allowed, 4))
        return;
    int64_t author;
    const char *title, *body = "";
    if (get_int(rs, rq->body, "author_id", true, 1, SHOP_MAX_ID, &author) < 0 ||
        get_str(rs, rq->body, "title", true, 1, 300, false, &title) < 0 ||
        get_str(rs, rq->body, "body", false, 0, 20000, true, &body) < 0)
        return;
    bool published = false;
    json_t *pv = json_object_get(rq->body, "published");
    if (pv) {
        if (!json_is_boolean(pv)) {
            shop_reply_error(rs, 400, "invalid_type", "field \"published\" must be a boolean");
            return;
        }
        published = json_is_true(pv);
    }
    shop_user u;
    if (!user_find(rq, rs, author, &u, "author"))
        return;
    /* The slug: the title's letters and digits, then a random suffix so two
     * posts with one title never collide. */
    char slug[96];
    size_t o = 0;
    for (const char *p = title; *p && o < 60; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) && c < 0x80)
            slug[o++] = (char)tolower(c);
        else if (o > 0 && slug[o - 1] != '-')
            slug[o++] = '-';
    }
    if (o == 0 || slug[o - 1] != '-')
        slug[o++] = '-';
    random_hex(slug + o, 4);
    shop_post in = {0}, out;
    in.user_id = author;
    in.slug = slug;
    in.title = title;
    in.body = body;
    in.published = published;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_post_entity, &in, &out, rq->arena, &err);
    if (reply_expected(rs, rc, DBK_EFOREIGN_KEY, 404, "not_found", "author not found"))
        return;
    if (reply_failed(rs, rc, &err, "post"))
        return;
    shop_reply_json(rs, 201, shop_post_json(&out));
}

static void posts_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_post p;
    if (find_or_reply(rq, rs, &shop_post_entity, id, &p, "post"))
        shop_reply_json(rs, 200, shop_post_json(&p));
}

/* ---- products ---- */

static void products_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"name", "price_cents", "stock", "sku"};
    if (!only_fields(rs, rq->body, allowed, 4))
        return;
    const char *name, *sku = NULL;
    int64_t price, stock = 0;
    if (get_str(rs, rq->body, "name", true, 1, 200, false, &name) < 0 ||
        get_int(rs, rq->body, "price_cents", true, 0, 1000000000000LL, &price) < 0 ||
        get_int(rs, rq->body, "stock", true, 0, 1000000000LL, &stock) < 0 ||
        get_str(rs, rq->body, "sku", false, 1, 64, false, &sku) < 0)
        return;
    char gen[32];
    if (!sku) {
        memcpy(gen, "SKU-", 4);
        random_hex(gen + 4, 6);
        sku = gen;
    }
    shop_product in = {0}, out;
    in.sku = sku;
    in.name = name;
    in.price_cents = price;
    in.stock = stock;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_product_entity, &in, &out, rq->arena, &err);
    if (reply_expected(rs, rc, DBK_EUNIQUE, 409, "sku_taken",
                       "a product with this sku already exists"))
        return;
    if (reply_failed(rs, rc, &err, "product"))
        return;
    shop_reply_json(rs, 201, shop_product_json(&out));
}

static void products_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_product p;
    if (find_or_reply(rq, rs, &shop_product_entity, id, &p, "product"))
        shop_reply_json(rs, 200, shop_product_json(&p));
}

/* ---- orders ---- */

#define SHOP_MAX_ORDER_LINES 100

typedef struct order_ctx {
    int64_t user_id;
    shop_order_item lines[SHOP_MAX_ORDER_LINES];
    size_t n;
    shop_order order;
    dbk_arena *arena;
    tx_fail fail; /* 404 / 409 decided inside the closure */
} order_ctx;

const char shop_sql_take_stock[] =
    "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1 RETURNING price_cents";

static int cmp_line(const void *a, const void *b)
{
    const shop_order_item *x = a, *y = b;
    return x->product_id < y->product_id ? -1 : x->product_id > y->product_id;
}

static dbk_rc order_tx(dbk_db *tx, void *vctx, dbk_error *err)
{
    order_ctx *c = vctx;
    c->fail.status = 0;
    shop_user u;
    dbk_rc rc = dbk_repo_find_by_id(tx, &shop_user_entity, dbk_int64(c->user_id), &u, c->arena,
                                    err);
    if (rc == DBK_ENOT_FOUND)
        tx_fail_set(&c->fail, 404, "not_found", "user not found");
    if (rc != DBK_OK)
        return rc;
    /* Lines are sorted by product id, so two orders lock products in the
     * same order and never deadlock each other. The decrement is
     * conditional: it only happens when the stock covers the quantity. */
    for (size_t i = 0; i < c->n; i++) {
        shop_order_item *l = &c->lines[i];
        dbk_value p[2] = {dbk_int64(l->quantity), dbk_int64(l->product_id)};
        dbk_result *r = NULL;
        rc = dbk_db_query(tx, shop_sql_take_stock, p, 2, &r, err);
        if (rc != DBK_OK)
            return rc;
        if (dbk_result_nrows(r) == 1) {
            rc = dbk_result_get_int64(r, 0, 0, &l->unit_price_cents, err);
            dbk_result_free(r);
            if (rc != DBK_OK)
                return rc;
            continue;
        }
        dbk_result_free(r);
        int64_t stock = 0;
        rc = dbk_db_query_int64(tx, "SELECT stock FROM products WHERE id = $1", &p[1], 1, &stock,
                                err);
        if (rc == DBK_ENOT_FOUND) {
            tx_fail_set(&c->fail, 404, "not_found", "product %lld not found",
                        (long long)l->product_id);
            return rc;
        }
        if (rc != DBK_OK)
            return rc;
        tx_fail_set(&c->fail, 409, "insufficient_stock",
                    "product %lld has %lld in stock, %lld ordered", (long long)l->product_id,
                    (long long)stock, (long long)l->quantity);
        return DBK_ECHECK;
    }
    shop_order in = {0};
    char ref[32] = "ORD-";
    random_hex(ref + 4, 8);
    in.reference = ref;
    in.user_id = c->user_id;
    in.status = "new";
    rc = dbk_repo_create(tx, &shop_order_entity, &in, &c->order, c->arena, err);
    if (rc != DBK_OK)
        return rc;
    for (size_t i = 0; i < c->n; i++)
        c->lines[i].order_id = c->order.id;
    rc = dbk_repo_create_many(tx, &shop_item_entity, c->lines, c->n, NULL, c->arena, err);
    if (rc != DBK_OK)
        return rc;
    c->order.items = c->lines;
    c->order.nitems = c->n;
    return DBK_OK;
}

static void orders_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"user_id", "items"};
    if (!only_fields(rs, rq->body, allowed, 2))
        return;
    order_ctx *c = dbk_arena_alloc(rq->arena, sizeof *c);
    if (!c) {
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    c->arena = rq->arena;
    if (get_int(rs, rq->body, "user_id", true, 1, SHOP_MAX_ID, &c->user_id) < 0)
        return;
    json_t *items = json_object_get(rq->body, "items");
    if (!items) {
        shop_reply_error(rs, 400, "missing_field", "field \"items\" is required");
        return;
    }
    if (!json_is_array(items) || json_array_size(items) == 0 ||
        json_array_size(items) > SHOP_MAX_ORDER_LINES) {
        shop_reply_error(rs, 400, "invalid_value",
                         "field \"items\" must be an array of 1 to %d lines",
                         SHOP_MAX_ORDER_LINES);
        return;
    }
    static const char *const line_fields[] = {"product_id", "quantity"};
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        if (!json_is_object(it)) {
            shop_reply_error(rs, 400, "invalid_type", "each item must be an object");
            return;
        }
        if (!only_fields(rs, it, line_fields, 2))
            return;
        int64_t pid, qty;
        if (get_int(rs, it, "product_id", true, 1, SHOP_MAX_ID, &pid) < 0 ||
            get_int(rs, it, "quantity", true, 1, SHOP_MAX_QUANTITY, &qty) < 0)
            return;
        /* The same product twice becomes one line. */
        size_t k;
        for (k = 0; k < c->n; k++)
            if (c->lines[k].product_id == pid)
                break;
        if (k < c->n) {
            if (c->lines[k].quantity + qty > SHOP_MAX_QUANTITY) {
                shop_reply_error(rs, 400, "out_of_range",
                                 "product %lld: the quantities add up to more than %d",
                                 (long long)pid, SHOP_MAX_QUANTITY);
                return;
            }
            c->lines[k].quantity += qty;
        } else {
            c->lines[c->n].product_id = pid;
            c->lines[c->n].quantity = qty;
            c->n++;
        }
    }
    qsort(c->lines, c->n, sizeof c->lines[0], cmp_line);
    if (run_tx(rs, order_tx, c, &c->fail, "order"))
        shop_reply_json(rs, 201, shop_order_json(&c->order));
}

static void orders_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_order o;
    if (!find_or_reply(rq, rs, &shop_order_entity, id, &o, "order"))
        return;
    static const char *const inc[] = {"items"};
    dbk_error err;
    dbk_rc rc = dbk_repo_include(shop.db, &shop_order_entity, &o, 1, inc, 1, rq->arena, &err);
    if (reply_failed(rs, rc, &err, "order"))
        return;
    shop_reply_json(rs, 200, shop_order_json(&o));
}

/* ---- accounts and transfers ---- */

static void accounts_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"owner_id", "balance_cents", "name"};
    if (!only_fields(rs, rq->body, allowed, 3))
        return;
    int64_t owner, balance = 0;
    const char *name = NULL;
    if (get_int(rs, rq->body, "owner_id", true, 1, SHOP_MAX_ID, &owner) < 0 ||
        get_int(rs, rq->body, "balance_cents", false, 0, 1000000000000000LL, &balance) < 0 ||
        get_str(rs, rq->body, "name", false, 1, 100, false, &name) < 0)
        return;
    shop_user u;
    if (!user_find(rq, rs, owner, &u, "owner"))
        return;
    char gen[48];
    if (!name) {
        snprintf(gen, sizeof gen, "acct-%lld-", (long long)owner);
        random_hex(gen + strlen(gen), 4);
        name = gen;
    }
    shop_account in = {0}, out;
    in.name = name;
    in.user_id = owner;
    in.balance_cents = balance;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_account_entity, &in, &out, rq->arena, &err);
    if (reply_expected(rs, rc, DBK_EUNIQUE, 409, "name_taken",
                       "an account with this name already exists"))
        return;
    if (reply_expected(rs, rc, DBK_EFOREIGN_KEY, 404, "not_found", "owner not found"))
        return;
    if (reply_failed(rs, rc, &err, "account"))
        return;
    shop_reply_json(rs, 201, shop_account_json(&out));
}

static void accounts_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_account a;
    if (find_or_reply(rq, rs, &shop_account_entity, id, &a, "account"))
        shop_reply_json(rs, 200, shop_account_json(&a));
}

typedef struct xfer_ctx {
    int64_t from, to, amount;
    int64_t from_balance, to_balance;
    tx_fail fail;
} xfer_ctx;

static dbk_rc transfer_tx(dbk_db *tx, void *vctx, dbk_error *err)
{
    xfer_ctx *c = vctx;
    c->fail.status = 0;
    /* Both rows are locked before either changes, lower id first (the
     * ORDER BY sits below the row locking in PostgreSQL's plan), so two
     * opposite transfers queue instead of deadlocking. SQLite's BEGIN
     * IMMEDIATE already holds the database write lock. */
    const char *sql = dbk_db_engine(tx) == DBK_ENGINE_POSTGRES
                          ? "SELECT id, balance_cents FROM accounts WHERE id IN ($1, $2) "
                            "ORDER BY id FOR UPDATE"
                          : "SELECT id, balance_cents FROM accounts WHERE id IN ($1, $2) "
                            "ORDER BY id";
    dbk_value p[2] = {dbk_int64(c->from), dbk_int64(c->to)};
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(tx, sql, p, 2, &r, err);
    if (rc != DBK_OK)
        return rc;
    bool have_from = false, have_to = false;
    int64_t from_bal = 0, to_bal = 0;
    for (size_t i = 0; i < dbk_result_nrows(r); i++) {
        int64_t id = 0, bal = 0;
        if (dbk_result_get_int64(r, i, 0, &id, err) != DBK_OK ||
            dbk_result_get_int64(r, i, 1, &bal, err) != DBK_OK) {
            dbk_result_free(r);
            return DBK_EINTERNAL;
        }
        if (id == c->from) {
            have_from = true;
            from_bal = bal;
        } else if (id == c->to) {
            have_to = true;
            to_bal = bal;
        }
    }
    dbk_result_free(r);
    if (!have_from || !have_to) {
        tx_fail_set(&c->fail, 404, "not_found", "account %lld not found",
                    (long long)(have_from ? c->to : c->from));
        return DBK_ENOT_FOUND;
    }
    if (from_bal < c->amount) {
        tx_fail_set(&c->fail, 409, "insufficient_funds",
                    "account %lld has insufficient funds", (long long)c->from);
        return DBK_ECHECK;
    }
    /* Both balances in one statement: one round trip fewer than two. */
    dbk_value d[4] = {dbk_int64(c->amount), dbk_int64(c->from), dbk_int64(c->to),
                      dbk_timestamp(now_us())};
    int64_t changed = 0;
    rc = dbk_db_exec(tx,
                     "UPDATE accounts SET balance_cents = balance_cents + "
                     "CASE WHEN id = $2 THEN -$1 ELSE $1 END, updated_at = $4 "
                     "WHERE id IN ($2, $3)",
                     d, 4, &changed, err);
    if (rc != DBK_OK)
        return rc;
    if (changed != 2) { /* cannot happen with both rows locked; never half a transfer */
        tx_fail_set(&c->fail, 500, "internal", "internal error");
        fprintf(stderr, "shop: transfer updated %lld rows instead of 2\n", (long long)changed);
        return DBK_EINTERNAL;
    }
    c->from_balance = from_bal - c->amount;
    c->to_balance = to_bal + c->amount;
    return DBK_OK;
}

static void transfers_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"from_account", "to_account", "amount_cents"};
    if (!only_fields(rs, rq->body, allowed, 3))
        return;
    xfer_ctx c;
    memset(&c, 0, sizeof c);
    if (get_int(rs, rq->body, "from_account", true, 1, SHOP_MAX_ID, &c.from) < 0 ||
        get_int(rs, rq->body, "to_account", true, 1, SHOP_MAX_ID, &c.to) < 0 ||
        get_int(rs, rq->body, "amount_cents", true, 1, 1000000000000000LL, &c.amount) < 0)
        return;
    if (c.from == c.to) {
        shop_reply_error(rs, 400, "invalid_value", "the two accounts must differ");
        return;
    }
    if (!run_tx(rs, transfer_tx, &c, &c.fail, "account"))
        return;
    shop_reply_json(rs, 200,
                    json_pack("{s:{s:I,s:I},s:{s:I,s:I},s:I}", "from", "id", (json_int_t)c.from,
                              "balance_cents", (json_int_t)c.from_balance, "to", "id",
                              (json_int_t)c.to, "balance_cents", (json_int_t)c.to_balance,
                              "amount_cents", (json_int_t)c.amount));
}

/* ---- the router ---- */

static void method_not_allowed(shop_resp *rs, const char *method)
{
    shop_reply_error(rs, 405, "method_not_allowed", "method %s is not allowed here",
                     strlen(method) < 16 ? method : "?");
}

void shop_route(shop_req *rq, shop_resp *rs)
{
    const char *m = rq->method;
    const char *path = rq->path;
    /* HEAD is a GET whose body libmicrohttpd leaves out. */
    bool get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0, post = strcmp(m, "POST") == 0;

    if (strcmp(path, "/health") == 0) {
        if (get)
            shop_handle_health(rq, rs);
        else
            method_not_allowed(rs, m);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (get)
            shop_handle_metrics(rq, rs);
        else
            method_not_allowed(rs, m);
        return;
    }

    /* Split "/<collection>[/<id>[/<sub>]]". */
    if (path[0] != '/')
        goto not_found;
    const char *coll = path + 1;
    const char *slash = strchr(coll, '/');
    size_t clen = slash ? (size_t)(slash - coll) : strlen(coll);
    const char *idp = slash ? slash + 1 : NULL;
    const char *sub = NULL;
    size_t idlen = 0;
    if (idp) {
        const char *s2 = strchr(idp, '/');
        idlen = s2 ? (size_t)(s2 - idp) : strlen(idp);
        sub = s2 ? s2 + 1 : NULL;
        /* No route has an empty segment, a trailing slash or a fourth
         * segment: "/users/", "/users/1/", "/users//posts" are not found. */
        if (idlen == 0 || (sub && (*sub == '\0' || strchr(sub, '/'))))
            goto not_found;
    }
#define IS(lit) (clen == sizeof(lit) - 1 && memcmp(coll, lit, clen) == 0)
    if (!idp) {
        if (IS("users")) {
            if (get)
                users_list(rq, rs);
            else if (post)
                users_create(rq, rs);
            else
                method_not_allowed(rs, m);
        } else if (IS("posts") || IS("products") || IS("orders") || IS("accounts") ||
                   IS("transfers")) {
            if (!post) {
                method_not_allowed(rs, m);
                return;
            }
            if (IS("posts"))
                posts_create(rq, rs);
            else if (IS("products"))
                products_create(rq, rs);
            else if (IS("orders"))
                orders_create(rq, rs);
            else if (IS("accounts"))
                accounts_create(rq, rs);
            else
                transfers_create(rq, rs);
        } else {
            goto not_found;
        }
        return;
    }
    if (IS("users") && !sub && idlen == 8 && memcmp(idp, "by-email", 8) == 0) {
        if (get)
            users_by_email(rq, rs);
        else
            method_not_allowed(rs, m);
        return;
    }
    if (!(IS("users") || IS("posts") || IS("products") || IS("orders") || IS("accounts")))
        goto not_found;
    /* The route has the shape of /<collection>/<id>: an id segment that is
     * not an integer is 400 invalid_id, an integer that is no id (0, -1,
     * above INT64_MAX) is 400 out_of_range. */
    int64_t id;
    switch (shop_parse_int(idp, idlen, 1, SHOP_MAX_ID, &id)) {
    case SHOP_INT_OK:
        break;
    case SHOP_INT_RANGE:
        shop_reply_error(rs, 400, "out_of_range", "the id is out of range: 1..%lld",
                         (long long)SHOP_MAX_ID);
        return;
    default:
        shop_reply_error(rs, 400, "invalid_id", "the id must be a positive integer");
        return;
    }
    if (sub) {
        if (IS("users") && strcmp(sub, "posts") == 0) {
            if (get)
                users_posts(rq, rs, id);
            else
                method_not_allowed(rs, m);
            return;
        }
        goto not_found;
    }
    if (IS("users")) {
        if (get)
            users_get(rq, rs, id);
        else if (strcmp(m, "PATCH") == 0)
            users_patch(rq, rs, id);
        else if (strcmp(m, "DELETE") == 0)
            users_delete(rq, rs, id);
        else
            method_not_allowed(rs, m);
        return;
    }
    if (!get) {
        method_not_allowed(rs, m);
        return;
    }
    if (IS("posts"))
        posts_get(rq, rs, id);
    else if (IS("products"))
        products_get(rq, rs, id);
    else if (IS("orders"))
        orders_get(rq, rs, id);
    else
        accounts_get(rq, rs, id);
    return;
#undef IS
not_found:
    shop_reply_error(rs, 404, "not_found", "no such endpoint");
}
