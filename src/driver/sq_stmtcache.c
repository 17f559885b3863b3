/*
 * sq_stmtcache.c - the SQLite driver's statement cache: prepared statements
 * kept in a hash + LRU list (core/lru.h) keyed by the SQL text, with the map from $n
 * placeholders to SQLite parameter indexes built once per statement.
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
#include "sq_int.h"

/* ---- the statement cache ---- */

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
    dbk__lru_remove(&c->lru, &e->lru);
    c->ncached--;
    entry_free(e);
}

static void cache_insert(sq_conn *c, sq_entry *e)
{
    if (c->ncached >= c->cache_cap && c->lru.tail)
        cache_remove(c, DBK__LRU_ENTRY(c->lru.tail, sq_entry, lru));
    size_t b = e->hash & c->mask;
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    e->cached = 1;
    dbk__lru_push(&c->lru, &e->lru);
    c->ncached++;
}

void dbk__sq_cache_clear(sq_conn *c)
{
    while (c->lru.head)
        cache_remove(c, DBK__LRU_ENTRY(c->lru.head, sq_entry, lru));
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
        return dbk__sq_fail(c, rc, NULL, err);
    if (!st)
        return dbk__err(err, DBK_EMISUSE, "the sql text contains no statement");
    if (tail && *dbk__sq_skip_blank(tail)) {
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
dbk_rc dbk__sq_entry_get(sq_conn *c, const char *sql, sq_entry **out, dbk_error *err)
{
    size_t len = strlen(sql);
    if (len >= INT_MAX)
        return dbk__err(err, DBK_EINVALID, "sql text of %zu bytes is too long", len);
    uint64_t h = dbk__sq_hash(sql, len);
    if (c->cache_cap > 0) {
        for (sq_entry *e = c->buckets[h & c->mask]; e; e = e->hnext) {
            if (e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) {
                dbk__lru_touch(&c->lru, &e->lru);
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
void dbk__sq_entry_release(sq_entry *e)
{
    sqlite3_reset(e->st);
    if (e->cached) {
        if (e->nvars)
            sqlite3_clear_bindings(e->st);
    } else {
        entry_free(e);
    }
}
