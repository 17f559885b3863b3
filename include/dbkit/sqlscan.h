/*
 * dbkit/sqlscan.h - SQL text as tokens, read the way the engine reads it.
 *
 * The library's own SQL scanner (the one the migration splitter and the
 * pool's detector of session changes use) for programs that must find
 * their way through SQL text without parsing it: keywords, names,
 * parameters, the end of a statement. It is lexical only: whitespace and
 * comments are skipped, strings and quoted names are single tokens with
 * their quotes, and what the tokens mean is the caller's business.
 *
 * Rules follow the engine's lexer: PostgreSQL nests slash-star comments and
 * knows E'...' strings (backslash escapes) and $tag$ ... $tag$ bodies;
 * SQLite knows [bracketed names]. Both know -- comments, '...' strings
 * with doubled quotes, "quoted" and `quoted` names.
 *
 * Bytes are bytes: a NUL is an ordinary (punctuation) byte, bytes >= 0x80
 * belong to words whatever their UTF-8 validity (the engine judges
 * encodings, not the scanner). Nothing is allocated; every call is O(the
 * token's length plus the blanks before it) and never reads outside
 * sql[0, len).
 *
 * Thread safety: stateless; any number of threads may scan, the same text
 * included.
 */
#ifndef DBKIT_SQLSCAN_H
#define DBKIT_SQLSCAN_H

#include <stddef.h>

#include "config.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a token is. Numbers are given once and never reused. */
typedef enum dbk_sql_token_kind {
    DBK_SQL_TOKEN_END = 0,         /* no more tokens (length 0, offset len) */
    DBK_SQL_TOKEN_WORD = 1,        /* keyword or unquoted name: a letter, '_' or byte >= 0x80,
                                    * then those, digits and '$' */
    DBK_SQL_TOKEN_QUOTED_NAME = 2, /* "name", `name`, [name] (SQLite), quotes included */
    DBK_SQL_TOKEN_STRING = 3,      /* '...' (the E of E'...' is a WORD before it) or a
                                    * dollar-quoted body, quotes included */
    DBK_SQL_TOKEN_NUMBER = 4,      /* a digit, then letters, digits, '_' and '.' */
    DBK_SQL_TOKEN_DOLLAR = 5,      /* a '$' that opens no dollar quote: $1 is DOLLAR, NUMBER */
    DBK_SQL_TOKEN_SEMICOLON = 6,   /* ; */
    DBK_SQL_TOKEN_PUNCT = 7,       /* any other single byte (operators come byte by byte) */
    DBK_SQL_TOKEN_ERROR = 8        /* an unterminated comment, string, name or dollar body */
} dbk_sql_token_kind;

/* One token: sql[offset, offset + length). */
typedef struct dbk_sql_token {
    dbk_sql_token_kind kind;
    size_t offset;
    size_t length;
    /* DBK_SQL_TOKEN_ERROR: what is unterminated ("unterminated quoted
     * string", ...; static text), else NULL. */
    const char *error;
} dbk_sql_token;

/*
 * Reads the token of sql[0, len) that starts at or after *pos (start with
 * *pos = 0), skipping whitespace and comments, into *tok, and moves *pos
 * past it. `engine` chooses the lexical rules (0 or any unknown value:
 * PostgreSQL's). The text before *pos is looked at only to tell E'...'
 * from a word ending in E, so a scan may resume anywhere a token ended.
 *
 * DBK_OK: a token, or DBK_SQL_TOKEN_END at the end of the text (then *pos
 * is len). DBK_EINVALID: an unterminated construct; tok->kind is
 * DBK_SQL_TOKEN_ERROR, tok->offset where it opened, tok->length the rest of
 * the text, *pos len; the message names what and the byte offset (never
 * the text itself), the hint how to close it. DBK_EMISUSE: pos or tok
 * NULL, sql NULL with len > 0, or *pos > len; *pos is then unchanged and
 * tok (when not NULL) an ERROR token of length 0 with error NULL.
 */
DBK_API dbk_rc dbk_sql_next_token(const char *sql, size_t len, dbk_engine engine, size_t *pos,
                                  dbk_sql_token *tok, dbk_error *err);

#ifdef __cplusplus
}
#endif

#endif
