/*
 * A private, throwaway PostgreSQL server for tests that must stop, restart
 * or break the server (the shared test server must never be touched that
 * way).
 *
 * dbkt_pgserver_start() runs initdb into a fresh temporary directory (as
 * user "postgres" through `runuser -u postgres --` when the test runs as
 * root, since PostgreSQL refuses root), picks a free loopback port and
 * starts the server with `pg_ctl start -w`. Binaries come from
 * $DBKIT_PG_BINDIR, else `pg_config --bindir`, else /usr/lib/postgresql/15/bin,
 * else PATH.
 *
 * Cleanup never depends on the test finishing: a watchdog process holds the
 * read end of a pipe whose write end only the test process holds; when the
 * test process exits for any reason (pass, failed assert, crash), the
 * watchdog stops the server (pg_ctl stop -m immediate) and removes the
 * directory. dbkt_pgserver_stop() does the same at once.
 *
 * Without the binaries the test skips (exit 77) - or fails under CI=true.
 * Not thread-safe: drive a server from one thread.
 */
#ifndef DBKIT_PGSERVER_H
#define DBKIT_PGSERVER_H

#include <stddef.h>

typedef struct dbkt_pgserver dbkt_pgserver;

/* Runs argv (argv[0] a path or a PATH name) as the postgres user when root,
 * stdout and stderr appended to cmdlog, stdin from /dev/null; waits at most
 * 120 s (then kills it). Returns the exit status, or -1. Shared with the
 * topology helpers (pgtopo.c). */
int dbkt_run_as_postgres(const char *cmdlog, char *const argv[]);

/* The PostgreSQL server programs' directory: $DBKIT_PG_BINDIR, else
 * `pg_config --bindir` when initdb is there, else Debian's
 * /usr/lib/postgresql/15/bin; "" when none (then PATH is used). */
void dbkt_pg_bindir(char *out, size_t n);

/* A loopback TCP port free at the time of the call, or -1. */
int dbkt_free_port(void);

/* Finds the server programs into bindir (skips without initdb) and makes a
 * fresh directory "/tmp/<prefix>.XXXXXX" into dir, owned by the user
 * PostgreSQL runs as (postgres when root; skips when there is none). */
void dbkt_pg_prepare_dir(const char *prefix, char *bindir, size_t bn, char *dir, size_t dn);

/* Copies a log file to stderr under a header line (nothing when absent). */
void dbkt_dump_file(const char *path);

/* Starts a server; never NULL (skips or fails the test instead). */
dbkt_pgserver *dbkt_pgserver_start(void);

/* "postgres://postgres@127.0.0.1:<port>/postgres"; borrowed until stop. */
const char *dbkt_pgserver_url(const dbkt_pgserver *s);

int dbkt_pgserver_port(const dbkt_pgserver *s);

/* `pg_ctl restart -m <mode> -w` (mode "fast", "immediate" or "smart").
 * Returns 0 once the server accepts connections again, -1 on failure (the
 * server log is printed to stderr). */
int dbkt_pgserver_restart(dbkt_pgserver *s, const char *mode);

/* `pg_ctl stop -m fast -w` without removing anything; 0 on success. */
int dbkt_pgserver_pause(dbkt_pgserver *s);

/* `pg_ctl start -w` again after dbkt_pgserver_pause(); 0 on success. */
int dbkt_pgserver_resume(dbkt_pgserver *s);

/* Stops the server, removes its directory and frees s. Accepts NULL. */
void dbkt_pgserver_stop(dbkt_pgserver *s);

#endif
