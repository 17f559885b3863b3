/* dbkit:valgrind
 * The cached-row codec (src/cache/codec.c) without a server: every type
 * round-trips byte for byte (empty, NUL inside, invalid UTF-8), the layout
 * hash separates names and types, and hostile buffers (truncated at every
 * length, corrupted headers, bad types and bools, lengths past the end,
 * trailing bytes) are refused without reading outside the buffer: each
 * decode gets an exact-size heap copy, so a read past it is an ASan or
 * valgrind error. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define LAYOUT UINT64_C(0x0123456789abcdef)

/* Decodes an exact-size heap copy of buf[0..len). */
static dbk_rc decode_copy(const void *buf, size_t len, uint64_t layout, dbk_value *vals, size_t n,
                          dbk_error *err)
{
    void *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, buf, len);
    dbk_rc rc = dbk_cache_decode_row(copy, len, layout, vals, n, err);
    free(copy);
    return rc;
}

static const char odd_text[] = "a\0b\xff\xfe\xc3(";   /* NUL inside, invalid UTF-8 */
static const unsigned char odd_blob[] = {0, 0xff, 0, 'x', 0x80};

static void sample(dbk_value *v)
{
    v[0] = dbk_null();
    v[1] = dbk_bool(true);
    v[2] = dbk_bool(false);
    v[3] = dbk_int64(INT64_MIN);
    v[4] = dbk_double(-0.0);
    v[5] = dbk_timestamp(INT64_MAX);
    v[6] = dbk_textn(odd_text, sizeof odd_text - 1);
    v[7] = dbk_textn("", 0);
    v[8] = dbk_json("{\"k\":[1,2]}");
    v[9] = dbk_blob(odd_blob, sizeof odd_blob);
    v[10] = dbk_blob(NULL, 0);
}
#define NSAMPLE 11

/* The sample row encoded (malloc'd, free()); in[] gets the values. */
static void *encode_sample(dbk_value *in, size_t *len)
{
    sample(in);
    dbk_error err = {0};
    void *buf = NULL;
    DBKT_OK(dbk_cache_encode_row(LAYOUT, in, NSAMPLE, &buf, len, &err), &err);
    return buf;
}

static void codec_round_trip_every_type(void **state)
{
    (void)state;
    dbk_value in[NSAMPLE], out[NSAMPLE];
    dbk_error err = {0};
    size_t len = 0;
    void *buf = encode_sample(in, &len);
    DBKT_OK(dbk_cache_decode_row(buf, len, LAYOUT, out, NSAMPLE, &err), &err);
    for (int i = 0; i < NSAMPLE; i++) {
        assert_int_equal(out[i].type, in[i].type);
        switch (in[i].type) {
        case DBK_TYPE_NULL: break;
        case DBK_TYPE_BOOL: assert_int_equal(out[i].u.b, in[i].u.b); break;
        case DBK_TYPE_DOUBLE: assert_memory_equal(&out[i].u.d, &in[i].u.d, sizeof(double)); break;
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP: assert_true(out[i].u.i == in[i].u.i); break;
        default:
            assert_int_equal(out[i].u.bytes.len, in[i].u.bytes.len);
            if (in[i].u.bytes.len)
                assert_memory_equal(out[i].u.bytes.ptr, in[i].u.bytes.ptr, in[i].u.bytes.len);
            if (in[i].type != DBK_TYPE_BLOB) /* text and JSON come back terminated */
                assert_int_equal(((const char *)out[i].u.bytes.ptr)[out[i].u.bytes.len], 0);
            break;
        }
    }
    /* an empty row is a header only, and decodes */
    void *empty = NULL;
    size_t elen = 0;
    DBKT_OK(dbk_cache_encode_row(LAYOUT, NULL, 0, &empty, &elen, &err), &err);
    assert_int_equal(elen, 16);
    DBKT_OK(decode_copy(empty, elen, LAYOUT, NULL, 0, &err), &err);
    dbk_free(empty);
    dbk_free(buf);
}

static void codec_layout_hash_separates_shapes(void **state)
{
    (void)state;
    const dbk_cache_field a[] = {{"id", DBK_TYPE_INT64}, {"name", DBK_TYPE_TEXT}};
    const dbk_cache_field b[] = {{"id", DBK_TYPE_INT64}, {"name", DBK_TYPE_BLOB}};
    const dbk_cache_field c[] = {{"idn", DBK_TYPE_INT64}, {"ame", DBK_TYPE_TEXT}};
    const dbk_cache_field d[] = {{"name", DBK_TYPE_TEXT}, {"id", DBK_TYPE_INT64}};
    uint64_t ha = dbk_cache_layout_hash("users", a, 2);
    assert_true(ha == dbk_cache_layout_hash("users", a, 2));
    assert_true(ha != dbk_cache_layout_hash("users", b, 2));  /* a type */
    assert_true(ha != dbk_cache_layout_hash("users", c, 2));  /* a name boundary */
    assert_true(ha != dbk_cache_layout_hash("users", d, 2));  /* the order */
    assert_true(ha != dbk_cache_layout_hash("users", a, 1));  /* the count */
    assert_true(ha != dbk_cache_layout_hash("user", a, 2));   /* the entity */
    assert_true(ha != dbk_cache_layout_hash("usersid", c, 2));
    /* NULL names and an empty layout do not crash and stay distinct */
    const dbk_cache_field n[] = {{NULL, DBK_TYPE_INT64}};
    assert_true(dbk_cache_layout_hash(NULL, NULL, 0) != dbk_cache_layout_hash(NULL, n, 1));
}

static void codec_refuses_other_layout_version_count(void **state)
{
    (void)state;
    dbk_value in[NSAMPLE], out[NSAMPLE];
    dbk_error err = {0};
    size_t len = 0;
    void *buf = encode_sample(in, &len);
    DBKT_RC(DBK_ETYPE, decode_copy(buf, len, LAYOUT + 1, out, NSAMPLE, &err));
    DBKT_RC(DBK_ETYPE, decode_copy(buf, len, LAYOUT, out, NSAMPLE - 1, &err));
    unsigned char *b = buf;
    for (size_t i = 0; i < 4; i++) { /* magic 2, version, reserved */
        b[i] ^= 0x40;
        DBKT_RC(DBK_ETYPE, decode_copy(buf, len, LAYOUT, out, NSAMPLE, &err));
        b[i] ^= 0x40;
    }
    /* not a row at all: JSON, empty, NULL with a length of zero */
    DBKT_RC(DBK_ETYPE, decode_copy("{\"id\":1}", 8, LAYOUT, out, 1, &err));
    DBKT_RC(DBK_ETYPE, decode_copy("", 0, LAYOUT, out, 0, &err));
    DBKT_RC(DBK_ETYPE, dbk_cache_decode_row(NULL, 0, LAYOUT, out, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_decode_row(NULL, 5, LAYOUT, out, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_decode_row(buf, len, LAYOUT, NULL, 1, &err));
    dbk_free(buf);
}

static void codec_truncated_at_every_length_refused(void **state)
{
    (void)state;
    dbk_value in[NSAMPLE], out[NSAMPLE];
    dbk_error err = {0};
    size_t len = 0;
    void *buf = encode_sample(in, &len);
    for (size_t k = 0; k < len; k++) {
        dbk_rc rc = decode_copy(buf, k, LAYOUT, out, NSAMPLE, &err);
        if (rc != (k < 16 ? DBK_ETYPE : DBK_EINVALID))
            fail_msg("prefix of %zu of %zu bytes: %s", k, len, dbk_rc_name(rc));
    }
    /* and one byte too many */
    unsigned char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, buf, len);
    longer[len] = 0;
    DBKT_RC(DBK_EINVALID, decode_copy(longer, len + 1, LAYOUT, out, NSAMPLE, &err));
    assert_non_null(strstr(err.message, "trailing"));
    free(longer);
    dbk_free(buf);
}

/* Builds a one-field row: header + the given field bytes (lengths are
 * little-endian u32). */
static size_t one_field(unsigned char *row, const unsigned char *field, size_t flen)
{
    dbk_value v = dbk_null();
    void *hdr = NULL;
    size_t hl = 0;
    dbk_error err = {0};
    DBKT_OK(dbk_cache_encode_row(LAYOUT, &v, 1, &hdr, &hl, &err), &err);
    memcpy(row, hdr, 16);
    dbk_free(hdr);
    memcpy(row + 16, field, flen);
    return 16 + flen;
}

static void codec_malformed_fields_refused(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_value out[1];
    unsigned char row[64];
    const struct {
        const char *what;
        unsigned char bytes[16];
        size_t len;
    } bad[] = {
        {"unknown type", {99}, 1},
        {"type past the enum", {0xff, 0, 0, 0, 0}, 5},
        {"bool 2", {DBK_TYPE_BOOL, 2}, 2},
        {"bool without its byte", {DBK_TYPE_BOOL}, 1},
        {"int64 short", {DBK_TYPE_INT64, 1, 2, 3}, 4},
        {"text length past the end", {DBK_TYPE_TEXT, 9, 0, 0, 0, 'a', 'b', 0}, 8},
        {"text terminator one past the end", {DBK_TYPE_TEXT, 3, 0, 0, 0, 'a', 'b', 0}, 8},
        {"text length 2^32-1", {DBK_TYPE_TEXT, 0xff, 0xff, 0xff, 0xff, 'a', 0}, 7},
        {"text not terminated", {DBK_TYPE_TEXT, 2, 0, 0, 0, 'a', 'b', 'c'}, 8},
        {"json not terminated", {DBK_TYPE_JSON, 1, 0, 0, 0, '1', '2'}, 7},
        {"blob length past the end", {DBK_TYPE_BLOB, 3, 0, 0, 0, 'a', 'b'}, 7},
        {"length cut", {DBK_TYPE_BLOB, 0, 0}, 3},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = one_field(row, bad[i].bytes, bad[i].len);
        dbk_rc rc = decode_copy(row, n, LAYOUT, out, 1, &err);
        if (rc != DBK_EINVALID)
            fail_msg("%s: %s", bad[i].what, dbk_rc_name(rc));
    }
    /* the same framing with good bytes decodes: the header built here is right */
    const unsigned char good[] = {DBK_TYPE_TEXT, 2, 0, 0, 0, 'a', 'b', 0};
    size_t n = one_field(row, good, sizeof good);
    DBKT_OK(decode_copy(row, n, LAYOUT, out, 1, &err), &err);
    assert_int_equal(out[0].u.bytes.len, 2);
}

static void codec_encode_refuses_bad_values(void **state)
{
    (void)state;
    dbk_error err = {0};
    void *buf = (void *)1;
    size_t len = 7;
    dbk_value v = dbk_int64(1);
    v.type = (dbk_type)42;
    DBKT_RC(DBK_EINVALID, dbk_cache_encode_row(LAYOUT, &v, 1, &buf, &len, &err));
    assert_null(buf);
    assert_int_equal(len, 0);
    dbk_value t = {.type = DBK_TYPE_TEXT};
    t.u.bytes.ptr = NULL;
    t.u.bytes.len = 3;
    DBKT_RC(DBK_EMISUSE, dbk_cache_encode_row(LAYOUT, &t, 1, &buf, &len, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_encode_row(LAYOUT, NULL, 1, &buf, &len, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_encode_row(LAYOUT, &v, 0, NULL, &len, &err));
    /* huge: a length over the limit is refused before any allocation */
    dbk_value h = dbk_blob("x", 1);
    h.u.bytes.len = (size_t)DBK_CACHE_MAX_VALUE + 1;
    DBKT_RC(DBK_EINVALID, dbk_cache_encode_row(LAYOUT, &h, 1, &buf, &len, &err));
    assert_non_null(strstr(err.message, "DBK_CACHE_MAX_VALUE"));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(codec_round_trip_every_type),
    cmocka_unit_test(codec_layout_hash_separates_shapes),
    cmocka_unit_test(codec_refuses_other_layout_version_count),
    cmocka_unit_test(codec_truncated_at_every_length_refused),
    cmocka_unit_test(codec_malformed_fields_refused),
    cmocka_unit_test(codec_encode_refuses_bad_values),
};

DBKT_MAIN(tests)
