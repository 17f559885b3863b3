/* dbkit:valgrind
 * The core string builder (src/core/sb.h) without a server: appends with
 * NUL bytes inside, formatted text longer than the stack buffer, the
 * sticky out-of-memory flag, lengths that would overflow, and free. */
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

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sb_appends_and_terminates),
    cmocka_unit_test(sb_long_text_and_growth),
    cmocka_unit_test(sb_oom_sticks_and_overflow_refused),
};

DBKT_MAIN(tests)
