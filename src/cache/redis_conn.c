/*
 * The Redis backend's connections, one command at a time: the circuit
 * breaker, socket I/O bounded by the call's deadline, connecting a slot
 * (TCP, AUTH, SELECT, the epoch), and the path used when auto-pipelining is
 * off: a caller takes a free connection of the node's pool (waiting at most
 * until its deadline), sends its command, reads the reply and gives the
 * connection back; a connection that saw an I/O error or a timeout is
 * freed and the next borrower of its slot reconnects. See redis.c for the
 * whole design, redis_pipe.c for the shared-connection path.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "../core/internal.h"
#include "redis_int.h"

/* ---- breaker ------------------------------------------------------------ */

/* Decides whether a call may go to Redis. *probe is set when this call is
 * the half-open probe. */
dbk_rc dbk__rds_breaker_enter(struct dbk__rds *r, bool *probe, dbk_error *err)
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
        dbk__log(DBK_LOG_DEBUG, "redis cache %s: circuit breaker half-open, probing", r->safe_addr);
        return DBK_OK;
    }
    pthread_mutex_unlock(&r->br_mu);
    atomic_fetch_add(&r->skipped, 1);
    return dbk__err(err, DBK_EUNAVAILABLE, "redis cache %s skipped: circuit breaker open",
                    r->safe_addr);
}

static void breaker_open_locked(struct dbk__rds *r, const char *why)
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

void dbk__rds_breaker_result(struct dbk__rds *r, bool probe, bool ok, const char *why)
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

void dbk__rds_force_open(struct dbk__rds *r, const char *why)
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

dbk_rc dbk__rds_io_error(struct dbk__rds *r, redisContext *c, dbk_error *err)
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
bool dbk__rds_sigpipe_ignored; /* SIGPIPE was SIG_IGN when a cache opened */

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
bool dbk__rds_arm(redisContext *c, int64_t deadline_ns)
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

/* Writes what c has queued before deadline_ns (see dbk__rds_arm()). */
static bool write_out(redisContext *c, int64_t deadline_ns)
{
    int done = 0;
    do {
        if (!dbk__rds_arm(c, deadline_ns) || redisBufferWrite(c, &done) != REDIS_OK)
            return false;
    } while (!done);
    return true;
}

/* Reads one reply before deadline_ns: a peer that trickles its answer
 * cannot stretch the call. */
static redisReply *read_reply(redisContext *c, int64_t deadline_ns)
{
    void *rep = NULL;
    for (;;) {
        if (redisGetReplyFromReader(c, &rep) != REDIS_OK)
            return NULL;
        if (rep)
            return rep;
        if (!dbk__rds_arm(c, deadline_ns) || redisBufferRead(c) != REDIS_OK)
            return NULL;
    }
}

redisReply *dbk__rds_finish_call(redisContext *c, int64_t deadline_ns)
{
    return write_out(c, deadline_ns) ? read_reply(c, deadline_ns) : NULL;
}

/* The SIGPIPE guard around a write (see dbk__rds_sigpipe_ignored). */
struct sigguard {
    sigset_t pipe_set, old_set;
    bool blocked, was_pending;
};

static void guard_enter(struct sigguard *g)
{
    sigset_t pending;
    sigemptyset(&g->pipe_set);
    sigaddset(&g->pipe_set, SIGPIPE);
    sigemptyset(&pending);
    g->was_pending = false;
    g->blocked = pthread_sigmask(SIG_BLOCK, &g->pipe_set, &g->old_set) == 0;
    if (g->blocked && sigpending(&pending) == 0)
        g->was_pending = sigismember(&pending, SIGPIPE) == 1;
}

static void guard_leave(struct sigguard *g)
{
    sigset_t pending;
    sigemptyset(&pending);
    if (!g->blocked)
        return;
    if (!g->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        (void)sigtimedwait(&g->pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old_set, NULL);
}

bool dbk__rds_flush(redisContext *c, int64_t deadline_ns)
{
    if (__atomic_load_n(&dbk__rds_sigpipe_ignored, __ATOMIC_RELAXED))
        return write_out(c, deadline_ns);
    struct sigguard g;
    guard_enter(&g);
    bool ok = write_out(c, deadline_ns);
    guard_leave(&g);
    return ok;
}

/* One command on c, bounded as a whole by deadline_ns. NULL on an I/O
 * error or timeout (c->errstr says which; the connection is then unusable). */
redisReply *dbk__rds_cmd(redisContext *c, int argc, const char **argv, const size_t *lens,
                         int64_t deadline_ns)
{
    if (redisAppendCommandArgv(c, argc, argv, lens) != REDIS_OK)
        return NULL;
    if (__atomic_load_n(&dbk__rds_sigpipe_ignored, __ATOMIC_RELAXED))
        return dbk__rds_finish_call(c, deadline_ns); /* nothing to guard: no syscalls */
    struct sigguard g;
    guard_enter(&g);
    redisReply *rep = dbk__rds_finish_call(c, deadline_ns);
    guard_leave(&g);
    return rep;
}

/* A deadline `ms` from now on the monotonic clock. */
int64_t dbk__rds_deadline_in(int ms)
{
    return dbk__now_ns() + (int64_t)ms * 1000000LL;
}

/* A step's timeout: `ms`, or what is left before `deadline_ns` when that is
 * less. -1 when the deadline has passed. */
int dbk__rds_step_ms(int ms, int64_t deadline_ns)
{
    int64_t left = (deadline_ns - dbk__now_ns()) / 1000000LL;
    if (left <= 0)
        return -1;
    return left < ms ? (int)left : ms;
}

/* Opens a TCP connection to host:port within the connect timeout and what
 * is left before deadline_ns. */
dbk_rc dbk__rds_dial(struct dbk__rds *r, const char *host, int port, int64_t deadline_ns,
                     redisContext **out, dbk_error *err)
{
    *out = NULL;
    int cms = dbk__rds_step_ms(r->cfg.connect_timeout_ms, deadline_ns);
    if (cms <= 0)
        return dbk__err(err, DBK_ETIMEOUT, "redis cache %s: no time left to connect", r->safe_addr);
    redisContext *c = redisConnectWithTimeout(host, port, tv_ms(cms));
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory connecting to redis");
    if (c->err) {
        dbk_rc rc = dbk__rds_io_error(r, c, err);
        redisFree(c);
        return rc == DBK_ETIMEOUT ? rc : DBK_EUNAVAILABLE;
    }
    if (c->timeout)
        c->timeout->tv_sec =
            -1; /* the socket's timeouts are not known yet: dbk__rds_arm() sets them */
    *out = c;
    return DBK_OK;
}

dbk_rc dbk__rds_auth(struct dbk__rds *r, redisContext *c, const char *user, const char *password,
                     int64_t deadline_ns, dbk_error *err)
{
    const char *av[3] = {"AUTH", user, password};
    size_t al[3] = {4, strlen(user), strlen(password)};
    int ac = 3;
    if (!user[0]) {
        av[1] = password;
        al[1] = al[2];
        ac = 2;
    }
    redisReply *rep = dbk__rds_cmd(c, ac, av, al, deadline_ns);
    if (!rep)
        return dbk__rds_io_error(r, c, err);
    bool bad = rep->type == REDIS_REPLY_ERROR;
    freeReplyObject(rep);
    if (bad) {
        dbk__err(err, DBK_EAUTH, "redis cache %s: authentication failed", r->safe_addr);
        dbk__err_hint(err, "check the password in REDIS_URL / CACHE_URL");
        return DBK_EAUTH;
    }
    return DBK_OK;
}

/* Connects a slot: TCP connect, AUTH, SELECT, the epoch key, all before
 * deadline_ns (the connect also within its own timeout). */
dbk_rc dbk__rds_connect_slot(struct dbk__rds *r, struct dbk__rds_slot *s, int64_t deadline_ns,
                             dbk_error *err)
{
    redisContext *c;
    struct dbk__redis_addr to = {{0}, r->url.port};
    uint64_t gen = 0;
    if (r->cluster) {
        pthread_mutex_lock(&r->mu);
        to = r->nodes[s->node].addr;
        pthread_mutex_unlock(&r->mu);
    } else if (r->ha) {
        dbk_rc mrc = dbk__rds_master_addr(r, &to, &gen, deadline_ns, err);
        if (mrc != DBK_OK)
            return mrc;
    } else {
        dbk__strlcpy(to.host, r->url.host, sizeof to.host);
    }
    dbk_rc drc = dbk__rds_dial(r, to.host, to.port, deadline_ns, &c, err);
    if (drc != DBK_OK) {
        if (r->cluster)
            dbk__rds_map_stale(r);
        else if (r->ha)
            dbk__rds_master_lost(r, gen);
        return drc;
    }
    redisReply *rep = NULL;
    if (r->url.password[0]) {
        dbk_rc arc = dbk__rds_auth(r, c, r->url.user, r->url.password, deadline_ns, err);
        if (arc != DBK_OK) {
            redisFree(c);
            return arc;
        }
    }
    if (r->url.db != 0) {
        char dbs[16];
        int n = snprintf(dbs, sizeof dbs, "%d", r->url.db);
        const char *av[2] = {"SELECT", dbs};
        size_t al[2] = {6, (size_t)n};
        rep = dbk__rds_cmd(c, 2, av, al, deadline_ns);
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
        dbk_rc vrc = dbk__rds_verify_master(r, c, s, deadline_ns, err);
        if (vrc != DBK_OK) {
            if (r->cluster)
                dbk__rds_map_stale(r);
            else
                dbk__rds_master_lost(r, gen);
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
        rep = dbk__rds_cmd(c, 4, av, al, deadline_ns);
        if (!rep)
            goto io_fail;
        freeReplyObject(rep);
    }
    s->ctx = c;
    return DBK_OK;
io_fail : {
    dbk_rc rc = dbk__rds_io_error(r, c, err);
    redisFree(c);
    return rc;
}
}

bool dbk__rds_slot_stale_locked(const struct dbk__rds *r, const struct dbk__rds_slot *s)
{
    return s->ctx && (s->retire || (r->ha && !r->cluster && s->gen != r->master_gen));
}

bool dbk__rds_slot_recheck(struct dbk__rds *r, struct dbk__rds_slot *s, int64_t deadline_ns)
{
    if (!r->ha || !s->ctx)
        return true;
    /* the call's start, from its deadline: no second clock read per call
     * (a deadline moved on by a connect only makes the check earlier) */
    int64_t now = deadline_ns - (int64_t)r->cfg.command_timeout_ms * 1000000LL;
    if (now - s->verified_ns < DBK__RDS_RECHECK_MS * 1000000LL &&
        (!r->cluster || s->map_gen == atomic_load_explicit(&r->map_gen, memory_order_relaxed))) {
        s->verified_ns = now;
        return true;
    }
    if (dbk__rds_verify_master(r, s->ctx, s, deadline_ns, NULL) == DBK_OK)
        return true;
    redisFree(s->ctx);
    s->ctx = NULL;
    return false;
}

void dbk__rds_retire(struct dbk__rds *r, struct dbk__rds_slot *s)
{
    pthread_mutex_lock(&r->mu);
    s->retire = true;
    pthread_mutex_unlock(&r->mu);
}

/* Takes a connected slot of node `node`: a free one before *deadline_ns,
 * then a connect when it has none (which moves *deadline_ns on by
 * connect_timeout_ms). */
static dbk_rc take_slot(struct dbk__rds *r, int node, struct dbk__rds_slot **out,
                        int64_t *deadline_ns, dbk_error *err)
{
    struct timespec dl = {(time_t)(*deadline_ns / 1000000000LL),
                          (long)(*deadline_ns % 1000000000LL)};
    struct dbk__rds_slot *s = NULL;
    pthread_mutex_lock(&r->mu);
    struct dbk__rds_slot *pool = r->nodes[node].slots;
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
        stale = dbk__rds_slot_stale_locked(r, s);
        s->retire = false;
    }
    pthread_mutex_unlock(&r->mu);
    if (stale) {
        redisFree(s->ctx); /* retired, or connected to a master that is no longer one */
        s->ctx = NULL;
    }
    if (!s)
        return dbk__err(err, DBK_ETIMEOUT, "redis cache %s: all %d connections busy", r->safe_addr,
                        r->nslots);
    if (!s->ctx || !dbk__rds_slot_recheck(r, s, *deadline_ns)) {
        *deadline_ns += (int64_t)r->cfg.connect_timeout_ms * 1000000LL;
        dbk_rc rc = dbk__rds_connect_slot(r, s, *deadline_ns, err);
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

static void release(struct dbk__rds *r, struct dbk__rds_slot *s, bool broken)
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

dbk_rc dbk__rds_send_alone(struct dbk__rds *r, int node, int argc, const char **argv,
                           const size_t *lens, bool asking, int64_t *deadline_ns,
                           redisReply **reply, struct dbk__rds_sent *via, bool *busy,
                           dbk_error *err)
{
    *reply = NULL;
    *busy = false;
    memset(via, 0, sizeof *via);
    dbk_rc rc = dbk__rds_check_argv(argc, argv, err);
    if (rc != DBK_OK)
        return rc;
    struct dbk__rds_slot *s = NULL;
    rc = take_slot(r, node, &s, deadline_ns, err);
    if (rc != DBK_OK) {
        *busy = rc == DBK_ETIMEOUT && err && strstr(err->message, "connections busy");
        return rc;
    }
    const char *av[MAX_ARGS];
    size_t al[MAX_ARGS];
    const char **pav = argv;
    const size_t *pal = lens;
    if (argc <= MAX_ARGS) { /* longer ones hold no placeholder (checked) */
        for (int i = 0; i < argc; i++) {
            av[i] = argv[i] == DBK__RDS_NODE_EPOCH ? s->epoch : argv[i];
            al[i] = argv[i] == DBK__RDS_NODE_EPOCH ? 16 : lens[i];
        }
        pav = av;
        pal = al;
    }
    if (asking) {
        const char *aa[1] = {"ASKING"};
        size_t aal[1] = {6};
        redisAppendCommandArgv(s->ctx, 1, aa, aal);
    }
    redisReply *rep = dbk__rds_cmd(s->ctx, argc, pav, pal, *deadline_ns);
    if (asking && rep) { /* that was ASKING's answer; the command's is next */
        freeReplyObject(rep);
        rep = dbk__rds_finish_call(s->ctx, *deadline_ns);
    }
    via->slot = s;
    via->gen = s->gen;
    memcpy(via->epoch, s->epoch, sizeof via->epoch);
    if (!rep) {
        rc = dbk__rds_io_error(r, s->ctx, err);
        release(r, s, true);
        return rc;
    }
    release(r, s, false);
    *reply = rep;
    return DBK_OK;
}
