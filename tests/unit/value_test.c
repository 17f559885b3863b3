/* dbkit:valgrind
 * Values and the timestamp text form. */
#include <string.h>

#include "testutil.h"

static void value_constructors(void **state)
{
    (void)state;
    dbk_value v = dbk_text("abc");
    assert_int_equal(v.type, DBK_TYPE_TEXT);
    assert_int_equal(v.u.bytes.len, 3);
    v = dbk_text(NULL);
    assert_int_equal(v.type, DBK_TYPE_NULL);
    v = dbk_textn("a\0b", 3);
    assert_int_equal(v.u.bytes.len, 3);
    v = dbk_int64(INT64_MIN);
    assert_true(v.type == DBK_TYPE_INT64 && v.u.i == INT64_MIN);
    v = dbk_json("{}");
    assert_int_equal(v.type, DBK_TYPE_JSON);
    v = dbk_blob("\0\1", 2);
    assert_int_equal(v.type, DBK_TYPE_BLOB);
    assert_string_equal(dbk_type_name(DBK_TYPE_TIMESTAMP), "timestamp");
    assert_string_equal(dbk_type_name((dbk_type)99), "unknown");
}

static void value_timestamp_format(void **state)
{
    (void)state;
    char buf[40];
    DBKT_RC(DBK_OK, dbk_timestamp_format(0, buf, sizeof buf));
    assert_string_equal(buf, "1970-01-01 00:00:00.000000+00:00");
    DBKT_RC(DBK_OK, dbk_timestamp_format(-1, buf, sizeof buf));
    assert_string_equal(buf, "1969-12-31 23:59:59.999999+00:00");
    DBKT_RC(DBK_OK, dbk_timestamp_format(951782400123456LL, buf, sizeof buf));
    assert_string_equal(buf, "2000-02-29 00:00:00.123456+00:00");
    DBKT_RC(DBK_EMISUSE, dbk_timestamp_format(0, buf, 10));
    DBKT_RC(DBK_EINVALID, dbk_timestamp_format(INT64_MAX, buf, sizeof buf));
}

static void value_timestamp_parse(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t us;
    } ok[] = {
        {"1970-01-01 00:00:00", 0},
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01 00:00:00+00", 0},
        {"1970-01-01 01:00:00+01", 0},
        {"1970-01-01 01:30:00+01:30", 0},
        {"1969-12-31 19:00:00-05", 0},
        {"1970-01-01", 0},
        {"2000-02-29 00:00:00.123456+00:00", 951782400123456LL},
        {"2000-02-29 00:00:00.1234567", 951782400123456LL},
        {"2000-02-29 00:00:00.5", 951782400500000LL},
        {"1969-12-31 23:59:59.999999+00", -1},
        {"0001-01-01 00:00:00", -62135596800000000LL},
        /* the edges of the reader's shortcut for the common forms: each
         * is read the same on either side of it */
        {"1970-01-01t00:00:00z", 0},
        {"1970-01-01 00:00:60", 60000000},           /* a leap second */
        {"1970-01-01 02:00:00+0200", 0},             /* +HHMM */
        {"1970-01-01 00:00:30+00:00:30", 0},         /* a zone with seconds */
        {"1970-01-01 00:00:00.000001-00:01", 60000001},
        {"1970-01-01 00:00:00.9999999", 999999},     /* a 7th digit is dropped */
        {"2024-02-29 12:00:00+15:59", 1709208000000000LL - 57540000000LL},
        {"9999-12-31 23:59:59.999999+00", 253402300799999999LL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t us = 42;
        dbk_rc rc = dbk_timestamp_parse(ok[i].s, strlen(ok[i].s), &us);
        if (rc != DBK_OK || us != ok[i].us)
            fail_msg("%s: rc %s, got %lld want %lld", ok[i].s, dbk_rc_name(rc), (long long)us,
                     (long long)ok[i].us);
    }
    static const char *bad[] = {"",           "1970",        "1970-13-01",       "1970-02-30",
                                "2001-02-29", "1970-01-01x", "1970-01-01 25:00", "1970-01-01 00:00:00.",
                                "abc",        "1970-01-01 00:00:00+",           "1970-01-01 00:00:00 BC",
                                "2023-02-29 00:00:00",    "1970-01-01 24:00:00",
                                "1970-01-01 00:60:00",    "1970-01-01 00:00:61",
                                "1970-01-01 00:00:00+16", "1970-01-01 00:00:00+00:60",
                                "1970-01-01 00:00:00Z ",  "1970-01-01 00:00:00.5Zx",
                                "0000-01-01 00:00:00",    "1970-01-01 00:00:00+1",
                                "1970-01-01 0a:00:00",    "1970-01-01X00:00:00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t us;
        if (dbk_timestamp_parse(bad[i], strlen(bad[i]), &us) != DBK_ETYPE)
            fail_msg("accepted bad timestamp '%s'", bad[i]);
    }
    /* a NUL inside the given length is a character like any other */
    int64_t us;
    DBKT_RC(DBK_ETYPE, dbk_timestamp_parse("1970-01-01 00:00:00\0", 20, &us));
    DBKT_RC(DBK_ETYPE, dbk_timestamp_parse("1970-01-01 00:00:\000", 19, &us));
    DBKT_RC(DBK_OK, dbk_timestamp_parse("1970-01-01 00:00:01\0junk", 19, &us));
    assert_int_equal(us, 1000000);
}

static void value_timestamp_round_trip(void **state)
{
    (void)state;
    char buf[40];
    /* Every ~37 days from year 1 to 9999, with varied microseconds. */
    for (int64_t us = -62135596800000000LL; us < 253402300799000000LL;
         us += 3196800123457LL) {
        int64_t back;
        DBKT_RC(DBK_OK, dbk_timestamp_format(us, buf, sizeof buf));
        DBKT_RC(DBK_OK, dbk_timestamp_parse(buf, strlen(buf), &back));
        if (back != us)
            fail_msg("%s: %lld != %lld", buf, (long long)back, (long long)us);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(value_constructors),
        cmocka_unit_test(value_timestamp_format),
        cmocka_unit_test(value_timestamp_parse),
        cmocka_unit_test(value_timestamp_round_trip),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
