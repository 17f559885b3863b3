/* dbkit:valgrind
 * Auto-pipelining of the pool (src/pool/pool_pipe.c) against the test
 * PostgreSQL: many threads on a pool of one or two connections. Each test
 * proves that statements really rode in other callers' pipelines (the
 * pool's `pipelined` counter) and that each still behaved as a statement
 * on its own: its own result, its own error, its own implicit transaction,
 * the observer's event, no hang when the connection dies under a pipeline.
 *
 * Worker threads never assert: they count outcomes and keep the first
 * unexpected message; the main thread asserts. Every loop is bounded.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A pool on a fresh database, auto_pipeline set as asked, pipeline_conns
 * (0: not set). */
static dbk_pool *open_pool_pc(const char *name, int max, int acquire_ms, bool autopipe,
                              int pipeline_conns, char **url_out)
{
    char *base = dbkt_pg_fresh_db(name);
    char url[1024];
    snprintf(url, sizeof url, "%s%cauto_pipeline=%d", base, strchr(base, '?') ? '&' : '?',
             autopipe ? 1 : 0);
    if (pipeline_conns)
        snprintf(url + strlen(url), sizeof url - strlen(url), "&pipeline_conns=%d",
                 pipeline_conns);
    free(base);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool_opts o = {.max_size = max, .acquire_timeout_ms = acquire_ms};
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, &o, &pool, &err), &err);
    dbk_config_free(cfg);
    if (url_out)
        *url_out = strdup(url);
    return pool;
}

static dbk_pool *open_pool(const char *name, int max, int acquire_ms, bool autopipe, char **url_out)
{
    return open_pool_pc(name, max, acquire_ms, autopipe, 0, url_out);
}

static dbk_pool_stats stats(dbk_pool *pool)
{
    dbk_pool_stats st;
    dbk_error err;
    DBKT_OK(dbk_pool_get_stats(pool, &st, &err), &err);
    return st;
}

/* ---- every caller gets its own answer ---- */

struct lookers {
    dbk_pool *pool;
    int per_thread;
    atomic_int next_id;
    atomic_int ok, wrong, failed;
    char first_error[DBK_ERROR_MESSAGE_MAX];
    pthread_mutex_t mu;
};

static void note_error(struct lookers *l, const dbk_error *e)
{
    pthread_mutex_lock(&l->mu);
    if (!l->first_error[0])
        snprintf(l->first_error, sizeof l->first_error, "%s", e->message);
    pthread_mutex_unlock(&l->mu);
}

/* Each statement echoes values that only this call knows: an id and a text
 * built from it. A mixed-up answer (another rider's result) shows. */
static void *look_thread(void *arg)
{
    struct lookers *l = arg;
    int me = atomic_fetch_add(&l->next_id, 1);
    dbk_db *db = dbk_pool_db(l->pool);
    for (int i = 0; i < l->per_thread; i++) {
        int64_t id = (int64_t)me * 1000000 + i;
        char text[48];
        snprintf(text, sizeof text, "t-%lld", (long long)id);
        dbk_value v[2] = {dbk_int64(id), dbk_text(text)};
        dbk_result *r = NULL;
        dbk_error err;
        if (dbk_db_query(db, "SELECT $1::int8 * 2, $2::text || '!'", v, 2, &r, &err) != DBK_OK) {
            atomic_fetch_add(&l->failed, 1);
            note_error(l, &err);
            continue;
        }
        int64_t twice = 0;
        const char *t = NULL;
        size_t tl = 0;
        char want[56];
        snprintf(want, sizeof want, "%s!", text);
        if (dbk_result_nrows(r) == 1 && dbk_result_get_int64(r, 0, 0, &twice, &err) == DBK_OK &&
            dbk_result_get_text(r, 0, 1, &t, &tl, &err) == DBK_OK && twice == 2 * id &&
            strcmp(t, want) == 0)
            atomic_fetch_add(&l->ok, 1);
        else
            atomic_fetch_add(&l->wrong, 1);
        dbk_result_free(r);
    }
    return NULL;
}

static void run_lookers(dbk_pool *pool, int threads, int per_thread, struct lookers *l)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->pool = pool;
    l->per_thread = per_thread;
    pthread_t th[64];
    for (int i = 0; i < threads; i++)
        assert_int_equal(pthread_create(&th[i], NULL, look_thread, l), 0);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&l->mu);
}

static void pipeline_callers_get_their_own_answers(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_own", 2, 30000, true, NULL);
    struct lookers l;
    run_lookers(pool, 32, 300, &l);
    dbk_pool_stats st = stats(pool);
    fprintf(stderr, "ok %d wrong %d failed %d; %llu statements rode in %llu pipelines\n",
            atomic_load(&l.ok), atomic_load(&l.wrong), atomic_load(&l.failed),
            (unsigned long long)st.pipelined, (unsigned long long)st.pipelines);
    if (atomic_load(&l.failed))
        fail_msg("a statement failed: %s", l.first_error);
    assert_int_equal(atomic_load(&l.wrong), 0);
    assert_int_equal(atomic_load(&l.ok), 32 * 300);
    /* 32 threads on 2 connections: statements must have ridden. */
    assert_true(st.pipelined > 0);
    assert_true(st.pipelines > 0);
    assert_true(st.total <= 2);
    dbk_pool_close(pool, 1000);
}

static void pipeline_off_never_rides(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_off", 2, 30000, false, NULL);
    struct lookers l;
    run_lookers(pool, 16, 100, &l);
    dbk_pool_stats st = stats(pool);
    if (atomic_load(&l.failed))
        fail_msg("a statement failed: %s", l.first_error);
    assert_int_equal(atomic_load(&l.ok), 16 * 100);
    assert_int_equal(st.pipelined, 0);
    assert_int_equal(st.pipelines, 0);
    dbk_pool_close(pool, 1000);
}

/* ---- failures stay with their statement; each is its own transaction ---- */

struct writers {
    dbk_pool *pool;
    atomic_int next_id;
    atomic_int inserted, dup, divzero, other;
    char first_error[DBK_ERROR_MESSAGE_MAX];
    pthread_mutex_t mu;
};

/* Thread k inserts keys k*100+i; every fifth insert reuses key 0 of its
 * thread (a unique violation after the first), every seventh statement
 * divides by zero. */
static void *write_thread(void *arg)
{
    struct writers *w = arg;
    int me = atomic_fetch_add(&w->next_id, 1);
    dbk_db *db = dbk_pool_db(w->pool);
    for (int i = 1; i <= 60; i++) {
        dbk_error err;
        dbk_rc rc;
        if (i % 7 == 0) {
            dbk_value v = dbk_int64(0);
            int64_t x;
            rc = dbk_db_query_int64(db, "SELECT 1 / $1::int8", &v, 1, &x, &err);
            if (rc != DBK_OK)
                atomic_fetch_add(&w->divzero, 1);
            else
                atomic_fetch_add(&w->other, 1);
            continue;
        }
        int64_t key = (int64_t)me * 100 + (i % 5 == 0 ? 0 : i);
        dbk_value v[2] = {dbk_int64(key), dbk_int64(me)};
        rc = dbk_db_exec(db, "INSERT INTO t (k, owner) VALUES ($1, $2)", v, 2, NULL, &err);
        if (rc == DBK_OK)
            atomic_fetch_add(&w->inserted, 1);
        else if (rc == DBK_EUNIQUE)
            atomic_fetch_add(&w->dup, 1);
        else {
            atomic_fetch_add(&w->other, 1);
            pthread_mutex_lock(&w->mu);
            if (!w->first_error[0])
                snprintf(w->first_error, sizeof w->first_error, "%s: %.400s", dbk_rc_name(rc),
                         err.message);
            pthread_mutex_unlock(&w->mu);
        }
    }
    return NULL;
}

static void pipeline_failures_stay_with_their_statement(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_fail", 2, 30000, true, NULL);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, "CREATE TABLE t (k int8 PRIMARY KEY, owner int8 NOT NULL)");
    struct writers w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    w.pool = pool;
    enum { T = 24 };
    pthread_t th[T];
    for (int i = 0; i < T; i++)
        assert_int_equal(pthread_create(&th[i], NULL, write_thread, &w), 0);
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&w.mu);
    dbk_pool_stats st = stats(pool);
    fprintf(stderr, "inserted %d dup %d divzero %d other %d; %llu rode\n", atomic_load(&w.inserted),
            atomic_load(&w.dup), atomic_load(&w.divzero), atomic_load(&w.other),
            (unsigned long long)st.pipelined);
    if (atomic_load(&w.other))
        fail_msg("unexpected outcome: %s", w.first_error);
    /* Per thread, of 60 statements: 8 (every seventh) divide by zero; of
     * the 52 inserts, 11 (every fifth, but 35) use key 0: the first wins,
     * 10 are duplicates; the other 41 keys are distinct. */
    assert_int_equal(atomic_load(&w.divzero), T * 8);
    assert_int_equal(atomic_load(&w.dup), T * 10);
    assert_int_equal(atomic_load(&w.inserted), T * 42);
    /* Every acknowledged insert is there, once: no failure of a neighbour
     * in the pipeline rolled it back, none ran twice. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), T * 42);
    assert_true(st.pipelined > 0);
    dbk_pool_close(pool, 1000);
}

/* ---- the observer sees every statement ---- */

static atomic_int g_events;

static void count_event(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    (void)ev;
    atomic_fetch_add(&g_events, 1);
}

static void pipeline_observer_sees_each_statement(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_obs", 1, 30000, true, NULL);
    atomic_store(&g_events, 0);
    dbk_db_set_observer(dbk_pool_db(pool), count_event, NULL);
    struct lookers l;
    run_lookers(pool, 16, 50, &l);
    dbk_pool_stats st = stats(pool);
    if (atomic_load(&l.failed))
        fail_msg("a statement failed: %s", l.first_error);
    assert_int_equal(atomic_load(&l.ok), 16 * 50);
    assert_true(st.pipelined > 0);
    assert_int_equal(atomic_load(&g_events), 16 * 50);
    dbk_pool_close(pool, 1000);
}

/* ---- a queued statement leaves at its acquire timeout ---- */

static void pipeline_queued_statement_times_out(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_tmo", 1, 200, true, NULL);
    dbk_conn *held = NULL;
    dbk_error err;
    DBKT_OK(dbk_pool_acquire(pool, &held, &err), &err);
    int64_t t0 = now_ms();
    int64_t v;
    DBKT_RC(DBK_EPOOL_TIMEOUT, dbk_db_query_int64(dbk_pool_db(pool), "SELECT 1", NULL, 0, &v, &err));
    int64_t took = now_ms() - t0;
    fprintf(stderr, "queued statement gave up after %lld ms: %s\n", (long long)took, err.message);
    assert_true(took >= 150);
    assert_true(took < 5000);
    dbk_pool_release(pool, held);
    assert_int_equal(dbkt_int(dbk_pool_db(pool), "SELECT 41 + 1"), 42);
    dbk_pool_close(pool, 1000);
}

/* ---- the connection dies under a pipeline ---- */

struct victim {
    dbk_pool *pool;
    const char *sql;
    dbk_rc rc;
    int64_t took_ms;
};

static void *victim_thread(void *arg)
{
    struct victim *v = arg;
    int64_t t0 = now_ms();
    dbk_error err;
    v->rc = dbk_db_exec(dbk_pool_db(v->pool), v->sql, NULL, 0, NULL, &err);
    v->took_ms = now_ms() - t0;
    return NULL;
}

static void pipeline_connection_lost_under_riders(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_lost", 1, 10000, true, NULL);
    dbk_db *db = dbk_pool_db(pool);
    /* Hold the only connection so that the next statements queue. */
    dbk_conn *held = NULL;
    dbk_error err;
    DBKT_OK(dbk_pool_acquire(pool, &held, &err), &err);
    int64_t pid = dbkt_int(dbk_conn_db(held), "SELECT pg_backend_pid()");
    enum { N = 9 };
    struct victim v[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        v[i] = (struct victim){pool, i == 0 ? "SELECT pg_sleep(3)" : "SELECT 1", DBK_OK, 0};
        assert_int_equal(pthread_create(&th[i], NULL, victim_thread, &v[i]), 0);
        sleep_ms(i == 0 ? 50 : 5); /* the sleeper first in the queue */
    }
    sleep_ms(100);
    dbk_pool_release(pool, held); /* the sleeper runs, the others ride behind it */
    sleep_ms(300);
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", (long long)pid);
    dbkt_pg_admin_exec(sql);
    int lost = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        fprintf(stderr, "statement %d: %s after %lld ms\n", i, dbk_rc_name(v[i].rc),
                (long long)v[i].took_ms);
        if (v[i].rc == DBK_ECONN_LOST)
            lost++;
        else if (v[i].rc == DBK_OK)
            ok++;
        assert_true(v[i].rc == DBK_OK || v[i].rc == DBK_ECONN_LOST);
        assert_true(v[i].took_ms < 10000); /* nobody hangs */
    }
    /* The sleeper was in flight when its backend died. */
    assert_int_equal(v[0].rc, DBK_ECONN_LOST);
    assert_true(lost >= 1);
    dbk_pool_stats st = stats(pool);
    assert_true(st.pipelined > 0);
    /* The pool recovers: a new connection answers. */
    assert_int_equal(dbkt_int(db, "SELECT 7"), 7);
    dbk_pool_close(pool, 1000);
}

/* ---- a hostile statement in a pipeline hurts no one else ---- */

struct hostile {
    dbk_pool *pool;
    int kind; /* 0: lookups, 1: invalid UTF-8, 2: a parameter over the limit */
    void *huge;
    size_t huge_len;
    atomic_int *ok, *refused, *other;
};

static void *hostile_thread(void *arg)
{
    struct hostile *h = arg;
    dbk_db *db = dbk_pool_db(h->pool);
    for (int i = 0; i < 200; i++) {
        dbk_error err;
        dbk_result *r = NULL;
        dbk_rc rc;
        if (h->kind == 1) {
            static const char bad[] = {'a', (char)0xC3, (char)0x28, 'b'};
            dbk_value v = dbk_textn(bad, sizeof bad);
            rc = dbk_db_query(db, "SELECT length($1::text)", &v, 1, &r, &err);
        } else if (h->kind == 2) {
            dbk_value v = dbk_blob(h->huge, h->huge_len);
            rc = dbk_db_query(db, "SELECT length($1::bytea)", &v, 1, &r, &err);
        } else {
            dbk_value v = dbk_int64(i);
            rc = dbk_db_query(db, "SELECT $1::int8 + 1", &v, 1, &r, &err);
            int64_t x = -1;
            if (rc == DBK_OK && (dbk_result_get_int64(r, 0, 0, &x, &err) != DBK_OK || x != i + 1))
                rc = DBK_EINTERNAL;
        }
        dbk_result_free(r);
        if (rc == DBK_OK)
            atomic_fetch_add(h->ok, 1);
        else if (h->kind != 0 && (rc == DBK_EINVALID || rc == DBK_ESQL))
            atomic_fetch_add(h->refused, 1);
        else
            atomic_fetch_add(h->other, 1);
    }
    return NULL;
}

static void pipeline_hostile_statement_hurts_no_one(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_hostile", 2, 30000, true, NULL);
    /* 2 GiB + 16 bytes that may not be read: refused from the length alone */
    size_t huge_len = ((size_t)2 << 30) + 16;
    void *huge = dbkt_unreadable(huge_len);
    atomic_int ok, refused, other;
    atomic_init(&ok, 0);
    atomic_init(&refused, 0);
    atomic_init(&other, 0);
    enum { T = 12 };
    struct hostile h[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        h[i] = (struct hostile){pool, i < 2 ? i + 1 : 0, huge, huge_len, &ok, &refused, &other};
        assert_int_equal(pthread_create(&th[i], NULL, hostile_thread, &h[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    dbk_pool_stats st = stats(pool);
    fprintf(stderr, "ok %d refused %d other %d; %llu rode\n", atomic_load(&ok),
            atomic_load(&refused), atomic_load(&other), (unsigned long long)st.pipelined);
    assert_int_equal(atomic_load(&other), 0);
    assert_int_equal(atomic_load(&refused), 2 * 200);
    assert_int_equal(atomic_load(&ok), (T - 2) * 200);
    assert_true(st.pipelined > 0);
    /* the connections are still the ones the pool opened: nothing broke */
    assert_true(st.discarded == 0);
    dbkt_unreadable_free(huge, huge_len);
    dbk_pool_close(pool, 1000);
}

/* ---- statements that must not ride still work on a busy pool ---- */

static void *tx_thread(void *arg)
{
    struct lookers *l = arg;
    dbk_db *db = dbk_pool_db(l->pool);
    for (int i = 0; i < 50; i++) {
        dbk_error err;
        if (dbk_db_exec_script(db, "BEGIN; SELECT 1; COMMIT", &err) != DBK_OK) {
            atomic_fetch_add(&l->failed, 1);
            note_error(l, &err);
        } else {
            atomic_fetch_add(&l->ok, 1);
        }
    }
    return NULL;
}

static void pipeline_mixed_with_transactions(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool("pipe_mixed", 2, 30000, true, NULL);
    struct lookers l, t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    t.pool = pool;
    pthread_t tx[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&tx[i], NULL, tx_thread, &t), 0);
    run_lookers(pool, 16, 100, &l);
    for (int i = 0; i < 4; i++)
        pthread_join(tx[i], NULL);
    pthread_mutex_destroy(&t.mu);
    if (atomic_load(&l.failed))
        fail_msg("a statement failed: %s", l.first_error);
    if (atomic_load(&t.failed))
        fail_msg("a transaction failed: %s", t.first_error);
    assert_int_equal(atomic_load(&l.ok), 16 * 100);
    assert_int_equal(atomic_load(&l.wrong), 0);
    assert_int_equal(atomic_load(&t.ok), 4 * 50);
    /* Nothing was left open on the connections. */
    assert_int_equal(dbkt_int(dbk_pool_db(pool), "SELECT count(*) FROM pg_stat_activity WHERE "
                                                 "datname = current_database() AND state LIKE "
                                                 "'idle in transaction%'"),
                     0);
    dbk_pool_close(pool, 1000);
}

/* ---- pipeline_conns: plain statements keep to a few connections ---- */

struct bg_lookers {
    struct lookers l;
    dbk_pool *pool;
    int threads, per_thread;
    atomic_bool done;
};

static void *bg_look(void *arg)
{
    struct bg_lookers *b = arg;
    run_lookers(b->pool, b->threads, b->per_thread, &b->l);
    atomic_store(&b->done, true);
    return NULL;
}

/* A pool of 4 with pipeline_conns=1: 16 threads of plain statements never
 * hold more than one connection at a time (the rest ride its pipelines),
 * while 2 threads of transactions get connections of their own beside it.
 * The pool's busy count is sampled all along: at most 1 + 2. Every answer
 * is checked. */
static void pipeline_conns_bound_plain_statements(void **state)
{
    (void)state;
    dbk_pool *pool = open_pool_pc("pipe_conns", 4, 30000, true, 1, NULL);
    struct bg_lookers b;
    memset(&b, 0, sizeof b);
    b.pool = pool;
    b.threads = 16;
    b.per_thread = 600;
    struct lookers t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    t.pool = pool;
    pthread_t bg, tx[2];
    assert_int_equal(pthread_create(&bg, NULL, bg_look, &b), 0);
    int max_busy = 0, samples = 0;
    /* plain statements alone first: busy stays at 1 */
    int64_t end = now_ms() + 60000;
    while (!atomic_load(&b.done) && samples < 50 && now_ms() < end) {
        dbk_pool_stats st = stats(pool);
        max_busy = st.in_use > max_busy ? st.in_use : max_busy;
        samples++;
        sleep_ms(1);
    }
    int max_plain = max_busy, plain_samples = samples;
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&tx[i], NULL, tx_thread, &t), 0);
    while (!atomic_load(&b.done) && now_ms() < end) {
        dbk_pool_stats st = stats(pool);
        max_busy = st.in_use > max_busy ? st.in_use : max_busy;
        samples++;
        sleep_ms(1);
    }
    pthread_join(bg, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(tx[i], NULL);
    pthread_mutex_destroy(&t.mu);
    dbk_pool_stats st = stats(pool);
    fprintf(stderr, "%d samples: in use at most %d (plain alone, %d samples: %d); %llu "
            "statements rode in %llu pipelines\n", samples, max_busy, plain_samples, max_plain,
            (unsigned long long)st.pipelined, (unsigned long long)st.pipelines);
    if (atomic_load(&b.l.failed))
        fail_msg("a statement failed: %s", b.l.first_error);
    if (atomic_load(&t.failed))
        fail_msg("a transaction failed: %s", t.first_error);
    assert_int_equal(atomic_load(&b.l.ok), 16 * 600);
    assert_int_equal(atomic_load(&b.l.wrong), 0);
    assert_int_equal(atomic_load(&t.ok), 2 * 50);
    assert_true(plain_samples >= 10 && samples >= plain_samples + 10);
    assert_true(max_plain <= 1);
    assert_true(max_busy <= 3);
    assert_true(st.pipelined > 0);
    dbk_pool_close(pool, 1000);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(pipeline_callers_get_their_own_answers),
    cmocka_unit_test(pipeline_off_never_rides),
    cmocka_unit_test(pipeline_failures_stay_with_their_statement),
    cmocka_unit_test(pipeline_observer_sees_each_statement),
    cmocka_unit_test(pipeline_queued_statement_times_out),
    cmocka_unit_test(pipeline_connection_lost_under_riders),
    cmocka_unit_test(pipeline_hostile_statement_hurts_no_one),
    cmocka_unit_test(pipeline_mixed_with_transactions),
    cmocka_unit_test(pipeline_conns_bound_plain_statements),
};

DBKT_MAIN(tests)
