/*
 * pg_stmtcache.c - the PostgreSQL driver's statement cache: a bounded LRU of
 * named prepared statements keyed by SQL text plus the parameter type
 * signature (chained hash + the core LRU list, core/lru.h). Evicted names are queued and
 * DEALLOCATEd with the next prepare outside a transaction block, so the
 * server never holds more than stmt_cache_size of our statements.
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

#include "../core/hash.h"
#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

/* ---- the statement cache ---- */

uint64_t dbk__pg_hash_key(const char *sql, size_t len, const char *sig, size_t nsig)
{
    /* 8 bytes per step: it runs on every statement */
    return dbk__hash_words(sig, nsig, dbk__hash_words(sql, len, DBK__FNV64_OFFSET));
}

struct pg_stmt *dbk__pg_cache_find(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                  const char *sig, size_t nsig)
{
    if (!pc->buckets)
        return NULL;
    for (struct pg_stmt *s = pc->buckets[h & (pc->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && s->sql_len == len && s->nsig == nsig &&
            memcmp(s->sql, sql, len) == 0 && memcmp(s->sig, sig, nsig) == 0)
            return s;
    return NULL;
}

void dbk__pg_cache_remove(pg_conn *pc, struct pg_stmt *s)
{
    struct pg_stmt **pp = &pc->buckets[s->hash & (pc->nbuckets - 1)];
    while (*pp && *pp != s)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = s->hnext;
    dbk__lru_remove(&pc->lru, &s->lru);
    pc->nstmts--;
}

/* Forgets every cached statement without telling the server (it already
 * dropped them, or will with DEALLOCATE ALL). */
void dbk__pg_cache_clear(pg_conn *pc)
{
    dbk__lru_node *x = pc->lru.head;
    while (x) {
        dbk__lru_node *n = x->next;
        free(DBK__LRU_ENTRY(x, struct pg_stmt, lru));
        x = n;
    }
    pc->lru.head = pc->lru.tail = NULL;
    if (pc->buckets)
        memset(pc->buckets, 0, pc->nbuckets * sizeof *pc->buckets);
    pc->nstmts = 0;
}

/* Queues a statement name for DEALLOCATE. On ENOMEM the name is dropped
 * and DEALLOCATE ALL is queued instead, which is always correct. */
void dbk__pg_pending_push(pg_conn *pc, const char *name)
{
    if (pc->pending_all)
        return;
    if (pc->npending == pc->cap_pending) {
        size_t cap = pc->cap_pending ? pc->cap_pending * 2 : 8;
        void *p = realloc(pc->pending, cap * sizeof *pc->pending);
        if (!p) {
            pc->pending_all = true;
            return;
        }
        pc->pending = p;
        pc->cap_pending = cap;
    }
    dbk__strlcpy(pc->pending[pc->npending++], name, PG_NAME_MAX);
}

/* Makes room for one more statement; evicts the least recently used. */
void dbk__pg_cache_make_room(pg_conn *pc)
{
    while (pc->nstmts >= pc->cache_cap && pc->lru.tail) {
        struct pg_stmt *victim = DBK__LRU_ENTRY(pc->lru.tail, struct pg_stmt, lru);
        dbk__pg_pending_push(pc, victim->name);
        dbk__pg_cache_remove(pc, victim);
        free(victim);
    }
}

/* A new entry, not yet in the cache (inserted once PREPARE succeeded). */
struct pg_stmt *dbk__pg_stmt_new(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                const char *sig, size_t nsig)
{
    struct pg_stmt *s = malloc(sizeof *s + len + 1 + nsig + 1);
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s);
    s->hash = h;
    s->sql_len = len;
    s->nsig = nsig;
    s->sql = (char *)(s + 1);
    memcpy(s->sql, sql, len);
    s->sql[len] = '\0';
    s->sig = s->sql + len + 1;
    memcpy(s->sig, sig, nsig);
    s->sig[nsig] = '\0';
    snprintf(s->name, sizeof s->name, "dbk_%016" PRIx64 "_%" PRIu64, pc->name_nonce,
             ++pc->next_id);
    return s;
}

bool dbk__pg_cache_insert(pg_conn *pc, struct pg_stmt *s)
{
    if (!pc->buckets) {
        size_t n = 16;
        while (n < pc->cache_cap * 2)
            n *= 2;
        pc->buckets = calloc(n, sizeof *pc->buckets);
        if (!pc->buckets)
            return false;
        pc->nbuckets = n;
    }
    struct pg_stmt **b = &pc->buckets[s->hash & (pc->nbuckets - 1)];
    s->hnext = *b;
    *b = s;
    dbk__lru_push(&pc->lru, &s->lru);
    pc->nstmts++;
    return true;
}
