/*
 * The transfer workload the failover tests share (failover_test: a plain
 * promotion; autofailover_test: pg_auto_failover): threads run transfers
 * between two accounts through one pool with dbk_tx_run() while the test
 * fails the primary over, and afterwards the new primary is checked.
 *
 * Each transfer moves one unit between `acct` rows 1 and 2 (rows updated
 * in id order whatever the direction: no deadlocks, so the only retries
 * are the failover's) and inserts its unique request key into
 * `transfers`. A transfer may end DBK_OK (acknowledged: its key and time
 * are kept), DBK_ECOMMIT_UNKNOWN (its COMMIT was in flight when the server
 * went: counted) or anything else (a failure: the first 64 keys are kept,
 * the first error's code and message too).
 *
 * Worker threads never assert; the main thread does, after
 * dbkt_xfer_stop() has joined them. Every wait is bounded.
 */
#ifndef DBKT_TRANSFERS_H
#define DBKT_TRANSFERS_H

#include <stdint.h>

#include "dbkit/dbkit.h"

/* What dbkt_xfer_start() needs on the first primary: the two accounts
 * (1000 each) and the table of request keys. */
#define DBKT_XFER_SCHEMA                                                                           \
    "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);"                                 \
    "INSERT INTO acct VALUES (1, 1000), (2, 1000);"                                                \
    "CREATE TABLE transfers (req bigint PRIMARY KEY)"

typedef struct dbkt_xfer dbkt_xfer;

/* Opens a pool on the two nodes at port0 and port1 of 127.0.0.1 as one
 * multi-host URL with target_session_attrs=read-write (connect_timeout=2,
 * pool_max=4, acquire_timeout=10000); fails the test on error. */
dbk_pool *dbkt_xfer_pool(int port0, int port1);

/* Starts `threads` (1..16) workers on db, each running transfers with
 * *opts until dbkt_xfer_stop() (or 200,000 each). Fails the test when a
 * thread cannot start. */
dbkt_xfer *dbkt_xfer_start(dbk_db *db, int threads, const dbk_tx_opts *opts);

/* Waits until at least `at_least` transfers are acknowledged (30 s at
 * most, polling every 5 ms). */
void dbkt_xfer_wait_acked(dbkt_xfer *x, int at_least);

int dbkt_xfer_acked(dbkt_xfer *x);
int dbkt_xfer_unknown(dbkt_xfer *x);

/* Stops and joins the workers. */
void dbkt_xfer_stop(dbkt_xfer *x);

/* After the stop: the first acknowledgement at or after `from`
 * (dbkt_mono_ms() time) across threads, and the last before `before`; -1
 * when none. */
int64_t dbkt_xfer_first_ack_after(dbkt_xfer *x, int64_t from);
int64_t dbkt_xfer_last_ack_before(dbkt_xfer *x, int64_t before);

/* After the stop: fails the test when any transfer failed with something
 * other than DBK_ECOMMIT_UNKNOWN (naming the first). */
void dbkt_xfer_assert_no_failures(dbkt_xfer *x);

/* After the stop, on the primary at url: money conserved (2000), no more
 * rows than acknowledged + unknown, every acknowledged key there exactly
 * once, no failed key there. Asserts. */
void dbkt_xfer_check(dbkt_xfer *x, const char *url);

/* Frees x (after the stop). Accepts NULL. */
void dbkt_xfer_free(dbkt_xfer *x);

#endif
