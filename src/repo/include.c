/*
 * include.c - eager loading of relations (dbk_repo_include and the
 * includes of find-many): each relation is loaded for a whole set of parent
 * rows with exactly one statement, the parents' keys going as ONE parameter
 * (a PostgreSQL array literal cast to the key's array type, or a JSON array
 * expanded by SQLite's json_each). The children are sorted in memory by
 * (foreign key, primary key) and each parent gets a contiguous slice of that
 * array, which is what nested includes then load their own relations for.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/batch.h"
#include "../core/internal.h"
#include "../driver/dialect.h"
#include "repo_int.h"
#include "query_impl.h"

/* ---- includes ---- */

const dbk_relation *dbk__q_find_rel(const dbk_entity *e, const char *name, size_t len)
{
    for (size_t i = 0; i < e->nrelations; i++)
        if (strlen(e->relations[i].name) == len && memcmp(e->relations[i].name, name, len) == 0)
            return &e->relations[i];
    return NULL;
}

/* Checks every segment of a path ("posts.comments") before any query. */
dbk_rc dbk__q_check_path(const dbk_entity *e, const char *path, dbk_error *err)
{
    if (!path || !*path)
        return dbk__err(err, DBK_EINVALID_COLUMN, "empty include path");
    const char *s = path;
    while (1) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        const dbk_relation *r = dbk__q_find_rel(e, s, len);
        if (!r)
            return dbk__err(err, DBK_EINVALID_COLUMN, "%s has no relation named by include",
                            e->table);
        dbk_rc rc = dbk__entity_ready(r->target, err);
        if (rc)
            return rc;
        if (!dot)
            return DBK_OK;
        e = r->target;
        s = dot + 1;
    }
}

struct keyctx {
    size_t off;
    long null_off;
    dbk_type type;
    size_t off2; /* tie-break: the PK (same rules) */
    dbk_type type2;
};

static int cmp_member(const unsigned char *a, const unsigned char *b, size_t off, dbk_type t)
{
    if (t == DBK_TYPE_TEXT) {
        const char *x, *y;
        memcpy(&x, a + off, sizeof x);
        memcpy(&y, b + off, sizeof y);
        if (!x || !y)
            return (x != NULL) - (y != NULL);
        return strcmp(x, y);
    }
    int64_t x, y;
    memcpy(&x, a + off, sizeof x);
    memcpy(&y, b + off, sizeof y);
    return (x > y) - (x < y);
}

static int cmp_rows(const void *a, const void *b, void *ctx)
{
    const struct keyctx *k = ctx;
    int c = cmp_member(a, b, k->off, k->type);
    return c ? c : cmp_member(a, b, k->off2, k->type2);
}

static bool key_is_null(const unsigned char *row, const dbk_field *f)
{
    if (f->null_offset >= 0) {
        bool n;
        memcpy(&n, row + f->null_offset, sizeof n);
        if (n)
            return true;
    }
    if (f->type == DBK_TYPE_TEXT) {
        const char *s;
        memcpy(&s, row + f->offset, sizeof s);
        return s == NULL;
    }
    return false;
}

/* Appends one key to the dialect's key list (a PostgreSQL array literal,
 * a JSON array on SQLite). */
static void put_key(dbk__sb *sb, const unsigned char *row, const dbk_field *f, dbk_engine eng)
{
    if (f->type != DBK_TYPE_TEXT) {
        int64_t v;
        memcpy(&v, row + f->offset, sizeof v);
        dbk__sb_printf(sb, "%lld", (long long)v);
        return;
    }
    const char *s;
    memcpy(&s, row + f->offset, sizeof s);
    dbk__dialect_of(eng)->key_list_text(sb, s);
}

static const struct dbk__sql *include_sql(const dbk_entity *t, int match, dbk_engine eng,
                                          dbk_error *err)
{
    const struct dbk__sql *s = dbk__sql_get(t, DBK__OP_INCLUDE, (int)eng, (uint64_t)match, 0);
    if (s)
        return s;
    struct dbk__sql *n = calloc(1, sizeof *n);
    if (!n) {
        dbk__q_oom(err);
        return NULL;
    }
    n->op = DBK__OP_INCLUDE;
    n->engine = (int)eng;
    n->a = (uint64_t)match;
    uint64_t mask = dbk__priv(t)->default_mask | BIT(match) | BIT(dbk__priv(t)->pk);
    const dbk_field *f = &t->fields[match];
    dbk__sb sb = {0};
    dbk__sb_puts(&sb, "SELECT ");
    dbk__sb_columns(&sb, eng, t, mask);
    dbk__sb_puts(&sb, " FROM ");
    dbk__sb_ident(&sb, eng, t->table);
    dbk__sb_puts(&sb, " WHERE ");
    dbk__sb_ident(&sb, eng, f->column);
    dbk__dialect_of(eng)->in_key_list(
        &sb, 1, f->pg_cast ? f->pg_cast : f->type == DBK_TYPE_TEXT ? "text" : "bigint");
    if (sb.oom || dbk__sql_set_cols(n, t, mask) != DBK_OK) {
        free(sb.p);
        dbk__sql_free(n);
        dbk__q_oom(err);
        return NULL;
    }
    n->sql = sb.p;
    return dbk__sql_put(t, n);
}

/* Loads one relation for n parents; kids, nkids: the loaded target rows. */
/* The parent key and the target field a relation joins on. */
static void rel_join(const dbk_entity *e, const dbk_relation *rel, const dbk_field **pkey,
                     int *match)
{
    const dbk_entity *t = rel->target;
    if (rel->kind == DBK_REL_BELONGS_TO) {
        *pkey = &e->fields[dbk__field(e, rel->foreign_key)];
        *match = dbk__priv(t)->pk;
    } else {
        *pkey = &e->fields[dbk__priv(e)->pk];
        *match = dbk__field(t, rel->foreign_key);
    }
}

/* Resets the relation's members in every parent and gathers the parents'
 * keys into one array literal (out->p, malloc'd; NULL when no parent has
 * a key). */
static dbk_rc rel_keys(const dbk_entity *e, const dbk_relation *rel, unsigned char *items, size_t n,
                       dbk_engine eng, dbk__sb *out, dbk_error *err)
{
    const dbk_field *pkey;
    int match;
    rel_join(e, rel, &pkey, &match);
    dbk__sb lit = {0};
    dbk__sb_puts(&lit, dbk__dialect_of(eng)->key_list_open);
    size_t nkeys = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char *row = items + i * e->struct_size;
        void *nul = NULL;
        size_t zero = 0;
        memcpy(row + rel->ptr_offset, &nul, sizeof nul);
        if (rel->count_offset >= 0)
            memcpy(row + rel->count_offset, &zero, sizeof zero);
        if (key_is_null(row, pkey))
            continue;
        if (nkeys++)
            dbk__sb_puts(&lit, ",");
        put_key(&lit, row, pkey, eng);
    }
    dbk__sb_puts(&lit, dbk__dialect_of(eng)->key_list_close);
    if (lit.oom) {
        free(lit.p);
        return dbk__q_oom(err);
    }
    if (nkeys == 0) {
        free(lit.p);
        lit.p = NULL;
        lit.len = 0;
    }
    *out = lit;
    return DBK_OK;
}

/* Loads one relation for items[0..n): one query (or its rows already
 * fetched in a batch: `pre`, taken over), rows mapped into the arena,
 * sorted by key, each parent pointed at its run. */
static dbk_rc load_rel(dbk_db *db, const dbk_entity *e, const dbk_relation *rel,
                       unsigned char *items, size_t n, dbk_arena *arena, dbk_result *pre,
                       unsigned char **kids, size_t *nkids, dbk_error *err)
{
    const dbk_entity *t = rel->target;
    dbk_engine eng = dbk_db_engine(db);
    *kids = NULL;
    *nkids = 0;
    const dbk_field *pkey; /* key read from each parent */
    int match;             /* field of the target compared with it */
    rel_join(e, rel, &pkey, &match);
    const dbk_field *mf = &t->fields[match];
    dbk__sb lit = {0};
    dbk_rc rc = rel_keys(e, rel, items, n, eng, &lit, err);
    if (rc || !lit.p) {
        dbk_result_free(pre);
        return rc;
    }
    const struct dbk__sql *s = include_sql(t, match, eng, err);
    if (!s) {
        free(lit.p);
        dbk_result_free(pre);
        return DBK_ENOMEM;
    }
    dbk_result *r = pre;
    if (!r) {
        dbk_value p = dbk_textn(lit.p, lit.len);
        rc = dbk_db_query(db, s->sql, &p, 1, &r, err);
    }
    free(lit.p);
    if (rc)
        return rc;
    size_t nr = dbk_result_nrows(r);
    unsigned char *arr = nr ? dbk_arena_alloc(arena, nr * t->struct_size) : NULL;
    if (nr && !arr) {
        dbk_result_free(r);
        return dbk__q_oom(err);
    }
    for (size_t i = 0; i < nr && rc == DBK_OK; i++)
        rc = dbk__map_row(t, r, i, s->cols, s->ncols, arr + i * t->struct_size, arena, err);
    dbk_result_free(r);
    if (rc)
        return rc;
    const dbk_field *tpk = &t->fields[dbk__priv(t)->pk];
    struct keyctx kc = {mf->offset, mf->null_offset, mf->type, tpk->offset, tpk->type};
    if (nr > 1)
        qsort_r(arr, nr, t->struct_size, cmp_rows, &kc);
    /* Attach: each parent gets the contiguous run of rows whose key matches. */
    for (size_t i = 0; i < n; i++) {
        unsigned char *row = items + i * e->struct_size;
        if (key_is_null(row, pkey))
            continue;
        size_t lo = 0, hi = nr;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            /* compare target key (mf) with the parent key (pkey): same type */
            int c;
            if (mf->type == DBK_TYPE_TEXT) {
                const char *x, *y;
                memcpy(&x, arr + mid * t->struct_size + mf->offset, sizeof x);
                memcpy(&y, row + pkey->offset, sizeof y);
                c = !x ? -1 : strcmp(x, y);
            } else {
                int64_t x, y;
                memcpy(&x, arr + mid * t->struct_size + mf->offset, sizeof x);
                memcpy(&y, row + pkey->offset, sizeof y);
                c = (x > y) - (x < y);
            }
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        size_t end = lo;
        while (end < nr && cmp_member(arr + end * t->struct_size, arr + lo * t->struct_size,
                                      mf->offset, mf->type) == 0) {
            /* equal to the first candidate; check the candidate matches at all */
            end++;
        }
        bool hit = false;
        if (lo < nr) {
            if (mf->type == DBK_TYPE_TEXT) {
                const char *x, *y;
                memcpy(&x, arr + lo * t->struct_size + mf->offset, sizeof x);
                memcpy(&y, row + pkey->offset, sizeof y);
                hit = x && strcmp(x, y) == 0;
            } else {
                int64_t x, y;
                memcpy(&x, arr + lo * t->struct_size + mf->offset, sizeof x);
                memcpy(&y, row + pkey->offset, sizeof y);
                hit = x == y;
            }
        }
        if (!hit)
            continue;
        void *first = arr + lo * t->struct_size;
        memcpy(row + rel->ptr_offset, &first, sizeof first);
        if (rel->count_offset >= 0) {
            size_t cnt = end - lo;
            memcpy(row + rel->count_offset, &cnt, sizeof cnt);
        }
    }
    *kids = arr;
    *nkids = nr;
    return DBK_OK;
}

/* True when paths[i]'s first segment already appeared in paths[0..i). */
static bool seen_before(const char *const *paths, size_t i, size_t len)
{
    for (size_t j = 0; j < i; j++)
        if (strncmp(paths[j], paths[i], len) == 0 &&
            (paths[j][len] == '.' || paths[j][len] == '\0'))
            return true;
    return false;
}

/* An engine whose batch is one round trip (the dialect's batch_one_trip:
 * PostgreSQL), two or more relations on one level: their queries do not
 * depend on each other, so they go out as one batch;
 * pre[i] gets the rows for paths[i] (NULL where nothing was fetched). */
static dbk_rc prefetch(dbk_db *db, const dbk_entity *e, unsigned char *items, size_t n,
                       const char *const *paths, size_t npaths, dbk_result **pre,
                       dbk_error *err)
{
    dbk_engine eng = dbk_db_engine(db);
    dbk_batch *b = NULL;
    dbk__sb *lits = calloc(npaths, sizeof *lits);
    size_t *slot = calloc(npaths, sizeof *slot);
    dbk_rc rc = (!lits || !slot) ? dbk__q_oom(err) : dbk_batch_new(&b, err);
    for (size_t i = 0; i < npaths && rc == DBK_OK; i++) {
        const char *dot = strchr(paths[i], '.');
        size_t len = dot ? (size_t)(dot - paths[i]) : strlen(paths[i]);
        const dbk_relation *rel = dbk__q_find_rel(e, paths[i], len);
        if (!rel || seen_before(paths, i, len))
            continue;
        const dbk_field *pkey;
        int match;
        rel_join(e, rel, &pkey, &match);
        rc = rel_keys(e, rel, items, n, eng, &lits[i], err);
        if (rc || !lits[i].p)
            continue;
        const struct dbk__sql *s = include_sql(rel->target, match, eng, err);
        if (!s) {
            rc = DBK_ENOMEM;
            break;
        }
        dbk_value p = dbk_textn(lits[i].p, lits[i].len);
        slot[i] = dbk_batch_count(b) + 1;
        rc = dbk_batch_add(b, s->sql, &p, 1, err);
    }
    if (rc == DBK_OK && dbk_batch_count(b) > 0)
        rc = dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, err);
    for (size_t i = 0; i < npaths && rc == DBK_OK; i++)
        if (slot && slot[i])
            pre[i] = dbk_batch_take_result(b, slot[i] - 1);
    for (size_t i = 0; lits && i < npaths; i++)
        free(lits[i].p);
    free(lits);
    free(slot);
    dbk_batch_free(b);
    return rc;
}

dbk_rc dbk__repo_include(dbk_db *db, const dbk_entity *e, void *items, size_t n, unsigned flags,
                         const char *const *paths, size_t npaths, dbk_arena *arena,
                         dbk_error *err)
{
    dbk_rc rc = DBK_OK;
    const char **rest = npaths ? malloc(npaths * sizeof *rest) : NULL;
    dbk_result **pre = npaths ? calloc(npaths, sizeof *pre) : NULL;
    if (npaths && (!rest || !pre)) {
        free(rest);
        free(pre);
        return dbk__q_oom(err);
    }
    size_t levels = 0;
    for (size_t i = 0; i < npaths; i++) {
        const char *dot = strchr(paths[i], '.');
        if (!seen_before(paths, i, dot ? (size_t)(dot - paths[i]) : strlen(paths[i])))
            levels++;
    }
    if (levels > 1 && !(flags & DBK__FIND_NO_BATCH) &&
        dbk__dialect_of(dbk_db_engine(db))->batch_one_trip)
        rc = prefetch(db, e, items, n, paths, npaths, pre, err);
    for (size_t i = 0; i < npaths && rc == DBK_OK; i++) {
        const char *dot = strchr(paths[i], '.');
        size_t len = dot ? (size_t)(dot - paths[i]) : strlen(paths[i]);
        if (seen_before(paths, i, len))
            continue;
        const dbk_relation *rel = dbk__q_find_rel(e, paths[i], len);
        if (!rel) {
            rc = dbk__err(err, DBK_EINVALID_COLUMN, "%s has no relation named by include",
                          e->table);
            break;
        }
        size_t nrest = 0;
        for (size_t j = i; j < npaths; j++)
            if (strncmp(paths[j], paths[i], len) == 0 && paths[j][len] == '.')
                rest[nrest++] = paths[j] + len + 1;
        unsigned char *kids;
        size_t nkids;
        rc = load_rel(db, e, rel, items, n, arena, pre[i], &kids, &nkids, err);
        pre[i] = NULL;
        if (rc == DBK_OK && nrest && nkids) {
            /* rest[] is reused by the recursion: hand it a copy. */
            const char **sub = malloc(nrest * sizeof *sub);
            if (!sub) {
                rc = dbk__q_oom(err);
                break;
            }
            memcpy(sub, rest, nrest * sizeof *sub);
            rc = dbk__repo_include(db, rel->target, kids, nkids, flags, sub, nrest, arena, err);
            free(sub);
        }
    }
    for (size_t i = 0; i < npaths; i++)
        dbk_result_free(pre[i]);
    free(pre);
    free(rest);
    return rc;
}

dbk_rc dbk_repo_include(dbk_db *db, const dbk_entity *e, void *items, size_t n,
                        const char *const *include, size_t ninclude, dbk_arena *arena,
                        dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, true, "dbk_repo_include", err);
    if (rc)
        return rc;
    if ((n && !items) || (ninclude && !include))
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_include: items and include must not be NULL");
    for (size_t i = 0; i < ninclude; i++) {
        rc = dbk__q_check_path(e, include[i], err);
        if (rc)
            return rc;
    }
    if (n == 0 || ninclude == 0)
        return DBK_OK;
    return dbk__repo_include(db, e, items, n, 0, include, ninclude, arena, err);
}
