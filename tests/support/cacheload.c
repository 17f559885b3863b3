/*
 * The cache workload of the Redis topology tests (see cacheload.h): one
 * copy of the readers, the writers and their bookkeeping, so the Sentinel
 * and Cluster tests differ only in the topology and the disruption.
 */
#include "cacheload.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

struct vrow {
    int64_t id;
    int64_t version;
    const char *name;
};

static const dbk_field vrow_fields[] = {
    DBK_FIELD(struct vrow, id, "id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(struct vrow, version, "version", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct vrow, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity vrow_entity = DBK_ENTITY_PLAIN("vrows", struct vrow, vrow_fields);

struct worker {
    struct dbkt_cacheload *l;
    int index;
};

struct dbkt_cacheload {
    char *url;
    dbk_cached_repo *r;
    atomic_llong published[DBKT_LOAD_WRITERS + 1];
    atomic_bool stop;
    atomic_int stale, reads, errors, writes;
    pthread_mutex_t mu;
    char last_error[256];
    pthread_t tid[DBKT_LOAD_READERS + DBKT_LOAD_WRITERS];
    struct worker w[DBKT_LOAD_READERS + DBKT_LOAD_WRITERS];
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void note_error(struct dbkt_cacheload *l, const char *what, const dbk_error *err)
{
    atomic_fetch_add(&l->errors, 1);
    pthread_mutex_lock(&l->mu);
    snprintf(l->last_error, sizeof l->last_error, "%s: %.200s", what, err->message);
    pthread_mutex_unlock(&l->mu);
}

static dbk_pool *worker_pool(const char *url)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool_opts o = {.max_size = 2};
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, &o, &pool, &err), &err);
    dbk_config_free(cfg);
    return pool;
}

struct vwrite {
    dbk_cached_repo *r;
    int64_t id, version;
};

static dbk_rc vwrite_tx(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct vwrite *w = ctx;
    char name[32];
    snprintf(name, sizeof name, "v%lld", (long long)w->version);
    struct vrow in = {w->id, w->version, name};
    const char *fields[] = {"version", "name"};
    return dbk_cached_repo_update(w->r, tx, dbk_int64(w->id), &in, fields, 2, NULL, NULL, err);
}

static void *writer(void *arg)
{
    struct worker *w = arg;
    struct dbkt_cacheload *l = w->l;
    dbk_pool *pool = worker_pool(l->url);
    int64_t id = w->index + 1;
    for (int64_t v = 2; v < 100000 && !atomic_load(&l->stop); v++) {
        struct vwrite x = {l->r, id, v};
        dbk_error err;
        if (dbk_tx_run(dbk_pool_db(pool), vwrite_tx, &x, NULL, &err) != DBK_OK)
            note_error(l, "write", &err);
        atomic_store(&l->published[id], v);
        atomic_fetch_add(&l->writes, 1);
        sleep_ms(20);
    }
    dbk_pool_close(pool, 1000);
    return NULL;
}

static void *reader(void *arg)
{
    struct worker *w = arg;
    struct dbkt_cacheload *l = w->l;
    dbk_pool *pool = worker_pool(l->url);
    dbk_arena *a = dbk_arena_new(0);
    for (int i = 0; i < 2000000 && !atomic_load(&l->stop); i++) {
        int64_t id = 1 + (i + w->index) % DBKT_LOAD_WRITERS;
        int64_t floor = atomic_load(&l->published[id]);
        struct vrow row;
        dbk_error err;
        dbk_rc rc =
            dbk_cached_repo_find_by_id(l->r, dbk_pool_db(pool), dbk_int64(id), &row, a, &err);
        if (rc != DBK_OK)
            note_error(l, "read", &err);
        else if (row.version < floor)
            atomic_fetch_add(&l->stale, 1);
        atomic_fetch_add(&l->reads, 1);
        dbk_arena_reset(a);
        sleep_ms(1);
    }
    dbk_arena_free(a);
    dbk_pool_close(pool, 1000);
    return NULL;
}

dbkt_cacheload *dbkt_cacheload_start(const char *url, dbk_cache *cache)
{
    dbk_conn *conn = dbkt_open(url);
    dbkt_exec(dbk_conn_db(conn), "CREATE TABLE vrows (id BIGINT PRIMARY KEY, version BIGINT NOT "
                                 "NULL, name TEXT NOT NULL); "
                                 "INSERT INTO vrows VALUES (1, 1, 'v1'), (2, 1, 'v1')");
    dbk_conn_close(conn);
    struct dbkt_cacheload *l = calloc(1, sizeof *l);
    assert_non_null(l);
    l->url = strdup(url);
    assert_non_null(l->url);
    pthread_mutex_init(&l->mu, NULL);
    dbk_error err;
    DBKT_OK(dbk_cached_repo_new(cache, &vrow_entity, NULL, &l->r, &err), &err);
    for (int i = 1; i <= DBKT_LOAD_WRITERS; i++)
        atomic_store(&l->published[i], 1);
    for (int i = 0; i < DBKT_LOAD_READERS + DBKT_LOAD_WRITERS; i++) {
        l->w[i].l = l;
        l->w[i].index = i < DBKT_LOAD_WRITERS ? i : i - DBKT_LOAD_WRITERS;
        assert_int_equal(
            pthread_create(&l->tid[i], NULL, i < DBKT_LOAD_WRITERS ? writer : reader, &l->w[i]), 0);
    }
    return l;
}

void dbkt_cacheload_stop(dbkt_cacheload *l, dbkt_cacheload_result *out)
{
    memset(out, 0, sizeof *out);
    atomic_store(&l->stop, true);
    for (int i = 0; i < DBKT_LOAD_READERS + DBKT_LOAD_WRITERS; i++)
        pthread_join(l->tid[i], NULL);
    /* after every write returned, a read sees the last version */
    dbk_pool *pool = worker_pool(l->url);
    dbk_arena *a = dbk_arena_new(0);
    for (int64_t id = 1; id <= DBKT_LOAD_WRITERS; id++) {
        struct vrow row;
        dbk_error err;
        if (dbk_cached_repo_find_by_id(l->r, dbk_pool_db(pool), dbk_int64(id), &row, a, &err) !=
            DBK_OK)
            note_error(l, "final read", &err);
        else
            out->stale_at_end += row.version != atomic_load(&l->published[id]);
        dbk_arena_reset(a);
    }
    dbk_arena_free(a);
    dbk_pool_close(pool, 1000);
    out->reads = atomic_load(&l->reads);
    out->writes = atomic_load(&l->writes);
    out->errors = atomic_load(&l->errors);
    out->stale = atomic_load(&l->stale);
    snprintf(out->last_error, sizeof out->last_error, "%s", l->last_error);
    dbk_cached_repo_free(l->r);
    pthread_mutex_destroy(&l->mu);
    free(l->url);
    free(l);
}

uint64_t dbkt_cache_hits(dbk_cache *c)
{
    dbk_cache_stats st;
    dbk_cache_get_stats(c, &st, NULL);
    return st.hits;
}

void dbkt_cache_get_many_check(dbk_cache *c)
{
    enum { N = 41 };
    char kb[N][24], vb[N][32];
    const void *keys[N];
    size_t kl[N], vl[N];
    void *vals[N];
    dbk_rc rcs[N];
    dbk_error err;
    for (int i = 0; i < N; i++) {
        kl[i] = (size_t)snprintf(kb[i], sizeof kb[i], "many:%d", i);
        keys[i] = kb[i];
        snprintf(vb[i], sizeof vb[i], "value of %d", i);
        if (i < N - 1) /* the last one is never stored */
            DBKT_OK(dbk_cache_set(c, kb[i], kl[i], vb[i], strlen(vb[i]), 600000, &err), &err);
    }
    DBKT_OK(dbk_cache_get_many(c, N, keys, kl, vals, vl, rcs, &err), &err);
    for (int i = 0; i < N; i++) {
        if (i == N - 1) {
            assert_int_equal(rcs[i], DBK_ENOT_FOUND);
            assert_null(vals[i]);
            continue;
        }
        assert_int_equal(rcs[i], DBK_OK);
        assert_int_equal(vl[i], strlen(vb[i]));
        assert_memory_equal(vals[i], vb[i], vl[i]);
        dbk_free(vals[i]);
    }
}

/* dbk_cached_repo_find_by_ids through a topology: the cold ids in one
 * statement and stored (the second call runs none), an invalidated id
 * loaded again alone, and a key invalidated while the batch statement
 * runs not stored by the batch. */
struct ids_obs {
    atomic_int queries;
    atomic_int armed;
    dbk_db *writer;
    dbk_cache *cache;
    int64_t id;
};

static void ids_obs_fn(void *ctx, const dbk_query_event *ev)
{
    struct ids_obs *o = ctx;
    atomic_fetch_add(&o->queries, 1);
    if (!atomic_exchange(&o->armed, 0) || ev->rc != DBK_OK)
        return;
    /* a writer commits and invalidates, as after COMMIT */
    char sql[96], key[48];
    snprintf(sql, sizeof sql, "UPDATE vrows SET name = 'raced' WHERE id = %lld", (long long)o->id);
    dbkt_exec(o->writer, sql);
    int kl = snprintf(key, sizeof key, "vrows:id:%lld", (long long)o->id);
    dbk_error err;
    DBKT_OK(dbk_cache_delete(o->cache, key, (size_t)kl, &err), &err);
}

/* One call for ids 1..40 and two missing ones; want_queries < 0: at most
 * one. Returns the statements it ran. */
static int ids_call(dbk_cached_repo *r, dbk_db *db, struct ids_obs *o, int want_queries,
                    const char *name7)
{
    enum { N = 42 };
    dbk_value ids[N];
    struct vrow rows[N];
    void *outs[N];
    dbk_rc rcs[N];
    for (int i = 0; i < N; i++) {
        ids[i] = dbk_int64(i < 40 ? i + 1 : 1000 + i);
        outs[i] = &rows[i];
    }
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    atomic_store(&o->queries, 0);
    DBKT_OK(dbk_cached_repo_find_by_ids(r, db, N, ids, outs, rcs, a, &err), &err);
    int q = atomic_load(&o->queries);
    if (want_queries >= 0)
        assert_int_equal(q, want_queries);
    else
        assert_true(q <= 1);
    for (int i = 0; i < N; i++) {
        if (i >= 40) {
            assert_int_equal(rcs[i], DBK_ENOT_FOUND);
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, "row %d", i + 1);
        assert_int_equal(rcs[i], DBK_OK);
        assert_int_equal(rows[i].id, i + 1);
        assert_string_equal(rows[i].name, i == 6 ? name7 : name);
    }
    dbk_arena_free(a);
    return q;
}

void dbkt_cache_find_by_ids_check(dbk_cache *c)
{
    char *url = dbkt_sqlite_url("cacheload_ids");
    dbk_conn *conn = dbkt_open(url), *wconn = dbkt_open(url);
    free(url);
    dbk_db *db = dbk_conn_db(conn);
    dbkt_exec(db, "DROP TABLE IF EXISTS vrows; CREATE TABLE vrows (id INTEGER PRIMARY KEY, "
                  "version INTEGER NOT NULL DEFAULT 0, name TEXT NOT NULL); "
                  "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 40) "
                  "INSERT INTO vrows (id, name) SELECT i, 'row ' || i FROM g");
    struct ids_obs o = {.writer = dbk_conn_db(wconn), .cache = c, .id = 7};
    dbk_db_set_observer(db, ids_obs_fn, &o);
    dbk_cached_repo *r;
    dbk_error err;
    DBKT_OK(dbk_cached_repo_new(c, &vrow_entity, NULL, &r, &err), &err);
    /* a fresh node epoch may refuse the first stores: until a call runs
     * no statement, at most 3 */
    ids_call(r, db, &o, 1, "row 7");
    int q = 1;
    for (int pass = 0; pass < 3 && q != 0; pass++)
        q = ids_call(r, db, &o, -1, "row 7");
    assert_int_equal(q, 0);
    /* an invalidated id: loaded alone */
    char key[48];
    int kl = snprintf(key, sizeof key, "vrows:id:%d", 12);
    DBKT_OK(dbk_cache_delete(c, key, (size_t)kl, &err), &err);
    kl = snprintf(key, sizeof key, "vrows:id:%d", 7);
    DBKT_OK(dbk_cache_delete(c, key, (size_t)kl, &err), &err);
    atomic_store(&o.armed, 1); /* 7 is changed and invalidated during the statement */
    ids_call(r, db, &o, 1, "row 7");
    ids_call(r, db, &o, 1, "raced"); /* 7 was not stored by the batch: read again */
    ids_call(r, db, &o, 0, "raced");
    dbk_cached_repo_free(r);
    dbk_conn_close(wconn);
    dbk_conn_close(conn);
}

void dbkt_cache_get_many_check_url(const char *url, const char *prefix)
{
    dbk_cache_opts o = {0};
    o.url = url;
    o.key_prefix = prefix;
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = 2000;
    o.negative_ttl_ms = 60000; /* dbkt_cache_find_by_ids_check counts on it */
    dbk_cache *c;
    dbk_error err;
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbkt_cache_get_many_check(c);
    dbkt_cache_find_by_ids_check(c);
    dbk_cache_close(c);
}
