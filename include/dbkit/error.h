/*
 * dbkit/error.h - result codes and the error record.
 *
 * Every fallible dbkit call returns a dbk_rc (DBK_OK is 0) and, when the
 * caller passes one, fills a dbk_error. The record is fixed size and never
 * allocates, so it can live on the stack and be filled even when memory is
 * exhausted. No message or hint ever contains a password.
 *
 * Thread safety: all functions here are thread-safe. A dbk_error belongs to
 * the thread that passed it.
 */
#ifndef DBKIT_ERROR_H
#define DBKIT_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DBKIT_BUILD) && defined(__GNUC__)
#define DBK_API __attribute__((visibility("default")))
#else
#define DBK_API
#endif

/* Marks a public name kept for one release after a rename: using it warns
 * at compile time with the replacement's name (docs/api-conventions.md,
 * CHANGELOG.md). */
#if defined(__GNUC__) || defined(__clang__)
#define DBK_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define DBK_DEPRECATED(msg)
#endif

/*
 * Frees memory the library allocated and handed to the caller (a cached
 * value, an encoded row, a document's JSON text, a schema dump, ...:
 * each such function says "dbk_free()"). Use it rather than free(): the
 * library and the program may not share an allocator (a static C runtime
 * per module, a malloc replacement linked into one of them). NULL does
 * nothing. Thread-safe.
 */
DBK_API void dbk_free(void *p);

/*
 * Result codes. Append-only: a number, once given, is never reused or
 * renumbered. Callers switch on these to decide what to do; the comment on
 * each says when it happens.
 */
typedef enum dbk_rc {
    DBK_OK = 0,
    DBK_ECONFIG = 1,             /* malformed or contradictory configuration */
    DBK_EAUTH = 2,               /* authentication rejected by the server */
    DBK_ETLS = 3,                /* TLS required or failed */
    DBK_EUNAVAILABLE = 4,        /* cannot connect: server down, refused, DNS */
    DBK_ECONN_LOST = 5,          /* connection broke during an operation */
    DBK_EPOOL_TIMEOUT = 6,       /* no pooled connection within the acquire timeout */
    DBK_EPOOL_CLOSED = 7,        /* the pool is closing or closed */
    DBK_ETIMEOUT = 8,            /* statement or operation deadline passed */
    DBK_ECANCELLED = 9,          /* cancelled by request */
    DBK_ESERIALIZATION = 10,     /* serialization failure (40001) */
    DBK_EDEADLOCK = 11,          /* deadlock detected (40P01) */
    DBK_ERETRY_EXHAUSTED = 12,   /* a retried transaction ran out of budget */
    DBK_ECOMMIT_UNKNOWN = 13,    /* connection lost during COMMIT: outcome unknown */
    DBK_EUNIQUE = 14,            /* unique constraint violated (23505) */
    DBK_EFOREIGN_KEY = 15,       /* foreign key violated (23503) */
    DBK_ENOT_NULL = 16,          /* NOT NULL violated (23502) */
    DBK_ECHECK = 17,             /* CHECK constraint violated (23514) */
    DBK_ENOT_FOUND = 18,         /* no such row / entity */
    DBK_EINVALID = 19,           /* invalid input value */
    DBK_EINVALID_COLUMN = 20,    /* a column name not allowed by the descriptor */
    DBK_EINVALID_SORT = 21,      /* a sort key not allowed by the descriptor */
    DBK_EBUSY = 22,              /* database busy or locked (SQLITE_BUSY, lock timeout) */
    DBK_EDISK_FULL = 23,         /* disk or quota full */
    DBK_ENOMEM = 24,             /* out of memory */
    DBK_EIO = 25,                /* I/O error, corrupt file */
    DBK_EMISUSE = 26,            /* API misuse: NULL handle, bad index, wrong state */
    DBK_ETYPE = 27,              /* value has another type or does not convert */
    DBK_ESQL = 28,               /* other SQL error: syntax, privilege, data exception */
    DBK_ESCHEMA = 29,            /* undefined table, column or function (42P01, 42703, 42883) */
    DBK_EREADONLY = 30,          /* write on a read-only database or standby (25006) */
    DBK_EINTERNAL = 31,          /* a bug in dbkit or a protocol surprise */
    DBK_EN_PLUS_ONE = 32,        /* N+1 query pattern detected (diagnostics error mode) */
    DBK_ENOT_RUN = 33            /* batch statement not executed (an earlier one failed, the
                                    connection was lost before it was sent) or undone with
                                    its all-or-nothing batch */
} dbk_rc;

/* Highest code this version knows. Grows, never shrinks. */
#define DBK_RC_MAX 33

/* Deprecated in 0.2 (removed in 0.3): the old name of DBK_RC_MAX. It stays
 * a plain macro so that it still works in #if, and so it does not warn. */
#define DBK_RC_MAX_ DBK_RC_MAX

#define DBK_ERROR_MESSAGE_MAX 512
#define DBK_ERROR_HINT_MAX 256
#define DBK_ERROR_NAME_MAX 64

/*
 * The error record. Caller-owned, fixed size; every field is a NUL-terminated
 * string (empty when unknown). `sqlstate` is PostgreSQL's five-character code,
 * or empty on SQLite. `constraint_name` and `table_name` are filled where the
 * server reports them (PostgreSQL, and SQLite unique violations).
 */
typedef struct dbk_error {
    dbk_rc code;
    char sqlstate[6];
    char constraint_name[DBK_ERROR_NAME_MAX];
    char table_name[DBK_ERROR_NAME_MAX];
    char message[DBK_ERROR_MESSAGE_MAX];
    char hint[DBK_ERROR_HINT_MAX];
} dbk_error;

/* Static, lower-case description of a code ("unique constraint violated").
 * Never NULL; unknown codes give "unknown error". */
DBK_API const char *dbk_strerror(dbk_rc rc);

/* Static symbolic name of a code ("DBK_EUNIQUE"); "DBK_E?" when unknown. */
DBK_API const char *dbk_rc_name(dbk_rc rc);

/* True for codes where re-running a whole transaction may succeed:
 * DBK_ESERIALIZATION, DBK_EDEADLOCK and DBK_EBUSY. */
DBK_API bool dbk_rc_is_retryable(dbk_rc rc);

/* Resets every field to empty and the code to DBK_OK. Accepts NULL. */
DBK_API void dbk_error_clear(dbk_error *err);

/* Logging hook. The library never prints: it hands each line to this hook.
 * Without a hook, lines are dropped. Set it once at start-up; the hook is
 * called from any thread and must be thread-safe. `msg` is borrowed for the
 * duration of the call. */
typedef enum dbk_log_level {
    DBK_LOG_DEBUG = 0,
    DBK_LOG_INFO = 1,
    DBK_LOG_WARN = 2,
    DBK_LOG_ERROR = 3
} dbk_log_level;

typedef void (*dbk_log_fn)(void *ctx, dbk_log_level level, const char *msg);

/* Installs (or with NULL removes) the logging hook; lines below `min_level`
 * are not formatted at all. Thread-safe. */
DBK_API void dbk_set_log(dbk_log_fn fn, void *ctx, dbk_log_level min_level);

/* A ready-made hook that writes "dbkit <level>: msg" lines to stderr. */
DBK_API void dbk_log_stderr(void *ctx, dbk_log_level level, const char *msg);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_ERROR_H */
