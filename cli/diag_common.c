/*
 * Shared pieces of the diagnostics commands (explain, advise, check, erd):
 * a growable string, the live schema read from the catalog of either
 * engine, and running git without a shell.
 *
 * The schema is read into one plain model (tables, columns, indexes as
 * column lists, foreign keys) so that `erd` and `check` reason about
 * "is this FK indexed / unique / nullable" once, in C, instead of with two
 * catalog dialects. PostgreSQL is read from pg_catalog (the schemas on the
 * search path); SQLite from sqlite_master and the pragma table functions.
 * Only the public API is used, through ordinary queries with parameters.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- strings ---- */

void dg_addn(dg_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void dg_add(dg_buf *b, const char *s)
{
    dg_addn(b, s, strlen(s));
}

void dg_addf(dg_buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        dg_addn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    dg_addn(b, big, (size_t)n);
    free(big);
}

void dg_buf_free(dg_buf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

const char *dg_str(const dg_buf *b)
{
    return b->s ? b->s : "";
}

char *dg_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* ---- schema ---- */

bool dg_is_bookkeeping(const char *table)
{
    return strcmp(table, "dbkit_migrations") == 0 || strcmp(table, "dbkit_seeds") == 0;
}

static void free_strv(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void dg_schema_free(dg_schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        dg_table *t = &s->t[i];
        free(t->name);
        for (size_t j = 0; j < t->ncols; j++) {
            free(t->cols[j].name);
            free(t->cols[j].type);
        }
        free(t->cols);
        for (size_t j = 0; j < t->nidx; j++)
            free_strv(t->idx[j].cols, t->idx[j].ncols);
        free(t->idx);
        for (size_t j = 0; j < t->nfks; j++) {
            free(t->fks[j].ref_table);
            free_strv(t->fks[j].cols, t->fks[j].ncols);
            free_strv(t->fks[j].ref_cols, t->fks[j].ncols);
        }
        free(t->fks);
    }
    free(s->t);
    memset(s, 0, sizeof *s);
}

const dg_table *dg_schema_table(const dg_schema *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0)
            return &s->t[i];
    return NULL;
}

const dg_col *dg_table_col(const dg_table *t, const char *name)
{
    for (size_t i = 0; i < t->ncols; i++)
        if (strcmp(t->cols[i].name, name) == 0)
            return &t->cols[i];
    return NULL;
}

static dbk_rc nomem(dbk_error *err)
{
    snprintf(err->message, sizeof err->message, "out of memory reading the schema");
    return DBK_ENOMEM;
}

/* Text of a cell or "" (NULL cells). */
static const char *cell(const dbk_result *r, size_t row, int col)
{
    const char *s = NULL;
    if (dbk_result_get_text(r, row, col, &s, NULL, NULL) != DBK_OK || !s)
        return "";
    return s;
}

static bool cell_true(const dbk_result *r, size_t row, int col)
{
    int64_t v = 0;
    bool b = false;
    if (dbk_result_get_bool(r, row, col, &b, NULL) == DBK_OK)
        return b;
    if (dbk_result_get_int64(r, row, col, &v, NULL) == DBK_OK)
        return v != 0;
    const char *s = cell(r, row, col);
    return s[0] == 't' || s[0] == '1';
}

/* Splits "a\x1fb\x1fc" into a new vector. */
static char **split_us(const char *s, size_t *n)
{
    size_t cnt = 1;
    for (const char *p = s; *p; p++)
        cnt += *p == '\x1f';
    char **v = calloc(cnt, sizeof *v);
    if (!v)
        return NULL;
    size_t k = 0;
    const char *p = s;
    for (;;) {
        size_t len = strcspn(p, "\x1f");
        v[k] = malloc(len + 1);
        if (!v[k]) {
            free_strv(v, k);
            return NULL;
        }
        memcpy(v[k], p, len);
        v[k][len] = '\0';
        k++;
        if (!p[len])
            break;
        p += len + 1;
    }
    *n = k;
    return v;
}

static const char PG_TABLES[] =
    "SELECT c.oid::text, c.relname FROM pg_class c "
    "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND c.relnamespace IN (SELECT oid FROM pg_namespace WHERE nspname = ANY "
    "(current_schemas(false))) ORDER BY c.relname";
static const char PG_COLS[] =
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "COALESCE(a.attnum = ANY (SELECT unnest(i.indkey::int2[]) FROM pg_index i WHERE "
    "i.indrelid = a.attrelid AND i.indisprimary), false) "
    "FROM pg_attribute a WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT "
    "a.attisdropped ORDER BY a.attnum";
static const char PG_INDEXES[] =
    "SELECT i.indisunique, i.indpred IS NOT NULL, array_to_string(ARRAY("
    "SELECT COALESCE(a.attname, '?') FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) "
    "WITH ORDINALITY k(n, o) LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND "
    "a.attnum = k.n ORDER BY k.o), chr(31)) FROM pg_index i WHERE i.indrelid = $1::int8::oid";
static const char PG_FKS[] =
    "SELECT (SELECT relname FROM pg_class WHERE oid = c.confrelid), "
    "array_to_string(ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o) "
    "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o), chr(31)), "
    "array_to_string(ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o) "
    "JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o), chr(31)) "
    "FROM pg_constraint c WHERE c.conrelid = $1::int8::oid AND c.contype = 'f' ORDER BY "
    "c.conname";

static const char SL_TABLES[] =
    "SELECT '0', name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
    "ESCAPE '\\' ORDER BY name";
static const char SL_COLS[] =
    "SELECT name, type, \"notnull\", pk > 0 FROM pragma_table_info($1) ORDER BY cid";
static const char SL_INDEXES[] = "SELECT name, \"unique\", partial FROM pragma_index_list($1)";
static const char SL_INDEX_COLS[] =
    "SELECT COALESCE(name, '?') FROM pragma_index_info($1) ORDER BY seqno";
static const char SL_FKS[] = "SELECT id, \"table\", \"from\", \"to\" FROM "
                             "pragma_foreign_key_list($1) ORDER BY id, seq";

/* Reads t's columns with `sql` (PG_COLS or SL_COLS: name, type, not null,
 * part of the primary key; one parameter *p naming the table) into
 * t->cols, and sets t->has_pk. */
static dbk_rc load_cols(dbk_db *db, const char *sql, const dbk_value *p, dg_table *t,
                        dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, sql, p, 1, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    t->cols = calloc(n + 1, sizeof *t->cols);
    if (!t->cols)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        dg_col *c = &t->cols[t->ncols++];
        c->name = dg_strdup(cell(r, i, 0));
        c->type = dg_strdup(cell(r, i, 1));
        c->notnull = cell_true(r, i, 2);
        c->pk = cell_true(r, i, 3);
        if (!c->name || !c->type)
            goto oom;
        t->has_pk |= c->pk;
    }
    dbk_result_free(r);
    return DBK_OK;
oom:
    dbk_result_free(r);
    return nomem(err);
}

static dbk_rc load_table_pg(dbk_db *db, dg_table *t, const char *oid, dbk_error *err)
{
    dbk_value p = dbk_text(oid);
    dbk_rc rc = load_cols(db, PG_COLS, &p, t, err);
    if (rc)
        return rc;
    dbk_result *r = NULL;
    rc = dbk_db_query(db, PG_INDEXES, &p, 1, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    t->idx = calloc(n + 1, sizeof *t->idx);
    if (!t->idx)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        dg_index *x = &t->idx[t->nidx];
        x->unique = cell_true(r, i, 0);
        x->partial = cell_true(r, i, 1);
        x->cols = split_us(cell(r, i, 2), &x->ncols);
        if (!x->cols)
            goto oom;
        t->nidx++;
    }
    dbk_result_free(r);
    r = NULL;
    rc = dbk_db_query(db, PG_FKS, &p, 1, &r, err);
    if (rc)
        return rc;
    n = dbk_result_nrows(r);
    t->fks = calloc(n + 1, sizeof *t->fks);
    if (!t->fks)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        dg_fk *f = &t->fks[t->nfks];
        size_t nr = 0;
        f->ref_table = dg_strdup(cell(r, i, 0));
        f->cols = split_us(cell(r, i, 1), &f->ncols);
        f->ref_cols = split_us(cell(r, i, 2), &nr);
        t->nfks++;
        if (!f->ref_table || !f->cols || !f->ref_cols)
            goto oom;
    }
    dbk_result_free(r);
    return DBK_OK;
oom:
    dbk_result_free(r);
    return nomem(err);
}

static dbk_rc load_table_sqlite(dbk_db *db, dg_table *t, dbk_error *err)
{
    dbk_value p = dbk_text(t->name);
    dbk_rc rc = load_cols(db, SL_COLS, &p, t, err);
    if (rc)
        return rc;
    size_t npk = 0;
    const char *pkname = NULL, *pktype = NULL;
    for (size_t i = 0; i < t->ncols; i++) {
        if (t->cols[i].pk) {
            npk++;
            pkname = t->cols[i].name;
            pktype = t->cols[i].type;
        }
    }
    dbk_result *r = NULL, *ic = NULL;
    rc = dbk_db_query(db, SL_INDEXES, &p, 1, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    /* One more slot: an INTEGER PRIMARY KEY is the rowid, indexed and
     * unique without an entry in index_list. */
    t->idx = calloc(n + 2, sizeof *t->idx);
    if (!t->idx)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        dg_index *x = &t->idx[t->nidx];
        x->unique = cell_true(r, i, 1);
        x->partial = cell_true(r, i, 2);
        dbk_value ip = dbk_text(cell(r, i, 0));
        rc = dbk_db_query(db, SL_INDEX_COLS, &ip, 1, &ic, err);
        if (rc) {
            dbk_result_free(r);
            return rc;
        }
        size_t m = dbk_result_nrows(ic);
        x->cols = calloc(m + 1, sizeof *x->cols);
        if (!x->cols)
            goto oom;
        t->nidx++;
        for (size_t k = 0; k < m; k++) {
            x->cols[k] = dg_strdup(cell(ic, k, 0));
            if (!x->cols[k])
                goto oom;
            x->ncols++;
        }
        dbk_result_free(ic);
        ic = NULL;
    }
    if (npk == 1 && strcasecmp(pktype, "INTEGER") == 0) {
        dg_index *x = &t->idx[t->nidx];
        x->cols = calloc(1, sizeof *x->cols);
        if (!x->cols)
            goto oom;
        x->unique = true;
        t->nidx++;
        x->cols[0] = dg_strdup(pkname);
        if (!x->cols[0])
            goto oom;
        x->ncols = 1;
    }
    dbk_result_free(r);
    r = NULL;
    rc = dbk_db_query(db, SL_FKS, &p, 1, &r, err);
    if (rc)
        return rc;
    n = dbk_result_nrows(r);
    t->fks = calloc(n + 1, sizeof *t->fks);
    if (!t->fks)
        goto oom;
    for (size_t i = 0; i < n;) {
        int64_t id = 0;
        dbk_result_get_int64(r, i, 0, &id, NULL);
        size_t j = i;
        while (j < n) {
            int64_t id2 = 0;
            dbk_result_get_int64(r, j, 0, &id2, NULL);
            if (id2 != id)
                break;
            j++;
        }
        dg_fk *f = &t->fks[t->nfks++];
        f->ref_table = dg_strdup(cell(r, i, 1));
        f->cols = calloc(j - i, sizeof *f->cols);
        f->ref_cols = calloc(j - i, sizeof *f->ref_cols);
        if (!f->ref_table || !f->cols || !f->ref_cols)
            goto oom;
        for (size_t k = i; k < j; k++) {
            f->cols[f->ncols] = dg_strdup(cell(r, k, 2));
            f->ref_cols[f->ncols] = dbk_result_is_null(r, k, 3) ? NULL : dg_strdup(cell(r, k, 3));
            f->ncols++;
            if (!f->cols[f->ncols - 1])
                goto oom;
        }
        i = j;
    }
    dbk_result_free(r);
    return DBK_OK;
oom:
    dbk_result_free(ic);
    dbk_result_free(r);
    return nomem(err);
}

dbk_rc dg_schema_load(dbk_db *db, bool all, dg_schema *out, dbk_error *err)
{
    memset(out, 0, sizeof *out);
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, pg ? PG_TABLES : SL_TABLES, NULL, 0, &r, err);
    if (rc)
        return rc;
    size_t n = dbk_result_nrows(r);
    out->t = calloc(n + 1, sizeof *out->t);
    if (!out->t) {
        dbk_result_free(r);
        return nomem(err);
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = cell(r, i, 1);
        if (!all && dg_is_bookkeeping(name))
            continue;
        dg_table *t = &out->t[out->n++];
        t->name = dg_strdup(name);
        if (!t->name) {
            rc = nomem(err);
            break;
        }
        rc = pg ? load_table_pg(db, t, cell(r, i, 0), err) : load_table_sqlite(db, t, err);
        if (rc)
            break;
    }
    dbk_result_free(r);
    if (rc)
        dg_schema_free(out);
    return rc;
}

static bool in_list(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] && strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* The index's first fk->ncols columns are the FK's columns in any order. */
static bool index_leads_with(const dg_index *x, const dg_fk *fk)
{
    if (x->partial || x->ncols < fk->ncols)
        return false;
    for (size_t i = 0; i < fk->ncols; i++)
        if (!in_list(fk->cols, fk->ncols, x->cols[i]))
            return false;
    return true;
}

bool dg_fk_indexed(const dg_table *t, const dg_fk *fk)
{
    for (size_t i = 0; i < t->nidx; i++)
        if (index_leads_with(&t->idx[i], fk))
            return true;
    return false;
}

bool dg_fk_unique(const dg_table *t, const dg_fk *fk)
{
    for (size_t i = 0; i < t->nidx; i++)
        if (t->idx[i].unique && t->idx[i].ncols == fk->ncols && index_leads_with(&t->idx[i], fk))
            return true;
    return false;
}

bool dg_fk_nullable(const dg_table *t, const dg_fk *fk)
{
    for (size_t i = 0; i < fk->ncols; i++) {
        const dg_col *c = dg_table_col(t, fk->cols[i]);
        if (c && !c->notnull && !c->pk)
            return true;
    }
    return false;
}

/* ---- running a program ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool dg_run(const char *dir, const char *const *argv, dg_buf *out, int *status)
{
    int fd[2];
    *status = -1;
    if (pipe(fd) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return false;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(fd[1], 1);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 2);
        }
        close(fd[0]);
        close(fd[1]);
        if (dir && chdir(dir) != 0)
            _exit(126);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    int64_t deadline = now_ms() + 60000;
    bool ok = true;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            kill(pid, SIGKILL);
            ok = false;
            break;
        }
        struct pollfd pf = {fd[0], POLLIN, 0};
        int pr = poll(&pf, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        char buf[4096];
        ssize_t n = read(fd[0], buf, sizeof buf);
        if (n > 0) {
            dg_addn(out, buf, (size_t)n);
        } else if (n == 0 || errno != EINTR) {
            break;
        }
    }
    close(fd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!ok)
        return false;
    if (WIFEXITED(st)) {
        *status = WEXITSTATUS(st);
        return *status != 127 && *status != 126;
    }
    return false;
}
