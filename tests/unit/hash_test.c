/* dbkit:valgrind
 * The library's one key hash (src/core/hash.h), 64-bit FNV-1a. The
 * values are pinned: a layout fingerprint made with it travels inside
 * cached rows, so a change would make every cached row unreadable. No
 * server. */
#include <stdio.h>
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

static void hash_words_separates_texts(void **state)
{
    (void)state;
    const char *a = "SELECT id, name FROM users WHERE id = $1";
    size_t n = strlen(a);
    /* the same bytes, the same hash, wherever they are */
    char copy[64];
    memcpy(copy, a, n + 1);
    assert_true(dbk__hash_words(a, n, 7) == dbk__hash_words(copy, n, 7));
    /* one byte changed anywhere (a whole word, the tail), a length or a
     * seed: another hash */
    for (size_t i = 0; i < n; i++) {
        copy[i] ^= 1;
        assert_true(dbk__hash_words(copy, n, 7) != dbk__hash_words(a, n, 7));
        copy[i] ^= 1;
    }
    assert_true(dbk__hash_words(a, n - 1, 7) != dbk__hash_words(a, n, 7));
    assert_true(dbk__hash_words(a, n, 8) != dbk__hash_words(a, n, 7));
    /* a NUL inside counts, and the empty text has a hash of its own */
    assert_true(dbk__hash_words("a\0b", 3, 0) != dbk__hash_words("ab", 2, 0));
    assert_true(dbk__hash_words("", 0, 0) != dbk__hash_words("\0", 1, 0));
    /* the low bits (a bucket) spread: 1,000 texts over 64 buckets */
    int buckets[64] = {0};
    char t[32];
    for (int i = 0; i < 1000; i++) {
        int len = snprintf(t, sizeof t, "SELECT %d", i);
        buckets[dbk__hash_words(t, (size_t)len, 0) & 63]++;
    }
    for (int b = 0; b < 64; b++)
        assert_true(buckets[b] > 0 && buckets[b] < 50);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hash_fnv64_reference_values),
        cmocka_unit_test(hash_fnv64_folds_in_pieces),
        cmocka_unit_test(hash_words_separates_texts),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
