/*
 * N+1 scopes: per-thread statement counts between dbk_diag_scope_begin()
 * and dbk_diag_scope_end(), and the reports made from them.
 *
 * An N+1 is one statement run once per row of an earlier result. Seen from
 * the observer it is the same SQL text (the parameters differ) run many
 * times in one unit of work, so a scope is a small open-addressing hash
 * table from statement text to (count, total time), keyed by a 64-bit
 * hash of the text (8 bytes per step) and confirmed by comparing it. The text is copied
 * the first time a scope meets it (the caller's pointer may not live until
 * the scope ends); every later run of it costs the hash and one compare,
 * or only the compare when the caller passes the same pointer again (a
 * small pointer -> slot cache; repositories reuse their cached SQL).
 * Whether a statement is exempt (transaction control, the safelist) is
 * decided once, at that first meeting.
 *
 * Scopes are thread-local: the current scope is a thread-local pointer to a
 * stack of scopes, so the observer, called on the thread that ran the
 * statement, finds it without a lock, and two threads never mix. A nested
 * scope counts separately and, when it ends, adds its counts to the
 * enclosing scope of the same hub (a loop over inner scopes is still seen
 * by the outer one); what it reported is marked reported there too.
 *
 * dbk_diag_tx_run() wraps each attempt of a transaction closure in a
 * scope of its own, so a retried attempt does not add to the last one's
 * counts and an N+1 in ERROR mode rolls the transaction back.
 *
 * Reports are made when the scope ends, with the final count and time.
 * When the threshold is first crossed the stack is walked once (glibc
 * backtrace() + dladdr()) for the first frame outside libdbkit; this is
 * only possible when libdbkit is a shared object (in a static link the
 * library and the caller are one object and static symbols are not
 * visible), so in a static build the report names the scope's begin call
 * site only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <execinfo.h>
#endif

#include "../core/hash.h"
#include "../core/internal.h"
#include "../core/sqlscan.h"
#include "diag_int.h"

#define N1_HINT                                                                             \
    "load the related rows with an include: dbk_query.include in dbk_repo_find_many(), or " \
    "dbk_repo_include() on rows already loaded (one query per relation, not one per row)"
#define N1_HINT_SHORT "use an include: dbk_query.include / dbk_repo_include()"

typedef struct n1_entry {
    uint64_t hash;
    char *sql; /* owned copy; NULL: empty slot */
    size_t len;
    uint32_t count;
    bool exempt;   /* transaction control or safelisted: never reported */
    bool crossed;  /* over the thresholds: to be reported */
    bool reported; /* already reported (here or by an inner scope) */
    int64_t total_ns;
    char *frame;   /* owned: first caller frame outside libdbkit, or NULL */
} n1_entry;

#define PTR_CACHE 8

typedef struct scope {
    dbk_diag *d;
    const char *name, *file, *func;
    int line;
    struct scope *up;
    unsigned lost; /* scopes above this one that could not be allocated */
    n1_entry *tab;
    size_t cap, n;  /* cap a power of two, or 0 */
    bool broken;    /* a table allocation failed: counts are incomplete */
    /* statement pointer -> table slot, a hint that spares the hash when the
     * caller passes the same SQL pointer again (repositories do: their SQL
     * is cached); always confirmed by comparing the text */
    const char *hint_ptr[PTR_CACHE];
    size_t hint_slot[PTR_CACHE];
} scope;

static _Thread_local scope *tls_top;
static _Thread_local unsigned tls_lost_root;

bool dbk__diag_scope_open(void)
{
    return tls_top != NULL;
}

/* Hash of the statement text, 8 bytes per step (the text is hashed on
 * every statement run in a scope, so a byte-at-a-time hash would cost
 * ~1 ns per byte of SQL); *len gets strlen(s). */
static uint64_t text_hash(const char *s, size_t *len)
{
    size_t n = strlen(s);
    *len = n;
    return dbk__hash_words(s, n, UINT64_C(0xcbf29ce484222325));
}

/* Transaction control is never an N+1. The first word is read with the
 * shared SQL scanner, so a leading comment (an ORM's tag) or line break
 * does not hide it. */
static bool is_control(const char *sql)
{
    static const char *const words[] = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE",
                                        "SET", "START", "END", "ABORT"};
    dbk__sqlscan sc;
    dbk__sqlscan_init(&sc, sql, strlen(sql), 1, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES));
    if (dbk__sqlscan_next(&sc) != DBK__SQLTOK_WORD)
        return false;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (dbk__sqlscan_is(&sc, words[i]))
            return true;
    return false;
}

static bool safelisted(const dbk_diag *d, const char *sql)
{
    if (!d->safelist)
        return false;
    for (const char *const *p = d->safelist; *p; p++)
        if (**p && strncmp(sql, *p, strlen(*p)) == 0)
            return true;
    return false;
}

static bool grow(scope *s)
{
    size_t ncap = s->cap ? s->cap * 2 : 16;
    n1_entry *nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return false;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->tab[i].sql)
            continue;
        size_t j = (size_t)s->tab[i].hash & (ncap - 1);
        while (nt[j].sql)
            j = (j + 1) & (ncap - 1);
        nt[j] = s->tab[i];
    }
    free(s->tab);
    s->tab = nt;
    s->cap = ncap;
    memset(s->hint_ptr, 0, sizeof s->hint_ptr);
    return true;
}

/* Finds or inserts the entry for sql (hash h, length len); NULL on OOM. */
static n1_entry *lookup(scope *s, const char *sql, size_t len, uint64_t h)
{
    if (s->cap) {
        size_t j = (size_t)h & (s->cap - 1);
        while (s->tab[j].sql) {
            n1_entry *e = &s->tab[j];
            if (e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0)
                return e;
            j = (j + 1) & (s->cap - 1);
        }
    }
    if ((s->n + 1) * 2 > s->cap && !grow(s))
        return NULL;
    char *copy = malloc(len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, sql, len + 1);
    size_t j = (size_t)h & (s->cap - 1);
    while (s->tab[j].sql)
        j = (j + 1) & (s->cap - 1);
    n1_entry *e = &s->tab[j];
    memset(e, 0, sizeof *e);
    e->hash = h;
    e->sql = copy;
    e->len = len;
    e->exempt = is_control(copy) || safelisted(s->d, copy);
    s->n++;
    return e;
}

/* The first stack frame outside libdbkit as "symbol+0xoff (object)", or
 * NULL when it cannot be told (static link, no glibc). */
static char *caller_frame(void)
{
#if defined(__GLIBC__)
    Dl_info self;
    if (!dladdr((void *)&dbk_diag_observe, &self) || !self.dli_fname ||
        !strstr(self.dli_fname, ".so"))
        return NULL;
    void *frames[48];
    int k = backtrace(frames, 48);
    for (int i = 1; i < k; i++) {
        Dl_info in;
        if (!dladdr(frames[i], &in) || in.dli_fbase == self.dli_fbase)
            continue;
        char buf[256];
        const char *obj = in.dli_fname ? strrchr(in.dli_fname, '/') : NULL;
        obj = obj ? obj + 1 : (in.dli_fname ? in.dli_fname : "?");
        if (in.dli_sname && in.dli_saddr)
            snprintf(buf, sizeof buf, "%s+0x%lx (%s)", in.dli_sname,
                     (unsigned long)((char *)frames[i] - (char *)in.dli_saddr), obj);
        else
            snprintf(buf, sizeof buf, "%s+0x%lx", obj,
                     (unsigned long)((char *)frames[i] - (char *)in.dli_fbase));
        size_t n = strlen(buf) + 1;
        char *r = malloc(n);
        if (r)
            memcpy(r, buf, n);
        return r;
    }
#endif
    return NULL;
}

static void check_cross(const dbk_diag *d, n1_entry *e, bool capture)
{
    if (e->crossed || e->reported || e->exempt)
        return;
    if (e->count > d->n1_threshold && e->total_ns > d->n1_min_total_ns) {
        e->crossed = true;
        if (capture && !e->frame)
            e->frame = caller_frame();
    }
}

static scope *innermost(const dbk_diag *d)
{
    for (scope *s = tls_top; s; s = s->up)
        if (s->d == d)
            return s;
    return NULL;
}

void dbk__diag_scope_count(dbk_diag *d, const dbk_query_event *ev)
{
    scope *s = innermost(d);
    if (!s || !ev->sql)
        return;
    size_t c = ((uintptr_t)ev->sql >> 3) & (PTR_CACHE - 1);
    n1_entry *e = NULL;
    if (s->hint_ptr[c] == ev->sql) {
        n1_entry *t = &s->tab[s->hint_slot[c]];
        if (strcmp(t->sql, ev->sql) == 0)
            e = t;
    }
    if (!e) {
        size_t len;
        uint64_t h = text_hash(ev->sql, &len);
        e = lookup(s, ev->sql, len, h);
        if (!e) {
            s->broken = true;
            return;
        }
        s->hint_ptr[c] = ev->sql;
        s->hint_slot[c] = (size_t)(e - s->tab);
    }
    if (e->exempt)
        return;
    e->count++;
    e->total_ns += ev->duration_ns > 0 ? ev->duration_ns : 0;
    check_cross(d, e, true);
}

void dbk_diag_scope_begin_at(dbk_diag *d, const char *name, const char *file, int line,
                             const char *func)
{
    if (!d)
        return;
    scope *s = calloc(1, sizeof *s);
    if (!s) {
        if (tls_top)
            tls_top->lost++;
        else
            tls_lost_root++;
        return;
    }
    s->d = d;
    s->name = name ? name : "";
    s->file = file ? file : "?";
    s->line = line;
    s->func = func ? func : "?";
    s->up = tls_top;
    tls_top = s;
}

static void free_scope(scope *s)
{
    for (size_t i = 0; i < s->cap; i++) {
        free(s->tab[i].sql);
        free(s->tab[i].frame);
    }
    free(s->tab);
    free(s);
}

/* Adds the counts of inner scope `in` to `out` (same hub). */
static void merge(scope *out, const scope *in)
{
    for (size_t i = 0; i < in->cap; i++) {
        const n1_entry *c = &in->tab[i];
        if (!c->sql)
            continue;
        n1_entry *e = lookup(out, c->sql, c->len, c->hash);
        if (!e) {
            out->broken = true;
            continue;
        }
        e->count += c->count;
        e->total_ns += c->total_ns;
        e->reported = e->reported || c->reported;
        if (!e->frame && c->frame) {
            size_t n = strlen(c->frame) + 1;
            e->frame = malloc(n);
            if (e->frame)
                memcpy(e->frame, c->frame, n);
        }
        check_cross(out->d, e, false);
    }
}

/* Copies the quoted identifier that follows `after` in sql into out
 * (without quotes); false when there is none. */
static bool ident_after(const char *sql, const char *after, char *out, size_t n)
{
    const char *p = strstr(sql, after);
    if (!p)
        return false;
    p += strlen(after);
    const char *q = strchr(p, '"');
    if (!q || q == p || (size_t)(q - p) >= n)
        return false;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return true;
}

/* The hint for a report: names the table and key column when the
 * statement is a repository lookup (FROM "t" WHERE "c" = $1). */
static void fill_hint(dbk_error *err, const char *sql)
{
    char table[64], column[64];
    if (ident_after(sql, " FROM \"", table, sizeof table) &&
        ident_after(sql, " WHERE \"", column, sizeof column) &&
        (strstr(sql, "\" = $1") != NULL))
        dbk__err_hint(err,
                      "load \"%s\" by \"%s\" for all rows at once with an include: "
                      "dbk_query.include in dbk_repo_find_many(), or dbk_repo_include() on rows "
                      "already loaded",
                      table, column);
    else
        dbk__err_hint(err, "%s", N1_HINT);
}

static void report_line(const scope *s, const n1_entry *e)
{
    char line[1024];
    dbk__sb w = dbk__sb_over(line, sizeof line);
    dbk__sb_printf(&w, "n+1 count=%u total_ms=", e->count);
    dbk__diag_put_ms(&w, e->total_ns);
    dbk__sb_puts(&w, " scope=\"");
    dbk__diag_put_escaped(&w, s->name, strlen(s->name), 200);
    dbk__sb_puts(&w, "\" at=");
    dbk__sb_printf(&w, "%s:%d (%s)", s->file, s->line, s->func);
    if (e->frame)
        dbk__sb_printf(&w, " frame=%s", e->frame);
    dbk__sb_puts(&w, " sql=\"");
    size_t tail = sizeof " hint=\"\"" - 1 + sizeof N1_HINT_SHORT - 1 + 1;
    size_t limit = sizeof line - 1 > w.len + tail ? sizeof line - 1 - tail : w.len;
    dbk__diag_put_escaped(&w, e->sql, e->len, limit);
    dbk__sb_puts(&w, "\" hint=\"" N1_HINT_SHORT "\"");
    dbk__log(DBK_LOG_WARN, "%s", line);
}

dbk_rc dbk_diag_scope_end(dbk_diag *d, dbk_error *err)
{
    if (!d)
        return dbk__err(err, DBK_EMISUSE, "dbk_diag_scope_end: no diagnostics hub");
    /* a scope that could not be allocated ends first if it was opened last */
    unsigned *lost = tls_top ? &tls_top->lost : &tls_lost_root;
    if (*lost) {
        (*lost)--;
        return DBK_OK;
    }
    scope **link = &tls_top;
    while (*link && (*link)->d != d)
        link = &(*link)->up;
    scope *s = *link;
    if (!s)
        return dbk__err(err, DBK_EMISUSE, "dbk_diag_scope_end: no open scope on this thread");
    *link = s->up;

    dbk_rc rc = DBK_OK;
    size_t nreports = 0;
    const n1_entry *first = NULL;
    for (size_t i = 0; i < s->cap; i++) {
        n1_entry *e = &s->tab[i];
        if (!e->sql || !e->crossed || e->reported)
            continue;
        e->reported = true;
        nreports++;
        DBK__ADD(&d->n_plus_one, 1);
        if (!first || e->count > first->count)
            first = e;
        report_line(s, e);
    }
    if (first && d->n1_mode == DBK_N1_MODE_ERROR) {
        char sql[240];
        size_t n = first->len < sizeof sql - 1 ? first->len : sizeof sql - 4;
        memcpy(sql, first->sql, n);
        if (n < first->len)
            memcpy(sql + n, "...", 3), n += 3;
        sql[n] = '\0';
        char total[32];
        dbk__sb tw = dbk__sb_over(total, sizeof total);
        dbk__diag_put_ms(&tw, first->total_ns);
        char more[48] = "";
        if (nreports > 1)
            snprintf(more, sizeof more, " (and %zu more statements)", nreports - 1);
        rc = dbk__err(err, DBK_EN_PLUS_ONE,
                      "n+1 query: statement run %u times (%s ms) in scope \"%s\" at %s:%d: %s%s",
                      first->count, total, s->name, s->file, s->line, sql, more);
        fill_hint(err, first->sql);
    }

    for (scope *p = s->up; p; p = p->up)
        if (p->d == d) {
            merge(p, s);
            break;
        }
    free_scope(s);
    return rc;
}

/* ---- a transaction as a scope ---- */

typedef struct tx_scope {
    dbk_diag *d;
    const char *name, *file, *func;
    int line;
    dbk_tx_fn fn;
    void *ctx;
} tx_scope;

/* One attempt: a fresh scope around fn. */
static dbk_rc tx_attempt(dbk_db *tx, void *arg, dbk_error *err)
{
    tx_scope *t = arg;
    dbk_diag_scope_begin_at(t->d, t->name, t->file, t->line, t->func);
    dbk_rc rc = t->fn(tx, t->ctx, err);
    if (rc != DBK_OK) {
        dbk_error scratch; /* fn's error reaches the caller intact */
        dbk_diag_scope_end(t->d, &scratch);
        return rc;
    }
    return dbk_diag_scope_end(t->d, err);
}

dbk_rc dbk_diag_tx_run_at(dbk_diag *d, const char *name, dbk_db *db, dbk_tx_fn fn, void *ctx,
                          const dbk_tx_opts *opts, const char *file, int line, const char *func,
                          dbk_error *err)
{
    if (!d || !fn)
        return dbk__err(err, DBK_EMISUSE, "dbk_diag_tx_run: hub and fn must not be NULL");
    tx_scope t = {d, name ? name : "transaction", file, func, line, fn, ctx};
    return dbk_tx_run(db, tx_attempt, &t, opts, err);
}

/* The deprecated order (err before the call site; one release), a wrapper
 * so it stays in the ABI. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
dbk_rc dbk_diag_transaction_at(dbk_diag *d, const char *name, dbk_db *db, dbk_tx_fn fn, void *ctx,
                               const dbk_tx_opts *opts, dbk_error *err, const char *file,
                               int line, const char *func)
{
    return dbk_diag_tx_run_at(d, name, db, fn, ctx, opts, file, line, func, err);
}
#pragma GCC diagnostic pop
