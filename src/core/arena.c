/*
 * Bump arena: the memory behind structs that repository calls fill.
 *
 * A linked list of blocks; allocation bumps an offset in the newest block
 * and opens a new block when it does not fit. Requests above a quarter of
 * the block size get a dedicated block linked *behind* the current one, so
 * the current block keeps serving small requests. Reset keeps the first
 * standard-size block and frees the others, which makes the per-request
 * reset-and-reuse pattern allocation-free in the steady state. There is no
 * per-allocation free and no locking: an arena belongs to one thread.
 */
#include "dbkit/arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_ (alignof(max_align_t))

struct block {
    struct block *next;
    size_t cap;  /* usable bytes after the header */
    size_t used;
    /* data follows, aligned */
};

struct dbk_arena {
    struct block *head; /* newest standard block first; big blocks behind it */
    size_t block_size;
    size_t used;
};

static size_t header_size(void)
{
    return (sizeof(struct block) + ALIGN_ - 1) & ~(ALIGN_ - 1);
}

static unsigned char *block_data(struct block *b)
{
    return (unsigned char *)b + header_size();
}

dbk_arena *dbk_arena_new(size_t block_size)
{
    dbk_arena *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (block_size == 0)
        block_size = DBK_ARENA_DEFAULT_BLOCK;
    if (block_size < 256)
        block_size = 256;
    a->block_size = block_size;
    return a;
}

void dbk_arena_free(dbk_arena *a)
{
    if (!a)
        return;
    struct block *b = a->head;
    while (b) {
        struct block *n = b->next;
        free(b);
        b = n;
    }
    free(a);
}

void dbk_arena_reset(dbk_arena *a)
{
    if (!a)
        return;
    struct block *keep = NULL, *b = a->head;
    while (b) {
        struct block *n = b->next;
        if (!keep && b->cap == a->block_size) {
            keep = b;
        } else {
            free(b);
        }
        b = n;
    }
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->head = keep;
    a->used = 0;
}

static struct block *block_new(size_t cap)
{
    if (cap > SIZE_MAX - header_size())
        return NULL;
    struct block *b = malloc(header_size() + cap);
    if (!b)
        return NULL;
    b->next = NULL;
    b->cap = cap;
    b->used = 0;
    return b;
}

void *dbk_arena_alloc(dbk_arena *a, size_t size)
{
    if (!a)
        return NULL;
    if (size > SIZE_MAX - ALIGN_)
        return NULL;
    size_t need = (size + ALIGN_ - 1) & ~(ALIGN_ - 1);
    if (need == 0)
        need = ALIGN_;
    struct block *b = a->head;
    unsigned char *p;
    if (b && b->cap - b->used >= need) {
        p = block_data(b) + b->used;
        b->used += need;
    } else if (need > a->block_size / 4) {
        struct block *big = block_new(need);
        if (!big)
            return NULL;
        big->used = need;
        if (b) { /* behind the current block, which keeps serving */
            big->next = b->next;
            b->next = big;
        } else {
            a->head = big;
        }
        p = block_data(big);
    } else {
        struct block *nb = block_new(a->block_size);
        if (!nb)
            return NULL;
        nb->next = a->head;
        a->head = nb;
        nb->used = need;
        p = block_data(nb);
    }
    a->used += need;
    memset(p, 0, size);
    return p;
}

void *dbk_arena_memdup(dbk_arena *a, const void *p, size_t len)
{
    if (!a || (!p && len > 0) || len == SIZE_MAX)
        return NULL;
    unsigned char *d = dbk_arena_alloc(a, len + 1);
    if (!d)
        return NULL;
    if (len)
        memcpy(d, p, len);
    d[len] = 0;
    return d;
}

char *dbk_arena_strndup(dbk_arena *a, const char *s, size_t len)
{
    return dbk_arena_memdup(a, s, len);
}

char *dbk_arena_strdup(dbk_arena *a, const char *s)
{
    if (!s)
        return NULL;
    return dbk_arena_memdup(a, s, strlen(s));
}

size_t dbk_arena_used(const dbk_arena *a)
{
    return a ? a->used : 0;
}
