/*
 * The diagnostics hub: the observer that counts, times and logs every
 * statement of the executors it is attached to, and the counters' two
 * read-outs (a struct snapshot and Prometheus text).
 *
 * The observer sits on the hot path of every query, so its common path
 * (no scope open, nothing to log) is a handful of relaxed atomic adds on
 * the hub and two loads of the logging threshold: no lock, no allocation,
 * no clock read (the executor already measured the statement). A line is
 * only formatted when the logging hook would take it. Numbers in log lines
 * and in the Prometheus text are written from integers, so the output does
 * not depend on the process locale (a comma decimal separator would break
 * every parser downstream). Sampling uses a counter-based generator
 * (splitmix64 of seed + draw number), which needs no per-thread state and
 * makes a single-threaded run reproducible from the seed.
 *
 * The N+1 scopes live in scope.c; they are per thread and only reached
 * when the calling thread has one open.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../core/rand.h"
#include "diag_int.h"

static const int64_t bucket_ns[DBK_DIAG_NBUCKETS - 1] = {
    100000, 500000, 1000000, 5000000, 10000000, 50000000, 100000000, 500000000,
    1000000000, 5000000000};
static const char *const bucket_le[DBK_DIAG_NBUCKETS] = {
    "0.0001", "0.0005", "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"};

#define LINE_MAX_ 1023 /* what dbk__log passes on (its buffer is 1024) */

/* ---- line pieces (written with core/sb.h over a fixed buffer) ---- */

void dbk__diag_put_ms(dbk__sb *w, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    int64_t us = (ns + 500) / 1000; /* rounded to the microsecond */
    dbk__sb_printf(w, "%lld.%03lld", (long long)(us / 1000), (long long)(us % 1000));
}

static size_t escape_one(unsigned char c, char e[4])
{
    static const char hex[] = "0123456789abcdef";
    if (c == '\\' || c == '"') {
        e[0] = '\\';
        e[1] = (char)c;
        return 2;
    }
    if (c == '\n') {
        e[0] = '\\';
        e[1] = 'n';
        return 2;
    }
    if (c < 0x20 || c == 0x7f) {
        e[0] = '\\';
        e[1] = 'x';
        e[2] = hex[c >> 4];
        e[3] = hex[c & 15];
        return 4;
    }
    e[0] = (char)c;
    return 1;
}

static bool plain(unsigned char c)
{
    return c >= 0x20 && c != 0x7f && c != '\\' && c != '"';
}

bool dbk__diag_put_escaped(dbk__sb *w, const char *s, size_t n, size_t limit)
{
    char e[4];
    size_t full = 0;
    for (size_t i = 0; i < n; i++)
        full += plain((unsigned char)s[i]) ? 1 : escape_one((unsigned char)s[i], e);
    bool cut = w->len + full > limit;
    size_t stop = cut ? (limit > w->len + 3 ? limit - 3 : w->len) : (size_t)-1;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && plain((unsigned char)s[j]))
            j++;
        if (j > i) { /* a run of plain bytes in one copy */
            size_t k = j - i;
            if (cut && w->len + k > stop)
                k = stop > w->len ? stop - w->len : 0;
            dbk__sb_putn(w, s + i, k);
            if (k < j - i)
                break;
            i = j;
            continue;
        }
        size_t k = escape_one((unsigned char)s[i], e);
        if (cut && w->len + k > stop)
            break;
        dbk__sb_putn(w, e, k);
        i++;
    }
    if (cut)
        dbk__sb_puts(w, "...");
    return cut;
}

/* ---- creation ---- */

DBK__OPTS_INIT_FN(dbk_diag_opts, DBK_DIAG_OPTS_VERSION)

dbk_rc dbk_diag_new(const dbk_diag_opts *opts, dbk_diag **out, dbk_error *err)
{
    dbk_diag_opts o;
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_diag_new: out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_DIAG_OPTS_VERSION, "dbk_diag_opts", err))
        return DBK_EMISUSE;
    if (opts)
        o = *opts;
    else
        memset(&o, 0, sizeof o);
    if (o.n1_threshold < 0)
        return dbk__err(err, DBK_EINVALID, "n1_threshold must not be negative (got %d)",
                        o.n1_threshold);
    if (o.n1_min_total_us < 0)
        return dbk__err(err, DBK_EINVALID, "n1_min_total_us must not be negative");
    if (isnan(o.sample_rate))
        return dbk__err(err, DBK_EINVALID, "sample_rate must be a number");
    if (o.n1_mode != DBK_N1_MODE_DEFAULT && o.n1_mode != DBK_N1_MODE_OFF &&
        o.n1_mode != DBK_N1_MODE_ERROR && o.n1_mode != DBK_N1_MODE_LOG)
        return dbk__err(err, DBK_EINVALID, "unknown n1_mode %d", (int)o.n1_mode);

    dbk_diag *d = calloc(1, sizeof *d);
    if (!d)
        return dbk__err(err, DBK_ENOMEM, "out of memory creating a diagnostics hub");
    int64_t slow_ms = o.slow_ms == 0 ? 200 : o.slow_ms;
    d->slow_ns = slow_ms < 0 ? -1 : (slow_ms > INT64_MAX / 1000000 ? INT64_MAX : slow_ms * 1000000);
    d->log_all = o.log_all;
    d->log_params = o.log_params;
    double rate = o.sample_rate == 0 ? 1.0 : o.sample_rate;
    if (rate >= 1.0) {
        d->sample = 1;
    } else if (rate < 0) {
        d->sample = 0;
    } else {
        d->sample = -1;
        d->sample_below = (uint64_t)(rate * 18446744073709551616.0);
    }
    d->sample_seed = o.sample_seed ? o.sample_seed : UINT64_C(0x5eed0fd1a9);
    d->n1_mode = o.n1_mode;
    d->n1_threshold = o.n1_threshold == 0 ? 5u : (uint32_t)o.n1_threshold;
    d->n1_min_total_ns =
        o.n1_min_total_us > INT64_MAX / 1000 ? INT64_MAX : o.n1_min_total_us * 1000;
    d->safelist = o.n1_safelist;
    d->chain = o.chain;
    d->chain_ctx = o.chain_ctx;
    *out = d;
    return DBK_OK;
}

void dbk_diag_free(dbk_diag *d)
{
    free(d);
}

void dbk_diag_attach(dbk_diag *d, dbk_db *db)
{
    if (d && db)
        dbk_db_set_observer(db, dbk_diag_observe, d);
}

/* ---- the query log ---- */

static bool sampled(dbk_diag *d)
{
    if (d->sample >= 0)
        return d->sample == 1;
    uint64_t k = DBK__ADD(&d->sample_draws, 1);
    return dbk__mix64(d->sample_seed + k * UINT64_C(0x9e3779b97f4a7c15)) < d->sample_below;
}

static void put_value(dbk__sb *w, const dbk_value *v, size_t limit)
{
    switch (v->type) {
    case DBK_TYPE_NULL:
        dbk__sb_puts(w, "NULL");
        break;
    case DBK_TYPE_BOOL:
        dbk__sb_puts(w, v->u.b ? "true" : "false");
        break;
    case DBK_TYPE_INT64:
        dbk__sb_printf(w, "%lld", (long long)v->u.i);
        break;
    case DBK_TYPE_DOUBLE:
        dbk__sb_printf(w, "%.17g", v->u.d);
        break;
    case DBK_TYPE_TIMESTAMP: {
        char ts[40];
        if (dbk_timestamp_format(v->u.i, ts, sizeof ts) == DBK_OK)
            dbk__sb_printf(w, "\"%s\"", ts);
        else
            dbk__sb_printf(w, "%lld", (long long)v->u.i);
        break;
    }
    case DBK_TYPE_BLOB:
        dbk__sb_printf(w, "<blob %zu bytes>", v->u.bytes.len);
        break;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON:
    default:
        dbk__sb_puts(w, "\"");
        dbk__diag_put_escaped(w, v->u.bytes.ptr ? (const char *)v->u.bytes.ptr : "",
                        v->u.bytes.ptr ? v->u.bytes.len : 0, limit > 1 ? limit - 1 : 0);
        dbk__sb_puts(w, "\"");
        break;
    }
}

static void log_statement(dbk_diag *d, const dbk_query_event *ev, bool slow)
{
    char line[LINE_MAX_ + 1];
    dbk__sb w = dbk__sb_over(line, sizeof line); /* LINE_MAX_ bytes of text */
    dbk__sb_puts(&w, slow ? "slow query duration_ms=" : "query duration_ms=");
    dbk__diag_put_ms(&w, ev->duration_ns);
    dbk__sb_printf(&w, " rows=%lld rc=%s sql=\"", (long long)ev->rows, dbk_rc_name(ev->rc));
    bool params = d->log_params && ev->nparams > 0 && ev->params;
    /* the SQL may use the whole line, less what the parameters need first */
    size_t limit = LINE_MAX_ - 1 - (params ? 200 : 0);
    const char *sql = ev->sql ? ev->sql : "";
    dbk__diag_put_escaped(&w, sql, strlen(sql), limit);
    dbk__sb_puts(&w, "\"");
    if (params) {
        dbk__sb_puts(&w, " params=[");
        for (size_t i = 0; i < ev->nparams; i++) {
            if (w.len + 8 > LINE_MAX_) {
                dbk__sb_puts(&w, "...");
                break;
            }
            if (i)
                dbk__sb_puts(&w, ", ");
            put_value(&w, &ev->params[i], LINE_MAX_ - 5);
        }
        if (w.len + 1 > LINE_MAX_) /* keep the closing bracket */
            w.len = LINE_MAX_ - 1;
        dbk__sb_puts(&w, "]");
    }
    DBK__ADD(&d->logged, 1);
    dbk__log(slow ? DBK_LOG_WARN : DBK_LOG_DEBUG, "%s", line);
}

/* ---- the observer ---- */

void dbk_diag_observe(void *ctx, const dbk_query_event *ev)
{
    dbk_diag *d = ctx;
    if (!d || !ev)
        return;
    int64_t ns = ev->duration_ns < 0 ? 0 : ev->duration_ns;
    DBK__ADD(&d->queries, 1);
    if (ev->rc != DBK_OK) {
        DBK__ADD(&d->errors, 1);
        if ((unsigned)ev->rc <= DBK_RC_MAX)
            DBK__ADD(&d->errors_by_code[ev->rc], 1);
    }
    int b = 0;
    while (b < DBK_DIAG_NBUCKETS - 1 && ns > bucket_ns[b])
        b++;
    DBK__ADD(&d->bucket[b], 1);
    DBK__ADD(&d->sum_ns, (uint64_t)ns);

    if (d->slow_ns >= 0 && ns >= d->slow_ns) {
        DBK__ADD(&d->slow, 1);
        if (dbk__log_enabled(DBK_LOG_WARN))
            log_statement(d, ev, true);
    } else if (d->log_all && dbk__log_enabled(DBK_LOG_DEBUG) && sampled(d)) {
        log_statement(d, ev, false);
    }

    if (d->n1_mode != DBK_N1_MODE_OFF && dbk__diag_scope_open())
        dbk__diag_scope_count(d, ev);

    if (d->chain)
        d->chain(d->chain_ctx, ev);
}

/* ---- read-outs ---- */

/* The public snapshot's array has a fixed capacity that must hold every
 * code this version knows. */
_Static_assert(DBK_DIAG_MAX_CODES > DBK_RC_MAX, "DBK_DIAG_MAX_CODES must exceed DBK_RC_MAX");

/* errors_by_code is deprecated for readers outside the library; these two
 * functions are its only readers and writers here. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
uint64_t dbk_diag_stats_errors(const dbk_diag_stats *s, dbk_rc rc)
{
    if (!s || (int)rc <= 0 || (int)rc > DBK_RC_MAX)
        return 0;
    return s->errors_by_code[rc];
}

void dbk_diag_get_stats(dbk_diag *d, dbk_diag_stats *out)
{
    if (!d || !out)
        return;
    memset(out, 0, sizeof *out);
    out->queries = DBK__LOAD(&d->queries);
    out->errors = DBK__LOAD(&d->errors);
    for (int i = 0; i <= DBK_RC_MAX; i++)
        out->errors_by_code[i] = DBK__LOAD(&d->errors_by_code[i]);
    uint64_t cum = 0;
    for (int i = 0; i < DBK_DIAG_NBUCKETS; i++) {
        cum += DBK__LOAD(&d->bucket[i]);
        out->buckets[i] = cum;
        out->bucket_le_ms[i] = i < DBK_DIAG_NBUCKETS - 1 ? (double)bucket_ns[i] / 1e6 : INFINITY;
    }
    out->duration_count = cum;
    out->duration_sum_ns = DBK__LOAD(&d->sum_ns);
    out->slow = DBK__LOAD(&d->slow);
    out->n_plus_one = DBK__LOAD(&d->n_plus_one);
    out->logged = DBK__LOAD(&d->logged);
}
#pragma GCC diagnostic pop

static void put_seconds(dbk__sb *w, uint64_t ns)
{
    dbk__sb_printf(w, "%llu.%09llu", (unsigned long long)(ns / 1000000000u),
                   (unsigned long long)(ns % 1000000000u));
}

size_t dbk_diag_prometheus(dbk_diag *d, char *buf, size_t len)
{
    dbk__sb w = dbk__sb_over(buf, len);
    dbk_diag_stats s;
    if (!d) {
        if (buf && len)
            buf[0] = '\0';
        return 0;
    }
    dbk_diag_get_stats(d, &s);

    dbk__sb_puts(&w, "# HELP dbkit_queries_total Statements run through observed executors.\n"
                     "# TYPE dbkit_queries_total counter\n");
    dbk__sb_printf(&w, "dbkit_queries_total %llu\n", (unsigned long long)s.queries);

    dbk__sb_puts(&w, "# HELP dbkit_query_errors_total Failed statements by dbkit result code.\n"
                     "# TYPE dbkit_query_errors_total counter\n");
    for (int i = 1; i <= DBK_RC_MAX; i++)
        if (dbk_diag_stats_errors(&s, (dbk_rc)i))
            dbk__sb_printf(&w, "dbkit_query_errors_total{code=\"%s\"} %llu\n",
                           dbk_rc_name((dbk_rc)i),
                           (unsigned long long)dbk_diag_stats_errors(&s, (dbk_rc)i));

    dbk__sb_puts(&w, "# HELP dbkit_query_duration_seconds Statement duration.\n"
                     "# TYPE dbkit_query_duration_seconds histogram\n");
    for (int i = 0; i < DBK_DIAG_NBUCKETS; i++)
        dbk__sb_printf(&w, "dbkit_query_duration_seconds_bucket{le=\"%s\"} %llu\n", bucket_le[i],
                       (unsigned long long)s.buckets[i]);
    dbk__sb_puts(&w, "dbkit_query_duration_seconds_sum ");
    put_seconds(&w, s.duration_sum_ns);
    dbk__sb_printf(&w, "\ndbkit_query_duration_seconds_count %llu\n",
                   (unsigned long long)s.duration_count);

    dbk__sb_puts(&w, "# HELP dbkit_slow_queries_total Statements at or over the slow threshold.\n"
                     "# TYPE dbkit_slow_queries_total counter\n");
    dbk__sb_printf(&w, "dbkit_slow_queries_total %llu\n", (unsigned long long)s.slow);

    dbk__sb_puts(&w, "# HELP dbkit_n_plus_one_total N+1 query patterns reported.\n"
                     "# TYPE dbkit_n_plus_one_total counter\n");
    dbk__sb_printf(&w, "dbkit_n_plus_one_total %llu\n", (unsigned long long)s.n_plus_one);

    return w.len;
}

/* The deprecated name (one release), a wrapper so it stays in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
void dbk_diag_stats_get(dbk_diag *d, dbk_diag_stats *out)
{
    dbk_diag_get_stats(d, out);
}
#pragma GCC diagnostic pop
