/*
 * A private PostgreSQL topology for tests: one primary, N streaming
 * replicas and, on request, a PgBouncer in front of one node; or a
 * pg_auto_failover monitor with two nodes (below).
 *
 * dbkt_pgtopo_start(n) runs initdb for the primary (wal_level=replica,
 * trust authentication on loopback, replication allowed), starts it on a
 * free loopback port, then takes each replica with `pg_basebackup -R -X
 * stream` and starts it on its own free port. Everything runs as user
 * postgres through `runuser -u postgres --` when the test runs as root
 * (PostgreSQL and PgBouncer refuse root), from $DBKIT_PG_BINDIR, else
 * `pg_config --bindir`, else /usr/lib/postgresql/15/bin.
 *
 * Nodes are numbered 0 (the first primary) to n. Servers are driven by
 * their data directory (pg_ctl -D) and, for a hard crash, by the PID in
 * postmaster.pid. As in pgserver.h, a watchdog process stops every server
 * (pg_ctl stop -m immediate per data directory, PgBouncer by its pidfile)
 * and removes the directory when the test process exits for any reason.
 *
 * Tests that use it carry the marker dbkit:topology (they run only in the
 * plain CI build). Without the binaries the test skips, or fails under
 * CI=true. Not thread-safe: drive a topology from one thread.
 */
#ifndef DBKIT_PGTOPO_H
#define DBKIT_PGTOPO_H

#include <stddef.h>

typedef struct dbkt_pgtopo dbkt_pgtopo;

/* Starts a primary and `nreplicas` (0..8) streaming replicas, each replica
 * already streaming when this returns. Never NULL (skips or fails). */
dbkt_pgtopo *dbkt_pgtopo_start(int nreplicas);

/* Number of nodes (1 + nreplicas). */
int dbkt_pgtopo_nodes(const dbkt_pgtopo *t);

/* "postgres://postgres@127.0.0.1:<port>/postgres" of node i; borrowed
 * until dbkt_pgtopo_stop(). */
const char *dbkt_pgtopo_url(const dbkt_pgtopo *t, int node);

int dbkt_pgtopo_port(const dbkt_pgtopo *t, int node);

/* `pg_ctl stop -m <mode>` ("fast", "immediate", "smart"); 0 on success. */
int dbkt_pgtopo_stop_node(dbkt_pgtopo *t, int node, const char *mode);

/* SIGKILL to the node's postmaster (PID from postmaster.pid): a crash
 * without a shutdown checkpoint. 0 on success. */
int dbkt_pgtopo_kill_node(dbkt_pgtopo *t, int node);

/* `pg_ctl start -w` of a stopped node with its port and options; 0 on
 * success. */
int dbkt_pgtopo_start_node(dbkt_pgtopo *t, int node);

/* `pg_ctl promote -w` of a replica; 0 once it accepts writes. */
int dbkt_pgtopo_promote(dbkt_pgtopo *t, int node);

/* Runs SQL on node i through libpq (autocommit); 0 on success, else the
 * error is printed and -1 returned. */
int dbkt_pgtopo_exec(dbkt_pgtopo *t, int node, const char *sql);

/* Waits (at most timeout_ms, polling) until every replica has replayed
 * the primary's current WAL insert position (past every commit that has
 * returned, synchronous_commit=off included). 0 on success. */
int dbkt_pgtopo_sync(dbkt_pgtopo *t, int timeout_ms);

/* Starts PgBouncer 1.18 in front of node i: pool_mode=transaction,
 * default_pool_size=pool_size, trust auth, a free loopback port. Returns
 * its URL (postgres://postgres@127.0.0.1:<port>/postgres, borrowed until
 * stop), or NULL after printing its log. One bouncer per topology. */
const char *dbkt_pgtopo_bouncer_start(dbkt_pgtopo *t, int node, int pool_size);

/* ---- pg_auto_failover ----
 * dbkt_pgtopo_autofailover_start() builds a monitor and two nodes with
 * pg_autoctl (postgresql-15-auto-failover): `create monitor` and `create
 * postgres` (--auth trust --no-ssl, --listen 127.0.0.1, free ports), each
 * then kept by a `pg_autoctl run` process started in its own process
 * group, as postgres when root, its configuration and state under the
 * topology's directory (XDG_*), stopped by PID (SIGTERM, then SIGKILL to
 * the group after 20 s) by dbkt_pgtopo_stop() or the watchdog. The
 * monitor's health checks are tuned for tests (every 1 s, a node unhealthy
 * after 2 s without a report). It returns once node 0 is primary and node
 * 1 secondary; nodes 0 and 1 then answer dbkt_pgtopo_url()/_port().
 * Without pg_autoctl the test skips (fails under CI=true). */
dbkt_pgtopo *dbkt_pgtopo_autofailover_start(void);

int dbkt_pgtopo_monitor_port(const dbkt_pgtopo *t);

/* The node the monitor has as primary (reported = goal state primary,
 * wait_primary or single), or -1. */
int dbkt_pgtopo_primary(dbkt_pgtopo *t);

/* `pg_autoctl perform failover` against the monitor (it returns once the
 * failover is done); 0 on success. */
int dbkt_pgtopo_perform_failover(dbkt_pgtopo *t);

/* SIGKILL to a node's `pg_autoctl run` process group: the keeper and its
 * Postgres die at once, as when the machine is lost (a Postgres killed
 * alone is restarted by its keeper). 0 once the postmaster is gone. */
int dbkt_pgtopo_kill_autoctl_node(dbkt_pgtopo *t, int node);

/* Runs SQL on the monitor's pg_auto_failover database; the first column
 * of a one-row answer into buf ("" otherwise). 0 on success. */
int dbkt_pgtopo_monitor_query(dbkt_pgtopo *t, const char *sql, char *buf, size_t n);

/* Stops every server and PgBouncer, removes the directory, frees t.
 * Accepts NULL. */
void dbkt_pgtopo_stop(dbkt_pgtopo *t);

#endif
