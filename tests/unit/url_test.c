/* dbkit:valgrind
 * The URL pieces shared by the configuration and cache parsers
 * (src/core/url.h): splitting, host lists, host[:port], decimals and
 * percent-decoding. No server. */
#include <stdlib.h>
#include <string.h>

#include "core/url.h"
#include "testutil.h"

#define SPAN_EQ(sp, lit)                                                                          \
    do {                                                                                          \
        assert_non_null((sp).p);                                                                  \
        assert_int_equal((sp).n, strlen(lit));                                                    \
        assert_memory_equal((sp).p, lit, strlen(lit));                                            \
    } while (0)

static void url_split_full(void **state)
{
    (void)state;
    const char *u = "postgres://al%40ice:p%3Ass@db1:5432,[::1]:6000/shop?sslmode=require&x=1";
    struct dbk__url p;
    assert_true(dbk__url_split(u, strlen(u), &p));
    SPAN_EQ(p.scheme, "postgres");
    assert_true(p.has_userinfo);
    SPAN_EQ(p.user, "al%40ice");
    assert_true(p.has_password);
    SPAN_EQ(p.password, "p%3Ass");
    assert_int_equal(p.n_at, 1);
    SPAN_EQ(p.hosts, "db1:5432,[::1]:6000");
    assert_true(p.has_path);
    SPAN_EQ(p.path, "shop");
    assert_true(p.has_query);
    SPAN_EQ(p.query, "sslmode=require&x=1");
}

static void url_split_minimal(void **state)
{
    (void)state;
    struct dbk__url p;
    assert_true(dbk__url_split("redis://", 8, &p));
    SPAN_EQ(p.scheme, "redis");
    assert_false(p.has_userinfo);
    assert_false(p.has_path);
    assert_false(p.has_query);
    assert_int_equal(p.hosts.n, 0);
    /* a user without a password, a query without a path */
    const char *u = "redis://bob@h?x";
    assert_true(dbk__url_split(u, strlen(u), &p));
    SPAN_EQ(p.user, "bob");
    assert_false(p.has_password);
    SPAN_EQ(p.hosts, "h");
    assert_false(p.has_path);
    SPAN_EQ(p.query, "x");
}

static void url_split_last_at_counts(void **state)
{
    (void)state;
    const char *u = "redis://u:p@ss@host/0";
    struct dbk__url p;
    assert_true(dbk__url_split(u, strlen(u), &p));
    assert_int_equal(p.n_at, 2);
    SPAN_EQ(p.user, "u");
    SPAN_EQ(p.password, "p@ss");
    SPAN_EQ(p.hosts, "host");
    SPAN_EQ(p.path, "0");
    /* an '@' after the authority belongs to the path */
    u = "sqlite:///tmp/a@b.db";
    assert_true(dbk__url_split(u, strlen(u), &p));
    assert_false(p.has_userinfo);
    assert_int_equal(p.n_at, 0);
    SPAN_EQ(p.path, "tmp/a@b.db");
}

static void url_split_rejects_no_scheme(void **state)
{
    (void)state;
    struct dbk__url p;
    assert_false(dbk__url_split("memory:", 7, &p));
    assert_false(dbk__url_split("://h", 4, &p));
    assert_false(dbk__url_split("1x://h", 6, &p));
    assert_false(dbk__url_split("", 0, &p));
    assert_true(dbk__url_split("redis-sentinel://h", 18, &p));
    SPAN_EQ(p.scheme, "redis-sentinel");
}

static void url_list_next_items(void **state)
{
    (void)state;
    struct dbk__span l = {"a,,b,", 5}, it;
    const char *want[] = {"a", "", "b", ""};
    for (int i = 0; i < 4; i++) {
        assert_true(dbk__list_next(&l, ',', &it));
        assert_int_equal(it.n, strlen(want[i]));
        assert_memory_equal(it.p, want[i], it.n);
    }
    assert_false(dbk__list_next(&l, ',', &it));
    struct dbk__span e = {"", 0};
    assert_true(dbk__list_next(&e, ',', &it));
    assert_int_equal(it.n, 0);
    assert_false(dbk__list_next(&e, ',', &it));
}

static void url_hostport_forms(void **state)
{
    (void)state;
    struct dbk__span h;
    int port;
    bool hp;
    assert_int_equal(dbk__url_hostport("db:5432", 7, &h, &port, &hp), DBK__HOSTPORT_OK);
    SPAN_EQ(h, "db");
    assert_int_equal(port, 5432);
    assert_true(hp);
    assert_int_equal(dbk__url_hostport("db", 2, &h, &port, &hp), DBK__HOSTPORT_OK);
    SPAN_EQ(h, "db");
    assert_int_equal(port, 0);
    assert_false(hp);
    assert_int_equal(dbk__url_hostport("[::1]:6379", 10, &h, &port, &hp), DBK__HOSTPORT_OK);
    SPAN_EQ(h, "::1");
    assert_int_equal(port, 6379);
    assert_int_equal(dbk__url_hostport("[fe80::1]", 9, &h, &port, &hp), DBK__HOSTPORT_OK);
    SPAN_EQ(h, "fe80::1");
    assert_false(hp);
    assert_int_equal(dbk__url_hostport(":7000", 5, &h, &port, &hp), DBK__HOSTPORT_OK);
    assert_int_equal(h.n, 0);
    assert_int_equal(port, 7000);
}

static void url_hostport_errors(void **state)
{
    (void)state;
    struct dbk__span h;
    int port;
    bool hp;
    assert_int_equal(dbk__url_hostport("[::1", 4, &h, &port, &hp), DBK__HOSTPORT_BAD_BRACKET);
    assert_int_equal(dbk__url_hostport("[]", 2, &h, &port, &hp), DBK__HOSTPORT_BAD_BRACKET);
    assert_int_equal(dbk__url_hostport("[::1]x", 6, &h, &port, &hp), DBK__HOSTPORT_JUNK);
    const char *bad[] = {"h:", "h:0", "h:65536", "h:12a", "h:-1", "h:99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dbk__url_hostport(bad[i], strlen(bad[i]), &h, &port, &hp),
                         DBK__HOSTPORT_BAD_PORT);
    assert_int_equal(dbk__url_hostport("h:65535", 7, &h, &port, &hp), DBK__HOSTPORT_OK);
    assert_int_equal(port, 65535);
}

static void url_parse_decimal_bounds(void **state)
{
    (void)state;
    long long v = -1;
    assert_true(dbk__parse_decimal("0", 1, 0, 15, &v));
    assert_int_equal(v, 0);
    assert_true(dbk__parse_decimal("15", 2, 0, 15, &v));
    assert_false(dbk__parse_decimal("16", 2, 0, 15, &v));
    assert_false(dbk__parse_decimal("", 0, 0, 15, &v));
    assert_false(dbk__parse_decimal("+1", 2, 0, 15, &v));
    assert_false(dbk__parse_decimal("1234567890123456789", 19, 0, 1, &v));
}

static void url_hexval_digits(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        int want = c >= '0' && c <= '9'   ? c - '0'
                   : c >= 'a' && c <= 'f' ? c - 'a' + 10
                   : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                          : -1;
        assert_int_equal(dbk__hexval(c), want);
    }
}

static void url_pct_decode_ok(void **state)
{
    (void)state;
    char buf[32];
    assert_int_equal(dbk__pct_decode("a%40b%3a%2F+", 12, buf, sizeof buf, NULL), DBK__PCT_OK);
    assert_string_equal(buf, "a@b:/+");
    assert_int_equal(dbk__pct_decode("", 0, buf, sizeof buf, NULL), DBK__PCT_OK);
    assert_string_equal(buf, "");
    assert_int_equal(dbk__pct_decode("%ff", 3, buf, sizeof buf, NULL), DBK__PCT_OK);
    assert_int_equal((unsigned char)buf[0], 0xff);
    char *d = NULL;
    assert_int_equal(dbk__pct_decode_dup("x%20y", 5, &d, NULL), DBK__PCT_OK);
    assert_string_equal(d, "x y");
    free(d);
}

static void url_pct_decode_errors(void **state)
{
    (void)state;
    char buf[8];
    size_t bad = 99;
    assert_int_equal(dbk__pct_decode("ab%4", 4, buf, sizeof buf, &bad), DBK__PCT_BAD);
    assert_int_equal(bad, 2);
    assert_int_equal(buf[0], 0); /* no partial text is left behind */
    assert_int_equal(dbk__pct_decode("%zz", 3, buf, sizeof buf, &bad), DBK__PCT_BAD);
    assert_int_equal(bad, 0);
    assert_int_equal(dbk__pct_decode("a%00", 4, buf, sizeof buf, &bad), DBK__PCT_NUL);
    assert_int_equal(bad, 1);
    assert_int_equal(dbk__pct_decode("12345678", 8, buf, sizeof buf, NULL), DBK__PCT_TOOLONG);
    assert_int_equal(dbk__pct_decode("1234567", 7, buf, sizeof buf, NULL), DBK__PCT_OK);
    assert_int_equal(dbk__pct_decode("%", 1, buf, sizeof buf, NULL), DBK__PCT_BAD);
    char *d = (char *)1;
    assert_int_equal(dbk__pct_decode_dup("%0", 2, &d, &bad), DBK__PCT_BAD);
    assert_null(d);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(url_split_full),
        cmocka_unit_test(url_split_minimal),
        cmocka_unit_test(url_split_last_at_counts),
        cmocka_unit_test(url_split_rejects_no_scheme),
        cmocka_unit_test(url_list_next_items),
        cmocka_unit_test(url_hostport_forms),
        cmocka_unit_test(url_hostport_errors),
        cmocka_unit_test(url_parse_decimal_bounds),
        cmocka_unit_test(url_hexval_digits),
        cmocka_unit_test(url_pct_decode_ok),
        cmocka_unit_test(url_pct_decode_errors),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
