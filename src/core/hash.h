/*
 * hash.h - the library's two hashes: the one 64-bit FNV-1a every module
 * hashes keys with (cache keys and shards, the row codec's layout
 * fingerprint, cursor signatures), and a word-at-a-time hash of SQL text
 * for the in-memory tables hit on every statement. Inline: it runs on every cache call and
 * every statement. The values are part of what the library stores (a
 * layout fingerprint travels inside cached rows), so the function never
 * changes.
 */
#ifndef DBKIT_CORE_HASH_H
#define DBKIT_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DBK__FNV64_OFFSET 14695981039346656037ULL
#define DBK__FNV64_PRIME 1099511628211ULL

/* h folded with the bytes p[0, n) (start from DBK__FNV64_OFFSET). */
static inline uint64_t dbk__fnv64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= DBK__FNV64_PRIME;
    }
    return h;
}

/* h folded with a whole 64-bit word in one step (a number, not bytes). */
static inline uint64_t dbk__fnv64_word(uint64_t h, uint64_t w)
{
    return (h ^ w) * DBK__FNV64_PRIME;
}

/* A hash of p[0, n) 8 bytes per step, for tables that live in memory only
 * (both statement caches, the N+1 detector's statement counts): SQL texts
 * are hashed on every statement, and a byte at a time would cost about a
 * nanosecond per byte. Never stored or sent, so it may change. */
static inline uint64_t dbk__hash_words(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *s = p;
    uint64_t h = seed ^ (uint64_t)n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * UINT64_C(0x9e3779b97f4a7c15);
        h ^= h >> 29;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i);
        h = (h ^ w) * UINT64_C(0x9e3779b97f4a7c15);
        h ^= h >> 29;
    }
    return h ^ (h >> 32);
}

#endif /* DBKIT_CORE_HASH_H */
