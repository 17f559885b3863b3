/*
 * The memory backend: a sharded LRU with TTL, bounded by entries and bytes.
 *
 * Why sharded: one lock per cache would serialize every reader of a busy
 * service; keys hash to one of N shards (a power of two), each with its own
 * mutex, hash table (chained, doubled when it fills) and LRU list, and each
 * holds 1/N of the entry and byte budgets. Every operation is O(1) expected
 * under one shard lock; nothing allocates under a lock except the entry
 * being stored. Expired entries are dropped when met (lookup) or evicted
 * from the LRU tail; there is no background thread.
 *
 * Generations (the stale-set guard): each shard has a counter `seq` bumped
 * by every delete. A delete leaves a tombstone carrying the new seq as the
 * key's generation; a value stored later keeps the generation of what it
 * replaced. When an entry leaves the table for any reason but replacement
 * (eviction, expiry), its generation is folded into the shard's `floor`,
 * and a new entry starts at `floor`. So for every key, its last delete's
 * generation is <= the key's entry generation, or <= floor when it has no
 * entry. A lease is the shard's seq at the time; set_leased stores only if
 * the key's generation is still <= that seq. Unrelated evictions can only
 * make it refuse more often (never store a stale value).
 */
#include <stdlib.h>
#include <string.h>

#include "../core/hash.h"
#include "../core/internal.h"
#include "../core/lru.h"
#include "cache_int.h"

struct mentry {
    struct mentry *hnext;
    dbk__lru_node lru; /* in the shard's LRU (core/lru.h) */
    uint64_t hash;
    int64_t expires_ns; /* 0: never */
    uint64_t gen;
    size_t klen, vlen;
    bool tomb;
    unsigned char data[]; /* key bytes, then value bytes */
};

struct shard {
    pthread_mutex_t mu;
    struct mentry **buckets;
    size_t nbuckets;
    dbk__lru lru; /* head is most recent */
    size_t entries, bytes, max_entries, max_bytes;
    uint64_t seq, floor;
    uint64_t evictions, stale_rejects;
};

struct nsent {
    char name[201];
    uint64_t version;
};

struct mem {
    struct shard *shards;
    unsigned nshards;
    uint64_t epoch;
    int64_t lease_ns;
    int64_t tomb_ttl_ns;
    pthread_mutex_t ns_mu;
    struct nsent *ns;
    size_t nns, ns_cap;
};

#define MAX_NAMESPACES 4096

static uint64_t key_hash(const void *key, size_t len)
{
    uint64_t h = dbk__fnv64(DBK__FNV64_OFFSET, key, len);
    /* final mix so that both high (shard) and low (bucket) bits spread */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static size_t entry_cost(size_t klen, size_t vlen)
{
    return sizeof(struct mentry) + klen + vlen;
}

static struct shard *shard_of(struct mem *m, uint64_t h)
{
    return &m->shards[(h >> 48) & (m->nshards - 1)];
}

static struct mentry **find_slot(struct shard *s, uint64_t h, const void *key, size_t klen)
{
    struct mentry **pp = &s->buckets[h & (s->nbuckets - 1)];
    while (*pp) {
        struct mentry *e = *pp;
        if (e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0)
            return pp;
        pp = &e->hnext;
    }
    return pp;
}

/* Removes the entry at *pp. `forget` folds its generation into the floor
 * (eviction, expiry); a replacement carries the generation instead. */
static void remove_at(struct shard *s, struct mentry **pp, bool forget)
{
    struct mentry *e = *pp;
    *pp = e->hnext;
    dbk__lru_remove(&s->lru, &e->lru);
    s->entries--;
    s->bytes -= entry_cost(e->klen, e->vlen);
    if (forget && e->gen > s->floor)
        s->floor = e->gen;
    free(e);
}

static void remove_entry(struct shard *s, struct mentry *e, bool forget)
{
    struct mentry **pp = find_slot(s, e->hash, e->data, e->klen);
    if (*pp == e)
        remove_at(s, pp, forget);
}

static void maybe_grow(struct shard *s)
{
    if (s->entries < s->nbuckets)
        return;
    size_t nb = s->nbuckets * 2;
    struct mentry **nbk = calloc(nb, sizeof *nbk);
    if (!nbk)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct mentry *e = s->buckets[i];
        while (e) {
            struct mentry *nx = e->hnext;
            e->hnext = nbk[e->hash & (nb - 1)];
            nbk[e->hash & (nb - 1)] = e;
            e = nx;
        }
    }
    free(s->buckets);
    s->buckets = nbk;
    s->nbuckets = nb;
}

/* Looks a key up, dropping it when expired. Returns the slot (NULL *slot
 * when absent). */
static struct mentry **lookup(struct shard *s, uint64_t h, const void *key, size_t klen,
                              int64_t now)
{
    struct mentry **pp = find_slot(s, h, key, klen);
    if (*pp && (*pp)->expires_ns && (*pp)->expires_ns <= now) {
        remove_at(s, pp, true);
        pp = find_slot(s, h, key, klen);
    }
    return pp;
}

static void evict_to_fit(struct shard *s, const struct mentry *keep)
{
    while ((s->entries > s->max_entries || s->bytes > s->max_bytes) && s->lru.tail) {
        dbk__lru_node *victim = s->lru.tail;
        if (victim == &keep->lru) {
            if (!victim->prev)
                break;
            victim = victim->prev;
        }
        remove_entry(s, DBK__LRU_ENTRY(victim, struct mentry, lru), true);
        s->evictions++;
    }
}

/* Stores a value or a tombstone under the shard lock. gen: for a value, the
 * carried generation is computed here; for a tombstone, the new seq. Returns
 * false on allocation failure (nothing changed). */
static bool put_locked(struct shard *s, uint64_t h, const void *key, size_t klen,
                       const void *val, size_t vlen, int64_t expires, bool tomb, uint64_t gen)
{
    struct mentry *e = malloc(sizeof *e + klen + vlen);
    if (!e)
        return false;
    e->hash = h;
    e->klen = klen;
    e->vlen = vlen;
    e->expires_ns = expires;
    e->tomb = tomb;
    memcpy(e->data, key, klen);
    if (vlen)
        memcpy(e->data + klen, val, vlen);
    struct mentry **pp = find_slot(s, h, key, klen);
    uint64_t carried = *pp ? (*pp)->gen : s->floor;
    if (*pp)
        remove_at(s, pp, false);
    e->gen = gen > carried ? gen : carried;
    maybe_grow(s);
    pp = &s->buckets[h & (s->nbuckets - 1)];
    e->hnext = *pp;
    *pp = e;
    dbk__lru_push(&s->lru, &e->lru);
    s->entries++;
    s->bytes += entry_cost(klen, vlen);
    evict_to_fit(s, e);
    return true;
}

static dbk_rc mem_get(void *impl, const void *key, size_t klen, void **val, size_t *vallen,
                      dbk_error *err)
{
    struct mem *m = impl;
    uint64_t h = key_hash(key, klen);
    struct shard *s = shard_of(m, h);
    int64_t now = dbk__now_ns();
    pthread_mutex_lock(&s->mu);
    struct mentry **pp = lookup(s, h, key, klen, now);
    struct mentry *e = *pp;
    if (!e || e->tomb) {
        pthread_mutex_unlock(&s->mu);
        return DBK_ENOT_FOUND;
    }
    void *copy = malloc(e->vlen ? e->vlen : 1);
    if (!copy) {
        pthread_mutex_unlock(&s->mu);
        return dbk__err(err, DBK_ENOMEM, "out of memory copying a cached value");
    }
    memcpy(copy, e->data + e->klen, e->vlen);
    *vallen = e->vlen;
    dbk__lru_touch(&s->lru, &e->lru);
    pthread_mutex_unlock(&s->mu);
    *val = copy;
    return DBK_OK;
}

static int64_t expiry(int64_t ttl_ms)
{
    return dbk__now_ns() + ttl_ms * 1000000LL;
}

static dbk_rc mem_set(void *impl, const void *key, size_t klen, const void *val, size_t vlen,
                      int64_t ttl_ms, dbk_error *err)
{
    struct mem *m = impl;
    uint64_t h = key_hash(key, klen);
    struct shard *s = shard_of(m, h);
    if (entry_cost(klen, vlen) > s->max_bytes)
        return DBK_OK; /* larger than the shard: never cached */
    int64_t exp = expiry(ttl_ms);
    pthread_mutex_lock(&s->mu);
    bool ok = put_locked(s, h, key, klen, val, vlen, exp, false, 0);
    pthread_mutex_unlock(&s->mu);
    return ok ? DBK_OK : dbk__err(err, DBK_ENOMEM, "out of memory storing a cached value");
}

static dbk_rc mem_del(void *impl, const void *key, size_t klen, dbk_error *err)
{
    (void)err;
    struct mem *m = impl;
    uint64_t h = key_hash(key, klen);
    struct shard *s = shard_of(m, h);
    int64_t exp = expiry(m->tomb_ttl_ns / 1000000LL);
    pthread_mutex_lock(&s->mu);
    uint64_t gen = ++s->seq;
    if (!put_locked(s, h, key, klen, NULL, 0, exp, true, gen)) {
        /* No memory for a tombstone: drop the value and raise the floor,
         * which refuses every older lease in this shard. Still correct. */
        struct mentry **pp = find_slot(s, h, key, klen);
        if (*pp)
            remove_at(s, pp, true);
        if (s->floor < gen)
            s->floor = gen;
    }
    pthread_mutex_unlock(&s->mu);
    return DBK_OK;
}

static dbk_rc mem_lease(void *impl, const void *key, size_t klen, dbk_cache_lease *out,
                        dbk_error *err)
{
    (void)err;
    struct mem *m = impl;
    struct shard *s = shard_of(m, key_hash(key, klen));
    pthread_mutex_lock(&s->mu);
    out->gen = s->seq;
    pthread_mutex_unlock(&s->mu);
    out->epoch = m->epoch;
    out->taken_ns = dbk__now_ns();
    out->valid = true;
    return DBK_OK;
}

static dbk_rc mem_set_leased(void *impl, const void *key, size_t klen, const dbk_cache_lease *l,
                             const void *val, size_t vlen, int64_t ttl_ms, bool *stored,
                             dbk_error *err)
{
    struct mem *m = impl;
    *stored = false;
    uint64_t h = key_hash(key, klen);
    struct shard *s = shard_of(m, h);
    int64_t now = dbk__now_ns();
    if (!l->valid || l->epoch != m->epoch || now - l->taken_ns > m->lease_ns) {
        pthread_mutex_lock(&s->mu);
        s->stale_rejects++;
        pthread_mutex_unlock(&s->mu);
        return DBK_OK;
    }
    if (entry_cost(klen, vlen) > s->max_bytes)
        return DBK_OK;
    int64_t exp = now + ttl_ms * 1000000LL;
    bool ok = true;
    pthread_mutex_lock(&s->mu);
    struct mentry **pp = lookup(s, h, key, klen, now);
    uint64_t cur = *pp ? (*pp)->gen : s->floor;
    if (cur > l->gen) {
        s->stale_rejects++;
    } else {
        ok = put_locked(s, h, key, klen, val, vlen, exp, false, 0);
        *stored = ok;
    }
    pthread_mutex_unlock(&s->mu);
    return ok ? DBK_OK : dbk__err(err, DBK_ENOMEM, "out of memory storing a cached value");
}

static struct nsent *ns_find(struct mem *m, const char *ns)
{
    for (size_t i = 0; i < m->nns; i++)
        if (strcmp(m->ns[i].name, ns) == 0)
            return &m->ns[i];
    return NULL;
}

static dbk_rc mem_ns_get(void *impl, const char *ns, uint64_t *version, dbk_error *err)
{
    (void)err;
    struct mem *m = impl;
    pthread_mutex_lock(&m->ns_mu);
    struct nsent *e = ns_find(m, ns);
    *version = e ? e->version : 0;
    pthread_mutex_unlock(&m->ns_mu);
    return DBK_OK;
}

static dbk_rc mem_ns_bump(void *impl, const char *ns, uint64_t *version, dbk_error *err)
{
    struct mem *m = impl;
    dbk_rc rc = DBK_OK;
    pthread_mutex_lock(&m->ns_mu);
    struct nsent *e = ns_find(m, ns);
    if (!e) {
        if (m->nns == MAX_NAMESPACES) {
            rc = dbk__err(err, DBK_EINVALID, "too many cache namespaces (limit %d)", MAX_NAMESPACES);
            goto unlock;
        }
        if (m->nns == m->ns_cap) {
            size_t cap = m->ns_cap ? m->ns_cap * 2 : 16;
            struct nsent *n = realloc(m->ns, cap * sizeof *n);
            if (!n) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory adding a cache namespace");
                goto unlock;
            }
            m->ns = n;
            m->ns_cap = cap;
        }
        e = &m->ns[m->nns++];
        dbk__strlcpy(e->name, ns, sizeof e->name);
        e->version = 0;
    }
    e->version++;
    *version = e->version;
unlock:
    pthread_mutex_unlock(&m->ns_mu);
    return rc;
}

static void mem_stats(void *impl, dbk_cache_stats *out)
{
    struct mem *m = impl;
    for (unsigned i = 0; i < m->nshards; i++) {
        struct shard *s = &m->shards[i];
        pthread_mutex_lock(&s->mu);
        out->entries += s->entries;
        out->bytes += s->bytes;
        out->evictions += s->evictions;
        out->stale_rejects += s->stale_rejects;
        pthread_mutex_unlock(&s->mu);
    }
    out->breaker = DBK_CACHE_BREAKER_CLOSED;
}

static void mem_close(void *impl)
{
    struct mem *m = impl;
    if (!m)
        return;
    for (unsigned i = 0; m->shards && i < m->nshards; i++) {
        struct shard *s = &m->shards[i];
        dbk__lru_node *x = s->lru.head;
        while (x) {
            dbk__lru_node *nx = x->next;
            free(DBK__LRU_ENTRY(x, struct mentry, lru));
            x = nx;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(m->shards);
    free(m->ns);
    pthread_mutex_destroy(&m->ns_mu);
    free(m);
}

dbk_rc dbk__cache_memory_new(const struct dbk__cache_cfg *cfg, void **impl, dbk_error *err)
{
    struct mem *m = calloc(1, sizeof *m);
    if (!m)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a memory cache");
    unsigned n = 1;
    while (n < (unsigned)cfg->shards && n < 1024)
        n <<= 1;
    pthread_mutex_init(&m->ns_mu, NULL);
    m->shards = calloc(n, sizeof *m->shards);
    if (!m->shards) {
        free(m);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a memory cache");
    }
    m->nshards = n;
    m->epoch = dbk__cache_rand64();
    m->lease_ns = (int64_t)cfg->lease_ms * 1000000LL;
    m->tomb_ttl_ns = 3 * m->lease_ns;
    for (unsigned i = 0; i < n; i++) {
        struct shard *s = &m->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->max_entries = (cfg->max_entries + n - 1) / n;
        s->max_bytes = (cfg->max_bytes + n - 1) / n;
        if (s->max_entries < 1)
            s->max_entries = 1;
        s->nbuckets = 16;
        s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
        if (!s->buckets) {
            m->nshards = i + 1;
            mem_close(m);
            return dbk__err(err, DBK_ENOMEM, "out of memory opening a memory cache");
        }
    }
    *impl = m;
    return DBK_OK;
}

const struct dbk__cache_ops dbk__cache_memory_ops = {
    "memory", mem_get, mem_set, mem_del, mem_lease, mem_set_leased,
    mem_ns_get, mem_ns_bump, mem_stats, mem_close, NULL, NULL, NULL,
};
