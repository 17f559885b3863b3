/*
 * The cached repository: the repository's reads through the cache, its
 * writes followed by invalidation after commit.
 *
 * Why it is a thin layer: everything hard lives below it. Reads are
 * dbk_cache_get_or_load() (single-flight, lease against the stale-set race,
 * TTL jitter, negative caching) with a loader that calls dbk_repo_find_*
 * and encodes the struct with the row codec. Writes call dbk_repo_* and
 * then register dbk_cache_invalidate_on_commit() for every key the row
 * could be cached under (id, each unique column, before and after), plus a
 * namespace bump for lists; the transaction layer runs those after COMMIT,
 * drops them on rollback, and runs them at once outside a transaction. The
 * old row is read first only when a unique column might change its key.
 * The layout hash covers table, struct size and every field's column, type,
 * offset and size, so a rebuilt struct never decodes old bytes.
 *
 * Canonical keys. A write invalidates the keys built from the row as the
 * database stores it, so a read may only be cached under a key built the
 * same way; anything else would be an entry that no write ever reaches.
 * The lookup value is therefore converted to the column's type first: an
 * integer column takes an int64, or a text of decimal digits (optional
 * sign, leading zeros), which is parsed and then also SENT as the int64, so
 * the key and the query cannot disagree. A text column is keyed by its
 * bytes only when the column compares bytes: the database is asked once per
 * column and engine (SQLite: does the column's collation make 'a' = 'A' or
 * 'a' = 'a '? that catches NOCASE and RTRIM, the only built-in non-binary
 * collations; PostgreSQL: the catalog, text or varchar with a deterministic
 * collation; a uuid column only for the canonical lower-case spelling). A
 * found row whose stored value differs from the key's bytes is returned
 * but not stored (and the column is then treated as non-binary). Every
 * other lookup (another type, a NULL, a double, a non-binary collation, a
 * key over KEYMAX bytes) bypasses the cache: it is answered by the
 * database exactly as dbk_repo_find_by() would, and nothing is stored. The
 * cache never turns a request the database would answer into an error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/hash.h"
#include "../core/internal.h"
#include "../driver/dialect.h"
#include "../repo/repo_int.h"
#include "cache_int.h"
#include "dbkit/tx.h"

/* How lookups on a text column may be keyed, per engine (learned once;
 * the dialect's text_key_probe / text_key_read say how to ask). */
enum key_mode {
    KM_UNKNOWN = DBK__TEXT_KEY_ASK, /* not asked yet (or the question failed: ask again) */
    KM_BINARY = DBK__TEXT_KEY_BINARY, /* equality is byte equality: key = the bytes */
    KM_UUID = DBK__TEXT_KEY_UUID,     /* PostgreSQL uuid: only the canonical spelling is keyed */
    KM_BYPASS = DBK__TEXT_KEY_BYPASS  /* equality the key space cannot mirror: never cached */
};

struct dbk_cached_repo {
    dbk_cache *cache;
    const dbk_entity *e;
    int64_t ttl_ms;
    uint64_t layout;
    size_t nvis;             /* non-hidden fields */
    int vis[DBK_REPO_MAX_FIELDS];
    int pk;
    char list_ns[210];
    _Atomic int text_mode[DBK__ENGINE_SLOTS][DBK_REPO_MAX_FIELDS]; /* [engine slot][field]:
                                                                     enum key_mode */
};

#define KEYMAX 1024

/* Returned by the loader when a row cannot be encoded for the cache (longer
 * than DBK_CACHE_MAX_VALUE): never stored, never leaves this file. */
#define RC_UNCACHEABLE ((dbk_rc)1000)
/* find_by_ids: an id dbk__cache_peek_many found missing (never returned) */
#define RC_PEEKED_MISS ((dbk_rc)1001)
/* find_by_ids: an id to read from the database and not store (never
 * returned): the load it joined was too slow, or its row too large */
#define RC_READ_DB ((dbk_rc)1002)

static bool field_hidden(const dbk_field *f)
{
    return (f->flags & DBK_F_HIDDEN) != 0;
}

DBK__OPTS_INIT_FN(dbk_cached_repo_opts, DBK_CACHED_REPO_OPTS_VERSION)

dbk_rc dbk_cached_repo_new(dbk_cache *cache, const dbk_entity *e,
                           const dbk_cached_repo_opts *opts, dbk_cached_repo **out,
                           dbk_error *err)
{
    if (!cache || !e || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_new: cache, entity and out must not be NULL");
    *out = NULL;
    if (opts &&
        dbk__opts_check(opts->version, DBK_CACHED_REPO_OPTS_VERSION, "dbk_cached_repo_opts", err))
        return DBK_EMISUSE;
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
        for (int k = 0; k < 3; k++)
            h = dbk__fnv64_word(h, parts[k]);
    }
    h = dbk__fnv64_word(h, e->struct_size);
    r->layout = h;
    snprintf(r->list_ns, sizeof r->list_ns, "%s:list", e->table);
    *out = r;
    return DBK_OK;
}

void dbk_cached_repo_free(dbk_cached_repo *r)
{
    free(r);
}

dbk_rc dbk_cached_repo_list_version(dbk_cached_repo *r, uint64_t *version, dbk_error *err)
{
    if (!r || !version)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_list_version: NULL argument");
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

/* "<table>:<column>:" + bytes. False when longer than KEYMAX. */
static bool build_key(const dbk_cached_repo *r, const char *column, const void *v, size_t vlen,
                      char *buf, size_t *len)
{
    int n = snprintf(buf, KEYMAX, "%s:%s:", r->e->table, column);
    if (n < 0 || n >= KEYMAX || vlen > KEYMAX - (size_t)n)
        return false;
    if (vlen)
        memcpy(buf + n, v, vlen);
    *len = (size_t)n + vlen;
    return true;
}

static bool int_key(const dbk_cached_repo *r, const char *column, int64_t x, char *buf,
                    size_t *len)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%lld", (long long)x);
    return build_key(r, column, num, (size_t)n, buf, len);
}

/* The key a stored row is cached under for field f: the value as the
 * database returned it. False when the field has no such key (NULL, a type
 * that is never keyed, too long): no lookup is ever cached under it. */
static bool row_key(const dbk_cached_repo *r, const dbk_field *f, const void *row, char *buf,
                    size_t *len)
{
    dbk_value v = read_field(f, row);
    switch (v.type) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP: return int_key(r, f->column, v.u.i, buf, len);
    case DBK_TYPE_TEXT:
    case DBK_TYPE_BLOB: return build_key(r, f->column, v.u.bytes.ptr, v.u.bytes.len, buf, len);
    default: return false;
    }
}

/* A decimal integer as both engines read it into an integer column:
 * optional sign, digits (leading zeros allowed), nothing else, in range. */
static bool parse_int_text(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i == n || n - i > 40)
        return false;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (lim - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* 8-4-4-4-12 lower-case hex: how PostgreSQL prints a uuid. */
static bool canonical_uuid(const char *s, size_t n)
{
    if (n != 36)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = s[i];
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* Asks the database how a text column compares (see the top of the file);
 * the question and the reading of its answer are the engine's dialect's.
 * KM_UNKNOWN when the question itself failed (no table yet, connection
 * trouble): the caller bypasses this time and asks again next time. */
static int probe_text_column(const dbk_cached_repo *r, dbk_db *db, const dbk_field *f)
{
    const dbk__dialect *dia = dbk__dialect_of(dbk_db_engine(db));
    dbk__sb sb = {0};
    dbk_value p[2];
    int np = 0;
    int mode = dia->text_key_probe(&sb, r->e->table, f->column, f->pg_cast, p, &np);
    if (mode == KM_UNKNOWN) {
        if (sb.oom) {
            free(sb.p);
            return KM_UNKNOWN;
        }
        dbk_result *res = NULL;
        dbk_rc rc = dbk_db_query(db, sb.p, p, (size_t)np, &res, NULL);
        if (rc == DBK_OK)
            mode = dia->text_key_read(res, f->pg_cast);
        dbk_result_free(res);
    }
    free(sb.p);
    if (mode == KM_BYPASS)
        dbk__log(DBK_LOG_INFO,
                 "cached repository %s: column %s does not compare bytes (collation or type); "
                 "lookups by it bypass the cache",
                 r->e->table, f->column);
    return mode;
}

static int text_mode(dbk_cached_repo *r, dbk_db *db, int fi)
{
    int eng = dbk__engine_slot(dbk_db_engine(db));
    int m = atomic_load(&r->text_mode[eng][fi]);
    if (m != KM_UNKNOWN)
        return m;
    m = probe_text_column(r, db, &r->e->fields[fi]);
    if (m != KM_UNKNOWN)
        atomic_store(&r->text_mode[eng][fi], m);
    return m;
}

/*
 * The canonical form of a lookup of field fi by `v`: *qv the value to send,
 * key/len its cache key. False when the lookup must bypass the cache.
 */
static bool lookup_key(dbk_cached_repo *r, dbk_db *db, int fi, dbk_value v, dbk_value *qv,
                       char *key, size_t *len)
{
    const dbk_field *f = &r->e->fields[fi];
    *qv = v;
    switch (f->type) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP:
        if (v.type == f->type)
            return int_key(r, f->column, v.u.i, key, len);
        if (f->type == DBK_TYPE_INT64 && v.type == DBK_TYPE_TEXT) {
            int64_t x;
            if (!parse_int_text(v.u.bytes.ptr, v.u.bytes.len, &x))
                return false;
            *qv = dbk_int64(x);
            return int_key(r, f->column, x, key, len);
        }
        return false;
    case DBK_TYPE_BLOB:
        return v.type == DBK_TYPE_BLOB &&
               build_key(r, f->column, v.u.bytes.ptr, v.u.bytes.len, key, len);
    case DBK_TYPE_TEXT: {
        if (v.type != DBK_TYPE_TEXT || v.u.bytes.len >= KEYMAX)
            return false;
        int m = text_mode(r, db, fi);
        if (m == KM_UUID && !canonical_uuid(v.u.bytes.ptr, v.u.bytes.len))
            return false;
        if (m != KM_BINARY && m != KM_UUID)
            return false;
        return build_key(r, f->column, v.u.bytes.ptr, v.u.bytes.len, key, len);
    }
    default: return false; /* double, bool, json: equality the key cannot mirror */
    }
}

/* ---- reads ---- */

struct find_ctx {
    dbk_cached_repo *r;
    dbk_db *db;
    int fi;             /* the field looked up */
    dbk_value value;    /* as sent to the database */
    void *out;          /* the caller's struct and arena */
    dbk_arena *arena;
    bool filled;        /* this caller's loader ran and wrote out */
};

static dbk_rc find_db(dbk_db *db, dbk_cached_repo *r, int fi, dbk_value v, void *out,
                      dbk_arena *arena, dbk_error *err)
{
    return fi == r->pk ? dbk_repo_find_by_id(db, r->e, v, out, arena, err)
                       : dbk_repo_find_by(db, r->e, r->e->fields[fi].column, v, out, arena, err);
}

/* Does the row store exactly the value that was looked up? */
static bool row_matches(const struct find_ctx *fc)
{
    const dbk_field *f = &fc->r->e->fields[fc->fi];
    dbk_value s = read_field(f, fc->out);
    const dbk_value *v = &fc->value;
    switch (v->type) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP: return s.type == v->type && s.u.i == v->u.i;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_BLOB:
        return s.type == v->type && s.u.bytes.len == v->u.bytes.len &&
               (v->u.bytes.len == 0 || memcmp(s.u.bytes.ptr, v->u.bytes.ptr, v->u.bytes.len) == 0);
    default: return false;
    }
}

/* The loader: reads the row straight into the caller's struct (the leader
 * then has nothing to decode) and encodes it for the cache and the
 * followers. */
static dbk_rc find_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                        bool *nostore, dbk_error *err)
{
    (void)key;
    (void)keylen;
    struct find_ctx *fc = ctx;
    dbk_rc rc = find_db(fc->db, fc->r, fc->fi, fc->value, fc->out, fc->arena, err);
    if (rc != DBK_OK)
        return rc;
    fc->filled = true;
    if (!row_matches(fc)) {
        /* the database matched a row that stores another value: the column
         * does not compare bytes after all. Serve, do not store, and stop
         * caching lookups by it. */
        *nostore = true;
        if (fc->r->e->fields[fc->fi].type == DBK_TYPE_TEXT) {
            int eng = dbk__engine_slot(dbk_db_engine(fc->db));
            atomic_store(&fc->r->text_mode[eng][fc->fi], KM_BYPASS);
        }
    }
    dbk_error eerr;
    rc = encode_struct(fc->r, fc->out, val, vallen, &eerr);
    if (rc == DBK_EINVALID) {
        dbk__log(DBK_LOG_DEBUG, "cached repository %s: row not cached: %s", fc->r->e->table,
                 eerr.message);
        return RC_UNCACHEABLE;
    }
    if (rc != DBK_OK && err)
        *err = eerr;
    return rc;
}

static dbk_rc cached_find(dbk_cached_repo *r, dbk_db *db, int fi, dbk_value v, void *out,
                          dbk_arena *arena, dbk_error *err)
{
    if (dbk_db_in_transaction(db))
        return find_db(db, r, fi, v, out, arena, err);
    char key[KEYMAX];
    size_t klen = 0;
    struct find_ctx fc = {r, db, fi, v, out, arena, false};
    if (!lookup_key(r, db, fi, v, &fc.value, key, &klen))
        return find_db(db, r, fi, v, out, arena, err); /* bypass: as uncached */
    void *buf = NULL;
    size_t len = 0;
    dbk_rc rc = dbk__cache_get_or_load_ex(r->cache, key, klen, find_load, &fc, r->ttl_ms, &buf,
                                          &len, err);
    if (rc == RC_UNCACHEABLE) {
        /* too large to cache: the leader has its row, a follower reads its own */
        if (fc.filled)
            return DBK_OK;
        return find_db(db, r, fi, fc.value, out, arena, err);
    }
    if (rc != DBK_OK)
        return rc;
    if (fc.filled) {
        free(buf); /* our own load: out already holds the row */
        return DBK_OK;
    }
    rc = decode_struct(r, buf, len, out, arena, NULL);
    free(buf);
    if (rc != DBK_OK) {
        /* written for another layout (or corrupt): drop it, read the database */
        dbk_cache_delete(r->cache, key, klen, NULL);
        rc = find_db(db, r, fi, fc.value, out, arena, err);
    }
    return rc;
}

dbk_rc dbk_cached_repo_find_by_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                                  dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !out || !arena)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_find_by_id: NULL argument");
    return cached_find(r, db, r->pk, id, out, arena, err);
}

/* ---- many ids (dbk_cached_repo_find_by_ids) ---- */

/* The loader of the ids missing from the cache that this caller leads,
 * each row read straight into its caller's struct and encoded for the
 * cache: an integer primary key in one dbk_repo_find_by_ids (one
 * statement), any other as find_by_id loads it (find_load, one each). */
struct many_load {
    dbk_cached_repo *r;
    dbk_db *db;
    dbk_arena *arena;
    const size_t *id_of;  /* [distinct key] -> the first id index with it */
    const dbk_value *qv;  /* [id index] -> the value sent (lookup_key) */
    void *const *outs;
};

static void find_load_many(void *ctx, size_t n, const size_t *which, void **vals,
                           size_t *vallens, dbk_rc *rcs, bool *nostore, dbk_error *err)
{
    struct many_load *ml = ctx;
    const dbk_entity *e = ml->r->e;
    if (e->fields[ml->r->pk].type != DBK_TYPE_INT64) {
        for (size_t k = 0; k < n; k++) {
            size_t i = ml->id_of[which[k]];
            struct find_ctx fc = {ml->r, ml->db, ml->r->pk, ml->qv[i], ml->outs[i], ml->arena,
                                  false};
            dbk_error e1;
            rcs[k] = find_load(&fc, NULL, 0, &vals[k], &vallens[k], &nostore[k], &e1);
            if (rcs[k] != DBK_OK && rcs[k] != DBK_ENOT_FOUND && rcs[k] != RC_UNCACHEABLE &&
                err && err->code == DBK_OK)
                *err = e1;
        }
        return;
    }
    dbk_value *in = calloc(n, sizeof *in);
    void **outs = calloc(n, sizeof *outs);
    if (!in || !outs) {
        dbk__err(err, DBK_ENOMEM, "out of memory loading %zu rows", n);
        for (size_t k = 0; k < n; k++)
            rcs[k] = DBK_ENOMEM;
        free(in);
        free(outs);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        size_t i = ml->id_of[which[k]];
        in[k] = ml->qv[i];
        outs[k] = ml->outs[i];
    }
    (void)dbk_repo_find_by_ids(ml->db, e, n, in, outs, rcs, ml->arena, err);
    for (size_t k = 0; k < n; k++) {
        if (rcs[k] != DBK_OK)
            continue;
        dbk_error eerr;
        rcs[k] = encode_struct(ml->r, outs[k], &vals[k], &vallens[k], &eerr);
        if (rcs[k] == DBK_EINVALID) {
            dbk__log(DBK_LOG_DEBUG, "cached repository %s: row not cached: %s", e->table,
                     eerr.message);
            rcs[k] = RC_UNCACHEABLE;
        } else if (rcs[k] != DBK_OK && err && err->code == DBK_OK) {
            *err = eerr;
        }
    }
    free(in);
    free(outs);
}

/* A missed id's key, for finding the ids that repeat one. */
struct key_at {
    const void *key;
    size_t len;
    size_t at; /* the id index */
};

static int cmp_key_at(const void *a, const void *b)
{
    const struct key_at *x = a, *y = b;
    if (x->len != y->len)
        return (x->len > y->len) - (x->len < y->len);
    int c = memcmp(x->key, y->key, x->len);
    if (c)
        return c;
    return (x->at > y->at) - (x->at < y->at);
}

/* The ids of a find_by_ids the cache did not answer (rcs[i] ==
 * RC_PEEKED_MISS, qv[i] the value sent, keys[mi[i]] the key): each
 * distinct key is led (one load for all) or joined through the cache's
 * flights, and every id gets its outcome. False when out of memory
 * (nothing changed). */
static bool load_missed(dbk_cached_repo *r, dbk_db *db, size_t n, const dbk_value *qv,
                        const void *const *keys, const size_t *klens, const size_t *mi,
                        void *const *outs, dbk_rc *rcs, dbk_arena *arena, dbk_error *lerr)
{
    size_t nm = 0;
    for (size_t i = 0; i < n; i++)
        nm += rcs[i] == RC_PEEKED_MISS;
    if (nm == 0)
        return true;
    struct key_at *miss = malloc(nm * sizeof *miss);
    size_t *id_of = malloc(nm * sizeof *id_of);
    const void **dkeys = malloc(nm * sizeof *dkeys);
    size_t *dklens = malloc(nm * sizeof *dklens);
    void **vals = malloc(nm * sizeof *vals);
    size_t *vlens = malloc(nm * sizeof *vlens);
    dbk_rc *drcs = malloc(nm * sizeof *drcs);
    bool *led = malloc(nm * sizeof *led);
    size_t *first = malloc(n * sizeof *first); /* [id index] -> its distinct key */
    bool ok = miss && id_of && dkeys && dklens && vals && vlens && drcs && led && first;
    size_t nd = 0;
    if (ok) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (rcs[i] == RC_PEEKED_MISS)
                miss[k++] = (struct key_at){keys[mi[i]], klens[mi[i]], i};
        qsort(miss, nm, sizeof *miss, cmp_key_at); /* equal keys: the first index first */
        for (k = 0; k < nm; k++) {
            size_t i = miss[k].at;
            if (k == 0 || miss[k].len != miss[k - 1].len ||
                memcmp(miss[k].key, miss[k - 1].key, miss[k].len) != 0) {
                id_of[nd] = i;
                dkeys[nd] = miss[k].key;
                dklens[nd] = miss[k].len;
                nd++;
            }
            first[i] = nd - 1;
        }
        struct many_load ml = {r, db, arena, id_of, qv, outs};
        dbk__cache_load_peeked_many(r->cache, nd, dkeys, dklens, find_load_many, &ml, r->ttl_ms,
                                    vals, vlens, drcs, led, lerr);
        for (size_t d = 0; d < nd; d++) {
            size_t i = id_of[d];
            dbk_rc rc = drcs[d];
            if (led[d]) {
                /* our own load: outs[i] holds the row (also when it was too
                 * large to cache) */
                rcs[i] = rc == RC_UNCACHEABLE ? DBK_OK : rc;
                continue;
            }
            if (rc == DBK_OK) {
                rc = decode_struct(r, vals[d], vlens[d], outs[i], arena, NULL);
                if (rc != DBK_OK) { /* written for another layout: read the database */
                    dbk_cache_delete(r->cache, dkeys[d], dklens[d], NULL);
                    rc = RC_READ_DB;
                }
            }
            free(vals[d]);
            /* joined a load that was too slow, or whose row was too large to
             * cache: read it ourselves, as a follower alone would; an error
             * of the load we joined stays ours, as alone */
            rcs[i] = rc == RC_UNCACHEABLE || rc == DBK_ENOT_RUN ? RC_READ_DB : rc;
        }
        /* a repeated id: the outcome of its first */
        for (size_t i = 0; i < n; i++) {
            if (rcs[i] != RC_PEEKED_MISS)
                continue;
            size_t f = id_of[first[i]];
            if (rcs[f] == DBK_OK)
                memcpy(outs[i], outs[f], r->e->struct_size);
            rcs[i] = rcs[f];
        }
    }
    free(miss);
    free(id_of);
    free(dkeys);
    free(dklens);
    free(vals);
    free(vlens);
    free(drcs);
    free(led);
    free(first);
    return ok;
}

dbk_rc dbk_cached_repo_find_by_ids(dbk_cached_repo *r, dbk_db *db, size_t n,
                                   const dbk_value *ids, void *const *outs, dbk_rc *rcs,
                                   dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !arena || (n && (!ids || !outs || !rcs)))
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_find_by_ids: NULL argument");
    if (n > DBK_CACHE_MAX_MANY)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_cached_repo_find_by_ids: %zu ids, at most %d in one call", n,
                        DBK_CACHE_MAX_MANY);
    for (size_t i = 0; i < n; i++)
        if (!outs[i])
            return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_find_by_ids: outs[%zu] is NULL",
                            i);
    if (n == 0)
        return DBK_OK;

    /* The keys of the ids the cache can hold (the others, and every id in
     * a transaction, go the single way below). */
    bool tx = dbk_db_in_transaction(db);
    size_t *which = malloc(n * sizeof *which); /* the id of the m-th key */
    const void **keys = malloc(n * sizeof *keys);
    size_t *klens = malloc(n * sizeof *klens);
    void **vals = malloc(n * sizeof *vals);
    size_t *vlens = malloc(n * sizeof *vlens);
    int *states = malloc(n * sizeof *states);
    size_t *mi = malloc(n * sizeof *mi);      /* the key of id i (when it has one) */
    dbk_value *qvs = malloc(n * sizeof *qvs); /* the value sent for id i (lookup_key) */
    char *kbuf = NULL;
    size_t m = 0, kused = 0, kcap = 0;
    dbk_rc rc = DBK_OK;
    if (!which || !keys || !klens || !vals || !vlens || !states || !mi || !qvs)
        rc = dbk__err(err, DBK_ENOMEM, "out of memory looking up %zu ids", n);
    for (size_t i = 0; i < n; i++)
        rcs[i] = DBK_ENOT_RUN;
    for (size_t i = 0; rc == DBK_OK && !tx && i < n; i++) {
        char key[KEYMAX];
        size_t klen = 0;
        if (!lookup_key(r, db, r->pk, ids[i], &qvs[i], key, &klen))
            continue;
        if (kused + klen > kcap) {
            size_t cap = kcap ? kcap * 2 : 64 * n;
            while (cap < kused + klen)
                cap *= 2;
            char *nb = realloc(kbuf, cap);
            if (!nb) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory looking up %zu ids", n);
                break;
            }
            kbuf = nb;
            kcap = cap;
        }
        memcpy(kbuf + kused, key, klen);
        mi[i] = m;
        which[m] = i;
        klens[m] = klen;
        keys[m++] = (const void *)(uintptr_t)kused; /* an offset until kbuf stops moving */
        kused += klen;
    }
    if (rc == DBK_OK && m > 0) {
        for (size_t j = 0; j < m; j++)
            keys[j] = kbuf + (uintptr_t)keys[j];
        dbk__cache_peek_many(r->cache, m, keys, klens, vals, vlens, states);
        uint64_t hits = 0;
        for (size_t j = 0; j < m; j++) {
            size_t i = which[j];
            if (states[j] == CACHE_PEEK_NOT_FOUND) {
                rcs[i] = DBK_ENOT_FOUND;
                hits++;
            } else if (states[j] == CACHE_PEEK_VALUE) {
                if (decode_struct(r, vals[j], vlens[j], outs[i], arena, NULL) == DBK_OK) {
                    rcs[i] = DBK_OK;
                    hits++;
                } else { /* written for another layout (or corrupt): dropped, read below */
                    dbk_cache_delete(r->cache, keys[j], klens[j], NULL);
                }
                free(vals[j]);
            } else {
                rcs[i] = RC_PEEKED_MISS; /* loaded below without a second read */
            }
        }
        dbk__cache_count_hits(r->cache, hits);
    }
    /* The misses: one load for all that this caller leads, through the
     * cache's flights (one statement for an integer primary key). */
    dbk_rc first = DBK_OK;
    if (rc == DBK_OK && m > 0) {
        dbk_error lerr;
        dbk_error_clear(&lerr);
        if (load_missed(r, db, n, qvs, keys, klens, mi, outs, rcs, arena, &lerr)) {
            for (size_t i = 0; i < n && first == DBK_OK; i++) {
                if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && rcs[i] != DBK_ENOT_RUN &&
                    rcs[i] != RC_PEEKED_MISS && rcs[i] != RC_READ_DB) {
                    first = rcs[i];
                    if (err)
                        *err = lerr;
                }
            }
        }
    }
    /* Everything else the cache did not answer (and, out of memory, the
     * misses): one lookup each, as alone. */
    for (size_t i = 0; rc == DBK_OK && i < n; i++) {
        if (rcs[i] == RC_READ_DB) {
            dbk_error e;
            rcs[i] = find_db(db, r, r->pk, ids[i], outs[i], arena, &e);
            if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && first == DBK_OK) {
                first = rcs[i];
                if (err)
                    *err = e;
            }
            continue;
        }
        if (!tx && rcs[i] != DBK_ENOT_RUN && rcs[i] != RC_PEEKED_MISS)
            continue;
        dbk_error e;
        rcs[i] = tx ? find_db(db, r, r->pk, ids[i], outs[i], arena, &e)
                    : cached_find(r, db, r->pk, ids[i], outs[i], arena, &e);
        if (rcs[i] != DBK_OK && rcs[i] != DBK_ENOT_FOUND && first == DBK_OK) {
            first = rcs[i];
            if (err)
                *err = e;
        }
    }
    if (rc != DBK_OK)
        for (size_t i = 0; i < n; i++)
            rcs[i] = rc;
    free(which);
    free(keys);
    free(klens);
    free(vals);
    free(vlens);
    free(states);
    free(mi);
    free(qvs);
    free(kbuf);
    return rc != DBK_OK ? rc : first;
}

dbk_rc dbk_cached_repo_find_by(dbk_cached_repo *r, dbk_db *db, const char *column, dbk_value value,
                               void *out, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !column || !out || !arena)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_find_by: NULL argument");
    int idx = dbk_entity_field_index(r->e, column);
    if (idx < 0 || !(r->e->fields[idx].flags & (DBK_F_UNIQUE | DBK_F_PK)))
        return dbk__err(err, DBK_EINVALID_COLUMN,
                        "column \"%s\" is not the primary key or a unique field of %s", column,
                        r->e->table);
    return cached_find(r, db, idx, value, out, arena, err);
}

/* ---- writes ---- */

static bool has_unique(const dbk_cached_repo *r)
{
    for (size_t i = 0; i < r->e->nfields; i++)
        if ((r->e->fields[i].flags & DBK_F_UNIQUE) && !(r->e->fields[i].flags & DBK_F_PK))
            return true;
    return false;
}

/* Registers the invalidation of every key `row` can be cached under: its
 * stored values, keyed exactly as lookup_key() keys a canonical lookup. */
static dbk_rc invalidate_row(dbk_cached_repo *r, dbk_db *db, const void *row, dbk_error *err)
{
    for (size_t i = 0; i < r->e->nfields; i++) {
        const dbk_field *f = &r->e->fields[i];
        if (!(f->flags & (DBK_F_PK | DBK_F_UNIQUE)))
            continue;
        char key[KEYMAX];
        size_t klen = 0;
        if (!row_key(r, f, row, key, &klen))
            continue; /* no lookup is ever cached under such a value */
        dbk_rc rc = dbk_cache_invalidate_on_commit(r->cache, db, key, klen, err);
        if (rc != DBK_OK)
            return rc;
    }
    return DBK_OK;
}

/* The id's key when the id has a canonical one (an int64, or a decimal
 * text on an integer key); false otherwise. No database question: a text
 * key's mode does not matter for invalidation, an extra key costs nothing. */
static bool id_key(const dbk_cached_repo *r, dbk_value id, char *key, size_t *klen)
{
    const dbk_field *f = &r->e->fields[r->pk];
    int64_t x;
    if (f->type == DBK_TYPE_INT64 && id.type == DBK_TYPE_INT64)
        return int_key(r, f->column, id.u.i, key, klen);
    if (f->type == DBK_TYPE_INT64 && id.type == DBK_TYPE_TEXT &&
        parse_int_text(id.u.bytes.ptr, id.u.bytes.len, &x))
        return int_key(r, f->column, x, key, klen);
    if (f->type == DBK_TYPE_TEXT && id.type == DBK_TYPE_TEXT)
        return build_key(r, f->column, id.u.bytes.ptr, id.u.bytes.len, key, klen);
    return false;
}

/* Invalidates the id's key when it has one. When it has none, the caller
 * invalidates the rows the write returned or read (which carry the stored
 * primary key) instead. */
static dbk_rc invalidate_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, dbk_error *err)
{
    char key[KEYMAX];
    size_t klen = 0;
    if (!id_key(r, id, key, &klen))
        return DBK_OK;
    return dbk_cache_invalidate_on_commit(r->cache, db, key, klen, err);
}

static dbk_rc bump_lists(dbk_cached_repo *r, dbk_db *db, dbk_error *err)
{
    return dbk_cache_ns_bump_on_commit(r->cache, db, r->list_ns, err);
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

dbk_rc dbk_cached_repo_create(dbk_cached_repo *r, dbk_db *db, const void *in, void *out,
                              dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_create: NULL argument");
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
    char key[KEYMAX];
    size_t klen;
    /* unique columns may move their keys; an id without a canonical key
     * needs the stored primary key of the row it names */
    if (!has_unique(r) && id_key(r, id, key, &klen))
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

dbk_rc dbk_cached_repo_update(dbk_cached_repo *r, dbk_db *db, dbk_value id, const void *in,
                              const char *const *fields, size_t nfields, void *out,
                              dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_update: NULL argument");
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

dbk_rc dbk_cached_repo_delete(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                              dbk_arena *arena, dbk_error *err)
{
    if (!r || !db)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_delete: NULL argument");
    struct scratch s = {0};
    dbk_rc rc = DBK_OK;
    /* always RETURNING: the deleted row carries every key it was cached
     * under, whatever spelling of the id the caller used */
    if (!out || !arena) {
        rc = scratch_init(&s, r, 1, err);
        out = s.row;
        arena = s.arena;
    }
    if (rc == DBK_OK)
        rc = dbk_repo_delete(db, r->e, id, out, arena, err);
    if (rc == DBK_OK)
        rc = invalidate_id(r, db, id, err);
    if (rc == DBK_OK)
        rc = invalidate_row(r, db, out, err); /* RETURNING gave the deleted row */
    if (rc == DBK_OK)
        rc = bump_lists(r, db, err);
    scratch_free(&s);
    return rc;
}

dbk_rc dbk_cached_repo_upsert(dbk_cached_repo *r, dbk_db *db, const char *const *conflict,
                              size_t nconflict, const char *const *update_fields, size_t nupdate,
                              const void *in, void *out, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || !in)
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_upsert: NULL argument");
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

dbk_rc dbk_cached_repo_create_many(dbk_cached_repo *r, dbk_db *db, const void *rows, size_t n,
                                   void *out_rows, dbk_arena *arena, dbk_error *err)
{
    if (!r || !db || (!rows && n))
        return dbk__err(err, DBK_EMISUSE, "dbk_cached_repo_create_many: NULL argument");
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

/* The names deprecated in 0.2 (removed in 0.3), wrappers so they stay in
 * the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_cached_find_by_id(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                             dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_find_by_id(r, db, id, out, arena, err);
}

dbk_rc dbk_cached_find_by(dbk_cached_repo *r, dbk_db *db, const char *column, dbk_value value,
                          void *out, dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_find_by(r, db, column, value, out, arena, err);
}

dbk_rc dbk_cached_create(dbk_cached_repo *r, dbk_db *db, const void *in, void *out,
                         dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_create(r, db, in, out, arena, err);
}

dbk_rc dbk_cached_update(dbk_cached_repo *r, dbk_db *db, dbk_value id, const void *in,
                         const char *const *fields, size_t nfields, void *out, dbk_arena *arena,
                         dbk_error *err)
{
    return dbk_cached_repo_update(r, db, id, in, fields, nfields, out, arena, err);
}

dbk_rc dbk_cached_upsert(dbk_cached_repo *r, dbk_db *db, const char *const *conflict,
                         size_t nconflict, const char *const *update_fields, size_t nupdate,
                         const void *in, void *out, dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_upsert(r, db, conflict, nconflict, update_fields, nupdate, in, out,
                                  arena, err);
}

dbk_rc dbk_cached_delete(dbk_cached_repo *r, dbk_db *db, dbk_value id, void *out,
                         dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_delete(r, db, id, out, arena, err);
}

dbk_rc dbk_cached_create_many(dbk_cached_repo *r, dbk_db *db, const void *rows, size_t n,
                              void *out_rows, dbk_arena *arena, dbk_error *err)
{
    return dbk_cached_repo_create_many(r, db, rows, n, out_rows, arena, err);
}

dbk_rc dbk_cached_list_version(dbk_cached_repo *r, uint64_t *version, dbk_error *err)
{
    return dbk_cached_repo_list_version(r, version, err);
}
#pragma GCC diagnostic pop
