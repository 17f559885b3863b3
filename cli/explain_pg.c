/*
 * explain_pg.c - the PostgreSQL analysis of `dbkit explain`: whole-table
 * scans with a filter, sorts fed by them, misestimates, and each suggested
 * index tried as a HypoPG hypothetical index.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

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
        toks v = dgx_tokenize(key);
        size_t k = 0;
        const char *col = NULL, *q = NULL;
        if (k < v.n && dgx_is_ident(&v.t[k])) {
            col = v.t[k].text;
            k++;
            if (k + 1 < v.n && dgx_op(&v.t[k], ".") && dgx_is_ident(&v.t[k + 1])) {
                q = col;
                col = v.t[k + 1].text;
                k += 2;
            }
        }
        while (k < v.n && (dgx_kw(&v.t[k], "desc") || dgx_kw(&v.t[k], "asc") || dgx_kw(&v.t[k], "nulls") ||
                           dgx_kw(&v.t[k], "first") || dgx_kw(&v.t[k], "last")))
            k++;
        bool ok = col && k == v.n;
        if (ok && q) {
            if (qual[0] && strcmp(qual, q) != 0)
                ok = false;
            snprintf(qual, qlen, "%s", q);
        }
        if (ok)
            dgx_cols_add(out, col);
        free(v.t);
        if (!ok)
            return false;
        p += len + (p[len] ? 1 : 0);
    }
    return out->n > 0;
}

dbk_rc dgx_pg_findings(dbk_db *db, const plan *p, const dg_explain_opts *o, findings *fs,
                          dbk_error *err)
{
    int64_t min_rows = o->min_rows > 0 ? o->min_rows : 1000;
    dbk_rc rc = DBK_OK;
    for (size_t i = 0; i < p->nn && !rc; i++) {
        const pnode *x = &p->n[i];
        if (is_full_scan(x) && x->rel && x->filter) {
            double rows;
            finding *f;
            rc = dgx_big_table_finding(db, x->rel, min_rows, F_SCAN, fs, &rows, &f, err);
            if (rc)
                break;
            if (!f)
                continue;
            snprintf(f->table, sizeof f->table, "%s", x->rel);
            snprintf(f->msg, sizeof f->msg,
                     "sequential scan on %s (~%.0f rows) with filter %s", x->rel, rows, x->filter);
            toks v = dgx_tokenize(x->filter);
            size_t from = 0, to = v.n;
            cols c = {0};
            rc = dgx_filter_cols(db, &v, &from, &to, 1, x->rel, x->alias, false, &c, err);
            free(v.t);
            if (rc)
                break;
            if (c.n)
                dgx_suggest(f, x->rel, &c);
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
            rc = dgx_big_table_finding(db, scan ? scan->rel : NULL, min_rows, F_SORT, fs, &rows, &f,
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
            rc = dgx_table_cols(db, scan->rel, &tc, err);
            if (rc)
                break;
            cols c = {0};
            /* Equality filter columns first: one index serves both. */
            if (scan->filter) {
                toks v = dgx_tokenize(scan->filter);
                dgx_cond_cols(&v, 0, v.n, scan->rel, scan->alias, &tc, true, &c);
                free(v.t);
            }
            bool all = true;
            for (size_t k = 0; k < sc.n; k++)
                all &= dgx_tcols_has(&tc, sc.v[k]);
            if (!all)
                c.n = 0;
            for (size_t k = 0; k < sc.n && all; k++)
                dgx_cols_add(&c, sc.v[k]);
            dgx_tcols_free(&tc);
            if (c.n)
                dgx_suggest(f, scan->rel, &c);
        }
        if (o->analyze && x->has_act && x->loops > 0) {
            double e = x->est_rows, a = x->act_rows;
            double hi = e > a ? e : a, lo = e > a ? a : e;
            if (hi >= 100 && hi >= 10 * (lo < 1 ? 1 : lo)) {
                finding *f = dgx_fnew(fs);
                if (!f)
                    return dgx_oom(err);
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

/* ---- HypoPG ---- */

dbk_rc dgx_hypo_verify(dbk_db *db, xctx *x, double before, findings *fs, char *status,
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
        rc = dgx_pg_explain_doc(db, x, err);
        if (!rc)
            rc = dgx_pg_flatten(db, x->json, &p2, err);
        dbk_db_exec(db, "SELECT hypopg_reset()", NULL, 0, NULL, NULL);
        if (rc) {
            dgx_plan_free(&p2);
            break;
        }
        f->before = before;
        f->after = p2.cost;
        f->verdict = p2.cost <= before / 2 ? V_KEPT : V_REJECTED;
        dgx_plan_free(&p2);
    }
    x->analyze = save;
    if (!rc)
        snprintf(status, slen, "hypopg");
    return rc;
}
