/*
 * The migration linter: files, sections, directives and the report.
 *
 * Shape. The files come from the migration loader (migrate_int.h), so the
 * linter sees exactly the sections `up` would run and refuses the same
 * malformed files. Only up sections are linted, each in its own pass per
 * engine: a PostgreSQL (or portable) section is parsed whole by libpg_query,
 * PostgreSQL's own grammar, whose parse tree comes back as JSON and is read
 * with jansson; each RawStmt's stmt_location is mapped back to a line of
 * the file. A SQLite section is split by dbkit's own splitter (the one `up`
 * uses) and given to the short SQLite list. The rules (lint_rules.c) see
 * one statement at a time plus what the statements before it in the file
 * established: tables created here, the lock_timeout in effect,
 * constraints validated.
 *
 * Directives. The comments between the end of the previous statement and
 * the start of this one are its "gap"; a `-- lint:ignore RULE reason` line
 * there suppresses that rule's finding on this statement. The gap is found
 * from the statement boundaries the parser (or splitter) gives, so a
 * directive-like text inside a string or a dollar body is never read as a
 * directive. The directive grammar is small and fuzzed
 * (tests/fuzz/lint_directive_fuzz.c).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <pg_query.h>

#include "../core/internal.h"
#include "lint_int.h"
#include "migrate_int.h"

/* ---- directives ---- */

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r';
}

void dbk__lint_directive_parse(const char *text, size_t len, dbk__lint_dir *out)
{
    memset(out, 0, sizeof *out);
    size_t i = 0;
    while (i < len && is_blank(text[i]))
        i++;
    static const char pfx[] = "lint:";
    if (len - i < sizeof pfx - 1 || memcmp(text + i, pfx, sizeof pfx - 1) != 0)
        return;
    i += sizeof pfx - 1;
    out->kind = DBK__LINT_DIR_BAD;
    size_t w = i;
    while (i < len && !is_blank(text[i]))
        i++;
    if (i - w != 6 || memcmp(text + w, "ignore", 6) != 0) {
        snprintf(out->problem, sizeof out->problem,
                 "unknown lint directive \"lint:%.*s\" (the only one is lint:ignore RULE reason)",
                 (int)(i - w > 40 ? 40 : i - w), text + w);
        return;
    }
    while (i < len && is_blank(text[i]))
        i++;
    size_t r = i;
    while (i < len && !is_blank(text[i]))
        i++;
    size_t rl = i - r;
    if (rl == 0) {
        snprintf(out->problem, sizeof out->problem,
                 "lint:ignore needs a rule id and a reason: -- lint:ignore RULE why it is safe");
        return;
    }
    size_t cp = rl < sizeof out->rule_text - 1 ? rl : sizeof out->rule_text - 1;
    for (size_t k = 0; k < cp; k++) {
        unsigned char ch = (unsigned char)text[r + k];
        out->rule_text[k] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    out->rule_text[cp] = '\0';
    out->rule = rl < sizeof out->rule_text ? dbk_lint_rule_find(out->rule_text) : NULL;
    if (!out->rule) {
        snprintf(out->problem, sizeof out->problem,
                 "lint:ignore names an unknown rule \"%s\" (`dbkit migrate lint --rules` lists "
                 "them)",
                 out->rule_text);
        return;
    }
    bool reason = false;
    for (; i < len; i++)
        if (!is_blank(text[i]) && text[i] != '\n')
            reason = true;
    if (!reason) {
        snprintf(out->problem, sizeof out->problem,
                 "lint:ignore %s needs a reason after the rule id: say why it is safe here",
                 out->rule_text);
        out->rule = NULL;
        return;
    }
    out->kind = DBK__LINT_DIR_IGNORE;
}

/* ---- names ---- */

static void lower_copy(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

bool dbk__names_has(const dbk__names *s, const char *name)
{
    char k[128];
    lower_copy(k, sizeof k, name);
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], k) == 0)
            return true;
    return false;
}

bool dbk__names_add(dbk__names *s, const char *name)
{
    if (dbk__names_has(s, name))
        return true;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        void *p = realloc(s->v, nc * sizeof *s->v);
        if (!p)
            return false;
        s->v = p;
        s->cap = nc;
    }
    lower_copy(s->v[s->n++], sizeof s->v[0], name);
    return true;
}

void dbk__names_del(dbk__names *s, const char *name)
{
    char k[128];
    lower_copy(k, sizeof k, name);
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], k) == 0) {
            memmove(s->v[i], s->v[s->n - 1], sizeof s->v[0]);
            s->n--;
            return;
        }
}

void dbk__names_free(dbk__names *s)
{
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* ---- findings ---- */

void dbk__lint_one_line(char *dst, size_t n, const char *src, size_t len, bool ellipsis)
{
    size_t o = 0;
    bool space = false;
    for (size_t i = 0; i < len && o + 4 < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch == '\n' || ch == '\r' || ch == '\t' || ch == ' ') {
            space = o > 0;
            continue;
        }
        if (space) {
            dst[o++] = ' ';
            space = false;
        }
        dst[o++] = ch < 0x20 ? '?' : (char)ch;
    }
    if (ellipsis && o + 4 >= n && len > 0) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
}

static dbk_lint_finding *new_finding(dbk__lint_ctx *c)
{
    dbk_lint_report *r = c->rep;
    if (r->count == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 16;
        void *p = realloc(r->items, nc * sizeof *r->items);
        if (!p) {
            c->oom = true;
            return NULL;
        }
        r->items = p;
        c->cap = nc;
    }
    dbk_lint_finding *f = &r->items[r->count++];
    memset(f, 0, sizeof *f);
    dbk__strlcpy(f->file, c->path, sizeof f->file);
    f->version = c->version;
    f->engine = c->engine;
    return f;
}

void dbk__lint_add(dbk__lint_ctx *c, const char *rule_id, const char *table, const char *fmt,
                   ...)
{
    const dbk_lint_rule *rule = dbk_lint_rule_find(rule_id);
    if (!rule)
        return;
    for (size_t i = 0; i < c->ndirs; i++)
        if (c->dirs[i].kind == DBK__LINT_DIR_IGNORE && c->dirs[i].rule == rule) {
            c->dirs[i].used = true;
            c->rep->ignored++;
            return;
        }
    dbk_lint_finding *f = new_finding(c);
    if (!f)
        return;
    f->rule = rule;
    f->line = c->line;
    if (table)
        dbk__strlcpy(f->table, table, sizeof f->table);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    dbk__lint_one_line(f->statement, sizeof f->statement, c->stmt, c->stmt_len, true);
}

static void add_directive_problem(dbk__lint_ctx *c, const dbk__lint_dir *d)
{
    dbk_lint_finding *f = new_finding(c);
    if (!f)
        return;
    f->rule = dbk_lint_rule_find("lint-directive");
    f->line = d->line;
    dbk__strlcpy(f->message, d->problem, sizeof f->message);
}

/* ---- gaps: the comments before a statement ---- */

/* Walks text[from..to) over whitespace and comments, collecting lint
 * directives into c->dirs (line numbers from `line0` = line of text[0]).
 * Returns the offset of the first byte that is neither, or `to`. */
static size_t scan_gap(dbk__lint_ctx *c, const char *text, size_t from, size_t to, int line0,
                       int *line_out, dbk__lint_dir *dirs, size_t maxdirs)
{
    int line = line0;
    for (size_t i = 0; i < from; i++)
        if (text[i] == '\n')
            line++;
    size_t i = from;
    c->ndirs = 0;
    while (i < to) {
        char ch = text[i];
        if (ch == '\n') {
            line++;
            i++;
        } else if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v' ||
                   ch == ';') {
            i++;
        } else if (ch == '-' && i + 1 < to && text[i + 1] == '-') {
            size_t e = i + 2;
            while (e < to && text[e] != '\n')
                e++;
            dbk__lint_dir d;
            dbk__lint_directive_parse(text + i + 2, e - i - 2, &d);
            d.line = line;
            if (d.kind != DBK__LINT_DIR_NONE && c->ndirs < maxdirs)
                dirs[c->ndirs++] = d;
            i = e;
        } else if (ch == '/' && i + 1 < to && text[i + 1] == '*') {
            /* Block comments: nested on PostgreSQL; a directive never
             * lives in one. */
            int depth = 1;
            i += 2;
            while (i < to && depth > 0) {
                if (text[i] == '\n')
                    line++;
                if (c->engine == DBK_ENGINE_POSTGRES && text[i] == '/' && i + 1 < to &&
                    text[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (text[i] == '*' && i + 1 < to && text[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    i++;
                }
            }
        } else {
            break;
        }
    }
    *line_out = line;
    c->dirs = dirs;
    return i;
}

static void report_bad_directives(dbk__lint_ctx *c)
{
    for (size_t i = 0; i < c->ndirs; i++)
        if (c->dirs[i].kind == DBK__LINT_DIR_BAD)
            add_directive_problem(c, &c->dirs[i]);
}

/* ---- sections ---- */

#define MAX_DIRS 16

static void ctx_reset_file(dbk__lint_ctx *c)
{
    dbk__names_free(&c->new_indexes);
    dbk__names_free(&c->validated);
    dbk__names_free(&c->notnull_checked);
    dbk__names_free(&c->not_valid);
    c->fk_checks_off = false;
}

static int64_t initial_lock_timeout(const dbk_lint_opts *o)
{
    int v = o->lock_timeout_ms;
    if (v == 0)
        v = dbk_migrate_default_lock_timeout_ms();
    return v < 0 ? 0 : v;
}

static size_t jsize(const json_t *o, const char *key, size_t dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (size_t)json_integer_value(v) : dflt;
}

static void lint_pg_section(dbk__lint_ctx *c, const char *body, size_t len, int first_line)
{
    /* libpg_query wants a NUL-terminated string. */
    char *sql = malloc(len + 1);
    if (!sql) {
        c->oom = true;
        return;
    }
    memcpy(sql, body, len);
    sql[len] = '\0';
    PgQueryParseResult pr = pg_query_parse(sql);
    dbk__lint_dir dirs[MAX_DIRS];
    if (pr.error) {
        size_t pos = pr.error->cursorpos > 0 ? (size_t)pr.error->cursorpos - 1 : 0;
        int line = first_line;
        for (size_t i = 0; i < pos && i < len; i++)
            if (sql[i] == '\n')
                line++;
        c->stmt = "";
        c->stmt_len = 0;
        c->ndirs = 0;
        c->line = line;
        dbk__lint_add(c, "syntax", NULL, "PostgreSQL's parser rejects this section: %s",
                      pr.error->message);
        pg_query_free_parse_result(pr);
        free(sql);
        return;
    }
    json_error_t jerr;
    json_t *root = json_loads(pr.parse_tree, 0, &jerr);
    pg_query_free_parse_result(pr);
    if (!root) {
        c->oom = true;
        free(sql);
        return;
    }
    json_t *stmts = json_object_get(root, "stmts");
    size_t n = json_array_size(stmts);
    for (size_t k = 0; k < n; k++) {
        json_t *raw = json_array_get(stmts, k);
        size_t loc = jsize(raw, "stmt_location", 0);
        size_t slen = jsize(raw, "stmt_len", 0);
        if (loc > len)
            loc = len;
        size_t end = slen ? loc + slen : len;
        if (end > len)
            end = len;
        int line = first_line;
        size_t start = scan_gap(c, sql, loc, end, first_line, &line, dirs, MAX_DIRS);
        c->stmt = sql + start;
        c->stmt_len = end - start;
        c->line = line;
        c->rep->statements += c->count_stmts;
        report_bad_directives(c);
        dbk__lint_pg_stmt(c, json_object_get(raw, "stmt"));
    }
    json_decref(root);
    free(sql);
}

static void lint_sqlite_section(dbk__lint_ctx *c, const char *body, size_t len, int first_line,
                                dbk_error *err)
{
    dbk__stmt *st = NULL;
    size_t n = 0;
    if (dbk__sql_split(body, len, first_line, DBK_ENGINE_SQLITE, &st, &n, err) != DBK_OK) {
        c->stmt = "";
        c->stmt_len = 0;
        c->ndirs = 0;
        c->line = first_line;
        dbk__lint_add(c, "syntax", NULL, "the section does not split: %s", err->message);
        return;
    }
    dbk__lint_dir dirs[MAX_DIRS];
    size_t prev = 0;
    for (size_t k = 0; k < n; k++) {
        int line = first_line;
        scan_gap(c, body, prev, st[k].off, first_line, &line, dirs, MAX_DIRS);
        c->stmt = body + st[k].off;
        c->stmt_len = st[k].len;
        c->line = st[k].line;
        c->rep->statements += c->count_stmts;
        report_bad_directives(c);
        dbk__lint_sqlite_stmt(c);
        prev = st[k].off + st[k].len;
    }
    free(st);
}

static bool wanted(const dbk_lint_opts *o, int64_t version)
{
    if (!o->versions)
        return true;
    for (size_t i = 0; i < o->nversions; i++)
        if (o->versions[i] == version)
            return true;
    return false;
}

/* Lints the up sections of one parsed file for one engine. */
static void lint_file_engine(dbk__lint_ctx *c, const dbk__migfile *f, dbk_engine engine,
                             dbk_error *err)
{
    for (size_t s = 0; s < f->nsec; s++) {
        const dbk__section *sec = &f->sec[s];
        if (sec->dir != DBK__DIR_UP || (sec->engine && sec->engine != engine))
            continue;
        c->engine = engine;
        c->transactional = sec->transactional;
        c->lock_timeout_ms = initial_lock_timeout(c->opts);
        c->count_stmts = engine == DBK_ENGINE_POSTGRES || sec->engine == DBK_ENGINE_SQLITE ||
                         c->opts->engine == DBK_ENGINE_SQLITE;
        if (engine == DBK_ENGINE_POSTGRES)
            lint_pg_section(c, f->text + sec->off, sec->len, sec->line);
        else
            lint_sqlite_section(c, f->text + sec->off, sec->len, sec->line, err);
    }
}

static int cmp_finding(const void *a, const void *b)
{
    const dbk_lint_finding *x = a, *y = b;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    int s = strcmp(x->file, y->file);
    if (s)
        return s;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (int)x->engine - (int)y->engine;
}

static dbk_rc lint_set(const dbk__migset *set, const dbk_lint_opts *opts, dbk_lint_report **out,
                       dbk_error *err)
{
    dbk_lint_opts o;
    memset(&o, 0, sizeof o);
    if (opts)
        o = *opts;
    dbk_lint_report *rep = calloc(1, sizeof *rep);
    if (!rep)
        return dbk__err(err, DBK_ENOMEM, "out of memory linting migrations");
    dbk__lint_ctx c;
    memset(&c, 0, sizeof c);
    c.opts = &o;
    c.rep = rep;
    /* One set of new tables per engine pass: a portable section's CREATE
     * TABLE counts for both. */
    dbk__names created[3];
    memset(created, 0, sizeof created);
    dbk_error scratch;
    for (size_t i = 0; i < set->n && !c.oom; i++) {
        const dbk__migfile *f = &set->files[i];
        if (!wanted(&o, f->version))
            continue;
        rep->files++;
        c.path = f->path;
        c.version = f->version;
        for (int e = DBK_ENGINE_SQLITE; e <= DBK_ENGINE_POSTGRES; e++) {
            if (o.engine && (int)o.engine != e)
                continue;
            if (o.scope == DBK_LINT_SCOPE_FILE)
                dbk__names_free(&created[e]);
            c.new_tables = &created[e];
            ctx_reset_file(&c);
            lint_file_engine(&c, f, (dbk_engine)e, &scratch);
        }
    }
    ctx_reset_file(&c);
    for (int e = 0; e < 3; e++)
        dbk__names_free(&created[e]);
    if (c.oom) {
        dbk_lint_report_free(rep);
        return dbk__err(err, DBK_ENOMEM, "out of memory linting migrations");
    }
    if (rep->count > 1)
        qsort(rep->items, rep->count, sizeof *rep->items, cmp_finding);
    *out = rep;
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_lint_opts, DBK_LINT_OPTS_VERSION)

dbk_rc dbk_lint_source(const dbk_migrate_source *src, const dbk_lint_opts *opts,
                       dbk_lint_report **out, dbk_error *err)
{
    if (!src || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_lint_source: src and out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_LINT_OPTS_VERSION, "dbk_lint_opts", err))
        return DBK_EMISUSE;
    dbk__migset set;
    dbk_rc rc = dbk__migset_load(src, &set, err);
    if (rc)
        return rc;
    rc = lint_set(&set, opts, out, err);
    dbk__migset_free(&set);
    return rc;
}

dbk_rc dbk_lint_file(const char *filename, const char *contents, size_t len,
                     const dbk_lint_opts *opts, dbk_lint_report **out, dbk_error *err)
{
    if (!filename || !contents || !out)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_lint_file: filename, contents and out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_LINT_OPTS_VERSION, "dbk_lint_opts", err))
        return DBK_EMISUSE;
    if (len == 0)
        len = strlen(contents);
    if (len > DBK__MIG_MAX_FILE)
        return dbk__err(err, DBK_EINVALID, "%s is larger than %u bytes", filename,
                        DBK__MIG_MAX_FILE);
    dbk__migfile f;
    memset(&f, 0, sizeof f);
    dbk_rc rc = DBK_ENOMEM;
    f.path = strdup(filename);
    f.filename = strdup(filename);
    f.text = malloc(len + 1);
    if (!f.path || !f.filename || !f.text) {
        dbk__err(err, DBK_ENOMEM, "out of memory linting %s", filename);
        goto out;
    }
    memcpy(f.text, contents, len);
    f.text[len] = '\0';
    f.len = len;
    {
        dbk_error e2;
        char name[DBK__MIG_NAME_MAX];
        const char *base = strrchr(filename, '/');
        base = base ? base + 1 : filename;
        if (dbk__mig_parse_filename(base, &f.version, name, sizeof name, &e2) == DBK_OK)
            dbk__strlcpy(f.name, name, sizeof f.name);
        else
            f.version = 0;
    }
    rc = dbk__mig_parse(&f, err);
    if (rc == DBK_OK) {
        dbk__migset set = {&f, 1};
        dbk_lint_opts o;
        memset(&o, 0, sizeof o);
        if (opts)
            o = *opts;
        o.versions = NULL;
        rc = lint_set(&set, &o, out, err);
    }
out:
    free(f.path);
    free(f.filename);
    free(f.text);
    return rc;
}

void dbk_lint_report_free(dbk_lint_report *r)
{
    if (!r)
        return;
    free(r->items);
    free(r);
}

/* ---- relations named by a statement (for lock-wait messages) ---- */

static void collect_rels(json_t *node, char (*names)[128], size_t max, size_t *n)
{
    if (*n >= max || !node)
        return;
    if (json_is_array(node)) {
        for (size_t i = 0; i < json_array_size(node); i++)
            collect_rels(json_array_get(node, i), names, max, n);
        return;
    }
    if (!json_is_object(node))
        return;
    json_t *rel = json_object_get(node, "relname");
    if (json_is_string(rel) && json_object_get(node, "relpersistence")) {
        const char *schema = json_string_value(json_object_get(node, "schemaname"));
        char buf[128];
        if (schema)
            snprintf(buf, sizeof buf, "%.60s.%.60s", schema, json_string_value(rel));
        else
            snprintf(buf, sizeof buf, "%.120s", json_string_value(rel));
        for (size_t i = 0; i < *n; i++)
            if (strcmp(names[i], buf) == 0)
                return;
        lower_copy(names[(*n)++], 128, buf);
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(node, key, v)
    {
        collect_rels(v, names, max, n);
    }
}

size_t dbk__lint_relations(const char *sql, char (*names)[128], size_t max)
{
    PgQueryParseResult pr = pg_query_parse(sql);
    size_t n = 0;
    if (!pr.error && pr.parse_tree) {
        json_error_t jerr;
        json_t *root = json_loads(pr.parse_tree, 0, &jerr);
        if (root) {
            collect_rels(json_object_get(root, "stmts"), names, max, &n);
            json_decref(root);
        }
    }
    pg_query_free_parse_result(pr);
    return n;
}
