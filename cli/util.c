/*
 * Output, errors and database access shared by every dbkit subcommand.
 *
 * Two output modes: human text (tables, one line per step) and --json, one
 * JSON document on stdout per command, so scripts can parse it. Errors go
 * to stderr as "dbkit <cmd>: error: <message>" plus the hint; with --json
 * the same error is also the JSON document. Nothing printed here ever
 * contains a password: URLs are shown through dbk_config_redacted_url().
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* ---- JSON ---- */

void jw_init(jw *w, FILE *f)
{
    memset(w, 0, sizeof *w);
    w->f = f;
}

static void jw_sep(jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        if (w->comma[w->depth])
            fputc(',', w->f);
        w->comma[w->depth] = true;
    }
}

static void jw_open(jw *w, char ch)
{
    jw_sep(w);
    fputc(ch, w->f);
    if (w->depth < 63)
        w->depth++;
    w->comma[w->depth] = false;
}

static void jw_close(jw *w, char ch)
{
    if (w->depth > 0)
        w->depth--;
    fputc(ch, w->f);
    if (w->depth == 0)
        fputc('\n', w->f);
}

void jw_obj(jw *w)
{
    jw_open(w, '{');
}
void jw_end_obj(jw *w)
{
    jw_close(w, '}');
}
void jw_arr(jw *w)
{
    jw_open(w, '[');
}
void jw_end_arr(jw *w)
{
    jw_close(w, ']');
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t k;
    uint32_t cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        k = 1;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        k = 2;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        k = 3;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n <= k)
        return 0;
    for (size_t i = 1; i <= k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k + 1;
}

static void jw_raw_string(FILE *f, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    size_t i = 0;
    while (i < n) {
        unsigned char ch = p[i];
        if (ch == '"' || ch == '\\') {
            fputc('\\', f);
            fputc(ch, f);
            i++;
        } else if (ch == '\n') {
            fputs("\\n", f);
            i++;
        } else if (ch == '\t') {
            fputs("\\t", f);
            i++;
        } else if (ch == '\r') {
            fputs("\\r", f);
            i++;
        } else if (ch < 0x20 || ch == 0x7f) {
            fprintf(f, "\\u%04x", ch);
            i++;
        } else {
            size_t k = utf8_len(p + i, n - i);
            if (k == 0) { /* invalid UTF-8: the replacement character */
                fputs("\\ufffd", f);
                i++;
            } else {
                fwrite(p + i, 1, k, f);
                i += k;
            }
        }
    }
    fputc('"', f);
}

void jw_key(jw *w, const char *k)
{
    jw_sep(w);
    jw_raw_string(w->f, k, strlen(k));
    fputc(':', w->f);
    w->after_key = true;
}

void jw_strn(jw *w, const char *s, size_t n)
{
    jw_sep(w);
    if (!s)
        fputs("null", w->f);
    else
        jw_raw_string(w->f, s, n);
}

void jw_str(jw *w, const char *s)
{
    jw_strn(w, s, s ? strlen(s) : 0);
}

void jw_int(jw *w, int64_t v)
{
    jw_sep(w);
    fprintf(w->f, "%" PRId64, v);
}

void jw_double(jw *w, double v)
{
    jw_sep(w);
    if (isfinite(v))
        fprintf(w->f, "%.17g", v);
    else
        fputs("null", w->f);
}

void jw_bool(jw *w, bool v)
{
    jw_sep(w);
    fputs(v ? "true" : "false", w->f);
}

void jw_null(jw *w)
{
    jw_sep(w);
    fputs("null", w->f);
}

void jw_kstr(jw *w, const char *k, const char *v)
{
    jw_key(w, k);
    jw_str(w, v);
}

void jw_kint(jw *w, const char *k, int64_t v)
{
    jw_key(w, k);
    jw_int(w, v);
}

void jw_kbool(jw *w, const char *k, bool v)
{
    jw_key(w, k);
    jw_bool(w, v);
}

/* ---- errors ---- */

int cli_exit_code(dbk_rc rc)
{
    switch (rc) {
    case DBK_OK:
        return CLI_OK;
    case DBK_EUNAVAILABLE:
    case DBK_EAUTH:
    case DBK_ETLS:
        return CLI_CONNECT;
    default:
        return CLI_ERROR;
    }
}

int cli_fail(const cli *c, dbk_rc rc, const dbk_error *err)
{
    return cli_fail_ex(c, rc, err, NULL, NULL);
}

int cli_migrate_env(const cli *c, dbk_migrate_opts *o)
{
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_migrate_opts_from_env(o, &err);
    return rc == DBK_OK ? CLI_OK : cli_fail(c, rc, &err);
}

int cli_fail_ex(const cli *c, dbk_rc rc, const dbk_error *err, void (*extra)(jw *w, void *ctx),
                void *ctx)
{
    const char *msg = err && err->message[0] ? err->message : dbk_strerror(rc);
    fprintf(stderr, "dbkit %s: error: %s\n", c->cmd ? c->cmd : "", msg);
    if (err && err->hint[0])
        fprintf(stderr, "  hint: %s\n", err->hint);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", false);
        jw_key(&w, "error");
        jw_obj(&w);
        jw_kstr(&w, "code", dbk_rc_name(rc));
        jw_kstr(&w, "message", msg);
        jw_kstr(&w, "hint", err ? err->hint : "");
        jw_kstr(&w, "sqlstate", err ? err->sqlstate : "");
        jw_end_obj(&w);
        if (extra)
            extra(&w, ctx);
        jw_end_obj(&w);
    }
    fflush(stdout);
    return cli_exit_code(rc);
}

int cli_usage(const cli *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "dbkit%s%s: %s\n(see `dbkit %s%s--help`)\n", c->cmd ? " " : "",
            c->cmd ? c->cmd : "", msg, c->cmd ? c->cmd : "", c->cmd ? " " : "");
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", false);
        jw_key(&w, "error");
        jw_obj(&w);
        jw_kstr(&w, "code", "usage");
        jw_kstr(&w, "message", msg);
        jw_end_obj(&w);
        jw_end_obj(&w);
    }
    return CLI_USAGE;
}

void cli_info(const cli *c, const char *fmt, ...)
{
    if (c->quiet)
        return;
    FILE *f = c->json ? stderr : stdout;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
}

/* ---- options ---- */

bool cli_is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

int cli_opt_value(const cli *c, int argc, char **argv, int *i, const char *name,
                  const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        cli_usage(c, "option %s needs a value", name);
        return -1;
    }
    (*i)++;
    *value = argv[*i];
    return 1;
}

bool cli_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || v < 0)
        return false;
    *out = v;
    return true;
}

/* ---- database ---- */

struct src_find {
    const char *key;
    dbk_config_source src;
    bool found;
};

static void find_source(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    (void)value;
    struct src_find *f = ctx;
    if (strcmp(key, f->key) == 0) {
        f->src = src;
        f->found = true;
    }
}

static int config_build(const cli *c, bool long_statements, char *url, size_t urllen,
                        dbk_config **out)
{
    dbk_error err;
    dbk_error_clear(&err);
    dbk_config *cfg = NULL;
    /* Migrations, seeds, gen and testdb (the long-statement commands) take
     * session advisory locks and run DDL: behind a transaction-mode pooler
     * they need a connection to the server itself, DATABASE_DIRECT_URL
     * when set (--url still wins). */
    const char *direct = long_statements && !c->url ? getenv("DATABASE_DIRECT_URL") : NULL;
    dbk_rc rc = c->url               ? dbk_config_from_url(c->url, &cfg, &err)
                : direct && *direct ? dbk_config_from_url(direct, &cfg, &err)
                                    : dbk_config_from_env(&cfg, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    if (url)
        cli_redacted(cfg, url, urllen);
    struct src_find f = {"application_name", DBK_CONFIG_SOURCE_DEFAULT, false};
    dbk_config_dump(cfg, find_source, &f);
    if (f.found && f.src == DBK_CONFIG_SOURCE_DEFAULT)
        dbk_config_set(cfg, "application_name", "dbkit-cli", &err);
    if (long_statements) {
        struct src_find t = {"statement_timeout", DBK_CONFIG_SOURCE_DEFAULT, false};
        dbk_config_dump(cfg, find_source, &t);
        if (t.found && t.src == DBK_CONFIG_SOURCE_DEFAULT)
            dbk_config_set(cfg, "statement_timeout", "0", &err);
    }
    *out = cfg;
    return CLI_OK;
}

int cli_config(const cli *c, bool long_statements, char *url, size_t urllen, dbk_config **out)
{
    return config_build(c, long_statements, url, urllen, out);
}

int cli_connect(const cli *c, bool long_statements, char *url, size_t urllen, dbk_conn **out)
{
    *out = NULL;
    char shown[512];
    dbk_config *cfg = NULL;
    int code = config_build(c, long_statements, shown, sizeof shown, &cfg);
    if (code)
        return code;
    if (url)
        snprintf(url, urllen, "%s", shown);
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_conn_open(cfg, out, &err);
    dbk_config_free(cfg);
    if (rc) {
        fprintf(stderr, "dbkit %s: cannot connect to %s\n", c->cmd ? c->cmd : "", shown);
        return cli_fail(c, rc, &err);
    }
    return CLI_OK;
}

void cli_redacted(const dbk_config *cfg, char *buf, size_t n)
{
    if (dbk_config_redacted_url(cfg, buf, n) >= n && n > 4)
        memcpy(buf + n - 4, "...", 4);
}

/* ---- cells ---- */

void cli_time(int64_t usec, char *buf, size_t n)
{
    time_t t = (time_t)(usec / 1000000);
    struct tm tm;
    if (usec <= 0 || !gmtime_r(&t, &tm)) {
        snprintf(buf, n, "-");
        return;
    }
    strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

const char *cli_cell_text(const dbk_result *r, size_t row, int col, char *buf, size_t n,
                          size_t *len, bool *is_null)
{
    dbk_error err;
    *is_null = false;
    *len = 0;
    buf[0] = '\0';
    switch (dbk_result_type(r, row, col)) {
    case DBK_TYPE_NULL:
        *is_null = true;
        return buf;
    case DBK_TYPE_BOOL: {
        bool b = false;
        dbk_result_get_bool(r, row, col, &b, &err);
        snprintf(buf, n, "%s", b ? "true" : "false");
        break;
    }
    case DBK_TYPE_INT64: {
        int64_t v = 0;
        dbk_result_get_int64(r, row, col, &v, &err);
        snprintf(buf, n, "%" PRId64, v);
        break;
    }
    case DBK_TYPE_DOUBLE: {
        double d = 0;
        dbk_result_get_double(r, row, col, &d, &err);
        snprintf(buf, n, "%.15g", d);
        break;
    }
    case DBK_TYPE_TIMESTAMP: {
        int64_t us = 0;
        dbk_result_get_timestamp(r, row, col, &us, &err);
        if (dbk_timestamp_format(us, buf, n) != DBK_OK)
            snprintf(buf, n, "%" PRId64, us);
        break;
    }
    case DBK_TYPE_BLOB: {
        const void *p = NULL;
        size_t bl = 0;
        dbk_result_get_blob(r, row, col, &p, &bl, &err);
        static const char hex[] = "0123456789abcdef";
        size_t o = 0;
        if (n > 3) {
            buf[o++] = '\\';
            buf[o++] = 'x';
        }
        for (size_t i = 0; i < bl && o + 3 < n; i++) {
            buf[o++] = hex[((const unsigned char *)p)[i] >> 4];
            buf[o++] = hex[((const unsigned char *)p)[i] & 15];
        }
        buf[o] = '\0';
        break;
    }
    default: {
        const char *s = NULL;
        size_t sl = 0;
        dbk_result_get_text(r, row, col, &s, &sl, &err);
        *len = sl;
        return s ? s : "";
    }
    }
    *len = strlen(buf);
    return buf;
}

void cli_cell_json(jw *w, const dbk_result *r, size_t row, int col)
{
    dbk_error err;
    switch (dbk_result_type(r, row, col)) {
    case DBK_TYPE_NULL:
        jw_null(w);
        return;
    case DBK_TYPE_BOOL: {
        bool b = false;
        dbk_result_get_bool(r, row, col, &b, &err);
        jw_bool(w, b);
        return;
    }
    case DBK_TYPE_INT64: {
        int64_t v = 0;
        dbk_result_get_int64(r, row, col, &v, &err);
        jw_int(w, v);
        return;
    }
    case DBK_TYPE_DOUBLE: {
        double d = 0;
        dbk_result_get_double(r, row, col, &d, &err);
        jw_double(w, d);
        return;
    }
    case DBK_TYPE_BLOB: {
        const void *p = NULL;
        size_t bl = 0;
        dbk_result_get_blob(r, row, col, &p, &bl, &err);
        char *hexs = malloc(bl * 2 + 3);
        if (!hexs) {
            jw_null(w);
            return;
        }
        static const char hex[] = "0123456789abcdef";
        size_t o = 0;
        hexs[o++] = '\\';
        hexs[o++] = 'x';
        for (size_t i = 0; i < bl; i++) {
            hexs[o++] = hex[((const unsigned char *)p)[i] >> 4];
            hexs[o++] = hex[((const unsigned char *)p)[i] & 15];
        }
        jw_strn(w, hexs, o);
        free(hexs);
        return;
    }
    default: {
        char buf[64];
        size_t len = 0;
        bool is_null = false;
        const char *s = cli_cell_text(r, row, col, buf, sizeof buf, &len, &is_null);
        jw_strn(w, s, len);
        return;
    }
    }
}
