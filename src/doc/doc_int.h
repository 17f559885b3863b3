/*
 * Internal shapes of the document layer: the parsed document, the opened
 * collection with its checked field table, the SQL builder and the filter,
 * sort and update compilers shared by the files of src/doc/.
 */
#ifndef DBK_DOC_INT_H
#define DBK_DOC_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/internal.h"
#include "core/sb.h"
#include "dbkit/doc.h"
#include "driver/dialect.h"
#include "dbkit/value.h"

struct dbk_doc {
    json_t *root; /* a JSON object, owned */
};

/* One checked field: the declared ones plus the implicit timestamps. */
typedef struct dbk__doc_field {
    const char *path;
    dbk_doc_type type;
    unsigned flags;
    json_t *def; /* parsed default or NULL, owned */
} dbk__doc_field;

struct dbk_doc_mongo;

struct dbk_doc_coll {
    dbk_db *db;                  /* borrowed; NULL on MongoDB */
    struct dbk_doc_mongo *mongo; /* borrowed; NULL on the relational engines */
    dbk_engine engine;
    const dbk_doc_schema *schema; /* borrowed */
    const char *created;          /* NULL without timestamps */
    const char *updated;
    size_t nfields;
    dbk__doc_field fields[DBK_DOC_MAX_FIELDS + 2];
    /* The statements of the per-document calls, written once at open (SQL
     * engines): the name is checked, the text never changes. */
    char sql_insert[128];
    char sql_find[96];
};

/* Parameters of one compiled statement. Text values borrow strings of the
 * JSON trees the statement was compiled from (and `owned`, strings made
 * while compiling, freed with the list). */
typedef struct dbk__params {
    dbk_value *v;
    size_t n, cap;
    char **owned;
    size_t nowned, capowned;
    bool oom;
} dbk__params;

void dbk__params_free(dbk__params *p);

/* The SQL dialect of the collection's engine: every piece of SQL text that
 * differs between engines (JSON reads, casts, the table) comes from it. */
static inline const dbk__dialect *dbk__doc_dialect(const dbk_doc_coll *c)
{
    return dbk__dialect_of(c->engine);
}

/* Parses JSON text with dbkit's limits (size, depth, one object, UTF-8, no
 * NUL); `what` names the input in messages ("document", "filter"). */
dbk_rc dbk__doc_json_parse(const char *json, size_t len, const char *what, json_t **out,
                           dbk_error *err);

/* The value at a dotted path (borrowed) or NULL. */
json_t *dbk__doc_path_get(json_t *root, const char *path);

/* True when `path` is a well-formed dotted path (segments
 * [A-Za-z_][A-Za-z0-9_]*, each at most 64 bytes, at most 16 segments). */
bool dbk__doc_path_ok(const char *path);

/* The checked field for a path: the exact declared field, or NULL with
 * *under_object set when the path lies below a declared OBJECT field. */
const dbk__doc_field *dbk__doc_field_find(const dbk_doc_coll *c, const char *path,
                                          bool *under_object);

/* Appends the SQL expression that reads `path` on the collection's engine
 * (PostgreSQL: typed by `type`, 0 for raw jsonb). The path must have
 * passed dbk__doc_path_ok. */
void dbk__doc_path_sql(const dbk_doc_coll *c, dbk__sb *sql, const char *path, dbk_doc_type type);

/* Compiles a filter (JSON text, NULL or empty: match all) to a boolean SQL
 * expression appended to `sql`, parameters appended to `params` starting
 * at $(params->n + 1). *tree receives the parsed filter, which the
 * parameters borrow from: json_decref it after the statement ran. */
dbk_rc dbk__doc_filter_compile(const dbk_doc_coll *c, const char *filter, dbk__sb *sql,
                               dbk__params *params, json_t **tree, dbk_error *err);

/* Compiles a sort object to an ORDER BY list (without the keyword). */
dbk_rc dbk__doc_sort_compile(const dbk_doc_coll *c, const char *sort, dbk__sb *sql,
                             dbk_error *err);

/* Validates a whole document against the schema: top-level keys declared,
 * required fields present, types; dates are rewritten to the stored form. */
dbk_rc dbk__doc_check(const dbk_doc_coll *c, json_t *doc, dbk_error *err);

/* Sets (steals `v`) or, with v NULL, removes the value at a dotted path,
 * making missing parents objects. DBK_EINVALID when a parent is not an
 * object; DBK_ENOMEM. */
dbk_rc dbk__doc_path_set(json_t *root, const char *path, json_t *v, dbk_error *err);

/* Index i of the collection: its name and key list (borrowed or written
 * into buf), for messages and DDL. Unique fields come first as indexes. */
size_t dbk__doc_nindexes(const dbk_doc_coll *c);
void dbk__doc_index_get(const dbk_doc_coll *c, size_t i, char *name, size_t namelen,
                        const char **keys, bool *unique);

/* Writes the lower-case form of a 24-hex-digit object id into out; false
 * when s is not one. */
bool dbk__doc_oid_norm(const char *s, size_t n, char out[25]);

/* The type of the collection's "_id": DBK_DOC_STRING or DBK_DOC_OBJECT_ID. */
dbk_doc_type dbk__doc_id_type(const dbk_doc_coll *c);

/* Formats microseconds since the epoch as the stored date text. */
void dbk__doc_date_format(int64_t usec, char buf[40]);

/* Checks a schema and fills the collection's field table. */
dbk_rc dbk__doc_schema_load(dbk_doc_coll *c, const dbk_doc_schema *s, dbk_error *err);
void dbk__doc_schema_unload(dbk_doc_coll *c);

/* ---- shared by the relational and MongoDB backends (coll.c) ---- */

int64_t dbk__doc_now_usec(void);
/* Wraps a tree into a dbk_doc (steals root; out NULL: frees it). */
dbk_rc dbk__doc_wrap(json_t *root, dbk_doc **out, dbk_error *err);
/* Parses, fills _id / defaults / timestamps and validates a new document. */
dbk_rc dbk__doc_prepare_create(const dbk_doc_coll *c, const char *json, size_t len, json_t **out,
                               dbk_error *err);
/* Applies $set / $unset / $inc (or a plain object) to root in place. */
dbk_rc dbk__doc_apply_update(const dbk_doc_coll *c, json_t *root, json_t *upd, dbk_error *err);
dbk_rc dbk__doc_projection_parse(const dbk_doc_coll *c, const char *proj, json_t **out,
                                 dbk_error *err);
dbk_rc dbk__doc_project(const dbk_doc_coll *c, json_t *proj, json_t **root, dbk_error *err);
/* Fills a DBK_EUNIQUE naming the keys of the unique index `index_name`;
 * false when no unique index has that name. */
bool dbk__doc_unique_error(const dbk_doc_coll *c, const char *index_name, dbk_error *err);

/* ---- the MongoDB backend (mongo.c) ---- */

/* Inserts a prepared document; its dates are cut to the milliseconds a
 * BSON datetime holds, in place, so the caller returns what was stored. */
dbk_rc dbk__mongo_insert(dbk_doc_coll *c, json_t *root, dbk_error *err);
/* The document with this (checked) id, as an ObjectId or a string. */
dbk_rc dbk__mongo_get(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err);
dbk_rc dbk__mongo_find(dbk_doc_coll *c, const dbk_doc_find_opts *o, json_t *proj,
                       dbk_doc_page *page, dbk_error *err);
dbk_rc dbk__mongo_count(dbk_doc_coll *c, const char *filter, int64_t *out, dbk_error *err);
dbk_rc dbk__mongo_update(dbk_doc_coll *c, const char *id, json_t *upd, json_t **out,
                         dbk_error *err);
dbk_rc dbk__mongo_delete(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err);
dbk_rc dbk__mongo_ensure(dbk_doc_coll *c, dbk_error *err);
dbk_rc dbk__mongo_drop(dbk_doc_coll *c, dbk_error *err);

#endif
