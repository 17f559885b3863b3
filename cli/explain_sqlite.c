/*
 * explain_sqlite.c - the SQLite analysis of `dbkit explain`: SCAN rows
 * and temp B-trees for ORDER BY, with the filter and order columns read
 * from the statement (EXPLAIN QUERY PLAN does not name them).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

/* ---- SQLite analysis ---- */

/* FROM / JOIN items: name [AS] alias. */
static size_t sql_aliases(const toks *v, sql_alias *out, size_t max)
{
    size_t n = 0;
    bool in_from = false;
    for (size_t i = 0; i < v->n; i++) {
        const tok *t = &v->t[i];
        if (dgx_kw(t, "from") || dgx_kw(t, "join")) {
            in_from = true;
        } else if (dgx_kw(t, "where") || dgx_kw(t, "group") || dgx_kw(t, "order") || dgx_kw(t, "limit") ||
                   dgx_kw(t, "on") || dgx_kw(t, "having") || dgx_kw(t, "union") || dgx_op(t, ")") ||
                   dgx_kw(t, "using")) {
            in_from = false;
            continue;
        } else if (!(in_from && dgx_op(t, ","))) {
            continue;
        }
        if (i + 1 >= v->n || !dgx_is_ident(&v->t[i + 1]) || dgx_is_keyword(&v->t[i + 1]))
            continue;
        const tok *name = &v->t[i + 1];
        size_t k = i + 2;
        if (k + 1 < v->n && dgx_op(&v->t[k], ".") && dgx_is_ident(&v->t[k + 1])) {
            name = &v->t[k + 1]; /* schema.table */
            k += 2;
        }
        const tok *al = name;
        if (k < v->n && dgx_kw(&v->t[k], "as"))
            k++;
        if (k < v->n && dgx_is_ident(&v->t[k]) && !dgx_is_keyword(&v->t[k]))
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
        if (!(dgx_kw(&v->t[i], "where") || dgx_kw(&v->t[i], "on")))
            continue;
        size_t j = i + 1;
        int depth = 0;
        for (; j < v->n; j++) {
            const tok *t = &v->t[j];
            if (dgx_op(t, "("))
                depth++;
            else if (dgx_op(t, ")")) {
                if (depth == 0)
                    break;
                depth--;
            } else if (depth == 0 &&
                       (dgx_kw(t, "group") || dgx_kw(t, "order") || dgx_kw(t, "limit") || dgx_kw(t, "having") ||
                        dgx_kw(t, "join") || dgx_kw(t, "left") || dgx_kw(t, "inner") || dgx_kw(t, "cross") ||
                        dgx_kw(t, "union") || dgx_kw(t, "where") || dgx_kw(t, "window") || dgx_op(t, ";")))
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
        if (dgx_op(&v->t[i], "("))
            depth++;
        else if (dgx_op(&v->t[i], ")"))
            depth--;
        else if (depth == 0 && dgx_kw(&v->t[i], "order") && dgx_kw(&v->t[i + 1], "by"))
            at = i + 2;
    }
    qual[0] = '\0';
    if (at >= v->n)
        return false;
    size_t i = at;
    while (i < v->n) {
        if (!dgx_is_ident(&v->t[i]) || dgx_is_keyword(&v->t[i]))
            return false;
        const char *col = v->t[i].text;
        i++;
        if (i + 1 < v->n && dgx_op(&v->t[i], ".") && dgx_is_ident(&v->t[i + 1])) {
            if (qual[0] && strcmp(qual, col) != 0)
                return false;
            snprintf(qual, qlen, "%s", col);
            col = v->t[i + 1].text;
            i += 2;
        }
        dgx_cols_add(out, col);
        while (i < v->n && (dgx_kw(&v->t[i], "asc") || dgx_kw(&v->t[i], "desc") ||
                            dgx_kw(&v->t[i], "nulls") || dgx_kw(&v->t[i], "first") ||
                            dgx_kw(&v->t[i], "last")))
            i++;
        if (i < v->n && dgx_op(&v->t[i], ",")) {
            i++;
            continue;
        }
        break;
    }
    return out->n > 0;
}

dbk_rc dgx_sqlite_findings(dbk_db *db, const char *sql, const plan *p,
                              const dg_explain_opts *o, findings *fs, dbk_error *err)
{
    int64_t min_rows = o->min_rows > 0 ? o->min_rows : 1000;
    toks v = dgx_tokenize_engine(sql, DBK_ENGINE_SQLITE);
    sql_alias al[32];
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
            rc = dgx_filter_cols(db, &v, cs, ce, nc, table, nm, false, &c, err);
            if (rc)
                break;
            if (!c.n)
                continue; /* no filter on this table: reading it all is the job */
            double rows;
            finding *f;
            rc = dgx_big_table_finding(db, table, min_rows, F_SCAN, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            snprintf(f->table, sizeof f->table, "%s", table);
            dg_buf cl = {0};
            dgx_cols_join(&c, &cl);
            snprintf(f->msg, sizeof f->msg,
                     "full scan of %s (%s%.0f rows) filtering on %s", table,
                     rows > (double)min_rows ? "more than " : "", (double)min_rows, dg_str(&cl));
            dg_buf_free(&cl);
            dgx_suggest(f, table, &c);
        } else if (strcmp(d, "USE TEMP B-TREE FOR ORDER BY") == 0) {
            char qual[128];
            cols oc = {0};
            const char *table = NULL;
            if (order_cols(&v, qual, sizeof qual, &oc)) {
                for (size_t k = 0; k < nal && !table; k++) {
                    if (qual[0] && strcmp(al[k].name, qual) != 0)
                        continue;
                    tcols tc;
                    rc = dgx_table_cols(db, al[k].table, &tc, err);
                    if (rc)
                        break;
                    bool all = true;
                    for (size_t m = 0; m < oc.n; m++)
                        all &= dgx_tcols_has(&tc, oc.v[m]);
                    dgx_tcols_free(&tc);
                    if (all)
                        table = al[k].table;
                }
            }
            if (rc)
                break;
            double rows;
            finding *f;
            rc = dgx_big_table_finding(db, table, min_rows, F_SORT, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            dg_buf cl = {0};
            dgx_cols_join(&oc, &cl);
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
                rc = dgx_filter_cols(db, &v, cs, ce, nc, table, an, true, &c, err);
                if (rc)
                    break;
                for (size_t k = 0; k < oc.n; k++)
                    dgx_cols_add(&c, oc.v[k]);
                dgx_suggest(f, table, &c);
            } else {
                snprintf(f->note, sizeof f->note,
                         "the ORDER BY keys are expressions or span tables: no index suggested");
            }
        }
    }
    free(v.t);
    return rc;
}
