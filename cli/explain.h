/*
 * explain.h - what the files of `dbkit explain` share (see cmd_explain.c):
 * tokens, column lists, a plan as rows of nodes, findings, and the
 * functions one file calls in another.
 */
#ifndef DBKIT_CLI_EXPLAIN_H
#define DBKIT_CLI_EXPLAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "cli.h"

enum { T_IDENT, T_QIDENT, T_STRING, T_NUMBER, T_PARAM, T_OP };

typedef struct tok {
    int kind;
    char text[128]; /* identifiers unquoted; long tokens truncated */
} tok;

typedef struct toks {
    tok *t;
    size_t n;
} toks;

/* A column list: up to 4 names, no duplicates. */
typedef struct cols {
    char v[4][128];
    size_t n;
} cols;

typedef struct pnode {
    int depth;
    char *type, *rel, *alias, *index, *filter, *sortkey, *cond, *detail;
    double est_rows, act_rows, loops, cost;
    bool has_act;
} pnode;

typedef struct plan {
    pnode *n;
    size_t nn;
    double cost, exec_ms;
    bool has_exec;
} plan;

typedef struct xctx {
    const char *sql;
    const dbk_value *params;
    size_t nparams;
    int missing;     /* placeholders beyond nparams: a generic plan */
    bool analyze;
    int pg_major;
    char *json;      /* the plan document (malloc'd) */
} xctx;

/* Columns of a table ("" entries none); false when the table is unknown. */
typedef struct tcols {
    char **v;
    size_t n;
} tcols;

enum { F_SCAN, F_SORT, F_MISESTIMATE };
enum { V_NONE, V_UNVERIFIED, V_KEPT, V_REJECTED };

typedef struct finding {
    int kind;
    char table[128];
    char msg[768];
    char sugg[768];
    char note[256];
    int verdict;
    double before, after;
} finding;

typedef struct findings {
    finding *v;
    size_t n, cap;
} findings;

typedef struct sql_alias {
    char name[128], table[128];
} sql_alias;

/* Tokens of sql, read with the engine's lexical rules (dbk_sql_next_token):
 * comments dropped, strings without their quotes, quoted names unquoted,
 * $n as T_PARAM (its digits), two-byte operators as one T_OP. Ends at the
 * first unterminated construct. On OOM the list is cut short. The caller
 * frees v.t. */
toks dgx_tokenize_engine(const char *sql, dbk_engine engine);

/* dgx_tokenize_engine() with PostgreSQL's rules. */
toks dgx_tokenize(const char *sql);

bool dgx_kw(const tok *t, const char *word);

bool dgx_op(const tok *t, const char *s);

bool dgx_is_ident(const tok *t);

bool dgx_is_keyword(const tok *t);

void dgx_add_ident(dg_buf *b, const char *s);

void dgx_cols_add(cols *c, const char *name);

void dgx_cols_join(const cols *c, dg_buf *b);

void dgx_plan_free(plan *p);

dbk_rc dgx_oom(dbk_error *err);

dbk_rc dgx_pg_flatten(dbk_db *db, const char *json, plan *p, dbk_error *err);

dbk_rc dgx_pg_explain_doc(dbk_db *db, xctx *x, dbk_error *err);

dbk_rc dgx_tx_explain(dbk_db *tx, void *ctx, dbk_error *err);

dbk_rc dgx_sqlite_plan(dbk_db *db, xctx *x, plan *p, dbk_error *err);

void dgx_tcols_free(tcols *t);

bool dgx_tcols_has(const tcols *t, const char *name);

dbk_rc dgx_table_cols(dbk_db *db, const char *table, tcols *out, dbk_error *err);

dbk_rc dgx_table_rows(dbk_db *db, const char *table, int64_t limit, double *rows,
                         dbk_error *err);

finding *dgx_fnew(findings *f);

void dgx_suggest(finding *x, const char *table, const cols *c);

dbk_rc dgx_big_table_finding(dbk_db *db, const char *table, int64_t min_rows, int kind,
                                findings *fs, double *rows, finding **f, dbk_error *err);

void dgx_cond_cols(const toks *v, size_t from, size_t to, const char *table,
                      const char *alias, const tcols *tc, bool eq_only, cols *out);

dbk_rc dgx_filter_cols(dbk_db *db, const toks *v, const size_t *starts, const size_t *ends,
                          size_t nranges, const char *table, const char *alias, bool eq_only,
                          cols *c, dbk_error *err);

dbk_rc dgx_pg_findings(dbk_db *db, const plan *p, const dg_explain_opts *o, findings *fs,
                          dbk_error *err);

dbk_rc dgx_hypo_verify(dbk_db *db, xctx *x, double before, findings *fs, char *status,
                          size_t slen, dbk_error *err);

dbk_rc dgx_sqlite_findings(dbk_db *db, const char *sql, const plan *p,
                              const dg_explain_opts *o, findings *fs, dbk_error *err);

#endif
