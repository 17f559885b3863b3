/*
 * explain_plan.c - reading plans: PostgreSQL's EXPLAIN (FORMAT JSON)
 * flattened by the server into one row per node, SQLite's EXPLAIN QUERY
 * PLAN, and the catalog facts findings are checked against (a table's
 * columns and size).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

/* ---- plan ---- */

void dgx_plan_free(plan *p)
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

dbk_rc dgx_oom(dbk_error *err)
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
dbk_rc dgx_pg_flatten(dbk_db *db, const char *json, plan *p, dbk_error *err)
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
        return dgx_oom(err);
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
            return dgx_oom(err);
        }
    }
    dbk_result_free(r);
    return DBK_OK;
}

dbk_rc dgx_pg_explain_doc(dbk_db *db, xctx *x, dbk_error *err)
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
        rc = q.oom ? dgx_oom(err)
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
    return x->json ? DBK_OK : dgx_oom(err);
}

/* ANALYZE of a write: inside a transaction that fn's rc rolls back. */
dbk_rc dgx_tx_explain(dbk_db *tx, void *ctx, dbk_error *err)
{
    dbk_rc rc = dgx_pg_explain_doc(tx, ctx, err);
    if (rc)
        return rc;
    return DBK_ECANCELLED;
}

dbk_rc dgx_sqlite_plan(dbk_db *db, xctx *x, plan *p, dbk_error *err)
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
        return dgx_oom(err);
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
        return dgx_oom(err);
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
            return dgx_oom(err);
        }
    }
    free(ids);
    dbk_result_free(r);
    return DBK_OK;
}

/* ---- catalog facts ---- */

void dgx_tcols_free(tcols *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i]);
    free(t->v);
    memset(t, 0, sizeof *t);
}

bool dgx_tcols_has(const tcols *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i], name) == 0)
            return true;
    return false;
}

dbk_rc dgx_table_cols(dbk_db *db, const char *table, tcols *out, dbk_error *err)
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
        return dgx_oom(err);
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
dbk_rc dgx_table_rows(dbk_db *db, const char *table, int64_t limit, double *rows,
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
    dgx_add_ident(&q, table);
    dg_addf(&q, " LIMIT %lld) s", (long long)limit + 1);
    int64_t n = 0;
    dbk_rc rc = q.oom ? dgx_oom(err) : dbk_db_query_int64(db, dg_str(&q), NULL, 0, &n, err);
    dg_buf_free(&q);
    if (!rc)
        *rows = (double)n;
    return rc;
}
