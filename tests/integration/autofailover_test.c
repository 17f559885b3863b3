/* dbkit:topology */
/*
 * Failover under pg_auto_failover: a monitor and two nodes on loopback
 * (tests/support/pgtopo.h), four threads running transfers through one
 * pool on a two-host URL with target_session_attrs=read-write, and two
 * failovers in a row: one asked for (`pg_autoctl perform failover`), then
 * one forced by SIGKILL of the new primary's node (its keeper and its
 * Postgres at once).
 *
 * What must hold, checked on the last primary: every acknowledged transfer
 * is there exactly once (each carries a unique request key), money is
 * conserved, no transfer that failed is there, and transfers are
 * acknowledged again after each failover. A transfer may report
 * DBK_ECOMMIT_UNKNOWN (its COMMIT was in flight when the server went);
 * any other failure fails the test.
 *
 * Times are printed, not asserted (docs/failover.md has them): the time
 * from the moment the new primary first answered as a primary (a watcher
 * thread polls it every 20 ms) to the first acknowledged transfer after
 * it, the longest gap between acknowledged transfers, and
 * pg_auto_failover's own times from the monitor's event table (when it
 * marked the killed node unhealthy, when the new primary reported itself).
 *
 * Worker threads never assert; the main thread does, after joining them.
 * Every wait is bounded (the set-up 90 s a step, each failover 60 s).
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgtopo.h"
#include "testutil.h"

#define THREADS 4
#define PER_THREAD_MAX 200000

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct shared {
    dbk_db *db;
    atomic_bool stop;
    atomic_int acked;
    atomic_int unknown;
    atomic_int other_errors;
    dbk_rc other_rc;
    char other_msg[DBK_ERROR_MESSAGE_MAX];
    pthread_mutex_t mu;
};

struct worker {
    struct shared *sh;
    int id;
    int n;
    int64_t acked_keys[PER_THREAD_MAX];
    int64_t acked_at[PER_THREAD_MAX]; /* dbkt_mono_ms() of each acknowledgement */
    int nacked;
    int64_t failed_keys[64]; /* failures other than commit-unknown (the first 64) */
    int nfailed;
};

struct transfer {
    int64_t key;
    int from, to;
};

/* Rows updated in id order whatever the direction: no deadlocks, so the
 * only retries are the failovers'. */
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
    /* pg_auto_failover's outage lasts seconds (the demotion, the
     * promotion): a retry budget of 60 s rides through it; each attempt
     * may take 20 s on a loaded machine. */
    dbk_tx_opts opts = {.timeout_ms = 20000, .max_elapsed_ms = 60000};
    while (!atomic_load(&sh->stop) && w->n < PER_THREAD_MAX) {
        struct transfer t = {(int64_t)w->id * 1000000 + w->n, w->n % 2 ? 1 : 2, w->n % 2 ? 2 : 1};
        w->n++;
        dbk_error err;
        dbk_rc rc = dbk_tx_run(sh->db, transfer_fn, &t, &opts, &err);
        if (rc == DBK_OK) {
            w->acked_at[w->nacked] = dbkt_mono_ms();
            w->acked_keys[w->nacked++] = t.key;
            atomic_fetch_add(&sh->acked, 1);
        } else if (rc == DBK_ECOMMIT_UNKNOWN) {
            atomic_fetch_add(&sh->unknown, 1);
        } else {
            if (w->nfailed < 64)
                w->failed_keys[w->nfailed++] = t.key;
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

/* ---- the watcher: when does a node first answer as a primary? ---- */

struct watch {
    int port;
    atomic_llong primary_at; /* dbkt_mono_ms(), 0 until seen */
    atomic_bool stop;
};

static bool is_primary(int port)
{
    char ci[160];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=1", port);
    PGconn *c = PQconnectdb(ci);
    bool yes = false;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, "SELECT NOT pg_is_in_recovery() AND "
                                "current_setting('default_transaction_read_only') = 'off'");
        yes = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
              strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
    }
    PQfinish(c);
    return yes;
}

static void *watch_main(void *arg)
{
    struct watch *wa = arg;
    /* At most 60 s of 20 ms polls (plus connect timeouts). */
    for (int i = 0; i < 3000 && !atomic_load(&wa->stop); i++) {
        if (is_primary(wa->port)) {
            atomic_store(&wa->primary_at, (long long)dbkt_mono_ms());
            return NULL;
        }
        sleep_ms(20);
    }
    return NULL;
}

/* ---- figures ---- */

/* The first acknowledgement at or after `from`, across threads; -1 none. */
static int64_t first_ack_after(struct worker *w, int64_t from)
{
    int64_t best = -1;
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < w[i].nacked; k++)
            if (w[i].acked_at[k] >= from && (best < 0 || w[i].acked_at[k] < best)) {
                best = w[i].acked_at[k];
                break; /* each thread's times only grow */
            }
    return best;
}

/* The last acknowledgement before `before`; -1 none. */
static int64_t last_ack_before(struct worker *w, int64_t before)
{
    int64_t best = -1;
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < w[i].nacked && w[i].acked_at[k] < before; k++)
            if (w[i].acked_at[k] > best)
                best = w[i].acked_at[k];
    return best;
}

/* The monitor's time of the first event after `after_real_ms` whose
 * description matches `like`, in ms since the epoch; -1 none. */
static int64_t monitor_event_ms(dbkt_pgtopo *t, int64_t after_real_ms, const char *like)
{
    char sql[400], got[32] = "";
    snprintf(sql, sizeof sql,
             "SELECT (extract(epoch FROM eventtime) * 1000)::bigint FROM pgautofailover.event "
             "WHERE eventtime >= to_timestamp(%lld / 1000.0) AND description LIKE '%s' "
             "ORDER BY eventid LIMIT 1",
             (long long)after_real_ms, like);
    if (dbkt_pgtopo_monitor_query(t, sql, got, sizeof got) != 0 || !got[0])
        return -1;
    return strtoll(got, NULL, 10);
}

/* The monitor's events since `after_real_ms`, one line each with its time
 * relative to it. */
static void print_events(dbkt_pgtopo *t, int64_t after_real_ms)
{
    char sql[600];
    static char got[16384];
    snprintf(
        sql, sizeof sql,
        "SELECT string_agg(format('  +%%s ms  %%s', (extract(epoch FROM eventtime) * 1000)::bigint "
        "- %lld, description), E'\n' ORDER BY eventid) FROM pgautofailover.event "
        "WHERE eventtime >= to_timestamp(%lld / 1000.0)",
        (long long)after_real_ms, (long long)after_real_ms);
    if (dbkt_pgtopo_monitor_query(t, sql, got, sizeof got) == 0)
        fprintf(stderr, "%s\n", got);
}

struct outage {
    const char *name;
    int64_t begin_mono, begin_real; /* the failover was asked for / the kill sent */
    int64_t returned_mono;          /* perform failover returned / the kill done */
    int64_t primary_mono;           /* the watcher saw the new primary */
    int new_primary;
};

static void report(dbkt_pgtopo *t, struct worker *w, const struct outage *o)
{
    int64_t last = last_ack_before(w, o->primary_mono);
    int64_t first = first_ack_after(w, o->primary_mono);
    int64_t unhealthy = monitor_event_ms(t, o->begin_real, "%is marked as unhealthy%");
    char like[64];
    snprintf(like, sizeof like, "%%node %d \"n%d\"%%: \"wait_primary\"", o->new_primary + 1,
             o->new_primary);
    int64_t reported = monitor_event_ms(t, o->begin_real, like);
    bool kill = strcmp(o->name, "kill") == 0;
    char detect[96] = "";
    if (kill)
        snprintf(detect, sizeof detect,
                 "the monitor marked the killed node unhealthy after %lld ms; ",
                 unhealthy >= 0 ? (long long)(unhealthy - o->begin_real) : -1LL);
    fprintf(stderr,
            "autofailover %s: %sthe monitor had the new primary n%d report wait_primary after "
            "%lld ms; it answered as a writable primary after %lld ms (the %s returned after "
            "%lld ms); first acknowledged transfer %lld ms after that; no transfer acknowledged "
            "for %lld ms around the failover\n",
            o->name, detect, o->new_primary,
            reported >= 0 ? (long long)(reported - o->begin_real) : -1LL,
            (long long)(o->primary_mono - o->begin_mono), kill ? "kill" : "command",
            (long long)(o->returned_mono - o->begin_mono),
            first >= 0 ? (long long)(first - o->primary_mono) : -1LL,
            first >= 0 && last >= 0 ? (long long)(first - last) : -1LL);
    print_events(t, o->begin_real);
}

/* Starts a watcher on `node`, runs the failover (perform or kill of the
 * current primary), waits (60 s) for the new primary, then for 50 more
 * acknowledged transfers. False when the failover did not happen. */
static bool fail_over(dbkt_pgtopo *t, struct shared *sh, bool kill_primary, struct outage *o)
{
    int old = dbkt_pgtopo_primary(t);
    if (old < 0)
        return false;
    o->new_primary = 1 - old;
    struct watch wa;
    memset(&wa, 0, sizeof wa);
    wa.port = dbkt_pgtopo_port(t, o->new_primary);
    pthread_t th;
    if (pthread_create(&th, NULL, watch_main, &wa) != 0)
        return false;
    o->begin_mono = dbkt_mono_ms();
    o->begin_real = real_ms();
    int rc = kill_primary ? dbkt_pgtopo_kill_autoctl_node(t, old) : dbkt_pgtopo_perform_failover(t);
    o->returned_mono = dbkt_mono_ms();
    if (rc != 0)
        atomic_store(&wa.stop, true);
    pthread_join(th, NULL);
    o->primary_mono = atomic_load(&wa.primary_at);
    if (rc != 0 || o->primary_mono == 0)
        return false;
    wait_acked(sh, atomic_load(&sh->acked) + 50);
    return true;
}

static void autofailover_transfers_survive_failovers(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_autofailover_start();
    assert_int_equal(dbkt_pgtopo_exec(t, 0,
                                      "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);"
                                      "INSERT INTO acct VALUES (1, 1000), (2, 1000);"
                                      "CREATE TABLE transfers (req bigint PRIMARY KEY)"),
                     0);

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

    struct outage perform = {.name = "perform"}, killed = {.name = "kill"};
    bool ok1 = fail_over(t, &sh, false, &perform);
    int after1 = atomic_load(&sh.acked);
    bool ok2 = ok1 && fail_over(t, &sh, true, &killed);
    int after2 = atomic_load(&sh.acked);
    atomic_store(&sh.stop, true);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    if (!ok1 || !ok2)
        fprintf(stderr, "autofailover: the %s failover did not complete\n",
                ok1 ? "SIGKILL" : "perform");
    assert_true(ok1);
    assert_true(ok2);
    report(t, w, &perform);
    report(t, w, &killed);
    fprintf(stderr,
            "autofailover: %d transfers acknowledged before, %d after the first failover, %d "
            "after the second, %d in all; %d commit-unknown\n",
            before, after1, after2, atomic_load(&sh.acked), atomic_load(&sh.unknown));
    if (atomic_load(&sh.other_errors))
        fail_msg("%d transfers failed with something else than commit-unknown, first %s: %s",
                 atomic_load(&sh.other_errors), dbk_rc_name(sh.other_rc), sh.other_msg);
    /* Writes resumed after each failover. */
    assert_true(first_ack_after(w, perform.primary_mono) > 0);
    assert_true(first_ack_after(w, killed.primary_mono) > 0);

    /* On the last primary: every acknowledged transfer exactly once, no
     * failed one, money conserved, nothing beyond acked + unknown. */
    dbk_conn *c = dbkt_open(dbkt_pgtopo_url(t, killed.new_primary));
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbkt_int(db, "SELECT sum(bal)::bigint FROM acct"), 2000);
    int64_t rows = dbkt_int(db, "SELECT count(*) FROM transfers");
    assert_true(rows >= atomic_load(&sh.acked));
    assert_true(rows <= atomic_load(&sh.acked) + atomic_load(&sh.unknown));
    int64_t missing = 0, failed_present = 0;
    for (int i = 0; i < THREADS; i++) {
        for (int k = 0; k < w[i].nacked; k++) {
            dbk_value p[1] = {dbk_int64(w[i].acked_keys[k])};
            int64_t n = 0;
            DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM transfers WHERE req = $1", p, 1,
                                       &n, &err),
                    &err);
            missing += n != 1;
        }
        for (int k = 0; k < w[i].nfailed; k++) {
            dbk_value p[1] = {dbk_int64(w[i].failed_keys[k])};
            int64_t n = 0;
            DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM transfers WHERE req = $1", p, 1,
                                       &n, &err),
                    &err);
            failed_present += n != 0;
        }
    }
    assert_int_equal(missing, 0);
    assert_int_equal(failed_present, 0);
    dbk_conn_close(c);
    dbk_pool_close(pool, 2000);
    pthread_mutex_destroy(&sh.mu);
    dbkt_pgtopo_stop(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(autofailover_transfers_survive_failovers),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
