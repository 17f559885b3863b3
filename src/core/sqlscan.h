/*
 * The SQL scanner shared by every module that must find its way through SQL
 * text without parsing it: the migration splitter (src/migrate/parse.c)
 * cuts files into statements with it, and the pool (src/pool/pool.c) reads
 * statements with it to see which of them change the session.
 *
 * It is lexical only: it turns text into tokens (words, quoted names,
 * strings, numbers, punctuation) and skips whitespace and comments; what the
 * tokens mean is the caller's business. It never allocates, never reads
 * past `len`, and is O(n): each byte is looked at a bounded number of times.
 * Not thread-safe per scanner; scanners are plain values on the stack.
 */
#ifndef DBK_SQLSCAN_H
#define DBK_SQLSCAN_H

#include <stdbool.h>
#include <stddef.h>

#include "dbkit/config.h"

/* Lexical rules, combined with '|'. dbk__sqlscan_rules() gives the rules
 * of an engine's own lexer. */
enum {
    DBK__SQLSCAN_NESTED_COMMENTS = 1 << 0, /* slash-star comments nest (PostgreSQL) */
    DBK__SQLSCAN_E_STRINGS = 1 << 1,       /* E'...' takes backslash escapes (PostgreSQL) */
    DBK__SQLSCAN_DOLLAR_QUOTES = 1 << 2,   /* $tag$ ... $tag$ bodies (PostgreSQL) */
    DBK__SQLSCAN_BRACKETS = 1 << 3,        /* [name] is a quoted name (SQLite) */
};

/* The rules of the engine's own lexer: PostgreSQL (and 0, unknown) nest
 * comments and know E'' strings and dollar quotes; SQLite knows [names]. */
unsigned dbk__sqlscan_rules(dbk_engine engine);

/* Byte classes of dbk__sqlscan_cls (bits). */
enum {
    DBK__SQLSCAN_C_SPACE = 1,  /* ' ', \t \n \v \f \r */
    DBK__SQLSCAN_C_DIGIT = 2,  /* 0-9 */
    DBK__SQLSCAN_C_START = 4,  /* starts a word: A-Z a-z _ and bytes >= 0x80 */
    DBK__SQLSCAN_C_TAG = 8,    /* in a dollar-quote tag: the above and digits */
    DBK__SQLSCAN_C_IDENT = 16, /* in a word: the above and '$' */
};
extern const unsigned char dbk__sqlscan_cls[256];

typedef enum dbk__sqltok {
    DBK__SQLTOK_END = 0, /* no more tokens */
    DBK__SQLTOK_WORD,    /* keyword or unquoted name: a letter, '_' or byte >= 0x80, then
                          * letters, digits, '_', '$', bytes >= 0x80 */
    DBK__SQLTOK_QNAME,   /* "quoted name", `quoted name`, [quoted name] */
    DBK__SQLTOK_STRING,  /* '...' (the E of E'...' is a WORD of its own before it), or a
                          * dollar-quoted body */
    DBK__SQLTOK_NUMBER,  /* a digit, then letters, digits, '.', '_' */
    DBK__SQLTOK_DOLLAR,  /* a '$' that opens no dollar quote ($1 is DOLLAR then NUMBER) */
    DBK__SQLTOK_SEMI,    /* ; */
    DBK__SQLTOK_PUNCT,   /* any other byte */
    DBK__SQLTOK_ERROR    /* an unterminated comment, string, name or dollar body */
} dbk__sqltok;

typedef struct dbk__sqlscan {
    const char *text;
    size_t len;
    size_t pos; /* next byte to read */
    int line;   /* line of pos (1-based when started at 1) */
    unsigned rules;
    /* The token just read: text[off, off + n), quotes included. */
    dbk__sqltok tok;
    size_t off, n;
    int tok_line;
    /* On DBK__SQLTOK_ERROR: what is unterminated (static text), the line
     * and the byte offset where it opened. */
    const char *err_what;
    int err_line;
    size_t err_off;
} dbk__sqlscan;

/* Starts scanning text[0, len) (NUL bytes are ordinary bytes), counting
 * lines from first_line. */
void dbk__sqlscan_init(dbk__sqlscan *s, const char *text, size_t len, int first_line,
                       unsigned rules);

/* Reads the next token, skipping whitespace and comments; returns its kind
 * (also in s->tok). After END or ERROR it keeps returning the same. */
dbk__sqltok dbk__sqlscan_next(dbk__sqlscan *s);

/* True when the current token is a WORD equal to kw, ignoring ASCII case. */
bool dbk__sqlscan_is(const dbk__sqlscan *s, const char *kw);

/* True when the current token is PUNCT c. */
bool dbk__sqlscan_punct(const dbk__sqlscan *s, char c);

#endif
