/*
 * The cached repository: the repository's reads through the cache, its
 * writes followed by invalidation after commit.
 *
 * Why it is a thin layer: everything hard lives below it. Reads are
 * dbk_cache_get_or_load() (single-flight, lease against the stale-set race,
 * TTL jitter, negative caching) with a loader that calls dbk_repo_find_*
 * and encodes the struct with the row codec. Writes call dbk_repo_* and
 * then register dbk_cache_invalidate_after_commit() for every key the row
 * could be cached under (id, each unique column, before and after), plus a
 * namespace bump for lists; the transaction layer runs those after COMMIT,
 * drops them on rollback, and runs them at once outside a transaction. The
 * old row is read first only when a unique column might change its key.
 * The layout hash covers table, struct size and every field's column, type,
 * offset and size, so a rebuilt struct never decodes old bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "cache_int.h"
#include "dbkit/tx.h"

struct dbk_cached_repo {
    dbk_cache *cache;
    dbk_entity *e;
    int64_t ttl_ms;
    uint64_t layout;
    size_t nvis;             /* non-hidden fields */
    int vis[DBK_REPO_MAX_FIELDS];
    int pk;
    char list_ns[210];
};

#define KEYMAX 1024

static bool field_hidden(const dbk_field *f)
{
    return (f->flags & DBK_F_HIDDEN) != 0;
}

dbk_rc dbk_cached_repo_new(dbk_cache *cache, dbk_entity *e, const dbk_cached_repo_opts *opts,
                           dbk_cached_repo **out, dbk_error *err)
{
    if (!cache || !e || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_new: cache, entity and out must not be NULL");
    *out = NULL;
    dbk_rc rc = dbk_entity_init(e, err);
    if (rc != DBK_OK)
        return rc;
    if (strlen(e->table) > 180)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_new: table name too long to cache");
    dbk_cached_repo *r = calloc(1, sizeof *r);
    if (!r)
        return dbk__err(err, DBK_ENOMEM, "out of memory creating a cached repository");
    r->cache = cache;
    r->e = e;
    r->ttl_ms = opts && opts->ttl_ms > 0 ? opts->ttl_ms : DBK_CACHED_REPO_DEFAULT_TTL_MS;
    r->pk = -1;
    dbk_cache_field cf[DBK_REPO_MAX_FIELDS];
    for (size_t i = 0; i < e->nfields && i < DBK_REPO_MAX_FIELDS; i++) {
        if (e->fields[i].flags & DBK_F_PK)
            r->pk = (int)i;
        if (field_hidden(&e->fields[i]))
            continue;
        cf[r->nvis].name = e->fields[i].column;
        cf[r->nvis].type = e->fields[i].type;
        r->vis[r->nvis++] = (int)i;
    }
    uint64_t h = dbk_cache_layout_hash(e->table, cf, r->nvis);
    /* the C layout too: offsets and sizes */
    for (size_t i = 0; i < r->nvis; i++) {
        const dbk_field *f = &e->fields[r->vis[i]];
        uint64_t parts[3] = {f->offset, f->size, (uint64_t)f->null_offset};
        for (int k = 0; k < 3; k++) {
            h ^= parts[k];
            h *= 1099511628211ULL;
        }
    }
    h ^= e->struct_size;
    h *= 1099511628211ULL;
    r->layout = h;
    snprintf(r->list_ns, sizeof r->list_ns, "%s:list", e->table);
    *out = r;
    return DBK_OK;
}

void dbk_cached_repo_free(dbk_cached_repo *r)
{
    free(r);
}

dbk_rc dbk_cached_list_version(dbk_cached_repo *r, uint64_t *version, dbk_error *err)
{
    if (!r || !version)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_list_version: NULL argument");
    return dbk_cache_ns_version(r->cache, r->list_ns, version, err);
}

/* ---- struct <-> encoded row ---- */

static dbk_value read_field(const dbk_field *f, const void *row)
{
    const char *base = row;
    if (f->null_offset >= 0 && *(const bool *)(base + f->null_offset))
        return dbk_null();
    switch (f->type) {
    case DBK_TYPE_INT64: return dbk_int64(*(const int64_t *)(base + f->offset));
    case DBK_TYPE_TIMESTAMP: return dbk_timestamp(*(const int64_t *)(base + f->offset));
    case DBK_TYPE_DOUBLE: return dbk_double(*(const double *)(base + f->offset));
    case DBK_TYPE_BOOL: return dbk_bool(*(const bool *)(base + f->offset));
    case DBK_TYPE_BLOB: {
        const dbk_bytes *b = (const dbk_bytes *)(base + f->offset);
        return b->ptr ? dbk_blob(b->ptr, b->len) : dbk_null();
    }
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON: {
        const char *s = *(const char *const *)(base + f->offset);
        dbk_value v = dbk_text(s);
        if (s)
            v.type = f->type;
        return v;
    }
    default: return dbk_null();
    }
}

static dbk_rc encode_struct(const dbk_cached_repo *r, const void *row, void **out, size_t *outlen,
                            dbk_error *err)
{
    dbk_value vals[DBK_REPO_MAX_FIELDS];
    for (size_t i = 0; i < r->nvis; i++)
        vals[i] = read_field(&r->e->fields[r->vis[i]], row);
    return dbk_cache_encode_row(r->layout, vals, r->nvis, out, outlen, err);
}

static dbk_rc decode_struct(const dbk_cached_repo *r, const void *buf, size_t len, void *out,
                            dbk_arena *arena, dbk_error *err)
{
    dbk_value vals[DBK_REPO_MAX_FIELDS];
    dbk_rc rc = dbk_cache_decode_row(buf, len, r->layout, vals, r->nvis, err);
    if (rc != DBK_OK)
        return rc;
    memset(out, 0, r->e->struct_size);
    char *base = out;
    for (size_t i = 0; i < r->nvis; i++) {
        const dbk_field *f = &r->e->fields[r->vis[i]];
        const dbk_value *v = &vals[i];
        if (v->type == DBK_TYPE_NULL) {
            if (f->null_offset >= 0)
                *(bool *)(base + f->null_offset) = true;
            continue;
        }
        bool ok = v->type == f->type;
        if (!ok)
            return dbk__err(err, DBK_ETYPE, "cached row field %s has type %s", f->column,
                            dbk_type_name(v->type));
        switch (f->type) {
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP: *(int64_t *)(base + f->offset) = v->u.i; break;
        case DBK_TYPE_DOUBLE: *(double *)(base + f->offset) = v->u.d; break;
        case DBK_TYPE_BOOL: *(bool *)(base + f->offset) = v->u.b; break;
        case DBK_TYPE_BLOB: {
            dbk_bytes *b = (dbk_bytes *)(base + f->offset);
            b->ptr = dbk_arena_memdup(arena, v->u.bytes.ptr ? v->u.bytes.ptr : "", v->u.bytes.len);
            b->len = v->u.bytes.len;
            if (!b->ptr)
                return dbk__err(err, DBK_ENOMEM, "out of memory decoding a cached row");
            break;
        }
        default: {
            char *s = dbk_arena_strndup(arena, v->u.bytes.ptr, v->u.bytes.len);
            if (!s)
                return dbk__err(err, DBK_ENOMEM, "out of memory decoding a cached row");
            *(char **)(base + f->offset) = s;
            break;
        }
        }
    }
    return DBK_OK;
}

/* "<table>:<column>:<value>" */
static dbk_rc make_key(const dbk_cached_repo *r, const char *column, dbk_value v, char *buf,
                       size_t *len, dbk_error *err)
{
    int n = snprintf(buf, KEYMAX, "%s:%s:", r->e->table, column);
    if (n < 0 || n >= KEYMAX)
        return dbk__err(err, DBK_EINVALID, "cache key too long");
    size_t off = (size_t)n;
    switch (v.type) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP:
        n = snprintf(buf + off, KEYMAX - off, "%lld", (long long)v.u.i);
        if (n < 0 || (size_t)n >= KEYMAX - off)
            return dbk__err(err, DBK_EINVALID, "cache key too long");
        off += (size_t)n;
        break;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON:
    case DBK_TYPE_BLOB:
        if (v.u.bytes.len > KEYMAX - off)
            return dbk__err(err, DBK_EINVALID, "value too long for a cache key");
        memcpy(buf + off, v.u.bytes.ptr, v.u.bytes.len);
        off += v.u.bytes.len;
        break;
    default:
        return dbk__err(err, DBK_EINVALID, "a %s value cannot be a cache key", dbk_type_name(v.type));
    }
    *len = off;
    return DBK_OK;
}

/* ---- reads ---- */

struct find_ctx {
    dbk_cached_repo *r;
    dbk_db *db;
    const char *column; /* NULL: by id */
    dbk_value value;
};

static dbk_rc find_db(struct find_ctx *fc, void *out, dbk_arena *arena, dbk_error *err)
{
    return fc->column ? dbk_repo_find_by(fc->db, fc->r->e, fc->column, fc->value, out, arena, err)
                      : dbk_repo_find_by_id(fc->db, fc->r->e, fc->value, out, arena, err);
}

static dbk_rc find_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                        dbk_error *err)
{
    (void)key;
    (void)keylen;
    struct find_ctx *fc = ctx;
    void *tmp = calloc(1, fc->r->e->struct_size);
    dbk_arena *a = dbk_arena_new(0);
    dbk_rc rc;
    if (!tmp || !a) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory loading a cached row");
        goto done;
    }
    rc = find_db(fc, tmp, a, err);
    if (rc == DBK_OK)
        rc = encode_struct(fc->r, tmp, val, vallen, err);
done:
    dbk_arena_free(a);
    free(tmp);
    return rc;
}

static dbk_rc cached_find(struct find_ctx *fc, void *out, dbk_arena *arena, dbk_error *err)
{
    if (dbk_db_in_transaction(fc->db))
        return find_db(fc, out, arena, err);
    char key[KEYMAX];
    size_t klen = 0;
    const char *col = fc->column ? fc->column : fc->r->e->fields[fc->r->pk].column;
    dbk_rc rc = make_key(fc->r, col, fc->value, key, &klen, err);
    if (rc != DBK_OK)
        return rc;
    void *buf = NULL;
    size_t len = 0;
    rc = dbk_cache_get_or_load(fc->r->cache, key, klen, find_load, fc, fc->r->ttl_ms, &buf, &len,
                               err);
    if (rc != DBK_OK)
        return rc;
    rc = decode_struct(fc->r, buf, len, out, arena, NULL);
    free(buf);
    if (rc != DBK_OK) {
        /* written for another layout (or corrupt): drop it, read the database */
        dbk_cache_delete(fc->r->cache, key, klen, NULL);
        rc = find_db(fc, out, arena, err);
    }
    return rc;
}

dbk_rc dbk_cached_find_by_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                             dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !out || !arena)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_find_by_id: NULL argument");
    struct find_ctx fc = {r, db, NULL, id};
    return cached_find(&fc, out, arena, err);
}

dbk_rc dbk_cached_find_by(dbk_cached_repo *r, dbk_db *db, const char *column, dbk_value value,
                          void *out, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !column || !out || !arena)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_find_by: NULL argument");
    int idx = dbk_entity_field_index(r->e, column);
    if (idx < 0 || !(r->e->fields[idx].flags & (DBK_F_UNIQUE | DBK_F_PK)))
        return dbk__err(err, DBK_EINVALID_COLUMN,
                        "column \"%s\" is not the primary key or a unique field of %s", column,
                        r->e->table);
    struct find_ctx fc = {r, db, idx == r->pk ? NULL : r->e->fields[idx].column, value};
    return cached_find(&fc, out, arena, err);
}

/* ---- writes ---- */

static bool has_unique(const dbk_cached_repo *r)
{
    for (size_t i = 0; i < r->e->nfields; i++)
        if ((r->e->fields[i].flags & DBK_F_UNIQUE) && !(r->e->fields[i].flags & DBK_F_PK))
            return true;
    return false;
}

/* Registers the invalidation of every key `row` can be cached under. */
static dbk_rc invalidate_row(dbk_cached_repo *r, dbk_db *db, const void *row, dbk_error *err)
{
    for (size_t i = 0; i < r->e->nfields; i++) {
        const dbk_field *f = &r->e->fields[i];
        if (!(f->flags & (DBK_F_PK | DBK_F_UNIQUE)))
            continue;
        dbk_value v = read_field(f, row);
        if (v.type == DBK_TYPE_NULL)
            continue;
        char key[KEYMAX];
        size_t klen = 0;
        if (make_key(r, f->column, v, key, &klen, NULL) != DBK_OK)
            continue;
        dbk_rc rc = dbk_cache_invalidate_after_commit(db, r->cache, key, klen, err);
        if (rc != DBK_OK)
            return rc;
    }
    return DBK_OK;
}

static dbk_rc invalidate_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, dbk_error *err)
{
    char key[KEYMAX];
    size_t klen = 0;
    dbk_rc rc = make_key(r, r->e->fields[r->pk].column, id, key, &klen, err);
    if (rc != DBK_OK)
        return rc;
    return dbk_cache_invalidate_after_commit(db, r->cache, key, klen, err);
}

static dbk_rc bump_lists(dbk_cached_repo *r, dbk_db *db, dbk_error *err)
{
    return dbk_cache_ns_bump_after_commit(db, r->cache, r->list_ns, err);
}

/* Scratch space for rows the caller did not ask for. */
struct scratch {
    void *row;
    dbk_arena *arena;
};

static dbk_rc scratch_init(struct scratch *s, const dbk_cached_repo *r, size_t n, dbk_error *err)
{
    s->row = calloc(n ? n : 1, r->e->struct_size);
    s->arena = dbk_arena_new(0);
    if (!s->row || !s->arena) {
        free(s->row);
        dbk_arena_free(s->arena);
        s->row = NULL;
        s->arena = NULL;
        return dbk__err(err, DBK_ENOMEM, "out of memory in the cached repository");
    }
    return DBK_OK;
}

static void scratch_free(struct scratch *s)
{
    free(s->row);
    dbk_arena_free(s->arena);
}

dbk_rc dbk_cached_create(dbk_cached_repo *r, dbk_db *db, const void *in, void *out,
                         dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_create: NULL argument");
    struct scratch s = {0};
    if (!out || !arena) {
        dbk_rc rc = scratch_init(&s, r, 1, err);
        if (rc != DBK_OK)
            return rc;
        out = s.row;
        arena = s.arena;
    }
    dbk_rc rc = dbk_repo_create(db, r->e, in, out, arena, err);
    if (rc == DBK_OK)
        rc = invalidate_row(r, db, out, err); /* drops cached "not found" entries */
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&s);
    return rc;
}

/* Old row (for its unique keys) when a write may move them. */
static dbk_rc read_old(dbk_cached_repo *r, dbk_db *db, dbk_value id, struct scratch *old,
                       bool *have, dbk_error *err)
{
    *have = false;
    if (!has_unique(r))
        return DBK_OK;
    dbk_rc rc = scratch_init(old, r, 1, err);
    if (rc != DBK_OK)
        return rc;
    rc = dbk_repo_find_by_id(db, r->e, id, old->row, old->arena, err);
    if (rc == DBK_ENOT_FOUND)
        return DBK_OK;
    *have = rc == DBK_OK;
    return rc;
}

dbk_rc dbk_cached_update(dbk_cached_repo *r, dbk_db *db, dbk_value id, const void *in,
                         const char *const *fields, size_t nfields, void *out, dbk_arena *arena,
                         dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_update: NULL argument");
    struct scratch old = {0}, s = {0};
    bool have_old = false;
    dbk_rc rc = read_old(r, db, id, &old, &have_old, err);
    if (rc == DBK_OK && (!out || !arena)) {
        rc = scratch_init(&s, r, 1, err);
        out = s.row;
        arena = s.arena;
    }
    if (rc == DBK_OK)
        rc = dbk_repo_update(db, r->e, id, in, fields, nfields, out, arena, err);
    if (rc == DBK_OK)
        rc = invalidate_id(r, db, id, err);
    if (rc == DBK_OK && have_old)
        rc = invalidate_row(r, db, old.row, err);
    if (rc == DBK_OK)
        rc = invalidate_row(r, db, out, err);
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&old);
    scratch_free(&s);
    return rc;
}

dbk_rc dbk_cached_delete(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                         dbk_arena *arena, dbk_error *err)
{
    if (!r || !db)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_delete: NULL argument");
    struct scratch s = {0};
    dbk_rc rc = DBK_OK;
    if (has_unique(r) && (!out || !arena)) {
        rc = scratch_init(&s, r, 1, err);
        out = s.row;
        arena = s.arena;
    }
    if (rc == DBK_OK)
        rc = dbk_repo_delete(db, r->e, id, out, out ? arena : NULL, err);
    if (rc == DBK_OK)
        rc = invalidate_id(r, db, id, err);
    if (rc == DBK_OK && out)
        rc = invalidate_row(r, db, out, err); /* RETURNING gave the deleted row */
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&s);
    return rc;
}

dbk_rc dbk_cached_upsert(dbk_cached_repo *r, dbk_db *db, const char *const *conflict,
                         size_t nconflict, const char *const *update_fields, size_t nupdate,
                         const void *in, void *out, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_upsert: NULL argument");
    struct scratch old = {0}, s = {0};
    dbk_rc rc = DBK_OK;
    bool have_old = false;
    /* the row it may update, found by the conflict column */
    if (has_unique(r) && nconflict == 1 && conflict && conflict[0]) {
        int idx = dbk_entity_field_index(r->e, conflict[0]);
        if (idx >= 0) {
            dbk_value v = read_field(&r->e->fields[idx], in);
            rc = scratch_init(&old, r, 1, err);
            if (rc == DBK_OK && v.type != DBK_TYPE_NULL) {
                rc = dbk_repo_find_by(db, r->e, conflict[0], v, old.row, old.arena, err);
                have_old = rc == DBK_OK;
                if (rc == DBK_ENOT_FOUND)
                    rc = DBK_OK;
            }
        }
    }
    if (rc == DBK_OK && (!out || !arena)) {
        rc = scratch_init(&s, r, 1, err);
        out = s.row;
        arena = s.arena;
    }
    if (rc == DBK_OK)
        rc = dbk_repo_upsert(db, r->e, conflict, nconflict, update_fields, nupdate, in, out, arena,
                             err);
    if (rc == DBK_OK && have_old)
        rc = invalidate_row(r, db, old.row, err);
    if (rc == DBK_OK)
        rc = invalidate_row(r, db, out, err);
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&old);
    scratch_free(&s);
    return rc;
}

dbk_rc dbk_cached_create_many(dbk_cached_repo *r, dbk_db *db, const void *rows, size_t n,
                              void *out_rows, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || (!rows && n))
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_create_many: NULL argument");
    struct scratch s = {0};
    dbk_rc rc = DBK_OK;
    if (!out_rows || !arena) {
        rc = scratch_init(&s, r, n, err);
        out_rows = s.row;
        arena = s.arena;
    }
    if (rc == DBK_OK)
        rc = dbk_repo_create_many(db, r->e, rows, n, out_rows, arena, err);
    for (size_t i = 0; rc == DBK_OK && i < n; i++)
        rc = invalidate_row(r, db, (const char *)out_rows + i * r->e->struct_size, err);
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&s);
    return rc;
}
