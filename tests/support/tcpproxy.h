/*
 * A test-only TCP proxy that misbehaves on request.
 *
 * It listens on a free 127.0.0.1 port and forwards every accepted
 * connection to a target (the test PostgreSQL or Redis), from one thread of
 * the test process (no root, no other process). The test switches what the
 * "network" does at any time:
 *
 *   FORWARD    bytes flow both ways (after the configured delay, if any);
 *   SILENT     nothing flows: sockets stay open, whatever arrives from
 *              either side is read and thrown away (a black hole that still
 *              accepts TCP connections, as a stateful firewall dropping
 *              packets looks to a client that already has a connection);
 *   HALF_OPEN  client -> server still flows, server -> client is dropped:
 *              the request reaches the server, its answer never comes back.
 *
 * and can reset every open connection (RST through SO_LINGER 0). New
 * connections accepted while the proxy is not FORWARDing are not connected
 * to the target at all: a connect behind a silent proxy sees its TCP
 * handshake succeed and then nothing.
 *
 * Every call is thread-safe. dbkt_proxy_stop() closes every socket and
 * joins the thread; nothing outlives it.
 */
#ifndef DBKIT_TCPPROXY_H
#define DBKIT_TCPPROXY_H

#include <stddef.h>

typedef struct dbkt_proxy dbkt_proxy;

typedef enum dbkt_proxy_mode {
    DBKT_PROXY_FORWARD = 0,
    DBKT_PROXY_SILENT = 1,
    DBKT_PROXY_HALF_OPEN = 2
} dbkt_proxy_mode;

/* Starts a proxy to target_host:target_port (numeric IPv4). Fails the
 * test (cmocka) when it cannot. Owned by the caller: dbkt_proxy_stop(). */
dbkt_proxy *dbkt_proxy_start(const char *target_host, int target_port);

/* The local port it listens on (127.0.0.1). */
int dbkt_proxy_port(const dbkt_proxy *p);

/* Switches the mode for every open and future connection; it applies to
 * the next byte the proxy reads. */
void dbkt_proxy_set_mode(dbkt_proxy *p, dbkt_proxy_mode mode);

/* Holds each chunk read this many ms before passing it on (0: none). */
void dbkt_proxy_set_delay(dbkt_proxy *p, int delay_ms);

/* Trickle (server -> client only): passes on at most `bytes` of a chunk, then waits the delay
 * again before the next `bytes` (0: off). With a delay below a client's
 * per-read timeout, a peer that keeps a call alive without finishing it. */
void dbkt_proxy_set_trickle(dbkt_proxy *p, int bytes);

/* Resets every open connection (both sides get an RST) and returns once
 * that is done. New connections are still accepted afterwards. */
void dbkt_proxy_reset_all(dbkt_proxy *p);

/* Connections currently open through the proxy. */
size_t dbkt_proxy_connections(dbkt_proxy *p);

/* Closes every socket, joins the thread and frees the proxy. Accepts NULL. */
void dbkt_proxy_stop(dbkt_proxy *p);

/* Counts the entries of /proc/self/task (threads) or /proc/self/fd
 * (open descriptors) of this process; -1 where /proc is not readable. */
int dbkt_count_threads(void);
int dbkt_count_fds(void);

#endif
