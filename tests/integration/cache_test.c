/*
 * Cache tests against real backends: the in-process LRU, the team's
 * redis-server (DBKIT_TEST_REDIS_URL) and, for kill/restart and AUTH, a
 * redis-server this program starts itself on a free port and kills by PID.
 * Database-backed tests run on SQLite and PostgreSQL.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tcpproxy.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------ */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A key prefix of our own on the shared Redis, so parallel tests never meet. */
static const char *test_prefix(void)
{
    static char p[64];
    snprintf(p, sizeof p, "dbkt:%d:%lld:", (int)getpid(), (long long)now_ms());
    return p;
}

static dbk_cache *open_cache(const char *url, dbk_cache_opts *o)
{
    dbk_cache_opts def;
    memset(&def, 0, sizeof def);
    if (!o)
        o = &def;
    o->url = url;
    if (!o->key_prefix)
        o->key_prefix = test_prefix();
    dbk_cache *c = NULL;
    dbk_error err;
    DBKT_OK(dbk_cache_open(o, &c, &err), &err);
    return c;
}

static dbk_cache *open_mem(dbk_cache_opts *o) { return open_cache("memory:", o); }
static dbk_cache *open_redis(dbk_cache_opts *o) { return open_cache(dbkt_redis_url(), o); }

static void want_value(dbk_cache *c, const char *key, const char *want)
{
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    DBKT_OK(dbk_cache_get(c, key, strlen(key), &v, &n, &err), &err);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(v, want, n);
    dbk_free(v);
}

static void want_miss(dbk_cache *c, const char *key)
{
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get(c, key, strlen(key), &v, &n, &err));
    assert_null(v);
}

static void put(dbk_cache *c, const char *key, const char *val, int64_t ttl)
{
    dbk_error err;
    DBKT_OK(dbk_cache_set(c, key, strlen(key), val, strlen(val), ttl, &err), &err);
}

/* A redis-server of our own, for the tests that kill it. */
struct own_redis {
    pid_t pid;
    int port;
    char url[128];
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void redis_start(struct own_redis *r, const char *password)
{
    if (!r->port)
        r->port = free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *argv[16] = {"redis-server", "--port", port, "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--daemonize", "no",
                                "--loglevel", "warning", NULL, NULL, NULL};
        if (password) {
            argv[13] = "--requirepass";
            argv[14] = password;
        }
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
    snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d/0", r->port);
    /* wait (bounded) until it accepts connections */
    for (int i = 0; i < 100; i++) {
        struct timeval tv = {0, 100000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
        bool up = c && !c->err;
        redisFree(c);
        if (up)
            return;
        sleep_ms(50);
    }
    fail_msg("redis-server on port %d did not start", r->port);
}

static void redis_kill(struct own_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

/* How many times the server on `port` ran `cmd` (INFO commandstats). */
static long long redis_calls(int port, const char *cmd)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_true(rc && !rc->err);
    redisReply *rep = redisCommand(rc, "INFO commandstats");
    assert_true(rep && rep->type == REDIS_REPLY_STRING);
    char want[64];
    snprintf(want, sizeof want, "cmdstat_%s:calls=", cmd);
    const char *at = strstr(rep->str, want);
    long long n = at ? atoll(at + strlen(want)) : 0;
    freeReplyObject(rep);
    redisFree(rc);
    return n;
}


/* A loader that counts its runs and returns "<prefix><n>". */
struct loader {
    atomic_int runs;
    int sleep_ms;
    const char *value;
    bool not_found;
    void (*hook)(struct loader *l); /* runs in the middle of the load */
    dbk_cache *cache;
    const char *key;
    char current[64];               /* "database" row value */
    pthread_mutex_t *db_mu;
    dbk_db *db;
};

static dbk_rc test_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                        dbk_error *err)
{
    (void)key;
    (void)keylen;
    struct loader *l = ctx;
    atomic_fetch_add(&l->runs, 1);
    if (l->db) {
        /* one real query, so the count is a database count */
        pthread_mutex_lock(l->db_mu);
        int64_t x = 0;
        dbk_rc rc = dbk_db_query_int64(l->db, "SELECT 41 + 1", NULL, 0, &x, err);
        pthread_mutex_unlock(l->db_mu);
        if (rc != DBK_OK)
            return rc;
    }
    if (l->sleep_ms)
        sleep_ms(l->sleep_ms);
    if (l->not_found)
        return DBK_ENOT_FOUND;
    const char *src = l->value ? l->value : l->current;
    size_t n = strlen(src);
    char *copy = malloc(n + 1);
    memcpy(copy, src, n + 1);
    if (l->hook)
        l->hook(l); /* the "writer" commits and invalidates while we hold the old row */
    *val = copy;
    *vallen = n;
    return DBK_OK;
}

static char *load_str(dbk_cache *c, const char *key, struct loader *l, int64_t ttl)
{
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    DBKT_OK(dbk_cache_get_or_load(c, key, strlen(key), test_load, l, ttl, &v, &n, &err), &err);
    char *s = malloc(n + 1);
    memcpy(s, v, n);
    s[n] = 0;
    dbk_free(v);
    return s;
}

/* ---- plain operations --------------------------------------------------- */

static void hit_and_miss(dbk_cache *c)
{
    want_miss(c, "user:1");
    put(c, "user:1", "alice", 60000);
    want_value(c, "user:1", "alice");
    dbk_error err;
    DBKT_OK(dbk_cache_delete(c, "user:1", 6, &err), &err);
    want_miss(c, "user:1");

    struct loader l = {0};
    l.value = "bob";
    char *s = load_str(c, "user:2", &l, 60000);
    assert_string_equal(s, "bob");
    free(s);
    s = load_str(c, "user:2", &l, 60000);
    assert_string_equal(s, "bob");
    free(s);
    assert_int_equal(atomic_load(&l.runs), 1);
    dbk_cache_stats st;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_true(st.hits >= 2);
    assert_true(st.misses >= 2);
    assert_int_equal(st.loads, 1);
    assert_int_equal(st.breaker, DBK_CACHE_BREAKER_CLOSED);
}

static void cache_hit_and_miss(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    assert_string_equal(dbk_cache_backend(m), "memory");
    hit_and_miss(m);
    dbk_cache_close(m);
    dbk_cache *r = open_redis(NULL);
    assert_string_equal(dbk_cache_backend(r), "redis");
    hit_and_miss(r);
    dbk_cache_close(r);
}

static void ttl_expiry(dbk_cache *c)
{
    put(c, "short", "x", 150);
    put(c, "long", "y", 60000);
    want_value(c, "short", "x");
    sleep_ms(400);
    want_miss(c, "short");
    want_value(c, "long", "y");
}

static void cache_ttl_expiry(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    ttl_expiry(m);
    dbk_cache_close(m);
    dbk_cache *r = open_redis(NULL);
    ttl_expiry(r);
    dbk_cache_close(r);
}

static void binary_keys(dbk_cache *c)
{
    const unsigned char k1[] = {'u', 0, '\r', '\n', 0xff, ' ', '*'};
    const unsigned char k2[] = {'u', 0, '\r', '\n', 0xff, ' ', '?'};
    const unsigned char v1[] = {0, 1, 2, '\r', '\n', 0, 0xfe};
    dbk_error err;
    DBKT_OK(dbk_cache_set(c, k1, sizeof k1, v1, sizeof v1, 60000, &err), &err);
    void *v = NULL;
    size_t n = 0;
    DBKT_OK(dbk_cache_get(c, k1, sizeof k1, &v, &n, &err), &err);
    assert_int_equal(n, sizeof v1);
    assert_memory_equal(v, v1, n);
    dbk_free(v);
    DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get(c, k2, sizeof k2, &v, &n, &err));
    /* a prefix of the key is another key */
    DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get(c, k1, 2, &v, &n, &err));
    /* an empty value is a value */
    DBKT_OK(dbk_cache_set(c, k2, sizeof k2, "", 0, 60000, &err), &err);
    DBKT_OK(dbk_cache_get(c, k2, sizeof k2, &v, &n, &err), &err);
    assert_int_equal(n, 0);
    assert_non_null(v);
    dbk_free(v);
}

static void cache_binary_keys(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    binary_keys(m);
    dbk_cache_close(m);
    dbk_cache *r = open_redis(NULL);
    binary_keys(r);
    dbk_cache_close(r);
}

static void cache_lru_entries_and_eviction_order(void **state)
{
    (void)state;
    dbk_cache_opts o = {0};
    o.shards = 1;
    o.max_entries = 3;
    dbk_cache *c = open_mem(&o);
    put(c, "a", "1", 60000);
    put(c, "b", "2", 60000);
    put(c, "c", "3", 60000);
    want_value(c, "a", "1"); /* a becomes most recent: b is now the oldest */
    put(c, "d", "4", 60000);
    want_miss(c, "b");
    want_value(c, "a", "1");
    want_value(c, "c", "3");
    want_value(c, "d", "4");
    put(c, "e", "5", 60000); /* oldest now: a (c, d, a were read in that order) */
    want_miss(c, "a");
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.evictions, 2);
    dbk_cache_close(c);
}

static void cache_lru_bytes_bound(void **state)
{
    (void)state;
    dbk_cache_opts o = {0};
    o.shards = 1;
    o.max_bytes = 2500;
    dbk_cache *c = open_mem(&o);
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = 0;
    put(c, "k1", big, 60000);
    put(c, "k2", big, 60000);
    put(c, "k3", big, 60000);
    want_miss(c, "k1");
    want_value(c, "k2", big);
    want_value(c, "k3", big);
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_true(st.bytes <= 2500);
    assert_int_equal(st.entries, 2);
    /* a value larger than the whole budget is not cached, and evicts nothing */
    char huge[3001];
    memset(huge, 'y', 3000);
    huge[3000] = 0;
    put(c, "huge", huge, 60000);
    want_miss(c, "huge");
    want_value(c, "k3", big);
    dbk_cache_close(c);
}

static void namespaces(dbk_cache *c)
{
    uint64_t v0, v1, v2;
    dbk_error err;
    DBKT_OK(dbk_cache_ns_version(c, "users:list", &v0, &err), &err);
    assert_int_equal(v0, 0);
    char key[64];
    snprintf(key, sizeof key, "users:list:v%llu:page:1", (unsigned long long)v0);
    put(c, key, "[1,2,3]", 60000);
    DBKT_OK(dbk_cache_ns_bump(c, "users:list", &v1, &err), &err);
    DBKT_OK(dbk_cache_ns_version(c, "users:list", &v2, &err), &err);
    assert_int_equal(v1, 1);
    assert_int_equal(v2, 1);
    snprintf(key, sizeof key, "users:list:v%llu:page:1", (unsigned long long)v2);
    want_miss(c, key);
}

static void cache_namespace_version(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    namespaces(m);
    dbk_cache_close(m);
    dbk_cache *r = open_redis(NULL);
    namespaces(r);
    dbk_cache_close(r);
}

static void cache_negative_caching(void **state)
{
    (void)state;
    for (int b = 0; b < 2; b++) {
        dbk_cache_opts o = {0};
        o.negative_ttl_ms = 200;
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        struct loader l = {0};
        l.not_found = true;
        void *v;
        size_t n;
        dbk_error err;
        DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get_or_load(c, "nobody", 6, test_load, &l, 60000, &v, &n, &err));
        DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get_or_load(c, "nobody", 6, test_load, &l, 60000, &v, &n, &err));
        assert_int_equal(atomic_load(&l.runs), 1);
        sleep_ms(400);
        DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get_or_load(c, "nobody", 6, test_load, &l, 60000, &v, &n, &err));
        assert_int_equal(atomic_load(&l.runs), 2);
        dbk_cache_close(c);
    }
}

static void cache_misuse_and_url(void **state)
{
    (void)state;
    dbk_error err;
    dbk_cache *c = NULL;
    DBKT_RC(DBK_EMISUSE, dbk_cache_open(NULL, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_get(NULL, "k", 1, NULL, NULL, &err));
    dbk_cache_close(NULL);
    dbk_cache_opts o = {0};
    o.url = "redis://user:s3cretpw@127.0.0.1:notaport/0";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    o.url = "rediss://:s3cretpw@host/0";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    o.url = "redis://:s3cretpw@127.0.0.1:1/xyz";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    o.url = "redis://:s3cretpw@[::1]:6380/2";
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbk_cache_close(c);
    c = open_mem(NULL);
    void *v;
    size_t n;
    DBKT_RC(DBK_EMISUSE, dbk_cache_get(c, "", 0, &v, &n, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_set(c, "k", 1, "v", 1, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_get_or_load(c, "k", 1, NULL, NULL, 10, &v, &n, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_ns_bump(c, "", NULL, &err));
    dbk_cache_close(c);
}

/* ---- single-flight ------------------------------------------------------ */

#define NTHREADS 100

struct herd {
    dbk_cache *cache;
    struct loader *l;
    pthread_barrier_t *barrier;
    atomic_int ok;
};

static void *herd_thread(void *arg)
{
    struct herd *h = arg;
    pthread_barrier_wait(h->barrier);
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    dbk_rc rc = dbk_cache_get_or_load(h->cache, "hot", 3, test_load, h->l, 60000, &v, &n, &err);
    if (rc == DBK_OK && n == 5 && memcmp(v, "value", 5) == 0)
        atomic_fetch_add(&h->ok, 1);
    dbk_free(v);
    return NULL;
}

static void herd(dbk_cache *c, dbk_db *db, pthread_mutex_t *mu)
{
    struct loader l = {0};
    l.value = "value";
    l.sleep_ms = 100; /* a slow query: every thread misses while it runs */
    l.db = db;
    l.db_mu = mu;
    int query_count_before = 0;
    (void)query_count_before;
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, NTHREADS);
    struct herd h = {c, &l, &b, 0};
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, herd_thread, &h), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&b);
    assert_int_equal(atomic_load(&h.ok), NTHREADS);
    assert_int_equal(atomic_load(&l.runs), 1);
}

static atomic_int g_queries;
static void count_query(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    (void)ev;
    atomic_fetch_add(&g_queries, 1);
}

static void cache_single_flight_100_threads(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("cache_herd");
    dbk_conn *conn = dbkt_open(url);
    free(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_db_set_observer(db, count_query, NULL);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    for (int b = 0; b < 2; b++) {
        atomic_store(&g_queries, 0);
        dbk_cache *c = b ? open_redis(NULL) : open_mem(NULL);
        herd(c, db, &mu);
        assert_int_equal(atomic_load(&g_queries), 1); /* one database query */
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

/* ---- the stale-set race ------------------------------------------------- */

/* The writer, run while the reader holds the old row: commit a new row and
 * invalidate, as dbk_cache_invalidate_on_commit would right after COMMIT. */
static void writer_commits(struct loader *l)
{
    if (atomic_load(&l->runs) != 1)
        return;
    snprintf(l->current, sizeof l->current, "new");
    dbk_error err;
    DBKT_OK(dbk_cache_delete(l->cache, l->key, strlen(l->key), &err), &err);
}

static void stale_race(dbk_cache *c)
{
    struct loader l = {0};
    snprintf(l.current, sizeof l.current, "old");
    l.hook = writer_commits;
    l.cache = c;
    l.key = "user:7";
    char *s = load_str(c, "user:7", &l, 60000);
    assert_string_equal(s, "old"); /* the reader got what it read ... */
    free(s);
    want_miss(c, "user:7");      /* ... but did not store it */
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_true(st.stale_rejects >= 1);
    s = load_str(c, "user:7", &l, 60000);
    assert_string_equal(s, "new");
    free(s);
    s = load_str(c, "user:7", &l, 60000); /* and the fresh one is cached */
    assert_string_equal(s, "new");
    free(s);
    assert_int_equal(atomic_load(&l.runs), 2);
}

/* The same race with a real second thread: the reader's load blocks until a
 * writer thread has invalidated. */
struct race2 {
    dbk_cache *c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase; /* 1: reader loaded the old row; 2: writer invalidated */
    char row[16];
};

static dbk_rc race2_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                         dbk_error *err)
{
    (void)key;
    (void)keylen;
    (void)err;
    struct race2 *r = ctx;
    pthread_mutex_lock(&r->mu);
    char *copy = strdup(r->row);
    if (r->phase == 0) {
        r->phase = 1;
        pthread_cond_broadcast(&r->cv);
        int64_t end = now_ms() + 5000;
        while (r->phase != 2 && now_ms() < end) {
            pthread_mutex_unlock(&r->mu);
            sleep_ms(1);
            pthread_mutex_lock(&r->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    *val = copy;
    *vallen = strlen(copy);
    return DBK_OK;
}

static void *race2_reader(void *arg)
{
    struct race2 *r = arg;
    void *v;
    size_t n;
    dbk_error err;
    if (dbk_cache_get_or_load(r->c, "acct:1", 6, race2_load, r, 60000, &v, &n, &err) == DBK_OK)
        dbk_free(v);
    return NULL;
}

static void stale_race_threads(dbk_cache *c)
{
    struct race2 r;
    memset(&r, 0, sizeof r);
    r.c = c;
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    snprintf(r.row, sizeof r.row, "balance=10");
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, race2_reader, &r), 0);
    pthread_mutex_lock(&r.mu);
    int64_t end = now_ms() + 5000;
    while (r.phase != 1 && now_ms() < end) {
        pthread_mutex_unlock(&r.mu);
        sleep_ms(1);
        pthread_mutex_lock(&r.mu);
    }
    assert_int_equal(r.phase, 1);
    snprintf(r.row, sizeof r.row, "balance=20"); /* commit */
    pthread_mutex_unlock(&r.mu);
    dbk_error err;
    DBKT_OK(dbk_cache_delete(c, "acct:1", 6, &err), &err); /* after commit */
    pthread_mutex_lock(&r.mu);
    r.phase = 2;
    pthread_mutex_unlock(&r.mu);
    pthread_join(t, NULL);
    want_miss(c, "acct:1"); /* the old balance was not stored */
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
}

static void cache_stale_set_race(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    stale_race(m);
    stale_race_threads(m);
    dbk_cache_close(m);
    dbk_cache *r = open_redis(NULL);
    stale_race(r);
    stale_race_threads(r);
    dbk_cache_close(r);
}

/* ---- invalidation detaches single-flight -------------------------------- */

/* A "database" row behind a gate: the first load reads the row, says so,
 * and blocks until the test releases it; later loads read and return at
 * once. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool first_read; /* the first load has read the row */
    bool release;    /* the first load may return */
    int runs;
    char row[32];
};

static void gate_init(struct gate *g, const char *row)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    snprintf(g->row, sizeof g->row, "%s", row);
}

static void gate_destroy(struct gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

/* Waits (bounded) until pred(g) holds under g->mu. */
static bool gate_wait(struct gate *g, bool (*pred)(struct gate *), int ms)
{
    int64_t end = now_ms() + ms;
    pthread_mutex_lock(&g->mu);
    while (!pred(g) && now_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    bool ok = pred(g);
    pthread_mutex_unlock(&g->mu);
    return ok;
}

static bool gate_first_read(struct gate *g) { return g->first_read; }
static bool gate_released(struct gate *g) { return g->release; }

static void gate_set_row(struct gate *g, const char *row)
{
    pthread_mutex_lock(&g->mu);
    snprintf(g->row, sizeof g->row, "%s", row);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->release = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static dbk_rc gate_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                        dbk_error *err)
{
    (void)key;
    (void)keylen;
    (void)err;
    struct gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    char *copy = strdup(g->row);
    bool first = g->runs++ == 0;
    if (first) {
        g->first_read = true;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    if (first)
        gate_wait(g, gate_released, 20000);
    *val = copy;
    *vallen = strlen(copy);
    return DBK_OK;
}

struct reader {
    dbk_cache *c;
    const char *key;
    struct gate *g;
    pthread_t t;
    atomic_bool done;
    dbk_rc rc;
    char got[32];
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    r->rc = dbk_cache_get_or_load(r->c, r->key, strlen(r->key), gate_load, r->g, 60000, &v, &n,
                                  &err);
    if (r->rc == DBK_OK) {
        snprintf(r->got, sizeof r->got, "%.*s", (int)n, (const char *)v);
        dbk_free(v);
    }
    atomic_store(&r->done, true);
    return NULL;
}

static void reader_start(struct reader *r, dbk_cache *c, const char *key, struct gate *g)
{
    memset(r, 0, sizeof *r);
    r->c = c;
    r->key = key;
    r->g = g;
    assert_int_equal(pthread_create(&r->t, NULL, reader_main, r), 0);
}

static bool reader_wait(struct reader *r, int ms)
{
    int64_t end = now_ms() + ms;
    while (!atomic_load(&r->done) && now_ms() < end)
        sleep_ms(2);
    return atomic_load(&r->done);
}

/* Waits (bounded) until `n` get_or_load calls wait on a flight. */
static void wait_flight_waits(dbk_cache *c, uint64_t n)
{
    dbk_cache_stats st;
    dbk_error err;
    int64_t end = now_ms() + 10000;
    do {
        DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
        if (st.flight_waits >= n)
            return;
        sleep_ms(2);
    } while (now_ms() < end);
    fail_msg("no reader joined the flight within 10 s");
}

/*
 * Reader A's load reads the old row and blocks; reader J joins A's flight;
 * the row changes and is invalidated (`ns` NULL: the key, else a bump of
 * the namespace); reader B starts after the invalidation returned. B must
 * load the new row for itself while A is still blocked; J and A, which
 * overlapped the write, get the old row; the old row is not stored.
 */
static void detach_case(dbk_cache *c, const char *key, const char *ns)
{
    struct gate g;
    gate_init(&g, "old");
    dbk_cache_stats st0;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st0, &err), &err);
    struct reader a, j, b;
    reader_start(&a, c, key, &g);
    assert_true(gate_wait(&g, gate_first_read, 10000));
    reader_start(&j, c, key, &g);
    wait_flight_waits(c, st0.flight_waits + 1);

    gate_set_row(&g, "new"); /* the writer commits ... */
    if (ns)                  /* ... and invalidates after the commit */
        DBKT_OK(dbk_cache_ns_bump(c, ns, NULL, &err), &err);
    else
        DBKT_OK(dbk_cache_delete(c, key, strlen(key), &err), &err);

    reader_start(&b, c, key, &g);
    bool b_alone = reader_wait(&b, 5000); /* must not need A */
    gate_open(&g);
    pthread_join(b.t, NULL);
    pthread_join(a.t, NULL);
    pthread_join(j.t, NULL);
    assert_true(b_alone);
    assert_int_equal(b.rc, DBK_OK);
    assert_string_equal(b.got, "new");
    assert_int_equal(a.rc, DBK_OK);
    assert_string_equal(a.got, "old");
    assert_int_equal(j.rc, DBK_OK);
    assert_string_equal(j.got, "old");
    /* what the cache holds now is never the old row */
    void *v = NULL;
    size_t n = 0;
    dbk_rc rc = dbk_cache_get_or_load(c, key, strlen(key), gate_load, &g, 60000, &v, &n, &err);
    assert_int_equal(rc, DBK_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(v, "new", 3);
    dbk_free(v);
    gate_destroy(&g);
}

static void cache_invalidation_detaches_flight(void **state)
{
    (void)state;
    for (int b = 0; b < 2; b++) {
        dbk_cache_opts o = {0};
        o.flight_wait_ms = 30000; /* a follower never gives up on its own here */
        o.command_timeout_ms = 2000; /* the deletes asserted below, on a loaded machine */
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        detach_case(c, "acct:7", NULL);
        detach_case(c, "accts:list:page:1", "accts:list");
        dbk_cache_close(c);
    }
}

/* ---- transactions -------------------------------------------------------- */

static const dbk_cache_field user_fields[] = {{"id", DBK_TYPE_INT64}, {"name", DBK_TYPE_TEXT}};

struct txctx {
    dbk_cache *c;
    const char *new_name;
    dbk_rc ret;
    bool saw_old_in_cache;
    bool tx_read_own_write;
};

static char *find_user(dbk_cache *c, dbk_db *db, int64_t id)
{
    uint64_t layout = dbk_cache_layout_hash("user", user_fields, 2);
    char key[32];
    snprintf(key, sizeof key, "user:%lld", (long long)id);
    dbk_value p = dbk_int64(id);
    void *row = NULL;
    size_t n = 0;
    dbk_error err;
    DBKT_OK(dbk_cache_find_row(c, db, key, strlen(key), layout,
                               "SELECT id, name FROM users WHERE id = $1", &p, 1, 60000, &row,
                               &n, &err),
            &err);
    dbk_value vals[2];
    DBKT_OK(dbk_cache_decode_row(row, n, layout, vals, 2, &err), &err);
    assert_int_equal(vals[0].u.i, id);
    char *name = strdup(vals[1].u.bytes.ptr);
    dbk_free(row);
    return name;
}

static dbk_rc tx_update(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct txctx *t = ctx;
    dbk_value p[2] = {dbk_text(t->new_name), dbk_int64(1)};
    dbk_rc rc = dbk_db_exec(tx, "UPDATE users SET name = $1 WHERE id = $2", p, 2, NULL, err);
    if (rc != DBK_OK)
        return rc;
    rc = dbk_cache_invalidate_on_commit(t->c, tx, "user:1", 6, err);
    if (rc != DBK_OK)
        return rc;
    /* before commit: the cache still serves the committed (old) row ... */
    void *v = NULL;
    size_t n = 0;
    t->saw_old_in_cache = dbk_cache_get(t->c, "user:1", 6, &v, &n, NULL) == DBK_OK;
    dbk_free(v);
    /* ... and a cached read inside the transaction sees its own write */
    char *name = find_user(t->c, tx, 1);
    t->tx_read_own_write = strcmp(name, t->new_name) == 0;
    free(name);
    return t->ret;
}

static void tx_engine(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db, "DROP TABLE IF EXISTS users; "
                                   "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL); "
                                   "INSERT INTO users VALUES (1, 'alice')",
                               &err),
            &err);
    for (int b = 0; b < 2; b++) {
        DBKT_OK(dbk_db_exec(db, "UPDATE users SET name = 'alice'", NULL, 0, NULL, &err), &err);
        dbk_cache *c = b ? open_redis(NULL) : open_mem(NULL);
        char *name = find_user(c, db, 1);
        assert_string_equal(name, "alice");
        free(name);

        /* rollback: the cache keeps its entry */
        struct txctx t = {c, "carol", DBK_EINVALID, false, false};
        DBKT_RC(DBK_EINVALID, dbk_tx_run(db, tx_update, &t, NULL, &err));
        assert_true(t.saw_old_in_cache);
        assert_true(t.tx_read_own_write);
        void *v = NULL;
        size_t n = 0;
        DBKT_OK(dbk_cache_get(c, "user:1", 6, &v, &n, &err), &err);
        dbk_free(v);
        name = find_user(c, db, 1);
        assert_string_equal(name, "alice");
        free(name);

        /* commit: old value served until the commit, gone after */
        struct txctx t2 = {c, "bob", DBK_OK, false, false};
        DBKT_OK(dbk_tx_run(db, tx_update, &t2, NULL, &err), &err);
        assert_true(t2.saw_old_in_cache);
        assert_true(t2.tx_read_own_write);
        DBKT_RC(DBK_ENOT_FOUND, dbk_cache_get(c, "user:1", 6, &v, &n, &err));
        name = find_user(c, db, 1);
        assert_string_equal(name, "bob");
        free(name);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

/* The executor-first names renamed in 0.2 still work for one release
 * (deprecated wrappers): outside a transaction they invalidate at once. */
static void cache_deprecated_after_commit_names_still_work(void **state)
{
    (void)state;
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(conn);
    dbk_cache *c = open_mem(NULL);
    dbk_error err;
    put(c, "user:7", "x", 60000);
    uint64_t v0 = 0, v1 = 0;
    DBKT_OK(dbk_cache_ns_version(c, "users:list", &v0, &err), &err);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    DBKT_OK(dbk_cache_invalidate_after_commit(db, c, "user:7", 6, &err), &err);
    DBKT_OK(dbk_cache_ns_bump_after_commit(db, c, "users:list", &err), &err);
    DBKT_RC(DBK_EMISUSE, dbk_cache_invalidate_after_commit(NULL, c, "user:7", 6, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_ns_bump_after_commit(db, c, "", &err));
#pragma GCC diagnostic pop
    want_miss(c, "user:7");
    DBKT_OK(dbk_cache_ns_version(c, "users:list", &v1, &err), &err);
    assert_int_equal(v1, v0 + 1);
    dbk_cache_close(c);
    dbk_conn_close(conn);
}

static void cache_tx_invalidation(void **state)
{
    (void)state;
    dbkt_each_engine("cache_tx", tx_engine);
}

/* ---- Redis down, slow, restarted ----------------------------------------- */

static void cache_redis_sigkill_zero_failed_reads(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.breaker_cooldown_ms = 200;
    dbk_cache *c = open_cache(rs.url, &o);
    struct loader l = {0};
    l.value = "from-db";
    int failed = 0, reads = 0;
    int64_t start = now_ms(), kill_at = 0;
    for (int i = 0; i < 3000 && now_ms() - start < 20000; i++) {
        if (i == 500) {
            redis_kill(&rs);
            kill_at = now_ms();
        }
        char key[16];
        snprintf(key, sizeof key, "k%d", i % 20);
        void *v = NULL;
        size_t n = 0;
        dbk_error err;
        dbk_rc rc = dbk_cache_get_or_load(c, key, strlen(key), test_load, &l, 60000, &v, &n, &err);
        reads++;
        if (rc != DBK_OK || n != 7 || memcmp(v, "from-db", 7) != 0)
            failed++;
        dbk_free(v);
    }
    int64_t after_kill_ms = now_ms() - kill_at;
    assert_int_equal(failed, 0);
    assert_int_equal(reads, 3000);
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_true(st.hits >= 400);        /* cached before the kill */
    assert_true(st.breaker_opens >= 1); /* and the breaker opened after it */
    assert_true(st.skipped > 0);
    /* 2500 reads with Redis gone must not cost 2500 timeouts */
    assert_true(after_kill_ms < 10000);
    dbk_cache_close(c);
}

static void cache_redis_restart_resumes(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.breaker_cooldown_ms = 100;
    dbk_cache *c = open_cache(rs.url, &o);
    struct loader l = {0};
    l.value = "v";
    free(load_str(c, "k", &l, 60000));
    redis_kill(&rs);
    for (int i = 0; i < 20; i++)
        free(load_str(c, "k", &l, 60000)); /* served by the loader */
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_int_equal(st.breaker, DBK_CACHE_BREAKER_OPEN);
    /* while Redis is down: sets are skipped, deletes are queued */
    DBKT_RC(DBK_EUNAVAILABLE, dbk_cache_set(c, "other", 5, "x", 1, 60000, &err));
    assert_int_not_equal(dbk_cache_delete(c, "k", 1, &err), DBK_OK);
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_int_equal(st.pending_invalidations, 1);
    redis_start(&rs, NULL); /* same port, empty data */
    int64_t end = now_ms() + 5000;
    uint64_t hits0 = st.hits;
    bool resumed = false;
    while (now_ms() < end && !resumed) {
        free(load_str(c, "k", &l, 60000));
        DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
        resumed = st.hits > hits0 && st.breaker == DBK_CACHE_BREAKER_CLOSED;
        sleep_ms(20);
    }
    assert_true(resumed);
    assert_int_equal(st.pending_invalidations, 0);
    redis_kill(&rs);
    dbk_cache_close(c);
}

static void cache_redis_invalidation_replayed(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.breaker_cooldown_ms = 100;
    dbk_cache *c = open_cache(rs.url, &o);
    put(c, "user:9", "old", 60000);
    /* Redis stops answering (SIGSTOP: the socket stays open, replies stop) */
    kill(rs.pid, SIGSTOP);
    dbk_error err;
    int64_t t0 = now_ms();
    dbk_rc rc = dbk_cache_delete(c, "user:9", 6, &err);
    assert_true(now_ms() - t0 < 1000); /* bounded by the command timeout */
    assert_int_not_equal(rc, DBK_OK);
    dbk_cache_stats st;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_int_equal(st.pending_invalidations, 1);
    assert_int_equal(st.breaker, DBK_CACHE_BREAKER_OPEN);
    kill(rs.pid, SIGCONT);
    /* the old value is never read back: the probe replays the delete first */
    int64_t end = now_ms() + 5000;
    bool closed = false;
    while (now_ms() < end && !closed) {
        void *v = NULL;
        size_t n = 0;
        rc = dbk_cache_get(c, "user:9", 6, &v, &n, &err);
        assert_int_not_equal(rc, DBK_OK);
        DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
        closed = st.breaker == DBK_CACHE_BREAKER_CLOSED;
        sleep_ms(20);
    }
    assert_true(closed);
    assert_int_equal(st.pending_invalidations, 0);
    want_miss(c, "user:9");
    redis_kill(&rs);
    dbk_cache_close(c);
}

static void cache_redis_auth_and_select(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, "pa55word");
    char url[160];
    snprintf(url, sizeof url, "redis://:pa55word@127.0.0.1:%d/3", rs.port);
    dbk_cache *c = open_cache(url, NULL);
    put(c, "k", "v", 60000);
    want_value(c, "k", "v");
    dbk_cache_close(c);
    /* the value went to database 3 */
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", rs.port, tv);
    assert_true(rc && !rc->err);
    redisReply *rep = redisCommand(rc, "AUTH pa55word");
    freeReplyObject(rep);
    rep = redisCommand(rc, "SELECT 3");
    freeReplyObject(rep);
    rep = redisCommand(rc, "DBSIZE");
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer >= 2);
    freeReplyObject(rep);
    redisFree(rc);
    /* a wrong password: DBK_EAUTH, and the message never shows it */
    snprintf(url, sizeof url, "redis://:wrongpw99@127.0.0.1:%d/3", rs.port);
    c = open_cache(url, NULL);
    void *v;
    size_t n;
    dbk_error err;
    DBKT_RC(DBK_EAUTH, dbk_cache_get(c, "k", 1, &v, &n, &err));
    assert_null(strstr(err.message, "wrongpw99"));
    dbk_cache_close(c);
    redis_kill(&rs);
}

/* ---- the cached repository ------------------------------------------------ */

struct cuser {
    int64_t id;
    const char *email;
    const char *name;
};

static const dbk_field cuser_fields[] = {
    DBK_FIELD(struct cuser, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct cuser, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct cuser, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity cuser_entity = DBK_ENTITY_PLAIN("cusers", struct cuser, cuser_fields);

struct repo_tx {
    dbk_cached_repo *r;
    dbk_cache *c;
    int64_t id;
    dbk_rc ret;
    bool old_served_inside;
};

static bool cached_email_is(dbk_cache *c, int64_t id, const char *email)
{
    char key[64];
    snprintf(key, sizeof key, "cusers:id:%lld", (long long)id);
    void *v = NULL;
    size_t n = 0;
    if (dbk_cache_get(c, key, strlen(key), &v, &n, NULL) != DBK_OK)
        return false;
    bool found = n > 1 && memmem(v, n, email, strlen(email)) != NULL;
    dbk_free(v);
    return found;
}

static dbk_rc repo_tx_update(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct repo_tx *t = ctx;
    struct cuser in = {0, "ada@new.example", "Ada L.", };
    const char *fields[] = {"email", "name"};
    dbk_arena *a = dbk_arena_new(0);
    struct cuser out;
    dbk_rc rc = dbk_cached_repo_update(t->r, tx, dbk_int64(t->id), &in, fields, 2, &out, a, err);
    /* other readers still get the committed row from the cache */
    t->old_served_inside = cached_email_is(t->c, t->id, "ada@old.example");
    dbk_arena_free(a);
    return rc != DBK_OK ? rc : t->ret;
}

/* A fresh, empty `cusers` table. */
static void cusers_table(dbk_db *db, dbk_engine engine)
{
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db, engine == DBK_ENGINE_POSTGRES
                                       ? "DROP TABLE IF EXISTS cusers; CREATE TABLE cusers (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL)"
                                       : "DROP TABLE IF EXISTS cusers; CREATE TABLE cusers (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL)",
                               &err),
            &err);
}

/* A connection to url with a fresh cusers table, its statements counted
 * in g_queries. */
static dbk_conn *cusers_conn(const char *url, dbk_engine engine)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db_set_observer(dbk_conn_db(conn), count_query, NULL);
    cusers_table(dbk_conn_db(conn), engine);
    return conn;
}

static void repo_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = cusers_conn(url, engine);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    for (int b = 0; b < 2; b++) {
        DBKT_OK(dbk_db_exec(db, "DELETE FROM cusers", NULL, 0, NULL, &err), &err);
        dbk_cache_opts o = {0};
        o.negative_ttl_ms = 60000;
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        dbk_cached_repo *r = NULL;
        DBKT_OK(dbk_cached_repo_new(c, &cuser_entity, NULL, &r, &err), &err);
        dbk_arena *a = dbk_arena_new(0);
        struct cuser u;

        /* negative cache, then a create through the repository drops it */
        DBKT_RC(DBK_ENOT_FOUND,
                dbk_cached_repo_find_by(r, db, "email", dbk_text("ada@old.example"), &u, a, &err));
        struct cuser in = {0, "ada@old.example", "Ada"};
        struct cuser created;
        DBKT_OK(dbk_cached_repo_create(r, db, &in, &created, a, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by(r, db, "email", dbk_text("ada@old.example"), &u, a, &err),
                &err);
        assert_int_equal(u.id, created.id);

        /* hit: no query */
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
        atomic_store(&g_queries, 0);
        for (int i = 0; i < 10; i++) {
            DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
            assert_string_equal(u.name, "Ada");
            assert_string_equal(u.email, "ada@old.example");
        }
        assert_int_equal(atomic_load(&g_queries), 0);
        uint64_t lv0, lv1;
        DBKT_OK(dbk_cached_repo_list_version(r, &lv0, &err), &err);

        /* rollback: untouched */
        struct repo_tx t = {r, c, created.id, DBK_EINVALID, false};
        DBKT_RC(DBK_EINVALID, dbk_tx_run(db, repo_tx_update, &t, NULL, &err));
        assert_true(t.old_served_inside);
        assert_true(cached_email_is(c, created.id, "ada@old.example"));

        /* commit: served until commit, gone after; the old email key too */
        t.ret = DBK_OK;
        DBKT_OK(dbk_tx_run(db, repo_tx_update, &t, NULL, &err), &err);
        assert_true(t.old_served_inside);
        assert_false(cached_email_is(c, created.id, "ada@old.example"));
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
        assert_string_equal(u.email, "ada@new.example");
        DBKT_RC(DBK_ENOT_FOUND,
                dbk_cached_repo_find_by(r, db, "email", dbk_text("ada@old.example"), &u, a, &err));
        DBKT_OK(dbk_cached_repo_list_version(r, &lv1, &err), &err);
        assert_true(lv1 > lv0);

        /* delete */
        DBKT_OK(dbk_cached_repo_delete(r, db, dbk_int64(created.id), NULL, NULL, &err), &err);
        DBKT_RC(DBK_ENOT_FOUND,
                dbk_cached_repo_find_by_id(r, db, dbk_int64(created.id), &u, a, &err));
        DBKT_RC(DBK_ENOT_FOUND,
                dbk_cached_repo_find_by(r, db, "email", dbk_text("ada@new.example"), &u, a, &err));

        /* upsert and create_many invalidate what they write */
        struct cuser many[2] = {{0, "m1@x", "M1"}, {0, "m2@x", "M2"}};
        DBKT_RC(DBK_ENOT_FOUND,
                dbk_cached_repo_find_by(r, db, "email", dbk_text("m2@x"), &u, a, &err));
        DBKT_OK(dbk_cached_repo_create_many(r, db, many, 2, NULL, NULL, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by(r, db, "email", dbk_text("m2@x"), &u, a, &err), &err);
        assert_string_equal(u.name, "M2");
        struct cuser up = {0, "m2@x", "M2 renamed"};
        const char *conflict[] = {"email"};
        const char *upd[] = {"name"};
        DBKT_OK(dbk_cached_repo_upsert(r, db, conflict, 1, upd, 1, &up, NULL, NULL, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by(r, db, "email", dbk_text("m2@x"), &u, a, &err), &err);
        assert_string_equal(u.name, "M2 renamed");

        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

/* ---- reading many keys at once ---- */

/* dbk_cache_get_many on both backends: each key's outcome is its own, and
 * on Redis every key of the call travels in one MGET (counted on a server
 * of the test's own). */
static void get_many_case(dbk_cache *c, int port)
{
    dbk_error err;
    put(c, "gm:a", "va", 60000);
    put(c, "gm:b", "", 60000);
    const void *keys[4] = {"gm:a", "gm:nope", "gm:b", "gm:a"};
    size_t kl[4] = {4, 7, 4, 4};
    void *vals[4];
    size_t vl[4];
    dbk_rc rcs[4];
    long long mget0 = port ? redis_calls(port, "mget") : 0;
    long long get0 = port ? redis_calls(port, "get") : 0;
    DBKT_OK(dbk_cache_get_many(c, 4, keys, kl, vals, vl, rcs, &err), &err);
    if (port) {
        assert_int_equal(redis_calls(port, "mget"), mget0 + 1);
        assert_int_equal(redis_calls(port, "get"), get0);
    }
    assert_int_equal(rcs[0], DBK_OK);
    assert_int_equal(vl[0], 2);
    assert_memory_equal(vals[0], "va", 2);
    assert_int_equal(rcs[1], DBK_ENOT_FOUND);
    assert_null(vals[1]);
    assert_int_equal(rcs[2], DBK_OK); /* an empty value is a value */
    assert_non_null(vals[2]);
    assert_int_equal(vl[2], 0);
    assert_int_equal(rcs[3], DBK_OK);
    assert_memory_equal(vals[3], "va", 2);
    for (int i = 0; i < 4; i++)
        dbk_free(vals[i]);

    /* nothing to read */
    DBKT_OK(dbk_cache_get_many(c, 0, NULL, NULL, NULL, NULL, NULL, &err), &err);
    /* misuse: refused before anything is read, the outputs untouched */
    rcs[0] = DBK_EBUSY;
    DBKT_RC(DBK_EMISUSE, dbk_cache_get_many(c, 2, NULL, kl, vals, vl, rcs, &err));
    DBKT_RC(DBK_EMISUSE,
            dbk_cache_get_many(c, DBK_CACHE_MAX_MANY + 1, keys, kl, vals, vl, rcs, &err));
    size_t zero[2] = {4, 0};
    DBKT_RC(DBK_EMISUSE, dbk_cache_get_many(c, 2, keys, zero, vals, vl, rcs, &err));
    size_t huge[1] = {DBK_CACHE_MAX_KEY + 1};
    DBKT_RC(DBK_EMISUSE, dbk_cache_get_many(c, 1, keys, huge, vals, vl, rcs, &err));
    const void *nullkey[2] = {"gm:a", NULL};
    DBKT_RC(DBK_EMISUSE, dbk_cache_get_many(c, 2, nullkey, kl, vals, vl, rcs, &err));
    assert_int_equal(rcs[0], DBK_EBUSY);

    /* the most keys one call takes, every other one present */
    enum { N = DBK_CACHE_MAX_MANY };
    static char kb[N][16];
    static const void *mk[N];
    static size_t mkl[N], mvl[N];
    static void *mv[N];
    static dbk_rc mrc[N];
    for (int i = 0; i < N; i++) {
        mkl[i] = (size_t)snprintf(kb[i], sizeof kb[i], "gm:n%d", i);
        mk[i] = kb[i];
        if (i % 2 == 0)
            put(c, kb[i], kb[i], 60000);
    }
    mget0 = port ? redis_calls(port, "mget") : 0;
    DBKT_OK(dbk_cache_get_many(c, N, mk, mkl, mv, mvl, mrc, &err), &err);
    if (port)
        assert_int_equal(redis_calls(port, "mget"), mget0 + 1);
    for (int i = 0; i < N; i++) {
        if (i % 2) {
            assert_int_equal(mrc[i], DBK_ENOT_FOUND);
            continue;
        }
        assert_int_equal(mrc[i], DBK_OK);
        assert_int_equal(mvl[i], mkl[i]);
        assert_memory_equal(mv[i], kb[i], mkl[i]);
        dbk_free(mv[i]);
    }
}

static void cache_get_many(void **state)
{
    (void)state;
    dbk_cache *m = open_mem(NULL);
    get_many_case(m, 0);
    dbk_cache_close(m);

    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    /* without auto-pipelining too (the command goes alone on a connection) */
    char alone[160];
    snprintf(alone, sizeof alone, "%s?auto_pipeline=0", rs.url);
    dbk_cache *c = open_cache(alone, NULL);
    get_many_case(c, rs.port);
    dbk_cache_close(c);
    c = open_cache(rs.url, NULL);
    get_many_case(c, rs.port);
    /* Redis gone: every key gets the error of the read, the call returns it */
    redis_kill(&rs);
    const void *keys[2] = {"gm:a", "gm:b"};
    size_t kl[2] = {4, 4}, vl[2];
    void *vals[2];
    dbk_rc rcs[2];
    dbk_error err;
    dbk_rc rc = dbk_cache_get_many(c, 2, keys, kl, vals, vl, rcs, &err);
    assert_true(rc == DBK_EUNAVAILABLE || rc == DBK_ETIMEOUT);
    assert_int_equal(rcs[0], rc);
    assert_int_equal(rcs[1], rc);
    assert_null(vals[0]);
    assert_null(vals[1]);
    dbk_cache_close(c);
}

/* dbk_cached_repo_find_by_ids: each id gets its own row or its own "not
 * found"; the cached ones cost no query (on Redis: one MGET for all of
 * them, no GET), the others ONE statement for all of them, which stores
 * them (the missing one as a cached "not found"); a write
 * through the repository is seen by the next batch; in a transaction every
 * id is read from the database; Redis gone, the rows still come from the
 * database. */
struct ids_tx {
    dbk_cached_repo *r;
    const dbk_value *ids;
    size_t n;
    int queries;
};

static dbk_rc ids_in_tx(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct ids_tx *t = ctx;
    struct cuser rows[8];
    void *outs[8];
    dbk_rc rcs[8];
    for (size_t i = 0; i < t->n; i++)
        outs[i] = &rows[i];
    dbk_arena *a = dbk_arena_new(0);
    atomic_store(&g_queries, 0);
    dbk_rc rc = dbk_cached_repo_find_by_ids(t->r, tx, t->n, t->ids, outs, rcs, a, err);
    t->queries = atomic_load(&g_queries);
    dbk_arena_free(a);
    return rc;
}

/* Round b of a find_by_ids test: an empty cusers table, and a cache on the
 * memory backend (b 0) or on a Redis server of the test's own (b 1, started
 * into rs), "not found" cached for a minute, with a cached repository of
 * cusers on it. */
static dbk_cache *ids_cache(dbk_db *db, int b, struct own_redis *rs, dbk_cached_repo **r)
{
    dbk_error err;
    DBKT_OK(dbk_db_exec(db, "DELETE FROM cusers", NULL, 0, NULL, &err), &err);
    dbk_cache_opts o = {0};
    o.negative_ttl_ms = 60000;
    if (b)
        redis_start(rs, NULL);
    dbk_cache *c = b ? open_cache(rs->url, &o) : open_mem(&o);
    DBKT_OK(dbk_cached_repo_new(c, &cuser_entity, NULL, r, &err), &err);
    return c;
}

static void find_by_ids_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = cusers_conn(url, engine);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    struct own_redis rs = {0};
    for (int b = 0; b < 2; b++) {
        dbk_cached_repo *r = NULL;
        dbk_cache *c = ids_cache(db, b, &rs, &r);
        dbk_arena *a = dbk_arena_new(0);
        int64_t id[5];
        for (int i = 0; i < 5; i++) {
            char email[32], name[32];
            snprintf(email, sizeof email, "u%d@x", i);
            snprintf(name, sizeof name, "User %d", i);
            struct cuser in = {0, email, name}, out;
            DBKT_OK(dbk_cached_repo_create(r, db, &in, &out, a, &err), &err);
            id[i] = out.id;
        }
        struct cuser one;
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(id[0]), &one, a, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(id[2]), &one, a, &err), &err);

        /* id 0 twice, 2 cached; 1 (twice: read once), 4 and a missing one
         * read in one statement (and stored) */
        dbk_value ids[7] = {dbk_int64(id[0]), dbk_int64(id[1]), dbk_int64(id[4] + 1000),
                            dbk_int64(id[2]), dbk_int64(id[0]), dbk_int64(id[4]),
                            dbk_int64(id[1])};
        const int want[7] = {0, 1, -1, 2, 0, 4, 1};
        struct cuser rows[7];
        void *outs[7];
        dbk_rc rcs[7];
        for (int i = 0; i < 7; i++)
            outs[i] = &rows[i];
        atomic_store(&g_queries, 0);
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 7, ids, outs, rcs, a, &err), &err);
        assert_int_equal(atomic_load(&g_queries), 1);
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < 7; i++) {
                if (want[i] < 0) {
                    assert_int_equal(rcs[i], DBK_ENOT_FOUND);
                    continue;
                }
                char name[32];
                snprintf(name, sizeof name, "User %d", want[i]);
                assert_int_equal(rcs[i], DBK_OK);
                assert_int_equal(rows[i].id, id[want[i]]);
                assert_string_equal(rows[i].name, name);
            }
            if (pass)
                break;
            /* all cached now, the missing one too: no query; on Redis
             * one MGET and no GET */
            memset(rows, 0, sizeof rows);
            long long mget0 = b ? redis_calls(rs.port, "mget") : 0;
            long long get0 = b ? redis_calls(rs.port, "get") : 0;
            atomic_store(&g_queries, 0);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 7, ids, outs, rcs, a, &err), &err);
            assert_int_equal(atomic_load(&g_queries), 0);
            if (b) {
                assert_int_equal(redis_calls(rs.port, "mget"), mget0 + 1);
                assert_int_equal(redis_calls(rs.port, "get"), get0);
            }
        }

        /* a write through the repository: the next batch sees it */
        struct cuser in = {0, "u1@x", "Renamed"};
        const char *fields[] = {"name"};
        DBKT_OK(dbk_cached_repo_update(r, db, dbk_int64(id[1]), &in, fields, 1, NULL, a, &err),
                &err);
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 7, ids, outs, rcs, a, &err), &err);
        assert_string_equal(rows[1].name, "Renamed");
        assert_string_equal(rows[6].name, "Renamed");
        assert_string_equal(rows[0].name, "User 0");

        /* in a transaction: the database, every id */
        struct ids_tx t = {r, ids, 6, 0};
        DBKT_OK(dbk_tx_run(db, ids_in_tx, &t, NULL, &err), &err);
        assert_int_equal(t.queries, 6);

        /* misuse: nothing read */
        outs[3] = NULL;
        rcs[0] = DBK_EBUSY;
        DBKT_RC(DBK_EMISUSE, dbk_cached_repo_find_by_ids(r, db, 6, ids, outs, rcs, a, &err));
        outs[3] = &rows[3];
        DBKT_RC(DBK_EMISUSE, dbk_cached_repo_find_by_ids(r, db, DBK_CACHE_MAX_MANY + 1, ids, outs,
                                                         rcs, a, &err));
        DBKT_RC(DBK_EMISUSE, dbk_cached_repo_find_by_ids(r, db, 6, NULL, outs, rcs, a, &err));
        assert_int_equal(rcs[0], DBK_EBUSY);
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 0, NULL, NULL, NULL, a, &err), &err);

        if (b) {
            /* Redis gone: the rows come from the database */
            redis_kill(&rs);
            memset(rows, 0, sizeof rows);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 6, ids, outs, rcs, a, &err), &err);
            assert_int_equal(rcs[2], DBK_ENOT_FOUND);
            assert_string_equal(rows[1].name, "Renamed");
            assert_string_equal(rows[5].name, "User 4");
        }
        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

static void cache_repo_find_by_ids(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_ids", find_by_ids_engine);
}

/* The misses of one find_by_ids, loaded together, keep the single-key
 * guarantees:
 *   - a write committed and invalidated while the batch statement runs (it
 *     has read the old row) is not hidden by the batch's store: the next
 *     read sees the write;
 *   - a batch whose statement fails gives every missed id that error and
 *     caches nothing, not even "not found"; the cached ids are still served;
 *   - 4 threads with overlapping ids and a thread deleting keys under them
 *     get every row right, and load fewer rows than they look up. */
struct batch_race {
    dbk_cached_repo *r;
    dbk_db *writer;
    int64_t id;
    atomic_int armed;
    int fired;
    int flush_port; /* > 0: the Redis server loses its data instead */
};

static void batch_race_obs(void *ctx, const dbk_query_event *ev)
{
    struct batch_race *br = ctx;
    atomic_fetch_add(&g_queries, 1);
    if (!atomic_exchange(&br->armed, 0) || ev->rc != DBK_OK)
        return;
    if (br->flush_port > 0) {
        struct timeval tv = {2, 0};
        redisContext *rc = redisConnectWithTimeout("127.0.0.1", br->flush_port, tv);
        assert_true(rc && !rc->err);
        freeReplyObject(redisCommand(rc, "FLUSHALL"));
        redisFree(rc);
        br->fired++;
        return;
    }
    /* another connection commits a new name and invalidates, after the
     * batch read the old one and before it stores it */
    dbk_arena *a = dbk_arena_new(0);
    struct cuser in = {0, NULL, "Raced"};
    const char *fields[] = {"name"};
    dbk_error err;
    DBKT_OK(dbk_cached_repo_update(br->r, br->writer, dbk_int64(br->id), &in, fields, 1, NULL, a,
                                   &err),
            &err);
    dbk_arena_free(a);
    br->fired++;
}

#define IDS_THREADS 4
#define IDS_ROWS 40

struct ids_worker {
    const char *url;
    dbk_cached_repo *r;
    const int64_t *id;
    unsigned seed;
    int lookups;
};

/* Renames rows through the cached repository while the workers read. */
struct ids_writer {
    const char *url;
    dbk_cached_repo *r;
    const int64_t *id;
};

static void *ids_writer_main(void *arg)
{
    struct ids_writer *w = arg;
    dbk_conn *conn = dbkt_open(w->url);
    dbk_arena *a = dbk_arena_new(0);
    unsigned seed = 5;
    for (int k = 0; k < 150; k++) {
        int i = (int)(rand_r(&seed) % IDS_ROWS);
        char name[32];
        snprintf(name, sizeof name, "User %d v%d", i, k);
        struct cuser in = {0, NULL, name};
        const char *fields[] = {"name"};
        dbk_error err;
        DBKT_OK(dbk_cached_repo_update(w->r, dbk_conn_db(conn), dbk_int64(w->id[i]), &in, fields,
                                       1, NULL, a, &err),
                &err);
        dbk_arena_reset(a);
        usleep(300);
    }
    dbk_arena_free(a);
    dbk_conn_close(conn);
    return NULL;
}

static void *ids_worker_main(void *arg)
{
    struct ids_worker *w = arg;
    dbk_conn *conn = dbkt_open(w->url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_arena *a = dbk_arena_new(0);
    for (int round = 0; round < 60; round++) {
        dbk_value ids[16];
        int want[16];
        struct cuser rows[16];
        void *outs[16];
        dbk_rc rcs[16];
        for (int i = 0; i < 16; i++) {
            want[i] = (int)(rand_r(&w->seed) % (IDS_ROWS + 2)); /* 40, 41: no such row */
            ids[i] = dbk_int64(want[i] < IDS_ROWS ? w->id[want[i]] : w->id[IDS_ROWS - 1] + 1000 + want[i]);
            outs[i] = &rows[i];
        }
        dbk_error err;
        DBKT_OK(dbk_cached_repo_find_by_ids(w->r, db, 16, ids, outs, rcs, a, &err), &err);
        for (int i = 0; i < 16; i++) {
            if (want[i] >= IDS_ROWS) {
                assert_int_equal(rcs[i], DBK_ENOT_FOUND);
                continue;
            }
            char name[32];
            /* "User <n>", or a writer's "User <n> v<k>" */
            int nl = snprintf(name, sizeof name, "User %d", want[i]);
            assert_int_equal(rcs[i], DBK_OK);
            assert_int_equal(rows[i].id, w->id[want[i]]);
            assert_true(strncmp(rows[i].name, name, (size_t)nl) == 0 &&
                        (rows[i].name[nl] == '\0' || strncmp(rows[i].name + nl, " v", 2) == 0));
        }
        w->lookups += 16;
        dbk_arena_reset(a);
    }
    dbk_arena_free(a);
    dbk_conn_close(conn);
    return NULL;
}

static void find_by_ids_batch_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = cusers_conn(url, engine), *wconn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    struct own_redis rs = {0};
    for (int b = 0; b < 2; b++) {
        dbk_cached_repo *r = NULL;
        dbk_cache *c = ids_cache(db, b, &rs, &r);
        dbk_arena *a = dbk_arena_new(0);
        int64_t id[IDS_ROWS];
        for (int i = 0; i < IDS_ROWS; i++) {
            char email[32], name[32];
            snprintf(email, sizeof email, "u%d@x", i);
            snprintf(name, sizeof name, "User %d", i);
            struct cuser in = {0, email, name}, out;
            DBKT_OK(dbk_repo_create(db, &cuser_entity, &in, &out, a, &err), &err);
            id[i] = out.id;
        }

        /* 1. an invalidation during the batch statement (the keys were
         * invalidated once before, so every lease names a generation) */
        for (int i = 1; i <= 4; i++) {
            char key[64];
            snprintf(key, sizeof key, "cusers:id:%lld", (long long)id[i]);
            DBKT_OK(dbk_cache_delete(c, key, strlen(key), &err), &err);
        }
        struct batch_race br = {.r = r, .writer = dbk_conn_db(wconn), .id = id[3]};
        dbk_db_set_observer(db, batch_race_obs, &br);
        dbk_value ids[4] = {dbk_int64(id[1]), dbk_int64(id[2]), dbk_int64(id[3]),
                            dbk_int64(id[4])};
        struct cuser rows[4];
        void *outs[4] = {&rows[0], &rows[1], &rows[2], &rows[3]};
        dbk_rc rcs[4];
        atomic_store(&g_queries, 0);
        atomic_store(&br.armed, 1);
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 4, ids, outs, rcs, a, &err), &err);
        assert_int_equal(br.fired, 1);
        assert_int_equal(atomic_load(&g_queries), 1); /* the four in one statement */
        assert_string_equal(rows[2].name, "User 3");  /* read before the write: served */
        assert_false(cached_email_is(c, id[3], "u3@x")); /* but not stored */
        assert_true(cached_email_is(c, id[1], "u1@x"));  /* the others are */
        atomic_store(&g_queries, 0);
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 4, ids, outs, rcs, a, &err), &err);
        assert_int_equal(atomic_load(&g_queries), 1); /* id 3 only */
        assert_string_equal(rows[2].name, "Raced");
        assert_string_equal(rows[0].name, "User 1");
        if (b) {
            /* 1b. Redis loses its data (a restart without persistence)
             * during the batch statement: the leases, taken before, name
             * an epoch that is gone, so nothing is stored; the next call
             * reads them again and stores them */
            br.flush_port = rs.port;
            dbk_value ids3[3] = {dbk_int64(id[8]), dbk_int64(id[9]), dbk_int64(id[10])};
            atomic_store(&br.armed, 1);
            atomic_store(&g_queries, 0);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 3, ids3, outs, rcs, a, &err), &err);
            assert_int_equal(br.fired, 2);
            assert_string_equal(rows[1].name, "User 9");
            assert_false(cached_email_is(c, id[8], "u8@x"));
            assert_false(cached_email_is(c, id[10], "u10@x"));
            int q = 0;
            for (int pass = 0; pass < 3; pass++) { /* the first may find no epoch yet */
                atomic_store(&g_queries, 0);
                DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 3, ids3, outs, rcs, a, &err), &err);
                q = atomic_load(&g_queries);
                assert_true(q <= 1);
                if (q == 0)
                    break;
            }
            assert_int_equal(q, 0);
            assert_true(cached_email_is(c, id[10], "u10@x"));
            br.flush_port = 0;
        }
        dbk_db_set_observer(db, count_query, NULL);

        /* 2. the batch statement fails: every missed id gets the error,
         * nothing is cached, the cached ids are served */
        dbkt_exec(dbk_conn_db(wconn), "ALTER TABLE cusers RENAME TO cusers_away");
        dbk_value ids2[4] = {dbk_int64(id[b ? 10 : 1]), dbk_int64(id[5]), dbk_int64(id[6]),
                             dbk_int64(id[IDS_ROWS - 1] + 500)};
        memset(rows, 0, sizeof rows);
        dbk_rc rc = dbk_cached_repo_find_by_ids(r, db, 4, ids2, outs, rcs, a, &err);
        assert_int_not_equal(rc, DBK_OK);
        assert_int_not_equal(rc, DBK_ENOT_FOUND);
        assert_int_equal(err.code, rc);
        assert_int_equal(rcs[0], DBK_OK); /* cached: served */
        assert_string_equal(rows[0].name, b ? "User 10" : "User 1");
        assert_int_equal(rcs[1], rc);
        assert_int_equal(rcs[2], rc);
        assert_int_equal(rcs[3], rc);
        dbkt_exec(dbk_conn_db(wconn), "ALTER TABLE cusers_away RENAME TO cusers");
        DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 4, ids2, outs, rcs, a, &err), &err);
        assert_int_equal(rcs[1], DBK_OK);
        assert_string_equal(rows[1].name, "User 5");
        assert_string_equal(rows[2].name, "User 6");
        assert_int_equal(rcs[3], DBK_ENOT_FOUND);
        dbkt_exec(dbk_conn_db(wconn), "UPDATE cusers SET name = 'User 3' WHERE name = 'Raced'");

        /* 3. threads with overlapping ids while rows are renamed and keys
         * deleted under them; once all is quiet the cache holds what the
         * database holds, for every id */
        for (int i = 0; i < IDS_ROWS; i++) {
            char key[64];
            snprintf(key, sizeof key, "cusers:id:%lld", (long long)id[i]);
            DBKT_OK(dbk_cache_delete(c, key, strlen(key), &err), &err);
        }
        dbk_cache_stats st0, st1;
        DBKT_OK(dbk_cache_get_stats(c, &st0, &err), &err);
        struct ids_worker w[IDS_THREADS];
        pthread_t th[IDS_THREADS], wth;
        struct ids_writer wr = {url, r, id};
        for (int t = 0; t < IDS_THREADS; t++) {
            w[t] = (struct ids_worker){url, r, id, 7u + (unsigned)t, 0};
            assert_int_equal(pthread_create(&th[t], NULL, ids_worker_main, &w[t]), 0);
        }
        assert_int_equal(pthread_create(&wth, NULL, ids_writer_main, &wr), 0);
        unsigned seed = 99;
        for (int k = 0; k < 200; k++) { /* a key deleted now and then */
            char key[64];
            snprintf(key, sizeof key, "cusers:id:%lld",
                     (long long)id[rand_r(&seed) % IDS_ROWS]);
            dbk_cache_delete(c, key, strlen(key), NULL);
            usleep(500);
        }
        int lookups = 0;
        for (int t = 0; t < IDS_THREADS; t++) {
            pthread_join(th[t], NULL);
            lookups += w[t].lookups;
        }
        pthread_join(wth, NULL);
        DBKT_OK(dbk_cache_get_stats(c, &st1, &err), &err);
        assert_int_equal(lookups, IDS_THREADS * 60 * 16);
        assert_true(st1.loads - st0.loads < (uint64_t)lookups / 4);
        {
            dbk_value all[IDS_ROWS];
            struct cuser got[IDS_ROWS];
            void *gouts[IDS_ROWS];
            dbk_rc grcs[IDS_ROWS];
            for (int i = 0; i < IDS_ROWS; i++) {
                all[i] = dbk_int64(id[i]);
                gouts[i] = &got[i];
            }
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, IDS_ROWS, all, gouts, grcs, a, &err), &err);
            for (int i = 0; i < IDS_ROWS; i++) {
                struct cuser fresh;
                DBKT_OK(dbk_repo_find_by_id(db, &cuser_entity, all[i], &fresh, a, &err), &err);
                if (strcmp(got[i].name, fresh.name) != 0)
                    fail_msg("id %d: the cache serves \"%s\", the database holds \"%s\"", i,
                             got[i].name, fresh.name);
            }
        }

        /* 4. the most ids one call takes, none cached (none exists): one
         * statement, and every "not found" stored (on Redis one lease
         * MGET and one store script of DBK_CACHE_MAX_MANY entries) */
        {
            dbk_value *many = calloc(DBK_CACHE_MAX_MANY, sizeof *many);
            struct cuser *mrows = calloc(DBK_CACHE_MAX_MANY, sizeof *mrows);
            void **mouts = calloc(DBK_CACHE_MAX_MANY, sizeof *mouts);
            dbk_rc *mrcs = calloc(DBK_CACHE_MAX_MANY, sizeof *mrcs);
            assert_true(many && mrows && mouts && mrcs);
            for (int i = 0; i < DBK_CACHE_MAX_MANY; i++) {
                many[i] = dbk_int64(id[IDS_ROWS - 1] + 100000 + i);
                mouts[i] = &mrows[i];
            }
            long long eval0 = b ? redis_calls(rs.port, "eval") : 0;
            for (int pass = 0; pass < 2; pass++) {
                atomic_store(&g_queries, 0);
                DBKT_OK(dbk_cached_repo_find_by_ids(r, db, DBK_CACHE_MAX_MANY, many, mouts, mrcs,
                                                    a, &err),
                        &err);
                assert_int_equal(atomic_load(&g_queries), pass ? 0 : 1);
                assert_int_equal(mrcs[0], DBK_ENOT_FOUND);
                assert_int_equal(mrcs[DBK_CACHE_MAX_MANY - 1], DBK_ENOT_FOUND);
            }
            if (b)
                assert_int_equal(redis_calls(rs.port, "eval") - eval0, 1);
            free(many);
            free(mrows);
            free(mouts);
            free(mrcs);
        }

        if (b) {
            /* 5. large rows: the stores go out in several scripts of at
             * most 1 MiB of values each, and every row is stored */
            static char big[100 * 1024 + 1];
            memset(big, 'x', sizeof big - 1);
            dbk_value bids[24];
            struct cuser brows[24];
            void *bouts[24];
            dbk_rc brcs[24];
            for (int i = 0; i < 24; i++) {
                char email[32];
                snprintf(email, sizeof email, "big%d@x", i);
                struct cuser in = {0, email, big}, out;
                DBKT_OK(dbk_repo_create(db, &cuser_entity, &in, &out, a, &err), &err);
                bids[i] = dbk_int64(out.id);
                bouts[i] = &brows[i];
            }
            long long eval0 = redis_calls(rs.port, "eval");
            atomic_store(&g_queries, 0);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 24, bids, bouts, brcs, a, &err), &err);
            assert_int_equal(atomic_load(&g_queries), 1);
            long long evals = redis_calls(rs.port, "eval") - eval0;
            assert_true(evals >= 3 && evals <= 4); /* 2.4 MB in chunks of at most 1 MiB */
            atomic_store(&g_queries, 0);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 24, bids, bouts, brcs, a, &err), &err);
            assert_int_equal(atomic_load(&g_queries), 0); /* every one stored */
            assert_int_equal(strlen(brows[23].name), sizeof big - 1);

            /* 6. Redis stops answering (SIGSTOP) before a cold batch: the
             * call ends within a few command timeouts (peek, leases,
             * stores), every row from the database, nothing stored */
            dbk_value sids[8];
            struct cuser srows[8];
            void *souts[8];
            dbk_rc srcs[8];
            for (int i = 0; i < 8; i++) {
                char email[32], name[32];
                snprintf(email, sizeof email, "stall%d@x", i);
                snprintf(name, sizeof name, "Stall %d", i);
                struct cuser in = {0, email, name}, out;
                DBKT_OK(dbk_repo_create(db, &cuser_entity, &in, &out, a, &err), &err);
                sids[i] = dbk_int64(out.id);
                souts[i] = &srows[i];
            }
            assert_int_equal(kill(rs.pid, SIGSTOP), 0);
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            dbk_rc src = dbk_cached_repo_find_by_ids(r, db, 8, sids, souts, srcs, a, &err);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            assert_int_equal(kill(rs.pid, SIGCONT), 0);
            double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
            if (secs > 10)
                fail_msg("a stalled Redis held find_by_ids for %.1f s", secs);
            DBKT_OK(src, &err);
            for (int i = 0; i < 8; i++) {
                char name[32];
                snprintf(name, sizeof name, "Stall %d", i);
                assert_int_equal(srcs[i], DBK_OK);
                assert_string_equal(srows[i].name, name);
            }
        }

        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
        if (b)
            redis_kill(&rs);
    }
    dbk_conn_close(wconn);
    dbk_conn_close(conn);
}

static void cache_repo_find_by_ids_batch(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_ids_batch", find_by_ids_batch_engine);
}

static void cache_repo_reads_and_writes(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo", repo_engine);
}

/* The cached repository's names renamed in 0.2 (dbk_cached_find_by_id ...
 * dbk_cached_list_version, now dbk_cached_repo_*) still work for one
 * release: deprecated wrappers with the same behaviour (SQLite and the
 * memory cache: a hit runs no query, a write invalidates and bumps the list
 * version). */
static void cache_repo_deprecated_names_still_work(void **state)
{
    (void)state;
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(conn);
    dbk_db_set_observer(db, count_query, NULL);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db,
                               "CREATE TABLE cusers (id INTEGER PRIMARY KEY, email TEXT UNIQUE "
                               "NOT NULL, name TEXT NOT NULL)",
                               &err),
            &err);
    dbk_cache_opts o = {0};
    dbk_cache *c = open_mem(&o);
    dbk_cached_repo *r = NULL;
    DBKT_OK(dbk_cached_repo_new(c, &cuser_entity, NULL, &r, &err), &err);
    dbk_arena *a = dbk_arena_new(0);
    struct cuser u, created;
    struct cuser in = {0, "old@x", "Old"};
    struct cuser many[2] = {{0, "m1@x", "M1"}, {0, "m2@x", "M2"}};
    struct cuser up = {0, "m2@x", "M2 renamed"};
    const char *fields[] = {"email"};
    const char *conflict[] = {"email"};
    const char *upd[] = {"name"};
    uint64_t lv0 = 0, lv1 = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    DBKT_OK(dbk_cached_create(r, db, &in, &created, a, &err), &err);
    DBKT_OK(dbk_cached_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
    DBKT_OK(dbk_cached_find_by(r, db, "email", dbk_text("old@x"), &u, a, &err), &err);
    atomic_store(&g_queries, 0); /* both rows cached now: hits run no query */
    DBKT_OK(dbk_cached_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
    DBKT_OK(dbk_cached_find_by(r, db, "email", dbk_text("old@x"), &u, a, &err), &err);
    assert_int_equal(atomic_load(&g_queries), 0);
    assert_string_equal(u.name, "Old");
    DBKT_OK(dbk_cached_list_version(r, &lv0, &err), &err);
    struct cuser renamed = {0, "new@x", "Old"};
    DBKT_OK(dbk_cached_update(r, db, dbk_int64(created.id), &renamed, fields, 1, NULL, NULL, &err),
            &err);
    DBKT_RC(DBK_ENOT_FOUND, dbk_cached_find_by(r, db, "email", dbk_text("old@x"), &u, a, &err));
    DBKT_OK(dbk_cached_find_by_id(r, db, dbk_int64(created.id), &u, a, &err), &err);
    assert_string_equal(u.email, "new@x");
    DBKT_OK(dbk_cached_list_version(r, &lv1, &err), &err);
    assert_true(lv1 > lv0);
    DBKT_OK(dbk_cached_create_many(r, db, many, 2, NULL, NULL, &err), &err);
    DBKT_OK(dbk_cached_find_by(r, db, "email", dbk_text("m2@x"), &u, a, &err), &err);
    DBKT_OK(dbk_cached_upsert(r, db, conflict, 1, upd, 1, &up, NULL, NULL, &err), &err);
    DBKT_OK(dbk_cached_find_by(r, db, "email", dbk_text("m2@x"), &u, a, &err), &err);
    assert_string_equal(u.name, "M2 renamed");
    DBKT_OK(dbk_cached_delete(r, db, dbk_int64(created.id), NULL, NULL, &err), &err);
    DBKT_RC(DBK_ENOT_FOUND, dbk_cached_find_by_id(r, db, dbk_int64(created.id), &u, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cached_find_by_id(NULL, db, dbk_int64(1), &u, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cached_list_version(r, NULL, &err));
    /* the old name of dbk_cache_get_stats reads the same counters */
    dbk_cache_stats s_old, s_new;
    DBKT_OK(dbk_cache_stats_get(c, &s_old, &err), &err);
    DBKT_OK(dbk_cache_get_stats(c, &s_new, &err), &err);
    assert_true(s_old.hits > 0);
    assert_true(s_old.hits == s_new.hits && s_old.misses == s_new.misses);
    DBKT_RC(DBK_EMISUSE, dbk_cache_stats_get(NULL, &s_old, &err));
#pragma GCC diagnostic pop
    dbk_arena_free(a);
    dbk_cached_repo_free(r);
    dbk_cache_close(c);
    dbk_conn_close(conn);
}


/* ---- the cached repository: single-flight across a committed write -------- */

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

static void vrows_reset(dbk_db *db, int nrows)
{
    dbkt_exec(db, "DROP TABLE IF EXISTS vrows; "
                  "CREATE TABLE vrows (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, "
                  "name TEXT NOT NULL)");
    for (int i = 1; i <= nrows; i++) {
        dbk_value p[1] = {dbk_int64(i)};
        dbk_error err;
        DBKT_OK(dbk_db_exec(db, "INSERT INTO vrows VALUES ($1, 1, 'v1')", p, 1, NULL, &err),
                &err);
    }
}

/* An observer that, once armed, blocks the first SELECT of its executor
 * after the row was read (the cached repository's loader is in the middle
 * of its load, holding the old row). */
struct obs_gate {
    atomic_bool armed;
    struct gate *g;
};

static void gate_observer(void *ctx, const dbk_query_event *ev)
{
    struct obs_gate *o = ctx;
    if (strncmp(ev->sql, "SELECT", 6) != 0 || !atomic_exchange(&o->armed, false))
        return;
    pthread_mutex_lock(&o->g->mu);
    o->g->first_read = true;
    pthread_cond_broadcast(&o->g->cv);
    pthread_mutex_unlock(&o->g->mu);
    gate_wait(o->g, gate_released, 20000);
}

struct vreader {
    dbk_cached_repo *r;
    dbk_db *db;
    int64_t id;
    pthread_t t;
    atomic_bool done;
    dbk_rc rc;
    int64_t version;
};

static void *vreader_main(void *arg)
{
    struct vreader *v = arg;
    dbk_arena *a = dbk_arena_new(0);
    struct vrow row;
    dbk_error err;
    v->rc = dbk_cached_repo_find_by_id(v->r, v->db, dbk_int64(v->id), &row, a, &err);
    v->version = v->rc == DBK_OK ? row.version : -1;
    dbk_arena_free(a);
    atomic_store(&v->done, true);
    return NULL;
}

static void vreader_start(struct vreader *v, dbk_cached_repo *r, dbk_db *db, int64_t id)
{
    memset(v, 0, sizeof *v);
    v->r = r;
    v->db = db;
    v->id = id;
    assert_int_equal(pthread_create(&v->t, NULL, vreader_main, v), 0);
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

static void repo_detach_engine(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *ca = dbkt_open(url), *cb = dbkt_open(url), *cw = dbkt_open(url);
    dbk_db *dba = dbk_conn_db(ca), *dbb = dbk_conn_db(cb), *dbw = dbk_conn_db(cw);
    for (int b = 0; b < 2; b++) {
        vrows_reset(dbw, 1);
        dbk_cache_opts o = {0};
        o.flight_wait_ms = 30000;
        o.command_timeout_ms = 2000;
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        dbk_cached_repo *r = NULL;
        dbk_error err;
        DBKT_OK(dbk_cached_repo_new(c, &vrow_entity, NULL, &r, &err), &err);
        struct gate g;
        gate_init(&g, "");
        struct obs_gate og = {true, &g};
        dbk_db_set_observer(dba, gate_observer, &og);

        /* A reads version 1 and stalls inside its load */
        struct vreader a, bb;
        vreader_start(&a, r, dba, 1);
        assert_true(gate_wait(&g, gate_first_read, 10000));
        /* a committed write, invalidated after COMMIT by the repository */
        struct vwrite w = {r, 1, 2};
        DBKT_OK(dbk_tx_run(dbw, vwrite_tx, &w, NULL, &err), &err);
        /* B starts after dbk_tx_run returned: it must read version 2
         * without waiting for A */
        vreader_start(&bb, r, dbb, 1);
        int64_t end = now_ms() + 5000;
        while (!atomic_load(&bb.done) && now_ms() < end)
            sleep_ms(2);
        bool b_alone = atomic_load(&bb.done);
        gate_open(&g);
        pthread_join(bb.t, NULL);
        pthread_join(a.t, NULL);
        dbk_db_set_observer(dba, NULL, NULL);
        assert_true(b_alone);
        assert_int_equal(bb.rc, DBK_OK);
        assert_int_equal(bb.version, 2);
        assert_int_equal(a.rc, DBK_OK);
        assert_int_equal(a.version, 1); /* it overlapped the write */
        /* and A's old row was not stored */
        struct vreader after;
        vreader_start(&after, r, dbb, 1);
        pthread_join(after.t, NULL);
        assert_int_equal(after.version, 2);
        gate_destroy(&g);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(ca);
    dbk_conn_close(cb);
    dbk_conn_close(cw);
}

static void cache_repo_tx_detaches_flight(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_detach", repo_detach_engine);
}

/* 8 readers and 2 writers, bounded: no read that starts after a write's
 * dbk_tx_run returned may see an older version. */
#define STRESS_READERS 8
#define STRESS_WRITES 50

struct stress {
    const char *url;
    dbk_cached_repo *r;
    atomic_llong published[3]; /* per row: last version whose transaction returned */
    atomic_int writers_left;
    atomic_int stale, reads, errors;
    pthread_barrier_t start; /* every thread connected: go */
};

struct stress_thread {
    struct stress *s;
    int index;
};

static void *stress_writer(void *arg)
{
    struct stress_thread *t = arg;
    struct stress *s = t->s;
    dbk_conn *conn = dbkt_open(s->url);
    pthread_barrier_wait(&s->start);
    int64_t id = t->index + 1;
    for (int64_t v = 2; v < 2 + STRESS_WRITES; v++) {
        struct vwrite w = {s->r, id, v};
        dbk_error err;
        if (dbk_tx_run(dbk_conn_db(conn), vwrite_tx, &w, NULL, &err) != DBK_OK) {
            atomic_fetch_add(&s->errors, 1);
            break;
        }
        atomic_store(&s->published[id], v);
    }
    dbk_conn_close(conn);
    atomic_fetch_sub(&s->writers_left, 1);
    return NULL;
}

/* 1 ms of "network" after each read: loads last long enough for writes to
 * land while they are in flight (the window the stale join needs). */
static void slow_select(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    if (strncmp(ev->sql, "SELECT", 6) == 0)
        sleep_ms(1);
}

static void *stress_reader(void *arg)
{
    struct stress_thread *t = arg;
    struct stress *s = t->s;
    dbk_conn *conn = dbkt_open(s->url);
    dbk_db_set_observer(dbk_conn_db(conn), slow_select, NULL);
    dbk_arena *a = dbk_arena_new(0);
    pthread_barrier_wait(&s->start);
    /* at least 100 reads each, then on until the writers are done */
    for (int i = 0; i < 20000 && (i < 100 || atomic_load(&s->writers_left) > 0); i++) {
        int64_t id = 1 + (i + t->index) % 2;
        int64_t floor = atomic_load(&s->published[id]);
        struct vrow row;
        dbk_error err;
        dbk_rc rc =
            dbk_cached_repo_find_by_id(s->r, dbk_conn_db(conn), dbk_int64(id), &row, a, &err);
        if (rc != DBK_OK)
            atomic_fetch_add(&s->errors, 1);
        else if (row.version < floor)
            atomic_fetch_add(&s->stale, 1);
        atomic_fetch_add(&s->reads, 1);
        dbk_arena_reset(a);
    }
    dbk_arena_free(a);
    dbk_conn_close(conn);
    return NULL;
}

static void repo_stress_engine(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *conn = dbkt_open(url);
    for (int b = 0; b < 2; b++) {
        vrows_reset(dbk_conn_db(conn), 2);
        dbk_cache *c = b ? open_redis(NULL) : open_mem(NULL);
        struct stress s;
        memset(&s, 0, sizeof s);
        s.url = url;
        dbk_error err;
        DBKT_OK(dbk_cached_repo_new(c, &vrow_entity, NULL, &s.r, &err), &err);
        atomic_store(&s.published[1], 1);
        atomic_store(&s.published[2], 1);
        atomic_store(&s.writers_left, 2);
        pthread_barrier_init(&s.start, NULL, STRESS_READERS + 2);
        struct stress_thread th[STRESS_READERS + 2];
        pthread_t tid[STRESS_READERS + 2];
        for (int i = 0; i < STRESS_READERS + 2; i++) {
            th[i].s = &s;
            th[i].index = i < 2 ? i : i - 2;
            assert_int_equal(pthread_create(&tid[i], NULL, i < 2 ? stress_writer : stress_reader,
                                            &th[i]), 0);
        }
        for (int i = 0; i < STRESS_READERS + 2; i++)
            pthread_join(tid[i], NULL);
        pthread_barrier_destroy(&s.start);
        assert_int_equal(atomic_load(&s.errors), 0);
        assert_int_equal(atomic_load(&s.stale), 0);
        assert_true(atomic_load(&s.reads) > 0);
        assert_int_equal(atomic_load(&s.published[1]), 1 + STRESS_WRITES);
        dbk_cached_repo_free(s.r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

static void cache_repo_no_stale_reads_under_writes(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_stress", repo_stress_engine);
}

/* ---- the cached repository: canonical keys -------------------------------- */

/* The cached read must answer exactly what the uncached one answers. */
static void same_as_uncached(dbk_cached_repo *r, dbk_db *db, const char *column, dbk_value v,
                             const char *what)
{
    struct cuser u1, u2;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    dbk_rc want = column ? dbk_repo_find_by(db, &cuser_entity, column, v, &u1, a, &err)
                         : dbk_repo_find_by_id(db, &cuser_entity, v, &u1, a, &err);
    for (int i = 0; i < 2; i++) { /* a miss, then what the cache kept */
        dbk_rc got = column ? dbk_cached_repo_find_by(r, db, column, v, &u2, a, &err)
                            : dbk_cached_repo_find_by_id(r, db, v, &u2, a, &err);
        if (got != want)
            fail_msg("lookup %s: cached %s, uncached %s (%s)", what, dbk_rc_name(got),
                     dbk_rc_name(want), err.message);
        if (got == DBK_OK && (u1.id != u2.id || strcmp(u1.name, u2.name) != 0))
            fail_msg("lookup %s: cached row %lld '%s', database row %lld '%s'", what,
                     (long long)u2.id, u2.name, (long long)u1.id, u1.name);
    }
    dbk_arena_free(a);
}

static void id_lookups(dbk_cached_repo *r, dbk_db *db, int64_t id)
{
    char s[8][40];
    snprintf(s[0], sizeof s[0], "%05lld", (long long)id);
    snprintf(s[1], sizeof s[1], "+%lld", (long long)id);
    snprintf(s[2], sizeof s[2], " %lld", (long long)id);
    snprintf(s[3], sizeof s[3], "%lld ", (long long)id);
    snprintf(s[4], sizeof s[4], "%lld.0", (long long)id);
    snprintf(s[5], sizeof s[5], "%lld", (long long)id);
    snprintf(s[6], sizeof s[6], "99999999999999999999");
    snprintf(s[7], sizeof s[7], "x%lld", (long long)id);
    for (int i = 0; i < 8; i++)
        same_as_uncached(r, db, NULL, dbk_text(s[i]), s[i]);
    static char longid[2001];
    memset(longid, '0', 2000);
    snprintf(longid + 1990, 11, "%010lld", (long long)id);
    same_as_uncached(r, db, NULL, dbk_text(longid), "2000 digits");
    same_as_uncached(r, db, NULL, dbk_int64(id), "int64");
    same_as_uncached(r, db, "id", dbk_int64(id), "int64 through find_by");
    same_as_uncached(r, db, "id", dbk_text(s[0]), "zero-padded text through find_by");
    same_as_uncached(r, db, NULL, dbk_double((double)id), "double");
    same_as_uncached(r, db, NULL, dbk_null(), "NULL");
    /* a unique text column: too long for a key, NULL */
    static char longmail[2001];
    memset(longmail, 'm', 2000);
    same_as_uncached(r, db, "email", dbk_text(longmail), "2000-byte email");
    same_as_uncached(r, db, "email", dbk_null(), "NULL email");
}

static dbk_rc rename_by(dbk_cached_repo *r, dbk_db *db, dbk_value id, const char *name)
{
    struct cuser in = {0, NULL, name};
    const char *fields[] = {"name"};
    dbk_error err;
    dbk_rc rc = dbk_cached_repo_update(r, db, id, &in, fields, 1, NULL, NULL, &err);
    if (rc != DBK_OK)
        fail_msg("rename: %s", err.message);
    return rc;
}

static void canonical_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbkt_exec(db, engine == DBK_ENGINE_POSTGRES
                      ? "DROP TABLE IF EXISTS cusers; CREATE TABLE cusers (id BIGSERIAL PRIMARY "
                        "KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL)"
                      : "DROP TABLE IF EXISTS cusers; CREATE TABLE cusers (id INTEGER PRIMARY "
                        "KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL)");
    dbkt_exec(db, "INSERT INTO cusers (email, name) VALUES ('a@x', 'A'), ('b@x', 'B'), "
                  "('c@x', 'C'), ('d@x', 'D'), ('e@x', 'E')");
    for (int b = 0; b < 2; b++) {
        dbkt_exec(db, "UPDATE cusers SET name = 'E' WHERE id = 5");
        dbk_cache_opts o = {0};
        o.negative_ttl_ms = 60000;
        o.command_timeout_ms = 2000; /* hits asserted below: no timeouts on a loaded machine */
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        dbk_cached_repo *r = NULL;
        dbk_error err;
        DBKT_OK(dbk_cached_repo_new(c, &cuser_entity, NULL, &r, &err), &err);
        id_lookups(r, db, 5); /* every spelling, cached where it can be */
        rename_by(r, db, dbk_int64(5), "E2");
        id_lookups(r, db, 5); /* no spelling still sees 'E' */
        rename_by(r, db, dbk_text("0005"), "E3"); /* the writer's spelling must not matter */
        id_lookups(r, db, 5);
        rename_by(r, db, dbk_text(" 5"), "E4");
        id_lookups(r, db, 5);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

static void cache_repo_canonical_id_keys(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_canon", canonical_engine);
}

/* Unique text columns whose equality is not byte equality. */
struct cperson {
    int64_t id;
    const char *email;  /* case-insensitive: SQLite NOCASE, PostgreSQL ICU level 2 */
    const char *code;   /* trailing spaces ignored: SQLite RTRIM, PostgreSQL char(8) */
    const char *handle; /* plain text: byte equality */
    const char *name;
};

static const dbk_field cperson_fields[] = {
    DBK_FIELD(struct cperson, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct cperson, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct cperson, code, "code", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct cperson, handle, "handle", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct cperson, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity cperson_entity = DBK_ENTITY_PLAIN("cpeople", struct cperson, cperson_fields);

/* find_by through the cache; checks the rc and (when found) the name, and
 * that the uncached repository agrees. */
static void person_is(dbk_cached_repo *r, dbk_db *db, const char *column, const char *value,
                      dbk_rc want, const char *name)
{
    struct cperson p;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    dbk_rc rc = dbk_repo_find_by(db, &cperson_entity, column, dbk_text(value), &p, a, &err);
    if (rc != want)
        fail_msg("uncached %s = '%s': %s, expected %s", column, value, dbk_rc_name(rc),
                 dbk_rc_name(want));
    rc = dbk_cached_repo_find_by(r, db, column, dbk_text(value), &p, a, &err);
    if (rc != want)
        fail_msg("cached %s = '%s': %s, expected %s (%s)", column, value, dbk_rc_name(rc),
                 dbk_rc_name(want), err.message);
    if (rc == DBK_OK && strcmp(p.name, name) != 0)
        fail_msg("cached %s = '%s': name '%s', expected '%s'", column, value, p.name, name);
    dbk_arena_free(a);
}

static void collation_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    if (engine == DBK_ENGINE_POSTGRES)
        dbkt_exec(db, "DROP TABLE IF EXISTS cpeople; DROP COLLATION IF EXISTS dbkt_ci; "
                      "CREATE COLLATION dbkt_ci (provider = icu, locale = 'und-u-ks-level2', "
                      "deterministic = false); "
                      "CREATE TABLE cpeople (id BIGSERIAL PRIMARY KEY, email TEXT COLLATE dbkt_ci "
                      "UNIQUE NOT NULL, code CHAR(8) UNIQUE NOT NULL, handle TEXT UNIQUE NOT NULL, "
                      "name TEXT NOT NULL)");
    else
        dbkt_exec(db, "DROP TABLE IF EXISTS cpeople; "
                      "CREATE TABLE cpeople (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE "
                      "UNIQUE NOT NULL, code TEXT COLLATE RTRIM UNIQUE NOT NULL, handle TEXT "
                      "UNIQUE NOT NULL, name TEXT NOT NULL)");
    for (int b = 0; b < 2; b++) {
        dbkt_exec(db, "DELETE FROM cpeople");
        dbk_cache_opts o = {0};
        o.negative_ttl_ms = 60000;
        o.command_timeout_ms = 2000; /* hits asserted below: no timeouts on a loaded machine */
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        dbk_cached_repo *r = NULL;
        dbk_error err;
        DBKT_OK(dbk_cached_repo_new(c, &cperson_entity, NULL, &r, &err), &err);

        /* "not found" for another spelling must not outlive the create */
        person_is(r, db, "email", "ADA@X.ORG", DBK_ENOT_FOUND, NULL);
        person_is(r, db, "code", "AB1  ", DBK_ENOT_FOUND, NULL);
        struct cperson in = {0, "ada@x.org", "AB1", "ada", "Ada"}, out;
        dbk_arena *a = dbk_arena_new(0);
        DBKT_OK(dbk_cached_repo_create(r, db, &in, &out, a, &err), &err);
        person_is(r, db, "email", "ADA@X.ORG", DBK_OK, "Ada");
        person_is(r, db, "email", "Ada@x.org", DBK_OK, "Ada");
        person_is(r, db, "code", "AB1  ", DBK_OK, "Ada");
        person_is(r, db, "handle", "ada", DBK_OK, "Ada");
        person_is(r, db, "handle", "ADA", DBK_ENOT_FOUND, NULL);

        /* a write through the repository reaches every spelling */
        struct cperson upd = {0, NULL, NULL, NULL, "Ada L."};
        const char *fields[] = {"name"};
        DBKT_OK(dbk_cached_repo_update(r, db, dbk_int64(out.id), &upd, fields, 1, NULL, NULL, &err),
                &err);
        person_is(r, db, "email", "ADA@X.ORG", DBK_OK, "Ada L.");
        person_is(r, db, "email", "Ada@x.org", DBK_OK, "Ada L.");
        person_is(r, db, "email", "ada@x.org", DBK_OK, "Ada L.");
        person_is(r, db, "code", "AB1  ", DBK_OK, "Ada L.");
        person_is(r, db, "code", "AB1", DBK_OK, "Ada L.");
        person_is(r, db, "handle", "ada", DBK_OK, "Ada L.");

        /* the byte-equal column is still cached: a second read runs no query */
        dbk_db_set_observer(db, count_query, NULL);
        struct cperson p;
        DBKT_OK(dbk_cached_repo_find_by(r, db, "handle", dbk_text("ada"), &p, a, &err), &err);
        atomic_store(&g_queries, 0);
        DBKT_OK(dbk_cached_repo_find_by(r, db, "handle", dbk_text("ada"), &p, a, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(out.id), &p, a, &err), &err);
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(out.id), &p, a, &err), &err);
        assert_int_equal(atomic_load(&g_queries), 1);
        dbk_db_set_observer(db, NULL, NULL);

        /* delete: every spelling is gone */
        DBKT_OK(dbk_cached_repo_delete(r, db, dbk_int64(out.id), NULL, NULL, &err), &err);
        person_is(r, db, "email", "ADA@X.ORG", DBK_ENOT_FOUND, NULL);
        person_is(r, db, "code", "AB1  ", DBK_ENOT_FOUND, NULL);
        person_is(r, db, "handle", "ada", DBK_ENOT_FOUND, NULL);
        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

static void cache_repo_collation_keys(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_coll", collation_engine);
}


/* A uuid primary key held as text: PostgreSQL compares uuids (any case,
 * braces), so only the canonical spelling is keyed; SQLite compares bytes. */
struct utok {
    const char *id;
    const char *name;
};

static const dbk_field utok_fields[] = {
    DBK_FIELD_CAST(struct utok, id, "id", DBK_TYPE_TEXT, DBK_F_PK, "uuid"),
    DBK_FIELD(struct utok, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity utok_entity = DBK_ENTITY_PLAIN("utoks", struct utok, utok_fields);

static void utok_same(dbk_cached_repo *r, dbk_db *db, const char *id, const char *what)
{
    struct utok u1, u2;
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    dbk_rc want = dbk_repo_find_by_id(db, &utok_entity, dbk_text(id), &u1, a, &err);
    for (int i = 0; i < 2; i++) {
        dbk_rc got = dbk_cached_repo_find_by_id(r, db, dbk_text(id), &u2, a, &err);
        if (got != want)
            fail_msg("uuid %s: cached %s, uncached %s", what, dbk_rc_name(got),
                     dbk_rc_name(want));
        if (got == DBK_OK && strcmp(u1.name, u2.name) != 0)
            fail_msg("uuid %s: cached '%s', database '%s'", what, u2.name, u1.name);
    }
    dbk_arena_free(a);
}

static void uuid_engine(const char *url, dbk_engine engine)
{
    dbk_conn *conn = dbkt_open(url);
    dbk_db *db = dbk_conn_db(conn);
    dbkt_exec(db, engine == DBK_ENGINE_POSTGRES
                      ? "DROP TABLE IF EXISTS utoks; CREATE TABLE utoks (id UUID PRIMARY KEY, "
                        "name TEXT NOT NULL)"
                      : "DROP TABLE IF EXISTS utoks; CREATE TABLE utoks (id TEXT PRIMARY KEY, "
                        "name TEXT NOT NULL)");
    static const char *id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    static const char *spellings[] = {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                                      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                                      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                                      "a0eebc999c0b4ef8bb6d6bb9bd380a11"};
    for (int b = 0; b < 2; b++) {
        dbkt_exec(db, "DELETE FROM utoks");
        dbk_cache_opts o = {0};
        o.negative_ttl_ms = 60000;
        o.command_timeout_ms = 2000; /* hits asserted below: no timeouts on a loaded machine */
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        dbk_cached_repo *r = NULL;
        dbk_error err;
        DBKT_OK(dbk_cached_repo_new(c, &utok_entity, NULL, &r, &err), &err);
        for (int i = 0; i < 4; i++)
            utok_same(r, db, spellings[i], spellings[i]); /* "not found", maybe cached */
        struct utok in = {id, "one"};
        DBKT_OK(dbk_cached_repo_create(r, db, &in, NULL, NULL, &err), &err);
        for (int i = 0; i < 4; i++)
            utok_same(r, db, spellings[i], spellings[i]);
        struct utok upd = {NULL, "two"};
        const char *fields[] = {"name"};
        DBKT_OK(dbk_cached_repo_update(r, db, dbk_text(id), &upd, fields, 1, NULL, NULL, &err),
                &err);
        for (int i = 0; i < 4; i++)
            utok_same(r, db, spellings[i], spellings[i]);
        /* the canonical spelling is served from the cache */
        dbk_db_set_observer(db, count_query, NULL);
        atomic_store(&g_queries, 0);
        struct utok u;
        dbk_arena *a = dbk_arena_new(0);
        DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_text(id), &u, a, &err), &err);
        assert_string_equal(u.name, "two");
        assert_int_equal(atomic_load(&g_queries), 0);
        /* many at once: each spelling as find_by_id answers it; the cold
         * keys (a text key: one load each) loaded once however often they
         * repeat, then cached */
        char key[80];
        int kl = snprintf(key, sizeof key, "utoks:id:%s", id);
        DBKT_OK(dbk_cache_delete(c, key, (size_t)kl, &err), &err);
        static const char *none = "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12";
        dbk_value ids[7] = {dbk_text(id),           dbk_text(spellings[1]), dbk_text(none),
                            dbk_text(spellings[2]), dbk_text(id),           dbk_text(none),
                            dbk_text(spellings[3])};
        struct utok rows[7];
        void *outs[7];
        dbk_rc rcs[7];
        for (int i = 0; i < 7; i++)
            outs[i] = &rows[i];
        for (int pass = 0; pass < 2; pass++) {
            atomic_store(&g_queries, 0);
            DBKT_OK(dbk_cached_repo_find_by_ids(r, db, 7, ids, outs, rcs, a, &err), &err);
            int bypass = 0; /* spellings that are not keyed: one query each, every time */
            for (int i = 0; i < 7; i++) {
                struct utok u1;
                dbk_rc want = dbk_repo_find_by_id(db, &utok_entity, ids[i], &u1, a, &err);
                if (rcs[i] != want)
                    fail_msg("id %d: %s, find_by_id %s", i, dbk_rc_name(rcs[i]),
                             dbk_rc_name(want));
                if (want == DBK_OK)
                    assert_string_equal(rows[i].name, "two");
                bypass += i == 1 || i == 3 || i == 6;
            }
            /* the 7 find_by_id above count too */
            int q = atomic_load(&g_queries) - 7;
            if (engine == DBK_ENGINE_POSTGRES)
                assert_int_equal(q, (pass ? 0 : 2) + bypass);
            else /* SQLite compares bytes: every spelling is its own key, and
                  * the other spellings' "not found" is cached from above */
                assert_int_equal(q, pass ? 0 : 2);
        }
        dbk_db_set_observer(db, NULL, NULL);
        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_cache_close(c);
    }
    dbk_conn_close(conn);
}

static void cache_repo_uuid_keys(void **state)
{
    (void)state;
    dbkt_each_engine("cache_repo_uuid", uuid_engine);
}

/* ---- closing with invalidations still queued ------------------------------ */

/* Log lines captured through dbk_set_log. */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[8192];

static void capture_log(void *ctx, dbk_log_level level, const char *msg)
{
    (void)ctx;
    pthread_mutex_lock(&g_log_mu);
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s %s\n",
             level == DBK_LOG_WARN ? "WARN" : level == DBK_LOG_ERROR ? "ERROR" : "INFO", msg);
    pthread_mutex_unlock(&g_log_mu);
}

static void log_start(void)
{
    pthread_mutex_lock(&g_log_mu);
    g_log[0] = 0;
    pthread_mutex_unlock(&g_log_mu);
    dbk_set_log(capture_log, NULL, DBK_LOG_INFO);
}

static bool log_has(const char *s)
{
    pthread_mutex_lock(&g_log_mu);
    bool found = strstr(g_log, s) != NULL;
    pthread_mutex_unlock(&g_log_mu);
    return found;
}

/* Does the server hold key (raw, prefix included)? */
static bool redis_has(int port, const char *key)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_true(rc && !rc->err);
    redisReply *rep = redisCommand(rc, "EXISTS %s", key);
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER);
    bool has = rep->integer == 1;
    freeReplyObject(rep);
    redisFree(rc);
    return has;
}

static void redis_raw_set(int port, const char *key, const char *val)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_true(rc && !rc->err);
    redisReply *rep = redisCommand(rc, "SET %s %s", key, val);
    assert_true(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    redisFree(rc);
}

/* Queues `n` deletes (k0, k1, ...) on a cache whose Redis is down. */
static void queue_deletes(dbk_cache *c, int n)
{
    for (int i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        dbk_error err;
        assert_int_not_equal(dbk_cache_delete(c, key, strlen(key), &err), DBK_OK);
    }
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_int_equal(st.pending_invalidations, (uint64_t)n);
}

/* Redis is back by the time the cache closes: the queue reaches it. */
static void cache_redis_close_delivers_queued_invalidations(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.key_prefix = "cq:";
    o.command_timeout_ms = 1000;
    dbk_cache *c = open_cache(rs.url, &o);
    put(c, "k0", "old", 60000);
    redis_kill(&rs);
    queue_deletes(c, 2);
    redis_start(&rs, NULL); /* same port, empty: another process caches k0 again */
    redis_raw_set(rs.port, "cq:v:k0", "old");
    log_start();
    dbk_cache_close(c);
    dbk_set_log(NULL, NULL, DBK_LOG_INFO);
    assert_false(redis_has(rs.port, "cq:v:k0"));
    assert_true(redis_has(rs.port, "cq:g:k0")); /* the generation moved too */
    assert_true(redis_has(rs.port, "cq:g:k1"));
    assert_true(log_has("delivered 2 queued invalidations at close"));
    assert_false(log_has("WARN"));
    redis_kill(&rs);
}

struct restarter {
    struct own_redis *rs;
    int after_ms;
};

static void *restart_later(void *arg)
{
    struct restarter *r = arg;
    sleep_ms(r->after_ms);
    redis_start(r->rs, NULL);
    return NULL;
}

/* Redis comes back while dbk_cache_close() waits for it. */
static void cache_redis_close_waits_for_redis(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.key_prefix = "cw:";
    o.command_timeout_ms = 1000;
    o.close_timeout_ms = 20000; /* an upper bound, not a wait: close returns once delivered */
    dbk_cache *c = open_cache(rs.url, &o);
    put(c, "k0", "old", 60000);
    redis_kill(&rs);
    queue_deletes(c, 3);
    struct restarter rr = {&rs, 300};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, restart_later, &rr), 0);
    log_start();
    dbk_cache_close(c);
    dbk_set_log(NULL, NULL, DBK_LOG_INFO);
    pthread_join(t, NULL);
    assert_true(redis_has(rs.port, "cw:g:k0"));
    assert_true(redis_has(rs.port, "cw:g:k2"));
    assert_true(log_has("delivered 3 queued invalidations at close"));
    redis_kill(&rs);
}

/* Redis never comes back (down, or frozen): close gives up within its bound
 * and says how many invalidations were lost. */
static void cache_redis_close_logs_undelivered(void **state)
{
    (void)state;
    for (int frozen = 0; frozen < 2; frozen++) {
        struct own_redis rs = {0};
        redis_start(&rs, NULL);
        dbk_cache_opts o = {0};
        o.close_timeout_ms = 300;
        o.command_timeout_ms = 500;
        dbk_cache *c = open_cache(rs.url, &o);
        put(c, "k0", "old", 60000);
        if (frozen)
            kill(rs.pid, SIGSTOP); /* connects still succeed; nothing answers */
        else
            redis_kill(&rs);
        queue_deletes(c, 2);
        log_start();
        int64_t t0 = now_ms();
        dbk_cache_close(c);
        int64_t took = now_ms() - t0;
        dbk_set_log(NULL, NULL, DBK_LOG_INFO);
        if (frozen) {
            kill(rs.pid, SIGCONT);
            redis_kill(&rs);
        }
        if (!log_has("WARN") || !log_has("2 queued invalidations not delivered"))
            fail_msg("no warning with the count; log:\n%s", g_log);
        assert_true(log_has("until their ttl runs out"));
        /* bounded: close_timeout_ms plus at most one step; generous slack
         * for a loaded machine, far below a hang */
        assert_true(took < 300 + 5000);
    }
}

/* close_timeout_ms < 0: no attempt, but still the warning. */
static void cache_redis_close_no_wait_still_warns(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbk_cache_opts o = {0};
    o.close_timeout_ms = -1;
    o.command_timeout_ms = 1000;
    dbk_cache *c = open_cache(rs.url, &o);
    put(c, "k0", "old", 60000);
    redis_kill(&rs);
    queue_deletes(c, 1);
    log_start();
    dbk_cache_close(c);
    dbk_set_log(NULL, NULL, DBK_LOG_INFO);
    assert_true(log_has("WARN"));
    assert_true(log_has("1 queued invalidation not delivered"));
}

/* ---- value sizes ----------------------------------------------------------- */

static void cache_codec_size_limits(void **state)
{
    (void)state;
    static const char small[16] = "0123456789abcde";
    void *out = (void *)1;
    size_t outlen = 7;
    dbk_error err;
    /* one field over the limit: refused before anything is read or allocated
     * (the pointer covers 16 bytes, the length claims more) */
    dbk_value v = dbk_blob(small, (size_t)DBK_CACHE_MAX_VALUE + 1);
    DBKT_RC(DBK_EINVALID, dbk_cache_encode_row(1, &v, 1, &out, &outlen, &err));
    assert_null(out);
    assert_int_equal(outlen, 0);
    assert_non_null(strstr(err.message, "DBK_CACHE_MAX_VALUE"));
    v = dbk_textn(small, (size_t)UINT32_MAX + 10);
    DBKT_RC(DBK_EINVALID, dbk_cache_encode_row(1, &v, 1, &out, &outlen, &err));
    /* fields each under the limit whose sum is over it */
    dbk_value two[3] = {dbk_blob(small, DBK_CACHE_MAX_VALUE / 2), dbk_int64(1),
                        dbk_blob(small, DBK_CACHE_MAX_VALUE / 2)};
    DBKT_RC(DBK_EINVALID, dbk_cache_encode_row(1, two, 3, &out, &outlen, &err));
    assert_non_null(strstr(err.message, "536870911"));
    assert_null(out);
    /* a field that fits exactly round-trips */
    char *big = malloc(100000);
    memset(big, 'b', 100000);
    v = dbk_blob(big, 100000);
    DBKT_OK(dbk_cache_encode_row(1, &v, 1, &out, &outlen, &err), &err);
    dbk_value back;
    DBKT_OK(dbk_cache_decode_row(out, outlen, 1, &back, 1, &err), &err);
    assert_int_equal(back.u.bytes.len, 100000);
    dbk_free(out);
    free(big);
    /* max_value_bytes over the backend limit is a configuration error */
    dbk_cache_opts o = {0};
    o.url = "memory:";
    o.max_value_bytes = (size_t)DBK_CACHE_MAX_VALUE + 1;
    dbk_cache *c = NULL;
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
}

static dbk_rc big_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                       dbk_error *err)
{
    (void)key;
    (void)keylen;
    (void)err;
    atomic_fetch_add((atomic_int *)ctx, 1);
    char *v = malloc(5000);
    memset(v, 'z', 5000);
    *val = v;
    *vallen = 5000;
    return DBK_OK;
}

/* A value over max_value_bytes is served from the loader, never stored,
 * and dbk_cache_set refuses it by name. */
static void cache_oversized_value_served_not_stored(void **state)
{
    (void)state;
    for (int b = 0; b < 2; b++) {
        dbk_cache_opts o = {0};
        o.max_value_bytes = 4096;
        o.command_timeout_ms = 2000;
        dbk_cache *c = b ? open_redis(&o) : open_mem(&o);
        atomic_int runs = 0;
        for (int i = 0; i < 3; i++) {
            void *v = NULL;
            size_t n = 0;
            dbk_error err;
            DBKT_OK(dbk_cache_get_or_load(c, "big", 3, big_load, &runs, 60000, &v, &n, &err),
                    &err);
            assert_int_equal(n, 5000);
            dbk_free(v);
        }
        assert_int_equal(atomic_load(&runs), 3); /* loaded each time: nothing stored */
        char *blob = calloc(1, 4097);
        dbk_error err;
        DBKT_RC(DBK_EINVALID, dbk_cache_set(c, "big2", 4, blob, 4097, 60000, &err));
        assert_non_null(strstr(err.message, "max_value_bytes (4096)"));
        DBKT_OK(dbk_cache_set(c, "fits", 4, blob, 4096, 60000, &err), &err);
        free(blob);
        want_miss(c, "big2");

        /* the cached repository: a row too large to cache is still answered */
        char *url = dbkt_sqlite_url("cache_big_row");
        dbk_conn *conn = dbkt_open(url);
        free(url);
        dbk_db *db = dbk_conn_db(conn);
        dbkt_exec(db, "DROP TABLE IF EXISTS cusers; CREATE TABLE cusers (id INTEGER PRIMARY KEY, "
                      "email TEXT UNIQUE NOT NULL, name TEXT NOT NULL); "
                      "INSERT INTO cusers VALUES (1, 'big@x', printf('%.5000c', 'n'))");
        dbk_cached_repo *r = NULL;
        DBKT_OK(dbk_cached_repo_new(c, &cuser_entity, NULL, &r, &err), &err);
        dbk_db_set_observer(db, count_query, NULL);
        atomic_store(&g_queries, 0);
        dbk_arena *a = dbk_arena_new(0);
        for (int i = 0; i < 2; i++) {
            struct cuser u;
            DBKT_OK(dbk_cached_repo_find_by_id(r, db, dbk_int64(1), &u, a, &err), &err);
            assert_int_equal(strlen(u.name), 5000);
        }
        assert_int_equal(atomic_load(&g_queries), 2);
        dbk_arena_free(a);
        dbk_cached_repo_free(r);
        dbk_conn_close(conn);
        dbk_cache_close(c);
    }
}

/* ---- auto-pipelining ------------------------------------------------------ */

/* "url?auto_pipeline=<on>" into buf. */
static const char *pipe_url(char *buf, size_t n, const char *url, bool on)
{
    snprintf(buf, n, "%s%sauto_pipeline=%d", url, strchr(url, '?') ? "&" : "?", on ? 1 : 0);
    return buf;
}

#define PL_THREADS 32
#define PL_KEYS 8

/* A workload of PL_THREADS threads on one cache: writers commit a new
 * version of a key ("the database": ver[k]) and invalidate it, then
 * publish the version as invalidated (done[k]); readers read through
 * dbk_cache_get_or_load and check the value names their key and is not
 * older than what was invalidated before the read began; setters store
 * values of their own keys with dbk_cache_set and read them back. Every
 * value names its key, so a reply handed to the wrong caller is caught. */
struct pl_work {
    dbk_cache *c;
    atomic_long ver[PL_KEYS], done[PL_KEYS];
    atomic_bool stop;
    atomic_int reads, failed, stale, wrong, writes, sets;
    char bad[256];
    pthread_mutex_t mu;
};

struct pl_thread {
    struct pl_work *w;
    int id;
};

static void pl_note(struct pl_work *w, atomic_int *counter, const char *what, const void *v,
                    size_t n)
{
    atomic_fetch_add(counter, 1);
    pthread_mutex_lock(&w->mu);
    if (!w->bad[0])
        snprintf(w->bad, sizeof w->bad, "%s: %.*s", what, (int)(n > 100 ? 100 : n),
                 v ? (const char *)v : "");
    pthread_mutex_unlock(&w->mu);
}

static dbk_rc pl_load(void *ctx, const void *key, size_t keylen, void **val, size_t *vallen,
                      dbk_error *err)
{
    (void)err;
    struct pl_work *w = ctx;
    int k = keylen > 3 ? atoi((const char *)key + 3) : 0; /* "pk:<k>" */
    if (k < 0 || k >= PL_KEYS)
        k = 0; /* a wrong key shows up as a wrong value in the reader */
    char buf[64];
    int n = snprintf(buf, sizeof buf, "key=%d;v=%ld", k, atomic_load(&w->ver[k]));
    *val = strdup(buf);
    *vallen = (size_t)n;
    return DBK_OK;
}

static void *pl_main(void *arg)
{
    struct pl_thread *th = arg;
    struct pl_work *w = th->w;
    unsigned seed = (unsigned)th->id * 7919u + 1;
    int role = th->id % 8 == 0 ? 0 : (th->id % 8 == 1 ? 2 : 1); /* writer, reader, setter */
    long my_sets = 0;
    int64_t end = now_ms() + 20000; /* a bound even if stop never comes */
    for (int i = 0; i < 100000 && !atomic_load(&w->stop) && now_ms() < end; i++) {
        int k = (int)(rand_r(&seed) % PL_KEYS);
        char key[32];
        int kl = snprintf(key, sizeof key, "pk:%d", k);
        dbk_error err;
        if (role == 0) {
            long v = atomic_fetch_add(&w->ver[k], 1) + 1; /* commit */
            (void)dbk_cache_delete(w->c, key, (size_t)kl, &err); /* after commit */
            long d = atomic_load(&w->done[k]);
            while (d < v && !atomic_compare_exchange_weak(&w->done[k], &d, v))
                ;
            atomic_fetch_add(&w->writes, 1);
            sleep_ms(1);
        } else if (role == 1) {
            long floor = atomic_load(&w->done[k]);
            void *v = NULL;
            size_t n = 0;
            dbk_rc rc = dbk_cache_get_or_load(w->c, key, (size_t)kl, pl_load, w, 60000, &v, &n,
                                              &err);
            atomic_fetch_add(&w->reads, 1);
            if (rc != DBK_OK) {
                pl_note(w, &w->failed, "failed read", err.message, strlen(err.message));
                continue;
            }
            char want[32];
            int wl = snprintf(want, sizeof want, "key=%d;v=", k);
            long got = -1;
            if (n < (size_t)wl || memcmp(v, want, (size_t)wl) != 0)
                pl_note(w, &w->wrong, "value of another key", v, n);
            else {
                char num[32];
                size_t nl = n - (size_t)wl < sizeof num - 1 ? n - (size_t)wl : sizeof num - 1;
                memcpy(num, (char *)v + wl, nl);
                num[nl] = 0;
                got = atol(num);
                if (got < floor)
                    pl_note(w, &w->stale, "stale read", v, n);
            }
            dbk_free(v);
        } else {
            char skey[32], sval[64];
            int sl = snprintf(skey, sizeof skey, "ps:%d", th->id);
            int vl = snprintf(sval, sizeof sval, "ps:%d:%ld", th->id, ++my_sets);
            (void)dbk_cache_set(w->c, skey, (size_t)sl, sval, (size_t)vl, 60000, &err);
            void *v = NULL;
            size_t n = 0;
            dbk_rc rc = dbk_cache_get(w->c, skey, (size_t)sl, &v, &n, &err);
            atomic_fetch_add(&w->sets, 1);
            char want[32];
            int wl = snprintf(want, sizeof want, "ps:%d:", th->id);
            if (rc == DBK_OK && (n < (size_t)wl || memcmp(v, want, (size_t)wl) != 0))
                pl_note(w, &w->wrong, "value of another key", v, n);
            dbk_free(v);
        }
    }
    return NULL;
}

/* Runs the workload for run_ms; `disrupt` (may be NULL) is called from this
 * thread after disrupt_at_ms. */
static void pl_run(struct pl_work *w, dbk_cache *c, int run_ms, int disrupt_at_ms,
                   void (*disrupt)(void *), void *dctx)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    w->c = c;
    struct pl_thread th[PL_THREADS];
    pthread_t t[PL_THREADS];
    for (int i = 0; i < PL_THREADS; i++) {
        th[i].w = w;
        th[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, pl_main, &th[i]), 0);
    }
    int64_t start = now_ms();
    if (disrupt) {
        sleep_ms(disrupt_at_ms);
        disrupt(dctx);
    }
    while (now_ms() - start < run_ms)
        sleep_ms(10);
    atomic_store(&w->stop, true);
    for (int i = 0; i < PL_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_mutex_destroy(&w->mu);
    if (atomic_load(&w->stale) || atomic_load(&w->wrong) || atomic_load(&w->failed))
        fail_msg("%d stale, %d wrong-key, %d failed reads of %d (first: %s)",
                 atomic_load(&w->stale), atomic_load(&w->wrong), atomic_load(&w->failed),
                 atomic_load(&w->reads), w->bad);
    assert_true(atomic_load(&w->reads) > 100);
    assert_true(atomic_load(&w->writes) > 10);
    assert_true(atomic_load(&w->sets) > 10);
}

static void cache_redis_pipeline_concurrent_no_stale(void **state)
{
    (void)state;
    char url[256];
    dbk_cache_opts o = {0};
    o.pool_size = 2; /* 32 threads on 2 connections: pipelines */
    o.command_timeout_ms = 2000;
    dbk_cache *c = open_cache(pipe_url(url, sizeof url, dbkt_redis_url(), true), &o);
    struct pl_work *w = calloc(1, sizeof *w);
    pl_run(w, c, 1500, 0, NULL, NULL);
    dbk_cache_stats st;
    dbk_error err;
    DBKT_OK(dbk_cache_get_stats(c, &st, &err), &err);
    assert_true(st.hits > 0); /* the cache served, it was not bypassed */
    free(w);
    dbk_cache_close(c);
}

static void restart_redis(void *ctx)
{
    struct own_redis *rs = ctx;
    redis_kill(rs);
    sleep_ms(100);
    redis_start(rs, NULL); /* same port, empty data */
}

static void cache_redis_pipeline_restart_no_stale(void **state)
{
    (void)state;
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    char url[256];
    dbk_cache_opts o = {0};
    o.pool_size = 2;
    o.command_timeout_ms = 500;
    o.breaker_cooldown_ms = 100;
    dbk_cache *c = open_cache(pipe_url(url, sizeof url, rs.url, true), &o);
    struct pl_work *w = calloc(1, sizeof *w);
    pl_run(w, c, 2000, 600, restart_redis, &rs);
    /* and it caches again afterwards */
    struct loader l = {0};
    l.value = "after";
    int64_t end = now_ms() + 5000;
    bool hit = false;
    while (!hit && now_ms() < end) {
        free(load_str(c, "after-restart", &l, 60000));
        dbk_error err;
        void *v = NULL;
        size_t n = 0;
        hit = dbk_cache_get(c, "after-restart", 13, &v, &n, &err) == DBK_OK;
        dbk_free(v);
        sleep_ms(20);
    }
    assert_true(hit);
    free(w);
    dbk_cache_close(c);
    redis_kill(&rs);
}

/* 16 callers waiting in one pipeline on one connection when the server
 * stops answering: every call returns by its deadline with an error, none
 * hangs; once the server answers again, values read back are the right
 * ones (no reply left over from the stalled pipeline reaches a later
 * caller). The stall is a fault proxy (tests/support/tcpproxy.h) that
 * delays every chunk, then drops the server's answers: caller 0's command
 * goes out first; the 15 others queue behind it and go out together when
 * its reply is in; then the answers stop. With auto-pipelining off the same
 * callers wait for the one connection instead (the old behaviour:
 * "connections busy"). */
#define STALL_THREADS 16
#define STALL_TIMEOUT_MS 1500
#define STALL_DELAY_MS 300

struct stall {
    dbk_cache *c;
    int id;
    atomic_bool done;
    dbk_rc rc;
    int64_t took_ms;
    char msg[DBK_ERROR_MESSAGE_MAX];
};

static void *stall_main(void *arg)
{
    struct stall *s = arg;
    char key[32];
    int kl = snprintf(key, sizeof key, "stall:%d", s->id);
    int64_t t0 = now_ms();
    void *v = NULL;
    size_t n = 0;
    dbk_error err;
    memset(&err, 0, sizeof err);
    s->rc = dbk_cache_get(s->c, key, (size_t)kl, &v, &n, &err);
    s->took_ms = now_ms() - t0;
    snprintf(s->msg, sizeof s->msg, "%s", err.message);
    dbk_free(v);
    atomic_store(&s->done, true);
    return NULL;
}

static void stall_case(bool on)
{
    struct own_redis rs = {0};
    redis_start(&rs, NULL);
    dbkt_proxy *px = dbkt_proxy_start("127.0.0.1", rs.port);
    char purl[128], url[256];
    snprintf(purl, sizeof purl, "redis://127.0.0.1:%d/0", dbkt_proxy_port(px));
    dbk_cache_opts o = {0};
    o.pool_size = 1;
    o.command_timeout_ms = STALL_TIMEOUT_MS;
    o.breaker_failures = 1000; /* every caller goes to Redis */
    dbk_cache *c = open_cache(pipe_url(url, sizeof url, purl, on), &o);
    put(c, "warm", "x", 60000); /* the connection is open */
    dbkt_proxy_set_delay(px, STALL_DELAY_MS);
    struct stall *s = calloc(STALL_THREADS, sizeof *s);
    pthread_t t[STALL_THREADS];
    for (int i = 0; i < STALL_THREADS; i++) {
        s[i].c = c;
        s[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, stall_main, &s[i]), 0);
        if (i == 0)
            sleep_ms(50); /* caller 0's command is out, held by the proxy */
    }
    /* caller 0 has its reply (the others' commands went out before it
     * returned): from now on the server's answers are dropped */
    int64_t end = now_ms() + 10000;
    while (!atomic_load(&s[0].done) && now_ms() < end)
        sleep_ms(1);
    dbkt_proxy_set_mode(px, DBKT_PROXY_HALF_OPEN);
    for (int i = 0; i < STALL_THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(s[0].rc, DBK_ENOT_FOUND); /* answered: a miss */
    int returned = 0, in_pipeline = 0, busy = 0;
    for (int i = 1; i < STALL_THREADS; i++) {
        returned++;
        if (s[i].rc == DBK_OK || s[i].rc == DBK_ENOT_FOUND)
            fail_msg("caller %d was answered through a silent server", i);
        /* its deadline, plus slack for a loaded machine */
        if (s[i].took_ms > STALL_TIMEOUT_MS + 1000)
            fail_msg("caller %d returned after %lld ms (deadline %d ms): %s", i,
                     (long long)s[i].took_ms, STALL_TIMEOUT_MS, s[i].msg);
        if (strstr(s[i].msg, "pipelined reply"))
            in_pipeline++;
        if (strstr(s[i].msg, "connections busy"))
            busy++;
    }
    assert_int_equal(returned, STALL_THREADS - 1);
    print_message("auto-pipelining %s: %d callers timed out in the pipeline, %d waiting for the "
                  "connection\n", on ? "on" : "off", in_pipeline, busy);
    if (on) {
        if (in_pipeline < 2) /* they went out together on the one connection */
            fail_msg("%d of %d callers waited in the pipeline (first: %s)", in_pipeline,
                     STALL_THREADS - 1, s[1].msg);
        assert_int_equal(busy, 0);
    } else {
        assert_int_equal(in_pipeline, 0);
        assert_true(busy >= 1); /* they waited for the one connection */
    }
    free(s);
    /* the server answers again: every value read is the one written for
     * its key */
    dbkt_proxy_set_delay(px, 0);
    dbkt_proxy_set_mode(px, DBKT_PROXY_FORWARD);
    end = now_ms() + 5000;
    bool ok = false;
    while (!ok && now_ms() < end) {
        dbk_error err;
        ok = dbk_cache_set(c, "after:1", 7, "one", 3, 60000, &err) == DBK_OK &&
             dbk_cache_set(c, "after:2", 7, "two", 3, 60000, &err) == DBK_OK;
        if (!ok)
            sleep_ms(20);
    }
    assert_true(ok);
    for (int i = 0; i < 20; i++) {
        want_value(c, "after:1", "one");
        want_value(c, "after:2", "two");
        want_value(c, "warm", "x");
    }
    dbk_cache_close(c);
    dbkt_proxy_stop(px);
    redis_kill(&rs);
}

static void cache_redis_pipeline_stalled_server_bounded(void **state)
{
    (void)state;
    stall_case(true);
}

static void cache_redis_pipeline_off_is_one_per_connection(void **state)
{
    (void)state;
    stall_case(false);
}

static void cache_redis_url_parameters(void **state)
{
    (void)state;
    dbk_error err;
    dbk_cache *c = NULL;
    dbk_cache_opts o = {0};
    o.url = "redis://:s3cretpw@127.0.0.1:1/0?auto_pipeline=2";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_non_null(strstr(err.message, "auto_pipeline"));
    o.url = "redis://:s3cretpw@127.0.0.1:1/0?sentinel_password=s3cretpw";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    assert_null(strstr(err.hint, "s3cretpw"));
    o.url = "redis-sentinel://127.0.0.1:1/m?sentinel_passwd=s3cretpw";
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    o.url = "redis-sentinel://:m4sterpw@127.0.0.1:1/m?sentinel_password=s3cretpw&auto_pipeline=0";
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbk_cache_close(c);
    char buf[256];
    dbk_redact_url(o.url, buf, sizeof buf);
    assert_null(strstr(buf, "s3cretpw"));
    assert_null(strstr(buf, "m4sterpw"));
    assert_non_null(strstr(buf, "auto_pipeline=0"));
}

/* dbk_cache_open() reads only its arguments: a CACHE_URL, REDIS_URL or
 * CACHE_AUTO_PIPELINE set in the environment changes nothing. */
static void cache_open_reads_no_environment(void **state)
{
    (void)state;
    dbk_error err;
    dbk_cache *c = NULL;
    setenv("CACHE_URL", "redis://127.0.0.1:1/0", 1);
    setenv("REDIS_URL", "redis://127.0.0.1:1/0", 1);
    setenv("CACHE_AUTO_PIPELINE", "maybe", 1);
    DBKT_OK(dbk_cache_open(NULL, &c, &err), &err);
    assert_string_equal(dbk_cache_backend(c), "memory");
    dbk_cache_close(c);
    dbk_cache_opts o = {0};
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    assert_string_equal(dbk_cache_backend(c), "memory");
    dbk_cache_close(c);
    /* a bad switch in the environment does not fail an open that names
     * its own redis URL */
    o.url = "redis://127.0.0.1:1/0";
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    assert_string_equal(dbk_cache_backend(c), "redis");
    dbk_cache_close(c);
    unsetenv("CACHE_URL");
    unsetenv("REDIS_URL");
    unsetenv("CACHE_AUTO_PIPELINE");
}

/* dbk_cache_opts_from_env() is where the environment is read: CACHE_URL,
 * else REDIS_URL; CACHE_AUTO_PIPELINE into the URL unless the URL names
 * auto_pipeline; bad values are DBK_ECONFIG with a hint, never quoting. */
static void cache_opts_from_env_reads_the_variables(void **state)
{
    (void)state;
    dbk_error err;
    dbk_cache *c = NULL;
    dbk_cache_env *env = NULL;
    dbk_cache_opts o = {0};
    unsetenv("CACHE_URL");
    unsetenv("REDIS_URL");
    unsetenv("CACHE_AUTO_PIPELINE");

    /* nothing set: no URL, the memory backend */
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_non_null(env);
    assert_null(o.url);
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    assert_string_equal(dbk_cache_backend(c), "memory");
    dbk_cache_close(c);
    dbk_cache_env_free(env);

    /* REDIS_URL alone; CACHE_URL wins over it; empty counts as unset */
    setenv("REDIS_URL", "redis://127.0.0.1:1/3", 1);
    setenv("CACHE_URL", "", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "redis://127.0.0.1:1/3");
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbk_cache_env_free(env); /* the cache kept its own copy */
    assert_string_equal(dbk_cache_backend(c), "redis");
    dbk_cache_close(c);
    setenv("CACHE_URL", "memory", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "memory");
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    assert_string_equal(dbk_cache_backend(c), "memory");
    dbk_cache_close(c);
    dbk_cache_env_free(env);

    /* CACHE_AUTO_PIPELINE becomes the URL's parameter ... */
    setenv("CACHE_URL", "redis://:s3cretpw@127.0.0.1:1/0", 1);
    setenv("CACHE_AUTO_PIPELINE", "off", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "redis://:s3cretpw@127.0.0.1:1/0?auto_pipeline=0");
    DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
    dbk_cache_close(c);
    dbk_cache_env_free(env);
    /* ... also of a URL the caller set, after its own parameters ... */
    setenv("CACHE_AUTO_PIPELINE", "Yes", 1);
    o = (dbk_cache_opts){0};
    o.url = "redis-sentinel://127.0.0.1:1/m?sentinel_user=s";
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "redis-sentinel://127.0.0.1:1/m?sentinel_user=s&auto_pipeline=1");
    dbk_cache_env_free(env);
    /* ... unless the URL names it (the URL wins), or is not a redis URL */
    setenv("CACHE_URL", "redis://127.0.0.1:1/0?auto_pipeline=1", 1);
    setenv("CACHE_AUTO_PIPELINE", "0", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "redis://127.0.0.1:1/0?auto_pipeline=1");
    dbk_cache_env_free(env);
    setenv("CACHE_URL", "memory:", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    assert_string_equal(o.url, "memory:");
    dbk_cache_env_free(env);

    /* bad values: DBK_ECONFIG with a hint, opts untouched, nothing owned,
     * and the value (which could be a secret put in the wrong variable)
     * never in the message */
    setenv("CACHE_URL", "redis://:s3cretpw@127.0.0.1:1/0", 1);
    setenv("CACHE_AUTO_PIPELINE", "s3cretpw", 1);
    o = (dbk_cache_opts){0};
    env = (dbk_cache_env *)&o; /* must be reset */
    DBKT_RC(DBK_ECONFIG, dbk_cache_opts_from_env(&o, &env, &err));
    assert_null(env);
    assert_null(o.url);
    assert_non_null(strstr(err.message, "CACHE_AUTO_PIPELINE"));
    assert_non_null(strstr(err.hint, "auto_pipeline=0|1"));
    assert_null(strstr(err.message, "s3cretpw"));
    assert_null(strstr(err.hint, "s3cretpw"));
    unsetenv("CACHE_AUTO_PIPELINE");
    static char longurl[5000];
    memset(longurl, 'a', sizeof longurl - 1);
    memcpy(longurl, "redis://:s3cretpw@", 18);
    setenv("CACHE_URL", longurl, 1);
    DBKT_RC(DBK_ECONFIG, dbk_cache_opts_from_env(&o, &env, &err));
    assert_non_null(strstr(err.message, "CACHE_URL"));
    assert_null(strstr(err.message, "s3cretpw"));
    assert_non_null(strstr(err.hint, "redis://"));
    assert_null(env);
    /* a malformed URL from the environment fails at the open, without its
     * password */
    setenv("CACHE_URL", "redis://:s3cretpw@127.0.0.1:1/0?auto_pipeline=2", 1);
    o = (dbk_cache_opts){0};
    DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
    DBKT_RC(DBK_ECONFIG, dbk_cache_open(&o, &c, &err));
    assert_null(strstr(err.message, "s3cretpw"));
    dbk_cache_env_free(env);
    unsetenv("CACHE_URL");
    unsetenv("REDIS_URL");

    /* misuse */
    DBKT_RC(DBK_EMISUSE, dbk_cache_opts_from_env(NULL, &env, &err));
    assert_null(env);
    DBKT_RC(DBK_EMISUSE, dbk_cache_opts_from_env(&o, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_cache_opts_from_env(&o, NULL, NULL)); /* err optional */
    dbk_cache_env_free(NULL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cache_hit_and_miss),
    cmocka_unit_test(cache_ttl_expiry),
    cmocka_unit_test(cache_binary_keys),
    cmocka_unit_test(cache_lru_entries_and_eviction_order),
    cmocka_unit_test(cache_lru_bytes_bound),
    cmocka_unit_test(cache_namespace_version),
    cmocka_unit_test(cache_negative_caching),
    cmocka_unit_test(cache_misuse_and_url),
    cmocka_unit_test(cache_single_flight_100_threads),
    cmocka_unit_test(cache_stale_set_race),
    cmocka_unit_test(cache_invalidation_detaches_flight),
    cmocka_unit_test(cache_tx_invalidation),
    cmocka_unit_test(cache_deprecated_after_commit_names_still_work),
    cmocka_unit_test(cache_redis_sigkill_zero_failed_reads),
    cmocka_unit_test(cache_redis_restart_resumes),
    cmocka_unit_test(cache_redis_invalidation_replayed),
    cmocka_unit_test(cache_redis_auth_and_select),
    cmocka_unit_test(cache_redis_close_delivers_queued_invalidations),
    cmocka_unit_test(cache_redis_close_waits_for_redis),
    cmocka_unit_test(cache_redis_close_logs_undelivered),
    cmocka_unit_test(cache_redis_close_no_wait_still_warns),
    cmocka_unit_test(cache_codec_size_limits),
    cmocka_unit_test(cache_oversized_value_served_not_stored),
    cmocka_unit_test(cache_repo_reads_and_writes),
    cmocka_unit_test(cache_get_many),
    cmocka_unit_test(cache_repo_find_by_ids),
    cmocka_unit_test(cache_repo_find_by_ids_batch),
    cmocka_unit_test(cache_repo_deprecated_names_still_work),
    cmocka_unit_test(cache_repo_tx_detaches_flight),
    cmocka_unit_test(cache_repo_no_stale_reads_under_writes),
    cmocka_unit_test(cache_repo_canonical_id_keys),
    cmocka_unit_test(cache_repo_collation_keys),
    cmocka_unit_test(cache_repo_uuid_keys),
    cmocka_unit_test(cache_redis_pipeline_concurrent_no_stale),
    cmocka_unit_test(cache_redis_pipeline_restart_no_stale),
    cmocka_unit_test(cache_redis_pipeline_stalled_server_bounded),
    cmocka_unit_test(cache_redis_pipeline_off_is_one_per_connection),
    cmocka_unit_test(cache_redis_url_parameters),
    cmocka_unit_test(cache_open_reads_no_environment),
    cmocka_unit_test(cache_opts_from_env_reads_the_variables),
};

DBKT_MAIN(tests)
