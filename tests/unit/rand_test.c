/* dbkit:valgrind
 * The library's random numbers (src/core/rand.h). No server. */
#include <pthread.h>
#include <string.h>

#include "core/rand.h"
#include "testutil.h"

static void rand_mix64_is_splitmix64(void **state)
{
    (void)state;
    /* The first outputs of splitmix64 seeded with 0 (the reference
     * generator's state advances by the golden ratio before mixing). */
    assert_true(dbk__mix64(0) == UINT64_C(0xe220a8397b1dcdaf));
    assert_true(dbk__mix64(UINT64_C(0x9e3779b97f4a7c15)) == UINT64_C(0x6e789e6aa1b965f4));
}

static void rand_rand64_draws_differ(void **state)
{
    (void)state;
    uint64_t seen[256];
    for (int i = 0; i < 256; i++) {
        seen[i] = dbk__rand64();
        assert_true(seen[i] != 0);
        for (int j = 0; j < i; j++)
            assert_true(seen[i] != seen[j]);
    }
}

static void rand_next_seeds_zero_state_and_never_returns_zero(void **state)
{
    (void)state;
    uint64_t st = 0, a = dbk__rand_next(&st);
    assert_true(st != 0);
    assert_true(a != 0);
    uint64_t st2 = st, b = dbk__rand_next(&st);
    assert_true(b != a);
    /* the same state gives the same stream */
    assert_true(dbk__rand_next(&st2) == b);
    for (int i = 0; i < 100000; i++)
        assert_true(dbk__rand_next(&st) != 0);
}

static void *draw_many(void *arg)
{
    uint64_t *out = arg;
    for (int i = 0; i < 1000; i++)
        out[i] = dbk__rand64();
    return NULL;
}

static void rand_rand64_threads_draw_distinct_values(void **state)
{
    (void)state;
    static uint64_t a[1000], b[1000];
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, draw_many, a), 0);
    assert_int_equal(pthread_create(&tb, NULL, draw_many, b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int i = 0; i < 1000; i++)
        for (int j = 0; j < 1000; j++)
            assert_true(a[i] != b[j]);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rand_mix64_is_splitmix64),
        cmocka_unit_test(rand_rand64_draws_differ),
        cmocka_unit_test(rand_next_seeds_zero_state_and_never_returns_zero),
        cmocka_unit_test(rand_rand64_threads_draw_distinct_values),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
