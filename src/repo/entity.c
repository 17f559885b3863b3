/*
 * Entity descriptors: validation, the per-entity SQL cache, and mapping
 * between C structs and rows.
 *
 * A descriptor is plain static data written by the user with DBK_FIELD
 * lines. On first use it is checked once (one primary key, member sizes
 * that match the declared types, relations that point at real columns)
 * and given a private part holding facts derived from it and a cache of
 * generated SQL. The descriptor itself is never written, so users declare
 * it `static const`: the private part lives in a registry keyed by the
 * descriptor's address, read without a lock on every call (see below).
 * The SQL cache is a singly linked list, also read without a lock: entries
 * are immutable once published and are only freed by dbk_entity_release().
 * The list is short (one entry per operation and mask actually used) and
 * the lookup is a few pointer hops, far below a statement's round trip.
 *
 * Mapping reads each result cell with the typed getters of result.h and
 * copies strings and blobs into the caller's arena, so structs never point
 * into a dbk_result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/internal.h"
#include "../driver/dialect.h"
#include "repo_int.h"

static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- SQL pieces (the builder itself is core/sb.c) ---- */

void dbk__sb_ident(dbk__sb *sb, dbk_engine engine, const char *id)
{
    dbk__dialect_of(engine)->quote_ident(sb, id);
}

void dbk__sb_param(dbk__sb *sb, const dbk_entity *e, int field, int n, dbk_engine engine)
{
    dbk__dialect_of(engine)->placeholder(sb, n, field >= 0 ? e->fields[field].pg_cast : NULL);
}

void dbk__sb_columns(dbk__sb *sb, dbk_engine engine, const dbk_entity *e, uint64_t mask)
{
    bool first = true;
    for (size_t i = 0; i < e->nfields; i++) {
        if (!(mask & (UINT64_C(1) << i)))
            continue;
        if (!first)
            dbk__sb_puts(sb, ", ");
        dbk__sb_ident(sb, engine, e->fields[i].column);
        first = false;
    }
}

/* ---- validation ---- */

static size_t type_size(dbk_type t)
{
    switch (t) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP:
        return sizeof(int64_t);
    case DBK_TYPE_DOUBLE:
        return sizeof(double);
    case DBK_TYPE_BOOL:
        return sizeof(bool);
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON:
        return sizeof(const char *);
    case DBK_TYPE_BLOB:
        return sizeof(dbk_bytes);
    default:
        return 0;
    }
}

int dbk__field(const dbk_entity *e, const char *name)
{
    if (!e || !name)
        return -1;
    for (size_t i = 0; i < e->nfields; i++)
        if (strcmp(e->fields[i].column, name) == 0)
            return (int)i;
    return -1;
}

int dbk_entity_field_index(const dbk_entity *e, const char *column)
{
    return dbk__field(e, column);
}

static int find_pk(const dbk_entity *e)
{
    for (size_t i = 0; i < e->nfields; i++)
        if (e->fields[i].flags & DBK_F_PK)
            return (int)i;
    return -1;
}

static bool is_key_type(dbk_type t)
{
    return t == DBK_TYPE_INT64 || t == DBK_TYPE_TEXT;
}

static dbk_rc validate(const dbk_entity *e, dbk_error *err)
{
    const char *t = e->table ? e->table : "(null)";
    if (!e->table || !*e->table)
        return dbk__err(err, DBK_EMISUSE, "entity has no table name");
    if (!e->fields || e->nfields == 0 || e->nfields > DBK_REPO_MAX_FIELDS)
        return dbk__err(err, DBK_EMISUSE, "entity %s: needs 1..%d fields", t,
                        DBK_REPO_MAX_FIELDS);
    int npk = 0;
    for (size_t i = 0; i < e->nfields; i++) {
        const dbk_field *f = &e->fields[i];
        if (!f->column || !*f->column)
            return dbk__err(err, DBK_EMISUSE, "entity %s: field %zu has no column name", t, i);
        size_t ts = type_size(f->type);
        if (ts == 0)
            return dbk__err(err, DBK_EMISUSE, "entity %s: field %s has an unsupported type", t,
                            f->column);
        if (f->size != ts)
            return dbk__err(err, DBK_EMISUSE,
                            "entity %s: field %s is %zu bytes, type %s needs %zu", t, f->column,
                            f->size, dbk_type_name(f->type), ts);
        if (f->offset + f->size > e->struct_size)
            return dbk__err(err, DBK_EMISUSE, "entity %s: field %s lies outside the struct", t,
                            f->column);
        if (f->null_offset >= 0 && (size_t)f->null_offset + sizeof(bool) > e->struct_size)
            return dbk__err(err, DBK_EMISUSE, "entity %s: null flag of %s outside the struct", t,
                            f->column);
        if ((f->flags & (DBK_F_CREATED_AT | DBK_F_UPDATED_AT)) && f->type != DBK_TYPE_TIMESTAMP)
            return dbk__err(err, DBK_EMISUSE, "entity %s: %s must be a timestamp", t, f->column);
        if (f->flags & DBK_F_PK) {
            npk++;
            if (!is_key_type(f->type))
                return dbk__err(err, DBK_EMISUSE,
                                "entity %s: primary key %s must be int64 or text", t, f->column);
            if (f->flags & DBK_F_HIDDEN)
                return dbk__err(err, DBK_EMISUSE, "entity %s: primary key cannot be hidden", t);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(e->fields[j].column, f->column) == 0)
                return dbk__err(err, DBK_EMISUSE, "entity %s: column %s appears twice", t,
                                f->column);
    }
    if (npk != 1)
        return dbk__err(err, DBK_EMISUSE, "entity %s: needs exactly one DBK_F_PK field, has %d",
                        t, npk);
    for (size_t i = 0; i < e->nuniques; i++) {
        const dbk_unique *u = &e->uniques[i];
        if (!u->columns || u->ncolumns == 0)
            return dbk__err(err, DBK_EMISUSE, "entity %s: unique constraint %zu is empty", t, i);
        for (size_t j = 0; j < u->ncolumns; j++)
            if (dbk__field(e, u->columns[j]) < 0)
                return dbk__err(err, DBK_EMISUSE,
                                "entity %s: unique constraint names unknown column %s", t,
                                u->columns[j] ? u->columns[j] : "(null)");
    }
    for (size_t i = 0; i < e->nrelations; i++) {
        const dbk_relation *r = &e->relations[i];
        if (!r->name || !r->target || !r->foreign_key)
            return dbk__err(err, DBK_EMISUSE, "entity %s: relation %zu is incomplete", t, i);
        const dbk_entity *holder = r->kind == DBK_REL_BELONGS_TO ? e : r->target;
        const dbk_entity *keyed = r->kind == DBK_REL_BELONGS_TO ? r->target : e;
        if (r->kind < DBK_REL_BELONGS_TO || r->kind > DBK_REL_HAS_MANY)
            return dbk__err(err, DBK_EMISUSE, "entity %s: relation %s has a bad kind", t,
                            r->name);
        int fk = dbk__field(holder, r->foreign_key);
        if (fk < 0)
            return dbk__err(err, DBK_EMISUSE, "entity %s: relation %s: %s has no column %s", t,
                            r->name, holder->table ? holder->table : "?", r->foreign_key);
        int pk = find_pk(keyed);
        if (pk < 0 || keyed->fields[pk].type != holder->fields[fk].type)
            return dbk__err(err, DBK_EMISUSE,
                            "entity %s: relation %s: foreign key type differs from the key", t,
                            r->name);
        if (r->ptr_offset + sizeof(void *) > e->struct_size ||
            (r->kind == DBK_REL_HAS_MANY &&
             (r->count_offset < 0 || (size_t)r->count_offset + sizeof(size_t) > e->struct_size)))
            return dbk__err(err, DBK_EMISUSE, "entity %s: relation %s members lie outside", t,
                            r->name);
    }
    return DBK_OK;
}

/* ---- the registry: descriptor address -> private state ----
 *
 * Open addressing with linear probing over (key, value) pairs that are
 * read with atomic loads and no lock. Writers hold init_mu. A key, once
 * placed in a table, never moves and no slot ever becomes empty again, so
 * probe runs stay unbroken; a released entity keeps its slot with a NULL
 * value (found again when re-initialized) until a new key takes it. When
 * more than half the slots hold keys, a new table (four slots per live
 * entry, at least 64) is filled with the live entries and published;
 * the old one is retired, not freed, since a reader may still be probing
 * it (there is no reader tracking: it would put shared writes on the hot
 * path). Retired tables stay on a list until the process exits. For a
 * program with a fixed set of descriptors, growth doubles, so they add
 * less than the current table's memory. A released slot is reused by the
 * next new descriptor whose probe run crosses it, and a rebuild drops
 * released slots, so creating and releasing descriptors at ever new
 * addresses retires a 64-slot table every few dozen of them at worst. A
 * reader probing a retired table sees the state at retirement: it misses
 * only entities initialized since, and finds those under the lock in
 * dbk_entity_init(). */
struct reg_slot {
    const dbk_entity *key;        /* NULL: empty (end of a probe run) */
    struct dbk__entity_priv *val; /* NULL: not initialized, or released */
};

struct reg_table {
    size_t cap;              /* a power of two */
    size_t used;             /* slots with a key (written under init_mu) */
    struct reg_table *older; /* retired tables, newest first */
    struct reg_slot slots[];
};

#define REG_MIN_CAP 64

static struct reg_table *reg_cur; /* atomic; NULL before the first init */

static inline size_t reg_hash(const dbk_entity *e, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)e;
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

/* The slot of `e` in `t`, or the empty slot where it would go; NULL when
 * the table is full (never, as it grows at half). */
static struct reg_slot *reg_probe(struct reg_table *t, const dbk_entity *e)
{
    size_t mask = t->cap - 1;
    size_t i = reg_hash(e, t->cap);
    for (size_t n = 0; n < t->cap; n++, i = (i + 1) & mask) {
        const dbk_entity *k = __atomic_load_n(&t->slots[i].key, __ATOMIC_ACQUIRE);
        if (k == e || !k)
            return &t->slots[i];
    }
    return NULL;
}

/* The hot path of every call: its own loop rather than reg_probe(), so it
 * stays a handful of instructions (a hash, usually one slot). */
struct dbk__entity_priv *dbk__priv(const dbk_entity *e)
{
    struct reg_table *t = __atomic_load_n(&reg_cur, __ATOMIC_ACQUIRE);
    if (!t)
        return NULL;
    size_t mask = t->cap - 1;
    size_t i = reg_hash(e, t->cap);
    for (size_t n = 0; n < t->cap; n++, i = (i + 1) & mask) {
        const dbk_entity *k = __atomic_load_n(&t->slots[i].key, __ATOMIC_ACQUIRE);
        if (k == e)
            return __atomic_load_n(&t->slots[i].val, __ATOMIC_ACQUIRE);
        if (!k)
            return NULL;
    }
    return NULL;
}

/* Under init_mu: a table with room for one more key; NULL when out of
 * memory. Grows (and publishes) when needed. */
static struct reg_table *reg_room(void)
{
    struct reg_table *t = reg_cur;
    if (t && (t->used + 1) * 2 <= t->cap)
        return t;
    size_t cap = REG_MIN_CAP;
    size_t live = 0;
    if (t) {
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i].key && t->slots[i].val)
                live++;
        while ((live + 1) * 2 > cap / 2 && cap < SIZE_MAX / 4)
            cap *= 2;
    }
    struct reg_table *n = calloc(1, sizeof *n + cap * sizeof n->slots[0]);
    if (!n)
        return NULL;
    n->cap = cap;
    if (t) {
        for (size_t i = 0; i < t->cap; i++) {
            const dbk_entity *k = t->slots[i].key;
            struct dbk__entity_priv *v = t->slots[i].val;
            if (!k || !v)
                continue; /* released entities are left behind */
            struct reg_slot *sl = reg_probe(n, k);
            sl->key = k;
            sl->val = v;
            n->used++;
        }
        n->older = t;
    }
    __atomic_store_n(&reg_cur, n, __ATOMIC_RELEASE);
    return n;
}

/* Under init_mu: the slot `e` is to occupy: its own, else the first
 * released slot on its probe run (reusing it keeps the run unbroken for
 * every other key, so readers are unaffected), else an empty one, growing
 * the table first when it is half full. NULL when out of memory. */
static struct reg_slot *reg_claim(const dbk_entity *e)
{
    struct reg_table *t = reg_cur;
    if (t) {
        struct reg_slot *released = NULL;
        size_t mask = t->cap - 1;
        size_t i = reg_hash(e, t->cap);
        for (size_t n = 0; n < t->cap; n++, i = (i + 1) & mask) {
            struct reg_slot *sl = &t->slots[i];
            if (sl->key == e)
                return sl;
            if (!sl->key)
                break;
            if (!sl->val && !released)
                released = sl;
        }
        if (released)
            return released;
    }
    t = reg_room();
    return t ? reg_probe(t, e) : NULL;
}

dbk_rc dbk_entity_init(const dbk_entity *e, dbk_error *err)
{
    if (!e)
        return dbk__err(err, DBK_EMISUSE, "dbk_entity_init: entity must not be NULL");
    if (dbk__priv(e))
        return DBK_OK;
    pthread_mutex_lock(&init_mu);
    dbk_rc rc = DBK_OK;
    struct reg_slot *sl = reg_cur ? reg_probe(reg_cur, e) : NULL;
    if (sl && sl->key == e && sl->val)
        goto out_unlock;
    rc = validate(e, err);
    if (rc)
        goto out_unlock;
    struct dbk__entity_priv *p = calloc(1, sizeof *p);
    if (!p) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory preparing entity %s", e->table);
        goto out_unlock;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        rc = dbk__err(err, DBK_ENOMEM, "cannot create the mutex of entity %s", e->table);
        goto out_unlock;
    }
    p->pk = find_pk(e);
    for (size_t i = 0; i < e->nfields; i++) {
        p->all_mask |= UINT64_C(1) << i;
        if (!(e->fields[i].flags & DBK_F_HIDDEN))
            p->default_mask |= UINT64_C(1) << i;
    }
    sl = reg_claim(e);
    if (!sl) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        rc = dbk__err(err, DBK_ENOMEM, "out of memory registering entity %s", e->table);
        goto out_unlock;
    }
    /* The key first, then the value: a reader that finds the key sees
     * either NULL (and comes here, to wait on the lock) or the complete
     * state; a reader of the released entity whose slot is reused sees
     * another key and never that entity's state. */
    if (sl->key != e) {
        if (!sl->key)
            reg_cur->used++;
        __atomic_store_n(&sl->key, e, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&sl->val, p, __ATOMIC_RELEASE);
out_unlock:
    pthread_mutex_unlock(&init_mu);
    return rc;
}

dbk_rc dbk__entity_ready(const dbk_entity *e, dbk_error *err)
{
    if (dbk__priv(e))
        return DBK_OK;
    return dbk_entity_init(e, err);
}

void dbk__sql_free(struct dbk__sql *s)
{
    if (!s)
        return;
    free(s->sql);
    free(s->cols);
    free(s->pfields);
    free(s);
}

void dbk_entity_release(const dbk_entity *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&init_mu);
    struct dbk__entity_priv *p = NULL;
    struct reg_slot *sl = reg_cur ? reg_probe(reg_cur, e) : NULL;
    if (sl && sl->key == e) {
        p = sl->val;
        __atomic_store_n(&sl->val, NULL, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&init_mu);
    if (!p)
        return;
    struct dbk__sql *s = p->cache;
    while (s) {
        struct dbk__sql *n = s->next;
        dbk__sql_free(s);
        s = n;
    }
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- SQL cache ---- */

/* Readers walk the list without the lock: entries are complete before
 * they are published at the head (release store) and are freed only by
 * dbk_entity_release(). Writers serialize on the entity's mutex. */
const struct dbk__sql *dbk__sql_get(const dbk_entity *e, int op, int engine, uint64_t a,
                                    uint64_t b)
{
    struct dbk__entity_priv *p = dbk__priv(e);
    for (const struct dbk__sql *s = __atomic_load_n(&p->cache, __ATOMIC_ACQUIRE); s; s = s->next)
        if (s->op == op && s->engine == engine && s->a == a && s->b == b)
            return s;
    return NULL;
}

const struct dbk__sql *dbk__sql_put(const dbk_entity *e, struct dbk__sql *s)
{
    struct dbk__entity_priv *p = dbk__priv(e);
    const struct dbk__sql *found = NULL;
    pthread_mutex_lock(&p->mu);
    for (const struct dbk__sql *c = p->cache; c; c = c->next)
        if (c->op == s->op && c->engine == s->engine && c->a == s->a && c->b == s->b) {
            found = c;
            break;
        }
    if (!found) {
        s->next = p->cache;
        __atomic_store_n(&p->cache, s, __ATOMIC_RELEASE);
        found = s;
        s = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    dbk__sql_free(s);
    return found;
}

dbk_rc dbk__sql_set_cols(struct dbk__sql *s, const dbk_entity *e, uint64_t mask)
{
    s->ncols = 0;
    s->cols = malloc(sizeof(int) * (e->nfields ? e->nfields : 1));
    if (!s->cols)
        return DBK_ENOMEM;
    for (size_t i = 0; i < e->nfields; i++)
        if (mask & (UINT64_C(1) << i))
            s->cols[s->ncols++] = (int)i;
    return DBK_OK;
}

/* ---- mapping ---- */

int64_t dbk__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

dbk_value dbk__field_value(const dbk_entity *e, int fi, const void *in)
{
    const dbk_field *f = &e->fields[fi];
    const unsigned char *base = in;
    const void *m = base + f->offset;
    if (f->null_offset >= 0) {
        bool isnull;
        memcpy(&isnull, base + f->null_offset, sizeof isnull);
        if (isnull)
            return dbk_null();
    }
    switch (f->type) {
    case DBK_TYPE_INT64: {
        int64_t v;
        memcpy(&v, m, sizeof v);
        return dbk_int64(v);
    }
    case DBK_TYPE_TIMESTAMP: {
        int64_t v;
        memcpy(&v, m, sizeof v);
        return dbk_timestamp(v);
    }
    case DBK_TYPE_DOUBLE: {
        double v;
        memcpy(&v, m, sizeof v);
        return dbk_double(v);
    }
    case DBK_TYPE_BOOL: {
        bool v;
        memcpy(&v, m, sizeof v);
        return dbk_bool(v);
    }
    case DBK_TYPE_TEXT: {
        const char *s;
        memcpy(&s, m, sizeof s);
        return dbk_text(s);
    }
    case DBK_TYPE_JSON: {
        const char *s;
        memcpy(&s, m, sizeof s);
        return dbk_json(s);
    }
    case DBK_TYPE_BLOB: {
        dbk_bytes b;
        memcpy(&b, m, sizeof b);
        return b.ptr ? dbk_blob(b.ptr, b.len) : dbk_null();
    }
    default:
        return dbk_null();
    }
}

dbk_rc dbk__map_row(const dbk_entity *e, const dbk_result *r, size_t row, const int *cols,
                    int ncols, void *out, dbk_arena *arena, dbk_error *err)
{
    unsigned char *base = out;
    for (int c = 0; c < ncols; c++) {
        const dbk_field *f = &e->fields[cols[c]];
        unsigned char *m = base + f->offset;
        bool isnull = dbk_result_is_null(r, row, c);
        if (f->null_offset >= 0)
            memcpy(base + f->null_offset, &isnull, sizeof isnull);
        dbk_rc rc = DBK_OK;
        switch (f->type) {
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP: {
            int64_t v = 0;
            if (!isnull)
                rc = f->type == DBK_TYPE_INT64 ? dbk_result_get_int64(r, row, c, &v, err)
                                               : dbk_result_get_timestamp(r, row, c, &v, err);
            memcpy(m, &v, sizeof v);
            break;
        }
        case DBK_TYPE_DOUBLE: {
            double v = 0;
            if (!isnull)
                rc = dbk_result_get_double(r, row, c, &v, err);
            memcpy(m, &v, sizeof v);
            break;
        }
        case DBK_TYPE_BOOL: {
            bool v = false;
            if (!isnull)
                rc = dbk_result_get_bool(r, row, c, &v, err);
            memcpy(m, &v, sizeof v);
            break;
        }
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON: {
            const char *s = NULL, *copy = NULL;
            size_t len = 0;
            if (!isnull) {
                rc = dbk_result_get_text(r, row, c, &s, &len, err);
                if (rc == DBK_OK && s) {
                    copy = dbk_arena_strndup(arena, s, len);
                    if (!copy)
                        rc = dbk__err(err, DBK_ENOMEM, "out of memory copying %s", f->column);
                }
            }
            memcpy(m, &copy, sizeof copy);
            break;
        }
        case DBK_TYPE_BLOB: {
            dbk_bytes b = {NULL, 0};
            if (!isnull) {
                const void *p = NULL;
                size_t len = 0;
                rc = dbk_result_get_blob(r, row, c, &p, &len, err);
                if (rc == DBK_OK) {
                    b.ptr = dbk_arena_memdup(arena, p ? p : "", len);
                    b.len = len;
                    if (!b.ptr)
                        rc = dbk__err(err, DBK_ENOMEM, "out of memory copying %s", f->column);
                }
            }
            memcpy(m, &b, sizeof b);
            break;
        }
        default:
            break;
        }
        if (rc != DBK_OK) {
            if (rc == DBK_ETYPE && err)
                dbk__err(err, DBK_ETYPE, "%s.%s: column type does not match the field type %s",
                         e->table, f->column, dbk_type_name(f->type));
            return rc;
        }
    }
    return DBK_OK;
}

dbk_rc dbk__repo_check(dbk_db *db, const dbk_entity *e, dbk_arena *arena, bool need_arena,
                       const char *fn, dbk_error *err)
{
    if (!db)
        return dbk__err(err, DBK_EMISUSE, "%s: db must not be NULL", fn);
    if (!e)
        return dbk__err(err, DBK_EMISUSE, "%s: entity must not be NULL", fn);
    if (need_arena && !arena)
        return dbk__err(err, DBK_EMISUSE, "%s: an arena is needed for the returned row", fn);
    return dbk__entity_ready(e, err);
}
