/*
 * The Redis backend's topologies (hiredis 0.14 has neither) and the routing
 * of one command.
 *
 * Sentinel: the master comes from the sentinels of the URL, asked in turn
 * (AUTH first when the URL gives them a password, sentinel_password), is
 * checked with ROLE on every connection, forgotten on READONLY, MASTERDOWN
 * or a lost connection; a thread subscribed to +switch-master on one
 * sentinel at a time moves it at once.
 *
 * Cluster: a slot map from CLUSTER SLOTS, refreshed after MOVED or a lost
 * node (at most every 100 ms, one thread at a time); ASK is followed once
 * with ASKING, TRYAGAIN retried while time is left, at most MAX_REDIRECTS
 * redirections per call (dbk__rds_exec_cmd).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "redis_int.h"

/* Cluster mode: the slot map is to be loaded again before the next use. */
void dbk__rds_map_stale(struct dbk__rds *r)
{
    pthread_mutex_lock(&r->mu);
    r->map_stale = true;
    pthread_mutex_unlock(&r->mu);
}

/* Sentinel mode: an error reply that means "not the master any more". */
bool dbk__rds_demoted(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_ERROR && rep->str &&
           (strncmp(rep->str, "READONLY", 8) == 0 || strncmp(rep->str, "MASTERDOWN", 10) == 0);
}

/* ---- Sentinel ----------------------------------------------------------- */

/* Forgets the master learnt at generation `gen` (a connection to it failed,
 * it answered READONLY, or ROLE said it is not a master): the next connect
 * asks the sentinels again. A newer master is left alone. */
void dbk__rds_master_lost(struct dbk__rds *r, uint64_t gen)
{
    pthread_mutex_lock(&r->mu);
    if (r->master_gen == gen)
        r->master_known = false;
    pthread_mutex_unlock(&r->mu);
}

/* Records `a` as the master; a new address starts a new generation, so the
 * pool's connections to the old one are dropped as they are next used (one
 * at a time: no burst of connects). */
void dbk__rds_master_set(struct dbk__rds *r, const struct dbk__redis_addr *a)
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

/* AUTH on a connection to a sentinel, when the URL gives the sentinels a
 * password (sentinel_password; the userinfo is the master's). *refused is
 * set when a sentinel answered AUTH with an error. */
static dbk_rc sentinel_auth(struct dbk__rds *r, redisContext *c, int64_t deadline_ns, bool *refused)
{
    if (!r->url.sentinel_password[0])
        return DBK_OK;
    dbk_rc rc =
        dbk__rds_auth(r, c, r->url.sentinel_user, r->url.sentinel_password, deadline_ns, NULL);
    if (rc == DBK_EAUTH && refused)
        *refused = true;
    return rc;
}

/* Asks the sentinels in turn (each within the connect timeout and the call's
 * deadline) for the master's address. */
static dbk_rc discover(struct dbk__rds *r, int64_t deadline_ns, dbk_error *err)
{
    int n = r->url.nseeds;
    bool refused = false;
    for (int k = 0; k < n && dbk__rds_step_ms(1, deadline_ns) > 0; k++) {
        int i = (r->sentinel_next + k) % n;
        redisContext *c;
        if (dbk__rds_dial(r, r->url.seeds[i].host, r->url.seeds[i].port, deadline_ns, &c, NULL) !=
            DBK_OK)
            continue;
        if (sentinel_auth(r, c, deadline_ns, &refused) != DBK_OK) {
            redisFree(c);
            continue;
        }
        const char *av[3] = {"SENTINEL", "get-master-addr-by-name", r->url.master};
        size_t al[3] = {8, 23, strlen(r->url.master)};
        redisReply *rep = dbk__rds_cmd(c, 3, av, al, deadline_ns);
        redisFree(c);
        if (!rep)
            continue;
        if (rep->type == REDIS_REPLY_ERROR && rep->str &&
            (strncmp(rep->str, "NOAUTH", 6) == 0 || strncmp(rep->str, "WRONGPASS", 9) == 0))
            refused = true; /* a sentinel with requirepass, asked without it */
        struct dbk__redis_addr a;
        bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                  rep->element[0]->type == REDIS_REPLY_STRING &&
                  rep->element[1]->type == REDIS_REPLY_STRING && rep->element[0]->len > 0 &&
                  rep->element[0]->len < sizeof a.host;
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
        dbk__rds_master_set(r, &a);
        return DBK_OK;
    }
    if (refused) {
        dbk__err(err, DBK_EAUTH, "redis cache %s: %s", r->safe_addr,
                 r->url.sentinel_password[0] ? "the sentinels refused the password"
                                             : "the sentinels require a password");
        dbk__err_hint(err, "set sentinel_password (and sentinel_user) in the redis-sentinel:// "
                           "url to what the sentinels' requirepass expects");
        return DBK_EAUTH;
    }
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: no sentinel named a master",
                    r->safe_addr);
}

/* The master to connect to, asking the sentinels when it is not known. One
 * thread discovers at a time; the others fail at once rather than wait
 * (their call falls back to the database). */
dbk_rc dbk__rds_master_addr(struct dbk__rds *r, struct dbk__redis_addr *out, uint64_t *gen,
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
            return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: the master is being looked up",
                            r->safe_addr);
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

/* The first 16 hex digits after "<field>:" at the start of a line of an
 * INFO reply, as a number. */
static bool info_hex64(const redisReply *rep, const char *field, uint64_t *out)
{
    if (!rep || (rep->type != REDIS_REPLY_STRING && rep->type != REDIS_REPLY_STATUS) || !rep->str)
        return false;
    size_t fl = strlen(field);
    for (const char *p = rep->str; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, field, fl) != 0 || p[fl] != ':')
            continue;
        uint64_t v = 0;
        for (int i = 0; i < 16; i++) {
            int h = dbk__hexval((unsigned char)p[fl + 1 + i]);
            if (h < 0)
                return false;
            v = v << 4 | (uint64_t)h;
        }
        *out = v;
        return true;
    }
    return false;
}

/*
 * ROLE must say master (a sentinel may still name a demoted one). The
 * node's epoch names its reign as a master: the run id (new at every
 * start) xor the replication id (new at every promotion; a replica takes
 * its master's), 16 hex digits. A value is stored behind the epoch of the
 * reign that wrote it, so after a restart, a failover, a demotion and a
 * later promotion of the same node, or a slot's move to another node,
 * every value of an older reign reads as a miss. One round trip: the
 * three commands go out together.
 */
dbk_rc dbk__rds_verify_master(struct dbk__rds *r, redisContext *c, struct dbk__rds_slot *s,
                              int64_t deadline_ns, dbk_error *err)
{
    const char *role[1] = {"ROLE"}, *srv[2] = {"INFO", "server"}, *repl[2] = {"INFO", "replication"};
    size_t rl[1] = {4}, sl[2] = {4, 6}, pl[2] = {4, 11};
    if (redisAppendCommandArgv(c, 1, role, rl) != REDIS_OK ||
        redisAppendCommandArgv(c, 2, srv, sl) != REDIS_OK)
        return dbk__rds_io_error(r, c, err);
    redisReply *rep[3] = {dbk__rds_cmd(c, 2, repl, pl, deadline_ns), NULL, NULL};
    for (int i = 1; i < 3 && rep[i - 1]; i++)
        rep[i] = dbk__rds_finish_call(c, deadline_ns);
    if (!rep[2]) {
        for (int i = 0; i < 3; i++)
            if (rep[i])
                freeReplyObject(rep[i]);
        return dbk__rds_io_error(r, c, err);
    }
    bool master = rep[0]->type == REDIS_REPLY_ARRAY && rep[0]->elements > 0 &&
                  rep[0]->element[0]->type == REDIS_REPLY_STRING &&
                  rep[0]->element[0]->len == 6 && memcmp(rep[0]->element[0]->str, "master", 6) == 0;
    uint64_t run = 0, replid = 0;
    bool ok = info_hex64(rep[1], "run_id", &run) && info_hex64(rep[2], "master_replid", &replid);
    for (int i = 0; i < 3; i++)
        freeReplyObject(rep[i]);
    if (!master)
        return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: %s is not a master",
                        r->safe_addr, r->cluster ? "the node" : "the server the sentinels named");
    if (!ok)
        return dbk__err(err, DBK_EINTERNAL,
                        "redis cache %s: no run_id / master_replid in INFO server, replication",
                        r->safe_addr);
    snprintf(s->epoch, sizeof s->epoch, "%016llx", (unsigned long long)(run ^ replid));
    s->verified_ns = dbk__now_ns();
    s->map_gen = atomic_load(&r->map_gen);
    return DBK_OK;
}

/* "<name> <old-ip> <old-port> <new-ip> <new-port>" from +switch-master. */
static void on_switch(struct dbk__rds *r, const char *msg, size_t len)
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
    dbk__rds_master_set(r, &a);
    atomic_fetch_add(&r->switches, 1);
    dbk__log(DBK_LOG_INFO, "redis cache %s: sentinel switched the master to %s:%d", r->safe_addr,
             a.host, a.port);
    /* the breaker need not sit out its cool-down: probe the new master now */
    pthread_mutex_lock(&r->br_mu);
    if (r->state == DBK_CACHE_BREAKER_OPEN)
        r->opened_at_ns = 0;
    pthread_mutex_unlock(&r->br_mu);
}

/* Sleeps up to ms, in steps, while the cache stays open. */
static void sub_nap(struct dbk__rds *r, int ms)
{
    for (int i = 0; i < ms / 20 && !atomic_load(&r->sub_stop); i++) {
        struct timespec ts = {0, 20000000L};
        nanosleep(&ts, NULL);
    }
}

/* The subscriber: one connection to one sentinel at a time, subscribed to
 * +switch-master; on a loss it moves to the next sentinel. Wakes every
 * 100 ms to see whether the cache is closing. */
void *dbk__rds_sub_main(void *arg)
{
    struct dbk__rds *r = arg;
    int i = 0;
    while (!atomic_load(&r->sub_stop)) {
        struct dbk__redis_addr *sa = &r->url.seeds[i];
        i = (i + 1) % r->url.nseeds;
        redisContext *c;
        if (dbk__rds_dial(r, sa->host, sa->port, dbk__rds_deadline_in(r->cfg.connect_timeout_ms),
                          &c, NULL) != DBK_OK) {
            sub_nap(r, 200);
            continue;
        }
        if (sentinel_auth(r, c, dbk__rds_deadline_in(1000), NULL) != DBK_OK) {
            redisFree(c);
            sub_nap(r, 200);
            continue;
        }
        const char *av[2] = {"SUBSCRIBE", "+switch-master"};
        size_t al[2] = {9, 14};
        redisReply *rep = dbk__rds_cmd(c, 2, av, al, dbk__rds_deadline_in(1000));
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

/* ---- cluster: the slot map ---------------------------------------------- */

/* The index of the node at `a`, added (with an empty pool) when new. -1
 * when MAX_NODES are known or memory is short. mu held. */
int dbk__rds_node_for_locked(struct dbk__rds *r, const struct dbk__redis_addr *a)
{
    for (int i = 0; i < r->nnodes; i++)
        if (r->nodes[i].addr.port == a->port && strcmp(r->nodes[i].addr.host, a->host) == 0)
            return i;
    if (r->nnodes == MAX_NODES)
        return -1;
    struct dbk__rds_slot *sl = calloc((size_t)r->nslots, sizeof *sl);
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
void dbk__rds_refresh_map(struct dbk__rds *r, int64_t deadline_ns)
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
    for (int i = 0; rg && i < nc && dbk__rds_step_ms(1, deadline_ns) > 0; i++) {
        redisContext *c;
        if (dbk__rds_dial(r, cand[i].host, cand[i].port, deadline_ns, &c, NULL) != DBK_OK)
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
            rep = dbk__rds_cmd(c, r->url.user[0] ? 3 : 2, av, al, deadline_ns);
            ok = rep && rep->type != REDIS_REPLY_ERROR;
            if (rep)
                freeReplyObject(rep);
        }
        const char *av[2] = {"CLUSTER", "SLOTS"};
        size_t al[2] = {7, 5};
        rep = ok ? dbk__rds_cmd(c, 2, av, al, deadline_ns) : NULL;
        redisFree(c);
        int n = rep ? dbk__redis_parse_slots(rep, cand[i].host, rg, 4096) : -1;
        if (rep)
            freeReplyObject(rep);
        if (n <= 0)
            continue;
        pthread_mutex_lock(&r->mu);
        memset(r->owner, 0xff, sizeof r->owner);
        for (int k = 0; k < n; k++) {
            int idx = dbk__rds_node_for_locked(r, &rg[k].master);
            if (idx >= 0)
                memset(r->owner + rg[k].lo, idx, rg[k].hi - rg[k].lo + 1);
        }
        r->map_stale = false;
        atomic_fetch_add(&r->map_gen, 1); /* every connection's node epoch is checked again before its next use */
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
 * reply); else *busy says whether the command never got a connection in
 * time (not a failure of Redis). The command goes alone on a connection
 * (dbk__rds_send_alone) or into a pipeline (dbk__rds_pipe_call): a
 * redirected command is sent again by itself, ASKING and the command
 * together.
 */
dbk_rc dbk__rds_exec_cmd(struct dbk__rds *r, unsigned hslot, int argc, const char **argv,
                         const size_t *lens, int64_t *deadline_ns, redisReply **reply, bool *busy,
                         char *epoch_out, dbk_error *err)
{
    *reply = NULL;
    *busy = false;
    int ask_node = -1;
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
                dbk__rds_refresh_map(r, *deadline_ns);
                pthread_mutex_lock(&r->mu);
                o = r->owner[hslot];
                pthread_mutex_unlock(&r->mu);
            }
            if (o == 0xff)
                return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s: no node known for slot %u",
                                r->safe_addr, hslot);
            node = o;
        }
        bool asking = ask_node >= 0;
        struct dbk__rds_sent via;
        redisReply *rep = NULL;
        dbk_rc rc = r->pipe ? dbk__rds_pipe_call(r, node, argc, argv, lens, asking, deadline_ns,
                                                 &rep, &via, busy, err)
                            : dbk__rds_send_alone(r, node, argc, argv, lens, asking, deadline_ns,
                                                  &rep, &via, busy, err);
        if (rc != DBK_OK) {
            if (via.slot && r->cluster)
                dbk__rds_map_stale(r);
            else if (via.slot && r->ha)
                dbk__rds_master_lost(r, via.gen);
            return rc;
        }
        ask_node = -1;
        if (rep->type == REDIS_REPLY_ERROR && rep->str && dbk__rds_step_ms(3, *deadline_ns) >= 3) {
            unsigned sl = 0;
            struct dbk__redis_addr to;
            int kind = r->cluster ? dbk__redis_parse_redirect(rep->str, rep->len, &sl, &to) : 0;
            /* TRYAGAIN: the keys of a slot are half migrated; it passes
             * within milliseconds, so it is retried while time is left
             * rather than counted as a redirection */
            bool again = r->cluster && strncmp(rep->str, "TRYAGAIN", 8) == 0;
            bool lost = !r->cluster && r->ha && dbk__rds_demoted(rep);
            if ((kind || lost) && ++redirects > MAX_REDIRECTS) {
                kind = 0;
                lost = false;
            }
            if (kind || again || lost) {
                if (lost) {
                    dbk__rds_master_lost(r, via.gen);
                    dbk__rds_retire(r, via.slot);
                }
                freeReplyObject(rep);
                if (kind) {
                    pthread_mutex_lock(&r->mu);
                    int idx = dbk__rds_node_for_locked(r, &to);
                    if (idx >= 0 && kind == 1 && sl < DBK__REDIS_SLOTS) {
                        r->owner[sl] = (unsigned char)idx;
                        r->map_stale = true; /* a MOVED: more slots may have moved */
                    }
                    pthread_mutex_unlock(&r->mu);
                    if (idx < 0)
                        return dbk__err(err, DBK_EUNAVAILABLE,
                                        "redis cache %s: more than %d cluster nodes", r->safe_addr,
                                        MAX_NODES);
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
            memcpy(epoch_out, via.epoch, sizeof via.epoch);
        if (!r->cluster && r->ha && dbk__rds_demoted(rep)) {
            dbk__rds_master_lost(r, via.gen);
            dbk__rds_retire(r, via.slot);
        }
        *reply = rep;
        return DBK_OK;
    }
}
