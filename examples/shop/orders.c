/*
 * orders.c - the /orders endpoints. An order is a closure run by
 * dbk_tx_run() with its automatic retry; the closure only touches the
 * database, so running it again is safe. When it gives up (unknown product,
 * not enough stock) it records why in its context and returns a non-OK code,
 * which rolls everything back.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

/* ---- orders ---- */

#define SHOP_MAX_ORDER_LINES 100

typedef struct order_ctx {
    int64_t user_id;
    shop_order_item lines[SHOP_MAX_ORDER_LINES];
    size_t n;
    shop_order order;
    dbk_arena *arena;
    shop_tx_fail fail; /* 404 / 409 decided inside the closure */
} order_ctx;

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
        shop_tx_fail_set(&c->fail, 404, "not_found", "user not found");
    if (rc != DBK_OK)
        return rc;
    /* Lines are sorted by product id, so two orders lock products in the
     * same order and never deadlock each other. The decrement is
     * conditional: it only happens when the stock covers the quantity. */
    for (size_t i = 0; i < c->n; i++) {
        shop_order_item *l = &c->lines[i];
        take_stock_row taken;
        rc = take_stock(tx, l->quantity, l->product_id, c->arena, &taken, err);
        if (rc == DBK_OK) {
            l->unit_price_cents = taken.price_cents;
            continue;
        }
        if (rc != DBK_ENOT_FOUND)
            return rc;
        product_stock_row st;
        rc = product_stock(tx, l->product_id, c->arena, &st, err);
        int64_t stock = st.stock;
        if (rc == DBK_ENOT_FOUND) {
            shop_tx_fail_set(&c->fail, 404, "not_found", "product %lld not found",
                        (long long)l->product_id);
            return rc;
        }
        if (rc != DBK_OK)
            return rc;
        shop_tx_fail_set(&c->fail, 409, "insufficient_stock",
                    "product %lld has %lld in stock, %lld ordered", (long long)l->product_id,
                    (long long)stock, (long long)l->quantity);
        return DBK_ECHECK;
    }
    shop_order in = {0};
    char ref[32] = "ORD-";
    shop_random_hex(ref + 4, 8);
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

void shop_orders_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"user_id", "items"};
    if (!shop_only_fields(rs, rq->body, allowed, 2))
        return;
    order_ctx *c = dbk_arena_alloc(rq->arena, sizeof *c);
    if (!c) {
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    c->arena = rq->arena;
    if (shop_get_int(rs, rq->body, "user_id", true, 1, SHOP_MAX_ID, &c->user_id) < 0)
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
        if (!shop_only_fields(rs, it, line_fields, 2))
            return;
        int64_t pid, qty;
        if (shop_get_int(rs, it, "product_id", true, 1, SHOP_MAX_ID, &pid) < 0 ||
            shop_get_int(rs, it, "quantity", true, 1, SHOP_MAX_QUANTITY, &qty) < 0)
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
    if (shop_run_tx(rs, order_tx, c, &c->fail, "order"))
        shop_reply_json(rs, 201, shop_order_json(&c->order));
}

void shop_orders_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_order o;
    if (!shop_find_or_reply(rq, rs, &shop_order_entity, id, &o, "order"))
        return;
    static const char *const inc[] = {"items"};
    dbk_error err;
    dbk_rc rc =
        dbk_repo_include(shop_read_db(rq), &shop_order_entity, &o, 1, inc, 1, rq->arena, &err);
    if (shop_reply_failed(rs, rc, &err, "order"))
        return;
    shop_reply_json(rs, 200, shop_order_json(&o));
}
