/*
 * `dbkit explain [--analyze] "SQL" [ARG ...]`: the statement's plan, what in
 * it is likely slow, and which index would help.
 *
 * PostgreSQL: EXPLAIN (FORMAT JSON) runs with the arguments bound as text
 * parameters like `dbkit query`. Rather than parsing JSON in C, the plan
 * document is handed back to the server, which flattens the node tree with
 * its own JSON functions into one row per node (depth-first order). A
 * statement whose $n placeholders have no arguments gets a generic plan:
 * EXPLAIN (GENERIC_PLAN) from PostgreSQL 16, before that PREPARE + EXPLAIN
 * EXECUTE with NULL arguments under plan_cache_mode = force_generic_plan
 * (the generic plan does not look at the NULLs).
 *
 * SQLite: EXPLAIN QUERY PLAN. Its rows say "SCAN t" (whole table) or
 * "SEARCH t USING INDEX ...", and "USE TEMP B-TREE FOR ORDER BY" for a sort;
 * they do not name the filter columns, so those come from a small tokenizer
 * over the statement's WHERE / ON / ORDER BY clauses.
 *
 * Findings: (a) a whole-table scan with a filter on a table over the
 * threshold; (b) a sort fed by such a scan; (c) with ANALYZE, a node whose
 * estimated rows are 10x off the actual ones. For (a) and (b) a CREATE INDEX
 * is suggested, built only from columns that the catalog confirms exist;
 * anything inside a function call or an expression is left out on purpose.
 * On PostgreSQL each suggestion is tried as a HypoPG hypothetical index and
 * kept only when the planner's total cost at least halves.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit explain [--analyze [--analyze-writes]] [--min-rows N] [--no-verify]\n"
    "                     [--exit-code] SQL [ARG ...]\n"
    "\n"
    "Prints the plan of SQL and its findings: a whole-table scan with a filter on a\n"
    "table of more than N rows (default 1000), a sort not served by an index, and with\n"
    "--analyze (PostgreSQL) estimated vs actual rows off by 10x or more. Scans and sorts\n"
    "come with a suggested CREATE INDEX; on PostgreSQL with the HypoPG extension each\n"
    "suggestion is checked with a hypothetical index and kept only if it halves the\n"
    "planner's cost. ARGs are bound to $1.. as text; placeholders without ARGs give a\n"
    "generic plan.\n"
    "  --analyze          run the statement (EXPLAIN ANALYZE, BUFFERS); SELECT only\n"
    "  --analyze-writes   also ANALYZE writes, inside a transaction that is rolled back\n"
    "  --min-rows N       table size threshold for scan findings (default 1000)\n"
    "  --no-verify        do not try HypoPG\n"
    "  --exit-code        exit 6 when there are findings\n";

/* ---- a small SQL tokenizer ---- */

enum { T_IDENT, T_QIDENT, T_STRING, T_NUMBER, T_PARAM, T_OP };

typedef struct tok {
    int kind;
    char text[128]; /* identifiers unquoted; long tokens truncated */
} tok;

typedef struct toks {
    tok *t;
    size_t n;
} toks;

static void toks_push(toks *v, size_t *cap, int kind, const char *s, size_t len)
{
    if (v->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        tok *p = realloc(v->t, nc * sizeof *p);
        if (!p)
            return;
        v->t = p;
        *cap = nc;
    }
    tok *t = &v->t[v->n++];
    t->kind = kind;
    if (len >= sizeof t->text)
        len = sizeof t->text - 1;
    memcpy(t->text, s, len);
    t->text[len] = '\0';
}

static bool is_ident_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (unsigned char)ch >= 0x80;
}

static bool is_ident_char(char ch)
{
    return is_ident_start(ch) || (ch >= '0' && ch <= '9') || ch == '$';
}

/* Tokens of sql. Comments dropped; strings kept as one token (contents not
 * needed); "quoted" identifiers unquoted. On OOM the list is cut short. */
static toks tokenize(const char *sql)
{
    toks v = {NULL, 0};
    size_t cap = 0;
    const char *p = sql;
    while (*p) {
        char ch = *p;
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f') {
            p++;
        } else if (ch == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (ch == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            p = e ? e + 2 : p + strlen(p);
        } else if (ch == '\'') {
            const char *s = ++p;
            while (*p && !(*p == '\'' && p[1] != '\''))
                p += (*p == '\'' ? 2 : 1);
            toks_push(&v, &cap, T_STRING, s, (size_t)(p - s));
            if (*p)
                p++;
        } else if (ch == '"' || ch == '`') {
            char q = ch;
            char buf[128];
            size_t n = 0;
            p++;
            while (*p) {
                if (*p == q && p[1] == q) {
                    if (n < sizeof buf - 1)
                        buf[n++] = q;
                    p += 2;
                } else if (*p == q) {
                    p++;
                    break;
                } else {
                    if (n < sizeof buf - 1)
                        buf[n++] = *p;
                    p++;
                }
            }
            toks_push(&v, &cap, T_QIDENT, buf, n);
        } else if (ch == '$' && p[1] >= '0' && p[1] <= '9') {
            const char *s = ++p;
            while (*p >= '0' && *p <= '9')
                p++;
            toks_push(&v, &cap, T_PARAM, s, (size_t)(p - s));
        } else if (ch >= '0' && ch <= '9') {
            const char *s = p;
            while ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E')
                p++;
            toks_push(&v, &cap, T_NUMBER, s, (size_t)(p - s));
        } else if (is_ident_start(ch)) {
            const char *s = p;
            while (is_ident_char(*p))
                p++;
            toks_push(&v, &cap, T_IDENT, s, (size_t)(p - s));
        } else {
            static const char *const two[] = {"<=", ">=", "<>", "!=", "==", "::", "||", NULL};
            size_t len = 1;
            for (int i = 0; two[i]; i++)
                if (p[0] == two[i][0] && p[1] == two[i][1])
                    len = 2;
            toks_push(&v, &cap, T_OP, p, len);
            p += len;
        }
    }
    return v;
}

static bool kw(const tok *t, const char *word)
{
    return t && t->kind == T_IDENT && strcasecmp(t->text, word) == 0;
}

static bool op(const tok *t, const char *s)
{
    return t && t->kind == T_OP && strcmp(t->text, s) == 0;
}

static bool is_ident(const tok *t)
{
    return t && (t->kind == T_IDENT || t->kind == T_QIDENT);
}

static const char *const KEYWORDS[] = {
    "select", "from", "where", "and", "or", "not", "is", "null", "true", "false", "in", "like",
    "ilike", "between", "any", "all", "some", "exists", "case", "when", "then", "else", "end",
    "as", "on", "join", "left", "right", "inner", "outer", "full", "cross", "natural", "using",
    "group", "order", "by", "having", "limit", "offset", "union", "intersect", "except",
    "asc", "desc", "nulls", "first", "last", "distinct", "with", "collate", "escape", "glob",
    "regexp", "match", "lateral", "window", "over", "partition", "returning", "fetch", "for",
    "values", "set", "into", "update", "delete", "insert", "isnull", "notnull", "similar",
    "array", "row", "interval", "cast", NULL};

static bool is_keyword(const tok *t)
{
    if (!t || t->kind != T_IDENT)
        return false;
    for (int i = 0; KEYWORDS[i]; i++)
        if (strcasecmp(t->text, KEYWORDS[i]) == 0)
            return true;
    return false;
}

bool dg_sql_is_read(const char *sql)
{
    toks v = tokenize(sql);
    size_t i = 0;
    while (i < v.n && op(&v.t[i], "("))
        i++;
    bool read = false;
    if (i < v.n && (kw(&v.t[i], "select") || kw(&v.t[i], "values") || kw(&v.t[i], "table")))
        read = true;
    if (i < v.n && kw(&v.t[i], "with")) {
        read = true;
        for (size_t j = i; j < v.n; j++)
            if (kw(&v.t[j], "insert") || kw(&v.t[j], "update") || kw(&v.t[j], "delete") ||
                kw(&v.t[j], "merge"))
                read = false;
    }
    /* SELECT ... FOR UPDATE takes row locks: still a read for EXPLAIN. */
    free(v.t);
    return read;
}

int dg_sql_max_param(const char *sql)
{
    toks v = tokenize(sql);
    int max = 0;
    for (size_t i = 0; i < v.n; i++)
        if (v.t[i].kind == T_PARAM) {
            int64_t n = 0;
            if (cli_parse_i64(v.t[i].text, &n) && n > max && n < 65536)
                max = (int)n;
        }
    free(v.t);
    return max;
}

/* ---- names ---- */

/* Appends an identifier, quoted unless it is plain lower case. */
static void add_ident(dg_buf *b, const char *s)
{
    bool plain = is_ident_start(*s) && !(*s >= 'A' && *s <= 'Z');
    for (const char *p = s; *p && plain; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
    if (plain) {
        dg_add(b, s);
        return;
    }
    dg_add(b, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            dg_add(b, "\"");
        dg_addn(b, p, 1);
    }
    dg_add(b, "\"");
}

/* A column list: up to 4 names, no duplicates. */
typedef struct cols {
    char v[4][128];
    size_t n;
} cols;

static void cols_add(cols *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i], name) == 0)
            return;
    if (c->n < 4)
        snprintf(c->v[c->n++], sizeof c->v[0], "%s", name);
}

/* c's names, separated by ", ", added to b. */
static void cols_join(const cols *c, dg_buf *b)
{
    for (size_t i = 0; i < c->n; i++) {
        if (i)
            dg_add(b, ", ");
        dg_add(b, c->v[i]);
    }
}

/* ---- plan ---- */

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

static void plan_free(plan *p)
{
    for (size_t i = 0; i < p->nn; i++) {
        pnode *x = &p->n[i];
        free(x->type);
        free(x->rel);
        free(x->alias);
        free(x->index);
        free(x->filter);
        free(x->sortkey);
        free(x->cond);
        free(x->detail);
    }
    free(p->n);
    memset(p, 0, sizeof *p);
}

static char *cell_dup(const dbk_result *r, size_t row, int col)
{
    const char *s = NULL;
    if (dbk_result_is_null(r, row, col) ||
        dbk_result_get_text(r, row, col, &s, NULL, NULL) != DBK_OK || !s)
        return NULL;
    return dg_strdup(s);
}

static double cell_num(const dbk_result *r, size_t row, int col, bool *present)
{
    double d = 0;
    bool ok = dbk_result_get_double(r, row, col, &d, NULL) == DBK_OK;
    if (present)
        *present = ok;
    return ok ? d : 0;
}

static dbk_rc oom(dbk_error *err)
{
    dbk_error_clear(err);
    snprintf(err->message, sizeof err->message, "out of memory");
    return DBK_ENOMEM;
}

static const char PG_FLATTEN[] =
    "WITH RECURSIVE n(node, path) AS ("
    " SELECT ($1::json)->0->'Plan', ARRAY[0]"
    " UNION ALL"
    " SELECT c.value, n.path || c.o::int FROM n CROSS JOIN LATERAL"
    " json_array_elements(COALESCE(n.node->'Plans', '[]'::json)) WITH ORDINALITY c(value, o))"
    " SELECT cardinality(path) - 1, node->>'Node Type', node->>'Relation Name',"
    " node->>'Alias', node->>'Index Name', node->>'Filter',"
    " (SELECT string_agg(k, chr(31)) FROM json_array_elements_text(node->'Sort Key') k),"
    " COALESCE(node->>'Index Cond', node->>'Hash Cond', node->>'Join Filter',"
    " node->>'Recheck Cond', node->>'One-Time Filter'),"
    " (node->>'Plan Rows')::float8, (node->>'Actual Rows')::float8,"
    " (node->>'Actual Loops')::float8, (node->>'Total Cost')::float8,"
    " (($1::json)->0->>'Execution Time')::float8"
    " FROM n ORDER BY path";

/* Flattens a PostgreSQL JSON plan into p. */
static dbk_rc pg_flatten(dbk_db *db, const char *json, plan *p, dbk_error *err)
{
    dbk_value v = dbk_text(json);
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, PG_FLATTEN, &v, 1, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    p->n = calloc(n + 1, sizeof *p->n);
    if (!p->n) {
        dbk_result_free(r);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++) {
        pnode *x = &p->n[p->nn++];
        int64_t d = 0;
        dbk_result_get_int64(r, i, 0, &d, NULL);
        x->depth = (int)d;
        x->type = cell_dup(r, i, 1);
        x->rel = cell_dup(r, i, 2);
        x->alias = cell_dup(r, i, 3);
        x->index = cell_dup(r, i, 4);
        x->filter = cell_dup(r, i, 5);
        x->sortkey = cell_dup(r, i, 6);
        x->cond = cell_dup(r, i, 7);
        x->est_rows = cell_num(r, i, 8, NULL);
        x->act_rows = cell_num(r, i, 9, &x->has_act);
        x->loops = cell_num(r, i, 10, NULL);
        x->cost = cell_num(r, i, 11, NULL);
        if (i == 0) {
            p->cost = x->cost;
            p->exec_ms = cell_num(r, i, 12, &p->has_exec);
        }
        if (!x->type) {
            dbk_result_free(r);
            return oom(err);
        }
    }
    dbk_result_free(r);
    return DBK_OK;
}

typedef struct xctx {
    const char *sql;
    const dbk_value *params;
    size_t nparams;
    int missing;     /* placeholders beyond nparams: a generic plan */
    bool analyze;
    int pg_major;
    char *json;      /* the plan document (malloc'd) */
} xctx;

static dbk_rc pg_explain_doc(dbk_db *db, xctx *x, dbk_error *err)
{
    dg_buf q = {0};
    dbk_rc rc;
    dbk_result *r = NULL;
    free(x->json);
    x->json = NULL;
    if (x->missing > 0 && x->pg_major < 16) {
        /* PostgreSQL 15 and older: no GENERIC_PLAN option. A prepared
         * statement under force_generic_plan is planned without values, so
         * the NULL arguments of EXECUTE do not shape the plan. */
        dg_add(&q, "PREPARE dbkit_explain_stmt AS ");
        dg_add(&q, x->sql);
        dbk_db_exec(db, "DEALLOCATE dbkit_explain_stmt", NULL, 0, NULL, NULL);
        rc = dbk_db_exec(db, "SET plan_cache_mode = force_generic_plan", NULL, 0, NULL, err);
        if (!rc && !q.oom)
            rc = dbk_db_exec(db, dg_str(&q), NULL, 0, NULL, err);
        if (!rc) {
            dg_buf_free(&q);
            dg_add(&q, "EXPLAIN (FORMAT JSON) EXECUTE dbkit_explain_stmt(");
            int n = dg_sql_max_param(x->sql);
            for (int i = 0; i < n; i++)
                dg_add(&q, i ? ", NULL" : "NULL");
            dg_add(&q, ")");
            rc = dbk_db_query(db, dg_str(&q), NULL, 0, &r, err);
        }
        dbk_db_exec(db, "DEALLOCATE dbkit_explain_stmt", NULL, 0, NULL, NULL);
        dbk_db_exec(db, "RESET plan_cache_mode", NULL, 0, NULL, NULL);
    } else {
        if (x->missing > 0)
            dg_add(&q, "EXPLAIN (FORMAT JSON, GENERIC_PLAN) ");
        else if (x->analyze)
            dg_add(&q, "EXPLAIN (FORMAT JSON, ANALYZE, BUFFERS) ");
        else
            dg_add(&q, "EXPLAIN (FORMAT JSON) ");
        dg_add(&q, x->sql);
        rc = q.oom ? oom(err)
                   : dbk_db_query(db, dg_str(&q), x->missing > 0 ? NULL : x->params,
                                  x->missing > 0 ? 0 : x->nparams, &r, err);
    }
    dg_buf_free(&q);
    if (rc)
        return rc;
    const char *s = NULL;
    if (dbk_result_nrows(r) < 1 || dbk_result_get_text(r, 0, 0, &s, NULL, NULL) != DBK_OK || !s) {
        dbk_result_free(r);
        dbk_error_clear(err);
        snprintf(err->message, sizeof err->message, "EXPLAIN returned no plan");
        return DBK_EINTERNAL;
    }
    x->json = dg_strdup(s);
    dbk_result_free(r);
    return x->json ? DBK_OK : oom(err);
}

/* ANALYZE of a write: inside a transaction that fn's rc rolls back. */
static dbk_rc tx_explain(dbk_db *tx, void *ctx, dbk_error *err)
{
    dbk_rc rc = pg_explain_doc(tx, ctx, err);
    if (rc)
        return rc;
    return DBK_ECANCELLED;
}

static dbk_rc sqlite_plan(dbk_db *db, xctx *x, plan *p, dbk_error *err)
{
    dg_buf q = {0};
    dg_add(&q, "EXPLAIN QUERY PLAN ");
    dg_add(&q, x->sql);
    /* Unbound placeholders plan as NULL; bind them explicitly. */
    size_t n = x->nparams + (size_t)(x->missing > 0 ? x->missing : 0);
    dbk_value *pv = calloc(n + 1, sizeof *pv);
    if (!pv || q.oom) {
        free(pv);
        dg_buf_free(&q);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++)
        pv[i] = i < x->nparams ? x->params[i] : dbk_null();
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, dg_str(&q), pv, n, &r, err);
    free(pv);
    dg_buf_free(&q);
    if (rc)
        return rc;
    size_t nr = dbk_result_nrows(r);
    p->n = calloc(nr + 1, sizeof *p->n);
    int64_t *ids = calloc(nr + 1, sizeof *ids);
    if (!p->n || !ids) {
        free(ids);
        dbk_result_free(r);
        return oom(err);
    }
    for (size_t i = 0; i < nr; i++) {
        pnode *xn = &p->n[p->nn++];
        int64_t id = 0, parent = 0;
        dbk_result_get_int64(r, i, 0, &id, NULL);
        dbk_result_get_int64(r, i, 1, &parent, NULL);
        ids[i] = id;
        xn->depth = 0;
        for (size_t j = 0; j < i; j++)
            if (ids[j] == parent)
                xn->depth = p->n[j].depth + 1;
        xn->detail = cell_dup(r, i, 3);
        xn->type = dg_strdup(xn->detail ? xn->detail : "");
        if (!xn->type) {
            free(ids);
            dbk_result_free(r);
            return oom(err);
        }
    }
    free(ids);
    dbk_result_free(r);
    return DBK_OK;
}

/* ---- catalog facts ---- */

/* Columns of a table ("" entries none); false when the table is unknown. */
typedef struct tcols {
    char **v;
    size_t n;
} tcols;

static void tcols_free(tcols *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i]);
    free(t->v);
    memset(t, 0, sizeof *t);
}

static bool tcols_has(const tcols *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i], name) == 0)
            return true;
    return false;
}

static dbk_rc table_cols(dbk_db *db, const char *table, tcols *out, dbk_error *err)
{
    memset(out, 0, sizeof *out);
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    dbk_value v = dbk_text(table);
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(
        db,
        pg ? "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(quote_ident($1)) "
             "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
           : "SELECT name FROM pragma_table_info($1) ORDER BY cid",
        &v, 1, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    out->v = calloc(n + 1, sizeof *out->v);
    if (!out->v) {
        dbk_result_free(r);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++) {
        char *s = cell_dup(r, i, 0);
        if (s)
            out->v[out->n++] = s;
    }
    dbk_result_free(r);
    return DBK_OK;
}

/* Rows of a table: pg_class.reltuples on PostgreSQL (a count bounded by
 * limit+1 when the table was never analyzed), a bounded count on SQLite. */
static dbk_rc table_rows(dbk_db *db, const char *table, int64_t limit, double *rows,
                         dbk_error *err)
{
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    *rows = -1;
    if (pg) {
        dbk_value v = dbk_text(table);
        dbk_result *r = NULL;
        dbk_rc rc = dbk_db_query(db,
                                 "SELECT reltuples::float8 FROM pg_class WHERE oid = "
                                 "to_regclass(quote_ident($1))",
                                 &v, 1, &r, err);
        if (rc)
            return rc;
        if (dbk_result_nrows(r) == 1)
            *rows = cell_num(r, 0, 0, NULL);
        dbk_result_free(r);
        if (*rows >= 0)
            return DBK_OK;
    }
    dg_buf q = {0};
    dg_add(&q, "SELECT count(*) FROM (SELECT 1 FROM ");
    add_ident(&q, table);
    dg_addf(&q, " LIMIT %lld) s", (long long)limit + 1);
    int64_t n = 0;
    dbk_rc rc = q.oom ? oom(err) : dbk_db_query_int64(db, dg_str(&q), NULL, 0, &n, err);
    dg_buf_free(&q);
    if (!rc)
        *rows = (double)n;
    return rc;
}

/* ---- findings ---- */

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

static finding *fnew(findings *f)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 8;
        finding *p = realloc(f->v, nc * sizeof *p);
        if (!p)
            return NULL;
        f->v = p;
        f->cap = nc;
    }
    finding *x = &f->v[f->n++];
    memset(x, 0, sizeof *x);
    return x;
}

static void suggest(finding *x, const char *table, const cols *c)
{
    /* Named: SQLite requires a name, and a name says what the index is. */
    dg_buf name = {0};
    dg_add(&name, table);
    for (size_t i = 0; i < c->n; i++) {
        dg_add(&name, "_");
        dg_add(&name, c->v[i]);
    }
    dg_add(&name, "_idx");
    char nm[64];
    snprintf(nm, sizeof nm, "%s", dg_str(&name)); /* PostgreSQL's 63-byte limit */
    dg_buf_free(&name);
    dg_buf b = {0};
    dg_add(&b, "CREATE INDEX ");
    add_ident(&b, nm);
    dg_add(&b, " ON ");
    add_ident(&b, table);
    dg_add(&b, " (");
    for (size_t i = 0; i < c->n; i++) {
        if (i)
            dg_add(&b, ", ");
        add_ident(&b, c->v[i]);
    }
    dg_add(&b, ")");
    snprintf(x->sugg, sizeof x->sugg, "%s", dg_str(&b));
    x->verdict = V_UNVERIFIED;
    dg_buf_free(&b);
}

/* Starts a finding of `kind` when `table` has more than min_rows rows:
 * *rows gets its size and *f the new finding, or NULL when the table is
 * small. A NULL table (not known) always gets its finding, *rows 0. */
static dbk_rc big_table_finding(dbk_db *db, const char *table, int64_t min_rows, int kind,
                                findings *fs, double *rows, finding **f, dbk_error *err)
{
    *f = NULL;
    *rows = 0;
    if (table) {
        dbk_rc rc = table_rows(db, table, min_rows, rows, err);
        if (rc)
            return rc;
        if (*rows <= (double)min_rows)
            return DBK_OK;
    }
    *f = fnew(fs);
    if (!*f)
        return oom(err);
    (*f)->kind = kind;
    return DBK_OK;
}

static bool is_cmp(const tok *t)
{
    static const char *const ops[] = {"=", "==", "<", ">", "<=", ">=", "<>", "!=", "~~", NULL};
    if (!t)
        return false;
    if (t->kind == T_OP) {
        for (int i = 0; ops[i]; i++)
            if (strcmp(t->text, ops[i]) == 0)
                return true;
        return false;
    }
    return kw(t, "in") || kw(t, "like") || kw(t, "ilike") || kw(t, "between") || kw(t, "is") ||
           kw(t, "glob");
}

/* The plain columns of `table` (known as `alias`, may be NULL) compared in a
 * condition's tokens [from, to): equality columns first, then the others.
 * Identifiers inside a function call's parentheses, types after "::" and
 * names of other tables are skipped. */
static void cond_cols(const toks *v, size_t from, size_t to, const char *table,
                      const char *alias, const tcols *tc, bool eq_only, cols *out)
{
    cols eq = {0}, other = {0};
    int fdepth = 0;             /* parentheses opened by a function call */
    int pdepth = 0;             /* all parentheses */
    int fstack[64] = {0};
    for (size_t i = from; i < to; i++) {
        const tok *t = &v->t[i];
        const tok *next = i + 1 < to ? &v->t[i + 1] : NULL;
        const tok *prev = i > from ? &v->t[i - 1] : NULL;
        if (op(t, "(")) {
            bool fn = prev && prev->kind == T_IDENT && !is_keyword(prev);
            if (pdepth < 64)
                fstack[pdepth] = fn;
            pdepth++;
            fdepth += fn;
            continue;
        }
        if (op(t, ")")) {
            if (pdepth > 0) {
                pdepth--;
                if (pdepth < 64 && fstack[pdepth])
                    fdepth--;
            }
            continue;
        }
        if (!is_ident(t) || is_keyword(t) || fdepth > 0)
            continue;
        if (op(prev, "::") || op(next, "(") || op(next, "."))
            continue;
        if (op(prev, ".")) {
            const tok *q = i >= from + 2 ? &v->t[i - 2] : NULL;
            if (!q || !is_ident(q))
                continue;
            if (strcmp(q->text, table) != 0 && !(alias && strcmp(q->text, alias) == 0))
                continue;
            prev = i >= from + 3 ? &v->t[i - 3] : NULL; /* the token before "q." */
        }
        if (!tcols_has(tc, t->text))
            continue;
        /* Compared: followed by an operator, or preceded by one (right-hand
         * side, e.g. a join condition). */
        if (op(next, "=") || op(next, "==") || (kw(next, "is") && !kw(i + 2 < to ? &v->t[i + 2] : NULL, "not")) ||
            kw(next, "in") || (op(prev, "=") || op(prev, "==")))
            cols_add(&eq, t->text);
        else if (is_cmp(next) || is_cmp(prev) || kw(next, "not"))
            cols_add(&other, t->text);
        else if ((!prev || op(prev, "(") || kw(prev, "and") || kw(prev, "or") ||
                  kw(prev, "not") || kw(prev, "where") || kw(prev, "on")) &&
                 (!next || op(next, ")") || kw(next, "and") || kw(next, "or") ||
                  kw(next, "group") || kw(next, "order") || kw(next, "limit")))
            cols_add(&eq, t->text); /* a boolean column used as the condition */
    }
    for (size_t i = 0; i < eq.n; i++)
        cols_add(out, eq.v[i]);
    for (size_t i = 0; i < other.n && !eq_only; i++)
        cols_add(out, other.v[i]);
}

/* cond_cols() over the condition ranges [starts[k], ends[k]) of v, with the
 * columns of `table` read from the catalog: the columns the conditions
 * filter on (equality only when `eq_only`) are added to *c. */
static dbk_rc filter_cols(dbk_db *db, const toks *v, const size_t *starts, const size_t *ends,
                          size_t nranges, const char *table, const char *alias, bool eq_only,
                          cols *c, dbk_error *err)
{
    tcols tc;
    dbk_rc rc = table_cols(db, table, &tc, err);
    if (rc)
        return rc;
    for (size_t k = 0; k < nranges; k++)
        cond_cols(v, starts[k], ends[k], table, alias, &tc, eq_only, c);
    tcols_free(&tc);
    return DBK_OK;
}

/* ---- PostgreSQL analysis ---- */

/* The relation (table name) that a scan under node i is on, for a
 * qualifier (alias or name) or, unqualified, the only scan below. */
static const pnode *pg_scan_below(const plan *p, size_t i, const char *qual)
{
    const pnode *found = NULL;
    int n = 0;
    for (size_t j = i + 1; j < p->nn && p->n[j].depth > p->n[i].depth; j++) {
        const pnode *x = &p->n[j];
        if (!x->rel)
            continue;
        if (qual && !((x->alias && strcmp(x->alias, qual) == 0) || strcmp(x->rel, qual) == 0))
            continue;
        if (!found || strcmp(found->rel, x->rel) != 0)
            n++;
        found = x;
    }
    return n == 1 ? found : NULL;
}

static bool is_full_scan(const pnode *x)
{
    return x->type && strcmp(x->type, "Seq Scan") == 0;
}

/* Parses "t.col DESC" style sort keys of a Sort node. Fills qual (may stay
 * empty) and the plain columns; false when a key is an expression. */
static bool sort_keys(const char *keys, char *qual, size_t qlen, cols *out)
{
    const char *p = keys;
    qual[0] = '\0';
    while (*p) {
        size_t len = strcspn(p, "\x1f");
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(len < 255 ? len : 255), p);
        toks v = tokenize(key);
        size_t k = 0;
        const char *col = NULL, *q = NULL;
        if (k < v.n && is_ident(&v.t[k])) {
            col = v.t[k].text;
            k++;
            if (k + 1 < v.n && op(&v.t[k], ".") && is_ident(&v.t[k + 1])) {
                q = col;
                col = v.t[k + 1].text;
                k += 2;
            }
        }
        while (k < v.n && (kw(&v.t[k], "desc") || kw(&v.t[k], "asc") || kw(&v.t[k], "nulls") ||
                           kw(&v.t[k], "first") || kw(&v.t[k], "last")))
            k++;
        bool ok = col && k == v.n;
        if (ok && q) {
            if (qual[0] && strcmp(qual, q) != 0)
                ok = false;
            snprintf(qual, qlen, "%s", q);
        }
        if (ok)
            cols_add(out, col);
        free(v.t);
        if (!ok)
            return false;
        p += len + (p[len] ? 1 : 0);
    }
    return out->n > 0;
}

static dbk_rc pg_findings(dbk_db *db, const plan *p, const dg_explain_opts *o, findings *fs,
                          dbk_error *err)
{
    int64_t min_rows = o->min_rows > 0 ? o->min_rows : 1000;
    dbk_rc rc = DBK_OK;
    for (size_t i = 0; i < p->nn && !rc; i++) {
        const pnode *x = &p->n[i];
        if (is_full_scan(x) && x->rel && x->filter) {
            double rows;
            finding *f;
            rc = big_table_finding(db, x->rel, min_rows, F_SCAN, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            snprintf(f->table, sizeof f->table, "%s", x->rel);
            snprintf(f->msg, sizeof f->msg,
                     "sequential scan on %s (~%.0f rows) with filter %s", x->rel, rows, x->filter);
            toks v = tokenize(x->filter);
            size_t from = 0, to = v.n;
            cols c = {0};
            rc = filter_cols(db, &v, &from, &to, 1, x->rel, x->alias, false, &c, err);
            free(v.t);
            if (rc)
                break;
            if (c.n)
                suggest(f, x->rel, &c);
            else
                snprintf(f->note, sizeof f->note,
                         "the filter has no plain column to index (an expression index may "
                         "help)");
        } else if (x->type && strcmp(x->type, "Sort") == 0 && x->sortkey) {
            /* Only a sort fed by a whole-table scan: a sort over an index
             * scan or a join result is not a missing index. */
            bool over_scan = false;
            for (size_t j = i + 1; j < p->nn && p->n[j].depth > x->depth; j++)
                over_scan |= is_full_scan(&p->n[j]);
            if (!over_scan)
                continue;
            char qual[128];
            cols sc = {0};
            bool plain = sort_keys(x->sortkey, qual, sizeof qual, &sc);
            const pnode *scan = plain ? pg_scan_below(p, i, qual[0] ? qual : NULL) : NULL;
            double rows;
            finding *f;
            rc = big_table_finding(db, scan ? scan->rel : NULL, min_rows, F_SORT, fs, &rows, &f,
                                   err);
            if (rc)
                break;
            if (!f)
                continue;
            dg_buf keys = {0};
            for (const char *k = x->sortkey; *k; k++)
                dg_add(&keys, *k == '\x1f' ? ", " : (char[2]){*k, 0});
            snprintf(f->msg, sizeof f->msg, "sort on %s not served by an index%s%s%s",
                     dg_str(&keys), scan ? " (scan of " : "", scan ? scan->rel : "",
                     scan ? ")" : "");
            dg_buf_free(&keys);
            if (!scan) {
                snprintf(f->note, sizeof f->note,
                         "the sort keys are expressions or span tables: no index suggested");
                continue;
            }
            snprintf(f->table, sizeof f->table, "%s", scan->rel);
            tcols tc;
            rc = table_cols(db, scan->rel, &tc, err);
            if (rc)
                break;
            cols c = {0};
            /* Equality filter columns first: one index serves both. */
            if (scan->filter) {
                toks v = tokenize(scan->filter);
                cond_cols(&v, 0, v.n, scan->rel, scan->alias, &tc, true, &c);
                free(v.t);
            }
            bool all = true;
            for (size_t k = 0; k < sc.n; k++)
                all &= tcols_has(&tc, sc.v[k]);
            if (!all)
                c.n = 0;
            for (size_t k = 0; k < sc.n && all; k++)
                cols_add(&c, sc.v[k]);
            tcols_free(&tc);
            if (c.n)
                suggest(f, scan->rel, &c);
        }
        if (o->analyze && x->has_act && x->loops > 0) {
            double e = x->est_rows, a = x->act_rows;
            double hi = e > a ? e : a, lo = e > a ? a : e;
            if (hi >= 100 && hi >= 10 * (lo < 1 ? 1 : lo)) {
                finding *f = fnew(fs);
                if (!f)
                    return oom(err);
                f->kind = F_MISESTIMATE;
                if (x->rel)
                    snprintf(f->table, sizeof f->table, "%s", x->rel);
                snprintf(f->msg, sizeof f->msg,
                         "%s%s%s: estimated %.0f rows, actual %.0f (%.0fx %s)", x->type,
                         x->rel ? " on " : "", x->rel ? x->rel : "", e, a,
                         hi / (lo < 1 ? 1 : lo), a > e ? "under" : "over");
                if (x->rel && x->filter)
                    snprintf(f->note, sizeof f->note,
                             "ANALYZE %s; if the filter's columns are correlated, CREATE "
                             "STATISTICS ... (dependencies) ON them",
                             x->rel);
                else if (x->rel)
                    snprintf(f->note, sizeof f->note, "ANALYZE %s", x->rel);
                else
                    snprintf(f->note, sizeof f->note,
                             "check the statistics of the tables below this node (ANALYZE)");
            }
        }
    }
    return rc;
}

/* ---- SQLite analysis ---- */

typedef struct alias {
    char name[128], table[128];
} alias;

/* FROM / JOIN items: name [AS] alias. */
static size_t sql_aliases(const toks *v, alias *out, size_t max)
{
    size_t n = 0;
    bool in_from = false;
    for (size_t i = 0; i < v->n; i++) {
        const tok *t = &v->t[i];
        if (kw(t, "from") || kw(t, "join")) {
            in_from = true;
        } else if (kw(t, "where") || kw(t, "group") || kw(t, "order") || kw(t, "limit") ||
                   kw(t, "on") || kw(t, "having") || kw(t, "union") || op(t, ")") ||
                   kw(t, "using")) {
            in_from = false;
            continue;
        } else if (!(in_from && op(t, ","))) {
            continue;
        }
        if (i + 1 >= v->n || !is_ident(&v->t[i + 1]) || is_keyword(&v->t[i + 1]))
            continue;
        const tok *name = &v->t[i + 1];
        size_t k = i + 2;
        if (k + 1 < v->n && op(&v->t[k], ".") && is_ident(&v->t[k + 1])) {
            name = &v->t[k + 1]; /* schema.table */
            k += 2;
        }
        const tok *al = name;
        if (k < v->n && kw(&v->t[k], "as"))
            k++;
        if (k < v->n && is_ident(&v->t[k]) && !is_keyword(&v->t[k]))
            al = &v->t[k];
        if (n < max) {
            snprintf(out[n].name, sizeof out[n].name, "%s", al->text);
            snprintf(out[n].table, sizeof out[n].table, "%s", name->text);
            n++;
        }
    }
    return n;
}

/* Token ranges of the WHERE and ON conditions at any level. */
static void cond_ranges(const toks *v, size_t *starts, size_t *ends, size_t *n, size_t max)
{
    *n = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (!(kw(&v->t[i], "where") || kw(&v->t[i], "on")))
            continue;
        size_t j = i + 1;
        int depth = 0;
        for (; j < v->n; j++) {
            const tok *t = &v->t[j];
            if (op(t, "("))
                depth++;
            else if (op(t, ")")) {
                if (depth == 0)
                    break;
                depth--;
            } else if (depth == 0 &&
                       (kw(t, "group") || kw(t, "order") || kw(t, "limit") || kw(t, "having") ||
                        kw(t, "join") || kw(t, "left") || kw(t, "inner") || kw(t, "cross") ||
                        kw(t, "union") || kw(t, "where") || kw(t, "window") || op(t, ";")))
                break;
        }
        if (*n < max) {
            starts[*n] = i + 1;
            ends[*n] = j;
            (*n)++;
        }
    }
}

/* ORDER BY plain columns (the last top-level ORDER BY); qual gets a common
 * qualifier. False when a key is an expression. */
static bool order_cols(const toks *v, char *qual, size_t qlen, cols *out)
{
    size_t at = v->n;
    int depth = 0;
    for (size_t i = 0; i + 1 < v->n; i++) {
        if (op(&v->t[i], "("))
            depth++;
        else if (op(&v->t[i], ")"))
            depth--;
        else if (depth == 0 && kw(&v->t[i], "order") && kw(&v->t[i + 1], "by"))
            at = i + 2;
    }
    qual[0] = '\0';
    if (at >= v->n)
        return false;
    size_t i = at;
    while (i < v->n) {
        if (!is_ident(&v->t[i]) || is_keyword(&v->t[i]))
            return false;
        const char *col = v->t[i].text;
        i++;
        if (i + 1 < v->n && op(&v->t[i], ".") && is_ident(&v->t[i + 1])) {
            if (qual[0] && strcmp(qual, col) != 0)
                return false;
            snprintf(qual, qlen, "%s", col);
            col = v->t[i + 1].text;
            i += 2;
        }
        cols_add(out, col);
        while (i < v->n && (kw(&v->t[i], "asc") || kw(&v->t[i], "desc") ||
                            kw(&v->t[i], "nulls") || kw(&v->t[i], "first") ||
                            kw(&v->t[i], "last")))
            i++;
        if (i < v->n && op(&v->t[i], ",")) {
            i++;
            continue;
        }
        break;
    }
    return out->n > 0;
}

static dbk_rc sqlite_findings(dbk_db *db, const char *sql, const plan *p,
                              const dg_explain_opts *o, findings *fs, dbk_error *err)
{
    int64_t min_rows = o->min_rows > 0 ? o->min_rows : 1000;
    toks v = tokenize(sql);
    alias al[32];
    size_t nal = sql_aliases(&v, al, 32);
    size_t cs[32], ce[32], nc = 0;
    cond_ranges(&v, cs, ce, &nc, 32);
    dbk_rc rc = DBK_OK;
    for (size_t i = 0; i < p->nn && !rc; i++) {
        const char *d = p->n[i].detail ? p->n[i].detail : "";
        if (strncmp(d, "SCAN ", 5) == 0) {
            const char *name = d + 5;
            if (strncmp(name, "TABLE ", 6) == 0) /* SQLite before 3.36 */
                name += 6;
            char nm[128];
            size_t len = strcspn(name, " ");
            if (name[len] != '\0' || len == 0 || len >= sizeof nm)
                continue; /* "SCAN t USING INDEX ...", subqueries, constant rows */
            snprintf(nm, sizeof nm, "%.*s", (int)len, name);
            const char *table = nm;
            for (size_t k = 0; k < nal; k++)
                if (strcmp(al[k].name, nm) == 0)
                    table = al[k].table;
            cols c = {0};
            rc = filter_cols(db, &v, cs, ce, nc, table, nm, false, &c, err);
            if (rc)
                break;
            if (!c.n)
                continue; /* no filter on this table: reading it all is the job */
            double rows;
            finding *f;
            rc = big_table_finding(db, table, min_rows, F_SCAN, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            snprintf(f->table, sizeof f->table, "%s", table);
            dg_buf cl = {0};
            cols_join(&c, &cl);
            snprintf(f->msg, sizeof f->msg,
                     "full scan of %s (%s%.0f rows) filtering on %s", table,
                     rows > (double)min_rows ? "more than " : "", (double)min_rows, dg_str(&cl));
            dg_buf_free(&cl);
            suggest(f, table, &c);
        } else if (strcmp(d, "USE TEMP B-TREE FOR ORDER BY") == 0) {
            char qual[128];
            cols oc = {0};
            const char *table = NULL;
            if (order_cols(&v, qual, sizeof qual, &oc)) {
                for (size_t k = 0; k < nal && !table; k++) {
                    if (qual[0] && strcmp(al[k].name, qual) != 0)
                        continue;
                    tcols tc;
                    rc = table_cols(db, al[k].table, &tc, err);
                    if (rc)
                        break;
                    bool all = true;
                    for (size_t m = 0; m < oc.n; m++)
                        all &= tcols_has(&tc, oc.v[m]);
                    tcols_free(&tc);
                    if (all)
                        table = al[k].table;
                }
            }
            if (rc)
                break;
            double rows;
            finding *f;
            rc = big_table_finding(db, table, min_rows, F_SORT, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            dg_buf cl = {0};
            cols_join(&oc, &cl);
            snprintf(f->msg, sizeof f->msg, "sort on %s in a temporary b-tree (no index gives "
                     "the order)%s%s", oc.n ? dg_str(&cl) : "the ORDER BY keys",
                     table ? " on " : "", table ? table : "");
            dg_buf_free(&cl);
            if (table) {
                snprintf(f->table, sizeof f->table, "%s", table);
                /* Equality-filtered columns first: one index serves both. */
                const char *an = table;
                for (size_t k = 0; k < nal; k++)
                    if (strcmp(al[k].table, table) == 0)
                        an = al[k].name;
                cols c = {0};
                rc = filter_cols(db, &v, cs, ce, nc, table, an, true, &c, err);
                if (rc)
                    break;
                for (size_t k = 0; k < oc.n; k++)
                    cols_add(&c, oc.v[k]);
                suggest(f, table, &c);
            } else {
                snprintf(f->note, sizeof f->note,
                         "the ORDER BY keys are expressions or span tables: no index suggested");
            }
        }
    }
    free(v.t);
    return rc;
}

/* ---- HypoPG ---- */

static dbk_rc hypo_verify(dbk_db *db, xctx *x, double before, findings *fs, char *status,
                          size_t slen, dbk_error *err)
{
    size_t nsugg = 0;
    for (size_t i = 0; i < fs->n; i++)
        nsugg += fs->v[i].verdict == V_UNVERIFIED;
    if (!nsugg) {
        snprintf(status, slen, "none needed");
        return DBK_OK;
    }
    dbk_error e2;
    dbk_error_clear(&e2);
    if (dbk_db_exec(db, "CREATE EXTENSION IF NOT EXISTS hypopg", NULL, 0, NULL, &e2) != DBK_OK) {
        snprintf(status, slen, "unavailable (%.400s): suggestions are unverified", e2.message);
        return DBK_OK;
    }
    bool save = x->analyze;
    x->analyze = false;
    dbk_rc rc = DBK_OK;
    for (size_t i = 0; i < fs->n && !rc; i++) {
        finding *f = &fs->v[i];
        if (f->verdict != V_UNVERIFIED)
            continue;
        /* The same index may be suggested twice (scan and sort). */
        bool dup = false;
        for (size_t j = 0; j < i; j++)
            if ((fs->v[j].verdict == V_KEPT || fs->v[j].verdict == V_REJECTED) &&
                strcmp(fs->v[j].sugg, f->sugg) == 0) {
                f->verdict = fs->v[j].verdict;
                f->before = fs->v[j].before;
                f->after = fs->v[j].after;
                dup = true;
            }
        if (dup)
            continue;
        dbk_value v = dbk_text(f->sugg);
        dbk_result *r = NULL;
        rc = dbk_db_query(db, "SELECT indexrelid FROM hypopg_create_index($1)", &v, 1, &r, err);
        dbk_result_free(r);
        if (rc)
            break;
        plan p2 = {0};
        rc = pg_explain_doc(db, x, err);
        if (!rc)
            rc = pg_flatten(db, x->json, &p2, err);
        dbk_db_exec(db, "SELECT hypopg_reset()", NULL, 0, NULL, NULL);
        if (rc) {
            plan_free(&p2);
            break;
        }
        f->before = before;
        f->after = p2.cost;
        f->verdict = p2.cost <= before / 2 ? V_KEPT : V_REJECTED;
        plan_free(&p2);
    }
    x->analyze = save;
    if (!rc)
        snprintf(status, slen, "hypopg");
    return rc;
}

/* ---- output ---- */

static void print_plan(const plan *p, bool pg, const char *ind)
{
    printf("%sPlan:\n", ind);
    for (size_t i = 0; i < p->nn; i++) {
        const pnode *x = &p->n[i];
        /* psql's layout: children "->  " six columns deeper. */
        int at = x->depth ? (x->depth - 1) * 6 + 2 : 0;
        printf("%s  %*s%s", ind, at, "", x->depth ? "->  " : "");
        if (!pg) {
            printf("%s\n", x->detail ? x->detail : "");
            continue;
        }
        printf("%s", x->type);
        if (x->index)
            printf(" using %s", x->index);
        if (x->rel) {
            printf(" on %s", x->rel);
            if (x->alias && strcmp(x->alias, x->rel) != 0)
                printf(" %s", x->alias);
        }
        printf("  (cost=%.2f rows=%.0f", x->cost, x->est_rows);
        if (x->has_act)
            printf(") (actual rows=%.0f loops=%.0f", x->act_rows, x->loops);
        printf(")\n");
        int pad = x->depth * 6 + 2;
        if (x->cond)
            printf("%s  %*sCond: %s\n", ind, pad, "", x->cond);
        if (x->filter)
            printf("%s  %*sFilter: %s\n", ind, pad, "", x->filter);
        if (x->sortkey) {
            printf("%s  %*sSort Key: ", ind, pad, "");
            for (const char *k = x->sortkey; *k; k++)
                fputs(*k == '\x1f' ? ", " : (char[2]){*k, 0}, stdout);
            printf("\n");
        }
    }
    if (pg && p->has_exec)
        printf("%s  Execution time: %.3f ms\n", ind, p->exec_ms);
}

static const char *kind_name(int k)
{
    return k == F_SCAN ? "seq_scan" : k == F_SORT ? "sort" : "misestimate";
}

static const char *verdict_name(int v)
{
    return v == V_KEPT ? "verified" : v == V_REJECTED ? "rejected" : "unverified";
}

static void print_findings(const findings *fs, const char *verification, bool pg,
                           const char *ind)
{
    if (!fs->n) {
        printf("%sNo findings.\n", ind);
        return;
    }
    printf("%sFindings:\n", ind);
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->v[i];
        printf("%s  %zu. [%s] %s\n", ind, i + 1, kind_name(f->kind), f->msg);
        if (f->verdict == V_KEPT)
            printf("%s     suggestion: %s;\n%s     verified with HypoPG: cost %.2f -> %.2f "
                   "(-%.0f%%)\n",
                   ind, f->sugg, ind, f->before, f->after,
                   f->before > 0 ? 100.0 * (f->before - f->after) / f->before : 0.0);
        else if (f->verdict == V_REJECTED)
            printf("%s     not suggested: %s would not halve the cost (%.2f -> %.2f, HypoPG)\n",
                   ind, f->sugg, f->before, f->after);
        else if (f->verdict == V_UNVERIFIED)
            printf("%s     suggestion: %s;  (unverified%s)\n", ind, f->sugg,
                   !pg ? ": SQLite has no hypothetical indexes"
                   : strncmp(verification, "off", 3) == 0 ? ": --no-verify"
                                                           : ": HypoPG not available");
        if (f->note[0])
            printf("%s     hint: %s\n", ind, f->note);
    }
    if (pg && strncmp(verification, "unavailable", 11) == 0)
        printf("%sHypoPG %s\n", ind, verification);
}

static void json_out(jw *w, const plan *p, bool pg, const findings *fs, const char *verification)
{
    jw_key(w, "plan");
    jw_arr(w);
    for (size_t i = 0; i < p->nn; i++) {
        const pnode *x = &p->n[i];
        jw_obj(w);
        jw_kint(w, "depth", x->depth);
        jw_kstr(w, pg ? "node" : "detail", pg ? x->type : (x->detail ? x->detail : ""));
        if (x->rel)
            jw_kstr(w, "relation", x->rel);
        if (x->alias)
            jw_kstr(w, "alias", x->alias);
        if (x->index)
            jw_kstr(w, "index", x->index);
        if (x->filter)
            jw_kstr(w, "filter", x->filter);
        if (x->cond)
            jw_kstr(w, "condition", x->cond);
        if (x->sortkey) {
            jw_key(w, "sort_key");
            jw_arr(w);
            for (const char *k = x->sortkey; *k;) {
                size_t n = strcspn(k, "\x1f");
                jw_strn(w, k, n);
                k += n + (k[n] ? 1 : 0);
            }
            jw_end_arr(w);
        }
        if (pg) {
            jw_key(w, "cost");
            jw_double(w, x->cost);
            jw_key(w, "estimated_rows");
            jw_double(w, x->est_rows);
            if (x->has_act) {
                jw_key(w, "actual_rows");
                jw_double(w, x->act_rows);
                jw_key(w, "loops");
                jw_double(w, x->loops);
            }
        }
        jw_end_obj(w);
    }
    jw_end_arr(w);
    if (pg) {
        jw_key(w, "total_cost");
        jw_double(w, p->cost);
        if (p->has_exec) {
            jw_key(w, "execution_ms");
            jw_double(w, p->exec_ms);
        }
    }
    jw_key(w, "findings");
    jw_arr(w);
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->v[i];
        jw_obj(w);
        jw_kstr(w, "kind", kind_name(f->kind));
        if (f->table[0])
            jw_kstr(w, "table", f->table);
        jw_kstr(w, "message", f->msg);
        if (f->verdict != V_NONE) {
            jw_key(w, "suggestion");
            if (f->verdict == V_REJECTED)
                jw_null(w);
            else
                jw_str(w, f->sugg);
            jw_kstr(w, "candidate", f->sugg);
            jw_kstr(w, "verdict", verdict_name(f->verdict));
            if (f->verdict == V_KEPT || f->verdict == V_REJECTED) {
                jw_key(w, "cost_before");
                jw_double(w, f->before);
                jw_key(w, "cost_after");
                jw_double(w, f->after);
            }
        }
        if (f->note[0])
            jw_kstr(w, "hint", f->note);
        jw_end_obj(w);
    }
    jw_end_arr(w);
    jw_kstr(w, "verification", verification);
}

/* ---- the analysis ---- */

dbk_rc dg_explain(const cli *c, dbk_db *db, const char *sql, const dbk_value *params,
                  size_t nparams, const dg_explain_opts *o, jw *w, const char *indent,
                  size_t *nfindings, dbk_error *err)
{
    (void)c;
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    xctx x = {sql, params, nparams, dg_sql_max_param(sql) - (int)nparams, o->analyze, 0, NULL};
    plan p = {0};
    findings fs = {0};
    char verification[512] = "";
    dbk_rc rc = DBK_OK;
    *nfindings = 0;
    dbk_error_clear(err);
    bool read = dg_sql_is_read(sql);
    if (o->analyze && x.missing > 0) {
        snprintf(err->message, sizeof err->message,
                 "--analyze runs the statement: it has %d placeholder(s) without arguments",
                 dg_sql_max_param(sql) - (int)nparams);
        snprintf(err->hint, sizeof err->hint, "pass a value for each $n, or drop --analyze");
        return DBK_EINVALID;
    }
    if (pg && o->analyze && !read && !o->analyze_writes) {
        snprintf(err->message, sizeof err->message,
                 "--analyze would run this statement, and it is not a SELECT");
        snprintf(err->hint, sizeof err->hint,
                 "add --analyze-writes to run it in a transaction that is rolled back");
        return DBK_EINVALID;
    }
    if (pg) {
        const char *ver = NULL;
        char vbuf[32] = "";
        if (dbk_db_query_text(db, "SHOW server_version_num", NULL, 0, vbuf, sizeof vbuf, NULL,
                              err) == DBK_OK)
            ver = vbuf;
        int64_t num = 0;
        x.pg_major = ver && cli_parse_i64(ver, &num) && num > 0 && num < 10000000
                         ? (int)(num / 10000)
                         : 15;
        if (o->analyze && !read) {
            rc = dbk_transaction(db, tx_explain, &x, NULL, err);
            if (rc == DBK_ECANCELLED && x.json) {
                dbk_error_clear(err);
                rc = DBK_OK;
            }
        } else {
            rc = pg_explain_doc(db, &x, err);
        }
        if (!rc)
            rc = pg_flatten(db, x.json, &p, err);
        if (!rc)
            rc = pg_findings(db, &p, o, &fs, err);
        if (!rc) {
            if (o->no_verify) {
                snprintf(verification, sizeof verification, "off (--no-verify)");
            } else {
                rc = hypo_verify(db, &x, p.cost, &fs, verification, sizeof verification, err);
            }
        }
    } else {
        rc = sqlite_plan(db, &x, &p, err);
        if (!rc)
            rc = sqlite_findings(db, sql, &p, o, &fs, err);
        snprintf(verification, sizeof verification,
                 "unavailable on SQLite: suggestions are unverified");
    }
    if (!rc) {
        *nfindings = fs.n;
        if (w) {
            jw_kstr(w, "engine", pg ? "postgres" : "sqlite");
            jw_kbool(w, "analyze", pg && o->analyze);
            jw_kbool(w, "generic_plan", x.missing > 0);
            json_out(w, &p, pg, &fs, verification);
        } else if (!c->quiet) {
            if (!pg && o->analyze)
                printf("%s(--analyze has no SQLite equivalent: plan only)\n", indent);
            if (x.missing > 0)
                printf(pg ? "%s(generic plan: %d placeholder(s) without a value)\n"
                          : "%s(%d placeholder(s) without a value, planned as NULL)\n",
                       indent, x.missing);
            print_plan(&p, pg, indent);
            print_findings(&fs, verification, pg, indent);
        }
    }
    free(x.json);
    plan_free(&p);
    free(fs.v);
    return rc;
}

int dg_explain_opt(const cli *c, int argc, char **argv, int *i, dg_explain_opts *o)
{
    const char *v = NULL;
    if (strcmp(argv[*i], "--no-verify") == 0) {
        o->no_verify = true;
        return 1;
    }
    int r = cli_opt_value(c, argc, argv, i, "--min-rows", &v);
    if (r <= 0)
        return r;
    if (!cli_parse_i64(v, &o->min_rows)) {
        cli_usage(c, "--min-rows takes a number of rows, got '%s'", v);
        return -1;
    }
    return 1;
}

int cmd_explain(cli *c, int argc, char **argv)
{
    dg_explain_opts o = {0};
    bool exit_code = false;
    const char *sql = NULL;
    int first_arg = argc;
    bool dashdash = false;
    for (int i = 1; i < argc; i++) {
        int r;
        if (!dashdash && strcmp(argv[i], "--") == 0) {
            dashdash = true;
            continue;
        }
        if (!dashdash && !sql) {
            if (cli_is_help(argv[i])) {
                fputs(HELP, stdout);
                return CLI_OK;
            } else if (strcmp(argv[i], "--analyze") == 0) {
                o.analyze = true;
                continue;
            } else if (strcmp(argv[i], "--analyze-writes") == 0) {
                o.analyze = o.analyze_writes = true;
                continue;
            } else if (strcmp(argv[i], "--exit-code") == 0) {
                exit_code = true;
                continue;
            } else if ((r = dg_explain_opt(c, argc, argv, &i, &o)) != 0) {
                if (r < 0)
                    return CLI_USAGE;
                continue;
            } else if (argv[i][0] == '-' && argv[i][1] == '-') {
                return cli_usage(c, "unknown option '%s'", argv[i]);
            }
        }
        if (!sql) {
            sql = argv[i];
            first_arg = i + 1;
            break;
        }
    }
    if (!sql)
        return cli_usage(c, "explain needs SQL, e.g. dbkit explain 'SELECT * FROM posts WHERE "
                            "user_id = $1' 42");
    {
        toks v = tokenize(sql);
        bool is_explain = v.n > 0 && kw(&v.t[0], "explain");
        free(v.t);
        if (is_explain)
            return cli_usage(c, "give the statement without EXPLAIN; use --analyze for ANALYZE");
    }
    int nargs = 0;
    dbk_value *params = calloc((size_t)argc + 1, sizeof *params);
    if (!params)
        return CLI_ERROR;
    for (int i = first_arg; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0 && i == first_arg && !dashdash)
            continue;
        params[nargs++] = dbk_text(argv[i]);
    }
    dbk_conn *conn = NULL;
    int code = cli_connect(c, false, NULL, 0, &conn);
    if (code) {
        free(params);
        return code;
    }
    dbk_error err;
    dbk_error_clear(&err);
    size_t nf = 0;
    jw w;
    if (c->json) {
        /* Built in memory: an error after the first member must still give
         * one well-formed document. */
        char *mem = NULL;
        size_t memlen = 0;
        FILE *mf = open_memstream(&mem, &memlen);
        if (!mf) {
            free(params);
            dbk_conn_close(conn);
            return CLI_ERROR;
        }
        jw_init(&w, mf);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        dbk_rc rc = dg_explain(c, dbk_conn_db(conn), sql, params, (size_t)nargs, &o, &w, "",
                               &nf, &err);
        jw_kint(&w, "finding_count", (int64_t)nf);
        jw_end_obj(&w);
        fclose(mf);
        free(params);
        dbk_conn_close(conn);
        if (rc) {
            free(mem);
            return cli_fail(c, rc, &err);
        }
        fwrite(mem, 1, memlen, stdout);
        free(mem);
    } else {
        dbk_rc rc = dg_explain(c, dbk_conn_db(conn), sql, params, (size_t)nargs, &o, NULL, "",
                               &nf, &err);
        free(params);
        dbk_conn_close(conn);
        if (rc)
            return cli_fail(c, rc, &err);
    }
    return exit_code && nf > 0 ? CLI_FINDINGS : CLI_OK;
}
