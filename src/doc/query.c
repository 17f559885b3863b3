/*
 * The filter and sort compilers: MongoDB query documents (the subset in
 * doc.h) to SQL over the collection's table, for SQLite's JSON functions
 * and PostgreSQL's jsonb.
 *
 * What makes this safe is a split between text and values. The SQL text
 * holds only fixed keywords, the expressions of dbk__doc_path_sql for
 * paths that passed dbk__doc_path_ok and the schema lookup, and $N
 * placeholders; every value of the filter becomes a parameter, checked
 * against the declared type of its path first (so a string compared with
 * an int64 field is DBK_EINVALID, not a silent mismatch or a cast error on
 * the server). On PostgreSQL every placeholder carries an explicit cast,
 * so the server never guesses a parameter's type.
 *
 * The SQL text that differs between the engines (path reads, casts, the
 * JSON null, array membership, JSON parameters, NULL ordering, the false
 * literal) comes from the engine's dialect (src/driver/dialect.h); this
 * file decides what to compare, the dialect how the engine writes it.
 *
 * Semantics follow MongoDB where the engines allow: {"f": null} matches a
 * missing field, $ne matches documents without the field, equality on an
 * array field means "the array holds the value", $in is the OR of its
 * equalities. The compiler recurses once per $and/$or level; the parse
 * already bounded the depth (DBK_DOC_MAX_DEPTH).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/doc_int.h"

typedef struct qctx {
    const dbk_doc_coll *c;
    dbk__sb *sql;
    dbk__params *p;
    dbk_error *err;
} qctx;

static const dbk__dialect *dia(const qctx *q)
{
    return dbk__doc_dialect(q->c);
}

static bool push(dbk__params *p, dbk_value v)
{
    if (p->oom)
        return false;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        dbk_value *nv = realloc(p->v, cap * sizeof *nv);
        if (!nv) {
            p->oom = true;
            return false;
        }
        p->v = nv;
        p->cap = cap;
    }
    p->v[p->n++] = v;
    return true;
}

/* Keeps a string made while compiling alive as long as the parameters. */
static const char *own(dbk__params *p, char *s)
{
    if (!s) {
        p->oom = true;
        return NULL;
    }
    if (p->nowned == p->capowned) {
        size_t cap = p->capowned ? p->capowned * 2 : 4;
        char **no = realloc(p->owned, cap * sizeof *no);
        if (!no) {
            free(s);
            p->oom = true;
            return NULL;
        }
        p->owned = no;
        p->capowned = cap;
    }
    p->owned[p->nowned++] = s;
    return s;
}

static dbk_rc bad_value(qctx *q, const char *path, const char *why)
{
    dbk__err(q->err, DBK_EINVALID, "filter on \"%.80s\": %s", path, why);
    return DBK_EINVALID;
}

/* The parameter for `v` compared with a path of type `t` (0: untyped /
 * whole JSON values): its value, the type it is read as (NULL: none) and
 * whether it is JSON text read as a JSON value (*json). */
static dbk_rc bind_value(qctx *q, const char *path, dbk_doc_type t, json_t *v, dbk_value *out,
                         const char **out_cast, bool *json)
{
    const char *cast = NULL;
    dbk_value val;
    *json = false;
    switch (t) {
    case DBK_DOC_STRING:
        if (!json_is_string(v))
            return bad_value(q, path, "the value must be a string");
        val = dbk_textn(json_string_value(v), json_string_length(v));
        cast = "text";
        break;
    case DBK_DOC_OBJECT_ID: {
        /* compared in the stored lower-case form (an ObjectId on MongoDB) */
        char oid[25];
        if (!json_is_string(v) || !dbk__doc_oid_norm(json_string_value(v), json_string_length(v), oid))
            return bad_value(q, path, "the value must be an object id (24 hex digits)");
        const char *s = own(q->p, strdup(oid));
        if (!s)
            return dbk__err(q->err, DBK_ENOMEM, "out of memory");
        val = dbk_text(s);
        cast = "text";
        break;
    }
    case DBK_DOC_DATE: {
        int64_t usec;
        if (!json_is_string(v) ||
            dbk_timestamp_parse(json_string_value(v), json_string_length(v), &usec) != DBK_OK)
            return bad_value(q, path, "the value must be an ISO-8601 date string");
        char buf[40];
        dbk__doc_date_format(usec, buf);
        const char *s = own(q->p, strdup(buf));
        if (!s)
            return dbk__err(q->err, DBK_ENOMEM, "out of memory");
        val = dbk_text(s);
        cast = "text";
        break;
    }
    case DBK_DOC_INT64:
        if (!json_is_integer(v))
            return bad_value(q, path, "the value must be an integer");
        val = dbk_int64((int64_t)json_integer_value(v));
        cast = "bigint";
        break;
    case DBK_DOC_DOUBLE:
        if (!json_is_number(v))
            return bad_value(q, path, "the value must be a number");
        val = dbk_double(json_number_value(v));
        cast = "float8";
        break;
    case DBK_DOC_BOOL:
        if (!json_is_boolean(v))
            return bad_value(q, path, "the value must be true or false");
        val = dia(q)->has_bool ? dbk_bool(json_is_true(v)) : dbk_int64(json_is_true(v) ? 1 : 0);
        cast = "boolean";
        break;
    default:
        if (dia(q)->json_binary || json_is_object(v) || json_is_array(v)) {
            /* whole JSON value: jsonb on PostgreSQL; SQLite compares the
             * minified text json_extract returns for containers */
            const char *s = own(q->p, json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
                                                        JSON_PRESERVE_ORDER));
            if (!s)
                return dbk__err(q->err, DBK_ENOMEM, "out of memory");
            val = dbk_text(s);
            *json = true;
        } else if (json_is_string(v)) {
            val = dbk_textn(json_string_value(v), json_string_length(v));
        } else if (json_is_integer(v)) {
            val = dbk_int64((int64_t)json_integer_value(v));
        } else if (json_is_real(v)) {
            val = dbk_double(json_real_value(v));
        } else if (json_is_boolean(v)) {
            val = dia(q)->has_bool ? dbk_bool(json_is_true(v)) : dbk_int64(json_is_true(v) ? 1 : 0);
        } else {
            return bad_value(q, path, "null is only allowed with equality and $ne");
        }
        break;
    }
    *out = val;
    *out_cast = cast;
    return DBK_OK;
}

/* Appends the placeholder for `v` compared with a path of type `t` (see
 * bind_value). */
static dbk_rc bind(qctx *q, const char *path, dbk_doc_type t, json_t *v)
{
    dbk_value val;
    const char *cast;
    bool json;
    dbk_rc rc = bind_value(q, path, t, v, &val, &cast, &json);
    if (rc)
        return rc;
    if (!push(q->p, val))
        return dbk__err(q->err, DBK_ENOMEM, "out of memory");
    if (json)
        dia(q)->json_param(q->sql, (int)q->p->n);
    else
        dia(q)->placeholder(q->sql, (int)q->p->n, cast);
    return DBK_OK;
}

static void expr(qctx *q, const char *path, dbk_doc_type t)
{
    dbk__doc_path_sql(q->c, q->sql, path, t);
}

static void json_path_literal(qctx *q, const char *path)
{
    dia(q)->json_path_kind_sql(q->sql, "doc", path);
}

/* Equality of a path with one value (MongoDB's {"path": value}). */
static dbk_rc eq(qctx *q, const char *path, dbk_doc_type t, json_t *v)
{
    if (json_is_null(v)) {
        if (strcmp(path, "_id") == 0) {
            dbk__sb_puts(q->sql, "1=0");
            return DBK_OK;
        }
        /* missing, or present as JSON null */
        dbk__sb_puts(q->sql, "(");
        json_path_literal(q, path);
        dbk__sb_puts(q->sql, " IS NULL OR ");
        json_path_literal(q, path);
        dbk__sb_printf(q->sql, " = %s)", dia(q)->json_null);
        return DBK_OK;
    }
    if (t == DBK_DOC_ARRAY && !json_is_array(v)) {
        /* an array field equals a scalar when it holds it */
        if (json_is_object(v))
            return bad_value(q, path, "an array field cannot be compared with an object");
        dbk_value val;
        if (dia(q)->json_binary) { /* containment of a one-element array */
            json_t *wrap = json_array();
            if (!wrap || json_array_append(wrap, v) != 0) {
                json_decref(wrap);
                return dbk__err(q->err, DBK_ENOMEM, "out of memory");
            }
            const char *s = own(q->p, json_dumps(wrap, JSON_COMPACT | JSON_ENCODE_ANY));
            json_decref(wrap);
            if (!s)
                return dbk__err(q->err, DBK_ENOMEM, "out of memory");
            val = dbk_text(s);
        } else { /* the element's SQL value */
            const char *cast;
            bool json;
            dbk_rc rc = bind_value(q, path, 0, v, &val, &cast, &json);
            if (rc)
                return rc;
        }
        if (!push(q->p, val))
            return dbk__err(q->err, DBK_ENOMEM, "out of memory");
        dia(q)->json_array_has_sql(q->sql, "doc", path, (int)q->p->n);
        return DBK_OK;
    }
    dbk_doc_type bt = t == DBK_DOC_ARRAY || t == DBK_DOC_OBJECT ? 0 : t;
    dbk__sb_puts(q->sql, "(");
    expr(q, path, bt); /* containers: " = json($n)" on SQLite (bind) */
    dbk__sb_puts(q->sql, " = ");
    dbk_rc rc = bind(q, path, bt, v);
    if (rc)
        return rc;
    dbk__sb_puts(q->sql, ")");
    return DBK_OK;
}

static dbk_rc op(qctx *q, const char *path, dbk_doc_type t, const char *name, json_t *v)
{
    static const struct {
        const char *name, *sql;
    } cmp[] = {{"$gt", " > "}, {"$gte", " >= "}, {"$lt", " < "}, {"$lte", " <= "}};
    const char *no = dia(q)->false_sql;
    if (strcmp(name, "$eq") == 0)
        return eq(q, path, t, v);
    if (strcmp(name, "$ne") == 0) {
        dbk__sb_printf(q->sql, "NOT COALESCE(");
        dbk_rc rc = eq(q, path, t, v);
        if (rc)
            return rc;
        dbk__sb_printf(q->sql, ", %s)", no);
        return DBK_OK;
    }
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
        if (strcmp(name, cmp[i].name) != 0)
            continue;
        if (t == DBK_DOC_ARRAY || t == DBK_DOC_OBJECT || json_is_null(v) || json_is_object(v) ||
            json_is_array(v))
            return bad_value(q, path, "range operators take a scalar on a scalar field");
        dbk__sb_puts(q->sql, "(");
        expr(q, path, t);
        dbk__sb_puts(q->sql, cmp[i].sql);
        dbk_rc rc = bind(q, path, t, v);
        if (rc)
            return rc;
        dbk__sb_puts(q->sql, ")");
        return DBK_OK;
    }
    if (strcmp(name, "$in") == 0) {
        if (!json_is_array(v))
            return bad_value(q, path, "$in takes an array");
        if (json_array_size(v) > DBK_DOC_MAX_IN)
            return bad_value(q, path, "$in takes at most 10000 values");
        if (json_array_size(v) == 0) {
            dbk__sb_puts(q->sql, "1=0");
            return DBK_OK;
        }
        dbk__sb_puts(q->sql, "(");
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            if (i)
                dbk__sb_puts(q->sql, " OR ");
            dbk__sb_printf(q->sql, "COALESCE(");
            dbk_rc rc = eq(q, path, t, m);
            if (rc)
                return rc;
            dbk__sb_printf(q->sql, ", %s)", no);
        }
        dbk__sb_puts(q->sql, ")");
        return DBK_OK;
    }
    if (strcmp(name, "$exists") == 0) {
        if (!json_is_boolean(v))
            return bad_value(q, path, "$exists takes true or false");
        if (strcmp(path, "_id") == 0) {
            dbk__sb_puts(q->sql, json_is_true(v) ? "1=1" : "1=0");
            return DBK_OK;
        }
        dbk__sb_puts(q->sql, "(");
        json_path_literal(q, path);
        dbk__sb_puts(q->sql, json_is_true(v) ? " IS NOT NULL)" : " IS NULL)");
        return DBK_OK;
    }
    dbk__err(q->err, DBK_EINVALID, "filter on \"%.80s\": unknown operator \"%.40s\"", path, name);
    dbk__err_hint(q->err, "supported: $eq $ne $gt $gte $lt $lte $in $exists, and $and / $or");
    return DBK_EINVALID;
}

/* Resolves a filter or sort path to its type; DBK_EINVALID when it may
 * not be used. */
static dbk_rc resolve(const dbk_doc_coll *c, const char *path, const char *what,
                      dbk_doc_type *t, dbk_error *err)
{
    if (strcmp(path, "_id") == 0) {
        *t = dbk__doc_id_type(c);
        return DBK_OK;
    }
    bool under = false;
    const dbk__doc_field *f = dbk__doc_path_ok(path) ? dbk__doc_field_find(c, path, &under) : NULL;
    if (f) {
        *t = f->type;
        return DBK_OK;
    }
    if (under) {
        *t = 0;
        return DBK_OK;
    }
    dbk__err(err, DBK_EINVALID, "%s: \"%.80s\" is not a declared field of \"%s\"", what, path,
             c->schema->collection);
    dbk__err_hint(err, "paths are \"_id\", declared fields, or members of a declared object field");
    return DBK_EINVALID;
}

static dbk_rc compile_obj(qctx *q, json_t *obj);

static dbk_rc compile_list(qctx *q, const char *name, json_t *arr)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return dbk__err(q->err, DBK_EINVALID, "filter: %s takes a non-empty array of filters",
                        name);
    dbk__sb_puts(q->sql, "(");
    size_t i;
    json_t *m;
    json_array_foreach(arr, i, m)
    {
        if (i)
            dbk__sb_puts(q->sql, strcmp(name, "$and") == 0 ? " AND " : " OR ");
        if (!json_is_object(m))
            return dbk__err(q->err, DBK_EINVALID, "filter: %s takes filter objects", name);
        dbk_rc rc = compile_obj(q, m);
        if (rc)
            return rc;
    }
    dbk__sb_puts(q->sql, ")");
    return DBK_OK;
}

static bool is_op_object(json_t *v)
{
    if (!json_is_object(v) || json_object_size(v) == 0)
        return false;
    void *it = json_object_iter(v);
    return json_object_iter_key(it)[0] == '$';
}

static dbk_rc compile_obj(qctx *q, json_t *obj)
{
    if (json_object_size(obj) == 0) {
        dbk__sb_puts(q->sql, "1=1");
        return DBK_OK;
    }
    dbk__sb_puts(q->sql, "(");
    const char *key;
    json_t *v;
    int n = 0;
    dbk_rc rc;
    json_object_foreach(obj, key, v)
    {
        if (n++)
            dbk__sb_puts(q->sql, " AND ");
        if (strcmp(key, "$and") == 0 || strcmp(key, "$or") == 0) {
            if ((rc = compile_list(q, key, v)) != DBK_OK)
                return rc;
            continue;
        }
        if (key[0] == '$') {
            dbk__err(q->err, DBK_EINVALID, "filter: unknown operator \"%.40s\"", key);
            dbk__err_hint(q->err, "top-level operators: $and, $or");
            return DBK_EINVALID;
        }
        dbk_doc_type t;
        if ((rc = resolve(q->c, key, "filter", &t, q->err)) != DBK_OK)
            return rc;
        if (!is_op_object(v)) {
            if ((rc = eq(q, key, t, v)) != DBK_OK)
                return rc;
            continue;
        }
        const char *opname;
        json_t *ov;
        int k = 0;
        json_object_foreach(v, opname, ov)
        {
            if (k++)
                dbk__sb_puts(q->sql, " AND ");
            if ((rc = op(q, key, t, opname, ov)) != DBK_OK)
                return rc;
        }
    }
    dbk__sb_puts(q->sql, ")");
    return DBK_OK;
}

dbk_rc dbk__doc_filter_compile(const dbk_doc_coll *c, const char *filter, dbk__sb *sql,
                               dbk__params *params, json_t **tree, dbk_error *err)
{
    *tree = NULL;
    if (!filter || !*filter) {
        dbk__sb_puts(sql, "1=1");
        return DBK_OK;
    }
    dbk_rc rc = dbk__doc_json_parse(filter, strlen(filter), "filter", tree, err);
    if (rc)
        return rc;
    qctx q = {c, sql, params, err};
    rc = compile_obj(&q, *tree);
    if (rc == DBK_OK && (sql->oom || params->oom))
        rc = dbk__err(err, DBK_ENOMEM, "out of memory compiling a filter");
    return rc;
}

dbk_rc dbk__doc_sort_compile(const dbk_doc_coll *c, const char *sort, dbk__sb *sql,
                             dbk_error *err)
{
    const dbk__dialect *d = dbk__doc_dialect(c);
    bool has_id = false;
    if (sort && *sort) {
        json_t *tree;
        dbk_rc rc = dbk__doc_json_parse(sort, strlen(sort), "sort", &tree, err);
        if (rc)
            return rc;
        if (json_object_size(tree) > DBK_DOC_MAX_SORT) {
            json_decref(tree);
            return dbk__err(err, DBK_EINVALID_SORT, "sort: at most %d keys", DBK_DOC_MAX_SORT);
        }
        const char *key;
        json_t *v;
        json_object_foreach(tree, key, v)
        {
            dbk_doc_type t;
            if ((rc = resolve(c, key, "sort", &t, err)) != DBK_OK) {
                json_decref(tree);
                if (err)
                    err->code = DBK_EINVALID_SORT;
                return DBK_EINVALID_SORT;
            }
            json_int_t dir = json_is_integer(v) ? json_integer_value(v) : 0;
            if (dir != 1 && dir != -1) {
                dbk__err(err, DBK_EINVALID_SORT, "sort: direction of \"%.80s\" must be 1 or -1",
                         key);
                json_decref(tree); /* key lives in tree: after the message */
                return DBK_EINVALID_SORT;
            }
            if (strcmp(key, "_id") == 0)
                has_id = true;
            dbk__doc_path_sql(c, sql, key, t == DBK_DOC_ARRAY || t == DBK_DOC_OBJECT ? 0 : t);
            dbk__sb_puts(sql, dir > 0 ? d->asc_nulls_first : d->desc_nulls_last);
            dbk__sb_puts(sql, ", ");
        }
        json_decref(tree);
    }
    if (!has_id)
        dbk__sb_puts(sql, "id ASC");
    else
        sql->len -= 2, sql->p[sql->len] = '\0';
    if (sql->oom)
        return dbk__err(err, DBK_ENOMEM, "out of memory compiling a sort");
    return DBK_OK;
}
