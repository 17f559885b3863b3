/*
 * pg_types.c - the PostgreSQL driver's type conversion: results arrive in
 * text format and are converted by column type OID into an owned dbk_result
 * (bytea hex decoded, integers and floats parsed in the C locale);
 * parameters go the other way, to text with a type OID each, checked for
 * size before anything is sent or copied.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

/* ---- results ---- */

enum col_kind { K_TEXT, K_INT, K_DOUBLE, K_BOOL, K_BYTEA, K_TS, K_JSON };

static unsigned char kind_of(Oid t)
{
    switch (t) {
    case OID_INT8:
    case OID_INT4:
    case OID_INT2:
    case OID_OID:
        return K_INT;
    case OID_FLOAT4:
    case OID_FLOAT8:
        return K_DOUBLE;
    case OID_BOOL:
        return K_BOOL;
    case OID_BYTEA:
        return K_BYTEA;
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
        return K_TS;
    case OID_JSON:
    case OID_JSONB:
        return K_JSON;
    default:
        return K_TEXT;
    }
}

/* Decodes bytea text output: hex ("\x0aff") or the old escape format. */
static dbk_rc decode_bytea(dbk_result *r, struct dbk__cell *c, const char *v, size_t len)
{
    if (len >= 2 && v[0] == '\\' && v[1] == 'x') {
        if ((len - 2) % 2)
            return DBK_EINTERNAL;
        size_t n = (len - 2) / 2;
        unsigned char *d = (unsigned char *)dbk__result_alloc_bytes(r, c, DBK_TYPE_BLOB, n);
        if (!d)
            return DBK_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            int hi = dbk__hexval((unsigned char)v[2 + 2 * i]);
            int lo = dbk__hexval((unsigned char)v[3 + 2 * i]);
            if (hi < 0 || lo < 0)
                return DBK_EINTERNAL;
            d[i] = (unsigned char)(hi << 4 | lo);
        }
        return DBK_OK;
    }
    /* Escape format: "\\\\" is a backslash, "\\ooo" an octal byte. */
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        if (v[i] != '\\') {
            i++;
        } else if (i + 1 < len && v[i + 1] == '\\') {
            i += 2;
        } else {
            if (i + 4 > len || v[i + 1] < '0' || v[i + 1] > '3' || v[i + 2] < '0' ||
                v[i + 2] > '7' || v[i + 3] < '0' || v[i + 3] > '7')
                return DBK_EINTERNAL;
            i += 4;
        }
    }
    unsigned char *d = (unsigned char *)dbk__result_alloc_bytes(r, c, DBK_TYPE_BLOB, n);
    if (!d)
        return DBK_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (v[i] != '\\') {
            d[o++] = (unsigned char)v[i++];
        } else if (v[i + 1] == '\\') {
            d[o++] = '\\';
            i += 2;
        } else {
            d[o++] = (unsigned char)((v[i + 1] - '0') * 64 + (v[i + 2] - '0') * 8 +
                                     (v[i + 3] - '0'));
            i += 4;
        }
    }
    return DBK_OK;
}

static bool parse_int(const char *v, int64_t *out)
{
    /* The server's int2/int4/int8 text: an optional '-' and 1-18 digits is
     * read here (it cannot overflow); anything longer or odd goes through
     * strtoll. */
    const char *q = v + (*v == '-');
    uint64_t u = 0;
    int n = 0;
    while (q[n] >= '0' && q[n] <= '9' && n < 19)
        u = u * 10 + (uint64_t)(q[n++] - '0');
    if (n > 0 && n < 19 && q[n] == '\0') {
        *out = *v == '-' ? -(int64_t)u : (int64_t)u;
        return true;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return false;
    *out = (int64_t)x;
    return true;
}

static bool parse_double(const char *v, double *out)
{
    char *end;
    locale_t loc = dbk__pg_get_c_locale();
    errno = 0;
    double d = loc ? strtod_l(v, &end, loc) : strtod(v, &end);
    if (end == v || *end)
        return false;
    /* ERANGE for subnormals is fine: the value is still the closest one. */
    *out = d;
    return true;
}

static int64_t affected_of(PGresult *res)
{
    const char *tag = PQcmdStatus(res);
    if (!tag || !strchr("IUDMC", tag[0] ? tag[0] : 'x')) /* SELECT 1 and the like: no count */
        return 0;
    if (strncmp(tag, "INSERT ", 7) && strncmp(tag, "UPDATE ", 7) && strncmp(tag, "DELETE ", 7) &&
        strncmp(tag, "MERGE ", 6) && strncmp(tag, "COPY ", 5))
        return 0;
    int64_t n;
    return parse_int(PQcmdTuples(res), &n) ? n : 0;
}

/* Converts a successful PGresult into an owned dbk_result. */
dbk_rc dbk__pg_build_result(PGresult *res, dbk_result **out, dbk_error *err)
{
    int nf = PQnfields(res);
    int nt = PQntuples(res);
    const char *stack_names[16];
    unsigned char stack_kinds[64];
    const char **names = nf <= 16 ? stack_names : malloc((size_t)nf * sizeof *names);
    unsigned char *kinds = nf <= 64 ? stack_kinds : malloc((size_t)nf);
    dbk_result *r = NULL;
    dbk_rc rc = DBK_ENOMEM;
    if (!names || !kinds)
        goto done;
    for (int i = 0; i < nf; i++) {
        names[i] = PQfname(res, i);
        kinds[i] = kind_of(PQftype(res, i));
    }
    r = dbk__result_new(nf, names, NULL);
    if (!r)
        goto done;
    r->affected = affected_of(res);
    if (nf == 0) {
        r->nrows = (size_t)nt; /* SELECT with no columns still counts rows */
        rc = DBK_OK;
        goto done;
    }
    size_t bytes = 0;
    for (int j = 0; j < nf; j++)
        if (kinds[j] == K_TEXT || kinds[j] == K_JSON || kinds[j] == K_BYTEA || kinds[j] == K_TS)
            for (int i = 0; i < nt; i++)
                bytes += (size_t)PQgetlength(res, i, j) + 1;
    if (dbk__result_reserve(r, (size_t)nt, bytes) != DBK_OK)
        goto done;
    int bad_col = 0;
    for (int i = 0; i < nt; i++) {
        struct dbk__cell *row = dbk__result_add_row(r);
        if (!row)
            goto done;
        for (int j = 0; j < nf; j++) {
            if (PQgetisnull(res, i, j))
                continue; /* cells start as NULL */
            struct dbk__cell *c = row + j;
            bad_col = j;
            const char *v = PQgetvalue(res, i, j);
            size_t len = (size_t)PQgetlength(res, i, j);
            switch (kinds[j]) {
            case K_INT:
                if (!parse_int(v, &c->v.i)) {
                    rc = DBK_EINTERNAL;
                    goto bad_value;
                }
                c->type = DBK_TYPE_INT64;
                break;
            case K_DOUBLE:
                if (!parse_double(v, &c->v.d)) {
                    rc = DBK_EINTERNAL;
                    goto bad_value;
                }
                c->type = DBK_TYPE_DOUBLE;
                break;
            case K_BOOL:
                c->type = DBK_TYPE_BOOL;
                c->v.i = v[0] == 't';
                break;
            case K_BYTEA: {
                dbk_rc brc = decode_bytea(r, c, v, len);
                if (brc == DBK_EINTERNAL) {
                    rc = brc;
                    goto bad_value;
                }
                if (brc)
                    goto done; /* rc is still DBK_ENOMEM */
                break;
            }
            case K_TS:
                /* 'infinity', BC dates and years past 9999 stay text. */
                if (dbk_timestamp_parse(v, len, &c->v.i) == DBK_OK) {
                    c->type = DBK_TYPE_TIMESTAMP;
                    break;
                }
                if (dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, v, len))
                    goto done;
                break;
            case K_JSON:
                if (dbk__result_set_bytes(r, c, DBK_TYPE_JSON, v, len))
                    goto done;
                break;
            default:
                if (dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, v, len))
                    goto done;
                break;
            }
        }
    }
    rc = DBK_OK;
    goto done;
bad_value:
    dbk__err(err, rc, "cannot read a value of column \"%s\" (type oid %u) sent by the server",
             PQfname(res, bad_col), (unsigned)PQftype(res, bad_col));
    dbk_result_free(r);
    r = NULL;
    if (names != stack_names)
        free(names);
    if (kinds != stack_kinds)
        free(kinds);
    return rc;
done:
    if (names != stack_names)
        free(names);
    if (kinds != stack_kinds)
        free(kinds);
    if (rc != DBK_OK) {
        dbk_result_free(r);
        return dbk__err(err, DBK_ENOMEM, "out of memory reading a result");
    }
    *out = r;
    return DBK_OK;
}

dbk_rc dbk__pg_copy_refused_err(dbk_error *err)
{
    dbk__err(err, DBK_EMISUSE, "COPY FROM STDIN / TO STDOUT is not supported");
    dbk__err_hint(err, "insert rows with parameterized INSERT statements (or a multi-row "
                       "INSERT ... SELECT FROM unnest($1::text[]))");
    return DBK_EMISUSE;
}

/* Turns the outcome of one statement into the driver's answer. Always
 * clears res. */
dbk_rc dbk__pg_finish(pg_conn *pc, PGresult *res, bool copy_refused, dbk_result **out,
                     int64_t *affected, dbk_error *err)
{
    if (copy_refused) {
        PQclear(res);
        if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD)
            return dbk__pg_lost(pc, err);
        return dbk__pg_copy_refused_err(err);
    }
    if (!res) {
        if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD)
            return dbk__pg_lost(pc, err);
        return dbk__err(err, DBK_EINTERNAL, "the server sent no result");
    }
    ExecStatusType st = PQresultStatus(res);
    dbk_rc rc;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY ||
        st == PGRES_SINGLE_TUPLE) {
        if (out) {
            rc = dbk__pg_build_result(res, out, err);
            if (rc == DBK_OK && affected)
                *affected = (*out)->affected;
        } else {
            rc = DBK_OK;
            if (affected)
                *affected = affected_of(res);
        }
    } else {
        rc = dbk__pg_result_error(pc, res, err);
    }
    PQclear(res);
    return rc;
}

static char *fmt_double(double d, char *buf, size_t size)
{
    if (isnan(d) || isinf(d)) {
        dbk__strlcpy(buf, isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity", size);
        return buf;
    }
    locale_t loc = dbk__pg_get_c_locale();
    locale_t old = loc ? uselocale(loc) : (locale_t)0;
    snprintf(buf, size, "%.17g", d);
    if (loc)
        uselocale(old);
    return buf;
}

/* Text sizes reserved in the scratch buffer per parameter type. */
static size_t scratch_need(const dbk_value *v)
{
    switch (v->type) {
    case DBK_TYPE_INT64:
        return 24;
    case DBK_TYPE_DOUBLE:
        return 32;
    case DBK_TYPE_TIMESTAMP:
        return 40;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON:
        return v->u.bytes.len + 1;
    default:
        return 0;
    }
}

bool dbk__pg_grow_param_arrays(pg_conn *pc, size_t n)
{
    if (n <= pc->pcap)
        return true;
    const char **v = realloc(pc->pvals, n * sizeof *v);
    if (!v)
        return false;
    pc->pvals = v;
    int *l = realloc(pc->plens, n * sizeof *l);
    if (!l)
        return false;
    pc->plens = l;
    int *f = realloc(pc->pfmts, n * sizeof *f);
    if (!f)
        return false;
    pc->pfmts = f;
    Oid *t = realloc(pc->ptypes, n * sizeof *t);
    if (!t)
        return false;
    pc->ptypes = t;
    char *s = realloc(pc->psig, n + 1);
    if (!s)
        return false;
    pc->psig = s;
    pc->pcap = n;
    return true;
}

static dbk_rc too_large(dbk_error *err)
{
    dbk__err_hint(err, "store large objects outside the database (a file or object store) and "
                       "keep their path or key in the row, or split the value");
    return DBK_EINVALID;
}

/* Everything that can be said about a statement's parameters without
 * touching the connection, checked before a byte is queued: lengths first,
 * from the length words alone (a value over the limit is refused without
 * being read, copied or allocated for), then NUL bytes in texts. Limits:
 * one value at most DBK__PG_MAX_VALUE bytes (the server's 1 GiB allocation
 * limit, less the 4-byte varlena header), and the whole Bind message at
 * most DBK__PG_MAX_MESSAGE; libpq itself would cut a text length to 32 bits
 * and send a prefix of the value as if it were all of it. */
dbk_rc dbk__pg_check_params(const dbk_value *params, size_t n, dbk_error *err)
{
    size_t total = 64 + 6 * n; /* names, counts, a format and a length word each */
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        if (v->type > DBK_TYPE_JSON)
            return dbk__err(err, DBK_EMISUSE, "parameter $%zu has an unknown type %d", i + 1,
                            (int)v->type);
        if (v->type != DBK_TYPE_TEXT && v->type != DBK_TYPE_JSON && v->type != DBK_TYPE_BLOB) {
            total += 40;
            continue;
        }
        if (!v->u.bytes.ptr && v->u.bytes.len)
            return dbk__err(err, DBK_EMISUSE, "parameter $%zu has a NULL pointer and length %zu",
                            i + 1, v->u.bytes.len);
        if (v->u.bytes.len > DBK__PG_MAX_VALUE) {
            dbk__err(err, DBK_EINVALID,
                     "%s parameter $%zu is %zu bytes; PostgreSQL accepts at most %zu bytes "
                     "(1 GiB) in one value",
                     dbk_type_name(v->type), i + 1, v->u.bytes.len, DBK__PG_MAX_VALUE);
            return too_large(err);
        }
        total += v->u.bytes.len;
        if (total > DBK__PG_MAX_MESSAGE) {
            dbk__err(err, DBK_EINVALID,
                     "parameters $1..$%zu add up to more than %zu bytes, the most PostgreSQL "
                     "accepts in one statement (1 GiB)",
                     i + 1, DBK__PG_MAX_MESSAGE);
            return too_large(err);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        if ((v->type == DBK_TYPE_TEXT || v->type == DBK_TYPE_JSON) && v->u.bytes.len &&
            memchr(v->u.bytes.ptr, '\0', v->u.bytes.len)) {
            dbk__err(err, DBK_EINVALID,
                     "%s parameter $%zu contains a NUL byte, which PostgreSQL cannot store",
                     v->type == DBK_TYPE_JSON ? "json" : "text", i + 1);
            dbk__err_hint(err, "store binary data as a blob (dbk_blob) in a bytea column");
            return DBK_EINVALID;
        }
    }
    return DBK_OK;
}

/* Converts dbk_values into libpq's parallel arrays. Text forms are written
 * into `scratch` (the stack buffer when it fits, else the connection's). */
dbk_rc dbk__pg_bind_params(pg_conn *pc, const dbk_value *params, size_t n, struct pg_params *pp,
                          char *stack_scratch, dbk_error *err)
{
    dbk_rc crc = dbk__pg_check_params(params, n, err);
    if (crc)
        return crc;
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += scratch_need(&params[i]);
    char *scratch = stack_scratch;
    if (need > PG_STACK_SCRATCH) {
        if (need > pc->scratch_cap) {
            char *s = realloc(pc->scratch, need);
            if (!s)
                return dbk__err(err, DBK_ENOMEM, "out of memory binding %zu parameter bytes", need);
            pc->scratch = s;
            pc->scratch_cap = need;
        }
        scratch = pc->scratch;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        char *p = scratch + off;
        pp->lengths[i] = 0;
        pp->formats[i] = 0;
        switch (v->type) {
        case DBK_TYPE_NULL:
            pp->values[i] = NULL;
            pp->types[i] = 0;
            pp->sig[i] = 'u';
            break;
        case DBK_TYPE_BOOL:
            pp->values[i] = v->u.b ? "t" : "f";
            pp->types[i] = OID_BOOL;
            pp->sig[i] = 'b';
            break;
        case DBK_TYPE_INT64: {
            /* declared int8, so sent in its binary form (8 bytes, network
             * order): no formatting here, no parsing on the server */
            uint64_t u = (uint64_t)v->u.i;
            for (int b = 0; b < 8; b++)
                p[b] = (char)(u >> (56 - 8 * b));
            pp->values[i] = p;
            pp->lengths[i] = 8;
            pp->formats[i] = 1;
            pp->types[i] = OID_INT8;
            pp->sig[i] = 'i';
            off += 24;
            break;
        }
        case DBK_TYPE_DOUBLE:
            pp->values[i] = fmt_double(v->u.d, p, 32);
            pp->types[i] = OID_FLOAT8;
            pp->sig[i] = 'd';
            off += 32;
            break;
        case DBK_TYPE_TIMESTAMP:
            if (dbk_timestamp_format(v->u.i, p, 40) != DBK_OK)
                return dbk__err(err, DBK_EINVALID,
                                "timestamp parameter $%zu (%" PRId64
                                " us) is outside the years 1..9999",
                                i + 1, v->u.i);
            pp->values[i] = p;
            pp->types[i] = OID_TIMESTAMPTZ;
            pp->sig[i] = 's';
            off += 40;
            break;
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
            /* libpq takes text parameters as C strings: copy to terminate.
             * Type "unknown" (0) lets the server infer it from context. */
            if (v->u.bytes.len)
                memcpy(p, v->u.bytes.ptr, v->u.bytes.len);
            p[v->u.bytes.len] = '\0';
            pp->values[i] = p;
            pp->types[i] = 0;
            pp->sig[i] = 'u';
            off += v->u.bytes.len + 1;
            break;
        case DBK_TYPE_BLOB: /* length checked by check_params() */
            pp->values[i] = v->u.bytes.ptr ? (const char *)v->u.bytes.ptr : "";
            pp->lengths[i] = (int)v->u.bytes.len;
            pp->formats[i] = 1;
            pp->types[i] = OID_BYTEA;
            pp->sig[i] = 'y';
            break;
        }
    }
    pp->sig[n] = '\0';
    pp->n = (int)n;
    return DBK_OK;
}
