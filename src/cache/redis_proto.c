/*
 * The pure parts of the Redis backend: the cache URL (redis://,
 * redis-sentinel://, redis-cluster://) and the Redis Cluster protocol
 * pieces (key slots, the CLUSTER SLOTS reply, MOVED/ASK redirections).
 *
 * They are kept apart from redis.c because they take untrusted bytes (a
 * URL from the environment, replies from the network) and do no I/O, so a
 * fuzz target (tests/fuzz/redis_proto_fuzz.c) can drive them directly. The
 * URL grammar is the one common Redis clients use for Sentinel (a comma
 * list of sentinels, then the master's name as the first path segment,
 * then the database). The URL's pieces (spans, host list, host:port,
 * decimals, percent-decoding) come from the shared helpers of
 * src/core/url.h; the grammar and the messages are the cache's. Every
 * output is bounded by its buffer; a field too long for it is an error,
 * never truncated.
 *
 * Key slots follow the Cluster specification: CRC16 (XMODEM: polynomial
 * 0x1021, initial 0, no reflection) of the key, or of its hash tag -- the
 * bytes between the first '{' and the first '}' after it, when there is at
 * least one -- modulo 16384. The table is computed once at first use.
 */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../core/url.h"
#include "cache_int.h"

/* ---- URL ---------------------------------------------------------------- */

/* Percent-decodes a span into dst; false when malformed, holding a NUL or
 * too long. */
static bool decode(struct dbk__span sp, char *dst, size_t dstsz)
{
    return dbk__pct_decode(sp.p ? sp.p : "", sp.n, dst, dstsz, NULL) == DBK__PCT_OK;
}

static bool span_int(struct dbk__span sp, long lo, long hi, int *out)
{
    long long v;
    if (!sp.p || !dbk__parse_decimal(sp.p, sp.n, lo, hi, &v))
        return false;
    *out = (int)v;
    return true;
}

/* One host[:port] (IPv6 in brackets). An empty host is 127.0.0.1; no port
 * is defport. */
static dbk_rc parse_hostport(struct dbk__span item, int defport, struct dbk__redis_addr *a,
                             dbk_error *err)
{
    struct dbk__span host;
    int port;
    bool has_port;
    switch (dbk__url_hostport(item.p ? item.p : "", item.n, &host, &port, &has_port)) {
    case DBK__HOSTPORT_OK:
        break;
    case DBK__HOSTPORT_BAD_PORT:
        return dbk__err(err, DBK_ECONFIG, "bad port in redis url (expected 1..65535)");
    case DBK__HOSTPORT_BAD_BRACKET:
        return dbk__err(err, DBK_ECONFIG, "malformed ipv6 host in redis url");
    default:
        return dbk__err(err, DBK_ECONFIG, "malformed host in redis url");
    }
    if (has_port && port == 0)
        return dbk__err(err, DBK_ECONFIG, "bad port in redis url (expected 1..65535)");
    if (host.n >= sizeof a->host)
        return dbk__err(err, DBK_ECONFIG, "host in redis url is too long");
    if (host.n)
        memcpy(a->host, host.p, host.n);
    a->host[host.n] = 0;
    if (!a->host[0])
        dbk__strlcpy(a->host, "127.0.0.1", sizeof a->host);
    a->port = has_port ? port : defport;
    return DBK_OK;
}

/* The query: auto_pipeline=0|1 (any mode), sentinel_user and
 * sentinel_password (redis-sentinel:// only: the userinfo is the master's
 * credentials, these the sentinels'). Anything else is refused, so a typo
 * is not silently ignored. Messages never quote a value. */
static dbk_rc parse_query(struct dbk__span q, struct dbk__redis_url *out, dbk_error *err)
{
    struct dbk__span item;
    if (!q.p)
        q.p = "";
    while (dbk__list_next(&q, '&', &item)) {
        if (item.n == 0)
            continue;
        const char *eq = memchr(item.p, '=', item.n);
        size_t kn = eq ? (size_t)(eq - item.p) : item.n;
        struct dbk__span v = {eq ? eq + 1 : "", eq ? item.n - kn - 1 : 0};
#define KEY_IS(lit) (kn == sizeof lit - 1 && memcmp(item.p, lit, kn) == 0)
        if (KEY_IS("auto_pipeline")) {
            if (v.n == 1 && (v.p[0] == '0' || v.p[0] == '1'))
                out->auto_pipeline = v.p[0] - '0';
            else
                return dbk__err(err, DBK_ECONFIG, "auto_pipeline in a redis url must be 0 or 1");
        } else if (KEY_IS("sentinel_password") || KEY_IS("sentinel_user")) {
            if (out->mode != DBK__REDIS_SENTINEL) {
                dbk__err(err, DBK_ECONFIG, "%.*s is only for redis-sentinel:// urls", (int)kn,
                         item.p);
                dbk__err_hint(err, "the password of the server itself goes in the userinfo: "
                                   "redis://:password@host");
                return DBK_ECONFIG;
            }
            bool pw = KEY_IS("sentinel_password");
            char *dst = pw ? out->sentinel_password : out->sentinel_user;
            size_t dsz = pw ? sizeof out->sentinel_password : sizeof out->sentinel_user;
            if (!decode(v, dst, dsz) || (pw && !dst[0]))
                return dbk__err(err, DBK_ECONFIG, "malformed %s in redis-sentinel url",
                                pw ? "sentinel_password" : "sentinel_user");
        } else {
            dbk__err(err, DBK_ECONFIG, "unknown query parameter in a redis url");
            dbk__err_hint(err, "known: auto_pipeline=0|1, and for redis-sentinel:// "
                               "sentinel_password, sentinel_user; set timeouts and pool size "
                               "in dbk_cache_opts");
            return DBK_ECONFIG;
        }
#undef KEY_IS
    }
    return DBK_OK;
}

dbk_rc dbk__redis_url_parse(const char *url, struct dbk__redis_url *out, dbk_error *err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    out->auto_pipeline = -1;
    if (!url)
        return dbk__err(err, DBK_EMISUSE, "redis url must not be NULL");
    struct dbk__url u;
    if (!dbk__url_split(url, strlen(url), &u))
        u.scheme.n = 0;
    int defport = 6379;
#define SCHEME_IS(lit) (u.scheme.n == sizeof lit - 1 && memcmp(u.scheme.p, lit, u.scheme.n) == 0)
    if (SCHEME_IS("rediss") || SCHEME_IS("rediss-sentinel") || SCHEME_IS("rediss-cluster")) {
        dbk__err(err, DBK_ECONFIG, "rediss:// (tls) is not supported by this build");
        dbk__err_hint(err, "use redis:// over a trusted network or a tls tunnel");
        return DBK_ECONFIG;
    }
    if (SCHEME_IS("redis")) {
        out->mode = DBK__REDIS_SINGLE;
    } else if (SCHEME_IS("redis-sentinel")) {
        out->mode = DBK__REDIS_SENTINEL;
        defport = 26379;
    } else if (SCHEME_IS("redis-cluster")) {
        out->mode = DBK__REDIS_CLUSTER;
    } else {
        return dbk__err(err, DBK_ECONFIG,
                        "cache url must start with redis://, redis-sentinel://, redis-cluster:// "
                        "or be memory:");
    }
#undef SCHEME_IS
    if (u.has_query) {
        dbk_rc rc = parse_query(u.query, out, err);
        if (rc != DBK_OK)
            return rc;
    }
    if (u.has_userinfo) {
        if (!decode(u.user, out->user, sizeof out->user))
            return dbk__err(err, DBK_ECONFIG, "malformed user in redis url");
        if (u.has_password && !decode(u.password, out->password, sizeof out->password))
            return dbk__err(err, DBK_ECONFIG, "malformed password in redis url");
    }
    /* the host list: one entry for redis://, a comma list otherwise */
    struct dbk__span list = u.hosts, item;
    if (!list.p)
        list.p = "";
    if (out->mode == DBK__REDIS_SINGLE) {
        dbk_rc rc = parse_hostport(list, defport, &out->seeds[0], err);
        if (rc != DBK_OK)
            return rc;
        out->nseeds = 1;
    } else {
        while (dbk__list_next(&list, ',', &item)) {
            if (out->nseeds == DBK__REDIS_MAX_SEEDS)
                return dbk__err(err, DBK_ECONFIG, "more than %d hosts in a redis url",
                                DBK__REDIS_MAX_SEEDS);
            if (item.n == 0 && (out->nseeds > 0 || list.p))
                return dbk__err(err, DBK_ECONFIG, "empty host in the host list of a redis url");
            dbk_rc rc = parse_hostport(item, defport, &out->seeds[out->nseeds], err);
            if (rc != DBK_OK)
                return rc;
            out->nseeds++;
        }
    }
    memcpy(out->host, out->seeds[0].host, sizeof out->host);
    out->port = out->seeds[0].port;
    struct dbk__span path = u.has_path && u.path.n ? u.path : (struct dbk__span){NULL, 0};
    if (out->mode == DBK__REDIS_SENTINEL) {
        struct dbk__span name;
        if (!path.p || !dbk__list_next(&path, '/', &name) || name.n == 0) {
            dbk__err(err, DBK_ECONFIG, "redis-sentinel url without a master name");
            dbk__err_hint(err, "redis-sentinel://host:26379[,host:port...]/master_name[/db]");
            return DBK_ECONFIG;
        }
        if (!decode(name, out->master, sizeof out->master))
            return dbk__err(err, DBK_ECONFIG, "malformed master name in redis-sentinel url");
        if (path.p && path.n == 0)
            path.p = NULL; /* a trailing slash */
    }
    if (path.p && !span_int(path, 0, 100000, &out->db))
        return dbk__err(err, DBK_ECONFIG, "bad database index in redis url (expected a number)");
    if (out->mode == DBK__REDIS_CLUSTER && out->db != 0) {
        dbk__err(err, DBK_ECONFIG, "redis cluster has only database 0");
        dbk__err_hint(err, "drop the /db from the redis-cluster url");
        return DBK_ECONFIG;
    }
    return DBK_OK;
}

/* ---- cluster ------------------------------------------------------------ */

static uint16_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++)
            c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
        crc_table[i] = c;
    }
}

static uint16_t crc16(const unsigned char *p, size_t n)
{
    uint16_t c = 0;
    for (size_t i = 0; i < n; i++)
        c = (uint16_t)((c << 8) ^ crc_table[((c >> 8) ^ p[i]) & 0xff]);
    return c;
}

unsigned dbk__redis_key_slot(const void *key, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *k = key;
    const unsigned char *open = memchr(k, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - k) - 1;
        const unsigned char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (DBK__REDIS_SLOTS - 1);
    }
    return crc16(k, len) & (DBK__REDIS_SLOTS - 1);
}

static bool reply_int(const redisReply *r, long long lo, long long hi, long long *v)
{
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer < lo || r->integer > hi)
        return false;
    *v = r->integer;
    return true;
}

int dbk__redis_parse_slots(const void *reply, const char *fallback_host,
                           struct dbk__redis_range *out, int max)
{
    const redisReply *rep = reply;
    if (!rep || rep->type != REDIS_REPLY_ARRAY)
        return -1;
    int n = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -1;
        long long lo, hi, port;
        if (!reply_int(e->element[0], 0, DBK__REDIS_SLOTS - 1, &lo) ||
            !reply_int(e->element[1], lo, DBK__REDIS_SLOTS - 1, &hi))
            return -1;
        const redisReply *m = e->element[2];
        if (!m || m->type != REDIS_REPLY_ARRAY || m->elements < 2)
            return -1;
        const redisReply *h = m->element[0];
        if (!h || h->type != REDIS_REPLY_STRING || !reply_int(m->element[1], 1, 65535, &port))
            return -1;
        if (n == max)
            return -1;
        struct dbk__redis_range *r = &out[n];
        r->lo = (unsigned)lo;
        r->hi = (unsigned)hi;
        r->master.port = (int)port;
        const char *hs = h->str;
        size_t hl = h->len;
        if (hl == 0 || (hl == 1 && hs[0] == '?')) {
            hs = fallback_host ? fallback_host : "127.0.0.1";
            hl = strlen(hs);
        }
        if (hl >= sizeof r->master.host || memchr(hs, 0, hl))
            return -1;
        memcpy(r->master.host, hs, hl);
        r->master.host[hl] = 0;
        n++;
    }
    return n;
}

int dbk__redis_parse_redirect(const char *msg, size_t len, unsigned *slot,
                              struct dbk__redis_addr *to)
{
    int kind;
    size_t i;
    if (len > 6 && memcmp(msg, "MOVED ", 6) == 0) {
        kind = 1;
        i = 6;
    } else if (len > 4 && memcmp(msg, "ASK ", 4) == 0) {
        kind = 2;
        i = 4;
    } else {
        return 0;
    }
    size_t s0 = i;
    while (i < len && msg[i] >= '0' && msg[i] <= '9')
        i++;
    long long sl;
    if (!dbk__parse_decimal(msg + s0, i - s0, 0, DBK__REDIS_SLOTS - 1, &sl) || i >= len ||
        msg[i] != ' ')
        return 0;
    i++;
    /* host:port, the port after the last ':' (an IPv6 host has several) */
    size_t colon = len;
    for (size_t k = len; k > i; k--)
        if (msg[k - 1] == ':') {
            colon = k - 1;
            break;
        }
    if (colon == len || colon == i || colon - i >= sizeof to->host)
        return 0;
    long long port;
    if (!dbk__parse_decimal(msg + colon + 1, len - colon - 1, 1, 65535, &port))
        return 0;
    memcpy(to->host, msg + i, colon - i);
    to->host[colon - i] = 0;
    if (memchr(to->host, 0, colon - i) || memchr(to->host, ' ', colon - i))
        return 0;
    to->port = (int)port;
    *slot = (unsigned)sl;
    return kind;
}

/* Tags: for every slot the shortest string over [0-9a-z] (first found in
 * length, then alphabetical order) whose CRC16 lands in it. 16384 x 5 bytes,
 * filled once: every string of up to 3 characters, then 4-character ones
 * until each slot has one (about 150 thousand CRCs in all). */
static char slot_tags[DBK__REDIS_SLOTS][5];
static pthread_once_t tags_once = PTHREAD_ONCE_INIT;

static void tags_init(void)
{
    pthread_once(&crc_once, crc_init);
    static const char abc[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    unsigned left = DBK__REDIS_SLOTS;
    char s[5];
    for (int len = 1; len <= 4 && left; len++) {
        unsigned long total = 1;
        for (int i = 0; i < len; i++)
            total *= 36;
        for (unsigned long n = 0; n < total && left; n++) {
            unsigned long x = n;
            for (int i = len - 1; i >= 0; i--) {
                s[i] = abc[x % 36];
                x /= 36;
            }
            unsigned slot = crc16((const unsigned char *)s, (size_t)len) & (DBK__REDIS_SLOTS - 1);
            if (!slot_tags[slot][0]) {
                memcpy(slot_tags[slot], s, (size_t)len);
                left--;
            }
        }
    }
}

const char *dbk__redis_slot_tag(unsigned slot)
{
    pthread_once(&tags_once, tags_init);
    return slot_tags[slot & (DBK__REDIS_SLOTS - 1)];
}
