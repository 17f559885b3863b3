/*
 * sb.c - the growable string builder every SQL generator of the library
 * writes into (repository statements and cursors, document queries and
 * schemas, the migration schema dump).
 *
 * Why a sticky `oom` flag and no return codes: a generator appends dozens
 * of pieces; checking each would triple its length and make the SQL hard
 * to read next to the code that builds it. One check at the end is enough
 * because a failed append leaves the builder unchanged and every later
 * append is a no-op. Capacity doubles from 256 bytes, so building a
 * string of n bytes costs O(n) copies; formatted text is written straight
 * into the builder when it fits a small stack buffer's worth, else the
 * builder grows to the exact size first and is formatted in place.
 *
 * The same functions serve builders over a caller's buffer (dbk__sb_over):
 * they truncate and count instead of growing, so a function that fills a
 * buffer it was given (snprintf-style) shares the appenders, the
 * percent-encoder and the formatting with the generators.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"

/* Makes room for `extra` more bytes plus the terminator. */
static void sb_grow(dbk__sb *sb, size_t extra)
{
    if (sb->oom)
        return;
    if (extra > SIZE_MAX - 1 - sb->len) {
        sb->oom = true;
        return;
    }
    size_t want = sb->len + extra + 1;
    if (want <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) {
            cap = want;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(sb->p, cap);
    if (!p) {
        sb->oom = true;
        return;
    }
    sb->p = p;
    sb->cap = cap;
}

/* A fixed builder: writes what fits of s[0..n) before the terminator,
 * counts all of it. */
static void sb_put_fixed(dbk__sb *sb, const char *s, size_t n)
{
    if (sb->oom)
        return;
    if (n > SIZE_MAX - 1 - sb->len) {
        sb->oom = true;
        return;
    }
    if (sb->cap && sb->len < sb->cap - 1) {
        size_t room = sb->cap - 1 - sb->len;
        size_t k = n < room ? n : room;
        if (k)
            memcpy(sb->p + sb->len, s, k);
        sb->p[sb->len + k] = '\0';
    }
    sb->len += n;
}

void dbk__sb_putn(dbk__sb *sb, const char *s, size_t n)
{
    if (sb->fixed) {
        sb_put_fixed(sb, s, n);
        return;
    }
    sb_grow(sb, n);
    if (sb->oom)
        return;
    if (n)
        memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

void dbk__sb_puts(dbk__sb *sb, const char *s)
{
    dbk__sb_putn(sb, s, strlen(s));
}

void dbk__sb_printf(dbk__sb *sb, const char *fmt, ...)
{
    if (sb->oom)
        return;
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->oom = true;
        return;
    }
    if ((size_t)n < sizeof buf) {
        dbk__sb_putn(sb, buf, (size_t)n);
        return;
    }
    if (sb->fixed) {
        /* formatted in place up to the buffer's end, counted in full */
        if ((size_t)n > SIZE_MAX - 1 - sb->len) {
            sb->oom = true;
            return;
        }
        if (sb->cap && sb->len < sb->cap - 1) {
            va_start(ap, fmt);
            vsnprintf(sb->p + sb->len, sb->cap - sb->len, fmt, ap);
            va_end(ap);
        }
        sb->len += (size_t)n;
        return;
    }
    sb_grow(sb, (size_t)n);
    if (sb->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(sb->p + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

void dbk__sb_put_pct(dbk__sb *sb, const char *s, size_t n, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0; /* bytes kept as they are, appended in one piece */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~' || (c && strchr(keep, c));
        if (plain) {
            run++;
            continue;
        }
        dbk__sb_putn(sb, s + i - run, run);
        run = 0;
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        dbk__sb_putn(sb, e, 3);
    }
    dbk__sb_putn(sb, s + n - run, run);
}

void dbk__sb_free(dbk__sb *sb)
{
    if (sb->fixed) {
        sb->len = 0;
        sb->oom = false;
        if (sb->cap)
            sb->p[0] = '\0';
        return;
    }
    free(sb->p);
    sb->p = NULL;
    sb->len = sb->cap = 0;
    sb->oom = false;
}
