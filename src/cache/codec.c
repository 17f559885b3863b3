/*
 * The cached-row codec: a compact, versioned binary format for one entity
 * row, so that a cache never hands a struct bytes written for another shape.
 *
 * Why binary and why a layout hash: JSON (the seed's JSON.stringify) costs a
 * parser on every hit and silently decodes a row written by an older build
 * into a newer struct. Here every value carries its type, every row carries
 * a 64-bit hash of the entity name and its field names and types, and the
 * decoder refuses a different hash before looking at a single field. The
 * decoder is written for hostile input (a shared Redis is input): every
 * length is checked against what is left of the buffer before it is used,
 * with no arithmetic that can wrap, and trailing bytes are an error. It is
 * fuzzed (tests/fuzz/cache_value_fuzz.c).
 *
 * Limits. A length field is 32 bits, and no backend holds a value longer
 * than DBK_CACHE_MAX_VALUE (Redis's 512 MiB string limit less the envelope
 * byte), so the encoder adds the sizes up first (overflow-checked) and
 * refuses a row whose encoding would be longer, naming the field or the
 * limit, before it allocates anything: nothing is ever truncated to fit.
 * The cached repository treats that refusal as "serve from the database,
 * do not cache".
 */
#include <stdlib.h>
#include <string.h>

#include "../core/hash.h"
#include "../core/internal.h"
#include "cache_int.h"

#define CODEC_VERSION 1
_Static_assert(DBK_CACHE_MAX_VALUE < UINT32_MAX, "length fields are 32 bits");
#define HEADER_LEN 16 /* magic 2, version 1, reserved 1, layout 8, count 4 */

static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n)
{
    return dbk__fnv64(h, p, n);
}

uint64_t dbk_cache_layout_hash(const char *entity, const dbk_cache_field *fields, size_t nfields)
{
    uint64_t h = DBK__FNV64_OFFSET;
    unsigned char sep = 0xff;
    h = fnv_bytes(h, "dbk-layout-1", 12);
    if (entity)
        h = fnv_bytes(h, entity, strlen(entity));
    h = fnv_bytes(h, &sep, 1);
    for (size_t i = 0; fields && i < nfields; i++) {
        if (fields[i].name)
            h = fnv_bytes(h, fields[i].name, strlen(fields[i].name));
        unsigned char t = (unsigned char)fields[i].type;
        h = fnv_bytes(h, &sep, 1);
        h = fnv_bytes(h, &t, 1);
    }
    return h;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

dbk_rc dbk_cache_encode_row(uint64_t layout, const dbk_value *vals, size_t n, void **out,
                            size_t *outlen, dbk_error *err)
{
    if ((!vals && n > 0) || !out || !outlen)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_encode_row: vals, out and outlen must not be NULL");
    *out = NULL;
    *outlen = 0;
    if (n > UINT32_MAX)
        return dbk__err(err, DBK_EINVALID, "too many fields to encode (%zu)", n);
    size_t total = HEADER_LEN;
    for (size_t i = 0; i < n; i++) {
        size_t need;
        switch (vals[i].type) {
        case DBK_TYPE_NULL: need = 1; break;
        case DBK_TYPE_BOOL: need = 2; break;
        case DBK_TYPE_INT64:
        case DBK_TYPE_DOUBLE:
        case DBK_TYPE_TIMESTAMP: need = 9; break;
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
        case DBK_TYPE_BLOB:
            if (vals[i].u.bytes.len > DBK_CACHE_MAX_VALUE)
                return dbk__err(err, DBK_EINVALID,
                                "field %zu is %zu bytes long; a cached value holds at most %u "
                                "bytes (DBK_CACHE_MAX_VALUE)",
                                i, vals[i].u.bytes.len, (unsigned)DBK_CACHE_MAX_VALUE);
            if (vals[i].u.bytes.len > 0 && !vals[i].u.bytes.ptr)
                return dbk__err(err, DBK_EMISUSE, "field %zu has a length but no bytes", i);
            need = 5 + vals[i].u.bytes.len + (vals[i].type == DBK_TYPE_BLOB ? 0 : 1);
            break;
        default:
            return dbk__err(err, DBK_EINVALID, "field %zu has unknown type %d", i, (int)vals[i].type);
        }
        /* both terms are at most DBK_CACHE_MAX_VALUE + 6 here: no wrap */
        total += need;
        if (total > DBK_CACHE_MAX_VALUE)
            return dbk__err(err, DBK_EINVALID,
                            "the encoded row is longer than %u bytes (DBK_CACHE_MAX_VALUE) at "
                            "field %zu; it cannot be cached",
                            (unsigned)DBK_CACHE_MAX_VALUE, i);
    }
    unsigned char *buf = malloc(total);
    if (!buf)
        return dbk__err(err, DBK_ENOMEM, "out of memory encoding a cached row");
    buf[0] = 'd';
    buf[1] = 'K';
    buf[2] = CODEC_VERSION;
    buf[3] = 0;
    put_u64(buf + 4, layout);
    put_u32(buf + 12, (uint32_t)n);
    unsigned char *p = buf + HEADER_LEN;
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &vals[i];
        *p++ = (unsigned char)v->type;
        switch (v->type) {
        case DBK_TYPE_NULL: break;
        case DBK_TYPE_BOOL: *p++ = v->u.b ? 1 : 0; break;
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP:
            put_u64(p, (uint64_t)v->u.i);
            p += 8;
            break;
        case DBK_TYPE_DOUBLE: {
            uint64_t bits;
            memcpy(&bits, &v->u.d, sizeof bits);
            put_u64(p, bits);
            p += 8;
            break;
        }
        default: /* TEXT, JSON, BLOB: checked above */
            put_u32(p, (uint32_t)v->u.bytes.len);
            p += 4;
            if (v->u.bytes.len)
                memcpy(p, v->u.bytes.ptr, v->u.bytes.len);
            p += v->u.bytes.len;
            if (v->type != DBK_TYPE_BLOB)
                *p++ = 0;
            break;
        }
    }
    *out = buf;
    *outlen = total;
    return DBK_OK;
}

dbk_rc dbk_cache_decode_row(const void *buf, size_t len, uint64_t layout, dbk_value *vals,
                            size_t n, dbk_error *err)
{
    if ((!buf && len > 0) || (!vals && n > 0))
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_decode_row: buf and vals must not be NULL");
    const unsigned char *p = buf;
    if (len < HEADER_LEN || p[0] != 'd' || p[1] != 'K')
        return dbk__err(err, DBK_ETYPE, "cached value is not a dbkit row");
    if (p[2] != CODEC_VERSION || p[3] != 0)
        return dbk__err(err, DBK_ETYPE, "cached row has format version %u.%u, expected %u.0",
                        (unsigned)p[2], (unsigned)p[3], (unsigned)CODEC_VERSION);
    if (get_u64(p + 4) != layout)
        return dbk__err(err, DBK_ETYPE, "cached row was written for another layout");
    if ((size_t)get_u32(p + 12) != n)
        return dbk__err(err, DBK_ETYPE, "cached row has %u fields, expected %zu",
                        (unsigned)get_u32(p + 12), n);
    size_t left = len - HEADER_LEN;
    p += HEADER_LEN;
    for (size_t i = 0; i < n; i++) {
        if (left < 1)
            return dbk__err(err, DBK_EINVALID, "cached row ends before field %zu", i);
        unsigned t = *p++;
        left--;
        dbk_value *v = &vals[i];
        *v = dbk_null();
        switch (t) {
        case DBK_TYPE_NULL: break;
        case DBK_TYPE_BOOL:
            if (left < 1 || p[0] > 1)
                return dbk__err(err, DBK_EINVALID, "cached row has a bad bool in field %zu", i);
            *v = dbk_bool(p[0] == 1);
            p++;
            left--;
            break;
        case DBK_TYPE_INT64:
        case DBK_TYPE_TIMESTAMP:
        case DBK_TYPE_DOUBLE: {
            if (left < 8)
                return dbk__err(err, DBK_EINVALID, "cached row ends inside field %zu", i);
            uint64_t bits = get_u64(p);
            if (t == DBK_TYPE_DOUBLE) {
                double d;
                memcpy(&d, &bits, sizeof d);
                *v = dbk_double(d);
            } else {
                *v = dbk_int64((int64_t)bits);
                v->type = (dbk_type)t;
            }
            p += 8;
            left -= 8;
            break;
        }
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
        case DBK_TYPE_BLOB: {
            if (left < 4)
                return dbk__err(err, DBK_EINVALID, "cached row ends inside field %zu", i);
            size_t blen = get_u32(p);
            p += 4;
            left -= 4;
            size_t need = blen + (t == DBK_TYPE_BLOB ? 0 : 1);
            if (need < blen || need > left)
                return dbk__err(err, DBK_EINVALID, "cached row field %zu is longer than the row", i);
            if (t != DBK_TYPE_BLOB && p[blen] != 0)
                return dbk__err(err, DBK_EINVALID, "cached row text field %zu is not terminated", i);
            v->type = (dbk_type)t;
            v->u.bytes.ptr = p;
            v->u.bytes.len = blen;
            p += need;
            left -= need;
            break;
        }
        default:
            return dbk__err(err, DBK_EINVALID, "cached row has unknown type %u in field %zu", t, i);
        }
    }
    if (left != 0)
        return dbk__err(err, DBK_EINVALID, "cached row has %zu trailing bytes", left);
    return DBK_OK;
}
