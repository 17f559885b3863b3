/*
 * hash.h - the one 64-bit FNV-1a every module hashes keys with (cache
 * keys and shards, the statement caches, the row codec's layout
 * fingerprint, cursor signatures). Inline: it runs on every cache call and
 * every statement. The values are part of what the library stores (a
 * layout fingerprint travels inside cached rows), so the function never
 * changes.
 */
#ifndef DBKIT_CORE_HASH_H
#define DBKIT_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

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

#endif /* DBKIT_CORE_HASH_H */
