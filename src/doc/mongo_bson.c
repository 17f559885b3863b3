/*
 * The MongoDB backend: documents and filter values between the document
 * layer's JSON form and BSON (see mongo.c for the backend's files).
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
 * back unchanged; by id they are found in either form.
 *
 * Nothing a caller sends reaches the server unchecked: filters and sorts
 * go through the same compilers as for SQL (the SQL they write is thrown
 * away; what matters is that every path is declared and every value has
 * its field's type), then the filter is sent with the values of date and
 * object id fields rewritten to BSON types.
 *
 * Built only with libmongoc (DBKIT_HAVE_MONGOC); empty otherwise.
 */
#ifdef DBKIT_HAVE_MONGOC

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/mongo_int.h"

bson_t *dbk__mongo_to_bson(const json_t *v, dbk_error *err)
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
dbk_rc dbk__mongo_to_ext(const dbk_doc_coll *c, const char *prefix, json_t **v, dbk_error *err)
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
void dbk__mongo_dates_to_ms(const dbk_doc_coll *c, json_t *root)
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

dbk_rc dbk__mongo_from_bson(const bson_t *b, json_t **out, dbk_error *err)
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
/* ---- a document straight into BSON ----
 *
 * A document is written field by field from its JSON tree, the declared
 * date and object id paths as datetimes and ObjectIds, instead of being
 * copied, rewritten to extended JSON, printed and parsed again by libbson
 * (three passes over it, and the second JSON parse of the call): the
 * insert cost 14 % more than hand-written libmongoc that way. Numbers take
 * the types libbson's JSON reader gives them (an integer as int32 when it
 * fits, else int64; a real as double), so what is stored is the same. A
 * document with any other key that starts with '$' (an extended-JSON form
 * such as {"$numberLong": ...}) keeps the old path, which knows them all. */

/* The declared type of dotted path `path` (0: none of date / object id). */
static dbk_doc_type typed_path(const dbk_doc_coll *c, const char *path)
{
    if (strcmp(path, "_id") == 0)
        return dbk__doc_id_type(c) == DBK_DOC_OBJECT_ID ? DBK_DOC_OBJECT_ID : 0;
    for (size_t i = 0; i < c->nfields; i++)
        if (typed(c->fields[i].type) && strcmp(c->fields[i].path, path) == 0)
            return c->fields[i].type;
    return 0;
}

/* True when some object of v has a key that starts with '$'. */
static bool has_dollar_key(const json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, x) {
            if (k[0] == '$' || has_dollar_key(x))
                return true;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) {
            if (has_dollar_key(x))
                return true;
        }
    }
    return false;
}

static bool append_value(const dbk_doc_coll *c, bson_t *b, const char *key, char *path,
                         size_t plen, size_t pcap, const json_t *v);

static bool append_members(const dbk_doc_coll *c, bson_t *b, char *path, size_t plen,
                           size_t pcap, const json_t *obj)
{
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)obj, k, x) {
        size_t kl = strlen(k);
        size_t nl = plen ? plen + 1 + kl : kl;
        if (nl + 1 > pcap)
            return false;
        if (plen)
            path[plen] = '.';
        memcpy(path + (plen ? plen + 1 : 0), k, kl + 1);
        bool ok = append_value(c, b, k, path, nl, pcap, x);
        path[plen] = '\0';
        if (!ok)
            return false;
    }
    return true;
}

static bool append_value(const dbk_doc_coll *c, bson_t *b, const char *key, char *path,
                         size_t plen, size_t pcap, const json_t *v)
{
    int kl = (int)strlen(key);
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        bson_t sub;
        if (!bson_append_document_begin(b, key, kl, &sub))
            return false;
        bool ok = append_members(c, &sub, path, plen, pcap, v);
        return bson_append_document_end(b, &sub) && ok;
    }
    case JSON_ARRAY: {
        bson_t sub;
        if (!bson_append_array_begin(b, key, kl, &sub))
            return false;
        size_t i;
        json_t *x;
        bool ok = true;
        json_array_foreach(v, i, x) {
            char idx[24];
            int il = snprintf(idx, sizeof idx, "%zu", i);
            /* elements are at the array's own path (as the declared paths
             * name array fields) */
            if (!append_value(c, &sub, idx, path, plen, pcap, x) || il <= 0)
                ok = false;
        }
        return bson_append_array_end(b, &sub) && ok;
    }
    case JSON_STRING: {
        const char *s = json_string_value(v);
        size_t sl = json_string_length(v);
        dbk_doc_type t = typed_path(c, path);
        if (t == DBK_DOC_DATE) {
            int64_t usec;
            if (dbk_timestamp_parse(s, sl, &usec) == DBK_OK)
                return bson_append_date_time(b, key, kl, usec_to_ms(usec, false));
        } else if (t == DBK_DOC_OBJECT_ID) {
            char oid[25];
            if (dbk__doc_oid_norm(s, sl, oid)) {
                bson_oid_t o;
                bson_oid_init_from_string(&o, oid);
                return bson_append_oid(b, key, kl, &o);
            }
        }
        return bson_append_utf8(b, key, kl, s, (int)sl);
    }
    case JSON_INTEGER: {
        json_int_t n = json_integer_value(v);
        if (n >= INT32_MIN && n <= INT32_MAX)
            return bson_append_int32(b, key, kl, (int32_t)n);
        return bson_append_int64(b, key, kl, (int64_t)n);
    }
    case JSON_REAL:
        return bson_append_double(b, key, kl, json_real_value(v));
    case JSON_TRUE:
        return bson_append_bool(b, key, kl, true);
    case JSON_FALSE:
        return bson_append_bool(b, key, kl, false);
    case JSON_NULL:
    default:
        return bson_append_null(b, key, kl);
    }
}

bson_t *dbk__mongo_doc_bson(const dbk_doc_coll *c, json_t *root, dbk_error *err)
{
    if (json_is_object(root) && !has_dollar_key(root)) {
        char path[1024];
        path[0] = '\0';
        bson_t *b = bson_new();
        if (b && append_members(c, b, path, 0, sizeof path, root))
            return b;
        bson_destroy(b);
        /* a path too long for the buffer, a string libbson refuses: the
         * text path below says why, or manages */
    }
    json_t *copy = json_deep_copy(root);
    if (!copy) {
        dbk__err(err, DBK_ENOMEM, "out of memory");
        return NULL;
    }
    bson_t *b = NULL;
    if (dbk__mongo_to_ext(c, "", &copy, err) == DBK_OK)
        b = dbk__mongo_to_bson(copy, err);
    json_decref(copy);
    return b;
}

/* The query of one document by id: on an object id collection the
 * ObjectId or, for documents written before ids were ObjectIds, the same
 * hex digits as a string. */
void dbk__mongo_id_query(const dbk_doc_coll *c, const char *id, bson_t *q)
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
dbk_rc dbk__mongo_filter_bson(dbk_doc_coll *c, const char *filter, bson_t **out, dbk_error *err)
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
            *out = dbk__mongo_to_bson(tree, err);
            if (!*out)
                rc = err ? err->code : DBK_EINVALID;
        }
    }
    json_decref(tree);
    return rc;
}

dbk_rc dbk__mongo_sort_bson(dbk_doc_coll *c, const char *sort, bson_t *opts, dbk_error *err)
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
    bson_t *b = dbk__mongo_to_bson(tree, err);
    json_decref(tree);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    BSON_APPEND_DOCUMENT(opts, "sort", b);
    bson_destroy(b);
    return DBK_OK;
}

#endif /* DBKIT_HAVE_MONGOC */
