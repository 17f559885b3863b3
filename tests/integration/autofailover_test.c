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
 * The workload and its checks are tests/support/transfers.h's. Worker
 * threads never assert; the main thread does, after joining them. Every
 * wait is bounded (the set-up 90 s a step, each failover 60 s).
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
#include "transfers.h"

#define THREADS 4

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

static void report(dbkt_pgtopo *t, dbkt_xfer *x, const struct outage *o)
{
    int64_t last = dbkt_xfer_last_ack_before(x, o->primary_mono);
    int64_t first = dbkt_xfer_first_ack_after(x, o->primary_mono);
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
static bool fail_over(dbkt_pgtopo *t, dbkt_xfer *x, bool kill_primary, struct outage *o)
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
    dbkt_xfer_wait_acked(x, dbkt_xfer_acked(x) + 50);
    return true;
}

static void autofailover_transfers_survive_failovers(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_autofailover_start();
    assert_int_equal(dbkt_pgtopo_exec(t, 0, DBKT_XFER_SCHEMA), 0);
    dbk_pool *pool = dbkt_xfer_pool(dbkt_pgtopo_port(t, 0), dbkt_pgtopo_port(t, 1));

    /* pg_auto_failover's outage lasts seconds (the demotion, the
     * promotion): a retry budget of 60 s rides through it; each attempt
     * may take 20 s on a loaded machine. */
    dbk_tx_opts opts = {.timeout_ms = 20000, .max_elapsed_ms = 60000};
    dbkt_xfer *x = dbkt_xfer_start(dbk_pool_db(pool), THREADS, &opts);
    dbkt_xfer_wait_acked(x, 50);
    int before = dbkt_xfer_acked(x);

    struct outage perform = {.name = "perform"}, killed = {.name = "kill"};
    bool ok1 = fail_over(t, x, false, &perform);
    int after1 = dbkt_xfer_acked(x);
    bool ok2 = ok1 && fail_over(t, x, true, &killed);
    int after2 = dbkt_xfer_acked(x);
    dbkt_xfer_stop(x);
    if (!ok1 || !ok2)
        fprintf(stderr, "autofailover: the %s failover did not complete\n",
                ok1 ? "SIGKILL" : "perform");
    assert_true(ok1);
    assert_true(ok2);
    report(t, x, &perform);
    report(t, x, &killed);
    fprintf(stderr,
            "autofailover: %d transfers acknowledged before, %d after the first failover, %d "
            "after the second, %d in all; %d commit-unknown\n",
            before, after1, after2, dbkt_xfer_acked(x), dbkt_xfer_unknown(x));
    dbkt_xfer_assert_no_failures(x);
    /* Writes resumed after each failover. */
    assert_true(dbkt_xfer_first_ack_after(x, perform.primary_mono) > 0);
    assert_true(dbkt_xfer_first_ack_after(x, killed.primary_mono) > 0);

    /* On the last primary: every acknowledged transfer exactly once, no
     * failed one, money conserved, nothing beyond acked + unknown. */
    dbkt_xfer_check(x, dbkt_pgtopo_url(t, killed.new_primary));
    dbk_pool_close(pool, 2000);
    dbkt_xfer_free(x);
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
