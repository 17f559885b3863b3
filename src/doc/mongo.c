/*
 * The MongoDB backend of the document layer, over libmongoc.
 *
 * One dbk_doc_mongo owns a mongoc_client_pool_t; every operation pops a
 * client, runs, and pushes it back, so the pool bounds the connections
 * (maxPoolSize) the way dbk_pool does for SQL. The driver's SDAM
 * monitoring (server-changed and heartbeat-failed callbacks) becomes the
 * seed's connection events: connected, disconnected, error.
 *
 * Nothing a caller sends reaches the server unchecked: filters and sorts
 * go through the same compilers as for SQL (the SQL they write is thrown
 * away; what matters is that every path is declared and every value has
 * its field's type), then the filter is sent with the values of date and
 * object id fields rewritten to BSON types. Documents are built and
 * validated by the code shared with the relational backends (coll.c).
 *
 * BSON types. The layer's JSON form of a date is ISO-8601 text and of an
 * object id 24 hex digits, the same on every backend; on MongoDB the
 * declared DBK_DOC_DATE fields (timestamps included) are stored as UTC
 * datetimes and DBK_DOC_OBJECT_ID fields (and "_id" when the schema's
 * id_type says so) as ObjectIds, so $gt on a date, equality and $in on an
 * ObjectId and sorts are the server's own comparisons. The conversion
 * happens at this file's edge: outgoing JSON gets extended-JSON values
 * ({"$date": {"$numberLong": ms}}, {"$oid": hex}) at the declared paths,
 * which libbson turns into the types; incoming relaxed extended JSON has
 * every {"$date": ...} and {"$oid": ...} turned back into text (stored
 * keys never start with '$', so those objects can only be BSON values). A
 * datetime holds milliseconds: dates are cut to them before a write (the
 * caller gets back what was stored), and a filter's range bounds are
 * rounded the way that keeps the operator's meaning ($gt and $lte down,
 * $gte and $lt up). Documents an earlier dbkit wrote with strings read
 * back unchanged; by id they are found in either form. An update is checked
 * by applying it to the current document in C; what is sent is one
 * findAndModify whose $set carries the checked values, so concurrent $inc
 * are atomic on the server. A page and its total run at the same time on
 * two pooled clients (the seed's Promise.all); a limit of 0 sends no find,
 * because MongoDB reads limit 0 as "no limit".
 *
 * Built only when libmongoc is found (DBKIT_HAVE_MONGOC); otherwise the
 * public calls say DBK_ECONFIG.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/doc_int.h"

#ifndef DBKIT_HAVE_MONGOC

DBK_API bool dbk_doc_mongo_available(void)
{
    return false;
}

static dbk_rc no_mongo(dbk_error *err)
{
    dbk__err(err, DBK_ECONFIG, "this dbkit was built without the MongoDB backend");
    dbk__err_hint(err, "install libmongoc (Debian: libmongoc-dev) and rebuild");
    return DBK_ECONFIG;
}

DBK_API dbk_rc dbk_doc_mongo_open(const char *url, const dbk_doc_mongo_opts *opts,
                                  dbk_doc_mongo **out, dbk_error *err)
{
    (void)url, (void)opts;
    if (out)
        *out = NULL;
    return no_mongo(err);
}

DBK_API void dbk_doc_mongo_close(dbk_doc_mongo *m)
{
    (void)m;
}

DBK_API dbk_rc dbk_doc_coll_open_mongo(dbk_doc_mongo *m, const dbk_doc_schema *schema,
                                       dbk_doc_coll **out, dbk_error *err)
{
    (void)m, (void)schema;
    if (out)
        *out = NULL;
    return no_mongo(err);
}

#define STUB(decl, ...)                                                                         \
    decl                                                                                        \
    {                                                                                           \
        __VA_ARGS__;                                                                            \
        return no_mongo(err);                                                                   \
    }
STUB(dbk_rc dbk__mongo_insert(dbk_doc_coll *c, json_t *root, dbk_error *err), (void)c, (void)root)
STUB(dbk_rc dbk__mongo_get(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err),
     (void)c, (void)id, (void)out)
STUB(dbk_rc dbk__mongo_find(dbk_doc_coll *c, const dbk_doc_find_opts *o, json_t *proj,
                            dbk_doc_page *page, dbk_error *err),
     (void)c, (void)o, (void)proj, (void)page)
STUB(dbk_rc dbk__mongo_count(dbk_doc_coll *c, const char *filter, int64_t *out, dbk_error *err),
     (void)c, (void)filter, (void)out)
STUB(dbk_rc dbk__mongo_update(dbk_doc_coll *c, const char *id, json_t *upd, json_t **out,
                              dbk_error *err),
     (void)c, (void)id, (void)upd, (void)out)
STUB(dbk_rc dbk__mongo_delete(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err),
     (void)c, (void)id, (void)out)
STUB(dbk_rc dbk__mongo_ensure(dbk_doc_coll *c, dbk_error *err), (void)c)
STUB(dbk_rc dbk__mongo_drop(dbk_doc_coll *c, dbk_error *err), (void)c)

#else /* DBKIT_HAVE_MONGOC */

#include <mongoc/mongoc.h>

struct dbk_doc_mongo {
    mongoc_client_pool_t *pool;
    char dbname[128];
    dbk_doc_mongo_event_fn on_event;
    void *event_ctx;
    pthread_mutex_t mu;
    int known; /* servers currently known reachable */
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* libmongoc logs to stderr by default; dbkit never prints, so its lines go
 * to dbkit's log hook (driver debug and trace lines are dropped). */
static void driver_log(mongoc_log_level_t level, const char *domain, const char *message,
                       void *ctx)
{
    (void)ctx;
    if (level >= MONGOC_LOG_LEVEL_DEBUG)
        return;
    dbk_log_level l = level <= MONGOC_LOG_LEVEL_CRITICAL ? DBK_LOG_ERROR
                      : level == MONGOC_LOG_LEVEL_WARNING ? DBK_LOG_WARN
                                                          : DBK_LOG_INFO;
    if (dbk__log_enabled(l))
        dbk__log(l, "mongoc %s: %s", domain, message);
}

static void init_driver(void)
{
    mongoc_log_set_handler(driver_log, NULL);
    mongoc_init();
}

DBK_API bool dbk_doc_mongo_available(void)
{
    return true;
}

static void emit(dbk_doc_mongo *m, dbk_doc_mongo_event ev, const char *detail)
{
    if (m->on_event)
        m->on_event(m->event_ctx, ev, detail);
}

static void on_server_changed(const mongoc_apm_server_changed_t *e)
{
    dbk_doc_mongo *m = mongoc_apm_server_changed_get_context(e);
    const char *was = mongoc_server_description_type(mongoc_apm_server_changed_get_previous_description(e));
    const char *now = mongoc_server_description_type(mongoc_apm_server_changed_get_new_description(e));
    bool up_before = strcmp(was, "Unknown") != 0, up_now = strcmp(now, "Unknown") != 0;
    if (up_before == up_now)
        return;
    pthread_mutex_lock(&m->mu);
    m->known += up_now ? 1 : -1;
    pthread_mutex_unlock(&m->mu);
    emit(m, up_now ? DBK_DOC_MONGO_CONNECTED : DBK_DOC_MONGO_DISCONNECTED, now);
}

static void on_heartbeat_failed(const mongoc_apm_server_heartbeat_failed_t *e)
{
    dbk_doc_mongo *m = mongoc_apm_server_heartbeat_failed_get_context(e);
    bson_error_t be;
    mongoc_apm_server_heartbeat_failed_get_error(e, &be);
    emit(m, DBK_DOC_MONGO_ERROR, be.message);
}

DBK_API dbk_rc dbk_doc_mongo_open(const char *url, const dbk_doc_mongo_opts *opts,
                                  dbk_doc_mongo **out, dbk_error *err)
{
    if (!url || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_mongo_open: NULL argument");
    *out = NULL;
    pthread_once(&init_once, init_driver);
    bson_error_t be;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(url, &be);
    if (!uri) {
        char safe[256];
        dbk_redact_url(url, safe, sizeof safe);
        return dbk__err(err, DBK_ECONFIG, "not a MongoDB URL: %s", safe);
    }
    dbk_doc_mongo_opts o = {0};
    if (opts)
        o = *opts;
    if (o.max_pool_size > 0)
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_MAXPOOLSIZE, o.max_pool_size);
    if (o.server_selection_timeout_ms > 0)
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                       o.server_selection_timeout_ms);
    if (o.socket_timeout_ms > 0)
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, o.socket_timeout_ms);
    dbk_doc_mongo *m = calloc(1, sizeof *m);
    if (!m) {
        mongoc_uri_destroy(uri);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    const char *db = mongoc_uri_get_database(uri);
    snprintf(m->dbname, sizeof m->dbname, "%s", db && *db ? db : "test");
    m->on_event = o.on_event;
    m->event_ctx = o.event_ctx;
    pthread_mutex_init(&m->mu, NULL);
    m->pool = mongoc_client_pool_new(uri);
    mongoc_uri_destroy(uri);
    if (!m->pool) {
        pthread_mutex_destroy(&m->mu);
        free(m);
        return dbk__err(err, DBK_ECONFIG, "libmongoc refused the URL's options");
    }
    mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_apm_callbacks_t *cbs = mongoc_apm_callbacks_new();
    mongoc_apm_set_server_changed_cb(cbs, on_server_changed);
    mongoc_apm_set_server_heartbeat_failed_cb(cbs, on_heartbeat_failed);
    mongoc_client_pool_set_apm_callbacks(m->pool, cbs, m);
    mongoc_apm_callbacks_destroy(cbs);
    *out = m;
    return DBK_OK;
}

DBK_API void dbk_doc_mongo_close(dbk_doc_mongo *m)
{
    if (!m)
        return;
    mongoc_client_pool_destroy(m->pool);
    bool was_up = m->known > 0;
    if (was_up)
        emit(m, DBK_DOC_MONGO_DISCONNECTED, "closed");
    pthread_mutex_destroy(&m->mu);
    free(m);
}

DBK_API dbk_rc dbk_doc_coll_open_mongo(dbk_doc_mongo *m, const dbk_doc_schema *schema,
                                       dbk_doc_coll **out, dbk_error *err)
{
    if (!m || !schema || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_coll_open_mongo: NULL argument");
    *out = NULL;
    dbk_doc_coll *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    c->mongo = m;
    c->engine = DBK_ENGINE_SQLITE; /* only for the checking compile */
    dbk_rc rc = dbk__doc_schema_load(c, schema, err);
    if (rc) {
        free(c);
        return rc;
    }
    *out = c;
    return DBK_OK;
}

/* ---- plumbing ---- */

typedef struct session {
    mongoc_client_t *client;
    mongoc_collection_t *coll;
} session;

static void sess_open(dbk_doc_coll *c, session *s)
{
    s->client = mongoc_client_pool_pop(c->mongo->pool);
    s->coll = mongoc_client_get_collection(s->client, c->mongo->dbname, c->schema->collection);
}

static void sess_close(dbk_doc_coll *c, session *s)
{
    mongoc_collection_destroy(s->coll);
    mongoc_client_pool_push(c->mongo->pool, s->client);
}

/* Translates a driver error at this boundary. Duplicate keys name the
 * index's paths and never the value (the server's message quotes it). */
static dbk_rc mongo_error(const dbk_doc_coll *c, const bson_error_t *be, const char *what,
                          dbk_error *err)
{
    if (be->code == 11000 || be->code == 11001) {
        const char *ix = strstr(be->message, "index: ");
        char name[128] = "";
        if (ix) {
            ix += 7;
            size_t n = strcspn(ix, " ");
            snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), ix);
        }
        if (strcmp(name, "_id_") == 0) {
            dbk__err(err, DBK_EUNIQUE, "duplicate \"_id\" in \"%s\"", c->schema->collection);
            dbk__err_hint(err, "another document already has this _id");
        } else if (!dbk__doc_unique_error(c, name, err)) {
            dbk__err(err, DBK_EUNIQUE, "duplicate value for a unique field in \"%s\"",
                     c->schema->collection);
        }
        return DBK_EUNIQUE;
    }
    dbk_rc rc = DBK_ESQL;
    if (be->domain == MONGOC_ERROR_SERVER_SELECTION)
        rc = DBK_EUNAVAILABLE;
    else if (be->domain == MONGOC_ERROR_STREAM)
        rc = be->code == MONGOC_ERROR_STREAM_SOCKET ? DBK_ETIMEOUT : DBK_ECONN_LOST;
    else if (be->domain == MONGOC_ERROR_CLIENT && be->code == MONGOC_ERROR_CLIENT_AUTHENTICATE)
        rc = DBK_EAUTH;
    dbk__err(err, rc, "mongodb %s on \"%s\": %.300s", what, c->schema->collection, be->message);
    return rc;
}

static bson_t *to_bson(const json_t *v, dbk_error *err)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        dbk__err(err, DBK_ENOMEM, "out of memory");
        return NULL;
    }
    bson_error_t be;
    bson_t *b = bson_new_from_json((const uint8_t *)text, (ssize_t)strlen(text), &be);
    free(text);
    if (!b)
        dbk__err(err, DBK_EINVALID, "cannot convert to BSON: %s", be.message);
    return b;
}

/* ---- BSON types <-> the JSON form ---- */

/* Milliseconds of a date, rounded down or up. */
static int64_t usec_to_ms(int64_t usec, bool up)
{
    int64_t r = ((usec % 1000) + 1000) % 1000;
    int64_t ms = (usec - r) / 1000;
    return up && r ? ms + 1 : ms;
}

static json_t *ext_date(int64_t ms)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)ms);
    return json_pack("{s:{s:s}}", "$date", "$numberLong", buf);
}

/* The extended-JSON form of one value of type t (a date rounded `up` or
 * down), or NULL when v is not such a value (left as it is: validation
 * decided what may pass). */
static json_t *ext_value(dbk_doc_type t, json_t *v, bool up)
{
    if (!json_is_string(v))
        return NULL;
    if (t == DBK_DOC_DATE) {
        int64_t usec;
        if (dbk_timestamp_parse(json_string_value(v), json_string_length(v), &usec) != DBK_OK)
            return NULL;
        return ext_date(usec_to_ms(usec, up));
    }
    char oid[25];
    if (!dbk__doc_oid_norm(json_string_value(v), json_string_length(v), oid))
        return NULL;
    return json_pack("{s:s}", "$oid", oid);
}

static bool typed(dbk_doc_type t)
{
    return t == DBK_DOC_DATE || t == DBK_DOC_OBJECT_ID;
}

/* Replaces, in `v` (the value found at dotted path `prefix` of a document;
 * "" for the whole document), every value of a declared date or object id
 * field by its extended-JSON form. *v may be replaced. */
static dbk_rc to_ext(const dbk_doc_coll *c, const char *prefix, json_t **v, dbk_error *err)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i <= c->nfields; i++) {
        const char *path;
        dbk_doc_type t;
        if (i == c->nfields) {
            if (dbk__doc_id_type(c) != DBK_DOC_OBJECT_ID)
                break;
            path = "_id", t = DBK_DOC_OBJECT_ID;
        } else {
            path = c->fields[i].path, t = c->fields[i].type;
        }
        if (!typed(t))
            continue;
        const char *sub;
        if (plen == 0)
            sub = path;
        else if (strcmp(path, prefix) == 0)
            sub = "";
        else if (strncmp(path, prefix, plen) == 0 && path[plen] == '.')
            sub = path + plen + 1;
        else
            continue;
        if (!*sub) {
            json_t *e = ext_value(t, *v, false);
            if (e) {
                json_decref(*v);
                *v = e;
            }
            continue;
        }
        json_t *e = ext_value(t, dbk__doc_path_get(*v, sub), false);
        dbk_rc rc;
        if (e && (rc = dbk__doc_path_set(*v, sub, e, err)) != DBK_OK)
            return rc;
    }
    return DBK_OK;
}

/* Cuts the dates of a document to milliseconds, in place. */
static void dates_to_ms(const dbk_doc_coll *c, json_t *root)
{
    for (size_t i = 0; i < c->nfields; i++) {
        if (c->fields[i].type != DBK_DOC_DATE)
            continue;
        json_t *v = dbk__doc_path_get(root, c->fields[i].path);
        int64_t usec;
        if (json_is_string(v) &&
            dbk_timestamp_parse(json_string_value(v), json_string_length(v), &usec) == DBK_OK) {
            char buf[40];
            dbk__doc_date_format(usec_to_ms(usec, false) * 1000, buf);
            json_string_set(v, buf);
        }
    }
}

/* The JSON form of a {"$date": ...} or {"$oid": ...} object of relaxed
 * extended JSON; NULL for any other value. */
static json_t *plain_value(json_t *v)
{
    if (!json_is_object(v) || json_object_size(v) != 1)
        return NULL;
    json_t *x;
    if ((x = json_object_get(v, "$oid")) != NULL)
        return json_is_string(x) ? json_string(json_string_value(x)) : NULL;
    if ((x = json_object_get(v, "$date")) == NULL)
        return NULL;
    int64_t usec;
    if (json_is_string(x)) { /* years 1970..9999: ISO-8601 with milliseconds */
        if (dbk_timestamp_parse(json_string_value(x), json_string_length(x), &usec) != DBK_OK)
            return NULL;
    } else { /* {"$numberLong": "ms"} */
        const char *n = json_string_value(json_object_get(x, "$numberLong"));
        char *end;
        if (!n)
            return NULL;
        long long ms = strtoll(n, &end, 10);
        if (*end || ms < -62135596800000LL || ms > 253402300799999LL)
            return NULL; /* outside years 1..9999: left as extended JSON */
        usec = (int64_t)ms * 1000;
    }
    char buf[40];
    dbk__doc_date_format(usec, buf);
    return json_string(buf);
}

/* Turns the BSON-typed values of a document from MongoDB back into text. */
static void from_ext(json_t *v)
{
    if (json_is_object(v)) {
        const char *key;
        json_t *m;
        json_object_foreach(v, key, m)
        {
            json_t *p = plain_value(m);
            if (p)
                json_object_set_new(v, key, p);
            else
                from_ext(m);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            json_t *p = plain_value(m);
            if (p)
                json_array_set_new(v, i, p);
            else
                from_ext(m);
        }
    }
}

static dbk_rc from_bson(const bson_t *b, json_t **out, dbk_error *err)
{
    size_t len;
    char *text = bson_as_relaxed_extended_json(b, &len);
    if (!text)
        return dbk__err(err, DBK_EINTERNAL, "a document from MongoDB does not convert to JSON");
    json_error_t je;
    *out = json_loadb(text, len, 0, &je);
    bson_free(text);
    if (!*out)
        return dbk__err(err, DBK_EINTERNAL, "a document from MongoDB does not parse: %s", je.text);
    from_ext(*out);
    return DBK_OK;
}

/* A document as BSON with its typed fields as BSON types. */
static bson_t *doc_bson(const dbk_doc_coll *c, json_t *root, dbk_error *err)
{
    json_t *copy = json_deep_copy(root);
    if (!copy) {
        dbk__err(err, DBK_ENOMEM, "out of memory");
        return NULL;
    }
    bson_t *b = NULL;
    if (to_ext(c, "", &copy, err) == DBK_OK)
        b = to_bson(copy, err);
    json_decref(copy);
    return b;
}

/* The query of one document by id: on an object id collection the
 * ObjectId or, for documents written before ids were ObjectIds, the same
 * hex digits as a string. */
static void id_query(const dbk_doc_coll *c, const char *id, bson_t *q)
{
    bson_oid_t oid;
    if (dbk__doc_id_type(c) == DBK_DOC_OBJECT_ID && bson_oid_is_valid(id, strlen(id))) {
        bson_oid_init_from_string(&oid, id);
        bson_t in, arr;
        BSON_APPEND_DOCUMENT_BEGIN(q, "_id", &in);
        BSON_APPEND_ARRAY_BEGIN(&in, "$in", &arr);
        BSON_APPEND_OID(&arr, "0", &oid);
        BSON_APPEND_UTF8(&arr, "1", id);
        bson_append_array_end(&in, &arr);
        bson_append_document_end(q, &in);
        return;
    }
    BSON_APPEND_UTF8(q, "_id", id);
}

/* Rewrites the values of date and object id fields in a checked filter to
 * extended JSON; range bounds on dates rounded to keep their meaning. */
static void filter_ext(const dbk_doc_coll *c, json_t *filter)
{
    const char *key;
    json_t *v;
    json_object_foreach(filter, key, v)
    {
        if (strcmp(key, "$and") == 0 || strcmp(key, "$or") == 0) {
            size_t i;
            json_t *m;
            json_array_foreach(v, i, m) filter_ext(c, m);
            continue;
        }
        dbk_doc_type t;
        if (strcmp(key, "_id") == 0) {
            t = dbk__doc_id_type(c);
        } else {
            const dbk__doc_field *f = dbk__doc_field_find(c, key, NULL);
            t = f ? f->type : 0;
        }
        if (!typed(t))
            continue;
        json_t *e;
        if (!json_is_object(v)) {
            if ((e = ext_value(t, v, false)) != NULL)
                json_object_set_new(filter, key, e);
            continue;
        }
        const char *op;
        json_t *ov;
        json_object_foreach(v, op, ov)
        {
            if (json_is_array(ov)) { /* $in */
                size_t i;
                json_t *m;
                json_array_foreach(ov, i, m)
                {
                    if ((e = ext_value(t, m, false)) != NULL)
                        json_array_set_new(ov, i, e);
                }
                continue;
            }
            bool up = strcmp(op, "$gte") == 0 || strcmp(op, "$lt") == 0;
            if ((e = ext_value(t, ov, up)) != NULL)
                json_object_set_new(v, op, e);
        }
    }
}

/* Checks a filter with the SQL compiler and returns it as BSON. */
static dbk_rc filter_bson(dbk_doc_coll *c, const char *filter, bson_t **out, dbk_error *err)
{
    *out = NULL;
    dbk__sb sql = {0};
    dbk__params params = {0};
    json_t *tree = NULL;
    dbk_rc rc = dbk__doc_filter_compile(c, filter, &sql, &params, &tree, err);
    dbk__params_free(&params);
    dbk__sb_free(&sql);
    if (rc == DBK_OK) {
        if (!tree) {
            *out = bson_new();
        } else {
            filter_ext(c, tree);
            *out = to_bson(tree, err);
            if (!*out)
                rc = err ? err->code : DBK_EINVALID;
        }
    }
    json_decref(tree);
    return rc;
}

/* ---- operations ---- */

dbk_rc dbk__mongo_insert(dbk_doc_coll *c, json_t *root, dbk_error *err)
{
    dates_to_ms(c, root);
    bson_t *b = doc_bson(c, root, err);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    session s;
    sess_open(c, &s);
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_insert_one(s.coll, b, NULL, NULL, &be))
        rc = mongo_error(c, &be, "insert", err);
    sess_close(c, &s);
    bson_destroy(b);
    return rc;
}

dbk_rc dbk__mongo_count(dbk_doc_coll *c, const char *filter, int64_t *out, dbk_error *err)
{
    bson_t *f;
    dbk_rc rc = filter_bson(c, filter, &f, err);
    if (rc)
        return rc;
    session s;
    sess_open(c, &s);
    bson_error_t be;
    int64_t n = mongoc_collection_count_documents(s.coll, f, NULL, NULL, NULL, &be);
    if (n < 0)
        rc = mongo_error(c, &be, "count", err);
    else
        *out = n;
    sess_close(c, &s);
    bson_destroy(f);
    return rc;
}

typedef struct count_job {
    dbk_doc_coll *c;
    const bson_t *filter;
    int64_t n;
    bson_error_t be;
} count_job;

static void *count_thread(void *arg)
{
    count_job *j = arg;
    session s;
    sess_open(j->c, &s);
    j->n = mongoc_collection_count_documents(s.coll, j->filter, NULL, NULL, NULL, &j->be);
    sess_close(j->c, &s);
    return NULL;
}

static dbk_rc sort_bson(dbk_doc_coll *c, const char *sort, bson_t *opts, dbk_error *err)
{
    dbk__sb sql = {0};
    dbk_rc rc = dbk__doc_sort_compile(c, sort, &sql, err); /* checks paths and directions */
    dbk__sb_free(&sql);
    if (rc)
        return rc;
    json_t *tree = NULL;
    if (sort && *sort) {
        json_error_t je;
        tree = json_loads(sort, 0, &je);
    } else {
        tree = json_object();
    }
    if (!tree)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    if (!json_object_get(tree, "_id"))
        json_object_set_new(tree, "_id", json_integer(1));
    bson_t *b = to_bson(tree, err);
    json_decref(tree);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    BSON_APPEND_DOCUMENT(opts, "sort", b);
    bson_destroy(b);
    return DBK_OK;
}

dbk_rc dbk__mongo_find(dbk_doc_coll *c, const dbk_doc_find_opts *o, json_t *proj,
                       dbk_doc_page *page, dbk_error *err)
{
    bson_t *f;
    dbk_rc rc = filter_bson(c, o->filter, &f, err);
    if (rc)
        return rc;
    bson_t opts = BSON_INITIALIZER;
    if ((rc = sort_bson(c, o->sort, &opts, err)) != DBK_OK) {
        bson_destroy(&opts);
        bson_destroy(f);
        return rc;
    }
    if (o->skip > 0)
        BSON_APPEND_INT64(&opts, "skip", o->skip);
    if (o->has_limit && o->limit > 0)
        BSON_APPEND_INT64(&opts, "limit", o->limit);
    count_job job = {c, f, -1, {0}};
    pthread_t th;
    bool counting = false;
    if (o->with_total)
        counting = pthread_create(&th, NULL, count_thread, &job) == 0;
    if (o->with_total && !counting)
        count_thread(&job); /* no thread: one after the other */
    size_t cap = 0;
    if (!(o->has_limit && o->limit == 0)) {
        session s;
        sess_open(c, &s);
        mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s.coll, f, &opts, NULL);
        const bson_t *bd;
        while (rc == DBK_OK && mongoc_cursor_next(cur, &bd)) {
            json_t *root;
            if ((rc = from_bson(bd, &root, err)) != DBK_OK)
                break;
            if (proj && (rc = dbk__doc_project(c, proj, &root, err)) != DBK_OK)
                break;
            if (page->count == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                dbk_doc **nd = realloc(page->docs, ncap * sizeof *nd);
                if (!nd) {
                    json_decref(root);
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                    break;
                }
                page->docs = nd;
                cap = ncap;
            }
            if ((rc = dbk__doc_wrap(root, &page->docs[page->count], err)) != DBK_OK)
                break;
            page->count++;
        }
        bson_error_t be;
        if (rc == DBK_OK && mongoc_cursor_error(cur, &be))
            rc = mongo_error(c, &be, "find", err);
        mongoc_cursor_destroy(cur);
        sess_close(c, &s);
    }
    if (counting)
        pthread_join(th, NULL);
    if (rc == DBK_OK && o->with_total) {
        if (job.n < 0)
            rc = mongo_error(c, &job.be, "count", err);
        else
            page->total = job.n;
    }
    bson_destroy(&opts);
    bson_destroy(f);
    return rc;
}

static dbk_rc reply_value(const dbk_doc_coll *c, const bson_t *reply, json_t **out,
                          dbk_error *err)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, reply, "value") || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                        c->schema->collection);
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(&it, &len, &data);
    bson_t doc;
    if (!bson_init_static(&doc, data, len))
        return dbk__err(err, DBK_EINTERNAL, "malformed reply from MongoDB");
    return from_bson(&doc, out, err);
}

/* Reads the current document (ENOT_FOUND when none). */
static dbk_rc get_by_id(dbk_doc_coll *c, session *s, const char *id, json_t **out,
                        dbk_error *err)
{
    bson_t q = BSON_INITIALIZER;
    id_query(c, id, &q);
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_INT64(&opts, "limit", 1);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s->coll, &q, &opts, NULL);
    const bson_t *bd;
    dbk_rc rc;
    bson_error_t be;
    if (mongoc_cursor_next(cur, &bd))
        rc = from_bson(bd, out, err);
    else if (mongoc_cursor_error(cur, &be))
        rc = mongo_error(c, &be, "find", err);
    else
        rc = dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                      c->schema->collection);
    mongoc_cursor_destroy(cur);
    bson_destroy(&opts);
    bson_destroy(&q);
    return rc;
}

dbk_rc dbk__mongo_get(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err)
{
    *out = NULL;
    session s;
    sess_open(c, &s);
    dbk_rc rc = get_by_id(c, &s, id, out, err);
    sess_close(c, &s);
    return rc;
}

/* The update sent to the server: $set of the checked values of every set
 * path and of the updated timestamp, $unset, $inc as given. */
/* set[path] = a copy of v with its typed fields in extended JSON. */
static dbk_rc set_typed(const dbk_doc_coll *c, json_t *set, const char *path, json_t *v,
                        dbk_error *err)
{
    json_t *copy = json_deep_copy(v);
    if (!copy)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    dbk_rc rc = to_ext(c, path, &copy, err);
    if (rc == DBK_OK && json_object_set_new(set, path, copy) != 0)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    if (rc != DBK_OK)
        json_decref(copy);
    return rc;
}

static dbk_rc server_update(const dbk_doc_coll *c, json_t *upd, json_t *checked, json_t **out,
                            dbk_error *err)
{
    dbk_rc rc;
    json_t *set = json_object(), *u = json_object();
    if (!set || !u)
        goto oom;
    bool ops = json_object_size(upd) > 0 && json_object_iter_key(json_object_iter(upd))[0] == '$';
    const char *key;
    json_t *v;
    json_t *setsrc = ops ? json_object_get(upd, "$set") : upd;
    if (setsrc) {
        json_object_foreach(setsrc, key, v)
        {
            json_t *cv = dbk__doc_path_get(checked, key);
            if ((rc = set_typed(c, set, key, cv ? cv : v, err)) != DBK_OK)
                goto fail;
        }
    }
    if (c->updated &&
        (rc = set_typed(c, set, c->updated, dbk__doc_path_get(checked, c->updated), err)) != DBK_OK)
        goto fail;
    if (json_object_size(set) && json_object_set(u, "$set", set) != 0)
        goto oom;
    if (ops) {
        json_t *x;
        if ((x = json_object_get(upd, "$unset")) && json_object_set(u, "$unset", x) != 0)
            goto oom;
        if ((x = json_object_get(upd, "$inc")) && json_object_set(u, "$inc", x) != 0)
            goto oom;
    }
    json_decref(set);
    *out = u;
    return DBK_OK;
oom:
    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
fail:
    json_decref(set);
    json_decref(u);
    return rc;
}

dbk_rc dbk__mongo_update(dbk_doc_coll *c, const char *id, json_t *upd, json_t **out,
                         dbk_error *err)
{
    *out = NULL;
    session s;
    sess_open(c, &s);
    json_t *cur = NULL, *su = NULL;
    bson_t *bu = NULL;
    dbk_rc rc = get_by_id(c, &s, id, &cur, err);
    if (rc)
        goto done;
    if ((rc = dbk__doc_apply_update(c, cur, upd, err)) != DBK_OK)
        goto done;
    if (c->updated) {
        char ts[40];
        dbk__doc_date_format(dbk__doc_now_usec(), ts);
        if ((rc = dbk__doc_path_set(cur, c->updated, json_string(ts), err)) != DBK_OK)
            goto done;
    }
    if ((rc = dbk__doc_check(c, cur, err)) != DBK_OK)
        goto done;
    if ((rc = server_update(c, upd, cur, &su, err)) != DBK_OK)
        goto done;
    if (!(bu = to_bson(su, err))) {
        rc = err ? err->code : DBK_EINVALID;
        goto done;
    }
    bson_t q = BSON_INITIALIZER;
    id_query(c, id, &q);
    mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_update(fam, bu);
    mongoc_find_and_modify_opts_set_flags(fam, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    bson_t reply;
    bson_error_t be;
    if (!mongoc_collection_find_and_modify_with_opts(s.coll, &q, fam, &reply, &be))
        rc = mongo_error(c, &be, "findAndModify", err);
    else
        rc = reply_value(c, &reply, out, err);
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(fam);
    bson_destroy(&q);
done:
    sess_close(c, &s);
    if (bu)
        bson_destroy(bu);
    json_decref(su);
    json_decref(cur);
    return rc;
}

dbk_rc dbk__mongo_delete(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err)
{
    *out = NULL;
    session s;
    sess_open(c, &s);
    bson_t q = BSON_INITIALIZER;
    id_query(c, id, &q);
    mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_flags(fam, MONGOC_FIND_AND_MODIFY_REMOVE);
    bson_t reply;
    bson_error_t be;
    dbk_rc rc;
    if (!mongoc_collection_find_and_modify_with_opts(s.coll, &q, fam, &reply, &be))
        rc = mongo_error(c, &be, "findAndModify", err);
    else
        rc = reply_value(c, &reply, out, err);
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(fam);
    bson_destroy(&q);
    sess_close(c, &s);
    return rc;
}

dbk_rc dbk__mongo_ensure(dbk_doc_coll *c, dbk_error *err)
{
    size_t n = dbk__doc_nindexes(c);
    if (n == 0)
        return DBK_OK;
    json_t *cmd = json_object(), *list = json_array();
    if (!cmd || !list) {
        json_decref(cmd);
        json_decref(list);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    json_object_set_new(cmd, "createIndexes", json_string(c->schema->collection));
    for (size_t i = 0; i < n; i++) {
        char name[128];
        const char *keys;
        bool unique;
        dbk__doc_index_get(c, i, name, sizeof name, &keys, &unique);
        json_t *key = json_object(), *ix = json_object();
        char path[128];
        for (const char *p = keys; *p;) {
            const char *comma = strchr(p, ',');
            bool desc = *p == '-';
            if (desc)
                p++;
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            snprintf(path, sizeof path, "%.*s", (int)len, p);
            json_object_set_new(key, path, json_integer(desc ? -1 : 1));
            p += len + (comma ? 1 : 0);
        }
        json_object_set_new(ix, "key", key);
        json_object_set_new(ix, "name", json_string(name));
        if (unique)
            json_object_set_new(ix, "unique", json_true());
        json_array_append_new(list, ix);
    }
    json_object_set_new(cmd, "indexes", list);
    bson_t *b = to_bson(cmd, err);
    json_decref(cmd);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    session s;
    sess_open(c, &s);
    bson_t reply;
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_command_simple(s.coll, b, NULL, &reply, &be))
        rc = mongo_error(c, &be, "createIndexes", err);
    bson_destroy(&reply);
    sess_close(c, &s);
    bson_destroy(b);
    return rc;
}

dbk_rc dbk__mongo_drop(dbk_doc_coll *c, dbk_error *err)
{
    session s;
    sess_open(c, &s);
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_drop_with_opts(s.coll, NULL, &be) && be.code != 26 &&
        !strstr(be.message, "ns not found"))
        rc = mongo_error(c, &be, "drop", err);
    sess_close(c, &s);
    return rc;
}

#endif /* DBKIT_HAVE_MONGOC */
