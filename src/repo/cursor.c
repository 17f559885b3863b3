/*
 * cursor.c - keyset cursors of repository queries: the last row's sort key
 * values in a versioned, checksummed, base64url string bound to the entity
 * and the sort order. Decoding checks every byte and length, so a tampered
 * cursor is DBK_EINVALID and never reaches SQL as anything but parameters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/batch.h"
#include "../core/hash.h"
#include "../core/internal.h"
#include "repo_int.h"
#include "query_impl.h"

/* ---- cursors ---- */

static uint64_t fnv64(const void *p, size_t n, uint64_t h)
{
    return dbk__fnv64(h, p, n);
}

static uint64_t order_sig(const dbk_entity *e, const struct okey *k, int n)
{
    uint64_t h = fnv64(e->table, strlen(e->table), DBK__FNV64_OFFSET);
    for (int i = 0; i < n; i++) {
        h = fnv64(k[i].desc ? "-" : "+", 1, h);
        const char *c = e->fields[k[i].field].column;
        h = fnv64(c, strlen(c) + 1, h);
    }
    return h;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Encodes the last row's sort key into a cursor string in the arena. */
dbk_rc dbk__q_encode_cursor(const dbk_entity *e, const struct okey *k, int n, const void *row,
                            dbk_arena *arena, const char **out, dbk_error *err)
{
    dbk__sb sb = {0};
    dbk__sb_printf(&sb, "1.%016llx.", (unsigned long long)order_sig(e, k, n));
    for (int i = 0; i < n; i++) {
        dbk_value v = dbk__field_value(e, k[i].field, row);
        char num[64];
        const char *p = num;
        size_t len;
        switch (v.type) {
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP:
            len = (size_t)snprintf(num, sizeof num, "%lld", (long long)v.u.i);
            break;
        case DBK_TYPE_DOUBLE:
            len = (size_t)snprintf(num, sizeof num, "%.17g", v.u.d);
            break;
        case DBK_TYPE_BOOL:
            len = (size_t)snprintf(num, sizeof num, "%d", v.u.b ? 1 : 0);
            break;
        case DBK_TYPE_TEXT:
            p = v.u.bytes.ptr;
            len = v.u.bytes.len;
            break;
        default:
            free(sb.p);
            return dbk__err(err, DBK_EINVALID_SORT,
                            "keyset sort key %s.%s is NULL in a row: keyset needs non-null keys",
                            e->table, e->fields[k[i].field].column);
        }
        dbk__sb_printf(&sb, "%zu:", len);
        dbk__sb_putn(&sb, p, len);
    }
    if (sb.oom) {
        free(sb.p);
        return dbk__q_oom(err);
    }
    uint64_t sum = fnv64(sb.p, sb.len, UINT64_C(0x6462b17c0125ab1e));
    dbk__sb_printf(&sb, ".%016llx", (unsigned long long)sum);
    size_t olen = (sb.len + 2) / 3 * 4 + 1;
    char *o = sb.oom ? NULL : dbk_arena_alloc(arena, olen);
    if (!o) {
        free(sb.p);
        return dbk__q_oom(err);
    }
    const unsigned char *s = (const unsigned char *)sb.p;
    size_t j = 0;
    for (size_t i = 0; i < sb.len; i += 3) {
        uint32_t x = (uint32_t)s[i] << 16;
        if (i + 1 < sb.len)
            x |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < sb.len)
            x |= s[i + 2];
        o[j++] = B64[(x >> 18) & 63];
        o[j++] = B64[(x >> 12) & 63];
        if (i + 1 < sb.len)
            o[j++] = B64[(x >> 6) & 63];
        if (i + 2 < sb.len)
            o[j++] = B64[x & 63];
    }
    o[j] = '\0';
    free(sb.p);
    *out = o;
    return DBK_OK;
}

static dbk_rc bad_cursor(dbk_error *err, const char *why)
{
    dbk__err(err, DBK_EINVALID, "invalid cursor: %s", why);
    dbk__err_hint(err, "pass next_cursor back unchanged, with the same filters and order");
    return DBK_EINVALID;
}

static bool parse_i64(const char *s, size_t n, int64_t *out)
{
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* Decodes `c` into vals[n] (texts point into arena memory). */
dbk_rc dbk__q_decode_cursor(const dbk_entity *e, const struct okey *k, int n, const char *c,
                            dbk_arena *arena, dbk_value *vals, dbk_error *err)
{
    size_t clen = strlen(c);
    if (clen == 0 || clen > MAX_CURSOR || clen % 4 == 1)
        return bad_cursor(err, "bad length");
    unsigned char *d = dbk_arena_alloc(arena, clen);
    if (!d)
        return dbk__q_oom(err);
    size_t dl = 0;
    for (size_t i = 0; i < clen; i += 4) {
        uint32_t x = 0;
        size_t m = clen - i < 4 ? clen - i : 4;
        for (size_t t = 0; t < 4; t++) {
            int v = t < m ? b64val((unsigned char)c[i + t]) : 0;
            if (v < 0)
                return bad_cursor(err, "not base64url");
            x = (x << 6) | (uint32_t)v;
        }
        d[dl++] = (unsigned char)(x >> 16);
        if (m > 2)
            d[dl++] = (unsigned char)(x >> 8);
        if (m > 3)
            d[dl++] = (unsigned char)x;
    }
    /* "1.<sig16>." ... ".<sum16>" */
    if (dl < 2 + 16 + 1 + 17 || memcmp(d, "1.", 2) != 0 || d[18] != '.' || d[dl - 17] != '.')
        return bad_cursor(err, "bad framing");
    char hex[17];
    memcpy(hex, d + dl - 16, 16);
    hex[16] = '\0';
    char want[17];
    snprintf(want, sizeof want, "%016llx",
             (unsigned long long)fnv64(d, dl - 17, UINT64_C(0x6462b17c0125ab1e)));
    if (memcmp(hex, want, 16) != 0)
        return bad_cursor(err, "checksum mismatch");
    snprintf(want, sizeof want, "%016llx", (unsigned long long)order_sig(e, k, n));
    if (memcmp(d + 2, want, 16) != 0)
        return bad_cursor(err, "made for another entity or sort order");
    size_t pos = 19, end = dl - 17;
    for (int i = 0; i < n; i++) {
        size_t len = 0, digits = 0;
        while (pos < end && d[pos] >= '0' && d[pos] <= '9' && digits < 10) {
            len = len * 10 + (size_t)(d[pos] - '0');
            pos++;
            digits++;
        }
        if (digits == 0 || pos >= end || d[pos] != ':')
            return bad_cursor(err, "bad value length");
        pos++;
        if (len > end - pos)
            return bad_cursor(err, "value overruns the cursor");
        const char *s = (const char *)d + pos;
        const dbk_field *f = &e->fields[k[i].field];
        int64_t iv;
        switch (f->type) {
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP:
            if (!parse_i64(s, len, &iv))
                return bad_cursor(err, "bad integer");
            vals[i] = f->type == DBK_TYPE_INT64 ? dbk_int64(iv) : dbk_timestamp(iv);
            break;
        case DBK_TYPE_BOOL:
            if (len != 1 || (s[0] != '0' && s[0] != '1'))
                return bad_cursor(err, "bad boolean");
            vals[i] = dbk_bool(s[0] == '1');
            break;
        case DBK_TYPE_DOUBLE: {
            char buf[64];
            if (len == 0 || len >= sizeof buf)
                return bad_cursor(err, "bad number");
            memcpy(buf, s, len);
            buf[len] = '\0';
            char *ep;
            double dv = strtod(buf, &ep);
            if (*ep)
                return bad_cursor(err, "bad number");
            vals[i] = dbk_double(dv);
            break;
        }
        case DBK_TYPE_TEXT:
            vals[i] = dbk_textn(s, len);
            break;
        default:
            return bad_cursor(err, "unsupported key type");
        }
        pos += len;
    }
    if (pos != end)
        return bad_cursor(err, "trailing bytes");
    return DBK_OK;
}
