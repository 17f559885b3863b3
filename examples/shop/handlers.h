/*
 * handlers.h - what the shop's endpoint files share: the endpoints the
 * router calls (one file per resource: users.c, posts.c, products.c,
 * orders.c, accounts.c) and the helpers in handler_util.c.
 *
 * A new resource is one new file with its endpoints, their declarations
 * here and its routes in router.c.
 */
#ifndef SHOP_HANDLERS_H
#define SHOP_HANDLERS_H

#include "shop.h"

/* The bounds the API puts on integers. Ids are the tables' BIGINT keys, so
 * every id from 1 to INT64_MAX is a valid one (one no row has is a 404). */
#define SHOP_MAX_ID INT64_MAX
#define SHOP_MAX_OFFSET 1000000000LL
#define SHOP_MAX_QUANTITY 10000

/* Why a transaction closure gave up: the status, code and message the
 * client gets. Decided inside the closure, which resets it first since a
 * retried attempt may succeed; status 0 means it did not give up. */
typedef struct shop_tx_fail {
    int status;
    const char *code;
    char msg[160];
} shop_tx_fail;

/* ---- helpers (handler_util.c) ---- */

/* Microseconds since the epoch (CLOCK_REALTIME). */
int64_t shop_now_us(void);
/* Writes 2 * nbytes random hex digits and a NUL to out (nbytes <= 16). */
void shop_random_hex(char *out, size_t nbytes);
/* Rejects any member of o not in allowed[0..n): false when it replied 400. */
bool shop_only_fields(shop_resp *rs, json_t *o, const char *const *allowed, size_t n);
/* String member `name`: 1 present and valid (*out set), 0 absent and
 * optional, -1 replied 400. */
int shop_get_str(shop_resp *rs, json_t *o, const char *name, bool required, size_t minlen,
                 size_t maxlen, bool multiline, const char **out);
/* Integer member `name` in min..max: 1 / 0 / -1 as shop_get_str. */
int shop_get_int(shop_resp *rs, json_t *o, const char *name, bool required, int64_t min,
                 int64_t max, int64_t *out);
/* Records why the closure gives up (the closure then returns non-OK). */
void shop_tx_fail_set(shop_tx_fail *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Runs closure fn in a transaction with the automatic retry and answers a
 * failure; true when the transaction committed and the caller is to reply. */
bool shop_run_tx(shop_resp *rs, dbk_tx_fn fn, void *ctx, shop_tx_fail *f, const char *what);
/* When rc is not DBK_OK, answers the mapped error (404s name `what`) and
 * returns true. */
bool shop_reply_failed(shop_resp *rs, dbk_rc rc, const dbk_error *err, const char *what);
/* When rc is `expected`, replies status/code/msg and returns true. */
bool shop_reply_expected(shop_resp *rs, dbk_rc rc, dbk_rc expected, int status, const char *code,
                         const char *msg);
/* Reads row `id` of entity e into *row; false when it failed and replied. */
bool shop_find_or_reply(shop_req *rq, shop_resp *rs, const dbk_entity *e, int64_t id, void *row,
                        const char *what);

/* ---- endpoints ---- */

/* users.c */
bool shop_user_find(shop_req *rq, shop_resp *rs, int64_t id, shop_user *u, const char *what);
void shop_users_create(shop_req *rq, shop_resp *rs);
void shop_users_get(shop_req *rq, shop_resp *rs, int64_t id);
void shop_users_by_email(shop_req *rq, shop_resp *rs);
void shop_users_list(shop_req *rq, shop_resp *rs);
void shop_users_patch(shop_req *rq, shop_resp *rs, int64_t id);
void shop_users_delete(shop_req *rq, shop_resp *rs, int64_t id);
void shop_users_posts(shop_req *rq, shop_resp *rs, int64_t id);
/* posts.c */
void shop_posts_create(shop_req *rq, shop_resp *rs);
void shop_posts_get(shop_req *rq, shop_resp *rs, int64_t id);
/* products.c */
void shop_products_create(shop_req *rq, shop_resp *rs);
void shop_products_get(shop_req *rq, shop_resp *rs, int64_t id);
/* orders.c */
void shop_orders_create(shop_req *rq, shop_resp *rs);
void shop_orders_get(shop_req *rq, shop_resp *rs, int64_t id);
/* accounts.c */
void shop_accounts_create(shop_req *rq, shop_resp *rs);
void shop_accounts_get(shop_req *rq, shop_resp *rs, int64_t id);
void shop_transfers_create(shop_req *rq, shop_resp *rs);
/* reviews.c (documents: dbkit/doc.h; DOCUMENTS_URL picks the store) */
int shop_reviews_open(dbk_error *err);
void shop_reviews_close(void);
void shop_reviews_create(shop_req *rq, shop_resp *rs, int64_t product_id);
void shop_reviews_list(shop_req *rq, shop_resp *rs, int64_t product_id);
void shop_reviews_get(shop_req *rq, shop_resp *rs, const char *id);
void shop_reviews_patch(shop_req *rq, shop_resp *rs, const char *id);
void shop_reviews_delete(shop_req *rq, shop_resp *rs, const char *id);
void shop_reviews_route_product(shop_req *rq, shop_resp *rs, int64_t product_id);
void shop_reviews_route_review(shop_req *rq, shop_resp *rs, const char *idp, size_t idlen);

#endif
