/*
 * The one random-number family of the library (none of it is for secrets):
 *
 *   dbk__mix64      the splitmix64 step: a well-mixed 64-bit value from any
 *                   input (a counter, a seed plus a draw number);
 *   dbk__rand64     process-wide draws, seeded once from getrandom() (the
 *                   clock when that fails), lock-free and thread-safe;
 *   dbk__rand_next  a xorshift64* stream on caller-owned state (one per
 *                   pool, one per thread), seeded from dbk__rand64 when 0.
 *
 * Used for back-off jitter (tx), lifetime jitter (pool), lease tokens and
 * sampling (cache, diag) and statement-name nonces (the PostgreSQL driver).
 */
#ifndef DBK_RAND_H
#define DBK_RAND_H

#include <stdint.h>

static inline uint64_t dbk__mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* A process-wide draw; never 0. */
uint64_t dbk__rand64(void);

/* The next value of the stream in *state (0 is seeded first); never
 * returns 0. */
uint64_t dbk__rand_next(uint64_t *state);

#endif
