/*
 * The Redis backend: hiredis, small connection pools, hard timeouts, a
 * circuit breaker, the server half of the stale-set guard, and the client
 * side of Sentinel and Cluster (hiredis 0.14 has neither).
 *
 * Shape. Per server a fixed array of pool_size hiredis contexts (one
 * server, the Sentinel master, or every Cluster master). Each call has one
 * deadline on the monotonic clock, set when it starts (command_timeout_ms,
 * plus connect_timeout_ms when it connects). With auto-pipelining off a
 * caller takes a free context (waiting at most until its deadline), runs
 * one command and gives it back (redis_conn.c); with it on (the default)
 * concurrent callers share the contexts: a command queues on a busy
 * context and goes out with the others queued there in its next write, so
 * N concurrent callers cost about one round trip
 * (redis_pipe.c, which also says what a timeout does to the other commands
 * of a pipeline). The connect waits at most what is left of the deadline,
 * and before every write and read the socket's timeouts (or the poll) are
 * brought down to what is left, so a peer that answers a few bytes at a
 * time cannot stretch a call (fixed socket timeouts would bound each read,
 * not the call). A context that saw an I/O error or a timeout that left a
 * reply nobody will read is freed; the next user of its slot reconnects.
 * Commands are sent with explicit lengths: keys and values are
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
 * reign of the node that serves the data: its run id (new at each start)
 * xor its replication id (new at each promotion), read when a connection
 * opens and again before it is used after DBK__RDS_RECHECK_MS idle or a
 * new slot map (dbk__rds_verify_master, dbk__rds_slot_recheck). Values
 * are stored behind the epoch they were written under, and a read (a plain
 * GET) is a hit only when that equals the answering node's epoch: after a
 * failover, restart, demotion and re-promotion, or migration every older
 * value is a miss, never a stale hit. Every write script also moves the
 * (per slot, in cluster mode) epoch key to the node's epoch, and a lease
 * stores only while that key is the one it read, so a value loaded before
 * a change of reign is not stored after it. Sentinel: the master comes from the
 * sentinels (asked in turn), is checked with ROLE on every connection and
 * forgotten on READONLY, MASTERDOWN or a lost connection; a thread
 * subscribed to +switch-master moves it at once, and pooled connections to
 * an old master are replaced one by one as they are next used. Cluster: a
 * slot map from CLUSTER SLOTS, refreshed after MOVED or a lost node; ASK is
 * followed once with ASKING, TRYAGAIN retried, at most MAX_REDIRECTS per
 * call; the keys of one entry share a "{tag}" whose slot is the key's own
 * (dbk__redis_slot_tag), so each script stays on one slot.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "redis_int.h"

static const char invalidate_lua[] = "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) "
                                     "redis.call('DEL', KEYS[1]) return 1";

static const char set_leased_lua[] =
    "if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end "
    "local g = redis.call('GET', KEYS[2]) if not g then g = '' end "
    "if g ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) return 1";

/* set_leased_lua for many entries of one node at once (a single server):
 * KEYS[1] the epoch key, then each entry's value and generation keys;
 * ARGV four per entry: generation, epoch, value, ttl. One 1/0/-1 each, as
 * set_leased_lua answers. */
static const char set_leased_many_lua[] =
    "local e = redis.call('GET', KEYS[1]) local out = {} "
    "for i = 1, (#KEYS - 1) / 2 do local a = 4 * (i - 1) "
    "if e ~= ARGV[a + 2] then out[i] = -1 else "
    "local g = redis.call('GET', KEYS[2 * i + 1]) if not g then g = '' end "
    "if g ~= ARGV[a + 1] then out[i] = 0 else "
    "redis.call('SET', KEYS[2 * i], ARGV[a + 3], 'PX', ARGV[a + 4]) out[i] = 1 end end end "
    "return out";

/* Sentinel and cluster modes (see the paragraph atop this file): every
 * write first moves the slot's epoch key to the epoch of the node that runs
 * it (ARGV: DBK__RDS_NODE_EPOCH), and stores values behind the 16 bytes of the epoch
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

const char DBK__RDS_NODE_EPOCH[] = "<node epoch>";

/* The slot an entry's keys live in (cluster), else 0. */
static unsigned entry_slot(const struct dbk__rds *r, const void *key, size_t klen)
{
    return r->cluster ? dbk__redis_key_slot(key, klen) : 0;
}

/* prefix [+ "{tag}"] + tag + ':' + key. In cluster mode "{tag}" names the
 * entry's slot `hs` (entry_slot), so the value, generation and epoch keys
 * share it. Built with copies only: it runs on every call. */
/* prefix [+ "{tag}" of slot hs in cluster mode] into buf; its length. */
static size_t put_prefix(const struct dbk__rds *r, unsigned hs, char *buf)
{
    size_t pl = r->prefix_len;
    memcpy(buf, r->cfg.key_prefix, pl);
    if (r->cluster) {
        const char *t = dbk__redis_slot_tag(hs);
        size_t tl = strlen(t);
        buf[pl++] = '{';
        memcpy(buf + pl, t, tl);
        pl += tl;
        buf[pl++] = '}';
    }
    return pl;
}

static size_t mkkey_hs(const struct dbk__rds *r, char tag, unsigned hs, const void *key,
                       size_t klen, char *buf)
{
    size_t pl = put_prefix(r, hs, buf);
    buf[pl] = tag;
    buf[pl + 1] = ':';
    memcpy(buf + pl + 2, key, klen);
    return pl + 2 + klen;
}

static size_t mkkey(const struct dbk__rds *r, char tag, const void *key, size_t klen, char *buf)
{
    return mkkey_hs(r, tag, entry_slot(r, key, klen), key, klen, buf);
}

/* The epoch key of slot `hslot` (one key unless cluster). buf: 80 bytes
 * (the prefix is at most 63, a slot's tag a few). */
static size_t mkepoch(const struct dbk__rds *r, unsigned hslot, char *buf)
{
    size_t pl = put_prefix(r, hslot, buf);
    memcpy(buf + pl, "epoch", 6);
    return pl + 5;
}

/* The invalidation script's argv for `key` (bufs: vk, gk KEYBUF; tok,
 * ttl 24 bytes). */
static void mkinval(struct dbk__rds *r, const void *key, size_t klen, char *vk, char *gk, char *tok,
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

/* Replays queued deletes before *deadline_ns. 1: all delivered; 0: time
 * ran short (stops before sending a delete when less than half a command
 * timeout is left); -1: an I/O error or timeout. What was not replayed
 * stays queued. */
static int replay_pending(struct dbk__rds *r, int64_t *deadline_ns)
{
    pthread_mutex_lock(&r->pend_mu);
    struct dbk__rds_pending *list = r->pend;
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
        if (dbk__rds_step_ms(r->cfg.command_timeout_ms, *deadline_ns) * 2 <
            r->cfg.command_timeout_ms) {
            ok = 0;
            break;
        }
        char vk[KEYBUF], gk[KEYBUF], tok[24], ttl[24];
        const char *av[7];
        size_t al[7];
        mkinval(r, list[done].key, list[done].len, vk, gk, tok, ttl, av, al);
        redisReply *rep;
        bool busy;
        if (dbk__rds_exec_cmd(r, entry_slot(r, list[done].key, list[done].len), 7, av, al,
                              deadline_ns, &rep, &busy, NULL, NULL) != DBK_OK) {
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
                struct dbk__rds_pending *np = realloc(r->pend, (r->npend + 1) * sizeof *np);
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

static void add_pending(struct dbk__rds *r, const void *key, size_t klen)
{
    unsigned char *copy = malloc(klen);
    pthread_mutex_lock(&r->pend_mu);
    struct dbk__rds_pending *np = NULL;
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
    dbk__rds_force_open(r, "an invalidation could not be delivered");
}

/* The start of every call: the breaker, the call's deadline
 * (command_timeout_ms; the probe gets one more for the replay) and, for
 * the probe, the replay of queued invalidations. When the replay ran out
 * of time without an error the breaker is left open with its cool-down
 * over, so the next call probes and goes on with the queue. */
static dbk_rc call_begin(struct dbk__rds *r, bool *probe, int64_t *deadline_ns, dbk_error *err)
{
    dbk_rc rc = dbk__rds_breaker_enter(r, probe, err);
    if (rc != DBK_OK)
        return rc;
    *deadline_ns = dbk__rds_deadline_in(r->cfg.command_timeout_ms);
    if (!*probe)
        return DBK_OK;
    *deadline_ns += (int64_t)r->cfg.command_timeout_ms * 1000000LL;
    int done = replay_pending(r, deadline_ns);
    if (done == 1)
        return DBK_OK;
    if (done == 0) {
        dbk__rds_breaker_result(r, true, true, NULL);
        return dbk__err(err, DBK_EUNAVAILABLE,
                        "redis cache %s: still replaying queued invalidations", r->safe_addr);
    }
    atomic_fetch_add(&r->errors, 1);
    dbk__rds_breaker_result(r, true, false, "replaying invalidations failed");
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: replaying invalidations failed",
                    r->safe_addr);
}

/* The end of a call that did not get an answer: counts it, tells the
 * breaker (a pool with no free connection is not Redis failing: only the
 * probe counts it). */
static void call_failed(struct dbk__rds *r, bool probe, bool busy, dbk_rc rc)
{
    if (busy) {
        if (probe)
            dbk__rds_breaker_result(r, true, false, "no free connection");
        return;
    }
    atomic_fetch_add(&r->errors, 1);
    dbk__rds_breaker_result(r, probe, false,
                            rc == DBK_ETIMEOUT ? "command timed out" : "i/o error");
}

/*
 * Runs one command with the breaker, the pool and the replay around it.
 * hslot: the cluster slot of its keys (0 otherwise). *reply is the reply
 * (caller frees) on DBK_OK; an error reply is DBK_EINTERNAL with the
 * server's text.
 */
static dbk_rc run_ex(struct dbk__rds *r, unsigned hslot, int argc, const char **argv,
                     const size_t *lens, redisReply **reply, char *epoch_out, dbk_error *err)
{
    *reply = NULL;
    bool probe, busy;
    int64_t dl;
    dbk_rc rc = call_begin(r, &probe, &dl, err);
    if (rc != DBK_OK)
        return rc;
    redisReply *rep;
    rc = dbk__rds_exec_cmd(r, hslot, argc, argv, lens, &dl, &rep, &busy, epoch_out, err);
    if (rc != DBK_OK) {
        call_failed(r, probe, busy, rc);
        return rc;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        rc = dbk__err(err, DBK_EINTERNAL, "redis cache %s: %.*s", r->safe_addr,
                      (int)(rep->len > 200 ? 200 : rep->len), rep->str ? rep->str : "");
        freeReplyObject(rep);
        atomic_fetch_add(&r->errors, 1);
        dbk__rds_breaker_result(r, probe, false, "error reply");
        return rc;
    }
    dbk__rds_breaker_result(r, probe, true, NULL);
    *reply = rep;
    return DBK_OK;
}

/* run_ex() without the node's epoch. */
static dbk_rc run(struct dbk__rds *r, unsigned hslot, int argc, const char **argv,
                  const size_t *lens, redisReply **reply, dbk_error *err)
{
    return run_ex(r, hslot, argc, argv, lens, reply, NULL, err);
}

/* ---- operations --------------------------------------------------------- */

/* The value of one GET (or MGET element) reply `e`: DBK_OK with a copy,
 * DBK_ENOT_FOUND, or DBK_EINTERNAL for a reply of another type. `node`:
 * the answering node's epoch in HA mode (a value stored under another
 * reign is a miss), else NULL. */
static dbk_rc take_value(const redisReply *e, const char *node, void **val, size_t *vallen,
                         dbk_error *err)
{
    if (e->type != REDIS_REPLY_STRING) {
        if (e->type == REDIS_REPLY_NIL || node)
            return DBK_ENOT_FOUND;
        return dbk__err(err, DBK_EINTERNAL, "redis cache: unexpected reply to GET");
    }
    size_t off = 0;
    if (node) {
        if (e->len < 16 || memcmp(e->str, node, 16) != 0)
            return DBK_ENOT_FOUND;
        off = 16;
    }
    size_t n = e->len - off;
    void *copy = malloc(n ? n : 1);
    if (!copy)
        return dbk__err(err, DBK_ENOMEM, "out of memory copying a cached value");
    memcpy(copy, e->str + off, n);
    *val = copy;
    *vallen = n;
    return DBK_OK;
}

static dbk_rc r_get(void *impl, const void *key, size_t klen, void **val, size_t *vallen,
                    dbk_error *err)
{
    struct dbk__rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    char vk[KEYBUF];
    size_t vl = mkkey_hs(r, 'v', hs, key, klen, vk);
    const char *av[2] = {"GET", vk};
    size_t al[2] = {3, vl};
    char node[17];
    redisReply *rep;
    dbk_rc rc = run_ex(r, hs, 2, av, al, &rep, r->ha ? node : NULL, err);
    if (rc != DBK_OK)
        return rc;
    rc = take_value(rep, r->ha ? node : NULL, val, vallen, err);
    freeReplyObject(rep);
    return rc;
}

/* n keys in one MGET on a single server or a Sentinel master. A cluster
 * spreads entries over slots (MGET takes one): one GET per key there. */
/* An MGET of the `tag` keys of n entries on one node (no cluster tag), with
 * room for `extra` more arguments after them (the caller fills
 * (*av)[n + 1 ...]). The caller frees *av, *al and *kb; false when out of
 * memory (the three may then be partly allocated: free them all). */
static bool mget_argv(const struct dbk__rds *r, char tag, size_t n, const void *const *keys,
                      const size_t *klens, size_t extra, const char ***av, size_t **al, char **kb)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += r->prefix_len + 2 + klens[i];
    *av = malloc((n + 1 + extra) * sizeof **av);
    *al = malloc((n + 1 + extra) * sizeof **al);
    *kb = malloc(total ? total : 1);
    if (!*av || !*al || !*kb)
        return false;
    (*av)[0] = "MGET";
    (*al)[0] = 4;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        (*av)[i + 1] = *kb + off;
        (*al)[i + 1] = mkkey_hs(r, tag, 0, keys[i], klens[i], *kb + off);
        off += (*al)[i + 1];
    }
    return true;
}

static dbk_rc r_get_many(void *impl, size_t n, const void *const *keys, const size_t *klens,
                         void **vals, size_t *vallens, dbk_rc *rcs, dbk_error *err)
{
    struct dbk__rds *r = impl;
    dbk_rc first = DBK_OK;
    if (r->cluster) {
        for (size_t i = 0; i < n; i++) {
            rcs[i] = r_get(r, keys[i], klens[i], &vals[i], &vallens[i],
                           first == DBK_OK ? err : NULL);
            if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && first == DBK_OK)
                first = rcs[i];
        }
        return first;
    }
    /* every stored key: prefix, "v:", the key (no cluster tag here) */
    const char **av = NULL;
    size_t *al = NULL;
    char *kb = NULL;
    redisReply *rep = NULL;
    char node[17];
    if (!mget_argv(r, 'v', n, keys, klens, 0, &av, &al, &kb))
        first = dbk__err(err, DBK_ENOMEM, "out of memory building an MGET of %zu keys", n);
    else
        first = run_ex(r, 0, (int)(n + 1), av, al, &rep, r->ha ? node : NULL, err);
    free(av);
    free(al);
    free(kb);
    if (first == DBK_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != n))
        first = dbk__err(err, DBK_EINTERNAL, "redis cache: unexpected reply to MGET");
    if (first != DBK_OK) {
        freeReplyObject(rep);
        for (size_t i = 0; i < n; i++)
            rcs[i] = first;
        return first;
    }
    for (size_t i = 0; i < n; i++) {
        rcs[i] = take_value(rep->element[i], r->ha ? node : NULL, &vals[i], &vallens[i],
                            first == DBK_OK ? err : NULL);
        if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && first == DBK_OK)
            first = rcs[i];
    }
    freeReplyObject(rep);
    return first;
}

static dbk_rc r_set(void *impl, const void *key, size_t klen, const void *val, size_t vlen,
                    int64_t ttl_ms, dbk_error *err)
{
    struct dbk__rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    char vk[KEYBUF], ttl[24];
    size_t vl = mkkey_hs(r, 'v', hs, key, klen, vk);
    int tl = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    redisReply *rep;
    dbk_rc rc;
    if (r->ha) {
        char ek[80];
        int el = (int)mkepoch(r, hs, ek);
        const char *av[8] = {"EVAL",         ha_set_lua, "2", vk, ek, DBK__RDS_NODE_EPOCH,
                             val ? val : "", ttl};
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
    struct dbk__rds *r = impl;
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
    rc = dbk__rds_exec_cmd(r, entry_slot(r, key, klen), 7, av, al, &dl, &rep, &busy, NULL, err);
    if (rc != DBK_OK) {
        call_failed(r, probe, busy, rc);
        add_pending(r, key, klen);
        return rc;
    }
    bool bad = rep->type == REDIS_REPLY_ERROR;
    if (bad)
        rc = dbk__err(err, DBK_EINTERNAL, "redis cache %s: invalidation script failed: %.*s",
                      r->safe_addr, (int)(rep->len > 200 ? 200 : rep->len),
                      rep->str ? rep->str : "");
    freeReplyObject(rep);
    if (bad) {
        atomic_fetch_add(&r->errors, 1);
        dbk__rds_breaker_result(r, probe, false, "error reply");
        add_pending(r, key, klen);
        return rc;
    }
    dbk__rds_breaker_result(r, probe, true, NULL);
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
    struct dbk__rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    memset(out, 0, sizeof *out);
    out->taken_ns = dbk__now_ns();
    char gk[KEYBUF], ek[80];
    size_t gl = mkkey_hs(r, 'g', hs, key, klen, gk);
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
    struct dbk__rds *r = impl;
    unsigned hs = entry_slot(r, key, klen);
    *stored = false;
    if (!l->valid || dbk__now_ns() - l->taken_ns > (int64_t)r->cfg.lease_ms * 1000000LL) {
        atomic_fetch_add(&r->stale_rejects, 1);
        return DBK_OK;
    }
    char vk[KEYBUF], gk[KEYBUF], ek[80], gs[24], es[24], ttl[24];
    size_t vl = mkkey_hs(r, 'v', hs, key, klen, vk), gl = mkkey_hs(r, 'g', hs, key, klen, gk);
    int el = (int)mkepoch(r, hs, ek);
    int gsl = l->gen ? snprintf(gs, sizeof gs, "%016llx", (unsigned long long)l->gen) : 0;
    if (!l->gen)
        gs[0] = 0;
    int esl = snprintf(es, sizeof es, "%016llx", (unsigned long long)l->epoch);
    int tl = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *av[11] = {"EVAL", set_leased_lua,     "3", vk, gk, ek, gs, es, val ? val : "",
                          ttl,    DBK__RDS_NODE_EPOCH};
    size_t al[11] = {4,           sizeof set_leased_lua - 1,
                     1,           vl,
                     gl,          (size_t)el,
                     (size_t)gsl, (size_t)esl,
                     vlen,        (size_t)tl,
                     16};
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

/* n leases in one MGET of every generation key and the epoch key (one
 * node: a single server or a Sentinel master); a Cluster spreads the keys
 * over slots, so there it is one lease per key. */
static void r_lease_many(void *impl, size_t n, const void *const *keys, const size_t *klens,
                         dbk_cache_lease *out)
{
    struct dbk__rds *r = impl;
    int64_t now = dbk__now_ns();
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].taken_ns = now;
    }
    if (r->cluster || n == 1) {
        for (size_t i = 0; i < n; i++)
            if (r_lease(impl, keys[i], klens[i], &out[i], NULL) != DBK_OK)
                out[i].valid = false;
        return;
    }
    /* the generation keys, then the epoch key */
    const char **av = NULL;
    size_t *al = NULL;
    char *kb = NULL;
    char ek[80];
    redisReply *rep = NULL;
    bool sent = false;
    if (mget_argv(r, 'g', n, keys, klens, 1, &av, &al, &kb)) {
        av[n + 1] = ek;
        al[n + 1] = mkepoch(r, 0, ek);
        sent = run(r, 0, (int)(n + 2), av, al, &rep, NULL) == DBK_OK;
    }
    free(av);
    free(al);
    free(kb);
    if (!sent)
        return; /* every lease invalid: nothing will be stored */
    bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == n + 1;
    uint64_t epoch = 0;
    bool epoch_missing = ok && rep->element[n]->type == REDIS_REPLY_NIL;
    ok = ok && rep->element[n]->type == REDIS_REPLY_STRING &&
         parse_hex64(rep->element[n]->str, rep->element[n]->len, &epoch);
    for (size_t i = 0; ok && i < n; i++) {
        redisReply *g = rep->element[i];
        out[i].epoch = epoch;
        if (g->type == REDIS_REPLY_NIL)
            out[i].valid = true;
        else
            out[i].valid = g->type == REDIS_REPLY_STRING && parse_hex64(g->str, g->len, &out[i].gen);
    }
    freeReplyObject(rep);
    if (epoch_missing) /* as r_lease: data lost since our connects */
        r_lease(impl, keys[0], klens[0], &out[0], NULL);
}

/* One run of set_leased_many_lua for the m entries which[0..m) (their
 * leases checked still good); stored[] filled, a refusal counted. */
static void store_chunk(struct dbk__rds *r, size_t m, const size_t *which,
                        const void *const *keys, const size_t *klens,
                        const dbk_cache_lease *const *ls, const void *const *vals,
                        const size_t *vallens, const int64_t *ttls, bool *stored)
{
    int argc = (int)(4 + 2 * m + 4 * m);
    size_t total = 0;
    for (size_t k = 0; k < m; k++)
        total += 2 * (r->prefix_len + 2 + klens[which[k]]) + 3 * 24;
    const char **av = malloc((size_t)argc * sizeof *av);
    size_t *al = malloc((size_t)argc * sizeof *al);
    char *kb = malloc(total);
    char ek[80], nkeys[24];
    redisReply *rep = NULL;
    bool sent = false;
    if (av && al && kb) {
        av[0] = "EVAL";
        al[0] = 4;
        av[1] = set_leased_many_lua;
        al[1] = sizeof set_leased_many_lua - 1;
        av[2] = nkeys;
        al[2] = (size_t)snprintf(nkeys, sizeof nkeys, "%zu", 1 + 2 * m);
        av[3] = ek;
        al[3] = mkepoch(r, 0, ek);
        size_t off = 0, a = 4 + 2 * m;
        for (size_t k = 0; k < m; k++) {
            size_t i = which[k];
            av[4 + 2 * k] = kb + off;
            al[4 + 2 * k] = mkkey_hs(r, 'v', 0, keys[i], klens[i], kb + off);
            off += al[4 + 2 * k];
            av[5 + 2 * k] = kb + off;
            al[5 + 2 * k] = mkkey_hs(r, 'g', 0, keys[i], klens[i], kb + off);
            off += al[5 + 2 * k];
            char *gs = kb + off;
            av[a] = gs;
            al[a++] = ls[i]->gen ? (size_t)snprintf(gs, 24, "%016llx",
                                                    (unsigned long long)ls[i]->gen)
                                 : 0;
            off += 24;
            char *es = kb + off;
            av[a] = es;
            al[a++] = (size_t)snprintf(es, 24, "%016llx", (unsigned long long)ls[i]->epoch);
            off += 24;
            av[a] = vals[i] ? vals[i] : "";
            al[a++] = vallens[i];
            char *ttl = kb + off;
            av[a] = ttl;
            al[a++] = (size_t)snprintf(ttl, 24, "%lld", (long long)ttls[i]);
            off += 24;
        }
        sent = run(r, 0, argc, av, al, &rep, NULL) == DBK_OK;
    }
    bool ok = sent && rep->type == REDIS_REPLY_ARRAY && rep->elements == m;
    for (size_t k = 0; k < m; k++) {
        stored[which[k]] = ok && rep->element[k]->type == REDIS_REPLY_INTEGER &&
                           rep->element[k]->integer == 1;
        if (!stored[which[k]])
            atomic_fetch_add(&r->stale_rejects, 1);
    }
    if (sent)
        freeReplyObject(rep);
    free(av);
    free(al);
    free(kb);
}

/* The values one store script carries at most: a bigger batch is split, so
 * no single command is as slow as a huge SET (the reason values over
 * max_value_bytes are not cached at all, src/cache/cache.c). */
#define STORE_CHUNK_BYTES (1024 * 1024)

/* n stores through their leases, one script run per STORE_CHUNK_BYTES of
 * values (a single server); in Sentinel and Cluster modes, where every
 * write carries the node's epoch, one set_leased per entry. */
static void r_set_leased_many(void *impl, size_t n, const void *const *keys, const size_t *klens,
                              const dbk_cache_lease *const *ls, const void *const *vals,
                              const size_t *vallens, const int64_t *ttls, bool *stored)
{
    struct dbk__rds *r = impl;
    int64_t now = dbk__now_ns();
    size_t *which = r->ha || n == 1 ? NULL : malloc(n * sizeof *which);
    size_t m = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        stored[i] = false;
        if (!which) {
            r_set_leased(impl, keys[i], klens[i], ls[i], vals[i], vallens[i], ttls[i], &stored[i],
                         NULL);
            continue;
        }
        if (!ls[i]->valid || now - ls[i]->taken_ns > (int64_t)r->cfg.lease_ms * 1000000LL) {
            atomic_fetch_add(&r->stale_rejects, 1);
            continue;
        }
        if (m > 0 && bytes + vallens[i] > STORE_CHUNK_BYTES) {
            store_chunk(r, m, which, keys, klens, ls, vals, vallens, ttls, stored);
            m = 0;
            bytes = 0;
        }
        which[m++] = i;
        bytes += vallens[i];
    }
    if (m > 0)
        store_chunk(r, m, which, keys, klens, ls, vals, vallens, ttls, stored);
    free(which);
}

static dbk_rc r_ns(struct dbk__rds *r, const char *verb, const char *ns, uint64_t *version,
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
        const char *av[8] = {"EVAL", ha_ns_lua, "2", nk, ek, DBK__RDS_NODE_EPOCH, verb, jump};
        size_t al[8] = {4,  sizeof ha_ns_lua - 1, 1,         (size_t)nl, (size_t)el,
                        16, strlen(verb),         (size_t)jl};
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
    struct dbk__rds *r = impl;
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
static void flush_at_close(struct dbk__rds *r)
{
    size_t n = r->npend;
    uint64_t dropped = r->pend_dropped;
    if (n == 0 && dropped == 0)
        return;
    size_t done = 0;
    int tries = 0;
    if (n > 0 && r->cfg.close_timeout_ms > 0) {
        int64_t deadline = dbk__now_ns() + (int64_t)r->cfg.close_timeout_ms * 1000000LL;
        while (done < n && dbk__rds_step_ms(1, deadline) > 0) {
            tries++;
            while (done < n && dbk__rds_step_ms(1, deadline) > 0) {
                int64_t dl = dbk__rds_deadline_in(r->cfg.command_timeout_ms);
                if (dl > deadline)
                    dl = deadline;
                char vk[KEYBUF], gk[KEYBUF], tok[24], ttl[24];
                const char *av[7];
                size_t al[7];
                mkinval(r, r->pend[done].key, r->pend[done].len, vk, gk, tok, ttl, av, al);
                redisReply *rep;
                bool busy;
                if (dbk__rds_exec_cmd(r, entry_slot(r, r->pend[done].key, r->pend[done].len), 7, av,
                                      al, &dl, &rep, &busy, NULL, NULL) != DBK_OK)
                    break;
                bool ok = rep->type != REDIS_REPLY_ERROR;
                freeReplyObject(rep);
                if (!ok)
                    break;
                done++;
            }
            if (done < n) {
                /* Redis is still away: wait a little (bounded) and retry */
                int ms = dbk__rds_step_ms(50, deadline);
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
    struct dbk__rds *r = impl;
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
    /* wipe the passwords */
    volatile char *pw = r->url.password;
    for (size_t i = 0; i < sizeof r->url.password; i++)
        pw[i] = 0;
    pw = r->url.sentinel_password;
    for (size_t i = 0; i < sizeof r->url.sentinel_password; i++)
        pw[i] = 0;
    free(r);
}

dbk_rc dbk__cache_redis_new(const struct dbk__cache_cfg *cfg, const struct dbk__redis_url *url,
                            void **impl, dbk_error *err)
{
    struct dbk__rds *r = calloc(1, sizeof *r);
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
    r->prefix_len = strnlen(r->cfg.key_prefix, sizeof r->cfg.key_prefix - 1);
    r->ha = url->mode != DBK__REDIS_SINGLE;
    r->pipe = url->auto_pipeline != 0; /* unset (-1): on */
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
        r->sub_started = pthread_create(&r->sub_thread, NULL, dbk__rds_sub_main, r) == 0;
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0)
        __atomic_store_n(&dbk__rds_sigpipe_ignored, sa.sa_handler == SIG_IGN, __ATOMIC_RELAXED);
    *impl = r;
    return DBK_OK;
}

const struct dbk__cache_ops dbk__cache_redis_ops = {
    "redis", r_get, r_set, r_del, r_lease, r_set_leased, r_ns_get, r_ns_bump, r_stats, r_close,
    r_get_many, r_lease_many, r_set_leased_many,
};
