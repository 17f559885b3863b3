/* dbkit:topology */
/*
 * The example service behind PgBouncer 1.18 in transaction mode (a server
 * pool of 2) with pooler=transaction: 8 client threads on 8 HTTP threads
 * mix user reads, pages with a total (a COUNT and a page in one pipeline),
 * transfers (transactions) and product reviews (documents on jsonb), every
 * answer checked. The schema step runs on DATABASE_DIRECT_URL (migrations
 * take a session lock, which the pooler cannot give), as docs/pgbouncer.md
 * says; the data is made first on a direct connection.
 *
 * Zero answers other than the expected status, zero transport errors, no
 * "prepared statement" error in the shop's log, money conserved.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgtopo.h"
#include "testutil.h"

#ifdef SHOP_TEST_HAVE_CURL
#include <curl/curl.h>
#include <jansson.h>

#include "shopproc.h"

#define NTHREADS 8
#define PER_THREAD 150
#define START_BALANCE 100000

typedef struct client {
    const dbkt_shop *shop;
    int idx;
    int64_t user, from, to, product;
    int ok, bad;
    int64_t moved;
    char first_bad[300];
} client;

static dbkt_shop g_shop;
static dbkt_pgtopo *g_topo;

static int teardown(void **state)
{
    (void)state;
    if (g_shop.pid)
        dbkt_shop_stop(&g_shop, 10000);
    if (g_topo)
        dbkt_pgtopo_stop(g_topo);
    g_topo = NULL;
    return 0;
}

static void note_bad(client *c, const char *what, const dbkt_http_res *r)
{
    c->bad++;
    if (!c->first_bad[0])
        snprintf(c->first_bad, sizeof c->first_bad, "%s: HTTP %ld %.200s", what, r->status,
                 r->status ? (r->body ? r->body : "") : r->error);
}

static void *client_main(void *arg)
{
    client *c = arg;
    CURL *h = dbkt_http_handle();
    for (int i = 0; h && i < PER_THREAD; i++) {
        dbkt_http_res r;
        char path[128], body[200];
        switch (i % 4) {
        case 0: /* a user: the one this thread made */
            snprintf(path, sizeof path, "/users/%lld", (long long)c->user);
            dbkt_http_call(h, c->shop->base, "GET", path, NULL, 0, NULL, 15000L, &r);
            if (r.status == 200 && json_integer_value(json_object_get(r.json, "id")) == c->user)
                c->ok++;
            else
                note_bad(c, "GET /users/{id}", &r);
            break;
        case 1: /* a page with a total */
            dbkt_http_call(h, c->shop->base, "GET", "/users?limit=5&offset=0", NULL, 0, NULL,
                           15000L, &r);
            if (r.status == 200 && json_integer_value(json_object_get(r.json, "total")) >= NTHREADS)
                c->ok++;
            else
                note_bad(c, "GET /users", &r);
            break;
        case 2: /* a transfer: a transaction */
            snprintf(body, sizeof body,
                     "{\"from_account\":%lld,\"to_account\":%lld,\"amount_cents\":%d}",
                     (long long)c->from, (long long)c->to, i + 1);
            dbkt_http_call(h, c->shop->base, "POST", "/transfers", body, -1, NULL, 15000L, &r);
            if (r.status == 200) {
                c->ok++;
                c->moved += i + 1;
            } else {
                note_bad(c, "POST /transfers", &r);
            }
            break;
        default: /* the product's reviews (documents) */
            snprintf(path, sizeof path, "/products/%lld/reviews?limit=10", (long long)c->product);
            dbkt_http_call(h, c->shop->base, "GET", path, NULL, 0, NULL, 15000L, &r);
            if (r.status == 200 && json_integer_value(json_object_get(r.json, "total")) == 1)
                c->ok++;
            else
                note_bad(c, "GET /products/{id}/reviews", &r);
        }
        dbkt_http_res_free(&r);
    }
    dbkt_http_handle_free(h);
    return NULL;
}

static int64_t post_id(const dbkt_shop *s, const char *path, const char *body)
{
    dbkt_http_res r;
    bool answered = dbkt_http_call(NULL, s->base, "POST", path, body, -1, NULL, 15000L, &r);
    json_t *id = json_object_get(r.json, "id");
    int64_t v = answered && r.status == 201 && json_is_integer(id) ? json_integer_value(id) : -1;
    if (v <= 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "POST %s: HTTP %ld %.200s", path, r.status,
                 r.body ? r.body : r.error);
        dbkt_http_res_free(&r);
        fail_msg("%s", msg);
    }
    dbkt_http_res_free(&r);
    return v;
}

static void post_review(const dbkt_shop *s, int64_t product, int64_t user)
{
    char path[96], body[200];
    snprintf(path, sizeof path, "/products/%lld/reviews", (long long)product);
    snprintf(body, sizeof body, "{\"user_id\":%lld,\"rating\":4,\"title\":\"fine\"}",
             (long long)user);
    dbkt_http_res r;
    dbkt_http_call(NULL, s->base, "POST", path, body, -1, NULL, 15000L, &r);
    long st = r.status;
    dbkt_http_res_free(&r);
    assert_int_equal(st, 201);
}

static void shop_pgbouncer_transaction_mode(void **state)
{
    (void)state;
    g_topo = dbkt_pgtopo_start(0);
    char direct[300], pooled[400];
    snprintf(direct, sizeof direct, "DATABASE_URL=%s", dbkt_pgtopo_url(g_topo, 0));
    const char *const env_direct[] = {direct, "CACHE_URL=off", "ACCESS_LOG=off", NULL};

    /* The schema and the data, on a direct connection. */
    client c[NTHREADS];
    memset(c, 0, sizeof c);
    dbkt_shop_start(&g_shop, env_direct);
    for (int i = 0; i < NTHREADS; i++) {
        char body[200];
        snprintf(body, sizeof body,
                 "{\"name\":\"Pool %d\",\"email\":\"pool%d@example.com\",\"password\":\"hunter22!\"}",
                 i, i);
        c[i].user = post_id(&g_shop, "/users", body);
        snprintf(body, sizeof body, "{\"owner_id\":%lld,\"balance_cents\":%d}",
                 (long long)c[i].user, START_BALANCE);
        c[i].from = post_id(&g_shop, "/accounts", body);
        snprintf(body, sizeof body, "{\"owner_id\":%lld,\"balance_cents\":0}",
                 (long long)c[i].user);
        c[i].to = post_id(&g_shop, "/accounts", body);
        snprintf(body, sizeof body, "{\"name\":\"Thing %d\",\"price_cents\":%d,\"stock\":5}", i, 100 + i);
        c[i].product = post_id(&g_shop, "/products", body);
        post_review(&g_shop, c[i].product, c[i].user);
    }
    assert_int_equal(dbkt_shop_stop(&g_shop, 10000), 0);

    /* The service through PgBouncer. */
    const char *burl = dbkt_pgtopo_bouncer_start(g_topo, 0, 2);
    assert_non_null(burl);
    snprintf(pooled, sizeof pooled, "DATABASE_URL=%s%cpooler=transaction", burl,
             strchr(burl, '?') ? '&' : '?');
    char direct_for_schema[320];
    snprintf(direct_for_schema, sizeof direct_for_schema, "DATABASE_DIRECT_URL=%s",
             dbkt_pgtopo_url(g_topo, 0));
    const char *const env_pooled[] = {pooled,           direct_for_schema, "CACHE_URL=off",
                                      "ACCESS_LOG=off", "HTTP_THREADS=8",  "POOL_MAX=4",
                                      NULL};
    dbkt_shop_start(&g_shop, env_pooled);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        c[i].shop = &g_shop;
        c[i].idx = i;
        assert_int_equal(pthread_create(&th[i], NULL, client_main, &c[i]), 0);
    }
    int ok = 0, bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        ok += c[i].ok;
        bad += c[i].bad;
        if (c[i].first_bad[0])
            fprintf(stderr, "thread %d: first unexpected answer: %s\n", i, c[i].first_bad);
    }
    fprintf(stderr, "through PgBouncer: %d answers as expected, %d not\n", ok, bad);
    bool ps = dbkt_shop_log_contains(&g_shop, "prepared statement");
    assert_int_equal(dbkt_shop_stop(&g_shop, 10000), 0);
    if (bad)
        dbkt_shop_dump_log(&g_shop);
    assert_int_equal(bad, 0);
    assert_int_equal(ok, NTHREADS * PER_THREAD);
    assert_false(ps);

    /* Money: every acknowledged transfer moved exactly its amount. */
    dbk_conn *conn = dbkt_open(dbkt_pgtopo_url(g_topo, 0));
    for (int i = 0; i < NTHREADS; i++) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT balance_cents FROM accounts WHERE id = %lld",
                 (long long)c[i].to);
        assert_int_equal(dbkt_int(dbk_conn_db(conn), sql), c[i].moved);
        snprintf(sql, sizeof sql, "SELECT balance_cents FROM accounts WHERE id = %lld",
                 (long long)c[i].from);
        assert_int_equal(dbkt_int(dbk_conn_db(conn), sql), START_BALANCE - c[i].moved);
    }
    dbk_conn_close(conn);
}

int main(int argc, char **argv)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(shop_pgbouncer_transaction_mode, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

#else /* !SHOP_TEST_HAVE_CURL */

#define SHOP_PGBOUNCER_FALLBACK_TEST cmocka_unit_test
static void shop_pgbouncer_prerequisites(void **state)
{
    (void)state;
    dbkt_skip(1, "shop tests need libcurl (libcurl4-openssl-dev) and the shop example "
                 "(libmicrohttpd-dev, libjansson-dev, libsodium-dev)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {SHOP_PGBOUNCER_FALLBACK_TEST(shop_pgbouncer_prerequisites)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
#endif
