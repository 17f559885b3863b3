/*
 * The Redis cache on a Redis Cluster: six nodes (three masters, three
 * replicas) created with `redis-cli --cluster create` on free loopback
 * ports, stopped by PID. dbkit's key slot is checked against CLUSTER KEYSLOT
 * for 10,000 keys (cache keys and the keys the cache stores for them); then
 * 8 readers and 2 writers go through the cached repository (PostgreSQL from
 * the test environment) while the slots holding the cache's keys migrate
 * (MIGRATING/IMPORTING, MIGRATE, SETSLOT NODE: ASK, TRYAGAIN and MOVED on
 * the way), and while a replica takes over its master (CLUSTER FAILOVER)
 * and a master is SIGKILLed. No read may fail, none may return a version
 * older than one whose write had returned.
 */
/* dbkit:topology */
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache_int.h"
#include "cacheload.h"
#include "testutil.h"

#define NNODES 6

struct topo {
    char dir[256];
    int port[NNODES];
    pid_t pid[NNODES];
};

static struct topo g_topo; /* static: the teardown stops it when a check failed */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Binds 127.0.0.1:port (0: any free one); returns the port, or 0. */
static int try_bind(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    socklen_t l = sizeof a;
    int got = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        got = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return got;
}

/* A free port whose cluster bus port (+10000) is free too. */
static int free_port(void)
{
    for (int i = 0; i < 1000; i++) {
        int p = try_bind(0);
        if (p > 1024 && p <= 55535 && try_bind(p + 10000))
            return p;
    }
    fail_msg("no free port pair for a cluster node");
    return 0;
}

static pid_t start(const char *const *argv, const char *log)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
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

/* One command to the node on `port` (printf-style, as redisCommand). */
static redisReply *ncmd(int port, const char *fmt, ...)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

static bool all_ok(struct topo *t)
{
    for (int i = 0; i < NNODES; i++) {
        if (!t->pid[i])
            continue;
        redisReply *r = ncmd(t->port[i], "CLUSTER INFO");
        bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

static void wait_ok(struct topo *t, int ms, const char *what)
{
    int64_t end = dbkt_mono_ms() + ms;
    while (!all_ok(t)) {
        if (dbkt_mono_ms() > end)
            fail_msg("cluster: %s: state not ok within %d ms", what, ms);
        sleep_ms(50);
    }
}

static void topo_start(struct topo *t)
{
    char *tmp = dbkt_tmpdir();
    snprintf(t->dir, sizeof t->dir, "%s", tmp);
    free(tmp);
    char log[300];
    snprintf(log, sizeof log, "%s/servers.log", t->dir);
    for (int i = 0; i < NNODES; i++) {
        t->port[i] = free_port();
        char ps[16], conf[64];
        snprintf(ps, sizeof ps, "%d", t->port[i]);
        snprintf(conf, sizeof conf, "nodes-%d.conf", t->port[i]);
        const char *argv[] = {"redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", t->dir, "--cluster-enabled", "yes",
                              "--cluster-config-file", conf, "--cluster-node-timeout", "1500",
                              NULL};
        t->pid[i] = start(argv, log);
    }
    for (int i = 0; i < NNODES; i++) {
        int64_t end = dbkt_mono_ms() + 10000;
        redisReply *r;
        while (!(r = ncmd(t->port[i], "PING"))) {
            if (dbkt_mono_ms() > end) {
                char cmd[400];
                snprintf(cmd, sizeof cmd, "tail -n 20 '%s' >&2", log);
                if (system(cmd) != 0)
                    print_message("no server log\n");
                fail_msg("cluster node %d did not start", t->port[i]);
            }
            sleep_ms(20);
        }
        freeReplyObject(r);
    }
    char addr[NNODES][32];
    const char *args[4 + NNODES + 3];
    int n = 0;
    args[n++] = "--cluster";
    args[n++] = "create";
    for (int i = 0; i < NNODES; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", t->port[i]);
        args[n++] = addr[i];
    }
    args[n++] = "--cluster-replicas";
    args[n++] = "1";
    args[n++] = "--cluster-yes";
    args[n] = NULL;
    int out, errfd;
    pid_t pid = dbkt_spawn("redis-cli", NULL, args, NULL, NULL, &out, &errfd);
    dbkt_proc p = dbkt_collect(pid, out, errfd, 60000, "redis-cli --cluster create");
    if (p.code != 0)
        fail_msg("redis-cli --cluster create: %d\n%s\n%s", p.code, p.out, p.err);
    dbkt_proc_free(&p);
    wait_ok(t, 30000, "after create");
    /* and every replica in sync with its master */
    int64_t end = dbkt_mono_ms() + 30000;
    for (int i = 0; i < NNODES; i++) {
        for (;;) {
            redisReply *r = ncmd(t->port[i], "ROLE");
            bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                      (strcmp(r->element[0]->str, "master") == 0 ||
                       (r->elements > 3 && strcmp(r->element[3]->str, "connected") == 0));
            freeReplyObject(r);
            if (ok)
                break;
            if (dbkt_mono_ms() > end)
                fail_msg("cluster: replica %d not in sync within 30 s", t->port[i]);
            sleep_ms(50);
        }
    }
}

static void topo_stop(struct topo *t)
{
    if (!t->dir[0])
        return;
    for (int i = 0; i < NNODES; i++)
        if (t->pid[i] > 0) {
            kill(t->pid[i], SIGKILL);
            waitpid(t->pid[i], NULL, 0);
            t->pid[i] = 0;
        }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    if (system(cmd) != 0)
        print_message("could not remove %s\n", t->dir);
    t->dir[0] = 0;
}

static int stop_topology(void **state)
{
    (void)state;
    topo_stop(&g_topo);
    return 0;
}

/* The node id and role of the node on `port`; *master_port for a replica. */
static void node_id(int port, char *id, size_t n)
{
    redisReply *r = ncmd(port, "CLUSTER MYID");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    snprintf(id, n, "%s", r->str);
    freeReplyObject(r);
}

static bool is_master(int port)
{
    redisReply *r = ncmd(port, "ROLE");
    bool m = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
             strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    return m;
}

/* The index of the node serving `slot` as master (CLUSTER SLOTS of a live node). */
static int owner_of(struct topo *t, unsigned slot)
{
    for (int i = 0; i < NNODES; i++) {
        if (!t->pid[i])
            continue;
        redisReply *r = ncmd(t->port[i], "CLUSTER SLOTS");
        int found = -1;
        for (size_t k = 0; r && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            redisReply *e = r->element[k];
            if ((unsigned)e->element[0]->integer <= slot &&
                slot <= (unsigned)e->element[1]->integer) {
                int port = (int)e->element[2]->element[1]->integer;
                for (int j = 0; j < NNODES; j++)
                    if (t->port[j] == port)
                        found = j;
            }
        }
        freeReplyObject(r);
        if (found >= 0)
            return found;
    }
    fail_msg("no owner for slot %u", slot);
    return -1;
}

/* ---- key slots ---- */

static void cache_cluster_key_slots(void **state)
{
    (void)state;
    topo_start(&g_topo);
    redisContext *c = node_conn(g_topo.port[0]);
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
    topo_stop(&g_topo);
    assert_int_equal(bad, 0);
}

/* Runs the workload, calls `disrupt` after a second of it, waits for the
 * sentinels to name another master and for the cache to serve hits again. */
/* The slots holding the cache's keys (SCAN on every master). */
static int cache_slots(struct topo *t, unsigned *out, int max)
{
    int n = 0;
    for (int i = 0; i < NNODES; i++) {
        if (!t->pid[i] || !is_master(t->port[i]))
            continue;
        redisReply *r = ncmd(t->port[i], "SCAN 0 MATCH dbkt_cluster:* COUNT 10000");
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

/* Moves `slot` from its master to another one, the way redis-cli does:
 * IMPORTING on the target, MIGRATING on the source, the keys in batches of
 * 10 with a pause between (so the clients meet ASK and TRYAGAIN), then
 * SETSLOT NODE on both and on every other master. */
static void migrate_slot(struct topo *t, unsigned slot)
{
    int src = owner_of(t, slot), dst = -1;
    for (int i = 0; i < NNODES && dst < 0; i++)
        if (i != src && t->pid[i] && is_master(t->port[i]))
            dst = i;
    assert_true(dst >= 0);
    char sid[64], did[64];
    node_id(t->port[src], sid, sizeof sid);
    node_id(t->port[dst], did, sizeof did);
    freeReplyObject(ncmd(t->port[dst], "CLUSTER SETSLOT %u IMPORTING %s", slot, sid));
    freeReplyObject(ncmd(t->port[src], "CLUSTER SETSLOT %u MIGRATING %s", slot, did));
    for (int round = 0; round < 1000; round++) {
        redisReply *r = ncmd(t->port[src], "CLUSTER GETKEYSINSLOT %u 10", slot);
        assert_non_null(r);
        size_t nk = r->elements;
        for (size_t k = 0; k < nk; k++) {
            redisReply *m = ncmd(t->port[src], "MIGRATE 127.0.0.1 %d %b 0 5000 REPLACE",
                                 t->port[dst], r->element[k]->str, r->element[k]->len);
            freeReplyObject(m);
            sleep_ms(5);
        }
        freeReplyObject(r);
        if (nk == 0)
            break;
    }
    freeReplyObject(ncmd(t->port[dst], "CLUSTER SETSLOT %u NODE %s", slot, did));
    freeReplyObject(ncmd(t->port[src], "CLUSTER SETSLOT %u NODE %s", slot, did));
    for (int i = 0; i < NNODES; i++)
        if (i != src && i != dst && t->pid[i] && is_master(t->port[i]))
            freeReplyObject(ncmd(t->port[i], "CLUSTER SETSLOT %u NODE %s", slot, did));
}

static void disrupt_migrate(struct topo *t)
{
    unsigned slots[64];
    int n = cache_slots(t, slots, 64);
    assert_true(n > 0);
    print_message("migrating %d slots holding the cache's keys\n", n);
    for (int i = 0; i < n; i++)
        migrate_slot(t, slots[i]);
}

/* The replica of the master of the first cache slot takes over (CLUSTER
 * FAILOVER), then another master is SIGKILLed. */
static void disrupt_failover(struct topo *t)
{
    unsigned slots[64];
    int n = cache_slots(t, slots, 64);
    assert_true(n > 0);
    int m = owner_of(t, slots[0]);
    char mid[64];
    node_id(t->port[m], mid, sizeof mid);
    int rep = -1;
    for (int i = 0; i < NNODES && rep < 0; i++) {
        if (!t->pid[i] || i == m)
            continue;
        redisReply *r = ncmd(t->port[i], "ROLE");
        if (r && r->type == REDIS_REPLY_ARRAY && strcmp(r->element[0]->str, "slave") == 0 &&
            (int)r->element[2]->integer == t->port[m])
            rep = i;
        freeReplyObject(r);
    }
    assert_true(rep >= 0);
    /* a manual failover the master does not acknowledge within 5 s is
     * abandoned by the replica: ask again (at most 3 times) */
    for (int attempt = 0; attempt < 3 && !is_master(t->port[rep]); attempt++) {
        redisReply *r = ncmd(t->port[rep], "CLUSTER FAILOVER");
        assert_non_null(r);
        assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
        int64_t end = dbkt_mono_ms() + 7000;
        while (!is_master(t->port[rep]) && dbkt_mono_ms() < end)
            sleep_ms(20);
    }
    assert_true(is_master(t->port[rep]));
    print_message("CLUSTER FAILOVER: %d took over from %d\n", t->port[rep], t->port[m]);
    sleep_ms(1500);
    /* SIGKILL a master that still has a replica: the one serving another cache slot, or any */
    int victim = -1;
    for (int k = 0; k < n && victim < 0; k++) {
        int o = owner_of(t, slots[k]);
        if (o != rep)
            victim = o;
    }
    for (int i = 0; i < NNODES && victim < 0; i++)
        if (t->pid[i] && i != rep && is_master(t->port[i]))
            victim = i;
    kill(t->pid[victim], SIGKILL);
    waitpid(t->pid[victim], NULL, 0);
    t->pid[victim] = 0;
    print_message("SIGKILLed master %d\n", t->port[victim]);
    wait_ok(t, 30000, "after the SIGKILL");
}

static void cluster_case(void (*disrupt)(struct topo *), const char *what, const char *dbname)
{
    memset(&g_topo, 0, sizeof g_topo);
    topo_start(&g_topo);
    char *url = dbkt_pg_fresh_db(dbname);
    char curl[256];
    snprintf(curl, sizeof curl, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", g_topo.port[0],
             g_topo.port[1]);
    dbk_cache_opts o = {0};
    o.url = curl;
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
    disrupt(&g_topo);
    uint64_t h0 = dbkt_cache_hits(c);
    end = dbkt_mono_ms() + 30000;
    while (dbkt_cache_hits(c) < h0 + 20 && dbkt_mono_ms() < end)
        sleep_ms(5);
    uint64_t after = dbkt_cache_hits(c) - h0;
    sleep_ms(300);
    dbkt_cacheload_result l;
    dbkt_cacheload_stop(load, &l); /* also reads every row once more after the stop */
    dbk_cache_stats st;
    dbk_cache_stats_get(c, &st, NULL);
    print_message("%s: %d reads, %d writes, %d errors, %d stale; hits %llu before, %llu after; "
                  "%llu misses, %llu cache errors, %llu breaker opens%s%s\n",
                  what, l.reads, l.writes, l.errors, l.stale, (unsigned long long)before,
                  (unsigned long long)after,
                  (unsigned long long)st.misses, (unsigned long long)st.errors,
                  (unsigned long long)st.breaker_opens, l.last_error[0] ? "; last error: " : "",
                  l.last_error);
    dbk_cache_close(c);
    free(url);
    topo_stop(&g_topo);
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

static void cache_cluster_failover(void **state)
{
    (void)state;
    cluster_case(disrupt_failover, "CLUSTER FAILOVER + SIGKILL of a master", "cache_cluster_failover");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cache_cluster_key_slots, stop_topology),
        cmocka_unit_test_teardown(cache_cluster_slot_migration, stop_topology),
        cmocka_unit_test_teardown(cache_cluster_failover, stop_topology),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
