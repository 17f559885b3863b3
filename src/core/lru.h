/*
 * lru.h - the library's one intrusive LRU list (internal).
 *
 * A cache embeds a dbk__lru_node in each entry and keeps one dbk__lru per
 * list; the list never allocates and never owns the entries. The head is
 * the most recently used entry, the tail the next one to evict; walking
 * from the tail towards the head (node->prev) goes from older to newer.
 * Every operation is O(1). The functions are inline because the statement
 * caches call dbk__lru_touch on every hit, in the driver's hot path.
 *
 * Used by the PostgreSQL and SQLite statement caches and the memory cache;
 * the caller keeps its own count and capacity, and its own lock where the
 * list is shared (the memory cache's shard mutex). A node is in at most one
 * list; a removed node has prev == next == NULL and may be pushed again.
 */
#ifndef DBK_CORE_LRU_H
#define DBK_CORE_LRU_H

#include <stddef.h>

typedef struct dbk__lru_node {
    struct dbk__lru_node *prev; /* newer; NULL at the head */
    struct dbk__lru_node *next; /* older; NULL at the tail */
} dbk__lru_node;

typedef struct dbk__lru {
    dbk__lru_node *head; /* most recently used; NULL when empty */
    dbk__lru_node *tail; /* least recently used; NULL when empty */
} dbk__lru;

/* The entry that holds `node` as its member `member`. */
#define DBK__LRU_ENTRY(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* Makes x (in no list) the most recently used. */
static inline void dbk__lru_push(dbk__lru *l, dbk__lru_node *x)
{
    x->prev = NULL;
    x->next = l->head;
    if (l->head)
        l->head->prev = x;
    l->head = x;
    if (!l->tail)
        l->tail = x;
}

/* Takes x out of the list (x must be in it). */
static inline void dbk__lru_remove(dbk__lru *l, dbk__lru_node *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        l->head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = NULL;
}

/* Marks x (in the list) as just used: moves it to the head. */
static inline void dbk__lru_touch(dbk__lru *l, dbk__lru_node *x)
{
    if (l->head != x) {
        dbk__lru_remove(l, x);
        dbk__lru_push(l, x);
    }
}

#endif
