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

/* The general reader: every form dbk_timestamp_parse() accepts. */
dbk_rc dbk__timestamp_parse_general(const char *s, size_t len, int64_t *usec)
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

static inline unsigned dig(char c)
{
    return (unsigned)(unsigned char)c - '0';
}

/* The forms the engines write, read without the general reader's steps:
 * "YYYY-MM-DD HH:MM:SS" (or 'T'), then at most 6 fraction digits, then
 * nothing, "Z", "+HH" or "+HH:MM" (PostgreSQL's timestamptz, dbkit's own
 * text, ISO-8601 from most writers). Anything else, and every value the
 * shortcut would have to judge (a 7th fraction digit, seconds 60, a zone
 * with seconds), goes to the general reader, which gives the same answer
 * for these forms (tests/fuzz/timestamp_fuzz.c checks that it does). */
dbk_rc dbk_timestamp_parse(const char *s, size_t len, int64_t *usec)
{
    if (!s || !usec || len < 19 || s[4] != '-' || s[7] != '-' ||
        (s[10] != ' ' && s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':')
        return dbk__timestamp_parse_general(s, len, usec);
    static const unsigned char at[14] = {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18};
    unsigned v[14];
    for (int i = 0; i < 14; i++)
        if ((v[i] = dig(s[at[i]])) > 9)
            return dbk__timestamp_parse_general(s, len, usec);
    int y = (int)(v[0] * 1000 + v[1] * 100 + v[2] * 10 + v[3]);
    unsigned mo = v[4] * 10 + v[5], d = v[6] * 10 + v[7];
    unsigned h = v[8] * 10 + v[9], mi = v[10] * 10 + v[11], sec = v[12] * 10 + v[13];
    static const unsigned char mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        sec > 59 || (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)))
        return dbk__timestamp_parse_general(s, len, usec);
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        unsigned n = 0;
        for (i++; i < len && dig(s[i]) <= 9; i++, n++) {
            if (n == 6)
                return dbk__timestamp_parse_general(s, len, usec);
            frac = frac * 10 + dig(s[i]);
        }
        if (n == 0)
            return DBK_ETYPE;
        static const int scale[] = {1, 100000, 10000, 1000, 100, 10, 1};
        frac *= scale[n];
    }
    int64_t offset = 0;
    if (i < len) {
        if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
            i++;
        } else if ((s[i] == '+' || s[i] == '-') && i + 3 <= len && dig(s[i + 1]) <= 9 &&
                   dig(s[i + 2]) <= 9) {
            unsigned oh = dig(s[i + 1]) * 10 + dig(s[i + 2]), om = 0;
            size_t j = i + 3;
            if (j < len) {
                if (j + 3 != len || s[j] != ':' || dig(s[j + 1]) > 9 || dig(s[j + 2]) > 9)
                    return dbk__timestamp_parse_general(s, len, usec);
                om = dig(s[j + 1]) * 10 + dig(s[j + 2]);
            }
            if (oh > 15 || om > 59)
                return DBK_ETYPE;
            offset = (s[i] == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
            i = len;
        } else {
            return dbk__timestamp_parse_general(s, len, usec);
        }
    }
    if (i != len)
        return dbk__timestamp_parse_general(s, len, usec);
    int64_t days = days_from_civil(y, mo, d);
    *usec = (days * 86400 + h * 3600 + mi * 60 + sec - offset) * 1000000 + frac;
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
