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
 * then the database); no shared URL helper exists in src/core yet, so the
 * parser here is self-contained. Every output is bounded by its buffer; a
 * field too long for it is an error, never truncated.
 *
 * Key slots follow the Cluster specification: CRC16 (XMODEM: polynomial
 * 0x1021, initial 0, no reflection) of the key, or of its hash tag -- the
 * bytes between the first '{' and the first '}' after it, when there is at
 * least one -- modulo 16384. The table is computed once at first use.
 */
#include <ctype.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "cache_int.h"

/* ---- URL ---------------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes src[0..n) into dst (size dstsz). False when malformed or
 * too long. */
static bool pct_decode(const char *src, size_t n, char *dst, size_t dstsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;
            int h = hexval(src[i + 1]), l = hexval(src[i + 2]);
            if (h < 0 || l < 0)
                return false;
            c = h * 16 + l;
            i += 2;
        }
        if (o + 1 >= dstsz)
            return false;
        dst[o++] = (char)c;
    }
    dst[o] = 0;
    return true;
}

static bool parse_int(const char *s, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 10)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

/* One host[:port] (IPv6 in brackets) out of p[0..n). An empty host is
 * 127.0.0.1; no port is defport. */
static dbk_rc parse_hostport(const char *p, size_t n, int defport, struct dbk__redis_addr *a,
                             dbk_error *err)
{
    const char *end = p + n, *portp = NULL;
    a->port = defport;
    if (p < end && *p == '[') {
        const char *rb = memchr(p, ']', n);
        if (!rb)
            return dbk__err(err, DBK_ECONFIG, "malformed ipv6 host in redis url");
        size_t hl = (size_t)(rb - p - 1);
        if (hl == 0 || hl >= sizeof a->host)
            return dbk__err(err, DBK_ECONFIG, "malformed ipv6 host in redis url");
        memcpy(a->host, p + 1, hl);
        a->host[hl] = 0;
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return dbk__err(err, DBK_ECONFIG, "malformed host in redis url");
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', n);
        const char *he = colon ? colon : end;
        size_t hl = (size_t)(he - p);
        if (hl >= sizeof a->host)
            return dbk__err(err, DBK_ECONFIG, "host in redis url is too long");
        memcpy(a->host, p, hl);
        a->host[hl] = 0;
        if (colon)
            portp = colon + 1;
    }
    if (!a->host[0])
        dbk__strlcpy(a->host, "127.0.0.1", sizeof a->host);
    if (portp && !parse_int(portp, (size_t)(end - portp), 1, 65535, &a->port))
        return dbk__err(err, DBK_ECONFIG, "bad port in redis url (expected 1..65535)");
    return DBK_OK;
}

dbk_rc dbk__redis_url_parse(const char *url, struct dbk__redis_url *out, dbk_error *err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url)
        return dbk__err(err, DBK_EMISUSE, "redis url must not be NULL");
    int defport = 6379;
    const char *p;
    if (strncmp(url, "rediss://", 9) == 0 || strncmp(url, "rediss-", 7) == 0) {
        dbk__err(err, DBK_ECONFIG, "rediss:// (tls) is not supported by this build");
        dbk__err_hint(err, "use redis:// over a trusted network or a tls tunnel");
        return DBK_ECONFIG;
    }
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "redis-sentinel://", 17) == 0) {
        p = url + 17;
        out->mode = DBK__REDIS_SENTINEL;
        defport = 26379;
    } else if (strncmp(url, "redis-cluster://", 16) == 0) {
        p = url + 16;
        out->mode = DBK__REDIS_CLUSTER;
    } else {
        dbk__err(err, DBK_ECONFIG,
                 "cache url must start with redis://, redis-sentinel://, redis-cluster:// or "
                 "be memory:");
        return DBK_ECONFIG;
    }
    const char *end = p + strlen(p);
    if (memchr(p, '?', (size_t)(end - p))) {
        dbk__err(err, DBK_ECONFIG, "query parameters are not supported in a redis url");
        dbk__err_hint(err, "set timeouts and pool size in dbk_cache_opts");
        return DBK_ECONFIG;
    }
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *auth_end = NULL;
    for (const char *s = p; s < (slash ? slash : end); s++)
        if (*s == '@')
            auth_end = s; /* the last '@' before the path ends the credentials */
    const char *hostp = p;
    if (auth_end) {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        const char *uend = colon ? colon : auth_end;
        if (!pct_decode(p, (size_t)(uend - p), out->user, sizeof out->user))
            return dbk__err(err, DBK_ECONFIG, "malformed user in redis url");
        if (colon && !pct_decode(colon + 1, (size_t)(auth_end - colon - 1), out->password,
                                 sizeof out->password))
            return dbk__err(err, DBK_ECONFIG, "malformed password in redis url");
        hostp = auth_end + 1;
    }
    const char *hend = slash ? slash : end;
    /* the host list: one entry for redis://, a comma list otherwise */
    for (const char *h = hostp;;) {
        const char *comma = out->mode ? memchr(h, ',', (size_t)(hend - h)) : NULL;
        const char *e = comma ? comma : hend;
        if (out->nseeds == DBK__REDIS_MAX_SEEDS)
            return dbk__err(err, DBK_ECONFIG, "more than %d hosts in a redis url",
                            DBK__REDIS_MAX_SEEDS);
        if (comma && e == h)
            return dbk__err(err, DBK_ECONFIG, "empty host in the host list of a redis url");
        dbk_rc rc = parse_hostport(h, (size_t)(e - h), defport, &out->seeds[out->nseeds], err);
        if (rc != DBK_OK)
            return rc;
        out->nseeds++;
        if (!comma)
            break;
        h = comma + 1;
    }
    memcpy(out->host, out->seeds[0].host, sizeof out->host);
    out->port = out->seeds[0].port;
    const char *path = slash && slash + 1 < end ? slash + 1 : NULL;
    if (out->mode == DBK__REDIS_SENTINEL) {
        if (!path) {
            dbk__err(err, DBK_ECONFIG, "redis-sentinel url without a master name");
            dbk__err_hint(err, "redis-sentinel://host:26379[,host:port...]/master_name[/db]");
            return DBK_ECONFIG;
        }
        const char *s2 = memchr(path, '/', (size_t)(end - path));
        const char *me = s2 ? s2 : end;
        if (me == path || !pct_decode(path, (size_t)(me - path), out->master, sizeof out->master))
            return dbk__err(err, DBK_ECONFIG, "malformed master name in redis-sentinel url");
        path = s2 && s2 + 1 < end ? s2 + 1 : NULL;
    }
    if (path && !parse_int(path, (size_t)(end - path), 0, 100000, &out->db))
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
    int sl;
    if (!parse_int(msg + s0, i - s0, 0, DBK__REDIS_SLOTS - 1, &sl) || i >= len || msg[i] != ' ')
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
    int port;
    if (!parse_int(msg + colon + 1, len - colon - 1, 1, 65535, &port))
        return 0;
    memcpy(to->host, msg + i, colon - i);
    to->host[colon - i] = 0;
    if (memchr(to->host, 0, colon - i) || memchr(to->host, ' ', colon - i))
        return 0;
    to->port = port;
    *slot = (unsigned)sl;
    return kind;
}
