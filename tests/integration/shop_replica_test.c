/* dbkit:topology */
/*
 * The example shop (examples/shop) on a primary with a streaming replica
 * (tests/support/pgtopo.h), over HTTP: GETs read on the replica, writes on
 * the primary, and a client that carries the position cookie (dbkit_pos)
 * reads its own write while the replica is behind; /metrics counts reads
 * per target and /health lists the replica with its lag.
 *
 * The lag is made on purpose with pg_wal_replay_pause() on the replica and
 * DB_REPLICA_MAX_LAG_MS is long, so the paused replica stays in the
 * rotation: only the cookie may keep a read off it. Nothing depends on
 * timing. Which server answered shows in the answer itself: a product
 * created while replay is paused exists on the primary only (200 there,
 * 404 on the replica).
 *
 * The shop is started as shop_test does (tests/support/shopproc.h: a free
 * port, stopped by its PID); every wait is bounded: start-up 20 s, each
 * HTTP call 15 s, each poll 30 s, the exit 10 s.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pgtopo.h"
#include "testutil.h"

#ifdef SHOP_TEST_HAVE_CURL
#include <curl/curl.h>
#include <jansson.h>

#include "shopproc.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the shop process and HTTP (tests/support/shopproc.h) ---- */

typedef dbkt_shop shop_proc;
typedef dbkt_http_res res;
#define res_free dbkt_http_res_free
#define dump_log dbkt_shop_dump_log

/* Starts the shop with its cache off and `env` ("NAME=value", NULL-ended,
 * at most 16). */
static void shop_start(shop_proc *s, const char *const *env)
{
    const char *all[18] = {"CACHE_URL=off"};
    size_t n = 1;
    for (size_t i = 0; env[i]; i++) {
        assert_true(n < sizeof all / sizeof all[0] - 1);
        all[n++] = env[i];
    }
    all[n] = NULL;
    dbkt_shop_start(s, all);
}

/* SIGTERM, at most 10 s, then SIGKILL; the exit status or -1. */
static int shop_stop(shop_proc *s)
{
    return dbkt_shop_stop(s, 10000);
}

/* One request; `cookie` ("name=value", may be NULL) sent as Cookie. */
static res http(const shop_proc *s, const char *method, const char *path, const char *body,
                const char *cookie)
{
    res r;
    if (!dbkt_http_call(NULL, s->base, method, path, body, -1, cookie, 15000L, &r)) {
        char e[sizeof r.error];
        snprintf(e, sizeof e, "%s", r.error);
        res_free(&r);
        fail_msg("%s %s: %s", method, path, e);
    }
    return r;
}

static res call(const shop_proc *s, const char *method, const char *path, const char *body,
                const char *cookie, long status)
{
    res r = http(s, method, path, body, cookie);
    if (r.status != status)
        fail_msg("%s %s (cookie %s): expected HTTP %ld, got %ld: %s", method, path,
                 cookie ? cookie : "none", status, r.status, r.body ? r.body : "(no body)");
    return r;
}

/* The first sample named exactly `name` (labels included) in /metrics, or
 * -1 when absent. */
static double metric(const shop_proc *s, const char *name)
{
    res r = call(s, "GET", "/metrics", NULL, NULL, 200);
    double v = dbkt_metrics_value(r.body, name);
    res_free(&r);
    return v;
}

#define REPLICA_READS "shop_db_reads_total{target=\"replica1\"}"
#define PRIMARY_READS "shop_db_reads_total{target=\"primary\"}"
#define RYW_FALLBACKS "shop_db_read_fallbacks_total{cause=\"read_your_writes\"}"

/* /health's entry for replica 1 (a new reference), asserting the shape. */
static json_t *health_replica(const shop_proc *s)
{
    res r = call(s, "GET", "/health", NULL, NULL, 200);
    assert_non_null(r.json);
    json_t *reps = json_object_get(r.json, "replicas");
    if (!json_is_array(reps) || json_array_size(reps) != 1)
        fail_msg("/health lists no replica: %s", r.body);
    json_t *one = json_incref(json_array_get(reps, 0));
    res_free(&r);
    assert_int_equal(json_integer_value(json_object_get(one, "replica")), 1);
    assert_true(json_is_string(json_object_get(one, "state")));
    return one;
}

/* Polls /health (30 s) until replica 1 is "up". */
static void wait_replica_up(const shop_proc *s)
{
    for (int k = 0; k < 300; k++) {
        json_t *one = health_replica(s);
        bool up = strcmp(json_string_value(json_object_get(one, "state")), "up") == 0;
        json_decref(one);
        if (up)
            return;
        sleep_ms(100);
    }
    fail_msg("replica 1 never came up in /health");
}

/* ---- the test ---- */

static void shop_replica_read_your_writes_cookie(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    char dburl[256], repurls[300];
    snprintf(dburl, sizeof dburl, "DATABASE_URL=%s", dbkt_pgtopo_url(t, 0));
    snprintf(repurls, sizeof repurls, "DATABASE_REPLICA_URLS=%s", dbkt_pgtopo_url(t, 1));
    const char *env[] = {dburl,
                         repurls,
                         "DB_REPLICA_MAX_LAG_MS=600000",
                         "DB_READ_YOUR_WRITES_WAIT_MS=200",
                         "SHOP_POS_MAX_AGE=7",
                         NULL};
    shop_proc s;
    shop_start(&s, env);

    /* The schema is on the replica, which is in the rotation. */
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    wait_replica_up(&s);

    /* The cluster's background sampling (every 100 ms) is not the
     * service's work: it does not show in the shop's query count. */
    double q0 = metric(&s, "shop_db_queries_total");
    sleep_ms(600);
    assert_true(metric(&s, "shop_db_queries_total") == q0);

    /* A plain GET is served by the replica: counted there. */
    double rep0 = metric(&s, REPLICA_READS);
    assert_true(rep0 >= 0);
    res r = call(&s, "POST", "/products", "{\"name\":\"Before\",\"price_cents\":100,\"stock\":1}",
                 NULL, 201);
    json_int_t before_id = json_integer_value(json_object_get(r.json, "id"));
    res_free(&r);
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    char path[64];
    snprintf(path, sizeof path, "/products/%lld", (long long)before_id);
    r = call(&s, "GET", path, NULL, NULL, 200);
    res_free(&r);
    assert_true(metric(&s, REPLICA_READS) >= rep0 + 1);

    /* The replica stops replaying: a write now exists on the primary only. */
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_pause()"), 0);
    r = call(&s, "POST", "/products", "{\"name\":\"Mine\",\"price_cents\":250,\"stock\":3}", NULL,
             201);
    json_int_t id = json_integer_value(json_object_get(r.json, "id"));
    assert_true(id > before_id);
    /* The write hands out the position: dbkit_pos=<hex>/<hex> with its
     * attributes. */
    if (strncmp(r.set_cookie, "dbkit_pos=", 10) != 0)
        fail_msg("no dbkit_pos cookie after a write: \"%s\"", r.set_cookie);
    assert_non_null(strstr(r.set_cookie, "HttpOnly"));
    assert_non_null(strstr(r.set_cookie, "SameSite=Lax"));
    assert_non_null(strstr(r.set_cookie, "Max-Age=7"));
    assert_non_null(strstr(r.set_cookie, "Path=/"));
    char cookie[64];
    size_t vlen = strcspn(r.set_cookie, ";");
    assert_true(vlen < sizeof cookie);
    memcpy(cookie, r.set_cookie, vlen);
    cookie[vlen] = '\0';
    assert_true(dbk_token_parse(cookie + 10, NULL));
    res_free(&r);

    /* A read answers no cookie. */
    snprintf(path, sizeof path, "/products/%lld", (long long)id);
    r = call(&s, "GET", path, NULL, cookie, 200);
    assert_string_equal(r.set_cookie, "");
    assert_int_equal(json_integer_value(json_object_get(r.json, "id")), id);
    res_free(&r);

    /* With the cookie the client reads its own write: from the primary,
     * after the bounded wait, counted as such. */
    double prim = metric(&s, PRIMARY_READS), ryw = metric(&s, RYW_FALLBACKS);
    double rep = metric(&s, REPLICA_READS);
    assert_true(prim >= 1 && ryw >= 1);
    r = call(&s, "GET", path, NULL, cookie, 200);
    res_free(&r);
    assert_true(metric(&s, PRIMARY_READS) == prim + 1);
    assert_true(metric(&s, RYW_FALLBACKS) == ryw + 1);
    assert_true(metric(&s, REPLICA_READS) == rep);

    /* Without it the replica answers, and has not seen the row. */
    r = call(&s, "GET", path, NULL, NULL, 404);
    res_free(&r);
    assert_true(metric(&s, REPLICA_READS) == rep + 1);

    /* A malformed or hostile cookie is ignored, as if absent: the replica
     * answers (404), never an error. */
    const char *bad[] = {"dbkit_pos=",
                         "dbkit_pos=nonsense",
                         "dbkit_pos=0/",
                         "dbkit_pos=/1",
                         "dbkit_pos=1/2/3",
                         "dbkit_pos=123456789/0",
                         "dbkit_pos=0%2F1' OR '1'='1",
                         "dbkit_pos=\"0/1\"",
                         "dbkit_pos=0/1; dbkit_pos=FFFFFFFF/FFFFFFFF ; x=1",
                         "dbkit_pos=00000000000000000000000000000000000000000000000/1",
                         NULL};
    for (int i = 0; bad[i]; i++) {
        r = call(&s, "GET", path, NULL, bad[i], 404);
        res_free(&r);
    }
    char longc[5000];
    memcpy(longc, "dbkit_pos=", 10);
    memset(longc + 10, 'A', sizeof longc - 11);
    longc[sizeof longc - 1] = '\0';
    r = call(&s, "GET", path, NULL, longc, 404);
    res_free(&r);

    /* /health lists the replica with its state and lag (a number: it has
     * been sampled; the paused replay makes it grow). */
    json_t *h = health_replica(&s);
    assert_string_equal(json_string_value(json_object_get(h, "state")), "up");
    assert_true(json_is_integer(json_object_get(h, "lag_ms")));
    assert_true(json_integer_value(json_object_get(h, "reads")) >= 3);
    json_decref(h);
    assert_true(metric(&s, "shop_replica_up{replica=\"1\"}") == 1);
    assert_true(metric(&s, "shop_replica_lag_seconds{replica=\"1\"}") >= 0);

    /* Replay resumes: the row reaches the replica, which serves it again
     * with or without the cookie. */
    assert_int_equal(dbkt_pgtopo_exec(t, 1, "SELECT pg_wal_replay_resume()"), 0);
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    r = call(&s, "GET", path, NULL, NULL, 200);
    res_free(&r);
    ryw = metric(&s, RYW_FALLBACKS);
    r = call(&s, "GET", path, NULL, cookie, 200);
    res_free(&r);
    assert_true(metric(&s, RYW_FALLBACKS) == ryw);

    int st = shop_stop(&s);
    if (st != 0)
        dump_log(&s);
    assert_int_equal(st, 0);
    dbkt_pgtopo_stop(t);
}

int main(int argc, char **argv)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shop_replica_read_your_writes_cookie),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

#else /* !SHOP_TEST_HAVE_CURL */

/* Built without libcurl or the shop: skips (fails under CI=true) whatever
 * the filter says; the macro keeps this out of the CTest registration. */
#define SHOP_FALLBACK_TEST cmocka_unit_test
static void shop_replica_prerequisites(void **state)
{
    (void)state;
    dbkt_skip(1, "shop tests need libcurl (libcurl4-openssl-dev) and the shop example "
                 "(libmicrohttpd-dev, libjansson-dev, libsodium-dev)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {SHOP_FALLBACK_TEST(shop_replica_prerequisites)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
#endif
