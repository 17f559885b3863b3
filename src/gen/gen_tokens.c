/*
 * gen_tokens.c - the SQL of an annotated query as tokens, and what the
 * tokens say that the server's describe does not: which tables a statement
 * reads and which of them an outer join can blank (nullability), the
 * column a parameter is compared with (SQLite's parameter types and the
 * parameters' names), the items of a select list. Conservative on
 * purpose: what cannot be read for sure stays nullable or untyped.
 */
#include "gen_int.h"

/* The number of a "$N" placeholder whose digits start at s: 1..65535, or 0
 * when there are none or the number is out of range (checked, never
 * overflows, unlike atoi on a long digit run). */
int dbk__gen_placeholder_num(const char *s)
{
    size_t n = 0;
    while (isdigit((unsigned char)s[n]))
        n++;
    long long v = 0;
    return dbk__parse_decimal(s, n, 1, 65535, &v) ? (int)v : 0;
}

/* ---- tokens ---- */

bool dbk__gen_ident_start(int c)
{
    return isalpha(c) || c == '_' || c >= 0x80;
}

bool dbk__gen_ident_char(int c)
{
    return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

/* Skips a string, quoted identifier, comment or dollar body starting at
 * s[i]; returns the index after it, or i when s[i] starts none. */
size_t dbk__gen_skip_quoted(const char *s, size_t i)
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
    if (s[i] == '$' && (s[i + 1] == '$' || dbk__gen_ident_start((unsigned char)s[i + 1]))) {
        size_t j = i + 1;
        while (j < n && s[j] != '$' && dbk__gen_ident_char((unsigned char)s[j]) && s[j] != '$')
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

bool dbk__gen_tokenize(const char *s, toks *out)
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
        size_t j = dbk__gen_skip_quoted(s, i);
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
            k.num = dbk__gen_placeholder_num(s + i + 1);
            i++;
            while (isdigit((unsigned char)s[i]))
                i++;
        } else if (dbk__gen_ident_start(c)) {
            size_t st = i;
            while (i < n && dbk__gen_ident_char((unsigned char)s[i]))
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

bool dbk__gen_is_kw(const tok *k, const char *kw)
{
    return k->kind == T_IDENT && strcmp(k->text, kw) == 0;
}

bool dbk__gen_is_p(const tok *k, const char *p)
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
    return dbk__gen_is_kw(k, "like") || dbk__gen_is_kw(k, "ilike");
}

/* ---- what the tokens say ---- */

void dbk__gen_shape_of(const toks *t, shape *sh)
{
    memset(sh, 0, sizeof *sh);
    for (size_t i = 0; i < t->n; i++) {
        const tok *k = &t->v[i];
        if (i == 0 && (dbk__gen_is_kw(k, "insert") || dbk__gen_is_kw(k, "update") ||
                       dbk__gen_is_kw(k, "delete")))
            sh->dml = true;
        if (dbk__gen_is_kw(k, "right") || dbk__gen_is_kw(k, "full"))
            sh->all_nullable = true;
        if (!(dbk__gen_is_kw(k, "from") || dbk__gen_is_kw(k, "join") || dbk__gen_is_kw(k, "into") ||
              dbk__gen_is_kw(k, "update")))
            continue;
        if (i + 1 >= t->n || t->v[i + 1].kind != T_IDENT)
            continue;
        size_t at = i + 1;
        if (at + 2 < t->n && dbk__gen_is_p(&t->v[at + 1], ".") && t->v[at + 2].kind == T_IDENT)
            at += 2; /* schema.table */
        bool left = dbk__gen_is_kw(k, "join") && i >= 1 &&
                    (dbk__gen_is_kw(&t->v[i - 1], "left") ||
                     (i >= 2 && dbk__gen_is_kw(&t->v[i - 1], "outer") &&
                      dbk__gen_is_kw(&t->v[i - 2], "left")));
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

bool dbk__gen_lookup(dbk__describer *d, const shape *sh, const char *col, dbk__desc_col *out)
{
    for (size_t i = 0; i < sh->ntables; i++) {
        bool found = false;
        dbk_error e;
        if (dbk__describe_column(d, sh->tables[i], col, out, &found, &e) == DBK_OK && found)
            return true;
    }
    return false;
}

dbk_type dbk__gen_type_of_name(const char *t)
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
void dbk__gen_param_context(const toks *t, size_t i, const shape *sh, char *col, dbk_type *ptype,
                            bool *typed)
{
    col[0] = '\0';
    *typed = false;
    const tok *v = t->v;
    if (i >= 1 && (dbk__gen_is_kw(&v[i - 1], "limit") || dbk__gen_is_kw(&v[i - 1], "offset"))) {
        dbk__strlcpy(col, v[i - 1].text, IDLEN);
        *ptype = DBK_TYPE_INT64;
        *typed = true;
        return;
    }
    if (i >= 2 && i + 2 < t->n && dbk__gen_is_p(&v[i - 1], "(") &&
        dbk__gen_is_kw(&v[i - 2], "cast") && dbk__gen_is_kw(&v[i + 1], "as") &&
        v[i + 2].kind == T_IDENT) {
        *ptype = dbk__gen_type_of_name(v[i + 2].text);
        *typed = true;
    }
    /* col = $n, col + $n (the column's type is the operand's) */
    if (i >= 2 && (is_cmp(&v[i - 1]) || is_arith(&v[i - 1])) && v[i - 2].kind == T_IDENT) {
        dbk__strlcpy(col, v[i - 2].text, IDLEN);
        return;
    }
    if (i + 2 < t->n && (is_cmp(&v[i + 1]) || is_arith(&v[i + 1])) && v[i + 2].kind == T_IDENT) {
        size_t at = i + 2;
        if (at + 2 < t->n && dbk__gen_is_p(&v[at + 1], ".") && v[at + 2].kind == T_IDENT)
            at += 2;
        dbk__strlcpy(col, v[at].text, IDLEN);
        return;
    }
    /* INSERT INTO t (c1, c2) VALUES ($1, $2): by position */
    if (!sh->dml || t->n < 4 || !dbk__gen_is_kw(&v[0], "insert"))
        return;
    size_t open = 0;
    for (size_t x = 0; x < t->n; x++)
        if (dbk__gen_is_p(&v[x], "(")) {
            open = x;
            break;
        }
    size_t vals = 0;
    for (size_t x = 0; x < t->n; x++)
        if (dbk__gen_is_kw(&v[x], "values")) {
            vals = x;
            break;
        }
    if (!open || !vals || vals < open || vals + 1 >= t->n || !dbk__gen_is_p(&v[vals + 1], "(") ||
        i < vals)
        return;
    /* which top-level element of the VALUES list holds token i alone */
    int depth = 0, elem = 0;
    size_t start = vals + 2;
    for (size_t x = vals + 2; x < t->n; x++) {
        if (dbk__gen_is_p(&v[x], "("))
            depth++;
        else if (dbk__gen_is_p(&v[x], ")")) {
            if (depth-- == 0)
                break;
        } else if (depth == 0 && dbk__gen_is_p(&v[x], ",")) {
            elem++;
            start = x + 1;
            continue;
        }
        if (x == i) {
            bool alone = x == start && x + 1 < t->n &&
                         (dbk__gen_is_p(&v[x + 1], ",") || dbk__gen_is_p(&v[x + 1], ")") ||
                          dbk__gen_is_p(&v[x + 1], "::"));
            if (!alone)
                return;
            break;
        }
    }
    int k = 0;
    for (size_t x = open + 1; x < vals && !dbk__gen_is_p(&v[x], ")"); x++) {
        if (v[x].kind == T_IDENT) {
            if (k == elem) {
                dbk__strlcpy(col, v[x].text, IDLEN);
                return;
            }
            k++;
        }
    }
}

size_t dbk__gen_select_items(const toks *t, item *items, size_t max)
{
    size_t start = 0;
    bool found = false;
    int depth = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (dbk__gen_is_p(&t->v[i], "("))
            depth++;
        else if (dbk__gen_is_p(&t->v[i], ")"))
            depth--;
        else if (depth == 0 &&
                 (dbk__gen_is_kw(&t->v[i], "select") || dbk__gen_is_kw(&t->v[i], "returning"))) {
            start = i + 1;
            found = true;
            if (dbk__gen_is_kw(&t->v[i], "select"))
                break; /* the first top-level SELECT; RETURNING: keep the last */
        }
    }
    if (!found)
        return 0;
    if (start < t->n && dbk__gen_is_kw(&t->v[start], "distinct"))
        start++;
    size_t n = 0, a = start;
    depth = 0;
    for (size_t i = start; i <= t->n; i++) {
        bool end = i == t->n;
        if (!end) {
            if (dbk__gen_is_p(&t->v[i], "("))
                depth++;
            else if (dbk__gen_is_p(&t->v[i], ")"))
                depth--;
            if (depth == 0 &&
                (dbk__gen_is_kw(&t->v[i], "from") || dbk__gen_is_kw(&t->v[i], "where") ||
                 dbk__gen_is_kw(&t->v[i], "union") || dbk__gen_is_kw(&t->v[i], "order") ||
                 dbk__gen_is_kw(&t->v[i], "group") || dbk__gen_is_kw(&t->v[i], "limit") ||
                 dbk__gen_is_p(&t->v[i], ";")))
                end = true;
        }
        if (end || (depth == 0 && dbk__gen_is_p(&t->v[i], ","))) {
            if (n < max && i > a) {
                size_t b = i;
                if (b >= a + 2 && dbk__gen_is_kw(&t->v[b - 2], "as"))
                    b -= 2;
                else if (b >= a + 2 && t->v[b - 1].kind == T_IDENT &&
                         (t->v[b - 2].kind == T_IDENT || dbk__gen_is_p(&t->v[b - 2], ")")) &&
                         !dbk__gen_is_p(&t->v[b - 2], "."))
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
