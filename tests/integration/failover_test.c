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
 * The workload and its checks are tests/support/transfers.h's. Worker
 * threads never assert; the main thread does, after joining them.
 */
#include <stdio.h>

#include "pgtopo.h"
#include "testutil.h"
#include "transfers.h"

#define THREADS 4

static void failover_promotion_under_transfers(void **state)
{
    (void)state;
    dbkt_pgtopo *t = dbkt_pgtopo_start(1);
    assert_int_equal(dbkt_pgtopo_exec(t, 0, DBKT_XFER_SCHEMA), 0);
    assert_int_equal(dbkt_pgtopo_sync(t, 30000), 0);
    dbk_pool *pool = dbkt_xfer_pool(dbkt_pgtopo_port(t, 0), dbkt_pgtopo_port(t, 1));

    /* The default retry budget (2 s): an outage shorter than that is
     * waited out. The per-attempt transaction timeout is raised from 5 s:
     * on a loaded 2-core CI machine one attempt across the promotion once
     * outlived it (DBK_ETIMEOUT), which says nothing about the failover. */
    dbk_tx_opts opts = {.timeout_ms = 20000};
    dbkt_xfer *x = dbkt_xfer_start(dbk_pool_db(pool), THREADS, &opts);
    dbkt_xfer_wait_acked(x, 50);
    int before = dbkt_xfer_acked(x);

    int64_t t_stop = dbkt_mono_ms();
    int stop_rc = dbkt_pgtopo_stop_node(t, 0, "fast");
    int64_t t_stopped = dbkt_mono_ms();
    int promote_rc = stop_rc == 0 ? dbkt_pgtopo_promote(t, 1) : -1;
    int64_t t_promoted = dbkt_mono_ms();
    if (promote_rc == 0)
        dbkt_xfer_wait_acked(x, dbkt_xfer_acked(x) + 50);
    dbkt_xfer_stop(x);
    assert_int_equal(stop_rc, 0);
    assert_int_equal(promote_rc, 0);

    long long first = (long long)dbkt_xfer_first_ack_after(x, t_promoted);
    if (first < 0)
        first = 0;
    fprintf(stderr,
            "failover: primary stop took %lld ms, promotion %lld ms; first acknowledged transfer "
            "%lld ms after the promotion returned (%lld ms after the stop began); %d acked before, "
            "%d in all, %d commit-unknown\n",
            (long long)(t_stopped - t_stop), (long long)(t_promoted - t_stopped),
            first ? first - (long long)t_promoted : -1LL, first ? first - (long long)t_stop : -1LL,
            before, dbkt_xfer_acked(x), dbkt_xfer_unknown(x));
    dbkt_xfer_assert_no_failures(x);
    assert_true(first > 0);

    /* On the new primary: every acknowledged transfer exactly once,
     * money conserved, nothing beyond acked + unknown. */
    dbkt_xfer_check(x, dbkt_pgtopo_url(t, 1));
    dbk_pool_close(pool, 2000);
    dbkt_xfer_free(x);
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
