/*
 * The SQL scanner (sqlscan.h): one forward pass, token by token.
 *
 * Two modules used to carry a lexer each: the migration splitter had a
 * complete one, and the pool's detector of session changes had a few lines
 * that skipped comments and then searched the raw text, which quoting and
 * comments could fool (`"set_config"(...)`, or an empty comment between
 * set_config and its parenthesis). Both now read SQL through this file, so
 * a statement is cut and classified by the same rules. The rules are those
 * of the engine's own lexer (comments that nest, E'' strings, dollar
 * quotes, [names]) chosen by flags, because PostgreSQL and SQLite disagree
 * on them and a text must be read the way the engine that runs it reads it
 * (the migration splitter keeps its historical choice: dollar quotes on
 * both engines, no [names]).
 *
 * Errors are tokens: an unterminated construct ends the scan with
 * DBK__SQLTOK_ERROR, the line where it opened and what it was. Callers
 * decide what an error means (the splitter reports it; the pool assumes the
 * worst).
 */
#include <string.h>
#include <strings.h>

#include "sqlscan.h"

/* Byte classes (DBK__SQLSCAN_C_*), the same in every locale: a locale could
 * make isalpha() or isspace() true for bytes >= 0x80, which no engine's
 * lexer does. Generated from the definitions in sqlscan.h. */
const unsigned char dbk__sqlscan_cls[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  1,  1,  1,  1,  1,  0,  0,
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
     1,  0,  0,  0, 16,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26,  0,  0,  0,  0,  0,  0,
     0, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,  0,  0,  0,  0, 28,
     0, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,  0,  0,  0,  0,  0,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
};

static inline bool is(unsigned char c, unsigned char k)
{
    return (dbk__sqlscan_cls[c] & k) != 0;
}

static bool ident_start(unsigned char c)
{
    return is(c, DBK__SQLSCAN_C_START);
}

static bool ident_char(unsigned char c)
{
    return is(c, DBK__SQLSCAN_C_IDENT);
}

unsigned dbk__sqlscan_rules(dbk_engine engine)
{
    if (engine == DBK_ENGINE_SQLITE)
        return DBK__SQLSCAN_BRACKETS;
    return DBK__SQLSCAN_NESTED_COMMENTS | DBK__SQLSCAN_E_STRINGS | DBK__SQLSCAN_DOLLAR_QUOTES;
}

void dbk__sqlscan_init(dbk__sqlscan *s, const char *text, size_t len, int first_line,
                       unsigned rules)
{
    memset(s, 0, sizeof *s);
    s->text = text;
    s->len = text ? len : 0;
    s->line = first_line;
    s->rules = rules;
    s->tok = DBK__SQLTOK_END;
}

static dbk__sqltok fail(dbk__sqlscan *s, size_t off, int line, const char *what)
{
    s->err_off = off;
    s->err_line = line;
    s->err_what = what;
    s->pos = s->len;
    s->n = 0;
    return s->tok = DBK__SQLTOK_ERROR;
}

static dbk__sqltok emit(dbk__sqlscan *s, dbk__sqltok tok, size_t off, int line)
{
    s->tok = tok;
    s->off = off;
    s->n = s->pos - off;
    s->tok_line = line;
    return tok;
}

/* Skips whitespace and comments. Returns false on an unterminated comment
 * (the error is set). */
static bool skip_blank(dbk__sqlscan *s)
{
    const char *t = s->text;
    size_t len = s->len, i = s->pos;
    for (;;) {
        while (i < len && is((unsigned char)t[i], DBK__SQLSCAN_C_SPACE)) {
            if (t[i] == '\n')
                s->line++;
            i++;
        }
        if (i + 1 < len && t[i] == '-' && t[i + 1] == '-') {
            while (i < len && t[i] != '\n')
                i++;
            continue;
        }
        if (i + 1 < len && t[i] == '/' && t[i + 1] == '*') {
            int open_line = s->line, nest = 1;
            size_t open_off = i;
            i += 2;
            while (i < len && nest > 0) {
                if (t[i] == '\n') {
                    s->line++;
                    i++;
                } else if (t[i] == '*' && i + 1 < len && t[i + 1] == '/') {
                    nest--;
                    i += 2;
                } else if ((s->rules & DBK__SQLSCAN_NESTED_COMMENTS) && t[i] == '/' &&
                           i + 1 < len && t[i + 1] == '*') {
                    nest++;
                    i += 2;
                } else {
                    i++;
                }
            }
            if (nest > 0) {
                fail(s, open_off, open_line, "unterminated /* comment");
                return false;
            }
            continue;
        }
        s->pos = i;
        return true;
    }
}

/* A quoted string or name opening at s->pos with quote byte q (close is the
 * closing byte: q itself, or ']' for '['). */
static dbk__sqltok quoted(dbk__sqlscan *s, char q, char close)
{
    const char *t = s->text;
    size_t len = s->len, i = s->pos;
    size_t off = i;
    int open_line = s->line;
    bool backslash = q == '\'' && (s->rules & DBK__SQLSCAN_E_STRINGS) && i > 0 &&
                     (t[i - 1] == 'E' || t[i - 1] == 'e') &&
                     (i < 2 || !ident_char((unsigned char)t[i - 2]));
    i++;
    while (i < len) {
        if (t[i] == '\n')
            s->line++;
        if (backslash && t[i] == '\\' && i + 1 < len) {
            if (t[i + 1] == '\n')
                s->line++;
            i += 2;
            continue;
        }
        if (t[i] == close) {
            if (q == close && i + 1 < len && t[i + 1] == close) { /* doubled quote */
                i += 2;
                continue;
            }
            s->pos = i + 1;
            return emit(s, q == '\'' ? DBK__SQLTOK_STRING : DBK__SQLTOK_QNAME, off, open_line);
        }
        i++;
    }
    return fail(s, off, open_line,
                q == '\'' ? "unterminated quoted string" : "unterminated quoted identifier");
}

/* At a '$': a dollar-quoted body ($$...$$, $tag$...$tag$) or a lone '$'. */
static dbk__sqltok dollar(dbk__sqlscan *s)
{
    const char *t = s->text;
    size_t len = s->len, i = s->pos;
    size_t off = i;
    int open_line = s->line;
    if (s->rules & DBK__SQLSCAN_DOLLAR_QUOTES) {
        size_t j = i + 1;
        if (j < len && ident_start((unsigned char)t[j])) {
            j++;
            while (j < len && is((unsigned char)t[j], DBK__SQLSCAN_C_TAG))
                j++;
        }
        if (j < len && t[j] == '$') {
            size_t taglen = j + 1 - i; /* both '$' included */
            const char *tag = t + i;
            i = j + 1;
            while (i < len) {
                if (t[i] == '\n')
                    s->line++;
                if (t[i] == '$' && len - i >= taglen && memcmp(t + i, tag, taglen) == 0) {
                    s->pos = i + taglen;
                    return emit(s, DBK__SQLTOK_STRING, off, open_line);
                }
                i++;
            }
            return fail(s, off, open_line, "unterminated dollar-quoted body");
        }
    }
    s->pos = i + 1;
    return emit(s, DBK__SQLTOK_DOLLAR, off, open_line);
}

dbk__sqltok dbk__sqlscan_next(dbk__sqlscan *s)
{
    if (s->tok == DBK__SQLTOK_ERROR)
        return s->tok;
    if (!skip_blank(s))
        return s->tok;
    const char *t = s->text;
    size_t len = s->len, i = s->pos;
    if (i >= len) {
        s->off = len;
        s->n = 0;
        s->tok_line = s->line;
        return s->tok = DBK__SQLTOK_END;
    }
    unsigned char c = (unsigned char)t[i];
    int line = s->line;
    if (c == '\'' || c == '"' || c == '`')
        return quoted(s, (char)c, (char)c);
    if (c == '[' && (s->rules & DBK__SQLSCAN_BRACKETS))
        return quoted(s, '[', ']');
    if (c == '$')
        return dollar(s);
    if (ident_start(c)) {
        while (i < len && ident_char((unsigned char)t[i]))
            i++;
        size_t off = s->pos;
        s->pos = i;
        return emit(s, DBK__SQLTOK_WORD, off, line);
    }
    if (is(c, DBK__SQLSCAN_C_DIGIT)) {
        while (i < len && (is((unsigned char)t[i], DBK__SQLSCAN_C_TAG) || t[i] == '.') &&
               (unsigned char)t[i] < 0x80)
            i++;
        size_t off = s->pos;
        s->pos = i;
        return emit(s, DBK__SQLTOK_NUMBER, off, line);
    }
    s->pos = i + 1;
    return emit(s, c == ';' ? DBK__SQLTOK_SEMI : DBK__SQLTOK_PUNCT, i, line);
}

bool dbk__sqlscan_is(const dbk__sqlscan *s, const char *kw)
{
    size_t n = strlen(kw);
    return s->tok == DBK__SQLTOK_WORD && s->n == n && strncasecmp(s->text + s->off, kw, n) == 0;
}

bool dbk__sqlscan_punct(const dbk__sqlscan *s, char c)
{
    return s->tok == DBK__SQLTOK_PUNCT && s->text[s->off] == c;
}
