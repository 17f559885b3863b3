/*
 * model.c - the shop's tables as dbkit entity descriptors, and their JSON.
 *
 * Every table of examples/db is described once here; the handlers then use
 * the repository calls (find, create, update, delete, page with total,
 * include) and never write SQL for plain reads and writes. The only
 * hand-written SQL lives in the endpoint files where a statement does more
 * than a repository call can: the conditional stock decrement of an order and the
 * row locks of a transfer.
 *
 * order_items has a composite primary key (order_id, product_id). A
 * descriptor needs exactly one PK field, so the entity marks order_id as
 * its key and declares the pair as a dbk_unique; it is only used for the
 * bulk insert of an order's lines and for loading them as the order's
 * "items" relation, never looked up by that "id".
 *
 * The JSON builders never emit the password hash: it is a hidden field,
 * not read unless asked for, and not rendered even when it is.
 */
#include <stdio.h>
#include <string.h>

#include "shop.h"

static const dbk_field user_fields[] = {
    DBK_FIELD(shop_user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(shop_user, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_user, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(shop_user, password_hash, "password_hash", DBK_TYPE_TEXT,
              DBK_F_HIDDEN | DBK_F_NULLABLE),
    DBK_FIELD(shop_user, status, "status", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_user, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
static const dbk_relation user_rels[] = {
    DBK_HAS_MANY(shop_user, "posts", posts, nposts, &shop_post_entity, "user_id"),
};
const dbk_entity shop_user_entity = DBK_ENTITY("users", shop_user, user_fields, user_rels);

static const dbk_field post_fields[] = {
    DBK_FIELD(shop_post, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(shop_post, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_post, slug, "slug", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(shop_post, title, "title", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_post, body, "body", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_post, published, "published", DBK_TYPE_BOOL, 0),
    DBK_FIELD(shop_post, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
const dbk_entity shop_post_entity = DBK_ENTITY_PLAIN("posts", shop_post, post_fields);

static const dbk_field product_fields[] = {
    DBK_FIELD(shop_product, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(shop_product, sku, "sku", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(shop_product, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_product, price_cents, "price_cents", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_product, stock, "stock", DBK_TYPE_INT64, 0),
};
const dbk_entity shop_product_entity = DBK_ENTITY_PLAIN("products", shop_product, product_fields);

static const dbk_field item_fields[] = {
    DBK_FIELD(shop_order_item, order_id, "order_id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(shop_order_item, product_id, "product_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_order_item, quantity, "quantity", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_order_item, unit_price_cents, "unit_price_cents", DBK_TYPE_INT64, 0),
};
static const char *const item_key[] = {"order_id", "product_id"};
static const dbk_unique item_uniques[] = {{item_key, 2}};
const dbk_entity shop_item_entity = {"order_items", sizeof(shop_order_item), item_fields,
                                     DBK_NELEMS(item_fields), NULL, 0, item_uniques, 1};

static const dbk_field order_fields[] = {
    DBK_FIELD(shop_order, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(shop_order, reference, "reference", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(shop_order, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_order, status, "status", DBK_TYPE_TEXT, 0),
    DBK_FIELD(shop_order, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
static const dbk_relation order_rels[] = {
    DBK_HAS_MANY(shop_order, "items", items, nitems, &shop_item_entity, "order_id"),
};
const dbk_entity shop_order_entity = DBK_ENTITY("orders", shop_order, order_fields, order_rels);

static const dbk_field account_fields[] = {
    DBK_FIELD(shop_account, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(shop_account, name, "name", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD_NULL(shop_account, user_id, user_id_null, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_account, balance_cents, "balance_cents", DBK_TYPE_INT64, 0),
    DBK_FIELD(shop_account, updated_at, "updated_at", DBK_TYPE_TIMESTAMP, DBK_F_UPDATED_AT),
};
const dbk_entity shop_account_entity = DBK_ENTITY_PLAIN("accounts", shop_account, account_fields);

dbk_rc shop_model_init(dbk_error *err)
{
    const dbk_entity *all[] = {&shop_user_entity,  &shop_post_entity,  &shop_product_entity,
                               &shop_item_entity,  &shop_order_entity, &shop_account_entity};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        dbk_rc rc = dbk_entity_init(all[i], err);
        if (rc != DBK_OK)
            return rc;
    }
    return DBK_OK;
}

void shop_model_release(void)
{
    dbk_entity_release(&shop_user_entity);
    dbk_entity_release(&shop_post_entity);
    dbk_entity_release(&shop_product_entity);
    dbk_entity_release(&shop_item_entity);
    dbk_entity_release(&shop_order_entity);
    dbk_entity_release(&shop_account_entity);
}

json_t *shop_time_json(int64_t usec)
{
    char buf[40];
    if (dbk_timestamp_format(usec, buf, sizeof buf) != DBK_OK)
        return json_null();
    /* "YYYY-MM-DD HH:MM:SS.ffffff+00:00" -> ISO 8601 with a 'T'. */
    if (strlen(buf) > 10 && buf[10] == ' ')
        buf[10] = 'T';
    return json_string(buf);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *shop_post_json(const shop_post *p)
{
    return json_pack("{s:I,s:I,s:o,s:o,s:o,s:b,s:o}", "id", (json_int_t)p->id, "author_id",
                     (json_int_t)p->user_id, "slug", str_or_null(p->slug), "title",
                     str_or_null(p->title), "body", str_or_null(p->body), "published",
                     p->published, "created_at", shop_time_json(p->created_at));
}

json_t *shop_user_json(const shop_user *u, bool with_posts)
{
    json_t *j = json_pack("{s:I,s:o,s:o,s:o,s:o}", "id", (json_int_t)u->id, "name",
                          str_or_null(u->name), "email", str_or_null(u->email), "status",
                          str_or_null(u->status), "created_at", shop_time_json(u->created_at));
    if (j && with_posts) {
        json_t *posts = json_array();
        for (size_t i = 0; i < u->nposts; i++)
            json_array_append_new(posts, shop_post_json(&u->posts[i]));
        json_object_set_new(j, "posts", posts);
    }
    return j;
}

json_t *shop_product_json(const shop_product *p)
{
    return json_pack("{s:I,s:o,s:o,s:I,s:I}", "id", (json_int_t)p->id, "sku", str_or_null(p->sku),
                     "name", str_or_null(p->name), "price_cents", (json_int_t)p->price_cents,
                     "stock", (json_int_t)p->stock);
}

json_t *shop_order_json(const shop_order *o)
{
    json_t *items = json_array();
    int64_t total = 0;
    for (size_t i = 0; i < o->nitems; i++) {
        const shop_order_item *it = &o->items[i];
        total += it->quantity * it->unit_price_cents;
        json_array_append_new(items, json_pack("{s:I,s:I,s:I,s:I}", "product_id",
                                               (json_int_t)it->product_id, "quantity",
                                               (json_int_t)it->quantity, "unit_price_cents",
                                               (json_int_t)it->unit_price_cents, "line_total_cents",
                                               (json_int_t)(it->quantity * it->unit_price_cents)));
    }
    return json_pack("{s:I,s:o,s:I,s:o,s:o,s:o,s:I}", "id", (json_int_t)o->id, "reference",
                     str_or_null(o->reference), "user_id", (json_int_t)o->user_id, "status",
                     str_or_null(o->status), "created_at", shop_time_json(o->created_at), "items",
                     items, "total_cents", (json_int_t)total);
}

json_t *shop_account_json(const shop_account *a)
{
    return json_pack("{s:I,s:o,s:o,s:I,s:o}", "id", (json_int_t)a->id, "name", str_or_null(a->name),
                     "owner_id", a->user_id_null ? json_null() : json_integer(a->user_id),
                     "balance_cents", (json_int_t)a->balance_cents, "updated_at",
                     shop_time_json(a->updated_at));
}
