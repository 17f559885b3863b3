/*
 * Migration file parser and SQL statement splitter.
 *
 * A migration file is cut at its directive lines ("-- migrate:up",
 * "-- migrate:down", with options) into sections, and each section is cut
 * into statements so that every statement can be sent on its own: the
 * PostgreSQL extended protocol takes one statement at a time, and a failure
 * can then be reported with the exact statement and its line.
 *
 * The splitter is a single forward scan with no backtracking and no
 * allocation besides the output array: O(n) in the input, so the fuzzer and
 * megabyte-sized files are cheap. The lexing (quoted strings and
 * identifiers, dollar-quoted bodies, both comment forms) is the shared
 * scanner's (src/core/sqlscan.c, which the pool reads statements with too);
 * on top of its tokens the splitter finds the semicolons that end
 * statements, and the BEGIN ... END blocks of trigger and BEGIN ATOMIC
 * function bodies (counting CASE ... END inside), which contain semicolons
 * of their own. Everything else is passed to the
 * server untouched: the server remains the judge of what is valid SQL.
 *
 * Every error names the file and the line, since the person reading it has
 * to go and fix that file.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/internal.h"
#include "../core/sqlscan.h"
#include "migrate_int.h"

/* ---- splitter ---- */

/* Case-insensitive comparison of a word (not NUL-terminated) with kw. */
static bool word_is(const char *w, size_t n, const char *kw)
{
    return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
}

#define SPLIT_KW_MAX 5

typedef struct splitter {
    const char *t;
    size_t len;
    dbk_engine engine;
    dbk__stmt *out;
    size_t n, cap;
    /* current statement */
    bool open;
    size_t start;
    int start_line;
    int nkw;          /* leading keywords recorded */
    char kw[SPLIT_KW_MAX][12];
    bool block;       /* CREATE TRIGGER / FUNCTION / PROCEDURE: BEGIN...END counts */
    int depth;
    /* error */
    int err_line;
    const char *err_what;
} splitter;

static int push(splitter *s, size_t end)
{
    while (end > s->start && isspace((unsigned char)s->t[end - 1]))
        end--;
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        dbk__stmt *p = realloc(s->out, ncap * sizeof *p);
        if (!p)
            return -1;
        s->out = p;
        s->cap = ncap;
    }
    s->out[s->n].off = s->start;
    s->out[s->n].len = end - s->start;
    s->out[s->n].line = s->start_line;
    s->n++;
    s->open = false;
    s->nkw = 0;
    s->block = false;
    s->depth = 0;
    return 0;
}

/* A leading keyword of the statement: decides block mode. */
static void leading_keyword(splitter *s, const char *w, size_t n)
{
    if (s->nkw >= SPLIT_KW_MAX)
        return;
    size_t k = n < sizeof s->kw[0] - 1 ? n : sizeof s->kw[0] - 1;
    for (size_t i = 0; i < k; i++)
        s->kw[s->nkw][i] = (char)toupper((unsigned char)w[i]);
    s->kw[s->nkw][k] = '\0';
    s->nkw++;
    if (strcmp(s->kw[0], "CREATE") != 0)
        return;
    int i = 1;
    if (i < s->nkw && strcmp(s->kw[i], "OR") == 0) {
        if (i + 1 < s->nkw && strcmp(s->kw[i + 1], "REPLACE") != 0)
            return;
        i += 2;
    }
    if (i < s->nkw && (strcmp(s->kw[i], "TEMP") == 0 || strcmp(s->kw[i], "TEMPORARY") == 0))
        i++;
    if (i < s->nkw && (strcmp(s->kw[i], "TRIGGER") == 0 || strcmp(s->kw[i], "FUNCTION") == 0 ||
                       strcmp(s->kw[i], "PROCEDURE") == 0))
        s->block = true;
}

/* The lexical rules the splitter has always used: the engine's comments
 * and E'' strings, dollar-quoted bodies on every engine, no [names]. */
static unsigned split_rules(dbk_engine engine)
{
    return engine == DBK_ENGINE_SQLITE ? DBK__SQLSCAN_DOLLAR_QUOTES : dbk__sqlscan_rules(engine);
}

static int split_run(splitter *s, int line)
{
    dbk__sqlscan sc;
    dbk__sqlscan_init(&sc, s->t, s->len, line, split_rules(s->engine));
    for (;;) {
        dbk__sqltok tok = dbk__sqlscan_next(&sc);
        if (tok == DBK__SQLTOK_END)
            break;
        if (tok == DBK__SQLTOK_ERROR) {
            s->err_line = sc.err_line;
            s->err_what = sc.err_what;
            return -2;
        }
        if (!s->open) {
            if (tok == DBK__SQLTOK_SEMI) /* an empty statement */
                continue;
            s->open = true;
            s->start = sc.off;
            s->start_line = sc.tok_line;
        }
        switch (tok) {
        case DBK__SQLTOK_SEMI:
            if (s->block && s->depth > 0)
                break;
            if (push(s, sc.off) < 0)
                return -1;
            break;
        case DBK__SQLTOK_WORD: {
            const char *w = s->t + sc.off;
            size_t n = sc.n;
            /* A word right after '.' is a qualified name, not a keyword. */
            bool qualified = sc.off > 0 && s->t[sc.off - 1] == '.';
            if (!qualified)
                leading_keyword(s, w, n);
            if (s->block && !qualified) {
                if (word_is(w, n, "BEGIN") || word_is(w, n, "CASE"))
                    s->depth++;
                else if (word_is(w, n, "END") && s->depth > 0)
                    s->depth--;
            }
            break;
        }
        case DBK__SQLTOK_PUNCT:
            if (s->nkw < SPLIT_KW_MAX)
                s->nkw = SPLIT_KW_MAX; /* keywords after punctuation do not lead */
            break;
        default: /* strings, quoted names, numbers, '$': part of the statement */
            break;
        }
    }
    if (s->open && push(s, s->len) < 0)
        return -1;
    return 0;
}

/* The splitter with the error location returned instead of formatted. */
static dbk_rc split_at(const char *text, size_t len, int first_line, dbk_engine engine,
                       dbk__stmt **out, size_t *n, int *err_line, const char **err_what)
{
    splitter s;
    memset(&s, 0, sizeof s);
    s.t = text;
    s.len = len;
    s.engine = engine;
    int r = split_run(&s, first_line);
    if (r < 0) {
        free(s.out);
        *out = NULL;
        *n = 0;
        if (r == -1)
            return DBK_ENOMEM;
        *err_line = s.err_line;
        *err_what = s.err_what;
        return DBK_EINVALID;
    }
    *out = s.out;
    *n = s.n;
    return DBK_OK;
}

dbk_rc dbk__sql_split(const char *text, size_t len, int first_line, dbk_engine engine,
                      dbk__stmt **out, size_t *n, dbk_error *err)
{
    if (!out || !n || (!text && len))
        return dbk__err(err, DBK_EMISUSE, "dbk__sql_split: NULL argument");
    int line = 0;
    const char *what = "";
    dbk_rc rc = split_at(text, len, first_line, engine, out, n, &line, &what);
    if (rc == DBK_ENOMEM)
        return dbk__err(err, rc, "out of memory splitting SQL");
    if (rc)
        return dbk__err(err, rc, "line %d: %s", line, what);
    return DBK_OK;
}

/* The next token of a statement, as a word (w, n); n is 0 when the token
 * is not a word or there is none. */
static size_t next_word(dbk__sqlscan *sc, const char **w)
{
    dbk__sqltok tok = dbk__sqlscan_next(sc);
    *w = sc->text + sc->off;
    return tok == DBK__SQLTOK_WORD ? sc->n : 0;
}

bool dbk__sql_is_tx_control(const char *sql, size_t len)
{
    dbk__sqlscan sc;
    dbk__sqlscan_init(&sc, sql, len, 1, dbk__sqlscan_rules(0));
    const char *w1, *w2;
    size_t n1 = next_word(&sc, &w1);
    size_t n2 = next_word(&sc, &w2);
    if (word_is(w1, n1, "BEGIN"))
        return !word_is(w2, n2, "ATOMIC");
    if (word_is(w1, n1, "START"))
        return word_is(w2, n2, "TRANSACTION");
    if (word_is(w1, n1, "COMMIT") || word_is(w1, n1, "END") || word_is(w1, n1, "ABORT"))
        return !word_is(w2, n2, "PREPARED");
    if (word_is(w1, n1, "ROLLBACK")) {
        if (word_is(w2, n2, "TRANSACTION") || word_is(w2, n2, "WORK"))
            n2 = next_word(&sc, &w2);
        return !word_is(w2, n2, "TO") && !word_is(w2, n2, "PREPARED");
    }
    return false;
}

/* ---- migration files ---- */

dbk_rc dbk__mig_parse_filename(const char *filename, int64_t *version, char *name,
                               size_t namesz, dbk_error *err)
{
    size_t flen = strlen(filename);
    if (flen < 5 || strcmp(filename + flen - 4, ".sql") != 0)
        return dbk__err(err, DBK_EINVALID,
                        "%s: a migration file name must end in .sql", filename);
    size_t i = 0;
    int64_t v = 0;
    while (i < flen && isdigit((unsigned char)filename[i])) {
        if (i >= 18) {
            dbk__err(err, DBK_EINVALID, "%s: the version has more than 18 digits", filename);
            dbk__err_hint(err, "name migration files <version>_<name>.sql with a UTC timestamp "
                               "version, as `dbkit migrate new NAME` does");
            return DBK_EINVALID;
        }
        v = v * 10 + (filename[i] - '0');
        i++;
    }
    if (i == 0 || filename[i] != '_') {
        dbk__err(err, DBK_EINVALID,
                 "%s: bad migration file name: expected <version>_<name>.sql with a numeric "
                 "version",
                 filename);
        dbk__err_hint(err, "create migrations with `dbkit migrate new NAME`: it writes "
                           "<UTC timestamp>_<name>.sql");
        return DBK_EINVALID;
    }
    if (v == 0)
        return dbk__err(err, DBK_EINVALID, "%s: the version must be greater than zero", filename);
    size_t n0 = i + 1, n1 = flen - 4;
    if (n1 <= n0)
        return dbk__err(err, DBK_EINVALID, "%s: the migration has no name after the version",
                        filename);
    if (n1 - n0 >= namesz || n1 - n0 > 100)
        return dbk__err(err, DBK_EINVALID, "%s: the migration name is longer than 100 bytes",
                        filename);
    for (size_t k = n0; k < n1; k++) {
        unsigned char c = (unsigned char)filename[k];
        if (!isalnum(c) && c != '_' && c != '-')
            return dbk__err(err, DBK_EINVALID,
                            "%s: the migration name may only use letters, digits, '_' and '-'",
                            filename);
    }
    memcpy(name, filename + n0, n1 - n0);
    name[n1 - n0] = '\0';
    *version = v;
    return DBK_OK;
}

/* Returns the 1-based line of the first invalid UTF-8 sequence, or 0. */
static int utf8_bad_line(const char *s, size_t len)
{
    int line = 1;
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            if (c == '\n')
                line++;
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return line;
        }
        if (len - i <= n)
            return line;
        for (size_t k = 1; k <= n; k++) {
            unsigned char cc = (unsigned char)s[i + k];
            if ((cc & 0xc0) != 0x80)
                return line;
            cp = (cp << 6) | (cc & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return line;
        i += n + 1;
    }
    return 0;
}

/* Checks that text is non-empty UTF-8 without NUL bytes. */
static dbk_rc check_text(const char *path, const char *text, size_t len, dbk_error *err)
{
    size_t k = 0;
    while (k < len && isspace((unsigned char)text[k]))
        k++;
    if (k == len) {
        dbk__err(err, DBK_EINVALID, "%s: the file is empty", path);
        dbk__err_hint(err, "a migration needs a -- migrate:up and a -- migrate:down section; "
                           "`dbkit migrate new NAME` writes a template");
        return DBK_EINVALID;
    }
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        int line = 1;
        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        return dbk__err(err, DBK_EINVALID,
                        "%s:%d: the file contains a NUL byte: not a SQL text file", path, line);
    }
    int bad = utf8_bad_line(text, len);
    if (bad)
        return dbk__err(err, DBK_EINVALID, "%s:%d: the file is not valid UTF-8 text", path, bad);
    return DBK_OK;
}

/* Splits a section or seed to validate it; checks for transaction control
 * statements where dbkit owns the transaction. */
static dbk_rc check_sql(const char *path, const char *text, size_t len, int first_line,
                        dbk_engine engine, bool transactional, size_t *nstmts, dbk_error *err)
{
    dbk__stmt *st = NULL;
    size_t n = 0;
    int line = 0;
    const char *what = "";
    dbk_rc rc = split_at(text, len, first_line, engine, &st, &n, &line, &what);
    if (rc == DBK_ENOMEM)
        return dbk__err(err, rc, "out of memory splitting %s", path);
    if (rc)
        return dbk__err(err, rc, "%s:%d: %s", path, line, what);
    for (size_t i = 0; transactional && i < n; i++) {
        if (dbk__sql_is_tx_control(text + st[i].off, st[i].len)) {
            int l = st[i].line;
            size_t k = 0;
            while (k < st[i].len && k < 20 && isalpha((unsigned char)text[st[i].off + k]))
                k++;
            dbk__err(err, DBK_EINVALID,
                     "%s:%d: '%.*s' inside a transactional section: dbkit runs each migration "
                     "and seed in its own transaction",
                     path, l, (int)k, text + st[i].off);
            dbk__err_hint(err, "remove the transaction statements, or mark the section "
                               "-- migrate:up transaction:false to manage them yourself");
            free(st);
            return DBK_EINVALID;
        }
    }
    free(st);
    *nstmts = n;
    return DBK_OK;
}

/* Parses one directive line (without its newline). Returns 1 when it is a
 * directive (fields filled), 0 when it is not one, -1 on a malformed one
 * (err filled). */
static int parse_directive(const char *path, int lineno, const char *l, size_t n,
                           dbk__section *sec, dbk_error *err)
{
    size_t i = 0;
    while (i < n && (l[i] == ' ' || l[i] == '\t'))
        i++;
    if (n - i < 2 || l[i] != '-' || l[i + 1] != '-')
        return 0;
    i += 2;
    while (i < n && (l[i] == ' ' || l[i] == '\t'))
        i++;
    if (n - i < 8 || strncasecmp(l + i, "migrate:", 8) != 0)
        return 0;
    i += 8;
    size_t w0 = i;
    while (i < n && !isspace((unsigned char)l[i]))
        i++;
    memset(sec, 0, sizeof *sec);
    sec->transactional = true;
    if (word_is(l + w0, i - w0, "up"))
        sec->dir = DBK__DIR_UP;
    else if (word_is(l + w0, i - w0, "down"))
        sec->dir = DBK__DIR_DOWN;
    else {
        int wl = (int)(i - w0 > 40 ? 40 : i - w0);
        dbk__err(err, DBK_EINVALID,
                 "%s:%d: unknown directive '-- migrate:%.*s' (expected up or down)", path,
                 lineno, wl, l + w0);
        return -1;
    }
    for (;;) {
        while (i < n && isspace((unsigned char)l[i]))
            i++;
        if (i >= n)
            break;
        size_t o0 = i;
        while (i < n && !isspace((unsigned char)l[i]))
            i++;
        const char *o = l + o0;
        size_t on = i - o0;
        int ol = (int)(on > 40 ? 40 : on);
        if (word_is(o, on, "transaction:false"))
            sec->transactional = false;
        else if (word_is(o, on, "transaction:true"))
            sec->transactional = true;
        else if (word_is(o, on, "engine:sqlite"))
            sec->engine = DBK_ENGINE_SQLITE;
        else if (word_is(o, on, "engine:postgres") || word_is(o, on, "engine:postgresql"))
            sec->engine = DBK_ENGINE_POSTGRES;
        else {
            dbk__err(err, DBK_EINVALID,
                     "%s:%d: unknown option '%.*s' (known: transaction:false, "
                     "engine:sqlite, engine:postgres)",
                     path, lineno, ol, o);
            return -1;
        }
    }
    sec->directive_line = lineno;
    return 1;
}

static const char *dir_name(int dir)
{
    return dir == DBK__DIR_UP ? "up" : "down";
}

static const char *engine_label(dbk_engine e)
{
    return e == DBK_ENGINE_SQLITE ? " engine:sqlite" : e == DBK_ENGINE_POSTGRES ? " engine:postgres" : "";
}

dbk_rc dbk__mig_parse(dbk__migfile *f, dbk_error *err)
{
    const char *path = f->path, *t = f->text;
    size_t len = f->len;
    dbk_rc rc = check_text(path, t, len, err);
    if (rc)
        return rc;

    f->nsec = 0;
    size_t prelude_end = len;
    size_t i = 0;
    int lineno = 1;
    while (i < len) {
        const char *nl = memchr(t + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - t) : len;
        size_t next = nl ? end + 1 : len;
        size_t l_end = end;
        if (l_end > i && t[l_end - 1] == '\r')
            l_end--;
        dbk__section sec;
        int r = parse_directive(path, lineno, t + i, l_end - i, &sec, err);
        if (r < 0)
            return DBK_EINVALID;
        if (r > 0) {
            if (f->nsec == 0)
                prelude_end = i;
            else
                f->sec[f->nsec - 1].len = i - f->sec[f->nsec - 1].off;
            if (f->nsec == DBK__MIG_MAX_SECTIONS)
                return dbk__err(err, DBK_EINVALID, "%s:%d: more than %d sections", path, lineno,
                                DBK__MIG_MAX_SECTIONS);
            sec.off = next;
            sec.line = lineno + 1;
            f->sec[f->nsec++] = sec;
        }
        i = next;
        lineno++;
    }
    if (f->nsec > 0)
        f->sec[f->nsec - 1].len = len - f->sec[f->nsec - 1].off;

    if (f->nsec == 0) {
        dbk__err(err, DBK_EINVALID, "%s: no -- migrate:up section", path);
        dbk__err_hint(err, "a migration file has a '-- migrate:up' line, the statements, a "
                           "'-- migrate:down' line and the statements that undo them");
        return DBK_EINVALID;
    }
    /* Only comments may precede the first directive. */
    size_t nst = 0;
    dbk__stmt *st = NULL;
    int eline = 0;
    const char *what = "";
    rc = split_at(t, prelude_end, 1, 0, &st, &nst, &eline, &what);
    if (rc == DBK_ENOMEM)
        return dbk__err(err, rc, "out of memory parsing %s", path);
    if (rc == DBK_OK && nst > 0) {
        int l = st[0].line;
        free(st);
        dbk__err(err, DBK_EINVALID, "%s:%d: SQL before the first -- migrate:up line", path, l);
        dbk__err_hint(err, "put the statements under -- migrate:up (and their undo under "
                           "-- migrate:down)");
        return DBK_EINVALID;
    }
    free(st);
    if (rc)
        return dbk__err(err, rc, "%s:%d: %s", path, eline, what);

    bool have_up = false;
    for (size_t k = 0; k < f->nsec; k++)
        have_up |= f->sec[k].dir == DBK__DIR_UP;
    if (!have_up) {
        dbk__err(err, DBK_EINVALID, "%s:%d: a -- migrate:down section without a -- migrate:up",
                 path, f->sec[0].directive_line);
        dbk__err_hint(err, "add a '-- migrate:up' section above it");
        return DBK_EINVALID;
    }
    if (f->sec[0].dir != DBK__DIR_UP)
        return dbk__err(err, DBK_EINVALID,
                        "%s:%d: -- migrate:down comes before -- migrate:up (put up first)", path,
                        f->sec[0].directive_line);
    for (size_t a = 0; a < f->nsec; a++) {
        for (size_t b = a + 1; b < f->nsec; b++) {
            const dbk__section *x = &f->sec[a], *y = &f->sec[b];
            if (x->dir != y->dir)
                continue;
            if (x->engine == y->engine)
                return dbk__err(err, DBK_EINVALID,
                                "%s:%d: a second -- migrate:%s%s section (the first is on line "
                                "%d)",
                                path, y->directive_line, dir_name(y->dir),
                                engine_label(y->engine), x->directive_line);
            if (!x->engine || !y->engine)
                return dbk__err(err, DBK_EINVALID,
                                "%s:%d: -- migrate:%s sections with and without engine: mixed "
                                "(line %d); give every %s section an engine, or use one "
                                "without",
                                path, y->directive_line, dir_name(y->dir), x->directive_line,
                                dir_name(y->dir));
        }
    }
    /* Every engine with an up section needs a down section, and back. */
    dbk_engine engines[2] = {DBK_ENGINE_SQLITE, DBK_ENGINE_POSTGRES};
    for (int e = 0; e < 2; e++) {
        const dbk__section *up = dbk__mig_section(f, DBK__DIR_UP, engines[e]);
        const dbk__section *down = dbk__mig_section(f, DBK__DIR_DOWN, engines[e]);
        if (up && !down) {
            dbk__err(err, DBK_EINVALID, "%s: no -- migrate:down section%s", path,
                     up->engine ? engine_label(up->engine) : "");
            dbk__err_hint(err, "add a '-- migrate:down' line with the statements that undo the "
                               "up section (leave it empty for an irreversible migration)");
            return DBK_EINVALID;
        }
        if (down && !up)
            return dbk__err(err, DBK_EINVALID,
                            "%s:%d: a -- migrate:down%s section without a matching -- "
                            "migrate:up",
                            path, down->directive_line, engine_label(down->engine));
    }
    for (size_t k = 0; k < f->nsec; k++) {
        const dbk__section *s = &f->sec[k];
        size_t n = 0;
        rc = check_sql(path, t + s->off, s->len, s->line, s->engine, s->transactional, &n, err);
        if (rc)
            return rc;
        if (n == 0 && s->dir == DBK__DIR_UP)
            return dbk__err(err, DBK_EINVALID, "%s:%d: the -- migrate:up%s section is empty",
                            path, s->directive_line, engine_label(s->engine));
    }
    dbk__sha256_hex(t, len, f->checksum);
    return DBK_OK;
}

const dbk__section *dbk__mig_section(const dbk__migfile *f, int dir, dbk_engine engine)
{
    for (size_t k = 0; k < f->nsec; k++)
        if (f->sec[k].dir == dir && (f->sec[k].engine == 0 || f->sec[k].engine == engine))
            return &f->sec[k];
    return NULL;
}

/* Seeds: plain SQL, checked the same way as a transactional section. */
dbk_rc dbk__seed_parse(dbk__migfile *f, dbk_error *err)
{
    dbk_rc rc = check_text(f->path, f->text, f->len, err);
    if (rc)
        return rc;
    size_t n = 0;
    rc = check_sql(f->path, f->text, f->len, 1, 0, true, &n, err);
    if (rc)
        return rc;
    if (n == 0)
        return dbk__err(err, DBK_EINVALID, "%s: the seed has only comments: no statement",
                        f->path);
    f->nsec = 1;
    memset(&f->sec[0], 0, sizeof f->sec[0]);
    f->sec[0].dir = DBK__DIR_UP;
    f->sec[0].transactional = true;
    f->sec[0].off = 0;
    f->sec[0].len = f->len;
    f->sec[0].line = 1;
    dbk__sha256_hex(f->text, f->len, f->checksum);
    return DBK_OK;
}
