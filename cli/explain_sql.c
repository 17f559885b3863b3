/*
 * explain_sql.c - the small SQL tokenizer of `dbkit explain` and the
 * helpers over its tokens (keywords, read-only statements, the highest $n)
 * and column lists.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

/* ---- a small SQL tokenizer ---- */

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

static bool is_ident_char(char ch)
{
    return is_ident_start(ch) || (ch >= '0' && ch <= '9') || ch == '$';
}

/* Tokens of sql. Comments dropped; strings kept as one token (contents not
 * needed); "quoted" identifiers unquoted. On OOM the list is cut short. */
toks dgx_tokenize(const char *sql)
{
    toks v = {NULL, 0};
    size_t cap = 0;
    const char *p = sql;
    while (*p) {
        char ch = *p;
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f') {
            p++;
        } else if (ch == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (ch == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            p = e ? e + 2 : p + strlen(p);
        } else if (ch == '\'') {
            const char *s = ++p;
            while (*p && !(*p == '\'' && p[1] != '\''))
                p += (*p == '\'' ? 2 : 1);
            toks_push(&v, &cap, T_STRING, s, (size_t)(p - s));
            if (*p)
                p++;
        } else if (ch == '"' || ch == '`') {
            char q = ch;
            char buf[128];
            size_t n = 0;
            p++;
            while (*p) {
                if (*p == q && p[1] == q) {
                    if (n < sizeof buf - 1)
                        buf[n++] = q;
                    p += 2;
                } else if (*p == q) {
                    p++;
                    break;
                } else {
                    if (n < sizeof buf - 1)
                        buf[n++] = *p;
                    p++;
                }
            }
            toks_push(&v, &cap, T_QIDENT, buf, n);
        } else if (ch == '$' && p[1] >= '0' && p[1] <= '9') {
            const char *s = ++p;
            while (*p >= '0' && *p <= '9')
                p++;
            toks_push(&v, &cap, T_PARAM, s, (size_t)(p - s));
        } else if (ch >= '0' && ch <= '9') {
            const char *s = p;
            while ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E')
                p++;
            toks_push(&v, &cap, T_NUMBER, s, (size_t)(p - s));
        } else if (is_ident_start(ch)) {
            const char *s = p;
            while (is_ident_char(*p))
                p++;
            toks_push(&v, &cap, T_IDENT, s, (size_t)(p - s));
        } else {
            static const char *const two[] = {"<=", ">=", "<>", "!=", "==", "::", "||", NULL};
            size_t len = 1;
            for (int i = 0; two[i]; i++)
                if (p[0] == two[i][0] && p[1] == two[i][1])
                    len = 2;
            toks_push(&v, &cap, T_OP, p, len);
            p += len;
        }
    }
    return v;
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
