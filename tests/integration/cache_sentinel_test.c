/*
 * The Redis cache behind Sentinel: a master, one replica and three
 * sentinels (down-after-milliseconds 1000) started by the test on free
 * loopback ports, stopped by PID. 8 readers and 2 writers go through the
 * cached repository (PostgreSQL from the test environment) while the master
 * is SIGKILLed, and in another test while `SENTINEL FAILOVER` moves it. No
 * read may fail (the cache falls back to the database), no read may return
 * a version older than one whose write had returned, and the cache must
 * serve hits again after +switch-master (the time it took is printed, not
 * asserted).
 */
/* dbkit:topology */
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cacheload.h"
#include "testutil.h"

#define NSENT 3

struct topo {
    char dir[256];
    int port[2];          /* master, replica */
    int sport[NSENT];     /* sentinels */
    pid_t pid[2 + NSENT]; /* servers, then sentinels */
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
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

static redisReply *rcmd(int port, const char *fmt, const char *arg)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = arg ? redisCommand(c, fmt, arg) : redisCommand(c, fmt);
    redisFree(c);
    return r;
}

/* The master's port as sentinel `sport` names it; 0 when it does not answer. */
static int named_master(int sport)
{
    redisReply *r = rcmd(sport, "SENTINEL get-master-addr-by-name %s", "m");
    int port = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        port = atoi(r->element[1]->str);
    freeReplyObject(r);
    return port;
}

/* Polls (bounded) until `ok` holds. */
static void wait_for(bool (*ok)(struct topo *), struct topo *t, int ms, const char *what)
{
    int64_t end = dbkt_mono_ms() + ms;
    while (!ok(t)) {
        if (dbkt_mono_ms() > end) {
            char cmd[400];
            snprintf(cmd, sizeof cmd, "tail -n 40 '%s/servers.log' >&2", t->dir);
            if (system(cmd) != 0)
                print_message("no server log\n");
            fail_msg("topology: %s not within %d ms", what, ms);
        }
        sleep_ms(50);
    }
}

static bool replica_synced(struct topo *t)
{
    redisReply *r = rcmd(t->port[1], "INFO replication", NULL);
    bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "master_link_status:up");
    freeReplyObject(r);
    return ok;
}

static bool sentinels_ready(struct topo *t)
{
    for (int i = 0; i < NSENT; i++) {
        redisReply *r = rcmd(t->sport[i], "SENTINEL master %s", "m");
        bool ok = false;
        if (r && r->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < r->elements; k += 2)
                if (strcmp(r->element[k]->str, "num-other-sentinels") == 0)
                    ok = atoi(r->element[k + 1]->str) == NSENT - 1;
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    redisReply *r = rcmd(t->sport[0], "SENTINEL replicas %s", "m");
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1;
    freeReplyObject(r);
    return ok;
}

static void topo_start(struct topo *t)
{
    char *tmp = dbkt_tmpdir();
    snprintf(t->dir, sizeof t->dir, "%s", tmp);
    free(tmp);
    char log[300], ps[2][16], rep[64];
    snprintf(log, sizeof log, "%s/servers.log", t->dir);
    for (int i = 0; i < 2; i++) {
        t->port[i] = free_port();
        snprintf(ps[i], sizeof ps[i], "%d", t->port[i]);
    }
    snprintf(rep, sizeof rep, "127.0.0.1 %d", t->port[0]);
    for (int i = 0; i < 2; i++) {
        const char *argv[] = {"redis-server", "--port", ps[i], "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", t->dir,
                              i ? "--replicaof" : NULL, i ? rep : NULL, NULL};
        t->pid[i] = start(argv, log);
    }
    for (int i = 0; i < NSENT; i++) {
        t->sport[i] = free_port();
        char conf[300];
        snprintf(conf, sizeof conf, "%s/sentinel%d.conf", t->dir, i);
        FILE *f = fopen(conf, "w");
        assert_non_null(f);
        fprintf(f,
                "port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor m 127.0.0.1 %d 2\n"
                "sentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 3000\n"
                "sentinel parallel-syncs m 1\n",
                t->sport[i], t->dir, t->port[0]);
        fclose(f);
        const char *argv[] = {"redis-server", conf, "--sentinel", NULL};
        t->pid[2 + i] = start(argv, log);
    }
    wait_for(replica_synced, t, 20000, "replica in sync");
    wait_for(sentinels_ready, t, 45000, "sentinels see each other and the replica");
}

static void topo_stop(struct topo *t)
{
    if (!t->dir[0])
        return;
    for (int i = 0; i < 2 + NSENT; i++)
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

/* Runs the workload, calls `disrupt` after a second of it, waits for the
 * sentinels to name another master and for the cache to serve hits again. */
static struct topo g_topo; /* static: the teardown stops it when a check failed */

static int stop_topology(void **state)
{
    (void)state;
    topo_stop(&g_topo);
    return 0;
}

static void failover_case(void (*disrupt)(struct topo *), const char *what, const char *dbname)
{
    memset(&g_topo, 0, sizeof g_topo);
    topo_start(&g_topo);
    char *url = dbkt_pg_fresh_db(dbname);
    char curl[256];
    snprintf(curl, sizeof curl, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/m",
             g_topo.sport[0], g_topo.sport[1], g_topo.sport[2]);
    dbk_cache_opts o = {0};
    o.url = curl;
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
    int old = named_master(g_topo.sport[0]);
    assert_int_equal(old, g_topo.port[0]);
    disrupt(&g_topo);
    /* usually 1-3 s; a sentinel whose timer ran late on a loaded machine
     * goes into TILT mode for 30 s before it acts, hence the long bound */
    int64_t t0 = dbkt_mono_ms(), t_switch = 0;
    end = t0 + 70000;
    while (dbkt_mono_ms() < end && !t_switch) {
        for (int i = 0; i < NSENT && !t_switch; i++) {
            int now = named_master(g_topo.sport[i]);
            if (now && now != old)
                t_switch = dbkt_mono_ms();
        }
        sleep_ms(20);
    }
    if (!t_switch) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "tail -n 60 '%s/servers.log' >&2", g_topo.dir);
        if (system(cmd) != 0)
            print_message("no server log\n");
        fail_msg("%s: the sentinels named no new master within 70 s", what);
    }
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
    dbk_cache_stats_get(c, &st, NULL);
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
    topo_stop(&g_topo);
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.stale, 0);
    assert_int_equal(l.stale_at_end, 0);
    assert_true(t_hit != 0);
}

static void kill_master(struct topo *t)
{
    kill(t->pid[0], SIGKILL);
    waitpid(t->pid[0], NULL, 0);
    t->pid[0] = 0;
}

static void manual_failover(struct topo *t)
{
    redisReply *r = rcmd(t->sport[0], "SENTINEL failover %s", "m");
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
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

/* The case asynchronous replication makes possible: an invalidation the
 * master acknowledged never reaches the replica (stopped with SIGSTOP while
 * it runs), the master dies, the replica is promoted still holding the old
 * value. The cache must not serve it: it was written under the old
 * master's epoch. */
static void cache_sentinel_lost_invalidation_refused(void **state)
{
    (void)state;
    memset(&g_topo, 0, sizeof g_topo);
    topo_start(&g_topo);
    char curl[256];
    snprintf(curl, sizeof curl, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/m",
             g_topo.sport[0], g_topo.sport[1], g_topo.sport[2]);
    dbk_cache_opts o = {0};
    o.url = curl;
    o.key_prefix = "dbkt_lost:";
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 500;
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    DBKT_OK(dbk_cache_set(c, "k", 1, "old", 3, 600000, &err), &err);
    /* the value reached the replica */
    int64_t end = dbkt_mono_ms() + 10000;
    for (;;) {
        redisReply *r = rcmd(g_topo.port[1], "EXISTS %s", "dbkt_lost:v:k");
        bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        freeReplyObject(r);
        if (there)
            break;
        if (dbkt_mono_ms() > end)
            fail_msg("the value never reached the replica");
        sleep_ms(10);
    }
    /* cut the replication link: the replica frozen, its connection closed
     * by the master, so nothing written after this reaches it */
    kill(g_topo.pid[1], SIGSTOP);
    freeReplyObject(rcmd(g_topo.port[0], "CLIENT KILL TYPE %s", "replica"));
    DBKT_OK(dbk_cache_delete(c, "k", 1, &err), &err); /* acknowledged by the master only */
    kill(g_topo.pid[0], SIGKILL);
    waitpid(g_topo.pid[0], NULL, 0);
    g_topo.pid[0] = 0;
    kill(g_topo.pid[1], SIGCONT);
    /* the replica still holds the old value */
    redisReply *r = rcmd(g_topo.port[1], "EXISTS %s", "dbkt_lost:v:k");
    assert_non_null(r);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    end = dbkt_mono_ms() + 70000; /* see failover_case: TILT */
    bool promoted = false;
    while (!promoted && dbkt_mono_ms() < end) {
        for (int i = 0; i < NSENT; i++)
            promoted |= named_master(g_topo.sport[i]) == g_topo.port[1];
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
    free(v);
    /* the old value is still on the new master, and still refused */
    r = rcmd(g_topo.port[1], "EXISTS %s", "dbkt_lost:v:k");
    bool still = r && r->integer == 1;
    freeReplyObject(r);
    dbk_cache_close(c);
    topo_stop(&g_topo);
    assert_true(still);
    assert_int_equal(rc, DBK_ENOT_FOUND);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cache_sentinel_master_killed, stop_topology),
        cmocka_unit_test_teardown(cache_sentinel_manual_failover, stop_topology),
        cmocka_unit_test_teardown(cache_sentinel_lost_invalidation_refused, stop_topology),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
