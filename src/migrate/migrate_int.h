/*
 * Internal pieces of the migrate module shared by its files and its tests:
 * SHA-256, the statement splitter, the migration file parser and the loader
 * of a migration or seed set (directory or in-memory). Nothing here is
 * exported from the shared library.
 */
#ifndef DBK_MIGRATE_INT_H
#define DBK_MIGRATE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbkit/config.h"
#include "dbkit/error.h"
#include "dbkit/migrate.h"
#include "../driver/dialect.h"

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct dbk__sha256 {
    uint32_t h[8];
    uint64_t total; /* bytes hashed so far */
    unsigned char buf[64];
    size_t nbuf;
} dbk__sha256;

void dbk__sha256_init(dbk__sha256 *s);
void dbk__sha256_update(dbk__sha256 *s, const void *data, size_t len);
void dbk__sha256_final(dbk__sha256 *s, unsigned char out[32]);
/* One call: lower-case hex digest, 64 characters + NUL. */
void dbk__sha256_hex(const void *data, size_t len, char out[65]);

/* ---- statement splitter ---- */

/* One statement of a script: a byte range of the script (no trailing
 * semicolon, no leading whitespace or comments) and the 1-based line where
 * it starts. */
typedef struct dbk__stmt {
    size_t off;
    size_t len;
    int line;
} dbk__stmt;

/* Splits text[0..len) into statements at top-level semicolons. Semicolons
 * inside '...' and E'...' strings, "..." and `...` identifiers, $$ and
 * $tag$ bodies, -- and block comments (nested on PostgreSQL, flat on
 * SQLite: `engine` picks; 0 means PostgreSQL rules) and BEGIN ... END
 * blocks of CREATE TRIGGER / CREATE FUNCTION ... BEGIN ATOMIC (with CASE ...
 * END inside) do not split. Text that holds only whitespace and comments
 * gives no statement. `first_line` is the line number of text[0].
 * On success *out (malloc'd, may be NULL when *n is 0) belongs to the
 * caller. DBK_EINVALID for an unterminated string, identifier, comment or
 * dollar body (message names the line where it opened); DBK_ENOMEM. */
dbk_rc dbk__sql_split(const char *text, size_t len, int first_line, dbk_engine engine,
                      dbk__stmt **out, size_t *n, dbk_error *err);

/* True when the statement is a transaction-control statement (BEGIN, START
 * TRANSACTION, COMMIT, END, ROLLBACK without TO, SAVEPOINT is allowed). */
bool dbk__sql_is_tx_control(const char *sql, size_t len);

/* ---- migration files ---- */

enum { DBK__DIR_UP = 1, DBK__DIR_DOWN = 2 };

#define DBK__MIG_MAX_SECTIONS 8
#define DBK__MIG_MAX_FILE (64u * 1024u * 1024u)
#define DBK__MIG_NAME_MAX 128

typedef struct dbk__section {
    int dir;            /* DBK__DIR_UP / DBK__DIR_DOWN */
    dbk_engine engine;  /* 0: every engine */
    bool transactional; /* false with transaction:false */
    size_t off, len;    /* body: the text after the directive line */
    int line;           /* line number of the body's first line */
    int directive_line;
} dbk__section;

typedef struct dbk__migfile {
    char *path;     /* what messages show: "dir/file.sql" or the embedded name */
    char *filename; /* base name (or relative name for seeds, "dev/x.sql") */
    char name[DBK__MIG_NAME_MAX];
    int64_t version; /* 0 for seeds */
    char *text;      /* NUL-terminated copy of the contents */
    size_t len;
    char checksum[65];
    dbk__section sec[DBK__MIG_MAX_SECTIONS];
    size_t nsec;
} dbk__migfile;

typedef struct dbk__migset {
    dbk__migfile *files; /* sorted by version (migrations) or name (seeds) */
    size_t n;
} dbk__migset;

/* Parses "<version>_<name>.sql" (no directory part). DBK_EINVALID with a
 * message naming the file when the version is missing, not all digits,
 * zero, longer than 18 digits, or the name is empty or has characters
 * outside [A-Za-z0-9_-]. */
dbk_rc dbk__mig_parse_filename(const char *filename, int64_t *version, char *name,
                               size_t namesz, dbk_error *err);

/* Parses the contents of one migration file into sections. `path` only
 * names the file in messages. Checks: not empty, no NUL byte, valid UTF-8,
 * no SQL before the first directive, known directives and options, exactly
 * one up and one down section per engine (an up section is required, a
 * down section is required but may be empty: irreversible), up before
 * down, every section splits. Fills sec/nsec and checksum of `f`; `f->text`
 * must already hold the contents. */
dbk_rc dbk__mig_parse(dbk__migfile *f, dbk_error *err);

/* Checks a seed file (plain SQL: text, splits, no transaction control)
 * and fills one up section spanning the file and the checksum. */
dbk_rc dbk__seed_parse(dbk__migfile *f, dbk_error *err);

/* The section of a direction for an engine, or NULL. */
const dbk__section *dbk__mig_section(const dbk__migfile *f, int dir, dbk_engine engine);

/* Loads and parses a migration set from a source (directory: every
 * "*.sql" regular file not starting with '.'; other files are ignored).
 * Sorted by version; duplicate versions are DBK_EINVALID naming both files.
 * A missing directory is DBK_EIO with a hint. */
dbk_rc dbk__migset_load(const dbk_migrate_source *src, dbk__migset *out, dbk_error *err);

/* Loads a seed set: "NAME.sql" of the top level, then, with env non-NULL,
 * "<env>/NAME.sql" (in-memory: filenames with that prefix); each group in name
 * order. Seeds are plain SQL (no sections); they are split to check them. */
dbk_rc dbk__seedset_load(const dbk_migrate_source *src, const char *env, dbk__migset *out,
                         dbk_error *err);

void dbk__migset_free(dbk__migset *set);

/* Reads a whole file (at most DBK__MIG_MAX_FILE bytes) into a malloc'd,
 * NUL-terminated buffer. */
dbk_rc dbk__read_file(const char *path, char **out, size_t *len, dbk_error *err);

/* ---- running files on one pinned connection (migrate.c) ---- */

struct dbk_conn;

/* A migrator's session: one connection pinned from the caller's executor,
 * the lock it holds, and the options with defaults applied. */
typedef struct dbk__mctx {
    dbk_db *outer;          /* the caller's executor */
    struct dbk_conn *conn;  /* pinned from outer */
    dbk_db *db;             /* conn's own executor: every statement runs here */
    dbk_engine engine;
    dbk_migrate_opts opts;
    int64_t lock_key;       /* PostgreSQL advisory lock key */
    bool locked;
    int64_t deadline_ns;    /* the current lock wait ends here (monotonic) */
    bool waited;            /* a WAITING event was sent */
    char owner[128];        /* "pid@host" */
} dbk__mctx;

/* Whether the migration transaction is the lock itself: the engine's
 * dialect has no session lock (SQLite). Then BEGIN is exclusive, dbkit's
 * own tables are created inside that transaction, and a dirty history row
 * may belong to a live process applying a non-transactional migration.
 * Otherwise (PostgreSQL's advisory lock) they are created under the
 * session lock, before the first step. */
static inline bool dbk__mctx_tx_locks(const dbk__mctx *m)
{
    return dbk__dialect_of(m->engine)->lock_try_sql == NULL;
}

#define DBK__LOCK_MIGRATE INT64_C(0x64626b746d696772) /* "dbktmigr" */
#define DBK__LOCK_SEED INT64_C(0x64626b7473656564)    /* "dbktseed" */

/* Pins a connection of db. DBK_EMISUSE for a transaction's executor or a
 * connection inside a transaction. */
dbk_rc dbk__mctx_open(dbk__mctx *m, dbk_db *db, const dbk_migrate_opts *opts, int64_t lock_key,
                      dbk_error *err);
/* Rolls back anything open, releases the lock, unpins. */
void dbk__mctx_close(dbk__mctx *m);
/* PostgreSQL: takes the advisory lock (bounded wait). SQLite: nothing. */
dbk_rc dbk__mctx_lock(dbk__mctx *m, dbk_error *err);
/* Opens a transaction: BEGIN on PostgreSQL, BEGIN EXCLUSIVE on SQLite
 * (retried on busy until the lock deadline; no attempt waits past it). */
dbk_rc dbk__mctx_begin(dbk__mctx *m, dbk_error *err);
/* Starts a wait for the lock: the deadline becomes now + lock timeout
 * (at open, and before each SQLite step or seed). */
void dbk__mctx_wait_from_now(dbk__mctx *m);
dbk_rc dbk__mctx_commit(dbk__mctx *m, dbk_error *err);
void dbk__mctx_rollback(dbk__mctx *m);
/* Sleeps a little (bounded by the deadline); DBK_EBUSY once it passed. */
dbk_rc dbk__mctx_wait(dbk__mctx *m, const char *what, dbk_error *err);
void dbk__mctx_report(dbk__mctx *m, const dbk_migrate_event *ev);

/* Called after each statement of a section completes (non-transactional
 * progress); may be NULL. */
typedef dbk_rc (*dbk__after_stmt_fn)(dbk__mctx *m, void *ctx, int done, dbk_error *err);

/* Runs the statements of one section in order. On a failing statement:
 * err->message becomes "<path>:<line>: <server message>" (code, SQLSTATE
 * and hint kept), a FAILED event is reported, and the rc returned. */
dbk_rc dbk__mctx_run_section(dbk__mctx *m, const dbk__migfile *f, const dbk__section *sec,
                             dbk_migrate_action action, int skip, dbk__after_stmt_fn after,
                             void *after_ctx, int64_t t0_ns, dbk_error *err);

/* Wall clock in microseconds since the epoch. */
int64_t dbk__wall_us(void);

/* ---- lock and statement timeouts of migration statements (locks.c) ---- */

/* PostgreSQL: sets lock_timeout and statement_timeout for the section
 * about to run (SET LOCAL in its transaction, or SET for a
 * transaction:false section). SQLite: nothing. */
dbk_rc dbk__mctx_section_timeouts(dbk__mctx *m, bool transactional, dbk_error *err);
/* After a transaction:false section: RESET what the call above set. */
void dbk__mctx_section_timeouts_reset(dbk__mctx *m, bool transactional);
/* PostgreSQL: runs one statement of a section; a lock timeout (55P03) is
 * retried opts.lock_retries times with back-off (inside a transaction
 * under a savepoint); the final error names the sessions holding locks on
 * the statement's tables. */
dbk_rc dbk__mctx_exec_pg(dbk__mctx *m, const char *sql, bool transactional, dbk_error *err);

#endif
