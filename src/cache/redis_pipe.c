/*
 * Auto-pipelining: concurrent cache commands share the node's connections
 * as pipelines, so N callers in flight at once cost about one round trip
 * instead of N (ioredis batches the commands of one event-loop tick; here
 * the callers are blocking threads).
 *
 * Shape. Each connection (slot) has a queue of commands not written yet and
 * a list of commands written whose replies are not read yet, oldest first,
 * both under rds.mu. At most one thread at a time holds a connection (it
 * has "the turn"): it alone touches the hiredis context. A caller picks a
 * slot whose queue already waits for its next write (batches grow with the
 * load; the price is waiting for the pipeline ahead even when another
 * connection may be idle at that moment), else an idle connected slot, else
 * an idle one to connect, else the slot with the fewest commands queued and
 * in flight, and queues its command there; if nobody holds that slot it
 * takes the turn at once, otherwise it waits on its own condition variable
 * until it is handed the turn, its reply, or its deadline.
 *
 * The holder. A holder whose command is still queued is the head of the
 * queue and the slot has nothing in flight: it connects if needed (its own
 * deadline plus connect_timeout_ms, as a caller that connects always had),
 * formats every queued command into the context (the node epoch and
 * ASKING are filled in now that the connection is known), writes them with
 * one write, and reads. Reading goes in order: each reply read is handed to
 * its caller (reply stored, caller woken). The holder blocks, until its own
 * deadline only, while its own reply has not come; after it, it takes only
 * what can be read without waiting; when everything written is answered it
 * writes what queued meanwhile (if at least half a command timeout of its
 * own is left), so the next pipeline is on its way while its first caller
 * wakes up. Then it hands the turn on -- to the caller of the oldest reply
 * not read yet, who goes on reading with its own deadline, or to the head
 * of the queue, who writes the next pipeline. So no caller ever waits past
 * its own deadline for another's, and one round trip serves everything
 * queued.
 *
 * Deadlines and timeouts. Every caller keeps its own deadline
 * (command_timeout_ms from its start, plus connect_timeout_ms if it
 * connected):
 *   - queued, not written: it leaves the queue and returns DBK_ETIMEOUT
 *     without having touched Redis; like a caller that found every
 *     connection busy, this is not counted against Redis by the breaker;
 *   - written, reply not read (waiting, or holding the turn): it returns
 *     DBK_ETIMEOUT (an error for the breaker; the command may still run on
 *     the server, as with any timed-out command) and leaves its command
 *     behind, marked abandoned: whoever reads that reply later drops it.
 *     The connection stays open while a caller still waits for a later
 *     reply on it: that caller reads on (through the abandoned replies),
 *     with its own deadline. When no caller is left waiting for a reply that
 *     was written, the connection is closed (freed, as any connection that
 *     saw a timeout) and the queue's head reconnects;
 *   - an I/O error (or a write cut short by the holder's deadline) breaks
 *     the connection for every command on it: each caller whose command was
 *     written gets the error at once (DBK_EUNAVAILABLE or DBK_ETIMEOUT) and
 *     its reply is never read; queued commands stay queued for the
 *     reconnect.
 * A command that failed this way is handled by its caller exactly as a
 * failed command alone on a connection: counted by the breaker, an
 * invalidation queued for replay, Sentinel/Cluster told of the lost node.
 *
 * Redirections (MOVED, ASK, TRYAGAIN, READONLY) are judged by the caller
 * from its own reply (dbk__rds_exec_cmd) and the command is sent again by
 * itself; after ASK, ASKING and the command go in one queued entry so
 * nothing comes between them on the connection. A READONLY retires the
 * connection: it is reconnected at its next write, when nothing is in
 * flight on it.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/internal.h"
#include "redis_int.h"

enum { REQ_QUEUED, REQ_SENT, REQ_DONE };

struct dbk__rds_req {
    struct dbk__rds_req *next;
    int argc;
    const char **argv; /* the caller's, valid while the command is queued */
    const size_t *lens;
    bool asking; /* send ASKING first (its reply is dropped) */
    int skip;    /* replies still to drop before this command's own */
    int64_t deadline_ns;
    int state;
    bool turn;      /* the caller holds the connection */
    bool abandoned; /* the caller gave up: the reader frees this entry */
    redisReply *reply;
    dbk_rc rc;   /* REQ_DONE without a reply */
    bool unsent; /* ... and it never left the queue (not Redis failing) */
    char msg[DBK_ERROR_MESSAGE_MAX];
    struct dbk__rds_sent via;
    pthread_cond_t cv;
};

static void req_free(struct dbk__rds_req *q)
{
    if (q->reply)
        freeReplyObject(q->reply);
    pthread_cond_destroy(&q->cv);
    free(q);
}

/* Hands the turn to the caller who must act next, mu held: the caller of
 * the oldest reply not read yet; else (nothing written is waited for) the
 * head of the queue, after closing a connection whose written replies
 * nobody will read; else nobody (the slot becomes idle). */
static void pass_turn_locked(struct dbk__rds_slot *s)
{
    for (struct dbk__rds_req *x = s->fhead; x; x = x->next)
        if (!x->abandoned) {
            x->turn = true;
            pthread_cond_signal(&x->cv);
            return;
        }
    if (s->fhead) {
        while (s->fhead) {
            struct dbk__rds_req *x = s->fhead;
            s->fhead = x->next;
            req_free(x);
        }
        s->ftail = NULL;
        s->ninflight = 0;
        if (s->ctx) {
            redisFree(s->ctx);
            s->ctx = NULL;
        }
    }
    if (s->qhead) {
        s->qhead->turn = true;
        pthread_cond_signal(&s->qhead->cv);
        return;
    }
    s->busy = false;
}

/* The connection broke: every written command fails with rc/msg (their
 * callers are woken; abandoned ones are freed) and the context is freed.
 * mu held. */
static void fail_inflight_locked(struct dbk__rds_slot *s, dbk_rc rc, const char *msg)
{
    while (s->fhead) {
        struct dbk__rds_req *x = s->fhead;
        s->fhead = x->next;
        if (x->abandoned) {
            req_free(x);
            continue;
        }
        x->state = REQ_DONE;
        x->rc = rc;
        dbk__strlcpy(x->msg, msg, sizeof x->msg);
        pthread_cond_signal(&x->cv);
    }
    s->ftail = NULL;
    s->ninflight = 0;
    if (s->ctx) {
        redisFree(s->ctx);
        s->ctx = NULL;
    }
}

static void unqueue_locked(struct dbk__rds_slot *s, struct dbk__rds_req *q)
{
    struct dbk__rds_req **pp = &s->qhead, *prev = NULL;
    while (*pp && *pp != q) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = q->next;
    if (s->qtail == q)
        s->qtail = prev;
    s->nqueued--;
    q->next = NULL;
}

/* Moves every queued command to the in-flight list, formatted into the
 * context (mu held: their callers' argv stay valid while they are queued,
 * and they cannot leave the queue meanwhile). False when formatting ran
 * out of memory (that command and those already written fail, the
 * connection is freed, the rest stay queued). */
static bool format_queue_locked(struct dbk__rds_slot *s)
{
    while (s->qhead) {
        struct dbk__rds_req *q = s->qhead;
        s->qhead = q->next;
        s->nqueued--;
        q->next = NULL;
        const char *av[MAX_ARGS];
        size_t al[MAX_ARGS];
        const char **pav = q->argv;
        const size_t *pal = q->lens;
        if (q->argc <= MAX_ARGS) { /* longer ones hold no placeholder (checked) */
            for (int i = 0; i < q->argc; i++) {
                av[i] = q->argv[i] == DBK__RDS_NODE_EPOCH ? s->epoch : q->argv[i];
                al[i] = q->argv[i] == DBK__RDS_NODE_EPOCH ? 16 : q->lens[i];
            }
            pav = av;
            pal = al;
        }
        bool ok = true;
        if (q->asking) {
            const char *aa[1] = {"ASKING"};
            size_t aal[1] = {6};
            ok = redisAppendCommandArgv(s->ctx, 1, aa, aal) == REDIS_OK;
            q->skip = 1;
        }
        ok = ok && redisAppendCommandArgv(s->ctx, q->argc, pav, pal) == REDIS_OK;
        q->argv = NULL;
        q->lens = NULL;
        q->via.slot = s;
        q->via.gen = s->gen;
        memcpy(q->via.epoch, s->epoch, sizeof q->via.epoch);
        if (!ok) {
            /* out of memory: what was appended of it stays in obuf and
             * would misalign the replies, so the connection goes */
            q->state = REQ_DONE;
            q->rc = DBK_ENOMEM;
            dbk__strlcpy(q->msg, "out of memory formatting a redis command", sizeof q->msg);
            pthread_cond_signal(&q->cv);
            fail_inflight_locked(s, DBK_ENOMEM, q->msg);
            if (!s->qhead)
                s->qtail = NULL;
            return false;
        }
        q->state = REQ_SENT;
        if (s->ftail)
            s->ftail->next = q;
        else
            s->fhead = q;
        s->ftail = q;
        s->ninflight++;
    }
    s->qtail = NULL;
    return true;
}

/* Reads one reply from c. wait_ns: the deadline to wait until, or 0 to
 * take only what can be read at once. 1: *rep; 0: none (deadline passed or
 * nothing ready; the context stays usable by the caller who reads on);
 * -1: I/O error (c->errstr). A blocking wait is a plain read under the
 * socket timeout (dbk__rds_arm), as for a command alone, so the common
 * case costs no extra system call; a timeout there leaves hiredis's reader
 * untouched (nothing was consumed), and the error it set on the context is
 * cleared so the next reader can go on. */
static int read_one(redisContext *c, int64_t wait_ns, redisReply **rep)
{
    void *m = NULL;
    for (;;) {
        if (redisGetReplyFromReader(c, &m) != REDIS_OK)
            return -1;
        if (m) {
            *rep = m;
            return 1;
        }
        if (!wait_ns) {
            struct pollfd pfd = {c->fd, POLLIN, 0};
            int n = poll(&pfd, 1, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0)
                return 0;
            if (n < 0) {
                c->err = REDIS_ERR_IO;
                dbk__strlcpy(c->errstr, "poll failed", sizeof c->errstr);
                return -1;
            }
        } else if (!dbk__rds_arm(c, wait_ns)) {
            c->err = 0; /* the deadline passed before the read: nothing happened */
            c->errstr[0] = 0;
            return 0;
        }
        errno = 0;
        if (redisBufferRead(c) != REDIS_OK) {
            if (errno == EAGAIN || errno == EWOULDBLOCK ||
                strstr(c->errstr, "temporarily unavailable")) { /* SO_RCVTIMEO ran out */
                c->err = 0;
                c->errstr[0] = 0;
                return 0;
            }
            return -1;
        }
    }
}

/* The turn holder's work (mu held on entry and on return): write the queue
 * when its own command is queued, then read replies in order until its own
 * is in, and what else is ready; then hand the turn on. Returns when q is
 * done (q->state REQ_DONE) or abandoned (*gone: q now belongs to the
 * slot). */
static void hold(struct dbk__rds *r, struct dbk__rds_slot *s, struct dbk__rds_req *q,
                 int64_t *deadline_ns, bool *gone, struct dbk__rds_sent *via, dbk_error *err)
{
    q->turn = false;
    if (q->state == REQ_QUEUED) {
        if (dbk__now_ns() >= *deadline_ns) {
            unqueue_locked(s, q);
            pass_turn_locked(s);
            q->state = REQ_DONE;
            q->rc = DBK_ETIMEOUT;
            q->unsent = true;
            snprintf(q->msg, sizeof q->msg,
                     "redis cache %.200s: timed out queued behind a pipeline", r->safe_addr);
            return;
        }
        if (dbk__rds_slot_stale_locked(r, s)) {
            redisFree(s->ctx);
            s->ctx = NULL;
        }
        s->retire = false;
        if (s->ctx && r->ha) { /* nothing in flight: the holder alone uses the context */
            pthread_mutex_unlock(&r->mu);
            dbk__rds_slot_recheck(r, s, *deadline_ns);
            pthread_mutex_lock(&r->mu);
        }
        if (!s->ctx) {
            pthread_mutex_unlock(&r->mu);
            *deadline_ns += (int64_t)r->cfg.connect_timeout_ms * 1000000LL;
            q->deadline_ns = *deadline_ns;
            dbk_rc rc = dbk__rds_connect_slot(r, s, *deadline_ns, err);
            pthread_mutex_lock(&r->mu);
            if (rc != DBK_OK) {
                /* connect_slot told Sentinel/Cluster; the others queued
                 * try again, each within its own deadline */
                unqueue_locked(s, q);
                pass_turn_locked(s);
                q->state = REQ_DONE;
                q->rc = rc;
                q->msg[0] = 0; /* err is filled */
                return;
            }
        }
        if (!format_queue_locked(s)) { /* out of memory */
            pass_turn_locked(s);
            return;
        }
        redisContext *c = s->ctx;
        pthread_mutex_unlock(&r->mu);
        bool ok = dbk__rds_flush(c, *deadline_ns);
        pthread_mutex_lock(&r->mu);
        if (!ok) {
            dbk_error e;
            dbk_rc rc = dbk__rds_io_error(r, c, &e);
            fail_inflight_locked(s, rc, e.message);
            pass_turn_locked(s);
            return;
        }
    }
    /* q is in flight and this thread holds the connection: read in order */
    bool mine = false;
    while (s->fhead) {
        redisContext *c = s->ctx;
        pthread_mutex_unlock(&r->mu);
        redisReply *rep = NULL;
        int got = read_one(c, mine ? 0 : q->deadline_ns, &rep);
        pthread_mutex_lock(&r->mu);
        if (got < 0) {
            dbk_error e;
            dbk_rc rc = dbk__rds_io_error(r, c, &e);
            fail_inflight_locked(s, rc, e.message);
            break;
        }
        if (got == 0) {
            if (!mine) { /* its own deadline passed: leave the command behind */
                q->abandoned = true;
                *via = q->via; /* q may be freed once the turn is passed */
                *gone = true;
            }
            break;
        }
        struct dbk__rds_req *x = s->fhead;
        if (x->skip > 0) { /* ASKING's +OK */
            x->skip--;
            freeReplyObject(rep);
            continue;
        }
        s->fhead = x->next;
        if (!s->fhead)
            s->ftail = NULL;
        s->ninflight--;
        x->next = NULL;
        if (x->abandoned) {
            freeReplyObject(rep);
            req_free(x);
            continue;
        }
        x->reply = rep;
        x->state = REQ_DONE;
        if (x == q)
            mine = true;
        else
            pthread_cond_signal(&x->cv);
    }
    /* Everything written is answered and more is queued: write it now, so
     * the next pipeline is on its way while its first caller wakes up to
     * read it (only with time to spare: a write cut short by this caller's
     * deadline would cost the others their commands). */
    if (mine && !s->fhead && s->qhead && s->ctx && !dbk__rds_slot_stale_locked(r, s) &&
        dbk__rds_step_ms(r->cfg.command_timeout_ms, *deadline_ns) * 2 >=
            r->cfg.command_timeout_ms &&
        format_queue_locked(s)) {
        redisContext *c = s->ctx;
        pthread_mutex_unlock(&r->mu);
        bool ok = dbk__rds_flush(c, *deadline_ns);
        pthread_mutex_lock(&r->mu);
        if (!ok) {
            dbk_error e;
            dbk_rc rc = dbk__rds_io_error(r, c, &e);
            fail_inflight_locked(s, rc, e.message);
        }
    }
    pass_turn_locked(s);
}

/* The slot of `node` a new command goes to (mu held): one whose queue
 * already waits for its next write (that write goes when the pipeline
 * ahead is answered; batches grow with the load), else an idle connected
 * one, else an idle one (it will
 * connect), else the one with the fewest commands queued and in flight. */
static struct dbk__rds_slot *pick_locked(struct dbk__rds *r, int node)
{
    struct dbk__rds_slot *pool = r->nodes[node].slots, *best = NULL;
    for (int i = 0; i < r->nslots; i++)
        if (pool[i].qhead && (!best || pool[i].nqueued > best->nqueued))
            best = &pool[i];
    if (best)
        return best;
    for (int i = 0; i < r->nslots; i++)
        if (!pool[i].busy && pool[i].ctx)
            return &pool[i];
    for (int i = 0; i < r->nslots; i++)
        if (!pool[i].busy)
            return &pool[i];
    for (int i = 0; i < r->nslots; i++)
        if (!best || pool[i].nqueued + pool[i].ninflight < best->nqueued + best->ninflight)
            best = &pool[i];
    return best;
}

dbk_rc dbk__rds_pipe_call(struct dbk__rds *r, int node, int argc, const char **argv,
                          const size_t *lens, bool asking, int64_t *deadline_ns, redisReply **reply,
                          struct dbk__rds_sent *via, bool *busy, dbk_error *err)
{
    *reply = NULL;
    *busy = false;
    memset(via, 0, sizeof *via);
    dbk_rc arc = dbk__rds_check_argv(argc, argv, err);
    if (arc != DBK_OK)
        return arc;
    /* malloc + memset rather than calloc: glibc's calloc bypasses the
     * per-thread cache, and this runs on every command */
    struct dbk__rds_req *q = malloc(sizeof *q);
    if (!q)
        return dbk__err(err, DBK_ENOMEM, "out of memory queueing a redis command");
    memset(q, 0, offsetof(struct dbk__rds_req, msg));
    q->msg[0] = 0;
    memset(&q->via, 0, sizeof q->via);
    q->argc = argc;
    q->argv = argv;
    q->lens = lens;
    q->asking = asking;
    q->deadline_ns = *deadline_ns;
    q->state = REQ_QUEUED;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);

    pthread_mutex_lock(&r->mu);
    struct dbk__rds_slot *s = pick_locked(r, node);
    if (s->qtail)
        s->qtail->next = q;
    else
        s->qhead = q;
    s->qtail = q;
    s->nqueued++;
    if (!s->busy) {
        s->busy = true;
        q->turn = true;
    }
    bool gone = false;
    for (;;) {
        if (q->state == REQ_DONE)
            break;
        if (q->turn) {
            hold(r, s, q, deadline_ns, &gone, via, err);
            break;
        }
        struct timespec dl = {(time_t)(q->deadline_ns / 1000000000LL),
                              (long)(q->deadline_ns % 1000000000LL)};
        if (pthread_cond_timedwait(&q->cv, &r->mu, &dl) != ETIMEDOUT)
            continue;
        if (q->state == REQ_DONE || q->turn)
            continue;
        if (q->state == REQ_QUEUED) {
            unqueue_locked(s, q);
            pthread_mutex_unlock(&r->mu);
            req_free(q);
            *busy = true;
            return dbk__err(err, DBK_ETIMEOUT,
                            "redis cache %s: timed out queued behind a pipeline (%d connections "
                            "in use)",
                            r->safe_addr, r->nslots);
        }
        q->abandoned = true; /* written: whoever reads its reply frees it */
        *via = q->via;
        gone = true;
        break;
    }
    if (gone) {
        pthread_mutex_unlock(&r->mu);
        return dbk__err(err, DBK_ETIMEOUT,
                        "redis cache %s: timed out waiting for a pipelined reply", r->safe_addr);
    }
    *via = q->via;
    redisReply *rep = q->reply;
    q->reply = NULL;
    dbk_rc rc = q->rc;
    *busy = q->unsent;
    char msg[sizeof q->msg];
    memcpy(msg, q->msg, sizeof msg);
    pthread_mutex_unlock(&r->mu);
    req_free(q);
    if (rep) {
        *reply = rep;
        return DBK_OK;
    }
    if (msg[0])
        dbk__err(err, rc, "%s", msg);
    return rc;
}
