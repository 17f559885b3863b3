/*
 * Private Redis topologies for tests: a Sentinel set (a master, one
 * replica, three sentinels) or a Redis Cluster (six nodes, three masters
 * with a replica each), started on free loopback ports in a fresh
 * directory under the test's temporary directory, and stopped by PID.
 *
 * Nodes are numbered. Sentinel: 0 is the master at start, 1 its replica,
 * 2 .. 2 + DBKT_SENTINELS - 1 the sentinels (down-after-milliseconds 1000,
 * failover-timeout 3000, quorum 2, master name DBKT_SENTINEL_MASTER).
 * Cluster: 0 .. DBKT_CLUSTER_NODES - 1, created with `redis-cli --cluster
 * create ... --cluster-replicas 1` (cluster-node-timeout 1500). A node's
 * output goes to servers.log in the topology's directory; a failed wait
 * prints its last lines.
 *
 * Cleanup never depends on the test finishing: every server is started with
 * PR_SET_PDEATHSIG, so it dies with the thread that started it (start
 * topologies from the test's main thread); dbkt_redistopo_teardown(), a
 * cmocka teardown, stops whatever topology a failed assertion left
 * running, and an atexit handler does the same at exit.
 *
 * Every wait is bounded and fails the test (fail_msg) when its bound
 * passes. Not thread-safe: drive a topology from one thread (other threads
 * may run workloads against its servers).
 */
#ifndef DBKT_REDISTOPO_H
#define DBKT_REDISTOPO_H

#include <stdbool.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#define DBKT_SENTINELS 3
#define DBKT_SENTINEL_MASTER "mymaster"
#define DBKT_CLUSTER_NODES 6

typedef struct dbkt_redistopo dbkt_redistopo;

/* A master, one replica in sync with it and three sentinels that see each
 * other and the replica. Never NULL (fails the test instead). */
dbkt_redistopo *dbkt_redis_sentinel_start(void);

/* Six cluster nodes, every slot served (cluster_state:ok on every node) and
 * every replica in sync. Never NULL (fails the test instead). */
dbkt_redistopo *dbkt_redis_cluster_start(void);

/* The cache URL of the topology: redis-sentinel://<the three
 * sentinels>/mymaster, or redis-cluster://<node 0>,<node 1>. Borrowed until
 * dbkt_redistopo_stop(). */
const char *dbkt_redistopo_url(const dbkt_redistopo *t);

/* Node i's port (the index numbering is above). */
int dbkt_redistopo_port(const dbkt_redistopo *t, int i);

/* The index of the node on `port`, or -1. */
int dbkt_redistopo_index(const dbkt_redistopo *t, int port);

/* False once node i was killed. */
bool dbkt_redistopo_alive(const dbkt_redistopo *t, int i);

/* SIGKILL to node i and its reaping (no-op when it is not running). */
void dbkt_redistopo_kill(dbkt_redistopo *t, int i);

/* SIGSTOP / SIGCONT to node i: it keeps its sockets and answers nothing. */
void dbkt_redistopo_pause(dbkt_redistopo *t, int i);
void dbkt_redistopo_resume(dbkt_redistopo *t, int i);

/* The last `lines` lines of the servers' log, to stderr. */
void dbkt_redistopo_dump_log(const dbkt_redistopo *t, int lines);

/* Kills every process of the topology by PID, removes its directory and
 * frees t. Accepts NULL. */
void dbkt_redistopo_stop(dbkt_redistopo *t);

/* A cmocka teardown: stops every topology still running (after a failed
 * assertion). Returns 0. */
int dbkt_redistopo_teardown(void **state);

/* One command (printf-style, as redisCommand) to 127.0.0.1:port on a new
 * connection with a 2 s connect and command timeout. The reply (free it
 * with freeReplyObject), or NULL when the server did not answer. */
redisReply *dbkt_redis_cmd(int port, const char *fmt, ...);

/* True when the server on `port` answers ROLE with "master". */
bool dbkt_redis_is_master(int port);

/* ---- Sentinel ---- */

/* The port of the master sentinel s (0 .. DBKT_SENTINELS - 1) names; 0 when
 * it does not answer. */
int dbkt_sentinel_named_master(const dbkt_redistopo *t, int s);

/* Polls every sentinel until one names a master other than `old_port`;
 * returns its port, or 0 after timeout_ms (the servers' log printed). */
int dbkt_sentinel_wait_switch(const dbkt_redistopo *t, int old_port, int timeout_ms);

/* ---- Cluster ---- */

/* Waits until every live node reports cluster_state:ok; fails the test
 * naming `what` after timeout_ms. */
void dbkt_cluster_wait_ok(const dbkt_redistopo *t, int timeout_ms, const char *what);

/* CLUSTER MYID of the node on `port` into id (fails the test when it does
 * not answer). */
void dbkt_cluster_node_id(int port, char *id, size_t n);

/* The index of the node serving `slot` as master, from CLUSTER SLOTS of a
 * live node (fails the test when none names one). */
int dbkt_cluster_owner(const dbkt_redistopo *t, unsigned slot);

/* The slots node i serves as master (CLUSTER SLOTS), ascending, into
 * out[max]; returns their number. */
int dbkt_cluster_slots_of(const dbkt_redistopo *t, int i, unsigned *out, int max);

/* The index of a live replica of master m, or -1. */
int dbkt_cluster_replica_of(const dbkt_redistopo *t, int m);

/* `CLUSTER FAILOVER` on replica r until it is a master (at most 3
 * attempts, 7 s each: a master that does not acknowledge within 5 s makes
 * the replica give up); fails the test otherwise. */
void dbkt_cluster_failover(const dbkt_redistopo *t, int r);

/* `redis-cli --cluster reshard` of `nslots` slots from master `from` to
 * master `to` (redis-cli moves the source's lowest slots first, key by key
 * with MIGRATE, then SETSLOT NODE on every master). Fails the test with
 * redis-cli's output when it exits non-zero or runs past 120 s. */
void dbkt_cluster_reshard(const dbkt_redistopo *t, int from, int to, int nslots);

#endif
