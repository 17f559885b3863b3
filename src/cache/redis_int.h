/*
 * What the files of the Redis backend share: the handle, its connection
 * slots and the helpers one file calls in another. The backend is split by
 * concern (the opening comment of redis.c tells how it works as a whole):
 *   redis.c       the cache operations, the invalidation queue, open/close;
 *   redis_conn.c  the breaker, bounded socket I/O, connecting a slot, the
 *                 one-command-per-connection path;
 *   redis_ha.c    Sentinel (discovery, ROLE, +switch-master), the Cluster
 *                 slot map, and the routing of one command (redirections);
 *   redis_pipe.c  auto-pipelining: concurrent commands share connections.
 * Everything here is internal to src/cache/redis*.c.
 */
#ifndef DBK_REDIS_INT_H
#define DBK_REDIS_INT_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../core/internal.h"
#include "cache_int.h"

#define MAX_PENDING 10000
#define KEYBUF (64 + 8 + DBK_CACHE_MAX_KEY)
#define MAX_NODES 32    /* cluster masters this handle keeps pools for */
#define MAX_REDIRECTS 5 /* MOVED/ASK/TRYAGAIN followed per call */
#define MAX_ARGS 12     /* arguments of the longest command with a node-epoch placeholder */
/* Arguments of the longest command the backend sends (the store of
 * DBK_CACHE_MAX_MANY entries in one script: EVAL, the script, the key
 * count, the epoch key, two keys and four arguments per entry); past
 * MAX_ARGS a command carries no DBK__RDS_NODE_EPOCH and goes out as given. */
#define MAX_ARGS_PLAIN (6 * DBK_CACHE_MAX_MANY + 4)
#define DBK__RDS_RECHECK_MS 500 /* an idle connection's node epoch is read again */

/* An argv entry that the send replaces with the epoch of the node the
 * command goes to (16 hex digits of its run id). Compared by address. */
extern const char DBK__RDS_NODE_EPOCH[];

struct dbk__rds_req; /* a command in a pipeline (redis_pipe.c) */

/* One connection of a node's pool. */
struct dbk__rds_slot {
    redisContext *ctx;
    bool busy;      /* taken (one command), or held by a pipeline's writer/reader */
    bool retire;    /* drop the connection before its next use (READONLY seen) */
    int node;       /* index into rds.nodes */
    uint64_t gen;   /* sentinel: the master generation it connected to */
    char epoch[17]; /* sentinel/cluster: the node's epoch (its reign, 16 hex:
                     * dbk__rds_verify_master) */
    int64_t verified_ns; /* sentinel/cluster: when the epoch was read or the
                          * connection last used, whichever is later */
    uint64_t map_gen;    /* cluster: rds.map_gen when the epoch was read */
    /* auto-pipelining, under rds.mu: commands not written yet, and
     * commands written whose replies are not read yet, oldest first */
    struct dbk__rds_req *qhead, *qtail;
    struct dbk__rds_req *fhead, *ftail;
    int nqueued, ninflight;
};

struct dbk__rds_pending {
    unsigned char *key;
    size_t len;
};

struct dbk__rds {
    struct dbk__cache_cfg cfg;
    struct dbk__redis_url url;
    char safe_addr[300]; /* host:port/db, for messages */
    bool pipe;           /* auto-pipelining (redis_pipe.c) */
    size_t prefix_len;   /* strlen(cfg.key_prefix): keys are built on every call */
    pthread_mutex_t mu;  /* slots */
    pthread_cond_t cv;
    struct dbk__rds_node {
        struct dbk__redis_addr addr; /* cluster: the master; else unused */
        struct dbk__rds_slot *slots; /* pool_size of them */
    } nodes[MAX_NODES];
    int nnodes; /* 1 unless cluster */
    int nslots; /* per node */

    pthread_mutex_t br_mu; /* breaker */
    dbk_cache_breaker state;
    int fails;
    int64_t opened_at_ns;
    uint64_t breaker_opens;

    pthread_mutex_t pend_mu;
    struct dbk__rds_pending *pend;
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
    int64_t map_at_ns;         /* last refresh attempt */
    _Atomic uint64_t map_gen;  /* refreshes done: connections read their epoch again */
    pthread_mutex_t map_mu;
};

/* Where a command went: the slot (NULL when it never reached one), and the
 * master generation and node epoch of that connection. */
struct dbk__rds_sent {
    struct dbk__rds_slot *slot;
    uint64_t gen;
    char epoch[17];
};

/* ---- redis_conn.c ---- */
dbk_rc dbk__rds_breaker_enter(struct dbk__rds *r, bool *probe, dbk_error *err);
void dbk__rds_breaker_result(struct dbk__rds *r, bool probe, bool ok, const char *why);
void dbk__rds_force_open(struct dbk__rds *r, const char *why);
dbk_rc dbk__rds_io_error(struct dbk__rds *r, redisContext *c, dbk_error *err);
extern bool dbk__rds_sigpipe_ignored; /* SIGPIPE was SIG_IGN when a cache opened */
bool dbk__rds_arm(redisContext *c, int64_t deadline_ns);
/* Writes what c has queued before deadline_ns, guarding SIGPIPE. */
bool dbk__rds_flush(redisContext *c, int64_t deadline_ns);
redisReply *dbk__rds_finish_call(redisContext *c, int64_t deadline_ns);
redisReply *dbk__rds_cmd(redisContext *c, int argc, const char **argv, const size_t *lens,
                         int64_t deadline_ns);
int64_t dbk__rds_deadline_in(int ms);
int dbk__rds_step_ms(int ms, int64_t deadline_ns);
dbk_rc dbk__rds_dial(struct dbk__rds *r, const char *host, int port, int64_t deadline_ns,
                     redisContext **out, dbk_error *err);
/* AUTH with user/password (user may be ""): DBK_OK, DBK_EAUTH or an I/O error. */
dbk_rc dbk__rds_auth(struct dbk__rds *r, redisContext *c, const char *user, const char *password,
                     int64_t deadline_ns, dbk_error *err);
dbk_rc dbk__rds_connect_slot(struct dbk__rds *r, struct dbk__rds_slot *s, int64_t deadline_ns,
                             dbk_error *err);
/* Whether s must be reconnected before its next use (retired, or connected
 * to a master that is no longer the master). mu held. */
bool dbk__rds_slot_stale_locked(const struct dbk__rds *r, const struct dbk__rds_slot *s);
/* Sentinel/Cluster: before a connection's next write, with nothing in flight
 * on it and its user holding it alone. Reads the node's epoch again when the
 * connection sat unused for DBK__RDS_RECHECK_MS or the cluster's slot map
 * was loaded since it was last read (a node demoted and promoted again while
 * this process did not talk to it has a new epoch); marks it used. False
 * when that check failed: the connection was freed (s->ctx NULL) and is
 * to be connected again. */
bool dbk__rds_slot_recheck(struct dbk__rds *r, struct dbk__rds_slot *s, int64_t deadline_ns);
/* s's connection is dropped before its next use. */
void dbk__rds_retire(struct dbk__rds *r, struct dbk__rds_slot *s);
/* One command alone on a connection of `node` taken for it (auto-pipelining
 * off). argv may hold DBK__RDS_NODE_EPOCH; `asking` sends ASKING first.
 * DBK_OK with *reply; else *busy when no connection was free, via->slot
 * set when the connection failed (it is dropped). */
dbk_rc dbk__rds_send_alone(struct dbk__rds *r, int node, int argc, const char **argv,
                           const size_t *lens, bool asking, int64_t *deadline_ns,
                           redisReply **reply, struct dbk__rds_sent *via, bool *busy,
                           dbk_error *err);

/* ---- redis_ha.c ---- */
void dbk__rds_map_stale(struct dbk__rds *r);
bool dbk__rds_demoted(const redisReply *rep);
void dbk__rds_master_lost(struct dbk__rds *r, uint64_t gen);
void dbk__rds_master_set(struct dbk__rds *r, const struct dbk__redis_addr *a);
dbk_rc dbk__rds_master_addr(struct dbk__rds *r, struct dbk__redis_addr *out, uint64_t *gen,
                            int64_t deadline_ns, dbk_error *err);
dbk_rc dbk__rds_verify_master(struct dbk__rds *r, redisContext *c, struct dbk__rds_slot *s,
                              int64_t deadline_ns, dbk_error *err);
void *dbk__rds_sub_main(void *arg);
int dbk__rds_node_for_locked(struct dbk__rds *r, const struct dbk__redis_addr *a);
void dbk__rds_refresh_map(struct dbk__rds *r, int64_t deadline_ns);
dbk_rc dbk__rds_exec_cmd(struct dbk__rds *r, unsigned hslot, int argc, const char **argv,
                         const size_t *lens, int64_t *deadline_ns, redisReply **reply, bool *busy,
                         char *epoch_out, dbk_error *err);

/* Checks argv against MAX_ARGS / MAX_ARGS_PLAIN (no epoch placeholder
 * past MAX_ARGS); DBK_EINTERNAL when it does not fit. */
static inline dbk_rc dbk__rds_check_argv(int argc, const char **argv, dbk_error *err)
{
    if (argc <= MAX_ARGS)
        return DBK_OK;
    bool placeholder = false;
    for (int i = 0; i < argc && argc <= MAX_ARGS_PLAIN; i++)
        placeholder |= argv[i] == DBK__RDS_NODE_EPOCH;
    if (argc > MAX_ARGS_PLAIN || placeholder)
        return dbk__err(err, DBK_EINTERNAL, "redis cache: command with %d arguments", argc);
    return DBK_OK;
}

/* ---- redis_pipe.c ---- */
/* dbk__rds_send_alone() through the pipelines of `node`'s connections:
 * same contract. See redis_pipe.c for what a timeout does. */
dbk_rc dbk__rds_pipe_call(struct dbk__rds *r, int node, int argc, const char **argv,
                          const size_t *lens, bool asking, int64_t *deadline_ns, redisReply **reply,
                          struct dbk__rds_sent *via, bool *busy, dbk_error *err);

#endif
