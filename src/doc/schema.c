/*
 * Document schemas: checking a dbk_doc_schema once at open, validating
 * documents against it, and writing the DDL of a collection.
 *
 * The checked field table is what every other part of the layer trusts:
 * a path reaches SQL text only if it is "_id", a declared field, or lies
 * below a declared OBJECT field, and passed dbk__doc_path_ok. Validation
 * walks the declared fields (at most DBK_DOC_MAX_FIELDS + 2) and the
 * document's top-level keys once each; it is the same function for create
 * and for the result of an update, so an update cannot produce a document
 * create would refuse. Indexes are expression indexes over the same
 * expressions the filter compiler writes (dbk__doc_path_sql), so a filter
 * or sort on an indexed path can use the index on both engines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/doc_int.h"

static const char *type_name(dbk_doc_type t)
{
    switch (t) {
    case DBK_DOC_STRING:
        return "string";
    case DBK_DOC_INT64:
        return "int64";
    case DBK_DOC_DOUBLE:
        return "double";
    case DBK_DOC_BOOL:
        return "bool";
    case DBK_DOC_DATE:
        return "date";
    case DBK_DOC_OBJECT_ID:
        return "object id";
    case DBK_DOC_ARRAY:
        return "array";
    case DBK_DOC_OBJECT:
        return "object";
    }
    return "?";
}

static bool is_hex24(const char *s, size_t n)
{
    if (n != 24)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
            return false;
    }
    return true;
}

bool dbk__doc_oid_norm(const char *s, size_t n, char out[25])
{
    if (!is_hex24(s, n))
        return false;
    for (size_t i = 0; i < 24; i++)
        out[i] = s[i] >= 'A' && s[i] <= 'F' ? (char)(s[i] - 'A' + 'a') : s[i];
    out[24] = '\0';
    return true;
}

dbk_doc_type dbk__doc_id_type(const dbk_doc_coll *c)
{
    return c->schema->id_type == DBK_DOC_OBJECT_ID ? DBK_DOC_OBJECT_ID : DBK_DOC_STRING;
}

static bool name_ok(const char *s, size_t max)
{
    if (!s || !*s || strlen(s) > max)
        return false;
    for (const char *p = s; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || *p == '_' || (p != s && *p >= '0' && *p <= '9');
        if (!ok)
            return false;
    }
    return true;
}

const dbk__doc_field *dbk__doc_field_find(const dbk_doc_coll *c, const char *path,
                                          bool *under_object)
{
    if (under_object)
        *under_object = false;
    for (size_t i = 0; i < c->nfields; i++) {
        const dbk__doc_field *f = &c->fields[i];
        size_t n = strlen(f->path);
        if (strcmp(f->path, path) == 0)
            return f;
        if (f->type == DBK_DOC_OBJECT && strncmp(f->path, path, n) == 0 && path[n] == '.') {
            if (under_object)
                *under_object = true;
        }
    }
    return NULL;
}

/* Checks one value against a type; dates are replaced by their stored
 * form (in `parent` under `key`, or the root when key is NULL). */
static dbk_rc check_value(const char *path, dbk_doc_type t, json_t *v, json_t **normalized,
                          dbk_error *err)
{
    *normalized = NULL;
    bool ok = false;
    switch (t) {
    case DBK_DOC_STRING:
        ok = json_is_string(v);
        break;
    case DBK_DOC_INT64:
        ok = json_is_integer(v);
        break;
    case DBK_DOC_DOUBLE:
        ok = json_is_number(v);
        break;
    case DBK_DOC_BOOL:
        ok = json_is_boolean(v);
        break;
    case DBK_DOC_DATE: {
        int64_t usec;
        if (json_is_string(v) &&
            dbk_timestamp_parse(json_string_value(v), json_string_length(v), &usec) == DBK_OK) {
            char buf[40];
            dbk__doc_date_format(usec, buf);
            if (strcmp(buf, json_string_value(v)) != 0) {
                *normalized = json_string(buf);
                if (!*normalized)
                    return dbk__err(err, DBK_ENOMEM, "out of memory");
            }
            ok = true;
        }
        break;
    }
    case DBK_DOC_OBJECT_ID: {
        /* stored lower-case: the text MongoDB gives back for an ObjectId */
        char oid[25];
        ok = json_is_string(v) && dbk__doc_oid_norm(json_string_value(v), json_string_length(v), oid);
        if (ok && strcmp(oid, json_string_value(v)) != 0 && !(*normalized = json_string(oid)))
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        break;
    }
    case DBK_DOC_ARRAY:
        ok = json_is_array(v);
        break;
    case DBK_DOC_OBJECT:
        ok = json_is_object(v);
        break;
    }
    if (!ok) {
        dbk__err(err, DBK_EINVALID, "field \"%.80s\" must be of type %s", path, type_name(t));
        dbk__err_hint(err, "check the value's JSON type against the collection's schema");
        return DBK_EINVALID;
    }
    return DBK_OK;
}

dbk_rc dbk__doc_path_set(json_t *root, const char *path, json_t *v, dbk_error *err)
{
    char seg[65];
    const char *p = path;
    json_t *cur = root;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof seg) {
            json_decref(v);
            return dbk__err(err, DBK_EINVALID, "path \"%.80s\" is malformed", path);
        }
        memcpy(seg, p, n);
        seg[n] = '\0';
        if (!dot) {
            if (!v) {
                json_object_del(cur, seg);
                return DBK_OK;
            }
            if (json_object_set_new(cur, seg, v) != 0)
                return dbk__err(err, DBK_ENOMEM, "out of memory");
            return DBK_OK;
        }
        json_t *next = json_object_get(cur, seg);
        if (!next) {
            if (!v)
                return DBK_OK;
            next = json_object();
            if (!next || json_object_set_new(cur, seg, next) != 0) {
                json_decref(v);
                return dbk__err(err, DBK_ENOMEM, "out of memory");
            }
        } else if (!json_is_object(next)) {
            json_decref(v);
            return dbk__err(err, DBK_EINVALID, "path \"%.80s\": \"%s\" is not an object", path,
                            seg);
        }
        cur = next;
        p = dot + 1;
    }
}

static bool top_declared(const dbk_doc_coll *c, const char *key)
{
    size_t kn = strlen(key);
    for (size_t i = 0; i < c->nfields; i++) {
        const char *fp = c->fields[i].path;
        if (strncmp(fp, key, kn) == 0 && (fp[kn] == '\0' || fp[kn] == '.'))
            return true;
    }
    return false;
}

/* MongoDB's rule for stored keys: no '.' (it would read as a path) and no
 * leading '$' (it would read as an operator), at any depth. */
static dbk_rc keys_ok(json_t *v, dbk_error *err)
{
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
        {
            if (k[0] == '$' || k[0] == '\0' || strchr(k, '.'))
                return dbk__err(err, DBK_EINVALID,
                                "key \"%.80s\" is not allowed: keys may not be empty, contain "
                                "'.' or start with '$'",
                                k);
            dbk_rc rc = keys_ok(m, err);
            if (rc)
                return rc;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            dbk_rc rc = keys_ok(m, err);
            if (rc)
                return rc;
        }
    }
    return DBK_OK;
}

dbk_rc dbk__doc_check(const dbk_doc_coll *c, json_t *doc, dbk_error *err)
{
    const char *key;
    json_t *v;
    dbk_rc krc = keys_ok(doc, err);
    if (krc)
        return krc;
    json_object_foreach(doc, key, v)
    {
        if (strcmp(key, "_id") == 0) {
            if (dbk__doc_id_type(c) == DBK_DOC_OBJECT_ID) {
                json_t *norm;
                dbk_rc rc = check_value("_id", DBK_DOC_OBJECT_ID, v, &norm, err);
                if (rc)
                    return rc;
                /* replacing a value keeps the key's place in the object */
                if (norm && json_object_set_new(doc, "_id", norm) != 0)
                    return dbk__err(err, DBK_ENOMEM, "out of memory");
                continue;
            }
            if (!json_is_string(v) || json_string_length(v) == 0 ||
                json_string_length(v) > DBK_DOC_ID_MAX)
                return dbk__err(err, DBK_EINVALID,
                                "field \"_id\" must be a string of 1..%d bytes", DBK_DOC_ID_MAX);
            continue;
        }
        if (!top_declared(c, key)) {
            dbk__err(err, DBK_EINVALID, "field \"%.80s\" is not declared in collection \"%s\"",
                     key, c->schema->collection);
            dbk__err_hint(err, "add it to the schema's fields (or below a declared object field)");
            return DBK_EINVALID;
        }
    }
    for (size_t i = 0; i < c->nfields; i++) {
        const dbk__doc_field *f = &c->fields[i];
        json_t *fv = dbk__doc_path_get(doc, f->path);
        if (!fv || json_is_null(fv)) {
            if (f->flags & DBK_DOC_REQUIRED)
                return dbk__err(err, DBK_EINVALID, "field \"%.80s\" is required", f->path);
            continue;
        }
        json_t *norm;
        dbk_rc rc = check_value(f->path, f->type, fv, &norm, err);
        if (rc)
            return rc;
        if (norm && (rc = dbk__doc_path_set(doc, f->path, norm, err)) != DBK_OK)
            return rc;
    }
    return DBK_OK;
}

/* ---- schema ---- */

void dbk__doc_schema_unload(dbk_doc_coll *c)
{
    for (size_t i = 0; i < c->nfields; i++)
        json_decref(c->fields[i].def);
    c->nfields = 0;
}

static dbk_rc add_field(dbk_doc_coll *c, const char *path, dbk_doc_type t, unsigned flags,
                        const char *def, dbk_error *err)
{
    if (!dbk__doc_path_ok(path) || strcmp(path, "_id") == 0)
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": field path \"%.80s\" is not allowed",
                        c->schema->collection, path ? path : "(null)");
    if (t < DBK_DOC_STRING || t > DBK_DOC_OBJECT)
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": field \"%s\" has an unknown type",
                        c->schema->collection, path);
    for (size_t i = 0; i < c->nfields; i++) {
        const char *o = c->fields[i].path;
        size_t n = strlen(o), m = strlen(path);
        if (strcmp(o, path) == 0)
            return dbk__err(err, DBK_EINVALID, "schema \"%s\": field \"%s\" declared twice",
                            c->schema->collection, path);
        /* one declared path may not lie below another unless that one is
         * an object (then it types a member of it) */
        if ((strncmp(o, path, n) == 0 && path[n] == '.' && c->fields[i].type != DBK_DOC_OBJECT) ||
            (strncmp(path, o, m) == 0 && o[m] == '.' && t != DBK_DOC_OBJECT))
            return dbk__err(err, DBK_EINVALID,
                            "schema \"%s\": field \"%s\" overlaps field \"%s\"",
                            c->schema->collection, path, o);
    }
    if (c->nfields >= DBK_DOC_MAX_FIELDS + 2)
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": more than %d fields",
                        c->schema->collection, DBK_DOC_MAX_FIELDS);
    dbk__doc_field *f = &c->fields[c->nfields];
    f->path = path;
    f->type = t;
    f->flags = flags;
    f->def = NULL;
    if (def) {
        json_error_t je;
        json_t *d = json_loads(def, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
        if (!d)
            return dbk__err(err, DBK_EINVALID, "schema \"%s\": default of \"%s\" is not JSON",
                            c->schema->collection, path);
        json_t *norm;
        dbk_rc rc = check_value(path, t, d, &norm, err);
        if (rc) {
            json_decref(d);
            return rc;
        }
        if (norm) {
            json_decref(d);
            d = norm;
        }
        f->def = d;
    }
    c->nfields++;
    return DBK_OK;
}

static dbk_rc check_keys(const dbk_doc_coll *c, const char *keys, dbk_error *err)
{
    if (!keys || !*keys)
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": an index has no keys",
                        c->schema->collection);
    char path[128];
    int n = 0;
    for (const char *p = keys; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (*p == '-') {
            p++;
            len--;
        }
        if (len == 0 || len >= sizeof path || ++n > 8)
            return dbk__err(err, DBK_EINVALID, "schema \"%s\": index keys \"%.80s\" malformed",
                            c->schema->collection, keys);
        memcpy(path, p, len);
        path[len] = '\0';
        bool under;
        if (strcmp(path, "_id") != 0 &&
            (!dbk__doc_path_ok(path) || (!dbk__doc_field_find(c, path, &under) && !under)))
            return dbk__err(err, DBK_EINVALID,
                            "schema \"%s\": index key \"%s\" is not a declared field",
                            c->schema->collection, path);
        p += len + (comma ? 1 : 0);
    }
    return DBK_OK;
}

dbk_rc dbk__doc_schema_load(dbk_doc_coll *c, const dbk_doc_schema *s, dbk_error *err)
{
    c->schema = s;
    c->nfields = 0;
    if (!name_ok(s->collection, 48))
        return dbk__err(err, DBK_EINVALID,
                        "collection name must match [a-z_][a-z0-9_]* (at most 48 bytes)");
    if (s->nfields > DBK_DOC_MAX_FIELDS || (s->nfields && !s->fields))
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": 0..%d fields", s->collection,
                        DBK_DOC_MAX_FIELDS);
    if (s->nindexes > DBK_DOC_MAX_INDEXES || (s->nindexes && !s->indexes))
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": 0..%d indexes", s->collection,
                        DBK_DOC_MAX_INDEXES);
    if (s->id_type != 0 && s->id_type != DBK_DOC_STRING && s->id_type != DBK_DOC_OBJECT_ID)
        return dbk__err(err, DBK_EINVALID, "schema \"%s\": id_type is string or object id",
                        s->collection);
    dbk_rc rc;
    for (size_t i = 0; i < s->nfields; i++) {
        const dbk_doc_field *f = &s->fields[i];
        if ((rc = add_field(c, f->path, f->type, f->flags, f->default_json, err)) != DBK_OK)
            goto fail;
    }
    c->created = c->updated = NULL;
    if (s->timestamps) {
        c->created = s->created_field ? s->created_field : "createdAt";
        c->updated = s->updated_field ? s->updated_field : "updatedAt";
        if ((rc = add_field(c, c->created, DBK_DOC_DATE, 0, NULL, err)) != DBK_OK ||
            (rc = add_field(c, c->updated, DBK_DOC_DATE, 0, NULL, err)) != DBK_OK)
            goto fail;
    }
    for (size_t i = 0; i < s->nindexes; i++) {
        if ((rc = check_keys(c, s->indexes[i].keys, err)) != DBK_OK)
            goto fail;
        const char *nm = s->indexes[i].name;
        if (nm && !name_ok(nm, 63)) {
            rc = dbk__err(err, DBK_EINVALID, "schema \"%s\": index name \"%.80s\" not allowed",
                          s->collection, nm);
            goto fail;
        }
    }
    return DBK_OK;
fail:
    dbk__doc_schema_unload(c);
    return rc;
}

/* ---- indexes and DDL ---- */

size_t dbk__doc_nindexes(const dbk_doc_coll *c)
{
    size_t n = c->schema->nindexes;
    for (size_t i = 0; i < c->nfields; i++)
        n += (c->fields[i].flags & DBK_DOC_UNIQUE) ? 1 : 0;
    return n;
}

static void default_name(const char *coll, const char *keys, const char *suffix, char *name,
                         size_t namelen)
{
    size_t o = (size_t)snprintf(name, namelen, "%s_", coll);
    for (const char *p = keys; *p && o + 1 < namelen; p++) {
        if (*p == '-')
            continue;
        name[o++] = (*p == '.' || *p == ',') ? '_' : *p;
    }
    name[o < namelen ? o : namelen - 1] = '\0';
    size_t len = strlen(name);
    snprintf(name + len, namelen - len, "_%s", suffix);
}

void dbk__doc_index_get(const dbk_doc_coll *c, size_t i, char *name, size_t namelen,
                        const char **keys, bool *unique)
{
    for (size_t f = 0; f < c->nfields; f++) {
        if (!(c->fields[f].flags & DBK_DOC_UNIQUE))
            continue;
        if (i-- == 0) {
            *keys = c->fields[f].path;
            *unique = true;
            default_name(c->schema->collection, *keys, "key", name, namelen);
            return;
        }
    }
    const dbk_doc_index *ix = &c->schema->indexes[i];
    *keys = ix->keys;
    *unique = ix->unique;
    if (ix->name)
        snprintf(name, namelen, "%s", ix->name);
    else
        default_name(c->schema->collection, ix->keys, "idx", name, namelen);
}

void dbk__doc_path_sql(const dbk_doc_coll *c, dbk__sb *sql, const char *path, dbk_doc_type type)
{
    if (strcmp(path, "_id") == 0) {
        dbk__sb_puts(sql, "id");
        return;
    }
    const char *cast = NULL;
    bool scalar = true;
    switch (type) {
    case DBK_DOC_STRING:
    case DBK_DOC_DATE:
    case DBK_DOC_OBJECT_ID:
        break;
    case DBK_DOC_INT64:
        cast = "bigint";
        break;
    case DBK_DOC_DOUBLE:
        cast = "float8";
        break;
    case DBK_DOC_BOOL:
        cast = "boolean";
        break;
    default:
        scalar = false; /* the JSON value itself */
        break;
    }
    dbk__doc_dialect(c)->json_path_sql(sql, "doc", path, scalar, cast);
}

/* The type the SQL expression of an index key or sort key reads with. */
static dbk_doc_type key_type(const dbk_doc_coll *c, const char *path)
{
    const dbk__doc_field *f = dbk__doc_field_find(c, path, NULL);
    return f ? f->type : (dbk_doc_type)0;
}

static void ddl(const dbk_doc_coll *c, dbk__sb *sql)
{
    const char *coll = c->schema->collection;
    const dbk__dialect *d = dbk__doc_dialect(c);
    d->doc_table_sql(sql, coll);
    size_t n = dbk__doc_nindexes(c);
    for (size_t i = 0; i < n; i++) {
        char name[128];
        const char *keys;
        bool unique;
        dbk__doc_index_get(c, i, name, sizeof name, &keys, &unique);
        dbk__sb_printf(sql, "CREATE %sINDEX IF NOT EXISTS \"%.63s\" ON \"%s\" (", unique ? "UNIQUE " : "",
                     name, coll);
        char path[128];
        int k = 0;
        for (const char *p = keys; *p; k++) {
            const char *comma = strchr(p, ',');
            bool desc = *p == '-';
            if (desc)
                p++;
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            snprintf(path, sizeof path, "%.*s", (int)len, p);
            if (k)
                dbk__sb_puts(sql, ", ");
            dbk__sb_puts(sql, "(");
            dbk__doc_path_sql(c, sql, path, key_type(c, path));
            dbk__sb_puts(sql, ")");
            dbk__sb_puts(sql, desc ? d->desc_nulls_last : d->asc_nulls_first);
            p += len + (comma ? 1 : 0);
        }
        dbk__sb_puts(sql, ");\n");
    }
}

DBK_API dbk_rc dbk_doc_migration_sql(const dbk_doc_schema *schema, dbk_engine engine, char **out,
                                     dbk_error *err)
{
    if (!schema || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_migration_sql: NULL argument");
    *out = NULL;
    const dbk__dialect *dia = dbk__dialect_find(engine);
    if (!dia || !dia->doc_backend)
        return dbk__err(err, DBK_ECONFIG, "no document backend for this engine");
    dbk_doc_coll *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    c->engine = engine;
    dbk_rc rc = dbk__doc_schema_load(c, schema, err);
    if (rc) {
        free(c);
        return rc;
    }
    dbk__sb sql = {0};
    ddl(c, &sql);
    dbk__doc_schema_unload(c);
    free(c);
    if (sql.oom) {
        dbk__sb_free(&sql);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    *out = sql.p;
    return DBK_OK;
}

/* ---- schemas from JSON ---- */

/* The strings of a parsed schema live in one json_t kept beside it. */
typedef struct owned_schema {
    dbk_doc_schema s; /* first: the public pointer is this struct's */
    json_t *root;
    dbk_doc_field *fields;
    dbk_doc_index *indexes;
    char **defaults;
    size_t ndefaults;
} owned_schema;

DBK_API void dbk_doc_schema_free(dbk_doc_schema *schema)
{
    if (!schema)
        return;
    owned_schema *o = (owned_schema *)schema;
    for (size_t i = 0; i < o->ndefaults; i++)
        free(o->defaults[i]);
    free(o->defaults);
    free(o->fields);
    free(o->indexes);
    json_decref(o->root);
    free(o);
}

static const char *jstr(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

DBK_API dbk_rc dbk_doc_schema_parse(const char *json, size_t len, dbk_doc_schema **out,
                                    dbk_error *err)
{
    static const struct {
        const char *name;
        dbk_doc_type type;
    } types[] = {{"string", DBK_DOC_STRING}, {"int64", DBK_DOC_INT64},
                 {"double", DBK_DOC_DOUBLE}, {"bool", DBK_DOC_BOOL},
                 {"date", DBK_DOC_DATE},     {"object_id", DBK_DOC_OBJECT_ID},
                 {"array", DBK_DOC_ARRAY},   {"object", DBK_DOC_OBJECT}};
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_schema_parse: NULL out");
    *out = NULL;
    owned_schema *o = calloc(1, sizeof *o);
    if (!o)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    dbk_rc rc = dbk__doc_json_parse(json, len, "schema", &o->root, err);
    if (rc)
        goto fail;
    json_t *fields = json_object_get(o->root, "fields");
    json_t *indexes = json_object_get(o->root, "indexes");
    if ((fields && !json_is_array(fields)) || (indexes && !json_is_array(indexes))) {
        rc = dbk__err(err, DBK_EINVALID, "schema: fields and indexes must be arrays");
        goto fail;
    }
    size_t nf = json_array_size(fields), ni = json_array_size(indexes);
    if (nf > DBK_DOC_MAX_FIELDS || ni > DBK_DOC_MAX_INDEXES) {
        rc = dbk__err(err, DBK_EINVALID, "schema: at most %d fields and %d indexes",
                      DBK_DOC_MAX_FIELDS, DBK_DOC_MAX_INDEXES);
        goto fail;
    }
    o->fields = calloc(nf ? nf : 1, sizeof *o->fields);
    o->indexes = calloc(ni ? ni : 1, sizeof *o->indexes);
    o->defaults = calloc(nf ? nf : 1, sizeof *o->defaults);
    if (!o->fields || !o->indexes || !o->defaults) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nf; i++) {
        json_t *f = json_array_get(fields, i);
        const char *path = jstr(f, "path"), *type = jstr(f, "type");
        dbk_doc_field *df = &o->fields[i];
        df->path = path;
        for (size_t t = 0; type && t < sizeof types / sizeof types[0]; t++)
            if (strcmp(type, types[t].name) == 0)
                df->type = types[t].type;
        if (!path || !df->type) {
            rc = dbk__err(err, DBK_EINVALID, "schema: field %zu needs a path and a known type",
                          i + 1);
            goto fail;
        }
        if (json_is_true(json_object_get(f, "required")))
            df->flags |= DBK_DOC_REQUIRED;
        if (json_is_true(json_object_get(f, "unique")))
            df->flags |= DBK_DOC_UNIQUE;
        json_t *def = json_object_get(f, "default");
        if (def) {
            char *d = json_dumps(def, JSON_COMPACT | JSON_ENCODE_ANY);
            if (!d) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                goto fail;
            }
            o->defaults[o->ndefaults++] = d;
            df->default_json = d;
        }
    }
    for (size_t i = 0; i < ni; i++) {
        json_t *ix = json_array_get(indexes, i);
        o->indexes[i].keys = jstr(ix, "keys");
        o->indexes[i].name = jstr(ix, "name");
        o->indexes[i].unique = json_is_true(json_object_get(ix, "unique"));
    }
    o->s.collection = jstr(o->root, "collection");
    o->s.fields = o->fields;
    o->s.nfields = nf;
    o->s.indexes = o->indexes;
    o->s.nindexes = ni;
    o->s.timestamps = json_is_true(json_object_get(o->root, "timestamps"));
    o->s.created_field = jstr(o->root, "created_field");
    o->s.updated_field = jstr(o->root, "updated_field");
    const char *idt = jstr(o->root, "id_type");
    if (idt) {
        o->s.id_type = strcmp(idt, "object_id") == 0 ? DBK_DOC_OBJECT_ID
                       : strcmp(idt, "string") == 0  ? DBK_DOC_STRING
                                                     : DBK_DOC_ARRAY; /* refused by the load */
    }
    dbk_doc_coll *c = calloc(1, sizeof *c);
    if (!c) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto fail;
    }
    c->engine = DBK_ENGINE_SQLITE;
    rc = dbk__doc_schema_load(c, &o->s, err);
    if (rc == DBK_OK)
        dbk__doc_schema_unload(c);
    free(c);
    if (rc)
        goto fail;
    *out = &o->s;
    return DBK_OK;
fail:
    dbk_doc_schema_free(&o->s);
    return rc;
}
