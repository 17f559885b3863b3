/*
 * The SQLite driver: dbkit's embedded engine behind the dbk__driver vtable.
 *
 * One sq_conn wraps one sqlite3 handle opened in multi-thread mode
 * (SQLITE_OPEN_NOMUTEX): a connection belongs to one thread at a time, so
 * SQLite's per-connection mutex would only cost time. Opening applies the
 * settings every service wants and SQLite does not default to: WAL,
 * synchronous=NORMAL under WAL, foreign keys on, a non-zero busy timeout,
 * extended result codes, and double-quoted string literals off (as on
 * PostgreSQL, "x" is an identifier, never a string).
 *
 * The hot path is a primary-key lookup, so run() is built to cost little
 * more than a hand-written prepare-once / bind / step / reset loop:
 *   - prepared statements are cached per connection, keyed by the SQL text:
 *     a hash table of chains over entries that also sit on an LRU list
 *     (bounded by stmt_cache_size; a hit is one hash of the text, one
 *     memcmp and a move to the front of the list, no allocation);
 *   - dbkit's placeholders are $1..$n; SQLite numbers parameters by first
 *     appearance, so "$2 ... $1" gives $2 index 1. Each entry carries the
 *     mapping from SQLite's index to the caller's parameter, computed once
 *     at prepare time together with the checks (too few, too many, unused);
 *   - parameters are bound SQLITE_STATIC: they live until run() returns,
 *     and bindings are cleared before it does;
 *   - the only allocations per call are the result's own.
 *
 * Statement timeouts use a progress handler that compares the monotonic
 * clock with a per-call deadline every few thousand VM instructions; it is
 * installed only when a timeout is configured.
 *
 * Errors are translated here and nowhere else: the extended result code
 * through dbk__rc_from_sqlite(), then refinements SQLite only states in its
 * message ("no such table" -> DBK_ESCHEMA; the table and columns of a
 * UNIQUE / NOT NULL failure, the name of a CHECK).
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <sys/stat.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"

#define SQ_DEFAULT_BUSY_MS 5000
#define SQ_DEFAULT_CACHE 128
#define SQ_MAX_BUCKETS (1u << 16)
#define SQ_SCRIPT_FLOOR_MS (10 * 60 * 1000)
#define SQ_PROGRESS_OPS 4000   /* VM instructions between deadline checks */
#define SQ_STACK_TS 8          /* timestamp parameters formatted on the stack */
#define SQ_TS_LEN 40

/* One prepared statement, cached or not. The SQL copy and the parameter map
 * live in the same allocation as the entry. */
typedef struct sq_entry {
    struct sq_entry *prev, *next; /* LRU list, most recent first */
    struct sq_entry *hnext;       /* hash chain */
    uint64_t hash;
    size_t len;
    const char *sql;
    sqlite3_stmt *st;
    int nvars;     /* sqlite3_bind_parameter_count */
    int need;      /* parameters the caller must pass */
    int gap;       /* smallest $k <= need the SQL never uses; 0 when none */
    int dollar;    /* placeholders are $N (else ? / ?NNN) */
    int readonly;  /* sqlite3_stmt_readonly */
    int cached;
    uint16_t *map; /* nvars entries: SQLite index j+1 binds params[map[j]] */
    /* Column names as SQLite hands them out: the pointers stay valid until
     * the statement is finalized or re-prepared (after a schema change), so
     * they are kept with the REPREPARE counter they belong to. */
    int ncols;              /* -1: not read yet */
    int names_cap;
    int names_reprepare;
    const char **names;     /* ncols entries, then lens */
    size_t *lens;
} sq_entry;

typedef struct sq_conn {
    sqlite3 *db;
    dbk__owner owner;     /* the process that opened it: a forked child never touches db */
    sqlite3_int64 max_length; /* SQLITE_LIMIT_LENGTH: the largest text or blob bound */
    char *path;           /* for messages; a path is not a secret */
    int busy_timeout_ms;
    int stmt_timeout_ms;  /* 0: none */
    int64_t deadline_ns;  /* of the current call; 0 until the handler first runs */
    int armed_ms;         /* the limit that deadline_ns stands for */
    int timed_out;        /* set by the progress handler */
    char *restore_sql;    /* PRAGMAs that put the session settings back (sq_reset) */
    /* statement cache */
    int cache_cap;
    int ncached;
    size_t mask;          /* nbuckets - 1 */
    sq_entry **buckets;
    sq_entry *head, *tail;
} sq_conn;

/* ---- small helpers ---- */

/* Hash of the SQL text: 8 bytes at a time, then a final mix. SQL texts are
 * short; this is a few nanoseconds. */
static uint64_t sq_hash(const char *s, size_t len)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    memcpy(&w, s + i, len - i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;
    return h;
}

/* Skips whitespace, comments and stray semicolons; returns the first byte of
 * anything else (or the terminating NUL). */
static const char *sq_skip_blank(const char *p)
{
    for (;;) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v' ||
            *p == ';') {
            p++;
        } else if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            if (!e)
                return p + strlen(p); /* SQLite accepts an unterminated comment at the end */
            p = e + 2;
        } else {
            return p;
        }
    }
}

/* The deadline starts at the handler's first call, SQ_PROGRESS_OPS
 * instructions (about a microsecond) into the statement: a point lookup
 * finishes before that and never reads the clock at all. */
static int sq_progress(void *ctx)
{
    sq_conn *c = ctx;
    int64_t now = dbk__now_ns();
    if (c->deadline_ns == 0) {
        c->deadline_ns = now + (int64_t)c->armed_ms * 1000000LL;
        return 0;
    }
    if (now > c->deadline_ns) {
        c->timed_out = 1;
        return 1;
    }
    return 0;
}

/* Arms the limit of one call (the statement timeout, or the script
 * floor), when a timeout is configured at all. */
static void sq_arm_deadline(sq_conn *c, int ms)
{
    c->timed_out = 0;
    c->armed_ms = ms;
    c->deadline_ns = 0;
}

static void copy_name(char *dst, size_t size, const char *src, size_t n)
{
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Fills err from the connection's last SQLite error `rc` (an extended code).
 * `what` (may be NULL) is appended to the message for context. */
static dbk_rc sq_fail(sq_conn *c, int rc, const char *what, dbk_error *err)
{
    int primary = rc & 0xff;
    const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
    if (!msg)
        msg = sqlite3_errstr(rc);

    if (primary == SQLITE_INTERRUPT && c->timed_out) {
        dbk__err(err, DBK_ETIMEOUT, "statement cancelled after %s of %d ms%s%s",
                 c->armed_ms == c->stmt_timeout_ms ? "statement_timeout" : "the script limit",
                 c->armed_ms, what ? " " : "", what ? what : "");
        dbk__err_default_hint(err);
        return DBK_ETIMEOUT;
    }

    dbk_rc code = dbk__rc_from_sqlite(rc);
    const char *hint = NULL;
    const char *table = NULL, *cons = NULL;
    size_t table_len = 0, cons_len = 0;

    if (primary == SQLITE_ERROR) {
        static const struct {
            const char *prefix;
            const char *hint;
        } schema[] = {
            {"no such table: ", "the table does not exist: run the migrations (`dbkit migrate "
                                "up`) or check the table name"},
            {"no such column: ", "the column does not exist: check the schema and the "
                                 "migrations (`dbkit migrate status`)"},
            {"no such function: ", "the function does not exist in SQLite: check its name "
                                   "(SQLite has fewer built-in functions than PostgreSQL)"},
            {"no such index: ", "the index does not exist: run the migrations (`dbkit "
                                "migrate up`)"},
            {"no such view: ", "the view does not exist: run the migrations (`dbkit migrate "
                               "up`)"},
        };
        for (size_t i = 0; i < sizeof schema / sizeof schema[0]; i++) {
            size_t n = strlen(schema[i].prefix);
            if (strncmp(msg, schema[i].prefix, n) == 0) {
                code = DBK_ESCHEMA;
                hint = schema[i].hint;
                if (i == 0 || i == 4) {
                    /* "no such table: main.users" -> "users" */
                    table = msg + n;
                    const char *dot = strchr(table, '.');
                    if (dot)
                        table = dot + 1;
                    table_len = strlen(table);
                }
                break;
            }
        }
    } else if (primary == SQLITE_CONSTRAINT) {
        /* "UNIQUE constraint failed: users.email[, users.org]",
         * "UNIQUE constraint failed: index 'name'",
         * "NOT NULL constraint failed: users.email",
         * "CHECK constraint failed: name_or_expression". */
        const char *colon = strstr(msg, "constraint failed: ");
        if (colon) {
            const char *detail = colon + strlen("constraint failed: ");
            if (strncmp(detail, "index '", 7) == 0) {
                cons = detail + 7;
                const char *q = strchr(cons, '\'');
                cons_len = q ? (size_t)(q - cons) : strlen(cons);
            } else {
                cons = detail;
                cons_len = strlen(detail);
                if (rc != SQLITE_CONSTRAINT_CHECK) {
                    const char *dot = strchr(detail, '.');
                    if (dot) {
                        table = detail;
                        table_len = (size_t)(dot - detail);
                    }
                }
            }
        }
        if (code == DBK_EFOREIGN_KEY)
            hint = "the referenced row does not exist (or rows still refer to the one being "
                   "deleted); SQLite does not say which foreign key";
    }

    if (what)
        dbk__err(err, code, "%s %s", msg, what);
    else
        dbk__err(err, code, "%s", msg);
    if (err) {
        if (table)
            copy_name(err->table_name, sizeof err->table_name, table, table_len);
        if (cons)
            copy_name(err->constraint_name, sizeof err->constraint_name, cons, cons_len);
        if (code == DBK_EBUSY && c->db) {
            size_t n = strlen(err->message);
            snprintf(err->message + n, sizeof err->message - n, " (busy_timeout is %d ms)",
                     c->busy_timeout_ms);
        }
    }
    if (rc == SQLITE_BUSY_SNAPSHOT)
        hint = "another connection wrote since this transaction first read, so it cannot "
               "write without restarting (waiting cannot help); dbk_transaction() retries it, "
               "and BEGIN IMMEDIATE avoids it for read-then-write transactions";
    if (hint)
        dbk__err_hint(err, "%s", hint);
    dbk__err_default_hint(err);
    return code;
}

/* ---- the statement cache ---- */

static void lru_unlink(sq_conn *c, sq_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(sq_conn *c, sq_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void entry_free(sq_entry *e)
{
    if (!e)
        return;
    sqlite3_finalize(e->st);
    free(e->names);
    free(e);
}

static void cache_remove(sq_conn *c, sq_entry *e)
{
    sq_entry **pp = &c->buckets[e->hash & c->mask];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    lru_unlink(c, e);
    c->ncached--;
    entry_free(e);
}

static void cache_insert(sq_conn *c, sq_entry *e)
{
    if (c->ncached >= c->cache_cap && c->tail)
        cache_remove(c, c->tail);
    size_t b = e->hash & c->mask;
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    e->cached = 1;
    lru_push_front(c, e);
    c->ncached++;
}

static void cache_clear(sq_conn *c)
{
    while (c->head)
        cache_remove(c, c->head);
}

/* Parses "$123" / "?123" after the sigil; 0 when not a plain decimal in
 * 1..65535. */
static int parse_index(const char *s)
{
    if (!*s)
        return 0;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        v = v * 10 + (*s - '0');
        if (v > 65535)
            return 0;
    }
    return (int)v;
}

/* Prepares `sql` and works out the placeholder mapping. On success *out is a
 * heap entry (not yet cached). */
static dbk_rc entry_prepare(sq_conn *c, const char *sql, size_t len, uint64_t hash,
                            sq_entry **out, dbk_error *err)
{
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    unsigned flags = c->cache_cap > 0 ? SQLITE_PREPARE_PERSISTENT : 0;
    int rc = sqlite3_prepare_v3(c->db, sql, (int)(len + 1), flags, &st, &tail);
    if (rc != SQLITE_OK)
        return sq_fail(c, rc, NULL, err);
    if (!st)
        return dbk__err(err, DBK_EMISUSE, "the sql text contains no statement");
    if (tail && *sq_skip_blank(tail)) {
        sqlite3_finalize(st);
        dbk__err(err, DBK_EMISUSE, "the sql text contains more than one statement");
        dbk__err_hint(err, "run one statement per call, or several without parameters with "
                           "dbk_db_exec_script()");
        return DBK_EMISUSE;
    }

    int nvars = sqlite3_bind_parameter_count(st);
    sq_entry *e = malloc(sizeof *e + (size_t)nvars * sizeof(uint16_t) + len + 1);
    if (!e) {
        sqlite3_finalize(st);
        return dbk__err(err, DBK_ENOMEM, "out of memory preparing a statement");
    }
    memset(e, 0, sizeof *e);
    e->ncols = -1;
    e->map = (uint16_t *)(e + 1);
    char *copy = (char *)(e->map + nvars);
    memcpy(copy, sql, len + 1);
    e->sql = copy;
    e->len = len;
    e->hash = hash;
    e->st = st;
    e->nvars = nvars;
    e->readonly = sqlite3_stmt_readonly(st);

    /* Which placeholders does the SQL use? SQLite reports "$N" and "?N" by
     * name and a bare "?" without one. */
    int ndollar = 0, nquestion = 0, maxn = 0;
    for (int j = 1; j <= nvars; j++) {
        const char *name = sqlite3_bind_parameter_name(st, j);
        int n;
        if (!name) {
            nquestion++;
            n = j;
        } else if (name[0] == '$' || name[0] == '?') {
            n = parse_index(name + 1);
            if (n == 0) {
                if (name[0] == '$' && strstr(name, "::")) {
                    dbk__err(err, DBK_EMISUSE, "placeholder %s: PostgreSQL casts are not SQLite "
                             "syntax", name);
                    dbk__err_hint(err, "write CAST($1 AS INTEGER) instead of $1::int; it works "
                                       "on both engines");
                } else {
                    dbk__err(err, DBK_EMISUSE, "placeholder %s is not supported", name);
                    dbk__err_hint(err, "placeholders are $1..$n, numbered from 1");
                }
                entry_free(e);
                return DBK_EMISUSE;
            }
            if (name[0] == '$')
                ndollar++;
            else
                nquestion++;
        } else {
            dbk__err(err, DBK_EMISUSE, "named placeholder %s is not supported", name);
            dbk__err_hint(err, "placeholders are $1..$n, numbered from 1");
            entry_free(e);
            return DBK_EMISUSE;
        }
        e->map[j - 1] = (uint16_t)(n - 1);
        if (n > maxn)
            maxn = n;
    }
    if (ndollar && nquestion) {
        dbk__err(err, DBK_EMISUSE, "the statement mixes $N and ? placeholders");
        dbk__err_hint(err, "use $1..$n only");
        entry_free(e);
        return DBK_EMISUSE;
    }
    e->dollar = ndollar > 0;
    e->need = maxn;
    if (e->dollar) {
        /* Smallest $k in 1..maxn never used. maxn <= 65535. */
        unsigned char seen_small[256];
        unsigned char *seen = seen_small;
        if (maxn > (int)sizeof seen_small) {
            seen = calloc((size_t)maxn + 1, 1);
            if (!seen) {
                entry_free(e);
                return dbk__err(err, DBK_ENOMEM, "out of memory preparing a statement");
            }
        } else {
            memset(seen_small, 0, sizeof seen_small);
        }
        for (int j = 0; j < nvars; j++)
            seen[e->map[j]] = 1;
        for (int k = 0; k < maxn; k++) {
            if (!seen[k]) {
                e->gap = k + 1;
                break;
            }
        }
        if (seen != seen_small)
            free(seen);
    }
    *out = e;
    return DBK_OK;
}

/* Finds or prepares the statement for `sql`. */
static dbk_rc entry_get(sq_conn *c, const char *sql, sq_entry **out, dbk_error *err)
{
    size_t len = strlen(sql);
    if (len >= INT_MAX)
        return dbk__err(err, DBK_EINVALID, "sql text of %zu bytes is too long", len);
    uint64_t h = sq_hash(sql, len);
    if (c->cache_cap > 0) {
        for (sq_entry *e = c->buckets[h & c->mask]; e; e = e->hnext) {
            if (e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) {
                if (c->head != e) {
                    lru_unlink(c, e);
                    lru_push_front(c, e);
                }
                *out = e;
                return DBK_OK;
            }
        }
    }
    sq_entry *e = NULL;
    dbk_rc rc = entry_prepare(c, sql, len, h, &e, err);
    if (rc)
        return rc;
    if (c->cache_cap > 0)
        cache_insert(c, e);
    *out = e;
    return DBK_OK;
}

/* After a run: ready the statement for its next use, or drop it. */
static void entry_release(sq_entry *e)
{
    sqlite3_reset(e->st);
    if (e->cached) {
        if (e->nvars)
            sqlite3_clear_bindings(e->st);
    } else {
        entry_free(e);
    }
}

/* ---- running statements ---- */

static dbk_rc param_count_error(const sq_entry *e, size_t nparams, dbk_error *err)
{
    if (nparams < (size_t)e->need) {
        if (e->dollar)
            dbk__err(err, DBK_EMISUSE, "statement uses $%d but %zu parameter%s given", e->need,
                     nparams, nparams == 1 ? " was" : "s were");
        else
            dbk__err(err, DBK_EMISUSE, "statement has %d placeholders but %zu parameter%s given",
                     e->need, nparams, nparams == 1 ? " was" : "s were");
    } else if (nparams > (size_t)e->need) {
        dbk__err(err, DBK_EMISUSE, "statement uses %d parameter%s but %zu were given", e->need,
                 e->need == 1 ? "" : "s", nparams);
    } else {
        dbk__err(err, DBK_EMISUSE, "parameter $%d is given but the statement does not use it",
                 e->gap);
    }
    dbk__err_hint(err, "pass exactly one value for each of $1..$n, and use each at least once");
    return DBK_EMISUSE;
}

static dbk_rc bind_all(sq_conn *c, sq_entry *e, const dbk_value *params,
                       char (*tsbuf)[SQ_TS_LEN], dbk_error *err)
{
    sqlite3_stmt *st = e->st;
    int nts = 0;
    for (int j = 0; j < e->nvars; j++) {
        const dbk_value *v = &params[e->map[j]];
        int idx = j + 1;
        int rc;
        switch (v->type) {
        case DBK_TYPE_NULL:
            rc = sqlite3_bind_null(st, idx);
            break;
        case DBK_TYPE_BOOL:
            rc = sqlite3_bind_int(st, idx, v->u.b ? 1 : 0);
            break;
        case DBK_TYPE_INT64:
            rc = sqlite3_bind_int64(st, idx, v->u.i);
            break;
        case DBK_TYPE_DOUBLE:
            if (isnan(v->u.d)) {
                dbk__err(err, DBK_EINVALID, "parameter $%d is NaN, which SQLite cannot store "
                         "(it would become NULL)", e->map[j] + 1);
                return DBK_EINVALID;
            }
            rc = sqlite3_bind_double(st, idx, v->u.d);
            break;
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
            if (!v->u.bytes.ptr && v->u.bytes.len)
                goto null_bytes;
            if (v->u.bytes.len > (sqlite3_uint64)c->max_length)
                goto too_long;
            rc = sqlite3_bind_text64(st, idx, v->u.bytes.ptr ? v->u.bytes.ptr : "",
                                     v->u.bytes.len, SQLITE_STATIC, SQLITE_UTF8);
            break;
        case DBK_TYPE_BLOB:
            if (!v->u.bytes.ptr && v->u.bytes.len)
                goto null_bytes;
            if (v->u.bytes.len > (sqlite3_uint64)c->max_length)
                goto too_long;
            if (v->u.bytes.len == 0)
                rc = sqlite3_bind_zeroblob(st, idx, 0);
            else
                rc = sqlite3_bind_blob64(st, idx, v->u.bytes.ptr, v->u.bytes.len,
                                         SQLITE_STATIC);
            break;
        case DBK_TYPE_TIMESTAMP: {
            char local[SQ_TS_LEN];
            char *buf = nts < SQ_STACK_TS ? tsbuf[nts] : local;
            if (dbk_timestamp_format(v->u.i, buf, SQ_TS_LEN) != DBK_OK) {
                dbk__err(err, DBK_EINVALID, "parameter $%d: timestamp %lld is outside years "
                         "0001..9999", e->map[j] + 1, (long long)v->u.i);
                return DBK_EINVALID;
            }
            rc = sqlite3_bind_text(st, idx, buf, -1,
                                   nts < SQ_STACK_TS ? SQLITE_STATIC : SQLITE_TRANSIENT);
            nts++;
            break;
        }
        default:
            dbk__err(err, DBK_EMISUSE, "parameter $%d has unknown type %d", e->map[j] + 1,
                     (int)v->type);
            return DBK_EMISUSE;
        }
        if (rc != SQLITE_OK)
            return sq_fail(c, rc, NULL, err);
        continue;
    null_bytes:
        dbk__err(err, DBK_EMISUSE, "parameter $%d has a NULL pointer and length %zu",
                 e->map[j] + 1, v->u.bytes.len);
        return DBK_EMISUSE;
    too_long:
        /* Checked before binding: SQLite would answer SQLITE_TOOBIG too,
         * but naming the parameter and the limit is the useful part. */
        dbk__err(err, DBK_EINVALID,
                 "%s parameter $%d is %zu bytes; this SQLite database accepts at most %lld "
                 "(SQLITE_LIMIT_LENGTH)", dbk_type_name(v->type), e->map[j] + 1,
                 v->u.bytes.len, (long long)c->max_length);
        dbk__err_hint(err, "store large objects outside the database (a file or object "
                           "store) and keep their path or key in the row");
        return DBK_EINVALID;
    }
    return DBK_OK;
}

/* The statement's column names and their lengths, read from SQLite once
 * per (re)prepare. NULL on out of memory. */
static int entry_names(sq_entry *e)
{
    sqlite3_stmt *st = e->st;
    int reprep = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0);
    if (e->ncols >= 0 && reprep == e->names_reprepare)
        return 0;
    int ncols = sqlite3_column_count(st);
    if (ncols > e->names_cap) {
        void *p = malloc((size_t)ncols * (sizeof *e->names + sizeof *e->lens));
        if (!p)
            return -1;
        free(e->names);
        e->names = p;
        e->lens = (size_t *)(e->names + ncols);
        e->names_cap = ncols;
    } else if (ncols > 0) {
        e->lens = (size_t *)(e->names + e->names_cap);
    }
    for (int i = 0; i < ncols; i++) {
        const char *n = sqlite3_column_name(st, i);
        if (!n) {
            e->ncols = -1;
            return -1; /* only on out of memory */
        }
        e->names[i] = n;
        e->lens[i] = strlen(n);
    }
    e->ncols = ncols;
    e->names_reprepare = reprep;
    return 0;
}

/* An empty result carrying the statement's column names. */
static dbk_result *result_for(sq_entry *e)
{
    if (entry_names(e) != 0)
        return NULL;
    return dbk__result_new(e->ncols, e->names, e->lens);
}

/* Copies the current row of st into r. */
static dbk_rc add_row(dbk_result *r, sqlite3_stmt *st)
{
    struct dbk__cell *row = dbk__result_add_row(r);
    if (!row)
        return DBK_ENOMEM;
    int ncols = r->ncols;
    for (int i = 0; i < ncols; i++) {
        struct dbk__cell *cell = &row[i];
        /* sqlite3_column_value() gives an "unprotected" value: safe here
         * because a connection is used by one thread at a time, and one
         * lookup per cell is cheaper than a column_* call per property. */
        sqlite3_value *v = sqlite3_column_value(st, i);
        switch (sqlite3_value_type(v)) {
        case SQLITE_INTEGER:
            cell->type = DBK_TYPE_INT64;
            cell->v.i = sqlite3_value_int64(v);
            break;
        case SQLITE_FLOAT:
            cell->type = DBK_TYPE_DOUBLE;
            cell->v.d = sqlite3_value_double(v);
            break;
        case SQLITE_TEXT: {
            const unsigned char *p = sqlite3_value_text(v);
            size_t n = (size_t)sqlite3_value_bytes(v);
            if (!p)
                return DBK_ENOMEM;
            if (dbk__result_set_bytes(r, cell, DBK_TYPE_TEXT, p, n) != DBK_OK)
                return DBK_ENOMEM;
            break;
        }
        case SQLITE_BLOB: {
            const void *p = sqlite3_value_blob(v);
            size_t n = (size_t)sqlite3_value_bytes(v);
            if (!p && n)
                return DBK_ENOMEM;
            if (dbk__result_set_bytes(r, cell, DBK_TYPE_BLOB, p, n) != DBK_OK)
                return DBK_ENOMEM;
            break;
        }
        default:
            break; /* NULL: the cell is already zeroed */
        }
    }
    return DBK_OK;
}

static dbk_rc sq_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    sq_conn *c = impl;
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    if (dbk__owner_forked(&c->owner))
        return dbk__owner_error(&c->owner, "SQLite connection", err);
    if (!sql || (nparams && !params))
        return dbk__err(err, DBK_EMISUSE, "sql and params must not be NULL");
    sq_arm_deadline(c, c->stmt_timeout_ms);

    sq_entry *e = NULL;
    dbk_rc rc = entry_get(c, sql, &e, err);
    if (rc)
        return rc;
    if (nparams != (size_t)e->need || e->gap) {
        rc = param_count_error(e, nparams, err);
        entry_release(e);
        return rc;
    }
    char tsbuf[SQ_STACK_TS][SQ_TS_LEN];
    if (e->nvars && (rc = bind_all(c, e, params, tsbuf, err)) != DBK_OK) {
        entry_release(e);
        return rc;
    }

    sqlite3_stmt *st = e->st;
    int64_t before = e->readonly ? 0 : sqlite3_total_changes64(c->db);
    dbk_result *r = NULL;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (!out)
            continue;
        if (!r && !(r = result_for(e)))
            goto nomem;
        if (add_row(r, st) != DBK_OK)
            goto nomem;
    }
    if (src != SQLITE_DONE) {
        rc = sq_fail(c, src, NULL, err);
        goto fail;
    }
    int64_t aff = 0;
    if (!e->readonly && sqlite3_total_changes64(c->db) != before)
        aff = sqlite3_changes64(c->db);
    if (out) {
        if (!r && !(r = result_for(e)))
            goto nomem;
        r->affected = aff;
        *out = r;
    }
    if (affected)
        *affected = aff;
    entry_release(e);
    return DBK_OK;

nomem:
    rc = dbk__err(err, DBK_ENOMEM, "out of memory reading a result");
fail:
    dbk_result_free(r);
    entry_release(e);
    return rc;
}

static dbk_rc sq_script(void *impl, const char *sql, int timeout_ms, dbk_error *err)
{
    sq_conn *c = impl;
    (void)timeout_ms; /* no network to wait on: the progress handler bounds each statement */
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    if (dbk__owner_forked(&c->owner))
        return dbk__owner_error(&c->owner, "SQLite connection", err);
    if (!sql)
        return dbk__err(err, DBK_EMISUSE, "sql must not be NULL");
    /* Scripts carry DDL and migrations (an index build on a large table):
     * like the PostgreSQL driver, the whole script gets at least
     * SQ_SCRIPT_FLOOR_MS, or statement_timeout when that is longer. */
    sq_arm_deadline(c, c->stmt_timeout_ms > SQ_SCRIPT_FLOOR_MS ? c->stmt_timeout_ms
                                                                : SQ_SCRIPT_FLOOR_MS);
    const char *p = sql;
    int nth = 0;
    for (;;) {
        p = sq_skip_blank(p);
        if (!*p)
            return DBK_OK;
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        nth++;
        int rc = sqlite3_prepare_v2(c->db, p, -1, &st, &tail);
        if (rc == SQLITE_OK && st) {
            while ((rc = sqlite3_step(st)) == SQLITE_ROW)
                ;
            if (rc == SQLITE_DONE)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK) {
            /* Name the failing statement: its number and its first line. */
            char where[128];
            size_t n = 0;
            while (p[n] && p[n] != '\n' && n < 60)
                n++;
            snprintf(where, sizeof where, "(statement %d of the script: \"%.*s%s\")", nth,
                     (int)n, p, p[n] && p[n] != '\n' ? "..." : "");
            dbk_rc drc = sq_fail(c, rc, where, err);
            sqlite3_finalize(st);
            return drc;
        }
        sqlite3_finalize(st);
        if (!tail || tail == p)
            return DBK_OK;
        p = tail;
    }
}

static dbk_rc sq_ping(void *impl, int timeout_ms, dbk_error *err)
{
    (void)timeout_ms; /* a local call: nothing to wait for */
    sq_conn *c = impl;
    int64_t one = 0;
    dbk_result *r = NULL;
    dbk_rc rc = sq_run(c, "SELECT 1", NULL, 0, &r, NULL, err);
    if (rc == DBK_OK) {
        if (r && r->nrows == 1 && r->cells[0].type == DBK_TYPE_INT64)
            one = r->cells[0].v.i;
        if (one != 1)
            rc = dbk__err(err, DBK_EINTERNAL, "sqlite ping returned an unexpected result");
    }
    dbk_result_free(r);
    return rc;
}

static dbk__txstate sq_txstate(void *impl)
{
    sq_conn *c = impl;
    if (!c || !c->db || dbk__owner_forked(&c->owner))
        return DBK__TX_BROKEN;
    return sqlite3_get_autocommit(c->db) ? DBK__TX_IDLE : DBK__TX_OPEN;
}

/* Connection settings a borrower can change with PRAGMA, in the order they
 * are restored: query_only and writable_schema first, so that nothing after
 * them is refused or let through. Their values as of the end of sq_open
 * (dbkit's own settings applied) become the connection's restore_sql.
 * journal_mode is not among them: it belongs to the database file, which
 * other connections share. case_sensitive_like cannot be read back; its
 * default (off) is restored. */
static const char *const SQ_SESSION_PRAGMAS[] = {
    "query_only",         "writable_schema",        "foreign_keys",
    "defer_foreign_keys", "recursive_triggers",     "reverse_unordered_selects",
    "ignore_check_constraints", "read_uncommitted", "legacy_alter_table",
    "trusted_schema",     "cell_size_check",        "automatic_index",
    "cache_size",         "cache_spill",            "temp_store",
    "synchronous",        "secure_delete",          "wal_autocheckpoint",
    "journal_size_limit", "mmap_size",              "analysis_limit",
    "threads",            "locking_mode",           "fullfsync",
    "checkpoint_fullfsync", NULL};

static int pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size);

/* Builds c->restore_sql from the settings in force now. */
static int restore_sql_build(sq_conn *c)
{
    size_t cap = 4096, n = 0; /* the list above needs about 1 KB */
    char *buf = malloc(cap);
    if (!buf)
        return SQLITE_NOMEM;
    n += (size_t)snprintf(buf, cap, "PRAGMA case_sensitive_like=0;");
    for (const char *const *p = SQ_SESSION_PRAGMAS; *p; p++) {
        char sql[64], val[64];
        snprintf(sql, sizeof sql, "PRAGMA %s", *p);
        int rc = pragma_text(c->db, sql, val, sizeof val);
        if (rc != SQLITE_OK) {
            free(buf);
            return rc;
        }
        if (!val[0])
            continue; /* not in this build of SQLite */
        for (const char *v = val; *v; v++)
            if (!isalnum((unsigned char)*v) && *v != '-')
                goto next; /* not a plain value: leave it alone */
        if (n + strlen(*p) + strlen(val) + 16 >= cap) {
            free(buf);
            return SQLITE_NOMEM;
        }
        n += (size_t)snprintf(buf + n, cap - n, "PRAGMA %s=%s;", *p, val);
    next:;
    }
    /* Back in locking_mode=normal, a lock kept by exclusive mode goes at
     * the next read of the file. */
    snprintf(buf + n, cap - n, "PRAGMA main.schema_version;");
    c->restore_sql = buf;
    return SQLITE_OK;
}

/* Appends `"name"` (quotes doubled) to a growing statement list. */
static int append_stmt(char **buf, size_t *len, size_t *cap, const char *pre, const char *name)
{
    size_t need = *len + strlen(pre) + 2 * strlen(name) + 8;
    if (need > *cap) {
        size_t ncap = need * 2;
        char *p = realloc(*buf, ncap);
        if (!p)
            return SQLITE_NOMEM;
        *buf = p;
        *cap = ncap;
    }
    char *o = *buf + *len;
    memcpy(o, pre, strlen(pre));
    o += strlen(pre);
    *o++ = '"';
    for (const char *q = name; *q; q++) {
        if (*q == '"')
            *o++ = '"';
        *o++ = *q;
    }
    *o++ = '"';
    *o++ = ';';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return SQLITE_OK;
}

/* Statements that drop every temporary object and detach every attached
 * database (read first, run after: the schema cannot change under a read
 * of it). *out is NULL when there is nothing to undo. */
static int undo_sql(sqlite3 *db, char **out)
{
    *out = NULL;
    size_t len = 0, cap = 0;
    static const char *const reads[] = {
        /* triggers first: a temporary trigger may sit on a main table */
        "SELECT 'DROP TRIGGER IF EXISTS temp.', name FROM temp.sqlite_master "
        "WHERE type = 'trigger' UNION ALL "
        "SELECT 'DROP VIEW IF EXISTS temp.', name FROM temp.sqlite_master WHERE type = 'view' "
        "UNION ALL SELECT 'DROP TABLE IF EXISTS temp.', name FROM temp.sqlite_master "
        "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        "SELECT 'DETACH ', name FROM pragma_database_list WHERE seq > 1"};
    int rc = SQLITE_OK;
    for (size_t i = 0; i < sizeof reads / sizeof reads[0] && rc == SQLITE_OK; i++) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db, reads[i], -1, &st, NULL);
        while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *pre = (const char *)sqlite3_column_text(st, 0);
            const char *name = (const char *)sqlite3_column_text(st, 1);
            rc = pre && name ? append_stmt(out, &len, &cap, pre, name) : SQLITE_OK;
        }
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* Puts the session back as sq_open left it, for the next borrower: rolls
 * back, restores the busy timeout and every setting of SQ_SESSION_PRAGMAS,
 * drops temporary tables, views and triggers, detaches attached databases
 * and forgets last_insert_rowid(). Costs tens of microseconds: the pool
 * calls it only when a statement changed the session, or when asked to. */
static dbk_rc sq_reset(void *impl, dbk_error *err)
{
    sq_conn *c = impl;
    if (!c || !c->db)
        return dbk__err(err, DBK_EMISUSE, "the sqlite connection is closed");
    sq_arm_deadline(c, c->stmt_timeout_ms);
    int rc;
    if (!sqlite3_get_autocommit(c->db)) {
        /* No statement is left active between calls (each run resets its
         * own), so ROLLBACK cannot be refused for pending reads. */
        rc = sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return sq_fail(c, rc, "(rolling back for the next borrower)", err);
    }
    sqlite3_busy_timeout(c->db, c->busy_timeout_ms);
    rc = sqlite3_exec(c->db, c->restore_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sq_fail(c, rc, "(restoring the session settings for the next borrower)", err);
    char *undo = NULL;
    rc = undo_sql(c->db, &undo);
    if (rc == SQLITE_OK && undo)
        rc = sqlite3_exec(c->db, undo, NULL, NULL, NULL);
    free(undo);
    if (rc != SQLITE_OK)
        return sq_fail(c, rc, "(dropping temporary objects for the next borrower)", err);
    sqlite3_set_last_insert_rowid(c->db, 0);
    return DBK_OK;
}

/* For tests only (tests/integration/sqlite_test.c declares it too): how
 * many statements the connection keeps prepared. Not part of any interface. */
int dbk__sqlite_cached_statements(const void *impl);
int dbk__sqlite_cached_statements(const void *impl)
{
    const sq_conn *c = impl;
    return c ? c->ncached : -1;
}

static const char *sq_server_version(void *impl)
{
    (void)impl;
    return sqlite3_libversion();
}

/* ---- open / close ---- */

static void sq_close(void *impl)
{
    sq_conn *c = impl;
    if (!c)
        return;
    if (dbk__owner_forked(&c->owner)) {
        /* The handle, its statements and its file locks are the parent's:
         * closing them here could checkpoint or unlink its WAL. They are
         * left to the child's exit; only this wrapper goes. */
        free(c->path);
        free(c);
        return;
    }
    cache_clear(c);
    free(c->buckets);
    if (c->db)
        sqlite3_progress_handler(c->db, 0, NULL, NULL);
    if (c->db)
        sqlite3_close_v2(c->db); /* rolls back an open transaction */
    free(c->restore_sql);
    free(c->path);
    free(c);
}

static int one_of(const char *v, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcasecmp(v, *allowed) == 0)
            return 1;
    return 0;
}

/* Reads the single text value of a PRAGMA into buf. */
static int pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size)
{
    sqlite3_stmt *st = NULL;
    buf[0] = '\0';
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t)
            dbk__strlcpy(buf, (const char *)t, size);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Why opening failed, for a person: which path, and the likely fix. */
static dbk_rc open_error(sq_conn *c, int rc, const struct dbk_config *cfg, dbk_error *err)
{
    int primary = rc & 0xff;
    const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
    dbk_rc code;
    if (primary == SQLITE_CANTOPEN || primary == SQLITE_PERM || primary == SQLITE_AUTH)
        code = DBK_EUNAVAILABLE;
    else if (primary == SQLITE_NOMEM)
        code = DBK_ENOMEM;
    else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        code = DBK_EBUSY;
    else
        code = DBK_EIO;
    dbk__err(err, code, "cannot open sqlite database \"%s\": %s", c->path, msg);

    if (primary == SQLITE_CANTOPEN) {
        /* Say whether the directory is the problem. */
        char dir[1024];
        dbk__strlcpy(dir, c->path, sizeof dir);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            dbk__strlcpy(dir, ".", sizeof dir);
        struct stat sb;
        if (stat(dir, &sb) != 0)
            dbk__err_hint(err, "the directory \"%s\" does not exist: create it first (dbkit "
                          "creates the database file, not its directory)", dir);
        else if (cfg->sqlite_readonly || !cfg->sqlite_create)
            dbk__err_hint(err, "mode=%s opens an existing file only: check the path, or use "
                          "mode=rwc (the default) to create it", cfg->sqlite_readonly ? "ro" : "rw");
        else
            dbk__err_hint(err, "check that \"%s\" is writable by this process and the path "
                          "names a file, not a directory", dir);
    } else if (primary == SQLITE_NOTADB) {
        dbk__err_hint(err, "the file exists but is not an sqlite database: check the path in "
                           "DATABASE_URL");
    } else if (code == DBK_EBUSY) {
        dbk__err_hint(err, "another process holds an exclusive lock on the database");
    }
    return code;
}

static dbk_rc sq_open(const struct dbk_config *cfg, void **impl, dbk_error *err)
{
    if (!cfg || !impl)
        return dbk__err(err, DBK_EMISUSE, "sqlite open: config and impl must not be NULL");
    *impl = NULL;
    if (!sqlite3_threadsafe())
        return dbk__err(err, DBK_ECONFIG, "the sqlite library was built without thread "
                        "support (SQLITE_THREADSAFE=0); dbkit needs 1 or 2");

    int memory = cfg->sqlite_memory ||
                 (cfg->sqlite_path && strcmp(cfg->sqlite_path, ":memory:") == 0);
    const char *path = memory ? ":memory:" : cfg->sqlite_path;
    if (!path || !*path)
        return dbk__err(err, DBK_ECONFIG, "no sqlite database path configured");

    const char *jm = cfg->journal_mode && *cfg->journal_mode ? cfg->journal_mode : "wal";
    static const char *const journal_modes[] = {"delete", "truncate", "persist", "memory",
                                                "wal",    "off",      NULL};
    if (!one_of(jm, journal_modes))
        return dbk__err(err, DBK_ECONFIG, "journal_mode \"%s\" is not one of delete, truncate, "
                        "persist, memory, wal, off", jm);
    const char *sync = cfg->synchronous && *cfg->synchronous ? cfg->synchronous : NULL;
    static const char *const sync_modes[] = {"off", "normal", "full", "extra",
                                             "0",   "1",      "2",    "3",   NULL};
    if (sync && !one_of(sync, sync_modes))
        return dbk__err(err, DBK_ECONFIG, "synchronous \"%s\" is not one of off, normal, full, "
                        "extra", sync);

    sq_conn *c = calloc(1, sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    dbk__owner_init(&c->owner);
    c->path = strdup(path);
    if (!c->path) {
        free(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    }
    c->busy_timeout_ms = cfg->busy_timeout_ms >= 0 ? cfg->busy_timeout_ms : SQ_DEFAULT_BUSY_MS;
    c->stmt_timeout_ms = cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms : 0;
    c->cache_cap = cfg->stmt_cache_size >= 0 ? cfg->stmt_cache_size : SQ_DEFAULT_CACHE;
    if (c->cache_cap > 0) {
        size_t nb = 16;
        while (nb < (size_t)c->cache_cap * 2 && nb < SQ_MAX_BUCKETS)
            nb *= 2;
        c->buckets = calloc(nb, sizeof *c->buckets);
        if (!c->buckets) {
            sq_close(c);
            return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
        }
        c->mask = nb - 1;
    }

    int flags = SQLITE_OPEN_NOMUTEX;
    if (cfg->sqlite_readonly && !memory)
        flags |= SQLITE_OPEN_READONLY;
    else if (cfg->sqlite_create || memory)
        flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    else
        flags |= SQLITE_OPEN_READWRITE; /* mode=rw: the file must exist */
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    int rc = sqlite3_open_v2(path, &c->db, flags, NULL);
    if (rc == SQLITE_OK)
        c->max_length = sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, -1);
    if (rc != SQLITE_OK) {
        dbk_rc drc = open_error(c, rc, cfg, err);
        sq_close(c);
        return drc;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, c->busy_timeout_ms);
    /* As on PostgreSQL, "x" is an identifier, never a string literal. */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);

    char sqlbuf[96], got[32];
    int wal = 0;
    if (!memory && !cfg->sqlite_readonly) {
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA journal_mode=%s", jm);
        /* Switching a new file to WAL takes an exclusive lock; when several
         * processes open the same new file at once, SQLite may answer
         * SQLITE_BUSY at once instead of calling the busy handler (the
         * switch cannot wait while it holds a shared lock), so the switch is
         * retried here, bounded by the busy timeout. */
        int64_t give_up = dbk__now_ns() + (int64_t)c->busy_timeout_ms * 1000000;
        long nap_us = 1000;
        while ((rc = pragma_text(c->db, sqlbuf, got, sizeof got)) != SQLITE_OK &&
               ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) &&
               dbk__now_ns() < give_up) {
            struct timespec nap = {0, nap_us * 1000};
            nanosleep(&nap, NULL);
            if (nap_us < 16000)
                nap_us *= 2;
        }
        if (rc != SQLITE_OK)
            goto pragma_failed;
        if (strcasecmp(got, jm) != 0)
            dbk__log(DBK_LOG_WARN, "sqlite database \"%s\": journal_mode=%s was requested but "
                     "the database uses %s", c->path, jm, got);
        wal = strcasecmp(got, "wal") == 0;
    }
    if (!memory && !cfg->sqlite_readonly && (sync || wal)) {
        /* NORMAL is durable against application crashes under WAL; in the
         * rollback-journal modes SQLite's own default (FULL) stays unless
         * synchronous is configured. */
        snprintf(sqlbuf, sizeof sqlbuf, "PRAGMA synchronous=%s", sync ? sync : "normal");
        rc = sqlite3_exec(c->db, sqlbuf, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto pragma_failed;
    }
    rc = sqlite3_exec(c->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto pragma_failed;
    rc = restore_sql_build(c); /* the settings above are what a reset restores */
    if (rc == SQLITE_NOMEM) {
        sq_close(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory opening an sqlite database");
    }
    if (rc != SQLITE_OK)
        goto pragma_failed;
    if (c->stmt_timeout_ms > 0)
        sqlite3_progress_handler(c->db, SQ_PROGRESS_OPS, sq_progress, c);

    *impl = c;
    return DBK_OK;

pragma_failed: {
    dbk_rc drc = open_error(c, sqlite3_extended_errcode(c->db), cfg, err);
    sq_close(c);
    return drc;
}
}

const dbk__driver dbk__driver_sqlite = {
    .engine = DBK_ENGINE_SQLITE,
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .run = sq_run,
    .script = sq_script,
    .ping = sq_ping,
    .txstate = sq_txstate,
    .reset = sq_reset,
    .server_version = sq_server_version,
};
