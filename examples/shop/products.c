/*
 * products.c - the /products endpoints.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

/* ---- products ---- */

void shop_products_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"name", "price_cents", "stock", "sku"};
    if (!shop_only_fields(rs, rq->body, allowed, 4))
        return;
    const char *name, *sku = NULL;
    int64_t price, stock = 0;
    if (shop_get_str(rs, rq->body, "name", true, 1, 200, false, &name) < 0 ||
        shop_get_int(rs, rq->body, "price_cents", true, 0, 1000000000000LL, &price) < 0 ||
        shop_get_int(rs, rq->body, "stock", true, 0, 1000000000LL, &stock) < 0 ||
        shop_get_str(rs, rq->body, "sku", false, 1, 64, false, &sku) < 0)
        return;
    char gen[32];
    if (!sku) {
        memcpy(gen, "SKU-", 4);
        shop_random_hex(gen + 4, 6);
        sku = gen;
    }
    shop_product in = {0}, out;
    in.sku = sku;
    in.name = name;
    in.price_cents = price;
    in.stock = stock;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_product_entity, &in, &out, rq->arena, &err);
    if (shop_reply_expected(rs, rc, DBK_EUNIQUE, 409, "sku_taken",
                       "a product with this sku already exists"))
        return;
    if (shop_reply_failed(rs, rc, &err, "product"))
        return;
    shop_reply_json(rs, 201, shop_product_json(&out));
}

void shop_products_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_product p;
    if (shop_find_or_reply(rq, rs, &shop_product_entity, id, &p, "product"))
        shop_reply_json(rs, 200, shop_product_json(&p));
}
