/*
 * reviews.c - product reviews, stored as documents (dbkit/doc.h).
 *
 * DOCUMENTS_URL picks the store: unset, the shop's own database (the
 * reviews table beside the relational ones, through the shop's pool); a
 * sqlite: or postgres:// URL, another database with its own pool; a
 * mongodb:// URL, a MongoDB server through libmongoc. The handlers do not
 * know which: they speak the document API only. One review per user and
 * product is a unique index on (product_id, user_id) - 409 on a second.
 *
 *   POST   /products/{id}/reviews   {user_id, rating 1..5, title, body?, tags?}
 *   GET    /products/{id}/reviews   ?limit=1..100&offset&sort=-created_at|rating|-rating
 *   GET    /reviews/{id}
 *   PATCH  /reviews/{id}            {rating?, title?, body?, tags?}
 *   DELETE /reviews/{id}
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

static const dbk_doc_field review_fields[] = {
    {"product_id", DBK_DOC_INT64, DBK_DOC_REQUIRED, NULL},
    {"user_id", DBK_DOC_INT64, DBK_DOC_REQUIRED, NULL},
    {"rating", DBK_DOC_INT64, DBK_DOC_REQUIRED, NULL},
    {"title", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL},
    {"body", DBK_DOC_STRING, 0, "\"\""},
    {"tags", DBK_DOC_ARRAY, 0, "[]"},
};
static const dbk_doc_index review_indexes[] = {
    {"reviews_product_user_key", "product_id,user_id", true},
    {"reviews_product_created_idx", "product_id,-created_at", false},
};
static const dbk_doc_schema review_schema = {
    .collection = "reviews",
    .fields = review_fields,
    .nfields = sizeof review_fields / sizeof review_fields[0],
    .indexes = review_indexes,
    .nindexes = 2,
    .timestamps = true,
    .created_field = "created_at",
    .updated_field = "updated_at",
};

static struct {
    dbk_doc_coll *coll;
    dbk_doc_mongo *mongo;
    dbk_config *cfg;
    dbk_pool *pool;
    const char *kind;
} rv;

int shop_reviews_open(dbk_error *err)
{
    const char *url = getenv("DOCUMENTS_URL");
    dbk_rc rc;
    if (url && (strncmp(url, "mongodb://", 10) == 0 || strncmp(url, "mongodb+srv://", 14) == 0)) {
        dbk_doc_mongo_opts mo = {.version = DBK_DOC_MONGO_OPTS_VERSION,
                                 .max_pool_size = 10,
                                 .server_selection_timeout_ms = 5000,
                                 .socket_timeout_ms = 45000};
        rv.kind = "mongodb";
        rc = dbk_doc_mongo_open(url, &mo, &rv.mongo, err);
        if (rc == DBK_OK)
            rc = dbk_doc_coll_open_mongo(rv.mongo, &review_schema, &rv.coll, err);
    } else if (url && *url) {
        rv.kind = "url";
        rc = dbk_config_from_url(url, &rv.cfg, err);
        if (rc == DBK_OK)
            rc = dbk_pool_open(rv.cfg, NULL, &rv.pool, err);
        if (rc == DBK_OK)
            rc = dbk_doc_coll_open(dbk_pool_db(rv.pool), &review_schema, &rv.coll, err);
    } else {
        rv.kind = "database";
        rc = dbk_doc_coll_open(shop.db, &review_schema, &rv.coll, err);
    }
    if (rc == DBK_OK)
        rc = dbk_doc_coll_ensure(rv.coll, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: documents (%s): %s (%s)\n", rv.kind, err->message, dbk_rc_name(rc));
        shop_reviews_close();
        return -1;
    }
    return 0;
}

void shop_reviews_close(void)
{
    dbk_doc_coll_close(rv.coll);
    dbk_doc_mongo_close(rv.mongo);
    dbk_pool_close(rv.pool, 5000);
    dbk_config_free(rv.cfg);
    memset(&rv, 0, sizeof rv);
}

/* A stored review as the API shows it: "_id" becomes "id". */
static json_t *review_json(const dbk_doc *d)
{
    char *text = NULL;
    if (dbk_doc_to_json(d, &text, NULL) != DBK_OK)
        return NULL;
    json_t *j = json_loads(text, 0, NULL);
    dbk_free(text);
    if (!j)
        return NULL;
    json_t *id = json_object_get(j, "_id");
    if (id) {
        json_object_set(j, "id", id);
        json_object_del(j, "_id");
    }
    return j;
}

static bool reply_doc_failed(shop_resp *rs, dbk_rc rc, const dbk_error *err)
{
    if (rc == DBK_OK)
        return false;
    if (rc == DBK_EUNIQUE) {
        shop_reply_error(rs, 409, "review_exists", "this user already reviewed this product");
        return true;
    }
    if (rc == DBK_EINVALID) {
        shop_reply_error(rs, 400, "invalid_review", "%s", err->message);
        return true;
    }
    return shop_reply_failed(rs, rc, err, "review");
}

/* tags: an array of at most 20 strings of 1..40 bytes; 1 ok, 0 absent,
 * -1 replied 400. */
static int get_tags(shop_resp *rs, json_t *body, json_t **out)
{
    json_t *t = json_object_get(body, "tags");
    *out = t;
    if (!t)
        return 0;
    size_t i;
    json_t *m;
    bool ok = json_is_array(t) && json_array_size(t) <= 20;
    json_array_foreach(t, i, m) ok = ok && json_is_string(m) && json_string_length(m) >= 1 &&
                                     json_string_length(m) <= 40;
    if (!ok) {
        shop_reply_error(rs, 400, "invalid_parameter",
                         "\"tags\" must be an array of at most 20 strings of 1..40 bytes");
        return -1;
    }
    return 1;
}

static bool product_exists(shop_req *rq, shop_resp *rs, int64_t product_id)
{
    shop_product p;
    return shop_find_or_reply(rq, rs, &shop_product_entity, product_id, &p, "product");
}

void shop_reviews_create(shop_req *rq, shop_resp *rs, int64_t product_id)
{
    static const char *const allowed[] = {"user_id", "rating", "title", "body", "tags"};
    if (!shop_only_fields(rs, rq->body, allowed, 5))
        return;
    int64_t user_id, rating;
    const char *title, *body = NULL;
    json_t *tags;
    if (shop_get_int(rs, rq->body, "user_id", true, 1, SHOP_MAX_ID, &user_id) < 0 ||
        shop_get_int(rs, rq->body, "rating", true, 1, 5, &rating) < 0 ||
        shop_get_str(rs, rq->body, "title", true, 1, 200, false, &title) < 0 ||
        shop_get_str(rs, rq->body, "body", false, 0, 10000, true, &body) < 0 ||
        get_tags(rs, rq->body, &tags) < 0)
        return;
    shop_user u;
    if (!product_exists(rq, rs, product_id) || !shop_user_find(rq, rs, user_id, &u, "user"))
        return;
    json_t *doc = json_pack("{s:I,s:I,s:I,s:s}", "product_id", (json_int_t)product_id, "user_id",
                            (json_int_t)user_id, "rating", (json_int_t)rating, "title", title);
    if (doc && body)
        json_object_set_new(doc, "body", json_string(body));
    if (doc && tags)
        json_object_set(doc, "tags", tags);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!text) {
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    dbk_error err;
    dbk_doc *d = NULL;
    dbk_rc rc = dbk_doc_create(rv.coll, text, strlen(text), &d, &err);
    free(text);
    if (reply_doc_failed(rs, rc, &err))
        return;
    shop_reply_json(rs, 201, review_json(d));
    dbk_doc_free(d);
}

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

void shop_reviews_list(shop_req *rq, shop_resp *rs, int64_t product_id)
{
    int64_t limit = 20, offset = 0;
    if (!query_int(rq, rs, "limit", 1, 100, &limit) ||
        !query_int(rq, rs, "offset", 0, SHOP_MAX_OFFSET, &offset))
        return;
    static const struct {
        const char *param, *sort;
    } sorts[] = {/* _id last: two reviews written in the same millisecond (MongoDB
                  * keeps dates to the millisecond) still come newest first, and
                  * pages never overlap (a total order) */
                 {"-created_at", "{\"created_at\":-1,\"_id\":-1}"},
                 {"rating", "{\"rating\":1,\"created_at\":-1,\"_id\":-1}"},
                 {"-rating", "{\"rating\":-1,\"created_at\":-1,\"_id\":-1}"}};
    const char *sp = shop_query_arg(rq, "sort");
    const char *sort = NULL;
    for (size_t i = 0; i < 3; i++)
        if (!sp || strcmp(sp, sorts[i].param) == 0) {
            sort = sorts[i].sort;
            break;
        }
    if (!sort) {
        shop_reply_error(rs, 400, "invalid_parameter",
                         "\"sort\" must be -created_at, rating or -rating");
        return;
    }
    char filter[64];
    snprintf(filter, sizeof filter, "{\"product_id\":%lld}", (long long)product_id);
    dbk_doc_find_opts o = {.version = DBK_DOC_FIND_OPTS_VERSION,
                           .filter = filter,
                           .sort = sort,
                           .limit = limit, /* 1..100, checked above */
                           .skip = offset,
                           .with_total = true};
    dbk_doc_page page;
    dbk_error err;
    dbk_rc rc = dbk_doc_find(rv.coll, &o, &page, &err);
    if (reply_doc_failed(rs, rc, &err))
        return;
    json_t *arr = json_array();
    for (size_t i = 0; i < page.count; i++)
        json_array_append_new(arr, review_json(page.docs[i]));
    shop_reply_json(rs, 200,
                    json_pack("{s:o,s:I,s:I,s:I}", "reviews", arr, "total", (json_int_t)page.total,
                              "limit", (json_int_t)limit, "offset", (json_int_t)offset));
    dbk_doc_page_free(&page);
}

void shop_reviews_get(shop_req *rq, shop_resp *rs, const char *id)
{
    (void)rq;
    dbk_error err;
    dbk_doc *d = NULL;
    dbk_rc rc = dbk_doc_find_by_id(rv.coll, id, &d, &err);
    if (reply_doc_failed(rs, rc, &err))
        return;
    shop_reply_json(rs, 200, review_json(d));
    dbk_doc_free(d);
}

void shop_reviews_patch(shop_req *rq, shop_resp *rs, const char *id)
{
    static const char *const allowed[] = {"rating", "title", "body", "tags"};
    if (!shop_only_fields(rs, rq->body, allowed, 4))
        return;
    int64_t rating;
    const char *title, *body;
    json_t *tags;
    int hr, ht, hb, hg;
    if ((hr = shop_get_int(rs, rq->body, "rating", false, 1, 5, &rating)) < 0 ||
        (ht = shop_get_str(rs, rq->body, "title", false, 1, 200, false, &title)) < 0 ||
        (hb = shop_get_str(rs, rq->body, "body", false, 0, 10000, true, &body)) < 0 ||
        (hg = get_tags(rs, rq->body, &tags)) < 0)
        return;
    json_t *set = json_object();
    if (hr > 0)
        json_object_set_new(set, "rating", json_integer(rating));
    if (ht > 0)
        json_object_set_new(set, "title", json_string(title));
    if (hb > 0)
        json_object_set_new(set, "body", json_string(body));
    if (hg > 0)
        json_object_set(set, "tags", tags);
    json_t *upd = json_pack("{s:o}", "$set", set);
    char *text = upd ? json_dumps(upd, JSON_COMPACT) : NULL;
    json_decref(upd);
    if (!text) {
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    dbk_error err;
    dbk_doc *d = NULL;
    dbk_rc rc = dbk_doc_find_by_id_and_update(rv.coll, id, text, &d, &err);
    free(text);
    if (reply_doc_failed(rs, rc, &err))
        return;
    shop_reply_json(rs, 200, review_json(d));
    dbk_doc_free(d);
}

void shop_reviews_delete(shop_req *rq, shop_resp *rs, const char *id)
{
    (void)rq;
    dbk_error err;
    dbk_rc rc = dbk_doc_find_by_id_and_delete(rv.coll, id, NULL, &err);
    if (reply_doc_failed(rs, rc, &err))
        return;
    rs->status = 204;
}

/* ---- routes (called by router.c) ---- */

static void not_allowed(shop_resp *rs, const char *method)
{
    shop_reply_error(rs, 405, "method_not_allowed", "method %s is not allowed here",
                     strlen(method) < 16 ? method : "?");
}

void shop_reviews_route_product(shop_req *rq, shop_resp *rs, int64_t product_id)
{
    const char *m = rq->method;
    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
        shop_reviews_list(rq, rs, product_id);
    else if (strcmp(m, "POST") == 0)
        shop_reviews_create(rq, rs, product_id);
    else
        not_allowed(rs, m);
}

void shop_reviews_route_review(shop_req *rq, shop_resp *rs, const char *idp, size_t idlen)
{
    char id[DBK_DOC_ID_MAX + 1];
    if (idlen > DBK_DOC_ID_MAX) {
        shop_reply_error(rs, 400, "invalid_id", "a review id is 1..%d bytes", DBK_DOC_ID_MAX);
        return;
    }
    memcpy(id, idp, idlen);
    id[idlen] = '\0';
    const char *m = rq->method;
    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
        shop_reviews_get(rq, rs, id);
    else if (strcmp(m, "PATCH") == 0)
        shop_reviews_patch(rq, rs, id);
    else if (strcmp(m, "DELETE") == 0)
        shop_reviews_delete(rq, rs, id);
    else
        not_allowed(rs, m);
}
