/*
 * router.c - the shop's router: splits /<collection>[/<id>[/<sub>]] and calls
 * the endpoint for the method, 404 for an unknown path and 405 for a method
 * the route does not take.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

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
                shop_users_list(rq, rs);
            else if (post)
                shop_users_create(rq, rs);
            else
                method_not_allowed(rs, m);
        } else if (IS("posts") || IS("products") || IS("orders") || IS("accounts") ||
                   IS("transfers")) {
            if (!post) {
                method_not_allowed(rs, m);
                return;
            }
            if (IS("posts"))
                shop_posts_create(rq, rs);
            else if (IS("products"))
                shop_products_create(rq, rs);
            else if (IS("orders"))
                shop_orders_create(rq, rs);
            else if (IS("accounts"))
                shop_accounts_create(rq, rs);
            else
                shop_transfers_create(rq, rs);
        } else {
            goto not_found;
        }
        return;
    }
    if (IS("users") && !sub && idlen == 8 && memcmp(idp, "by-email", 8) == 0) {
        if (get)
            shop_users_by_email(rq, rs);
        else
            method_not_allowed(rs, m);
        return;
    }
    if (IS("reviews") && !sub) {
        shop_reviews_route_review(rq, rs, idp, idlen); /* document ids are strings */
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
        if (IS("products") && strcmp(sub, "reviews") == 0) {
            shop_reviews_route_product(rq, rs, id);
            return;
        }
        if (IS("users") && strcmp(sub, "posts") == 0) {
            if (get)
                shop_users_posts(rq, rs, id);
            else
                method_not_allowed(rs, m);
            return;
        }
        goto not_found;
    }
    if (IS("users")) {
        if (get)
            shop_users_get(rq, rs, id);
        else if (strcmp(m, "PATCH") == 0)
            shop_users_patch(rq, rs, id);
        else if (strcmp(m, "DELETE") == 0)
            shop_users_delete(rq, rs, id);
        else
            method_not_allowed(rs, m);
        return;
    }
    if (!get) {
        method_not_allowed(rs, m);
        return;
    }
    if (IS("posts"))
        shop_posts_get(rq, rs, id);
    else if (IS("products"))
        shop_products_get(rq, rs, id);
    else if (IS("orders"))
        shop_orders_get(rq, rs, id);
    else
        shop_accounts_get(rq, rs, id);
    return;
#undef IS
not_found:
    shop_reply_error(rs, 404, "not_found", "no such endpoint");
}
