/*
 * Redis Sentinel and Cluster topologies for tests (see redistopo.h): one
 * copy of the start, stop and wait code, so the cache's topology tests and
 * the example service's differ only in the workload and the disruption.
 *
 * Servers are forked and exec'd directly (no shell, no daemonize), so the
 * PID the test holds is the server's: a kill reaches it and nothing else.
 * Each child asks for SIGKILL when its parent thread dies, so a crashed
 * test leaves no server behind; the registry below lets a cmocka teardown
 * and an atexit handler stop what a failed assertion left running. The
 * servers keep nothing on disk (no RDB, no AOF) except the cluster's
 * nodes.conf, in a directory of their own removed at stop.
 */
#include "redistopo.h"

#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define MAXNODES 8 /* >= 2 + DBKT_SENTINELS and >= DBKT_CLUSTER_NODES */

struct dbkt_redistopo {
    char dir[300];
    char log[340];
    char url[512];
    int n; /* processes */
    int port[MAXNODES];
    pid_t pid[MAXNODES];
};

/* ---- the registry of running topologies ---- */

#define MAXTOPOS 4
static dbkt_redistopo *g_running[MAXTOPOS];
static bool g_atexit;

static void stop_all(void)
{
    for (int i = 0; i < MAXTOPOS; i++)
        if (g_running[i])
            dbkt_redistopo_stop(g_running[i]); /* clears the slot */
}

int dbkt_redistopo_teardown(void **state)
{
    (void)state;
    stop_all();
    return 0;
}

static void registry_add(dbkt_redistopo *t)
{
    if (!g_atexit) {
        atexit(stop_all);
        g_atexit = true;
    }
    for (int i = 0; i < MAXTOPOS; i++)
        if (!g_running[i]) {
            g_running[i] = t;
            return;
        }
    fail_msg("redistopo: more than %d topologies at once", MAXTOPOS);
}

/* ---- processes ---- */

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

/* A free port; with `bus`, one whose cluster bus port (+10000) is free too. */
static int free_port(bool bus)
{
    for (int i = 0; i < 1000; i++) {
        int p = try_bind(0);
        if (p > 1024 && (!bus || (p <= 55535 && try_bind(p + 10000))))
            return p;
    }
    fail_msg("redistopo: no free loopback port");
    return 0;
}

static pid_t spawn(const char *const *argv, const char *log)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static dbkt_redistopo *topo_new(void)
{
    dbkt_redistopo *t = calloc(1, sizeof *t);
    assert_non_null(t);
    char *tmp = dbkt_tmpdir(); /* the process's; removed at exit */
    snprintf(t->dir, sizeof t->dir, "%s/redis.XXXXXX", tmp);
    free(tmp);
    if (!mkdtemp(t->dir)) {
        free(t);
        fail_msg("redistopo: cannot make a directory under the test's temporary directory");
    }
    snprintf(t->log, sizeof t->log, "%s/servers.log", t->dir);
    registry_add(t);
    return t;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void dbkt_redistopo_stop(dbkt_redistopo *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n; i++) {
        if (t->pid[i] > 0) {
            kill(t->pid[i], SIGKILL);
            waitpid(t->pid[i], NULL, 0);
            t->pid[i] = 0;
        }
    }
    if (!getenv("DBKIT_TEST_KEEP"))
        nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < MAXTOPOS; i++)
        if (g_running[i] == t)
            g_running[i] = NULL;
    free(t);
}

const char *dbkt_redistopo_url(const dbkt_redistopo *t)
{
    return t->url;
}

int dbkt_redistopo_port(const dbkt_redistopo *t, int i)
{
    assert_true(i >= 0 && i < t->n);
    return t->port[i];
}

int dbkt_redistopo_index(const dbkt_redistopo *t, int port)
{
    for (int i = 0; i < t->n; i++)
        if (t->port[i] == port)
            return i;
    return -1;
}

bool dbkt_redistopo_alive(const dbkt_redistopo *t, int i)
{
    return i >= 0 && i < t->n && t->pid[i] > 0;
}

void dbkt_redistopo_kill(dbkt_redistopo *t, int i)
{
    assert_true(i >= 0 && i < t->n);
    if (t->pid[i] <= 0)
        return;
    kill(t->pid[i], SIGKILL);
    waitpid(t->pid[i], NULL, 0);
    t->pid[i] = 0;
}

void dbkt_redistopo_pause(dbkt_redistopo *t, int i)
{
    assert_true(i >= 0 && i < t->n && t->pid[i] > 0);
    kill(t->pid[i], SIGSTOP);
}

void dbkt_redistopo_resume(dbkt_redistopo *t, int i)
{
    assert_true(i >= 0 && i < t->n && t->pid[i] > 0);
    kill(t->pid[i], SIGCONT);
}

void dbkt_redistopo_dump_log(const dbkt_redistopo *t, int lines)
{
    FILE *f = fopen(t->log, "r");
    if (!f) {
        fprintf(stderr, "---- no server log at %s ----\n", t->log);
        return;
    }
    /* two passes: count, then print the tail (the log is small) */
    int total = 0, c;
    while ((c = fgetc(f)) != EOF)
        total += c == '\n';
    rewind(f);
    fprintf(stderr, "---- last %d lines of %s ----\n", lines, t->log);
    char line[1024];
    int at = 0;
    while (fgets(line, sizeof line, f)) {
        if (at++ >= total - lines)
            fputs(line, stderr);
    }
    fclose(f);
}

/* ---- commands ---- */

redisReply *dbkt_redis_cmd(int port, const char *fmt, ...)
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

bool dbkt_redis_is_master(int port)
{
    redisReply *r = dbkt_redis_cmd(port, "ROLE");
    bool m = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
             r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    return m;
}

/* Polls (every 50 ms, at most ms) until ok(t) holds; fails naming `what`
 * with the log's tail. */
static void wait_for(bool (*ok)(const dbkt_redistopo *), const dbkt_redistopo *t, int ms,
                     const char *what)
{
    int64_t end = dbkt_mono_ms() + ms;
    while (!ok(t)) {
        if (dbkt_mono_ms() > end) {
            dbkt_redistopo_dump_log(t, 40);
            fail_msg("redistopo: %s not within %d ms", what, ms);
        }
        sleep_ms(50);
    }
}

static bool all_answer(const dbkt_redistopo *t)
{
    for (int i = 0; i < t->n; i++) {
        redisReply *r = t->pid[i] > 0 ? dbkt_redis_cmd(t->port[i], "PING") : NULL;
        bool ok = r != NULL;
        freeReplyObject(r);
        if (t->pid[i] > 0 && !ok)
            return false;
    }
    return true;
}

/* ---- Sentinel ---- */

static bool replica_synced(const dbkt_redistopo *t)
{
    redisReply *r = dbkt_redis_cmd(t->port[1], "INFO replication");
    bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "master_link_status:up");
    freeReplyObject(r);
    return ok;
}

static bool sentinels_ready(const dbkt_redistopo *t)
{
    for (int i = 0; i < DBKT_SENTINELS; i++) {
        redisReply *r = dbkt_redis_cmd(t->port[2 + i], "SENTINEL master %s", DBKT_SENTINEL_MASTER);
        bool ok = false;
        if (r && r->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < r->elements; k += 2)
                if (r->element[k]->type == REDIS_REPLY_STRING &&
                    strcmp(r->element[k]->str, "num-other-sentinels") == 0)
                    ok = atoi(r->element[k + 1]->str) == DBKT_SENTINELS - 1;
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    redisReply *r = dbkt_redis_cmd(t->port[2], "SENTINEL replicas %s", DBKT_SENTINEL_MASTER);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1;
    freeReplyObject(r);
    return ok;
}

dbkt_redistopo *dbkt_redis_sentinel_start(void)
{
    dbkt_redistopo *t = topo_new();
    t->n = 2 + DBKT_SENTINELS;
    char ps[2][16], rep[64];
    for (int i = 0; i < 2; i++) {
        t->port[i] = free_port(false);
        snprintf(ps[i], sizeof ps[i], "%d", t->port[i]);
    }
    snprintf(rep, sizeof rep, "127.0.0.1 %d", t->port[0]);
    for (int i = 0; i < 2; i++) {
        const char *argv[] = {"redis-server", "--port", ps[i], "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", t->dir,
                              i ? "--replicaof" : NULL, i ? rep : NULL, NULL};
        t->pid[i] = spawn(argv, t->log);
    }
    int off = snprintf(t->url, sizeof t->url, "redis-sentinel://");
    for (int i = 0; i < DBKT_SENTINELS; i++) {
        t->port[2 + i] = free_port(false);
        char conf[400];
        snprintf(conf, sizeof conf, "%s/sentinel%d.conf", t->dir, i);
        FILE *f = fopen(conf, "w");
        assert_non_null(f);
        fprintf(f,
                "port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 2\n"
                "sentinel down-after-milliseconds %s 1000\n"
                "sentinel failover-timeout %s 3000\nsentinel parallel-syncs %s 1\n",
                t->port[2 + i], t->dir, DBKT_SENTINEL_MASTER, t->port[0], DBKT_SENTINEL_MASTER,
                DBKT_SENTINEL_MASTER, DBKT_SENTINEL_MASTER);
        fclose(f);
        const char *argv[] = {"redis-server", conf, "--sentinel", NULL};
        t->pid[2 + i] = spawn(argv, t->log);
        off += snprintf(t->url + off, sizeof t->url - (size_t)off, "%s127.0.0.1:%d",
                        i ? "," : "", t->port[2 + i]);
    }
    snprintf(t->url + off, sizeof t->url - (size_t)off, "/%s", DBKT_SENTINEL_MASTER);
    wait_for(all_answer, t, 10000, "every server and sentinel answering");
    wait_for(replica_synced, t, 20000, "replica in sync");
    wait_for(sentinels_ready, t, 45000, "sentinels see each other and the replica");
    return t;
}

int dbkt_sentinel_named_master(const dbkt_redistopo *t, int s)
{
    assert_true(s >= 0 && s < DBKT_SENTINELS);
    redisReply *r = dbkt_redis_cmd(t->port[2 + s], "SENTINEL get-master-addr-by-name %s",
                                   DBKT_SENTINEL_MASTER);
    int port = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING)
        port = atoi(r->element[1]->str);
    freeReplyObject(r);
    return port;
}

int dbkt_sentinel_wait_switch(const dbkt_redistopo *t, int old_port, int timeout_ms)
{
    int64_t end = dbkt_mono_ms() + timeout_ms;
    while (dbkt_mono_ms() < end) {
        for (int i = 0; i < DBKT_SENTINELS; i++) {
            int now = dbkt_sentinel_named_master(t, i);
            if (now && now != old_port)
                return now;
        }
        sleep_ms(20);
    }
    dbkt_redistopo_dump_log(t, 60);
    return 0;
}

/* ---- Cluster ---- */

static bool cluster_ok(const dbkt_redistopo *t)
{
    for (int i = 0; i < t->n; i++) {
        if (t->pid[i] <= 0)
            continue;
        redisReply *r = dbkt_redis_cmd(t->port[i], "CLUSTER INFO");
        bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

void dbkt_cluster_wait_ok(const dbkt_redistopo *t, int timeout_ms, const char *what)
{
    int64_t end = dbkt_mono_ms() + timeout_ms;
    while (!cluster_ok(t)) {
        if (dbkt_mono_ms() > end) {
            dbkt_redistopo_dump_log(t, 40);
            fail_msg("cluster: %s: state not ok within %d ms", what, timeout_ms);
        }
        sleep_ms(50);
    }
}

static bool replicas_synced(const dbkt_redistopo *t)
{
    for (int i = 0; i < t->n; i++) {
        redisReply *r = dbkt_redis_cmd(t->port[i], "ROLE");
        bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                  (strcmp(r->element[0]->str, "master") == 0 ||
                   (r->elements > 3 && r->element[3]->type == REDIS_REPLY_STRING &&
                    strcmp(r->element[3]->str, "connected") == 0));
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

dbkt_redistopo *dbkt_redis_cluster_start(void)
{
    dbkt_redistopo *t = topo_new();
    t->n = DBKT_CLUSTER_NODES;
    for (int i = 0; i < t->n; i++) {
        t->port[i] = free_port(true);
        char ps[16], conf[64];
        snprintf(ps, sizeof ps, "%d", t->port[i]);
        snprintf(conf, sizeof conf, "nodes-%d.conf", t->port[i]);
        const char *argv[] = {"redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", t->dir, "--cluster-enabled", "yes",
                              "--cluster-config-file", conf, "--cluster-node-timeout", "1500",
                              NULL};
        t->pid[i] = spawn(argv, t->log);
    }
    snprintf(t->url, sizeof t->url, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", t->port[0],
             t->port[1]);
    wait_for(all_answer, t, 10000, "every cluster node answering");
    char addr[DBKT_CLUSTER_NODES][32];
    const char *args[4 + DBKT_CLUSTER_NODES + 3];
    int n = 0;
    args[n++] = "--cluster";
    args[n++] = "create";
    for (int i = 0; i < t->n; i++) {
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
    dbkt_cluster_wait_ok(t, 30000, "after create");
    wait_for(replicas_synced, t, 30000, "every cluster replica in sync");
    return t;
}

void dbkt_cluster_node_id(int port, char *id, size_t n)
{
    redisReply *r = dbkt_redis_cmd(port, "CLUSTER MYID");
    if (!r || r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        fail_msg("cluster: CLUSTER MYID of %d did not answer", port);
    }
    snprintf(id, n, "%s", r->str);
    freeReplyObject(r);
}

int dbkt_cluster_owner(const dbkt_redistopo *t, unsigned slot)
{
    for (int i = 0; i < t->n; i++) {
        if (t->pid[i] <= 0)
            continue;
        redisReply *r = dbkt_redis_cmd(t->port[i], "CLUSTER SLOTS");
        int found = -1;
        for (size_t k = 0; r && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            redisReply *e = r->element[k];
            if ((unsigned)e->element[0]->integer <= slot &&
                slot <= (unsigned)e->element[1]->integer)
                found = dbkt_redistopo_index(t, (int)e->element[2]->element[1]->integer);
        }
        freeReplyObject(r);
        if (found >= 0)
            return found;
    }
    fail_msg("cluster: no owner for slot %u", slot);
    return -1;
}

int dbkt_cluster_slots_of(const dbkt_redistopo *t, int i, unsigned *out, int max)
{
    int n = 0;
    for (int j = 0; j < t->n; j++) {
        if (t->pid[j] <= 0)
            continue;
        redisReply *r = dbkt_redis_cmd(t->port[j], "CLUSTER SLOTS");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            continue;
        }
        /* ranges come in no particular order: mark, then list */
        static bool mine[16384];
        memset(mine, 0, sizeof mine);
        for (size_t k = 0; k < r->elements; k++) {
            redisReply *e = r->element[k];
            if ((int)e->element[2]->element[1]->integer != t->port[i])
                continue;
            for (long long s = e->element[0]->integer; s <= e->element[1]->integer && s < 16384;
                 s++)
                mine[s] = true;
        }
        freeReplyObject(r);
        for (unsigned s = 0; s < 16384; s++)
            if (mine[s] && n < max)
                out[n++] = s;
        return n;
    }
    fail_msg("cluster: no live node answered CLUSTER SLOTS");
    return 0;
}

int dbkt_cluster_replica_of(const dbkt_redistopo *t, int m)
{
    for (int i = 0; i < t->n; i++) {
        if (t->pid[i] <= 0 || i == m)
            continue;
        redisReply *r = dbkt_redis_cmd(t->port[i], "ROLE");
        bool mine = r && r->type == REDIS_REPLY_ARRAY && r->elements > 2 &&
                    strcmp(r->element[0]->str, "slave") == 0 &&
                    (int)r->element[2]->integer == t->port[m];
        freeReplyObject(r);
        if (mine)
            return i;
    }
    return -1;
}

void dbkt_cluster_failover(const dbkt_redistopo *t, int rep)
{
    int port = t->port[rep];
    for (int attempt = 0; attempt < 3 && !dbkt_redis_is_master(port); attempt++) {
        redisReply *r = dbkt_redis_cmd(port, "CLUSTER FAILOVER");
        if (!r || r->type == REDIS_REPLY_ERROR) {
            const char *msg = r ? r->str : "no answer";
            fail_msg("cluster: CLUSTER FAILOVER on %d: %s", port, msg);
        }
        freeReplyObject(r);
        int64_t end = dbkt_mono_ms() + 7000;
        while (!dbkt_redis_is_master(port) && dbkt_mono_ms() < end)
            sleep_ms(20);
    }
    if (!dbkt_redis_is_master(port)) {
        dbkt_redistopo_dump_log(t, 40);
        fail_msg("cluster: replica %d did not take over after 3 CLUSTER FAILOVER", port);
    }
}

void dbkt_cluster_reshard(const dbkt_redistopo *t, int from, int to, int nslots)
{
    char addr[32], fid[64], tid[64], ns[16];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", t->port[from]);
    dbkt_cluster_node_id(t->port[from], fid, sizeof fid);
    dbkt_cluster_node_id(t->port[to], tid, sizeof tid);
    snprintf(ns, sizeof ns, "%d", nslots);
    const char *args[] = {"--cluster", "reshard", addr, "--cluster-from", fid, "--cluster-to",
                          tid, "--cluster-slots", ns, "--cluster-yes", NULL};
    int out, errfd;
    pid_t pid = dbkt_spawn("redis-cli", NULL, args, NULL, NULL, &out, &errfd);
    dbkt_proc p = dbkt_collect(pid, out, errfd, 120000, "redis-cli --cluster reshard");
    if (p.code != 0) {
        size_t len = strlen(p.out);
        fail_msg("redis-cli --cluster reshard: %d\n...%s\n%s", p.code,
                 p.out + (len > 2000 ? len - 2000 : 0), p.err);
    }
    dbkt_proc_free(&p);
}
