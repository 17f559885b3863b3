/*
 * dbkit/doc.h - document collections: a schema, validation, and a
 * MongoDB-style repository over the relational engines' JSON support.
 *
 * A collection is described once by a dbk_doc_schema (field paths and
 * types, required, unique, defaults, timestamps, indexes) and opened over
 * any dbk_db executor with dbk_doc_coll_open(). Every operation then runs
 * through that executor, so the pool, deadlines, error mapping, the query
 * observer (query log, slow log, N+1 detector) and transactions work for
 * documents exactly as they do for rows.
 *
 * Storage (one table per collection, created by dbk_doc_migration_sql()):
 *
 *   PostgreSQL: "<collection>" (id text PRIMARY KEY, doc jsonb NOT NULL);
 *               one expression index per declared index, UNIQUE for unique
 *               fields and unique indexes.
 *   SQLite:     the same table with doc TEXT (checked json_valid) and
 *               expression indexes over json_extract().
 *
 * Documents travel as JSON text (UTF-8; parsed and written with jansson).
 * "_id" is the document's id: a string of 1..64 bytes (with id_type
 * DBK_DOC_OBJECT_ID in the schema: 24 hex digits); when a created document
 * has none, a 24-hex-digit object id is generated. Dates (type
 * DBK_DOC_DATE and the timestamps) travel as ISO-8601 UTC strings with
 * microseconds, "2026-01-02T03:04:05.000006Z" (so text order is time
 * order); object ids as 24 lower-case hex digits (input may use either
 * case). That JSON form is the same on every backend; MongoDB stores the
 * values as BSON types (see the MongoDB section).
 *
 * Filters are MongoDB query documents restricted to this subset:
 *   {"path": value}                   equality (value null: missing or null;
 *                                     on an array field: the array holds it)
 *   {"path": {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value}}
 *   {"path": {"$in": [values]}}       at most DBK_DOC_MAX_IN values
 *   {"path": {"$exists": true|false}}
 *   {"$and": [filters]}, {"$or": [filters]}
 * Several keys in one object are ANDed. A path is "_id", a declared field,
 * or a dotted path below a declared DBK_DOC_OBJECT field; every segment is
 * [A-Za-z_][A-Za-z0-9_]* (at most 64 bytes). Anything else - an unknown
 * operator, an undeclared path, a value of the wrong type for the field -
 * is DBK_EINVALID naming the path or operator, decided before any SQL is
 * run. Filters compile to parameterized SQL: values are always parameters;
 * paths, once checked against the schema and the character set above,
 * appear in the SQL text as JSON path literals.
 *
 * Sorts are {"path": 1|-1, ...} objects (keys in order, at most 8); missing
 * values sort first ascending and last descending on every engine; "_id"
 * is appended as the final tie-breaker so pages are deterministic. A bad
 * sort (unknown path, direction not 1 or -1) is DBK_EINVALID_SORT.
 * Stored keys may not be empty, contain '.' or start with '$', at any
 * depth (MongoDB's rule): DBK_EINVALID.
 * Projections are {"path": 1, ...} (inclusion only; "_id" is always kept).
 * Updates are {"$set": {...}, "$unset": {"path": ""}, "$inc": {"path": n}};
 * an object without operators is a $set of its fields (as mongoose does).
 *
 * Limits: a document is at most DBK_DOC_MAX_BYTES of JSON text and
 * DBK_DOC_MAX_DEPTH levels deep; larger or deeper input is DBK_EINVALID.
 * Invalid UTF-8 and "\u0000" inside strings are DBK_EINVALID.
 *
 * Thread safety: a dbk_doc_coll is immutable after open and may be used
 * from any number of threads at once when its executor may (a pool's).
 * A dbk_doc belongs to one thread at a time.
 */
#ifndef DBKIT_DOC_H
#define DBKIT_DOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Announces this header's API. */
#define DBKIT_HAS_DOC 1

#define DBK_DOC_MAX_BYTES (16 * 1024 * 1024) /* MongoDB's document limit */
#define DBK_DOC_MAX_DEPTH 96 /* objects/arrays nested, root included (libbson reads 98) */
#define DBK_DOC_MAX_FIELDS 64                /* declared fields per schema */
#define DBK_DOC_MAX_INDEXES 16               /* declared indexes per schema */
#define DBK_DOC_MAX_SORT 8                   /* sort keys per find */
#define DBK_DOC_MAX_IN 10000                 /* values of one $in */
#define DBK_DOC_MAX_LIMIT 1000               /* as DBK_REPO_MAX_LIMIT */
#define DBK_DOC_DEFAULT_LIMIT 100 /* a find that names no limit: as DBK_REPO_DEFAULT_LIMIT */
#define DBK_DOC_LIMIT_ALL (-1)    /* a find's limit for every match: as DBK_REPO_LIMIT_ALL */
#define DBK_DOC_ID_MAX 64                    /* bytes of an "_id" */

/* Field types. */
typedef enum dbk_doc_type {
    DBK_DOC_STRING = 1,
    DBK_DOC_INT64 = 2,     /* JSON integer */
    DBK_DOC_DOUBLE = 3,    /* JSON number (an integer is accepted) */
    DBK_DOC_BOOL = 4,
    DBK_DOC_DATE = 5,      /* ISO-8601 string; stored normalized to UTC */
    DBK_DOC_OBJECT_ID = 6, /* 24 hex digits */
    DBK_DOC_ARRAY = 7,
    DBK_DOC_OBJECT = 8     /* its members are free: dotted paths below it */
} dbk_doc_type;

/* Field flags. */
#define DBK_DOC_REQUIRED 0x1u /* must be present and not null on create */
#define DBK_DOC_UNIQUE 0x2u   /* a unique index on the path */

/* One declared field. `path` may be dotted ("address.city"); its parents
 * need not be declared. `default_json` (may be NULL) is JSON text put in
 * place of a missing field on create, validated like input. */
typedef struct dbk_doc_field {
    const char *path;
    dbk_doc_type type;
    unsigned flags;
    const char *default_json;
} dbk_doc_field;

/* One declared index. `keys` lists paths separated by commas, each with an
 * optional leading '-' for descending: "email", "-createdAt",
 * "product_id,user_id". `name` (may be NULL) is the index name; default
 * "<collection>_<paths joined by _>_idx". */
typedef struct dbk_doc_index {
    const char *name;
    const char *keys;
    bool unique;
} dbk_doc_index;

/* A collection's schema. Plain data: the strings and arrays are borrowed
 * for as long as a dbk_doc_coll opened with it lives (static descriptors
 * are the usual case). `collection` is the table name: [a-z_][a-z0-9_]*,
 * at most 48 bytes. With `timestamps`, create sets created_field and
 * updated_field (defaults "createdAt" / "updatedAt", as mongoose) and every
 * update sets updated_field; both are DBK_DOC_DATE fields, declared
 * implicitly. Undeclared top-level fields in input are DBK_EINVALID. */
typedef struct dbk_doc_schema {
    const char *collection;
    const dbk_doc_field *fields;
    size_t nfields;
    const dbk_doc_index *indexes;
    size_t nindexes;
    bool timestamps;
    const char *created_field; /* NULL: "createdAt" */
    const char *updated_field; /* NULL: "updatedAt" */
    /* The type of "_id": 0 or DBK_DOC_STRING, a string of 1..DBK_DOC_ID_MAX
     * bytes; DBK_DOC_OBJECT_ID, 24 hex digits (stored lower-case; a BSON
     * ObjectId on MongoDB). Any other type is DBK_EINVALID. */
    dbk_doc_type id_type;
} dbk_doc_schema;

/* A schema read from JSON text (for tools and configuration):
 *   {"collection": "users", "timestamps": true,
 *    "created_field": "createdAt", "updated_field": "updatedAt",
 *    "id_type": "string" | "object_id",
 *    "fields": [{"path": "email", "type": "string", "required": true,
 *                "unique": true, "default": <any JSON>}, ...],
 *    "indexes": [{"keys": "status,-createdAt", "unique": false,
 *                 "name": "users_status_created"}, ...]}
 * Types: "string", "int64", "double", "bool", "date", "object_id",
 * "array", "object". The result is checked as dbk_doc_coll_open() would
 * (DBK_EINVALID naming the entry). *out owns all its strings: free it with
 * dbk_doc_schema_free(). */
DBK_API dbk_rc dbk_doc_schema_parse(const char *json, size_t len, dbk_doc_schema **out,
                                    dbk_error *err);

/* Frees a schema from dbk_doc_schema_parse(). Accepts NULL. */
DBK_API void dbk_doc_schema_free(dbk_doc_schema *schema);

/* ---- documents ---- */

/* A parsed document (owned by whoever received it: dbk_doc_free). */
typedef struct dbk_doc dbk_doc;

/* Parses `len` bytes of JSON text into a document. The text must be one
 * JSON object within the limits above: DBK_EINVALID otherwise (message says
 * why and where); DBK_ENOMEM. Not validated against any schema. */
DBK_API dbk_rc dbk_doc_parse(const char *json, size_t len, dbk_doc **out, dbk_error *err);

/* Frees a document. Accepts NULL. */
DBK_API void dbk_doc_free(dbk_doc *doc);

/* The document's "_id", borrowed until dbk_doc_free(); NULL when absent
 * or not a string. */
DBK_API const char *dbk_doc_id(const dbk_doc *doc);

/* The document as compact JSON text (keys in stored order). *out is owned
 * by the caller: dbk_free(). DBK_ENOMEM. */
DBK_API dbk_rc dbk_doc_to_json(const dbk_doc *doc, char **out, dbk_error *err);

/* True when the dotted path exists in the document (a null value exists). */
DBK_API bool dbk_doc_has(const dbk_doc *doc, const char *path);

/* Accessors by dotted path. DBK_ENOT_FOUND when the path is missing or
 * null; DBK_ETYPE when the value has another JSON type (get_double accepts
 * integers; get_date parses DBK_DOC_DATE text into microseconds since the
 * epoch). A text *out is borrowed until dbk_doc_free() or the next change
 * of the document; *len (may be NULL) gets its length. */
DBK_API dbk_rc dbk_doc_get_text(const dbk_doc *doc, const char *path, const char **out,
                                size_t *len, dbk_error *err);
DBK_API dbk_rc dbk_doc_get_int64(const dbk_doc *doc, const char *path, int64_t *out,
                                 dbk_error *err);
DBK_API dbk_rc dbk_doc_get_double(const dbk_doc *doc, const char *path, double *out,
                                  dbk_error *err);
DBK_API dbk_rc dbk_doc_get_bool(const dbk_doc *doc, const char *path, bool *out,
                                dbk_error *err);
DBK_API dbk_rc dbk_doc_get_date(const dbk_doc *doc, const char *path, int64_t *usec,
                                dbk_error *err);
/* Number of elements of the array at `path` (DBK_ENOT_FOUND, DBK_ETYPE). */
DBK_API dbk_rc dbk_doc_array_len(const dbk_doc *doc, const char *path, size_t *out,
                                 dbk_error *err);

/* ---- collections ---- */

typedef struct dbk_doc_coll dbk_doc_coll;

/* Checks `schema` (names, paths, types, defaults, index keys) and binds it
 * to `db` (borrowed: it must outlive the collection). DBK_EINVALID naming
 * the bad entry; DBK_ENOMEM. Runs no SQL: create the table with
 * dbk_doc_migration_sql() through migrations, or dbk_doc_coll_ensure().
 * *out is owned by the caller: dbk_doc_coll_close(). */
DBK_API dbk_rc dbk_doc_coll_open(dbk_db *db, const dbk_doc_schema *schema, dbk_doc_coll **out,
                                 dbk_error *err);

/* Frees the handle. Accepts NULL. */
DBK_API void dbk_doc_coll_close(dbk_doc_coll *coll);

/* Drops the collection's table (MongoDB: the collection) with its indexes;
 * a missing one is not an error. For tests and tools. */
DBK_API dbk_rc dbk_doc_coll_drop(dbk_doc_coll *coll, dbk_error *err);

/* ---- MongoDB ----
 *
 * The same collections on a MongoDB server through libmongoc: one
 * mongoc_client_pool_t per dbk_doc_mongo, a client popped per operation.
 * Fields of type DBK_DOC_DATE (and the timestamps) are stored as BSON UTC
 * datetimes, DBK_DOC_OBJECT_ID fields (and "_id" when the schema's id_type
 * says so) as BSON ObjectIds, so the server's own comparisons, sorts and
 * indexes apply; they are read back into the JSON form above. A BSON
 * datetime holds milliseconds: on MongoDB a date keeps its first three
 * fraction digits (the rest read back as 0, create and update return what
 * was stored), and a date in a filter is compared at millisecond precision
 * (range bounds rounded so that $gt/$gte/$lt/$lte keep their meaning;
 * equality and $in truncate). Documents written as strings by an earlier
 * dbkit read back unchanged, and find by id, update and delete by id also
 * match an "_id" stored as the hex string; filters and sorts on date and
 * object id fields compare BSON types only, so such documents need a
 * one-off conversion (docs/documents.md). Filters, sorts, projections and
 * updates are checked by the same code as for SQL before anything is
 * sent. Updates are validated
 * against the current document and then sent as one findAndModify with the
 * operators (atomic on the server; not a multi-document transaction).
 * Available only when dbkit was built with libmongoc (pkg-config
 * libmongoc-1.0); otherwise every call below gives DBK_ECONFIG.
 */

/* Connection events, from the driver's SDAM monitoring. DBK_DOC_MONGO_CONNECTED,
 * _DISCONNECTED and _ERROR are the names before 0.2, deprecated (removed in
 * 0.3): the same values. */
typedef enum dbk_doc_mongo_event {
    DBK_DOC_MONGO_EVENT_CONNECTED = 1,    /* a server became reachable */
    DBK_DOC_MONGO_EVENT_DISCONNECTED = 2, /* a reachable server became unknown, or close */
    DBK_DOC_MONGO_EVENT_ERROR = 3,        /* a heartbeat failed; `detail` says why */
    DBK_DOC_MONGO_CONNECTED DBK_DEPRECATED("use DBK_DOC_MONGO_EVENT_CONNECTED") = 1,
    DBK_DOC_MONGO_DISCONNECTED DBK_DEPRECATED("use DBK_DOC_MONGO_EVENT_DISCONNECTED") = 2,
    DBK_DOC_MONGO_ERROR DBK_DEPRECATED("use DBK_DOC_MONGO_EVENT_ERROR") = 3
} dbk_doc_mongo_event;

/* Called from the driver's monitoring thread (and from close): must be
 * thread-safe. `detail` is borrowed for the call; it never holds a
 * password. */
typedef void (*dbk_doc_mongo_event_fn)(void *ctx, dbk_doc_mongo_event ev, const char *detail);

/* Options; 0 keeps the URL's value, else the driver's default. */
typedef struct dbk_doc_mongo_opts {
    /* The struct's version: DBK_DOC_MONGO_OPTS_VERSION, set by DBK_DOC_MONGO_OPTS_INIT or
     * dbk_doc_mongo_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    int max_pool_size;               /* maxPoolSize */
    int server_selection_timeout_ms; /* serverSelectionTimeoutMS */
    int socket_timeout_ms;           /* socketTimeoutMS */
    dbk_doc_mongo_event_fn on_event; /* may be NULL */
    void *event_ctx;
} dbk_doc_mongo_opts;

/* The version of dbk_doc_mongo_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_DOC_MONGO_OPTS_VERSION 1
#define DBK_DOC_MONGO_OPTS_INIT {.version = DBK_DOC_MONGO_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_DOC_MONGO_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_DOC_MONGO_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_doc_mongo_opts_init(dbk_doc_mongo_opts *opts, unsigned int version,
                                       dbk_error *err);

typedef struct dbk_doc_mongo dbk_doc_mongo;

/* True when this build has the MongoDB backend. */
DBK_API bool dbk_doc_mongo_available(void);

/* Opens a client pool for a mongodb:// URL (the database is the URL's
 * path, default "test"). Connects lazily: an unreachable server shows at
 * the first operation as DBK_EUNAVAILABLE after serverSelectionTimeoutMS.
 * DBK_ECONFIG for a malformed URL (message without the password) or a
 * build without libmongoc. *out is owned: dbk_doc_mongo_close(). */
DBK_API dbk_rc dbk_doc_mongo_open(const char *url, const dbk_doc_mongo_opts *opts,
                                  dbk_doc_mongo **out, dbk_error *err);

/* Closes the pool (every collection opened on it must be closed first),
 * reporting DBK_DOC_MONGO_EVENT_DISCONNECTED. Accepts NULL. */
DBK_API void dbk_doc_mongo_close(dbk_doc_mongo *m);

/* Like dbk_doc_coll_open() on a MongoDB pool. dbk_doc_coll_ensure()
 * creates the declared indexes (createIndexes). */
DBK_API dbk_rc dbk_doc_coll_open_mongo(dbk_doc_mongo *m, const dbk_doc_schema *schema,
                                       dbk_doc_coll **out, dbk_error *err);

/* The DDL that creates the collection's table and indexes on `engine`
 * (idempotent: IF NOT EXISTS), as one script. *out is owned by the caller:
 * dbk_free(). DBK_EINVALID for a bad schema, DBK_ECONFIG for an engine without
 * a document backend. */
DBK_API dbk_rc dbk_doc_migration_sql(const dbk_doc_schema *schema, dbk_engine engine,
                                     char **out, dbk_error *err);

/* Runs dbk_doc_migration_sql() for the collection's engine on its executor
 * (for tests and tools; services apply it as a migration). */
DBK_API dbk_rc dbk_doc_coll_ensure(dbk_doc_coll *coll, dbk_error *err);

/* Validates `json` (a whole document) against the schema as create would:
 * DBK_EINVALID naming the first bad field. */
DBK_API dbk_rc dbk_doc_validate(const dbk_doc_coll *coll, const char *json, size_t len,
                                dbk_error *err);

/* Inserts a document: parsed, validated, defaults applied, "_id" generated
 * when absent, timestamps set. *out (may be NULL) gets the stored document
 * (owned: dbk_doc_free). DBK_EINVALID naming the field; DBK_EUNIQUE on a
 * duplicate "_id" or unique field (message names the index's paths). */
DBK_API dbk_rc dbk_doc_create(dbk_doc_coll *coll, const char *json, size_t len, dbk_doc **out,
                              dbk_error *err);

/* The document with this "_id". DBK_ENOT_FOUND when there is none. *out is
 * owned by the caller. DBK_EINVALID for an id that is not 1..DBK_DOC_ID_MAX
 * bytes or, on a collection whose id_type is DBK_DOC_OBJECT_ID, not 24 hex
 * digits (either case: an id is looked up lower-case); the same holds for
 * the id of find_by_id_and_update and find_by_id_and_delete. */
DBK_API dbk_rc dbk_doc_find_by_id(dbk_doc_coll *coll, const char *id, dbk_doc **out,
                                  dbk_error *err);

/* The first document matching `filter` (JSON text, NULL or "{}": any) in
 * _id order. DBK_ENOT_FOUND when none matches. */
DBK_API dbk_rc dbk_doc_find_one(dbk_doc_coll *coll, const char *filter, dbk_doc **out,
                                dbk_error *err);

/* Options of dbk_doc_find(). Zero means default. */
typedef struct dbk_doc_find_opts {
    /* The struct's version: DBK_DOC_FIND_OPTS_VERSION, set by DBK_DOC_FIND_OPTS_INIT or
     * dbk_doc_find_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    const char *filter;     /* NULL: every document */
    const char *sort;       /* NULL: "_id" ascending */
    const char *projection; /* NULL: whole documents */
    /* 0: DBK_DOC_DEFAULT_LIMIT documents (the page's has_more tells when
     * there are more); DBK_DOC_LIMIT_ALL: every match; 1..DBK_DOC_MAX_LIMIT:
     * that many. Anything else is DBK_EINVALID. */
    int64_t limit;
    /* Deprecated (removed in 0.3): when set, `limit` keeps its 0.1 meaning,
     * 0..DBK_DOC_MAX_LIMIT with 0 an empty page. (In 0.1 a find without it
     * returned every match; it now gets the default page: use
     * DBK_DOC_LIMIT_ALL for all.) */
    bool has_limit DBK_DEPRECATED("leave it false and use limit alone (0 default page, "
                                  "DBK_DOC_LIMIT_ALL every match)");
    int64_t skip;           /* >= 0 */
    bool with_total;        /* also count every match, ignoring skip/limit */
} dbk_doc_find_opts;

/* The version of dbk_doc_find_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_DOC_FIND_OPTS_VERSION 1
#define DBK_DOC_FIND_OPTS_INIT {.version = DBK_DOC_FIND_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_DOC_FIND_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_DOC_FIND_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_doc_find_opts_init(dbk_doc_find_opts *opts, unsigned int version,
                                      dbk_error *err);

/* A page of documents. */
typedef struct dbk_doc_page {
    dbk_doc **docs; /* count documents, owned by the page */
    size_t count;
    int64_t total; /* with_total: matches without skip/limit; else -1 */
    bool has_more; /* a limit cut the result: more documents match after this page */
} dbk_doc_page;

/* Finds documents. With with_total the page and the count are sent
 * together as one batch (PostgreSQL: one pipeline, one round trip; both
 * statements see the same snapshot inside a transaction, otherwise each
 * its own). A page of `limit` documents is read as limit + 1 so that
 * has_more is exact. A limit other than 0, DBK_DOC_LIMIT_ALL and
 * 1..DBK_DOC_MAX_LIMIT, or a negative skip, is DBK_EINVALID, as for the
 * relational repositories. On success `page` is
 * filled and owned by the caller: dbk_doc_page_free(). */
DBK_API dbk_rc dbk_doc_find(dbk_doc_coll *coll, const dbk_doc_find_opts *opts, dbk_doc_page *page,
                            dbk_error *err);

/* Frees the documents of a page and zeroes it. Accepts NULL. */
DBK_API void dbk_doc_page_free(dbk_doc_page *page);

/* Counts the documents matching `filter`. */
DBK_API dbk_rc dbk_doc_count(dbk_doc_coll *coll, const char *filter, int64_t *out,
                             dbk_error *err);

/* Applies `update` to the document with this id and returns the new
 * document in *out (may be NULL), as findByIdAndUpdate(id, u, {new: true}).
 * Read, changed and written in one transaction (PostgreSQL: the row is
 * locked FOR UPDATE, so concurrent $inc never lose a count). The result is
 * validated as on create (required fields may not be $unset; "_id" and the
 * created timestamp may not change); timestamps set updated_field.
 * DBK_ENOT_FOUND, DBK_EINVALID, DBK_EUNIQUE. */
DBK_API dbk_rc dbk_doc_find_by_id_and_update(dbk_doc_coll *coll, const char *id,
                                             const char *update, dbk_doc **out,
                                             dbk_error *err);

/* Deletes the document with this id and returns it in *out (may be NULL).
 * DBK_ENOT_FOUND when there is none. */
DBK_API dbk_rc dbk_doc_find_by_id_and_delete(dbk_doc_coll *coll, const char *id, dbk_doc **out,
                                             dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_DOC_H */
