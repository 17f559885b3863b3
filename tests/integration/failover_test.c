/* dbkit:topology */
/*
 * Failover: a primary with one streaming replica; the primary is stopped
 * and the replica promoted (pg_ctl promote) while threads run transfers
 * through one pool on a multi-host URL (target_session_attrs=read-write).
 *
 * What must hold: every acknowledged transfer is on the new primary, none
 * is there twice (each carries a unique request key), money is conserved,
 * and the only failure a transfer may report is DBK_ECOMMIT_UNKNOWN (its
 * COMMIT was in flight when the server went). The time from the promotion
 * to the first successful transfer is printed, not asserted (figures
 * belong in docs/failover.md).
 *
 * Worker threads never assert; the main thread does, after joining them.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pgtopo.h"
#include "testutil.h"

#define THREADS 4
#define PER_THREAD_MAX 100000

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

struct shared {
    dbk_db *db;
    atomic_bool stop;
    atomic_int acked;
    atomic_int unknown;
    atomic_int other_errors;
    atomic_llong first_ok_after_ms; /* dbkt_mono_ms() of the first OK after `mark`, 0 none */
    atomic_llong mark_ms;
    dbk_rc other_rc;
    char other_msg[DBK_ERROR_MESSAGE_MAX];
    pthread_mutex_t mu;
};

struct worker {
    struct shared *sh;
    int id;
    int n;
    int64_t acked_keys[PER_THREAD_MAX];
    int nacked;
};

struct transfer {
    int64_t key;
    int from, to;
};

/* Rows are updated in id order whatever the direction, so concurrent
 * transfers wait for each other instead of deadlocking: the only retries
 * left are the failover's. */
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
    struct worker *w = arg;
    struct shared *sh = w->sh;
    /* The default retry budget (2 s): an outage shorter than that is
     * waited out. The per-attempt transaction timeout is raised from 5 s:
     * on a loaded 2-core CI machine one attempt across the promotion once
     * outlived it (DBK_ETIMEOUT), which says nothing about the failover. */
    dbk_tx_opts opts = {.timeout_ms = 20000};
    const dbk_tx_opts *o = &opts;
    while (!atomic_load(&sh->stop) && w->n < PER_THREAD_MAX) {
        struct transfer t = {(int64_t)w->id * 1000000 + w->n, w->n % 2 ? 1 : 2, w->n % 2 ? 2 : 1};
        w->n++;
        dbk_error err;
        dbk_rc rc = dbk_tx_run(sh->db, transfer_fn, &t, o, &err);
        if (rc == DBK_OK) {
            w->acked_keys[w->nacked++] = t.key;
            atomic_fetch_add(&sh->acked, 1);
            long long mark = atomic_load(&sh->mark_ms);
            long long expected = 0;
            if (mark)
                atomic_compare_exchange_strong(&sh->first_ok_after_ms, &expected,
                                               (long long)dbkt_mono_ms());
        } else if (rc == DBK_ECOMMIT_UNKNOWN) {
            atomic_fetch_add(&sh->unknown, 1);
        } else {
            pthread_mutex_lock(&sh->mu);
            if (atomic_fetch_add(&sh->other_errors, 1) == 0) {
                sh->other_rc = rc;
                snprintf(sh->other_msg, sizeof sh->other_msg, "%s", err.message);
            }
            pthread_mutex_unlock(&sh->mu);
        }
    }
    return NULL;
}

static void wait_acked(struct shared *sh, int at_least)
{
    for (int i = 0; i < 6000 && atomic_load(&sh->acked) < at_least; i++)
        sleep_ms(5);
}

static void failover_promotion_under_transfers(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    assert_int_equal(dbkt_pgtopo_exec(t, 0,
                                      "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);"
                                      "INSERT INTO acct VALUES (1, 1000), (2, 1000);"
                                      "CREATE TABLE transfers (req bigint PRIMARY KEY)"),
                     0);
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);

    char url[300];
    snprintf(
        url, sizeof url,
        "postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?target_session_attrs=read-write"
        "&connect_timeout=2&pool_max=4&acquire_timeout=10000",
        dbkt_pgtopo_port(t, 0), dbkt_pgtopo_port(t, 1));
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);

    static struct shared sh;
    memset(&sh, 0, sizeof sh);
    pthread_mutex_init(&sh.mu, NULL);
    sh.db = dbk_pool_db(pool);
    static struct worker w[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].sh = &sh;
        w[i].id = i + 1;
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    wait_acked(&sh, 50);
    int before = atomic_load(&sh.acked);

    int64_t t_stop = dbkt_mono_ms();
    int stop_rc = dbkt_pgtopo_stop_node(t, 0, "fast");
    int64_t t_stopped = dbkt_mono_ms();
    int promote_rc = stop_rc == 0 ? dbkt_pgtopo_promote(t, 1) : -1;
    int64_t t_promoted = dbkt_mono_ms();
    atomic_store(&sh.mark_ms, (long long)t_promoted);
    if (promote_rc == 0)
        wait_acked(&sh, atomic_load(&sh.acked) + 50);
    atomic_store(&sh.stop, true);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(stop_rc, 0);
    assert_int_equal(promote_rc, 0);

    long long first = atomic_load(&sh.first_ok_after_ms);
    fprintf(stderr,
            "failover: primary stop took %lld ms, promotion %lld ms; first acknowledged transfer "
            "%lld ms after the promotion returned (%lld ms after the stop began); %d acked before, "
            "%d in all, %d commit-unknown\n",
            (long long)(t_stopped - t_stop), (long long)(t_promoted - t_stopped),
            first ? first - (long long)t_promoted : -1LL, first ? first - (long long)t_stop : -1LL,
            before, atomic_load(&sh.acked), atomic_load(&sh.unknown));
    if (atomic_load(&sh.other_errors))
        fail_msg("%d transfers failed with something else than commit-unknown, first %s: %s",
                 atomic_load(&sh.other_errors), dbk_rc_name(sh.other_rc), sh.other_msg);
    assert_true(first > 0);

    /* On the new primary: every acknowledged transfer exactly once,
     * money conserved, nothing beyond acked + unknown. */
    dbk_conn *c = dbkt_open(dbkt_pgtopo_url(t, 1));
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbkt_int(db, "SELECT sum(bal)::bigint FROM acct"), 2000);
    int64_t rows = dbkt_int(db, "SELECT count(*) FROM transfers");
    assert_true(rows >= atomic_load(&sh.acked));
    assert_true(rows <= atomic_load(&sh.acked) + atomic_load(&sh.unknown));
    int64_t missing = 0;
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < w[i].nacked; k++) {
            dbk_value p[1] = {dbk_int64(w[i].acked_keys[k])};
            int64_t n = 0;
            DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM transfers WHERE req = $1", p, 1,
                                       &n, &err),
                    &err);
            missing += n != 1;
        }
    assert_int_equal(missing, 0);
    dbk_conn_close(c);
    dbk_pool_close(pool, 2000);
    pthread_mutex_destroy(&sh.mu);
    dbkt_pgtopo_stop(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(failover_promotion_under_transfers),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
