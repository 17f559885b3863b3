/*
 * dbkit gen: typed C functions from annotated SQL, with the types taken
 * from the real server.
 *
 * Why the server and not a parser. The types of a query's parameters and
 * columns are decided by the schema the migrations build and by the
 * engine's own rules (operators, casts, function overloads). A throwaway
 * database made from the migrations (dbk_testdb) and the engine's
 * prepare/describe give the same answer the running service will meet,
 * and a query that no longer matches the schema fails here, at generation
 * time, with its file and line, instead of at run time.
 *
 * What the server does not say is filled in from the statement's tokens,
 * conservatively: nullability (PostgreSQL's describe has no nullability;
 * a column is NOT NULL only when it comes straight from a NOT NULL table
 * column that no outer join can blank, or is a count), SQLite's parameter
 * and expression types (SQLite has none), and parameter names.
 *
 * Output is a pure function of the inputs: files in sorted order, queries
 * in file order, no timestamps or paths that vary, so `--check` can compare
 * bytes.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dbkit/db.h"
#include "dbkit/gen.h"
#include "dbkit/result.h"
#include "dbkit/testdb.h"

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../core/sb.h"
#include "../core/url.h"
#include "../driver/describe.h"
#include "../driver/dialect.h"

enum { K_ONE = 1, K_MANY, K_EXEC, K_EXECROWS, K_BATCH, K_COPYFROM };
static const char *const KIND_NAMES[] = {"", "one", "many", "exec", "execrows", "batch", "copyfrom"};

#define GMAX_PARAMS 64
#define IDLEN 64

typedef struct gfield {
    char name[IDLEN]; /* C identifier */
    dbk_type type;
    bool nullable;
    char sqltype[64];
} gfield;

typedef struct gquery {
    char name[128];
    char fn[128];
    int kind;
    int line;     /* of the "-- name:" line */
    int sql_line; /* of the first line of SQL */
    char *sql;    /* with named parameters rewritten to $n */
    gfield params[GMAX_PARAMS];
    size_t nparams;
    gfield *cols;
    size_t ncols;
    /* :copyfrom: INSERT INTO copy_table (copy_cols) VALUES ($a, $b, ...);
     * copy_param[k] is the index in params of column k's value */
    char copy_table[IDLEN];
    char copy_cols[GMAX_PARAMS][IDLEN];
    int copy_param[GMAX_PARAMS];
    size_t ncopy;
} gquery;

/* ---- a growable string: the library's one builder (core/sb.h) ---- */

typedef dbk__sb sb;
#define sb_addn dbk__sb_putn
#define sb_add dbk__sb_puts
#define sb_addf dbk__sb_printf

/* The number of a "$N" placeholder whose digits start at s: 1..65535, or 0
 * when there are none or the number is out of range (checked, never
 * overflows, unlike atoi on a long digit run). */
static int placeholder_num(const char *s)
{
    size_t n = 0;
    while (isdigit((unsigned char)s[n]))
        n++;
    long long v = 0;
    return dbk__parse_decimal(s, n, 1, 65535, &v) ? (int)v : 0;
}

/* ---- tokens ---- */

enum { T_IDENT = 1, T_PARAM, T_NUM, T_STR, T_PUNCT };

typedef struct tok {
    int kind;
    char text[IDLEN]; /* identifiers lower-cased (quoted ones kept); params: the number */
    int num;          /* T_PARAM: n */
} tok;

typedef struct toks {
    tok *v;
    size_t n, cap;
} toks;

static bool ident_start(int c)
{
    return isalpha(c) || c == '_' || c >= 0x80;
}

static bool ident_char(int c)
{
    return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

/* Skips a string, quoted identifier, comment or dollar body starting at
 * s[i]; returns the index after it, or i when s[i] starts none. */
static size_t skip_quoted(const char *s, size_t i)
{
    size_t n = strlen(s);
    if (s[i] == '\'' || s[i] == '"' || s[i] == '`') {
        char q = s[i++];
        while (i < n) {
            if (s[i] == q) {
                if (s[i + 1] == q) {
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i++;
        }
        return n;
    }
    if (s[i] == '-' && s[i + 1] == '-') {
        while (i < n && s[i] != '\n')
            i++;
        return i;
    }
    if (s[i] == '/' && s[i + 1] == '*') {
        const char *e = strstr(s + i + 2, "*/");
        return e ? (size_t)(e - s) + 2 : n;
    }
    if (s[i] == '$' && (s[i + 1] == '$' || ident_start((unsigned char)s[i + 1]))) {
        size_t j = i + 1;
        while (j < n && s[j] != '$' && ident_char((unsigned char)s[j]) && s[j] != '$')
            j++;
        if (s[j] != '$')
            return i;
        size_t taglen = j - i + 1;
        const char *e = s + j + 1;
        while ((e = strstr(e, "$")) != NULL) {
            if (strncmp(e, s + i, taglen) == 0)
                return (size_t)(e - s) + taglen;
            e++;
        }
        return n;
    }
    return i;
}

static bool toks_push(toks *t, const tok *k)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        tok *v = realloc(t->v, cap * sizeof *v);
        if (!v)
            return false;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = *k;
    return true;
}

static bool tokenize(const char *s, toks *out)
{
    size_t n = strlen(s), i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        tok k;
        memset(&k, 0, sizeof k);
        if (isspace(c)) {
            i++;
            continue;
        }
        size_t j = skip_quoted(s, i);
        if (j != i) {
            if (s[i] == '"' || s[i] == '`') {
                k.kind = T_IDENT;
                size_t len = j - i >= 2 ? j - i - 2 : 0;
                snprintf(k.text, sizeof k.text, "%.*s", (int)len, s + i + 1);
            } else if (s[i] == '-' || s[i] == '/') {
                i = j;
                continue;
            } else {
                k.kind = T_STR;
            }
            i = j;
        } else if (c == '$' && isdigit((unsigned char)s[i + 1])) {
            k.kind = T_PARAM;
            k.num = placeholder_num(s + i + 1);
            i++;
            while (isdigit((unsigned char)s[i]))
                i++;
        } else if (ident_start(c)) {
            size_t st = i;
            while (i < n && ident_char((unsigned char)s[i]))
                i++;
            k.kind = T_IDENT;
            size_t len = i - st < IDLEN - 1 ? i - st : IDLEN - 1;
            for (size_t x = 0; x < len; x++)
                k.text[x] = (char)tolower((unsigned char)s[st + x]);
        } else if (isdigit(c)) {
            k.kind = T_NUM;
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '.'))
                i++;
        } else {
            k.kind = T_PUNCT;
            static const char *const two[] = {"<=", ">=", "<>", "!=", "::", "||", NULL};
            k.text[0] = (char)c;
            i++;
            for (int x = 0; two[x]; x++)
                if (two[x][0] == (char)c && s[i] == two[x][1]) {
                    k.text[1] = s[i++];
                    break;
                }
        }
        if (!toks_push(out, &k))
            return false;
    }
    return true;
}

static bool is_kw(const tok *k, const char *kw)
{
    return k->kind == T_IDENT && strcmp(k->text, kw) == 0;
}

static bool is_p(const tok *k, const char *p)
{
    return k->kind == T_PUNCT && strcmp(k->text, p) == 0;
}

static bool is_arith(const tok *k)
{
    return k->kind == T_PUNCT && k->text[1] == '\0' &&
           (k->text[0] == '+' || k->text[0] == '-' || k->text[0] == '*' || k->text[0] == '/');
}

static bool is_cmp(const tok *k)
{
    static const char *const ops[] = {"=", "<", ">", "<=", ">=", "<>", "!=", NULL};
    if (k->kind == T_PUNCT) {
        for (int i = 0; ops[i]; i++)
            if (strcmp(k->text, ops[i]) == 0)
                return true;
        return false;
    }
    return is_kw(k, "like") || is_kw(k, "ilike");
}

/* ---- what the tokens say ---- */

#define MAX_TABLES 16

typedef struct shape {
    char tables[MAX_TABLES][IDLEN]; /* in order of appearance */
    bool outer[MAX_TABLES];         /* on the nullable side of a LEFT JOIN */
    size_t ntables;
    bool all_nullable; /* RIGHT or FULL join */
    bool dml;          /* INSERT / UPDATE / DELETE: tables[0] is the target */
} shape;

static void shape_of(const toks *t, shape *sh)
{
    memset(sh, 0, sizeof *sh);
    for (size_t i = 0; i < t->n; i++) {
        const tok *k = &t->v[i];
        if (i == 0 && (is_kw(k, "insert") || is_kw(k, "update") || is_kw(k, "delete")))
            sh->dml = true;
        if (is_kw(k, "right") || is_kw(k, "full"))
            sh->all_nullable = true;
        if (!(is_kw(k, "from") || is_kw(k, "join") || is_kw(k, "into") || is_kw(k, "update")))
            continue;
        if (i + 1 >= t->n || t->v[i + 1].kind != T_IDENT)
            continue;
        size_t at = i + 1;
        if (at + 2 < t->n && is_p(&t->v[at + 1], ".") && t->v[at + 2].kind == T_IDENT)
            at += 2; /* schema.table */
        bool left = is_kw(k, "join") && i >= 1 &&
                    (is_kw(&t->v[i - 1], "left") ||
                     (i >= 2 && is_kw(&t->v[i - 1], "outer") && is_kw(&t->v[i - 2], "left")));
        bool seen = false;
        for (size_t x = 0; x < sh->ntables; x++)
            if (strcmp(sh->tables[x], t->v[at].text) == 0) {
                sh->outer[x] |= left;
                seen = true;
            }
        if (!seen && sh->ntables < MAX_TABLES) {
            dbk__strlcpy(sh->tables[sh->ntables], t->v[at].text, IDLEN);
            sh->outer[sh->ntables++] = left;
        }
    }
}

static bool lookup(dbk__describer *d, const shape *sh, const char *col, dbk__desc_col *out)
{
    for (size_t i = 0; i < sh->ntables; i++) {
        bool found = false;
        dbk_error e;
        if (dbk__describe_column(d, sh->tables[i], col, out, &found, &e) == DBK_OK && found)
            return true;
    }
    return false;
}

static dbk_type type_of_name(const char *t)
{
    if (strstr(t, "int"))
        return DBK_TYPE_INT64;
    if (strstr(t, "real") || strstr(t, "float") || strstr(t, "double"))
        return DBK_TYPE_DOUBLE;
    if (strstr(t, "bool"))
        return DBK_TYPE_BOOL;
    if (strstr(t, "blob"))
        return DBK_TYPE_BLOB;
    return DBK_TYPE_TEXT;
}

/* The column a parameter token at i is compared with or assigned to ("" if
 * none); *ptype set when the text fixes the type (LIMIT, CAST). */
static void param_context(const toks *t, size_t i, const shape *sh, char *col, dbk_type *ptype,
                          bool *typed)
{
    col[0] = '\0';
    *typed = false;
    const tok *v = t->v;
    if (i >= 1 && (is_kw(&v[i - 1], "limit") || is_kw(&v[i - 1], "offset"))) {
        dbk__strlcpy(col, v[i - 1].text, IDLEN);
        *ptype = DBK_TYPE_INT64;
        *typed = true;
        return;
    }
    if (i >= 2 && i + 2 < t->n && is_p(&v[i - 1], "(") && is_kw(&v[i - 2], "cast") &&
        is_kw(&v[i + 1], "as") && v[i + 2].kind == T_IDENT) {
        *ptype = type_of_name(v[i + 2].text);
        *typed = true;
    }
    /* col = $n, col + $n (the column's type is the operand's) */
    if (i >= 2 && (is_cmp(&v[i - 1]) || is_arith(&v[i - 1])) && v[i - 2].kind == T_IDENT) {
        dbk__strlcpy(col, v[i - 2].text, IDLEN);
        return;
    }
    if (i + 2 < t->n && (is_cmp(&v[i + 1]) || is_arith(&v[i + 1])) && v[i + 2].kind == T_IDENT) {
        size_t at = i + 2;
        if (at + 2 < t->n && is_p(&v[at + 1], ".") && v[at + 2].kind == T_IDENT)
            at += 2;
        dbk__strlcpy(col, v[at].text, IDLEN);
        return;
    }
    /* INSERT INTO t (c1, c2) VALUES ($1, $2): by position */
    if (!sh->dml || t->n < 4 || !is_kw(&v[0], "insert"))
        return;
    size_t open = 0;
    for (size_t x = 0; x < t->n; x++)
        if (is_p(&v[x], "(")) {
            open = x;
            break;
        }
    size_t vals = 0;
    for (size_t x = 0; x < t->n; x++)
        if (is_kw(&v[x], "values")) {
            vals = x;
            break;
        }
    if (!open || !vals || vals < open || vals + 1 >= t->n || !is_p(&v[vals + 1], "(") ||
        i < vals)
        return;
    /* which top-level element of the VALUES list holds token i alone */
    int depth = 0, elem = 0;
    size_t start = vals + 2;
    for (size_t x = vals + 2; x < t->n; x++) {
        if (is_p(&v[x], "("))
            depth++;
        else if (is_p(&v[x], ")")) {
            if (depth-- == 0)
                break;
        } else if (depth == 0 && is_p(&v[x], ",")) {
            elem++;
            start = x + 1;
            continue;
        }
        if (x == i) {
            bool alone = x == start && x + 1 < t->n &&
                         (is_p(&v[x + 1], ",") || is_p(&v[x + 1], ")") || is_p(&v[x + 1], "::"));
            if (!alone)
                return;
            break;
        }
    }
    int k = 0;
    for (size_t x = open + 1; x < vals && !is_p(&v[x], ")"); x++) {
        if (v[x].kind == T_IDENT) {
            if (k == elem) {
                dbk__strlcpy(col, v[x].text, IDLEN);
                return;
            }
            k++;
        }
    }
}

/* The items of the select list (or RETURNING list): token ranges. */
typedef struct item {
    size_t a, b; /* [a, b) without the alias */
} item;

static size_t select_items(const toks *t, item *items, size_t max)
{
    size_t start = 0;
    bool found = false;
    int depth = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (is_p(&t->v[i], "("))
            depth++;
        else if (is_p(&t->v[i], ")"))
            depth--;
        else if (depth == 0 && (is_kw(&t->v[i], "select") || is_kw(&t->v[i], "returning"))) {
            start = i + 1;
            found = true;
            if (is_kw(&t->v[i], "select"))
                break; /* the first top-level SELECT; RETURNING: keep the last */
        }
    }
    if (!found)
        return 0;
    if (start < t->n && is_kw(&t->v[start], "distinct"))
        start++;
    size_t n = 0, a = start;
    depth = 0;
    for (size_t i = start; i <= t->n; i++) {
        bool end = i == t->n;
        if (!end) {
            if (is_p(&t->v[i], "("))
                depth++;
            else if (is_p(&t->v[i], ")"))
                depth--;
            if (depth == 0 && (is_kw(&t->v[i], "from") || is_kw(&t->v[i], "where") ||
                               is_kw(&t->v[i], "union") || is_kw(&t->v[i], "order") ||
                               is_kw(&t->v[i], "group") || is_kw(&t->v[i], "limit") ||
                               is_p(&t->v[i], ";")))
                end = true;
        }
        if (end || (depth == 0 && is_p(&t->v[i], ","))) {
            if (n < max && i > a) {
                size_t b = i;
                if (b >= a + 2 && is_kw(&t->v[b - 2], "as"))
                    b -= 2;
                else if (b >= a + 2 && t->v[b - 1].kind == T_IDENT &&
                         (t->v[b - 2].kind == T_IDENT || is_p(&t->v[b - 2], ")")) &&
                         !is_p(&t->v[b - 2], "."))
                    b -= 1; /* "expr alias" */
                items[n].a = a;
                items[n].b = b;
                n++;
            }
            if (end)
                break;
            a = i + 1;
        }
    }
    return n;
}

/* ---- naming ---- */

static const char *const C_RESERVED[] = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "bool", "true", "false", NULL};

/* Names the generated functions use for themselves: parameters avoid them. */
static const char *const C_LOCALS[] = {
    "db", "arena", "out", "err", "rows", "nrows", "affected", "r", "rc", "i", "p", "b", "n", "v",
    NULL};

static void c_ident_in(const char *in, char *out, size_t n, bool param)
{
    size_t k = 0;
    if (isdigit((unsigned char)in[0]) || !in[0]) {
        out[k++] = 'c';
        out[k++] = '_';
    }
    for (size_t i = 0; in[i] && k + 2 < n; i++) {
        unsigned char c = (unsigned char)in[i];
        out[k++] = isalnum(c) ? (char)tolower(c) : '_';
    }
    out[k] = '\0';
    for (int i = 0; C_RESERVED[i]; i++)
        if (strcmp(out, C_RESERVED[i]) == 0 && k + 2 < n) {
            out[k++] = '_';
            out[k] = '\0';
        }
    for (int i = 0; param && C_LOCALS[i]; i++)
        if (strcmp(out, C_LOCALS[i]) == 0 && k + 2 < n) {
            out[k++] = '_';
            out[k] = '\0';
        }
}

static void c_ident(const char *in, char *out, size_t n)
{
    c_ident_in(in, out, n, false);
}

static void snake(const char *in, char *out, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; in[i] && k + 2 < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (isupper(c) && i > 0 &&
            (islower((unsigned char)in[i - 1]) || isdigit((unsigned char)in[i - 1]) ||
             (in[i + 1] && islower((unsigned char)in[i + 1]) &&
              isupper((unsigned char)in[i - 1]))) &&
            out[k - 1] != '_')
            out[k++] = '_';
        out[k++] = isalnum(c) ? (char)tolower(c) : '_';
    }
    out[k] = '\0';
}

static void uniq(gfield *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(f[i].name, f[j].name) == 0) {
                char tmp[IDLEN + 16];
                snprintf(tmp, sizeof tmp, "%.40s_%zu", f[i].name, i + 1);
                dbk__strlcpy(f[i].name, tmp, IDLEN);
                j = (size_t)-1; /* again from the start */
                break;
            }
}

/* ---- query files ---- */

typedef struct qfile {
    char *path;  /* as given: dir/name.sql */
    char base[128];
    gquery *q;
    size_t nq;
} qfile;

static char *read_all(const char *path, dbk_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dbk__err(err, DBK_EIO, "cannot read %.256s: %.128s", path, strerror(errno));
        return NULL;
    }
    sb b = {0};
    char chunk[8192];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_addn(&b, chunk, got);
    fclose(f);
    if (b.oom || !b.p) {
        free(b.p);
        if (b.oom) {
            dbk__err(err, DBK_ENOMEM, "out of memory reading %.256s", path);
            return NULL;
        }
        return strdup("");
    }
    return b.p;
}

/* Rewrites @name and sqlc.arg(name) / sqlc.narg(name) to $n; names[] gets
 * the name of each new parameter (after the highest $n already there). */
static char *rewrite_named(const char *sql, char names[][IDLEN], bool *narg, size_t *nnames,
                           int base)
{
    sb out = {0};
    size_t n = strlen(sql), i = 0;
    while (i < n) {
        size_t j = skip_quoted(sql, i);
        if (j != i) {
            sb_addn(&out, sql + i, j - i);
            i = j;
            continue;
        }
        char name[IDLEN] = "";
        bool is_narg = false;
        size_t next = i;
        if (sql[i] == '@' && ident_start((unsigned char)sql[i + 1]) &&
            (i == 0 || !ident_char((unsigned char)sql[i - 1]))) {
            size_t e = i + 1;
            while (e < n && (isalnum((unsigned char)sql[e]) || sql[e] == '_'))
                e++;
            snprintf(name, sizeof name, "%.*s", (int)(e - i - 1), sql + i + 1);
            next = e;
        } else if ((strncasecmp(sql + i, "sqlc.arg(", 9) == 0 ||
                    strncasecmp(sql + i, "sqlc.narg(", 10) == 0) &&
                   (i == 0 || !ident_char((unsigned char)sql[i - 1]))) {
            is_narg = !(sql[i + 5] == 'a' || sql[i + 5] == 'A');
            size_t s = i + (is_narg ? 10 : 9);
            while (sql[s] == ' ' || sql[s] == '\'')
                s++;
            size_t e = s;
            while (e < n && (isalnum((unsigned char)sql[e]) || sql[e] == '_'))
                e++;
            size_t close = e;
            while (close < n && sql[close] != ')')
                close++;
            if (close < n && e > s) {
                snprintf(name, sizeof name, "%.*s", (int)(e - s), sql + s);
                next = close + 1;
            }
        }
        if (name[0]) {
            size_t k = 0;
            while (k < *nnames && strcmp(names[k], name) != 0)
                k++;
            if (k == *nnames && *nnames < GMAX_PARAMS) {
                narg[*nnames] = false;
                dbk__strlcpy(names[(*nnames)++], name, IDLEN);
            }
            if (k < *nnames && is_narg)
                narg[k] = true;
            sb_addf(&out, "$%d", base + (int)k + 1);
            i = next;
            continue;
        }
        sb_addn(&out, sql + i, 1);
        i++;
    }
    if (out.oom) {
        free(out.p);
        return NULL;
    }
    return out.p ? out.p : strdup("");
}

static int max_param(const char *sql)
{
    int m = 0;
    size_t n = strlen(sql);
    for (size_t i = 0; i < n;) {
        size_t j = skip_quoted(sql, i);
        if (j != i) {
            i = j;
            continue;
        }
        if (sql[i] == '$' && isdigit((unsigned char)sql[i + 1])) {
            int v = placeholder_num(sql + i + 1);
            if (v > m)
                m = v;
        }
        i++;
    }
    return m;
}

static void trim_sql(char *s)
{
    size_t n = strlen(s);
    while (n && (isspace((unsigned char)s[n - 1]) || s[n - 1] == ';'))
        s[--n] = '\0';
}

static dbk_rc parse_file(qfile *qf, dbk_error *err)
{
    char *text = read_all(qf->path, err);
    if (!text)
        return err ? err->code : DBK_EIO;
    dbk_rc rc = DBK_OK;
    int line = 0;
    char *p = text;
    gquery *cur = NULL;
    sb body = {0};
    size_t cap = 0;
    while (*p) {
        char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        line++;
        const char *s = p;
        while (*s == ' ' || *s == '\t')
            s++;
        if (strncmp(s, "-- name:", 8) == 0) {
            if (cur) {
                cur->sql = body.p ? body.p : strdup("");
                body = (sb){0};
            }
            if (qf->nq == cap) {
                cap = cap ? cap * 2 : 8;
                gquery *v = realloc(qf->q, cap * sizeof *v);
                if (!v) {
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                    break;
                }
                qf->q = v;
            }
            cur = &qf->q[qf->nq++];
            memset(cur, 0, sizeof *cur);
            cur->line = line;
            char name[128] = "", kind[32] = "";
            char lbuf[512];
            snprintf(lbuf, sizeof lbuf, "%.*s", (int)(len - (size_t)(s - p)), s + 8);
            if (sscanf(lbuf, " %127s :%31s", name, kind) != 2) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%.256s:%d: expected \"-- name: Name :kind\"", qf->path, line);
                break;
            }
            for (int k = K_ONE; k <= K_COPYFROM; k++)
                if (strcmp(kind, KIND_NAMES[k]) == 0)
                    cur->kind = k;
            if (!cur->kind) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%.256s:%d: unknown kind :%s (one, many, exec, execrows, batch, "
                              "copyfrom)",
                              qf->path, line, kind);
                break;
            }
            for (size_t k = 0; name[k]; k++)
                if (!isalnum((unsigned char)name[k]) && name[k] != '_') {
                    rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: query name %s is not an identifier",
                                  qf->path, line, name);
                    break;
                }
            if (rc)
                break;
            dbk__strlcpy(cur->name, name, sizeof cur->name);
            snake(name, cur->fn, sizeof cur->fn);
            for (size_t k = 0; k + 1 < qf->nq; k++)
                if (strcmp(qf->q[k].fn, cur->fn) == 0) {
                    rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s defined twice",
                                  qf->path, line, name);
                    break;
                }
            if (rc)
                break;
        } else if (cur) {
            bool blank = true;
            for (size_t k = 0; k < len; k++)
                if (!isspace((unsigned char)p[k]))
                    blank = false;
            if (!body.p && blank) {
                /* leading blank lines */
            } else {
                if (!body.p)
                    cur->sql_line = line;
                sb_addn(&body, p, len);
                sb_add(&body, "\n");
            }
        } else {
            bool blank_or_comment = true;
            for (size_t k = 0; k < len; k++)
                if (!isspace((unsigned char)p[k])) {
                    blank_or_comment = strncmp(p + k, "--", 2) == 0;
                    break;
                }
            if (!blank_or_comment) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%.256s:%d: SQL before the first \"-- name:\" annotation", qf->path,
                              line);
                break;
            }
        }
        p = nl ? nl + 1 : p + len;
    }
    if (cur && !rc) {
        cur->sql = body.p ? body.p : strdup("");
        body = (sb){0};
    }
    free(body.p);
    free(text);
    if (!rc && body.oom)
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
    for (size_t k = 0; !rc && k < qf->nq; k++) {
        if (!qf->q[k].sql)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        trim_sql(qf->q[k].sql);
        if (!qf->q[k].sql[0])
            rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s has no SQL", qf->path,
                          qf->q[k].line, qf->q[k].name);
    }
    return rc;
}

/* ---- describing one query ---- */

static int line_of(const char *sql, int pos, int first)
{
    int line = first;
    for (int i = 0; i < pos && sql[i]; i++)
        if (sql[i] == '\n')
            line++;
    return line;
}

/* A name that can go into a C string as is and be quoted as an identifier. */
static bool plain_name(const char *s)
{
    if (!s[0])
        return false;
    for (const char *p = s; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return false;
    return true;
}

/* :copyfrom rows go through dbk_db_copy_from, which takes a table, its
 * columns and one value per column: the query must be exactly
 * INSERT INTO t (c1, ..., ck) VALUES ($a1, ..., $ak), every parameter used
 * once, alone. False otherwise. */
static bool copy_shape(const toks *t, gquery *q)
{
    const tok *v = t->v;
    size_t n = t->n, i = 3;
    if (n && is_p(&v[n - 1], ";"))
        n--;
    if (n < 9 || !is_kw(&v[0], "insert") || !is_kw(&v[1], "into") || v[2].kind != T_IDENT ||
        !plain_name(v[2].text) || !is_p(&v[3], "("))
        return false;
    dbk__strlcpy(q->copy_table, v[2].text, sizeof q->copy_table);
    q->ncopy = 0;
    for (i = 4; i < n; i += 2) {
        if (v[i].kind != T_IDENT || !plain_name(v[i].text) || q->ncopy == GMAX_PARAMS)
            return false;
        dbk__strlcpy(q->copy_cols[q->ncopy++], v[i].text, IDLEN);
        if (i + 1 < n && is_p(&v[i + 1], ")"))
            break;
        if (i + 1 >= n || !is_p(&v[i + 1], ","))
            return false;
    }
    i += 2;
    if (i + 1 >= n || !is_kw(&v[i], "values") || !is_p(&v[i + 1], "("))
        return false;
    bool used[GMAX_PARAMS] = {false};
    size_t k = 0;
    for (i += 2; i < n; i += 2) {
        if (v[i].kind != T_PARAM || v[i].num < 1 || (size_t)v[i].num > q->nparams ||
            used[v[i].num - 1] || k == q->ncopy)
            return false;
        used[v[i].num - 1] = true;
        q->copy_param[k++] = v[i].num - 1;
        if (i + 1 < n && is_p(&v[i + 1], ")"))
            break;
        if (i + 1 >= n || !is_p(&v[i + 1], ","))
            return false;
    }
    return k == q->ncopy && k == q->nparams && i + 2 == n;
}

static dbk_rc describe_query(dbk__describer *d, dbk_engine engine, const qfile *qf, gquery *q,
                             dbk_error *err)
{
    const dbk__dialect *dia = dbk__dialect_of(engine);
    char names[GMAX_PARAMS][IDLEN];
    bool narg[GMAX_PARAMS];
    size_t nnames = 0;
    int base = max_param(q->sql);
    char *sql = rewrite_named(q->sql, names, narg, &nnames, base);
    if (!sql)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    free(q->sql);
    q->sql = sql;

    dbk__desc desc;
    int errpos = -1;
    dbk_error e;
    dbk_rc rc = dbk__describe(d, sql, &desc, &errpos, &e);
    if (rc) {
        int line = errpos >= 0 ? line_of(sql, errpos, q->sql_line) : q->sql_line;
        dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s %s", qf->path, line,
                 q->name, e.message);
        if (e.hint[0])
            dbk__err_hint(err, "%s", e.hint);
        return DBK_EINVALID;
    }
    if (desc.nparams > GMAX_PARAMS) {
        dbk__desc_free(&desc);
        return dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s has more than %d parameters",
                        qf->path, q->line, q->name, GMAX_PARAMS);
    }
    toks t = {0};
    if (!tokenize(sql, &t)) {
        dbk__desc_free(&desc);
        free(t.v);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    shape sh;
    shape_of(&t, &sh);

    /* parameters */
    q->nparams = desc.nparams;
    for (size_t i = 0; i < desc.nparams; i++) {
        gfield *f = &q->params[i];
        f->type = desc.params[i].type;
        dbk__strlcpy(f->sqltype, desc.params[i].sqltype, sizeof f->sqltype);
        f->nullable = false; /* set below for sqlc.narg() */
        int num = (int)i + 1;
        if (!dia->describes_params) {
            /* SQLite numbers "$N" parameters in order of first use */
            num = desc.params[i].name[0] == '$' ? placeholder_num(desc.params[i].name + 1) : 0;
        }
        char ctxcol[IDLEN] = "";
        dbk_type ptype = DBK_TYPE_TEXT;
        bool typed = false;
        for (size_t k = 0; k < t.n; k++)
            if (t.v[k].kind == T_PARAM && t.v[k].num == num) {
                param_context(&t, k, &sh, ctxcol, &ptype, &typed);
                if (ctxcol[0] || typed)
                    break;
            }
        if (!dia->describes_params) {
            dbk__desc_col c;
            if (typed) {
                f->type = ptype;
            } else if (ctxcol[0] && lookup(d, &sh, ctxcol, &c)) {
                f->type = c.type;
                dbk__strlcpy(f->sqltype, c.sqltype, sizeof f->sqltype);
            }
        }
        char nm[IDLEN];
        if (num > base && num - base - 1 < (int)nnames) {
            dbk__strlcpy(nm, names[num - base - 1], sizeof nm);
            f->nullable = narg[num - base - 1];
        }
        else if (ctxcol[0])
            dbk__strlcpy(nm, ctxcol, sizeof nm);
        else
            snprintf(nm, sizeof nm, "arg%d", num);
        c_ident_in(nm, f->name, sizeof f->name, true);
    }
    if (!dia->describes_params) {
        /* reorder by $n so that params[k] is $k+1 */
        gfield sorted[GMAX_PARAMS];
        memset(sorted, 0, sizeof sorted);
        for (size_t i = 0; i < desc.nparams; i++) {
            int num =
                desc.params[i].name[0] == '$' ? placeholder_num(desc.params[i].name + 1) : 0;
            if (num < 1 || (size_t)num > desc.nparams) {
                free(t.v);
                dbk__desc_free(&desc);
                return dbk__err(err, DBK_EINVALID,
                                "%.256s:%d: query %s: parameters must be $1..$%zu without gaps",
                                qf->path, q->line, q->name, desc.nparams);
            }
            sorted[num - 1] = q->params[i];
        }
        memcpy(q->params, sorted, sizeof sorted);
    }
    uniq(q->params, q->nparams);
    if (q->kind == K_COPYFROM && !copy_shape(&t, q)) {
        free(t.v);
        dbk__desc_free(&desc);
        dbk__err(err, DBK_EINVALID,
                 "%.256s:%d: query %s is :copyfrom but not INSERT INTO table (columns) VALUES "
                 "($1, ...) with one parameter per column",
                 qf->path, q->line, q->name);
        dbk__err_hint(err, "a :copyfrom query lists the columns and gives each one parameter "
                           "alone (no expressions, casts, schema prefix, RETURNING or ON "
                           "CONFLICT); use :batch for anything else");
        return DBK_EINVALID;
    }

    /* columns */
    item items[256];
    size_t nitems = select_items(&t, items, 256);
    bool mapped = nitems == desc.ncols;
    q->ncols = desc.ncols;
    q->cols = calloc(desc.ncols + 1, sizeof *q->cols);
    if (!q->cols) {
        free(t.v);
        dbk__desc_free(&desc);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    for (size_t j = 0; j < desc.ncols; j++) {
        dbk__desc_col c = desc.cols[j];
        gfield *f = &q->cols[j];
        bool count = false;
        if (mapped) {
            const tok *a = &t.v[items[j].a];
            size_t len = items[j].b - items[j].a;
            if (len >= 3 && is_kw(a, "count") && is_p(a + 1, "(")) {
                count = true;
                c.type = DBK_TYPE_INT64;
                c.known = true;
            } else if (!c.known && len >= 6 && is_kw(a, "cast") &&
                       is_kw(&t.v[items[j].b - 3], "as")) {
                c.type = type_of_name(t.v[items[j].b - 2].text);
                c.known = true;
            } else if (!c.known && len >= 3 && (is_kw(a, "avg") || is_kw(a, "total"))) {
                c.type = DBK_TYPE_DOUBLE;
                c.known = true;
            } else if (!c.known && len == 4 &&
                       (is_kw(a, "sum") || is_kw(a, "min") || is_kw(a, "max")) &&
                       a[2].kind == T_IDENT) {
                dbk__desc_col lc;
                if (lookup(d, &sh, a[2].text, &lc)) {
                    c.type = lc.type;
                    c.known = true;
                }
            } else if (!c.table[0] && sh.dml && (len == 1 || (len == 3 && is_p(a + 1, "."))) &&
                       t.v[items[j].b - 1].kind == T_IDENT && sh.ntables > 0) {
                /* RETURNING col: the target table's column */
                bool found = false;
                dbk__desc_col lc;
                dbk_error ignored;
                if (dbk__describe_column(d, sh.tables[0], t.v[items[j].b - 1].text, &lc, &found,
                                         &ignored) == DBK_OK &&
                    found) {
                    if (!c.known) {
                        c.type = lc.type;
                        dbk__strlcpy(c.sqltype, lc.sqltype, sizeof c.sqltype);
                    }
                    c.known = true;
                    c.notnull = lc.notnull;
                    dbk__strlcpy(c.table, lc.table, sizeof c.table);
                }
            }
        }
        f->type = c.type;
        dbk__strlcpy(f->sqltype, c.sqltype, sizeof f->sqltype);
        f->nullable = !(c.table[0] && c.notnull);
        if (count)
            f->nullable = false;
        if (sh.all_nullable)
            f->nullable = true;
        for (size_t x = 0; x < sh.ntables; x++)
            if (sh.outer[x] && strcmp(sh.tables[x], c.table) == 0)
                f->nullable = true;
        c_ident(c.name, f->name, sizeof f->name);
    }
    uniq(q->cols, q->ncols);
    free(t.v);
    dbk__desc_free(&desc);
    if (q->kind == K_ONE || q->kind == K_MANY) {
        if (q->ncols == 0)
            return dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s is :%s but returns no columns",
                            qf->path, q->line, q->name, KIND_NAMES[q->kind]);
    }
    return DBK_OK;
}

/* ---- emitting C ---- */

static const char *ctype(dbk_type t)
{
    switch (t) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_TIMESTAMP:
        return "int64_t";
    case DBK_TYPE_DOUBLE:
        return "double";
    case DBK_TYPE_BOOL:
        return "bool";
    case DBK_TYPE_BLOB:
        return "dbk_bytes";
    default:
        return "const char *";
    }
}

static bool is_ptr(dbk_type t)
{
    return t == DBK_TYPE_TEXT || t == DBK_TYPE_JSON || t == DBK_TYPE_NULL;
}

static void emit_decl(sb *b, const gfield *f, const char *indent, bool with_null)
{
    const char *ct = ctype(f->type);
    sb_addf(b, "%s%s%s%s;", indent, ct, is_ptr(f->type) ? "" : " ", f->name);
    if (f->sqltype[0])
        sb_addf(b, " /* %s%s */", f->sqltype, f->nullable ? ", nullable" : "");
    sb_add(b, "\n");
    if (with_null && f->nullable && !is_ptr(f->type) && f->type != DBK_TYPE_BLOB)
        sb_addf(b, "%sbool %s_null;\n", indent, f->name);
}

static void emit_c_string(sb *b, const char *s, const char *indent)
{
    sb_add(b, indent);
    sb_add(b, "\"");
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '\\':
            sb_add(b, "\\\\");
            break;
        case '"':
            sb_add(b, "\\\"");
            break;
        case '\t':
            sb_add(b, "\\t");
            break;
        case '\r':
            break;
        case '\n':
            sb_add(b, "\\n\"\n");
            sb_add(b, indent);
            sb_add(b, "\"");
            break;
        case '?':
            sb_add(b, "\\?"); /* no trigraphs */
            break;
        default:
            sb_addn(b, p, 1);
        }
    }
    sb_add(b, "\"");
}

/* A nullable number parameter (sqlc.narg) is a pointer: NULL is SQL NULL. */
static bool param_by_ptr(const gfield *f)
{
    return f->nullable && !is_ptr(f->type) && f->type != DBK_TYPE_BLOB;
}

static void emit_param_type(sb *b, const gfield *f)
{
    if (param_by_ptr(f))
        sb_addf(b, "const %s *", ctype(f->type));
    else
        sb_addf(b, "%s%s", ctype(f->type), is_ptr(f->type) ? "" : " ");
}

static void emit_params_sig(sb *b, const gquery *q)
{
    for (size_t i = 0; i < q->nparams; i++) {
        sb_add(b, ", ");
        emit_param_type(b, &q->params[i]);
        sb_add(b, q->params[i].name);
    }
}

static void emit_value(sb *b, const gfield *f, const char *expr)
{
    if (param_by_ptr(f)) {
        char deref[IDLEN * 2 + 8];
        snprintf(deref, sizeof deref, "*%s", expr);
        gfield plain = *f;
        plain.nullable = false;
        sb_addf(b, "%s ? ", expr);
        emit_value(b, &plain, deref);
        sb_add(b, " : dbk_null()");
        return;
    }
    switch (f->type) {
    case DBK_TYPE_INT64:
        sb_addf(b, "dbk_int64(%s)", expr);
        break;
    case DBK_TYPE_TIMESTAMP:
        sb_addf(b, "dbk_timestamp(%s)", expr);
        break;
    case DBK_TYPE_DOUBLE:
        sb_addf(b, "dbk_double(%s)", expr);
        break;
    case DBK_TYPE_BOOL:
        sb_addf(b, "dbk_bool(%s)", expr);
        break;
    case DBK_TYPE_BLOB:
        sb_addf(b, "%s.ptr ? dbk_blob(%s.ptr, %s.len) : dbk_null()", expr, expr, expr);
        break;
    case DBK_TYPE_JSON:
        sb_addf(b, "%s ? dbk_json(%s) : dbk_null()", expr, expr);
        break;
    default:
        sb_addf(b, "%s ? dbk_text(%s) : dbk_null()", expr, expr);
    }
}

static void emit_values(sb *b, const gquery *q, const char *prefix)
{
    if (!q->nparams)
        return;
    sb_addf(b, "    dbk_value p[%zu] = {\n", q->nparams);
    for (size_t i = 0; i < q->nparams; i++) {
        char expr[IDLEN * 2];
        snprintf(expr, sizeof expr, "%s%s", prefix, q->params[i].name);
        sb_add(b, "        ");
        emit_value(b, &q->params[i], expr);
        sb_add(b, i + 1 < q->nparams ? ",\n" : "\n");
    }
    sb_add(b, "    };\n");
}

static void emit_header(sb *b, const qfile *qf, const char *guard)
{
    sb_addf(b, "/* Code generated by dbkit gen from %s.sql. DO NOT EDIT. */\n", qf->base);
    sb_addf(b, "#ifndef %s\n#define %s\n\n", guard, guard);
    sb_add(b, "#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n"
              "#include <dbkit/dbkit.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n");
    for (size_t k = 0; k < qf->nq; k++) {
        const gquery *q = &qf->q[k];
        sb_addf(b, "\n/* %s :%s (%s.sql:%d) */\nextern const char %s_sql[];\n", q->name,
                KIND_NAMES[q->kind], qf->base, q->line, q->fn);
        if (q->ncols && (q->kind == K_ONE || q->kind == K_MANY)) {
            sb_addf(b, "typedef struct %s_row {\n", q->fn);
            for (size_t j = 0; j < q->ncols; j++)
                emit_decl(b, &q->cols[j], "    ", true);
            sb_addf(b, "} %s_row;\n", q->fn);
        }
        if (q->kind == K_BATCH || q->kind == K_COPYFROM) {
            sb_addf(b, "typedef struct %s_params {\n", q->fn);
            if (!q->nparams)
                sb_add(b, "    char unused_;\n");
            for (size_t j = 0; j < q->nparams; j++) {
                sb_add(b, "    ");
                emit_param_type(b, &q->params[j]);
                sb_addf(b, "%s;\n", q->params[j].name);
            }
            sb_addf(b, "} %s_params;\n", q->fn);
        }
        switch (q->kind) {
        case K_ONE:
            sb_add(b, "/* The one row into *out (strings in arena); DBK_ENOT_FOUND when none,\n * DBK_EINVALID when several. */\n");
            sb_addf(b, "dbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_addf(b, ", dbk_arena *arena, %s_row *out, dbk_error *err);\n", q->fn);
            break;
        case K_MANY:
            sb_add(b, "/* Every row: *rows (in arena, NULL when none) and *nrows. */\n");
            sb_addf(b, "dbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_addf(b, ", dbk_arena *arena, %s_row **rows, size_t *nrows, dbk_error *err);\n",
                    q->fn);
            break;
        case K_EXEC:
            sb_addf(b, "dbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_add(b, ", dbk_error *err);\n");
            break;
        case K_EXECROWS:
            sb_add(b, "/* *affected (may be NULL): rows inserted, updated or deleted. */\n");
            sb_addf(b, "dbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_add(b, ", int64_t *affected, dbk_error *err);\n");
            break;
        default:
            if (q->kind == K_COPYFROM)
                sb_add(b, "/* The rows params[0..n) in one dbk_db_copy_from (one COPY on "
                          "PostgreSQL,\n * INSERTs in one savepoint on SQLite), all or nothing; "
                          "*affected (may be\n * NULL): the rows written. */\n");
            else
                sb_add(b, "/* One statement per element of params[0..n), in one batch (one "
                          "round trip on\n * PostgreSQL), all or nothing; *affected (may be "
                          "NULL): the sum. */\n");
            sb_addf(b, "dbk_rc %s(dbk_db *db, const %s_params *params, size_t n, int64_t "
                       "*affected,\n    dbk_error *err);\n",
                    q->fn, q->fn);
        }
    }
    sb_addf(b, "\n#ifdef __cplusplus\n}\n#endif\n\n#endif /* %s */\n", guard);
}

static void emit_scan(sb *b, const gquery *q)
{
    sb_addf(b, "\nstatic dbk_rc %s_scan(const dbk_result *r, size_t i, dbk_arena *arena, "
               "%s_row *out,\n    dbk_error *err)\n{\n",
            q->fn, q->fn);
    bool uses_arena = false;
    for (size_t j = 0; j < q->ncols; j++)
        if (is_ptr(q->cols[j].type) || q->cols[j].type == DBK_TYPE_BLOB)
            uses_arena = true;
    if (!uses_arena)
        sb_add(b, "    (void)arena;\n");
    sb_add(b, "    dbk_rc rc = DBK_OK;\n    memset(out, 0, sizeof *out);\n");
    for (size_t j = 0; j < q->ncols; j++) {
        const gfield *f = &q->cols[j];
        const char *get = NULL;
        switch (f->type) {
        case DBK_TYPE_INT64:
            get = "dbk_result_get_int64";
            break;
        case DBK_TYPE_TIMESTAMP:
            get = "dbk_result_get_timestamp";
            break;
        case DBK_TYPE_DOUBLE:
            get = "dbk_result_get_double";
            break;
        case DBK_TYPE_BOOL:
            get = "dbk_result_get_bool";
            break;
        default:
            break;
        }
        if (get) {
            if (f->nullable) {
                sb_addf(b, "    out->%s_null = dbk_result_is_null(r, i, %zu);\n", f->name, j);
                sb_addf(b, "    if (!out->%s_null && (rc = %s(r, i, %zu, &out->%s, err)) != DBK_OK)\n"
                           "        return rc;\n",
                        f->name, get, j, f->name);
            } else {
                sb_addf(b, "    if ((rc = %s(r, i, %zu, &out->%s, err)) != DBK_OK)\n        return rc;\n",
                        get, j, f->name);
            }
        } else if (f->type == DBK_TYPE_BLOB) {
            sb_addf(b, "    {\n        const void *v = NULL;\n        size_t n = 0;\n"
                       "        if ((rc = dbk_result_get_blob(r, i, %zu, &v, &n, err)) != DBK_OK)\n"
                       "            return rc;\n"
                       "        if (v && !(out->%s.ptr = dbk_arena_memdup(arena, v, n ? n : 1)))\n"
                       "            return nomem(err);\n"
                       "        out->%s.len = n;\n    }\n",
                    j, f->name, f->name);
        } else {
            sb_addf(b, "    {\n        const char *v = NULL;\n        size_t n = 0;\n"
                       "        if ((rc = dbk_result_get_text(r, i, %zu, &v, &n, err)) != DBK_OK)\n"
                       "            return rc;\n"
                       "        if (v && !(out->%s = dbk_arena_strndup(arena, v, n)))\n"
                       "            return nomem(err);\n    }\n",
                    j, f->name);
        }
    }
    sb_add(b, "    return rc;\n}\n");
}

static void emit_source(sb *b, const qfile *qf)
{
    sb_addf(b, "/* Code generated by dbkit gen from %s.sql. DO NOT EDIT. */\n", qf->base);
    sb_addf(b, "#include \"%s.h\"\n\n#include <string.h>\n", qf->base);
    bool need_nomem = false, need_stdlib = false;
    for (size_t k = 0; k < qf->nq; k++)
        if (qf->q[k].kind == K_COPYFROM)
            need_stdlib = true; /* the value array */
    if (need_stdlib)
        sb_add(b, "#include <stdlib.h>\n");
    for (size_t k = 0; k < qf->nq; k++) {
        if (qf->q[k].kind == K_MANY || qf->q[k].kind == K_COPYFROM)
            need_nomem = true; /* the row array, the value array */
        for (size_t j = 0; qf->q[k].kind == K_ONE && j < qf->q[k].ncols; j++)
            if (is_ptr(qf->q[k].cols[j].type) || qf->q[k].cols[j].type == DBK_TYPE_BLOB)
                need_nomem = true;
    }
    if (need_nomem)
        sb_add(b, "\nstatic dbk_rc nomem(dbk_error *err)\n{\n    if (err) {\n"
                  "        memset(err, 0, sizeof *err);\n        err->code = DBK_ENOMEM;\n"
                  "        memcpy(err->message, \"out of memory\", sizeof \"out of memory\");\n"
                  "    }\n"
                  "    return DBK_ENOMEM;\n}\n");
    for (size_t k = 0; k < qf->nq; k++) {
        const gquery *q = &qf->q[k];
        sb_addf(b, "\nconst char %s_sql[] =\n", q->fn);
        emit_c_string(b, q->sql, "    ");
        sb_add(b, ";\n");
        const char *np = q->nparams ? "p" : "NULL";
        switch (q->kind) {
        case K_ONE:
            emit_scan(b, q);
            sb_addf(b, "\ndbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_addf(b, ", dbk_arena *arena, %s_row *out, dbk_error *err)\n{\n", q->fn);
            emit_values(b, q, "");
            sb_addf(b, "    dbk_result *r = NULL;\n"
                       "    dbk_rc rc = dbk_db_query_row(db, %s_sql, %s, %zu, &r, err);\n"
                       "    if (rc != DBK_OK)\n        return rc;\n"
                       "    rc = %s_scan(r, 0, arena, out, err);\n"
                       "    dbk_result_free(r);\n    return rc;\n}\n",
                    q->fn, np, q->nparams, q->fn);
            break;
        case K_MANY:
            emit_scan(b, q);
            sb_addf(b, "\ndbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_addf(b, ", dbk_arena *arena, %s_row **rows, size_t *nrows, dbk_error *err)\n{\n",
                    q->fn);
            emit_values(b, q, "");
            sb_addf(b, "    dbk_result *r = NULL;\n    *rows = NULL;\n    *nrows = 0;\n"
                       "    dbk_rc rc = dbk_db_query(db, %s_sql, %s, %zu, &r, err);\n"
                       "    if (rc != DBK_OK)\n        return rc;\n"
                       "    size_t n = dbk_result_nrows(r);\n"
                       "    %s_row *v = n ? dbk_arena_alloc(arena, n * sizeof *v) : NULL;\n"
                       "    if (n && !v)\n        rc = nomem(err);\n"
                       "    for (size_t i = 0; rc == DBK_OK && i < n; i++)\n"
                       "        rc = %s_scan(r, i, arena, &v[i], err);\n"
                       "    dbk_result_free(r);\n"
                       "    if (rc != DBK_OK)\n        return rc;\n"
                       "    *rows = v;\n    *nrows = n;\n    return DBK_OK;\n}\n",
                    q->fn, np, q->nparams, q->fn, q->fn);
            break;
        case K_COPYFROM:
            sb_addf(b, "\ndbk_rc %s(dbk_db *db, const %s_params *params, size_t n, int64_t "
                       "*affected,\n    dbk_error *err)\n{\n",
                    q->fn, q->fn);
            sb_addf(b, "    static const char *const cols[%zu] = {", q->ncopy);
            for (size_t c = 0; c < q->ncopy; c++)
                sb_addf(b, "%s\"%s\"", c ? ", " : "", q->copy_cols[c]);
            sb_add(b, "};\n");
            sb_addf(b, "    if (n > SIZE_MAX / (%zu * sizeof(dbk_value)))\n"
                       "        return nomem(err);\n"
                       "    dbk_value *v = n ? malloc(n * %zu * sizeof *v) : NULL;\n"
                       "    if (n && !v)\n        return nomem(err);\n"
                       "    for (size_t i = 0; i < n; i++) {\n"
                       "        dbk_value *p = v + i * %zu;\n",
                    q->ncopy, q->ncopy, q->ncopy);
            for (size_t c = 0; c < q->ncopy; c++) {
                const gfield *f = &q->params[q->copy_param[c]];
                char expr[IDLEN * 2];
                snprintf(expr, sizeof expr, "params[i].%s", f->name);
                sb_addf(b, "        p[%zu] = ", c);
                emit_value(b, f, expr);
                sb_add(b, ";\n");
            }
            sb_addf(b, "    }\n"
                       "    dbk_rc rc = dbk_db_copy_from(db, \"%s\", cols, %zu, v, n, affected, "
                       "err);\n"
                       "    free(v);\n    return rc;\n}\n",
                    q->copy_table, q->ncopy);
            break;
        case K_EXEC:
        case K_EXECROWS:
            sb_addf(b, "\ndbk_rc %s(dbk_db *db", q->fn);
            emit_params_sig(b, q);
            sb_addf(b, "%s, dbk_error *err)\n{\n", q->kind == K_EXECROWS ? ", int64_t *affected" : "");
            emit_values(b, q, "");
            sb_addf(b, "    return dbk_db_exec(db, %s_sql, %s, %zu, %s, err);\n}\n", q->fn, np,
                    q->nparams, q->kind == K_EXECROWS ? "affected" : "NULL");
            break;
        default:
            sb_addf(b, "\ndbk_rc %s(dbk_db *db, const %s_params *params, size_t n, int64_t "
                       "*affected,\n    dbk_error *err)\n{\n",
                    q->fn, q->fn);
            if (!q->nparams)
                sb_add(b, "    (void)params;\n");
            sb_add(b, "    dbk_batch *b = NULL;\n    if (affected)\n        *affected = 0;\n"
                      "    dbk_rc rc = dbk_batch_new(&b, err);\n"
                      "    if (rc != DBK_OK)\n        return rc;\n"
                      "    for (size_t i = 0; rc == DBK_OK && i < n; i++) {\n");
            if (q->nparams) {
                sb_addf(b, "        dbk_value p[%zu] = {\n", q->nparams);
                for (size_t i = 0; i < q->nparams; i++) {
                    char expr[IDLEN * 2];
                    snprintf(expr, sizeof expr, "params[i].%s", q->params[i].name);
                    sb_add(b, "            ");
                    emit_value(b, &q->params[i], expr);
                    sb_add(b, i + 1 < q->nparams ? ",\n" : "\n");
                }
                sb_add(b, "        };\n");
            }
            sb_addf(b, "        rc = dbk_batch_add(b, %s_sql, %s, %zu, err);\n    }\n"
                       "    if (rc == DBK_OK)\n"
                       "        rc = dbk_batch_run(db, b, DBK_BATCH_ATOMIC, err);\n"
                       "    for (size_t i = 0; rc == DBK_OK && affected && i < n; i++) {\n"
                       "        int64_t a = dbk_batch_affected(b, i);\n"
                       "        if (a > 0)\n            *affected += a;\n    }\n"
                       "    dbk_batch_free(b);\n    return rc;\n}\n",
                    q->fn, np, q->nparams);
        }
    }
}

/* ---- models.h: one struct per table ---- */

static dbk_rc emit_models(dbk_conn *c, dbk__describer *d, sb *b, dbk_error *err)
{
    dbk_engine engine = dbk_db_engine(dbk_conn_db(c));
    const char *sql = dbk__dialect_of(engine)->list_tables_sql;
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(dbk_conn_db(c), sql, NULL, 0, &r, err);
    if (rc)
        return rc;
    sb_add(b, "/* Code generated by dbkit gen from the migrations. DO NOT EDIT. */\n"
              "#ifndef DBKIT_GEN_MODELS_H\n#define DBKIT_GEN_MODELS_H\n\n"
              "#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n"
              "#include <dbkit/dbkit.h>\n");
    for (size_t i = 0; i < dbk_result_nrows(r) && !rc; i++) {
        const char *t = NULL;
        if ((rc = dbk_result_get_text(r, i, 0, &t, NULL, err)) != DBK_OK)
            break;
        char q[256], tn[IDLEN];
        snprintf(q, sizeof q, "SELECT * FROM \"%.200s\"", t);
        dbk__desc desc;
        int pos;
        dbk_error e;
        if (dbk__describe(d, q, &desc, &pos, &e) != DBK_OK)
            continue;
        c_ident(t, tn, sizeof tn);
        gfield *f = calloc(desc.ncols + 1, sizeof *f);
        if (!f) {
            dbk__desc_free(&desc);
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            break;
        }
        for (size_t j = 0; j < desc.ncols; j++) {
            f[j].type = desc.cols[j].type;
            f[j].nullable = !desc.cols[j].notnull;
            dbk__strlcpy(f[j].sqltype, desc.cols[j].sqltype, sizeof f[j].sqltype);
            c_ident(desc.cols[j].name, f[j].name, sizeof f[j].name);
        }
        uniq(f, desc.ncols);
        sb_addf(b, "\n/* table %s */\ntypedef struct %s_model {\n", t, tn);
        for (size_t j = 0; j < desc.ncols; j++)
            emit_decl(b, &f[j], "    ", true);
        if (!desc.ncols)
            sb_add(b, "    char unused_;\n");
        sb_addf(b, "} %s_model;\n", tn);
        free(f);
        dbk__desc_free(&desc);
    }
    dbk_result_free(r);
    sb_add(b, "\n#endif /* DBKIT_GEN_MODELS_H */\n");
    return rc;
}

/* ---- files ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static dbk_rc list_queries(const char *dir, char ***out, size_t *n, dbk_error *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return dbk__err(err, DBK_EIO, "cannot read queries directory %.256s: %.128s", dir,
                        strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    dbk_rc rc = DBK_OK;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".sql") != 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **v = realloc(*out, cap * sizeof *v);
            if (!v) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                break;
            }
            *out = v;
        }
        if (!((*out)[*n] = strdup(e->d_name))) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (!rc && *n)
        qsort(*out, *n, sizeof **out, cmp_str);
    return rc;
}

/* Writes (or, with check, compares) one output file. */
static dbk_rc put_file(const dbk_gen_opts *o, const char *dir, const char *name, const sb *b,
                       dbk_gen_report *rep, dbk_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (b->oom)
        return dbk__err(err, DBK_ENOMEM, "out of memory generating %.256s", path);
    rep->files++;
    const char *want = b->p ? b->p : "";
    bool same = false;
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t wl = strlen(want);
        char *have = malloc(wl + 2);
        if (have) {
            size_t got = fread(have, 1, wl + 1, f);
            same = got == wl && memcmp(have, want, wl) == 0;
            free(have);
        }
        fclose(f);
    }
    if (same)
        return DBK_OK;
    if (o->check) {
        if (!rep->drift++)
            dbk__strlcpy(rep->first_drift, path, sizeof rep->first_drift);
        return DBK_OK;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f)
        return dbk__err(err, DBK_EIO, "cannot write %.256s: %.128s", tmp, strerror(errno));
    size_t wl = strlen(want);
    bool ok = fwrite(want, 1, wl, f) == wl;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return dbk__err(err, DBK_EIO, "cannot write %.256s", path);
    }
    rep->written++;
    return DBK_OK;
}

DBK_API dbk_rc dbk_gen_run(const dbk_gen_opts *opts, dbk_gen_report *rep, dbk_error *err)
{
    dbk_gen_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!opts || !opts->cfg)
        return dbk__err(err, DBK_EMISUSE, "dbk_gen_run: opts and opts->cfg must not be NULL");
    dbk_gen_opts o = *opts;
    if (!o.migrations_dir)
        o.migrations_dir = "db/migrations";
    if (!o.queries_dir)
        o.queries_dir = "db/queries";
    if (!o.out_dir)
        o.out_dir = "db/gen";

    char **names = NULL;
    size_t nnames = 0;
    qfile *files = NULL;
    dbk_testdb *tdb = NULL;
    dbk__describer *d = NULL;
    dbk_conn *conn = NULL;
    dbk_rc rc = list_queries(o.queries_dir, &names, &nnames, err);
    if (rc)
        goto out;
    files = calloc(nnames + 1, sizeof *files);
    if (!files) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nnames && !rc; i++) {
        qfile *qf = &files[i];
        size_t len = strlen(o.queries_dir) + strlen(names[i]) + 2;
        if (!(qf->path = malloc(len))) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            break;
        }
        snprintf(qf->path, len, "%s/%s", o.queries_dir, names[i]);
        snprintf(qf->base, sizeof qf->base, "%.*s", (int)(strlen(names[i]) - 4), names[i]);
        rc = parse_file(qf, err);
    }
    if (rc)
        goto out;

    dbk_testdb_opts to;
    memset(&to, 0, sizeof to);
    rc = dbk_testdb_new(o.cfg, o.migrations_dir, &to, &tdb, err);
    if (rc)
        goto out;
    rc = dbk__describer_open(dbk_testdb_config(tdb), &d, err);
    if (rc)
        goto out;
    for (size_t i = 0; i < nnames && !rc; i++)
        for (size_t k = 0; k < files[i].nq && !rc; k++) {
            rc = describe_query(d, o.cfg->engine, &files[i], &files[i].q[k], err);
            rep->queries++;
        }
    if (rc)
        goto out;
    if (!o.check && mkdir(o.out_dir, 0755) != 0 && errno != EEXIST) {
        rc = dbk__err(err, DBK_EIO, "cannot create %.256s: %.128s", o.out_dir, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < nnames && !rc; i++) {
        qfile *qf = &files[i];
        char guard[200], fname[160];
        snprintf(guard, sizeof guard, "DBKIT_GEN_");
        for (size_t k = 0; qf->base[k] && strlen(guard) + 4 < sizeof guard; k++) {
            size_t gl = strlen(guard);
            guard[gl] = isalnum((unsigned char)qf->base[k])
                            ? (char)toupper((unsigned char)qf->base[k])
                            : '_';
            guard[gl + 1] = '\0';
        }
        size_t glen = strlen(guard);
        snprintf(guard + glen, sizeof guard - glen, "_H");
        sb h = {0}, c = {0};
        emit_header(&h, qf, guard);
        emit_source(&c, qf);
        snprintf(fname, sizeof fname, "%s.h", qf->base);
        rc = put_file(&o, o.out_dir, fname, &h, rep, err);
        snprintf(fname, sizeof fname, "%s.c", qf->base);
        if (!rc)
            rc = put_file(&o, o.out_dir, fname, &c, rep, err);
        free(h.p);
        free(c.p);
    }
    if (rc)
        goto out;
    rc = dbk_conn_open(dbk_testdb_config(tdb), &conn, err);
    if (!rc) {
        sb m = {0};
        rc = emit_models(conn, d, &m, err);
        if (!rc)
            rc = put_file(&o, o.out_dir, "models.h", &m, rep, err);
        free(m.p);
    }
out:
    dbk_conn_close(conn);
    dbk__describer_close(d);
    if (tdb) {
        dbk_error ignored;
        dbk_testdb_drop(tdb, &ignored);
    }
    for (size_t i = 0; files && i < nnames; i++) {
        for (size_t k = 0; k < files[i].nq; k++) {
            free(files[i].q[k].sql);
            free(files[i].q[k].cols);
        }
        free(files[i].q);
        free(files[i].path);
    }
    free(files);
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    return rc;
}
