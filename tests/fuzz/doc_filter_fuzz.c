/*
 * libFuzzer target for the document filter and sort compilers
 * (src/doc/query.c).
 *
 * A filter is input from a client (a query string turned into JSON, an API
 * body). The compiler must answer any bytes with DBK_OK or an error code
 * and never crash, leak or read out of bounds; and whenever it answers
 * DBK_OK, the SQL it wrote must hold no text from the input other than
 * checked paths: every single-quoted literal in it is a JSON path literal
 * ('$.a.b' on SQLite, '{a,b}' on PostgreSQL, with [A-Za-z0-9_] segments)
 * or the fixed 'null'. A literal of any other shape aborts - that would be
 * input text inside SQL. Each input is compiled as a filter and as a sort
 * for both engines, against a schema with every field type.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a copy
 * of tests/fuzz/corpus/doc_filter so new inputs stay out of git.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/doc_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const dbk_doc_field fields[] = {
    {"name", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL},
    {"email", DBK_DOC_STRING, DBK_DOC_UNIQUE, NULL},
    {"age", DBK_DOC_INT64, 0, NULL},
    {"score", DBK_DOC_DOUBLE, 0, NULL},
    {"active", DBK_DOC_BOOL, 0, NULL},
    {"born", DBK_DOC_DATE, 0, NULL},
    {"ref", DBK_DOC_OBJECT_ID, 0, NULL},
    {"tags", DBK_DOC_ARRAY, 0, NULL},
    {"address", DBK_DOC_OBJECT, 0, NULL},
    {"address.city", DBK_DOC_STRING, 0, NULL},
};
static const dbk_doc_schema schema = {
    .collection = "users", .fields = fields, .nfields = 10, .timestamps = true};

static bool literal_ok(const char *s, size_t n)
{
    if (n == 4 && memcmp(s, "null", 4) == 0)
        return true;
    size_t i = 0, end = n;
    if (n >= 3 && s[0] == '$' && s[1] == '.')
        i = 2;
    else if (n >= 3 && s[0] == '{' && s[n - 1] == '}')
        i = 1, end = n - 1;
    else
        return false;
    for (; i < end; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '_' || ch == '.' || ch == ',';
        if (!ok)
            return false;
    }
    return true;
}

static void check_sql(const char *sql)
{
    const char *p = sql;
    while ((p = strchr(p, '\'')) != NULL) {
        const char *q = strchr(p + 1, '\'');
        if (!q || !literal_ok(p + 1, (size_t)(q - p - 1))) {
            fprintf(stderr, "input text reached SQL: %s\n", sql);
            abort();
        }
        p = q + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    static const dbk_engine engines[] = {DBK_ENGINE_SQLITE, DBK_ENGINE_POSTGRES};
    for (int e = 0; e < 2; e++) {
        dbk_doc_coll *c = calloc(1, sizeof *c);
        if (!c)
            break;
        c->engine = engines[e];
        dbk_error err;
        if (dbk__doc_schema_load(c, &schema, &err) != DBK_OK)
            abort();
        dbk__sb sql = {0};
        dbk__params params = {0};
        json_t *tree = NULL;
        if (dbk__doc_filter_compile(c, text, &sql, &params, &tree, &err) == DBK_OK)
            check_sql(sql.p);
        json_decref(tree);
        dbk__params_free(&params);
        dbk__sb_free(&sql);
        if (dbk__doc_sort_compile(c, text, &sql, &err) == DBK_OK)
            check_sql(sql.p);
        dbk__sb_free(&sql);
        dbk__doc_schema_unload(c);
        free(c);
    }
    free(text);
    return 0;
}
