/* dbkit:valgrind
 * Keyset cursors of repository queries (src/repo/cursor.c) without a
 * server: every key type round-trips, a cursor is bound to its entity and
 * sort order, and hostile strings (empty, huge, not base64url, truncated,
 * tampered, a valid checksum around bad contents) are DBK_EINVALID. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repo/query_impl.h"
#include "testutil.h"

struct item {
    int64_t id;
    char *name;
    double score;
    bool active;
    int64_t created;
    char *note;
    bool note_null;
};

static const dbk_field item_fields[] = {
    DBK_FIELD(struct item, id, "id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(struct item, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct item, score, "score", DBK_TYPE_DOUBLE, 0),
    DBK_FIELD(struct item, active, "active", DBK_TYPE_BOOL, 0),
    DBK_FIELD(struct item, created, "created", DBK_TYPE_TIMESTAMP, 0),
    DBK_FIELD_NULL(struct item, note, note_null, "note", DBK_TYPE_TEXT, 0),
};
static dbk_entity item_entity = DBK_ENTITY_PLAIN("items", struct item, item_fields);
static dbk_entity other_entity = DBK_ENTITY_PLAIN("other_items", struct item, item_fields);

/* Sort keys: every supported type, id last as a tie-breaker. */
static const struct okey all_keys[] = {{1, false}, {2, true}, {3, false}, {4, true}, {0, false}};
#define NKEYS ((int)(sizeof all_keys / sizeof all_keys[0]))

static dbk_rc encode(const struct item *it, dbk_arena *a, const char **out, dbk_error *err)
{
    return dbk__q_encode_cursor(&item_entity, all_keys, NKEYS, it, a, out, err);
}

static dbk_rc decode(const char *c, dbk_arena *a, dbk_value *vals)
{
    dbk_error err = {0};
    dbk_rc rc = dbk__q_decode_cursor(&item_entity, all_keys, NKEYS, c, a, vals, &err);
    if (rc != DBK_OK)
        assert_non_null(strstr(err.message, "invalid cursor"));
    return rc;
}

/* base64url of n raw bytes (the encoder's alphabet, no padding). */
static char *b64(const unsigned char *s, size_t n)
{
    static const char B[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = malloc(n / 3 * 4 + 5);
    assert_non_null(o);
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t x = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            x |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            x |= s[i + 2];
        o[j++] = B[(x >> 18) & 63];
        o[j++] = B[(x >> 12) & 63];
        if (i + 1 < n)
            o[j++] = B[(x >> 6) & 63];
        if (i + 2 < n)
            o[j++] = B[x & 63];
    }
    o[j] = '\0';
    return o;
}

static int b64v(char c)
{
    const char *B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *p = strchr(B, c);
    return p ? (int)(p - B) : -1;
}

/* Decodes an encoder-made cursor back to its raw bytes (test side). */
static size_t unb64(const char *c, unsigned char *d)
{
    size_t n = strlen(c), dl = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t x = 0;
        size_t m = n - i < 4 ? n - i : 4;
        for (size_t t = 0; t < 4; t++)
            x = (x << 6) | (uint32_t)(t < m ? b64v(c[i + t]) : 0);
        d[dl++] = (unsigned char)(x >> 16);
        if (m > 2)
            d[dl++] = (unsigned char)(x >> 8);
        if (m > 3)
            d[dl++] = (unsigned char)x;
    }
    return dl;
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = UINT64_C(0x6462b17c0125ab1e);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

/* Re-seals a raw body ("1.<sig>." + values) with a correct checksum, so
 * the decoder's checks after the checksum are reached. */
static char *seal(const unsigned char *body, size_t n)
{
    unsigned char *raw = malloc(n + 18);
    assert_non_null(raw);
    memcpy(raw, body, n);
    char sum[18];
    snprintf(sum, sizeof sum, ".%016llx", (unsigned long long)fnv(body, n));
    memcpy(raw + n, sum, 17);
    char *o = b64(raw, n + 17);
    free(raw);
    return o;
}

static void cursor_round_trip_every_key_type(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    assert_non_null(a);
    dbk_error err = {0};
    /* a name with ':' and '.', a UTF-8 text and invalid UTF-8 bytes */
    const char *names[] = {"", "a:b.c", "3:xyz", "gr\xc3\xbc\xc3\x9f", "\xff\xfe\xc3", "1.2.3."};
    const double scores[] = {0.0, -0.0, 1e308, -2.5e-308, 0.1, 123456789.125};
    const int64_t ids[] = {INT64_MIN, -1, 0, 1, INT64_MAX, 42};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct item it = {ids[i], (char *)names[i], scores[i], i % 2 == 0, ids[5 - i], NULL, true};
        const char *c = NULL;
        DBKT_OK(encode(&it, a, &c, &err), &err);
        for (const char *p = c; *p; p++)
            assert_true(b64v(*p) >= 0);
        dbk_value v[NKEYS];
        DBKT_RC(DBK_OK, decode(c, a, v));
        assert_int_equal(v[0].type, DBK_TYPE_TEXT);
        assert_int_equal(v[0].u.bytes.len, strlen(names[i]));
        if (names[i][0])
            assert_memory_equal(v[0].u.bytes.ptr, names[i], strlen(names[i]));
        assert_int_equal(v[1].type, DBK_TYPE_DOUBLE);
        assert_memory_equal(&v[1].u.d, &scores[i], sizeof(double)); /* -0.0 and all 17 digits */
        assert_int_equal(v[2].type, DBK_TYPE_BOOL);
        assert_int_equal(v[2].u.b, i % 2 == 0);
        assert_int_equal(v[3].type, DBK_TYPE_TIMESTAMP);
        assert_true(v[3].u.i == ids[5 - i]);
        assert_int_equal(v[4].type, DBK_TYPE_INT64);
        assert_true(v[4].u.i == ids[i]);
    }
    dbk_arena_free(a);
}

static void cursor_null_key_refused_at_encode(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err = {0};
    struct item it = {1, "x", 0, false, 0, NULL, true};
    const struct okey k[] = {{5, false}, {0, false}};
    const char *c = NULL;
    DBKT_RC(DBK_EINVALID_SORT, dbk__q_encode_cursor(&item_entity, k, 2, &it, a, &c, &err));
    assert_null(c);
    assert_non_null(strstr(err.message, "items.note"));
    dbk_arena_free(a);
}

static void cursor_bound_to_entity_and_order(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err = {0};
    struct item it = {7, "n", 1.5, true, 99, NULL, true};
    const char *c = NULL;
    DBKT_OK(encode(&it, a, &c, &err), &err);
    dbk_value v[NKEYS];
    /* same keys, other table */
    DBKT_RC(DBK_EINVALID, dbk__q_decode_cursor(&other_entity, all_keys, NKEYS, c, a, v, &err));
    assert_non_null(strstr(err.message, "another entity or sort order"));
    /* same table and columns, one direction flipped */
    struct okey flipped[NKEYS];
    memcpy(flipped, all_keys, sizeof flipped);
    flipped[0].desc = !flipped[0].desc;
    DBKT_RC(DBK_EINVALID, dbk__q_decode_cursor(&item_entity, flipped, NKEYS, c, a, v, &err));
    /* fewer keys */
    DBKT_RC(DBK_EINVALID, dbk__q_decode_cursor(&item_entity, all_keys, NKEYS - 1, c, a, v, &err));
    dbk_arena_free(a);
}

static void cursor_hostile_strings_refused(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    dbk_value v[NKEYS];
    DBKT_RC(DBK_EINVALID, decode("", a, v));
    DBKT_RC(DBK_EINVALID, decode("A", a, v));      /* length % 4 == 1 */
    DBKT_RC(DBK_EINVALID, decode("AAAA", a, v));   /* too short to frame */
    DBKT_RC(DBK_EINVALID, decode("AA==", a, v));   /* padding is not base64url */
    DBKT_RC(DBK_EINVALID, decode("AA+/", a, v));   /* base64, not base64url */
    DBKT_RC(DBK_EINVALID, decode("\xc3\xa9\xc3\xa9", a, v));
    DBKT_RC(DBK_EINVALID, decode("AAAA AAAA", a, v));
    /* huge: one over the limit, and a valid-alphabet string just under it */
    char *huge = malloc(MAX_CURSOR + 2);
    assert_non_null(huge);
    memset(huge, 'A', MAX_CURSOR + 1);
    huge[MAX_CURSOR + 1] = '\0';
    DBKT_RC(DBK_EINVALID, decode(huge, a, v));
    huge[MAX_CURSOR] = '\0';
    DBKT_RC(DBK_EINVALID, decode(huge, a, v));
    free(huge);
    dbk_arena_free(a);
}

static void cursor_truncated_and_tampered_refused(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err = {0};
    struct item it = {123456, "some name", 2.75, false, 1700000000000000LL, NULL, true};
    const char *c = NULL;
    DBKT_OK(encode(&it, a, &c, &err), &err);
    size_t n = strlen(c);
    char *t = malloc(n + 1);
    assert_non_null(t);
    dbk_value v[NKEYS];
    /* every proper prefix (an embedded NUL ends the C string the same way) */
    for (size_t k = 0; k < n; k++) {
        memcpy(t, c, k);
        t[k] = '\0';
        if (decode(t, a, v) != DBK_EINVALID)
            fail_msg("prefix of %zu of %zu characters accepted", k, n);
    }
    /* every single character changed to another base64url character */
    for (size_t k = 0; k < n; k++) {
        memcpy(t, c, n + 1);
        t[k] = t[k] == 'A' ? 'B' : 'A';
        /* the last character may carry unused low bits: a change there can
         * decode to the same bytes, which is the same cursor */
        unsigned char d1[MAX_CURSOR], d2[MAX_CURSOR];
        size_t l1 = unb64(c, d1), l2 = unb64(t, d2);
        if (l1 == l2 && memcmp(d1, d2, l1) == 0)
            continue;
        if (decode(t, a, v) != DBK_EINVALID)
            fail_msg("cursor with character %zu changed accepted", k);
    }
    free(t);
    dbk_arena_free(a);
}

/* Contents that pass the checksum (a client can compute it: it is not a
 * MAC) are still checked field by field. */
static void cursor_sealed_bad_contents_refused(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err = {0};
    struct item it = {5, "ab", 0.5, true, 10, NULL, true};
    const char *c = NULL;
    DBKT_OK(encode(&it, a, &c, &err), &err);
    unsigned char raw[256];
    size_t rl = unb64(c, raw);
    assert_true(rl > 36);
    char head[20];
    memcpy(head, raw, 19); /* "1.<sig16>." */
    head[19] = '\0';

    /* the encoder's own body re-sealed decodes: the test's sealing is right */
    char *ok = seal(raw, rl - 17);
    dbk_value v[NKEYS];
    DBKT_RC(DBK_OK, decode(ok, a, v));
    free(ok);

    const char *bodies[] = {
        "2:ab3:0.51:12:101:5extra",              /* trailing bytes */
        "2:ab3:0.51:12:101:",                    /* last value missing its bytes */
        "2:ab3:0.51:12:10",                      /* a key missing */
        "9:ab3:0.51:12:101:5",                   /* a length past the end */
        "99999999999:ab",                        /* a length with too many digits */
        ":ab3:0.51:12:101:5",                    /* no length digits */
        "2:ab3:0.51:22:101:5",                   /* a boolean that is not 0/1 */
        "2:ab3:0.51:12:1x1:5",                   /* a timestamp that is not an integer */
        "2:ab3:0.51:12:101:a",                   /* an id that is not an integer */
        "2:ab3:0.51:12:1020:99999999999999999999", /* an id out of range */
        "2:ab4:0.5x1:12:101:5",                  /* a double with trailing junk */
        "2:ab0:1:12:101:5",                      /* an empty double */
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        char body[256];
        int bl = snprintf(body, sizeof body, "%s%s", head, bodies[i]);
        char *s = seal((const unsigned char *)body, (size_t)bl);
        if (decode(s, a, v) != DBK_EINVALID)
            fail_msg("sealed body \"%s\" accepted", bodies[i]);
        free(s);
    }
    /* a NUL inside a text key is data, not an end: it round-trips by length */
    char body[64];
    int bl = snprintf(body, sizeof body, "%s3:a", head);
    body[bl++] = '\0';
    bl += snprintf(body + bl, sizeof body - (size_t)bl, "b3:0.51:12:101:5");
    char *s = seal((const unsigned char *)body, (size_t)bl);
    DBKT_RC(DBK_OK, decode(s, a, v));
    assert_int_equal(v[0].u.bytes.len, 3);
    assert_memory_equal(v[0].u.bytes.ptr, "a\0b", 3);
    free(s);
    dbk_arena_free(a);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cursor_round_trip_every_key_type),
    cmocka_unit_test(cursor_null_key_refused_at_encode),
    cmocka_unit_test(cursor_bound_to_entity_and_order),
    cmocka_unit_test(cursor_hostile_strings_refused),
    cmocka_unit_test(cursor_truncated_and_tampered_refused),
    cmocka_unit_test(cursor_sealed_bad_contents_refused),
};

DBKT_MAIN(tests)
