/*
 * Values: type names and the timestamp text form shared by both engines.
 *
 * Timestamps are int64 microseconds since the Unix epoch, UTC. Conversion
 * to and from civil dates uses the days-from-civil arithmetic on the
 * proleptic Gregorian calendar, exact for years 1..9999; no libc time zone
 * state is touched, so it is thread-safe and independent of TZ.
 */
#include "dbkit/value.h"
#include "internal.h"

#include <stdio.h>

static const char *type_names[] = {"null", "bool", "int64", "double",
                                   "text", "blob", "timestamp", "json"};

const char *dbk_type_name(dbk_type t)
{
    if ((unsigned)t >= sizeof type_names / sizeof type_names[0])
        return "unknown";
    return type_names[t];
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

#define USEC_PER_DAY 86400000000LL

dbk_rc dbk_timestamp_format(int64_t usec, char *buf, size_t buflen)
{
    if (!buf || buflen < 33)
        return DBK_EMISUSE;
    int64_t days = usec / USEC_PER_DAY;
    int64_t rem = usec % USEC_PER_DAY;
    if (rem < 0) {
        rem += USEC_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 1 || y > 9999)
        return DBK_EINVALID;
    int64_t secs = rem / 1000000, frac = rem % 1000000;
    snprintf(buf, buflen, "%04d-%02u-%02u %02d:%02d:%02d.%06d+00:00", (int)y, m, d,
             (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60), (int)frac);
    return DBK_OK;
}

/* Reads exactly n digits. */
static int digits(const char **p, const char *end, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (*p >= end || **p < '0' || **p > '9')
            return 0;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 1;
}

dbk_rc dbk_timestamp_parse(const char *s, size_t len, int64_t *usec)
{
    if (!s || !usec)
        return DBK_EMISUSE;
    const char *p = s, *end = s + len;
    int y, mo, d, h = 0, mi = 0, sec = 0;
    int64_t frac = 0;
    if (!digits(&p, end, 4, &y) || p >= end || *p++ != '-' || !digits(&p, end, 2, &mo) ||
        p >= end || *p++ != '-' || !digits(&p, end, 2, &d))
        return DBK_ETYPE;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > 31)
        return DBK_ETYPE;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
        return DBK_ETYPE;
    int64_t offset_sec = 0;
    if (p < end) {
        if (*p != ' ' && *p != 'T' && *p != 't')
            return DBK_ETYPE;
        p++;
        if (!digits(&p, end, 2, &h) || p >= end || *p++ != ':' || !digits(&p, end, 2, &mi))
            return DBK_ETYPE;
        if (p < end && *p == ':') {
            p++;
            if (!digits(&p, end, 2, &sec))
                return DBK_ETYPE;
        }
        if (h > 23 || mi > 59 || sec > 60)
            return DBK_ETYPE;
        if (p < end && *p == '.') {
            p++;
            int n = 0;
            while (p < end && *p >= '0' && *p <= '9') {
                if (n < 6) {
                    frac = frac * 10 + (*p - '0');
                    n++;
                }
                p++;
            }
            if (n == 0)
                return DBK_ETYPE;
            while (n++ < 6)
                frac *= 10;
        }
        if (p < end && (*p == 'Z' || *p == 'z')) {
            p++;
        } else if (p < end && (*p == '+' || *p == '-')) {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0, os = 0;
            if (!digits(&p, end, 2, &oh))
                return DBK_ETYPE;
            if (p < end && *p == ':')
                p++;
            if (p < end && *p >= '0' && *p <= '9' && !digits(&p, end, 2, &om))
                return DBK_ETYPE;
            if (p < end && *p == ':') {
                p++;
                if (!digits(&p, end, 2, &os))
                    return DBK_ETYPE;
            }
            if (oh > 15 || om > 59 || os > 59)
                return DBK_ETYPE;
            offset_sec = sign * (oh * 3600 + om * 60 + os);
        }
    }
    if (p != end)
        return DBK_ETYPE;
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_sec;
    *usec = secs * 1000000 + frac;
    return DBK_OK;
}

dbk_rc dbk__params_size(const dbk_value *params, size_t nparams, size_t *bytes, dbk_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < nparams; i++) {
        dbk_type t = params[i].type;
        if (t != DBK_TYPE_TEXT && t != DBK_TYPE_BLOB && t != DBK_TYPE_JSON)
            continue;
        size_t len = params[i].u.bytes.len;
        if (len && !params[i].u.bytes.ptr)
            return dbk__err(err, DBK_EMISUSE, "parameter $%zu has %zu bytes but no pointer", i + 1,
                            len);
        total += len;
        if (len > DBK__MAX_VALUE || total > DBK__PG_MAX_MESSAGE) {
            dbk__err(err, DBK_EINVALID,
                     len > DBK__MAX_VALUE
                         ? "%s parameter $%zu is %zu bytes; no engine accepts more than %zu "
                           "bytes (1 GiB) in one value"
                         : "%s parameter $%zu is %zu bytes, which brings the statement's "
                           "values over %zu bytes (1 GiB), the most one statement carries",
                     dbk_type_name(t), i + 1, len,
                     len > DBK__MAX_VALUE ? DBK__MAX_VALUE : DBK__PG_MAX_MESSAGE);
            dbk__err_hint(err, "store large objects outside the database and keep their path "
                               "or key in the row");
            return DBK_EINVALID;
        }
    }
    *bytes = total;
    return DBK_OK;
}
