/* dbkit:valgrind
 * dbk_db on both engines: the same SQL gives the same observable results.
 * Each test runs once on a fresh SQLite file and once on a fresh
 * PostgreSQL database (dbkt_each_engine). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const char *users_ddl(dbk_engine e)
{
    return e == DBK_ENGINE_POSTGRES
               ? "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, "
                 "email TEXT NOT NULL UNIQUE, score DOUBLE PRECISION, active BOOLEAN, "
                 "avatar BYTEA, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
               : "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "email TEXT NOT NULL UNIQUE, score REAL, active INTEGER, avatar BLOB, "
                 "created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)";
}

static void setup_users(dbk_db *db, dbk_engine e)
{
    dbk_error err;
    DBKT_OK(dbk_db_exec(db, users_ddl(e), NULL, 0, NULL, &err), &err);
}

/* ---- query / exec / helpers ---- */

static void crud(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    assert_int_equal(dbk_db_engine(db), e);
    setup_users(db, e);

    dbk_value p[] = {dbk_text("Ada"), dbk_text("ada@example.com")};
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "INSERT INTO users (name, email) VALUES ($1, $2) "
                             "RETURNING id, name, created_at",
                         p, 2, &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 1);
    assert_int_equal(dbk_result_ncols(r), 3);
    assert_int_equal(dbk_result_affected(r), 1);
    assert_string_equal(dbk_result_colname(r, 0), "id");
    assert_int_equal(dbk_result_colindex(r, "created_at"), 2);
    assert_int_equal(dbk_result_colindex(r, "nope"), -1);
    int64_t id = 0, ts = 0;
    DBKT_OK(dbk_result_get_int64(r, 0, 0, &id, &err), &err);
    assert_int_equal(id, 1);
    const char *name;
    size_t len;
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "name", &name, &len, &err), &err);
    assert_string_equal(name, "Ada");
    assert_int_equal(len, 3);
    /* created_at: timestamptz on PostgreSQL, text on SQLite: both read as a timestamp. */
    DBKT_OK(dbk_result_get_timestamp(r, 0, 2, &ts, &err), &err);
    assert_true(ts > 1600000000LL * 1000000);
    dbk_result_free(r);

    dbk_value p2[] = {dbk_text("Bob"), dbk_text("bob@example.com")};
    int64_t affected = -1;
    DBKT_OK(dbk_db_exec(db, "INSERT INTO users (name, email) VALUES ($1, $2)", p2, 2, &affected,
                        &err),
            &err);
    assert_int_equal(affected, 1);

    DBKT_OK(dbk_db_exec(db, "UPDATE users SET score = 1.5", NULL, 0, &affected, &err), &err);
    assert_int_equal(affected, 2);

    int64_t n = 0;
    DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM users", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 2);

    char buf[64];
    bool is_null = true;
    dbk_value q = dbk_int64(2);
    DBKT_OK(dbk_db_query_text(db, "SELECT email FROM users WHERE id = $1", &q, 1, buf, sizeof buf,
                              &is_null, &err),
            &err);
    assert_string_equal(buf, "bob@example.com");
    assert_false(is_null);
    DBKT_RC(DBK_EINVALID, dbk_db_query_text(db, "SELECT email FROM users WHERE id = $1", &q, 1,
                                            buf, 4, NULL, &err));

    q = dbk_int64(99);
    DBKT_RC(DBK_ENOT_FOUND, dbk_db_query_row(db, "SELECT * FROM users WHERE id = $1", &q, 1, &r,
                                             &err));
    DBKT_RC(DBK_EINVALID, dbk_db_query_row(db, "SELECT * FROM users", NULL, 0, &r, &err));

    DBKT_OK(dbk_db_query(db, "DELETE FROM users WHERE id = $1 RETURNING id",
                         (dbk_value[]){dbk_int64(1)}, 1, &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 1);
    assert_int_equal(dbk_result_affected(r), 1);
    dbk_result_free(r);
    dbk_conn_close(c);
}

static void db_query_exec_and_helpers(void **state)
{
    (void)state;
    dbkt_each_engine("db_query_exec_and_helpers", crud);
}

/* ---- placeholders ---- */

static void placeholders(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    char buf[64];
    /* $2 before $1, and $1 twice. */
    dbk_value p[] = {dbk_text("a"), dbk_text("b")};
    DBKT_OK(dbk_db_query_text(db, "SELECT $2 || $1 || $1", p, 2, buf, sizeof buf, NULL, &err),
            &err);
    assert_string_equal(buf, "baa");
    dbk_conn_close(c);
}

static void db_placeholders_by_number(void **state)
{
    (void)state;
    dbkt_each_engine("db_placeholders_by_number", placeholders);
}

/* ---- values round trip byte for byte ---- */

static void round_trip(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    DBKT_OK(dbk_db_exec(db,
                        e == DBK_ENGINE_POSTGRES
                            ? "CREATE TABLE t (id INT PRIMARY KEY, s TEXT, b BYTEA, i BIGINT, "
                              "d DOUBLE PRECISION, f BOOLEAN, ts TIMESTAMPTZ, j JSONB)"
                            : "CREATE TABLE t (id INT PRIMARY KEY, s TEXT, b BLOB, i INTEGER, "
                              "d REAL, f INTEGER, ts TEXT, j TEXT)",
                        NULL, 0, NULL, &err),
            &err);

    static const char *texts[] = {
        "'; DROP TABLE t; --", "\"quoted\" 'single' `back`", "back\\slash \\x00 \\\\",
        "unicode: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
        "$1 $2 ? :name", "",
    };
    size_t big_len = 1 << 20;
    char *big = malloc(big_len + 1);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    big[big_len] = '\0';
    unsigned char blob[512];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (unsigned char)(i * 7 + 3);
    blob[0] = 0;
    blob[1] = 0xff;

    size_t ntexts = sizeof texts / sizeof texts[0];
    for (size_t k = 0; k <= ntexts; k++) {
        const char *s = k < ntexts ? texts[k] : big;
        size_t slen = k < ntexts ? strlen(s) : big_len;
        int64_t ts_in = -123456789012345LL + (int64_t)k; /* pre-1970, microseconds */
        dbk_value p[] = {dbk_int64((int64_t)k),
                         dbk_textn(s, slen),
                         dbk_blob(blob, sizeof blob),
                         dbk_int64(k % 2 ? INT64_MIN : INT64_MAX),
                         dbk_double(0.1),
                         dbk_bool(k % 2),
                         dbk_timestamp(ts_in),
                         dbk_json("{\"a\": [1, 2]}")};
        DBKT_OK(dbk_db_exec(db, "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", p, 8,
                            NULL, &err),
                &err);
        dbk_result *r;
        DBKT_OK(dbk_db_query_row(db, "SELECT s, b, i, d, f, ts, j FROM t WHERE id = $1", p, 1, &r,
                                 &err),
                &err);
        const char *out;
        size_t len;
        DBKT_OK(dbk_result_get_text(r, 0, 0, &out, &len, &err), &err);
        assert_int_equal(len, slen);
        assert_memory_equal(out, s, slen);
        const void *bout;
        DBKT_OK(dbk_result_get_blob(r, 0, 1, &bout, &len, &err), &err);
        assert_int_equal(len, sizeof blob);
        assert_memory_equal(bout, blob, sizeof blob);
        int64_t i;
        DBKT_OK(dbk_result_get_int64(r, 0, 2, &i, &err), &err);
        assert_true(i == (k % 2 ? INT64_MIN : INT64_MAX));
        double d;
        DBKT_OK(dbk_result_get_double(r, 0, 3, &d, &err), &err);
        assert_true(d == 0.1);
        bool f;
        DBKT_OK(dbk_result_get_bool(r, 0, 4, &f, &err), &err);
        assert_int_equal(f, k % 2);
        int64_t ts_out;
        DBKT_OK(dbk_result_get_timestamp(r, 0, 5, &ts_out, &err), &err);
        assert_true(ts_out == ts_in);
        DBKT_OK(dbk_result_get_text(r, 0, 6, &out, &len, &err), &err);
        assert_non_null(strstr(out, "\"a\""));
        dbk_result_free(r);
    }
    free(big);

    /* Embedded NUL: PostgreSQL cannot store it and must say so, SQLite keeps it. */
    dbk_value p[] = {dbk_int64(1000), dbk_textn("a\0b", 3)};
    dbk_rc rc = dbk_db_exec(db, "INSERT INTO t (id, s) VALUES ($1, $2)", p, 2, NULL, &err);
    if (e == DBK_ENGINE_POSTGRES) {
        assert_int_equal(rc, DBK_EINVALID);
        int64_t n;
        DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM t WHERE id = 1000", NULL, 0, &n, &err),
                &err);
        assert_int_equal(n, 0);
    } else {
        assert_int_equal(rc, DBK_OK);
        dbk_result *r;
        DBKT_OK(dbk_db_query_row(db, "SELECT s FROM t WHERE id = $1", p, 1, &r, &err), &err);
        const char *out;
        size_t len;
        DBKT_OK(dbk_result_get_text(r, 0, 0, &out, &len, &err), &err);
        assert_int_equal(len, 3);
        assert_memory_equal(out, "a\0b", 3);
        dbk_result_free(r);
    }
    dbk_conn_close(c);
}

static void db_values_round_trip_byte_for_byte(void **state)
{
    (void)state;
    dbkt_each_engine("db_values_round_trip", round_trip);
}

/* ---- typed getters refuse to guess ---- */

static void getters(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT 'abc' AS t, 42 AS i, 1.5 AS d, NULL AS n, 2.0 AS d2", NULL,
                         0, &r, &err),
            &err);
    int64_t i;
    double d;
    bool b;
    const char *s;
    size_t len = 9;
    DBKT_RC(DBK_ETYPE, dbk_result_get_int64(r, 0, 0, &i, &err));
    assert_non_null(strstr(err.message, "\"t\""));
    DBKT_RC(DBK_ETYPE, dbk_result_get_int64(r, 0, 2, &i, &err));
    DBKT_RC(DBK_ETYPE, dbk_result_get_int64(r, 0, 3, &i, &err));
    assert_non_null(strstr(err.message, "null"));
    DBKT_RC(DBK_ETYPE, dbk_result_get_text(r, 0, 1, &s, &len, &err));
    DBKT_RC(DBK_ETYPE, dbk_result_get_bool(r, 0, 1, &b, &err));
    DBKT_RC(DBK_ETYPE, dbk_result_get_timestamp(r, 0, 0, &i, &err));
    DBKT_OK(dbk_result_get_double(r, 0, 1, &d, &err), &err);
    assert_true(d == 42.0);
    DBKT_OK(dbk_result_get_text(r, 0, 3, &s, &len, &err), &err);
    assert_null(s);
    assert_int_equal(len, 0);
    assert_true(dbk_result_is_null(r, 0, 3));
    assert_false(dbk_result_is_null(r, 0, 1));
    assert_int_equal(dbk_result_type(r, 0, 3), DBK_TYPE_NULL);
    /* Out of range is misuse, not a crash. */
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 1, 0, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, 5, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, -1, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(NULL, 0, 0, &i, &err));
    DBKT_RC(DBK_EMISUSE, dbk_result_get_int64(r, 0, 1, NULL, &err));
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_result_get_int64_by_name(r, 0, "zz", &i, &err));
    assert_null(dbk_result_colname(r, 9));
    dbk_result_free(r);
    dbk_conn_close(c);
}

static void db_getters_refuse_to_guess(void **state)
{
    (void)state;
    dbkt_each_engine("db_getters", getters);
}

/* ---- errors ---- */

static void errors(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    setup_users(db, e);
    dbk_value p[] = {dbk_text("A"), dbk_text("a@x.org")};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO users (name, email) VALUES ($1, $2)", p, 2, NULL, &err),
            &err);
    DBKT_RC(DBK_EUNIQUE,
            dbk_db_exec(db, "INSERT INTO users (name, email) VALUES ($1, $2)", p, 2, NULL, &err));
    assert_int_equal(err.code, DBK_EUNIQUE);
    assert_string_not_equal(err.constraint_name, "");
    assert_null(strstr(err.message, "a@x.org")); /* values stay out of messages */
    DBKT_RC(DBK_ENOT_NULL,
            dbk_db_exec(db, "INSERT INTO users (name, email) VALUES (NULL, 'n@x.org')", NULL, 0,
                        NULL, &err));
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT * FROM no_such_table", NULL, 0,
                                      &(dbk_result *){NULL}, &err));
    assert_non_null(strstr(err.hint, "migrat"));
    DBKT_RC(DBK_ESQL, dbk_db_exec(db, "SELEC 1", NULL, 0, NULL, &err));
    /* The connection is still usable after errors. */
    int64_t n;
    DBKT_OK(dbk_db_query_int64(db, "SELECT count(*) FROM users", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 1);
    dbk_conn_close(c);
}

static void db_errors_are_classified(void **state)
{
    (void)state;
    dbkt_each_engine("db_errors", errors);
}

/* ---- misuse ---- */

static void db_misuse_is_an_error_not_a_crash(void **state)
{
    (void)state;
    dbk_error err;
    dbk_result *r;
    int64_t n;
    DBKT_RC(DBK_EMISUSE, dbk_db_query(NULL, "SELECT 1", NULL, 0, &r, &err));
    assert_string_not_equal(err.message, "");
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(NULL, "SELECT 1", NULL, 0, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_conn_open(NULL, NULL, &err));
    dbk_conn_close(NULL);
    dbk_result_free(NULL);
    char *url = dbkt_sqlite_url("misuse");
    dbk_conn *c = dbkt_open(url);
    free(url);
    dbk_db *db = dbk_conn_db(c);
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, NULL, NULL, 0, &r, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1", NULL, 1, &r, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT 1", NULL, 0, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query_int64(db, "SELECT 1", NULL, 0, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_conn_ping(c, -5, &err));
    DBKT_OK(dbk_db_query_int64(db, "SELECT 1", NULL, 0, &n, NULL), &err); /* err optional */
    assert_int_equal(n, 1);
    dbk_conn_close(c);
}

/* ---- results outlive connections ---- */

static void outlive(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_result *r;
    DBKT_OK(dbk_db_query(dbk_conn_db(c), "SELECT 'still here' AS s", NULL, 0, &r, &err), &err);
    dbk_conn_close(c);
    const char *s;
    DBKT_OK(dbk_result_get_text(r, 0, 0, &s, NULL, &err), &err);
    assert_string_equal(s, "still here");
    dbk_result_free(r);
}

static void db_result_outlives_connection(void **state)
{
    (void)state;
    dbkt_each_engine("db_outlive", outlive);
}

/* ---- the observer ---- */

struct seen {
    int n;
    char sql[128];
    size_t nparams;
    int64_t rows;
    dbk_rc rc;
    int64_t dur;
};

static void observe(void *ctx, const dbk_query_event *ev)
{
    struct seen *s = ctx;
    s->n++;
    snprintf(s->sql, sizeof s->sql, "%s", ev->sql);
    s->nparams = ev->nparams;
    s->rows = ev->rows;
    s->rc = ev->rc;
    s->dur = ev->duration_ns;
}

static void observer(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    setup_users(db, e);
    struct seen s = {0};
    dbk_db_set_observer(db, observe, &s);
    dbk_value p[] = {dbk_text("A"), dbk_text("secret-value@x.org")};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO users (name, email) VALUES ($1, $2)", p, 2, NULL, &err),
            &err);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.sql, "INSERT INTO users (name, email) VALUES ($1, $2)");
    assert_int_equal(s.nparams, 2);
    assert_int_equal(s.rows, 1);
    assert_int_equal(s.rc, DBK_OK);
    assert_true(s.dur > 0);
    dbk_result *r;
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT * FROM missing", NULL, 0, &r, &err));
    assert_int_equal(s.n, 2);
    assert_int_equal(s.rc, DBK_ESCHEMA);
    dbk_db_set_observer(db, NULL, NULL);
    DBKT_OK(dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err), &err);
    assert_int_equal(s.n, 2);
    dbk_conn_close(c);
}

static void db_observer_sees_every_statement(void **state)
{
    (void)state;
    dbkt_each_engine("db_observer", observer);
}

static void script(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db,
                               "CREATE TABLE a (x INT); INSERT INTO a VALUES (1);\n"
                               "-- a comment; with a semicolon\n"
                               "INSERT INTO a VALUES (2);",
                               &err),
            &err);
    int64_t n;
    DBKT_OK(dbk_db_query_int64(db, "SELECT sum(x) FROM a", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 3);
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec_script(db, "INSERT INTO a VALUES (4); SELECT * FROM nope;",
                                            &err));
    dbk_conn_close(c);
}

static void db_script_runs_statements_in_order(void **state)
{
    (void)state;
    dbkt_each_engine("db_script", script);
}

static void db_ping_and_version(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("ping");
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    DBKT_OK(dbk_conn_ping(c, 0, &err), &err);
    assert_non_null(strchr(dbk_conn_server_version(c), '.'));
    dbk_conn_close(c);
    free(url);
    url = dbkt_pg_fresh_db("db_ping");
    c = dbkt_open(url);
    DBKT_OK(dbk_conn_ping(c, 500, &err), &err);
    assert_true(strncmp(dbk_conn_server_version(c), "15", 2) == 0);
    dbk_conn_close(c);
    free(url);
}


/* ---- limits: a value is refused from its length, before anything is sent ---- */

static size_t engine_value_limit(dbk_engine e)
{
    /* PostgreSQL: 1 GiB - 1 (MaxAllocSize) less the 4-byte varlena header;
     * SQLite: SQLITE_LIMIT_LENGTH as Debian builds it (the default). */
    return e == DBK_ENGINE_POSTGRES ? (size_t)0x3FFFFFFF - 4 : (size_t)1000000000;
}

static void huge_params(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, e == DBK_ENGINE_POSTGRES ? "CREATE TABLE big (a TEXT, b TEXT, c BYTEA)"
                                           : "CREATE TABLE big (a TEXT, b TEXT, c BLOB)");
    int64_t pid0 = e == DBK_ENGINE_POSTGRES ? dbkt_int(db, "SELECT pg_backend_pid()") : 0;
    size_t limit = engine_value_limit(e);
    char limit_text[32];
    snprintf(limit_text, sizeof limit_text, "%zu", limit);
    /* The sizes reported to lose data or the connection, and the first
     * byte past the limit. The bytes are never readable: reading one
     * crashes the test. */
    const size_t G = (size_t)1 << 30;
    const size_t sizes[] = {limit + 1, G + 1, 2 * G + 16, 4 * G + 5};
    const size_t maplen = 4 * G + 5;
    char *huge = dbkt_unreadable(maplen);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (int t = 0; t < 3; t++) {
            dbk_value p[2] = {dbk_text("x"), dbk_null()};
            p[1].type = t == 0 ? DBK_TYPE_TEXT : t == 1 ? DBK_TYPE_JSON : DBK_TYPE_BLOB;
            p[1].u.bytes.ptr = huge;
            p[1].u.bytes.len = sizes[k];
            const char *sql = t == 2 ? "INSERT INTO big (a, c) VALUES ($1, $2)"
                                     : "INSERT INTO big (a, b) VALUES ($1, $2)";
            int64_t aff = -1;
            memset(&err, 0, sizeof err);
            dbk_rc rc = dbk_db_exec(db, sql, p, 2, &aff, &err);
            if (rc != DBK_EINVALID)
                fail_msg("%zu-byte %s parameter: expected DBK_EINVALID, got %s (%s)", sizes[k],
                         dbk_type_name(p[1].type), dbk_rc_name(rc), err.message);
            if (!strstr(err.message, "$2") || !strstr(err.message, limit_text))
                fail_msg("message names neither the parameter nor the limit: %s", err.message);
            assert_true(err.hint[0] != '\0');
            dbk_result *r = NULL;
            DBKT_RC(DBK_EINVALID, dbk_db_query(db, "SELECT $1 AS a, $2 AS b", p, 2, &r, &err));
            assert_null(r);
        }
    }
    if (e == DBK_ENGINE_POSTGRES) {
        /* Each value under the limit, together over what one statement may
         * carry: refused as a whole, naming the range. */
        dbk_value two[2];
        for (int i = 0; i < 2; i++) {
            two[i] = dbk_blob(huge, 600u << 20);
        }
        DBKT_RC(DBK_EINVALID,
                dbk_db_exec(db, "INSERT INTO big (c, b) VALUES ($1, $2::text)", two, 2, NULL,
                            &err));
        assert_non_null(strstr(err.message, "$1..$2"));
        /* the same session, still usable, nothing written */
        assert_int_equal(dbkt_int(db, "SELECT pg_backend_pid()"), pid0);
    }
    dbkt_unreadable_free(huge, maplen);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM big"), 0);
    dbk_value ok[2] = {dbk_text("a"), dbk_text("b")};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO big (a, b) VALUES ($1, $2)", ok, 2, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM big"), 1);
    dbk_conn_close(c);
}

static void db_huge_parameters_refused_before_sending(void **state)
{
    (void)state;
    dbkt_each_engine("db_huge_params", huge_params);
}

/* Large values below the limit arrive whole: length and every byte. */
static void large_text(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    (void)e;
    dbkt_exec(db, "CREATE TABLE big (t TEXT, j TEXT)");
    size_t n = ((size_t)24 << 20) + 3;
    char *v = malloc(n);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (char)('a' + (i * 7 + i / 4096) % 26);
    dbk_value p[2] = {dbk_textn(v, n), dbk_textn(v + 1, n - 1)};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO big (t, j) VALUES ($1, $2)", p, 2, NULL, &err), &err);
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query_row(db, "SELECT t, j, length(t) FROM big", NULL, 0, &r, &err), &err);
    const char *got;
    size_t len;
    DBKT_OK(dbk_result_get_text(r, 0, 0, &got, &len, &err), &err);
    assert_int_equal(len, n);
    assert_memory_equal(got, v, n);
    DBKT_OK(dbk_result_get_text(r, 0, 1, &got, &len, &err), &err);
    assert_int_equal(len, n - 1);
    assert_memory_equal(got, v + 1, n - 1);
    int64_t l = 0;
    DBKT_OK(dbk_result_get_int64(r, 0, 2, &l, &err), &err);
    assert_int_equal(l, (int64_t)n);
    dbk_result_free(r);
    free(v);
    dbk_conn_close(c);
}

static void db_large_text_round_trips_whole(void **state)
{
    (void)state;
    dbkt_each_engine("db_large_text", large_text);
}

/* ---- dbk_db_copy_from: bulk insert, all or nothing ---- */

static const char *copy_ddl(dbk_engine e)
{
    return e == DBK_ENGINE_POSTGRES
               ? "CREATE TABLE \"Copy \"\"T\"\"\" (id BIGINT PRIMARY KEY, name TEXT, "
                 "score DOUBLE PRECISION, ok BOOLEAN, at TIMESTAMPTZ, doc JSONB, bin BYTEA)"
               : "CREATE TABLE \"Copy \"\"T\"\"\" (id INTEGER PRIMARY KEY, name TEXT, score REAL, "
                 "ok INTEGER, at TEXT, doc TEXT, bin BLOB)";
}

static const char *const copy_cols[] = {"id", "name", "score", "ok", "at", "doc", "bin"};
#define COPY_NCOLS 7

/* Every type, NULLs, and text that COPY's text format must escape. */
static void copy_types(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, copy_ddl(e));
    static const char hostile[] = "tab\there\nnew\\line \\N\r\\.";
    static const unsigned char bin[] = {0, 1, '\\', '\t', '\n', 0xff};
    const int64_t at = 1700000000123456LL;
    dbk_value v[3 * COPY_NCOLS] = {
        dbk_int64(1), dbk_text(hostile), dbk_double(-1.25), dbk_bool(true), dbk_timestamp(at),
        dbk_json("{\"k\": \"a\\tb\"}"), dbk_blob(bin, sizeof bin),
        dbk_int64(2), dbk_null(), dbk_null(), dbk_null(), dbk_null(), dbk_null(), dbk_null(),
        dbk_int64(3), dbk_text("\\N"), dbk_double(1e300), dbk_bool(false), dbk_timestamp(0),
        dbk_json("[]"), dbk_blob(bin, 0)};
    int64_t written = -1;
    DBKT_OK(dbk_db_copy_from(db, "Copy \"T\"", copy_cols, COPY_NCOLS, v, 3, &written, &err),
            &err);
    assert_int_equal(written, 3);
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT id, name, score, ok, at, doc, bin FROM \"Copy \"\"T\"\"\" "
                             "ORDER BY id",
                         NULL, 0, &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 3);
    const char *s;
    size_t len;
    int64_t i64;
    double d;
    bool b;
    DBKT_OK(dbk_result_get_text(r, 0, 1, &s, &len, &err), &err);
    assert_int_equal(len, strlen(hostile));
    assert_memory_equal(s, hostile, len);
    DBKT_OK(dbk_result_get_double(r, 0, 2, &d, &err), &err);
    assert_true(d == -1.25);
    DBKT_OK(dbk_result_get_bool(r, 0, 3, &b, &err), &err);
    assert_true(b);
    DBKT_OK(dbk_result_get_timestamp(r, 0, 4, &i64, &err), &err);
    assert_int_equal(i64, at);
    DBKT_OK(dbk_result_get_text(r, 0, 5, &s, &len, &err), &err);
    assert_non_null(strstr(s, "a\\tb"));
    const void *blob;
    DBKT_OK(dbk_result_get_blob(r, 0, 6, &blob, &len, &err), &err);
    assert_int_equal(len, sizeof bin);
    assert_memory_equal(blob, bin, sizeof bin);
    for (size_t k = 1; k < COPY_NCOLS; k++)
        assert_true(dbk_result_is_null(r, 1, k));
    DBKT_OK(dbk_result_get_text(r, 2, 1, &s, &len, &err), &err);
    assert_string_equal(s, "\\N");
    assert_false(dbk_result_is_null(r, 2, 1));
    DBKT_OK(dbk_result_get_double(r, 2, 2, &d, &err), &err);
    assert_true(d == 1e300);
    DBKT_OK(dbk_result_get_bool(r, 2, 3, &b, &err), &err);
    assert_false(b);
    DBKT_OK(dbk_result_get_blob(r, 2, 6, &blob, &len, &err), &err);
    assert_int_equal(len, 0);
    assert_false(dbk_result_is_null(r, 2, 6));
    dbk_result_free(r);
    dbk_conn_close(c);
}

static void db_copy_from_round_trips_every_type(void **state)
{
    (void)state;
    dbkt_each_engine("db_copy_types", copy_types);
}

/* More rows than one SQLite statement may carry, on a pool and inside a
 * transaction; no rows is a no-op. */
struct copy_many {
    dbk_value *v;
    size_t n;
};

static dbk_rc copy_in_tx(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct copy_many *m = ctx;
    int64_t w = 0;
    static const char *const cols[] = {"id", "name"};
    dbk_rc rc = dbk_db_copy_from(tx, "many", cols, 2, m->v + 2 * m->n, m->n, &w, err);
    assert_int_equal(w, rc ? 0 : (int64_t)m->n);
    return rc;
}

static void copy_many(const char *url, dbk_engine e)
{
    (void)e;
    dbk_config *cfg = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_db *db = dbk_pool_db(pool);
    dbkt_exec(db, "CREATE TABLE many (id BIGINT PRIMARY KEY, name TEXT NOT NULL)");
    static const char *const cols[] = {"id", "name"};
    int64_t w = -1;
    DBKT_OK(dbk_db_copy_from(db, "many", cols, 2, NULL, 0, &w, &err), &err);
    assert_int_equal(w, 0);
    struct copy_many m = {.n = 1200};
    m.v = calloc(4 * m.n, sizeof *m.v);
    assert_non_null(m.v);
    for (size_t i = 0; i < 2 * m.n; i++) {
        m.v[2 * i] = dbk_int64((int64_t)i + 1);
        m.v[2 * i + 1] = dbk_text(i % 2 ? "odd" : "even\t");
    }
    DBKT_OK(dbk_db_copy_from(db, "many", cols, 2, m.v, m.n, &w, &err), &err);
    assert_int_equal(w, (int64_t)m.n);
    DBKT_OK(dbk_tx_run(db, copy_in_tx, &m, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM many"), (int64_t)(2 * m.n));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM many WHERE name = 'even\t'"),
                     (int64_t)m.n);
    free(m.v);
    dbk_pool_close(pool, 0);
    dbk_config_free(cfg);
}

static void db_copy_from_many_rows_on_pool_and_transaction(void **state)
{
    (void)state;
    dbkt_each_engine("db_copy_many", copy_many);
}

/* A row the server refuses (the last of a chunk, past the first chunk on
 * SQLite) leaves nothing written, and the executor stays usable. */
static void copy_fails(const char *url, dbk_engine e)
{
    (void)e;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL)");
    dbkt_exec(db, "INSERT INTO t (id, name) VALUES (5000, 'kept')");
    static const char *const cols[] = {"id", "name"};
    const size_t n = 1000;
    dbk_value *v = calloc(2 * n, sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        v[2 * i] = dbk_int64((int64_t)i + 1);
        v[2 * i + 1] = dbk_text("x");
    }
    v[2 * (n - 1)] = dbk_int64(5000); /* duplicate key in the last row */
    int64_t w = -1;
    DBKT_RC(DBK_EUNIQUE, dbk_db_copy_from(db, "t", cols, 2, v, n, &w, &err));
    assert_int_equal(w, 0);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    v[2 * (n - 1)] = dbk_int64((int64_t)n);
    v[1] = dbk_null(); /* NOT NULL in the first row */
    DBKT_RC(DBK_ENOT_NULL, dbk_db_copy_from(db, "t", cols, 2, v, n, &w, &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    v[1] = dbk_text("x");
    DBKT_OK(dbk_db_copy_from(db, "t", cols, 2, v, n, &w, &err), &err);
    assert_int_equal(w, (int64_t)n);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), (int64_t)n + 1);
    free(v);
    dbk_conn_close(c);
}

static void db_copy_from_failing_row_writes_nothing(void **state)
{
    (void)state;
    dbkt_each_engine("db_copy_fails", copy_fails);
}

/* Misuse is DBK_EMISUSE; a value over the limit is refused from its length
 * (the bytes are unreadable) and nothing is written. */
static void copy_misuse(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, e == DBK_ENGINE_POSTGRES ? "CREATE TABLE t (a TEXT, b BYTEA)"
                                           : "CREATE TABLE t (a TEXT, b BLOB)");
    static const char *const cols[] = {"a", "b"};
    static const char *const nameless[] = {"a", ""};
    static const char *const null_name[] = {"a", NULL};
    dbk_value v[2] = {dbk_text("x"), dbk_null()};
    int64_t w = -1;
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(NULL, "t", cols, 2, v, 1, &w, &err));
    assert_int_equal(w, 0);
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, NULL, cols, 2, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "", cols, 2, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", NULL, 2, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", cols, 0, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", cols, 2, NULL, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", nameless, 2, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", null_name, 2, v, 1, &w, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", cols, 2, v, SIZE_MAX, &w, &err));
    dbk_value bad[2] = {dbk_text("x"), dbk_null()};
    bad[1].type = DBK_TYPE_TEXT;
    bad[1].u.bytes.ptr = NULL;
    bad[1].u.bytes.len = 3;
    if (e == DBK_ENGINE_POSTGRES)
        DBKT_RC(DBK_EMISUSE, dbk_db_copy_from(db, "t", cols, 2, bad, 1, &w, &err));

    const size_t G = (size_t)1 << 30;
    const size_t maplen = G + 1;
    char *huge = dbkt_unreadable(maplen);
    for (int t = 0; t < 2; t++) {
        dbk_value h[4] = {dbk_text("first"), dbk_null(), dbk_text("x"), dbk_null()};
        h[3].type = t ? DBK_TYPE_BLOB : DBK_TYPE_TEXT;
        h[3].u.bytes.ptr = huge;
        h[3].u.bytes.len = maplen;
        memset(&err, 0, sizeof err);
        DBKT_RC(DBK_EINVALID, dbk_db_copy_from(db, "t", cols, 2, h, 2, &w, &err));
        assert_int_equal(w, 0);
        assert_true(err.hint[0] != '\0');
    }
    dbkt_unreadable_free(huge, maplen);
    if (e == DBK_ENGINE_POSTGRES) {
        dbk_value nul[2] = {dbk_textn("a\0b", 3), dbk_null()};
        DBKT_RC(DBK_EINVALID, dbk_db_copy_from(db, "t", cols, 2, nul, 1, &w, &err));
        assert_non_null(strstr(err.message, "row 0"));
    }
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    DBKT_OK(dbk_db_copy_from(db, "t", cols, 2, v, 1, &w, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    dbk_conn_close(c);
}

static void db_copy_from_misuse_and_limits(void **state)
{
    (void)state;
    dbkt_each_engine("db_copy_misuse", copy_misuse);
}

/* ---- fork: a connection belongs to the process that opened it ---- */

struct fork_ctx {
    dbk_conn *conn;     /* opened by the parent */
    dbk_pool *pool;
    dbk_conn *borrowed; /* checked out of the pool before fork() */
    dbk_db *tx;         /* a transaction open in the parent, or NULL */
};

/* Fails with DBK_EMISUSE naming fork()? Bit set in the result otherwise. */
static int refused(dbk_rc rc, const dbk_error *err, int bit)
{
    return rc == DBK_EMISUSE && strstr(err->message, "fork") ? 0 : bit;
}

static int child_uses_parents_handles(void *p)
{
    struct fork_ctx *f = p;
    int code = 0;
    dbk_error err;
    int64_t v = 0;
    if (f->tx) {
        code |= refused(dbk_db_query_int64(f->tx, "SELECT 1", NULL, 0, &v, &err), &err, 1);
        code |= refused(dbk_db_exec(f->tx, "INSERT INTO t (x) VALUES (99)", NULL, 0, NULL, &err),
                        &err, 2);
        return code;
    }
    dbk_db *db = dbk_conn_db(f->conn);
    code |= refused(dbk_db_query_int64(db, "SELECT 1", NULL, 0, &v, &err), &err, 1);
    code |= refused(dbk_db_exec(db, "INSERT INTO t (x) VALUES (99)", NULL, 0, NULL, &err), &err,
                    2);
    code |= refused(dbk_db_exec_script(db, "INSERT INTO t (x) VALUES (98)", &err), &err, 4);
    code |= refused(dbk_conn_ping(f->conn, 500, &err), &err, 8);
    dbk_batch *b = NULL;
    if (dbk_batch_new(&b, &err) || dbk_batch_add(b, "SELECT 1", NULL, 0, &err)) {
        code |= 16;
    } else {
        dbk_batch_run(db, b, DBK_BATCH_INDEPENDENT, &err);
        code |= refused(dbk_batch_rc(b, 0), dbk_batch_error(b, 0), 16);
    }
    dbk_batch_free(b);
    code |= refused(dbk_db_query_int64(dbk_conn_db(f->borrowed), "SELECT 1", NULL, 0, &v, &err),
                    &err, 32);
    code |= refused(dbk_db_query_int64(dbk_pool_db(f->pool), "SELECT 1", NULL, 0, &v, &err),
                    &err, 64);
    /* Closing forgets: nothing may reach the parent's session or file. */
    dbk_conn_close(f->conn);
    return code;
}

static dbk_rc fork_inside_tx(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct fork_ctx *f = ctx;
    dbk_rc rc = dbk_db_exec(tx, "INSERT INTO t (x) VALUES (1)", NULL, 0, NULL, err);
    if (rc)
        return rc;
    struct fork_ctx cf = *f;
    cf.tx = tx;
    int code = dbkt_in_child(child_uses_parents_handles, &cf);
    if (code != 0)
        return dbk_db_exec(tx, "SELECT 1/0", NULL, 0, NULL, err); /* fails the transaction */
    return dbk_db_exec(tx, "INSERT INTO t (x) VALUES (2)", NULL, 0, NULL, err);
}

static void fork_case(const char *url, dbk_engine e)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    struct fork_ctx f = {0};
    DBKT_OK(dbk_conn_open(cfg, &f.conn, &err), &err);
    dbk_pool_opts o = {.max_size = 2};
    DBKT_OK(dbk_pool_open(cfg, &o, &f.pool, &err), &err);
    dbk_config_free(cfg);
    dbk_db *db = dbk_conn_db(f.conn);
    dbkt_exec(db, "CREATE TABLE t (x INTEGER)");
    DBKT_OK(dbk_pool_acquire(f.pool, &f.borrowed, &err), &err);
    const char *pid_sql = e == DBK_ENGINE_POSTGRES ? "SELECT pg_backend_pid()" : "SELECT 7";
    int64_t pid_conn = dbkt_int(db, pid_sql);
    int64_t pid_borrowed = dbkt_int(dbk_conn_db(f.borrowed), pid_sql);

    int code = dbkt_in_child(child_uses_parents_handles, &f);
    if (code != 0)
        fail_msg("the child could use the parent's handles (failed checks: 0x%x)", code);
    /* The parent's sessions are the same ones, intact and in sync. */
    assert_int_equal(dbkt_int(db, pid_sql), pid_conn);
    assert_int_equal(dbkt_int(dbk_conn_db(f.borrowed), pid_sql), pid_borrowed);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(dbkt_int(db, "SELECT 40 + 2"), 42);
    dbk_pool_release(f.pool, f.borrowed);
    f.borrowed = NULL;

    /* A transaction open across fork(): the child cannot write into it. */
    DBKT_OK(dbk_tx_run(dbk_pool_db(f.pool), fork_inside_tx, &f, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 2);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t WHERE x = 99"), 0);
    dbk_pool_close(f.pool, 1000);
    dbk_conn_close(f.conn);
}

static void db_connection_refuses_use_after_fork(void **state)
{
    (void)state;
    dbkt_each_engine("db_fork", fork_case);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(db_query_exec_and_helpers),
        cmocka_unit_test(db_placeholders_by_number),
        cmocka_unit_test(db_values_round_trip_byte_for_byte),
        cmocka_unit_test(db_getters_refuse_to_guess),
        cmocka_unit_test(db_errors_are_classified),
        cmocka_unit_test(db_misuse_is_an_error_not_a_crash),
        cmocka_unit_test(db_result_outlives_connection),
        cmocka_unit_test(db_observer_sees_every_statement),
        cmocka_unit_test(db_script_runs_statements_in_order),
        cmocka_unit_test(db_ping_and_version),
        cmocka_unit_test(db_huge_parameters_refused_before_sending),
        cmocka_unit_test(db_large_text_round_trips_whole),
        cmocka_unit_test(db_copy_from_round_trips_every_type),
        cmocka_unit_test(db_copy_from_many_rows_on_pool_and_transaction),
        cmocka_unit_test(db_copy_from_failing_row_writes_nothing),
        cmocka_unit_test(db_copy_from_misuse_and_limits),
        cmocka_unit_test(db_connection_refuses_use_after_fork),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
