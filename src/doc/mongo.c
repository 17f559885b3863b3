/*
 * The MongoDB backend of the document layer, over libmongoc: the client.
 *
 * One dbk_doc_mongo owns a mongoc_client_pool_t; every operation pops a
 * client, runs, and pushes it back, so the pool bounds the connections
 * (maxPoolSize) the way dbk_pool does for SQL. The URL's options and
 * dbk_doc_mongo_opts (pool size, server selection and socket timeouts) are
 * set on the mongoc_uri_t before the pool is made. The driver's SDAM
 * monitoring (server-changed and heartbeat-failed callbacks) becomes the
 * seed's connection events: connected, disconnected, error. Driver errors
 * become dbk_rc here, at one place, for every operation.
 *
 * The backend is three files behind mongo_int.h, one concern each: this
 * one (the client, its pool, sessions, events and errors), mongo_bson.c
 * (documents and filter values between the layer's JSON form and BSON
 * types) and mongo_ops.c (the operations coll.c calls).
 *
 * Built only when libmongoc is found (DBKIT_HAVE_MONGOC); otherwise this
 * file alone provides the public calls and the operations, which say
 * DBK_ECONFIG.
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
    if (opts &&
        dbk__opts_check(opts->version, DBK_DOC_MONGO_OPTS_VERSION, "dbk_doc_mongo_opts", err))
        return DBK_EMISUSE;
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

#include "doc/mongo_int.h"

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
    emit(m, up_now ? DBK_DOC_MONGO_EVENT_CONNECTED : DBK_DOC_MONGO_EVENT_DISCONNECTED, now);
}

static void on_heartbeat_failed(const mongoc_apm_server_heartbeat_failed_t *e)
{
    dbk_doc_mongo *m = mongoc_apm_server_heartbeat_failed_get_context(e);
    bson_error_t be;
    mongoc_apm_server_heartbeat_failed_get_error(e, &be);
    emit(m, DBK_DOC_MONGO_EVENT_ERROR, be.message);
}

DBK_API dbk_rc dbk_doc_mongo_open(const char *url, const dbk_doc_mongo_opts *opts,
                                  dbk_doc_mongo **out, dbk_error *err)
{
    if (!url || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_mongo_open: NULL argument");
    *out = NULL;
    if (opts &&
        dbk__opts_check(opts->version, DBK_DOC_MONGO_OPTS_VERSION, "dbk_doc_mongo_opts", err))
        return DBK_EMISUSE;
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
        emit(m, DBK_DOC_MONGO_EVENT_DISCONNECTED, "closed");
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

/* ---- sessions, errors ---- */

void dbk__mongo_sess_open(dbk_doc_coll *c, dbk__mongo_session *s)
{
    s->client = mongoc_client_pool_pop(c->mongo->pool);
    s->coll = mongoc_client_get_collection(s->client, c->mongo->dbname, c->schema->collection);
}

void dbk__mongo_sess_close(dbk_doc_coll *c, dbk__mongo_session *s)
{
    mongoc_collection_destroy(s->coll);
    mongoc_client_pool_push(c->mongo->pool, s->client);
}

/* Translates a driver error at this boundary. Duplicate keys name the
 * index's paths and never the value (the server's message quotes it). */
dbk_rc dbk__mongo_error(const dbk_doc_coll *c, const bson_error_t *be, const char *what,
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

#endif /* DBKIT_HAVE_MONGOC */
