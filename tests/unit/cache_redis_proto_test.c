/*
 * The pure parts of the Redis backend (src/cache/redis_proto.c), no server:
 * the three URL forms and their errors (a message never holds the
 * password), redaction of the new forms, key slots against values the
 * Cluster specification gives, hash tags, MOVED/ASK and CLUSTER SLOTS
 * replies (built by hiredis's own reader from RESP bytes).
 */
#include "testutil.h"

#include "cache/cache_int.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

#define PW "s3cretPW"

static void url_ok(const char *url, struct dbk__redis_url *u)
{
    dbk_error err;
    memset(&err, 0, sizeof err);
    if (dbk__redis_url_parse(url, u, &err) != DBK_OK)
        fail_msg("%s: %s", url, err.message);
}

static void url_bad(const char *url, const char *want)
{
    struct dbk__redis_url u;
    dbk_error err;
    memset(&err, 0, sizeof err);
    dbk_rc rc = dbk__redis_url_parse(url, &u, &err);
    if (rc == DBK_OK)
        fail_msg("%s: accepted", url);
    assert_int_equal(rc, DBK_ECONFIG);
    if (!strstr(err.message, want))
        fail_msg("%s: message \"%s\" lacks \"%s\"", url, err.message, want);
    assert_null(strstr(err.message, PW));
}

static void cache_redis_url_sentinel(void **state)
{
    (void)state;
    struct dbk__redis_url u;
    url_ok("redis-sentinel://:" PW "@10.0.0.1:26380,sent2,[::1]:26381/mymaster/2", &u);
    assert_int_equal(u.mode, DBK__REDIS_SENTINEL);
    assert_int_equal(u.nseeds, 3);
    assert_string_equal(u.seeds[0].host, "10.0.0.1");
    assert_int_equal(u.seeds[0].port, 26380);
    assert_string_equal(u.seeds[1].host, "sent2");
    assert_int_equal(u.seeds[1].port, 26379); /* the sentinel default */
    assert_string_equal(u.seeds[2].host, "::1");
    assert_int_equal(u.seeds[2].port, 26381);
    assert_string_equal(u.master, "mymaster");
    assert_int_equal(u.db, 2);
    assert_string_equal(u.password, PW);
    url_ok("redis-sentinel://h:1/m%2Fx", &u);
    assert_string_equal(u.master, "m/x");
    assert_int_equal(u.db, 0);
    url_ok("redis-sentinel://h:1/m/", &u);
    assert_string_equal(u.master, "m");
}

static void cache_redis_url_cluster(void **state)
{
    (void)state;
    struct dbk__redis_url u;
    url_ok("redis-cluster://app:" PW "@n1:7000,n2:7001,n3", &u);
    assert_int_equal(u.mode, DBK__REDIS_CLUSTER);
    assert_int_equal(u.nseeds, 3);
    assert_int_equal(u.seeds[1].port, 7001);
    assert_int_equal(u.seeds[2].port, 6379);
    assert_string_equal(u.user, "app");
    assert_string_equal(u.host, "n1");
    assert_int_equal(u.port, 7000);
    url_ok("redis-cluster://n1:7000/0", &u);
}

static void cache_redis_url_single_unchanged(void **state)
{
    (void)state;
    struct dbk__redis_url u;
    url_ok("redis://u:" PW "@cache.local:6390/3", &u);
    assert_int_equal(u.mode, DBK__REDIS_SINGLE);
    assert_string_equal(u.host, "cache.local");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 3);
    assert_string_equal(u.user, "u");
    url_ok("redis://", &u);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    url_ok("redis://[::1]:7/1", &u);
    assert_string_equal(u.host, "::1");
    /* a comma is not a list separator in redis:// */
    url_bad("redis://a:1,b:2", "port");
}

static void cache_redis_url_errors(void **state)
{
    (void)state;
    url_bad("redis-sentinel://:" PW "@h:1", "master name");
    url_bad("redis-sentinel://:" PW "@h:1,,h2:2/m", "empty host");
    url_bad("redis-sentinel://:" PW "@h:1,/m", "empty host");
    url_bad("redis-sentinel://:" PW "@h:99999/m", "port");
    url_bad("redis-sentinel://:" PW "@h:1/m/x", "database");
    url_bad("redis-cluster://:" PW "@h:1/2", "only database 0");
    url_bad("redis-cluster://:" PW "@h:1?timeout=1", "query");
    url_bad("rediss-sentinel://:" PW "@h:1/m", "tls");
    url_bad("redis-sentinal://:" PW "@h:1/m", "must start with");
    url_bad("redis-sentinel://:" PW "@[::1/m", "ipv6");
    char many[400] = "redis-cluster://";
    for (int i = 0; i < DBK__REDIS_MAX_SEEDS + 1; i++)
        strcat(many, i ? ",h:1" : "h:1");
    url_bad(many, "more than");
}

static void cache_redis_url_redacted(void **state)
{
    (void)state;
    const char *urls[] = {
        "redis-sentinel://:" PW "@h1:26379,h2:26379/mymaster/1",
        "redis-cluster://app:" PW "@n1:7000,n2:7001",
    };
    for (size_t i = 0; i < 2; i++) {
        char buf[256];
        dbk_redact_url(urls[i], buf, sizeof buf);
        assert_null(strstr(buf, PW));
        assert_non_null(strstr(buf, "***"));
        assert_non_null(strstr(buf, i ? "n1:7000,n2:7001" : "h1:26379,h2:26379/mymaster/1"));
    }
}

static void cache_redis_key_slot(void **state)
{
    (void)state;
    /* the Cluster specification's CRC16 check value: 0x31C3 */
    assert_int_equal(dbk__redis_key_slot("123456789", 9), 0x31C3);
    assert_int_equal(dbk__redis_key_slot("{user1000}.following", 20),
                     dbk__redis_key_slot("user1000", 8));
    assert_int_equal(dbk__redis_key_slot("{user1000}.followers", 20),
                     dbk__redis_key_slot("user1000", 8));
    /* an empty tag: the whole key */
    assert_int_not_equal(dbk__redis_key_slot("foo{}{bar}", 10), dbk__redis_key_slot("bar", 3));
    /* the tag runs to the first '}' after the first '{' */
    assert_int_equal(dbk__redis_key_slot("foo{{bar}}zap", 13), dbk__redis_key_slot("{bar", 4));
    assert_int_equal(dbk__redis_key_slot("foo{bar}{zap}", 13), dbk__redis_key_slot("bar", 3));
    /* no '}' after the '{': the whole key */
    assert_int_not_equal(dbk__redis_key_slot("a{bcd", 5), dbk__redis_key_slot("bcd", 3));
    for (unsigned s = 0; s < DBK__REDIS_SLOTS; s += 97) {
        const char *t = dbk__redis_slot_tag(s);
        assert_int_equal(dbk__redis_key_slot(t, strlen(t)), s);
    }
}

static void cache_redis_redirect(void **state)
{
    (void)state;
    unsigned slot;
    struct dbk__redis_addr a;
    const char *m = "MOVED 3999 127.0.0.1:6381";
    assert_int_equal(dbk__redis_parse_redirect(m, strlen(m), &slot, &a), 1);
    assert_int_equal(slot, 3999);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6381);
    m = "ASK 16383 ::1:7000";
    assert_int_equal(dbk__redis_parse_redirect(m, strlen(m), &slot, &a), 2);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 7000);
    const char *bad[] = {"MOVED 16384 h:1", "MOVED 1 h:0", "MOVED 1 h", "MOVED x h:1",
                         "MOVED 1 :1", "ASK  h:1", "MOVEDX 1 h:1", "TRYAGAIN Multiple keys",
                         "READONLY You can't write"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (dbk__redis_parse_redirect(bad[i], strlen(bad[i]), &slot, &a) != 0)
            fail_msg("accepted \"%s\"", bad[i]);
}

static redisReply *resp(const char *bytes)
{
    redisReader *rd = redisReaderCreate();
    assert_non_null(rd);
    assert_int_equal(redisReaderFeed(rd, bytes, strlen(bytes)), REDIS_OK);
    void *rep = NULL;
    assert_int_equal(redisReaderGetReply(rd, &rep), REDIS_OK);
    redisReaderFree(rd);
    assert_non_null(rep);
    return rep;
}

static void cache_redis_cluster_slots(void **state)
{
    (void)state;
    struct dbk__redis_range rg[8];
    redisReply *r = resp("*2\r\n"
                         "*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
                         "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n"
                         "*3\r\n:5461\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n");
    assert_int_equal(dbk__redis_parse_slots(r, "10.1.1.1", rg, 8), 2);
    assert_int_equal(rg[0].lo, 0);
    assert_int_equal(rg[0].hi, 5460);
    assert_int_equal(rg[0].master.port, 7000);
    assert_string_equal(rg[1].master.host, "10.1.1.1"); /* empty host: the node asked */
    freeReplyObject(r);
    const char *bad[] = {
        "*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\nh\r\n:1\r\n",     /* hi < lo */
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n", /* past the last slot */
        "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n",     /* port 0 */
        "*1\r\n*2\r\n:0\r\n:1\r\n",                            /* no master */
        "+OK\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = resp(bad[i]);
        if (dbk__redis_parse_slots(r, NULL, rg, 8) != -1)
            fail_msg("accepted CLUSTER SLOTS reply %zu", i);
        freeReplyObject(r);
    }
    /* more ranges than room */
    r = resp("*2\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n*3\r\n:2\r\n:3\r\n*2\r\n$1\r\nh\r\n:1\r\n");
    assert_int_equal(dbk__redis_parse_slots(r, NULL, rg, 1), -1);
    freeReplyObject(r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cache_redis_url_sentinel),
        cmocka_unit_test(cache_redis_url_cluster),
        cmocka_unit_test(cache_redis_url_single_unchanged),
        cmocka_unit_test(cache_redis_url_errors),
        cmocka_unit_test(cache_redis_url_redacted),
        cmocka_unit_test(cache_redis_key_slot),
        cmocka_unit_test(cache_redis_redirect),
        cmocka_unit_test(cache_redis_cluster_slots),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
