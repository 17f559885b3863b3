/*
 * config_render.c - rendering a configuration: dbk_config_redacted_url,
 * dbk_redact_url and dbk_config_dump. They write into caller buffers
 * through the library's string builder over that buffer (dbk__sb_over,
 * core/sb.h), so they never allocate and report the length they needed,
 * like snprintf; secrets are replaced before anything is written. Values
 * are percent-encoded straight from the configuration's strings (pointer
 * and length), so no piece is copied through a buffer of its own.
 */
#include "config_impl.h"
#include "internal.h"
#include "sb.h"
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
/* Rendering                                                                 */
/* ------------------------------------------------------------------------ */


/* The effective value of row `idx` as text in the key's units. */
static const char *value_text(const dbk_config *cfg, int idx, char *tmp, size_t tmplen)
{
    const struct setting *s = &dbk__cfg_settings[idx];
    switch (s->kind) {
    case K_ENGINE:
        return cfg->engine == DBK_ENGINE_POSTGRES ? "postgres" : "sqlite";
    case K_MODE:
        return cfg->sqlite_readonly ? "ro" : cfg->sqlite_create ? "rwc" : "rw";
    case K_SECRET:
        return dbk__cfg_str_slot_c(cfg, s) ? "***" : "";
    case K_PATH:
    case K_HOSTS:
    case K_PORTS:
    case K_TEXT:
    case K_ENUM: {
        const char *v = dbk__cfg_str_slot_c(cfg, s);
        return v ? v : "";
    }
    case K_COUNT:
    case K_MS:
        snprintf(tmp, tmplen, "%d", *dbk__cfg_int_slot_c(cfg, s));
        return tmp;
    case K_SEC: {
        int ms = *dbk__cfg_int_slot_c(cfg, s);
        if (ms % 1000 == 0) {
            snprintf(tmp, tmplen, "%d", ms / 1000);
        } else {
            snprintf(tmp, tmplen, "%d.%03d", ms / 1000, ms % 1000);
            size_t l = strlen(tmp);
            while (l && tmp[l - 1] == '0')
                tmp[--l] = '\0';
        }
        return tmp;
    }
    case K_BOOL_CACHE:
        return cfg->stmt_cache_size ? "true" : "false";
    default:
        return "";
    }
}

DBK_API void dbk_config_dump(const dbk_config *cfg, dbk_config_visit_fn fn, void *ctx)
{
    if (!cfg || !fn)
        return;
    for (int i = 0; i < S_COUNT_; i++) {
        const struct setting *s = &dbk__cfg_settings[i];
        if ((s->flags & F_ALIAS) || !dbk__cfg_applies(cfg, s))
            continue;
        char tmp[32];
        fn(ctx, s->key, value_text(cfg, i, tmp, sizeof tmp), (dbk_config_source)cfg->src[i]);
    }
    if (cfg->engine == DBK_ENGINE_POSTGRES)
        for (size_t i = 0; i < cfg->nextra; i++)
            fn(ctx, cfg->extra[i].key,
               dbk__cfg_is_secret_key(cfg->extra[i].key) ? "***" : cfg->extra[i].value,
               DBK_CONFIG_SOURCE_URL);
}

/* Appends "?k=v&..." for every non-default setting that is not part of the
 * URL body, then the pass-through parameters. */
static void render_query(const dbk_config *cfg, dbk__sb *b, bool port_in_query)
{
    bool first = true;
    for (int i = 0; i < S_COUNT_; i++) {
        const struct setting *s = &dbk__cfg_settings[i];
        bool want = (s->flags & F_COMPONENT) == 0 || (i == S_PORT && port_in_query);
        if (!want || (s->flags & (F_ALIAS | F_NOURL)) || !dbk__cfg_applies(cfg, s) ||
            cfg->src[i] == DBK_CONFIG_SOURCE_DEFAULT)
            continue;
        char tmp[32];
        dbk__sb_puts(b, first ? "?" : "&");
        first = false;
        dbk__sb_puts(b, s->key);
        dbk__sb_puts(b, "=");
        const char *v = value_text(cfg, i, tmp, sizeof tmp);
        dbk__sb_put_pct(b, v, strlen(v), ",:/");
    }
    if (cfg->engine != DBK_ENGINE_POSTGRES)
        return;
    for (size_t i = 0; i < cfg->nextra; i++) {
        dbk__sb_puts(b, first ? "?" : "&");
        first = false;
        dbk__sb_puts(b, cfg->extra[i].key);
        dbk__sb_puts(b, "=");
        if (dbk__cfg_is_secret_key(cfg->extra[i].key))
            dbk__sb_puts(b, "***");
        else
            dbk__sb_put_pct(b, cfg->extra[i].value, strlen(cfg->extra[i].value), ",:/");
    }
}

DBK_API size_t dbk_config_redacted_url(const dbk_config *cfg, char *buf, size_t buflen)
{
    dbk__sb b = dbk__sb_over(buf, buflen);
    if (!cfg)
        return b.len;
    if (cfg->engine != DBK_ENGINE_POSTGRES) {
        dbk__sb_puts(&b, "sqlite:");
        if (cfg->sqlite_memory) {
            dbk__sb_puts(&b, ":memory:");
        } else if (cfg->sqlite_path) {
            if (cfg->sqlite_path[0] == '/')
                dbk__sb_puts(&b, "//");
            dbk__sb_put_pct(&b, cfg->sqlite_path, strlen(cfg->sqlite_path), "/:");
        }
        render_query(cfg, &b, false);
        return b.len;
    }
    dbk__sb_puts(&b, "postgres://");
    if (cfg->user)
        dbk__sb_put_pct(&b, cfg->user, strlen(cfg->user), "");
    if (cfg->password)
        dbk__sb_puts(&b, ":***");
    if (cfg->user || cfg->password)
        dbk__sb_puts(&b, "@");
    if (cfg->host) {
        size_t np = dbk__cfg_count_list(cfg->port);
        const char *h = cfg->host;
        const char *p = cfg->port;
        for (size_t i = 0;; i++) {
            const char *he = strchr(h, ',');
            size_t hl = he ? (size_t)(he - h) : strlen(h);
            /* An IPv6 literal in brackets; a name longer than any real
             * host (255) is encoded whole, never bracketed, as before. */
            bool v6 = hl < 256 && memchr(h, ':', hl) != NULL;
            if (i)
                dbk__sb_puts(&b, ",");
            if (v6)
                dbk__sb_puts(&b, "[");
            dbk__sb_put_pct(&b, h, hl, v6 ? ":" : "");
            if (v6)
                dbk__sb_puts(&b, "]");
            if (p) {
                const char *pe = strchr(p, ',');
                size_t pl = pe ? (size_t)(pe - p) : strlen(p);
                dbk__sb_puts(&b, ":");
                dbk__sb_putn(&b, p, pl);
                if (np > 1 && pe)
                    p = pe + 1;
            }
            if (!he)
                break;
            h = he + 1;
        }
    }
    if (cfg->dbname && cfg->dbname[0]) { /* "" means libpq's default, as absent */
        dbk__sb_puts(&b, "/");
        dbk__sb_put_pct(&b, cfg->dbname, strlen(cfg->dbname), "");
    }
    render_query(cfg, &b, cfg->host == NULL);
    return b.len;
}

/* Copies s[i..] to b, replacing the value of every "...password=" parameter
 * (query string or libpq "key=value" form) by "***". */
static void redact_params(dbk__sb *b, const char *s, size_t i, size_t n)
{
    size_t start = i;
    while (i < n) {
        bool boundary = i == 0 || strchr("?&; \t", s[i - 1]) != NULL;
        size_t k = i;
        while (k < n && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') ||
                         s[k] == '_'))
            k++;
        if (boundary && k < n && s[k] == '=' && k - i >= 8 &&
            strncasecmp(s + k - 8, "password", 8) == 0) {
            dbk__sb_putn(b, s + start, k + 1 - start);
            dbk__sb_puts(b, "***");
            size_t v = k + 1;
            if (v < n && s[v] == '\'') {
                for (v++; v < n && s[v] != '\''; v++)
                    if (s[v] == '\\' && v + 1 < n)
                        v++;
                if (v < n)
                    v++;
            } else {
                while (v < n && !strchr("&; \t#", s[v]))
                    v++;
            }
            i = start = v;
            continue;
        }
        i = k > i ? k : i + 1;
    }
    dbk__sb_putn(b, s + start, n - start);
}

DBK_API size_t dbk_redact_url(const char *url, char *buf, size_t buflen)
{
    dbk__sb b = dbk__sb_over(buf, buflen);
    if (!url)
        return b.len;
    size_t n = strlen(url);
    const char *sep = strstr(url, "://");
    /* "://" counts only after something shaped like a scheme, so that one
     * inside a query value does not hide the userinfo before it. */
    for (const char *c = url; sep && c < sep; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (c > url && ((*c >= '0' && *c <= '9') || *c == '+' || *c == '-' || *c == '.'))))
            sep = NULL;
    size_t start;
    if (sep && sep > url)
        start = (size_t)(sep - url) + 3;
    else if (strncasecmp(url, "sqlite:", 7) == 0)
        start = SIZE_MAX; /* no userinfo in a SQLite URL */
    else
        start = 0; /* malformed: anything before an '@' may be a secret */
    size_t resume = 0;
    if (start != SIZE_MAX) {
        const char *qm = memchr(url + start, '?', n - start);
        size_t qpos = qm ? (size_t)(qm - url) : n;
        size_t at = SIZE_MAX;
        for (size_t i = qpos; i > start; i--)
            if (url[i - 1] == '@') {
                at = i - 1;
                break;
            }
        /* No '@' before the query, but one after: the password may hold an
         * unencoded '?'. Hide up to the last '@' to be safe. */
        if (at == SIZE_MAX)
            for (size_t i = n; i > qpos; i--)
                if (url[i - 1] == '@') {
                    at = i - 1;
                    break;
                }
        if (at != SIZE_MAX) {
            const char *colon = memchr(url + start, ':', at - start);
            if (colon) {
                dbk__sb_putn(&b, url, (size_t)(colon - url) + 1);
                dbk__sb_puts(&b, "***");
                resume = at;
            }
        }
    }
    redact_params(&b, url, resume, n);
    return b.len;
}
