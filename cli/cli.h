/*
 * Shared pieces of the dbkit command: global options, exit codes, output
 * (human and JSON), errors, and opening the database. The command uses
 * only the public API (<dbkit/dbkit.h>), like any other program.
 */
#ifndef DBKIT_CLI_H
#define DBKIT_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <dbkit/dbkit.h>

/* Exit codes (docs/cli.md). */
enum {
    CLI_OK = 0,        /* success */
    CLI_ERROR = 1,     /* the command failed: database, SQL, files, lock timeout */
    CLI_USAGE = 2,     /* bad command line */
    CLI_PENDING = 3,   /* migrate status --exit-code: migrations are pending */
    CLI_INVALID = 4,   /* changed, missing or dirty migrations (validate, status --exit-code) */
    CLI_CONNECT = 5    /* cannot connect or authenticate */
};

typedef struct cli {
    const char *url;            /* --url, else DATABASE_URL / DB_* */
    const char *migrations_dir; /* --migrations-dir, default db/migrations */
    const char *seeds_dir;      /* --seeds-dir, default db/seeds */
    bool json;                  /* --json */
    bool quiet;                 /* -q */
    int lock_timeout_ms;        /* --lock-timeout */
    const char *cmd;            /* the command name, for messages */
} cli;

/* ---- JSON writer (stdout) ---- */

typedef struct jw {
    FILE *f;
    int depth;
    bool comma[64];
    bool after_key;
} jw;

void jw_init(jw *w, FILE *f);
void jw_obj(jw *w);
void jw_end_obj(jw *w);
void jw_arr(jw *w);
void jw_end_arr(jw *w);
void jw_key(jw *w, const char *k);
void jw_str(jw *w, const char *s);
void jw_strn(jw *w, const char *s, size_t n);
void jw_int(jw *w, int64_t v);
void jw_double(jw *w, double v);
void jw_bool(jw *w, bool v);
void jw_null(jw *w);
void jw_kstr(jw *w, const char *k, const char *v);
void jw_kint(jw *w, const char *k, int64_t v);
void jw_kbool(jw *w, const char *k, bool v);

/* ---- errors and usage ---- */

/* Prints the error (message, hint; JSON on stdout with --json) and returns
 * the exit code for it. */
int cli_fail(const cli *c, dbk_rc rc, const dbk_error *err);
/* DB_MIGRATION_LOCK_TIMEOUT_MS and DB_MIGRATION_STATEMENT_TIMEOUT_MS into
 * *o (dbk_migrate_opts_from_env: the library reads neither by itself).
 * CLI_OK, or the exit code of the failure, reported. */
int cli_migrate_env(const cli *c, dbk_migrate_opts *o);
/* Same, with extra members added to the JSON document by extra(w, ctx). */
int cli_fail_ex(const cli *c, dbk_rc rc, const dbk_error *err, void (*extra)(jw *w, void *ctx),
                void *ctx);
/* Prints "dbkit CMD: MESSAGE" and a pointer to --help; returns CLI_USAGE. */
int cli_usage(const cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Exit code for a result code. */
int cli_exit_code(dbk_rc rc);
/* Human progress line (stderr when --json, nothing when -q). */
void cli_info(const cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- options of a subcommand ---- */

/* Matches "--name VALUE" or "--name=VALUE" at argv[*i]; advances *i past
 * the value. Returns 1 matched, 0 not this option, -1 missing value
 * (usage message printed). */
int cli_opt_value(const cli *c, int argc, char **argv, int *i, const char *name,
                  const char **value);
/* True when argv[i] is -h or --help. */
bool cli_is_help(const char *arg);
/* Parses a non-negative decimal int64; false when it is not one. */
bool cli_parse_i64(const char *s, int64_t *out);

/* ---- the database ---- */

/* Builds the configuration (--url or the environment). For migrations and
 * seeds, a statement_timeout left at its default is lifted (0): DDL may
 * take long. url (may be NULL) receives the redacted URL as configured,
 * before those adjustments. Prints the error itself; returns an exit code. */
int cli_config(const cli *c, bool long_statements, char *url, size_t urllen, dbk_config **out);
/* Builds the configuration and opens one connection. url (may be NULL)
 * receives the redacted URL as the user configured it. */
int cli_connect(const cli *c, bool long_statements, char *url, size_t urllen, dbk_conn **out);
/* The redacted URL of a configuration. */
void cli_redacted(const dbk_config *cfg, char *buf, size_t n);

/* Formats one result cell as text into buf (for tables); returns the text
 * (buf or a borrowed pointer into the result) and its length. NULL cells
 * give "" and *is_null. */
const char *cli_cell_text(const dbk_result *r, size_t row, int col, char *buf, size_t n,
                          size_t *len, bool *is_null);
/* Writes one result cell as a JSON value. */
void cli_cell_json(jw *w, const dbk_result *r, size_t row, int col);
/* Formats microseconds since the epoch as "YYYY-MM-DD HH:MM:SS" UTC. */
void cli_time(int64_t usec, char *buf, size_t n);

/* ---- progress of migrations and seeds (report.c) ---- */

typedef struct cli_step {
    int action; /* dbk_migrate_action */
    int64_t version;
    char name[256];
    int64_t duration_ms;
    bool transactional;
    bool skipped;
} cli_step;

typedef struct cli_report {
    const cli *c;
    cli_step *steps;
    size_t nsteps, cap;
    char **warnings;
    size_t nwarnings;
    bool line_open;
    /* the failure, when one was reported */
    bool failed;
    int64_t fail_version;
    char fail_path[512];
    int fail_line;
    char *fail_statement;
} cli_report;

void cli_report_init(cli_report *r, const cli *c);
void cli_report_free(cli_report *r);
/* The dbk_migrate_report_fn: prints one line per step (time at the end),
 * collects steps and warnings for JSON. */
void cli_report_event(void *ctx, const dbk_migrate_event *ev);
/* Writes "steps", "warnings" (and "failed" when set) into the open JSON
 * object. */
void cli_report_json(jw *w, const cli_report *r, const char *steps_key);
/* cli_fail_ex() extra callback: the report's members. ctx is a cli_report
 * whose steps_key is "applied". */
void cli_report_json_extra(jw *w, void *ctx);
/* Prints the failing statement (stderr) when one was reported. */
void cli_report_print_failure(const cli_report *r);

/* ---- commands ---- */

int cmd_migrate(cli *c, int argc, char **argv);
/* Lints the pending migrations of db (cmd_migrate.c; `migrate lint` and
 * `check`): *out owned by the caller, *pending gets how many are pending. */
dbk_rc cli_lint_pending(const cli *c, dbk_db *db, dbk_lint_report **out, size_t *pending,
                        dbk_error *err);
int cmd_seed(cli *c, int argc, char **argv);
int cmd_query(cli *c, int argc, char **argv);
int cmd_doctor(cli *c, int argc, char **argv);
int cmd_config(cli *c, int argc, char **argv);
int cmd_testdb(cli *c, int argc, char **argv);
int cmd_gen(cli *c, int argc, char **argv);
int cmd_doc(cli *c, int argc, char **argv);

/* ---- diagnostics: explain, advise, check, erd (diag_common.c) ---- */

/* Exit code of `explain --exit-code` / `advise --exit-code` with findings and
 * of `check` with a failed check. */
#define CLI_FINDINGS 6

int cmd_explain(cli *c, int argc, char **argv);
int cmd_advise(cli *c, int argc, char **argv);
int cmd_check(cli *c, int argc, char **argv);
int cmd_erd(cli *c, int argc, char **argv);

/* A growable string (NUL-terminated; s is NULL until something is added).
 * An allocation failure sets oom and drops further text. */
typedef struct dg_buf {
    char *s;
    size_t len, cap;
    bool oom;
} dg_buf;
void dg_add(dg_buf *b, const char *s);
void dg_addn(dg_buf *b, const char *s, size_t n);
void dg_addf(dg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dg_buf_free(dg_buf *b);
/* b->s or "" when empty. */
const char *dg_str(const dg_buf *b);
/* strdup that accepts NULL (gives NULL). */
char *dg_strdup(const char *s);

/* The live schema, as `erd` draws it and `check` inspects it. */
typedef struct dg_col {
    char *name;
    char *type;
    bool notnull;
    bool pk;
} dg_col;

typedef struct dg_index {
    char **cols; /* key columns in order; "?" for an expression */
    size_t ncols;
    bool unique;
    bool partial;
} dg_index;

typedef struct dg_fk {
    char *ref_table;
    char **cols, **ref_cols; /* ref_cols[i] may be NULL: the parent's key */
    size_t ncols;
} dg_fk;

typedef struct dg_table {
    char *name;
    dg_col *cols;
    size_t ncols;
    dg_index *idx;
    size_t nidx;
    dg_fk *fks;
    size_t nfks;
    bool has_pk;
} dg_table;

typedef struct dg_schema {
    dg_table *t;
    size_t n;
} dg_schema;

/* Loads the tables of the current schema(s) (PostgreSQL: current_schemas;
 * SQLite: main). dbkit's bookkeeping tables (dbkit_migrations, dbkit_seeds)
 * are left out unless `all`. */
dbk_rc dg_schema_load(dbk_db *db, bool all, dg_schema *out, dbk_error *err);
void dg_schema_free(dg_schema *s);
const dg_table *dg_schema_table(const dg_schema *s, const char *name);
const dg_col *dg_table_col(const dg_table *t, const char *name);
/* dg_fk_indexed: some non-partial index (or SQLite's rowid) starts with the
 * FK's columns, in any order. dg_fk_unique: a unique index on exactly those
 * columns (the relation is one-to-one). dg_fk_nullable: an FK column may be
 * NULL (the parent is optional). */
bool dg_fk_indexed(const dg_table *t, const dg_fk *fk);
bool dg_fk_unique(const dg_table *t, const dg_fk *fk);
bool dg_fk_nullable(const dg_table *t, const dg_fk *fk);
/* True for dbkit's own tables (dbkit_migrations, dbkit_seeds). */
bool dg_is_bookkeeping(const char *table);

/* Runs argv[0] (looked up in PATH) with argv, no shell, in `dir`, capturing
 * stdout into *out (owned by the caller); *status gets the exit status (or
 * -1 when it could not run). Stderr is discarded. Returns false when the
 * program could not be started or timed out (60 s). */
bool dg_run(const char *dir, const char *const *argv, dg_buf *out, int *status);

/* The explain analysis shared by `explain` and `advise` (cmd_explain.c). */
typedef struct dg_explain_opts {
    bool analyze;        /* EXPLAIN ANALYZE (PostgreSQL) */
    bool analyze_writes; /* allow ANALYZE of writes, inside a rolled-back transaction */
    int64_t min_rows;    /* table size over which a filtered scan is a finding (0: 1000) */
    bool no_verify;      /* do not try HypoPG */
} dg_explain_opts;

/* Explains `sql` with `params` (bound as given; missing trailing $n
 * placeholders make it a generic plan) on a connection's executor and
 * reports the plan and findings: human text on stdout (each line prefixed
 * by `indent`), or, when w is not NULL, members "plan", "total_cost",
 * "findings", "verification" written into the JSON object open in w.
 * *nfindings gets the number of findings. DBK_OK, or the failing rc with
 * err filled (nothing printed then). DBK_EINVALID for an ANALYZE of a write
 * without analyze_writes. */
dbk_rc dg_explain(const cli *c, dbk_db *db, const char *sql, const dbk_value *params,
                  size_t nparams, const dg_explain_opts *o, jw *w, const char *indent,
                  size_t *nfindings, dbk_error *err);
/* Matches the analysis options that explain and advise share (--min-rows N,
 * --no-verify) at argv[*i], filling o; advances *i past a value. Returns 1
 * matched, 0 not one of them, -1 bad or missing value (usage message
 * printed). */
int dg_explain_opt(const cli *c, int argc, char **argv, int *i, dg_explain_opts *o);
/* True when the statement only reads (SELECT / VALUES / TABLE / WITH
 * without INSERT, UPDATE, DELETE or MERGE). */
bool dg_sql_is_read(const char *sql);
/* Highest $n placeholder in the statement (0 when none). */
int dg_sql_max_param(const char *sql);

#endif
