/*
 * The Redis cache on a Redis Cluster: six nodes (three masters, three
 * replicas) created with `redis-cli --cluster create` on free loopback
 * ports, stopped by PID. dbkit's key slot is checked against CLUSTER KEYSLOT
 * for 10,000 keys (cache keys and the keys the cache stores for them); then
 * 8 readers and 2 writers go through the cached repository (PostgreSQL from
 * the test environment) while the slots holding the cache's keys migrate
 * (MIGRATING/IMPORTING, MIGRATE, SETSLOT NODE: ASK, TRYAGAIN and MOVED on
 * the way), while `redis-cli --cluster reshard` moves a range of slots
 * holding them to another master, and while a replica takes over its
 * master (CLUSTER FAILOVER) and a master is SIGKILLed. The topologies come
 * from tests/support/redistopo. No read may fail, none may return a version
 * older than one whose write had returned.
 */
/* dbkit:topology */
#include <hiredis/hiredis.h>
#include <signal.h>
#include <time.h>

#include "cache/cache_int.h"
#include "cacheload.h"
#include "redistopo.h"
#include "testutil.h"

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

static redisContext *node_conn(int port)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err)
        fail_msg("cannot reach cluster node %d", port);
    redisSetTimeout(c, tv);
    return c;
}

static int port_of(int i)
{
    return dbkt_redistopo_port(g_topo, i);
}

/* ---- key slots ---- */

static void cache_cluster_key_slots(void **state)
{
    (void)state;
    g_topo = dbkt_redis_cluster_start();
    redisContext *c = node_conn(port_of(0));
    enum { N = 10000 };
    static char keys[N][64];
    static unsigned mine[N];
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t len;
        if (i % 2 == 0) {
            /* a cache key: table:id, some with braces of their own */
            len = (size_t)snprintf(keys[i], sizeof keys[i], i % 10 == 0 ? "t{%llu}:%d" : "users:%llu:%d",
                                   (unsigned long long)(x % 100000), i);
        } else {
            /* the key the cache stores for one: prefix{tag}v:key */
            char k[40];
            size_t kl = (size_t)snprintf(k, sizeof k, "orders:%llu", (unsigned long long)(x % 1000000));
            len = (size_t)snprintf(keys[i], sizeof keys[i], "app:{%s}v:%s",
                                   dbk__redis_slot_tag(dbk__redis_key_slot(k, kl)), k);
            assert_int_equal(dbk__redis_key_slot(keys[i], len), dbk__redis_key_slot(k, kl));
        }
        mine[i] = dbk__redis_key_slot(keys[i], len);
        redisAppendCommand(c, "CLUSTER KEYSLOT %b", keys[i], len);
    }
    int bad = 0;
    for (int i = 0; i < N; i++) {
        void *rep = NULL;
        assert_int_equal(redisGetReply(c, &rep), REDIS_OK);
        redisReply *r = rep;
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        if ((unsigned)r->integer != mine[i] && bad++ < 5)
            print_message("slot of %s: dbkit %u, redis %lld\n", keys[i], mine[i], r->integer);
        freeReplyObject(r);
    }
    redisFree(c);
    /* every slot has a tag that hashes to it */
    for (unsigned s = 0; s < DBK__REDIS_SLOTS; s++) {
        const char *tag = dbk__redis_slot_tag(s);
        assert_true(tag[0] != 0);
        assert_int_equal(dbk__redis_key_slot(tag, strlen(tag)), s);
    }
    stop_topology();
    assert_int_equal(bad, 0);
}

/* The slots holding the cache's keys (SCAN on every master). */
static int cache_slots(const dbkt_redistopo *t, unsigned *out, int max)
{
    int n = 0;
    for (int i = 0; i < DBKT_CLUSTER_NODES; i++) {
        if (!dbkt_redistopo_alive(t, i) || !dbkt_redis_is_master(port_of(i)))
            continue;
        redisReply *r = dbkt_redis_cmd(port_of(i), "SCAN 0 MATCH dbkt_cluster:* COUNT 10000");
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            continue;
        }
        redisReply *ks = r->element[1];
        for (size_t k = 0; k < ks->elements; k++) {
            unsigned s = dbk__redis_key_slot(ks->element[k]->str, ks->element[k]->len);
            bool seen = false;
            for (int j = 0; j < n; j++)
                seen |= out[j] == s;
            if (!seen && n < max)
                out[n++] = s;
        }
        freeReplyObject(r);
    }
    return n;
}

/* A master other than `not`, or -1. */
static int other_master(const dbkt_redistopo *t, int not)
{
    for (int i = 0; i < DBKT_CLUSTER_NODES; i++)
        if (i != not && dbkt_redistopo_alive(t, i) && dbkt_redis_is_master(port_of(i)))
            return i;
    return -1;
}

/* Moves `slot` from its master to another one, the way redis-cli does:
 * IMPORTING on the target, MIGRATING on the source, the keys in batches of
 * 10 with a pause between (so the clients meet ASK and TRYAGAIN), then
 * SETSLOT NODE on both and on every other master. */
static void migrate_slot(const dbkt_redistopo *t, unsigned slot)
{
    int src = dbkt_cluster_owner(t, slot), dst = other_master(t, src);
    assert_true(dst >= 0);
    char sid[64], did[64];
    dbkt_cluster_node_id(port_of(src), sid, sizeof sid);
    dbkt_cluster_node_id(port_of(dst), did, sizeof did);
    freeReplyObject(dbkt_redis_cmd(port_of(dst), "CLUSTER SETSLOT %u IMPORTING %s", slot, sid));
    freeReplyObject(dbkt_redis_cmd(port_of(src), "CLUSTER SETSLOT %u MIGRATING %s", slot, did));
    for (int round = 0; round < 1000; round++) {
        redisReply *r = dbkt_redis_cmd(port_of(src), "CLUSTER GETKEYSINSLOT %u 10", slot);
        assert_non_null(r);
        size_t nk = r->elements;
        for (size_t k = 0; k < nk; k++) {
            redisReply *m = dbkt_redis_cmd(port_of(src), "MIGRATE 127.0.0.1 %d %b 0 5000 REPLACE",
                                           port_of(dst), r->element[k]->str, r->element[k]->len);
            freeReplyObject(m);
            sleep_ms(5);
        }
        freeReplyObject(r);
        if (nk == 0)
            break;
    }
    freeReplyObject(dbkt_redis_cmd(port_of(dst), "CLUSTER SETSLOT %u NODE %s", slot, did));
    freeReplyObject(dbkt_redis_cmd(port_of(src), "CLUSTER SETSLOT %u NODE %s", slot, did));
    for (int i = 0; i < DBKT_CLUSTER_NODES; i++)
        if (i != src && i != dst && dbkt_redistopo_alive(t, i) && dbkt_redis_is_master(port_of(i)))
            freeReplyObject(dbkt_redis_cmd(port_of(i), "CLUSTER SETSLOT %u NODE %s", slot, did));
}

static void disrupt_migrate(dbkt_redistopo *t)
{
    unsigned slots[64];
    int n = cache_slots(t, slots, 64);
    assert_true(n > 0);
    print_message("migrating %d slots holding the cache's keys\n", n);
    for (int i = 0; i < n; i++)
        migrate_slot(t, slots[i]);
}

/* `redis-cli --cluster reshard` of a range of slots holding live cache
 * keys: redis-cli moves the source's lowest slots first, so the range runs
 * from the source's first slot to the cache slot nearest to it (the
 * cheapest range that holds one). The slot must have changed master. */
static void disrupt_reshard(dbkt_redistopo *t)
{
    unsigned slots[64];
    int n = cache_slots(t, slots, 64);
    assert_true(n > 0);
    static unsigned owned[16384];
    int best = -1, best_n = 0, best_src = -1;
    for (int i = 0; i < n; i++) {
        int src = dbkt_cluster_owner(t, slots[i]);
        int no = dbkt_cluster_slots_of(t, src, owned, 16384), upto = 0;
        while (upto < no && owned[upto] <= slots[i])
            upto++;
        if (best < 0 || upto < best_n)
            best = i, best_n = upto, best_src = src;
    }
    int dst = other_master(t, best_src);
    assert_true(dst >= 0);
    redisReply *r = dbkt_redis_cmd(port_of(best_src), "CLUSTER COUNTKEYSINSLOT %u", slots[best]);
    long long keys = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    print_message("resharding %d slots (up to slot %u, %lld keys in it) from %d to %d\n", best_n,
                  slots[best], keys, port_of(best_src), port_of(dst));
    dbkt_cluster_reshard(t, best_src, dst, best_n);
    /* every node learns the new owner by gossip (bounded) */
    int64_t end = dbkt_mono_ms() + 10000;
    while (dbkt_cluster_owner(t, slots[best]) != dst && dbkt_mono_ms() < end)
        sleep_ms(50);
    assert_int_equal(dbkt_cluster_owner(t, slots[best]), dst);
    dbkt_cluster_wait_ok(t, 30000, "after the reshard");
}

/* The replica of the master of the first cache slot takes over (CLUSTER
 * FAILOVER), then another master is SIGKILLed. */
static void disrupt_failover(dbkt_redistopo *t)
{
    unsigned slots[64];
    int n = cache_slots(t, slots, 64);
    assert_true(n > 0);
    int m = dbkt_cluster_owner(t, slots[0]);
    int rep = dbkt_cluster_replica_of(t, m);
    assert_true(rep >= 0);
    dbkt_cluster_failover(t, rep);
    print_message("CLUSTER FAILOVER: %d took over from %d\n", port_of(rep), port_of(m));
    sleep_ms(1500);
    /* SIGKILL a master that still has a replica: the one serving another cache slot, or any */
    int victim = -1;
    for (int k = 0; k < n && victim < 0; k++) {
        int o = dbkt_cluster_owner(t, slots[k]);
        if (o != rep)
            victim = o;
    }
    if (victim < 0)
        victim = other_master(t, rep);
    assert_true(victim >= 0);
    dbkt_redistopo_kill(t, victim);
    print_message("SIGKILLed master %d\n", port_of(victim));
    dbkt_cluster_wait_ok(t, 30000, "after the SIGKILL");
}

static void cluster_case(void (*disrupt)(dbkt_redistopo *), const char *what, const char *dbname)
{
    g_topo = dbkt_redis_cluster_start();
    char *url = dbkt_pg_fresh_db(dbname);
    dbk_cache_opts o = {0};
    o.url = dbkt_redistopo_url(g_topo);
    o.key_prefix = "dbkt_cluster:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbkt_cacheload *load = dbkt_cacheload_start(url, c);
    /* the cache serves hits before the disruption (bounded wait: a loaded
     * CI machine may be slow to get there) */
    int64_t end = dbkt_mono_ms() + 30000;
    while (dbkt_cache_hits(c) < 20 && dbkt_mono_ms() < end)
        sleep_ms(20);
    uint64_t before = dbkt_cache_hits(c);
    disrupt(g_topo);
    uint64_t h0 = dbkt_cache_hits(c);
    end = dbkt_mono_ms() + 30000;
    while (dbkt_cache_hits(c) < h0 + 20 && dbkt_mono_ms() < end)
        sleep_ms(5);
    uint64_t after = dbkt_cache_hits(c) - h0;
    sleep_ms(300);
    dbkt_cacheload_result l;
    dbkt_cacheload_stop(load, &l); /* also reads every row once more after the stop */
    dbk_cache_stats st;
    dbk_cache_get_stats(c, &st, NULL);
    print_message("%s: %d reads, %d writes, %d errors, %d stale; hits %llu before, %llu after; "
                  "%llu misses, %llu cache errors, %llu breaker opens%s%s\n",
                  what, l.reads, l.writes, l.errors, l.stale, (unsigned long long)before,
                  (unsigned long long)after,
                  (unsigned long long)st.misses, (unsigned long long)st.errors,
                  (unsigned long long)st.breaker_opens, l.last_error[0] ? "; last error: " : "",
                  l.last_error);
    dbk_cache_close(c);
    free(url);
    stop_topology();
    assert_true(before >= 20);
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.stale, 0);
    assert_int_equal(l.stale_at_end, 0);
    assert_true(after >= 20);
}

static void cache_cluster_slot_migration(void **state)
{
    (void)state;
    cluster_case(disrupt_migrate, "slot migration", "cache_cluster_migrate");
}

static void cache_cluster_reshard(void **state)
{
    (void)state;
    cluster_case(disrupt_reshard, "redis-cli --cluster reshard", "cache_cluster_reshard");
}

static void cache_cluster_failover(void **state)
{
    (void)state;
    cluster_case(disrupt_failover, "CLUSTER FAILOVER + SIGKILL of a master", "cache_cluster_failover");
}

/* A node demoted and promoted again: the value the cache stored on it
 * before is refused afterwards. The replica of the key's master takes over
 * (CLUSTER FAILOVER), then the old master takes its slots back. The node
 * keeps its run id, no write reaches the slot in between, and the cache's
 * handle stays connected to it all along: only the node's new reign (a
 * promotion gives it a new replication id) shows that the value is from
 * before. That is what refuses a value whose invalidation the node
 * acknowledged and then lost to the failover (the same check; which value
 * is stale cannot be known). Checked through the handle that was
 * connected all along and through a new one; caching resumes afterwards. */
/* dbk_cache_get of "k", repeated while it fails (at most 20 s): DBK_OK or
 * DBK_ENOT_FOUND, else the last error. */
static dbk_rc settled_get(dbk_cache *c, void **v, size_t *n)
{
    dbk_error err;
    dbk_rc rc = DBK_EUNAVAILABLE;
    int64_t end = dbkt_mono_ms() + 20000;
    while (dbkt_mono_ms() < end) {
        *v = NULL;
        rc = dbk_cache_get(c, "k", 1, v, n, &err);
        if (rc == DBK_OK || rc == DBK_ENOT_FOUND)
            break;
        sleep_ms(20);
    }
    return rc;
}

static void cache_cluster_old_reign_refused(void **state)
{
    (void)state;
    g_topo = dbkt_redis_cluster_start();
    dbk_cache_opts o = {0};
    o.url = dbkt_redistopo_url(g_topo);
    o.key_prefix = "dbkt_reign:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c, *c2 = NULL;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    DBKT_OK(dbk_cache_set(c, "k", 1, "old", 3, 600000, &err), &err);
    void *v = NULL;
    size_t n = 0;
    DBKT_OK(dbk_cache_get(c, "k", 1, &v, &n, &err), &err);
    assert_int_equal(n, 3);
    dbk_free(v);
    v = NULL;
    unsigned slot = dbk__redis_key_slot("k", 1);
    char key[64];
    snprintf(key, sizeof key, "dbkt_reign:{%s}v:k", dbk__redis_slot_tag(slot));
    int m = dbkt_cluster_owner(g_topo, slot), rep = dbkt_cluster_replica_of(g_topo, m);
    assert_true(rep >= 0);
    int64_t end = dbkt_mono_ms() + 10000;
    redisContext *rc_rep = node_conn(port_of(rep));
    freeReplyObject(redisCommand(rc_rep, "READONLY")); /* reads on a cluster replica */
    for (;;) { /* the value reached the replica */
        redisReply *r = redisCommand(rc_rep, "EXISTS %s", key);
        bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        freeReplyObject(r);
        if (there)
            break;
        if (dbkt_mono_ms() > end)
            fail_msg("the value never reached the replica");
        sleep_ms(10);
    }
    redisFree(rc_rep);
    dbkt_cluster_failover(g_topo, rep);
    /* the old master follows the new one and is in sync before it takes over again */
    end = dbkt_mono_ms() + 20000;
    while (dbkt_cluster_replica_of(g_topo, rep) != m && dbkt_mono_ms() < end)
        sleep_ms(50);
    assert_int_equal(dbkt_cluster_replica_of(g_topo, rep), m);
    dbkt_cluster_failover(g_topo, m);
    dbkt_cluster_wait_ok(g_topo, 30000, "after the second failover");
    redisReply *r = dbkt_redis_cmd(port_of(m), "EXISTS %s", key);
    bool still = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    /* Every call below is repeated while it fails (bounded): for a moment
     * after the failover the nodes may still disagree on the slot map, and
     * a call routed by an old map is an error (the cache reloads the map);
     * what is asserted is the answer once there is one. */
    dbk_rc rc = settled_get(c, &v, &n);
    if (rc == DBK_OK)
        print_message("the connected handle served the old reign's value: %.*s\n", (int)n,
                      (const char *)v);
    dbk_free(v);
    v = NULL;
    DBKT_OK(dbk_cache_open(&o, &c2, &err), &err);
    dbk_rc rc2 = settled_get(c2, &v, &n);
    dbk_free(v);
    v = NULL;
    /* caching resumes under the new reign */
    dbk_rc rcs = DBK_EUNAVAILABLE;
    end = dbkt_mono_ms() + 20000;
    while (rcs != DBK_OK && dbkt_mono_ms() < end) {
        rcs = dbk_cache_set(c2, "k", 1, "new", 3, 600000, &err);
        if (rcs != DBK_OK)
            sleep_ms(20);
    }
    DBKT_OK(rcs, &err);
    dbk_rc rc3 = settled_get(c, &v, &n);
    bool is_new = rc3 == DBK_OK && n == 3 && memcmp(v, "new", 3) == 0;
    dbk_free(v);
    dbk_cache_close(c2);
    dbk_cache_close(c);
    stop_topology();
    assert_true(still);
    assert_int_equal(rc, DBK_ENOT_FOUND);
    assert_int_equal(rc2, DBK_ENOT_FOUND);
    assert_true(is_new);
}

/* dbk_cache_get_many through the topology: every key its own value (one
 * GET per key, each on its slot's master); then dbk_cached_repo_find_by_ids:
 * the cold ids in one statement, each leased and stored on its own slot,
 * and a key invalidated during the statement not stored. */
static void cache_cluster_get_many(void **state)
{
    (void)state;
    g_topo = dbkt_redis_cluster_start();
    dbkt_cache_get_many_check_url(dbkt_redistopo_url(g_topo), "dbkt_cmany:");
    stop_topology();
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cache_cluster_get_many, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_cluster_key_slots, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_cluster_slot_migration, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_cluster_reshard, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_cluster_failover, dbkt_redistopo_teardown),
        cmocka_unit_test_teardown(cache_cluster_old_reign_refused, dbkt_redistopo_teardown),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
