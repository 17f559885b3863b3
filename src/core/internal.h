/*
 * Internal helpers shared by every layer: error filling, logging, the
 * monotonic clock. Nothing here is exported.
 */
#ifndef DBK_INTERNAL_H
#define DBK_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <time.h>

#include "dbkit/error.h"
#include "dbkit/value.h"

#if defined(__GNUC__)
#define DBK__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DBK__PRINTF(a, b)
#endif

/* Fills err (may be NULL): code, and a formatted message. Clears sqlstate,
 * constraint, table and hint. Returns rc so callers can `return
 * dbk__err(err, DBK_EMISUSE, "...")`. */
dbk_rc dbk__err(dbk_error *err, dbk_rc rc, const char *fmt, ...) DBK__PRINTF(3, 4);

/* Sets the hint of an already filled error (may be NULL). */
void dbk__err_hint(dbk_error *err, const char *fmt, ...) DBK__PRINTF(2, 3);

/* Fills the default hint for err->code / err->sqlstate when none is set. */
void dbk__err_default_hint(dbk_error *err);

/* Logging through the installed hook (no-op without one). */
void dbk__log(dbk_log_level level, const char *fmt, ...) DBK__PRINTF(2, 3);
int dbk__log_enabled(dbk_log_level level);

/* Monotonic clock in nanoseconds. */
static inline int64_t dbk__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Versioned option structs (src/core/opts.c). Every function that reads a
 * public option struct calls dbk__opts_check() on it first: version 0 (a
 * zero-initialized struct from before versioning) reads as 1, a version
 * above `current` is DBK_EMISUSE naming `type` and both versions. Inline: a
 * compare on hot paths (dbk_tx_opts per transaction). */
dbk_rc dbk__opts_refuse(unsigned got, unsigned current, const char *type, dbk_error *err);

static inline dbk_rc dbk__opts_check(unsigned got, unsigned current, const char *type,
                                     dbk_error *err)
{
    if (__builtin_expect(got > current, 0))
        return dbk__opts_refuse(got, current, type, err);
    return DBK_OK;
}

/* The body of every dbk_<name>_init(): DBK_EMISUSE for NULL opts, version 0
 * or one above `current`; else zeroes `size` bytes and sets the version. */
dbk_rc dbk__opts_init(void *opts, size_t size, unsigned version, unsigned current, const char *type,
                      dbk_error *err);

/* Defines dbk_<type>_init() for an option struct `type` whose version macro
 * is `current`. */
#define DBK__OPTS_INIT_FN(type, current)                                                           \
    dbk_rc type##_init(type *opts, unsigned int version, dbk_error *err)                           \
    {                                                                                              \
        return dbk__opts_init(opts, sizeof *opts, version, (current), #type, err);                 \
    }

/* The process a handle belongs to (src/core/process.c). Every handle that
 * owns a socket or an engine handle records it when it opens and checks
 * dbk__owner_forked() before touching them: after fork() the child must
 * neither use nor close what belongs to the parent. */
typedef struct dbk__owner {
    unsigned gen; /* fork generation at open */
    long pid;     /* for the message only */
} dbk__owner;

void dbk__owner_init(dbk__owner *o);
bool dbk__owner_forked(const dbk__owner *o);
/* Fills err with DBK_EMISUSE naming fork() and both PIDs; `what` names the
 * handle ("connection"). Returns DBK_EMISUSE. */
dbk_rc dbk__owner_error(const dbk__owner *o, const char *what, dbk_error *err);

/* What one PostgreSQL statement may carry (the server's MaxAllocSize of
 * 1 GiB - 1): one value at most DBK__PG_MAX_VALUE bytes (less its 4-byte
 * varlena header), and one protocol message (Bind, CopyData) at most
 * DBK__PG_MAX_MESSAGE bytes. Checked by the PostgreSQL driver and by the
 * COPY encoder before anything is sent. */
#define DBK__PG_MAX_VALUE ((size_t)0x3FFFFFFF - 4)
#define DBK__PG_MAX_MESSAGE ((size_t)0x3FFFFFFF - 1)
/* The largest value any engine here takes (SQLite's SQLITE_LIMIT_LENGTH
 * defaults to 1e9, below PostgreSQL's): what a batch copies at most. */
#define DBK__MAX_VALUE DBK__PG_MAX_VALUE

/* Checks the byte values (text, blob, json) of params before anything is
 * read or copied: a pointer for every non-empty value, no value over
 * DBK__MAX_VALUE, all of them together within DBK__PG_MAX_MESSAGE. *bytes
 * gets their total. For the layers that copy values (batches, the async
 * API), so that no refused value costs memory. (value.c) */
/* dbk_timestamp_parse() without its shortcut for the common forms: the
 * reference the shortcut must agree with (tests/fuzz/timestamp_fuzz.c). */
dbk_rc dbk__timestamp_parse_general(const char *s, size_t len, int64_t *usec);

dbk_rc dbk__params_size(const dbk_value *params, size_t nparams, size_t *bytes, dbk_error *err);

/* Bounded string copy that always terminates; returns strlen(src). */
size_t dbk__strlcpy(char *dst, const char *src, size_t size);

#endif
