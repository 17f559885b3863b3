/*
 * Configuration: DATABASE_URL, the DB_* environment variables and defaults.
 *
 * Every setting dbkit knows is one row of the `settings` table below: the
 * key (the URL query parameter, also the name dbk_config_set() and
 * dbk_config_dump() use), the environment variable, the kind of value, the
 * engine it applies to, the default, the bounds and the field it fills. The
 * defaults are applied by running each row's default text through the same
 * parser as every other source, so a default can never be something a user
 * could not have typed. Sources are applied in rising precedence (defaults,
 * then the environment, then the URL, later dbk_config_set()), each one
 * overwriting the field and recording itself in cfg->src[row].
 *
 * The URL parser is hand-written rather than general-purpose because the
 * rules that matter here are specific: the password is the only secret and
 * must never reach a message, so the userinfo is split off first (at the
 * last '@' before the query, which tolerates an unencoded '/' or '@' in a
 * password) and every error message quotes only the part it complains
 * about, never the userinfo, and nothing at all when the URL is ambiguous
 * enough that a password might sit outside the userinfo. Input is bounded
 * (URL_MAX) before any work is done. Multi-host URLs become libpq-style
 * comma lists in cfg->host / cfg->port. Unknown PostgreSQL parameters are
 * kept in cfg->extra for libpq; unknown SQLite parameters are errors.
 *
 * Rendering (dbk_config_redacted_url, dbk_redact_url, dbk_config_dump)
 * writes into caller buffers through a counting builder, so it never
 * allocates and reports the length it needed, like snprintf.
 *
 * Size. The file is over 900 lines because everything in it reads and
 * writes through the one settings table and its row indexes (the URL
 * parser, the environment, dbk_config_set, validation and rendering all
 * find a setting's row and record cfg->src[row]); a split would have to
 * export the table and its helpers to every part. The lexical URL pieces
 * it shares with the cache (spans, host:port, percent-decoding) already
 * live in url.c. Splitting the URL parser and the rendering into files of
 * their own behind an internal header is the next step if it grows.
 */
#include "config_int.h"
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

#define URL_MAX 8192           /* longest URL accepted, in bytes */
#define VALUE_MAX 8192         /* longest environment or code value */
#define PASSWORD_FILE_MAX 4096 /* largest DB_PASSWORD_FILE accepted */
#define QUOTE_MAX 48           /* longest piece of input quoted in a message */

/* ------------------------------------------------------------------------ */
/* The settings table                                                        */
/* ------------------------------------------------------------------------ */

enum kind {
    K_ENGINE,  /* "sqlite" | "postgres" */
    K_PATH,    /* SQLite file path or ":memory:" */
    K_MODE,    /* SQLite open mode: ro | rw | rwc */
    K_HOSTS,   /* comma list of hosts */
    K_PORTS,   /* comma list of ports */
    K_TEXT,    /* free text without control characters */
    K_SECRET,  /* a secret (the password, the replica URLs): any bytes, never shown */
    K_ENUM,    /* one of `choices`, stored in canonical lower case */
    K_COUNT,   /* whole number */
    K_MS,      /* milliseconds everywhere */
    K_SEC,     /* seconds in the URL and from code, milliseconds in the env */
    K_BOOL_CACHE /* prepared_statements: false sets stmt_cache_size to 0 */
};

enum scope { SC_ANY, SC_PG, SC_SQLITE };

#define F_COMPONENT 1u /* part of the URL body, not rendered as a query parameter */
#define F_NOURL 2u     /* not accepted as a URL query parameter */
#define F_NOCODE 4u    /* not accepted from dbk_config_set() */
#define F_ALIAS 8u     /* writes another row's field; not dumped */

enum {
    S_ENGINE,
    S_PATH,
    S_MODE,
    S_BUSY_TIMEOUT,
    S_JOURNAL_MODE,
    S_SYNCHRONOUS,
    S_HOST,
    S_PORT,
    S_DBNAME,
    S_USER,
    S_PASSWORD,
    S_SSLMODE,
    S_APPLICATION_NAME,
    S_TARGET_SESSION_ATTRS,
    S_CONNECT_TIMEOUT,
    S_STATEMENT_TIMEOUT,
    S_LOCK_TIMEOUT,
    S_STMT_CACHE_SIZE,
    S_PREPARED_STATEMENTS,
    S_POOL_MAX,
    S_POOL_MIN_IDLE,
    S_ACQUIRE_TIMEOUT,
    S_IDLE_TIMEOUT,
    S_MAX_LIFETIME,
    S_VALIDATE_AFTER,
    S_VALIDATE_TIMEOUT,
    S_POOL_MAX_WAITERS,
    S_LEAK_THRESHOLD,
    S_REPLICAS,
    S_REPLICA_MAX_LAG,
    S_READ_YOUR_WRITES_WAIT,
    S_POOLER,
    S_COUNT_
};

_Static_assert(S_COUNT_ <= sizeof(((struct dbk_config *)0)->src), "dbk_config.src is too small");

struct setting {
    const char *key;
    const char *env;       /* NULL: no environment variable */
    unsigned char kind;    /* enum kind */
    unsigned char scope;   /* enum scope */
    unsigned char flags;   /* F_* */
    const char *def;       /* default, as text in the key's units; NULL = unset */
    long long min, max;    /* bounds, in stored units (milliseconds for durations) */
    size_t off;            /* offset of the field it fills */
    const char *const *choices;
};

static const char *const journal_modes[] = {"delete", "truncate", "persist", "memory",
                                            "wal",    "off",      NULL};
static const char *const sync_modes[] = {"off", "normal", "full", "extra", NULL};
static const char *const ssl_modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full", NULL};
static const char *const pooler_modes[] = {"none", "transaction", NULL};
static const char *const tsa_modes[] = {"any",     "read-write", "read-only",
                                        "primary", "standby",    "prefer-standby", NULL};

#define OFF(f) offsetof(struct dbk_config, f)
#define MS_MAX ((long long)INT_MAX)

static const struct setting settings[S_COUNT_] = {
    [S_ENGINE] = {"engine", NULL, K_ENGINE, SC_ANY, F_COMPONENT | F_NOURL, "sqlite", 0, 0, 0, NULL},
    [S_PATH] = {"path", NULL, K_PATH, SC_SQLITE, F_COMPONENT | F_NOURL, "dbkit.db", 0, 0,
                OFF(sqlite_path), NULL},
    [S_MODE] = {"mode", "DB_SQLITE_MODE", K_MODE, SC_SQLITE, 0, "rwc", 0, 0, 0, NULL},
    [S_BUSY_TIMEOUT] = {"busy_timeout", "DB_SQLITE_BUSY_TIMEOUT_MS", K_MS, SC_SQLITE, 0, "5000",
                        0, MS_MAX, OFF(busy_timeout_ms), NULL},
    [S_JOURNAL_MODE] = {"journal_mode", "DB_SQLITE_JOURNAL_MODE", K_ENUM, SC_SQLITE, 0, "wal", 0,
                        0, OFF(journal_mode), journal_modes},
    [S_SYNCHRONOUS] = {"synchronous", "DB_SQLITE_SYNCHRONOUS", K_ENUM, SC_SQLITE, 0, "normal", 0,
                       0, OFF(synchronous), sync_modes},
    [S_HOST] = {"host", "DB_HOST", K_HOSTS, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(host), NULL},
    [S_PORT] = {"port", "DB_PORT", K_PORTS, SC_PG, F_COMPONENT, "5432", 0, 0, OFF(port), NULL},
    [S_DBNAME] = {"dbname", "DB_NAME", K_TEXT, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(dbname), NULL},
    [S_USER] = {"user", "DB_USER", K_TEXT, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(user), NULL},
    [S_PASSWORD] = {"password", "DB_PASSWORD", K_SECRET, SC_PG, F_COMPONENT | F_NOCODE, NULL, 0,
                    0, OFF(password), NULL},
    [S_SSLMODE] = {"sslmode", "DB_SSLMODE", K_ENUM, SC_PG, 0, NULL, 0, 0, OFF(sslmode), ssl_modes},
    [S_APPLICATION_NAME] = {"application_name", "DB_APPLICATION_NAME", K_TEXT, SC_PG, 0, "dbkit", 0,
                            0, OFF(application_name), NULL},
    [S_TARGET_SESSION_ATTRS] = {"target_session_attrs", "DB_TARGET_SESSION_ATTRS", K_ENUM, SC_PG, 0,
                                NULL, 0, 0, OFF(target_session_attrs), tsa_modes},
    [S_CONNECT_TIMEOUT] = {"connect_timeout", "DB_CONNECT_TIMEOUT_MS", K_SEC, SC_ANY, 0, "5", 1,
                           3600000, OFF(connect_timeout_ms), NULL},
    [S_STATEMENT_TIMEOUT] = {"statement_timeout", "DB_STATEMENT_TIMEOUT_MS", K_MS, SC_ANY, 0,
                             "30000", 0, MS_MAX, OFF(statement_timeout_ms), NULL},
    [S_LOCK_TIMEOUT] = {"lock_timeout", "DB_LOCK_TIMEOUT_MS", K_MS, SC_PG, 0, "0", 0, MS_MAX,
                        OFF(lock_timeout_ms), NULL},
    [S_STMT_CACHE_SIZE] = {"stmt_cache_size", "DB_STMT_CACHE_SIZE", K_COUNT, SC_ANY, 0, "128", 0,
                           100000, OFF(stmt_cache_size), NULL},
    [S_PREPARED_STATEMENTS] = {"prepared_statements", "DB_PREPARED_STATEMENTS", K_BOOL_CACHE,
                               SC_ANY, F_ALIAS, NULL, 0, 0, OFF(stmt_cache_size), NULL},
    [S_POOL_MAX] = {"pool_max", "DB_POOL_MAX", K_COUNT, SC_ANY, 0, "10", 1, 10000,
                    OFF(pool.max_size), NULL},
    [S_POOL_MIN_IDLE] = {"pool_min_idle", "DB_POOL_MIN_IDLE", K_COUNT, SC_ANY, 0, "0", 0, 10000,
                         OFF(pool.min_idle), NULL},
    [S_ACQUIRE_TIMEOUT] = {"acquire_timeout", "DB_ACQUIRE_TIMEOUT_MS", K_MS, SC_ANY, 0, "5000", 1,
                           MS_MAX, OFF(pool.acquire_timeout_ms), NULL},
    [S_IDLE_TIMEOUT] = {"idle_timeout", "DB_IDLE_TIMEOUT_MS", K_MS, SC_ANY, 0, "600000", 0, MS_MAX,
                        OFF(pool.idle_timeout_ms), NULL},
    [S_MAX_LIFETIME] = {"max_lifetime", "DB_MAX_LIFETIME_MS", K_MS, SC_ANY, 0, "1800000", 0,
                        MS_MAX, OFF(pool.max_lifetime_ms), NULL},
    [S_VALIDATE_AFTER] = {"validate_after", "DB_POOL_VALIDATE_AFTER_MS", K_MS, SC_ANY, 0, "30000",
                          0, MS_MAX, OFF(pool.validate_after_ms), NULL},
    [S_VALIDATE_TIMEOUT] = {"validate_timeout", "DB_POOL_VALIDATE_TIMEOUT_MS", K_MS, SC_ANY, 0,
                            "1000", 1, MS_MAX, OFF(pool.validate_timeout_ms), NULL},
    [S_POOL_MAX_WAITERS] = {"pool_max_waiters", "DB_POOL_MAX_WAITERS", K_COUNT, SC_ANY, 0, "1000",
                            0, 1000000, OFF(pool.max_waiters), NULL},
    [S_LEAK_THRESHOLD] = {"leak_threshold", "DB_POOL_LEAK_THRESHOLD_MS", K_MS, SC_ANY, 0, "0", 0,
                          MS_MAX, OFF(pool.leak_threshold_ms), NULL},
    [S_REPLICAS] = {"replicas", "DATABASE_REPLICA_URLS", K_SECRET, SC_PG, F_NOURL, NULL, 0, 0,
                    OFF(replicas), NULL},
    [S_REPLICA_MAX_LAG] = {"replica_max_lag", "DB_REPLICA_MAX_LAG_MS", K_MS, SC_PG, 0, "1000", 1,
                           MS_MAX, OFF(replica_max_lag_ms), NULL},
    [S_READ_YOUR_WRITES_WAIT] = {"read_your_writes_wait", "DB_READ_YOUR_WRITES_WAIT_MS", K_MS,
                                 SC_PG, 0, "100", 0, MS_MAX, OFF(read_your_writes_wait_ms), NULL},
    [S_POOLER] = {"pooler", "DB_POOLER", K_ENUM, SC_PG, 0, "none", 0, 0, OFF(pooler),
                  pooler_modes},
};

/* Where a value came from, for messages. */
struct origin {
    dbk_config_source src;
    const char *name; /* "DB_POOL_MAX", "URL parameter pool_max", "pool_max" */
    bool quote;       /* the value may be quoted in a message */
};

static int find_setting(const char *key)
{
    for (int i = 0; i < S_COUNT_; i++)
        if (strcmp(settings[i].key, key) == 0)
            return i;
    return -1;
}

static bool is_secret_key(const char *key)
{
    return strcasestr(key, "password") != NULL;
}

static char **str_slot(dbk_config *cfg, const struct setting *s)
{
    return (char **)(void *)((char *)cfg + s->off);
}

static int *int_slot(dbk_config *cfg, const struct setting *s)
{
    return (int *)(void *)((char *)cfg + s->off);
}

static const int *int_slot_c(const dbk_config *cfg, const struct setting *s)
{
    return (const int *)(const void *)((const char *)cfg + s->off);
}

static const char *str_slot_c(const dbk_config *cfg, const struct setting *s)
{
    return *(char *const *)(const void *)((const char *)cfg + s->off);
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static bool has_ctrl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* A printable excerpt of s[0..n) for a message: at most QUOTE_MAX bytes,
 * control characters as '?', "..." when cut. */
static const char *excerpt(char *out, size_t outlen, const char *s, size_t n)
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

enum { PCT_OK = DBK__PCT_OK, PCT_BAD = DBK__PCT_BAD, PCT_NUL = DBK__PCT_NUL,
       PCT_NOMEM = DBK__PCT_NOMEM };

/* Percent-decodes s[0..n) into a new string. On PCT_BAD/PCT_NUL, *bad is
 * the offset of the offending '%'. '+' stays '+' (as in libpq). */
static int pct_decode(const char *s, size_t n, char **out, size_t *bad)
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

/* Counting string builder over a caller buffer: writes what fits, always
 * terminates, and counts everything so the caller learns the length needed. */
struct sb {
    char *buf;
    size_t cap;
    size_t len;
};

static void sb_putn(struct sb *b, const char *s, size_t n)
{
    if (b->cap && b->len < b->cap - 1) {
        size_t room = b->cap - 1 - b->len;
        memcpy(b->buf + b->len, s, n < room ? n : room);
    }
    b->len += n;
}

static void sb_puts(struct sb *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends s percent-encoded: unreserved characters and those in `keep`
 * stay as they are. */
static void sb_enc(struct sb *b, const char *s, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (unreserved(c) || (c && strchr(keep, c))) {
            sb_putn(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sb_putn(b, e, 3);
        }
    }
}

static size_t sb_finish(struct sb *b)
{
    if (b->cap)
        b->buf[b->len < b->cap - 1 ? b->len : b->cap - 1] = '\0';
    return b->len;
}

static size_t count_list(const char *s)
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
                        excerpt(q, sizeof q, value, strlen(value)), problem);
    return dbk__err(err, DBK_ECONFIG, "%s: the value %s", o->name, problem);
}

/* Checks an IPv6 literal (without brackets), optionally followed by
 * "%zone" (an interface name). */
static bool valid_ipv6(const char *h)
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

/* Normalizes a comma list of hosts: no empty entries, brackets around IPv6
 * literals removed, no control characters. */
static dbk_rc norm_hosts(const char *v, const struct origin *o, char **out, dbk_error *err)
{
    size_t n = strlen(v);
    char *res = malloc(n + 1);
    if (!res)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    size_t r = 0;
    const char *p = v;
    int idx = 1;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        const char *h = p;
        if (len == 0) {
            free(res);
            dbk__err(err, DBK_ECONFIG, "%s: host %d of the list is empty", o->name, idx);
            dbk__err_hint(err, "write hosts as host1,host2 with no empty entries");
            return DBK_ECONFIG;
        }
        if (h[0] == '[') {
            if (len < 2 || h[len - 1] != ']') {
                free(res);
                dbk__err(err, DBK_ECONFIG, "%s: unterminated '[' in host %d", o->name, idx);
                dbk__err_hint(err, "IPv6 hosts are written in brackets: [::1]");
                return DBK_ECONFIG;
            }
            h++;
            len -= 2;
            char tmp[128];
            if (len == 0 || len >= sizeof tmp) {
                free(res);
                return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address in host %d", o->name,
                                idx);
            }
            memcpy(tmp, h, len);
            tmp[len] = '\0';
            if (!valid_ipv6(tmp)) {
                char q[QUOTE_MAX + 8];
                free(res);
                if (o->quote)
                    return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address \"%s\"", o->name,
                                    excerpt(q, sizeof q, tmp, len));
                return dbk__err(err, DBK_ECONFIG, "%s: bad IPv6 address in host %d", o->name,
                                idx);
            }
        } else {
            for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)h[i];
                if (c < 0x20 || c == 0x7f || c == '[' || c == ']') {
                    free(res);
                    return dbk__err(err, DBK_ECONFIG,
                                    "%s: host %d contains a control character or a stray "
                                    "bracket",
                                    o->name, idx);
                }
            }
            /* A ':' makes it an IPv6 literal (brackets are optional here,
             * since there is no port to separate). */
            if (memchr(h, ':', len)) {
                char tmp[128];
                bool ok = len < sizeof tmp;
                if (ok) {
                    memcpy(tmp, h, len);
                    tmp[len] = '\0';
                    ok = valid_ipv6(tmp);
                }
                if (!ok) {
                    free(res);
                    dbk__err(err, DBK_ECONFIG, "%s: host %d is neither a host name nor an IPv6 "
                             "address",
                             o->name, idx);
                    dbk__err_hint(err, "a host with ':' must be an IPv6 address; give the port "
                                       "separately");
                    return DBK_ECONFIG;
                }
            }
        }
        if (r)
            res[r++] = ',';
        memcpy(res + r, h, len);
        r += len;
        if (!e)
            break;
        p = e + 1;
        idx++;
    }
    res[r] = '\0';
    *out = res;
    return DBK_OK;
}

static bool port_number(const char *s, size_t n, int *out)
{
    if (n == 0 || n > 5)
        return false;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *out = v;
    return true;
}

/* Normalizes a comma list of ports, each 1..65535. */
static dbk_rc norm_ports(const char *v, const struct origin *o, char **out, dbk_error *err)
{
    size_t n = strlen(v);
    char *res = malloc(n + 1);
    if (!res)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    size_t r = 0;
    const char *p = v;
    int idx = 1;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int port;
        if (!port_number(p, len, &port)) {
            char q[QUOTE_MAX + 8];
            free(res);
            if (o->quote)
                dbk__err(err, DBK_ECONFIG, "%s: bad port \"%s\": expected a number from 1 to 65535",
                         o->name, excerpt(q, sizeof q, p, len));
            else
                dbk__err(err, DBK_ECONFIG, "%s: bad port %d: expected a number from 1 to 65535",
                         o->name, idx);
            dbk__err_hint(err, "ports are whole numbers from 1 to 65535 (PostgreSQL uses 5432)");
            return DBK_ECONFIG;
        }
        r += (size_t)snprintf(res + r, n + 1 - r, "%s%d", r ? "," : "", port);
        if (!e)
            break;
        p = e + 1;
        idx++;
    }
    *out = res;
    return DBK_OK;
}

static const char *unit_name(const struct setting *s, dbk_config_source src)
{
    if (s->kind == K_SEC)
        return src == DBK_SRC_ENV ? " milliseconds" : " seconds";
    if (s->kind == K_MS)
        return " milliseconds";
    return "";
}

/* Replaces a string field; the old value is wiped when it was secret. */
static void set_str(dbk_config *cfg, const struct setting *s, char *v)
{
    char **slot = str_slot(cfg, s);
    if (s->kind == K_SECRET)
        wipe_free(*slot);
    else
        free(*slot);
    *slot = v;
}

/* Parses `value` for row `idx` and stores it with its source. The config
 * is left unchanged on error. */
static dbk_rc apply(dbk_config *cfg, int idx, const char *value, const struct origin *o,
                    dbk_error *err)
{
    const struct setting *s = &settings[idx];
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
        if (!*value || has_ctrl(value))
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
        dbk_rc rc = norm_hosts(value, o, &h, err);
        if (rc)
            return rc;
        set_str(cfg, s, h);
        break;
    }
    case K_PORTS: {
        char *p = NULL;
        dbk_rc rc = norm_ports(value, o, &p, err);
        if (rc)
            return rc;
        set_str(cfg, s, p);
        break;
    }
    case K_TEXT: {
        if (has_ctrl(value))
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
            struct sb b = {list, sizeof list, 0};
            for (const char *const *c = s->choices; *c; c++) {
                sb_puts(&b, c == s->choices ? "" : ", ");
                sb_puts(&b, *c);
            }
            sb_finish(&b);
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
        bool secs = s->kind == K_SEC && o->src != DBK_SRC_ENV;
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
        *int_slot(cfg, s) = (int)v;
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

static bool valid_param_name(const char *k)
{
    if (!*k || strlen(k) > 64)
        return false;
    for (; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') || *k == '_'))
            return false;
    return true;
}

static dbk_rc extra_set(dbk_config *cfg, const char *key, const char *value, dbk_error *err)
{
    for (size_t i = 0; i < cfg->nextra; i++) {
        if (strcmp(cfg->extra[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return dbk__err(err, DBK_ENOMEM, "out of memory");
            wipe_free(cfg->extra[i].value);
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
        wipe_free(v);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    x[cfg->nextra].key = k;
    x[cfg->nextra].value = v;
    cfg->nextra++;
    return DBK_OK;
}

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
    int r = pct_decode(s, n, out, &bad);
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
        dbk__err(u->err, DBK_ECONFIG, "bad percent-encoding \"%s\" in %s: expected %% and "
                 "two hex digits",
                 excerpt(q, sizeof q, s + bad, rem), part);
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
                         excerpt(ex, sizeof ex, key, strlen(key)));
            else
                dbk__err(u->err, DBK_ECONFIG, "query parameter %d is not name=value", pos);
            dbk__err_hint(u->err, "write query parameters as ?name=value&name2=value2");
            free(key);
            return DBK_ECONFIG;
        }
        bool secret = is_secret_key(key);
        char part[96];
        snprintf(part, sizeof part, "the value of query parameter %s",
                 valid_param_name(key) ? key : "(bad name)");
        rc = url_decode(u, eq + 1, plen - klen - 1, part, secret, &val);
        if (rc) {
            free(key);
            return rc;
        }
        int idx = find_setting(key);
        bool sqlite = u->cfg->engine == DBK_ENGINE_SQLITE;
        if (idx >= 0 && (settings[idx].flags & F_NOURL)) {
            dbk__err(u->err, DBK_ECONFIG, "query parameter \"%s\" is not accepted in a URL",
                     settings[idx].key);
            dbk__err_hint(u->err, "the scheme chooses the engine and the path names the SQLite "
                                  "file: sqlite:path/to/app.db");
            rc = DBK_ECONFIG;
        } else if (idx >= 0) {
            const struct setting *s = &settings[idx];
            if ((s->scope == SC_PG && sqlite) || (s->scope == SC_SQLITE && !sqlite)) {
                dbk__err(u->err, DBK_ECONFIG, "query parameter %s applies only to %s", s->key,
                         s->scope == SC_PG ? "PostgreSQL" : "SQLite");
                dbk__err_hint(u->err, "remove it from the URL, or use a %s URL",
                              s->scope == SC_PG ? "postgres://" : "sqlite:");
                rc = DBK_ECONFIG;
            } else {
                char name[96];
                snprintf(name, sizeof name, "URL parameter %s", s->key);
                struct origin o = {DBK_SRC_URL, name, u->quote && s->kind != K_SECRET};
                rc = apply(u->cfg, idx, val, &o, u->err);
            }
        } else if (sqlite) {
            if (u->quote && valid_param_name(key))
                dbk__err(u->err, DBK_ECONFIG, "unknown SQLite URL parameter \"%s\"", key);
            else
                dbk__err(u->err, DBK_ECONFIG, "unknown SQLite URL parameter %d", pos);
            dbk__err_hint(u->err, "SQLite URLs accept mode, busy_timeout, journal_mode, "
                                  "synchronous, connect_timeout, statement_timeout, "
                                  "stmt_cache_size, prepared_statements and the pool "
                                  "settings");
            rc = DBK_ECONFIG;
        } else if (!valid_param_name(key)) {
            dbk__err(u->err, DBK_ECONFIG, "query parameter %d has a bad name: expected lower-case "
                     "letters, digits and '_'",
                     pos);
            rc = DBK_ECONFIG;
        } else if (has_ctrl(val)) {
            dbk__err(u->err, DBK_ECONFIG, "query parameter %s contains a control character", key);
            rc = DBK_ECONFIG;
        } else {
            rc = extra_set(u->cfg, key, val, u->err);
        }
        free(key);
        wipe_free(val);
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
    u->cfg->src[S_ENGINE] = DBK_SRC_URL;
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
    struct origin o = {DBK_SRC_URL, "SQLite path in the URL", u->quote};
    rc = apply(u->cfg, S_PATH, path, &o, u->err);
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
                              excerpt(ex, sizeof ex, pstart, plen));
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
        bool ok = !has_ctrl(dh) && !strchr(dh, ',') && (v6 ? valid_ipv6(dh) : true) &&
                  (v6 || (!strchr(dh, '[') && !strchr(dh, ']')));
        if (!ok) {
            if (u->quote)
                rc = dbk__err(u->err, DBK_ECONFIG, "bad %s \"%s\" in the URL",
                              v6 ? "IPv6 address" : "host", excerpt(ex, sizeof ex, dh, strlen(dh)));
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
            if (!port_number(pstart, plen, &port)) {
                if (u->quote && plen)
                    rc = dbk__err(u->err, DBK_ECONFIG, "bad port \"%s\" for host %d in the URL: "
                                  "expected a number from 1 to 65535",
                                  excerpt(ex, sizeof ex, pstart, plen), idx);
                else
                    rc = dbk__err(u->err, DBK_ECONFIG, "bad port for host %d in the URL: expected "
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
        struct origin o = {DBK_SRC_URL, "URL host", u->quote};
        rc = apply(u->cfg, S_HOST, hosts, &o, u->err);
        if (rc == DBK_OK && any_port) {
            struct origin po = {DBK_SRC_URL, "URL port", u->quote};
            rc = apply(u->cfg, S_PORT, ports, &po, u->err);
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
    u->cfg->src[S_ENGINE] = DBK_SRC_URL;

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
            struct origin o = {DBK_SRC_URL, "URL user name", u->quote};
            rc = apply(u->cfg, S_USER, user, &o, u->err);
            free(user);
            if (rc)
                return rc;
        }
        if (colon) {
            char *pw = NULL;
            rc = url_decode(u, colon + 1, at - ulen - 1, "the password", true, &pw);
            if (rc)
                return rc;
            struct origin o = {DBK_SRC_URL, "URL password", false};
            rc = apply(u->cfg, S_PASSWORD, pw, &o, u->err);
            wipe_free(pw);
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
        struct origin o = {DBK_SRC_URL, "URL database name", u->quote};
        rc = apply(u->cfg, S_DBNAME, db, &o, u->err);
        free(db);
        if (rc)
            return rc;
    }
    if (qm)
        return apply_query(u, qm + 1, n - qpos - 1);
    return DBK_OK;
}

static dbk_rc parse_url(dbk_config *cfg, const char *url, dbk_error *err)
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

/* ------------------------------------------------------------------------ */
/* Environment                                                               */
/* ------------------------------------------------------------------------ */

/* Reads DB_PASSWORD_FILE: at most PASSWORD_FILE_MAX bytes, one trailing
 * newline ("\n" or "\r\n") removed, no NUL bytes. */
static dbk_rc read_password_file(const char *path, char **out, dbk_error *err)
{
    char ex[QUOTE_MAX + 8];
    excerpt(ex, sizeof ex, path, strlen(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: cannot open \"%s\": %s", ex, strerror(e));
        dbk__err_hint(err, "point DB_PASSWORD_FILE at a readable file holding only the password");
        return DBK_ECONFIG;
    }
    char *buf = malloc(PASSWORD_FILE_MAX + 2);
    if (!buf) {
        close(fd);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    size_t len = 0;
    dbk_rc rc = DBK_OK;
    for (;;) {
        ssize_t r = read(fd, buf + len, PASSWORD_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: cannot read \"%s\": %s", ex,
                          strerror(e));
            goto done;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > PASSWORD_FILE_MAX) {
            rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: \"%s\" is larger than %d bytes",
                          ex, PASSWORD_FILE_MAX);
            dbk__err_hint(err, "the file must hold only the password");
            goto done;
        }
    }
    if (len && buf[len - 1] == '\n') {
        len--;
        if (len && buf[len - 1] == '\r')
            len--;
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: \"%s\" contains a NUL byte", ex);
        goto done;
    }
    *out = buf;
    buf = NULL;
done:
    close(fd);
    if (buf) {
        explicit_bzero(buf, PASSWORD_FILE_MAX + 2);
        free(buf);
    }
    return rc;
}

static const char *env_get(dbk_getenv_fn fn, void *ctx, const char *name)
{
    if (!fn || !name)
        return NULL;
    const char *v = fn(ctx, name);
    return v && *v ? v : NULL;
}

static dbk_rc apply_env(dbk_config *cfg, dbk_getenv_fn fn, void *ctx, dbk_error *err)
{
    if (!fn)
        return DBK_OK;
    for (int i = 0; i < S_COUNT_; i++) {
        const char *v = env_get(fn, ctx, settings[i].env);
        if (!v)
            continue;
        struct origin o = {DBK_SRC_ENV, settings[i].env, settings[i].kind != K_SECRET};
        dbk_rc rc = apply(cfg, i, v, &o, err);
        if (rc)
            return rc;
    }
    const char *pf = env_get(fn, ctx, "DB_PASSWORD_FILE");
    if (pf) {
        if (env_get(fn, ctx, "DB_PASSWORD")) {
            dbk__err(err, DBK_ECONFIG, "both DB_PASSWORD and DB_PASSWORD_FILE are set");
            dbk__err_hint(err, "set only one of them");
            return DBK_ECONFIG;
        }
        char *pw = NULL;
        dbk_rc rc = read_password_file(pf, &pw, err);
        if (rc)
            return rc;
        struct origin o = {DBK_SRC_ENV, "DB_PASSWORD_FILE", false};
        rc = apply(cfg, S_PASSWORD, pw, &o, err);
        wipe_free(pw);
        if (rc)
            return rc;
    }
    if (env_get(fn, ctx, "DB_HOST") || env_get(fn, ctx, "DB_NAME")) {
        cfg->engine = DBK_ENGINE_POSTGRES;
        cfg->src[S_ENGINE] = DBK_SRC_ENV;
    }
    return DBK_OK;
}

/* ------------------------------------------------------------------------ */
/* Construction, validation, copies                                          */
/* ------------------------------------------------------------------------ */

static dbk_rc apply_defaults(dbk_config *cfg, dbk_error *err)
{
    for (int i = 0; i < S_COUNT_; i++) {
        if (!settings[i].def)
            continue;
        struct origin o = {DBK_SRC_DEFAULT, settings[i].key, true};
        dbk_rc rc = apply(cfg, i, settings[i].def, &o, err);
        if (rc)
            return rc;
    }
    return DBK_OK;
}

/* Cross-setting checks, and the derived fields. */
static dbk_rc finalize(dbk_config *cfg, dbk_error *err)
{
    cfg->pool.connect_timeout_ms = cfg->connect_timeout_ms;
    if (cfg->pool.min_idle > cfg->pool.max_size) {
        dbk__err(err, DBK_ECONFIG, "pool_min_idle (%d) is larger than pool_max (%d)",
                 cfg->pool.min_idle, cfg->pool.max_size);
        dbk__err_hint(err, "raise pool_max (DB_POOL_MAX) or lower pool_min_idle "
                           "(DB_POOL_MIN_IDLE)");
        return DBK_ECONFIG;
    }
    if (cfg->engine == DBK_ENGINE_POSTGRES) {
        size_t nh = cfg->host ? count_list(cfg->host) : 1;
        size_t np = count_list(cfg->port);
        if (np > 1 && np != nh) {
            dbk__err(err, DBK_ECONFIG, "%zu ports for %zu host%s", np, nh, nh == 1 ? "" : "s");
            dbk__err_hint(err, "give one port for all hosts, or one port per host");
            return DBK_ECONFIG;
        }
    }
    return DBK_OK;
}

static const char *proc_getenv(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

DBK_API dbk_rc dbk_config_from(const char *url, dbk_getenv_fn getenv_fn, void *ctx,
                               dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_from: out is NULL");
    *out = NULL;
    dbk_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    dbk_rc rc = apply_defaults(cfg, err);
    if (rc == DBK_OK)
        rc = apply_env(cfg, getenv_fn, ctx, err);
    if (rc == DBK_OK && url && *url)
        rc = parse_url(cfg, url, err);
    if (rc == DBK_OK)
        rc = finalize(cfg, err);
    if (rc) {
        dbk_config_free(cfg);
        return rc;
    }
    *out = cfg;
    return DBK_OK;
}

DBK_API dbk_rc dbk_config_from_url(const char *url, dbk_config **out, dbk_error *err)
{
    return dbk_config_from(url, proc_getenv, NULL, out, err);
}

DBK_API dbk_rc dbk_config_from_env(dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_from_env: out is NULL");
    return dbk_config_from(getenv("DATABASE_URL"), proc_getenv, NULL, out, err);
}

DBK_API void dbk_config_free(dbk_config *cfg)
{
    if (!cfg)
        return;
    wipe_free(cfg->password);
    wipe_free(cfg->replicas);
    free(cfg->pooler);
    free(cfg->host);
    free(cfg->port);
    free(cfg->dbname);
    free(cfg->user);
    free(cfg->sslmode);
    free(cfg->application_name);
    free(cfg->target_session_attrs);
    free(cfg->sqlite_path);
    free(cfg->journal_mode);
    free(cfg->synchronous);
    for (size_t i = 0; i < cfg->nextra; i++) {
        free(cfg->extra[i].key);
        wipe_free(cfg->extra[i].value);
    }
    free(cfg->extra);
    explicit_bzero(cfg, sizeof *cfg);
    free(cfg);
}

static bool dup_field(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return true;
    }
    *dst = strdup(src);
    return *dst != NULL;
}

DBK_API dbk_rc dbk_config_clone(const dbk_config *cfg, dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_clone: out is NULL");
    *out = NULL;
    if (!cfg)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_clone: cfg is NULL");
    dbk_config *c = malloc(sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    *c = *cfg;
    /* Detach every pointer first so a failure part-way frees only copies. */
    c->host = c->port = c->dbname = c->user = c->password = c->replicas = c->pooler = NULL;
    c->sslmode = c->application_name = c->target_session_attrs = NULL;
    c->sqlite_path = c->journal_mode = c->synchronous = NULL;
    c->extra = NULL;
    c->nextra = 0;
    bool ok = dup_field(&c->host, cfg->host) && dup_field(&c->port, cfg->port) &&
              dup_field(&c->dbname, cfg->dbname) && dup_field(&c->user, cfg->user) &&
              dup_field(&c->password, cfg->password) && dup_field(&c->replicas, cfg->replicas) &&
              dup_field(&c->pooler, cfg->pooler) &&
              dup_field(&c->sslmode, cfg->sslmode) &&
              dup_field(&c->application_name, cfg->application_name) &&
              dup_field(&c->target_session_attrs, cfg->target_session_attrs) &&
              dup_field(&c->sqlite_path, cfg->sqlite_path) &&
              dup_field(&c->journal_mode, cfg->journal_mode) &&
              dup_field(&c->synchronous, cfg->synchronous);
    if (ok && cfg->nextra) {
        c->extra = calloc(cfg->nextra, sizeof *c->extra);
        ok = c->extra != NULL;
        for (size_t i = 0; ok && i < cfg->nextra; i++) {
            c->nextra = i + 1;
            ok = dup_field(&c->extra[i].key, cfg->extra[i].key) &&
                 dup_field(&c->extra[i].value, cfg->extra[i].value);
        }
    }
    if (!ok) {
        dbk_config_free(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    *out = c;
    return DBK_OK;
}

DBK_API dbk_rc dbk_config_set(dbk_config *cfg, const char *key, const char *value,
                              dbk_error *err)
{
    if (!cfg || !key || !value)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_set: %s is NULL",
                        !cfg ? "cfg" : !key ? "key" : "value");
    int idx = find_setting(key);
    if (idx < 0) {
        char ex[QUOTE_MAX + 8];
        dbk__err(err, DBK_ECONFIG, "unknown setting \"%s\"", excerpt(ex, sizeof ex, key,
                                                                      strlen(key)));
        dbk__err_hint(err, "the settings are listed by `dbkit config` and in "
                           "docs/configuration.md");
        return DBK_ECONFIG;
    }
    if (settings[idx].flags & F_NOCODE) {
        dbk__err(err, DBK_ECONFIG, "the %s cannot be set from code", key);
        dbk__err_hint(err, "pass it in DATABASE_URL, DB_PASSWORD or DB_PASSWORD_FILE");
        return DBK_ECONFIG;
    }
    /* Work on a copy so that a value failing the cross-checks leaves cfg
     * exactly as it was. */
    dbk_config *c = NULL;
    dbk_rc rc = dbk_config_clone(cfg, &c, err);
    if (rc)
        return rc;
    struct origin o = {DBK_SRC_CODE, settings[idx].key, true};
    rc = apply(c, idx, value, &o, err);
    if (rc == DBK_OK)
        rc = finalize(c, err);
    if (rc == DBK_OK) {
        dbk_config tmp = *cfg;
        *cfg = *c;
        *c = tmp;
    }
    dbk_config_free(c);
    return rc;
}

DBK_API dbk_engine dbk_config_engine(const dbk_config *cfg)
{
    return cfg ? cfg->engine : (dbk_engine)0;
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                 */
/* ------------------------------------------------------------------------ */

static bool applies(const dbk_config *cfg, const struct setting *s)
{
    if (s->scope == SC_PG)
        return cfg->engine == DBK_ENGINE_POSTGRES;
    if (s->scope == SC_SQLITE)
        return cfg->engine == DBK_ENGINE_SQLITE;
    return true;
}

/* The effective value of row `idx` as text in the key's units. */
static const char *value_text(const dbk_config *cfg, int idx, char *tmp, size_t tmplen)
{
    const struct setting *s = &settings[idx];
    switch (s->kind) {
    case K_ENGINE:
        return cfg->engine == DBK_ENGINE_POSTGRES ? "postgres" : "sqlite";
    case K_MODE:
        return cfg->sqlite_readonly ? "ro" : cfg->sqlite_create ? "rwc" : "rw";
    case K_SECRET:
        return str_slot_c(cfg, s) ? "***" : "";
    case K_PATH:
    case K_HOSTS:
    case K_PORTS:
    case K_TEXT:
    case K_ENUM: {
        const char *v = str_slot_c(cfg, s);
        return v ? v : "";
    }
    case K_COUNT:
    case K_MS:
        snprintf(tmp, tmplen, "%d", *int_slot_c(cfg, s));
        return tmp;
    case K_SEC: {
        int ms = *int_slot_c(cfg, s);
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
        const struct setting *s = &settings[i];
        if ((s->flags & F_ALIAS) || !applies(cfg, s))
            continue;
        char tmp[32];
        fn(ctx, s->key, value_text(cfg, i, tmp, sizeof tmp), (dbk_config_source)cfg->src[i]);
    }
    if (cfg->engine == DBK_ENGINE_POSTGRES)
        for (size_t i = 0; i < cfg->nextra; i++)
            fn(ctx, cfg->extra[i].key,
               is_secret_key(cfg->extra[i].key) ? "***" : cfg->extra[i].value, DBK_SRC_URL);
}

/* Appends "?k=v&..." for every non-default setting that is not part of the
 * URL body, then the pass-through parameters. */
static void render_query(const dbk_config *cfg, struct sb *b, bool port_in_query)
{
    bool first = true;
    for (int i = 0; i < S_COUNT_; i++) {
        const struct setting *s = &settings[i];
        bool want = (s->flags & F_COMPONENT) == 0 || (i == S_PORT && port_in_query);
        if (!want || (s->flags & (F_ALIAS | F_NOURL)) || !applies(cfg, s) ||
            cfg->src[i] == DBK_SRC_DEFAULT)
            continue;
        char tmp[32];
        sb_puts(b, first ? "?" : "&");
        first = false;
        sb_puts(b, s->key);
        sb_puts(b, "=");
        sb_enc(b, value_text(cfg, i, tmp, sizeof tmp), ",:/");
    }
    if (cfg->engine != DBK_ENGINE_POSTGRES)
        return;
    for (size_t i = 0; i < cfg->nextra; i++) {
        sb_puts(b, first ? "?" : "&");
        first = false;
        sb_puts(b, cfg->extra[i].key);
        sb_puts(b, "=");
        if (is_secret_key(cfg->extra[i].key))
            sb_puts(b, "***");
        else
            sb_enc(b, cfg->extra[i].value, ",:/");
    }
}

DBK_API size_t dbk_config_redacted_url(const dbk_config *cfg, char *buf, size_t buflen)
{
    struct sb b = {buf, buf ? buflen : 0, 0};
    if (!cfg)
        return sb_finish(&b);
    if (cfg->engine != DBK_ENGINE_POSTGRES) {
        sb_puts(&b, "sqlite:");
        if (cfg->sqlite_memory) {
            sb_puts(&b, ":memory:");
        } else if (cfg->sqlite_path) {
            if (cfg->sqlite_path[0] == '/')
                sb_puts(&b, "//");
            sb_enc(&b, cfg->sqlite_path, "/:");
        }
        render_query(cfg, &b, false);
        return sb_finish(&b);
    }
    sb_puts(&b, "postgres://");
    if (cfg->user)
        sb_enc(&b, cfg->user, "");
    if (cfg->password)
        sb_puts(&b, ":***");
    if (cfg->user || cfg->password)
        sb_puts(&b, "@");
    if (cfg->host) {
        size_t np = count_list(cfg->port);
        const char *h = cfg->host;
        const char *p = cfg->port;
        for (size_t i = 0;; i++) {
            const char *he = strchr(h, ',');
            size_t hl = he ? (size_t)(he - h) : strlen(h);
            char host[256];
            bool v6 = memchr(h, ':', hl) != NULL;
            if (i)
                sb_puts(&b, ",");
            if (hl < sizeof host) {
                memcpy(host, h, hl);
                host[hl] = '\0';
                if (v6)
                    sb_puts(&b, "[");
                sb_enc(&b, host, v6 ? ":" : "");
                if (v6)
                    sb_puts(&b, "]");
            } else {
                /* Longer than any real host name: encode it in pieces. */
                for (size_t k = 0; k < hl; k += sizeof host - 1) {
                    size_t cl = hl - k < sizeof host - 1 ? hl - k : sizeof host - 1;
                    memcpy(host, h + k, cl);
                    host[cl] = '\0';
                    sb_enc(&b, host, "");
                }
            }
            if (p) {
                const char *pe = strchr(p, ',');
                size_t pl = pe ? (size_t)(pe - p) : strlen(p);
                sb_puts(&b, ":");
                sb_putn(&b, p, pl);
                if (np > 1 && pe)
                    p = pe + 1;
            }
            if (!he)
                break;
            h = he + 1;
        }
    }
    if (cfg->dbname && cfg->dbname[0]) { /* "" means libpq's default, as absent */
        sb_puts(&b, "/");
        sb_enc(&b, cfg->dbname, "");
    }
    render_query(cfg, &b, cfg->host == NULL);
    return sb_finish(&b);
}

/* Copies s[i..] to b, replacing the value of every "...password=" parameter
 * (query string or libpq "key=value" form) by "***". */
static void redact_params(struct sb *b, const char *s, size_t i, size_t n)
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
            sb_putn(b, s + start, k + 1 - start);
            sb_puts(b, "***");
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
    sb_putn(b, s + start, n - start);
}

DBK_API size_t dbk_redact_url(const char *url, char *buf, size_t buflen)
{
    struct sb b = {buf, buf ? buflen : 0, 0};
    if (!url)
        return sb_finish(&b);
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
                sb_putn(&b, url, (size_t)(colon - url) + 1);
                sb_puts(&b, "***");
                resume = at;
            }
        }
    }
    redact_params(&b, url, resume, n);
    return sb_finish(&b);
}
