/*
 * Test support: real servers from the test environment, one database per
 * test, temporary SQLite files, and a main() that runs one named test.
 *
 * The environment (scripts/testenv.sh) exports:
 *   DBKIT_TEST_PG_URL     admin URL of a throwaway PostgreSQL
 *   DBKIT_TEST_REDIS_URL  URL of a throwaway redis-server
 * Without them a test that needs the server skips (exit 77) and says why;
 * with CI=true it fails instead.
 */
#ifndef DBKIT_TESTUTIL_H
#define DBKIT_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <cmocka.h>

#include "dbkit/dbkit.h"

/* Asserts rc == DBK_OK, printing the dbk_error when not. */
#define DBKT_OK(expr, errp)                                                                     \
    do {                                                                                        \
        dbk_rc rc_ = (expr);                                                                    \
        if (rc_ != DBK_OK)                                                                      \
            fail_msg("%s returned %s: %s (hint: %s)", #expr, dbk_rc_name(rc_), (errp)->message, \
                     (errp)->hint);                                                             \
    } while (0)

/* Asserts a specific code, printing both names. */
#define DBKT_RC(expected, expr)                                                            \
    do {                                                                                   \
        dbk_rc got_ = (expr);                                                              \
        if (got_ != (expected))                                                            \
            fail_msg("%s: expected %s, got %s", #expr, dbk_rc_name(expected), dbk_rc_name(got_)); \
    } while (0)

/* Skips (exit 77) with a reason, or fails under CI=true when `server_needed`. */
void dbkt_skip(int server_needed, const char *fmt, ...);

/* Admin URL of the test PostgreSQL; skips/fails when absent. */
const char *dbkt_pg_admin_url(void);

/* Creates (dropping first) database "dbkt_<name>" and returns its URL
 * (static buffer per call site is not needed: returned string is malloc'd,
 * free it). Skips/fails without PostgreSQL. */
char *dbkt_pg_fresh_db(const char *name);

/* Runs SQL on the admin connection (for pg_terminate_backend etc.). */
void dbkt_pg_admin_exec(const char *sql);

/* URL of the test Redis; skips/fails when absent. */
const char *dbkt_redis_url(void);

/* A fresh temporary directory (malloc'd path), removed at exit. */
char *dbkt_tmpdir(void);

/* "sqlite:<tmpdir>/<name>.db" (malloc'd). */
char *dbkt_sqlite_url(const char *name);

/* Opens a connection from a URL, failing the test on error. */
dbk_conn *dbkt_open(const char *url);

/* Both engines: calls fn(url) for a fresh SQLite file and a fresh
 * PostgreSQL database named after `name`. */
void dbkt_each_engine(const char *name, void (*fn)(const char *url, dbk_engine engine));

/* Runs a script (no parameters), failing the test on error. */
void dbkt_exec(dbk_db *db, const char *sql);

/* One row, one int64 value from sql (no parameters); fails the test on error. */
int64_t dbkt_int(dbk_db *db, const char *sql);

/* One row, one text value from sql copied into buf; fails the test on error. */
void dbkt_text(dbk_db *db, const char *sql, char *buf, size_t n);

/* ---- child processes (the CLI and example tests run the built programs) ---- */

/* A finished child: exit code (128 + signal when it was killed) and what it
 * wrote (malloc'd, NUL-terminated). */
typedef struct dbkt_proc {
    int code;
    char *out;
    char *err;
} dbkt_proc;

void dbkt_proc_free(dbkt_proc *p);

/* Monotonic milliseconds. */
int64_t dbkt_mono_ms(void);

/* A TCP connection to 127.0.0.1:port (fails the test when it cannot). */
int dbkt_tcp_connect(int port);

/* Appends n bytes to a growing NUL-terminated buffer (fails the test on
 * ENOMEM). */
void dbkt_append(char **buf, size_t *len, const char *p, size_t n);

/* Starts exe (looked up in PATH when it has no '/') with args
 * (NULL-terminated, without argv[0]) in cwd (NULL: here), with the
 * variables named in `unset` removed and the "K=V" strings of `set` added
 * (either list may be NULL). *out_fd / *err_fd read its stdout / stderr.
 * The child is killed when the test process ends (PR_SET_PDEATHSIG), so a
 * failed assertion never leaves it running. That signal comes when the
 * thread that called this ends: call it from the test's main thread (or a
 * thread that outlives the child), never from a short-lived helper. */
pid_t dbkt_spawn(const char *exe, const char *cwd, const char *const *args,
                 const char *const *unset, const char *const *set, int *out_fd, int *err_fd);

/* Reads both pipes to their end and reaps the child; past timeout_ms the
 * child is killed and the test fails naming `what`. */
dbkt_proc dbkt_collect(pid_t pid, int out_fd, int err_fd, int timeout_ms, const char *what);

/* ---- huge values without the memory ----
 * A mapping of `len` bytes that may not be read (PROT_NONE, no memory
 * reserved): a value pointing into it that the library reads, copies or
 * hashes crashes the test, so a test passes only when the value is refused
 * from its length alone. */
void *dbkt_unreadable(size_t len);
void dbkt_unreadable_free(void *p, size_t len);

/* ---- fork ----
 * Runs fn(ctx) in a child process and returns its result (0..255), which
 * the child reports through exec of /bin/sh, not exit(): under valgrind a
 * child's exit would leak-check memory that belongs to the parent. */
int dbkt_in_child(int (*fn)(void *ctx), void *ctx);

#define DBKT_MAIN(tests)                                                 \
    int main(int argc, char **argv)                                      \
    {                                                                    \
        if (argc > 1)                                                    \
            cmocka_set_test_filter(argv[1]);                             \
        return cmocka_run_group_tests(tests, NULL, NULL);                \
    }

#endif
