/*
 * dbkit/lint.h - migrations that cannot take production down.
 *
 * The linter reads migration files (see migrate.h for their format) and
 * reports statements that are correct SQL but dangerous on a live
 * database: an ACCESS EXCLUSIVE lock held for a table rewrite or a full
 * scan, a lock request queued without a lock_timeout (every query behind it
 * waits too), an index built without CONCURRENTLY, a backfill in one
 * statement. PostgreSQL sections are parsed by PostgreSQL's own parser
 * (libpg_query); SQLite sections get a short list of their own.
 *
 * Rules know what dbkit does when it runs a file, so statements that are
 * safe in context are not reported:
 *   - a table created earlier in the same file (or, with
 *     DBK_LINT_SCOPE_RUN, by an earlier file of the same set) is new and
 *     empty: indexes, constraints and rewrites on it are free;
 *   - each up section runs in one transaction unless its directive says
 *     transaction:false, so CONCURRENTLY is an error in the first case and
 *     a VALIDATE right after its NOT VALID in the same transaction gains
 *     nothing;
 *   - `dbkit migrate up` sets lock_timeout itself (opts.lock_timeout_ms);
 *     SET / SET LOCAL / RESET lock_timeout in the file change what is in
 *     effect for the statements after them.
 * Only up sections are linted: a down section exists to undo.
 *
 * A finding is suppressed by a comment line directly above the statement:
 *     -- lint:ignore RULE why this is safe here
 * The reason is required; a directive without one, or naming an unknown
 * rule, is itself a finding (rule "lint-directive") and suppresses nothing.
 *
 * Thread safety: every call is reentrant; a report belongs to its caller.
 */
#ifndef DBKIT_LINT_H
#define DBKIT_LINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "migrate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How bad a finding is. DBK_LINT_WARNING / DBK_LINT_ERROR are the names
 * before 0.2, deprecated (removed in 0.3): the same values. */
typedef enum dbk_lint_severity {
    DBK_LINT_SEVERITY_WARNING = 1, /* dangerous unless the code is ready (expand/contract) */
    DBK_LINT_SEVERITY_ERROR = 2,   /* locks or rewrites a live table, or fails at run time */
    DBK_LINT_WARNING DBK_DEPRECATED("use DBK_LINT_SEVERITY_WARNING") = 1,
    DBK_LINT_ERROR DBK_DEPRECATED("use DBK_LINT_SEVERITY_ERROR") = 2
} dbk_lint_severity;

/* One rule. Every string is static. */
typedef struct dbk_lint_rule {
    const char *id;             /* "index-not-concurrent" */
    dbk_engine engine;          /* the sections it applies to */
    dbk_lint_severity severity;
    const char *why;            /* why the statement is dangerous */
    const char *fix;            /* the safe rewrite */
} dbk_lint_rule;

/* One finding. `rule` points into the static rule table. */
typedef struct dbk_lint_finding {
    const dbk_lint_rule *rule;
    char file[256];   /* the file as messages show it */
    int64_t version;  /* migration version, 0 when the name has none */
    int line;         /* 1-based line of the statement (or directive) in the file */
    dbk_engine engine; /* the engine whose section it was found in */
    char table[128];  /* the table concerned, "" when none */
    char message[384]; /* what this statement does, in context */
    char statement[160]; /* the start of the statement, on one line */
} dbk_lint_finding;

/* Findings in file order, then line order. Owned by the caller: free with
 * dbk_lint_report_free(). */
typedef struct dbk_lint_report {
    dbk_lint_finding *items;
    size_t count;
    size_t ignored;    /* findings suppressed by a lint:ignore directive */
    size_t files;      /* files linted */
    size_t statements; /* statements looked at */
} dbk_lint_report;

/* Which earlier CREATE TABLEs make a table count as new. */
typedef enum dbk_lint_scope {
    DBK_LINT_SCOPE_FILE = 0, /* only those of the same file: each file is
                                linted as if it ran alone on a populated
                                database (the strict default) */
    DBK_LINT_SCOPE_RUN = 1   /* also those of the earlier files linted in the
                                same call: they are pending and `up` applies
                                them first, in the same run */
} dbk_lint_scope;

/* Options; DBK_LINT_OPTS_INIT (or a zero-initialized struct) means every default. */
typedef struct dbk_lint_opts {
    /* The struct's version: DBK_LINT_OPTS_VERSION, set by DBK_LINT_OPTS_INIT or
     * dbk_lint_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* Sections of this engine (and portable sections) only; 0: both. */
    dbk_engine engine;
    /* The lock_timeout `dbkit migrate up` runs each migration with: 0
     * means dbk_migrate_up()'s default (5000); negative means none is set.
     * dbk_migrate_opts_from_env() reads DB_MIGRATION_LOCK_TIMEOUT_MS into
     * dbk_migrate_opts.statement_lock_timeout_ms, which can be passed
     * here. */
    int lock_timeout_ms;
    dbk_lint_scope scope; /* 0: DBK_LINT_SCOPE_FILE, the default */
    /* Lint only these migration versions (NULL: every file). */
    const int64_t *versions;
    size_t nversions;
} dbk_lint_opts;

/* The version of dbk_lint_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_LINT_OPTS_VERSION 1
#define DBK_LINT_OPTS_INIT {.version = DBK_LINT_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_LINT_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_LINT_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_lint_opts_init(dbk_lint_opts *opts, unsigned int version, dbk_error *err);

/* The rule table: *n gets its length. Static, never NULL. */
DBK_API const dbk_lint_rule *dbk_lint_rules(size_t *n);

/* The rule with that id, or NULL. */
DBK_API const dbk_lint_rule *dbk_lint_rule_find(const char *id);

/* Lints a set of migration files (directory or in-memory, as for
 * dbk_migrate_up) in version order. On DBK_OK *out holds the report, which
 * may have findings: the return code says whether linting could be done,
 * not whether the files are safe. Malformed files (see migrate.h) are
 * DBK_EINVALID naming the file; DBK_ENOMEM. */
DBK_API dbk_rc dbk_lint_source(const dbk_migrate_source *src, const dbk_lint_opts *opts,
                               dbk_lint_report **out, dbk_error *err);

/* Lints one migration file held in memory. `filename` names it in
 * findings; the version is read from its base name
 * ("db/migrations/20240101120000_users.sql"; a name without a version is
 * accepted, the version is then 0). `len` 0 means strlen(contents).
 * Otherwise as dbk_lint_source(). */
DBK_API dbk_rc dbk_lint_file(const char *filename, const char *contents, size_t len,
                             const dbk_lint_opts *opts, dbk_lint_report **out, dbk_error *err);

/* Frees a report. Accepts NULL. */
DBK_API void dbk_lint_report_free(dbk_lint_report *r);

/* ---- trace: what a migration really locks and rewrites (PostgreSQL) ---- */

/* One statement of a traced section. */
typedef struct dbk_trace_step {
    int line;              /* 1-based line in the file */
    char statement[160];   /* the start of the statement, on one line */
    bool traced;           /* false: its section runs outside a transaction, so
                              it was not run (its locks cannot be held for
                              reading afterwards) */
    char locks[512];       /* table locks this statement added to the transaction:
                              "items AccessExclusiveLock, users ShareRowExclusiveLock" */
    char held[512];        /* every table lock the transaction holds after it (what the
                              statement ran under, earlier statements' locks included) */
    bool access_exclusive; /* one of them is ACCESS EXCLUSIVE */
    char rewritten[256];   /* tables whose relfilenode changed (a rewrite), "" none */
    char error[256];       /* the statement failed (later ones were not run) */
} dbk_trace_step;

/* Owned by the caller: free with dbk_trace_free(). */
typedef struct dbk_trace {
    dbk_trace_step *steps;
    size_t count;
} dbk_trace;

/* Runs the PostgreSQL up section(s) of one migration file on `db` (a
 * connection's executor, not in a transaction, on a database that may be
 * changed: a throwaway copy) inside one transaction, and after each
 * statement reads from pg_locks the table locks its own backend holds and
 * from pg_class which tables got a new relfilenode; then rolls back.
 * A failing statement is recorded in its step and ends the trace (DBK_OK
 * still). DBK_EMISUSE on SQLite or a transaction's executor; malformed
 * files as dbk_lint_file(). */
DBK_API dbk_rc dbk_migrate_trace(dbk_db *db, const char *filename, const char *contents,
                                 size_t len, dbk_trace **out, dbk_error *err);

/* Frees a trace. Accepts NULL. */
DBK_API void dbk_trace_free(dbk_trace *t);

/* What the trace says about a finding of the same file: 1 confirmed (the
 * statement on that line rewrote its table, or, for a lock rule, the
 * transaction held a lock blocking writes on it after that statement), 0 dismissed (traced, and it did neither), -1 the trace
 * cannot tell (rule not decided by locks or rewrites, statement not
 * traced or failed). `why` (may be NULL) gets a short explanation. */
DBK_API int dbk_trace_judge(const dbk_trace *t, const dbk_lint_finding *f, char *why, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_LINT_H */
