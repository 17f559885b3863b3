/*
 * The Redis cache behind Sentinel when everything wants a password: the
 * master and its replica (requirepass, masterauth; the sentinels' auth-pass)
 * and the three sentinels themselves (their default user's password set
 * through ACL, as requirepass in sentinel.conf would). The topology comes
 * from tests/support/redistopo.h; the passwords are set on it at run time.
 *
 * The URL carries both: the userinfo of redis-sentinel:// is the master's,
 * `sentinel_password` the sentinels'. Checked: values go to the master
 * through sentinels that require AUTH; a missing or wrong sentinel password
 * and a wrong master password are DBK_EAUTH with no password in the message
 * or hint; the +switch-master subscriber authenticates too, so a
 * `SENTINEL FAILOVER` is followed (its log line) and hits resume.
 */
/* dbkit:topology */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "redistopo.h"
#include "testutil.h"

#define MASTER 0
#define REPLICA 1
#define SENTINEL0 2

#define MPW "m4ster-pw"
#define SPW "s3ntinel-pw"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One command on a new connection to port, after AUTH with pw when pw is
 * not NULL; fails the test when the server does not answer or refuses. */
static redisReply *cmd_auth(int port, const char *pw, const char *fmt, const char *a1,
                            const char *a2)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err)
        fail_msg("cannot connect to 127.0.0.1:%d", port);
    redisSetTimeout(c, tv);
    if (pw) {
        redisReply *a = redisCommand(c, "AUTH %s", pw);
        if (!a || a->type == REDIS_REPLY_ERROR)
            fail_msg("AUTH refused by 127.0.0.1:%d", port);
        freeReplyObject(a);
    }
    redisReply *rep = redisCommand(c, fmt, a1, a2);
    redisFree(c);
    if (!rep)
        fail_msg("no answer from 127.0.0.1:%d", port);
    if (rep->type == REDIS_REPLY_ERROR)
        fail_msg("127.0.0.1:%d refused a command: %s", port, rep->str);
    return rep;
}

static void ok_cmd(int port, const char *pw, const char *fmt, const char *a1, const char *a2)
{
    freeReplyObject(cmd_auth(port, pw, fmt, a1, a2));
}

/* Passwords on every server of the running topology. */
static void require_passwords(dbkt_redistopo *t)
{
    int m = dbkt_redistopo_port(t, MASTER), r = dbkt_redistopo_port(t, REPLICA);
    for (int s = 0; s < DBKT_SENTINELS; s++)
        ok_cmd(dbkt_redistopo_port(t, SENTINEL0 + s), NULL, "SENTINEL SET %s auth-pass %s",
               DBKT_SENTINEL_MASTER, MPW);
    ok_cmd(r, NULL, "CONFIG SET %s %s", "masterauth", MPW);
    ok_cmd(m, NULL, "CONFIG SET %s %s", "masterauth", MPW);
    ok_cmd(r, NULL, "CONFIG SET %s %s", "requirepass", MPW);
    ok_cmd(m, NULL, "CONFIG SET %s %s", "requirepass", MPW);
    for (int s = 0; s < DBKT_SENTINELS; s++)
        ok_cmd(dbkt_redistopo_port(t, SENTINEL0 + s), NULL, "ACL SETUSER %s resetpass %s",
               "default", ">" SPW);
    /* a sentinel asked without the password refuses */
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", dbkt_redistopo_port(t, SENTINEL0), tv);
    assert_true(c && !c->err);
    redisReply *rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", DBKT_SENTINEL_MASTER);
    assert_true(rep && rep->type == REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    redisFree(c);
}

/* "redis-sentinel://:<mpw>@<sentinels>/mymaster?<query>" from the
 * topology's URL. */
static void auth_url(dbkt_redistopo *t, const char *mpw, const char *query, char *buf, size_t n)
{
    const char *u = dbkt_redistopo_url(t);
    const char *rest = strstr(u, "://");
    assert_non_null(rest);
    snprintf(buf, n, "redis-sentinel://%s%s%s%s%s", mpw ? ":" : "", mpw ? mpw : "", mpw ? "@" : "",
             rest + 3, query);
}

static dbk_cache *open_at(const char *url)
{
    dbk_cache_opts o = {0};
    o.url = url;
    o.key_prefix = "dbkt_sauth:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    return c;
}

/* The error of a get through url; passwords never in message or hint. */
static dbk_rc get_rc(const char *url, dbk_error *err)
{
    dbk_cache *c = open_at(url);
    void *v = NULL;
    size_t n = 0;
    dbk_rc rc = dbk_cache_get(c, "k", 1, &v, &n, err);
    dbk_free(v);
    dbk_cache_close(c);
    const char *pws[] = {MPW, SPW, "wrong-pw"};
    for (int i = 0; i < 3; i++) {
        assert_null(strstr(err->message, pws[i]));
        assert_null(strstr(err->hint, pws[i]));
    }
    return rc;
}

static void cache_sentinel_auth_passwords(void **state)
{
    (void)state;
    dbkt_redistopo *t = dbkt_redis_sentinel_start();
    require_passwords(t);
    char url[1024];
    dbk_error err;
    /* both passwords right: the value is on the master */
    auth_url(t, MPW, "?sentinel_password=" SPW, url, sizeof url);
    dbk_cache *c = open_at(url);
    DBKT_OK(dbk_cache_set(c, "k", 1, "v1", 2, 600000, &err), &err);
    void *v = NULL;
    size_t n = 0;
    DBKT_OK(dbk_cache_get(c, "k", 1, &v, &n, &err), &err);
    assert_int_equal(n, 2);
    assert_memory_equal(v, "v1", 2);
    dbk_free(v);
    dbk_cache_close(c);
    redisReply *rep =
        cmd_auth(dbkt_redistopo_port(t, MASTER), MPW, "EXISTS %s", "dbkt_sauth:v:k", NULL);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    /* the redacted URL shows neither password */
    char red[1024];
    dbk_redact_url(url, red, sizeof red);
    assert_null(strstr(red, MPW));
    assert_null(strstr(red, SPW));
    /* no sentinel password: the sentinels refuse, said as such */
    auth_url(t, MPW, "", url, sizeof url);
    assert_int_equal(get_rc(url, &err), DBK_EAUTH);
    assert_non_null(strstr(err.message, "sentinels require a password"));
    assert_non_null(strstr(err.hint, "sentinel_password"));
    /* a wrong one */
    auth_url(t, MPW, "?sentinel_password=wrong-pw", url, sizeof url);
    assert_int_equal(get_rc(url, &err), DBK_EAUTH);
    assert_non_null(strstr(err.message, "sentinels refused"));
    /* the sentinels' password right, the master's wrong */
    auth_url(t, "wrong-pw", "?sentinel_password=" SPW, url, sizeof url);
    assert_int_equal(get_rc(url, &err), DBK_EAUTH);
    assert_non_null(strstr(err.message, "authentication failed"));
    /* the master's password given to the sentinels does not work either */
    auth_url(t, MPW, "?sentinel_password=" MPW, url, sizeof url);
    assert_int_equal(get_rc(url, &err), DBK_EAUTH);
    dbkt_redistopo_stop(t);
}

/* Log lines captured through dbk_set_log. */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[8192];

static void capture_log(void *ctx, dbk_log_level level, const char *msg)
{
    (void)ctx;
    (void)level;
    pthread_mutex_lock(&g_log_mu);
    size_t l = strlen(g_log);
    snprintf(g_log + l, sizeof g_log - l, "%s\n", msg);
    pthread_mutex_unlock(&g_log_mu);
}

static bool log_has(const char *s)
{
    pthread_mutex_lock(&g_log_mu);
    bool yes = strstr(g_log, s) != NULL;
    pthread_mutex_unlock(&g_log_mu);
    return yes;
}

static void cache_sentinel_auth_failover_followed(void **state)
{
    (void)state;
    dbkt_redistopo *t = dbkt_redis_sentinel_start();
    require_passwords(t);
    char url[1024];
    auth_url(t, MPW, "?sentinel_password=" SPW, url, sizeof url);
    dbk_set_log(capture_log, NULL, DBK_LOG_INFO);
    dbk_cache *c = open_at(url);
    dbk_error err;
    DBKT_OK(dbk_cache_set(c, "k", 1, "v1", 2, 600000, &err), &err);
    sleep_ms(500); /* the subscriber has authenticated and subscribed */
    int old = dbkt_redistopo_port(t, MASTER);
    ok_cmd(dbkt_redistopo_port(t, SENTINEL0), SPW, "SENTINEL FAILOVER %s", DBKT_SENTINEL_MASTER,
           NULL);
    /* the subscriber hears +switch-master through its authenticated
     * connection, and the cache stores and hits on the new master */
    int64_t end = dbkt_mono_ms() + 30000;
    bool switched = false, hit = false;
    while ((!switched || !hit) && dbkt_mono_ms() < end) {
        switched = log_has("sentinel switched the master to");
        if (switched) {
            void *v = NULL;
            size_t n = 0;
            if (dbk_cache_set(c, "k2", 2, "v2", 2, 600000, &err) == DBK_OK)
                hit = dbk_cache_get(c, "k2", 2, &v, &n, &err) == DBK_OK;
            dbk_free(v);
        }
        sleep_ms(20);
    }
    dbk_cache_stats st;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    dbk_cache_close(c);
    dbk_set_log(NULL, NULL, DBK_LOG_INFO);
    dbkt_redistopo_stop(t);
    if (!switched)
        fail_msg("no +switch-master reached the cache (old master port %d)", old);
    assert_true(hit);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cache_sentinel_auth_passwords, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_sentinel_auth_failover_followed, dbkt_redistopo_teardown),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
