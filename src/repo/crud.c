/*
 * Repository operations on single rows: find by id or unique field,
 * create, update with a field mask, delete, upsert, and bulk create.
 *
 * Each operation's SQL depends only on the entity, the engine and a mask
 * (which fields are SET, which form the conflict target, how many rows a
 * bulk statement carries), so it is generated once per such key and kept
 * in the entity's cache together with two small maps: result column ->
 * field, and parameter -> field. A call then only gathers parameter values
 * out of the caller's struct, runs the statement and maps the row back.
 * Field names that callers pass (update masks, conflict targets) are
 * resolved against the descriptor before any SQL exists; identifiers in
 * the SQL come only from the descriptor and are quoted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/tx.h"
#include "../core/internal.h"
#include "../db/copy_int.h"
#include "../db/db_int.h"
#include "../driver/dialect.h"
#include "repo_int.h"

#define BIT(i) (UINT64_C(1) << (i))

static dbk_engine engine_of(dbk_db *db)
{
    return dbk_db_engine(db);
}

/* What the engine calls RETURNING, then the entity's default columns. */
static void put_returning(dbk__sb *sb, dbk_engine eng, const dbk_entity *e)
{
    dbk__sb_puts(sb, dbk__dialect_of(eng)->returning);
    dbk__sb_columns(sb, eng, e, dbk__priv(e)->default_mask);
}

static dbk_rc oom(dbk_error *err)
{
    return dbk__err(err, DBK_ENOMEM, "out of memory building a repository statement");
}

static struct dbk__sql *sql_new(int op, dbk_engine engine, uint64_t a, uint64_t b)
{
    struct dbk__sql *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->op = op;
    s->engine = (int)engine;
    s->a = a;
    s->b = b;
    return s;
}

/* Finishes a built statement: takes the builder's text, maps columns. */
static const struct dbk__sql *sql_finish(const dbk_entity *e, struct dbk__sql *s, dbk__sb *sb,
                                         uint64_t ret_mask, dbk_error *err)
{
    if (sb->oom || dbk__sql_set_cols(s, e, ret_mask) != DBK_OK) {
        free(sb->p);
        dbk__sql_free(s);
        oom(err);
        return NULL;
    }
    s->sql = sb->p;
    return dbk__sql_put(e, s);
}

/* Runs `sql` expecting at most one row; maps it into out (may be NULL). */
static dbk_rc run_one(dbk_db *db, const dbk_entity *e, const struct dbk__sql *s,
                      const dbk_value *params, size_t nparams, void *out, dbk_arena *arena,
                      dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, s->sql, params, nparams, &r, err);
    if (rc)
        return rc;
    if (dbk_result_nrows(r) == 0) {
        dbk_result_free(r);
        return dbk__err(err, DBK_ENOT_FOUND, "no %s row matches", e->table);
    }
    if (out) {
        memset(out, 0, e->struct_size);
        rc = dbk__map_row(e, r, 0, s->cols, s->ncols, out, arena, err);
    }
    dbk_result_free(r);
    return rc;
}

/* ---- find ---- */

static bool unique_single(const dbk_entity *e, int fi)
{
    if (e->fields[fi].flags & (DBK_F_PK | DBK_F_UNIQUE))
        return true;
    for (size_t i = 0; i < e->nuniques; i++)
        if (e->uniques[i].ncolumns == 1 && strcmp(e->uniques[i].columns[0], e->fields[fi].column) == 0)
            return true;
    return false;
}

static dbk_rc find_by_field(dbk_db *db, const dbk_entity *e, int fi, dbk_value v, void *out,
                            dbk_arena *arena, dbk_error *err)
{
    dbk_engine eng = engine_of(db);
    const struct dbk__sql *s = dbk__sql_get(e, DBK__OP_FIND_BY, (int)eng, (uint64_t)fi, 0);
    if (!s) {
        struct dbk__sql *n = sql_new(DBK__OP_FIND_BY, eng, (uint64_t)fi, 0);
        if (!n)
            return oom(err);
        dbk__sb sb = {0};
        dbk__sb_puts(&sb, "SELECT ");
        dbk__sb_columns(&sb, eng, e, dbk__priv(e)->default_mask);
        dbk__sb_puts(&sb, " FROM ");
        dbk__sb_ident(&sb, eng, e->table);
        dbk__sb_puts(&sb, " WHERE ");
        dbk__sb_ident(&sb, eng, e->fields[fi].column);
        dbk__sb_puts(&sb, " = ");
        dbk__sb_param(&sb, e, fi, 1, eng);
        s = sql_finish(e, n, &sb, dbk__priv(e)->default_mask, err);
        if (!s)
            return DBK_ENOMEM;
    }
    if (v.type == DBK_TYPE_NULL)
        return dbk__err(err, DBK_ENOT_FOUND, "no %s row has a NULL %s", e->table,
                        e->fields[fi].column);
    memset(out, 0, e->struct_size);
    return run_one(db, e, s, &v, 1, out, arena, err);
}

dbk_rc dbk_repo_find_by_id(dbk_db *db, const dbk_entity *e, dbk_value id, void *out,
                           dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, true, "dbk_repo_find_by_id", err);
    if (rc)
        return rc;
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_by_id: out must not be NULL");
    return find_by_field(db, e, dbk__priv(e)->pk, id, out, arena, err);
}

struct id_at {
    int64_t id;
    size_t at;
};

static int cmp_id_at(const void *a, const void *b)
{
    const struct id_at *x = a, *y = b;
    if (x->id != y->id)
        return (x->id > y->id) - (x->id < y->id);
    return (x->at > y->at) - (x->at < y->at);
}

dbk_rc dbk_repo_find_by_ids(dbk_db *db, const dbk_entity *e, size_t n, const dbk_value *ids,
                            void *const *outs, dbk_rc *rcs, dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, true, "dbk_repo_find_by_ids", err);
    if (rc)
        return rc;
    if (n && (!ids || !outs || !rcs))
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_by_ids: NULL argument");
    if (n > DBK_REPO_MAX_IN)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_by_ids: %zu ids, at most %d in one call",
                        n, DBK_REPO_MAX_IN);
    for (size_t i = 0; i < n; i++)
        if (!outs[i])
            return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_by_ids: outs[%zu] is NULL", i);
    int pk = dbk__priv(e)->pk;
    bool intkey = e->fields[pk].type == DBK_TYPE_INT64;
    /* The integer ids go in one statement; any other (another key type, or
     * an id given as another type) is looked up alone, as find_by_id. */
    dbk_value *in = intkey && n ? malloc(n * sizeof *in) : NULL;
    struct id_at *rows = NULL;
    size_t m = 0;
    if (intkey && n && !in)
        return dbk__err(err, DBK_ENOMEM, "out of memory looking up %zu ids", n);
    dbk_rc first = DBK_OK;
    for (size_t i = 0; i < n; i++) {
        rcs[i] = DBK_ENOT_RUN;
        if (ids[i].type == DBK_TYPE_NULL) {
            memset(outs[i], 0, e->struct_size);
            rcs[i] = DBK_ENOT_FOUND; /* no row has a NULL key */
        } else if (intkey && ids[i].type == DBK_TYPE_INT64) {
            in[m++] = ids[i];
        }
    }
    if (m > 0) {
        dbk_filter f = DBK_WHERE_IN(e->fields[pk].column, in, m);
        dbk_query q;
        memset(&q, 0, sizeof q);
        q.filters = &f;
        q.nfilters = 1;
        q.limit = DBK_REPO_LIMIT_ALL;
        dbk_list list;
        memset(&list, 0, sizeof list);
        rc = dbk_repo_find_many(db, e, &q, &list, arena, err);
        size_t nrows = rc == DBK_OK ? list.count : 0;
        if (rc == DBK_OK && nrows > 0 && !(rows = malloc(nrows * sizeof *rows)))
            rc = dbk__err(err, DBK_ENOMEM, "out of memory looking up %zu ids", n);
        if (rc != DBK_OK) {
            for (size_t i = 0; i < n; i++)
                if (rcs[i] == DBK_ENOT_RUN && ids[i].type == DBK_TYPE_INT64)
                    rcs[i] = rc;
            first = rc;
        } else {
            const char *items = list.items;
            for (size_t k = 0; k < nrows; k++)
                rows[k] = (struct id_at){dbk__field_value(e, pk, items + k * e->struct_size).u.i,
                                         k};
            if (nrows > 1)
                qsort(rows, nrows, sizeof *rows, cmp_id_at);
            for (size_t i = 0; i < n; i++) {
                if (rcs[i] != DBK_ENOT_RUN || ids[i].type != DBK_TYPE_INT64)
                    continue;
                size_t lo = 0, hi = nrows; /* the first row with this id */
                while (lo < hi) {
                    size_t mid = lo + (hi - lo) / 2;
                    if (rows[mid].id < ids[i].u.i)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                if (lo < nrows && rows[lo].id == ids[i].u.i) {
                    /* strings in the same arena: a copy of the struct is a
                     * copy of the row */
                    memcpy(outs[i], items + rows[lo].at * e->struct_size, e->struct_size);
                    rcs[i] = DBK_OK;
                } else {
                    memset(outs[i], 0, e->struct_size);
                    rcs[i] = DBK_ENOT_FOUND;
                }
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (rcs[i] != DBK_ENOT_RUN)
            continue;
        dbk_error e1;
        rcs[i] = find_by_field(db, e, pk, ids[i], outs[i], arena, &e1);
        if (rcs[i] == DBK_ENOT_FOUND)
            memset(outs[i], 0, e->struct_size);
        else if (rcs[i] != DBK_OK && first == DBK_OK) {
            first = rcs[i];
            if (err)
                *err = e1;
        }
    }
    free(rows);
    free(in);
    return first;
}

dbk_rc dbk_repo_find_by(dbk_db *db, const dbk_entity *e, const char *column, dbk_value value,
                        void *out, dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, true, "dbk_repo_find_by", err);
    if (rc)
        return rc;
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_find_by: out must not be NULL");
    int fi = dbk__field(e, column);
    if (fi < 0)
        return dbk__err(err, DBK_EINVALID_COLUMN, "%s has no field named by the caller",
                        e->table);
    if (!unique_single(e, fi))
        return dbk__err(err, DBK_EINVALID_COLUMN, "%s.%s is not unique: use dbk_repo_find_many",
                        e->table, column);
    return find_by_field(db, e, fi, value, out, arena, err);
}

/* ---- create / upsert / bulk ---- */

static uint64_t insert_mask(const dbk_entity *e)
{
    uint64_t m = 0;
    for (size_t i = 0; i < e->nfields; i++)
        if (!(e->fields[i].flags & DBK_F_GENERATED))
            m |= BIT(i);
    return m;
}

static bool is_now_field(const dbk_field *f)
{
    return (f->flags & (DBK_F_CREATED_AT | DBK_F_UPDATED_AT)) != 0;
}

/* "INSERT INTO t (cols) VALUES (...),(...)" for `rows` rows; params per row. */
static void build_insert(dbk__sb *sb, struct dbk__sql *s, const dbk_entity *e, uint64_t mask,
                         size_t rows, dbk_engine eng)
{
    dbk__sb_puts(sb, "INSERT INTO ");
    dbk__sb_ident(sb, eng, e->table);
    if (mask == 0) {
        dbk__sb_puts(sb, " DEFAULT VALUES");
        return;
    }
    dbk__sb_puts(sb, " (");
    dbk__sb_columns(sb, eng, e, mask);
    dbk__sb_puts(sb, ") VALUES ");
    int per_row = 0;
    for (size_t i = 0; i < e->nfields; i++)
        if (mask & BIT(i))
            per_row++;
    s->nparams = per_row;
    int n = 1;
    for (size_t r = 0; r < rows; r++) {
        dbk__sb_puts(sb, r ? ", (" : "(");
        bool first = true;
        for (size_t i = 0; i < e->nfields; i++) {
            if (!(mask & BIT(i)))
                continue;
            if (!first)
                dbk__sb_puts(sb, ", ");
            dbk__sb_param(sb, e, (int)i, n++, eng);
            first = false;
        }
        dbk__sb_puts(sb, ")");
    }
}

static dbk_rc set_pfields(struct dbk__sql *s, const dbk_entity *e, uint64_t mask)
{
    s->pfields = malloc(sizeof(int) * (e->nfields ? e->nfields : 1));
    if (!s->pfields)
        return DBK_ENOMEM;
    int k = 0;
    for (size_t i = 0; i < e->nfields; i++)
        if (mask & BIT(i))
            s->pfields[k++] = (int)i;
    s->nparams = k;
    return DBK_OK;
}

/* Parameter values of one row (nparams of them) into vals. */
static void row_params(const dbk_entity *e, const struct dbk__sql *s, const void *in, int64_t now,
                       dbk_value *vals)
{
    for (int k = 0; k < s->nparams; k++) {
        const dbk_field *f = &e->fields[s->pfields[k]];
        vals[k] = is_now_field(f) ? dbk_timestamp(now) : dbk__field_value(e, s->pfields[k], in);
    }
}

static const struct dbk__sql *insert_sql(const dbk_entity *e, dbk_engine eng, size_t rows,
                                         dbk_error *err)
{
    int op = rows == 0 ? DBK__OP_CREATE : DBK__OP_BULK;
    const struct dbk__sql *s = dbk__sql_get(e, op, (int)eng, rows, 0);
    if (s)
        return s;
    struct dbk__sql *n = sql_new(op, eng, rows, 0);
    if (!n) {
        oom(err);
        return NULL;
    }
    uint64_t mask = insert_mask(e);
    dbk__sb sb = {0};
    build_insert(&sb, n, e, mask, rows ? rows : 1, eng);
    put_returning(&sb, eng, e);
    if (set_pfields(n, e, mask) != DBK_OK) {
        free(sb.p);
        dbk__sql_free(n);
        oom(err);
        return NULL;
    }
    return sql_finish(e, n, &sb, dbk__priv(e)->default_mask, err);
}

dbk_rc dbk_repo_create(dbk_db *db, const dbk_entity *e, const void *in, void *out, dbk_arena *arena,
                       dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, out != NULL, "dbk_repo_create", err);
    if (rc)
        return rc;
    if (!in)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_create: in must not be NULL");
    const struct dbk__sql *s = insert_sql(e, engine_of(db), 0, err);
    if (!s)
        return DBK_ENOMEM;
    dbk_value vals[DBK_REPO_MAX_FIELDS];
    row_params(e, s, in, dbk__now_us(), vals);
    dbk_result *r = NULL;
    rc = dbk_db_query(db, s->sql, vals, (size_t)s->nparams, &r, err);
    if (rc)
        return rc;
    if (dbk_result_nrows(r) != 1) {
        dbk_result_free(r);
        return dbk__err(err, DBK_EINTERNAL, "insert into %s returned no row", e->table);
    }
    if (out) {
        memset(out, 0, e->struct_size);
        rc = dbk__map_row(e, r, 0, s->cols, s->ncols, out, arena, err);
    }
    dbk_result_free(r);
    return rc;
}

/* ---- create many ---- */

/* Rows of an entity as PostgreSQL's COPY ... FROM STDIN text, through the
 * db layer's encoder (db/copy_int.h: escaping, bytea hex, size limits). */
struct copy_state {
    const dbk_entity *e;
    const unsigned char *rows;
    size_t n, next;
    int fields[DBK_REPO_MAX_FIELDS];
    int nfields;
    int64_t now;
    dbk__copy_row row; /* the encoded row being handed out */
};

static long copy_fill(void *ctx, char *buf, size_t cap, dbk_error *err)
{
    struct copy_state *c = ctx;
    dbk__copy_row *r = &c->row;
    size_t used = 0;
    while (used < cap) {
        used += dbk__copy_row_drain(r, buf + used, cap - used);
        if (r->off < r->len)
            continue;
        if (c->next == c->n)
            break;
        const unsigned char *in = c->rows + c->next * c->e->struct_size;
        r->len = r->off = 0;
        for (int k = 0; k < c->nfields; k++) {
            const dbk_field *f = &c->e->fields[c->fields[k]];
            dbk_value v = is_now_field(f) ? dbk_timestamp(c->now)
                                          : dbk__field_value(c->e, c->fields[k], in);
            dbk_rc rc = (k && !dbk__copy_put(r, "\t", 1))
                            ? DBK_ENOMEM
                            : dbk__copy_value(r, v, f->column, err);
            if (rc == DBK_ENOMEM)
                rc = dbk__err(err, DBK_ENOMEM, "out of memory encoding row %zu", c->next);
            if (rc) {
                char msg[sizeof err->message], hint[sizeof err->hint];
                dbk__strlcpy(msg, err->message, sizeof msg);
                dbk__strlcpy(hint, err->hint, sizeof hint);
                dbk__err(err, rc, "row %zu of %s: %s", c->next, c->e->table, msg);
                if (hint[0])
                    dbk__err_hint(err, "%s", hint);
                return -1;
            }
        }
        if (!dbk__copy_put(r, "\n", 1)) {
            dbk__err(err, DBK_ENOMEM, "out of memory encoding row %zu", c->next);
            return -1;
        }
        c->next++;
    }
    return (long)used;
}

/* PostgreSQL, no rows asked back: one COPY ... FROM STDIN, a single
 * statement, so it writes everything or nothing. */
static dbk_rc create_many_copy(dbk_db *db, const dbk_entity *e, const void *rows, size_t n,
                               dbk_error *err)
{
    struct copy_state c = {.e = e, .rows = rows, .n = n, .now = dbk__now_us()};
    dbk_engine eng = engine_of(db);
    uint64_t mask = insert_mask(e);
    dbk__sb sql = {0};
    dbk__sb_puts(&sql, "COPY ");
    dbk__sb_ident(&sql, eng, e->table);
    dbk__sb_puts(&sql, " (");
    for (size_t i = 0; i < e->nfields; i++) {
        if (!(mask & BIT(i)))
            continue;
        if (c.nfields)
            dbk__sb_puts(&sql, ", ");
        dbk__sb_ident(&sql, eng, e->fields[i].column);
        c.fields[c.nfields++] = (int)i;
    }
    dbk__sb_puts(&sql, ") FROM STDIN");
    if (sql.oom || c.nfields == 0) {
        free(sql.p);
        return c.nfields ? oom(err) : dbk__err(err, DBK_EMISUSE, "%s has no insertable field",
                                                e->table);
    }
    int64_t copied = 0;
    dbk_rc rc = dbk__db_copy_in(db, sql.p, copy_fill, &c, &copied, err);
    if (rc == DBK_OK && copied != (int64_t)n)
        rc = dbk__err(err, DBK_EINTERNAL, "COPY into %s wrote %lld rows for %zu", e->table,
                      (long long)copied, n);
    free(sql.p);
    free(c.row.p);
    return rc;
}

struct many_ctx {
    const dbk_entity *e;
    const void *rows;
    size_t n;
    void *out_rows;
    dbk_arena *arena;
};

/* Multi-row INSERT ... VALUES ... RETURNING in chunks below the engine's
 * parameter limit (the dialect's max_params: 999 on SQLite, 65535 on
 * PostgreSQL), at most 1000 rows. */
static dbk_rc create_many_values(dbk_db *db, void *ctxp, dbk_error *err)
{
    struct many_ctx *m = ctxp;
    const dbk_entity *e = m->e;
    size_t n = m->n;
    dbk_engine eng = engine_of(db);
    uint64_t mask = insert_mask(e);
    size_t per_row = 0;
    for (size_t i = 0; i < e->nfields; i++)
        if (mask & BIT(i))
            per_row++;
    if (per_row == 0)
        per_row = 1;
    size_t max_params = dbk__dialect_of(eng)->max_params;
    size_t batch = max_params / per_row;
    if (batch > 1000)
        batch = 1000;
    if (batch == 0)
        batch = 1;
    dbk_value *vals = malloc(sizeof(dbk_value) * per_row * batch);
    if (!vals)
        return oom(err);
    dbk_rc rc = DBK_OK;
    int64_t now = dbk__now_us();
    const unsigned char *src = m->rows;
    unsigned char *dst = m->out_rows;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < batch ? n - done : batch;
        const struct dbk__sql *s = insert_sql(e, eng, k, err);
        if (!s) {
            rc = DBK_ENOMEM;
            goto out;
        }
        for (size_t j = 0; j < k; j++)
            row_params(e, s, src + (done + j) * e->struct_size, now, vals + j * (size_t)s->nparams);
        dbk_result *r = NULL;
        rc = dbk_db_query(db, s->sql, vals, k * (size_t)s->nparams, &r, err);
        if (rc)
            goto out;
        if (dbk_result_nrows(r) != k) {
            size_t got = dbk_result_nrows(r);
            dbk_result_free(r);
            rc = dbk__err(err, DBK_EINTERNAL, "bulk insert into %s returned %zu rows for %zu",
                          e->table, got, k);
            goto out;
        }
        if (dst)
            for (size_t j = 0; j < k && rc == DBK_OK; j++) {
                memset(dst + (done + j) * e->struct_size, 0, e->struct_size);
                rc = dbk__map_row(e, r, j, s->cols, s->ncols, dst + (done + j) * e->struct_size,
                                  m->arena, err);
            }
        dbk_result_free(r);
        if (rc)
            goto out;
        done += k;
    }
out:
    free(vals);
    return rc;
}

/* Below this many rows a multi-row INSERT beats setting up a COPY. */
#define COPY_MIN_ROWS 64

dbk_rc dbk_repo_create_many(dbk_db *db, const dbk_entity *e, const void *rows, size_t n,
                            void *out_rows, dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, out_rows != NULL, "dbk_repo_create_many", err);
    if (rc)
        return rc;
    if (n && !rows)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_create_many: rows must not be NULL");
    if (n == 0)
        return DBK_OK;
    dbk_engine eng = engine_of(db);
    if (dbk__dialect_of(eng)->bulk_copy && !out_rows && n >= COPY_MIN_ROWS)
        return create_many_copy(db, e, rows, n, err);
    struct many_ctx m = {e, rows, n, out_rows, arena};
    /* One statement writes all or nothing by itself; several run in one
     * transaction (a savepoint inside the caller's), so a failing chunk
     * leaves none of the rows behind. */
    size_t per_row = 0;
    uint64_t mask = insert_mask(e);
    for (size_t i = 0; i < e->nfields; i++)
        if (mask & BIT(i))
            per_row++;
    size_t chunk = dbk__dialect_of(eng)->max_params / (per_row ? per_row : 1);
    if (chunk > 1000)
        chunk = 1000;
    if (chunk == 0 || n <= chunk)
        return create_many_values(db, &m, err);
    dbk_tx_opts o = {.max_attempts = 1};
    return dbk_tx_run(db, create_many_values, &m, &o, err);
}

/* Resolves a name list into a mask; DBK_EINVALID_COLUMN on an unknown name. */
static dbk_rc names_mask(const dbk_entity *e, const char *const *names, size_t n, uint64_t *mask,
                         dbk_error *err)
{
    *mask = 0;
    if (n && !names)
        return dbk__err(err, DBK_EMISUSE, "%zu field names announced but the list is NULL", n);
    for (size_t i = 0; i < n; i++) {
        int fi = dbk__field(e, names[i]);
        if (fi < 0)
            return dbk__err(err, DBK_EINVALID_COLUMN, "%s has no field named by the caller",
                            e->table);
        *mask |= BIT(fi);
    }
    return DBK_OK;
}

static bool valid_conflict(const dbk_entity *e, uint64_t m)
{
    if (m == 0)
        return false;
    if ((m & (m - 1)) == 0) { /* one column */
        int fi = __builtin_ctzll(m);
        if (unique_single(e, fi))
            return true;
    }
    for (size_t i = 0; i < e->nuniques; i++) {
        uint64_t um = 0;
        for (size_t j = 0; j < e->uniques[i].ncolumns; j++)
            um |= BIT(dbk__field(e, e->uniques[i].columns[j]));
        if (um == m)
            return true;
    }
    return false;
}

dbk_rc dbk_repo_upsert(dbk_db *db, const dbk_entity *e, const char *const *conflict,
                       size_t nconflict, const char *const *update_fields, size_t nupdate,
                       const void *in, void *out, dbk_arena *arena, dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, out != NULL, "dbk_repo_upsert", err);
    if (rc)
        return rc;
    if (!in)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_upsert: in must not be NULL");
    uint64_t cmask, umask;
    rc = names_mask(e, conflict, nconflict, &cmask, err);
    if (rc)
        return rc;
    if (!valid_conflict(e, cmask))
        return dbk__err(err, DBK_EINVALID_COLUMN,
                        "the conflict target is not the key, a unique field or a unique set of %s",
                        e->table);
    uint64_t imask = insert_mask(e);
    if (update_fields) {
        rc = names_mask(e, update_fields, nupdate, &umask, err);
        if (rc)
            return rc;
        if (umask & ~imask)
            return dbk__err(err, DBK_EINVALID_COLUMN, "a generated field of %s cannot be updated",
                            e->table);
    } else {
        umask = imask & ~cmask;
        for (size_t i = 0; i < e->nfields; i++)
            if (e->fields[i].flags & (DBK_F_CREATED_AT | DBK_F_PK))
                umask &= ~BIT(i);
    }
    for (size_t i = 0; i < e->nfields; i++)
        if (e->fields[i].flags & DBK_F_UPDATED_AT)
            umask |= BIT(i);
    umask &= ~cmask;
    dbk_engine eng = engine_of(db);
    const struct dbk__sql *s = dbk__sql_get(e, DBK__OP_UPSERT, (int)eng, cmask, umask);
    if (!s) {
        struct dbk__sql *n = sql_new(DBK__OP_UPSERT, eng, cmask, umask);
        if (!n)
            return oom(err);
        dbk__sb sb = {0};
        build_insert(&sb, n, e, imask, 1, eng);
        const char *target[DBK_REPO_MAX_FIELDS], *set[DBK_REPO_MAX_FIELDS];
        size_t nt = 0, ns = 0;
        for (size_t i = 0; i < e->nfields; i++) {
            if (cmask & BIT(i))
                target[nt++] = e->fields[i].column;
            if (umask & BIT(i))
                set[ns++] = e->fields[i].column;
        }
        /* DO NOTHING would return no row; a no-op update of the first
         * conflict column returns it. */
        if (ns == 0)
            set[ns++] = e->fields[__builtin_ctzll(cmask)].column;
        dbk__dialect_of(eng)->upsert_sql(&sb, target, nt, set, ns);
        put_returning(&sb, eng, e);
        if (set_pfields(n, e, imask) != DBK_OK) {
            free(sb.p);
            dbk__sql_free(n);
            return oom(err);
        }
        s = sql_finish(e, n, &sb, dbk__priv(e)->default_mask, err);
        if (!s)
            return DBK_ENOMEM;
    }
    dbk_value vals[DBK_REPO_MAX_FIELDS];
    row_params(e, s, in, dbk__now_us(), vals);
    return run_one(db, e, s, vals, (size_t)s->nparams, out, arena, err);
}

/* ---- update ---- */

static bool named(const char *const *names, size_t n, const char *column)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], column) == 0)
            return true;
    return false;
}

dbk_rc dbk_repo_update(dbk_db *db, const dbk_entity *e, dbk_value id, const void *in,
                       const char *const *fields, size_t nfields, void *out, dbk_arena *arena,
                       dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, out != NULL, "dbk_repo_update", err);
    if (rc)
        return rc;
    if (!in && nfields)
        return dbk__err(err, DBK_EMISUSE, "dbk_repo_update: in must not be NULL");
    uint64_t mask;
    rc = names_mask(e, fields, nfields, &mask, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < e->nfields; i++) {
        const dbk_field *f = &e->fields[i];
        if ((mask & BIT(i)) && (f->flags & (DBK_F_PK | DBK_F_GENERATED)))
            return dbk__err(err, DBK_EINVALID_COLUMN, "%s.%s is a key or generated field and "
                            "cannot be updated", e->table, f->column);
        if (f->flags & DBK_F_UPDATED_AT)
            mask |= BIT(i);
    }
    if (mask == 0) {
        if (out)
            return dbk_repo_find_by_id(db, e, id, out, arena, err);
        void *tmp = arena ? dbk_arena_alloc(arena, e->struct_size) : NULL;
        dbk_arena *own = NULL;
        if (!tmp) {
            own = dbk_arena_new(0);
            tmp = own ? dbk_arena_alloc(own, e->struct_size) : NULL;
            if (!tmp) {
                dbk_arena_free(own);
                return oom(err);
            }
        }
        rc = dbk_repo_find_by_id(db, e, id, tmp, own ? own : arena, err);
        dbk_arena_free(own);
        return rc;
    }
    dbk_engine eng = engine_of(db);
    int pk = dbk__priv(e)->pk;
    const struct dbk__sql *s = dbk__sql_get(e, DBK__OP_UPDATE, (int)eng, mask, 0);
    if (!s) {
        struct dbk__sql *n = sql_new(DBK__OP_UPDATE, eng, mask, 0);
        if (!n)
            return oom(err);
        dbk__sb sb = {0};
        dbk__sb_puts(&sb, "UPDATE ");
        dbk__sb_ident(&sb, eng, e->table);
        dbk__sb_puts(&sb, " SET ");
        int p = 2;
        for (size_t i = 0; i < e->nfields; i++) {
            if (!(mask & BIT(i)))
                continue;
            if (p > 2)
                dbk__sb_puts(&sb, ", ");
            dbk__sb_ident(&sb, eng, e->fields[i].column);
            dbk__sb_puts(&sb, " = ");
            dbk__sb_param(&sb, e, (int)i, p++, eng);
        }
        dbk__sb_puts(&sb, " WHERE ");
        dbk__sb_ident(&sb, eng, e->fields[pk].column);
        dbk__sb_puts(&sb, " = ");
        dbk__sb_param(&sb, e, pk, 1, eng);
        put_returning(&sb, eng, e);
        if (set_pfields(n, e, mask) != DBK_OK) {
            free(sb.p);
            dbk__sql_free(n);
            return oom(err);
        }
        s = sql_finish(e, n, &sb, dbk__priv(e)->default_mask, err);
        if (!s)
            return DBK_ENOMEM;
    }
    dbk_value vals[DBK_REPO_MAX_FIELDS + 1];
    vals[0] = id;
    int64_t now = dbk__now_us();
    for (int k = 0; k < s->nparams; k++) {
        const dbk_field *f = &e->fields[s->pfields[k]];
        vals[k + 1] = (f->flags & DBK_F_UPDATED_AT) && !named(fields, nfields, f->column)
                          ? dbk_timestamp(now)
                          : dbk__field_value(e, s->pfields[k], in);
    }
    return run_one(db, e, s, vals, (size_t)s->nparams + 1, out, arena, err);
}

/* ---- delete ---- */

dbk_rc dbk_repo_delete(dbk_db *db, const dbk_entity *e, dbk_value id, void *out, dbk_arena *arena,
                       dbk_error *err)
{
    dbk_rc rc = dbk__repo_check(db, e, arena, out != NULL, "dbk_repo_delete", err);
    if (rc)
        return rc;
    dbk_engine eng = engine_of(db);
    uint64_t with_row = out != NULL;
    const struct dbk__sql *s = dbk__sql_get(e, DBK__OP_DELETE, (int)eng, with_row, 0);
    if (!s) {
        struct dbk__sql *n = sql_new(DBK__OP_DELETE, eng, with_row, 0);
        if (!n)
            return oom(err);
        int pk = dbk__priv(e)->pk;
        dbk__sb sb = {0};
        dbk__sb_puts(&sb, "DELETE FROM ");
        dbk__sb_ident(&sb, eng, e->table);
        dbk__sb_puts(&sb, " WHERE ");
        dbk__sb_ident(&sb, eng, e->fields[pk].column);
        dbk__sb_puts(&sb, " = ");
        dbk__sb_param(&sb, e, pk, 1, eng);
        if (with_row)
            put_returning(&sb, eng, e);
        s = sql_finish(e, n, &sb, with_row ? dbk__priv(e)->default_mask : 0, err);
        if (!s)
            return DBK_ENOMEM;
    }
    if (out) {
        memset(out, 0, e->struct_size);
        return run_one(db, e, s, &id, 1, out, arena, err);
    }
    int64_t affected = 0;
    rc = dbk_db_exec(db, s->sql, &id, 1, &affected, err);
    if (rc)
        return rc;
    if (affected == 0)
        return dbk__err(err, DBK_ENOT_FOUND, "no %s row matches", e->table);
    return DBK_OK;
}
