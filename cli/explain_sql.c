/*
 * explain_sql.c - the tokens of `dbkit explain` and the helpers over them
 * (keywords, read-only statements, the highest $n) and column lists.
 *
 * The tokens come from the library's SQL scanner (dbk_sql_next_token,
 * dbkit/sqlscan.h), the one the migrator and the pool read SQL with, so
 * comments, E'' strings, dollar quotes and quoted names are read the way
 * the engine reads them; this file only reshapes its tokens for the
 * explain code: names unquoted, strings without their quotes, $n as one
 * parameter token, two-byte operators as one.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

/* ---- tokens ---- */

static void toks_push(toks *v, size_t *cap, int kind, const char *s, size_t len)
{
    if (v->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        tok *p = realloc(v->t, nc * sizeof *p);
        if (!p)
            return;
        v->t = p;
        *cap = nc;
    }
    tok *t = &v->t[v->n++];
    t->kind = kind;
    if (len >= sizeof t->text)
        len = sizeof t->text - 1;
    memcpy(t->text, s, len);
    t->text[len] = '\0';
}

static bool is_ident_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (unsigned char)ch >= 0x80;
}

/* A quoted name without its quotes, doubled quotes made single ([name]
 * has none to undouble), cut at the size of a token's text. */
static void push_unquoted(toks *v, size_t *cap, const char *s, size_t n)
{
    char buf[128];
    size_t o = 0;
    char q = s[0];
    for (size_t i = 1; i + 1 < n; i++) {
        if (q != '[' && s[i] == q && i + 2 < n && s[i + 1] == q)
            i++;
        if (o < sizeof buf - 1)
            buf[o++] = s[i];
    }
    toks_push(v, cap, T_QIDENT, buf, o);
}

/* A string's contents: inside the quotes of '...', or between the tags of
 * a dollar-quoted body. */
static void push_string(toks *v, size_t *cap, const char *s, size_t n)
{
    size_t open = 1, close = 1;
    if (s[0] == '$') {
        const char *e = memchr(s + 1, '$', n - 1);
        open = close = e ? (size_t)(e - s) + 1 : 1;
    }
    toks_push(v, cap, T_STRING, s + open, n >= open + close ? n - open - close : 0);
}

toks dgx_tokenize_engine(const char *sql, dbk_engine engine)
{
    static const char *const two[] = {"<=", ">=", "<>", "!=", "==", "::", "||", NULL};
    toks v = {NULL, 0};
    size_t cap = 0, len = strlen(sql), pos = 0;
    dbk_sql_token t;
    /* every call consumes at least one byte or ends: at most len + 1 calls */
    while (dbk_sql_next_token(sql, len, engine, &pos, &t, NULL) == DBK_OK &&
           t.kind != DBK_SQL_TOKEN_END) {
        const char *s = sql + t.offset;
        switch (t.kind) {
        case DBK_SQL_TOKEN_WORD: toks_push(&v, &cap, T_IDENT, s, t.length); break;
        case DBK_SQL_TOKEN_QUOTED_NAME: push_unquoted(&v, &cap, s, t.length); break;
        case DBK_SQL_TOKEN_STRING: push_string(&v, &cap, s, t.length); break;
        case DBK_SQL_TOKEN_NUMBER: toks_push(&v, &cap, T_NUMBER, s, t.length); break;
        case DBK_SQL_TOKEN_DOLLAR: {
            /* $n: the parameter's digits */
            size_t e = pos;
            while (e < len && sql[e] >= '0' && sql[e] <= '9')
                e++;
            if (e > pos) {
                toks_push(&v, &cap, T_PARAM, sql + pos, e - pos);
                pos = e;
            } else {
                toks_push(&v, &cap, T_OP, s, 1);
            }
            break;
        }
        default: { /* punctuation, ';' */
            size_t n = 1;
            for (int i = 0; two[i] && pos < len; i++)
                if (s[0] == two[i][0] && sql[pos] == two[i][1])
                    n = 2;
            toks_push(&v, &cap, T_OP, s, n);
            pos = t.offset + n;
            break;
        }
        }
    }
    return v;
}

toks dgx_tokenize(const char *sql)
{
    return dgx_tokenize_engine(sql, DBK_ENGINE_POSTGRES);
}

bool dgx_kw(const tok *t, const char *word)
{
    return t && t->kind == T_IDENT && strcasecmp(t->text, word) == 0;
}

bool dgx_op(const tok *t, const char *s)
{
    return t && t->kind == T_OP && strcmp(t->text, s) == 0;
}

bool dgx_is_ident(const tok *t)
{
    return t && (t->kind == T_IDENT || t->kind == T_QIDENT);
}

static const char *const KEYWORDS[] = {
    "select", "from", "where", "and", "or", "not", "is", "null", "true", "false", "in", "like",
    "ilike", "between", "any", "all", "some", "exists", "case", "when", "then", "else", "end",
    "as", "on", "join", "left", "right", "inner", "outer", "full", "cross", "natural", "using",
    "group", "order", "by", "having", "limit", "offset", "union", "intersect", "except",
    "asc", "desc", "nulls", "first", "last", "distinct", "with", "collate", "escape", "glob",
    "regexp", "match", "lateral", "window", "over", "partition", "returning", "fetch", "for",
    "values", "set", "into", "update", "delete", "insert", "isnull", "notnull", "similar",
    "array", "row", "interval", "cast", NULL};

bool dgx_is_keyword(const tok *t)
{
    if (!t || t->kind != T_IDENT)
        return false;
    for (int i = 0; KEYWORDS[i]; i++)
        if (strcasecmp(t->text, KEYWORDS[i]) == 0)
            return true;
    return false;
}

bool dg_sql_is_read(const char *sql)
{
    toks v = dgx_tokenize(sql);
    size_t i = 0;
    while (i < v.n && dgx_op(&v.t[i], "("))
        i++;
    bool read = false;
    if (i < v.n && (dgx_kw(&v.t[i], "select") || dgx_kw(&v.t[i], "values") || dgx_kw(&v.t[i], "table")))
        read = true;
    if (i < v.n && dgx_kw(&v.t[i], "with")) {
        read = true;
        for (size_t j = i; j < v.n; j++)
            if (dgx_kw(&v.t[j], "insert") || dgx_kw(&v.t[j], "update") || dgx_kw(&v.t[j], "delete") ||
                dgx_kw(&v.t[j], "merge"))
                read = false;
    }
    /* SELECT ... FOR UPDATE takes row locks: still a read for EXPLAIN. */
    free(v.t);
    return read;
}

int dg_sql_max_param(const char *sql)
{
    toks v = dgx_tokenize(sql);
    int max = 0;
    for (size_t i = 0; i < v.n; i++)
        if (v.t[i].kind == T_PARAM) {
            int64_t n = 0;
            if (cli_parse_i64(v.t[i].text, &n) && n > max && n < 65536)
                max = (int)n;
        }
    free(v.t);
    return max;
}

/* ---- names ---- */

/* Appends an identifier, quoted unless it is plain lower case. */
void dgx_add_ident(dg_buf *b, const char *s)
{
    bool plain = is_ident_start(*s) && !(*s >= 'A' && *s <= 'Z');
    for (const char *p = s; *p && plain; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
    if (plain) {
        dg_add(b, s);
        return;
    }
    dg_add(b, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            dg_add(b, "\"");
        dg_addn(b, p, 1);
    }
    dg_add(b, "\"");
}

void dgx_cols_add(cols *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i], name) == 0)
            return;
    if (c->n < 4)
        snprintf(c->v[c->n++], sizeof c->v[0], "%s", name);
}

/* c's names, separated by ", ", added to b. */
void dgx_cols_join(const cols *c, dg_buf *b)
{
    for (size_t i = 0; i < c->n; i++) {
        if (i)
            dg_add(b, ", ");
        dg_add(b, c->v[i]);
    }
}
