/* dbkit:valgrind
 * The library's one key hash (src/core/hash.h), 64-bit FNV-1a. The
 * values are pinned: a layout fingerprint made with it travels inside
 * cached rows, so a change would make every cached row unreadable. No
 * server. */
#include <string.h>

#include "core/hash.h"
#include "testutil.h"

static void hash_fnv64_reference_values(void **state)
{
    (void)state;
    /* the published FNV-1a 64-bit test vectors */
    assert_true(dbk__fnv64(DBK__FNV64_OFFSET, "", 0) == UINT64_C(0xcbf29ce484222325));
    assert_true(dbk__fnv64(DBK__FNV64_OFFSET, "a", 1) == UINT64_C(0xaf63dc4c8601ec8c));
    assert_true(dbk__fnv64(DBK__FNV64_OFFSET, "foobar", 6) == UINT64_C(0x85944171f73967e8));
}

static void hash_fnv64_folds_in_pieces(void **state)
{
    (void)state;
    /* hashing a text in two calls is hashing it whole */
    uint64_t h = dbk__fnv64(DBK__FNV64_OFFSET, "foo", 3);
    assert_true(dbk__fnv64(h, "bar", 3) == dbk__fnv64(DBK__FNV64_OFFSET, "foobar", 6));
    /* bytes are unsigned: a byte >= 0x80 is not sign-extended */
    unsigned char hi = 0xff;
    assert_true(dbk__fnv64(DBK__FNV64_OFFSET, &hi, 1) ==
                (DBK__FNV64_OFFSET ^ UINT64_C(0xff)) * DBK__FNV64_PRIME);
    /* a word step is one xor and one multiply */
    h = dbk__fnv64(DBK__FNV64_OFFSET, "x", 1);
    assert_true(dbk__fnv64_word(h, 0xff) == UINT64_C(0x08f1c907b58eba68));
    /* a NUL inside the bytes counts */
    assert_true(dbk__fnv64(DBK__FNV64_OFFSET, "a\0b", 3) != dbk__fnv64(DBK__FNV64_OFFSET, "ab", 2));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hash_fnv64_reference_values),
        cmocka_unit_test(hash_fnv64_folds_in_pieces),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
