/*
 * libFuzzer target for the Redis backend's parsers (src/cache/redis_proto.c):
 * the cache URL (redis://, redis-sentinel://, redis-cluster://), MOVED/ASK
 * error texts, and CLUSTER SLOTS replies.
 *
 * The first byte picks the parser; the rest is its input. URL: a
 * NUL-terminated copy is parsed; on success every field must be
 * NUL-terminated inside its buffer, every port in 1..65535, 1..16 hosts, a
 * and a master name exactly for redis-sentinel:// (the messages' freedom
 * from the password is a unit test: cache_redis_url_errors). Redirect: a slot below 16384 and a port in range when
 * accepted. Reply: the bytes go through hiredis's reader (as they would come
 * off the socket) and each complete reply into dbk__redis_parse_slots(),
 * whose ranges must be ordered and inside 0..16383. Every input is also
 * hashed to a key slot, which must be below 16384. The checks trap, so a
 * broken invariant is a crash libFuzzer keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a
 * copy of tests/fuzz/corpus/redis_proto so new inputs stay out of git.
 */
#include "cache/cache_int.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_str(const char *s, size_t cap)
{
    if (!memchr(s, 0, cap))
        __builtin_trap();
}

static void fuzz_url(const uint8_t *p, size_t n)
{
    char *url = malloc(n + 1);
    if (!url)
        return;
    memcpy(url, p, n);
    url[n] = 0;
    struct dbk__redis_url u;
    dbk_error err;
    memset(&err, 0, sizeof err);
    if (dbk__redis_url_parse(url, &u, &err) == DBK_OK) {
        check_str(u.host, sizeof u.host);
        check_str(u.user, sizeof u.user);
        check_str(u.password, sizeof u.password);
        check_str(u.master, sizeof u.master);
        if (u.nseeds < 1 || u.nseeds > DBK__REDIS_MAX_SEEDS)
            __builtin_trap();
        for (int i = 0; i < u.nseeds; i++) {
            check_str(u.seeds[i].host, sizeof u.seeds[i].host);
            if (u.seeds[i].port < 1 || u.seeds[i].port > 65535 || !u.seeds[i].host[0])
                __builtin_trap();
        }
        if ((u.mode == DBK__REDIS_SENTINEL) != (u.master[0] != 0))
            __builtin_trap();
        if (u.mode == DBK__REDIS_CLUSTER && u.db != 0)
            __builtin_trap();
    }
    free(url);
}

static void fuzz_redirect(const uint8_t *p, size_t n)
{
    unsigned slot = 0;
    struct dbk__redis_addr a;
    int k = dbk__redis_parse_redirect((const char *)p, n, &slot, &a);
    if (k < 0 || k > 2)
        __builtin_trap();
    if (k) {
        check_str(a.host, sizeof a.host);
        if (slot >= DBK__REDIS_SLOTS || a.port < 1 || a.port > 65535 || !a.host[0])
            __builtin_trap();
    }
}

/* hiredis 0.14's reader allocates an array of the announced size up front
 * (it has no maxelements): an input announcing millions of elements is
 * hiredis's memory, not the parser's, so aggregates above 9999 are skipped. */
static bool huge_aggregate(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '*')
            continue;
        size_t d = 0;
        while (i + 1 + d < n && p[i + 1 + d] >= '0' && p[i + 1 + d] <= '9')
            d++;
        if (d > 4)
            return true;
    }
    return false;
}

static void fuzz_slots(const uint8_t *p, size_t n)
{
    if (huge_aggregate(p, n))
        return;
    redisReader *rd = redisReaderCreate();
    if (!rd)
        return;
    if (redisReaderFeed(rd, (const char *)p, n) == REDIS_OK) {
        for (int i = 0; i < 8; i++) {
            void *rep = NULL;
            if (redisReaderGetReply(rd, &rep) != REDIS_OK || !rep)
                break;
            struct dbk__redis_range rg[64];
            int k = dbk__redis_parse_slots(rep, "fallback", rg, 64);
            if (k < -1 || k > 64)
                __builtin_trap();
            for (int j = 0; j < k; j++) {
                check_str(rg[j].master.host, sizeof rg[j].master.host);
                if (rg[j].lo > rg[j].hi || rg[j].hi >= DBK__REDIS_SLOTS ||
                    rg[j].master.port < 1 || rg[j].master.port > 65535)
                    __builtin_trap();
            }
            freeReplyObject(rep);
        }
    }
    redisReaderFree(rd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dbk__redis_key_slot(data, size) >= DBK__REDIS_SLOTS)
        __builtin_trap();
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_url(data + 1, size - 1);
        break;
    case 1:
        fuzz_redirect(data + 1, size - 1);
        break;
    default:
        fuzz_slots(data + 1, size - 1);
        break;
    }
    return 0;
}
