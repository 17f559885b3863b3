/*
 * dbkit/repo.h - repositories: C structs <-> tables, without hand-written SQL.
 *
 * Describe a struct once with an entity descriptor, then find, create,
 * update, delete, count, page, project and eager-load it on SQLite and
 * PostgreSQL through any dbk_db (a connection, a pool, a transaction):
 *
 *   struct user { int64_t id; const char *email; const char *name;
 *                 const char *password_hash; int64_t created_at, updated_at;
 *                 struct post *posts; size_t nposts; };
 *
 *   static const dbk_field user_fields[] = {
 *       DBK_FIELD(struct user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
 *       DBK_FIELD(struct user, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
 *       DBK_FIELD(struct user, name, "name", DBK_TYPE_TEXT, 0),
 *       DBK_FIELD(struct user, password_hash, "password_hash", DBK_TYPE_TEXT, DBK_F_HIDDEN),
 *       DBK_FIELD(struct user, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
 *       DBK_FIELD(struct user, updated_at, "updated_at", DBK_TYPE_TIMESTAMP, DBK_F_UPDATED_AT),
 *   };
 *   static const dbk_relation user_rels[] = {
 *       DBK_HAS_MANY(struct user, "posts", posts, nposts, &post_entity, "user_id"),
 *   };
 *   static const dbk_entity user_entity =
 *       DBK_ENTITY("users", struct user, user_fields, user_rels);
 *
 * Names. Filters, sort keys, field masks, projections and conflict targets
 * name fields by their COLUMN name. Every such name is looked up in the
 * descriptor; SQL identifiers only ever come from the descriptor and are
 * double-quoted. An unknown name is DBK_EINVALID_COLUMN (DBK_EINVALID_SORT
 * for sort keys); values always travel as parameters.
 *
 * C types per field type:
 *   DBK_TYPE_INT64      int64_t
 *   DBK_TYPE_DOUBLE     double
 *   DBK_TYPE_BOOL       bool
 *   DBK_TYPE_TEXT/JSON  const char *   (NUL-terminated; NULL pointer = SQL NULL)
 *   DBK_TYPE_BLOB       dbk_bytes      (ptr NULL = SQL NULL)
 *   DBK_TYPE_TIMESTAMP  int64_t microseconds since the epoch, UTC
 * NULLs: pointer types use a NULL pointer. A numeric field that may be NULL
 * is declared with DBK_FIELD_NULL(struct, member, null_member, ...) where
 * `null_member` is a bool in the same struct, true when the value is NULL
 * (read and written). A NULL read into a numeric field without one gives 0.
 *
 * Timestamps. CREATED_AT is set on create, UPDATED_AT on create, update and
 * upsert, both to the client's current time (CLOCK_REALTIME), sent as a
 * parameter so both engines store the same representation.
 *
 * Ownership. Structs passed in are only read during the call. Rows come
 * back in caller-owned structs; every string, blob, list and included
 * relation they point to lives in the caller's dbk_arena and stays valid
 * until dbk_arena_reset()/dbk_arena_free(). Nothing points into a result
 * or a connection. A returned row is written over the whole out struct:
 * fields that are not read (hidden, not projected) are zero/NULL, and with
 * out == in the input pointers are replaced. On error the out struct may
 * be partly written.
 *
 * SQL cache. An entity is validated and prepared on first use (or with
 * dbk_entity_init()); the SQL for each (operation, field mask, projection)
 * is generated once and reused. The library never writes to a descriptor:
 * the cache lives in an internal registry keyed by the descriptor's
 * address, looked up without a lock on every call, so descriptors are
 * declared `static const` and may be used from any number of threads at
 * once. A descriptor must outlive every call using it and keep its
 * address; dbk_entity_release() frees its cache (e.g. before exit, under
 * a leak checker).
 *
 * Thread safety: every function may be called from several threads at once
 * on the same entity, provided each thread uses its own dbk_db-compatible
 * executor rules (see db.h) and its own arena.
 */
#ifndef DBKIT_REPO_H
#define DBKIT_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "db.h"
#include "error.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A blob field: bytes owned by the arena (results) or the caller (inputs). */
typedef struct dbk_bytes {
    const void *ptr;
    size_t len;
} dbk_bytes;

/* Field flags. */
#define DBK_F_PK 0x01u         /* primary key (exactly one field; int64 or text/uuid) */
#define DBK_F_GENERATED 0x02u  /* filled by the database (serial, default): never inserted */
#define DBK_F_UNIQUE 0x04u     /* unique: find_by and upsert conflict target */
#define DBK_F_NULLABLE 0x08u   /* may be NULL (documentation; see NULLs above) */
#define DBK_F_CREATED_AT 0x10u /* timestamp set on create */
#define DBK_F_UPDATED_AT 0x20u /* timestamp set on create, update and upsert */
#define DBK_F_HIDDEN 0x40u     /* never selected unless named in a projection */

/* At most this many fields per entity (masks are 64-bit). */
#define DBK_REPO_MAX_FIELDS 64
/* Largest page a query may ask for; above it is DBK_EINVALID. */
#define DBK_REPO_MAX_LIMIT 1000
/* The page a query gets when it leaves dbk_query.limit 0. A list endpoint
 * that forgets its limit reads 100 rows, not a whole table, into the
 * arena; 100 is the page size web APIs and ORM paging helpers commonly
 * default to, enough for a screen of results. The cut is never silent:
 * has_more is reported (see dbk_query). */
#define DBK_REPO_DEFAULT_LIMIT 100
/* dbk_query.limit value for every matching row, however many. */
#define DBK_REPO_LIMIT_ALL (-1)
/* Largest IN list in one filter. */
#define DBK_REPO_MAX_IN 10000

/* One column of an entity. Build with DBK_FIELD / DBK_FIELD_NULL. */
typedef struct dbk_field {
    const char *column; /* column name, also the field's public name */
    dbk_type type;
    unsigned flags;
    size_t offset;       /* offsetof(struct, member) */
    size_t size;         /* sizeof member, checked against the type at init */
    long null_offset;    /* offsetof the bool null flag, or -1 */
    const char *pg_cast; /* optional PostgreSQL type for parameters ("uuid",
                            "jsonb"): placeholders become $n::uuid; NULL none */
} dbk_field;

#define DBK_FIELD(stype, member, column, type, flags)                                     \
    {(column), (type), (flags), offsetof(stype, member), sizeof(((stype *)0)->member), -1L, \
     NULL}

/* A numeric field that may be NULL: `null_member` is a bool in the struct. */
#define DBK_FIELD_NULL(stype, member, null_member, column, type, flags)              \
    {(column), (type), (flags) | DBK_F_NULLABLE, offsetof(stype, member),              \
     sizeof(((stype *)0)->member), (long)offsetof(stype, null_member), NULL}

/* A field whose PostgreSQL parameters need a cast, e.g. a uuid primary key
 * held as text: DBK_FIELD_CAST(struct t, id, "id", DBK_TYPE_TEXT, DBK_F_PK, "uuid").
 * SQLite ignores the cast. */
#define DBK_FIELD_CAST(stype, member, column, type, flags, pgcast)                        \
    {(column), (type), (flags), offsetof(stype, member), sizeof(((stype *)0)->member), -1L, \
     (pgcast)}

/* A composite unique constraint: a conflict target for upsert. */
typedef struct dbk_unique {
    const char *const *columns;
    size_t ncolumns;
} dbk_unique;

typedef enum dbk_rel_kind {
    DBK_REL_BELONGS_TO = 1, /* this entity holds the foreign key to target's PK */
    DBK_REL_HAS_ONE = 2,    /* target holds the foreign key to this entity's PK */
    DBK_REL_HAS_MANY = 3    /* same, many rows: an array + count */
} dbk_rel_kind;

struct dbk_entity;

/* A relation. Build with DBK_BELONGS_TO / DBK_HAS_ONE / DBK_HAS_MANY. */
typedef struct dbk_relation {
    const char *name;  /* include name ("posts") */
    dbk_rel_kind kind;
    const struct dbk_entity *target;
    const char *foreign_key; /* column: on this entity (belongs-to) or on target */
    size_t ptr_offset;       /* member: `T *` (array for has-many) */
    long count_offset;       /* has-many: size_t member with the count; else -1 */
} dbk_relation;

#define DBK_BELONGS_TO(stype, name, member, target, fk) \
    {(name), DBK_REL_BELONGS_TO, (target), (fk), offsetof(stype, member), -1L}
#define DBK_HAS_ONE(stype, name, member, target, fk) \
    {(name), DBK_REL_HAS_ONE, (target), (fk), offsetof(stype, member), -1L}
#define DBK_HAS_MANY(stype, name, member, count_member, target, fk)         \
    {(name), DBK_REL_HAS_MANY, (target), (fk), offsetof(stype, member), \
     (long)offsetof(stype, count_member)}

/* An entity: a table and the struct its rows map into. Declare it
 * `static const`: it is only read (its SQL cache is kept elsewhere, keyed
 * by its address, which must therefore stay the same while it is used). */
typedef struct dbk_entity {
    const char *table;
    size_t struct_size;
    const dbk_field *fields;
    size_t nfields;
    const dbk_relation *relations; /* may be NULL */
    size_t nrelations;
    const dbk_unique *uniques; /* composite unique constraints; may be NULL */
    size_t nuniques;
} dbk_entity;

/* The number of elements of an array (not a pointer). */
#define DBK_NELEMS(a) (sizeof(a) / sizeof((a)[0]))
/* Deprecated in 0.2 (removed in 0.3): the old name of DBK_NELEMS. It warns
 * by naming a deprecated type inside sizeof, which leaves it a constant
 * expression (usable in static initializers, as before). */
typedef char dbk_nelems_underscore_deprecated DBK_DEPRECATED("use DBK_NELEMS");
#define DBK_NELEMS_(a) (DBK_NELEMS(a) + 0 * sizeof(dbk_nelems_underscore_deprecated))
/* An entity with fields and relations (arrays, not pointers). */
#define DBK_ENTITY(table, stype, fields, rels) \
    {(table), sizeof(stype), (fields), DBK_NELEMS(fields), (rels), DBK_NELEMS(rels), NULL, 0}
/* An entity without relations. */
#define DBK_ENTITY_PLAIN(table, stype, fields) \
    {(table), sizeof(stype), (fields), DBK_NELEMS(fields), NULL, 0, NULL, 0}

/* Validates the descriptor (one PK of type int64/text; unique column
 * names; member sizes match types; relations name existing columns with
 * matching key types) and prepares its SQL cache. Called implicitly by
 * every repository function; call it at start-up to fail early. Idempotent
 * and thread-safe. DBK_EMISUSE with a message naming the bad field. */
DBK_API dbk_rc dbk_entity_init(const dbk_entity *e, dbk_error *err);

/* Frees the SQL cache. Only when no other thread uses the entity; it may be
 * used again afterwards (it re-initializes). Accepts NULL. Thread-safe
 * against calls on other entities. */
DBK_API void dbk_entity_release(const dbk_entity *e);

/* Index of the field with this column name, or -1. */
DBK_API int dbk_entity_field_index(const dbk_entity *e, const char *column);

/* ---- single rows ---- */

/* Finds the row whose primary key is `id` and maps it into `out` (a struct
 * of the entity's type; every non-hidden field is written). DBK_ENOT_FOUND
 * when there is none. Strings go into `arena`. */
DBK_API dbk_rc dbk_repo_find_by_id(dbk_db *db, const dbk_entity *e, dbk_value id, void *out,
                                   dbk_arena *arena, dbk_error *err);

/*
 * dbk_repo_find_by_id() of n ids at once (0..DBK_REPO_MAX_IN): with an
 * integer primary key ONE statement (primary key IN the ids) whatever n,
 * each row then mapped to every id that asked for it; other primary keys
 * (and an id given as another type than the key's) one lookup per id.
 * outs[i] (a struct of the entity's type) receives the row of ids[i], its
 * strings in `arena`; rcs[i] is DBK_OK, DBK_ENOT_FOUND (outs[i] zeroed, as
 * for a NULL id), or the error of the statement that carried it. Ids may
 * repeat. Returns DBK_OK when every outcome is DBK_OK or DBK_ENOT_FOUND,
 * else the first other one, described in err. DBK_EMISUSE with nothing
 * read: a NULL argument (an outs[i] included), n over the maximum.
 */
DBK_API dbk_rc dbk_repo_find_by_ids(dbk_db *db, const dbk_entity *e, size_t n,
                                    const dbk_value *ids, void *const *outs, dbk_rc *rcs,
                                    dbk_arena *arena, dbk_error *err);

/* Finds the row whose `column` equals `value`; `column` must be the PK, a
 * DBK_F_UNIQUE field, or a single-column dbk_unique (else
 * DBK_EINVALID_COLUMN). DBK_ENOT_FOUND when none. */
DBK_API dbk_rc dbk_repo_find_by(dbk_db *db, const dbk_entity *e, const char *column,
                                dbk_value value, void *out, dbk_arena *arena, dbk_error *err);

/* Inserts the row in `in` (every field except GENERATED ones; CREATED_AT and
 * UPDATED_AT are set to now) and maps the stored row (RETURNING) into
 * `out` (may be NULL: nothing mapped; may equal `in`). Constraint errors:
 * DBK_EUNIQUE with err->constraint_name, DBK_ENOT_NULL, DBK_EFOREIGN_KEY,
 * DBK_ECHECK. */
DBK_API dbk_rc dbk_repo_create(dbk_db *db, const dbk_entity *e, const void *in, void *out,
                               dbk_arena *arena, dbk_error *err);

/* Sets the fields named in `fields` (nfields of them) from `in` on the row
 * with primary key `id`; UPDATED_AT is set to now. The updated row goes to
 * `out` (may be NULL, may equal `in`). An unknown name, the PK or a
 * GENERATED field is DBK_EINVALID_COLUMN; no row DBK_ENOT_FOUND. With
 * nfields 0 and no UPDATED_AT field this is dbk_repo_find_by_id(). */
DBK_API dbk_rc dbk_repo_update(dbk_db *db, const dbk_entity *e, dbk_value id, const void *in,
                               const char *const *fields, size_t nfields, void *out,
                               dbk_arena *arena, dbk_error *err);

/* Deletes the row with primary key `id`: DBK_OK or DBK_ENOT_FOUND. When
 * `out` is not NULL the deleted row is mapped into it (RETURNING). */
DBK_API dbk_rc dbk_repo_delete(dbk_db *db, const dbk_entity *e, dbk_value id, void *out,
                               dbk_arena *arena, dbk_error *err);

/* INSERT ... ON CONFLICT (conflict columns) DO UPDATE SET ... RETURNING.
 * `conflict` names the PK, a UNIQUE field, or exactly the columns of one
 * dbk_unique (any order); anything else is DBK_EINVALID_COLUMN. On
 * conflict, `update_fields` (NULL: every inserted field except the conflict
 * columns and CREATED_AT) are overwritten and UPDATED_AT set. The
 * resulting row (inserted or updated) goes to `out` (may be NULL). */
DBK_API dbk_rc dbk_repo_upsert(dbk_db *db, const dbk_entity *e, const char *const *conflict,
                               size_t nconflict, const char *const *update_fields,
                               size_t nupdate, const void *in, void *out, dbk_arena *arena,
                               dbk_error *err);

/* Bulk insert of `n` structs from the array `rows` with multi-row VALUES
 * statements, batched below each engine's parameter limit (at most 999
 * parameters per statement on SQLite, 65,535 and 1,000 rows on PostgreSQL).
 * When `out_rows` is not NULL (an array of n structs, may equal rows) the
 * stored rows, generated ids included, are mapped into it in input order.
 * Not atomic by itself: call it inside dbk_tx_run() for all-or-nothing
 * (it is also much faster there on SQLite). */
DBK_API dbk_rc dbk_repo_create_many(dbk_db *db, const dbk_entity *e, const void *rows, size_t n,
                                    void *out_rows, dbk_arena *arena, dbk_error *err);

/* ---- many rows ---- */

typedef enum dbk_filter_op {
    DBK_FILTER_EQ = 1,
    DBK_FILTER_NE = 2,
    DBK_FILTER_LT = 3,
    DBK_FILTER_LE = 4,
    DBK_FILTER_GT = 5,
    DBK_FILTER_GE = 6,
    DBK_FILTER_IN = 7,          /* `values`, `nvalues` (0: matches nothing; max DBK_REPO_MAX_IN) */
    DBK_FILTER_IS_NULL = 8,     /* no value */
    DBK_FILTER_IS_NOT_NULL = 9, /* no value */
    DBK_FILTER_LIKE = 10,       /* text fields only; the pattern is a parameter */
    /* The names before 0.2 (same values), removed in 0.3. */
    DBK_EQ DBK_DEPRECATED("use DBK_FILTER_EQ") = 1,
    DBK_NE DBK_DEPRECATED("use DBK_FILTER_NE") = 2,
    DBK_LT DBK_DEPRECATED("use DBK_FILTER_LT") = 3,
    DBK_LE DBK_DEPRECATED("use DBK_FILTER_LE") = 4,
    DBK_GT DBK_DEPRECATED("use DBK_FILTER_GT") = 5,
    DBK_GE DBK_DEPRECATED("use DBK_FILTER_GE") = 6,
    DBK_IN DBK_DEPRECATED("use DBK_FILTER_IN") = 7,
    DBK_IS_NULL DBK_DEPRECATED("use DBK_FILTER_IS_NULL") = 8,
    DBK_IS_NOT_NULL DBK_DEPRECATED("use DBK_FILTER_IS_NOT_NULL") = 9,
    DBK_LIKE DBK_DEPRECATED("use DBK_FILTER_LIKE") = 10
} dbk_filter_op;

/* One condition; conditions are AND-combined. A NULL `value` with a
 * comparison operator is DBK_EINVALID (use DBK_FILTER_IS_NULL). */
typedef struct dbk_filter {
    const char *field;
    dbk_filter_op op;
    dbk_value value;
    const dbk_value *values; /* DBK_FILTER_IN */
    size_t nvalues;
} dbk_filter;

/* Filter shorthands. */
#define DBK_WHERE(f, o, v) ((dbk_filter){(f), (o), (v), NULL, 0})
#define DBK_WHERE_IN(f, vals, n) \
    ((dbk_filter){(f), DBK_FILTER_IN, {DBK_TYPE_NULL, {0}}, (vals), (n)})

typedef struct dbk_order {
    const char *field; /* any non-hidden, non-blob, non-json field */
    bool desc;
} dbk_order;

typedef enum dbk_count_mode {
    DBK_COUNT_NONE = 0,     /* total = -1 */
    DBK_COUNT_EXACT = 1,    /* total of rows matching the filters */
    DBK_COUNT_HAS_MORE = 2, /* fetch limit + 1 rows: has_more only, total = -1 */
    DBK_COUNT_ESTIMATED = 3 /* PostgreSQL without filters: planner statistics
                               (pg_class.reltuples); otherwise exact */
} dbk_count_mode;

/*
 * A query for dbk_repo_find_many() / dbk_repo_count(). Zero-initialize and
 * set what you need.
 *
 * Ordering: `order` (norder entries) or the string form `order_by`
 * ("-created_at,name": comma-separated fields, '-' for descending); not
 * both. The primary key is always appended as the final tie-breaker when
 * a limit, an offset or a cursor is used, so pages are deterministic.
 *
 * Paging: `limit` is the page size, 1..DBK_REPO_MAX_LIMIT. 0 (the zero
 * value) means DBK_REPO_DEFAULT_LIMIT rows, and then has_more tells
 * whether more rows match (one extra row is fetched to know), so a
 * result cut by the default is never mistaken for the whole set.
 * DBK_REPO_LIMIT_ALL (-1) returns every matching row. Any other negative
 * value, or one above the maximum, is DBK_EINVALID, as is a negative
 * offset. For a total without rows call dbk_repo_count().
 * Deprecated: `has_limit` (removed in 0.3). When a caller sets it, `limit`
 * keeps its 0.1 meaning: 0..DBK_REPO_MAX_LIMIT, 0 giving an empty page
 * with a valid total. (In 0.1 a query without has_limit returned every
 * row; it now gets the default page: use DBK_REPO_LIMIT_ALL for all.)
 *
 * Keyset (cursor) pagination: set `keyset` (with a limit other than
 * DBK_REPO_LIMIT_ALL); the list's
 * next_cursor is then an opaque string positioned after the page's last
 * row (NULL on the last page); pass it back as `after` for the next page,
 * with the same filters and order. Keyset pages do not shift when rows are
 * inserted or deleted between requests. Keyset sort fields must not be
 * NULLABLE (DBK_EINVALID_SORT). A malformed or tampered cursor, or one
 * made for another entity or order, is DBK_EINVALID. `after` and a
 * non-zero offset together are DBK_EINVALID.
 *
 * Projection: `select` (nselect column names) limits the columns read; the
 * other fields of each struct stay zero/NULL. The PK, the sort fields and
 * the foreign keys needed by includes are always read. Hidden fields are
 * read only when named here.
 *
 * Includes: `include` (ninclude relation paths: "posts", "posts.comments",
 * "author") loads each relation for the whole page with exactly one extra
 * query per relation (PostgreSQL: `fk = ANY($1::bigint[])`, one array
 * parameter; SQLite: `fk IN (SELECT value FROM json_each($1))`, one
 * parameter), however many rows the page has. Unknown relation names are
 * DBK_EINVALID_COLUMN.
 */
typedef struct dbk_query {
    const dbk_filter *filters;
    size_t nfilters;
    const dbk_order *order;
    size_t norder;
    const char *order_by;
    int64_t limit; /* 0: DBK_REPO_DEFAULT_LIMIT; DBK_REPO_LIMIT_ALL; 1..DBK_REPO_MAX_LIMIT */
    /* Deprecated, removed in 0.3: true gives `limit` its 0.1 meaning (above). */
    bool has_limit DBK_DEPRECATED("leave it false and use limit alone (0 default page, "
                                  "DBK_REPO_LIMIT_ALL every row)");
    int64_t offset;
    dbk_count_mode count;
    bool keyset;
    const char *after;
    const char *const *select;
    size_t nselect;
    const char *const *include;
    size_t ninclude;
} dbk_query;

/* A page of rows. All pointers are owned by the arena. */
typedef struct dbk_list {
    void *items;             /* `count` structs of the entity's type */
    size_t count;
    int64_t total;           /* per count mode; -1 when not counted */
    bool has_more;           /* HAS_MORE and keyset modes, and the default
                                limit (else false) */
    const char *next_cursor; /* keyset mode: position after the last item, or NULL */
} dbk_list;

/* Runs the query (`q` may be NULL: every row) and fills *out. Errors:
 * DBK_EINVALID_COLUMN (unknown filter/select/include name),
 * DBK_EINVALID_SORT, DBK_EINVALID (paging, cursor, filter values),
 * DBK_EMISUSE, and anything the database reports. */
DBK_API dbk_rc dbk_repo_find_many(dbk_db *db, const dbk_entity *e, const dbk_query *q,
                                  dbk_list *out, dbk_arena *arena, dbk_error *err);

/* Rows matching the filters (AND-combined; nfilters may be 0). */
DBK_API dbk_rc dbk_repo_count(dbk_db *db, const dbk_entity *e, const dbk_filter *filters,
                              size_t nfilters, int64_t *out, dbk_error *err);

/* Loads relations (paths as in dbk_query.include) for `n` structs already
 * in `items` (e.g. from dbk_repo_find_by_id): one query per relation. */
DBK_API dbk_rc dbk_repo_include(dbk_db *db, const dbk_entity *e, void *items, size_t n,
                                const char *const *include, size_t ninclude, dbk_arena *arena,
                                dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_REPO_H */
