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
} dbk__sb;

/* Appends n bytes of s (which may hold NUL bytes; s may be NULL when n is 0). */
void dbk__sb_putn(dbk__sb *sb, const char *s, size_t n);

/* Appends the C string s. */
void dbk__sb_puts(dbk__sb *sb, const char *s);

/* Appends printf-formatted text (any length). */
void dbk__sb_printf(dbk__sb *sb, const char *fmt, ...) DBK__PRINTF(2, 3);

/* Frees the string and resets the builder to empty (oom cleared). */
void dbk__sb_free(dbk__sb *sb);

#endif
