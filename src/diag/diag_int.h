/*
 * Internal shape of the diagnostics hub, shared by the observer and log
 * (diag.c) and the N+1 scopes (scope.c).
 */
#ifndef DBK_DIAG_INT_H
#define DBK_DIAG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbkit/diag.h"
#include "../core/sb.h"

struct dbk_diag {
    /* configuration, fixed after dbk_diag_new() */
    int64_t slow_ns;         /* < 0: never slow */
    bool log_all;
    bool log_params;
    int sample;              /* 1 all, 0 none, -1 threshold below */
    uint64_t sample_below;   /* sampled when the draw is below this */
    uint64_t sample_seed;
    dbk_n1_mode n1_mode;
    uint32_t n1_threshold;
    int64_t n1_min_total_ns;
    const char *const *safelist;
    dbk_observer_fn chain;
    void *chain_ctx;

    /* counters, updated with relaxed atomics */
    uint64_t queries;
    uint64_t errors;
    uint64_t errors_by_code[DBK_RC_MAX + 1];
    uint64_t bucket[DBK_DIAG_NBUCKETS]; /* not cumulative */
    uint64_t sum_ns;
    uint64_t slow;
    uint64_t n_plus_one;
    uint64_t logged;
    uint64_t sample_draws;
};

#define DBK__ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define DBK__LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* Log lines and the metrics text are written with the core string builder
 * over the caller's (or a stack) buffer: dbk__sb_over, core/sb.h. */

/* Writes nanoseconds as milliseconds with three decimals ("12.345"). */
void dbk__diag_put_ms(dbk__sb *w, int64_t ns);
/* Writes s escaped for a "..." field (\\ \" \n \xHH), stopping before the
 * written length would pass `limit`; then "..." is appended. Returns true
 * when cut. */
bool dbk__diag_put_escaped(dbk__sb *w, const char *s, size_t n, size_t limit);

/* Feeds the calling thread's innermost scope of d (scope.c). */
void dbk__diag_scope_count(dbk_diag *d, const dbk_query_event *ev);
/* True when the calling thread has any open scope (cheap check). */
bool dbk__diag_scope_open(void);

#endif
