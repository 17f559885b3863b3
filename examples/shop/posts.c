/*
 * posts.c - the /posts endpoints.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

/* ---- posts ---- */

void shop_posts_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"author_id", "title", "body", "published"};
    if (!shop_only_fields(rs, rq->body, allowed, 4))
        return;
    int64_t author;
    const char *title, *body = "";
    if (shop_get_int(rs, rq->body, "author_id", true, 1, SHOP_MAX_ID, &author) < 0 ||
        shop_get_str(rs, rq->body, "title", true, 1, 300, false, &title) < 0 ||
        shop_get_str(rs, rq->body, "body", false, 0, 20000, true, &body) < 0)
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
    if (!shop_user_find(rq, rs, author, &u, "author"))
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
    shop_random_hex(slug + o, 4);
    shop_post in = {0}, out;
    in.user_id = author;
    in.slug = slug;
    in.title = title;
    in.body = body;
    in.published = published;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_post_entity, &in, &out, rq->arena, &err);
    if (shop_reply_expected(rs, rc, DBK_EFOREIGN_KEY, 404, "not_found", "author not found"))
        return;
    if (shop_reply_failed(rs, rc, &err, "post"))
        return;
    shop_reply_json(rs, 201, shop_post_json(&out));
}

void shop_posts_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_post p;
    if (shop_find_or_reply(rq, rs, &shop_post_entity, id, &p, "post"))
        shop_reply_json(rs, 200, shop_post_json(&p));
}
