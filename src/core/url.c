/*
 * The URL pieces that the configuration and the cache parsers share (see
 * url.h for the contract). They are kept this small on purpose: the two
 * grammars differ (a SQLite path, libpq-style multi-host lists, a Sentinel
 * master name, each parser's own messages), and what is common is exactly
 * the lexical part: where the spans are, what a host[:port] is, how a
 * percent-escape decodes. Every function reads only the bytes it is given
 * and is O(n).
 */
#include "url.h"

#include <stdlib.h>
#include <string.h>

int dbk__pct_decode(const char *s, size_t n, char *dst, size_t dstsz, size_t *bad)
{
    size_t o = 0;
    int r = DBK__PCT_OK;
    if (dstsz == 0)
        return DBK__PCT_TOOLONG;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 1 < n ? dbk__hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? dbk__hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || hi * 16 + lo == 0) {
                if (bad)
                    *bad = i;
                r = (hi < 0 || lo < 0) ? DBK__PCT_BAD : DBK__PCT_NUL;
                break;
            }
            c = hi * 16 + lo;
            i += 2;
        }
        if (o + 1 >= dstsz) {
            r = DBK__PCT_TOOLONG;
            break;
        }
        dst[o++] = (char)c;
    }
    if (r != DBK__PCT_OK) {
        /* volatile: the wipe of a partial password must not be elided */
        volatile char *v = dst;
        for (size_t i = 0; i < dstsz; i++)
            v[i] = 0;
        return r;
    }
    dst[o] = '\0';
    return DBK__PCT_OK;
}

int dbk__pct_decode_dup(const char *s, size_t n, char **out, size_t *bad)
{
    *out = NULL;
    char *d = malloc(n + 1);
    if (!d)
        return DBK__PCT_NOMEM;
    int r = dbk__pct_decode(s, n, d, n + 1, bad);
    if (r != DBK__PCT_OK) {
        free(d); /* dbk__pct_decode zeroed it */
        return r;
    }
    *out = d;
    return DBK__PCT_OK;
}

static bool scheme_char(unsigned char c, bool first)
{
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (first)
        return alpha;
    return alpha || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

bool dbk__url_split(const char *url, size_t n, struct dbk__url *out)
{
    memset(out, 0, sizeof *out);
    size_t i = 0;
    while (i < n && scheme_char((unsigned char)url[i], i == 0))
        i++;
    if (i == 0 || n - i < 3 || memcmp(url + i, "://", 3) != 0)
        return false;
    out->scheme = (struct dbk__span){url, i};
    const char *a = url + i + 3, *end = url + n;
    const char *ae = a;
    while (ae < end && *ae != '/' && *ae != '?')
        ae++;
    const char *last_at = NULL;
    for (const char *p = a; p < ae; p++)
        if (*p == '@') {
            last_at = p;
            out->n_at++;
        }
    const char *h = a;
    if (last_at) {
        out->has_userinfo = true;
        const char *colon = memchr(a, ':', (size_t)(last_at - a));
        out->user = (struct dbk__span){a, (size_t)((colon ? colon : last_at) - a)};
        if (colon) {
            out->has_password = true;
            out->password = (struct dbk__span){colon + 1, (size_t)(last_at - colon - 1)};
        }
        h = last_at + 1;
    }
    out->hosts = (struct dbk__span){h, (size_t)(ae - h)};
    const char *q = ae;
    while (q < end && *q != '?')
        q++;
    if (q == end)
        q = NULL;
    if (ae < end && *ae == '/') {
        out->has_path = true;
        const char *pe = q ? q : end;
        out->path = (struct dbk__span){ae + 1, (size_t)(pe - ae - 1)};
    }
    if (q) {
        out->has_query = true;
        out->query = (struct dbk__span){q + 1, (size_t)(end - q - 1)};
    }
    return true;
}

bool dbk__list_next(struct dbk__span *list, char sep, struct dbk__span *item)
{
    if (!list->p)
        return false;
    const char *s = memchr(list->p, sep, list->n);
    if (!s) {
        *item = *list;
        list->p = NULL;
        list->n = 0;
        return true;
    }
    *item = (struct dbk__span){list->p, (size_t)(s - list->p)};
    list->n -= item->n + 1;
    list->p = s + 1;
    return true;
}

bool dbk__parse_decimal(const char *s, size_t n, long long lo, long long hi, long long *out)
{
    if (n == 0 || n > 18)
        return false;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int dbk__url_hostport(const char *s, size_t n, struct dbk__span *host, int *port, bool *has_port)
{
    const char *end = s + n, *portp = NULL;
    *port = 0;
    *has_port = false;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb || rb == s + 1)
            return DBK__HOSTPORT_BAD_BRACKET;
        *host = (struct dbk__span){s + 1, (size_t)(rb - s - 1)};
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return DBK__HOSTPORT_JUNK;
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        *host = (struct dbk__span){s, (size_t)((colon ? colon : end) - s)};
        if (colon)
            portp = colon + 1;
    }
    if (portp) {
        long long v;
        *has_port = true;
        if (!dbk__parse_decimal(portp, (size_t)(end - portp), 1, 65535, &v))
            return DBK__HOSTPORT_BAD_PORT;
        *port = (int)v;
    }
    return DBK__HOSTPORT_OK;
}
