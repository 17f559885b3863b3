/*
 * config_url.c - DATABASE_URL (postgres://, postgresql://, sqlite:).
 *
 * The parser is hand-written rather than general-purpose because the
 * password is the only secret and must never reach a message: the userinfo
 * is split off first (at the last '@' before the query, which tolerates an
 * unencoded '/' or '@' in a password) and every error message quotes only
 * the part it complains about, never the userinfo, and nothing at all when
 * the URL is ambiguous enough that a password might sit outside it. Input
 * is bounded (URL_MAX) before any work is done. Multi-host URLs become
 * libpq-style comma lists; query parameters are settings of the table,
 * applied through dbk__cfg_apply(), or libpq extras on PostgreSQL.
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
/* URL parsing                                                               */
/* ------------------------------------------------------------------------ */

struct urlp {
    dbk_config *cfg;
    dbk_error *err;
    bool quote; /* pieces outside the userinfo may be quoted in messages */
};

static const char hint_pct[] =
    "percent-encode reserved characters: % as %25, @ as %40, : as %3A, / as %2F, ? as %3F";

/* Decodes a URL piece, with an error naming `part`. Secret parts are never
 * quoted. */
static dbk_rc url_decode(struct urlp *u, const char *s, size_t n, const char *part, bool secret,
                         char **out)
{
    size_t bad = 0;
    int r = dbk__cfg_pct_decode(s, n, out, &bad);
    if (r == PCT_OK)
        return DBK_OK;
    if (r == PCT_NOMEM)
        return dbk__err(u->err, DBK_ENOMEM, "out of memory");
    char q[16];
    size_t rem = n - bad < 3 ? n - bad : 3;
    if (r == PCT_NUL) {
        dbk__err(u->err, DBK_ECONFIG, "percent-encoded NUL (%%00) in %s is not allowed", part);
        dbk__err_hint(u->err, "remove the %%00: names, passwords and values cannot hold a NUL "
                              "byte");
        return DBK_ECONFIG;
    } else if (secret || !u->quote) {
        dbk__err(u->err, DBK_ECONFIG, "bad percent-encoding in %s", part);
    } else {
        dbk__err(u->err, DBK_ECONFIG,
                 "bad percent-encoding \"%s\" in %s: expected %% and "
                 "two hex digits",
                 dbk__cfg_excerpt(q, sizeof q, s + bad, rem), part);
    }
    dbk__err_hint(u->err, "%s", hint_pct);
    return DBK_ECONFIG;
}

static dbk_rc apply_query(struct urlp *u, const char *q, size_t n)
{
    dbk_rc rc = DBK_OK;
    size_t i = 0;
    int pos = 0;
    while (i <= n) {
        const char *pair = q + i;
        const char *amp = memchr(pair, '&', n - i);
        size_t plen = amp ? (size_t)(amp - pair) : n - i;
        i += plen + 1;
        pos++;
        if (plen == 0)
            continue;
        const char *eq = memchr(pair, '=', plen);
        char *key = NULL, *val = NULL;
        char ex[QUOTE_MAX + 8];
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        rc = url_decode(u, pair, klen, "a query parameter name", false, &key);
        if (rc)
            return rc;
        if (!eq || klen == 0) {
            if (u->quote && klen)
                dbk__err(u->err, DBK_ECONFIG, "query parameter \"%s\" has no value",
                         dbk__cfg_excerpt(ex, sizeof ex, key, strlen(key)));
            else
                dbk__err(u->err, DBK_ECONFIG, "query parameter %d is not name=value", pos);
            dbk__err_hint(u->err, "write query parameters as ?name=value&name2=value2");
            free(key);
            return DBK_ECONFIG;
        }
        bool secret = dbk__cfg_is_secret_key(key);
        char part[96];
        snprintf(part, sizeof part, "the value of query parameter %s",
                 dbk__cfg_valid_param_name(key) ? key : "(bad name)");
        rc = url_decode(u, eq + 1, plen - klen - 1, part, secret, &val);
        if (rc) {
            free(key);
            return rc;
        }
        int idx = dbk__cfg_find_setting(key);
        bool sqlite = u->cfg->engine == DBK_ENGINE_SQLITE;
        if (idx >= 0 && (dbk__cfg_settings[idx].flags & F_NOURL)) {
            dbk__err(u->err, DBK_ECONFIG, "query parameter \"%s\" is not accepted in a URL",
                     dbk__cfg_settings[idx].key);
            dbk__err_hint(u->err, "the scheme chooses the engine and the path names the SQLite "
                                  "file: sqlite:path/to/app.db");
            rc = DBK_ECONFIG;
        } else if (idx >= 0) {
            const struct setting *s = &dbk__cfg_settings[idx];
            if ((s->scope == SC_PG && sqlite) || (s->scope == SC_SQLITE && !sqlite)) {
                dbk__err(u->err, DBK_ECONFIG, "query parameter %s applies only to %s", s->key,
                         s->scope == SC_PG ? "PostgreSQL" : "SQLite");
                dbk__err_hint(u->err, "remove it from the URL, or use a %s URL",
                              s->scope == SC_PG ? "postgres://" : "sqlite:");
                rc = DBK_ECONFIG;
            } else {
                char name[96];
                snprintf(name, sizeof name, "URL parameter %s", s->key);
                struct origin o = {DBK_CONFIG_SOURCE_URL, name, u->quote && s->kind != K_SECRET};
                rc = dbk__cfg_apply(u->cfg, idx, val, &o, u->err);
            }
        } else if (sqlite) {
            if (u->quote && dbk__cfg_valid_param_name(key))
                dbk__err(u->err, DBK_ECONFIG, "unknown SQLite URL parameter \"%s\"", key);
            else
                dbk__err(u->err, DBK_ECONFIG, "unknown SQLite URL parameter %d", pos);
            dbk__err_hint(u->err, "SQLite URLs accept mode, busy_timeout, journal_mode, "
                                  "synchronous, cache_size, mmap_size, connect_timeout, "
                                  "statement_timeout, "
                                  "stmt_cache_size, prepared_statements and the pool "
                                  "settings");
            rc = DBK_ECONFIG;
        } else if (!dbk__cfg_valid_param_name(key)) {
            dbk__err(u->err, DBK_ECONFIG,
                     "query parameter %d has a bad name: expected lower-case "
                     "letters, digits and '_'",
                     pos);
            rc = DBK_ECONFIG;
        } else if (dbk__cfg_has_ctrl(val)) {
            dbk__err(u->err, DBK_ECONFIG, "query parameter %s contains a control character", key);
            rc = DBK_ECONFIG;
        } else {
            rc = dbk__cfg_extra_set(u->cfg, key, val, u->err);
        }
        free(key);
        dbk__cfg_wipe_free(val);
        if (rc)
            return rc;
    }
    return DBK_OK;
}

static dbk_rc parse_sqlite(struct urlp *u, const char *body, size_t n)
{
    const char *qm = memchr(body, '?', n);
    size_t plen = qm ? (size_t)(qm - body) : n;
    const char *p = body;
    u->cfg->engine = DBK_ENGINE_SQLITE;
    u->cfg->src[S_ENGINE] = DBK_CONFIG_SOURCE_URL;
    if (plen >= 2 && p[0] == '/' && p[1] == '/') {
        if (plen < 3 || p[2] != '/') {
            dbk__err(u->err, DBK_ECONFIG, "sqlite URL has a host part after \"sqlite://\"");
            dbk__err_hint(u->err, "write sqlite:relative/path.db, sqlite:///absolute/path.db "
                                  "or sqlite::memory:");
            return DBK_ECONFIG;
        }
        p += 2;
        plen -= 2;
    }
    if (plen == 0) {
        dbk__err(u->err, DBK_ECONFIG, "sqlite URL has an empty path");
        dbk__err_hint(u->err, "write sqlite:relative/path.db, sqlite:///absolute/path.db "
                              "or sqlite::memory:");
        return DBK_ECONFIG;
    }
    char *path = NULL;
    dbk_rc rc = url_decode(u, p, plen, "the SQLite path", false, &path);
    if (rc)
        return rc;
    struct origin o = {DBK_CONFIG_SOURCE_URL, "SQLite path in the URL", u->quote};
    rc = dbk__cfg_apply(u->cfg, S_PATH, path, &o, u->err);
    free(path);
    if (rc)
        return rc;
    if (qm)
        return apply_query(u, qm + 1, n - (size_t)(qm - body) - 1);
    return DBK_OK;
}

/* Parses the host list of a postgres URL (s[0..n), userinfo removed). */
static dbk_rc parse_hosts(struct urlp *u, const char *s, size_t n)
{
    dbk_rc rc = DBK_OK;
    /* Each host adds at most a 5-digit port and a comma to the port list. */
    size_t pcap = (n + 1) * 6 + 1;
    char *hosts = malloc(n + 1), *ports = malloc(pcap);
    size_t hl = 0, pl = 0;
    bool any_port = false;
    int idx = 0;
    char ex[QUOTE_MAX + 8];
    if (!hosts || !ports) {
        rc = dbk__err(u->err, DBK_ENOMEM, "out of memory");
        goto out;
    }
    /* A host without its own port takes the single port known so far (the
     * environment's or the default). */
    const char *fill = u->cfg->port && !strchr(u->cfg->port, ',') ? u->cfg->port : "5432";
    size_t i = 0;
    for (;;) {
        idx++;
        const char *h;
        size_t hlen;
        bool v6 = false;
        if (i < n && s[i] == '[') {
            const char *close = memchr(s + i, ']', n - i);
            if (!close) {
                rc = dbk__err(u->err, DBK_ECONFIG, "unterminated '[' in host %d of the URL", idx);
                dbk__err_hint(u->err, "IPv6 hosts are written in brackets: "
                                      "postgres://[::1]:5432/db");
                goto out;
            }
            h = s + i + 1;
            hlen = (size_t)(close - h);
            i = (size_t)(close - s) + 1;
            v6 = true;
            if (i < n && s[i] != ':' && s[i] != ',') {
                rc = dbk__err(u->err, DBK_ECONFIG, "unexpected character after ']' in host %d of "
                              "the URL: expected ':port' or ','",
                              idx);
                goto out;
            }
        } else {
            h = s + i;
            while (i < n && s[i] != ':' && s[i] != ',')
                i++;
            hlen = (size_t)(s + i - h);
        }
        const char *pstart = NULL;
        size_t plen = 0;
        if (i < n && s[i] == ':') {
            pstart = s + ++i;
            while (i < n && s[i] != ',')
                i++;
            plen = (size_t)(s + i - pstart);
        }
        if (hlen == 0 && !v6 && pstart && memchr(pstart, ':', plen)) {
            rc = dbk__err(u->err, DBK_ECONFIG, "IPv6 address without brackets in host %d of the "
                          "URL",
                          idx);
            dbk__err_hint(u->err, "IPv6 hosts are written in brackets: "
                                  "postgres://[::1]:5432/db");
            goto out;
        }
        if (hlen == 0) {
            if (pstart && u->quote)
                rc = dbk__err(u->err, DBK_ECONFIG, "empty host before port \"%s\" in the URL",
                              dbk__cfg_excerpt(ex, sizeof ex, pstart, plen));
            else
                rc = dbk__err(u->err, DBK_ECONFIG, "empty host %d in the URL", idx);
            dbk__err_hint(u->err, "write the host (postgres://user@localhost:5432/db), or leave "
                                  "out host and port to use the defaults");
            goto out;
        }
        char *dh = NULL;
        char part[32];
        snprintf(part, sizeof part, "host %d", idx);
        rc = url_decode(u, h, hlen, part, false, &dh);
        if (rc)
            goto out;
        bool ok = !dbk__cfg_has_ctrl(dh) && !strchr(dh, ',') &&
                  (v6 ? dbk__cfg_valid_ipv6(dh) : true) &&
                  (v6 || (!strchr(dh, '[') && !strchr(dh, ']')));
        if (!ok) {
            if (u->quote)
                rc = dbk__err(u->err, DBK_ECONFIG, "bad %s \"%s\" in the URL",
                              v6 ? "IPv6 address" : "host",
                              dbk__cfg_excerpt(ex, sizeof ex, dh, strlen(dh)));
            else
                rc = dbk__err(u->err, DBK_ECONFIG, "bad host %d in the URL", idx);
            if (v6)
                dbk__err_hint(u->err, "IPv6 hosts are written in brackets: "
                                      "postgres://[::1]:5432/db");
            free(dh);
            goto out;
        }
        if (hl)
            hosts[hl++] = ',';
        memcpy(hosts + hl, dh, strlen(dh));
        hl += strlen(dh);
        free(dh);
        int port = 0;
        if (pstart) {
            if (!dbk__cfg_port_number(pstart, plen, &port)) {
                if (u->quote && plen)
                    rc = dbk__err(u->err, DBK_ECONFIG,
                                  "bad port \"%s\" for host %d in the URL: "
                                  "expected a number from 1 to 65535",
                                  dbk__cfg_excerpt(ex, sizeof ex, pstart, plen), idx);
                else
                    rc = dbk__err(u->err, DBK_ECONFIG,
                                  "bad port for host %d in the URL: expected "
                                  "a number from 1 to 65535",
                                  idx);
                if (!v6 && memchr(pstart, ':', plen)) /* "::1" without brackets */
                    dbk__err_hint(u->err, "IPv6 hosts are written in brackets: "
                                          "postgres://[::1]:5432/db");
                else
                    dbk__err_hint(u->err, "ports are whole numbers from 1 to 65535 (PostgreSQL "
                                          "uses 5432)");
                goto out;
            }
            any_port = true;
            pl += (size_t)snprintf(ports + pl, pcap - pl, "%s%d", pl ? "," : "", port);
        } else {
            /* `fill` is a normalized single port: at most 5 digits. */
            size_t fl = strlen(fill);
            if (pl)
                ports[pl++] = ',';
            memcpy(ports + pl, fill, fl);
            pl += fl;
            ports[pl] = '\0';
        }
        if (i >= n)
            break;
        i++; /* the ',' */
        if (i >= n) {
            rc = dbk__err(u->err, DBK_ECONFIG, "empty host %d in the URL (trailing ',')",
                          idx + 1);
            goto out;
        }
    }
    hosts[hl] = '\0';
    ports[pl] = '\0';
    {
        struct origin o = {DBK_CONFIG_SOURCE_URL, "URL host", u->quote};
        rc = dbk__cfg_apply(u->cfg, S_HOST, hosts, &o, u->err);
        if (rc == DBK_OK && any_port) {
            struct origin po = {DBK_CONFIG_SOURCE_URL, "URL port", u->quote};
            rc = dbk__cfg_apply(u->cfg, S_PORT, ports, &po, u->err);
        }
    }
out:
    free(hosts);
    free(ports);
    return rc;
}

static dbk_rc parse_postgres(struct urlp *u, const char *s, size_t n)
{
    dbk_rc rc;
    u->cfg->engine = DBK_ENGINE_POSTGRES;
    u->cfg->src[S_ENGINE] = DBK_CONFIG_SOURCE_URL;

    const char *qm = memchr(s, '?', n);
    size_t qpos = qm ? (size_t)(qm - s) : n;
    /* The userinfo ends at the last '@' before the query: a password with
     * an unencoded '@' or '/' still parses. */
    size_t at = SIZE_MAX;
    for (size_t i = qpos; i > 0; i--)
        if (s[i - 1] == '@') {
            at = i - 1;
            break;
        }
    /* An '@' in the query may mean a password with an unencoded '?': then
     * nothing after the scheme is quoted in messages. */
    if (qm && memchr(qm, '@', n - qpos))
        u->quote = false;

    size_t host_start = 0;
    if (at != SIZE_MAX) {
        const char *colon = memchr(s, ':', at);
        size_t ulen = colon ? (size_t)(colon - s) : at;
        if (memchr(s, '/', ulen)) {
            dbk__err(u->err, DBK_ECONFIG, "ambiguous '@' in the URL: it is not clear where the "
                     "user name ends");
            dbk__err_hint(u->err, "percent-encode '@' as %%40 in user names, passwords and "
                                  "database names");
            return DBK_ECONFIG;
        }
        if (ulen) {
            char *user = NULL;
            rc = url_decode(u, s, ulen, "the user name", false, &user);
            if (rc)
                return rc;
            struct origin o = {DBK_CONFIG_SOURCE_URL, "URL user name", u->quote};
            rc = dbk__cfg_apply(u->cfg, S_USER, user, &o, u->err);
            free(user);
            if (rc)
                return rc;
        }
        if (colon) {
            char *pw = NULL;
            rc = url_decode(u, colon + 1, at - ulen - 1, "the password", true, &pw);
            if (rc)
                return rc;
            struct origin o = {DBK_CONFIG_SOURCE_URL, "URL password", false};
            rc = dbk__cfg_apply(u->cfg, S_PASSWORD, pw, &o, u->err);
            dbk__cfg_wipe_free(pw);
            if (rc)
                return rc;
        }
        host_start = at + 1;
    }
    size_t host_end = host_start;
    while (host_end < qpos && s[host_end] != '/')
        host_end++;
    if (host_end > host_start) {
        rc = parse_hosts(u, s + host_start, host_end - host_start);
        if (rc)
            return rc;
    }
    if (host_end < qpos && host_end + 1 < qpos) { /* "/dbname" */
        char *db = NULL;
        rc = url_decode(u, s + host_end + 1, qpos - host_end - 1, "the database name", false, &db);
        if (rc)
            return rc;
        struct origin o = {DBK_CONFIG_SOURCE_URL, "URL database name", u->quote};
        rc = dbk__cfg_apply(u->cfg, S_DBNAME, db, &o, u->err);
        free(db);
        if (rc)
            return rc;
    }
    if (qm)
        return apply_query(u, qm + 1, n - qpos - 1);
    return DBK_OK;
}

dbk_rc dbk__cfg_parse_url(dbk_config *cfg, const char *url, dbk_error *err)
{
    struct urlp u = {cfg, err, true};
    size_t n = strnlen(url, URL_MAX + 1);
    if (n > URL_MAX) {
        dbk__err(err, DBK_ECONFIG, "the URL is too long (more than %d bytes)", URL_MAX);
        dbk__err_hint(err, "move long settings into DB_* environment variables");
        return DBK_ECONFIG;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c < 0x20 || c == 0x7f) {
            dbk__err(err, DBK_ECONFIG, "the URL contains a control character at byte %zu", i + 1);
            dbk__err_hint(err, "check DATABASE_URL for a stray newline or tab; "
                               "percent-encode special characters");
            return DBK_ECONFIG;
        }
    }
    size_t sl = 0;
    while (sl < n && url[sl] != ':')
        sl++;
    bool scheme_ok = sl > 0 && sl < n && sl <= 16;
    for (size_t i = 0; scheme_ok && i < sl; i++) {
        char c = url[i];
        scheme_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
    }
    if (scheme_ok && sl == 6 && strncasecmp(url, "sqlite", 6) == 0)
        return parse_sqlite(&u, url + 7, n - 7);
    if (scheme_ok && ((sl == 8 && strncasecmp(url, "postgres", 8) == 0) ||
                      (sl == 10 && strncasecmp(url, "postgresql", 10) == 0))) {
        if (n - sl < 3 || url[sl + 1] != '/' || url[sl + 2] != '/') {
            dbk__err(err, DBK_ECONFIG, "expected \"//\" after \"%.*s:\" in the URL", (int)sl, url);
            dbk__err_hint(err, "write postgres://user@host:5432/dbname");
            return DBK_ECONFIG;
        }
        return parse_postgres(&u, url + sl + 3, n - sl - 3);
    }
    /* Quote the scheme only when it looks like one, and only if what follows
     * is "://" or ":" + not-a-password-looking thing is moot: a scheme is
     * made of letters only, so it cannot carry a password. */
    if (scheme_ok)
        dbk__err(err, DBK_ECONFIG, "unknown URL scheme \"%.*s\": expected postgres://, "
                 "postgresql:// or sqlite:",
                 (int)sl, url);
    else
        dbk__err(err, DBK_ECONFIG, "the URL has no scheme: expected postgres://, postgresql:// "
                 "or sqlite:");
    dbk__err_hint(err, "DATABASE_URL looks like postgres://user:password@host:5432/dbname or "
                       "sqlite:path/to/app.db");
    return DBK_ECONFIG;
}
