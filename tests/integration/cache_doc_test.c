/*
 * The cached document collection (dbkit/cache_doc.h) on a fresh SQLite
 * file and a fresh PostgreSQL database, each with the memory cache and
 * with Redis: a hit after the first read (no statement runs, counted by
 * the query observer), no stale read after an update or a delete while
 * reader threads keep reading, one load for N concurrent misses, and
 * invalidation that waits for the caller's transaction to commit; and on
 * the MongoDB-compatible test server (DBKIT_TEST_MONGO_URL), hits and
 * invalidation counted by the cache's loads.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static const dbk_doc_field item_fields[] = {
    {"name", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL},
    {"n", DBK_DOC_INT64, 0, NULL},
};
static const dbk_doc_schema items = {
    .collection = "cdoc_items",
    .fields = item_fields,
    .nfields = 2,
    .timestamps = true,
};

/* Counts the statements that read the collection; optionally holds the
 * first one for `hold_ms` so that concurrent readers all miss meanwhile. */
struct counter {
    atomic_int selects;
    atomic_int held;
    int hold_ms;
};

static void on_query(void *ctx, const dbk_query_event *ev)
{
    struct counter *c = ctx;
    if (strncmp(ev->sql, "SELECT doc FROM", 15) != 0)
        return;
    atomic_fetch_add(&c->selects, 1);
    if (c->hold_ms > 0 && atomic_fetch_add(&c->held, 1) == 0) {
        struct timespec ts = {c->hold_ms / 1000, (long)(c->hold_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

typedef struct env {
    dbk_pool *pool;
    dbk_doc_coll *coll;
    dbk_cache *cache;
    dbk_cached_doc *cd;
    struct counter cnt;
} env;

static dbk_cache *open_cache(bool redis, int negative_ttl_ms)
{
    static char prefix[64];
    static int opened; /* each cache its own key space: no entry crosses runs */
    snprintf(prefix, sizeof prefix, "dbkt:cdoc:%d:%ld:%d:", (int)getpid(), (long)time(NULL),
             ++opened);
    dbk_cache_opts o = {0};
    o.url = redis ? dbkt_redis_url() : "memory:";
    o.key_prefix = prefix;
    o.negative_ttl_ms = negative_ttl_ms;
    dbk_cache *c = NULL;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    return c;
}

/* A pool of 4 on `url`, the collection (created empty), a cache and the
 * cached handle; the observer counts on the pool's executor. */
static void env_open(env *e, const char *url, bool redis, int negative_ttl_ms)
{
    memset(e, 0, sizeof *e);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool_opts po = {.max_size = 4};
    DBKT_OK(dbk_pool_open(cfg, &po, &e->pool, &err), &err);
    dbk_config_free(cfg);
    DBKT_OK(dbk_doc_coll_open(dbk_pool_db(e->pool), &items, &e->coll, &err), &err);
    DBKT_OK(dbk_doc_coll_drop(e->coll, &err), &err);
    DBKT_OK(dbk_doc_coll_ensure(e->coll, &err), &err);
    e->cache = open_cache(redis, negative_ttl_ms);
    DBKT_OK(dbk_cached_doc_new(e->cache, e->coll, NULL, &e->cd, &err), &err);
    dbk_db_set_observer(dbk_pool_db(e->pool), on_query, &e->cnt);
}

static void env_close(env *e)
{
    dbk_db_set_observer(dbk_pool_db(e->pool), NULL, NULL);
    dbk_cached_doc_free(e->cd);
    dbk_cache_close(e->cache);
    dbk_doc_coll_close(e->coll);
    dbk_pool_close(e->pool, 5000);
}

/* SQLite and PostgreSQL, each with the memory cache and Redis. */
static void each(const char *name, void (*fn)(const char *url, bool redis))
{
    char *sq = dbkt_sqlite_url(name);
    fn(sq, false);
    fn(sq, true);
    free(sq);
    char *pg = dbkt_pg_fresh_db(name);
    fn(pg, false);
    fn(pg, true);
    free(pg);
}

static int64_t n_of(const dbk_doc *d)
{
    int64_t v = -1;
    dbk_error err;
    DBKT_OK(dbk_doc_get_int64(d, "n", &v, &err), &err);
    return v;
}

static void create_item(env *e, const char *id, int64_t n)
{
    char json[128];
    snprintf(json, sizeof json, "{\"_id\":\"%s\",\"name\":\"item\",\"n\":%lld}", id, (long long)n);
    dbk_error err;
    DBKT_OK(dbk_cached_doc_create(e->cd, json, strlen(json), NULL, &err), &err);
}

/* ---- a hit after the first read ---- */

static void hits(const char *url, bool redis)
{
    env e;
    env_open(&e, url, redis, 60000);
    dbk_error err;
    dbk_doc *d = NULL;
    /* "not found" is cached (negative_ttl_ms), then a create drops it */
    DBKT_RC(DBK_ENOT_FOUND, dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err));
    DBKT_RC(DBK_ENOT_FOUND, dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err));
    assert_int_equal(atomic_load(&e.cnt.selects), 1);
    create_item(&e, "a1", 7);
    DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err), &err);
    assert_int_equal(n_of(d), 7);
    dbk_doc_free(d);
    assert_int_equal(atomic_load(&e.cnt.selects), 2);
    for (int i = 0; i < 20; i++) {
        DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err), &err);
        assert_int_equal(n_of(d), 7);
        assert_string_equal(dbk_doc_id(d), "a1");
        dbk_doc_free(d);
    }
    assert_int_equal(atomic_load(&e.cnt.selects), 2); /* 20 hits, no statement */
    /* the cached text is the document's JSON, the same the collection gives */
    dbk_doc *plain = NULL;
    DBKT_OK(dbk_doc_find_by_id(e.coll, "a1", &plain, &err), &err);
    DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err), &err);
    char *a = NULL, *b = NULL;
    DBKT_OK(dbk_doc_to_json(plain, &a, &err), &err);
    DBKT_OK(dbk_doc_to_json(d, &b, &err), &err);
    assert_string_equal(a, b);
    dbk_free(a);
    dbk_free(b);
    dbk_doc_free(plain);
    dbk_doc_free(d);
    /* an update through the handle: the next read loads once, then hits */
    uint64_t v0 = 0, v1 = 0;
    DBKT_OK(dbk_cached_doc_list_version(e.cd, &v0, &err), &err);
    DBKT_OK(dbk_cached_doc_find_by_id_and_update(e.cd, "a1", "{\"$inc\":{\"n\":1}}", NULL, &err),
            &err);
    DBKT_OK(dbk_cached_doc_list_version(e.cd, &v1, &err), &err);
    assert_true(v1 > v0);
    int before = atomic_load(&e.cnt.selects);
    for (int i = 0; i < 5; i++) {
        DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "a1", &d, &err), &err);
        assert_int_equal(n_of(d), 8);
        dbk_doc_free(d);
    }
    assert_int_equal(atomic_load(&e.cnt.selects), before + 1);
    /* bad ids are the collection's answer, not the cache's */
    DBKT_RC(DBK_EINVALID, dbk_cached_doc_find_by_id(e.cd, "", &d, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cached_doc_find_by_id(e.cd, NULL, &d, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cached_doc_new(NULL, e.coll, NULL, &(dbk_cached_doc *){NULL}, &err));
    env_close(&e);
}

static void cache_doc_hit_after_first_read(void **state)
{
    (void)state;
    each("cache_doc_hits", hits);
}

/* ---- no stale read: reader threads and a writer ---- */

#define READERS 4
#define VERSIONS 40

struct stale {
    env *e;
    atomic_llong committed; /* the last n whose update has returned */
    atomic_int deleting;    /* the delete has been called */
    atomic_int deleted;     /* the delete has returned */
    atomic_int done;
    atomic_int stale_reads, reads, errors;
    char last_error[256];
};

static void *reader(void *arg)
{
    struct stale *s = arg;
    int64_t end = dbkt_mono_ms() + 60000;
    while (!atomic_load(&s->done) && dbkt_mono_ms() < end) {
        /* what must be visible is read BEFORE the read starts */
        int64_t floor = atomic_load(&s->committed);
        int gone = atomic_load(&s->deleted);
        dbk_doc *d = NULL;
        dbk_error err;
        dbk_rc rc = dbk_cached_doc_find_by_id(s->e->cd, "s1", &d, &err);
        atomic_fetch_add(&s->reads, 1);
        if (rc == DBK_OK) {
            int64_t v = -1;
            dbk_doc_get_int64(d, "n", &v, NULL);
            if (v < floor || gone)
                atomic_fetch_add(&s->stale_reads, 1);
            dbk_doc_free(d);
        } else if (rc != DBK_ENOT_FOUND || !atomic_load(&s->deleting)) {
            /* not found only once the delete has begun */
            if (atomic_fetch_add(&s->errors, 1) == 0)
                snprintf(s->last_error, sizeof s->last_error, "%s: %.200s", dbk_rc_name(rc),
                         err.message);
        }
    }
    return NULL;
}

static void no_stale(const char *url, bool redis)
{
    env e;
    env_open(&e, url, redis, 60000);
    create_item(&e, "s1", 0);
    struct stale s;
    memset(&s, 0, sizeof s);
    s.e = &e;
    pthread_t t[READERS];
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, reader, &s), 0);
    dbk_error err;
    for (int v = 1; v <= VERSIONS; v++) {
        char upd[64];
        snprintf(upd, sizeof upd, "{\"$set\":{\"n\":%d}}", v);
        DBKT_OK(dbk_cached_doc_find_by_id_and_update(e.cd, "s1", upd, NULL, &err), &err);
        atomic_store(&s.committed, v);
        usleep(2000); /* let the readers cache this version */
    }
    dbk_doc *gone = NULL;
    atomic_store(&s.deleting, 1);
    DBKT_OK(dbk_cached_doc_find_by_id_and_delete(e.cd, "s1", &gone, &err), &err);
    assert_int_equal(n_of(gone), VERSIONS);
    dbk_doc_free(gone);
    atomic_store(&s.deleted, 1);
    usleep(50000);
    atomic_store(&s.done, 1);
    for (int i = 0; i < READERS; i++)
        pthread_join(t[i], NULL);
    if (atomic_load(&s.errors))
        fail_msg("%d reader errors, last: %s", atomic_load(&s.errors), s.last_error);
    assert_int_equal(atomic_load(&s.stale_reads), 0);
    assert_true(atomic_load(&s.reads) > VERSIONS);
    /* and the cache did serve: far fewer statements than reads */
    assert_true(atomic_load(&e.cnt.selects) < atomic_load(&s.reads));
    dbk_doc *d = NULL;
    DBKT_RC(DBK_ENOT_FOUND, dbk_cached_doc_find_by_id(e.cd, "s1", &d, &err));
    env_close(&e);
}

static void cache_doc_no_stale_read_after_update_and_delete(void **state)
{
    (void)state;
    each("cache_doc_stale", no_stale);
}

/* ---- single flight ---- */

#define HERD 12

struct herd {
    env *e;
    pthread_barrier_t *b;
    atomic_int ok;
};

static void *herd_thread(void *arg)
{
    struct herd *h = arg;
    pthread_barrier_wait(h->b);
    dbk_doc *d = NULL;
    dbk_error err;
    if (dbk_cached_doc_find_by_id(h->e->cd, "h1", &d, &err) == DBK_OK && n_of(d) == 42)
        atomic_fetch_add(&h->ok, 1);
    dbk_doc_free(d);
    return NULL;
}

static void herd(const char *url, bool redis)
{
    env e;
    env_open(&e, url, redis, 0);
    create_item(&e, "h1", 42);
    atomic_store(&e.cnt.selects, 0);
    e.cnt.hold_ms = 300; /* the first load is slow: every thread misses meanwhile */
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, HERD);
    struct herd h = {&e, &b, 0};
    pthread_t t[HERD];
    for (int i = 0; i < HERD; i++)
        assert_int_equal(pthread_create(&t[i], NULL, herd_thread, &h), 0);
    for (int i = 0; i < HERD; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&b);
    assert_int_equal(atomic_load(&h.ok), HERD);
    assert_int_equal(atomic_load(&e.cnt.selects), 1); /* one load for twelve misses */
    env_close(&e);
}

static void cache_doc_single_flight(void **state)
{
    (void)state;
    each("cache_doc_herd", herd);
}

/* ---- invalidation after the caller's commit ---- */

struct txw {
    env *e;
    dbk_rc ret;
    int64_t seen_inside_cached, seen_inside_tx;
};

static dbk_rc tx_update(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct txw *w = ctx;
    dbk_doc_coll *tc = NULL;
    dbk_cached_doc *tcd = NULL;
    dbk_rc rc = dbk_doc_coll_open(tx, &items, &tc, err);
    if (rc == DBK_OK)
        rc = dbk_cached_doc_new(w->e->cache, tc, NULL, &tcd, err);
    if (rc == DBK_OK)
        rc = dbk_cached_doc_find_by_id_and_update(tcd, "t1", "{\"$set\":{\"n\":2}}", NULL, err);
    dbk_doc *d = NULL;
    /* inside: the transaction reads its own write, around the cache */
    if (rc == DBK_OK && (rc = dbk_cached_doc_find_by_id(tcd, "t1", &d, err)) == DBK_OK) {
        w->seen_inside_tx = n_of(d);
        dbk_doc_free(d);
    }
    /* outside readers still get the committed document from the cache;
     * on SQLite the pool's other connections wait on the write lock, so
     * this is a cache hit or nothing */
    if (rc == DBK_OK && (rc = dbk_cached_doc_find_by_id(w->e->cd, "t1", &d, err)) == DBK_OK) {
        w->seen_inside_cached = n_of(d);
        dbk_doc_free(d);
    }
    dbk_cached_doc_free(tcd);
    dbk_doc_coll_close(tc);
    return rc != DBK_OK ? rc : w->ret;
}

static void tx_commit(const char *url, bool redis)
{
    env e;
    env_open(&e, url, redis, 0);
    dbk_error err;
    create_item(&e, "t1", 1);
    dbk_doc *d = NULL;
    DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "t1", &d, &err), &err); /* cached: n 1 */
    dbk_doc_free(d);
    int loads = atomic_load(&e.cnt.selects);

    struct txw w = {&e, DBK_EINVALID, 0, 0};
    DBKT_RC(DBK_EINVALID, dbk_tx_run(dbk_pool_db(e.pool), tx_update, &w, NULL, &err));
    assert_int_equal(w.seen_inside_tx, 2);
    assert_int_equal(w.seen_inside_cached, 1);
    /* rolled back: the entry was not dropped, and it is right */
    DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "t1", &d, &err), &err);
    assert_int_equal(n_of(d), 1);
    dbk_doc_free(d);
    /* one statement inside the transaction (its own read), none outside */
    assert_int_equal(atomic_load(&e.cnt.selects), loads + 1 + 1);
    loads = atomic_load(&e.cnt.selects);

    w.ret = DBK_OK;
    DBKT_OK(dbk_tx_run(dbk_pool_db(e.pool), tx_update, &w, NULL, &err), &err);
    assert_int_equal(w.seen_inside_cached, 1); /* before COMMIT: the old one */
    DBKT_OK(dbk_cached_doc_find_by_id(e.cd, "t1", &d, &err), &err);
    assert_int_equal(n_of(d), 2); /* after COMMIT: dropped and reloaded */
    dbk_doc_free(d);
    assert_true(atomic_load(&e.cnt.selects) > loads + 2);
    env_close(&e);
}

static void cache_doc_invalidates_after_commit(void **state)
{
    (void)state;
    each("cache_doc_tx", tx_commit);
}

/* ---- MongoDB: no executor, the key goes when the server acknowledged ---- */

static uint64_t loads(dbk_cache *c)
{
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    return st.loads;
}

static void cache_doc_mongodb_hits_and_invalidation(void **state)
{
    (void)state;
    const char *base = getenv("DBKIT_TEST_MONGO_URL");
    if (!base || !*base)
        dbkt_skip(1, "DBKIT_TEST_MONGO_URL is not set (scripts/testenv.sh starts the server)");
    if (!dbk_doc_mongo_available())
        dbkt_skip(1, "this dbkit was built without libmongoc");
    char url[512];
    snprintf(url, sizeof url, "%s/dbkt_cache_doc", base);
    for (int redis = 0; redis < 2; redis++) {
        dbk_error err;
        dbk_doc_mongo *m = NULL;
        dbk_doc_coll *coll = NULL;
        DBKT_OK(dbk_doc_mongo_open(url, NULL, &m, &err), &err);
        DBKT_OK(dbk_doc_coll_open_mongo(m, &items, &coll, &err), &err);
        DBKT_OK(dbk_doc_coll_drop(coll, &err), &err);
        dbk_cache *c = open_cache(redis, 60000);
        dbk_cached_doc *cd = NULL;
        DBKT_OK(dbk_cached_doc_new(c, coll, NULL, &cd, &err), &err);
        assert_ptr_equal(dbk_cached_doc_coll(cd), coll);
        dbk_doc *d = NULL;
        DBKT_RC(DBK_ENOT_FOUND, dbk_cached_doc_find_by_id(cd, "m1", &d, &err));
        const char *j = "{\"_id\":\"m1\",\"name\":\"item\",\"n\":1}";
        DBKT_OK(dbk_cached_doc_create(cd, j, strlen(j), NULL, &err), &err);
        for (int i = 0; i < 5; i++) {
            DBKT_OK(dbk_cached_doc_find_by_id(cd, "m1", &d, &err), &err);
            assert_int_equal(n_of(d), 1);
            dbk_doc_free(d);
        }
        assert_int_equal(loads(c), 2); /* the cached not-found, then one load */
        DBKT_OK(dbk_cached_doc_find_by_id_and_update(cd, "m1", "{\"$inc\":{\"n\":1}}", NULL, &err),
                &err);
        DBKT_OK(dbk_cached_doc_find_by_id(cd, "m1", &d, &err), &err);
        assert_int_equal(n_of(d), 2);
        dbk_doc_free(d);
        assert_int_equal(loads(c), 3);
        DBKT_OK(dbk_cached_doc_find_by_id_and_delete(cd, "m1", NULL, &err), &err);
        DBKT_RC(DBK_ENOT_FOUND, dbk_cached_doc_find_by_id(cd, "m1", &d, &err));
        dbk_cached_doc_free(cd);
        dbk_cache_close(c);
        dbk_doc_coll_drop(coll, &err);
        dbk_doc_coll_close(coll);
        dbk_doc_mongo_close(m);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cache_doc_hit_after_first_read),
        cmocka_unit_test(cache_doc_no_stale_read_after_update_and_delete),
        cmocka_unit_test(cache_doc_single_flight),
        cmocka_unit_test(cache_doc_invalidates_after_commit),
        cmocka_unit_test(cache_doc_mongodb_hits_and_invalidation),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
