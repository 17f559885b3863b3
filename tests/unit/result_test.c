/* dbkit:valgrind
 * Result getters' conversion rules (include/dbkit/result.h) without a
 * server: results are built with the drivers' builder (core/result_int.h),
 * and every getter is asked for every stored type, so each allowed
 * conversion and each DBK_ETYPE in the header's table is checked. */
#include <math.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/result_int.h"
#include "testutil.h"

enum { G_INT, G_DBL, G_BOOL, G_TEXT, G_BLOB, G_TS, NGET };
static const char *const getter_names[NGET] = {"int64", "double", "bool", "text", "blob", "timestamp"};

static const char odd_text[] = "a\0b\xff"; /* NUL inside, invalid UTF-8 */

struct cellspec {
    const char *name;
    dbk_type type;
    int64_t i;
    double d;
    const char *bytes;
    size_t len;
    dbk_rc want[NGET];
};

#define OK DBK_OK
#define TE DBK_ETYPE
static const struct cellspec cells[] = {
    /*                                              int dbl bool text blob ts */
    {"null", DBK_TYPE_NULL, 0, 0, NULL, 0, {TE, TE, TE, OK, OK, TE}},
    {"i5", DBK_TYPE_INT64, 5, 0, NULL, 0, {OK, OK, TE, TE, TE, TE}},
    {"i0", DBK_TYPE_INT64, 0, 0, NULL, 0, {OK, OK, OK, TE, TE, TE}},
    {"i1", DBK_TYPE_INT64, 1, 0, NULL, 0, {OK, OK, OK, TE, TE, TE}},
    {"imin", DBK_TYPE_INT64, INT64_MIN, 0, NULL, 0, {OK, OK, TE, TE, TE, TE}},
    {"btrue", DBK_TYPE_BOOL, 1, 0, NULL, 0, {OK, TE, OK, TE, TE, TE}},
    {"d3", DBK_TYPE_DOUBLE, 0, 3.0, NULL, 0, {OK, OK, TE, TE, TE, TE}},
    {"d2.5", DBK_TYPE_DOUBLE, 0, 2.5, NULL, 0, {TE, OK, TE, TE, TE, TE}},
    {"dnan", DBK_TYPE_DOUBLE, 0, NAN, NULL, 0, {TE, OK, TE, TE, TE, TE}},
    {"dinf", DBK_TYPE_DOUBLE, 0, -INFINITY, NULL, 0, {TE, OK, TE, TE, TE, TE}},
    {"d2^63", DBK_TYPE_DOUBLE, 0, 9223372036854775808.0, NULL, 0, {TE, OK, TE, TE, TE, TE}},
    {"d-2^63", DBK_TYPE_DOUBLE, 0, -9223372036854775808.0, NULL, 0, {OK, OK, TE, TE, TE, TE}},
    {"tts", DBK_TYPE_TEXT, 0, 0, "2024-01-02 03:04:05.5+02", 24, {TE, TE, TE, OK, OK, OK}},
    {"todd", DBK_TYPE_TEXT, 0, 0, odd_text, 4, {TE, TE, TE, OK, OK, TE}},
    {"tnum", DBK_TYPE_TEXT, 0, 0, "12", 2, {TE, TE, TE, OK, OK, TE}},
    {"tempty", DBK_TYPE_TEXT, 0, 0, "", 0, {TE, TE, TE, OK, OK, TE}},
    {"json", DBK_TYPE_JSON, 0, 0, "{\"a\":1}", 7, {TE, TE, TE, OK, OK, TE}},
    {"blob", DBK_TYPE_BLOB, 0, 0, "\0\1\2", 3, {TE, TE, TE, TE, OK, TE}},
    {"ts", DBK_TYPE_TIMESTAMP, -1, 0, NULL, 0, {TE, TE, TE, TE, TE, OK}},
};
#define NCELLS ((int)(sizeof cells / sizeof cells[0]))

/* One row holding every cell of the table, one column each. */
static dbk_result *build(void)
{
    const char *names[NCELLS];
    for (int i = 0; i < NCELLS; i++)
        names[i] = cells[i].name;
    dbk_result *r = dbk__result_new(NCELLS, names, NULL);
    assert_non_null(r);
    struct dbk__cell *row = dbk__result_add_row(r);
    assert_non_null(row);
    for (int i = 0; i < NCELLS; i++) {
        struct dbk__cell *c = &row[i];
        switch (cells[i].type) {
        case DBK_TYPE_NULL: break;
        case DBK_TYPE_INT64:
        case DBK_TYPE_BOOL:
        case DBK_TYPE_TIMESTAMP:
            c->type = (uint8_t)cells[i].type;
            c->v.i = cells[i].i;
            break;
        case DBK_TYPE_DOUBLE:
            c->type = DBK_TYPE_DOUBLE;
            c->v.d = cells[i].d;
            break;
        default:
            assert_int_equal(
                dbk__result_set_bytes(r, c, cells[i].type, cells[i].bytes, cells[i].len), DBK_OK);
            break;
        }
    }
    return r;
}

static dbk_rc get(const dbk_result *r, int g, int col, dbk_error *err)
{
    int64_t i;
    double d;
    bool b;
    const char *t;
    const void *p;
    size_t len;
    switch (g) {
    case G_INT: return dbk_result_get_int64(r, 0, col, &i, err);
    case G_DBL: return dbk_result_get_double(r, 0, col, &d, err);
    case G_BOOL: return dbk_result_get_bool(r, 0, col, &b, err);
    case G_TEXT: return dbk_result_get_text(r, 0, col, &t, &len, err);
    case G_BLOB: return dbk_result_get_blob(r, 0, col, &p, &len, err);
    default: return dbk_result_get_timestamp(r, 0, col, &i, err);
    }
}

static void result_conversion_matrix(void **state)
{
    (void)state;
    dbk_result *r = build();
    for (int col = 0; col < NCELLS; col++) {
        assert_int_equal(dbk_result_type(r, 0, col), cells[col].type);
        for (int g = 0; g < NGET; g++) {
            dbk_error err = {0};
            dbk_rc rc = get(r, g, col, &err);
            if (rc != cells[col].want[g])
                fail_msg("%s getter on column %s: expected %s, got %s (%s)", getter_names[g],
                         cells[col].name, dbk_rc_name(cells[col].want[g]), dbk_rc_name(rc),
                         err.message);
            /* a refusal names the column */
            if (rc == DBK_ETYPE)
                assert_non_null(strstr(err.message, cells[col].name));
        }
    }
    dbk_result_free(r);
}

static void result_converted_values(void **state)
{
    (void)state;
    dbk_result *r = build();
    dbk_error err = {0};
    int64_t i = 0;
    double d = 0;
    bool b = false;
    const char *t = NULL;
    const void *p = NULL;
    size_t len = 99;
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "btrue", &i, &err), &err);
    assert_true(i == 1);
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "d3", &i, &err), &err);
    assert_true(i == 3);
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "d-2^63", &i, &err), &err);
    assert_true(i == INT64_MIN);
    DBKT_OK(dbk_result_get_double_by_name(r, 0, "imin", &d, &err), &err);
    assert_true(d == -9223372036854775808.0);
    DBKT_OK(dbk_result_get_bool_by_name(r, 0, "i0", &b, &err), &err);
    assert_false(b);
    DBKT_OK(dbk_result_get_bool_by_name(r, 0, "i1", &b, &err), &err);
    assert_true(b);
    /* text keeps an embedded NUL and invalid UTF-8, and is terminated */
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "todd", &t, &len, &err), &err);
    assert_int_equal(len, 4);
    assert_memory_equal(t, odd_text, 5);
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "tempty", &t, &len, &err), &err);
    assert_int_equal(len, 0);
    assert_string_equal(t, "");
    DBKT_OK(dbk_result_get_blob_by_name(r, 0, "json", &p, &len, &err), &err);
    assert_int_equal(len, 7);
    assert_memory_equal(p, "{\"a\":1}", 7);
    DBKT_OK(dbk_result_get_blob_by_name(r, 0, "blob", &p, &len, &err), &err);
    assert_int_equal(len, 3);
    assert_memory_equal(p, "\0\1\2", 3);
    /* NULL: text and blob are OK with NULL and 0 */
    t = "x";
    len = 9;
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "null", &t, &len, &err), &err);
    assert_null(t);
    assert_int_equal(len, 0);
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "null", &t, NULL, &err), &err);
    DBKT_RC(DBK_ETYPE, dbk_result_get_int64_by_name(r, 0, "null", &i, &err));
    assert_non_null(strstr(err.message, "null"));
    /* timestamp from SQLite's text form, the offset applied */
    DBKT_OK(dbk_result_get_timestamp_by_name(r, 0, "tts", &i, &err), &err);
    assert_true(i == 1704157445500000LL);
    DBKT_OK(dbk_result_get_timestamp_by_name(r, 0, "ts", &i, &err), &err);
    assert_true(i == -1);
    /* an unexact double leaves *out alone and says why */
    i = 77;
    DBKT_RC(DBK_ETYPE, dbk_result_get_int64_by_name(r, 0, "d2.5", &i, &err));
    assert_true(i == 77);
    assert_non_null(strstr(err.message, "not an exact int64"));
    dbk_result_free(r);
}

static void result_timestamp_text_hostile(void **state)
{
    (void)state;
    const char *bad[] = {"", " ", "2024", "2024-01-0", "2024-13-01 00:00:00", "2024-01-02 25:00:00",
                         "2024-01-02 03:04:05+", "2024-01-02 03:04:05xyz", "\xff\xfe",
                         "99999999999999999999-01-01"};
    const char *names[] = {"v"};
    dbk_result *r = dbk__result_new(1, names, NULL);
    assert_non_null(r);
    size_t n = sizeof bad / sizeof bad[0];
    for (size_t i = 0; i < n; i++) {
        struct dbk__cell *c = dbk__result_add_row(r);
        assert_non_null(c);
        assert_int_equal(dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, bad[i], strlen(bad[i])), DBK_OK);
    }
    /* a valid timestamp followed by a NUL and junk: the length counts */
    struct dbk__cell *c = dbk__result_add_row(r);
    assert_int_equal(dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, "2024-01-02 03:04:05\0x", 21), DBK_OK);
    for (size_t i = 0; i <= n; i++) {
        dbk_error err = {0};
        int64_t ts = 5;
        dbk_rc rc = dbk_result_get_timestamp(r, i, 0, &ts, &err);
        if (rc != DBK_ETYPE)
            fail_msg("row %zu parsed as a timestamp (%s)", i, dbk_rc_name(rc));
        assert_true(ts == 5);
    }
    dbk_result_free(r);
}

static void result_misuse_and_names(void **state)
{
    (void)state;
    const char *names[] = {"a", "b", "a"};
    size_t lens[] = {1, 1, 1};
    dbk_result *r = dbk__result_new(3, names, lens);
    assert_non_null(r);
    struct dbk__cell *row = dbk__result_add_row(r);
    row[0].type = DBK_TYPE_INT64;
    row[0].v.i = 10;
    row[2].type = DBK_TYPE_INT64;
    row[2].v.i = 30;
    dbk_error err = {0};
    int64_t i = 0;
    /* the first column of a repeated name */
    assert_int_equal(dbk_result_colindex(r, "a"), 0);
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "a", &i, &err), &err);
    assert_true(i == 10);
    assert_int_equal(dbk_result_colindex(r, "A"), -1);
    assert_int_equal(dbk_result_colindex(r, ""), -1);
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_result_get_int64_by_name(r, 0, "zz", &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64_by_name(r, 0, NULL, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 1, 0, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, SIZE_MAX, 0, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, -1, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, 3, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, 0, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(NULL, 0, 0, &i, &err));
    const char *t;
    DBKT_RC(DBK_EMISUSE, dbk_result_get_text(r, 0, 3, &t, NULL, &err));
    /* out of range reads as NULL for the predicates */
    assert_true(dbk_result_is_null(r, 5, 0));
    assert_true(dbk_result_is_null(NULL, 0, 0));
    assert_int_equal(dbk_result_type(r, 0, 99), DBK_TYPE_NULL);
    assert_null(dbk_result_colname(r, 3));
    assert_string_equal(dbk_result_colname(r, 1), "b");
    assert_int_equal(dbk_result_nrows(NULL), 0);
    assert_int_equal(dbk_result_ncols(NULL), 0);
    dbk_result_free(r);
    dbk_result_free(NULL);
}

/* A result starts with its first row and first bytes inside its own
 * allocation and moves them out as it grows: every shape (no columns, one
 * narrow row, many rows, long values, columns past the inline limit) keeps
 * every value and name intact across the move. ASan and valgrind run this
 * test, so a write past the inline room or a free of it fails here. */
static void result_grows_out_of_inline_room(void **state)
{
    (void)state;
    static const int widths[] = {0, 1, 4, 64, 65, 300};
    static const size_t rowcounts[] = {0, 1, 2, 5, 1000};
    static const size_t vlens[] = {0, 7, 191, 192, 193, 5000};
    for (size_t w = 0; w < DBK_NELEMS(widths); w++) {
        int ncols = widths[w];
        char namebuf[300][16];
        const char *names[300];
        for (int c = 0; c < ncols; c++) {
            snprintf(namebuf[c], sizeof namebuf[c], "col%d", c);
            names[c] = namebuf[c];
        }
        for (size_t rc = 0; rc < DBK_NELEMS(rowcounts); rc++) {
            for (size_t vl = 0; vl < DBK_NELEMS(vlens); vl++) {
                size_t nrows = ncols ? rowcounts[rc] : 0, len = vlens[vl];
                if (ncols >= 65 && nrows > 5)
                    nrows = 5; /* enough to leave the inline room, and fast */
                dbk_result *r = dbk__result_new(ncols, names, NULL);
                assert_non_null(r);
                char *val = malloc(len + 1);
                assert_non_null(val);
                for (size_t i = 0; i < nrows; i++) {
                    struct dbk__cell *row = dbk__result_add_row(r);
                    assert_non_null(row);
                    for (int c = 0; c < ncols; c++) {
                        if (c % 2) {
                            row[c].type = DBK_TYPE_INT64;
                            row[c].v.i = (int64_t)(i * 1000 + (size_t)c);
                        } else {
                            memset(val, 'a' + (int)((i + (size_t)c) % 26), len);
                            assert_int_equal(dbk__result_set_bytes(r, &row[c], DBK_TYPE_TEXT,
                                                                   val, len),
                                             DBK_OK);
                            row = r->cells + i * (size_t)ncols; /* cells may have moved */
                        }
                    }
                }
                assert_int_equal(dbk_result_nrows(r), nrows);
                assert_int_equal(dbk_result_ncols(r), ncols);
                for (int c = 0; c < ncols; c++)
                    assert_string_equal(dbk_result_colname(r, c), names[c]);
                dbk_error err;
                for (size_t i = 0; i < nrows; i++) {
                    for (int c = 0; c < ncols; c++) {
                        if (c % 2) {
                            int64_t got = -1;
                            DBKT_OK(dbk_result_get_int64(r, i, c, &got, &err), &err);
                            assert_true(got == (int64_t)(i * 1000 + (size_t)c));
                        } else {
                            const char *t = NULL;
                            size_t tl = 0;
                            DBKT_OK(dbk_result_get_text(r, i, c, &t, &tl, &err), &err);
                            assert_int_equal(tl, len);
                            assert_int_equal(t[len], '\0');
                            char want = (char)('a' + (int)((i + (size_t)c) % 26));
                            for (size_t k = 0; k < len; k++)
                                if (t[k] != want)
                                    fail_msg("row %zu col %d byte %zu: %c", i, c, k, t[k]);
                        }
                    }
                }
                free(val);
                dbk_result_free(r);
            }
        }
    }
    /* one exact reservation, as the PostgreSQL driver makes */
    const char *one[] = {"v"};
    dbk_result *r = dbk__result_new(1, one, NULL);
    assert_non_null(r);
    assert_int_equal(dbk__result_reserve(r, 3, 600), DBK_OK);
    for (int i = 0; i < 3; i++) {
        struct dbk__cell *row = dbk__result_add_row(r);
        assert_non_null(row);
        char v[200];
        memset(v, 'x', sizeof v);
        assert_int_equal(dbk__result_set_bytes(r, row, DBK_TYPE_BLOB, v, sizeof v), DBK_OK);
    }
    const void *b;
    size_t bl;
    dbk_error err;
    DBKT_OK(dbk_result_get_blob(r, 2, 0, &b, &bl, &err), &err);
    assert_int_equal(bl, 200);
    dbk_result_free(r);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(result_grows_out_of_inline_room),
    cmocka_unit_test(result_conversion_matrix),
    cmocka_unit_test(result_converted_values),
    cmocka_unit_test(result_timestamp_text_hostile),
    cmocka_unit_test(result_misuse_and_names),
};

DBKT_MAIN(tests)
