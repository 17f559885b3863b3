/*
 * config_value.c - parsing one value into one setting: the kinds of the
 * settings table (engine, path, hosts, ports, durations in their units,
 * counts, enums, booleans, secrets), bounds, and the messages that name
 * where the value came from (struct origin) without ever quoting a secret.
 *
 * Every source (defaults, environment, URL, dbk_config_set) goes through
 * dbk__cfg_apply(), so a value means the same whatever typed it; the config
 * is left unchanged when a value is refused. Also here: the small helpers
 * the other parts share (excerpts for messages, percent-decoding, the
 * counting builder rendering writes into) and libpq pass-through extras.
 */
#include "config_impl.h"
#include "internal.h"
#include "url.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

void dbk__cfg_wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

bool dbk__cfg_has_ctrl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* A printable excerpt of s[0..n) for a message: at most QUOTE_MAX bytes,
 * control characters as '?', "..." when cut. */
const char *dbk__cfg_excerpt(char *out, size_t outlen, const char *s, size_t n)
{
    size_t o = 0;
    size_t lim = n < QUOTE_MAX ? n : QUOTE_MAX;
    for (size_t i = 0; i < lim && o + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n > lim && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* Percent-decodes s[0..n) into a new string. On PCT_BAD/PCT_NUL, *bad is
 * the offset of the offending '%'. '+' stays '+' (as in libpq). */
int dbk__cfg_pct_decode(const char *s, size_t n, char **out, size_t *bad)
{
    return dbk__pct_decode_dup(s, n, out, bad); /* core/url.h */
}

/* Parses a decimal number. With `frac`, up to three decimals are allowed
 * and the result is in thousandths (seconds -> milliseconds). Returns 0, 1
 * for "not a number", 2 for "beyond any bound". */
static int parse_number(const char *s, bool frac, long long *out)
{
    const char *p = s;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (*p < '0' || *p > '9')
        return 1;
    long long v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > 100000000000000LL) /* 1e14: past every bound, stop before overflow */
            return 2;
        v = v * 10 + (*p - '0');
    }
    long long fr = 0;
    if (frac) {
        int fd = 0;
        if (*p == '.') {
            p++;
            if (*p < '0' || *p > '9')
                return 1;
            for (; *p >= '0' && *p <= '9'; p++) {
                if (fd == 3)
                    return 1;
                fr = fr * 10 + (*p - '0');
                fd++;
            }
        }
        for (; fd < 3; fd++)
            fr *= 10;
        v = v * 1000 + fr;
    }
    if (*p)
        return 1;
    *out = neg ? -v : v;
    return 0;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

void dbk__cfg_sb_putn(struct dbk__cfg_sb *b, const char *s, size_t n)
{
    if (b->cap && b->len < b->cap - 1) {
        size_t room = b->cap - 1 - b->len;
        memcpy(b->buf + b->len, s, n < room ? n : room);
    }
    b->len += n;
}

void dbk__cfg_sb_puts(struct dbk__cfg_sb *b, const char *s)
{
    dbk__cfg_sb_putn(b, s, strlen(s));
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends s percent-encoded: unreserved characters and those in `keep`
 * stay as they are. */
void dbk__cfg_sb_enc(struct dbk__cfg_sb *b, const char *s, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (unreserved(c) || (c && strchr(keep, c))) {
            dbk__cfg_sb_putn(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            dbk__cfg_sb_putn(b, e, 3);
        }
    }
}

size_t dbk__cfg_sb_finish(struct dbk__cfg_sb *b)
{
    if (b->cap)
        b->buf[b->len < b->cap - 1 ? b->len : b->cap - 1] = '\0';
    return b->len;
}

size_t dbk__cfg_count_list(const char *s)
{
    if (!s)
        return 0;
    size_t n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* ------------------------------------------------------------------------ */
/* Applying one value to one setting                                         */
/* ------------------------------------------------------------------------ */

/* Message for a bad value: "<origin>: <problem>", quoting the value only
 * when allowed. */
static dbk_rc bad_value(dbk_error *err, const struct origin *o, const char *value,
                        const char *problem)
{
    char q[QUOTE_MAX + 8];
    if (o->quote && value)
        return dbk__err(err, DBK_ECONFIG, "%s: \"%s\" %s", o->name,
                        dbk__cfg_excerpt(q, sizeof q, value, strlen(value)), problem);
    return dbk__err(err, DBK_ECONFIG, "%s: the value %s", o->name, problem);
}

/* Checks an IPv6 literal (without brackets), optionally followed by
 * "%zone" (an interface name). */
bool dbk__cfg_valid_ipv6(const char *h)
{
    char addr[INET6_ADDRSTRLEN + 1];
    unsigned char bin[16];
    const char *pct = strchr(h, '%');
    size_t alen = pct ? (size_t)(pct - h) : strlen(h);
    if (alen == 0 || alen >= sizeof addr)
        return false;
    memcpy(addr, h, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET6, addr, bin) != 1)
        return false;
    if (pct) {
        const char *z = pct + 1;
        if (!*z || strlen(z) > 64)
            return false;
        for (; *z; z++)
            if (!unreserved((unsigned char)*z))
                return false;
    }
    return true;
}

/* One item of a comma list: item number `idx` (from 1) is p[0..len), not
 * NUL-terminated; the step checks it and appends its normal form at
 * res + *r (never longer than the item) and advances *r. On error it sets
 * err (naming the list by o->name, quoting the item only when o->quote
 * allows) and returns DBK_ECONFIG. */
typedef dbk_rc (*list_item_fn)(const char *p, size_t len, int idx, const struct origin *o,
                               char *res, size_t *r, dbk_error *err);

/* Normalizes a comma list item by item: the items' normal forms joined by
 * ',' into one allocated string (*out, the caller frees). The result is
 * never longer than v, since no step lengthens its item. */
static dbk_rc norm_list(const char *v, const struct origin *o, list_item_fn step, char **out,
                        dbk_error *err)
{
    size_t n = strlen(v);
    char *res = malloc(n + 1);
    if (!res)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    size_t r = 0;
    const char *p = v;
    for (int idx = 1;; idx++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (r)
            res[r++] = ',';
        dbk_rc rc = step(p, len, idx, o, res, &r, err);
        if (rc != DBK_OK) {
            free(res);
            return rc;
        }
        if (!e)
            break;
        p = e + 1;
    }
    res[r] = '\0';
    *out = res;
    return DBK_OK;
}

/* One host: not empty, brackets around an IPv6 literal removed, no control
 * characters. */
static dbk_rc host_item(const char *h, size_t len, int idx, const struct origin *o, char *res,
                        size_t *r, dbk_error *err)
{
    if (len == 0) {
        dbk__err(err, DBK_ECONFIG, "%s: host %d of the list is empty", o->name, idx);
        dbk__err_hint(err, "write hosts as host1,host2 with no empty entries");
        return DBK_ECONFIG;
    }
    if (h[0] == '[') {
        if (len < 2 || h[len - 1] != ']') {
            dbk__err(err, DBK_ECONFIG, "%s: unterminated '[' in host %d", o->name, idx);
            dbk__err_hint(err, "IPv6 hosts are written in brackets: [::1]");
            return DBK_ECONFIG;
        }
        h++;
        len -= 2;
        char tmp[128];
        if (len == 0 || len >= sizeof tmp)
            return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address in host %d", o->name, idx);
        memcpy(tmp, h, len);
        tmp[len] = '\0';
        if (!dbk__cfg_valid_ipv6(tmp)) {
            char q[QUOTE_MAX + 8];
            if (o->quote)
                return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address \"%s\"", o->name,
                                dbk__cfg_excerpt(q, sizeof q, tmp, len));
            return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address in host %d", o->name, idx);
        }
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)h[i];
            if (c < 0x20 || c == 0x7f || c == '[' || c == ']')
                return dbk__err(err, DBK_ECONFIG,
                                "%s: host %d contains a control character or a stray bracket",
                                o->name, idx);
        }
        /* A ':' makes it an IPv6 literal (brackets are optional here,
         * since there is no port to separate). */
        if (memchr(h, ':', len)) {
            char tmp[128];
            bool ok = len < sizeof tmp;
            if (ok) {
                memcpy(tmp, h, len);
                tmp[len] = '\0';
                ok = dbk__cfg_valid_ipv6(tmp);
            }
            if (!ok) {
                dbk__err(err, DBK_ECONFIG,
                         "%s: host %d is neither a host name nor an IPv6 address", o->name, idx);
                dbk__err_hint(err, "a host with ':' must be an IPv6 address; give the port "
                                   "separately");
                return DBK_ECONFIG;
            }
        }
    }
    memcpy(res + *r, h, len);
    *r += len;
    return DBK_OK;
}

bool dbk__cfg_port_number(const char *s, size_t n, int *out)
{
    long long v = 0;
    if (!dbk__parse_decimal(s, n, 1, 65535, &v))
        return false;
    *out = (int)v;
    return true;
}

/* One port, 1..65535, written back as its plain decimal form (never longer
 * than the item: the parser takes digits only). */
static dbk_rc port_item(const char *p, size_t len, int idx, const struct origin *o, char *res,
                        size_t *r, dbk_error *err)
{
    int port;
    if (!dbk__cfg_port_number(p, len, &port)) {
        char q[QUOTE_MAX + 8];
        if (o->quote)
            dbk__err(err, DBK_ECONFIG, "%s: bad port \"%s\": expected a number from 1 to 65535",
                     o->name, dbk__cfg_excerpt(q, sizeof q, p, len));
        else
            dbk__err(err, DBK_ECONFIG, "%s: bad port %d: expected a number from 1 to 65535",
                     o->name, idx);
        dbk__err_hint(err, "ports are whole numbers from 1 to 65535 (PostgreSQL uses 5432)");
        return DBK_ECONFIG;
    }
    char num[8];
    int w = snprintf(num, sizeof num, "%d", port);
    memcpy(res + *r, num, (size_t)w);
    *r += (size_t)w;
    return DBK_OK;
}

static const char *unit_name(const struct setting *s, dbk_config_source src)
{
    if (s->kind == K_SEC)
        return src == DBK_CONFIG_SOURCE_ENV ? " milliseconds" : " seconds";
    if (s->kind == K_MS)
        return " milliseconds";
    return "";
}

/* Replaces a string field; the old value is wiped when it was secret. */
static void set_str(dbk_config *cfg, const struct setting *s, char *v)
{
    char **slot = dbk__cfg_str_slot(cfg, s);
    if (s->kind == K_SECRET)
        dbk__cfg_wipe_free(*slot);
    else
        free(*slot);
    *slot = v;
}

/* Parses `value` for row `idx` and stores it with its source. The config
 * is left unchanged on error. */
dbk_rc dbk__cfg_apply(dbk_config *cfg, int idx, const char *value, const struct origin *o,
                      dbk_error *err)
{
    const struct setting *s = &dbk__cfg_settings[idx];
    int tgt = (s->flags & F_ALIAS) ? S_STMT_CACHE_SIZE : idx;
    size_t vlen = strnlen(value, VALUE_MAX + 1);
    if (vlen > VALUE_MAX)
        return dbk__err(err, DBK_ECONFIG, "%s: the value is too long (more than %d bytes)",
                        o->name, VALUE_MAX);

    switch (s->kind) {
    case K_ENGINE:
        if (strcasecmp(value, "sqlite") == 0)
            cfg->engine = DBK_ENGINE_SQLITE;
        else if (strcasecmp(value, "postgres") == 0 || strcasecmp(value, "postgresql") == 0)
            cfg->engine = DBK_ENGINE_POSTGRES;
        else
            return bad_value(err, o, value, "is not an engine: expected sqlite or postgres");
        break;
    case K_PATH: {
        if (!*value || dbk__cfg_has_ctrl(value))
            return bad_value(err, o, value, "is not a usable SQLite path");
        char *p = strdup(value);
        if (!p)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        set_str(cfg, s, p);
        cfg->sqlite_memory = strcmp(value, ":memory:") == 0;
        break;
    }
    case K_MODE:
        if (strcasecmp(value, "ro") == 0) {
            cfg->sqlite_readonly = true;
            cfg->sqlite_create = false;
        } else if (strcasecmp(value, "rw") == 0) {
            cfg->sqlite_readonly = false;
            cfg->sqlite_create = false;
        } else if (strcasecmp(value, "rwc") == 0) {
            cfg->sqlite_readonly = false;
            cfg->sqlite_create = true;
        } else {
            bad_value(err, o, value, "is not a mode: expected ro, rw or rwc");
            dbk__err_hint(err, "mode is ro (read-only), rw (read-write) or rwc (read-write, "
                               "create if missing)");
            return DBK_ECONFIG;
        }
        break;
    case K_HOSTS: {
        char *h = NULL;
        dbk_rc rc = norm_list(value, o, host_item, &h, err);
        if (rc)
            return rc;
        set_str(cfg, s, h);
        break;
    }
    case K_PORTS: {
        char *p = NULL;
        dbk_rc rc = norm_list(value, o, port_item, &p, err);
        if (rc)
            return rc;
        set_str(cfg, s, p);
        break;
    }
    case K_TEXT: {
        if (dbk__cfg_has_ctrl(value))
            return bad_value(err, o, value, "contains a control character");
        char *p = strdup(value);
        if (!p)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        set_str(cfg, s, p);
        break;
    }
    case K_SECRET: {
        char *p = strdup(value);
        if (!p)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        set_str(cfg, s, p);
        break;
    }
    case K_ENUM: {
        const char *hit = NULL;
        for (const char *const *c = s->choices; *c; c++)
            if (strcasecmp(*c, value) == 0)
                hit = *c;
        if (!hit) {
            char list[160];
            struct dbk__cfg_sb b = {list, sizeof list, 0};
            for (const char *const *c = s->choices; *c; c++) {
                dbk__cfg_sb_puts(&b, c == s->choices ? "" : ", ");
                dbk__cfg_sb_puts(&b, *c);
            }
            dbk__cfg_sb_finish(&b);
            bad_value(err, o, value, "is not one of the allowed values");
            dbk__err_hint(err, "%s is one of: %s", s->key, list);
            return DBK_ECONFIG;
        }
        char *p = strdup(hit);
        if (!p)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        set_str(cfg, s, p);
        break;
    }
    case K_COUNT:
    case K_MS:
    case K_SEC: {
        bool secs = s->kind == K_SEC && o->src != DBK_CONFIG_SOURCE_ENV;
        long long v = 0;
        int prc = parse_number(value, secs, &v);
        long long div = secs ? 1000 : 1;
        if (prc == 1) {
            bad_value(err, o, value, secs ? "is not a number of seconds" : "is not a whole number");
            dbk__err_hint(err, "%s takes a number from %lld to %lld%s", s->key,
                          (s->min + div - 1) / div, s->max / div, unit_name(s, o->src));
            return DBK_ECONFIG;
        }
        if (prc == 2 || v < s->min || v > s->max) {
            char problem[160];
            snprintf(problem, sizeof problem, "is out of range: allowed %lld to %lld%s",
                     (s->min + div - 1) / div, s->max / div, unit_name(s, o->src));
            bad_value(err, o, value, problem);
            dbk__err_hint(err, "%s takes a number from %lld to %lld%s", s->key,
                          (s->min + div - 1) / div, s->max / div, unit_name(s, o->src));
            return DBK_ECONFIG;
        }
        *dbk__cfg_int_slot(cfg, s) = (int)v;
        break;
    }
    case K_BOOL_CACHE: {
        bool on;
        if (!parse_bool(value, &on)) {
            bad_value(err, o, value, "is not a boolean");
            dbk__err_hint(err, "%s is true or false", s->key);
            return DBK_ECONFIG;
        }
        if (!on)
            cfg->stmt_cache_size = 0;
        else if (cfg->stmt_cache_size == 0)
            cfg->stmt_cache_size = 128;
        break;
    }
    default:
        return dbk__err(err, DBK_EINTERNAL, "config: unknown setting kind");
    }
    cfg->src[tgt] = (unsigned char)o->src;
    return DBK_OK;
}

/* ------------------------------------------------------------------------ */
/* Extras (libpq pass-through parameters)                                    */
/* ------------------------------------------------------------------------ */

bool dbk__cfg_valid_param_name(const char *k)
{
    if (!*k || strlen(k) > 64)
        return false;
    for (; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') || *k == '_'))
            return false;
    return true;
}

dbk_rc dbk__cfg_extra_set(dbk_config *cfg, const char *key, const char *value, dbk_error *err)
{
    for (size_t i = 0; i < cfg->nextra; i++) {
        if (strcmp(cfg->extra[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return dbk__err(err, DBK_ENOMEM, "out of memory");
            dbk__cfg_wipe_free(cfg->extra[i].value);
            cfg->extra[i].value = v;
            return DBK_OK;
        }
    }
    struct dbk__cfg_extra *x = realloc(cfg->extra, (cfg->nextra + 1) * sizeof *x);
    if (!x)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    cfg->extra = x;
    char *k = strdup(key);
    char *v = strdup(value);
    if (!k || !v) {
        free(k);
        dbk__cfg_wipe_free(v);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    x[cfg->nextra].key = k;
    x[cfg->nextra].value = v;
    cfg->nextra++;
    return DBK_OK;
}
