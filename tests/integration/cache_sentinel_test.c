/*
 * The Redis cache behind Sentinel: a master, one replica and three
 * sentinels (down-after-milliseconds 1000) started on free loopback ports
 * and stopped by PID (tests/support/redistopo). 8 readers and 2 writers go through the
 * cached repository (PostgreSQL from the test environment) while the master
 * is SIGKILLed, and in another test while `SENTINEL FAILOVER` moves it. No
 * read may fail (the cache falls back to the database), no read may return
 * a version older than one whose write had returned, and the cache must
 * serve hits again after +switch-master (the time it took is printed, not
 * asserted).
 */
/* dbkit:topology */
#include <signal.h>
#include <time.h>

#include "cacheload.h"
#include "redistopo.h"
#include "testutil.h"

/* Node indexes of the topology (redistopo.h). */
#define MASTER 0
#define REPLICA 1

static dbkt_redistopo *g_topo; /* the teardown stops it when a check failed */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void stop_topology(void)
{
    dbkt_redistopo_stop(g_topo);
    g_topo = NULL;
}

/* Runs the workload, calls `disrupt` after a second of it, waits for the
 * sentinels to name another master and for the cache to serve hits again. */
static void failover_case(void (*disrupt)(dbkt_redistopo *), const char *what, const char *dbname)
{
    g_topo = dbkt_redis_sentinel_start();
    char *url = dbkt_pg_fresh_db(dbname);
    dbk_cache_opts o = {0};
    o.url = dbkt_redistopo_url(g_topo);
    o.key_prefix = "dbkt_sentinel:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbkt_cacheload *load = dbkt_cacheload_start(url, c);
    /* hits before: the cache works through the sentinels */
    int64_t end = dbkt_mono_ms() + 30000;
    while (dbkt_cache_hits(c) < 20 && dbkt_mono_ms() < end)
        sleep_ms(20);
    assert_true(dbkt_cache_hits(c) >= 20);
    int old = dbkt_sentinel_named_master(g_topo, 0);
    assert_int_equal(old, dbkt_redistopo_port(g_topo, MASTER));
    disrupt(g_topo);
    /* usually 1-3 s; a sentinel whose timer ran late on a loaded machine
     * goes into TILT mode for 30 s before it acts, hence the long bound */
    int64_t t0 = dbkt_mono_ms();
    if (!dbkt_sentinel_wait_switch(g_topo, old, 70000))
        fail_msg("%s: the sentinels named no new master within 70 s", what);
    int64_t t_switch = dbkt_mono_ms();
    uint64_t h0 = dbkt_cache_hits(c);
    int64_t t_hit = 0;
    end = dbkt_mono_ms() + 30000;
    while (dbkt_mono_ms() < end) {
        if (dbkt_cache_hits(c) > h0 + 20) {
            t_hit = dbkt_mono_ms();
            break;
        }
        sleep_ms(5);
    }
    /* the workload goes on a little on the new master */
    sleep_ms(500);
    dbkt_cacheload_result l;
    dbkt_cacheload_stop(load, &l);
    dbk_cache_stats st;
    dbk_cache_get_stats(c, &st, NULL);
    print_message("%s: new master named %lld ms after the disruption; cache hits again %lld ms "
                  "after that; %d reads, %d writes, %d errors, %d stale, %llu hits, %llu misses, "
                  "%llu cache errors, %llu breaker opens%s%s\n",
                  what, (long long)(t_switch - t0), (long long)(t_hit ? t_hit - t_switch : -1),
                  l.reads, l.writes, l.errors, l.stale, (unsigned long long)st.hits,
                  (unsigned long long)st.misses, (unsigned long long)st.errors,
                  (unsigned long long)st.breaker_opens, l.last_error[0] ? "; last error: " : "",
                  l.last_error);
    dbk_cache_close(c);
    free(url);
    stop_topology();
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.stale, 0);
    assert_int_equal(l.stale_at_end, 0);
    assert_true(t_hit != 0);
}

static void kill_master(dbkt_redistopo *t)
{
    dbkt_redistopo_kill(t, MASTER);
}

/* SENTINEL FAILOVER answers an error while the sentinel does not yet know
 * a replica it could promote (-NOGOODSLAVE) or a failover is still in
 * progress (-INPROG): asked again, every 200 ms for at most 15 s. */
static void manual_failover(dbkt_redistopo *t)
{
    char last[160] = "";
    for (int i = 0; i < 75; i++) {
        redisReply *r = dbkt_redis_cmd(dbkt_redistopo_port(t, 2), "SENTINEL failover %s",
                                       DBKT_SENTINEL_MASTER);
        assert_non_null(r);
        bool ok = r->type != REDIS_REPLY_ERROR;
        if (!ok)
            snprintf(last, sizeof last, "%.150s", r->str ? r->str : "?");
        freeReplyObject(r);
        if (ok)
            return;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fail_msg("SENTINEL failover kept answering an error for 15 s: %s", last);
}

static void cache_sentinel_master_killed(void **state)
{
    (void)state;
    failover_case(kill_master, "master SIGKILLed", "cache_sentinel_kill");
}

static void cache_sentinel_manual_failover(void **state)
{
    (void)state;
    failover_case(manual_failover, "SENTINEL FAILOVER", "cache_sentinel_manual");
}

static bool on_replica(const char *key)
{
    redisReply *r = dbkt_redis_cmd(dbkt_redistopo_port(g_topo, REPLICA), "EXISTS %s", key);
    bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return there;
}

/* The case asynchronous replication makes possible: an invalidation the
 * master acknowledged never reaches the replica (stopped with SIGSTOP while
 * it runs), the master dies, the replica is promoted still holding the old
 * value. The cache must not serve it: it was written under the old
 * master's epoch. */
static void cache_sentinel_lost_invalidation_refused(void **state)
{
    (void)state;
    g_topo = dbkt_redis_sentinel_start();
    dbk_cache_opts o = {0};
    o.url = dbkt_redistopo_url(g_topo);
    o.key_prefix = "dbkt_lost:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    DBKT_OK(dbk_cache_set(c, "k", 1, "old", 3, 600000, &err), &err);
    /* the value reached the replica */
    int64_t end = dbkt_mono_ms() + 10000;
    while (!on_replica("dbkt_lost:v:k")) {
        if (dbkt_mono_ms() > end)
            fail_msg("the value never reached the replica");
        sleep_ms(10);
    }
    /* cut the replication link: the replica frozen, its connection closed
     * by the master, so nothing written after this reaches it */
    dbkt_redistopo_pause(g_topo, REPLICA);
    freeReplyObject(
        dbkt_redis_cmd(dbkt_redistopo_port(g_topo, MASTER), "CLIENT KILL TYPE %s", "replica"));
    DBKT_OK(dbk_cache_delete(c, "k", 1, &err), &err); /* acknowledged by the master only */
    dbkt_redistopo_kill(g_topo, MASTER);
    dbkt_redistopo_resume(g_topo, REPLICA);
    /* the replica still holds the old value */
    assert_true(on_replica("dbkt_lost:v:k"));
    end = dbkt_mono_ms() + 70000; /* see failover_case: TILT */
    bool promoted = false;
    while (!promoted && dbkt_mono_ms() < end) {
        for (int i = 0; i < DBKT_SENTINELS; i++)
            promoted |= dbkt_sentinel_named_master(g_topo, i) ==
                        dbkt_redistopo_port(g_topo, REPLICA);
        sleep_ms(20);
    }
    assert_true(promoted);
    /* read until the cache answers from the new master (bounded) */
    dbk_rc rc = DBK_EUNAVAILABLE;
    void *v = NULL;
    size_t n = 0;
    end = dbkt_mono_ms() + 20000;
    while (dbkt_mono_ms() < end) {
        rc = dbk_cache_get(c, "k", 1, &v, &n, &err);
        if (rc == DBK_OK || rc == DBK_ENOT_FOUND)
            break;
        sleep_ms(20);
    }
    if (rc == DBK_OK)
        print_message("served after the failover: %.*s\n", (int)n, (const char *)v);
    dbk_free(v);
    /* the old value is still on the new master, and still refused */
    bool still = on_replica("dbkt_lost:v:k");
    dbk_cache_close(c);
    stop_topology();
    assert_true(still);
    assert_int_equal(rc, DBK_ENOT_FOUND);
}

/* dbk_cache_get_many through the topology: every key its own value (one
 * MGET on the master, each value checked against its reign); then
 * dbk_cached_repo_find_by_ids: the cold ids in one statement, leased in one
 * MGET, stored one by one (every write carries the node's epoch), and a
 * key invalidated during the statement not stored. */
static void cache_sentinel_get_many(void **state)
{
    (void)state;
    g_topo = dbkt_redis_sentinel_start();
    dbkt_cache_get_many_check_url(dbkt_redistopo_url(g_topo), "dbkt_smany:");
    stop_topology();
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cache_sentinel_get_many, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_sentinel_master_killed, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_sentinel_manual_failover, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_sentinel_lost_invalidation_refused,
                                  dbkt_redistopo_teardown),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
