/*
 * dbkit/arena.h - a bump allocator for rows mapped into C structs.
 *
 * Repository calls copy every string, blob and included array of the rows
 * they return into a caller-supplied arena, so that a whole request's worth
 * of results is released with one dbk_arena_reset() or dbk_arena_free(),
 * and no struct ever points into a dbk_result.
 *
 * Memory comes from blocks (default 8 KiB, grown for large requests); an
 * allocation larger than a quarter of the block size gets a block of its
 * own, so a 1 MiB string does not waste a mostly-empty 1 MiB block for the
 * small strings that follow it. Every allocation is aligned for any type
 * (max_align_t).
 *
 * Thread safety: none. An arena belongs to one thread at a time; use one
 * arena per request or per thread.
 */
#ifndef DBKIT_ARENA_H
#define DBKIT_ARENA_H

#include <stddef.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_arena dbk_arena;

/* Default size of an arena block in bytes. */
#define DBK_ARENA_DEFAULT_BLOCK 8192

/* A new, empty arena whose blocks are `block_size` bytes (0: the default,
 * DBK_ARENA_DEFAULT_BLOCK; values below 256 are raised to 256). Nothing is
 * allocated until the first dbk_arena_alloc(). Returns NULL when out of
 * memory. Owned by the caller: release with dbk_arena_free(). */
DBK_API dbk_arena *dbk_arena_new(size_t block_size);

/* Frees the arena and every allocation made from it. Accepts NULL. */
DBK_API void dbk_arena_free(dbk_arena *a);

/* Forgets every allocation (pointers from the arena become invalid) but
 * keeps one standard block for reuse, so a loop that resets the arena each
 * iteration does not call malloc in the steady state. Accepts NULL. */
DBK_API void dbk_arena_reset(dbk_arena *a);

/* `size` bytes aligned for any type, zero-filled, owned by the arena (valid
 * until reset or free). size 0 gives a valid unique pointer. NULL when `a`
 * is NULL or memory is exhausted. */
DBK_API void *dbk_arena_alloc(dbk_arena *a, size_t size);

/* Copy of the NUL-terminated string `s` in the arena; NULL for a NULL `s`,
 * a NULL arena or when out of memory. */
DBK_API char *dbk_arena_strdup(dbk_arena *a, const char *s);

/* Copy of `len` bytes of `s` plus a terminating NUL in the arena (s may
 * hold NUL bytes; it need not be terminated). NULL on a NULL arena, a NULL
 * `s` with len > 0, or when out of memory. */
DBK_API char *dbk_arena_strndup(dbk_arena *a, const char *s, size_t len);

/* Copy of `len` bytes in the arena (followed by one NUL byte so that text
 * copied this way is terminated). Same NULL cases as dbk_arena_strndup. */
DBK_API void *dbk_arena_memdup(dbk_arena *a, const void *p, size_t len);

/* Bytes handed out since creation or the last reset (alignment included). */
DBK_API size_t dbk_arena_used(const dbk_arena *a);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_ARENA_H */
