/* dbkit:valgrind
 * The core intrusive LRU list (src/core/lru.h) without a server, checked
 * against a plain array model after every step: pushes, touches of the
 * head, tail and middle, removal of the head, tail, middle and the only
 * node, reinsertion of removed nodes, a cache of capacity 1, and a long
 * pseudo-random sequence of all of them. Each check walks the list both
 * ways, so a prev/next pointer left stale fails here. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/lru.h"
#include "testutil.h"

#define N 32

struct item {
    int id;
    dbk__lru_node lru; /* not the first member: DBK__LRU_ENTRY must subtract */
    int in;
};

/* The model: ids from most to least recently used. */
struct model {
    int ids[N];
    int n;
};

static void model_push(struct model *m, int id)
{
    memmove(m->ids + 1, m->ids, (size_t)m->n * sizeof m->ids[0]);
    m->ids[0] = id;
    m->n++;
}

static void model_remove(struct model *m, int id)
{
    for (int i = 0; i < m->n; i++)
        if (m->ids[i] == id) {
            memmove(m->ids + i, m->ids + i + 1, (size_t)(m->n - i - 1) * sizeof m->ids[0]);
            m->n--;
            return;
        }
    fail_msg("model has no %d", id);
}

/* The list equals the model, walked from the head and from the tail. */
static void check(const dbk__lru *l, const struct model *m)
{
    int i = 0;
    const dbk__lru_node *prev = NULL;
    for (const dbk__lru_node *x = l->head; x; x = x->next, i++) {
        assert_true(i < m->n);
        assert_ptr_equal(x->prev, prev);
        assert_int_equal(DBK__LRU_ENTRY(x, struct item, lru)->id, m->ids[i]);
        prev = x;
    }
    assert_int_equal(i, m->n);
    assert_ptr_equal(l->tail, prev);
    i = m->n - 1;
    for (const dbk__lru_node *x = l->tail; x; x = x->prev, i--)
        assert_int_equal(DBK__LRU_ENTRY(x, struct item, lru)->id, m->ids[i]);
    assert_int_equal(i, -1);
    if (m->n == 0) {
        assert_null(l->head);
        assert_null(l->tail);
    }
}

static void push(dbk__lru *l, struct model *m, struct item *it)
{
    dbk__lru_push(l, &it->lru);
    it->in = 1;
    model_push(m, it->id);
    check(l, m);
}

static void removeit(dbk__lru *l, struct model *m, struct item *it)
{
    dbk__lru_remove(l, &it->lru);
    it->in = 0;
    assert_null(it->lru.prev);
    assert_null(it->lru.next);
    model_remove(m, it->id);
    check(l, m);
}

static void touch(dbk__lru *l, struct model *m, struct item *it)
{
    dbk__lru_touch(l, &it->lru);
    model_remove(m, it->id);
    model_push(m, it->id);
    check(l, m);
}

static void init(struct item *items, int n)
{
    memset(items, 0, sizeof(struct item) * (size_t)n);
    for (int i = 0; i < n; i++)
        items[i].id = i;
}

static void lru_remove_head_tail_middle_and_reinsert(void **state)
{
    (void)state;
    struct item it[5];
    init(it, 5);
    dbk__lru l = {0};
    struct model m = {{0}, 0};
    check(&l, &m);
    for (int i = 0; i < 5; i++)
        push(&l, &m, &it[i]); /* 4 3 2 1 0 */
    removeit(&l, &m, &it[4]); /* head */
    removeit(&l, &m, &it[0]); /* tail */
    removeit(&l, &m, &it[2]); /* middle: 3 1 */
    push(&l, &m, &it[0]);     /* reinserted after removal: 0 3 1 */
    push(&l, &m, &it[4]);
    push(&l, &m, &it[2]);
    removeit(&l, &m, &it[2]);
    removeit(&l, &m, &it[1]);
    removeit(&l, &m, &it[3]);
    removeit(&l, &m, &it[0]);
    removeit(&l, &m, &it[4]); /* the only node */
    push(&l, &m, &it[3]);     /* an emptied list works again */
    assert_ptr_equal(l.head, l.tail);
}

static void lru_touch_head_tail_middle(void **state)
{
    (void)state;
    struct item it[4];
    init(it, 4);
    dbk__lru l = {0};
    struct model m = {{0}, 0};
    push(&l, &m, &it[0]);
    touch(&l, &m, &it[0]); /* the only node */
    for (int i = 1; i < 4; i++)
        push(&l, &m, &it[i]); /* 3 2 1 0 */
    touch(&l, &m, &it[3]);    /* head: no change */
    touch(&l, &m, &it[0]);    /* tail: 0 3 2 1 */
    touch(&l, &m, &it[2]);    /* middle: 2 0 3 1 */
    touch(&l, &m, &it[1]);
    touch(&l, &m, &it[1]);
    assert_int_equal(DBK__LRU_ENTRY(l.tail, struct item, lru)->id, 3);
}

/* A cache of capacity 1 built the way the statement caches are: evict the
 * tail before inserting, touch on a hit. */
static void lru_capacity_one(void **state)
{
    (void)state;
    struct item it[3];
    init(it, 3);
    dbk__lru l = {0};
    struct model m = {{0}, 0};
    int count = 0;
    const int order[] = {0, 0, 1, 1, 0, 2, 2, 1, 0};
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        struct item *x = &it[order[k]];
        if (x->in) {
            touch(&l, &m, x);
            continue;
        }
        if (count >= 1) {
            removeit(&l, &m, DBK__LRU_ENTRY(l.tail, struct item, lru));
            count--;
        }
        push(&l, &m, x);
        count++;
        assert_ptr_equal(l.head, &x->lru);
        assert_ptr_equal(l.tail, &x->lru);
    }
}

/* A long pseudo-random mix of every operation, fixed seed. */
static void lru_hostile_sequence_matches_model(void **state)
{
    (void)state;
    struct item it[N];
    init(it, N);
    dbk__lru l = {0};
    struct model m = {{0}, 0};
    uint64_t r = 0x9e3779b97f4a7c15ULL;
    for (int step = 0; step < 20000; step++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        struct item *x = &it[r % N];
        int op = (int)((r >> 32) % 4);
        if (!x->in)
            push(&l, &m, x);
        else if (op == 0)
            removeit(&l, &m, x);
        else if (op == 1 && l.tail)
            removeit(&l, &m, DBK__LRU_ENTRY(l.tail, struct item, lru)); /* evict */
        else
            touch(&l, &m, x);
    }
    while (l.head)
        removeit(&l, &m, DBK__LRU_ENTRY(l.head, struct item, lru));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(lru_remove_head_tail_middle_and_reinsert),
    cmocka_unit_test(lru_touch_head_tail_middle),
    cmocka_unit_test(lru_capacity_one),
    cmocka_unit_test(lru_hostile_sequence_matches_model),
};

DBKT_MAIN(tests)
