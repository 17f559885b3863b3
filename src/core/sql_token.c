/*
 * dbk_sql_next_token (dbkit/sqlscan.h): the SQL scanner of sqlscan.c for
 * programs, one token per call.
 *
 * Why stateless. The internal scanner is a struct on the caller's stack;
 * publishing it would freeze its layout in the ABI. Between two tokens the
 * scanner carries no state but the position (comments and quotes never
 * span a token boundary; the only look-behind, E'...', reads the byte
 * before the quote, which is in the text), so the public call takes the
 * text and a position and starts a fresh internal scanner there: the same
 * rules and the same tokens as the library's own readers, nothing to free,
 * and O(n) over a whole text. Line numbers are the internal scanner's
 * business (they would cost a count from the start on every call); errors
 * name the byte offset instead.
 */
#include "internal.h"
#include "sqlscan.h"

#include "dbkit/sqlscan.h"

/* The internal kinds in the order of the public numbers. */
static dbk_sql_token_kind public_kind(dbk__sqltok t)
{
    switch (t) {
    case DBK__SQLTOK_END: return DBK_SQL_TOKEN_END;
    case DBK__SQLTOK_WORD: return DBK_SQL_TOKEN_WORD;
    case DBK__SQLTOK_QNAME: return DBK_SQL_TOKEN_QUOTED_NAME;
    case DBK__SQLTOK_STRING: return DBK_SQL_TOKEN_STRING;
    case DBK__SQLTOK_NUMBER: return DBK_SQL_TOKEN_NUMBER;
    case DBK__SQLTOK_DOLLAR: return DBK_SQL_TOKEN_DOLLAR;
    case DBK__SQLTOK_SEMI: return DBK_SQL_TOKEN_SEMICOLON;
    case DBK__SQLTOK_PUNCT: return DBK_SQL_TOKEN_PUNCT;
    case DBK__SQLTOK_ERROR: break;
    }
    return DBK_SQL_TOKEN_ERROR;
}

DBK_API dbk_rc dbk_sql_next_token(const char *sql, size_t len, dbk_engine engine, size_t *pos,
                                  dbk_sql_token *tok, dbk_error *err)
{
    if (tok) {
        tok->kind = DBK_SQL_TOKEN_ERROR;
        tok->offset = 0;
        tok->length = 0;
        tok->error = NULL;
    }
    if (!pos || !tok)
        return dbk__err(err, DBK_EMISUSE, "dbk_sql_next_token: %s is NULL", !pos ? "pos" : "tok");
    if (!sql && len > 0)
        return dbk__err(err, DBK_EMISUSE, "dbk_sql_next_token: sql is NULL but len is %zu", len);
    if (*pos > len)
        return dbk__err(err, DBK_EMISUSE, "dbk_sql_next_token: pos %zu is past the end (%zu)",
                        *pos, len);
    dbk__sqlscan s;
    dbk__sqlscan_init(&s, sql, len, 1, dbk__sqlscan_rules(engine));
    s.pos = *pos;
    dbk__sqltok t = dbk__sqlscan_next(&s);
    if (t == DBK__SQLTOK_ERROR) {
        size_t open = s.err_off;
        tok->offset = open;
        tok->length = len - open;
        tok->error = s.err_what;
        *pos = len;
        dbk__err(err, DBK_EINVALID, "%s at byte %zu", s.err_what, open);
        dbk__err_hint(err, "close it: a string with ', a quoted name with its quote, a "
                           "comment with */, a dollar-quoted body with its $tag$");
        return DBK_EINVALID;
    }
    tok->kind = public_kind(t);
    tok->offset = s.off;
    tok->length = s.n;
    *pos = s.pos;
    return DBK_OK;
}
