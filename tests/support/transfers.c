/*
 * The failover tests' transfer workload (see transfers.h), once instead of
 * a copy in each test. Per-thread records are heap arrays sized for the
 * longest run (200,000 transfers a thread), written only by their thread
 * and read by the main thread after the join, so they need no lock.
 */
#include "transfers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

#define PER_THREAD_MAX 200000
#define MAX_THREADS 16
#define FAILED_KEPT 64

typedef struct worker {
    dbkt_xfer *x;
    int id;
    int n;
    int64_t *acked_keys;
    int64_t *acked_at; /* dbkt_mono_ms() of each acknowledgement */
    int nacked;
    int64_t failed_keys[FAILED_KEPT]; /* failures other than commit-unknown */
    int nfailed;
    pthread_t th;
} worker;

struct dbkt_xfer {
    dbk_db *db;
    dbk_tx_opts opts;
    atomic_bool stop;
    atomic_int acked;
    atomic_int unknown;
    atomic_int other_errors;
    dbk_rc other_rc;
    char other_msg[DBK_ERROR_MESSAGE_MAX];
    pthread_mutex_t mu;
    int nthreads;
    bool joined;
    worker w[MAX_THREADS];
};

struct transfer {
    int64_t key;
    int from, to;
};

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static dbk_rc transfer_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct transfer *t = ctx;
    int64_t d1 = t->from == 1 ? -1 : 1;
    dbk_value a[2] = {dbk_int64(1), dbk_int64(d1)};
    dbk_rc rc = dbk_db_exec(tx, "UPDATE acct SET bal = bal + $2 WHERE id = $1", a, 2, NULL, err);
    if (rc)
        return rc;
    dbk_value b[2] = {dbk_int64(2), dbk_int64(-d1)};
    rc = dbk_db_exec(tx, "UPDATE acct SET bal = bal + $2 WHERE id = $1", b, 2, NULL, err);
    if (rc)
        return rc;
    dbk_value k[1] = {dbk_int64(t->key)};
    return dbk_db_exec(tx, "INSERT INTO transfers (req) VALUES ($1)", k, 1, NULL, err);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    dbkt_xfer *x = w->x;
    while (!atomic_load(&x->stop) && w->n < PER_THREAD_MAX) {
        struct transfer t = {(int64_t)w->id * 1000000 + w->n, w->n % 2 ? 1 : 2, w->n % 2 ? 2 : 1};
        w->n++;
        dbk_error err;
        dbk_rc rc = dbk_tx_run(x->db, transfer_fn, &t, &x->opts, &err);
        if (rc == DBK_OK) {
            w->acked_at[w->nacked] = dbkt_mono_ms();
            w->acked_keys[w->nacked++] = t.key;
            atomic_fetch_add(&x->acked, 1);
        } else if (rc == DBK_ECOMMIT_UNKNOWN) {
            atomic_fetch_add(&x->unknown, 1);
        } else {
            if (w->nfailed < FAILED_KEPT)
                w->failed_keys[w->nfailed++] = t.key;
            pthread_mutex_lock(&x->mu);
            if (atomic_fetch_add(&x->other_errors, 1) == 0) {
                x->other_rc = rc;
                snprintf(x->other_msg, sizeof x->other_msg, "%s", err.message);
            }
            pthread_mutex_unlock(&x->mu);
        }
    }
    return NULL;
}

dbk_pool *dbkt_xfer_pool(int port0, int port1)
{
    char url[300];
    snprintf(
        url, sizeof url,
        "postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?target_session_attrs=read-write"
        "&connect_timeout=2&pool_max=4&acquire_timeout=10000",
        port0, port1);
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);
    return pool;
}

dbkt_xfer *dbkt_xfer_start(dbk_db *db, int threads, const dbk_tx_opts *opts)
{
    assert_true(threads >= 1 && threads <= MAX_THREADS);
    dbkt_xfer *x = calloc(1, sizeof *x);
    assert_non_null(x);
    x->db = db;
    x->opts = *opts;
    pthread_mutex_init(&x->mu, NULL);
    for (int i = 0; i < threads; i++) {
        worker *w = &x->w[i];
        w->x = x;
        w->id = i + 1;
        w->acked_keys = calloc(PER_THREAD_MAX, sizeof *w->acked_keys);
        w->acked_at = calloc(PER_THREAD_MAX, sizeof *w->acked_at);
        assert_true(w->acked_keys && w->acked_at);
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&x->w[i].th, NULL, worker_main, &x->w[i]) != 0) {
            dbkt_xfer_stop(x);
            fail_msg("pthread_create failed for transfer worker %d", i + 1);
        }
        x->nthreads = i + 1;
    }
    return x;
}

void dbkt_xfer_wait_acked(dbkt_xfer *x, int at_least)
{
    for (int i = 0; i < 6000 && atomic_load(&x->acked) < at_least; i++)
        nap_ms(5);
}

int dbkt_xfer_acked(dbkt_xfer *x)
{
    return atomic_load(&x->acked);
}

int dbkt_xfer_unknown(dbkt_xfer *x)
{
    return atomic_load(&x->unknown);
}

void dbkt_xfer_stop(dbkt_xfer *x)
{
    if (x->joined)
        return;
    atomic_store(&x->stop, true);
    for (int i = 0; i < x->nthreads; i++)
        pthread_join(x->w[i].th, NULL);
    x->joined = true;
}

int64_t dbkt_xfer_first_ack_after(dbkt_xfer *x, int64_t from)
{
    int64_t best = -1;
    for (int i = 0; i < x->nthreads; i++) {
        const worker *w = &x->w[i];
        for (int k = 0; k < w->nacked; k++)
            if (w->acked_at[k] >= from) {
                if (best < 0 || w->acked_at[k] < best)
                    best = w->acked_at[k];
                break; /* each thread's times only grow */
            }
    }
    return best;
}

int64_t dbkt_xfer_last_ack_before(dbkt_xfer *x, int64_t before)
{
    int64_t best = -1;
    for (int i = 0; i < x->nthreads; i++) {
        const worker *w = &x->w[i];
        for (int k = 0; k < w->nacked && w->acked_at[k] < before; k++)
            if (w->acked_at[k] > best)
                best = w->acked_at[k];
    }
    return best;
}

void dbkt_xfer_assert_no_failures(dbkt_xfer *x)
{
    if (atomic_load(&x->other_errors))
        fail_msg("%d transfers failed with something else than commit-unknown, first %s: %s",
                 atomic_load(&x->other_errors), dbk_rc_name(x->other_rc), x->other_msg);
}

static int64_t key_count(dbk_db *db, int64_t key)
{
    dbk_value p[1] = {dbk_int64(key)};
    int64_t n = 0;
    dbk_error err;
    DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM transfers WHERE req = $1", p, 1, &n, &err),
            &err);
    return n;
}

void dbkt_xfer_check(dbkt_xfer *x, const char *url)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbkt_int(db, "SELECT sum(bal)::bigint FROM acct"), 2000);
    int64_t rows = dbkt_int(db, "SELECT count(*) FROM transfers");
    assert_true(rows >= atomic_load(&x->acked));
    assert_true(rows <= atomic_load(&x->acked) + atomic_load(&x->unknown));
    int64_t missing = 0, failed_present = 0;
    for (int i = 0; i < x->nthreads; i++) {
        const worker *w = &x->w[i];
        for (int k = 0; k < w->nacked; k++)
            missing += key_count(db, w->acked_keys[k]) != 1;
        for (int k = 0; k < w->nfailed; k++)
            failed_present += key_count(db, w->failed_keys[k]) != 0;
    }
    dbk_conn_close(c);
    assert_int_equal(missing, 0);
    assert_int_equal(failed_present, 0);
}

void dbkt_xfer_free(dbkt_xfer *x)
{
    if (!x)
        return;
    dbkt_xfer_stop(x);
    for (int i = 0; i < MAX_THREADS; i++) {
        free(x->w[i].acked_keys);
        free(x->w[i].acked_at);
    }
    pthread_mutex_destroy(&x->mu);
    free(x);
}
