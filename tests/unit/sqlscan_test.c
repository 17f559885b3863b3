/* dbkit:valgrind
 * The shared SQL scanner (src/core/sqlscan.h): tokens, comments and
 * quotes per engine, unterminated input, line numbers. No server. */
#include <string.h>

#include "core/sqlscan.h"
#include "testutil.h"

/* Scans sql with rules and writes the token kinds into kinds (up to max);
 * returns how many tokens before END (ERROR included). */
static size_t scan_all(const char *sql, unsigned rules, dbk__sqltok *kinds, size_t max)
{
    dbk__sqlscan s;
    dbk__sqlscan_init(&s, sql, strlen(sql), 1, rules);
    size_t n = 0;
    for (;;) {
        dbk__sqltok t = dbk__sqlscan_next(&s);
        if (t == DBK__SQLTOK_END)
            return n;
        if (n < max)
            kinds[n] = t;
        n++;
        if (t == DBK__SQLTOK_ERROR)
            return n;
    }
}

static void sqlscan_tokens_of_a_statement(void **state)
{
    (void)state;
    dbk__sqltok k[16];
    const char *sql = "SELECT \"a b\", 'it''s', 12.5e3 FROM t WHERE x = $1;";
    size_t n = scan_all(sql, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES), k, 16);
    dbk__sqltok want[] = {DBK__SQLTOK_WORD,   DBK__SQLTOK_QNAME,  DBK__SQLTOK_PUNCT,
                          DBK__SQLTOK_STRING, DBK__SQLTOK_PUNCT,  DBK__SQLTOK_NUMBER,
                          DBK__SQLTOK_WORD,   DBK__SQLTOK_WORD,   DBK__SQLTOK_WORD,
                          DBK__SQLTOK_WORD,   DBK__SQLTOK_PUNCT,  DBK__SQLTOK_DOLLAR,
                          DBK__SQLTOK_NUMBER, DBK__SQLTOK_SEMI};
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(k[i], want[i]);
}

static void sqlscan_comments_are_skipped(void **state)
{
    (void)state;
    dbk__sqlscan s;
    const char *sql = "/* tag */ -- line\n  /* a /* nested */ b */ BEGIN";
    dbk__sqlscan_init(&s, sql, strlen(sql), 1, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES));
    assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_WORD);
    assert_true(dbk__sqlscan_is(&s, "begin"));
    assert_int_equal(s.tok_line, 2);
    assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_END);
}

static void sqlscan_nested_comments_only_on_postgres(void **state)
{
    (void)state;
    dbk__sqltok k[8];
    /* SQLite ends the comment at its first close, so " c" and more are left over. */
    const char *sql = "/* a /* b */ c */ X";
    assert_int_equal(scan_all(sql, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES), k, 8), 1);
    assert_int_equal(k[0], DBK__SQLTOK_WORD);
    size_t n = scan_all(sql, dbk__sqlscan_rules(DBK_ENGINE_SQLITE), k, 8);
    assert_true(n > 1);
    assert_int_equal(k[0], DBK__SQLTOK_WORD); /* c */
}

static void sqlscan_dollar_quotes_and_e_strings(void **state)
{
    (void)state;
    dbk__sqltok k[8];
    const char *body = "DO $fn$ BEGIN; 'x' $$ END $fn$;";
    assert_int_equal(scan_all(body, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES), k, 8), 3);
    assert_int_equal(k[1], DBK__SQLTOK_STRING);
    assert_int_equal(k[2], DBK__SQLTOK_SEMI);
    const char *e = "SELECT E'a\\'b;'";
    assert_int_equal(scan_all(e, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES), k, 8), 3);
    assert_int_equal(k[1], DBK__SQLTOK_WORD); /* the E */
    assert_int_equal(k[2], DBK__SQLTOK_STRING);
}

static void sqlscan_brackets_on_sqlite(void **state)
{
    (void)state;
    dbk__sqltok k[8];
    assert_int_equal(scan_all("SELECT [a;b]", dbk__sqlscan_rules(DBK_ENGINE_SQLITE), k, 8), 2);
    assert_int_equal(k[1], DBK__SQLTOK_QNAME);
}

static void sqlscan_unterminated_is_an_error(void **state)
{
    (void)state;
    const char *cases[] = {"SELECT 'abc", "SELECT \"abc", "/* never closed", "$q$ body"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk__sqlscan s;
        dbk__sqlscan_init(&s, cases[i], strlen(cases[i]), 7,
                          dbk__sqlscan_rules(DBK_ENGINE_POSTGRES));
        dbk__sqltok t;
        while ((t = dbk__sqlscan_next(&s)) != DBK__SQLTOK_END && t != DBK__SQLTOK_ERROR)
            ;
        assert_int_equal(t, DBK__SQLTOK_ERROR);
        assert_non_null(s.err_what);
        assert_int_equal(s.err_line, 7);
        assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_ERROR); /* sticky */
    }
}

static void sqlscan_never_reads_past_len(void **state)
{
    (void)state;
    /* The text goes on after len; the scanner must stop at len. */
    const char buf[] = "SELECT 1; DROP TABLE t";
    dbk__sqlscan s;
    dbk__sqlscan_init(&s, buf, 8, 1, dbk__sqlscan_rules(DBK_ENGINE_POSTGRES));
    assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_WORD);
    assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_NUMBER);
    assert_int_equal(dbk__sqlscan_next(&s), DBK__SQLTOK_END);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sqlscan_tokens_of_a_statement),
        cmocka_unit_test(sqlscan_comments_are_skipped),
        cmocka_unit_test(sqlscan_nested_comments_only_on_postgres),
        cmocka_unit_test(sqlscan_dollar_quotes_and_e_strings),
        cmocka_unit_test(sqlscan_brackets_on_sqlite),
        cmocka_unit_test(sqlscan_unterminated_is_an_error),
        cmocka_unit_test(sqlscan_never_reads_past_len),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
