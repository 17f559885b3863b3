/*
 * dbkit/diag.h - diagnostics: query log, slow queries, N+1 detection, metrics.
 *
 * A dbk_diag is a hub that watches the statements of one or more executors
 * through their observer (db.h) and turns what it sees into three things:
 *
 *   1. A query log through the logging hook (error.h, dbk_set_log). Every
 *      statement at least `slow_ms` slow is logged at DBK_LOG_WARN; with
 *      `log_all` every other statement is logged at DBK_LOG_DEBUG, sampled by
 *      `sample_rate`. One line per statement, in this exact format (other
 *      tools parse it, e.g. `dbkit advise --log FILE`):
 *
 *        query duration_ms=<%.3f> rows=<n> rc=<DBK_... name> sql="<text>"
 *        slow query duration_ms=<%.3f> rows=<n> rc=<DBK_... name> sql="<text>"
 *
 *      followed, only when `log_params` is set, by ` params=[v1, v2, ...]`
 *      (text values quoted and escaped like the SQL, blobs as <blob N bytes>,
 *      NULL as NULL). Inside sql="..." a backslash is written \\, a double
 *      quote \", a newline \n and any other control byte \xHH (two lower-case
 *      hex digits); bytes >= 0x80 (UTF-8) are copied as they are. A line is
 *      at most 1023 bytes (the hook's limit): an SQL text that does not fit is
 *      cut and ends in `...` inside the quotes, parameters that do not fit end
 *      in `...]`. rows is the number of rows returned, or affected for
 *      writes (0 when the statement failed).
 *      Parameter values never appear unless `log_params` is set: they may be
 *      passwords, tokens or personal data.
 *
 *   2. An N+1 detector. Within a scope (dbk_diag_scope_begin/_end, one per
 *      request, job or test), the same statement text run more than
 *      `n1_threshold` times, taking more than `n1_min_total_us` in total, is
 *      an N+1 pattern: one statement per row of an earlier result where one
 *      statement for all of them would do. It is reported once per statement
 *      per scope when the scope ends, in a line
 *
 *        n+1 count=<n> total_ms=<%.3f> scope="<name>" at=<file>:<line> (<func>) [frame=<...>] sql="<text>" hint="<fix>"
 *
 *      logged at DBK_LOG_WARN (modes LOG and ERROR), and in mode ERROR
 *      dbk_diag_scope_end() also returns DBK_EN_PLUS_ONE with the report in
 *      the dbk_error. `at=` is where the scope began. ` frame=` is present
 *      only on glibc with libdbkit as a shared library: the first stack
 *      frame outside libdbkit when the statement first crossed the
 *      threshold, as "symbol+0xoff (object)" or "object+0xoff" (backtrace()
 *      + dladdr(); a static link cannot tell the library from the program).
 *      Transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
 *      RELEASE, SET, START, END, ABORT) are never counted.
 *
 *   3. Counters, read with dbk_diag_get_stats() or as Prometheus text with
 *      dbk_diag_prometheus().
 *
 * Thread safety: a dbk_diag may observe any number of executors used from
 * any number of threads at once. The counters are atomics; scopes are per
 * thread (thread-local), so scopes on two threads never see each other's
 * statements; a scope must end on the thread that began it (one left open
 * when its thread exits is leaked). dbk_diag_new/_free are not thread-safe
 * against use of the same hub: free it only after every executor it
 * observes stopped using it and every scope of it ended.
 */
#ifndef DBKIT_DIAG_H
#define DBKIT_DIAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "error.h"
#include "tx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_diag dbk_diag;

/* What the N+1 detector does with a pattern it finds. 0 is the default, as
 * in every option struct: today that is LOG, which can also be asked for
 * by name. The DBK_N1_OFF / _LOG / _ERROR spellings are the names before
 * 0.2, deprecated (removed in 0.3), with their old values: DBK_N1_LOG is 0,
 * the default, which logs. */
typedef enum dbk_n1_mode {
    DBK_N1_MODE_DEFAULT = 0, /* the default: LOG */
    DBK_N1_MODE_OFF = 1,     /* scopes are kept but nothing is counted or reported */
    DBK_N1_MODE_ERROR = 2,   /* the line, and dbk_diag_scope_end() returns DBK_EN_PLUS_ONE */
    DBK_N1_MODE_LOG = 3,     /* a "n+1 ..." line at WARN when the scope ends */
    DBK_N1_OFF DBK_DEPRECATED("use DBK_N1_MODE_OFF") = 1,
    DBK_N1_LOG DBK_DEPRECATED("use DBK_N1_MODE_LOG (or DBK_N1_MODE_DEFAULT, 0)") = 0,
    DBK_N1_ERROR DBK_DEPRECATED("use DBK_N1_MODE_ERROR") = 2
} dbk_n1_mode;

/*
 * Options. Start from DBK_DIAG_OPTS_INIT and set what you need; zero always
 * means the documented default (a zero-initialized struct works too: its
 * version 0 reads as 1).
 */
typedef struct dbk_diag_opts {
    /* The struct's version: DBK_DIAG_OPTS_VERSION, set by DBK_DIAG_OPTS_INIT or
     * dbk_diag_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* Statements at least this slow are logged at WARN as "slow query" and
     * counted in dbkit_slow_queries_total. 0: the default of 200 ms;
     * negative: no statement is ever slow. */
    int64_t slow_ms;
    /* Log every other statement at DEBUG ("query ..."), sampled. */
    bool log_all;
    /* With log_all: the fraction of non-slow statements logged. 0: the
     * default of 1.0 (all); negative: none; 1.0 or more: all; in between a
     * pseudo-random choice per statement (see sample_seed). Slow statements
     * are always logged. */
    double sample_rate;
    /* Append the parameter values to each log line (" params=[...]").
     * Default false: values may be secrets. */
    bool log_params;
    /* N+1 detector mode; zero is DBK_N1_MODE_DEFAULT (LOG). */
    dbk_n1_mode n1_mode;
    /* A statement is an N+1 when it runs MORE than this many times in one
     * scope. 0: the default of 5; exactly n1_threshold runs is not reported,
     * n1_threshold + 1 is. */
    int n1_threshold;
    /* ... and its runs in the scope took MORE than this many microseconds in
     * total. 0 (the default): the count alone decides. Raise it (e.g. 1000)
     * to report only loops that cost real time. */
    int64_t n1_min_total_us;
    /* NULL-terminated list of SQL texts never reported; an entry matches a
     * statement it is equal to or a prefix of. Borrowed: must outlive the
     * hub. May be NULL. */
    const char *const *n1_safelist;
    /* Optional next observer, called after the hub with the same event
     * (e.g. a tracing exporter). */
    dbk_observer_fn chain;
    void *chain_ctx;
    /* Seed of the sampling generator. 0: a fixed default seed. The choice
     * for the k-th statement up for sampling (not slow, log_all set, DEBUG
     * lines wanted by the hook) depends only on the seed and k, so a
     * single-threaded run is reproducible. */
    uint64_t sample_seed;
} dbk_diag_opts;

/* The version of dbk_diag_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_DIAG_OPTS_VERSION 1
#define DBK_DIAG_OPTS_INIT {.version = DBK_DIAG_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_DIAG_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_DIAG_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_diag_opts_init(dbk_diag_opts *opts, unsigned int version, dbk_error *err);

/* Creates a hub. `opts` may be NULL (all defaults) and is copied; the
 * safelist array it points to is borrowed. DBK_EINVALID for a negative
 * n1_threshold or n1_min_total_us, a NaN sample_rate or an unknown mode;
 * DBK_ENOMEM. *out is owned by the caller: free with dbk_diag_free(). */
DBK_API dbk_rc dbk_diag_new(const dbk_diag_opts *opts, dbk_diag **out, dbk_error *err);

/* Frees the hub. Every executor observed by it must have stopped using it
 * (remove the observer or close the executor first). Accepts NULL. */
DBK_API void dbk_diag_free(dbk_diag *d);

/* Installs the hub as the observer of `db`:
 * dbk_db_set_observer(db, dbk_diag_observe, d). Transactions begun on db
 * later inherit it. Same thread-safety rule as dbk_db_set_observer(): call
 * before sharing the executor. An observer already set on db is replaced;
 * use opts.chain to keep it. NULL arguments do nothing. */
DBK_API void dbk_diag_attach(dbk_diag *d, dbk_db *db);

/* The observer function itself (ctx is the dbk_diag). Counts the event,
 * logs it as configured, feeds the calling thread's innermost scope of this
 * hub, then calls opts.chain. Thread-safe; no lock is taken unless a line is
 * logged (the logging hook's) or a scope meets a new statement (malloc). */
DBK_API void dbk_diag_observe(void *d, const dbk_query_event *ev);

/*
 * Opens an N+1 scope on the calling thread, named `name` (borrowed until
 * the scope ends; may be NULL) and recording the call site (file, line,
 * func; borrowed, normally string literals). Use the macro, which fills in
 * the call site.
 *
 * Nesting: scopes nest per thread. Each statement is counted in the
 * innermost open scope of this hub; when an inner scope ends, its counts are
 * added to the enclosing scope, so a loop that opens an inner scope per
 * iteration is still caught by the outer one. A statement reported by an
 * inner scope is not reported again by the outer ones.
 *
 * Never fails: if memory runs out the scope is opened without a statement
 * table and reports nothing (scope_end still pairs with it).
 */
DBK_API void dbk_diag_scope_begin_at(dbk_diag *d, const char *name, const char *file, int line,
                                     const char *func);
#define dbk_diag_scope_begin(d, name) \
    dbk_diag_scope_begin_at((d), (name), __FILE__, __LINE__, __func__)

/*
 * Ends the calling thread's innermost scope of hub `d`, reporting each
 * statement that crossed the thresholds (see the top of this header) at
 * DBK_LOG_WARN in modes LOG and ERROR. Returns DBK_OK, or in mode ERROR
 * DBK_EN_PLUS_ONE when something was reported, with err->message naming
 * the statement, its count and total time, the scope and its call site
 * (the first statement found; "and N more" when several) and err->hint
 * naming the fix (the repository include). DBK_EMISUSE when the thread has
 * no open scope of this hub.
 */
DBK_API dbk_rc dbk_diag_scope_end(dbk_diag *d, dbk_error *err);

/*
 * A transaction as an N+1 scope: dbk_tx_run(db, fn, ctx, opts, err)
 * where each attempt of fn runs inside its own scope named `name`
 * (borrowed; NULL: "transaction"), begun at this call's site. A retried
 * attempt starts a fresh scope, so counts never add up across attempts.
 * In mode ERROR an N+1 inside fn makes the attempt return DBK_EN_PLUS_ONE
 * (when fn itself returned DBK_OK), which rolls the transaction back and is
 * returned with the report in err; fn's own errors win over the report.
 * Returns what dbk_tx_run() returns. `db` must be observed by `d`
 * (dbk_diag_attach) for anything to be counted. Call it through the
 * dbk_diag_tx_run() macro, which passes the call site.
 */
DBK_API dbk_rc dbk_diag_tx_run_at(dbk_diag *d, const char *name, dbk_db *db, dbk_tx_fn fn,
                                  void *ctx, const dbk_tx_opts *opts, const char *file, int line,
                                  const char *func, dbk_error *err);
#define dbk_diag_tx_run(d, name, db, fn, ctx, opts, err)                                   \
    dbk_diag_tx_run_at((d), (name), (db), (fn), (ctx), (opts), __FILE__, __LINE__, __func__, \
                       (err))

/* Deprecated in 0.2 (removed in 0.3): dbk_diag_tx_run_at() with `err`
 * before the call site, and its macro (use dbk_diag_tx_run). */
DBK_API DBK_DEPRECATED("use dbk_diag_tx_run_at (err last) or the dbk_diag_tx_run macro")
dbk_rc dbk_diag_transaction_at(dbk_diag *d, const char *name, dbk_db *db, dbk_tx_fn fn, void *ctx,
                               const dbk_tx_opts *opts, dbk_error *err, const char *file,
                               int line, const char *func);
#define dbk_diag_transaction(d, name, db, fn, ctx, opts, err)                                 \
    dbk_diag_transaction_at((d), (name), (db), (fn), (ctx), (opts), (err), __FILE__, __LINE__, \
                            __func__)

/* Upper bounds of the duration histogram in milliseconds, and the number of
 * buckets including the final +Inf one. */
#define DBK_DIAG_NBUCKETS 11
#define DBK_DIAG_BUCKETS_MS {0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000, 5000}

/* The capacity of dbk_diag_stats.errors_by_code: a fixed number, so the
 * struct's size and layout do not move when result codes are added (the
 * library checks at build time that it stays above DBK_RC_MAX). */
#define DBK_DIAG_MAX_CODES 64

/*
 * A snapshot of the hub's counters since dbk_diag_new(). Each counter is
 * read atomically; the snapshot as a whole is not (statements finishing
 * during the read may be in some counters and not yet in others), except
 * that `buckets`, `duration_count` and `duration_sum_ns` are always
 * consistent with each other in the sense that buckets[DBK_DIAG_NBUCKETS-1]
 * == duration_count.
 */
typedef struct dbk_diag_stats {
    uint64_t queries;                         /* statements observed */
    uint64_t errors;                          /* of which failed (rc != DBK_OK) */
    /* Failures per dbk_rc, indexed by code. Deprecated since 0.2 and
     * leaving the struct before 1.0: read them with dbk_diag_stats_errors(). */
    uint64_t errors_by_code[DBK_DIAG_MAX_CODES] DBK_DEPRECATED(
        "read it with dbk_diag_stats_errors(&stats, rc)");
    double bucket_le_ms[DBK_DIAG_NBUCKETS];   /* upper bounds; the last is +INFINITY */
    uint64_t buckets[DBK_DIAG_NBUCKETS];      /* CUMULATIVE: statements <= bucket_le_ms[i] */
    uint64_t duration_count;                  /* == buckets[DBK_DIAG_NBUCKETS - 1] */
    uint64_t duration_sum_ns;                 /* total time of all statements */
    uint64_t slow;                            /* statements at least slow_ms slow */
    uint64_t n_plus_one;                      /* N+1 reports (one per statement per scope) */
    uint64_t logged;                          /* query log lines handed to the hook */
} dbk_diag_stats;

/* Fills *out with a snapshot of the counters. Thread-safe. NULL arguments
 * do nothing. */
DBK_API void dbk_diag_get_stats(dbk_diag *d, dbk_diag_stats *out);

/* Deprecated in 0.2 (removed in 0.3): the old name of dbk_diag_get_stats(). */
DBK_API DBK_DEPRECATED("use dbk_diag_get_stats")
void dbk_diag_stats_get(dbk_diag *d, dbk_diag_stats *out);

/* How many observed statements failed with `rc` in the snapshot `s`; 0 for
 * DBK_OK, a code this library version does not know, or a NULL `s`. Use it
 * instead of indexing errors_by_code: codes only grow, and the accessor
 * keeps working when they do. */
DBK_API uint64_t dbk_diag_stats_errors(const dbk_diag_stats *s, dbk_rc rc);

/*
 * Writes the counters as Prometheus text exposition (format 0.0.4) into
 * buf: dbkit_queries_total, dbkit_query_errors_total{code="DBK_..."} (one
 * line per code seen at least once), dbkit_query_duration_seconds
 * (histogram: _bucket{le="..."} cumulative, le="+Inf", _sum, _count),
 * dbkit_slow_queries_total and dbkit_n_plus_one_total, each with # HELP
 * and # TYPE lines. Numbers are formatted without the C locale's help, so
 * the output is the same whatever LC_NUMERIC says.
 *
 * Returns the length of the full text excluding the NUL, like snprintf:
 * when it is >= len the text was cut; buf is always NUL-terminated when
 * len > 0. buf may be NULL with len 0 to ask for the size. Thread-safe.
 */
DBK_API size_t dbk_diag_prometheus(dbk_diag *d, char *buf, size_t len);

/* ---- reading the log back ---- */

/* One query-log line taken apart by dbk_diag_parse_line(). */
typedef struct dbk_diag_line {
    bool slow;          /* a "slow query ..." line */
    double duration_ms;
    int64_t rows;
    dbk_rc rc;
    const char *sql;    /* unescaped and NUL-terminated, in the caller's buffer */
    size_t sql_len;     /* bytes of sql (it may hold NUL bytes, logged as \x00) */
    bool truncated;     /* sql ends in "...": cut by the writer (or really ends so) */
} dbk_diag_line;

/* Finds the query-log record in `line` ("query duration_ms=..." or "slow
 * query duration_ms=...", at the start or after a space, so a prefix the
 * logging hook adds is fine) and takes it apart, unescaping the SQL into
 * buf. buflen >= strlen(line) + 1 always suffices. DBK_OK; DBK_EINVALID
 * when there is no record or it does not follow the format (unknown rc
 * name, an escape the writer never produces, no closing quote);
 * DBK_EMISUSE for NULL arguments or a smaller buffer. Thread-safe. */
DBK_API dbk_rc dbk_diag_parse_line(const char *line, dbk_diag_line *out, char *buf,
                                   size_t buflen);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_DIAG_H */
