/*
 * sb.h - the library's one growable string builder (internal).
 *
 * A builder is a NUL-terminated heap string that grows by doubling. Every
 * append that cannot grow it sets `oom`, which sticks: later appends do
 * nothing, so a caller builds a whole statement and checks `oom` once at
 * the end. Lengths that would overflow size_t count as out of memory.
 * The zero value ({0}) is an empty builder; `p` stays NULL until the first
 * append (even an empty one) allocates. The string is owned by the builder
 * until the caller takes `p` (and then frees it with free()) or calls
 * dbk__sb_free(). Not thread-safe: one builder per caller.
 *
 * A builder made by dbk__sb_over() writes into a caller's buffer instead
 * and never allocates (the configuration's URL rendering, diag's log lines
 * and metrics text, which fill buffers their callers pass): an append
 * writes what fits, the text stays NUL-terminated, and `len` counts every
 * byte appended, fitting or not, so the caller learns the length it
 * needed, as with snprintf. `oom` is then only set by a length that would
 * overflow size_t.
 */
#ifndef DBK_CORE_SB_H
#define DBK_CORE_SB_H

#include <stdbool.h>
#include <stddef.h>

#include "internal.h"

typedef struct dbk__sb {
    char *p;    /* NUL-terminated once anything was appended; NULL before */
    size_t len; /* bytes before the terminator */
    size_t cap; /* bytes allocated at p */
    bool oom;   /* an append failed; sticks */
    bool fixed; /* over a caller's buffer of cap bytes (dbk__sb_over) */
} dbk__sb;

/* A builder over buf[0..size) (buf may be NULL when size is 0), emptied.
 * Bytes past size - 1 are counted in len, not written. */
static inline dbk__sb dbk__sb_over(char *buf, size_t size)
{
    dbk__sb sb = {buf, 0, buf ? size : 0, false, true};
    if (sb.cap)
        buf[0] = '\0';
    return sb;
}

/* Appends n bytes of s (which may hold NUL bytes; s may be NULL when n is 0). */
void dbk__sb_putn(dbk__sb *sb, const char *s, size_t n);

/* Appends the C string s. */
void dbk__sb_puts(dbk__sb *sb, const char *s);

/* Appends printf-formatted text (any length). */
void dbk__sb_printf(dbk__sb *sb, const char *fmt, ...) DBK__PRINTF(2, 3);

/* Appends s[0..n) percent-encoded (RFC 3986): unreserved characters and
 * those in `keep` as they are, every other byte as %XX. */
void dbk__sb_put_pct(dbk__sb *sb, const char *s, size_t n, const char *keep);

/* Frees the string and resets the builder to empty (oom cleared). A
 * builder over a caller's buffer is only emptied. */
void dbk__sb_free(dbk__sb *sb);

#endif
