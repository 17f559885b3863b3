/*
 * users.c - the /users endpoints. Users go through the cached repository
 * (cache.h) when a cache is configured: reads are cache-aside, and PATCH /
 * DELETE invalidate the id and e-mail keys after the write, so a GET after a
 * PATCH never sees the old row.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

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


/* ---- users: cached when a cache is configured ---- */

/* Reads user `id`, through the cache when there is one (its loads go to
 * the primary, see replicas.c), else through the request's read executor;
 * false when it failed and the error has been answered, 404 naming `what`
 * ("user", or the role the user plays in the request: "author", "owner"). */
bool shop_user_find(shop_req *rq, shop_resp *rs, int64_t id, shop_user *u, const char *what)
{
    dbk_error err;
    dbk_rc rc = shop.users ? dbk_cached_repo_find_by_id(shop.users, shop.db, dbk_int64(id), u,
                                                        rq->arena, &err)
                           : dbk_repo_find_by_id(shop_read_db(rq), &shop_user_entity, dbk_int64(id),
                                                 u, rq->arena, &err);
    return !shop_reply_failed(rs, rc, &err, what);
}

/* The posts of user `user_id` in id order: every one of them, or when
 * `capped` at most one page of DBK_REPO_MAX_LIMIT. */
static dbk_rc user_posts_find(shop_req *rq, int64_t user_id, bool capped, dbk_list *list,
                              dbk_error *err)
{
    dbk_filter f = DBK_WHERE("user_id", DBK_FILTER_EQ, dbk_int64(user_id));
    dbk_query q;
    memset(&q, 0, sizeof q);
    q.filters = &f;
    q.nfilters = 1;
    q.order_by = "id";
    q.limit = capped ? DBK_REPO_MAX_LIMIT : DBK_REPO_LIMIT_ALL;
    return dbk_repo_find_many(shop_read_db(rq), &shop_post_entity, &q, list, rq->arena, err);
}

void shop_users_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"name", "email", "password"};
    if (!shop_only_fields(rs, rq->body, allowed, 3))
        return;
    const char *name, *email_in, *password;
    if (shop_get_str(rs, rq->body, "name", true, 1, 200, false, &name) < 0 ||
        shop_get_str(rs, rq->body, "email", true, 3, 254, false, &email_in) < 0 ||
        shop_get_str(rs, rq->body, "password", true, 8, 1024, false, &password) < 0)
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
    dbk_rc rc = shop.users
                    ? dbk_cached_repo_create(shop.users, shop.db, &in, &out, rq->arena, &err)
                    : dbk_repo_create(shop.db, &shop_user_entity, &in, &out, rq->arena, &err);
    sodium_memzero(hash, sizeof hash);
    if (shop_reply_expected(rs, rc, DBK_EUNIQUE, 409, "email_taken",
                       "a user with this e-mail already exists"))
        return;
    if (shop_reply_failed(rs, rc, &err, "user"))
        return;
    shop_reply_json(rs, 201, shop_user_json(&out, false));
}

void shop_users_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_user u;
    if (shop_user_find(rq, rs, id, &u, "user"))
        shop_reply_json(rs, 200, shop_user_json(&u, false));
}

void shop_users_by_email(shop_req *rq, shop_resp *rs)
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
    dbk_rc rc = shop.users ? dbk_cached_repo_find_by(shop.users, shop.db, "email", dbk_text(email),
                                                     &u, rq->arena, &err)
                           : dbk_repo_find_by(shop_read_db(rq), &shop_user_entity, "email",
                                              dbk_text(email), &u, rq->arena, &err);
    if (shop_reply_failed(rs, rc, &err, "user"))
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

void shop_users_list(shop_req *rq, shop_resp *rs)
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
        filter = DBK_WHERE("status", DBK_FILTER_EQ, dbk_text(status));
    }
    static const char *const inc[] = {"posts"};
    dbk_query q;
    memset(&q, 0, sizeof q);
    q.filters = status ? &filter : NULL;
    q.nfilters = status ? 1 : 0;
    q.order_by = order;
    q.limit = limit; /* 1..100, checked above */
    q.offset = offset;
    q.count = DBK_COUNT_EXACT;
    if (with_posts && !loop) {
        q.include = inc;
        q.ninclude = 1;
    }
    dbk_list list;
    dbk_error err;
    dbk_rc rc = dbk_repo_find_many(shop_read_db(rq), &shop_user_entity, &q, &list, rq->arena, &err);
    if (shop_reply_failed(rs, rc, &err, "user"))
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

void shop_users_patch(shop_req *rq, shop_resp *rs, int64_t id)
{
    static const char *const allowed[] = {"name", "email", "status"};
    if (!shop_only_fields(rs, rq->body, allowed, 3))
        return;
    shop_user in = {0};
    const char *fields[3];
    size_t nf = 0;
    const char *name, *email_in, *status;
    int r;
    if ((r = shop_get_str(rs, rq->body, "name", false, 1, 200, false, &name)) < 0)
        return;
    if (r) {
        in.name = name;
        fields[nf++] = "name";
    }
    if ((r = shop_get_str(rs, rq->body, "email", false, 3, 254, false, &email_in)) < 0)
        return;
    if (r) {
        in.email = normalize_email(rq->arena, email_in, strlen(email_in));
        if (!in.email) {
            shop_reply_error(rs, 400, "invalid_value", "field \"email\" is not an e-mail address");
            return;
        }
        fields[nf++] = "email";
    }
    if ((r = shop_get_str(rs, rq->body, "status", false, 1, 32, false, &status)) < 0)
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
    dbk_rc rc = shop.users ? dbk_cached_repo_update(shop.users, shop.db, dbk_int64(id), &in, fields,
                                                    nf, &out, rq->arena, &err)
                           : dbk_repo_update(shop.db, &shop_user_entity, dbk_int64(id), &in, fields,
                                             nf, &out, rq->arena, &err);
    if (shop_reply_expected(rs, rc, DBK_EUNIQUE, 409, "email_taken",
                       "a user with this e-mail already exists"))
        return;
    if (shop_reply_failed(rs, rc, &err, "user"))
        return;
    shop_reply_json(rs, 200, shop_user_json(&out, false));
}

void shop_users_delete(shop_req *rq, shop_resp *rs, int64_t id)
{
    dbk_error err;
    dbk_rc rc =
        shop.users
            ? dbk_cached_repo_delete(shop.users, shop.db, dbk_int64(id), NULL, rq->arena, &err)
            : dbk_repo_delete(shop.db, &shop_user_entity, dbk_int64(id), NULL, rq->arena, &err);
    if (shop_reply_expected(rs, rc, DBK_EFOREIGN_KEY, 409, "in_use",
                       "the user still has orders or accounts"))
        return;
    if (shop_reply_failed(rs, rc, &err, "user"))
        return;
    rs->status = 204;
}

void shop_users_posts(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_user u;
    if (!shop_user_find(rq, rs, id, &u, "user"))
        return;
    dbk_list list;
    dbk_error err;
    dbk_rc rc = user_posts_find(rq, id, true, &list, &err);
    if (shop_reply_failed(rs, rc, &err, "post"))
        return;
    json_t *arr = json_array();
    const shop_post *p = list.items;
    for (size_t i = 0; i < list.count; i++)
        json_array_append_new(arr, shop_post_json(&p[i]));
    shop_reply_json(rs, 200, json_pack("{s:o}", "posts", arr));
}
