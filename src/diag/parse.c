/*
 * Reading the query log back: dbk_diag_parse_line takes one line of the
 * format diag.h specifies apart, so that tools (`dbkit advise --log`) and
 * users read it with the same rules the hub writes it with.
 *
 * The line comes from a file anyone could have edited: every field is
 * checked, numbers are parsed by hand (the writer always uses '.', whatever
 * the locale, and so does the reader), and the unescaped SQL is written
 * into the caller's buffer, which can never overflow because unescaping
 * only shrinks the text. Fuzzed with a write-then-read round trip
 * (tests/fuzz/querylog_fuzz.c).
 */
#include <string.h>

#include "dbkit/diag.h"
#include "../core/internal.h"
#include "../core/url.h"

static const char KEY[] = "query duration_ms=";

/* "<digits>[.<digits>]" into *out; returns the end or NULL. */
static const char *parse_ms(const char *p, double *out)
{
    double v = 0;
    const char *start = p;
    while (*p >= '0' && *p <= '9' && p - start < 18)
        v = v * 10 + (*p++ - '0');
    if (p == start)
        return NULL;
    if (*p == '.') {
        p++;
        double scale = 0.1;
        const char *f = p;
        while (*p >= '0' && *p <= '9' && p - f < 9) {
            v += (*p++ - '0') * scale;
            scale /= 10;
        }
        if (p == f)
            return NULL;
    }
    *out = v;
    return p;
}

static const char *parse_rows(const char *p, int64_t *out)
{
    int64_t v = 0;
    const char *start = p;
    while (*p >= '0' && *p <= '9' && p - start < 18)
        v = v * 10 + (*p++ - '0');
    if (p == start)
        return NULL;
    *out = v;
    return p;
}

dbk_rc dbk_diag_parse_line(const char *line, dbk_diag_line *out, char *buf, size_t buflen)
{
    if (!line || !out || !buf)
        return DBK_EMISUSE;
    size_t len = strlen(line);
    if (buflen < len + 1)
        return DBK_EMISUSE;
    memset(out, 0, sizeof *out);
    /* The record starts at "query duration_ms=" at the line's start or
     * after a space (a hook may prefix its own "dbkit debug: "). */
    const char *p = line;
    for (;;) {
        p = strstr(p, KEY);
        if (!p)
            return DBK_EINVALID;
        if (p == line || p[-1] == ' ')
            break;
        p++;
    }
    out->slow = p - line >= 5 && memcmp(p - 5, "slow ", 5) == 0 &&
                (p - line == 5 || p[-6] == ' ');
    p += sizeof KEY - 1;
    if (!(p = parse_ms(p, &out->duration_ms)) || strncmp(p, " rows=", 6) != 0)
        return DBK_EINVALID;
    if (!(p = parse_rows(p + 6, &out->rows)) || strncmp(p, " rc=", 4) != 0)
        return DBK_EINVALID;
    p += 4;
    size_t rl = strcspn(p, " ");
    int found = -1;
    for (int rc = 0; rc <= DBK_RC_MAX && found < 0; rc++) {
        const char *name = dbk_rc_name((dbk_rc)rc);
        if (strlen(name) == rl && memcmp(name, p, rl) == 0)
            found = rc;
    }
    if (found < 0)
        return DBK_EINVALID;
    out->rc = (dbk_rc)found;
    p += rl;
    if (strncmp(p, " sql=\"", 6) != 0)
        return DBK_EINVALID;
    p += 6;
    size_t n = 0;
    for (;;) {
        unsigned char c = (unsigned char)*p;
        if (c == '\0')
            return DBK_EINVALID; /* no closing quote */
        if (c == '"')
            break;
        if (c != '\\') {
            buf[n++] = (char)c;
            p++;
            continue;
        }
        unsigned char e = (unsigned char)p[1];
        if (e == '\\' || e == '"') {
            buf[n++] = (char)e;
            p += 2;
        } else if (e == 'n') {
            buf[n++] = '\n';
            p += 2;
        } else if (e == 'x' && dbk__hexval((unsigned char)p[2]) >= 0 &&
                   dbk__hexval((unsigned char)p[3]) >= 0) {
            buf[n++] =
                (char)(dbk__hexval((unsigned char)p[2]) * 16 + dbk__hexval((unsigned char)p[3]));
            p += 4;
        } else {
            return DBK_EINVALID; /* an escape the writer never produces */
        }
    }
    buf[n] = '\0';
    out->sql = buf;
    out->sql_len = n;
    out->truncated = n >= 3 && memcmp(buf + n - 3, "...", 3) == 0;
    return DBK_OK;
}
