/*
 * metrics.c - what the shop reports about itself: /health, /metrics, the
 * per-request query count of the access log, and transaction retries.
 *
 * A query observer sits on the pool's executor (transactions on it inherit
 * it). It counts every statement into process-wide atomics (total, errors,
 * a duration histogram) and into a thread-local counter that the HTTP layer
 * resets at the start of a request and reads at its end: each request runs
 * on one thread from start to end, so that counter is the request's query
 * count, with no lock and no lookup. When the diagnostics hub is built in
 * it is the observer and chains to this one.
 *
 * /metrics is Prometheus text: the shop's own counters (shop_*), the pool
 * (dbk_pool_get_stats), the cache (dbk_cache_get_stats), transaction
 * retries, the replicas (dbk_cluster_get_stats: state, lag, reads per
 * target, fallbacks to the primary) and the diagnostics hub's output when
 * present. /health lists the replicas too; a replica that is down does not
 * make the shop unhealthy (its reads go to the primary).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static _Thread_local uint64_t tl_queries;

/* Upper bounds of the query duration buckets, in seconds. */
static const double qbounds[SHOP_QHIST_N] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.1,    0.5,   2.5};

uint64_t shop_thread_queries(void)
{
    return tl_queries;
}

void shop_thread_queries_reset(void)
{
    tl_queries = 0;
}

static void observe(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    tl_queries++;
    atomic_fetch_add_explicit(&shop.queries, 1, memory_order_relaxed);
    if (ev->rc != DBK_OK && ev->rc != DBK_ENOT_FOUND)
        atomic_fetch_add_explicit(&shop.query_errors, 1, memory_order_relaxed);
    int64_t ns = ev->duration_ns > 0 ? ev->duration_ns : 0;
    atomic_fetch_add_explicit(&shop.query_ns_sum, (uint64_t)ns, memory_order_relaxed);
    double s = (double)ns / 1e9;
    int b = 0;
    while (b < SHOP_QHIST_N && s > qbounds[b])
        b++;
    atomic_fetch_add_explicit(&shop.query_hist[b], 1, memory_order_relaxed);
}

void shop_metrics_attach(dbk_db *db)
{
#ifdef SHOP_HAVE_DIAG
    if (shop.diag) {
        dbk_diag_attach(shop.diag, db);
        return;
    }
#endif
    dbk_db_set_observer(db, observe, NULL);
}

void shop_metrics_attach_cluster(dbk_cluster *c)
{
#ifdef SHOP_HAVE_DIAG
    if (shop.diag) {
        dbk_cluster_set_observer(c, dbk_diag_observe, shop.diag);
        return;
    }
#endif
    dbk_cluster_set_observer(c, observe, NULL);
}

#ifdef SHOP_HAVE_DIAG
int shop_diag_open(dbk_error *err)
{
    /* The hub observes first (query log, slow statements, N+1 per request
     * scope, dbkit_* counters) and chains to the shop's own counter. The
     * slow threshold comes from SLOW_QUERY_MS (default 200 ms). */
    dbk_diag_opts o = DBK_DIAG_OPTS_INIT;
    /* 0: the hub's default (200 ms); -1: nothing is ever slow. */
    o.slow_ms = shop_env_int("SLOW_QUERY_MS", 0, -1, 3600000);
    o.n1_mode = DBK_N1_MODE_LOG;
    static const char *const safelist[] = {take_stock_sql, NULL};
    o.n1_safelist = safelist;
    o.chain = observe;
    dbk_rc rc = dbk_diag_new(&o, &shop.diag, err);
    if (rc != DBK_OK) {
        fprintf(stderr, "shop: diagnostics: %s\n", err->message);
        return -1;
    }
    return 0;
}
#endif

void shop_on_tx_retry(void *ctx, int attempt, dbk_rc rc, int delay_ms, const dbk_error *err)
{
    (void)ctx;
    (void)err;
    atomic_fetch_add(&shop.tx_retries, 1);
    if (shop.access_log)
        fprintf(stderr, "shop: transaction attempt %d failed with %s, retrying in %d ms\n",
                attempt, dbk_rc_name(rc), delay_ms);
}

/* ---- /health ---- */

static const char *replica_state_name(dbk_replica_state s)
{
    switch (s) {
    case DBK_REPLICA_UP:
        return "up";
    case DBK_REPLICA_LAGGING:
        return "lagging";
    case DBK_REPLICA_DOWN:
        return "down";
    default:
        return "unknown";
    }
}

/* [{"replica":1,"state":"up","lag_ms":3,"reads":10}, ...], or NULL
 * without replicas. lag_ms is null while unknown. */
static json_t *replicas_json(void)
{
    dbk_cluster_stats cs;
    dbk_error err;
    if (!shop.cluster || dbk_cluster_get_stats(shop.cluster, &cs, &err) != DBK_OK)
        return NULL;
    json_t *a = json_array();
    for (size_t i = 0; a && i < cs.nreplicas; i++) {
        const dbk_replica_stats *r = &cs.replica[i];
        json_array_append_new(a, json_pack("{s:I,s:s,s:o,s:I}", "replica", (json_int_t)(i + 1),
                                           "state", replica_state_name(r->state), "lag_ms",
                                           r->lag_ms >= 0 ? json_integer(r->lag_ms) : json_null(),
                                           "reads", (json_int_t)r->reads));
    }
    return a;
}

void shop_handle_health(shop_req *rq, shop_resp *rs)
{
    (void)rq;
    dbk_error err;
    int64_t one = 0;
    dbk_rc rc = dbk_db_query_int64(shop.db, "SELECT 1", NULL, 0, &one, &err);
    const char *engine = shop.engine == DBK_ENGINE_POSTGRES ? "postgres" : "sqlite";
    json_t *j;
    if (rc != DBK_OK)
        j = json_pack("{s:s,s:s,s:s,s:s}", "status", "unavailable", "database", engine, "cache",
                      shop.cache_kind, "error", dbk_rc_name(rc));
    else
        j = json_pack("{s:s,s:s,s:s}", "status", "ok", "database", engine, "cache",
                      shop.cache_kind);
    json_t *reps = replicas_json();
    if (j && reps)
        json_object_set_new(j, "replicas", reps);
    else
        json_decref(reps);
    shop_reply_json(rs, rc == DBK_OK ? 200 : 503, j);
    if (rc != DBK_OK)
        rs->status = 503;
}

/* ---- /metrics ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* The # HELP and # TYPE lines that open every metric family. */
static void metric_head(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one sample without labels. */
static void metric(sbuf *b, const char *name, const char *type, const char *help, double v)
{
    metric_head(b, name, type, help);
    sb_printf(b, "%s %.17g\n", name, v);
}

/* One cumulative bucket of histogram `name`: `cum` samples at or below
 * `le` seconds; an infinite bound is written +Inf. */
static void hist_bucket(sbuf *b, const char *name, double le, uint64_t cum)
{
    if (isinf(le))
        sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    else
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, le, (unsigned long long)cum);
}

static uint64_t ld(atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

void shop_handle_metrics(shop_req *rq, shop_resp *rs)
{
    (void)rq;
    sbuf b = {malloc(8192), 0, 8192, false};
    if (!b.p) {
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    b.p[0] = '\0';

    metric(&b, "shop_http_requests_total", "counter", "HTTP requests received.",
           (double)ld(&shop.requests));
    if (shop.access_log) {
        uint64_t lines, writes, dropped, waits, buffers;
        shop_access_log_stats(&lines, &writes, &dropped, &waits, &buffers);
        metric(&b, "shop_access_log_lines_total", "counter", "Access-log lines logged.",
               (double)lines);
        metric(&b, "shop_access_log_writes_total", "counter",
               "write() calls that carried access-log lines.", (double)writes);
        metric(&b, "shop_access_log_dropped_total", "counter",
               "Access-log lines lost to failed writes.", (double)dropped);
        metric(&b, "shop_access_log_waits_total", "counter",
               "Requests that waited for stderr: their thread's buffer was at its largest.",
               (double)waits);
        metric(&b, "shop_access_log_buffers", "gauge",
               "Per-thread access-log buffers (reused by new threads once theirs exit).",
               (double)buffers);
    }
    metric_head(&b, "shop_http_responses_total", "counter", "HTTP responses by status class.");
    for (int c = 1; c <= 5; c++)
        sb_printf(&b, "shop_http_responses_total{class=\"%dxx\"} %llu\n", c,
                  (unsigned long long)ld(&shop.responses_by_class[c]));
    metric(&b, "shop_http_in_flight", "gauge", "Requests being handled.",
           (double)atomic_load(&shop.in_flight));
    metric(&b, "shop_http_handed_off_total", "counter",
           "Requests run on a worker thread (HTTP_WORKERS), not on their epoll thread.",
           (double)shop_http_handed_off());
    metric(&b, "shop_http_coalesced_total", "counter",
           "GET /users/{id} requests answered by a lookup shared with the others of their "
           "loop turn (HTTP_COALESCE).",
           (double)shop_http_coalesced());
    metric(&b, "shop_http_coalesced_lookups_total", "counter",
           "The shared lookups that answered them.", (double)shop_http_batches());

    /* Queries, as seen by the shop's observer. */
    metric(&b, "shop_db_queries_total", "counter", "SQL statements run.",
           (double)ld(&shop.queries));
    metric(&b, "shop_db_query_errors_total", "counter", "SQL statements that failed.",
           (double)ld(&shop.query_errors));
    metric_head(&b, "shop_db_query_duration_seconds", "histogram", "SQL statement duration.");
    uint64_t cum = 0;
    for (int i = 0; i <= SHOP_QHIST_N; i++) {
        cum += ld(&shop.query_hist[i]);
        hist_bucket(&b, "shop_db_query_duration_seconds", i < SHOP_QHIST_N ? qbounds[i] : INFINITY,
                    cum);
    }
    sb_printf(&b, "shop_db_query_duration_seconds_sum %.9f\n",
              (double)ld(&shop.query_ns_sum) / 1e9);
    sb_printf(&b, "shop_db_query_duration_seconds_count %llu\n", (unsigned long long)cum);

    metric(&b, "shop_tx_retries_total", "counter",
           "Transaction attempts retried after a serialization failure, deadlock or busy "
           "database.",
           (double)ld(&shop.tx_retries));

    dbk_error err;
    dbk_pool_stats ps;
    if (dbk_pool_get_stats(shop.pool, &ps, &err) == DBK_OK) {
        metric(&b, "shop_pool_max", "gauge", "Most connections the pool opens.",
               (double)ps.max_size);
        metric(&b, "shop_pool_open", "gauge", "Open connections (idle + in use).",
               (double)ps.total);
        metric(&b, "shop_pool_idle", "gauge", "Idle connections.", (double)ps.idle);
        metric(&b, "shop_pool_in_use", "gauge", "Connections lent out.", (double)ps.in_use);
        metric(&b, "shop_pool_waiting", "gauge", "Callers waiting for a connection.",
               (double)ps.waiting);
        metric(&b, "shop_pool_acquires_total", "counter", "Successful acquires.",
               (double)ps.acquires);
        metric(&b, "shop_pool_acquire_timeouts_total", "counter", "Acquires that timed out.",
               (double)ps.acquire_timeouts);
        metric(&b, "shop_pool_connect_failures_total", "counter", "Failed connects.",
               (double)ps.connect_failures);
        metric(&b, "shop_pool_created_total", "counter", "Connections opened.",
               (double)ps.created);
        metric(&b, "shop_pool_discarded_total", "counter",
               "Connections closed because lost, broken or invalid.", (double)ps.discarded);
        metric(&b, "shop_pool_breaker_open", "gauge", "1 while the connect breaker is open.",
               ps.breaker_open ? 1.0 : 0.0);
        metric_head(&b, "shop_pool_acquire_seconds", "histogram",
                    "Time to acquire a connection.");
        uint64_t c2 = 0;
        for (int i = 0; i < DBK_POOL_LATENCY_BUCKETS; i++) {
            c2 += ps.latency_count[i];
            hist_bucket(&b, "shop_pool_acquire_seconds",
                        ps.latency_le_us[i] == INT64_MAX ? INFINITY
                                                         : (double)ps.latency_le_us[i] / 1e6,
                        c2);
        }
        sb_printf(&b, "shop_pool_acquire_seconds_count %llu\n", (unsigned long long)c2);
    }

    dbk_cluster_stats rst;
    if (shop.cluster && dbk_cluster_get_stats(shop.cluster, &rst, &err) == DBK_OK) {
        metric_head(&b, "shop_replica_up", "gauge", "1 while the replica is in the read rotation.");
        for (size_t i = 0; i < rst.nreplicas; i++)
            sb_printf(&b, "shop_replica_up{replica=\"%zu\"} %d\n", i + 1,
                      rst.replica[i].state == DBK_REPLICA_UP ? 1 : 0);
        metric_head(&b, "shop_replica_state", "gauge",
                    "Replica state: 0 not sampled yet, 1 up, 2 lagging, 3 down.");
        for (size_t i = 0; i < rst.nreplicas; i++)
            sb_printf(&b, "shop_replica_state{replica=\"%zu\"} %d\n", i + 1,
                      (int)rst.replica[i].state);
        metric_head(&b, "shop_replica_lag_seconds", "gauge",
                    "Replay lag at the last sample; -1 while unknown (down, not sampled).");
        for (size_t i = 0; i < rst.nreplicas; i++)
            sb_printf(&b, "shop_replica_lag_seconds{replica=\"%zu\"} %.3f\n", i + 1,
                      rst.replica[i].lag_ms >= 0 ? (double)rst.replica[i].lag_ms / 1000.0 : -1.0);
        metric_head(&b, "shop_db_reads_total", "counter",
                    "Read statements served, by target (replica1.., primary).");
        for (size_t i = 0; i < rst.nreplicas; i++)
            sb_printf(&b, "shop_db_reads_total{target=\"replica%zu\"} %llu\n", i + 1,
                      (unsigned long long)rst.replica[i].reads);
        sb_printf(&b, "shop_db_reads_total{target=\"primary\"} %llu\n",
                  (unsigned long long)rst.primary_reads);
        metric_head(&b, "shop_db_read_fallbacks_total", "counter",
                    "Reads sent to the primary: no replica in the rotation (no_replica), or "
                    "none had replayed the client's position in time (read_your_writes).");
        sb_printf(&b, "shop_db_read_fallbacks_total{cause=\"no_replica\"} %llu\n",
                  (unsigned long long)rst.primary_fallbacks);
        sb_printf(&b, "shop_db_read_fallbacks_total{cause=\"read_your_writes\"} %llu\n",
                  (unsigned long long)rst.ryw_fallbacks);
    }

    if (shop.cache) {
        dbk_cache_stats cs;
        if (dbk_cache_get_stats(shop.cache, &cs, &err) == DBK_OK) {
            metric(&b, "shop_cache_hits_total", "counter", "Reads served from the cache.",
                   (double)cs.hits);
            metric(&b, "shop_cache_misses_total", "counter", "Reads not in the cache.",
                   (double)cs.misses);
            metric(&b, "shop_cache_errors_total", "counter", "Cache backend calls that failed.",
                   (double)cs.errors);
            metric(&b, "shop_cache_loads_total", "counter", "Loader runs (database reads).",
                   (double)cs.loads);
            metric(&b, "shop_cache_stale_rejects_total", "counter",
                   "Loads not stored because an invalidation won.", (double)cs.stale_rejects);
            metric(&b, "shop_cache_evictions_total", "counter", "Entries evicted for space.",
                   (double)cs.evictions);
            metric(&b, "shop_cache_entries", "gauge", "Live entries (memory backend).",
                   (double)cs.entries);
            metric(&b, "shop_cache_breaker_state", "gauge",
                   "Redis breaker: 0 closed, 1 open, 2 half-open.", (double)cs.breaker);
            metric(&b, "shop_cache_breaker_opens_total", "counter", "Times the breaker opened.",
                   (double)cs.breaker_opens);
        }
    }

#ifdef SHOP_HAVE_DIAG
    if (shop.diag && !b.oom) {
        size_t need = dbk_diag_prometheus(shop.diag, NULL, 0);
        if (b.len + need + 1 > b.cap) {
            char *np = realloc(b.p, b.len + need + 1);
            if (!np)
                b.oom = true;
            else {
                b.p = np;
                b.cap = b.len + need + 1;
            }
        }
        if (!b.oom)
            b.len += dbk_diag_prometheus(shop.diag, b.p + b.len, b.cap - b.len);
    }
#endif

    if (b.oom) {
        free(b.p);
        shop_reply_error(rs, 500, "internal", "out of memory");
        return;
    }
    free(rs->body);
    rs->status = 200;
    rs->body = b.p;
    rs->len = b.len;
    rs->ctype = "text/plain; version=0.0.4";
}
