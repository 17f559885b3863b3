/*
 * Repository queries over many rows: filters, ordering, pages with totals,
 * keyset cursors, projections and eager loading of relations.
 *
 * A query is assembled per call from pieces that are each checked against
 * the entity descriptor first: filter fields, sort keys, projected columns
 * and include paths are names the caller chose, so each is looked up and
 * anything unknown is refused before any SQL exists; values, limits and
 * offsets travel only as parameters.
 *
 * Totals: an exact total is a COUNT query with the same filters next to
 * the page query, on both engines; on PostgreSQL the two are sent as one
 * batch (one pipelined round trip, see page_with_count). A
 * `count(*) OVER ()` column would also save the round trip, but it was
 * measured slower (bench/
 * repo_bench.c, PostgreSQL 15 on loopback, 1,000 rows, page of 20:
 * 432 us window vs 352 us COUNT + page): the window has to see every row
 * before the LIMIT, which turns the top-N sort into a full sort, so it
 * is not used.
 * "has more" fetches one extra row; an estimate reads pg_class.reltuples.
 *
 * dbk_repo_find_many runs in three steps: plan (every name checked, the
 * sort keys, projection and counting strategy decided), SQL (the page and
 * COUNT statements built from the plan), execute (run, map the rows, load
 * includes, make the next cursor).
 *
 * This file holds filters, ordering, counts and find-many; cursor.c the
 * keyset cursors and include.c the eager loading of relations.
 *
 * Keyset cursors carry the last row's sort key values in a versioned,
 * checksummed, base64url string bound to the entity and the sort order;
 * decoding checks every byte and length, so a tampered cursor is
 * DBK_EINVALID and never reaches SQL as anything but parameters.
 *
 * Includes load each relation for a whole set of parent rows with exactly
 * one statement: the parents' keys go as ONE parameter (a PostgreSQL array
 * literal cast to the key's array type, or a JSON array expanded by
 * SQLite's json_each), so there is no parameter-count limit. The children
 * are sorted in memory by (foreign key, primary key) and each parent gets a
 * contiguous slice of that array, which is what nested includes then load
 * their own relations for.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/batch.h"
#include "../core/internal.h"
#include "repo_int.h"
#include "../driver/dialect.h"
#include "query_impl.h"

dbk_rc dbk__q_oom(dbk_error *err)
{
    return dbk__err(err, DBK_ENOMEM, "out of memory building a repository query");
}

static int add_param(struct qs *q, dbk_value v)
{
    if (q->np == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        dbk_value *p = realloc(q->params, cap * sizeof *p);
        if (!p)
            return -1;
        q->params = p;
        q->cap = cap;
    }
    q->params[q->np++] = v;
    return (int)q->np;
}

static const char *op_sql(dbk_filter_op op)
{
    switch (op) {
    case DBK_FILTER_EQ:
        return " = ";
    case DBK_FILTER_NE:
        return " <> ";
    case DBK_FILTER_LT:
        return " < ";
    case DBK_FILTER_LE:
        return " <= ";
    case DBK_FILTER_GT:
        return " > ";
    case DBK_FILTER_GE:
        return " >= ";
    case DBK_FILTER_LIKE:
        return " LIKE ";
    default:
        return NULL;
    }
}

/* Appends " WHERE c1 AND c2 ..." (nothing for no filters). */
static dbk_rc build_filters(struct qs *q, dbk__sb *sb, const dbk_filter *f, size_t n,
                            dbk_error *err)
{
    const dbk_entity *e = q->e;
    if (n && !f)
        return dbk__err(err, DBK_EMISUSE, "%zu filters announced but the list is NULL", n);
    for (size_t i = 0; i < n; i++) {
        int fi = dbk__field(e, f[i].field);
        if (fi < 0)
            return dbk__err(err, DBK_EINVALID_COLUMN, "%s has no field named by filter %zu",
                            e->table, i);
        dbk__sb_puts(sb, i ? " AND " : " WHERE ");
        dbk__sb_ident(sb, q->eng, e->fields[fi].column);
        switch (f[i].op) {
        case DBK_FILTER_IS_NULL:
            dbk__sb_puts(sb, " IS NULL");
            break;
        case DBK_FILTER_IS_NOT_NULL:
            dbk__sb_puts(sb, " IS NOT NULL");
            break;
        case DBK_FILTER_IN: {
            if (f[i].nvalues > DBK_REPO_MAX_IN)
                return dbk__err(err, DBK_EINVALID, "IN list of %zu values exceeds %d",
                                f[i].nvalues, DBK_REPO_MAX_IN);
            if (f[i].nvalues && !f[i].values)
                return dbk__err(err, DBK_EMISUSE, "IN filter on %s has no values array",
                                e->fields[fi].column);
            if (f[i].nvalues == 0) {
                dbk__sb_puts(sb, " IS NULL AND 1 = 0");
                break;
            }
            dbk__sb_puts(sb, " IN (");
            for (size_t k = 0; k < f[i].nvalues; k++) {
                if (f[i].values[k].type == DBK_TYPE_NULL)
                    return dbk__err(err, DBK_EINVALID, "IN filter on %s holds a NULL value",
                                    e->fields[fi].column);
                int p = add_param(q, f[i].values[k]);
                if (p < 0)
                    return dbk__q_oom(err);
                if (k)
                    dbk__sb_puts(sb, ", ");
                dbk__sb_param(sb, e, fi, p, q->eng);
            }
            dbk__sb_puts(sb, ")");
            break;
        }
        default: {
            const char *o = op_sql(f[i].op);
            if (!o)
                return dbk__err(err, DBK_EINVALID, "filter %zu has an unknown operator %d", i,
                                (int)f[i].op);
            if (f[i].value.type == DBK_TYPE_NULL)
                return dbk__err(err, DBK_EINVALID,
                                "filter on %s compares with NULL: use DBK_FILTER_IS_NULL",
                                e->fields[fi].column);
            if (f[i].op == DBK_FILTER_LIKE && (e->fields[fi].type != DBK_TYPE_TEXT ||
                                        f[i].value.type != DBK_TYPE_TEXT))
                return dbk__err(err, DBK_EINVALID, "LIKE needs a text field and a text pattern");
            int p = add_param(q, f[i].value);
            if (p < 0)
                return dbk__q_oom(err);
            dbk__sb_puts(sb, o);
            dbk__sb_param(sb, e, fi, p, q->eng);
        }
        }
    }
    return sb->oom ? dbk__q_oom(err) : DBK_OK;
}

dbk_rc dbk_repo_count(dbk_db *db, const dbk_entity *e, const dbk_filter *filters, size_t nfilters,
                      int64_t *out, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, NULL, false, "dbk_repo_count", err);
    if (rc)
        return rc;
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_count: out must not be NULL");
    struct qs q = {e, dbk_db_engine(db), NULL, 0, 0};
    dbk__sb sb = {0};
    dbk__sb_puts(&sb, "SELECT count(*) FROM ");
    dbk__sb_ident(&sb, q.eng, e->table);
    rc = build_filters(&q, &sb, filters, nfilters, err);
    if (rc == DBK_OK)
        rc = dbk_db_query_int64(db, sb.p, q.params, q.np, out, err);
    free(sb.p);
    free(q.params);
    return rc;
}

/* ---- ordering ---- */

static dbk_rc add_order(const dbk_entity *e, struct okey *keys, int *n, const char *name,
                        size_t len, bool desc, dbk_error *err)
{
    int fi = -1;
    for (size_t i = 0; i < e->nfields && name; i++)
        if (strlen(e->fields[i].column) == len && memcmp(e->fields[i].column, name, len) == 0)
            fi = (int)i;
    if (fi < 0)
        return dbk__err(err, DBK_EINVALID_SORT, "%s cannot be sorted by a field it does not have",
                        e->table);
    const dbk_field *f = &e->fields[fi];
    if ((f->flags & DBK_F_HIDDEN) || f->type == DBK_TYPE_BLOB || f->type == DBK_TYPE_JSON)
        return dbk__err(err, DBK_EINVALID_SORT, "%s.%s is not a sort key", e->table, f->column);
    if (*n >= MAX_ORDER)
        return dbk__err(err, DBK_EINVALID_SORT, "more than %d sort keys", MAX_ORDER);
    keys[*n].field = fi;
    keys[*n].desc = desc;
    (*n)++;
    return DBK_OK;
}

static dbk_rc parse_order(const dbk_entity *e, const dbk_query *q, struct okey *keys, int *n,
                          dbk_error *err)
{
    *n = 0;
    if (q->order && q->order_by)
        return dbk__err(err, DBK_EMISUSE, "set either order or order_by, not both");
    if (q->norder && !q->order)
        return dbk__err(err, DBK_EMISUSE, "%zu sort keys announced but order is NULL", q->norder);
    for (size_t i = 0; i < q->norder; i++) {
        const char *name = q->order[i].field;
        dbk_rc rc = add_order(e, keys, n, name, name ? strlen(name) : 0, q->order[i].desc, err);
        if (rc)
            return rc;
    }
    if (q->order_by) {
        const char *s = q->order_by;
        while (*s) {
            while (*s == ' ' || *s == ',')
                s++;
            if (!*s)
                break;
            bool desc = false;
            if (*s == '-' || *s == '+') {
                desc = *s == '-';
                s++;
            }
            const char *b = s;
            while (*s && *s != ',' && *s != ' ')
                s++;
            dbk_rc rc = add_order(e, keys, n, b, (size_t)(s - b), desc, err);
            if (rc)
                return rc;
        }
    }
    return DBK_OK;
}

/* ---- find many: plan -> SQL -> execute ---- */

static dbk_rc run_count(dbk_db *db, const char *table_sql_where, const struct qs *q, size_t np,
                        int64_t *total, dbk_error *err)
{
    return dbk_db_query_int64(db, table_sql_where, q->params, np, total, err);
}

/* COUNT and page in one batch: both statements go out together and the
 * page's rows come back in *page (owned by the caller). */
static dbk_rc page_with_count(dbk_db *db, const char *count_sql, size_t ncount,
                              const char *page_sql, const struct qs *q, dbk_result **page,
                              int64_t *total, dbk_error *err)
{
    dbk_batch *b = NULL;
    dbk_rc rc = dbk_batch_new(&b, err);
    if (rc)
        return rc;
    if ((rc = dbk_batch_add(b, count_sql, q->params, ncount, err)) ||
        (rc = dbk_batch_add(b, page_sql, q->params, q->np, err)) ||
        (rc = dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, err)))
        goto done;
    const dbk_result *c = dbk_batch_result(b, 0);
    if (!c || dbk_result_nrows(c) != 1) {
        rc = dbk__err(err, DBK_EINTERNAL, "COUNT returned no row");
        goto done;
    }
    if ((rc = dbk_result_get_int64(c, 0, 0, total, err)))
        goto done;
    *page = dbk_batch_take_result(b, 1);
done:
    dbk_batch_free(b);
    return rc;
}

/* What a find-many will do, decided from the query and the entity before
 * any SQL exists: every name the caller gave has been checked. */
struct find_plan {
    const dbk_query *q;
    dbk_engine eng;
    struct okey keys[MAX_ORDER + 1];
    int nkeys;
    uint64_t mask;     /* the columns read */
    bool keyset;       /* a cursor comes back */
    bool want_more;    /* has_more is reported */
    dbk_count_mode cm; /* the counting actually done */
    int64_t limit;     /* rows in the page, -1 for all (resolve_limit) */
    bool default_limit; /* the caller left limit 0: DBK_REPO_DEFAULT_LIMIT */
    int64_t fetch;     /* rows asked of the server, -1 for all */
    bool batched;      /* COUNT and page in one batch */
    unsigned flags;    /* DBK__FIND_* */
};

/* The page size a query asks for: its `limit` (0: the default page, which
 * reports has_more so a cut result is never silent; DBK_REPO_LIMIT_ALL:
 * every row), or with the deprecated has_limit the 0.1 meaning (0..max,
 * 0 an empty page; has_limit false was "every row"). */
static dbk_rc resolve_limit(const dbk_query *q, struct find_plan *pl, dbk_error *err)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    bool old = q->has_limit;
#pragma GCC diagnostic pop
    pl->default_limit = false;
    if (old || (q->limit >= 1 && q->limit <= DBK_REPO_MAX_LIMIT)) {
        if (q->limit < 0 || q->limit > DBK_REPO_MAX_LIMIT) {
            dbk_rc rc = dbk__err(err, DBK_EINVALID, "limit %lld is outside 0..%d (has_limit set)",
                                 (long long)q->limit, DBK_REPO_MAX_LIMIT);
            dbk__err_hint(err, "has_limit is deprecated: leave it false and use limit alone");
            return rc;
        }
        pl->limit = q->limit;
    } else if (q->limit == 0) {
        pl->limit = DBK_REPO_DEFAULT_LIMIT;
        pl->default_limit = true;
    } else if (q->limit == DBK_REPO_LIMIT_ALL) {
        pl->limit = -1;
    } else {
        dbk_rc rc = dbk__err(err, DBK_EINVALID, "limit %lld is outside 1..%d",
                             (long long)q->limit, DBK_REPO_MAX_LIMIT);
        dbk__err_hint(err, "use 0 for the default page of %d rows, DBK_REPO_LIMIT_ALL (-1) for "
                           "every row, dbk_repo_count() for a total alone",
                      DBK_REPO_DEFAULT_LIMIT);
        return rc;
    }
    return DBK_OK;
}

/* Step 1: checks the paging arguments, the sort, the projection and the
 * include paths, and decides the counting strategy. */
static dbk_rc find_plan_make(dbk_db *db, const dbk_entity *e, const dbk_query *q, unsigned flags,
                             struct find_plan *pl, dbk_error *err)
{
    pl->q = q;
    pl->flags = flags;
    pl->eng = dbk_db_engine(db);
    dbk_rc rc = resolve_limit(q, pl, err);
    if (rc)
        return rc;
    if (q->offset < 0)
        return dbk__err(err, DBK_EINVALID, "offset %lld is negative", (long long)q->offset);
    pl->keyset = q->keyset || q->after;
    if (q->after && q->offset)
        return dbk__err(err, DBK_EINVALID, "a cursor and an offset cannot be combined");
    if (pl->keyset && pl->limit < 0)
        return dbk__err(err, DBK_EINVALID, "keyset pagination needs a limit, not LIMIT_ALL");
    if ((unsigned)q->count > DBK_COUNT_ESTIMATED)
        return dbk__err(err, DBK_EINVALID, "unknown count mode %d", (int)q->count);

    /* Order: the primary key closes any paged order so pages are stable. */
    rc = parse_order(e, q, pl->keys, &pl->nkeys, err);
    if (rc)
        return rc;
    int pk = dbk__priv(e)->pk;
    if (pl->limit >= 0 || q->offset || pl->keyset) {
        bool has_pk = false;
        for (int i = 0; i < pl->nkeys; i++)
            has_pk |= pl->keys[i].field == pk;
        if (!has_pk) {
            pl->keys[pl->nkeys].field = pk;
            pl->keys[pl->nkeys].desc = pl->nkeys ? pl->keys[pl->nkeys - 1].desc : false;
            pl->nkeys++;
        }
    }
    if (pl->keyset)
        for (int i = 0; i < pl->nkeys; i++)
            if (e->fields[pl->keys[i].field].flags & DBK_F_NULLABLE)
                return dbk__err(err, DBK_EINVALID_SORT, "keyset sort key %s.%s may be NULL",
                                e->table, e->fields[pl->keys[i].field].column);

    /* Projection. */
    uint64_t mask = dbk__priv(e)->default_mask;
    if (q->nselect) {
        if (!q->select)
            return dbk__err(err, DBK_EMISUSE, "%zu columns selected but select is NULL",
                            q->nselect);
        mask = 0;
        for (size_t i = 0; i < q->nselect; i++) {
            int fi = dbk__field(e, q->select[i]);
            if (fi < 0)
                return dbk__err(err, DBK_EINVALID_COLUMN, "%s has no field named by select",
                                e->table);
            mask |= BIT(fi);
        }
    }
    mask |= BIT(pk);
    for (int i = 0; i < pl->nkeys; i++)
        mask |= BIT(pl->keys[i].field);
    if (q->ninclude && !q->include)
        return dbk__err(err, DBK_EMISUSE, "%zu includes announced but include is NULL",
                        q->ninclude);
    for (size_t i = 0; i < q->ninclude; i++) {
        rc = dbk__q_check_path(e, q->include[i], err);
        if (rc)
            return rc;
        const char *dot = strchr(q->include[i], '.');
        const dbk_relation *r = dbk__q_find_rel(
            e, q->include[i], dot ? (size_t)(dot - q->include[i]) : strlen(q->include[i]));
        if (r->kind == DBK_REL_BELONGS_TO)
            mask |= BIT(dbk__field(e, r->foreign_key));
    }
    pl->mask = mask;

    /* Counting strategy. On PostgreSQL an exact COUNT goes with the page
     * query in one batch (one round trip) when there is a page to read. */
    pl->want_more = pl->keyset || q->count == DBK_COUNT_HAS_MORE || pl->default_limit;
    pl->cm = q->count;
    if (pl->cm == DBK_COUNT_ESTIMATED && (!dbk__dialect_of(pl->eng)->count_estimate_sql ||
                                          q->nfilters))
        pl->cm = DBK_COUNT_EXACT;
    pl->fetch = pl->limit >= 0 ? pl->limit + (pl->want_more ? 1 : 0) : -1;
    pl->batched = pl->cm == DBK_COUNT_EXACT && dbk__dialect_of(pl->eng)->batch_one_trip &&
                  !(flags & DBK__FIND_NO_BATCH) && pl->fetch != 0;
    return DBK_OK;
}

/* The statements of a find-many and their parameters. */
struct find_sql {
    struct qs qs;          /* every parameter: filters, cursor, limit, offset */
    size_t nfilter_params; /* the leading ones the COUNT uses */
    dbk__sb where, page, count;
};

static void find_sql_free(struct find_sql *fs)
{
    free(fs->where.p);
    free(fs->page.p);
    free(fs->count.p);
    free(fs->qs.params);
}

/* Step 2: WHERE (filters, then the cursor's keyset condition), the COUNT
 * statement (filters only) and the page statement. */
static dbk_rc find_sql_build(const dbk_entity *e, const struct find_plan *pl, dbk_arena *arena,
                             struct find_sql *fs, dbk_error *err)
{
    const dbk_query *q = pl->q;
    const struct okey *keys = pl->keys;
    int nkeys = pl->nkeys;
    dbk_engine eng = pl->eng;
    fs->qs = (struct qs){e, eng, NULL, 0, 0};
    dbk_rc rc = build_filters(&fs->qs, &fs->where, q->filters, q->nfilters, err);
    if (rc)
        return rc;
    fs->nfilter_params = fs->qs.np;
    dbk__sb *where = &fs->where;
    if (q->after) {
        dbk_value cv[MAX_ORDER + 1];
        rc = dbk__q_decode_cursor(e, keys, nkeys, q->after, arena, cv, err);
        if (rc)
            return rc;
        int pn[MAX_ORDER + 1];
        for (int i = 0; i < nkeys; i++)
            if ((pn[i] = add_param(&fs->qs, cv[i])) < 0)
                return dbk__q_oom(err);
        dbk__sb_puts(where, where->len ? " AND (" : " WHERE (");
        for (int i = 0; i < nkeys; i++) {
            dbk__sb_puts(where, i ? " OR (" : "(");
            for (int j = 0; j < i; j++) {
                dbk__sb_ident(where, eng, e->fields[keys[j].field].column);
                dbk__sb_puts(where, " = ");
                dbk__sb_param(where, e, keys[j].field, pn[j], eng);
                dbk__sb_puts(where, " AND ");
            }
            dbk__sb_ident(where, eng, e->fields[keys[i].field].column);
            dbk__sb_puts(where, keys[i].desc ? " < " : " > ");
            dbk__sb_param(where, e, keys[i].field, pn[i], eng);
            dbk__sb_puts(where, ")");
        }
        dbk__sb_puts(where, ")");
    }

    dbk__sb *csql = &fs->count;
    dbk__sb_puts(csql, "SELECT count(*) FROM ");
    dbk__sb_ident(csql, eng, e->table);
    if (fs->nfilter_params || q->nfilters) {
        /* the filter part of WHERE only: rebuild without the cursor */
        struct qs cq = {e, eng, NULL, 0, 0};
        rc = build_filters(&cq, csql, q->filters, q->nfilters, err);
        free(cq.params);
        if (rc)
            return rc;
    }
    if (csql->oom || where->oom)
        return dbk__q_oom(err);
    if (pl->fetch == 0)
        return DBK_OK; /* limit 0: no page statement */

    dbk__sb *sql = &fs->page;
    dbk__sb_puts(sql, "SELECT ");
    dbk__sb_columns(sql, eng, e, pl->mask);
    dbk__sb_puts(sql, " FROM ");
    dbk__sb_ident(sql, eng, e->table);
    if (where->p)
        dbk__sb_puts(sql, where->p);
    for (int i = 0; i < nkeys; i++) {
        dbk__sb_puts(sql, i ? ", " : " ORDER BY ");
        dbk__sb_ident(sql, eng, e->fields[keys[i].field].column);
        if (keys[i].desc)
            dbk__sb_puts(sql, " DESC");
    }
    if (pl->fetch >= 0) {
        int p = add_param(&fs->qs, dbk_int64(pl->fetch));
        if (p < 0)
            return dbk__q_oom(err);
        dbk__sb_puts(sql, " LIMIT ");
        dbk__dialect_of(eng)->placeholder(sql, p, NULL);
    } else if (q->offset) {
        dbk__sb_puts(sql, dbk__dialect_of(eng)->offset_without_limit);
    }
    if (q->offset) {
        int p = add_param(&fs->qs, dbk_int64(q->offset));
        if (p < 0)
            return dbk__q_oom(err);
        dbk__sb_puts(sql, " OFFSET ");
        dbk__dialect_of(eng)->placeholder(sql, p, NULL);
    }
    if (sql->oom)
        return dbk__q_oom(err);
    return DBK_OK;
}

/* Step 3a: the total when it is not batched with the page. */
static dbk_rc find_count(dbk_db *db, const dbk_entity *e, const struct find_plan *pl,
                         const struct find_sql *fs, dbk_list *out, dbk_error *err)
{
    dbk_rc rc = DBK_OK;
    if (pl->cm == DBK_COUNT_EXACT && !pl->batched) {
        rc = run_count(db, fs->count.p, &fs->qs, fs->nfilter_params, &out->total, err);
    } else if (pl->cm == DBK_COUNT_ESTIMATED) {
        /* only planned where the dialect has an estimate (find_plan_make) */
        dbk__sb qt = {0};
        dbk__sb_ident(&qt, pl->eng, e->table);
        if (qt.oom) {
            free(qt.p);
            return dbk__q_oom(err);
        }
        dbk_value tp = dbk_textn(qt.p, qt.len);
        rc = dbk_db_query_int64(db, dbk__dialect_of(pl->eng)->count_estimate_sql, &tp, 1,
                                &out->total, err);
        free(qt.p);
        if (rc == DBK_OK && out->total < 0)
            rc = run_count(db, fs->count.p, &fs->qs, 0, &out->total, err);
    }
    return rc;
}

/* Step 3b: runs the page (with the COUNT when batched), maps the rows into
 * the arena, loads the includes and makes the next cursor. */
static dbk_rc find_page(dbk_db *db, const dbk_entity *e, const struct find_plan *pl,
                        const struct find_sql *fs, dbk_list *out, dbk_arena *arena,
                        dbk_error *err)
{
    const dbk_query *q = pl->q;
    struct dbk__sql cols = {0};
    dbk_result *r = NULL;
    dbk_rc rc;
    if (dbk__sql_set_cols(&cols, e, pl->mask) != DBK_OK) {
        rc = dbk__q_oom(err);
        goto out;
    }
    if (pl->batched)
        rc = page_with_count(db, fs->count.p, fs->nfilter_params, fs->page.p, &fs->qs, &r,
                             &out->total, err);
    else
        rc = dbk_db_query(db, fs->page.p, fs->qs.params, fs->qs.np, &r, err);
    if (rc)
        goto out;
    size_t nr = dbk_result_nrows(r);
    size_t take = nr;
    if (pl->limit >= 0 && (int64_t)nr > pl->limit) {
        take = (size_t)pl->limit;
        out->has_more = true;
    }
    out->items = dbk_arena_alloc(arena, take ? take * e->struct_size : 0);
    if (!out->items) {
        rc = dbk__q_oom(err);
        goto out;
    }
    unsigned char *items = out->items;
    for (size_t i = 0; i < take && rc == DBK_OK; i++)
        rc = dbk__map_row(e, r, i, cols.cols, cols.ncols, items + i * e->struct_size, arena, err);
    if (rc)
        goto out;
    out->count = take;
    if (q->ninclude && take) {
        rc = dbk__repo_include(db, e, items, take, pl->flags, q->include, q->ninclude, arena,
                               err);
        if (rc)
            goto out;
    }
    if (pl->keyset && out->has_more)
        rc = dbk__q_encode_cursor(e, pl->keys, pl->nkeys, items + (take - 1) * e->struct_size,
                                  arena, &out->next_cursor, err);
    if (!pl->want_more)
        out->has_more = false;
out:
    free(cols.cols);
    dbk_result_free(r);
    return rc;
}

dbk_rc dbk__repo_find_many_flags(dbk_db *db, const dbk_entity *e, const dbk_query *qin,
                                 unsigned flags, dbk_list *out, dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, true, "dbk_repo_find_many", err);
    if (rc)
        return rc;
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_many: out must not be NULL");
    memset(out, 0, sizeof *out);
    out->total = -1;
    static const dbk_query empty;
    struct find_plan pl;
    rc = find_plan_make(db, e, qin ? qin : &empty, flags, &pl, err);
    if (rc)
        return rc;
    struct find_sql fs = {0};
    rc = find_sql_build(e, &pl, arena, &fs, err);
    if (rc == DBK_OK)
        rc = find_count(db, e, &pl, &fs, out, err);
    if (rc == DBK_OK) {
        if (pl.fetch == 0) /* limit 0, nothing to read */
            out->items = dbk_arena_alloc(arena, 0);
        else
            rc = find_page(db, e, &pl, &fs, out, arena, err);
    }
    find_sql_free(&fs);
    return rc;
}

dbk_rc dbk_repo_find_many(dbk_db *db, const dbk_entity *e, const dbk_query *q, dbk_list *out,
                          dbk_arena *arena, dbk_error *err)
{
    return dbk__repo_find_many_flags(db, e, q, 0, out, arena, err);
}
