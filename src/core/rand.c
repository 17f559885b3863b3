/*
 * The library's random numbers (see rand.h): one seeded process-wide
 * splitmix64 counter and xorshift64* streams on caller state. Nothing here
 * is for secrets; it only has to differ between processes, threads and
 * draws.
 */
#include "rand.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <sys/types.h>

#include "internal.h"

static _Atomic uint64_t rand_state;
static pthread_once_t rand_once = PTHREAD_ONCE_INIT;

static void rand_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s)
        s = (uint64_t)dbk__now_ns() ^ (uint64_t)(uintptr_t)&s;
    atomic_store(&rand_state, s);
}

uint64_t dbk__rand64(void)
{
    pthread_once(&rand_once, rand_seed);
    /* dbk__mix64 adds the golden-ratio step itself: the counter only has
     * to be distinct per draw. */
    uint64_t z = dbk__mix64(atomic_fetch_add(&rand_state, UINT64_C(0x9e3779b97f4a7c15)));
    return z ? z : 1;
}

uint64_t dbk__rand_next(uint64_t *state)
{
    uint64_t x = *state;
    if (x == 0)
        x = dbk__rand64();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    uint64_t r = x * UINT64_C(0x2545f4914f6cdd1d);
    return r ? r : 1;
}
