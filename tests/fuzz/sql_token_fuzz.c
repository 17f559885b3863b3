/*
 * libFuzzer target: the public SQL scanner (dbk_sql_next_token,
 * dbkit/sqlscan.h).
 *
 * Each input is scanned whole with PostgreSQL's and SQLite's rules, the
 * bytes as they are (NUL bytes included, the length passed). Beyond "no
 * crash, no UB, never past len", every token is checked: it lies inside
 * the input, is non-empty, starts after the previous one ended, the
 * position only moves forward, quoted tokens start and end with their
 * quotes, an error comes last, with the rest of the text as its span and
 * DBK_EINVALID, and the scan ends within len + 1 calls. Every fourth token
 * the scan is also resumed from the token's end and must give the same
 * next token. The checks trap, so a broken invariant is a crash libFuzzer
 * keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a
 * copy of tests/fuzz/corpus/sql_token so new inputs stay out of git.
 */
#include <stdint.h>
#include <string.h>

#include "dbkit/sqlscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_scan(const char *t, size_t len, dbk_engine engine)
{
    size_t pos = 0, prev_end = 0;
    for (size_t calls = 0;; calls++) {
        if (calls > len + 1)
            __builtin_trap();
        dbk_sql_token k;
        dbk_error err;
        size_t before = pos;
        dbk_rc rc = dbk_sql_next_token(t, len, engine, &pos, &k, &err);
        if (rc == DBK_EINVALID) {
            if (k.kind != DBK_SQL_TOKEN_ERROR || !k.error || pos != len ||
                k.offset < prev_end || k.offset + k.length != len || k.length == 0)
                __builtin_trap();
            /* an error stays at the end */
            if (dbk_sql_next_token(t, len, engine, &pos, &k, &err) != DBK_OK ||
                k.kind != DBK_SQL_TOKEN_END)
                __builtin_trap();
            return;
        }
        if (rc != DBK_OK || pos < before || pos > len)
            __builtin_trap();
        if (k.kind == DBK_SQL_TOKEN_END) {
            if (pos != len || k.length != 0)
                __builtin_trap();
            return;
        }
        if (k.kind < DBK_SQL_TOKEN_WORD || k.kind > DBK_SQL_TOKEN_PUNCT || k.length == 0 ||
            k.offset < prev_end || k.offset + k.length > len || pos != k.offset + k.length)
            __builtin_trap();
        const char *s = t + k.offset;
        char last = s[k.length - 1];
        if (k.kind == DBK_SQL_TOKEN_QUOTED_NAME &&
            !(k.length >= 2 && ((s[0] == '[' && last == ']') || (s[0] != '[' && last == s[0]))))
            __builtin_trap();
        if (k.kind == DBK_SQL_TOKEN_STRING && !(k.length >= 2 && last == s[0]))
            __builtin_trap();
        if (k.kind == DBK_SQL_TOKEN_SEMICOLON && s[0] != ';')
            __builtin_trap();
        if (calls % 4 == 0) {
            size_t p2 = k.offset + k.length, p1 = pos;
            dbk_sql_token a, b;
            dbk_rc ra = dbk_sql_next_token(t, len, engine, &p1, &a, NULL);
            dbk_rc rb = dbk_sql_next_token(t, len, engine, &p2, &b, NULL);
            if (ra != rb || a.kind != b.kind || a.offset != b.offset || a.length != b.length ||
                p1 != p2)
                __builtin_trap();
        }
        prev_end = k.offset + k.length;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 100000)
        return 0;
    const char *t = (const char *)data;
    check_scan(t, size, DBK_ENGINE_POSTGRES);
    check_scan(t, size, DBK_ENGINE_SQLITE);
    return 0;
}
