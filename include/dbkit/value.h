/*
 * dbkit/value.h - parameter values.
 *
 * A dbk_value is a small tagged union passed by value. Text and blob values
 * borrow the caller's bytes: they must stay valid until the call that takes
 * the value returns; dbkit never keeps them afterwards.
 *
 * Types and how each engine stores them:
 *
 *   DBK_TYPE_NULL       NULL
 *   DBK_TYPE_BOOL       PostgreSQL boolean; SQLite integer 0/1
 *   DBK_TYPE_INT64      bigint; SQLite integer
 *   DBK_TYPE_DOUBLE     double precision; SQLite real
 *   DBK_TYPE_TEXT       text (UTF-8). An embedded NUL is DBK_EINVALID on
 *                       PostgreSQL, which cannot store it; SQLite keeps it.
 *   DBK_TYPE_BLOB       bytea; SQLite blob
 *   DBK_TYPE_TIMESTAMP  microseconds since 1970-01-01T00:00:00Z (UTC).
 *                       PostgreSQL timestamptz; SQLite text
 *                       "YYYY-MM-DD HH:MM:SS.ffffff+00:00"
 *   DBK_TYPE_JSON       JSON document as text; PostgreSQL json(b); SQLite text
 *
 * Thread safety: plain data, no state.
 */
#ifndef DBKIT_VALUE_H
#define DBKIT_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dbk_type {
    DBK_TYPE_NULL = 0,
    DBK_TYPE_BOOL = 1,
    DBK_TYPE_INT64 = 2,
    DBK_TYPE_DOUBLE = 3,
    DBK_TYPE_TEXT = 4,
    DBK_TYPE_BLOB = 5,
    DBK_TYPE_TIMESTAMP = 6,
    DBK_TYPE_JSON = 7
} dbk_type;

typedef struct dbk_value {
    dbk_type type;
    union {
        bool b;
        int64_t i;     /* INT64, and TIMESTAMP in microseconds since the epoch */
        double d;
        struct {
            const void *ptr; /* borrowed; TEXT, BLOB, JSON */
            size_t len;
        } bytes;
    } u;
} dbk_value;

/* Static name of a type ("int64"). */
DBK_API const char *dbk_type_name(dbk_type t);

static inline dbk_value dbk_null(void)
{
    dbk_value v;
    memset(&v, 0, sizeof v);
    v.type = DBK_TYPE_NULL;
    return v;
}
static inline dbk_value dbk_bool(bool b)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_BOOL;
    v.u.b = b;
    return v;
}
static inline dbk_value dbk_int64(int64_t i)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_INT64;
    v.u.i = i;
    return v;
}
static inline dbk_value dbk_double(double d)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_DOUBLE;
    v.u.d = d;
    return v;
}
/* Text of `len` bytes (need not be NUL-terminated). */
static inline dbk_value dbk_textn(const char *s, size_t len)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_TEXT;
    v.u.bytes.ptr = s;
    v.u.bytes.len = len;
    return v;
}
/* NUL-terminated text; a NULL pointer gives a NULL value. */
static inline dbk_value dbk_text(const char *s)
{
    return s ? dbk_textn(s, strlen(s)) : dbk_null();
}
static inline dbk_value dbk_blob(const void *p, size_t len)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_BLOB;
    v.u.bytes.ptr = p;
    v.u.bytes.len = len;
    return v;
}
/* Microseconds since the Unix epoch, UTC. */
static inline dbk_value dbk_timestamp(int64_t usec)
{
    dbk_value v = dbk_null();
    v.type = DBK_TYPE_TIMESTAMP;
    v.u.i = usec;
    return v;
}
/* A JSON document (not validated by dbkit; the server validates json/jsonb). */
static inline dbk_value dbk_json(const char *s)
{
    dbk_value v = dbk_text(s);
    if (s)
        v.type = DBK_TYPE_JSON;
    return v;
}

/* Formats `usec` (microseconds since the epoch, UTC) as
 * "YYYY-MM-DD HH:MM:SS.ffffff+00:00" into buf (at least 33 bytes).
 * Returns DBK_EINVALID when the year falls outside 0001..9999. */
DBK_API dbk_rc dbk_timestamp_format(int64_t usec, char *buf, size_t buflen);

/* Parses an ISO-8601 / PostgreSQL timestamp ("2024-01-02 03:04:05.123456+02",
 * 'T' separator, optional fraction, optional zone "Z" / "+HH" / "+HH:MM";
 * no zone means UTC) of `len` bytes into microseconds since the epoch, UTC.
 * DBK_ETYPE when it does not parse. */
DBK_API dbk_rc dbk_timestamp_parse(const char *s, size_t len, int64_t *usec);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_VALUE_H */
