/* dbkit:valgrind
 * Result codes, strerror, hints and the SQLSTATE / SQLite mapping table. */
#include <sqlite3.h>
#include <string.h>

#include "core/internal.h"
#include "driver/driver.h"
#include "testutil.h"

static void error_every_code_has_name_and_text(void **state)
{
    (void)state;
    for (int rc = 0; rc <= DBK_RC_MAX; rc++) {
        assert_string_not_equal(dbk_rc_name((dbk_rc)rc), "DBK_E?");
        assert_string_not_equal(dbk_strerror((dbk_rc)rc), "unknown error");
        assert_true(strncmp(dbk_rc_name((dbk_rc)rc), "DBK_", 4) == 0);
    }
    assert_string_equal(dbk_strerror((dbk_rc)(DBK_RC_MAX + 1)), "unknown error");
    assert_string_equal(dbk_rc_name((dbk_rc)-1), "DBK_E?");
}

static void error_codes_are_stable(void **state)
{
    (void)state;
    /* Append-only numbering: these values are ABI. */
    assert_int_equal(DBK_OK, 0);
    assert_int_equal(DBK_ECONFIG, 1);
    assert_int_equal(DBK_EPOOL_TIMEOUT, 6);
    assert_int_equal(DBK_ECOMMIT_UNKNOWN, 13);
    assert_int_equal(DBK_EUNIQUE, 14);
    assert_int_equal(DBK_ENOT_FOUND, 18);
    assert_int_equal(DBK_EMISUSE, 26);
    assert_int_equal(DBK_EINTERNAL, 31);
    assert_int_equal(DBK_EN_PLUS_ONE, 32);
    assert_int_equal(DBK_ENOT_RUN, 33);
}

/* DBK_RC_MAX_, renamed DBK_RC_MAX in 0.2, still works for one release,
 * in expressions and in #if. */
static void error_deprecated_rc_max_name_still_works(void **state)
{
    (void)state;
    assert_int_equal(DBK_RC_MAX_, DBK_RC_MAX);
    assert_int_equal(DBK_RC_MAX, DBK_ENOT_RUN);
#if DBK_RC_MAX_ >= 33
    int known = 1;
#else
    int known = 0;
#endif
    assert_int_equal(known, 1);
}

static void error_sqlstate_map(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        dbk_rc rc;
    } cases[] = {
        {"23505", DBK_EUNIQUE},        {"23503", DBK_EFOREIGN_KEY},   {"23502", DBK_ENOT_NULL},
        {"23514", DBK_ECHECK},         {"40001", DBK_ESERIALIZATION}, {"40P01", DBK_EDEADLOCK},
        {"57014", DBK_ETIMEOUT},       {"55P03", DBK_EBUSY},          {"25006", DBK_EREADONLY},
        {"42P01", DBK_ESCHEMA},        {"42703", DBK_ESCHEMA},        {"42883", DBK_ESCHEMA},
        {"28P01", DBK_EAUTH},          {"28000", DBK_EAUTH},          {"08006", DBK_ECONN_LOST},
        {"57P01", DBK_ECONN_LOST},     {"53300", DBK_EUNAVAILABLE},   {"53100", DBK_EDISK_FULL},
        {"22P02", DBK_EINVALID},       {"22001", DBK_EINVALID},       {"42601", DBK_ESQL},
        {"XX000", DBK_EINTERNAL},      {"XX001", DBK_EIO},            {"0A000", DBK_ESQL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk_rc got = dbk__rc_from_sqlstate(cases[i].s);
        if (got != cases[i].rc)
            fail_msg("SQLSTATE %s: expected %s, got %s", cases[i].s, dbk_rc_name(cases[i].rc),
                     dbk_rc_name(got));
    }
    assert_int_equal(dbk__rc_from_sqlstate(NULL), DBK_ESQL);
    assert_int_equal(dbk__rc_from_sqlstate("235"), DBK_ESQL);
    assert_int_equal(dbk__rc_from_sqlstate("2350599"), DBK_ESQL);
}

static void error_sqlite_map(void **state)
{
    (void)state;
    static const struct {
        int code;
        dbk_rc rc;
    } cases[] = {
        {SQLITE_BUSY, DBK_EBUSY},
        {SQLITE_BUSY_SNAPSHOT, DBK_EBUSY},
        {SQLITE_LOCKED, DBK_EBUSY},
        {SQLITE_CONSTRAINT_UNIQUE, DBK_EUNIQUE},
        {SQLITE_CONSTRAINT_PRIMARYKEY, DBK_EUNIQUE},
        {SQLITE_CONSTRAINT_FOREIGNKEY, DBK_EFOREIGN_KEY},
        {SQLITE_CONSTRAINT_NOTNULL, DBK_ENOT_NULL},
        {SQLITE_CONSTRAINT_CHECK, DBK_ECHECK},
        {SQLITE_FULL, DBK_EDISK_FULL},
        {SQLITE_NOMEM, DBK_ENOMEM},
        {SQLITE_IOERR_WRITE, DBK_EIO},
        {SQLITE_CORRUPT, DBK_EIO},
        {SQLITE_READONLY, DBK_EREADONLY},
        {SQLITE_CANTOPEN, DBK_EUNAVAILABLE},
        {SQLITE_ERROR, DBK_ESQL},
        {SQLITE_MISUSE, DBK_EMISUSE},
        {SQLITE_INTERRUPT, DBK_ECANCELLED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk_rc got = dbk__rc_from_sqlite(cases[i].code);
        if (got != cases[i].rc)
            fail_msg("sqlite code %d: expected %s, got %s", cases[i].code,
                     dbk_rc_name(cases[i].rc), dbk_rc_name(got));
    }
    assert_int_not_equal(dbk__rc_from_sqlite(12345678), DBK_OK);
}

static void error_hints_point_at_the_fix(void **state)
{
    (void)state;
    dbk_error e;
    dbk__err(&e, DBK_ESCHEMA, "relation \"users\" does not exist");
    dbk__strlcpy(e.sqlstate, "42P01", sizeof e.sqlstate);
    dbk__err_default_hint(&e);
    assert_non_null(strstr(e.hint, "dbkit migrate up"));

    dbk__err(&e, DBK_ESCHEMA, "column does not exist");
    dbk__strlcpy(e.sqlstate, "42703", sizeof e.sqlstate);
    dbk__err_default_hint(&e);
    assert_non_null(strstr(e.hint, "schema"));

    dbk__err(&e, DBK_EPOOL_TIMEOUT, "timeout");
    dbk__err_default_hint(&e);
    assert_non_null(strstr(e.hint, "pool_max"));

    dbk__err(&e, DBK_ETIMEOUT, "statement timeout");
    dbk__err_default_hint(&e);
    assert_non_null(strstr(e.hint, "dbkit explain"));

    dbk__err(&e, DBK_EDEADLOCK, "deadlock");
    dbk__err_default_hint(&e);
    assert_non_null(strstr(e.hint, "retry"));

    /* An explicit hint is never overwritten. */
    dbk__err(&e, DBK_EDEADLOCK, "deadlock");
    dbk__err_hint(&e, "custom");
    dbk__err_default_hint(&e);
    assert_string_equal(e.hint, "custom");
}

static void error_fill_and_clear(void **state)
{
    (void)state;
    dbk_error e;
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(dbk__err(&e, DBK_EINVALID, "%s", big), DBK_EINVALID);
    assert_int_equal(strlen(e.message), sizeof e.message - 1);
    assert_int_equal(e.code, DBK_EINVALID);
    dbk_error_clear(&e);
    assert_int_equal(e.code, DBK_OK);
    assert_string_equal(e.message, "");
    dbk_error_clear(NULL);
    assert_int_equal(dbk__err(NULL, DBK_EMISUSE, "x"), DBK_EMISUSE);
    assert_true(dbk_rc_is_retryable(DBK_ESERIALIZATION));
    assert_true(dbk_rc_is_retryable(DBK_EDEADLOCK));
    assert_true(dbk_rc_is_retryable(DBK_EBUSY));
    assert_false(dbk_rc_is_retryable(DBK_EUNIQUE));
    assert_false(dbk_rc_is_retryable(DBK_ECOMMIT_UNKNOWN));
}

struct logbuf {
    int n;
    dbk_log_level last;
    char msg[256];
};

static void capture(void *ctx, dbk_log_level level, const char *msg)
{
    struct logbuf *b = ctx;
    b->n++;
    b->last = level;
    dbk__strlcpy(b->msg, msg, sizeof b->msg);
}

static void error_log_hook_filters_by_level(void **state)
{
    (void)state;
    struct logbuf b = {0};
    dbk__log(DBK_LOG_ERROR, "dropped without a hook");
    dbk_set_log(capture, &b, DBK_LOG_WARN);
    dbk__log(DBK_LOG_INFO, "below the level");
    dbk__log(DBK_LOG_WARN, "leak at %s:%d", "f.c", 12);
    dbk_set_log(NULL, NULL, DBK_LOG_DEBUG);
    dbk__log(DBK_LOG_ERROR, "after removal");
    assert_int_equal(b.n, 1);
    assert_int_equal(b.last, DBK_LOG_WARN);
    assert_string_equal(b.msg, "leak at f.c:12");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_every_code_has_name_and_text),
        cmocka_unit_test(error_codes_are_stable),
        cmocka_unit_test(error_deprecated_rc_max_name_still_works),
        cmocka_unit_test(error_sqlstate_map),
        cmocka_unit_test(error_sqlite_map),
        cmocka_unit_test(error_hints_point_at_the_fix),
        cmocka_unit_test(error_fill_and_clear),
        cmocka_unit_test(error_log_hook_filters_by_level),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
