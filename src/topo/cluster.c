/*
 * Topology: a primary and its streaming replicas behind dbk_db executors.
 *
 * The cluster sits above the pool: it owns one pool per server and routes
 * each statement to one of them, so everything that takes a dbk_db works
 * unchanged. Three kinds of executor come out of it: the primary pool's own,
 * the router (marked reads, one routing decision per statement) and one
 * wrapper per replica (what dbk_cluster_read_db_after() hands out for the
 * reads of one request, counting its work and noticing a dead server).
 *
 * Routing reads state that a background sampler keeps current, never a
 * query per statement: every sample_interval_ms it reads the primary's WAL
 * position and each replica's replay position over the sampler's own
 * connection per replica (so a probe is a real connect, independent of the
 * pool's breaker). Lag is turned from bytes into time with a ring of
 * (time, primary position) pairs recorded whenever the primary's position
 * moves: a replica's lag is the age of the oldest recorded position it has
 * not replayed. An idle primary thus never makes a replica look late.
 *
 * Balancing is least-outstanding-work: each wrapper counts the statements
 * in flight on its replica and the router takes the smallest count (ties:
 * lowest lag, then in rotation). The counters and positions are atomics; the state changes
 * of a replica (up, lagging, down with back-off) take the cluster mutex.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dbkit/pool.h"
#include "dbkit/replica.h"

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../db/db_int.h"

#define DEF_MAX_LAG_MS 1000
#define DEF_RYW_WAIT_MS 100
#define DEF_SAMPLE_MS 100
#define PROBE_MIN_MS 100
#define PROBE_MAX_MS 5000
#define RING 512

struct replica {
    struct dbk_cluster *c;
    int index;
    dbk_config *cfg;
    dbk_pool *pool;
    dbk_db db;       /* the wrapper executor */
    dbk_conn *probe; /* the sampler's connection; sampler thread only */
    _Atomic int state;
    _Atomic int64_t lag_ms;
    _Atomic uint64_t replay_lsn;
    _Atomic uint64_t reads;
    _Atomic int in_flight;
    int64_t next_probe_ns; /* under mu */
    int backoff_ms;        /* under mu */
};

struct lsn_at {
    int64_t t_ns;
    uint64_t lsn;
};

struct dbk_cluster {
    dbk_pool *primary;
    dbk_db router;
    dbk_db primary_reader; /* marked reads the primary serves, counted */
    size_t n;
    struct replica rep[DBK_CLUSTER_MAX_REPLICAS];
    int max_lag_ms;
    int ryw_wait_ms;
    int sample_ms;
    _Atomic uint64_t primary_reads;
    _Atomic uint64_t primary_fallbacks;
    _Atomic uint64_t ryw_fallbacks;
    _Atomic uint64_t samples;
    _Atomic unsigned rotation; /* where pick() starts, so ties rotate */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool thread_started;
    pthread_t sampler;

    /* Sampler thread only. */
    struct lsn_at ring[RING];
    size_t ring_len, ring_head; /* oldest at ring_head */
};

bool dbk_token_parse(const char *token, uint64_t *lsn)
{
    if (!token)
        return false;
    uint64_t hi = 0, lo = 0;
    const char *p = token;
    int digits = 0;
    for (; *p && *p != '/'; p++, digits++) {
        int v = (*p >= '0' && *p <= '9')   ? *p - '0'
                : (*p >= 'A' && *p <= 'F') ? *p - 'A' + 10
                : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                                           : -1;
        if (v < 0 || digits >= 8)
            return false;
        hi = hi * 16 + (uint64_t)v;
    }
    if (digits == 0 || *p != '/')
        return false;
    p++;
    digits = 0;
    for (; *p; p++, digits++) {
        int v = (*p >= '0' && *p <= '9')   ? *p - '0'
                : (*p >= 'A' && *p <= 'F') ? *p - 'A' + 10
                : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                                           : -1;
        if (v < 0 || digits >= 8)
            return false;
        lo = lo * 16 + (uint64_t)v;
    }
    if (digits == 0)
        return false;
    if (lsn)
        *lsn = hi << 32 | lo;
    return true;
}

/* Reads one pg_lsn-valued statement; *is_null when the server gave NULL
 * (pg_last_wal_replay_lsn() on a server that is not a standby). */
static dbk_rc query_lsn(dbk_db *db, const char *sql, uint64_t *lsn, bool *is_null, dbk_error *err)
{
    char buf[DBK_TOKEN_MAX];
    bool null = false;
    dbk_rc rc = dbk_db_query_text(db, sql, NULL, 0, buf, sizeof buf, &null, err);
    if (rc != DBK_OK)
        return rc;
    *is_null = null;
    if (null)
        return DBK_OK;
    if (!dbk_token_parse(buf, lsn))
        return dbk__err(err, DBK_EINTERNAL, "unexpected WAL position from the server");
    return DBK_OK;
}

/* query_lsn() below the observer: the sampler's own statements on the
 * primary's pool are not the application's, so whoever observes the
 * primary's executor (query counters, diagnostics) does not see them, and
 * installing an observer never races with the sampler thread. */
static dbk_rc query_lsn_unobserved(dbk_db *db, const char *sql, uint64_t *lsn, bool *is_null,
                                   dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = db->ops->run(db, sql, NULL, 0, &r, NULL, err);
    if (rc != DBK_OK)
        return rc;
    const char *text = NULL;
    size_t len = 0;
    if (dbk_result_nrows(r) != 1) {
        rc = dbk__err(err, DBK_EINTERNAL, "unexpected WAL position from the server");
    } else if (dbk_result_is_null(r, 0, 0)) {
        *is_null = true;
    } else if ((rc = dbk_result_get_text(r, 0, 0, &text, &len, err)) == DBK_OK) {
        *is_null = false;
        if (len >= DBK_TOKEN_MAX || !dbk_token_parse(text, lsn))
            rc = dbk__err(err, DBK_EINTERNAL, "unexpected WAL position from the server");
    }
    dbk_result_free(r);
    return rc;
}

static int64_t now_ns(void)
{
    return dbk__now_ns();
}

/* A connect-class failure: the statement never reached a server. */
static bool never_reached(dbk_rc rc)
{
    return rc == DBK_EUNAVAILABLE || rc == DBK_EAUTH || rc == DBK_ETLS;
}

static void mark_down(struct replica *r)
{
    struct dbk_cluster *c = r->c;
    pthread_mutex_lock(&c->mu);
    if (atomic_load(&r->state) != DBK_REPLICA_DOWN) {
        r->backoff_ms = PROBE_MIN_MS;
        r->next_probe_ns = now_ns() + (int64_t)r->backoff_ms * 1000000;
        atomic_store(&r->state, DBK_REPLICA_DOWN);
        dbk__log(DBK_LOG_WARN, "replica %d left the rotation (connection failed); probing it",
                 r->index + 1);
    }
    pthread_mutex_unlock(&c->mu);
}

/* ---- the per-replica wrapper executor ---- */

static dbk_rc rep_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                      dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    atomic_fetch_add(&r->in_flight, 1);
    dbk_rc rc = pdb->ops->run(pdb, sql, params, nparams, out, affected, err);
    atomic_fetch_sub(&r->in_flight, 1);
    if (rc == DBK_OK)
        atomic_fetch_add(&r->reads, 1);
    else if (never_reached(rc) || rc == DBK_ECONN_LOST)
        mark_down(r);
    return rc;
}

static dbk_rc rep_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    return pdb->ops->script(pdb, sql, timeout_ms, err);
}

static dbk_rc rep_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    dbk_rc rc = pdb->ops->pin(pdb, out, err);
    if (never_reached(rc))
        mark_down(r);
    return rc;
}

static void rep_unpin(dbk_db *db, dbk_conn *conn)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    pdb->ops->unpin(pdb, conn);
}

static dbk_rc rep_batch(dbk_db *db, struct dbk__batch_item *items, size_t n, bool atomic)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    return pdb->ops->batch(pdb, items, n, atomic);
}

static dbk_rc rep_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                          int64_t *rows, dbk_error *err)
{
    struct replica *r = db->self;
    dbk_db *pdb = dbk_pool_db(r->pool);
    return pdb->ops->copy_in(pdb, sql, fill, ctx, rows, err);
}

/* As many as the replica's pool may lend at once (dbk_parallel_run asks). */
static int rep_max_parallel(dbk_db *db)
{
    dbk_db *pdb = dbk_pool_db(((struct replica *)db->self)->pool);
    return pdb->ops->max_parallel ? pdb->ops->max_parallel(pdb) : 1;
}

static const struct dbk__db_ops rep_ops = {rep_run,   rep_script, rep_pin,         rep_unpin,
                                           rep_batch, rep_copy_in, rep_max_parallel};

/* ---- choosing a target ---- */

/* The healthy replica with the least work in flight (ties: lowest lag),
 * replayed at least to min_lsn; NULL when none. `skip` marks replicas
 * already tried by this statement. */
static struct replica *pick(struct dbk_cluster *c, uint64_t min_lsn, const bool *skip)
{
    struct replica *best = NULL;
    int best_work = 0;
    int64_t best_lag = 0;
    size_t start = c->n ? atomic_fetch_add(&c->rotation, 1) % c->n : 0;
    for (size_t k = 0; k < c->n; k++) {
        size_t i = (start + k) % c->n;
        struct replica *r = &c->rep[i];
        if ((skip && skip[i]) || atomic_load(&r->state) != DBK_REPLICA_UP)
            continue;
        if (min_lsn && atomic_load(&r->replay_lsn) < min_lsn)
            continue;
        int work = atomic_load(&r->in_flight);
        int64_t lag = atomic_load(&r->lag_ms);
        if (!best || work < best_work || (work == best_work && lag < best_lag)) {
            best = r;
            best_work = work;
            best_lag = lag;
        }
    }
    return best;
}

/* The executor for marked reads the primary serves; `cause` counts the
 * routing decision, the executor counts the statements. */
static dbk_db *primary_for_read(struct dbk_cluster *c, _Atomic uint64_t *cause)
{
    if (cause)
        atomic_fetch_add(cause, 1);
    return &c->primary_reader;
}

/* ---- the router ---- */

static dbk_rc router_run(dbk_db *db, const char *sql, const dbk_value *params, size_t nparams,
                         dbk_result **out, int64_t *affected, dbk_error *err)
{
    struct dbk_cluster *c = db->self;
    bool tried[DBK_CLUSTER_MAX_REPLICAS] = {false};
    for (size_t attempt = 0; attempt <= c->n; attempt++) {
        struct replica *r = pick(c, 0, tried);
        if (!r)
            break;
        dbk_rc rc = rep_run(&r->db, sql, params, nparams, out, affected, err);
        if (!never_reached(rc))
            return rc;
        tried[r->index] = true; /* never reached a server: safe to send elsewhere */
    }
    dbk_db *p = primary_for_read(c, &c->primary_fallbacks);
    return p->ops->run(p, sql, params, nparams, out, affected, err);
}

static dbk_rc router_script(dbk_db *db, const char *sql, int timeout_ms, dbk_error *err)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    return p->ops->script(p, sql, timeout_ms, err);
}

static dbk_rc router_pin(dbk_db *db, dbk_conn **out, dbk_error *err)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    return p->ops->pin(p, out, err);
}

static void router_unpin(dbk_db *db, dbk_conn *conn)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    p->ops->unpin(p, conn);
}

static dbk_rc router_batch(dbk_db *db, struct dbk__batch_item *items, size_t n, bool atomic)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    return p->ops->batch(p, items, n, atomic);
}

static dbk_rc router_copy_in(dbk_db *db, const char *sql, dbk__copy_fill fill, void *ctx,
                             int64_t *rows, dbk_error *err)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    return p->ops->copy_in(p, sql, fill, ctx, rows, err);
}

/* Pinned work (dbk_parallel_run's tasks pin) runs on the primary's pool. */
static int router_max_parallel(dbk_db *db)
{
    dbk_db *p = dbk_pool_db(((struct dbk_cluster *)db->self)->primary);
    return p->ops->max_parallel ? p->ops->max_parallel(p) : 1;
}

static const struct dbk__db_ops router_ops = {router_run,   router_script, router_pin,
                                              router_unpin, router_batch,  router_copy_in,
                                              router_max_parallel};

/* The primary as a read target: its pool, with each statement served
 * counted as a primary read (the replicas' wrappers count theirs), so the
 * per-target counts are in one unit. Everything else is the router's. */
static dbk_rc primary_reader_run(dbk_db *db, const char *sql, const dbk_value *params,
                                 size_t nparams, dbk_result **out, int64_t *affected,
                                 dbk_error *err)
{
    struct dbk_cluster *c = db->self;
    dbk_db *p = dbk_pool_db(c->primary);
    dbk_rc rc = p->ops->run(p, sql, params, nparams, out, affected, err);
    if (rc == DBK_OK)
        atomic_fetch_add(&c->primary_reads, 1);
    return rc;
}

static const struct dbk__db_ops primary_reader_ops = {
    primary_reader_run, router_script,  router_pin,         router_unpin,
    router_batch,       router_copy_in, router_max_parallel};

/* ---- the sampler ---- */

static void ring_push(struct dbk_cluster *c, int64_t t, uint64_t lsn)
{
    if (c->ring_len > 0) {
        size_t last = (c->ring_head + c->ring_len - 1) % RING;
        if (c->ring[last].lsn >= lsn)
            return; /* only the first time a position was seen counts */
    }
    if (c->ring_len == RING) {
        c->ring_head = (c->ring_head + 1) % RING;
        c->ring_len--;
    }
    c->ring[(c->ring_head + c->ring_len) % RING] = (struct lsn_at){t, lsn};
    c->ring_len++;
}

/* Age of the oldest primary position the replica has not replayed. */
static int64_t lag_of(const struct dbk_cluster *c, int64_t now, uint64_t replay)
{
    for (size_t k = 0; k < c->ring_len; k++) {
        const struct lsn_at *e = &c->ring[(c->ring_head + k) % RING];
        if (e->lsn > replay)
            return (now - e->t_ns) / 1000000;
    }
    return 0;
}

static void sample_replica(struct dbk_cluster *c, struct replica *r, int64_t now, bool have_primary)
{
    pthread_mutex_lock(&c->mu);
    bool wait = atomic_load(&r->state) == DBK_REPLICA_DOWN && now < r->next_probe_ns;
    pthread_mutex_unlock(&c->mu);
    if (wait)
        return;
    dbk_error e;
    dbk_rc rc = DBK_OK;
    if (!r->probe)
        rc = dbk_conn_open(r->cfg, &r->probe, &e);
    uint64_t lsn = 0;
    bool is_null = false;
    if (rc == DBK_OK)
        rc = query_lsn(dbk_conn_db(r->probe), "SELECT pg_last_wal_replay_lsn()::text", &lsn,
                       &is_null, &e);
    if (rc == DBK_OK && is_null)
        rc = DBK_EREADONLY; /* not a standby (promoted?): not a replica any more */
    pthread_mutex_lock(&c->mu);
    if (rc != DBK_OK) {
        dbk_conn_close(r->probe);
        r->probe = NULL;
        if (atomic_load(&r->state) != DBK_REPLICA_DOWN) {
            r->backoff_ms = PROBE_MIN_MS;
            atomic_store(&r->state, DBK_REPLICA_DOWN);
            dbk__log(DBK_LOG_WARN, "replica %d left the rotation: %s", r->index + 1,
                     dbk_rc_name(rc));
        } else {
            r->backoff_ms = r->backoff_ms * 2 > PROBE_MAX_MS ? PROBE_MAX_MS : r->backoff_ms * 2;
        }
        r->next_probe_ns = now_ns() + (int64_t)r->backoff_ms * 1000000;
        atomic_store(&r->lag_ms, -1);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (atomic_load(&r->state) == DBK_REPLICA_DOWN) {
        /* Back from the dead: the pool may still hold connections the
         * outage broke. The first one to fail marks the pool's idle
         * connections suspect (validated at their next checkout), so a
         * few plain statements through the pool clear them before any
         * read is routed here. */
        pthread_mutex_unlock(&c->mu);
        dbk_rc wrc = DBK_ECONN_LOST;
        for (int k = 0; k < 3 && wrc == DBK_ECONN_LOST; k++)
            wrc = dbk_db_exec(dbk_pool_db(r->pool), "SELECT 1", NULL, 0, NULL, &e);
        pthread_mutex_lock(&c->mu);
        if (wrc != DBK_OK) {
            r->backoff_ms = r->backoff_ms * 2 > PROBE_MAX_MS ? PROBE_MAX_MS : r->backoff_ms * 2;
            r->next_probe_ns = now_ns() + (int64_t)r->backoff_ms * 1000000;
            pthread_mutex_unlock(&c->mu);
            return;
        }
    }
    uint64_t prev = atomic_load(&r->replay_lsn);
    if (lsn > prev)
        atomic_store(&r->replay_lsn, lsn);
    int64_t lag = have_primary ? lag_of(c, now, lsn) : atomic_load(&r->lag_ms);
    atomic_store(&r->lag_ms, lag);
    int next = (lag < 0 || lag > c->max_lag_ms) ? DBK_REPLICA_LAGGING : DBK_REPLICA_UP;
    int old = atomic_exchange(&r->state, next);
    if (old != next && old != DBK_REPLICA_UNKNOWN)
        dbk__log(next == DBK_REPLICA_UP ? DBK_LOG_INFO : DBK_LOG_WARN,
                 "replica %d %s (lag %lld ms)", r->index + 1,
                 next == DBK_REPLICA_UP ? "joined the rotation" : "is lagging", (long long)lag);
    pthread_mutex_unlock(&c->mu);
}

static void *sampler_main(void *arg)
{
    struct dbk_cluster *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        pthread_mutex_unlock(&c->mu);
        int64_t now = now_ns();
        uint64_t plsn = 0;
        bool is_null = false;
        dbk_error e;
        bool have_primary =
            query_lsn_unobserved(dbk_pool_db(c->primary), "SELECT pg_current_wal_lsn()::text",
                                 &plsn, &is_null, &e) == DBK_OK &&
            !is_null;
        if (have_primary)
            ring_push(c, now, plsn);
        for (size_t i = 0; i < c->n; i++)
            sample_replica(c, &c->rep[i], now, have_primary);
        atomic_fetch_add(&c->samples, 1);
        pthread_mutex_lock(&c->mu);
        if (c->stop)
            break;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = until.tv_nsec + (int64_t)c->sample_ms * 1000000;
        until.tv_sec += ns / 1000000000;
        until.tv_nsec = ns % 1000000000;
        while (!c->stop && pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < c->n; i++) {
        dbk_conn_close(c->rep[i].probe);
        c->rep[i].probe = NULL;
    }
    return NULL;
}

/* ---- public ---- */

static void close_pools(struct dbk_cluster *c, int drain_ms)
{
    for (size_t i = 0; i < c->n; i++) {
        dbk_pool_close(c->rep[i].pool, drain_ms);
        dbk_config_free(c->rep[i].cfg);
    }
    dbk_pool_close(c->primary, drain_ms);
}

/* The copy of the replica list holds passwords: wiped before it goes. */
static void free_list(char *list, size_t len)
{
    if (list) {
        volatile char *v = list;
        for (size_t i = 0; i < len; i++)
            v[i] = 0;
        free(list);
    }
}

DBK__OPTS_INIT_FN(dbk_cluster_opts, DBK_CLUSTER_OPTS_VERSION)

dbk_rc dbk_cluster_open(const dbk_config *cfg, const dbk_cluster_opts *opts, dbk_cluster **out,
                        dbk_error *err)
{
    if (!cfg || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cluster_open: config and out must not be NULL");
    *out = NULL;
    /* Both structs are checked before anything opens. */
    if (opts && dbk__opts_check(opts->version, DBK_CLUSTER_OPTS_VERSION, "dbk_cluster_opts", err))
        return DBK_EMISUSE;
    if (opts && opts->pool_opts &&
        dbk__opts_check(opts->pool_opts->version, DBK_POOL_OPTS_VERSION, "dbk_pool_opts", err))
        return DBK_EMISUSE;
    if (dbk_config_engine(cfg) != DBK_ENGINE_POSTGRES)
        return dbk__err(err, DBK_ECONFIG, "replicas need PostgreSQL");
    dbk_cluster_opts o = {0};
    if (opts)
        o = *opts;
    /* Replicas from the configuration: URLs separated by the comma before
     * each "postgres" (a URL may itself hold commas: several hosts). */
    char *list = NULL;
    size_t list_len = 0;
    const char *from_cfg[DBK_CLUSTER_MAX_REPLICAS];
    if (o.nreplicas == 0 && cfg->replicas && *cfg->replicas) {
        list_len = strlen(cfg->replicas);
        list = strdup(cfg->replicas);
        if (!list)
            return dbk__err(err, DBK_ENOMEM, "out of memory opening a cluster");
        char *p = list;
        while (p) {
            char *next = p;
            while ((next = strchr(next, ',')) && strncmp(next + 1, "postgres", 8) != 0)
                next++;
            if (next)
                *next++ = '\0';
            if (o.nreplicas == DBK_CLUSTER_MAX_REPLICAS) {
                free_list(list, list_len);
                return dbk__err(err, DBK_ECONFIG,
                                "more than %d replicas in replicas "
                                "(DATABASE_REPLICA_URLS)",
                                DBK_CLUSTER_MAX_REPLICAS);
            }
            from_cfg[o.nreplicas++] = p;
            p = next;
        }
        o.replica_urls = from_cfg;
    }
    if (o.max_lag_ms == 0)
        o.max_lag_ms = cfg->replica_max_lag_ms;
    if (o.read_your_writes_wait_ms == 0)
        o.read_your_writes_wait_ms =
            cfg->read_your_writes_wait_ms > 0 ? cfg->read_your_writes_wait_ms : -1;
    if (o.nreplicas > DBK_CLUSTER_MAX_REPLICAS) {
        free_list(list, list_len);
        return dbk__err(err, DBK_ECONFIG, "%zu replicas: at most %d", o.nreplicas,
                        DBK_CLUSTER_MAX_REPLICAS);
    }
    if (o.nreplicas && !o.replica_urls) {
        free_list(list, list_len);
        return dbk__err(err, DBK_EMISUSE, "dbk_cluster_open: replica_urls is NULL");
    }
    struct dbk_cluster *c = calloc(1, sizeof *c);
    if (!c) {
        free_list(list, list_len);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a cluster");
    }
    c->max_lag_ms = o.max_lag_ms > 0 ? o.max_lag_ms : DEF_MAX_LAG_MS;
    c->ryw_wait_ms = o.read_your_writes_wait_ms < 0   ? 0
                     : o.read_your_writes_wait_ms > 0 ? o.read_your_writes_wait_ms
                                                      : DEF_RYW_WAIT_MS;
    c->sample_ms = o.sample_interval_ms > 0 ? o.sample_interval_ms : DEF_SAMPLE_MS;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);

    dbk_rc rc = dbk_pool_open(cfg, o.pool_opts, &c->primary, err);
    if (rc != DBK_OK)
        goto fail_sync;
    dbk_pool_opts limits;
    if ((rc = dbk_pool_get_opts(c->primary, &limits, err)) != DBK_OK)
        goto fail_pools;
    for (size_t i = 0; i < o.nreplicas; i++) {
        struct replica *r = &c->rep[i];
        r->c = c;
        r->index = (int)i;
        dbk_error e;
        rc = o.replica_urls[i] ? dbk_config_from_url(o.replica_urls[i], &r->cfg, &e) : DBK_ECONFIG;
        if (rc == DBK_OK && dbk_config_engine(r->cfg) != DBK_ENGINE_POSTGRES)
            rc = DBK_ECONFIG;
        if (rc != DBK_OK) {
            dbk_config_free(r->cfg);
            r->cfg = NULL;
            rc = dbk__err(err, rc == DBK_ENOMEM ? rc : DBK_ECONFIG,
                          "replica %zu: not a usable postgres:// URL", i + 1);
            dbk__err_hint(err, "replica URLs are comma-separated postgres:// URLs");
            goto fail_pools;
        }
        c->n = i + 1;
        if ((rc = dbk_pool_open(r->cfg, &limits, &r->pool, err)) != DBK_OK)
            goto fail_pools;
        r->db.ops = &rep_ops;
        r->db.self = r;
        r->db.engine = DBK_ENGINE_POSTGRES;
        r->db.kind = DBK__DB_POOL;
        atomic_store(&r->lag_ms, -1);
        atomic_store(&r->state, DBK_REPLICA_UNKNOWN);
    }
    c->router.ops = &router_ops;
    c->router.self = c;
    c->router.engine = DBK_ENGINE_POSTGRES;
    c->router.kind = DBK__DB_POOL;
    c->primary_reader = c->router;
    c->primary_reader.ops = &primary_reader_ops;
    if (pthread_create(&c->sampler, NULL, sampler_main, c) != 0) {
        rc = dbk__err(err, DBK_EINTERNAL, "cannot start the replica sampler thread");
        goto fail_pools;
    }
    c->thread_started = true;
    free_list(list, list_len);
    *out = c;
    return DBK_OK;

fail_pools:
    close_pools(c, 0);
fail_sync:
    free_list(list, list_len);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
    return rc;
}

void dbk_cluster_close(dbk_cluster *c, int drain_timeout_ms)
{
    if (!c)
        return;
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->sampler, NULL);
    }
    close_pools(c, drain_timeout_ms);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

dbk_db *dbk_cluster_db(dbk_cluster *c)
{
    return c ? dbk_pool_db(c->primary) : NULL;
}

dbk_db *dbk_cluster_read_db(dbk_cluster *c)
{
    return c ? &c->router : NULL;
}

dbk_pool *dbk_cluster_pool(dbk_cluster *c)
{
    return c ? c->primary : NULL;
}

void dbk_cluster_set_observer(dbk_cluster *c, dbk_observer_fn fn, void *ctx)
{
    if (!c)
        return;
    dbk_db_set_observer(dbk_pool_db(c->primary), fn, ctx);
    dbk_db_set_observer(&c->router, fn, ctx);
    dbk_db_set_observer(&c->primary_reader, fn, ctx);
    for (size_t i = 0; i < c->n; i++)
        dbk_db_set_observer(&c->rep[i].db, fn, ctx);
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

dbk_rc dbk_cluster_read_db_after(dbk_cluster *c, const char *token, dbk_db **out, dbk_error *err)
{
    if (!c || !out)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cluster_read_db_after: cluster and out must not be NULL");
    *out = NULL;
    uint64_t want = 0;
    if (token && *token && !dbk_token_parse(token, &want))
        return dbk__err(err, DBK_EINVALID, "malformed position token");
    struct replica *r = pick(c, want, NULL);
    if (r) {
        *out = &r->db;
        return DBK_OK;
    }
    if (!pick(c, 0, NULL)) {
        *out = primary_for_read(c, &c->primary_fallbacks);
        return DBK_OK;
    }
    /* Healthy replicas exist but none has replayed the token at the last
     * sample: ask them directly, polling with a growing pause, until one
     * has or the wait is over. */
    int64_t deadline = now_ns() + (int64_t)c->ryw_wait_ms * 1000000;
    int64_t pause = 1000000;
    for (;;) {
        for (size_t i = 0; i < c->n; i++) {
            struct replica *q = &c->rep[i];
            if (atomic_load(&q->state) != DBK_REPLICA_UP)
                continue;
            uint64_t lsn = 0;
            bool is_null = false;
            dbk_error e;
            dbk_rc rc = query_lsn(dbk_pool_db(q->pool), "SELECT pg_last_wal_replay_lsn()::text",
                                  &lsn, &is_null, &e);
            if (rc != DBK_OK || is_null)
                continue;
            uint64_t prev = atomic_load(&q->replay_lsn);
            while (lsn > prev && !atomic_compare_exchange_weak(&q->replay_lsn, &prev, lsn))
                ;
            if (lsn >= want) {
                *out = &q->db;
                return DBK_OK;
            }
        }
        int64_t left = deadline - now_ns();
        if (left <= 0)
            break;
        sleep_ns(pause < left ? pause : left);
        if (pause < 16000000)
            pause *= 2;
    }
    *out = primary_for_read(c, &c->ryw_fallbacks);
    return DBK_OK;
}

dbk_rc dbk_cluster_token(dbk_cluster *c, char *buf, size_t buflen, dbk_error *err)
{
    if (!c || !buf)
        return dbk__err(err, DBK_EMISUSE, "dbk_cluster_token: cluster and buf must not be NULL");
    uint64_t lsn = 0;
    bool is_null = false;
    dbk_rc rc = query_lsn(dbk_pool_db(c->primary), "SELECT pg_current_wal_insert_lsn()::text", &lsn,
                          &is_null, err);
    if (rc != DBK_OK)
        return rc;
    if (is_null)
        return dbk__err(err, DBK_EINTERNAL, "the primary gave no WAL position");
    int n = snprintf(buf, buflen, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
    if (n < 0 || (size_t)n >= buflen)
        return dbk__err(err, DBK_EINVALID, "token buffer of %zu bytes is too small (%d needed)",
                        buflen, DBK_TOKEN_MAX);
    return DBK_OK;
}

dbk_rc dbk_cluster_get_stats(dbk_cluster *c, dbk_cluster_stats *out, dbk_error *err)
{
    if (!c || !out)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cluster_get_stats: cluster and out must not be NULL");
    memset(out, 0, sizeof *out);
    out->nreplicas = c->n;
    for (size_t i = 0; i < c->n; i++) {
        struct replica *r = &c->rep[i];
        out->replica[i].state = (dbk_replica_state)atomic_load(&r->state);
        out->replica[i].lag_ms = atomic_load(&r->lag_ms);
        out->replica[i].replay_lsn = atomic_load(&r->replay_lsn);
        out->replica[i].reads = atomic_load(&r->reads);
        out->replica[i].in_flight = atomic_load(&r->in_flight);
    }
    out->primary_reads = atomic_load(&c->primary_reads);
    out->primary_fallbacks = atomic_load(&c->primary_fallbacks);
    out->ryw_fallbacks = atomic_load(&c->ryw_fallbacks);
    out->samples = atomic_load(&c->samples);
    return DBK_OK;
}
