/*
 * The Redis backend: hiredis, small connection pools, hard timeouts, a
 * circuit breaker, the server half of the stale-set guard, and the client
 * side of Sentinel and Cluster (hiredis 0.14 has neither).
 *
 * Shape. Per server a fixed array of pool_size hiredis contexts (one
 * server, the Sentinel master, or every Cluster master); a caller takes a
 * free one (waiting at most command_timeout_ms), runs one command and gives
 * it back. Each call has one deadline on the monotonic clock, set when it
 * starts (command_timeout_ms, plus connect_timeout_ms when it connects);
 * the connect waits at most what is left of it, and before every write and
 * read the socket's timeouts are brought down to what is left (arm()), so
 * a peer that answers a few bytes at a time cannot stretch a call (fixed
 * socket timeouts would bound each read, not the call). A context that saw
 * an I/O error or a timeout is freed; the next borrower of its slot
 * reconnects. Commands are sent with explicit lengths: keys and values are
 * binary-safe. Keys on the server are prefix + "v:" + key (value),
 * prefix + "g:" + key (generation), prefix + "n:" + namespace (namespace
 * version) and prefix + "epoch"; in cluster mode "{tag}" follows the prefix.
 *
 * Breaker. After breaker_failures consecutive failed calls it opens: calls
 * fail at once (DBK_EUNAVAILABLE, counted as `skipped`) for the cool-down;
 * then exactly one call probes. Success closes it, failure re-opens it. One
 * log line per state change (WARN when it opens, INFO when it closes, DEBUG
 * for probe transitions).
 *
 * Stale-set guard. A delete runs one Lua script that writes a fresh random
 * token into the generation key (kept 3 x lease_ms) and deletes the value.
 * A lease reads the generation and the epoch (MGET); set_leased runs a
 * script that stores only if both are unchanged. The epoch key is created
 * (SET NX, random) on each connect: when the server loses its data (restart
 * without persistence, FLUSHALL) the epoch changes and every older lease
 * is refused, even though the generation keys are gone. A delete that cannot
 * reach Redis is queued (up to MAX_PENDING keys) and forces the breaker
 * open; the probe replays the queue before anything else and the breaker
 * closes only when it is empty, so this process never reads a value whose
 * invalidation it has not delivered.
 *
 * Sentinel and Cluster ("ha"). Replication is asynchronous: a failover can
 * lose an invalidation the old master acknowledged, and a promoted replica
 * still holds the old value. So in these modes an epoch is tied to the
 * node that serves the data: the first 16 hex digits of its run_id, read
 * when a connection opens. Every write script first moves the (per slot,
 * in cluster mode) epoch key to the epoch of the node running it, values
 * are stored behind the epoch they were written under, and a read (one
 * MGET of value and epoch key) is a hit only when both equal the answering
 * node's epoch: after a failover, restart or migration every older value
 * is a miss, never a stale hit. Sentinel: the master comes from the
 * sentinels (asked in turn), is checked with ROLE on every connection and
 * forgotten on READONLY, MASTERDOWN or a lost connection; a thread
 * subscribed to +switch-master moves it at once, and pooled connections to
 * an old master are replaced one by one as they are next used. Cluster: a
 * slot map from CLUSTER SLOTS, refreshed after MOVED or a lost node; ASK is
 * followed once with ASKING, TRYAGAIN retried, at most MAX_REDIRECTS per
 * call; the keys of one entry share a "{tag}" whose slot is the key's own
 * (dbk__redis_slot_tag), so each script stays on one slot.
 */
#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "cache_int.h"

#define MAX_PENDING 10000
#define KEYBUF (64 + 8 + DBK_CACHE_MAX_KEY)
#define MAX_NODES 32    /* cluster masters this handle keeps pools for */
#define MAX_REDIRECTS 5 /* MOVED/ASK/TRYAGAIN followed per call */

static const char invalidate_lua[] =
    "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) "
    "redis.call('DEL', KEYS[1]) return 1";

static const char set_leased_lua[] =
    "if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end "
    "local g = redis.call('GET', KEYS[2]) if not g then g = '' end "
    "if g ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) return 1";

/* Sentinel and cluster modes (see the paragraph atop this file): every
 * write first moves the slot's epoch key to the epoch of the node that runs
 * it (ARGV: NODE_EPOCH), and stores values behind the 16 bytes of the epoch
 * they were written under. */
static const char ha_set_lua[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then redis.call('SET', KEYS[2], ARGV[1]) end "
    "redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'PX', ARGV[3]) return 1";

static const char ha_set_leased_lua[] =
    "local e = redis.call('GET', KEYS[3]) "
    "if e ~= ARGV[5] then redis.call('SET', KEYS[3], ARGV[5]) return -1 end "
    "if e ~= ARGV[2] then return -1 end "
    "local g = redis.call('GET', KEYS[2]) if not g then g = '' end "
    "if g ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[1], e .. ARGV[3], 'PX', ARGV[4]) return 1";

static const char ha_ns_lua[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then redis.call('SET', KEYS[2], ARGV[1]) "
    "redis.call('INCRBY', KEYS[1], ARGV[3]) end "
    "return redis.call(ARGV[2], KEYS[1])";

/* An argv entry that run() replaces with the epoch of the node the command
 * goes to (16 hex digits of its run id). */
static const char NODE_EPOCH[] = "<node epoch>";

struct slot {
    redisContext *ctx;
    bool busy;
    int node;       /* index into rds.nodes */
    uint64_t gen;   /* sentinel: the master generation it connected to */
    char epoch[17]; /* sentinel: the node's epoch (its run id, 16 hex) */
};

struct pending {
    unsigned char *key;
    size_t len;
};

struct rds {
    struct dbk__cache_cfg cfg;
    struct dbk__redis_url url;
    char safe_addr[300]; /* host:port/db, for messages */
    pthread_mutex_t mu;  /* slots */
    pthread_cond_t cv;
    struct node {
        struct dbk__redis_addr addr; /* cluster: the master; else unused */
        struct slot *slots;          /* pool_size of them */
    } nodes[MAX_NODES];
    int nnodes; /* 1 unless cluster */
    int nslots; /* per node */

    pthread_mutex_t br_mu; /* breaker */
    dbk_cache_breaker state;
    int fails;
    int64_t opened_at_ns;
    uint64_t breaker_opens;

    pthread_mutex_t pend_mu;
    struct pending *pend;
    size_t npend;
    bool pend_overflow;
    uint64_t pend_dropped; /* deletes lost to a full queue since open */

    _Atomic uint64_t errors, skipped, stale_rejects;

    /* Sentinel mode. The master's address and generation are under mu;
     * disc_mu serializes discoveries. */
    bool ha;
    struct dbk__redis_addr master;
    bool master_known;
    uint64_t master_gen;
    pthread_mutex_t disc_mu;
    int sentinel_next; /* the sentinel asked first next time */
    pthread_t sub_thread;
    bool sub_started;
    _Atomic bool sub_stop;
    _Atomic uint64_t switches; /* masters learnt from +switch-master */

    /* Cluster mode: slot -> node index (0xff: unknown), under mu; map_mu
     * serializes refreshes. */
    bool cluster;
    unsigned char owner[DBK__REDIS_SLOTS];
    bool map_stale;
    int64_t map_at_ns; /* last refresh attempt */
    pthread_mutex_t map_mu;
};

/* ---- breaker ------------------------------------------------------------ */

/* Decides whether a call may go to Redis. *probe is set when this call is
 * the half-open probe. */
static dbk_rc breaker_enter(struct rds *r, bool *probe, dbk_error *err)
{
    *probe = false;
    pthread_mutex_lock(&r->br_mu);
    if (r->state == DBK_CACHE_BREAKER_CLOSED) {
        pthread_mutex_unlock(&r->br_mu);
        return DBK_OK;
    }
    int64_t now = dbk__now_ns();
    if (r->state == DBK_CACHE_BREAKER_OPEN &&
        now - r->opened_at_ns >= (int64_t)r->cfg.breaker_cooldown_ms * 1000000LL) {
        r->state = DBK_CACHE_BREAKER_HALF_OPEN;
        *probe = true;
        pthread_mutex_unlock(&r->br_mu);
        dbk__log(DBK_LOG_DEBUG, "redis cache %s: circuit breaker half-open, probing",
                 r->safe_addr);
        return DBK_OK;
    }
    pthread_mutex_unlock(&r->br_mu);
    atomic_fetch_add(&r->skipped, 1);
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s skipped: circuit breaker open",
                    r->safe_addr);
}

static void breaker_open_locked(struct rds *r, const char *why)
{
    dbk_cache_breaker was = r->state;
    r->state = DBK_CACHE_BREAKER_OPEN;
    r->opened_at_ns = dbk__now_ns();
    if (was == DBK_CACHE_BREAKER_CLOSED) {
        r->breaker_opens++;
        dbk__log(DBK_LOG_WARN,
                 "redis cache %s: circuit breaker open (%s); serving from the database for %d ms",
                 r->safe_addr, why, r->cfg.breaker_cooldown_ms);
    } else if (was == DBK_CACHE_BREAKER_HALF_OPEN) {
        dbk__log(DBK_LOG_DEBUG, "redis cache %s: probe failed, circuit breaker open again",
                 r->safe_addr);
    }
}

static void breaker_result(struct rds *r, bool probe, bool ok, const char *why)
{
    pthread_mutex_lock(&r->br_mu);
    if (ok) {
        r->fails = 0;
        if (probe && r->state != DBK_CACHE_BREAKER_CLOSED) {
            pthread_mutex_lock(&r->pend_mu);
            bool clean = r->npend == 0;
            pthread_mutex_unlock(&r->pend_mu);
            if (clean) {
                r->state = DBK_CACHE_BREAKER_CLOSED;
                dbk__log(DBK_LOG_INFO, "redis cache %s: circuit breaker closed, redis is back",
                         r->safe_addr);
            } else {
                /* deletes queued during the probe: probe again at once */
                r->state = DBK_CACHE_BREAKER_OPEN;
                r->opened_at_ns = 0;
            }
        }
    } else {
        r->fails++;
        if (probe || r->state == DBK_CACHE_BREAKER_HALF_OPEN ||
            (r->state == DBK_CACHE_BREAKER_CLOSED && r->fails >= r->cfg.breaker_failures))
            breaker_open_locked(r, why);
    }
    pthread_mutex_unlock(&r->br_mu);
}

static void force_open(struct rds *r, const char *why)
{
    pthread_mutex_lock(&r->br_mu);
    if (r->state != DBK_CACHE_BREAKER_OPEN)
        breaker_open_locked(r, why);
    pthread_mutex_unlock(&r->br_mu);
}

/* ---- connections -------------------------------------------------------- */

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

static dbk_rc io_error(struct rds *r, redisContext *c, dbk_error *err)
{
    int e = c ? c->err : REDIS_ERR_OTHER;
    const char *msg = c && c->errstr[0] ? c->errstr : "unknown error";
    bool timeout = strstr(msg, "temporarily unavailable") || strstr(msg, "timed out") ||
                   strstr(msg, "Timeout");
    (void)e;
    return dbk__err(err, timeout ? DBK_ETIMEOUT : DBK_EUNAVAILABLE, "redis cache %s: %s",
                    r->safe_addr, msg);
}

/* hiredis writes with write(2): a peer that died would raise SIGPIPE and
 * kill a process that did not ignore it. Like libpq, block SIGPIPE on this
 * thread around the call and swallow one raised by it. That costs four
 * system calls per command, so when the process already ignores SIGPIPE
 * (checked when a cache opens, as servers set it at start-up) it is
 * skipped. */
static bool g_sigpipe_ignored; /* SIGPIPE was SIG_IGN when a cache opened */

static void set_io_error(redisContext *c, const char *msg)
{
    c->err = REDIS_ERR_IO;
    dbk__strlcpy(c->errstr, msg, sizeof c->errstr);
}

/* Before each blocking write or read of a call: the socket's timeouts
 * (SO_SNDTIMEO/SO_RCVTIMEO) become what is left before deadline_ns, so the
 * call as a whole ends by its deadline however the peer paces its bytes.
 * c->timeout (hiredis keeps it only to connect again, which this file
 * never does) records the timeouts now set: they are changed only when
 * they differ from what is left by more than 1 ms, so a call that is one
 * write and one read costs no extra system call. False (c's error set to
 * "timed out") when the deadline has passed. */
static bool arm(redisContext *c, int64_t deadline_ns)
{
    int64_t left_us = (deadline_ns - dbk__now_ns()) / 1000;
    if (left_us <= 0) {
        set_io_error(c, "timed out (call deadline)");
        return false;
    }
    struct timeval *cur = c->timeout;
    int64_t cur_us = cur ? (int64_t)cur->tv_sec * 1000000 + cur->tv_usec : -1;
    if (cur_us > left_us + 1000 || cur_us < left_us - 1000) {
        struct timeval tv = {(time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000)};
        if (redisSetTimeout(c, tv) != REDIS_OK)
            return false;
        if (cur)
            *cur = tv;
    }
    return true;
}

/* Writes what c has queued and reads one reply, all before deadline_ns
 * (see arm()): a peer that trickles its answer cannot stretch the call. */
static redisReply *finish_call(redisContext *c, int64_t deadline_ns)
{
    int done = 0;
    do {
        if (!arm(c, deadline_ns) || redisBufferWrite(c, &done) != REDIS_OK)
            return NULL;
    } while (!done);
    void *rep = NULL;
    for (;;) {
        if (redisGetReplyFromReader(c, &rep) != REDIS_OK)
            return NULL;
        if (rep)
            return rep;
        if (!arm(c, deadline_ns) || redisBufferRead(c) != REDIS_OK)
            return NULL;
    }
}

/* One command on c, bounded as a whole by deadline_ns. NULL on an I/O
 * error or timeout (c->errstr says which; the connection is then unusable). */
static redisReply *cmd(redisContext *c, int argc, const char **argv, const size_t *lens,
                       int64_t deadline_ns)
{
    if (redisAppendCommandArgv(c, argc, argv, lens) != REDIS_OK)
        return NULL;
    if (__atomic_load_n(&g_sigpipe_ignored, __ATOMIC_RELAXED))
        return finish_call(c, deadline_ns); /* nothing to guard: no syscalls */
    sigset_t pipe_set, old_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    bool was_pending = false;
    bool blocked = pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set) == 0;
    if (blocked && sigpending(&pending) == 0)
        was_pending = sigismember(&pending, SIGPIPE) == 1;
    redisReply *rep = finish_call(c, deadline_ns);
    if (blocked) {
        if (!was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
            struct timespec zero = {0, 0};
            (void)sigtimedwait(&pipe_set, NULL, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    }
    return rep;
}

/* A deadline `ms` from now on the monotonic clock. */
static int64_t deadline_in(int ms)
{
    return dbk__now_ns() + (int64_t)ms * 1000000LL;
}

/* A step's timeout: `ms`, or what is left before `deadline_ns` when that is
 * less. -1 when the deadline has passed. */
static int step_ms(int ms, int64_t deadline_ns)
{
    int64_t left = (deadline_ns - dbk__now_ns()) / 1000000LL;
    if (left <= 0)
        return -1;
    return left < ms ? (int)left : ms;
}

/* Opens a TCP connection to host:port within the connect timeout and what
 * is left before deadline_ns. */
static dbk_rc dial(struct rds *r, const char *host, int port, int64_t deadline_ns,
                   redisContext **out, dbk_error *err)
{
    *out = NULL;
    int cms = step_ms(r->cfg.connect_timeout_ms, deadline_ns);
    if (cms <= 0)
        return dbk__err(err, DBK_ETIMEOUT, "redis cache %s: no time left to connect",
                        r->safe_addr);
    redisContext *c = redisConnectWithTimeout(host, port, tv_ms(cms));
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory connecting to redis");
    if (c->err) {
        dbk_rc rc = io_error(r, c, err);
        redisFree(c);
        return rc == DBK_ETIMEOUT ? rc : DBK_EUNAVAILABLE;
    }
    if (c->timeout)
        c->timeout->tv_sec = -1; /* the socket's timeouts are not known yet: arm() sets them */
    *out = c;
    return DBK_OK;
}

/* Cluster mode: the slot map is to be loaded again before the next use. */
static void map_stale(struct rds *r)
{
    pthread_mutex_lock(&r->mu);
    r->map_stale = true;
    pthread_mutex_unlock(&r->mu);
}

/* Sentinel mode: an error reply that means "not the master any more". */
static bool demoted(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_ERROR && rep->str &&
           (strncmp(rep->str, "READONLY", 8) == 0 || strncmp(rep->str, "MASTERDOWN", 10) == 0);
}

/* ---- Sentinel ----------------------------------------------------------- */

/* Forgets the master learnt at generation `gen` (a connection to it failed,
 * it answered READONLY, or ROLE said it is not a master): the next connect
 * asks the sentinels again. A newer master is left alone. */
static void master_lost(struct rds *r, uint64_t gen)
{
    pthread_mutex_lock(&r->mu);
    if (r->master_gen == gen)
        r->master_known = false;
    pthread_mutex_unlock(&r->mu);
}

/* Records `a` as the master; a new address starts a new generation, so the
 * pool's connections to the old one are dropped as they are next used (one
 * at a time: no burst of connects). */
static void master_set(struct rds *r, const struct dbk__redis_addr *a)
{
    pthread_mutex_lock(&r->mu);
    if (!r->master_known || strcmp(r->master.host, a->host) != 0 || r->master.port != a->port) {
        if (strcmp(r->master.host, a->host) != 0 || r->master.port != a->port)
            r->master_gen++;
        r->master = *a;
    }
    r->master_known = true;
    pthread_mutex_unlock(&r->mu);
}

/* Asks the sentinels in turn (each within the connect timeout and the call's
 * deadline) for the master's address. */
static dbk_rc discover(struct rds *r, int64_t deadline_ns, dbk_error *err)
{
    int n = r->url.nseeds;
    for (int k = 0; k < n && step_ms(1, deadline_ns) > 0; k++) {
        int i = (r->sentinel_next + k) % n;
        redisContext *c;
        if (dial(r, r->url.seeds[i].host, r->url.seeds[i].port, deadline_ns, &c, NULL) != DBK_OK)
            continue;
        const char *av[3] = {"SENTINEL", "get-master-addr-by-name", r->url.master};
        size_t al[3] = {8, 23, strlen(r->url.master)};
        redisReply *rep = cmd(c, 3, av, al, deadline_ns);
        redisFree(c);
        if (!rep)
            continue;
        struct dbk__redis_addr a;
        bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                  rep->element[0]->type == REDIS_REPLY_STRING &&
                  rep->element[1]->type == REDIS_REPLY_STRING &&
                  rep->element[0]->len > 0 && rep->element[0]->len < sizeof a.host;
        if (ok) {
            memcpy(a.host, rep->element[0]->str, rep->element[0]->len);
            a.host[rep->element[0]->len] = 0;
            char *end;
            long port = strtol(rep->element[1]->str, &end, 10);
            ok = *end == 0 && port > 0 && port < 65536;
            a.port = (int)port;
        }
        freeReplyObject(rep);
        if (!ok)
            continue;
        r->sentinel_next = i; /* disc_mu held: ask the one that answered first */
        master_set(r, &a);
        return DBK_OK;
    }
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: no sentinel named a master",
                    r->safe_addr);
}

/* The master to connect to, asking the sentinels when it is not known. One
 * thread discovers at a time; the others fail at once rather than wait
 * (their call falls back to the database). */
static dbk_rc master_addr(struct rds *r, struct dbk__redis_addr *out, uint64_t *gen,
                          int64_t deadline_ns, dbk_error *err)
{
    for (int round = 0; round < 2; round++) {
        pthread_mutex_lock(&r->mu);
        bool known = r->master_known;
        *out = r->master;
        *gen = r->master_gen;
        pthread_mutex_unlock(&r->mu);
        if (known)
            return DBK_OK;
        if (round == 1)
            break;
        if (pthread_mutex_trylock(&r->disc_mu) != 0)
            return dbk__err(err, DBK_EUNAVAILABLE,
                            "redis cache %s: the master is being looked up", r->safe_addr);
        dbk_rc rc = DBK_OK;
        pthread_mutex_lock(&r->mu);
        bool again = !r->master_known;
        pthread_mutex_unlock(&r->mu);
        if (again)
            rc = discover(r, deadline_ns, err);
        pthread_mutex_unlock(&r->disc_mu);
        if (rc != DBK_OK)
            return rc;
    }
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: master unknown", r->safe_addr);
}

/* ROLE must say master (a sentinel may still name a demoted one); INFO
 * server gives the run id, the node's epoch. */
static dbk_rc verify_master(struct rds *r, redisContext *c, struct slot *s, int64_t deadline_ns,
                            dbk_error *err)
{
    const char *av[2] = {"ROLE", "server"};
    size_t al[2] = {4, 6};
    redisReply *rep = cmd(c, 1, av, al, deadline_ns);
    if (!rep)
        return io_error(r, c, err);
    bool master = rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                  rep->element[0]->type == REDIS_REPLY_STRING && rep->element[0]->len == 6 &&
                  memcmp(rep->element[0]->str, "master", 6) == 0;
    freeReplyObject(rep);
    if (!master)
        return dbk__err(err, DBK_EUNAVAILABLE,
                        "redis cache %s: the server the sentinels named is not a master",
                        r->safe_addr);
    av[0] = "INFO";
    al[0] = 4;
    rep = cmd(c, 2, av, al, deadline_ns);
    if (!rep)
        return io_error(r, c, err);
    const char *id = rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS
                         ? strstr(rep->str, "run_id:")
                         : NULL;
    bool ok = false;
    if (id) {
        id += 7;
        ok = true;
        for (int i = 0; i < 16 && ok; i++)
            ok = dbk__hexval((unsigned char)id[i]) >= 0;
        if (ok) {
            memcpy(s->epoch, id, 16);
            s->epoch[16] = 0;
        }
    }
    freeReplyObject(rep);
    if (!ok)
        return dbk__err(err, DBK_EINTERNAL, "redis cache %s: no run_id in INFO server",
                        r->safe_addr);
    return DBK_OK;
}

/* "<name> <old-ip> <old-port> <new-ip> <new-port>" from +switch-master. */
static void on_switch(struct rds *r, const char *msg, size_t len)
{
    char buf[600], *f[5], *save = NULL;
    if (len >= sizeof buf)
        return;
    memcpy(buf, msg, len);
    buf[len] = 0;
    int n = 0;
    for (char *t = strtok_r(buf, " ", &save); t && n < 5; t = strtok_r(NULL, " ", &save))
        f[n++] = t;
    if (n != 5 || strcmp(f[0], r->url.master) != 0)
        return;
    struct dbk__redis_addr a;
    char *end;
    long port = strtol(f[4], &end, 10);
    if (*end || port <= 0 || port > 65535 || strlen(f[3]) >= sizeof a.host)
        return;
    dbk__strlcpy(a.host, f[3], sizeof a.host);
    a.port = (int)port;
    master_set(r, &a);
    atomic_fetch_add(&r->switches, 1);
    dbk__log(DBK_LOG_INFO, "redis cache %s: sentinel switched the master to %s:%d",
             r->safe_addr, a.host, a.port);
    /* the breaker need not sit out its cool-down: probe the new master now */
    pthread_mutex_lock(&r->br_mu);
    if (r->state == DBK_CACHE_BREAKER_OPEN)
        r->opened_at_ns = 0;
    pthread_mutex_unlock(&r->br_mu);
}

/* Sleeps up to ms, in steps, while the cache stays open. */
static void sub_nap(struct rds *r, int ms)
{
    for (int i = 0; i < ms / 20 && !atomic_load(&r->sub_stop); i++) {
        struct timespec ts = {0, 20000000L};
        nanosleep(&ts, NULL);
    }
}

/* The subscriber: one connection to one sentinel at a time, subscribed to
 * +switch-master; on a loss it moves to the next sentinel. Wakes every
 * 100 ms to see whether the cache is closing. */
static void *sub_main(void *arg)
{
    struct rds *r = arg;
    int i = 0;
    while (!atomic_load(&r->sub_stop)) {
        struct dbk__redis_addr *sa = &r->url.seeds[i];
        i = (i + 1) % r->url.nseeds;
        redisContext *c;
        if (dial(r, sa->host, sa->port, deadline_in(r->cfg.connect_timeout_ms), &c, NULL) !=
            DBK_OK) {
            sub_nap(r, 200);
            continue;
        }
        const char *av[2] = {"SUBSCRIBE", "+switch-master"};
        size_t al[2] = {9, 14};
        redisReply *rep = cmd(c, 2, av, al, deadline_in(1000));
        if (!rep) {
            redisFree(c);
            sub_nap(r, 200);
            continue;
        }
        freeReplyObject(rep);
        while (!atomic_load(&r->sub_stop)) {
            void *m = NULL;
            if (redisGetReplyFromReader(c, &m) != REDIS_OK)
                break;
            if (m) {
                redisReply *mr = m;
                if (mr->type == REDIS_REPLY_ARRAY && mr->elements == 3 &&
                    mr->element[2]->type == REDIS_REPLY_STRING)
                    on_switch(r, mr->element[2]->str, mr->element[2]->len);
                freeReplyObject(m);
                continue;
            }
            struct pollfd pfd = {c->fd, POLLIN, 0};
            int n = poll(&pfd, 1, 100);
            if (n < 0 && errno != EINTR)
                break;
            if (n > 0 && redisBufferRead(c) != REDIS_OK)
                break;
        }
        redisFree(c);
    }
    return NULL;
}

/* Connects a slot: TCP connect, AUTH, SELECT, the epoch key, all before
 * deadline_ns (the connect also within its own timeout). */
static dbk_rc connect_slot(struct rds *r, struct slot *s, int64_t deadline_ns, dbk_error *err)
{
    redisContext *c;
    struct dbk__redis_addr to = {{0}, r->url.port};
    uint64_t gen = 0;
    if (r->cluster) {
        pthread_mutex_lock(&r->mu);
        to = r->nodes[s->node].addr;
        pthread_mutex_unlock(&r->mu);
    } else if (r->ha) {
        dbk_rc mrc = master_addr(r, &to, &gen, deadline_ns, err);
        if (mrc != DBK_OK)
            return mrc;
    } else {
        dbk__strlcpy(to.host, r->url.host, sizeof to.host);
    }
    dbk_rc drc = dial(r, to.host, to.port, deadline_ns, &c, err);
    if (drc != DBK_OK) {
        if (r->cluster)
            map_stale(r);
        else if (r->ha)
            master_lost(r, gen);
        return drc;
    }
    redisReply *rep = NULL;
    if (r->url.password[0]) {
        const char *av[3] = {"AUTH", r->url.user, r->url.password};
        size_t al[3] = {4, strlen(r->url.user), strlen(r->url.password)};
        if (r->url.user[0])
            rep = cmd(c, 3, av, al, deadline_ns);
        else {
            av[1] = r->url.password;
            al[1] = al[2];
            rep = cmd(c, 2, av, al, deadline_ns);
        }
        if (!rep)
            goto io_fail;
        if (rep->type == REDIS_REPLY_ERROR) {
            freeReplyObject(rep);
            redisFree(c);
            dbk__err(err, DBK_EAUTH, "redis cache %s: authentication failed", r->safe_addr);
            dbk__err_hint(err, "check the password in REDIS_URL / CACHE_URL");
            return DBK_EAUTH;
        }
        freeReplyObject(rep);
    }
    if (r->url.db != 0) {
        char dbs[16];
        int n = snprintf(dbs, sizeof dbs, "%d", r->url.db);
        const char *av[2] = {"SELECT", dbs};
        size_t al[2] = {6, (size_t)n};
        rep = cmd(c, 2, av, al, deadline_ns);
        if (!rep)
            goto io_fail;
        bool bad = rep->type == REDIS_REPLY_ERROR;
        freeReplyObject(rep);
        if (bad) {
            redisFree(c);
            return dbk__err(err, DBK_ECONFIG, "redis cache %s: cannot select database %d",
                            r->safe_addr, r->url.db);
        }
    }
    if (r->ha) {
        dbk_rc vrc = verify_master(r, c, s, deadline_ns, err);
        if (vrc != DBK_OK) {
            if (r->cluster)
                map_stale(r);
            else
                master_lost(r, gen);
            redisFree(c);
            return vrc;
        }
        s->gen = gen;
    } else {
        char key[80], val[24];
        int kl = snprintf(key, sizeof key, "%sepoch", r->cfg.key_prefix);
        int vl = snprintf(val, sizeof val, "%016llx", (unsigned long long)dbk__cache_rand64());
        const char *av[4] = {"SET", key, val, "NX"};
        size_t al[4] = {3, (size_t)kl, (size_t)vl, 2};
        rep = cmd(c, 4, av, al, deadline_ns);
        if (!rep)
            goto io_fail;
        freeReplyObject(rep);
    }
    s->ctx = c;
    return DBK_OK;
io_fail : {
    dbk_rc rc = io_error(r, c, err);
    redisFree(c);
    return rc;
}
}

/* Takes a connected slot of node `node`: a free one before *deadline_ns,
 * then a connect when it has none (which moves *deadline_ns on by
 * connect_timeout_ms). */
static dbk_rc take_slot(struct rds *r, int node, struct slot **out, int64_t *deadline_ns,
                        dbk_error *err)
{
    struct timespec dl = {(time_t)(*deadline_ns / 1000000000LL),
                          (long)(*deadline_ns % 1000000000LL)};
    struct slot *s = NULL;
    pthread_mutex_lock(&r->mu);
    struct slot *pool = r->nodes[node].slots;
    bool timed_out = false;
    for (;;) {
        /* prefer a connected free slot */
        for (int i = 0; i < r->nslots && !s; i++)
            if (!pool[i].busy && pool[i].ctx)
                s = &pool[i];
        for (int i = 0; i < r->nslots && !s; i++)
            if (!pool[i].busy)
                s = &pool[i];
        if (s || timed_out)
            break;
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT)
            timed_out = true;
    }
    bool stale = false;
    if (s) {
        s->busy = true;
        stale = r->ha && !r->cluster && s->ctx && s->gen != r->master_gen;
    }
    pthread_mutex_unlock(&r->mu);
    if (stale) {
        redisFree(s->ctx); /* connected to a master that is no longer the master */
        s->ctx = NULL;
    }
    if (!s)
        return dbk__err(err, DBK_ETIMEOUT, "redis cache %s: all %d connections busy",
                        r->safe_addr, r->nslots);
    if (!s->ctx) {
        *deadline_ns += (int64_t)r->cfg.connect_timeout_ms * 1000000LL;
        dbk_rc rc = connect_slot(r, s, *deadline_ns, err);
        if (rc != DBK_OK) {
            pthread_mutex_lock(&r->mu);
            s->busy = false;
            pthread_cond_signal(&r->cv);
            pthread_mutex_unlock(&r->mu);
            return rc;
        }
    }
    *out = s;
    return DBK_OK;
}

static void release(struct rds *r, struct slot *s, bool broken)
{
    if (broken && s->ctx) {
        redisFree(s->ctx);
        s->ctx = NULL;
    }
    pthread_mutex_lock(&r->mu);
    s->busy = false;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* The slot an entry's keys live in (cluster), else 0. */
static unsigned entry_slot(const struct rds *r, const void *key, size_t klen)
{
    return r->cluster ? dbk__redis_key_slot(key, klen) : 0;
}

/* prefix [+ "{tag}"] + tag + ':' + key. In cluster mode "{tag}" names the
 * entry's slot, so the value, generation and epoch keys share it. */
static size_t mkkey(const struct rds *r, char tag, const void *key, size_t klen, char *buf)
{
    size_t pl = strlen(r->cfg.key_prefix);
    memcpy(buf, r->cfg.key_prefix, pl);
    if (r->cluster) {
        const char *t = dbk__redis_slot_tag(dbk__redis_key_slot(key, klen));
        size_t tl = strlen(t);
        buf[pl++] = '{';
        memcpy(buf + pl, t, tl);
        pl += tl;
        buf[pl++] = '}';
    }
    buf[pl] = tag;
    buf[pl + 1] = ':';
    memcpy(buf + pl + 2, key, klen);
    return pl + 2 + klen;
}

/* The epoch key of slot `hslot` (one key unless cluster). buf: 80 bytes. */
static size_t mkepoch(const struct rds *r, unsigned hslot, char *buf)
{
    if (r->cluster)
        return (size_t)snprintf(buf, 80, "%s{%s}epoch", r->cfg.key_prefix,
                                dbk__redis_slot_tag(hslot));
    return (size_t)snprintf(buf, 80, "%sepoch", r->cfg.key_prefix);
}

/* The invalidation script's argv for `key` (bufs: vk, gk KEYBUF; tok,
 * ttl 24 bytes). */
static void mkinval(struct rds *r, const void *key, size_t klen, char *vk, char *gk, char *tok,
                    char *ttl, const char **av, size_t *al)
{
    size_t vl = mkkey(r, 'v', key, klen, vk), gl = mkkey(r, 'g', key, klen, gk);
    int tl = snprintf(tok, 24, "%016llx", (unsigned long long)dbk__cache_rand64());
    int xl = snprintf(ttl, 24, "%lld", 3LL * r->cfg.lease_ms);
    const char *v[7] = {"EVAL", invalidate_lua, "2", vk, gk, tok, ttl};
    size_t l[7] = {4, sizeof invalidate_lua - 1, 1, vl, gl, (size_t)tl, (size_t)xl};
    memcpy(av, v, sizeof v);
    memcpy(al, l, sizeof l);
}

/* ---- cluster: the slot map ---------------------------------------------- */

/* The index of the node at `a`, added (with an empty pool) when new. -1
 * when MAX_NODES are known or memory is short. mu held. */
static int node_for_locked(struct rds *r, const struct dbk__redis_addr *a)
{
    for (int i = 0; i < r->nnodes; i++)
        if (r->nodes[i].addr.port == a->port && strcmp(r->nodes[i].addr.host, a->host) == 0)
            return i;
    if (r->nnodes == MAX_NODES)
        return -1;
    struct slot *sl = calloc((size_t)r->nslots, sizeof *sl);
    if (!sl)
        return -1;
    for (int k = 0; k < r->nslots; k++)
        sl[k].node = r->nnodes;
    r->nodes[r->nnodes].addr = *a;
    r->nodes[r->nnodes].slots = sl;
    return r->nnodes++;
}

/* Loads the slot map from CLUSTER SLOTS of the first node that answers
 * (the known masters, then the URL's seeds), before deadline_ns. One
 * refresh at a time (others go on with the map they have), at most one
 * every 100 ms. */
static void refresh_map(struct rds *r, int64_t deadline_ns)
{
    if (pthread_mutex_trylock(&r->map_mu) != 0)
        return;
    struct dbk__redis_addr cand[MAX_NODES + DBK__REDIS_MAX_SEEDS];
    int nc = 0;
    int64_t now = dbk__now_ns();
    pthread_mutex_lock(&r->mu);
    bool due = (r->map_stale || r->nnodes == 0) && now - r->map_at_ns >= 100000000LL;
    if (due) {
        r->map_at_ns = now;
        for (int i = 0; i < r->nnodes; i++)
            cand[nc++] = r->nodes[i].addr;
    }
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; due && i < r->url.nseeds; i++)
        cand[nc++] = r->url.seeds[i];
    struct dbk__redis_range *rg = due ? malloc(4096 * sizeof *rg) : NULL;
    for (int i = 0; rg && i < nc && step_ms(1, deadline_ns) > 0; i++) {
        redisContext *c;
        if (dial(r, cand[i].host, cand[i].port, deadline_ns, &c, NULL) != DBK_OK)
            continue;
        redisReply *rep = NULL;
        bool ok = true;
        if (r->url.password[0]) {
            const char *av[3] = {"AUTH", r->url.user, r->url.password};
            size_t al[3] = {4, strlen(r->url.user), strlen(r->url.password)};
            if (!r->url.user[0]) {
                av[1] = r->url.password;
                al[1] = al[2];
            }
            rep = cmd(c, r->url.user[0] ? 3 : 2, av, al, deadline_ns);
            ok = rep && rep->type != REDIS_REPLY_ERROR;
            if (rep)
                freeReplyObject(rep);
        }
        const char *av[2] = {"CLUSTER", "SLOTS"};
        size_t al[2] = {7, 5};
        rep = ok ? cmd(c, 2, av, al, deadline_ns) : NULL;
        redisFree(c);
        int n = rep ? dbk__redis_parse_slots(rep, cand[i].host, rg, 4096) : -1;
        if (rep)
            freeReplyObject(rep);
        if (n <= 0)
            continue;
        pthread_mutex_lock(&r->mu);
        memset(r->owner, 0xff, sizeof r->owner);
        for (int k = 0; k < n; k++) {
            int idx = node_for_locked(r, &rg[k].master);
            if (idx >= 0)
                memset(r->owner + rg[k].lo, idx, rg[k].hi - rg[k].lo + 1);
        }
        r->map_stale = false;
        pthread_mutex_unlock(&r->mu);
        break;
    }
    free(rg);
    pthread_mutex_unlock(&r->map_mu);
}

/*
 * Sends one command to where it belongs and reads its reply, all before
 * *deadline_ns (moved on by connect_timeout_ms when a connect is needed).
 * Cluster: routed by `hslot`; a MOVED updates the map (and asks for a
 * refresh), an ASK sends ASKING then the command to the node named once,
 * a TRYAGAIN (keys of a slot being migrated) retries after 2 ms while
 * time is left; at most MAX_REDIRECTS MOVED/ASK. Sentinel: READONLY/MASTERDOWN forgets the master
 * and tries once more. DBK_OK with *reply (the caller judges an error
 * reply); else the connection is dropped and *busy says whether the pool
 * had no free connection (not a failure of Redis).
 */
static dbk_rc exec_cmd(struct rds *r, unsigned hslot, int argc, const char **argv,
                       const size_t *lens, int64_t *deadline_ns, redisReply **reply, bool *busy,
                       char *epoch_out, dbk_error *err)
{
    *reply = NULL;
    *busy = false;
    int ask_node = -1;
    const char *av[12];
    size_t al[12];
    int ep = -1;
    for (int i = 0; i < argc && i < 12; i++) {
        av[i] = argv[i];
        al[i] = lens[i];
        if (argv[i] == NODE_EPOCH)
            ep = i;
    }
    int redirects = 0;
    for (;;) {
        int node = 0;
        if (r->cluster && ask_node >= 0) {
            node = ask_node;
        } else if (r->cluster) {
            pthread_mutex_lock(&r->mu);
            bool stale = r->map_stale;
            int o = r->owner[hslot];
            pthread_mutex_unlock(&r->mu);
            if (stale || o == 0xff) {
                refresh_map(r, *deadline_ns);
                pthread_mutex_lock(&r->mu);
                o = r->owner[hslot];
                pthread_mutex_unlock(&r->mu);
            }
            if (o == 0xff)
                return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: no node known for slot %u",
                                r->safe_addr, hslot);
            node = o;
        }
        struct slot *s = NULL;
        dbk_rc rc = take_slot(r, node, &s, deadline_ns, err);
        if (rc != DBK_OK) {
            *busy = rc == DBK_ETIMEOUT && err && strstr(err->message, "connections busy");
            return rc;
        }
        if (ep >= 0) {
            av[ep] = s->epoch;
            al[ep] = 16;
        }
        bool asking = ask_node >= 0;
        if (asking) {
            const char *aa[1] = {"ASKING"};
            size_t aal[1] = {6};
            redisAppendCommandArgv(s->ctx, 1, aa, aal);
        }
        redisReply *rep = cmd(s->ctx, argc, av, al, *deadline_ns);
        if (asking && rep) { /* that was ASKING's answer; the command's is next */
            freeReplyObject(rep);
            rep = finish_call(s->ctx, *deadline_ns);
        }
        if (!rep) {
            rc = io_error(r, s->ctx, err);
            if (r->cluster)
                map_stale(r);
            else if (r->ha)
                master_lost(r, s->gen);
            release(r, s, true);
            return rc;
        }
        ask_node = -1;
        if (rep->type == REDIS_REPLY_ERROR && rep->str && step_ms(3, *deadline_ns) >= 3) {
            unsigned sl = 0;
            struct dbk__redis_addr to;
            int kind = r->cluster ? dbk__redis_parse_redirect(rep->str, rep->len, &sl, &to) : 0;
            /* TRYAGAIN: the keys of a slot are half migrated; it passes
             * within milliseconds, so it is retried while time is left
             * rather than counted as a redirection */
            bool again = r->cluster && strncmp(rep->str, "TRYAGAIN", 8) == 0;
            bool lost = !r->cluster && r->ha && demoted(rep);
            if ((kind || lost) && ++redirects > MAX_REDIRECTS) {
                kind = 0;
                lost = false;
            }
            if (kind || again || lost) {
                if (lost)
                    master_lost(r, s->gen);
                release(r, s, lost);
                freeReplyObject(rep);
                if (kind) {
                    pthread_mutex_lock(&r->mu);
                    int idx = node_for_locked(r, &to);
                    if (idx >= 0 && kind == 1 && sl < DBK__REDIS_SLOTS) {
                        r->owner[sl] = (unsigned char)idx;
                        r->map_stale = true; /* a MOVED: more slots may have moved */
                    }
                    pthread_mutex_unlock(&r->mu);
                    if (idx < 0)
                        return dbk__err(err, DBK_EUNAVAILABLE,
                                        "redis cache %s: more than %d cluster nodes",
                                        r->safe_addr, MAX_NODES);
                    if (kind == 2)
                        ask_node = idx;
                } else if (again) {
                    struct timespec ts = {0, 2000000L};
                    nanosleep(&ts, NULL);
                }
                continue;
            }
        }
        if (epoch_out)
            memcpy(epoch_out, s->epoch, sizeof s->epoch);
        bool drop = !r->cluster && r->ha && demoted(rep);
        if (drop)
            master_lost(r, s->gen);
        release(r, s, drop);
        *reply = rep;
        return DBK_OK;
    }
}

/* Replays queued deletes before *deadline_ns. 1: all delivered; 0: time
 * ran short (stops before sending a delete when less than half a command
 * timeout is left); -1: an I/O error or timeout. What was not replayed
 * stays queued. */
static int replay_pending(struct rds *r, int64_t *deadline_ns)
{
    pthread_mutex_lock(&r->pend_mu);
    struct pending *list = r->pend;
    size_t n = r->npend;
    bool overflow = r->pend_overflow;
    r->pend = NULL;
    r->npend = 0;
    r->pend_overflow = false;
    pthread_mutex_unlock(&r->pend_mu);
    if (overflow)
        dbk__log(DBK_LOG_ERROR,
                 "redis cache %s: more than %d invalidations could not be delivered; values "
                 "may be stale until their ttl",
                 r->safe_addr, MAX_PENDING);
    size_t done = 0;
    int ok = 1;
    for (; done < n; done++) {
        if (step_ms(r->cfg.command_timeout_ms, *deadline_ns) * 2 < r->cfg.command_timeout_ms) {
            ok = 0;
            break;
        }
        char vk[KEYBUF], gk[KEYBUF], tok[24], ttl[24];
        const char *av[7];
        size_t al[7];
        mkinval(r, list[done].key, list[done].len, vk, gk, tok, ttl, av, al);
        redisReply *rep;
        bool busy;
        if (exec_cmd(r, entry_slot(r, list[done].key, list[done].len), 7, av, al, deadline_ns,
                     &rep, &busy, NULL, NULL) != DBK_OK) {
            ok = -1;
            break;
        }
        freeReplyObject(rep);
        free(list[done].key);
    }
    if (done < n) {
        pthread_mutex_lock(&r->pend_mu);
        for (size_t i = done; i < n; i++) {
            if (r->npend < MAX_PENDING) {
                struct pending *np = realloc(r->pend, (r->npend + 1) * sizeof *np);
                if (np) {
                    r->pend = np;
                    r->pend[r->npend++] = list[i];
                    continue;
                }
            }
            r->pend_overflow = true;
            r->pend_dropped++;
            free(list[i].key);
        }
        pthread_mutex_unlock(&r->pend_mu);
    }
    free(list);
    return ok;
}

static void add_pending(struct rds *r, const void *key, size_t klen)
{
    unsigned char *copy = malloc(klen);
    pthread_mutex_lock(&r->pend_mu);
    struct pending *np = NULL;
    if (copy && r->npend < MAX_PENDING)
        np = realloc(r->pend, (r->npend + 1) * sizeof *np);
    if (np) {
        memcpy(copy, key, klen);
        r->pend = np;
        r->pend[r->npend].key = copy;
        r->pend[r->npend].len = klen;
        r->npend++;
    } else {
        free(copy);
        r->pend_overflow = true;
        r->pend_dropped++;
    }
    pthread_mutex_unlock(&r->pend_mu);
    force_open(r, "an invalidation could not be delivered");
}

/* The start of every call: the breaker, the call's deadline
 * (command_timeout_ms; the probe gets one more for the replay) and, for
 * the probe, the replay of queued invalidations. When the replay ran out
 * of time without an error the breaker is left open with its cool-down
 * over, so the next call probes and goes on with the queue. */
static dbk_rc call_begin(struct rds *r, bool *probe, int64_t *deadline_ns, dbk_error *err)
{
    dbk_rc rc = breaker_enter(r, probe, err);
    if (rc != DBK_OK)
        return rc;
    *deadline_ns = deadline_in(r->cfg.command_timeout_ms);
    if (!*probe)
        return DBK_OK;
    *deadline_ns += (int64_t)r->cfg.command_timeout_ms * 1000000LL;
    int done = replay_pending(r, deadline_ns);
    if (done == 1)
        return DBK_OK;
    if (done == 0) {
        breaker_result(r, true, true, NULL);
        return dbk__err(err, DBK_EUNAVAILABLE,
                        "redis cache %s: still replaying queued invalidations", r->safe_addr);
    }
    atomic_fetch_add(&r->errors, 1);
    breaker_result(r, true, false, "replaying invalidations failed");
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: replaying invalidations failed",
                    r->safe_addr);
}

/* The end of a call that did not get an answer: counts it, tells the
 * breaker (a pool with no free connection is not Redis failing: only the
 * probe counts it). */
static void call_failed(struct rds *r, bool probe, bool busy, dbk_rc rc)
{
    if (busy) {
        if (probe)
            breaker_result(r, true, false, "no free connection");
        return;
    }
    atomic_fetch_add(&r->errors, 1);
    breaker_result(r, probe, false, rc == DBK_ETIMEOUT ? "command timed out" : "i/o error");
}

/*
 * Runs one command with the breaker, the pool and the replay around it.
 * hslot: the cluster slot of its keys (0 otherwise). *reply is the reply
 * (caller frees) on DBK_OK; an error reply is DBK_EINTERNAL with the
 * server's text.
 */
static dbk_rc run_ex(struct rds *r, unsigned hslot, int argc, const char **argv,
                     const size_t *lens, redisReply **reply, char *epoch_out, dbk_error *err)
{
    *reply = NULL;
    bool probe, busy;
    int64_t dl;
    dbk_rc rc = call_begin(r, &probe, &dl, err);
    if (rc != DBK_OK)
        return rc;
    redisReply *rep;
    rc = exec_cmd(r, hslot, argc, argv, lens, &dl, &rep, &busy, epoch_out, err);
    if (rc != DBK_OK) {
        call_failed(r, probe, busy, rc);
        return rc;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        rc = dbk__err(err, DBK_EINTERNAL, "redis cache %s: %.*s", r->safe_addr,
                      (int)(rep->len > 200 ? 200 : rep->len), rep->str ? rep->str : "");
        freeReplyObject(rep);
        atomic_fetch_add(&r->errors, 1);
        breaker_result(r, probe, false, "error reply");
        return rc;
    }
    breaker_result(r, probe, true, NULL);
    *reply = rep;
    return DBK_OK;
}

/* run_ex() without the node's epoch. */
static dbk_rc run(struct rds *r, unsigned hslot, int argc, const char **argv, const size_t *lens,
                  redisReply **reply, dbk_error *err)
{
    return run_ex(r, hslot, argc, argv, lens, reply, NULL, err);
}

/* ---- operations --------------------------------------------------------- */

static dbk_rc r_get(void *impl, const void *key, size_t klen, void **val, size_t *vallen,
                    dbk_error *err)
{
    struct rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    char vk[KEYBUF], ek[80];
    size_t vl = mkkey(r, 'v', key, klen, vk);
    redisReply *rep;
    dbk_rc rc;
    if (r->ha) {
        /* the value and its slot's epoch in one round trip, no script: a
         * hit only when the value was stored under the epoch of the node
         * that answers (a write script moves a stale epoch key on) */
        int el = (int)mkepoch(r, hs, ek);
        const char *av[3] = {"MGET", vk, ek};
        size_t al[3] = {4, vl, (size_t)el};
        char node[17];
        rc = run_ex(r, hs, 3, av, al, &rep, node, err);
        if (rc != DBK_OK)
            return rc;
        redisReply *v = NULL;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
            redisReply *e = rep->element[1];
            v = rep->element[0];
            bool fresh = e->type == REDIS_REPLY_STRING && e->len == 16 &&
                         memcmp(e->str, node, 16) == 0 && v->type == REDIS_REPLY_STRING &&
                         v->len >= 16 && memcmp(v->str, node, 16) == 0;
            if (!fresh)
                v = NULL;
        }
        if (!v) {
            freeReplyObject(rep);
            return DBK_ENOT_FOUND;
        }
        void *copy = malloc(v->len - 16 ? v->len - 16 : 1);
        if (!copy) {
            freeReplyObject(rep);
            return dbk__err(err, DBK_ENOMEM, "out of memory copying a cached value");
        }
        memcpy(copy, v->str + 16, v->len - 16);
        *val = copy;
        *vallen = v->len - 16;
        freeReplyObject(rep);
        return DBK_OK;
    } else {
        const char *av[2] = {"GET", vk};
        size_t al[2] = {3, vl};
        rc = run(r, hs, 2, av, al, &rep, err);
    }
    if (rc != DBK_OK)
        return rc;
    if (rep->type == REDIS_REPLY_NIL) {
        freeReplyObject(rep);
        return DBK_ENOT_FOUND;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        return dbk__err(err, DBK_EINTERNAL, "redis cache: unexpected reply to GET");
    }
    void *copy = malloc(rep->len ? rep->len : 1);
    if (!copy) {
        freeReplyObject(rep);
        return dbk__err(err, DBK_ENOMEM, "out of memory copying a cached value");
    }
    memcpy(copy, rep->str, rep->len);
    *val = copy;
    *vallen = rep->len;
    freeReplyObject(rep);
    return DBK_OK;
}

static dbk_rc r_set(void *impl, const void *key, size_t klen, const void *val, size_t vlen,
                    int64_t ttl_ms, dbk_error *err)
{
    struct rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    char vk[KEYBUF], ttl[24];
    size_t vl = mkkey(r, 'v', key, klen, vk);
    int tl = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    redisReply *rep;
    dbk_rc rc;
    if (r->ha) {
        char ek[80];
        int el = (int)mkepoch(r, hs, ek);
        const char *av[8] = {"EVAL", ha_set_lua, "2", vk, ek, NODE_EPOCH, val ? val : "", ttl};
        size_t al[8] = {4, sizeof ha_set_lua - 1, 1, vl, (size_t)el, 16, vlen, (size_t)tl};
        rc = run(r, hs, 8, av, al, &rep, err);
    } else {
        const char *av[5] = {"SET", vk, val ? val : "", "PX", ttl};
        size_t al[5] = {3, vl, vlen, 2, (size_t)tl};
        rc = run(r, hs, 5, av, al, &rep, err);
    }
    if (rc == DBK_OK)
        freeReplyObject(rep);
    return rc;
}

static dbk_rc r_del(void *impl, const void *key, size_t klen, dbk_error *err)
{
    struct rds *r = impl;
    bool probe, busy;
    int64_t dl;
    dbk_rc rc = call_begin(r, &probe, &dl, err);
    if (rc != DBK_OK) {
        add_pending(r, key, klen);
        return rc;
    }
    char vk[KEYBUF], gk[KEYBUF], tok[24], ttl[24];
    const char *av[7];
    size_t al[7];
    mkinval(r, key, klen, vk, gk, tok, ttl, av, al);
    redisReply *rep;
    rc = exec_cmd(r, entry_slot(r, key, klen), 7, av, al, &dl, &rep, &busy, NULL, err);
    if (rc != DBK_OK) {
        call_failed(r, probe, busy, rc);
        add_pending(r, key, klen);
        return rc;
    }
    bool bad = rep->type == REDIS_REPLY_ERROR;
    if (bad)
        rc = dbk__err(err, DBK_EINTERNAL, "redis cache %s: invalidation script failed: %.*s",
                      r->safe_addr, (int)(rep->len > 200 ? 200 : rep->len), rep->str ? rep->str : "");
    freeReplyObject(rep);
    if (bad) {
        atomic_fetch_add(&r->errors, 1);
        breaker_result(r, probe, false, "error reply");
        add_pending(r, key, klen);
        return rc;
    }
    breaker_result(r, probe, true, NULL);
    return DBK_OK;
}

static bool parse_hex64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 16)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int h = dbk__hexval((unsigned char)s[i]);
        if (h < 0)
            return false;
        v = (v << 4) | (uint64_t)h;
    }
    *out = v;
    return true;
}

static dbk_rc r_lease(void *impl, const void *key, size_t klen, dbk_cache_lease *out,
                      dbk_error *err)
{
    struct rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    memset(out, 0, sizeof *out);
    out->taken_ns = dbk__now_ns();
    char gk[KEYBUF], ek[80];
    size_t gl = mkkey(r, 'g', key, klen, gk);
    int el = (int)mkepoch(r, hs, ek);
    const char *av[3] = {"MGET", gk, ek};
    size_t al[3] = {4, gl, (size_t)el};
    redisReply *rep;
    dbk_rc rc = run(r, hs, 3, av, al, &rep, err);
    if (rc != DBK_OK)
        return rc;
    bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == 2;
    if (ok) {
        redisReply *g = rep->element[0], *e = rep->element[1];
        if (g->type == REDIS_REPLY_NIL)
            out->gen = 0;
        else
            ok = g->type == REDIS_REPLY_STRING && parse_hex64(g->str, g->len, &out->gen);
        ok = ok && e->type == REDIS_REPLY_STRING && parse_hex64(e->str, e->len, &out->epoch);
        if (ok && e->type != REDIS_REPLY_STRING)
            ok = false;
    }
    bool epoch_missing = rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                         rep->element[1]->type == REDIS_REPLY_NIL;
    freeReplyObject(rep);
    if (epoch_missing) {
        /* data lost since our connects: create a new epoch for later leases */
        char val[24];
        int vl = snprintf(val, sizeof val, "%016llx", (unsigned long long)dbk__cache_rand64());
        const char *sv[4] = {"SET", ek, val, "NX"};
        size_t sl[4] = {3, (size_t)el, (size_t)vl, 2};
        if (run(r, hs, 4, sv, sl, &rep, NULL) == DBK_OK)
            freeReplyObject(rep);
    }
    out->valid = ok;
    return DBK_OK;
}

static dbk_rc r_set_leased(void *impl, const void *key, size_t klen, const dbk_cache_lease *l,
                           const void *val, size_t vlen, int64_t ttl_ms, bool *stored,
                           dbk_error *err)
{
    struct rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    *stored = false;
    if (!l->valid || dbk__now_ns() - l->taken_ns > (int64_t)r->cfg.lease_ms * 1000000LL) {
        atomic_fetch_add(&r->stale_rejects, 1);
        return DBK_OK;
    }
    char vk[KEYBUF], gk[KEYBUF], ek[80], gs[24], es[24], ttl[24];
    size_t vl = mkkey(r, 'v', key, klen, vk), gl = mkkey(r, 'g', key, klen, gk);
    int el = (int)mkepoch(r, hs, ek);
    int gsl = l->gen ? snprintf(gs, sizeof gs, "%016llx", (unsigned long long)l->gen) : 0;
    if (!l->gen)
        gs[0] = 0;
    int esl = snprintf(es, sizeof es, "%016llx", (unsigned long long)l->epoch);
    int tl = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *av[11] = {"EVAL", set_leased_lua, "3", vk, gk, ek, gs, es, val ? val : "", ttl,
                          NODE_EPOCH};
    size_t al[11] = {4, sizeof set_leased_lua - 1, 1, vl, gl, (size_t)el, (size_t)gsl,
                     (size_t)esl, vlen, (size_t)tl, 16};
    if (r->ha) {
        av[1] = ha_set_leased_lua;
        al[1] = sizeof ha_set_leased_lua - 1;
    }
    redisReply *rep;
    dbk_rc rc = run(r, hs, r->ha ? 11 : 10, av, al, &rep, err);
    if (rc != DBK_OK)
        return rc;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 1)
        *stored = true;
    else
        atomic_fetch_add(&r->stale_rejects, 1);
    freeReplyObject(rep);
    return DBK_OK;
}

static dbk_rc r_ns(struct rds *r, const char *verb, const char *ns, uint64_t *version,
                   dbk_error *err)
{
    char nk[300];
    unsigned hs = entry_slot(r, ns, strlen(ns));
    int nl = r->cluster ? snprintf(nk, sizeof nk, "%s{%s}n:%s", r->cfg.key_prefix,
                                   dbk__redis_slot_tag(hs), ns)
                        : snprintf(nk, sizeof nk, "%sn:%s", r->cfg.key_prefix, ns);
    redisReply *rep;
    dbk_rc rc;
    if (r->ha) {
        /* a node that is new for this data (failover, restart) moves the
         * counter far ahead: a version reused after a lost INCR never names
         * entries stored before */
        char ek[80], jump[24];
        int el = (int)mkepoch(r, hs, ek);
        int jl = snprintf(jump, sizeof jump, "%llu",
                          (unsigned long long)(dbk__cache_rand64() >> 32) + 1000000ULL);
        const char *av[8] = {"EVAL", ha_ns_lua, "2", nk, ek, NODE_EPOCH, verb, jump};
        size_t al[8] = {4, sizeof ha_ns_lua - 1, 1, (size_t)nl, (size_t)el, 16, strlen(verb),
                        (size_t)jl};
        rc = run(r, hs, 8, av, al, &rep, err);
    } else {
        const char *av[2] = {verb, nk};
        size_t al[2] = {strlen(verb), (size_t)nl};
        rc = run(r, hs, 2, av, al, &rep, err);
    }
    if (rc != DBK_OK)
        return rc;
    *version = 0;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0) {
        *version = (uint64_t)rep->integer;
    } else if (rep->type == REDIS_REPLY_STRING) {
        char tmp[32];
        size_t n = rep->len < sizeof tmp - 1 ? rep->len : sizeof tmp - 1;
        memcpy(tmp, rep->str, n);
        tmp[n] = 0;
        char *end;
        unsigned long long v = strtoull(tmp, &end, 10);
        if (*end)
            rc = dbk__err(err, DBK_EINTERNAL, "redis cache: namespace counter is not a number");
        *version = v;
    } else if (rep->type != REDIS_REPLY_NIL) {
        rc = dbk__err(err, DBK_EINTERNAL, "redis cache: unexpected reply to %s", verb);
    }
    freeReplyObject(rep);
    return rc;
}

static dbk_rc r_ns_get(void *impl, const char *ns, uint64_t *version, dbk_error *err)
{
    return r_ns(impl, "GET", ns, version, err);
}

static dbk_rc r_ns_bump(void *impl, const char *ns, uint64_t *version, dbk_error *err)
{
    return r_ns(impl, "INCR", ns, version, err);
}

static void r_stats(void *impl, dbk_cache_stats *out)
{
    struct rds *r = impl;
    out->errors += atomic_load(&r->errors);
    out->skipped += atomic_load(&r->skipped);
    out->stale_rejects += atomic_load(&r->stale_rejects);
    pthread_mutex_lock(&r->br_mu);
    out->breaker = r->state;
    out->breaker_opens = r->breaker_opens;
    pthread_mutex_unlock(&r->br_mu);
    pthread_mutex_lock(&r->pend_mu);
    out->pending_invalidations = r->npend;
    pthread_mutex_unlock(&r->pend_mu);
}

/* Delivers what is still queued before the cache goes away: over fresh
 * connections (r_close dropped the pool's, which may be broken or stuck),
 * retrying while there is time, every step bounded by what is left of
 * close_timeout_ms. Logs what it could not deliver. Runs single-threaded
 * (dbk_cache_close: no other user of the handle). */
static void flush_at_close(struct rds *r)
{
    size_t n = r->npend;
    uint64_t dropped = r->pend_dropped;
    if (n == 0 && dropped == 0)
        return;
    size_t done = 0;
    int tries = 0;
    if (n > 0 && r->cfg.close_timeout_ms > 0) {
        int64_t deadline = dbk__now_ns() + (int64_t)r->cfg.close_timeout_ms * 1000000LL;
        while (done < n && step_ms(1, deadline) > 0) {
            tries++;
            while (done < n && step_ms(1, deadline) > 0) {
                int64_t dl = deadline_in(r->cfg.command_timeout_ms);
                if (dl > deadline)
                    dl = deadline;
                char vk[KEYBUF], gk[KEYBUF], tok[24], ttl[24];
                const char *av[7];
                size_t al[7];
                mkinval(r, r->pend[done].key, r->pend[done].len, vk, gk, tok, ttl, av, al);
                redisReply *rep;
                bool busy;
                if (exec_cmd(r, entry_slot(r, r->pend[done].key, r->pend[done].len), 7, av, al,
                             &dl, &rep, &busy, NULL, NULL) != DBK_OK)
                    break;
                bool ok = rep->type != REDIS_REPLY_ERROR;
                freeReplyObject(rep);
                if (!ok)
                    break;
                done++;
            }
            if (done < n) {
                /* Redis is still away: wait a little (bounded) and retry */
                int ms = step_ms(50, deadline);
                if (ms > 0) {
                    struct timespec ts = {0, (long)ms * 1000000L};
                    nanosleep(&ts, NULL);
                }
            }
        }
    }
    if (done == n && dropped == 0) {
        dbk__log(DBK_LOG_INFO, "redis cache %s: delivered %zu queued invalidation%s at close",
                 r->safe_addr, n, n == 1 ? "" : "s");
        return;
    }
    if (done < n)
        dbk__log(DBK_LOG_WARN,
                 "redis cache %s: closing with %zu queued invalidation%s not delivered "
                 "(%zu delivered, %d connection attempt%s in %d ms); other processes may serve "
                 "the old values of those keys until their ttl runs out",
                 r->safe_addr, n - done, n - done == 1 ? "" : "s", done, tries,
                 tries == 1 ? "" : "s", r->cfg.close_timeout_ms);
    if (dropped)
        dbk__log(DBK_LOG_WARN,
                 "redis cache %s: %llu invalidation%s dropped since open because more than %d "
                 "were queued; those keys may be stale until their ttl runs out",
                 r->safe_addr, (unsigned long long)dropped, dropped == 1 ? "" : "s", MAX_PENDING);
}

static void r_close(void *impl)
{
    struct rds *r = impl;
    if (!r)
        return;
    if (r->sub_started) {
        atomic_store(&r->sub_stop, true);
        pthread_join(r->sub_thread, NULL);
    }
    for (int k = 0; k < r->nnodes; k++)
        for (int i = 0; i < r->nslots; i++)
            if (r->nodes[k].slots[i].ctx) {
                redisFree(r->nodes[k].slots[i].ctx);
                r->nodes[k].slots[i].ctx = NULL;
            }
    flush_at_close(r);
    for (int k = 0; k < r->nnodes; k++) {
        for (int i = 0; i < r->nslots; i++)
            if (r->nodes[k].slots[i].ctx)
                redisFree(r->nodes[k].slots[i].ctx);
        free(r->nodes[k].slots);
    }
    for (size_t i = 0; i < r->npend; i++)
        free(r->pend[i].key);
    free(r->pend);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->br_mu);
    pthread_mutex_destroy(&r->pend_mu);
    pthread_mutex_destroy(&r->disc_mu);
    pthread_mutex_destroy(&r->map_mu);
    /* wipe the password */
    volatile char *pw = r->url.password;
    for (size_t i = 0; i < sizeof r->url.password; i++)
        pw[i] = 0;
    free(r);
}

dbk_rc dbk__cache_redis_new(const struct dbk__cache_cfg *cfg, const struct dbk__redis_url *url,
                            void **impl, dbk_error *err)
{
    struct rds *r = calloc(1, sizeof *r);
    if (!r)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a redis cache");
    r->cfg = *cfg;
    r->url = *url;
    if (url->mode == DBK__REDIS_SENTINEL)
        snprintf(r->safe_addr, sizeof r->safe_addr, "sentinel master %.128s/%d", url->master,
                 url->db);
    else if (url->mode == DBK__REDIS_CLUSTER)
        snprintf(r->safe_addr, sizeof r->safe_addr, "cluster %.200s:%d", url->host, url->port);
    else
        snprintf(r->safe_addr, sizeof r->safe_addr, "%s%s%s:%d/%d",
                 strchr(url->host, ':') ? "[" : "", url->host, strchr(url->host, ':') ? "]" : "",
                 url->port, url->db);
    r->cluster = url->mode == DBK__REDIS_CLUSTER;
    r->ha = url->mode != DBK__REDIS_SINGLE;
    if (r->cluster && strpbrk(cfg->key_prefix, "{}")) {
        memset(r, 0, sizeof *r);
        free(r);
        dbk__err(err, DBK_ECONFIG, "a redis cluster cache's key prefix must not contain { or }");
        dbk__err_hint(err, "the cache puts its own {hash tag} after the prefix");
        return DBK_ECONFIG;
    }
    r->nslots = cfg->pool_size;
    memset(r->owner, 0xff, sizeof r->owner);
    r->map_stale = true;
    r->map_at_ns = dbk__now_ns() - 1000000000LL;
    if (!r->cluster) {
        r->nodes[0].slots = calloc((size_t)r->nslots, sizeof *r->nodes[0].slots);
        if (!r->nodes[0].slots) {
            free(r);
            return dbk__err(err, DBK_ENOMEM, "out of memory opening a redis cache");
        }
        r->nnodes = 1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->br_mu, NULL);
    pthread_mutex_init(&r->pend_mu, NULL);
    pthread_mutex_init(&r->disc_mu, NULL);
    pthread_mutex_init(&r->map_mu, NULL);
    if (r->ha && !r->cluster)
        r->sub_started = pthread_create(&r->sub_thread, NULL, sub_main, r) == 0;
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0)
        __atomic_store_n(&g_sigpipe_ignored, sa.sa_handler == SIG_IGN, __ATOMIC_RELAXED);
    *impl = r;
    return DBK_OK;
}

const struct dbk__cache_ops dbk__cache_redis_ops = {
    "redis", r_get, r_set, r_del, r_lease, r_set_leased, r_ns_get, r_ns_bump, r_stats, r_close,
};
