/*
 * explain_findings.c - findings of `dbkit explain` shared by both engines:
 * the list, index suggestions built only from columns the catalog confirms,
 * and the filter columns read from the statement's conditions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

/* ---- findings ---- */

finding *dgx_fnew(findings *f)
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

void dgx_suggest(finding *x, const char *table, const cols *c)
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
    dgx_add_ident(&b, nm);
    dg_add(&b, " ON ");
    dgx_add_ident(&b, table);
    dg_add(&b, " (");
    for (size_t i = 0; i < c->n; i++) {
        if (i)
            dg_add(&b, ", ");
        dgx_add_ident(&b, c->v[i]);
    }
    dg_add(&b, ")");
    snprintf(x->sugg, sizeof x->sugg, "%s", dg_str(&b));
    x->verdict = V_UNVERIFIED;
    dg_buf_free(&b);
}

/* Starts a finding of `kind` when `table` has more than min_rows rows:
 * *rows gets its size and *f the new finding, or NULL when the table is
 * small. A NULL table (not known) always gets its finding, *rows 0. */
dbk_rc dgx_big_table_finding(dbk_db *db, const char *table, int64_t min_rows, int kind,
                                findings *fs, double *rows, finding **f, dbk_error *err)
{
    *f = NULL;
    *rows = 0;
    if (table) {
        dbk_rc rc = dgx_table_rows(db, table, min_rows, rows, err);
        if (rc)
            return rc;
        if (*rows <= (double)min_rows)
            return DBK_OK;
    }
    *f = dgx_fnew(fs);
    if (!*f)
        return dgx_oom(err);
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
    return dgx_kw(t, "in") || dgx_kw(t, "like") || dgx_kw(t, "ilike") || dgx_kw(t, "between") || dgx_kw(t, "is") ||
           dgx_kw(t, "glob");
}

/* The plain columns of `table` (known as `alias`, may be NULL) compared in a
 * condition's tokens [from, to): equality columns first, then the others.
 * Identifiers inside a function call's parentheses, types after "::" and
 * names of other tables are skipped. */
void dgx_cond_cols(const toks *v, size_t from, size_t to, const char *table,
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
        if (dgx_op(t, "(")) {
            bool fn = prev && prev->kind == T_IDENT && !dgx_is_keyword(prev);
            if (pdepth < 64)
                fstack[pdepth] = fn;
            pdepth++;
            fdepth += fn;
            continue;
        }
        if (dgx_op(t, ")")) {
            if (pdepth > 0) {
                pdepth--;
                if (pdepth < 64 && fstack[pdepth])
                    fdepth--;
            }
            continue;
        }
        if (!dgx_is_ident(t) || dgx_is_keyword(t) || fdepth > 0)
            continue;
        if (dgx_op(prev, "::") || dgx_op(next, "(") || dgx_op(next, "."))
            continue;
        if (dgx_op(prev, ".")) {
            const tok *q = i >= from + 2 ? &v->t[i - 2] : NULL;
            if (!q || !dgx_is_ident(q))
                continue;
            if (strcmp(q->text, table) != 0 && !(alias && strcmp(q->text, alias) == 0))
                continue;
            prev = i >= from + 3 ? &v->t[i - 3] : NULL; /* the token before "q." */
        }
        if (!dgx_tcols_has(tc, t->text))
            continue;
        /* Compared: followed by an operator, or preceded by one (right-hand
         * side, e.g. a join condition). */
        if (dgx_op(next, "=") || dgx_op(next, "==") || (dgx_kw(next, "is") && !dgx_kw(i + 2 < to ? &v->t[i + 2] : NULL, "not")) ||
            dgx_kw(next, "in") || (dgx_op(prev, "=") || dgx_op(prev, "==")))
            dgx_cols_add(&eq, t->text);
        else if (is_cmp(next) || is_cmp(prev) || dgx_kw(next, "not"))
            dgx_cols_add(&other, t->text);
        else if ((!prev || dgx_op(prev, "(") || dgx_kw(prev, "and") || dgx_kw(prev, "or") ||
                  dgx_kw(prev, "not") || dgx_kw(prev, "where") || dgx_kw(prev, "on")) &&
                 (!next || dgx_op(next, ")") || dgx_kw(next, "and") || dgx_kw(next, "or") ||
                  dgx_kw(next, "group") || dgx_kw(next, "order") || dgx_kw(next, "limit")))
            dgx_cols_add(&eq, t->text); /* a boolean column used as the condition */
    }
    for (size_t i = 0; i < eq.n; i++)
        dgx_cols_add(out, eq.v[i]);
    for (size_t i = 0; i < other.n && !eq_only; i++)
        dgx_cols_add(out, other.v[i]);
}

/* cond_cols() over the condition ranges [starts[k], ends[k]) of v, with the
 * columns of `table` read from the catalog: the columns the conditions
 * filter on (equality only when `eq_only`) are added to *c. */
dbk_rc dgx_filter_cols(dbk_db *db, const toks *v, const size_t *starts, const size_t *ends,
                          size_t nranges, const char *table, const char *alias, bool eq_only,
                          cols *c, dbk_error *err)
{
    tcols tc;
    dbk_rc rc = dgx_table_cols(db, table, &tc, err);
    if (rc)
        return rc;
    for (size_t k = 0; k < nranges; k++)
        dgx_cond_cols(v, starts[k], ends[k], table, alias, &tc, eq_only, c);
    dgx_tcols_free(&tc);
    return DBK_OK;
}
