/*
 * What the three files of the MongoDB backend share (mongo.c: the client,
 * sessions and errors; mongo_bson.c: JSON <-> BSON; mongo_ops.c: the
 * operations). Only they include it, and only when libmongoc is there
 * (DBKIT_HAVE_MONGOC): the rest of the document layer sees the backend
 * through the dbk__mongo_* operations of doc_int.h, without libmongoc's
 * headers.
 */
#ifndef DBK_DOC_MONGO_INT_H
#define DBK_DOC_MONGO_INT_H

#include <pthread.h>

#include <mongoc/mongoc.h>

#include "doc/doc_int.h"

struct dbk_doc_mongo {
    mongoc_client_pool_t *pool;
    char dbname[128];
    dbk_doc_mongo_event_fn on_event;
    void *event_ctx;
    pthread_mutex_t mu;
    int known; /* servers currently known reachable */
};

/* ---- the client (mongo.c) ---- */

/* One pooled client and the collection's handle on it, for one operation. */
typedef struct dbk__mongo_session {
    mongoc_client_t *client;
    mongoc_collection_t *coll;
} dbk__mongo_session;

/* Pops a client from the pool (waits for one while maxPoolSize are out). */
void dbk__mongo_sess_open(dbk_doc_coll *c, dbk__mongo_session *s);
/* Pushes it back. */
void dbk__mongo_sess_close(dbk_doc_coll *c, dbk__mongo_session *s);

/* Translates a driver error into err and returns its code; `what` names the
 * command ("insert", "find", ...). Duplicate keys name the index's paths and
 * never the value. */
dbk_rc dbk__mongo_error(const dbk_doc_coll *c, const bson_error_t *be, const char *what,
                        dbk_error *err);

/* ---- JSON <-> BSON (mongo_bson.c) ---- */

/* A JSON value (extended JSON for BSON types) as new BSON; NULL with err
 * set (DBK_ENOMEM, DBK_EINVALID). */
bson_t *dbk__mongo_to_bson(const json_t *v, dbk_error *err);

/* Replaces, in `v` (the value found at dotted path `prefix` of a document;
 * "" for the whole document), every value of a declared date or object id
 * field by its extended-JSON form. *v may be replaced. */
dbk_rc dbk__mongo_to_ext(const dbk_doc_coll *c, const char *prefix, json_t **v, dbk_error *err);

/* Cuts the dates of a document to milliseconds, in place. */
void dbk__mongo_dates_to_ms(const dbk_doc_coll *c, json_t *root);

/* A document from MongoDB in the layer's JSON form (dates and object ids
 * as text); *out is new. */
dbk_rc dbk__mongo_from_bson(const bson_t *b, json_t **out, dbk_error *err);

/* A document as BSON with its typed fields as BSON types (root unchanged). */
bson_t *dbk__mongo_doc_bson(const dbk_doc_coll *c, json_t *root, dbk_error *err);

/* Appends the query of one document by id to q: on an object id collection
 * the ObjectId or the same hex digits as a string. */
void dbk__mongo_id_query(const dbk_doc_coll *c, const char *id, bson_t *q);

/* Checks a filter with the SQL compiler and returns it as new BSON, its
 * date and object id values as BSON types. */
dbk_rc dbk__mongo_filter_bson(dbk_doc_coll *c, const char *filter, bson_t **out,
                              dbk_error *err);

/* Checks a sort with the SQL compiler and appends it ("_id" last) to opts. */
dbk_rc dbk__mongo_sort_bson(dbk_doc_coll *c, const char *sort, bson_t *opts, dbk_error *err);

#endif
