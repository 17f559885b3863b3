/*
 * The document repository over the relational engines: create, find by
 * id, find one, find with sort / skip / limit / projection and a total,
 * count, find-and-update and find-and-delete, each as one or two
 * statements through the collection's dbk_db.
 *
 * Everything goes through the executor on purpose: a pool checks a
 * connection out per call, a transaction's executor keeps the calls on its
 * connection, and the observer sees every statement, so the query log,
 * slow log and N+1 detector work for documents as for rows. A page with
 * its total is one dbk_batch of two statements (one PostgreSQL pipeline),
 * the C form of the seed's Promise.all([find(), countDocuments()]).
 *
 * An update is read-modify-write inside dbk_tx_run (the row locked
 * FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE serializes writers):
 * the operators are applied in C with jansson and the result is validated
 * by the same dbk__doc_check as a create, so no update can store what
 * create would refuse, and concurrent $inc never lose a count. Projections
 * are applied in C to the fetched documents (one code path for every
 * engine; the table stores whole documents anyway).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "dbkit/batch.h"
#include "dbkit/tx.h"
#include "doc/doc_int.h"

/* ---- object ids ---- */

static atomic_uint oid_counter;
static atomic_ullong oid_random; /* 40 random bits, set once (0: not yet) */

static void oid_new(char out[25])
{
    unsigned long long rnd = atomic_load(&oid_random);
    if (!rnd) {
        unsigned long long r = 0;
        unsigned int c = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (unsigned long long)time(NULL) * 2654435761ull;
        if (getrandom(&c, sizeof c, 0) != (ssize_t)sizeof c)
            c = (unsigned int)r;
        r = (r & 0xffffffffffull) | 1ull << 40; /* never 0 */
        unsigned long long expect = 0;
        if (atomic_compare_exchange_strong(&oid_random, &expect, r))
            atomic_store(&oid_counter, c);
        rnd = atomic_load(&oid_random);
    }
    unsigned int cnt = atomic_fetch_add(&oid_counter, 1u) & 0xffffffu;
    unsigned int secs = (unsigned int)time(NULL);
    snprintf(out, 25, "%08x%010llx%06x", secs, rnd & 0xffffffffffull, cnt);
}

int64_t dbk__doc_now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The document parameter ($2) of INSERT and UPDATE, read as the engine's
 * JSON column type, into buf. */
static const char *doc_param(const dbk_doc_coll *c, char *buf, size_t len)
{
    dbk__sb sb = dbk__sb_over(buf, len);
    dbk__doc_dialect(c)->placeholder(&sb, 2, "jsonb");
    return buf;
}

/* ---- open / close ---- */

DBK_API dbk_rc dbk_doc_coll_open(dbk_db *db, const dbk_doc_schema *schema, dbk_doc_coll **out,
                                 dbk_error *err)
{
    if (!db || !schema || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_coll_open: NULL argument");
    *out = NULL;
    dbk_doc_coll *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    c->db = db;
    c->engine = dbk_db_engine(db);
    const dbk__dialect *dia = dbk__dialect_find(c->engine);
    if (!dia || !dia->doc_backend) {
        free(c);
        return dbk__err(err, DBK_ECONFIG, "no document backend for this executor's engine");
    }
    dbk_rc rc = dbk__doc_schema_load(c, schema, err);
    if (rc) {
        free(c);
        return rc;
    }
    /* collection names are [a-z_][a-z0-9_]*, at most 48 bytes: these fit */
    char param[16];
    snprintf(c->sql_insert, sizeof c->sql_insert, "INSERT INTO \"%s\" (id, doc) VALUES ($1, %s)",
             schema->collection, doc_param(c, param, sizeof param));
    snprintf(c->sql_find, sizeof c->sql_find, "SELECT doc FROM \"%s\" WHERE id = $1",
             schema->collection);
    *out = c;
    return DBK_OK;
}

DBK_API void dbk_doc_coll_close(dbk_doc_coll *coll)
{
    if (!coll)
        return;
    dbk__doc_schema_unload(coll);
    free(coll);
}

DBK_API dbk_rc dbk_doc_coll_ensure(dbk_doc_coll *coll, dbk_error *err)
{
    if (!coll)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_coll_ensure: NULL collection");
    if (coll->mongo)
        return dbk__mongo_ensure(coll, err);
    char *sql;
    dbk_rc rc = dbk_doc_migration_sql(coll->schema, coll->engine, &sql, err);
    if (rc)
        return rc;
    rc = dbk_db_exec_script(coll->db, sql, err);
    free(sql);
    return rc;
}

DBK_API dbk_rc dbk_doc_coll_drop(dbk_doc_coll *coll, dbk_error *err)
{
    if (!coll)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_coll_drop: NULL collection");
    if (coll->mongo)
        return dbk__mongo_drop(coll, err);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS \"%s\"", coll->schema->collection);
    return dbk_db_exec(coll->db, sql, NULL, 0, NULL, err);
}

DBK_API dbk_rc dbk_doc_validate(const dbk_doc_coll *coll, const char *json, size_t len,
                                dbk_error *err)
{
    if (!coll)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_validate: NULL collection");
    json_t *root;
    dbk_rc rc = dbk__doc_json_parse(json, len, "document", &root, err);
    if (rc)
        return rc;
    rc = dbk__doc_check(coll, root, err);
    json_decref(root);
    return rc;
}

/* ---- helpers ---- */

dbk_rc dbk__doc_wrap(json_t *root, dbk_doc **out, dbk_error *err)
{
    if (!out) {
        json_decref(root);
        return DBK_OK;
    }
    *out = malloc(sizeof **out);
    if (!*out) {
        json_decref(root);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    (*out)->root = root;
    return DBK_OK;
}

/* Row r's column 0 parsed as a document. */
static dbk_rc row_doc(const dbk_result *res, size_t r, json_t **out, dbk_error *err)
{
    const char *text;
    size_t len;
    dbk_rc rc = dbk_result_get_text(res, r, 0, &text, &len, err);
    if (rc)
        return rc;
    json_error_t je;
    *out = json_loadb(text, len, 0, &je);
    if (!*out || !json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return dbk__err(err, DBK_EINTERNAL, "a stored document does not parse: %s", je.text);
    }
    return DBK_OK;
}

bool dbk__doc_unique_error(const dbk_doc_coll *c, const char *index_name, dbk_error *err)
{
    size_t n = dbk__doc_nindexes(c);
    for (size_t i = 0; i < n; i++) {
        char name[128];
        const char *keys;
        bool unique;
        dbk__doc_index_get(c, i, name, sizeof name, &keys, &unique);
        if (unique && strcmp(name, index_name) == 0) {
            char cons[DBK_ERROR_NAME_MAX];
            snprintf(cons, sizeof cons, "%.63s", name);
            dbk__err(err, DBK_EUNIQUE, "duplicate value for unique \"%.200s\" in \"%s\"", keys,
                     c->schema->collection);
            if (err)
                snprintf(err->constraint_name, sizeof err->constraint_name, "%s", cons);
            dbk__err_hint(err, "another document already has this value");
            return true;
        }
    }
    return false;
}

/* Makes a unique violation name the paths of the index it hit. */
static dbk_rc unique_error(const dbk_doc_coll *c, dbk_rc rc, dbk_error *err)
{
    if (rc != DBK_EUNIQUE || !err)
        return rc;
    char cons[DBK_ERROR_NAME_MAX];
    snprintf(cons, sizeof cons, "%s", err->constraint_name);
    if (dbk__doc_unique_error(c, cons, err))
        return rc;
    if (strstr(cons, "pkey") || strstr(cons, ".id")) {
        dbk__err(err, DBK_EUNIQUE, "duplicate \"_id\" in \"%s\"", c->schema->collection);
        dbk__err_hint(err, "another document already has this _id");
    }
    return rc;
}

/* ---- create ---- */

dbk_rc dbk__doc_prepare_create(const dbk_doc_coll *coll, const char *json, size_t len,
                               json_t **out, dbk_error *err)
{
    *out = NULL;
    json_t *root;
    dbk_rc rc = dbk__doc_json_parse(json, len, "document", &root, err);
    if (rc)
        return rc;
    char oid[25];
    if (!json_object_get(root, "_id")) {
        oid_new(oid);
        if (json_object_set_new(root, "_id", json_string(oid)) != 0) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            goto fail;
        }
    }
    for (size_t i = 0; i < coll->nfields; i++) {
        const dbk__doc_field *f = &coll->fields[i];
        json_t *cur = dbk__doc_path_get(root, f->path);
        if (f->def && (!cur || json_is_null(cur)) &&
            (rc = dbk__doc_path_set(root, f->path, json_deep_copy(f->def), err)) != DBK_OK)
            goto fail;
    }
    if (coll->created) {
        char ts[40];
        dbk__doc_date_format(dbk__doc_now_usec(), ts);
        if ((rc = dbk__doc_path_set(root, coll->created, json_string(ts), err)) != DBK_OK ||
            (rc = dbk__doc_path_set(root, coll->updated, json_string(ts), err)) != DBK_OK)
            goto fail;
    }
    if ((rc = dbk__doc_check(coll, root, err)) != DBK_OK)
        goto fail;
    *out = root;
    return DBK_OK;
fail:
    json_decref(root);
    return rc;
}

DBK_API dbk_rc dbk_doc_create(dbk_doc_coll *coll, const char *json, size_t len, dbk_doc **out,
                              dbk_error *err)
{
    if (out)
        *out = NULL;
    if (!coll)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_create: NULL collection");
    json_t *root;
    dbk_rc rc = dbk__doc_prepare_create(coll, json, len, &root, err);
    if (rc)
        return rc;
    if (coll->mongo) {
        if ((rc = dbk__mongo_insert(coll, root, err)) != DBK_OK)
            goto out_root;
        return dbk__doc_wrap(root, out, err);
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto out_root;
    }
    dbk_value p[2] = {dbk_text(json_string_value(json_object_get(root, "_id"))), dbk_text(text)};
    rc = dbk_db_exec(coll->db, coll->sql_insert, p, 2, NULL, err);
    free(text);
    if (rc) {
        rc = unique_error(coll, rc, err);
        goto out_root;
    }
    return dbk__doc_wrap(root, out, err);
out_root:
    json_decref(root);
    return rc;
}

/* ---- reads ---- */

/* Checks an id argument; an object id collection's id is replaced by its
 * stored lower-case form (written into buf). */
static dbk_rc check_id(const dbk_doc_coll *c, const char **id, char buf[25], dbk_error *err)
{
    if (!*id)
        return dbk__err(err, DBK_EMISUSE, "NULL id");
    size_t n = strlen(*id);
    if (dbk__doc_id_type(c) == DBK_DOC_OBJECT_ID) {
        if (!dbk__doc_oid_norm(*id, n, buf))
            return dbk__err(err, DBK_EINVALID, "an _id of \"%s\" is an object id (24 hex digits)",
                            c->schema->collection);
        *id = buf;
        return DBK_OK;
    }
    if (n == 0 || n > DBK_DOC_ID_MAX)
        return dbk__err(err, DBK_EINVALID, "an _id is 1..%d bytes", DBK_DOC_ID_MAX);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_find_by_id(dbk_doc_coll *coll, const char *id, dbk_doc **out,
                                  dbk_error *err)
{
    if (!coll || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_find_by_id: NULL argument");
    *out = NULL;
    char idbuf[25];
    dbk_rc rc = check_id(coll, &id, idbuf, err);
    if (rc)
        return rc;
    if (coll->mongo) {
        json_t *root = NULL;
        if ((rc = dbk__mongo_get(coll, id, &root, err)) != DBK_OK)
            return rc;
        return dbk__doc_wrap(root, out, err);
    }
    dbk_value p = dbk_text(id);
    dbk_result *res;
    if ((rc = dbk_db_query(coll->db, coll->sql_find, &p, 1, &res, err)) != DBK_OK)
        return rc;
    json_t *root = NULL;
    if (dbk_result_nrows(res) == 0)
        rc = dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                      coll->schema->collection);
    else
        rc = row_doc(res, 0, &root, err);
    dbk_result_free(res);
    return rc ? rc : dbk__doc_wrap(root, out, err);
}

/* Applies an inclusion projection to one document (replaces *root). */
dbk_rc dbk__doc_project(const dbk_doc_coll *c, json_t *proj, json_t **root, dbk_error *err)
{
    json_t *nr = json_object();
    if (!nr)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    json_t *id = json_object_get(*root, "_id");
    if (id && json_object_set(nr, "_id", id) != 0)
        goto oom;
    const char *key;
    json_t *v;
    json_object_foreach(proj, key, v)
    {
        (void)c;
        json_t *val = dbk__doc_path_get(*root, key);
        if (!val)
            continue;
        dbk_rc rc = dbk__doc_path_set(nr, key, json_incref(val), err);
        if (rc) {
            json_decref(nr);
            return rc;
        }
    }
    json_decref(*root);
    *root = nr;
    return DBK_OK;
oom:
    json_decref(nr);
    return dbk__err(err, DBK_ENOMEM, "out of memory");
}

dbk_rc dbk__doc_projection_parse(const dbk_doc_coll *c, const char *proj, json_t **out,
                                 dbk_error *err)
{
    *out = NULL;
    if (!proj || !*proj)
        return DBK_OK;
    dbk_rc rc = dbk__doc_json_parse(proj, strlen(proj), "projection", out, err);
    if (rc)
        return rc;
    const char *key;
    json_t *v;
    json_object_foreach(*out, key, v)
    {
        bool under = false;
        bool known = strcmp(key, "_id") == 0 ||
                     (dbk__doc_path_ok(key) && (dbk__doc_field_find(c, key, &under) || under));
        if (!known || !(json_is_true(v) || (json_is_integer(v) && json_integer_value(v) == 1))) {
            dbk__err(err, DBK_EINVALID, "projection: \"%.80s\" must be a declared field set to 1",
                     key);
            json_decref(*out); /* key lives in *out: after the message */
            *out = NULL;
            return DBK_EINVALID;
        }
    }
    return DBK_OK;
}

DBK_API void dbk_doc_page_free(dbk_doc_page *page)
{
    if (!page)
        return;
    for (size_t i = 0; i < page->count; i++)
        dbk_doc_free(page->docs[i]);
    free(page->docs);
    memset(page, 0, sizeof *page);
}

static dbk_rc result_page(const dbk_doc_coll *c, const dbk_result *res, json_t *proj,
                          dbk_doc_page *page, dbk_error *err)
{
    size_t n = dbk_result_nrows(res);
    page->docs = n ? calloc(n, sizeof *page->docs) : NULL;
    if (n && !page->docs)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    for (size_t r = 0; r < n; r++) {
        json_t *root;
        dbk_rc rc = row_doc(res, r, &root, err);
        if (rc == DBK_OK && proj)
            rc = dbk__doc_project(c, proj, &root, err);
        if (rc == DBK_OK)
            rc = dbk__doc_wrap(root, &page->docs[r], err);
        if (rc)
            return rc;
        page->count++;
    }
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_doc_find_opts, DBK_DOC_FIND_OPTS_VERSION)

/* The page size a find asks for, into o->limit: its `limit` (0: the
 * default page; DBK_DOC_LIMIT_ALL: every match, -1), or with the
 * deprecated has_limit the 0.1 meaning (0..max, 0 an empty page). The
 * backends read o->limit + 1 documents so has_more is exact. */
static dbk_rc resolve_limit(dbk_doc_find_opts *o, dbk_error *err)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    bool old = o->has_limit;
    o->has_limit = false;
#pragma GCC diagnostic pop
    if (old) {
        if (o->limit >= 0 && o->limit <= DBK_DOC_MAX_LIMIT)
            return DBK_OK;
        dbk_rc rc = dbk__err(err, DBK_EINVALID, "limit %lld is outside 0..%d (has_limit set)",
                             (long long)o->limit, DBK_DOC_MAX_LIMIT);
        dbk__err_hint(err, "has_limit is deprecated: leave it false and use limit alone");
        return rc;
    }
    if (o->limit == 0)
        o->limit = DBK_DOC_DEFAULT_LIMIT;
    else if (o->limit == DBK_DOC_LIMIT_ALL)
        o->limit = -1;
    else if (o->limit < 1 || o->limit > DBK_DOC_MAX_LIMIT) {
        dbk_rc rc = dbk__err(err, DBK_EINVALID, "limit %lld is outside 1..%d",
                             (long long)o->limit, DBK_DOC_MAX_LIMIT);
        dbk__err_hint(err, "0 reads the default page of %d documents, DBK_DOC_LIMIT_ALL every "
                           "match", DBK_DOC_DEFAULT_LIMIT);
        return rc;
    }
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_doc_mongo_opts, DBK_DOC_MONGO_OPTS_VERSION)

DBK_API dbk_rc dbk_doc_find(dbk_doc_coll *coll, const dbk_doc_find_opts *opts, dbk_doc_page *page,
                            dbk_error *err)
{
    if (!coll || !page)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_find: NULL argument");
    memset(page, 0, sizeof *page);
    page->total = -1;
    if (opts && dbk__opts_check(opts->version, DBK_DOC_FIND_OPTS_VERSION, "dbk_doc_find_opts", err))
        return DBK_EMISUSE;
    dbk_doc_find_opts o = {0};
    if (opts)
        o = *opts;
    if (resolve_limit(&o, err) != DBK_OK)
        return DBK_EINVALID;
    if (o.skip < 0)
        return dbk__err(err, DBK_EINVALID, "skip must not be negative");
    dbk__sb where = {0}, sql = {0}, count = {0};
    dbk__params params = {0};
    json_t *tree = NULL, *proj = NULL;
    dbk_result *res = NULL;
    dbk_batch *b = NULL;
    dbk_rc rc = dbk__doc_filter_compile(coll, o.filter, &where, &params, &tree, err);
    if (rc)
        goto done;
    if ((rc = dbk__doc_projection_parse(coll, o.projection, &proj, err)) != DBK_OK)
        goto done;
    if (coll->mongo) {
        rc = dbk__mongo_find(coll, &o, proj, page, err);
        goto done;
    }
    const char *cn = coll->schema->collection;
    dbk__sb_printf(&sql, "SELECT doc FROM \"%s\" WHERE %s ORDER BY ", cn, where.p);
    if ((rc = dbk__doc_sort_compile(coll, o.sort, &sql, err)) != DBK_OK)
        goto done;
    size_t nfilter = params.n;
    /* one more than the page, so that has_more is exact */
    dbk_value lim = o.limit >= 0 ? dbk_int64(o.limit + 1) : dbk__doc_dialect(coll)->no_limit;
    dbk_value lp[2] = {lim, dbk_int64(o.skip)};
    for (int i = 0; i < 2; i++) {
        if (params.n == params.cap) {
            size_t cap = params.cap ? params.cap * 2 : 4;
            dbk_value *nv = realloc(params.v, cap * sizeof *nv);
            if (!nv) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                goto done;
            }
            params.v = nv;
            params.cap = cap;
        }
        params.v[params.n++] = lp[i];
    }
    const dbk__dialect *d = dbk__doc_dialect(coll);
    dbk__sb_puts(&sql, " LIMIT ");
    d->placeholder(&sql, (int)nfilter + 1, "bigint");
    dbk__sb_puts(&sql, " OFFSET ");
    d->placeholder(&sql, (int)nfilter + 2, "bigint");
    if (sql.oom) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto done;
    }
    if (!o.with_total) {
        if ((rc = dbk_db_query(coll->db, sql.p, params.v, params.n, &res, err)) != DBK_OK)
            goto done;
        rc = result_page(coll, res, proj, page, err);
        goto done;
    }
    dbk__sb_printf(&count, "SELECT count(*) FROM \"%s\" WHERE %s", cn, where.p);
    if (count.oom) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = dbk_batch_new(&b, err)) != DBK_OK ||
        (rc = dbk_batch_add(b, sql.p, params.v, params.n, err)) != DBK_OK ||
        (rc = dbk_batch_add(b, count.p, params.v, nfilter, err)) != DBK_OK ||
        (rc = dbk_batch_run(coll->db, b, DBK_BATCH_INDEPENDENT, err)) != DBK_OK)
        goto done;
    if ((rc = dbk_result_get_int64(dbk_batch_result(b, 1), 0, 0, &page->total, err)) != DBK_OK)
        goto done;
    rc = result_page(coll, dbk_batch_result(b, 0), proj, page, err);
done:
    if (rc == DBK_OK && o.limit >= 0 && page->count > (size_t)o.limit) {
        while (page->count > (size_t)o.limit)
            dbk_doc_free(page->docs[--page->count]);
        page->has_more = true;
    }
    if (rc) {
        dbk_doc_page_free(page);
        page->total = -1;
    }
    dbk_batch_free(b);
    dbk_result_free(res);
    json_decref(tree);
    json_decref(proj);
    dbk__params_free(&params);
    dbk__sb_free(&where);
    dbk__sb_free(&sql);
    dbk__sb_free(&count);
    return rc;
}

DBK_API dbk_rc dbk_doc_find_one(dbk_doc_coll *coll, const char *filter, dbk_doc **out,
                                dbk_error *err)
{
    if (!coll || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_find_one: NULL argument");
    *out = NULL;
    dbk_doc_find_opts o = {.filter = filter, .limit = 1};
    dbk_doc_page page;
    dbk_rc rc = dbk_doc_find(coll, &o, &page, err);
    if (rc)
        return rc;
    if (page.count == 0) {
        dbk_doc_page_free(&page);
        return dbk__err(err, DBK_ENOT_FOUND, "no document matches the filter in \"%s\"",
                        coll->schema->collection);
    }
    *out = page.docs[0];
    page.docs[0] = NULL;
    page.count = 0;
    dbk_doc_page_free(&page);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_count(dbk_doc_coll *coll, const char *filter, int64_t *out,
                             dbk_error *err)
{
    if (!coll || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_count: NULL argument");
    if (coll->mongo)
        return dbk__mongo_count(coll, filter, out, err);
    dbk__sb where = {0}, sql = {0};
    dbk__params params = {0};
    json_t *tree = NULL;
    dbk_rc rc = dbk__doc_filter_compile(coll, filter, &where, &params, &tree, err);
    if (rc == DBK_OK) {
        dbk__sb_printf(&sql, "SELECT count(*) FROM \"%s\" WHERE %s", coll->schema->collection,
                     where.p);
        rc = sql.oom ? dbk__err(err, DBK_ENOMEM, "out of memory")
                     : dbk_db_query_int64(coll->db, sql.p, params.v, params.n, out, err);
    }
    json_decref(tree);
    dbk__params_free(&params);
    dbk__sb_free(&where);
    dbk__sb_free(&sql);
    return rc;
}

/* ---- update ---- */

static dbk_rc upd_path(const dbk_doc_coll *c, const char *op, const char *path, dbk_doc_type *t,
                       dbk_error *err)
{
    bool under = false;
    const dbk__doc_field *f = dbk__doc_path_ok(path) ? dbk__doc_field_find(c, path, &under) : NULL;
    if (strcmp(path, "_id") == 0 || (c->created && strcmp(path, c->created) == 0))
        return dbk__err(err, DBK_EINVALID, "update: %s may not change \"%.80s\"", op, path);
    if (!f && !under)
        return dbk__err(err, DBK_EINVALID, "update: %s on \"%.80s\", not a declared field", op,
                        path);
    *t = f ? f->type : (dbk_doc_type)0;
    return DBK_OK;
}

static dbk_rc apply_inc(const char *path, json_t *root, json_t *by, dbk_doc_type t,
                        dbk_error *err)
{
    if (!json_is_number(by) || (t == DBK_DOC_INT64 && !json_is_integer(by)) ||
        (t && t != DBK_DOC_INT64 && t != DBK_DOC_DOUBLE))
        return dbk__err(err, DBK_EINVALID, "update: $inc on \"%.80s\" needs a number field and "
                        "a number of its type", path);
    json_t *cur = dbk__doc_path_get(root, path);
    json_t *nv;
    if (!cur || json_is_null(cur)) {
        nv = json_deep_copy(by);
    } else if (!json_is_number(cur)) {
        return dbk__err(err, DBK_EINVALID, "update: $inc on \"%.80s\", which is not a number",
                        path);
    } else if (json_is_integer(cur) && json_is_integer(by)) {
        json_int_t a = json_integer_value(cur), d = json_integer_value(by), s;
        if (__builtin_add_overflow(a, d, &s))
            return dbk__err(err, DBK_EINVALID, "update: $inc on \"%.80s\" overflows int64",
                            path);
        nv = json_integer(s);
    } else {
        nv = json_real(json_number_value(cur) + json_number_value(by));
    }
    if (!nv)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    return dbk__doc_path_set(root, path, nv, err);
}

dbk_rc dbk__doc_apply_update(const dbk_doc_coll *c, json_t *root, json_t *upd, dbk_error *err)
{
    const char *key;
    json_t *v;
    bool ops = json_object_size(upd) > 0 && json_object_iter_key(json_object_iter(upd))[0] == '$';
    dbk_rc rc;
    if (!ops) {
        json_object_foreach(upd, key, v)
        {
            dbk_doc_type t;
            if ((rc = upd_path(c, "$set", key, &t, err)) != DBK_OK ||
                (rc = dbk__doc_path_set(root, key, json_incref(v), err)) != DBK_OK)
                return rc;
        }
        return DBK_OK;
    }
    json_object_foreach(upd, key, v)
    {
        bool set = strcmp(key, "$set") == 0, unset = strcmp(key, "$unset") == 0,
             inc = strcmp(key, "$inc") == 0;
        if (!set && !unset && !inc) {
            dbk__err(err, DBK_EINVALID, "update: unknown operator \"%.40s\"", key);
            dbk__err_hint(err, "supported: $set, $unset, $inc (or a plain object: $set)");
            return DBK_EINVALID;
        }
        if (!json_is_object(v))
            return dbk__err(err, DBK_EINVALID, "update: %s takes an object", key);
        const char *path;
        json_t *pv;
        json_object_foreach(v, path, pv)
        {
            dbk_doc_type t;
            if ((rc = upd_path(c, key, path, &t, err)) != DBK_OK)
                return rc;
            if (set)
                rc = dbk__doc_path_set(root, path, json_incref(pv), err);
            else if (unset)
                rc = dbk__doc_path_set(root, path, NULL, err);
            else
                rc = apply_inc(path, root, pv, t, err);
            if (rc)
                return rc;
        }
    }
    return DBK_OK;
}

typedef struct upd_ctx {
    dbk_doc_coll *c;
    const char *id;
    json_t *upd;
    json_t *result; /* the new document, owned */
} upd_ctx;

static dbk_rc upd_fn(dbk_db *tx, void *vctx, dbk_error *err)
{
    upd_ctx *u = vctx;
    json_decref(u->result);
    u->result = NULL;
    const char *cn = u->c->schema->collection;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT doc FROM \"%s\" WHERE id = $1%s", cn,
             dbk__doc_dialect(u->c)->select_for_update);
    dbk_value p[2] = {dbk_text(u->id), dbk_null()};
    dbk_result *res;
    dbk_rc rc = dbk_db_query(tx, sql, p, 1, &res, err);
    if (rc)
        return rc;
    json_t *root = NULL;
    if (dbk_result_nrows(res) == 0)
        rc = dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"", cn);
    else
        rc = row_doc(res, 0, &root, err);
    dbk_result_free(res);
    if (rc)
        return rc;
    if ((rc = dbk__doc_apply_update(u->c, root, u->upd, err)) != DBK_OK)
        goto fail;
    if (u->c->updated) {
        char ts[40];
        dbk__doc_date_format(dbk__doc_now_usec(), ts);
        if ((rc = dbk__doc_path_set(root, u->c->updated, json_string(ts), err)) != DBK_OK)
            goto fail;
    }
    if ((rc = dbk__doc_check(u->c, root, err)) != DBK_OK)
        goto fail;
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto fail;
    }
    char param[16];
    snprintf(sql, sizeof sql, "UPDATE \"%s\" SET doc = %s WHERE id = $1", cn,
             doc_param(u->c, param, sizeof param));
    p[1] = dbk_text(text);
    rc = dbk_db_exec(tx, sql, p, 2, NULL, err);
    free(text);
    if (rc) {
        rc = unique_error(u->c, rc, err);
        goto fail;
    }
    u->result = root;
    return DBK_OK;
fail:
    json_decref(root);
    return rc;
}

DBK_API dbk_rc dbk_doc_find_by_id_and_update(dbk_doc_coll *coll, const char *id,
                                             const char *update, dbk_doc **out,
                                             dbk_error *err)
{
    if (out)
        *out = NULL;
    if (!coll || !update)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_find_by_id_and_update: NULL argument");
    char idbuf[25];
    dbk_rc rc = check_id(coll, &id, idbuf, err);
    if (rc)
        return rc;
    upd_ctx u = {coll, id, NULL, NULL};
    if ((rc = dbk__doc_json_parse(update, strlen(update), "update", &u.upd, err)) != DBK_OK)
        return rc;
    if (coll->mongo)
        rc = dbk__mongo_update(coll, id, u.upd, &u.result, err);
    else
        rc = dbk_tx_run(coll->db, upd_fn, &u, NULL, err);
    json_decref(u.upd);
    if (rc) {
        json_decref(u.result);
        return rc;
    }
    return dbk__doc_wrap(u.result, out, err);
}

/* ---- delete ---- */

DBK_API dbk_rc dbk_doc_find_by_id_and_delete(dbk_doc_coll *coll, const char *id, dbk_doc **out,
                                             dbk_error *err)
{
    if (out)
        *out = NULL;
    if (!coll)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_find_by_id_and_delete: NULL collection");
    char idbuf[25];
    dbk_rc rc = check_id(coll, &id, idbuf, err);
    if (rc)
        return rc;
    if (coll->mongo) {
        json_t *root = NULL;
        if ((rc = dbk__mongo_delete(coll, id, &root, err)) != DBK_OK)
            return rc;
        return dbk__doc_wrap(root, out, err);
    }
    char sql[160];
    snprintf(sql, sizeof sql, "DELETE FROM \"%s\" WHERE id = $1 RETURNING doc",
             coll->schema->collection);
    dbk_value p = dbk_text(id);
    dbk_result *res;
    if ((rc = dbk_db_query(coll->db, sql, &p, 1, &res, err)) != DBK_OK)
        return rc;
    json_t *root = NULL;
    if (dbk_result_nrows(res) == 0)
        rc = dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                      coll->schema->collection);
    else
        rc = row_doc(res, 0, &root, err);
    dbk_result_free(res);
    return rc ? rc : dbk__doc_wrap(root, out, err);
}
