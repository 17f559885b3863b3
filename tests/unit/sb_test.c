/* dbkit:valgrind
 * The core string builder (src/core/sb.h) without a server: appends with
 * NUL bytes inside, formatted text longer than the stack buffer, the
 * sticky out-of-memory flag, lengths that would overflow, and free; a
 * builder over a caller's buffer (truncates, stays terminated, counts the
 * length needed, as snprintf), and percent-encoding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/sb.h"
#include "testutil.h"

static void sb_appends_and_terminates(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    assert_null(sb.p);
    dbk__sb_puts(&sb, "");
    assert_non_null(sb.p); /* an empty append still gives a string */
    assert_int_equal(sb.len, 0);
    assert_string_equal(sb.p, "");
    dbk__sb_putn(&sb, "a\0b", 3);
    dbk__sb_putn(&sb, NULL, 0);
    dbk__sb_puts(&sb, "\xff\xfe");
    assert_int_equal(sb.len, 5);
    assert_memory_equal(sb.p, "a\0b\xff\xfe", 6); /* terminated */
    dbk__sb_printf(&sb, "[%d:%s]", 42, "x");
    assert_int_equal(sb.len, 11);
    assert_memory_equal(sb.p + 5, "[42:x]", 7);
    assert_false(sb.oom);
    dbk__sb_free(&sb);
    assert_null(sb.p);
    assert_int_equal(sb.len, 0);
    assert_int_equal(sb.cap, 0);
    dbk__sb_free(&sb); /* twice is fine */
}

static void sb_long_text_and_growth(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    /* formatted text longer than the 128-byte fast path, several times */
    char piece[301];
    memset(piece, 'q', 300);
    piece[300] = '\0';
    for (int i = 0; i < 50; i++)
        dbk__sb_printf(&sb, "%s%03d", piece, i);
    assert_false(sb.oom);
    assert_int_equal(sb.len, 50 * 303);
    assert_int_equal(strlen(sb.p), sb.len);
    assert_memory_equal(sb.p + 303 * 49 + 300, "049", 3);
    assert_true(sb.cap > sb.len);
    /* a formatted piece of exactly the fast-path size boundary */
    dbk__sb b2 = {0};
    dbk__sb_printf(&b2, "%.*s", 127, piece);
    dbk__sb_printf(&b2, "%.*s", 128, piece);
    assert_int_equal(b2.len, 255);
    assert_int_equal(strlen(b2.p), 255);
    dbk__sb_free(&b2);
    dbk__sb_free(&sb);
}

static void sb_oom_sticks_and_overflow_refused(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    dbk__sb_puts(&sb, "keep");
    /* a length that would overflow size_t: refused before any copy (s is
     * never read) and the builder keeps its contents */
    dbk__sb_putn(&sb, "x", SIZE_MAX - 2);
    assert_true(sb.oom);
    assert_int_equal(sb.len, 4);
    assert_string_equal(sb.p, "keep");
    /* sticky: later appends are no-ops */
    dbk__sb_puts(&sb, "more");
    dbk__sb_printf(&sb, "%d", 1);
    assert_int_equal(sb.len, 4);
    assert_string_equal(sb.p, "keep");
    /* free clears the flag: the builder is usable again */
    dbk__sb_free(&sb);
    assert_false(sb.oom);
    dbk__sb_puts(&sb, "again");
    assert_string_equal(sb.p, "again");
    dbk__sb_free(&sb);
}

static void sb_over_buffer_truncates_and_counts(void **state)
{
    (void)state;
    char buf[8];
    memset(buf, 'Z', sizeof buf);
    dbk__sb sb = dbk__sb_over(buf, sizeof buf);
    assert_string_equal(buf, ""); /* emptied at once */
    dbk__sb_puts(&sb, "abc");
    assert_string_equal(buf, "abc");
    dbk__sb_printf(&sb, "%d", 12345); /* 8 bytes needed, 7 fit */
    assert_int_equal(sb.len, 8);
    assert_string_equal(buf, "abc1234");
    dbk__sb_puts(&sb, "more");
    assert_int_equal(sb.len, 12);
    assert_string_equal(buf, "abc1234");
    /* formatted text longer than the stack fast path, into what is left */
    char big[300];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    dbk__sb b2 = dbk__sb_over(buf, sizeof buf);
    dbk__sb_puts(&b2, "x");
    dbk__sb_printf(&b2, "%s!", big);
    assert_int_equal(b2.len, 1 + 299 + 1);
    assert_string_equal(buf, "xqqqqqq");
    assert_false(b2.oom);
    /* exactly full: size - 1 bytes and the terminator */
    dbk__sb b3 = dbk__sb_over(buf, sizeof buf);
    dbk__sb_puts(&b3, "1234567");
    assert_string_equal(buf, "1234567");
    assert_int_equal(b3.len, 7);
    /* free only empties; the buffer is the caller's */
    dbk__sb_free(&b3);
    assert_ptr_equal(b3.p, buf);
    assert_string_equal(buf, "");
    /* no buffer: counting only */
    dbk__sb b4 = dbk__sb_over(NULL, 0);
    dbk__sb_puts(&b4, "hello");
    dbk__sb_printf(&b4, "%s", big);
    assert_int_equal(b4.len, 5 + 299);
    dbk__sb b5 = dbk__sb_over(NULL, 16); /* a size without a buffer is none */
    dbk__sb_puts(&b5, "x");
    assert_int_equal(b5.len, 1);
    /* a one-byte buffer holds the terminator only */
    char one[1] = {'Z'};
    dbk__sb b6 = dbk__sb_over(one, 1);
    dbk__sb_puts(&b6, "abc");
    assert_int_equal(one[0], '\0');
    assert_int_equal(b6.len, 3);
}

static void sb_percent_encoding(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    dbk__sb_put_pct(&sb, "a b/c:d%\xff", 9, "/");
    assert_string_equal(sb.p, "a%20b/c%3Ad%25%FF");
    dbk__sb_put_pct(&sb, "x\0y", 3, ""); /* a NUL byte is encoded, not an end */
    assert_string_equal(sb.p, "a%20b/c%3Ad%25%FFx%00y");
    dbk__sb_put_pct(&sb, "-._~AZaz09", 10, "");
    assert_string_equal(sb.p + 22, "-._~AZaz09");
    dbk__sb_free(&sb);
    char buf[6];
    dbk__sb f = dbk__sb_over(buf, sizeof buf);
    dbk__sb_put_pct(&f, "ab cd", 5, "");
    assert_int_equal(f.len, 7);
    assert_string_equal(buf, "ab%20");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sb_appends_and_terminates),
    cmocka_unit_test(sb_long_text_and_growth),
    cmocka_unit_test(sb_oom_sticks_and_overflow_refused),
    cmocka_unit_test(sb_over_buffer_truncates_and_counts),
    cmocka_unit_test(sb_percent_encoding),
};

DBKT_MAIN(tests)
