/*
 * Documents as JSON: parsing with dbkit's limits, dotted-path access, the
 * public accessors, and the parameter list the compilers write into next
 * to their SQL text (which goes into the core string builder, core/sb.h).
 *
 * Parsing is jansson's (duplicate keys rejected, "\u0000" rejected, UTF-8
 * checked); on top of it the size limit is decided from the length before
 * anything is read, and the depth limit by one walk of the tree, so a
 * hostile document costs at most one parse. Paths are checked by one
 * character-class scan: the compilers put checked paths into SQL text as
 * JSON path literals, so this scan is what keeps a field name from ever
 * becoming SQL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/doc_int.h"

/* ---- the parameter list (SQL text goes into core/sb.h's builder) ---- */

void dbk__params_free(dbk__params *p)
{
    for (size_t i = 0; i < p->nowned; i++)
        free(p->owned[i]);
    free(p->owned);
    free(p->v);
    memset(p, 0, sizeof *p);
}

/* ---- parsing and paths ---- */

/* Objects and arrays nested in one another, the root counting as 1;
 * scalars add no level. */
static bool depth_ok(json_t *v, int depth)
{
    if ((json_is_object(v) || json_is_array(v)) && depth > DBK_DOC_MAX_DEPTH)
        return false;
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
        {
            if (!depth_ok(m, depth + 1))
                return false;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            if (!depth_ok(m, depth + 1))
                return false;
        }
    }
    return true;
}

dbk_rc dbk__doc_json_parse(const char *json, size_t len, const char *what, json_t **out,
                           dbk_error *err)
{
    *out = NULL;
    if (!json)
        return dbk__err(err, DBK_EMISUSE, "%s: NULL JSON text", what);
    if (len > DBK_DOC_MAX_BYTES)
        return dbk__err(err, DBK_EINVALID, "%s is %zu bytes, more than the %d allowed", what,
                        len, DBK_DOC_MAX_BYTES);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_out_of_memory)
            return dbk__err(err, DBK_ENOMEM, "out of memory parsing the %s", what);
        return dbk__err(err, DBK_EINVALID, "%s is not valid JSON: %s (line %d, column %d)", what,
                        je.text, je.line, je.column);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return dbk__err(err, DBK_EINVALID, "%s must be a JSON object", what);
    }
    if (!depth_ok(root, 1)) {
        json_decref(root);
        return dbk__err(err, DBK_EINVALID, "%s is nested more than %d levels deep", what,
                        DBK_DOC_MAX_DEPTH);
    }
    *out = root;
    return DBK_OK;
}

bool dbk__doc_path_ok(const char *path)
{
    if (!path || !*path)
        return false;
    int segs = 1;
    size_t seglen = 0;
    for (const char *p = path; *p; p++) {
        char ch = *p;
        if (ch == '.') {
            if (seglen == 0 || ++segs > 16)
                return false;
            seglen = 0;
            continue;
        }
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
        bool digit = ch >= '0' && ch <= '9';
        if (!alpha && !(digit && seglen > 0))
            return false;
        if (++seglen > 64)
            return false;
    }
    return seglen > 0;
}

json_t *dbk__doc_path_get(json_t *root, const char *path)
{
    char seg[65];
    const char *p = path;
    json_t *cur = root;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof seg || !json_is_object(cur))
            return NULL;
        memcpy(seg, p, n);
        seg[n] = '\0';
        cur = json_object_get(cur, seg);
        p += n + (dot ? 1 : 0);
    }
    return cur;
}

void dbk__doc_date_format(int64_t usec, char buf[40])
{
    char tmp[40];
    if (dbk_timestamp_format(usec, tmp, sizeof tmp) != DBK_OK) {
        snprintf(buf, 40, "0001-01-01T00:00:00.000000Z");
        return;
    }
    /* "YYYY-MM-DD HH:MM:SS.ffffff+00:00" -> "YYYY-MM-DDTHH:MM:SS.ffffffZ" */
    memcpy(buf, tmp, 26);
    buf[10] = 'T';
    buf[26] = 'Z';
    buf[27] = '\0';
}

/* ---- public documents ---- */

DBK_API dbk_rc dbk_doc_parse(const char *json, size_t len, dbk_doc **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_parse: NULL out");
    *out = NULL;
    json_t *root;
    dbk_rc rc = dbk__doc_json_parse(json, len, "document", &root, err);
    if (rc)
        return rc;
    dbk_doc *d = malloc(sizeof *d);
    if (!d) {
        json_decref(root);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    d->root = root;
    *out = d;
    return DBK_OK;
}

DBK_API void dbk_doc_free(dbk_doc *doc)
{
    if (!doc)
        return;
    json_decref(doc->root);
    free(doc);
}

DBK_API const char *dbk_doc_id(const dbk_doc *doc)
{
    if (!doc)
        return NULL;
    return json_string_value(json_object_get(doc->root, "_id"));
}

DBK_API dbk_rc dbk_doc_to_json(const dbk_doc *doc, char **out, dbk_error *err)
{
    if (!doc || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_to_json: NULL argument");
    *out = json_dumps(doc->root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*out)
        return dbk__err(err, DBK_ENOMEM, "out of memory writing a document");
    return DBK_OK;
}

DBK_API bool dbk_doc_has(const dbk_doc *doc, const char *path)
{
    return doc && path && dbk__doc_path_get(doc->root, path) != NULL;
}

static dbk_rc get_value(const dbk_doc *doc, const char *path, json_t **v, dbk_error *err)
{
    if (!doc || !path)
        return dbk__err(err, DBK_EMISUSE, "dbk_doc_get: NULL argument");
    *v = dbk__doc_path_get(doc->root, path);
    if (!*v || json_is_null(*v))
        return dbk__err(err, DBK_ENOT_FOUND, "no value at \"%.80s\"", path);
    return DBK_OK;
}

static dbk_rc wrong_type(dbk_error *err, const char *path, const char *want)
{
    return dbk__err(err, DBK_ETYPE, "the value at \"%.80s\" is not %s", path, want);
}

DBK_API dbk_rc dbk_doc_get_text(const dbk_doc *doc, const char *path, const char **out,
                                size_t *len, dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_string(v))
        return wrong_type(err, path, "a string");
    *out = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_get_int64(const dbk_doc *doc, const char *path, int64_t *out,
                                 dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_integer(v))
        return wrong_type(err, path, "an integer");
    *out = (int64_t)json_integer_value(v);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_get_double(const dbk_doc *doc, const char *path, double *out,
                                  dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_number(v))
        return wrong_type(err, path, "a number");
    *out = json_number_value(v);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_get_bool(const dbk_doc *doc, const char *path, bool *out, dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_boolean(v))
        return wrong_type(err, path, "a boolean");
    *out = json_is_true(v);
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_get_date(const dbk_doc *doc, const char *path, int64_t *usec,
                                dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_string(v) ||
        dbk_timestamp_parse(json_string_value(v), json_string_length(v), usec) != DBK_OK)
        return wrong_type(err, path, "a date");
    return DBK_OK;
}

DBK_API dbk_rc dbk_doc_array_len(const dbk_doc *doc, const char *path, size_t *out,
                                 dbk_error *err)
{
    json_t *v = NULL;
    dbk_rc rc = get_value(doc, path, &v, err);
    if (rc)
        return rc;
    if (!json_is_array(v))
        return wrong_type(err, path, "an array");
    *out = json_array_size(v);
    return DBK_OK;
}
