/*
 * dbkit/migrate.h - versioned migrations, tracked seeds and schema dumps.
 *
 * Migrations are SQL files named "<version>_<name>.sql" (version: digits, by
 * convention a UTC timestamp YYYYMMDDHHMMSS from `dbkit migrate new`) with
 * two sections:
 *
 *     -- migrate:up
 *     CREATE TABLE users (...);
 *     -- migrate:down
 *     DROP TABLE users;
 *
 * Directive options, space separated after the direction:
 *   transaction:false   run the section outside a transaction (CREATE INDEX
 *                       CONCURRENTLY, VACUUM); tracked as "dirty" while it
 *                       runs, see dbk_migrate_repair().
 *   engine:sqlite | engine:postgres
 *                       the section applies to that engine only; a file may
 *                       then hold one up and one down section per engine.
 * The down section is required but may be empty: the migration is then
 * irreversible and dbk_migrate_down() refuses to revert it.
 *
 * Each migration runs in its own transaction on both engines and is
 * recorded in the table dbkit_migrations (version, name, checksum = SHA-256
 * of the file, applied_at, duration_ms, dirty, statements_done, owner) in
 * the same transaction, so a failure or a killed process leaves nothing
 * behind. Concurrent migrators are serialized: on PostgreSQL by a
 * session-level advisory lock taken before the history table is touched
 * (bounded by lock_timeout_ms), on SQLite by BEGIN EXCLUSIVE around each
 * check-and-apply step. Every migration is applied exactly once.
 *
 * Seeds are plain SQL files run in name order, each in a transaction,
 * tracked in dbkit_seeds (name, checksum, applied_at): a seed runs again
 * only when its file changed, or with force.
 *
 * Executors: every call here takes a dbk_db from a connection or a pool.
 * It pins one connection for the whole call (a pool checks one out and
 * gives it back). A transaction's executor is DBK_EMISUSE: migrations
 * manage their own transactions. The connection must not be inside a
 * transaction.
 *
 * Thread safety: the calls are reentrant; two threads may migrate through
 * the same pool at once (they serialize on the database lock). Structures
 * passed in are only read during the call.
 */
#ifndef DBKIT_MIGRATE_H
#define DBKIT_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One migration (or seed) file held in memory, e.g. compiled into a
 * service binary. `filename` is the base name ("20240101120000_users.sql");
 * for seeds it may carry an environment folder ("dev/10_users.sql").
 * `len` 0 means strlen(contents). Borrowed for the duration of a call. */
typedef struct dbk_migration_file {
    const char *filename;
    const char *contents;
    size_t len;
} dbk_migration_file;

/* Where migrations or seeds come from: set `dir` (a directory of .sql
 * files; other files are ignored), or `files` + `nfiles` (an in-memory
 * set). Setting both, or neither, is DBK_EMISUSE. */
typedef struct dbk_migrate_source {
    const char *dir;
    const dbk_migration_file *files;
    size_t nfiles;
} dbk_migrate_source;

/* What a progress event is about. */
typedef enum dbk_migrate_action {
    DBK_MIGRATE_ACTION_UP = 1,   /* applying a migration */
    DBK_MIGRATE_ACTION_DOWN = 2, /* reverting a migration */
    DBK_MIGRATE_ACTION_SEED = 3  /* running a seed */
} dbk_migrate_action;

/* What a progress event reports. The DBK_MIGRATE_EV_* spellings are the
 * names before 0.2, deprecated (removed in 0.3): the same values. */
typedef enum dbk_migrate_event_kind {
    DBK_MIGRATE_EVENT_START = 1,   /* about to run (a line may be started) */
    DBK_MIGRATE_EVENT_DONE = 2,    /* finished and committed; duration_ms set */
    DBK_MIGRATE_EVENT_FAILED = 3,  /* failed and rolled back; line, statement, error set */
    DBK_MIGRATE_EVENT_SKIPPED = 4, /* seed unchanged since it last ran */
    DBK_MIGRATE_EVENT_WARNING = 5, /* message set: an applied migration whose file is
                                      missing, waiting for another migrator, ... */
    DBK_MIGRATE_EVENT_WAITING = 6, /* waiting for the migration lock; message set */
    DBK_MIGRATE_EV_START DBK_DEPRECATED("use DBK_MIGRATE_EVENT_START") = 1,
    DBK_MIGRATE_EV_DONE DBK_DEPRECATED("use DBK_MIGRATE_EVENT_DONE") = 2,
    DBK_MIGRATE_EV_FAILED DBK_DEPRECATED("use DBK_MIGRATE_EVENT_FAILED") = 3,
    DBK_MIGRATE_EV_SKIPPED DBK_DEPRECATED("use DBK_MIGRATE_EVENT_SKIPPED") = 4,
    DBK_MIGRATE_EV_WARNING DBK_DEPRECATED("use DBK_MIGRATE_EVENT_WARNING") = 5,
    DBK_MIGRATE_EV_WAITING DBK_DEPRECATED("use DBK_MIGRATE_EVENT_WAITING") = 6
} dbk_migrate_event_kind;

/* A progress event. Every pointer is borrowed for the duration of the
 * callback only. */
typedef struct dbk_migrate_event {
    dbk_migrate_event_kind kind;
    dbk_migrate_action action;
    int64_t version;         /* 0 for seeds and for general warnings */
    const char *name;        /* migration name or seed file name; may be "" */
    const char *path;        /* the file as messages show it; may be "" */
    bool transactional;
    int64_t duration_ms;     /* DONE and FAILED */
    int line;                /* FAILED: line of the failing statement (0 if none) */
    const char *statement;   /* FAILED: the failing statement, or NULL */
    const dbk_error *error;  /* FAILED: the error, or NULL */
    const char *message;     /* WARNING / WAITING: text, else NULL */
} dbk_migrate_event;

/* Progress callback, called on the calling thread. */
typedef void (*dbk_migrate_report_fn)(void *ctx, const dbk_migrate_event *ev);

/* Options; DBK_MIGRATE_OPTS_INIT (or a zero-initialized struct) means every default. */
typedef struct dbk_migrate_opts {
    /* The struct's version: DBK_MIGRATE_OPTS_VERSION, set by DBK_MIGRATE_OPTS_INIT or
     * dbk_migrate_opts_init(). 0 (a zero-initialized struct) reads as 1. */
    unsigned int version;
    /* up: apply pending migrations with version <= target only.
     * down: revert applied migrations with version > target (target stays
     * applied; 0 reverts everything). Used only when has_target is true. */
    bool has_target;
    int64_t target;
    /* down: how many migrations to revert when has_target is false
     * (0 means 1). */
    int steps;
    /* Longest wait for the migration lock, milliseconds (0: 60000). On
     * timeout: DBK_EBUSY naming the holder when known. */
    int lock_timeout_ms;
    /* Seeds: run every seed, changed or not. */
    bool force;
    /* Seeds: also run "<env>/<name>.sql" after the top-level seeds
     * (NULL: top level only). Letters, digits, '-' and '_' only. */
    const char *env;
    dbk_migrate_report_fn report;
    void *report_ctx;
    /* PostgreSQL: the lock_timeout each migration statement runs with, ms
     * (0: dbk_migrate_default_lock_timeout_ms(), 5000; negative: none;
     * dbk_migrate_opts_from_env() reads DB_MIGRATION_LOCK_TIMEOUT_MS). A
     * statement that times out on a lock is retried (see lock_retries);
     * when it still cannot get the lock the error names the sessions
     * holding locks on its tables (pid, application, state, since when). */
    int statement_lock_timeout_ms;
    /* How many times a statement that timed out on its lock is retried,
     * with back-off (0: 2; negative: never). */
    int lock_retries;
    /* PostgreSQL: the statement_timeout of migration statements, ms (0:
     * 600000, the longest dbkit waits for a migration statement; negative:
     * none; dbk_migrate_opts_from_env() reads
     * DB_MIGRATION_STATEMENT_TIMEOUT_MS). */
    int statement_timeout_ms;
} dbk_migrate_opts;

/* The version of dbk_migrate_opts these headers describe (it goes up when a field is
 * added), and the initializer to start from: version set, every other
 * field 0 (its default). */
#define DBK_MIGRATE_OPTS_VERSION 1
#define DBK_MIGRATE_OPTS_INIT {.version = DBK_MIGRATE_OPTS_VERSION}

/* Initializes *opts for callers that cannot use DBK_MIGRATE_OPTS_INIT (bindings):
 * zeroes it and sets its version to `version` (pass DBK_MIGRATE_OPTS_VERSION).
 * DBK_EMISUSE for NULL opts, version 0, or a version newer than this
 * library's. Thread-safe. */
DBK_API dbk_rc dbk_migrate_opts_init(dbk_migrate_opts *opts, unsigned int version, dbk_error *err);

/* State of one migration as dbk_migrate_status() sees it. */
typedef enum dbk_migration_state {
    DBK_MIGRATION_PENDING = 1, /* file present, not applied */
    DBK_MIGRATION_APPLIED = 2, /* applied, file unchanged */
    DBK_MIGRATION_CHANGED = 3, /* applied, but the file's checksum differs */
    DBK_MIGRATION_MISSING = 4, /* applied, but no file for it */
    DBK_MIGRATION_DIRTY = 5    /* a non-transactional step was interrupted */
} dbk_migration_state;

/* Static lower-case name of a state ("pending", "applied", ...). */
DBK_API const char *dbk_migration_state_name(dbk_migration_state s);

typedef struct dbk_migration_info {
    int64_t version;
    char name[128];
    char filename[256];          /* "" when the file is missing */
    dbk_migration_state state;
    char file_checksum[65];      /* SHA-256 hex of the file; "" when missing */
    char applied_checksum[65];   /* recorded at apply time; "" when pending */
    int64_t applied_at_us;       /* microseconds since the epoch, UTC; 0 when pending */
    int64_t duration_ms;
    int dirty;                   /* 0 clean, 1 interrupted up, 2 interrupted down */
    int statements_done;         /* while dirty: statements of the section completed */
    char owner[128];             /* while dirty: "pid@host" of the migrator */
    bool transactional;          /* of the up section for this engine */
} dbk_migration_info;

/* The whole picture, in version order. Owned by the caller: free with
 * dbk_migrate_status_free(). */
typedef struct dbk_migration_status {
    dbk_migration_info *items;
    size_t count;
    size_t applied, pending, changed, missing, dirty; /* counts per state */
    int64_t current_version;                          /* highest applied, 0 if none */
} dbk_migration_status;

/* Applies pending migrations in version order (up to opts->target when
 * set), one transaction each; *applied (may be NULL) gets how many.
 * Refuses before applying anything when an applied file changed
 * (DBK_EINVALID, message with the file and both checksums) or a migration
 * is dirty (DBK_EINVALID, hint: `dbkit migrate repair`). A failing
 * statement: DBK_ESQL / DBK_ESCHEMA / ... as the server said, the message
 * "<file>:<line>: <server message>", and a FAILED event with the
 * statement. Malformed files: DBK_EINVALID naming the file. Lock wait
 * over: DBK_EBUSY. Applied migrations whose file is missing give a
 * WARNING event and do not stop the run. */
DBK_API dbk_rc dbk_migrate_up(dbk_db *db, const dbk_migrate_source *src,
                              const dbk_migrate_opts *opts, int *applied, dbk_error *err);

/* Reverts applied migrations, newest first: opts->steps of them (default
 * 1), or all above opts->target. Uses each file's down section; a missing
 * file, a changed file or an empty down section (irreversible) is
 * DBK_EINVALID before anything runs. *reverted (may be NULL) gets how
 * many. */
DBK_API dbk_rc dbk_migrate_down(dbk_db *db, const dbk_migrate_source *src,
                                const dbk_migrate_opts *opts, int *reverted, dbk_error *err);

/* Reverts the newest applied migration and applies it again. */
DBK_API dbk_rc dbk_migrate_redo(dbk_db *db, const dbk_migrate_source *src,
                                const dbk_migrate_opts *opts, dbk_error *err);

/* Compares the files with the history (read only, no lock, creates
 * nothing). On success *out is owned by the caller. Malformed files are
 * DBK_EINVALID naming the file. */
DBK_API dbk_rc dbk_migrate_status(dbk_db *db, const dbk_migrate_source *src,
                                  dbk_migration_status **out, dbk_error *err);

/* Frees a status. Accepts NULL. */
DBK_API void dbk_migrate_status_free(dbk_migration_status *st);

/* Checks every file parses and every applied migration's file exists with
 * the recorded checksum and none is dirty. DBK_OK when all is well;
 * DBK_EINVALID naming the first problem (message) and counting the rest.
 * *out (may be NULL) receives the status either way when it could be
 * built. */
DBK_API dbk_rc dbk_migrate_validate(dbk_db *db, const dbk_migrate_source *src,
                                    dbk_migration_status **out, dbk_error *err);

/* Resolves a dirty migration after a person has looked at the database:
 * mark_applied true records it as applied (the statements have been
 * completed or undone by hand to match "applied"), false removes the
 * record (the next `up` runs it again, so its effects must be undone or
 * its statements idempotent). DBK_ENOT_FOUND when that version is not
 * dirty. Takes the migration lock. */
DBK_API dbk_rc dbk_migrate_repair(dbk_db *db, int64_t version, bool mark_applied,
                                  const dbk_migrate_opts *opts, dbk_error *err);

/* Writes a new empty migration "<dir>/<UTC YYYYMMDDHHMMSS>_<name>.sql"
 * (creating dir and its parents when missing); a version already taken in
 * dir is bumped by one second. `name`: letters, digits, '_' and '-' (spaces
 * become '_'), at most 100 bytes, else DBK_EINVALID. `now_unix` 0 means the
 * current time. The path written is copied into path_out (may be NULL). */
DBK_API dbk_rc dbk_migrate_create(const char *dir, const char *name, int64_t now_unix,
                                  char *path_out, size_t path_len, dbk_error *err);

/* Runs seeds (see the top of this file) in name order, each in its own
 * transaction, skipping unchanged ones unless opts->force; opts->env picks
 * an environment folder. *ran (may be NULL) gets how many ran. A failing
 * seed rolls back and stops with "<file>:<line>: <server message>". */
DBK_API dbk_rc dbk_seed_run(dbk_db *db, const dbk_migrate_source *src,
                            const dbk_migrate_opts *opts, int *ran, dbk_error *err);

/* The lock_timeout dbk_migrate_up() sets for migration statements when
 * dbk_migrate_opts.statement_lock_timeout_ms is 0: 5000. Reads no
 * environment variable (dbk_migrate_opts_from_env() does). The linter
 * (lint.h) assumes the same. */
DBK_API int dbk_migrate_default_lock_timeout_ms(void);

/*
 * Reads the migration settings of the process environment into *opts,
 * for the fields the caller left 0 (dbk_migrate_up() and the other
 * migration calls read no variable themselves, as dbk_config_from_env()
 * is the database's one reader):
 *   DB_MIGRATION_LOCK_TIMEOUT_MS: statement_lock_timeout_ms;
 *   DB_MIGRATION_STATEMENT_TIMEOUT_MS: statement_timeout_ms;
 * each milliseconds from 0 to 86400000, 0 meaning none (stored as -1).
 * Unset or empty variables change nothing. Errors: DBK_EMISUSE (opts
 * NULL), DBK_ECONFIG (not such a number: the message names the variable,
 * not its value); *opts is unchanged on failure. Reads the environment
 * with getenv(): do not call while another thread modifies it.
 */
DBK_API dbk_rc dbk_migrate_opts_from_env(dbk_migrate_opts *opts, dbk_error *err);

/* Dumps the schema as SQL text: SQLite from sqlite_master, PostgreSQL from
 * the catalogs (types, functions, tables, constraints, indexes, views,
 * triggers of the schemas in the search path), deterministic order, with a
 * comment header listing the applied migrations. *out is NUL-terminated
 * and owned by the caller (dbk_free()); *len (may be NULL) gets
 * its length. */
DBK_API dbk_rc dbk_schema_dump(dbk_db *db, char **out, size_t *len, dbk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_MIGRATE_H */
