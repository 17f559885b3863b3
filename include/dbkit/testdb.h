/*
 * dbkit/testdb.h - a fresh, migrated, real database per test.
 *
 * A test suite that runs against real databases needs each test to start
 * from the schema and nothing else, and needs that to be cheap enough to do
 * for every test. dbk_testdb builds the migrated schema once and copies it:
 *
 *   PostgreSQL  a template database per migrations hash ("dbkit_tpl_<hash>",
 *               built once by applying the migrations with dbk_migrate_up()),
 *               and per test a database cloned from it with
 *               CREATE DATABASE ... TEMPLATE. The template has no open
 *               connection once built: builds are serialized by an advisory
 *               lock on the admin connection, and the builder closes its
 *               connection to the template before anyone clones it, so
 *               parallel test runners never meet "source database is being
 *               accessed by other users".
 *   SQLite      a migrated template file per migrations hash in the directory
 *               of the configured file ("dbkit_tpl_<hash>.db", built under an
 *               flock), copied per test.
 *
 * The hash covers the engine and every "*.sql" file of the migrations
 * directory (name and contents): the template is rebuilt only when a
 * migration file is added, removed or changed.
 *
 * Names. Fresh databases are called "dbkit_t_<host>_<pid>_<start>_<seq>":
 * the host tag (8 hex digits of a hash of the host name), the owner's
 * process id and its start time (clock ticks since boot, from /proc), and a
 * per-process sequence number. dbk_testdb_prune() drops the ones whose
 * owner on this host is gone (no such process, or a process with that id
 * but another start time: the id was reused). The first dbk_testdb_new() of
 * a process prunes once, so leftovers of a killed run disappear on the next
 * run. Databases of other hosts are never touched.
 *
 * Thread safety: every call is reentrant; any number of threads and
 * processes may call dbk_testdb_new() at once.
 */
#ifndef DBKIT_TESTDB_H
#define DBKIT_TESTDB_H

#include <stdbool.h>

#include "config.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A fresh database, owned by the caller until dbk_testdb_drop() or
 * dbk_testdb_free(). */
typedef struct dbk_testdb dbk_testdb;

/* How PostgreSQL 15+ copies the template (CREATE DATABASE ... STRATEGY).
 * The default is FILE_COPY; bench/testdb_bench measures both (on the
 * example schema they were within run-to-run noise of each other, see
 * docs/testing.md). Servers before 15 get no STRATEGY clause. */
typedef enum dbk_testdb_strategy {
    DBK_TESTDB_STRATEGY_DEFAULT = 0,
    DBK_TESTDB_STRATEGY_FILE_COPY = 1,
    DBK_TESTDB_STRATEGY_WAL_LOG = 2
} dbk_testdb_strategy;

/* Options; DBK_TESTDB_OPTS_INIT (or a zero-initialized struct) means every default. */
typedef struct dbk_testdb_opts {
    /* The struct's version: DBK_TESTDB_OPTS_VERSION, set by DBK_TESTDB_OPTS_INIT or
     * dbk_testdb_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* An explicit database name (PostgreSQL) or file base name (SQLite)
     * instead of the owner-tagged one: [a-z0-9_], at most 63 bytes. An
     * existing database of that name is dropped first (its connections are
     * terminated). Such databases are never pruned. */
    const char *name;
    /* The process that owns the database, for pruning (0: this process).
     * `dbkit testdb new` passes its parent, the shell or runner that will
     * use the URL. */
    long owner_pid;
    /* Longest wait for another process building the same template, ms
     * (0 or negative: 120000). */
    int lock_timeout_ms;
    dbk_testdb_strategy strategy;
    /* Do not prune leftovers on the first call of the process. */
    bool no_prune;
} dbk_testdb_opts;

/* The version of dbk_testdb_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_TESTDB_OPTS_VERSION 1
#define DBK_TESTDB_OPTS_INIT {.version = DBK_TESTDB_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_TESTDB_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_TESTDB_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_testdb_opts_init(dbk_testdb_opts *opts, unsigned int version, dbk_error *err);

/* Creates a fresh database with the migrations of `migrations_dir` applied
 * (NULL: no migrations, an empty database). `cfg` names the server: for
 * PostgreSQL an admin database to connect to (one with CREATEDB rights;
 * "postgres" usually); for SQLite a file whose directory holds the
 * template and the copies (":memory:" is DBK_EMISUSE). `opts` may be NULL.
 * On success *out is owned by the caller. Errors: DBK_EINVALID (a bad
 * migration, message naming the file and line; a bad name), DBK_EBUSY
 * (another builder held the template lock past lock_timeout_ms), the
 * connection and SQL codes of the server, DBK_EIO, DBK_ENOMEM. */
DBK_API dbk_rc dbk_testdb_new(const dbk_config *cfg, const char *migrations_dir,
                              const dbk_testdb_opts *opts, dbk_testdb **out, dbk_error *err);

/* The configuration of the fresh database (a copy of `cfg` with the
 * database or file changed). Borrowed: valid until the handle is dropped
 * or freed. */
DBK_API const dbk_config *dbk_testdb_config(const dbk_testdb *t);

/* A URL of the fresh database that dbk_config_from_url() accepts. It
 * carries the password of `cfg` when there is one: do not log it.
 * Borrowed like dbk_testdb_config(). */
DBK_API const char *dbk_testdb_url(const dbk_testdb *t);

/* The database name (PostgreSQL) or file path (SQLite). Borrowed. */
DBK_API const char *dbk_testdb_name(const dbk_testdb *t);

/* The template it was cloned from: "dbkit_tpl_<24 hex digits of the
 * migrations hash>" (SQLite: that base name + ".db" in the directory).
 * Borrowed. */
DBK_API const char *dbk_testdb_template(const dbk_testdb *t);

/* Drops the database (PostgreSQL: DROP DATABASE ... WITH (FORCE), so open
 * connections are terminated; SQLite: the file and its -wal/-shm) and frees
 * the handle, also on failure. Accepts NULL (DBK_OK). */
DBK_API dbk_rc dbk_testdb_drop(dbk_testdb *t, dbk_error *err);

/* Frees the handle and keeps the database (`dbkit testdb new`). Accepts
 * NULL. */
DBK_API void dbk_testdb_free(dbk_testdb *t);

/* Drops the test database that `url` names, through the server of `cfg`.
 * Refuses (DBK_EINVALID) names that are not fresh test databases
 * ("dbkit_t_..."), so a mistyped URL cannot drop a real database. */
DBK_API dbk_rc dbk_testdb_drop_url(const dbk_config *cfg, const char *url, dbk_error *err);

/* Drops the fresh databases of this host whose owner process is gone (see
 * the naming above); *dropped (may be NULL) gets how many. Templates are
 * kept. DBK_OK when there is nothing to drop. */
DBK_API dbk_rc dbk_testdb_prune(const dbk_config *cfg, int *dropped, dbk_error *err);

#ifdef __cplusplus
}
#endif

#endif
