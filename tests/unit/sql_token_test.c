/*
 * The public SQL scanner (dbkit/sqlscan.h, dbk_sql_next_token) without a
 * server: token kinds and spans per engine (comments, nested comments,
 * E'' strings, $tag$ bodies, quoted and bracketed names, $n), bytes that
 * are not UTF-8 and NUL bytes as ordinary bytes, empty text, every
 * unterminated construct (DBK_EINVALID naming it and its offset, never the
 * text), misuse, and resuming a scan where a token ended.
 */
#include <string.h>

#include "dbkit/sqlscan.h"
#include "testutil.h"

#define PG DBK_ENGINE_POSTGRES
#define SQ DBK_ENGINE_SQLITE

/* Scans all of sql[0, len) into kinds[] and the tokens' text joined by
 * '|' into spans; returns the result code of the last call. */
static dbk_rc scan(const char *sql, size_t len, dbk_engine eng, int *kinds, size_t max,
                   size_t *n, char *spans, size_t spanlen, dbk_error *err)
{
    size_t pos = 0, o = 0;
    *n = 0;
    spans[0] = '\0';
    for (size_t guard = 0; guard <= len + 1; guard++) {
        dbk_sql_token t;
        dbk_rc rc = dbk_sql_next_token(sql, len, eng, &pos, &t, err);
        if (rc != DBK_OK || t.kind == DBK_SQL_TOKEN_END)
            return rc;
        assert_true(t.offset + t.length <= len);
        assert_true(pos >= t.offset + t.length && pos <= len);
        assert_true(t.length > 0);
        if (*n < max)
            kinds[(*n)++] = t.kind;
        if (o + t.length + 2 < spanlen) {
            if (o)
                spans[o++] = '|';
            memcpy(spans + o, sql + t.offset, t.length);
            o += t.length;
            spans[o] = '\0';
        }
    }
    fail_msg("the scan did not end within len + 1 calls");
    return DBK_EINVALID;
}

static void expect(const char *sql, dbk_engine eng, const char *want_spans, const int *want,
                   size_t nwant)
{
    int kinds[64];
    size_t n = 0;
    char spans[1024];
    dbk_error err;
    DBKT_OK(scan(sql, strlen(sql), eng, kinds, 64, &n, spans, sizeof spans, &err), &err);
    if (strcmp(spans, want_spans) != 0)
        fail_msg("%s: tokens \"%s\", want \"%s\"", sql, spans, want_spans);
    assert_int_equal(n, nwant);
    for (size_t i = 0; i < nwant; i++)
        if (kinds[i] != want[i])
            fail_msg("%s: token %zu is kind %d, want %d", sql, i, kinds[i], want[i]);
}

enum {
    W = DBK_SQL_TOKEN_WORD,
    Q = DBK_SQL_TOKEN_QUOTED_NAME,
    S = DBK_SQL_TOKEN_STRING,
    N = DBK_SQL_TOKEN_NUMBER,
    D = DBK_SQL_TOKEN_DOLLAR,
    SEMI = DBK_SQL_TOKEN_SEMICOLON,
    P = DBK_SQL_TOKEN_PUNCT
};

static void sql_token_kinds_and_spans(void **state)
{
    (void)state;
    expect("SELECT a, \"B\" FROM t WHERE x = $1::int;", PG,
           "SELECT|a|,|\"B\"|FROM|t|WHERE|x|=|$|1|:|:|int|;",
           (const int[]){W, W, P, Q, W, W, W, W, P, D, N, P, P, W, SEMI}, 15);
    expect("x1$y 12.5e3 _z", PG, "x1$y|12.5e3|_z", (const int[]){W, N, W}, 3);
}

static void sql_token_comments(void **state)
{
    (void)state;
    expect("a -- line\nb /* block */ c", PG, "a|b|c", (const int[]){W, W, W}, 3);
    expect("a --", SQ, "a", (const int[]){W}, 1);
    expect("a/**/b", SQ, "a|b", (const int[]){W, W}, 2);
    /* nested on PostgreSQL; on SQLite the first star-slash ends it */
    expect("a /* x /* y */ z */ b", PG, "a|b", (const int[]){W, W}, 2);
    expect("a /* x /* y */ z */ b", SQ, "a|z|*|/|b", (const int[]){W, W, P, P, W}, 5);
    /* quotes in comments and comments in quotes */
    expect("/* 'x */ 'a -- b' \"c /* d\"", PG, "'a -- b'|\"c /* d\"", (const int[]){S, Q}, 2);
}

static void sql_token_strings_and_names(void **state)
{
    (void)state;
    expect("'it''s' E'a\\'b' e'\\\\' x'00'", PG, "'it''s'|E|'a\\'b'|e|'\\\\'|x|'00'",
           (const int[]){S, W, S, W, S, W, S}, 7);
    /* no backslash escapes on SQLite: the second quote ends the string */
    expect("E'a\\' b", SQ, "E|'a\\'|b", (const int[]){W, S, W}, 3);
    expect("$$a;b$$ $tag$ $$ x $tag$ $1", PG, "$$a;b$$|$tag$ $$ x $tag$|$|1",
           (const int[]){S, S, D, N}, 4);
    /* SQLite has no dollar quotes */
    expect("$$a$$", SQ, "$|$|a$$", (const int[]){D, D, W}, 3);
    expect("\"a\"\"b\" `c``d` [e f]", SQ, "\"a\"\"b\"|`c``d`|[e f]", (const int[]){Q, Q, Q}, 3);
    /* [ is punctuation on PostgreSQL (arrays) */
    expect("a[1]", PG, "a|[|1|]", (const int[]){W, P, N, P}, 4);
}

static void sql_token_bytes_are_bytes(void **state)
{
    (void)state;
    /* bytes >= 0x80, valid UTF-8 or not, belong to words */
    expect("SELECT caf\xc3\xa9, \xff\xfe", PG, "SELECT|caf\xc3\xa9|,|\xff\xfe",
           (const int[]){W, W, P, W}, 4);
    expect("'\xc3('", SQ, "'\xc3('", (const int[]){S}, 1);
    /* a NUL is an ordinary byte, inside a string too */
    static const char nul[] = "a\0b '\0'";
    int kinds[8];
    size_t n = 0;
    char spans[64];
    dbk_error err;
    DBKT_OK(scan(nul, sizeof nul - 1, PG, kinds, 8, &n, spans, sizeof spans, &err), &err);
    assert_int_equal(n, 4);
    assert_int_equal(kinds[0], W);
    assert_int_equal(kinds[1], P);
    assert_int_equal(kinds[2], W);
    assert_int_equal(kinds[3], S);
}

static void sql_token_empty_and_blank(void **state)
{
    (void)state;
    static const char *const blank[] = {"", " \t\r\n\v\f", "-- only a comment", "/* */",
                                        "/* a /* b */ */"};
    for (size_t i = 0; i < sizeof blank / sizeof blank[0]; i++) {
        size_t pos = 0;
        dbk_sql_token t;
        dbk_error err;
        DBKT_OK(dbk_sql_next_token(blank[i], strlen(blank[i]), PG, &pos, &t, &err), &err);
        assert_int_equal(t.kind, DBK_SQL_TOKEN_END);
        assert_int_equal(t.length, 0);
        assert_int_equal(pos, strlen(blank[i]));
        assert_null(t.error);
        /* END again at the end */
        DBKT_OK(dbk_sql_next_token(blank[i], strlen(blank[i]), PG, &pos, &t, &err), &err);
        assert_int_equal(t.kind, DBK_SQL_TOKEN_END);
    }
    size_t pos = 0;
    dbk_sql_token t;
    dbk_error err;
    DBKT_OK(dbk_sql_next_token(NULL, 0, PG, &pos, &t, &err), &err);
    assert_int_equal(t.kind, DBK_SQL_TOKEN_END);
}

static void sql_token_unterminated(void **state)
{
    (void)state;
    static const struct {
        const char *sql;
        dbk_engine eng;
        size_t off;
        const char *what;
    } cases[] = {
        {"a 's3cret", PG, 2, "unterminated quoted string"},
        {"a \"s3cret", PG, 2, "unterminated quoted identifier"},
        {"a `s3cret", SQ, 2, "unterminated quoted identifier"},
        {"a [s3cret", SQ, 2, "unterminated quoted identifier"},
        {"a /* s3cret", SQ, 2, "unterminated /* comment"},
        {"a /* /* */ s3cret", PG, 2, "unterminated /* comment"},
        {"a /**/ $x$ s3cret", PG, 7, "unterminated dollar-quoted body"},
        {"E'\\'", PG, 1, "unterminated quoted string"},
        {"'", SQ, 0, "unterminated quoted string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *sql = cases[i].sql;
        size_t len = strlen(sql), pos = 0;
        dbk_sql_token t;
        dbk_error err;
        dbk_rc rc;
        for (int g = 0; g < 10; g++) {
            rc = dbk_sql_next_token(sql, len, cases[i].eng, &pos, &t, &err);
            if (rc != DBK_OK || t.kind == DBK_SQL_TOKEN_END)
                break;
        }
        if (rc != DBK_EINVALID)
            fail_msg("%s: %s, want DBK_EINVALID", sql, dbk_rc_name(rc));
        assert_int_equal(t.kind, DBK_SQL_TOKEN_ERROR);
        assert_int_equal(t.offset, cases[i].off);
        assert_int_equal(t.length, len - cases[i].off);
        assert_string_equal(t.error, cases[i].what);
        assert_int_equal(pos, len);
        assert_non_null(strstr(err.message, cases[i].what));
        assert_null(strstr(err.message, "s3cret"));
        assert_non_null(strstr(err.hint, "close it"));
        assert_int_equal(err.code, DBK_EINVALID);
    }
}

static void sql_token_misuse(void **state)
{
    (void)state;
    size_t pos = 0;
    dbk_sql_token t;
    dbk_error err;
    DBKT_RC(DBK_EMISUSE, dbk_sql_next_token("a", 1, PG, NULL, &t, &err));
    assert_int_equal(t.kind, DBK_SQL_TOKEN_ERROR);
    assert_non_null(strstr(err.message, "pos"));
    DBKT_RC(DBK_EMISUSE, dbk_sql_next_token("a", 1, PG, &pos, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_sql_next_token(NULL, 3, PG, &pos, &t, &err));
    pos = 5;
    DBKT_RC(DBK_EMISUSE, dbk_sql_next_token("abc", 3, PG, &pos, &t, &err));
    assert_int_equal(pos, 5);
    DBKT_RC(DBK_EMISUSE, dbk_sql_next_token("abc", 3, PG, &pos, &t, NULL)); /* err optional */
    /* len bounds the text: nothing past it is read */
    pos = 0;
    DBKT_OK(dbk_sql_next_token("ab'cd", 2, PG, &pos, &t, &err), &err);
    assert_int_equal(t.kind, DBK_SQL_TOKEN_WORD);
    assert_int_equal(t.length, 2);
}

/* A scan resumed at any token end gives the same tokens as one pass, and
 * an unknown engine reads like PostgreSQL. */
static void sql_token_resume_and_engines(void **state)
{
    (void)state;
    const char *sql = "SELECT E'x\\'y', $a$ ; $a$, \"q\" FROM t /* c /* n */ */ WHERE id = $2;";
    size_t len = strlen(sql);
    dbk_sql_token all[64];
    size_t n = 0, pos = 0;
    dbk_error err;
    for (; n < 64; n++) {
        DBKT_OK(dbk_sql_next_token(sql, len, PG, &pos, &all[n], &err), &err);
        if (all[n].kind == DBK_SQL_TOKEN_END)
            break;
    }
    assert_true(n > 10 && n < 64);
    for (size_t k = 0; k < n; k++) {
        size_t p = all[k].offset + all[k].length;
        dbk_sql_token t;
        DBKT_OK(dbk_sql_next_token(sql, len, PG, &p, &t, &err), &err);
        assert_int_equal(t.kind, all[k + 1].kind);
        assert_int_equal(t.offset, all[k + 1].offset);
        assert_int_equal(t.length, all[k + 1].length);
        /* engine 0 and an unknown value: PostgreSQL's rules */
        p = all[k].offset + all[k].length;
        DBKT_OK(dbk_sql_next_token(sql, len, (dbk_engine)0, &p, &t, &err), &err);
        assert_int_equal(t.offset, all[k + 1].offset);
        p = all[k].offset + all[k].length;
        DBKT_OK(dbk_sql_next_token(sql, len, (dbk_engine)77, &p, &t, &err), &err);
        assert_int_equal(t.length, all[k + 1].length);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sql_token_kinds_and_spans),
    cmocka_unit_test(sql_token_comments),
    cmocka_unit_test(sql_token_strings_and_names),
    cmocka_unit_test(sql_token_bytes_are_bytes),
    cmocka_unit_test(sql_token_empty_and_blank),
    cmocka_unit_test(sql_token_unterminated),
    cmocka_unit_test(sql_token_misuse),
    cmocka_unit_test(sql_token_resume_and_engines),
};

DBKT_MAIN(tests)
