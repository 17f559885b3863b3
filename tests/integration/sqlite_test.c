/*
 * The SQLite driver through the public API: opening (file, memory,
 * read-only, a missing directory), the PRAGMAs it promises, $N binding by
 * name, every value type byte for byte, RETURNING and affected counts,
 * constraint and schema errors, busy and statement timeouts, the statement
 * cache, single-statement runs and scripts. No server needed: temporary
 * files and sqlite::memory:. Runs under valgrind in CI (dbkit:valgrind).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"
#include "core/internal.h" /* dbk__now_ns */
#include "db/db_int.h"
#include "driver/driver.h" /* reset / txstate are internal */

/* ---- helpers ---- */

/* Defined in src/driver/sqlite.c for this test: statements kept prepared. */
int dbk__sqlite_cached_statements(const void *impl);

/* Opens url with extra settings applied from code: keys[i] = values[i]. */
static dbk_conn *open_set(const char *url, const char *const *kv)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    for (; kv && kv[0]; kv += 2)
        DBKT_OK(dbk_config_set(cfg, kv[0], kv[1], &err), &err);
    DBKT_OK(dbk_conn_open(cfg, &c, &err), &err);
    dbk_config_free(cfg);
    return c;
}

static dbk_rc try_open(const char *url, dbk_conn **c, dbk_error *err)
{
    dbk_config *cfg = NULL;
    *c = NULL;
    dbk_rc rc = dbk_config_from(url, NULL, NULL, &cfg, err);
    if (rc == DBK_OK)
        rc = dbk_conn_open(cfg, c, err);
    dbk_config_free(cfg);
    return rc;
}


/* ---- opening ---- */

static void sqlite_open_file_persists(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("persist");
    dbk_conn *c = dbkt_open(url);
    dbkt_exec(dbk_conn_db(c), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
                          "INSERT INTO t (v) VALUES ('kept');");
    dbk_conn_close(c);

    struct stat sb;
    assert_int_equal(stat(url + strlen("sqlite:"), &sb), 0);

    c = dbkt_open(url);
    char buf[16];
    dbkt_text(dbk_conn_db(c), "SELECT v FROM t WHERE id = 1", buf, sizeof buf);
    assert_string_equal(buf, "kept");
    dbk_conn_close(c);
    free(url);
}

static void sqlite_open_memory_is_private(void **state)
{
    (void)state;
    dbk_conn *a = dbkt_open("sqlite::memory:");
    dbk_conn *b = dbkt_open("sqlite::memory:");
    dbkt_exec(dbk_conn_db(a), "CREATE TABLE only_a (x INTEGER)");
    assert_int_equal(dbkt_int(dbk_conn_db(a), "SELECT count(*) FROM sqlite_schema WHERE name = "
                                           "'only_a'"),
                     1);
    assert_int_equal(dbkt_int(dbk_conn_db(b), "SELECT count(*) FROM sqlite_schema WHERE name = "
                                           "'only_a'"),
                     0);
    char mode[16];
    dbkt_text(dbk_conn_db(a), "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "memory");
    assert_int_equal(dbkt_int(dbk_conn_db(a), "PRAGMA foreign_keys"), 1);
    dbk_conn_close(a);
    dbk_conn_close(b);
}

static void sqlite_open_readonly_refuses_writes(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("ro");
    dbk_conn *c = dbkt_open(url);
    dbkt_exec(dbk_conn_db(c), "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);");
    dbk_conn_close(c);

    char ro[1024];
    snprintf(ro, sizeof ro, "%s?mode=ro", url);
    c = dbkt_open(ro);
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbkt_int(db, "SELECT x FROM t"), 7);
    dbk_error err;
    DBKT_RC(DBK_EREADONLY, dbk_db_exec(db, "INSERT INTO t VALUES (8)", NULL, 0, NULL, &err));
    assert_int_equal(err.code, DBK_EREADONLY);
    assert_non_null(strstr(err.message, "readonly"));
    assert_true(err.hint[0] != '\0');
    DBKT_RC(DBK_EREADONLY, dbk_db_exec_script(db, "CREATE TABLE u (y INTEGER)", &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    dbk_conn_close(c);
    free(url);
}

static void sqlite_open_readonly_missing_file(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("never_created");
    char ro[1024];
    snprintf(ro, sizeof ro, "%s?mode=ro", url);
    dbk_conn *c = NULL;
    dbk_error err;
    DBKT_RC(DBK_EUNAVAILABLE, try_open(ro, &c, &err));
    assert_null(c);
    assert_non_null(strstr(err.message, "never_created.db"));
    assert_non_null(strstr(err.hint, "mode=ro"));

    /* mode=rw does not create the file either. */
    snprintf(ro, sizeof ro, "%s?mode=rw", url);
    DBKT_RC(DBK_EUNAVAILABLE, try_open(ro, &c, &err));
    assert_non_null(strstr(err.hint, "mode=rw"));
    struct stat sb;
    assert_int_not_equal(stat(url + strlen("sqlite:"), &sb), 0);
    free(url);
}

static void sqlite_open_missing_directory(void **state)
{
    (void)state;
    char *dir = dbkt_tmpdir();
    char url[1024];
    snprintf(url, sizeof url, "sqlite:%s/no/such/dir/app.db", dir);
    dbk_conn *c = NULL;
    dbk_error err;
    DBKT_RC(DBK_EUNAVAILABLE, try_open(url, &c, &err));
    assert_null(c);
    assert_int_equal(err.code, DBK_EUNAVAILABLE);
    assert_non_null(strstr(err.message, "/no/such/dir/app.db"));
    assert_non_null(strstr(err.hint, "does not exist"));
    assert_non_null(strstr(err.hint, "/no/such/dir"));
    free(dir);
}

static void sqlite_open_not_a_database(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("garbage");
    FILE *f = fopen(url + strlen("sqlite:"), "wb");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fputs("this is not an sqlite file. ", f);
    fclose(f);
    dbk_conn *c = NULL;
    dbk_error err;
    DBKT_RC(DBK_EIO, try_open(url, &c, &err));
    assert_null(c);
    assert_non_null(strstr(err.message, "garbage.db"));
    assert_non_null(strstr(err.hint, "not an sqlite database"));
    free(url);
}

static void sqlite_pragmas_in_effect(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("pragmas");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    char mode[16];
    dbkt_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "wal");
    assert_int_equal(dbkt_int(db, "PRAGMA foreign_keys"), 1);
    assert_int_equal(dbkt_int(db, "PRAGMA busy_timeout"), 5000);
    assert_int_equal(dbkt_int(db, "PRAGMA synchronous"), 1); /* NORMAL */
    dbk_conn_close(c);

    char u2[1024];
    snprintf(u2, sizeof u2, "%s?busy_timeout=250", url);
    c = dbkt_open(u2);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA busy_timeout"), 250);
    dbk_conn_close(c);

    /* Another journal mode and synchronous level, from the URL. */
    char *url2 = dbkt_sqlite_url("pragmas_delete");
    snprintf(u2, sizeof u2, "%s?journal_mode=delete&synchronous=full", url2);
    c = dbkt_open(u2);
    dbkt_text(dbk_conn_db(c), "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "delete");
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA synchronous"), 2); /* FULL */
    dbk_conn_close(c);
    free(url2);

    /* The page cache and memory-mapped reads: SQLite's own unless set */
    int64_t cache0 = dbkt_int(db = dbk_conn_db(c = dbkt_open(url)), "PRAGMA cache_size");
    assert_int_equal(dbkt_int(db, "PRAGMA mmap_size"), 0);
    dbk_conn_close(c);
    snprintf(u2, sizeof u2, "%s?cache_size=65536&mmap_size=256", url);
    c = dbkt_open(u2);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA cache_size"), -65536);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA mmap_size"), 268435456);
    assert_true(cache0 != -65536);
    dbk_conn_close(c);
    /* a pooled connection's reset gives them back after a borrower changed them */
    dbk_config *cfg = NULL;
    dbk_pool *pool = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from_url(u2, &cfg, &err), &err);
    dbk_pool_opts po = {.max_size = 1};
    DBKT_OK(dbk_pool_open(cfg, &po, &pool, &err), &err);
    dbk_config_free(cfg);
    DBKT_OK(dbk_pool_acquire(pool, &c, &err), &err);
    dbkt_exec(dbk_conn_db(c), "PRAGMA cache_size = 10; PRAGMA mmap_size = 0");
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA cache_size"), 10);
    dbk_pool_release(pool, c);
    DBKT_OK(dbk_pool_acquire(pool, &c, &err), &err);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA cache_size"), -65536);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "PRAGMA mmap_size"), 268435456);
    dbk_pool_release(pool, c);
    dbk_pool_close(pool, 1000);
    free(url);
}

static void sqlite_double_quoted_strings_rejected(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (name TEXT)");
    dbk_result *r = NULL;
    dbk_error err;
    /* As on PostgreSQL, "bob" is a column name, not a string. */
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT * FROM t WHERE name = \"bob\"", NULL, 0, &r,
                                      &err));
    assert_null(r);
    dbk_conn_close(c);
}

static void sqlite_ping_and_version(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_error err;
    DBKT_OK(dbk_conn_ping(c, 0, &err), &err);
    const char *v = dbk_conn_server_version(c);
    assert_non_null(v);
    assert_int_equal(v[0], '3');
    assert_int_equal(dbk_db_engine(dbk_conn_db(c)), DBK_ENGINE_SQLITE);
    dbk_conn_close(c);
}

/* ---- placeholders ---- */

static void sqlite_bind_by_name_out_of_order(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    char buf[64];
    dbk_value p[] = {dbk_text("first"), dbk_text("second")};
    DBKT_OK(dbk_db_query_text(db, "SELECT $2 || '-' || $1", p, 2, buf, sizeof buf, NULL, &err),
            &err);
    assert_string_equal(buf, "second-first");

    dbk_value one[] = {dbk_int64(21)};
    int64_t v = 0;
    DBKT_OK(dbk_db_query_int64(db, "SELECT $1 + $1", one, 1, &v, &err), &err);
    assert_int_equal(v, 42);

    dbk_value three[] = {dbk_int64(1), dbk_int64(2), dbk_int64(3)};
    DBKT_OK(dbk_db_query_int64(db, "SELECT $3 * 100 + $1 * 10 + $2 + $3 - $3", three, 3, &v,
                               &err),
            &err);
    assert_int_equal(v, 312);
    dbk_conn_close(c);
}

static void sqlite_positional_placeholders(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    int64_t v = 0;
    dbk_value p[] = {dbk_int64(5), dbk_int64(3)};
    DBKT_OK(dbk_db_query_int64(db, "SELECT ? - ?", p, 2, &v, &err), &err);
    assert_int_equal(v, 2);
    DBKT_OK(dbk_db_query_int64(db, "SELECT ?2 - ?1", p, 2, &v, &err), &err);
    assert_int_equal(v, -2);
    DBKT_RC(DBK_EMISUSE, dbk_db_query_int64(db, "SELECT $1 - ?", p, 2, &v, &err));
    dbk_conn_close(c);
}

static void sqlite_param_count_mismatch(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r = NULL;
    dbk_value p[] = {dbk_int64(1), dbk_int64(2), dbk_int64(3)};

    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1, $2, $3", p, 2, &r, &err));
    assert_null(r);
    assert_non_null(strstr(err.message, "$3"));
    assert_non_null(strstr(err.message, "2 parameters"));

    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1, $2", p, 3, &r, &err));
    assert_null(r);
    assert_non_null(strstr(err.message, "3 were given"));

    /* $2 given but never used */
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1, $3", p, 3, &r, &err));
    assert_non_null(strstr(err.message, "$2"));

    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT 1", p, 1, &r, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1", NULL, 0, &r, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT :name", p, 1, &r, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $0", p, 1, &r, &err));
    /* A PostgreSQL cast gets a hint instead of a puzzling error. */
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1::int", p, 1, &r, &err));
    assert_non_null(strstr(err.hint, "CAST"));

    /* The cached statement still works with the right count afterwards. */
    DBKT_OK(dbk_db_query(db, "SELECT $1, $2, $3", p, 3, &r, &err), &err);
    int64_t v;
    DBKT_OK(dbk_result_get_int64(r, 0, 2, &v, &err), &err);
    assert_int_equal(v, 3);
    dbk_result_free(r);
    dbk_conn_close(c);
}

/* ---- values ---- */

static void check_text(dbk_result *r, size_t row, int col, const char *want, size_t wlen)
{
    dbk_error err;
    const char *s = NULL;
    size_t n = 0;
    DBKT_OK(dbk_result_get_text(r, row, col, &s, &n, &err), &err);
    assert_non_null(s);
    assert_int_equal(n, wlen);
    assert_memory_equal(s, want, wlen);
    assert_int_equal(s[n], '\0');
}

static void sqlite_values_round_trip(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("values");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE x (id INTEGER PRIMARY KEY, t TEXT, b BLOB, i INTEGER, d REAL, "
              "f INTEGER, ts TEXT, j TEXT, n TEXT)");

    static const char *const texts[] = {
        "'; DROP TABLE x; --",
        "Robert'); DROP TABLE x;--",
        "\"double\" 'single' `back`",
        "back\\slash \\' \\\\ \\0",
        "unicode: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
        "$1 ? ?1 :name @x -- /* not a comment */",
        "",
    };
    size_t ntexts = sizeof texts / sizeof texts[0];
    for (size_t k = 0; k < ntexts; k++) {
        dbk_value p[] = {dbk_int64((int64_t)k + 1), dbk_text(texts[k])};
        DBKT_OK(dbk_db_exec(db, "INSERT INTO x (id, t) VALUES ($1, $2)", p, 2, NULL, &err),
                &err);
    }
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT t FROM x ORDER BY id", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_nrows(r), ntexts);
    for (size_t k = 0; k < ntexts; k++)
        check_text(r, k, 0, texts[k], strlen(texts[k]));
    dbk_result_free(r);

    /* 1 MiB text, a blob with every byte value, embedded NUL in text. */
    size_t big = 1 << 20;
    char *mib = malloc(big);
    assert_non_null(mib);
    for (size_t k = 0; k < big; k++)
        mib[k] = (char)('a' + (k * 7) % 26);
    unsigned char blob[1024];
    for (size_t k = 0; k < sizeof blob; k++)
        blob[k] = (unsigned char)(k * 131 % 256);
    blob[0] = 0;
    blob[500] = 0;
    const char nul_text[] = "before\0after";
    size_t nul_len = sizeof nul_text - 1;

    int64_t ts = 1700000000123456LL;
    dbk_value p[] = {
        dbk_int64(100), dbk_textn(mib, big), dbk_blob(blob, sizeof blob),
        dbk_int64(INT64_MIN), dbk_double(-1.5e300), dbk_bool(true),
        dbk_timestamp(ts), dbk_json("{\"a\": [1, 2, \"\\u00e9\"]}"), dbk_null(),
    };
    DBKT_OK(dbk_db_exec(db, "INSERT INTO x (id, t, b, i, d, f, ts, j, n) VALUES ($1, $2, $3, "
                            "$4, $5, $6, $7, $8, $9)",
                        p, 9, NULL, &err),
            &err);
    dbk_value p2[] = {dbk_int64(101), dbk_textn(nul_text, nul_len), dbk_int64(INT64_MAX),
                      dbk_bool(false), dbk_blob(NULL, 0)};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO x (id, t, i, f, b) VALUES ($1, $2, $3, $4, $5)", p2, 5,
                        NULL, &err),
            &err);

    DBKT_OK(dbk_db_query(db, "SELECT t, b, i, d, f, ts, j, n FROM x WHERE id >= 100 ORDER BY id",
                         NULL, 0, &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 2);
    check_text(r, 0, 0, mib, big);
    const void *bp = NULL;
    size_t bn = 0;
    DBKT_OK(dbk_result_get_blob(r, 0, 1, &bp, &bn, &err), &err);
    assert_int_equal(bn, sizeof blob);
    assert_memory_equal(bp, blob, sizeof blob);
    assert_int_equal(dbk_result_type(r, 0, 1), DBK_TYPE_BLOB);
    int64_t iv;
    DBKT_OK(dbk_result_get_int64(r, 0, 2, &iv, &err), &err);
    assert_true(iv == INT64_MIN);
    double dv;
    DBKT_OK(dbk_result_get_double(r, 0, 3, &dv, &err), &err);
    assert_true(dv == -1.5e300);
    bool fv;
    DBKT_OK(dbk_result_get_bool(r, 0, 4, &fv, &err), &err);
    assert_true(fv);
    int64_t tv;
    DBKT_OK(dbk_result_get_timestamp(r, 0, 5, &tv, &err), &err);
    assert_true(tv == ts);
    check_text(r, 0, 5, "2023-11-14 22:13:20.123456+00:00", 32);
    const char *js = "{\"a\": [1, 2, \"\\u00e9\"]}";
    check_text(r, 0, 6, js, strlen(js));
    assert_true(dbk_result_is_null(r, 0, 7));

    check_text(r, 1, 0, nul_text, nul_len);
    DBKT_OK(dbk_result_get_int64(r, 1, 2, &iv, &err), &err);
    assert_true(iv == INT64_MAX);
    DBKT_OK(dbk_result_get_bool(r, 1, 4, &fv, &err), &err);
    assert_false(fv);
    DBKT_OK(dbk_result_get_blob(r, 1, 1, &bp, &bn, &err), &err);
    assert_int_equal(bn, 0);
    assert_int_equal(dbk_result_type(r, 1, 1), DBK_TYPE_BLOB); /* empty, not NULL */
    dbk_result_free(r);

    /* The injection strings did nothing: the table is intact. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM x"), (int64_t)ntexts + 2);

    /* Values also work in WHERE: equality on the binary-containing text. */
    dbk_value w[] = {dbk_textn(nul_text, nul_len)};
    int64_t id = 0;
    DBKT_OK(dbk_db_query_int64(db, "SELECT id FROM x WHERE t = $1", w, 1, &id, &err), &err);
    assert_int_equal(id, 101);
    free(mib);
    dbk_conn_close(c);
    free(url);
}

static void sqlite_value_edge_cases(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r = NULL;
    /* NaN would silently become NULL in SQLite: refused. */
    dbk_value nan_v[] = {dbk_double(NAN)};
    DBKT_RC(DBK_EINVALID, dbk_db_query(db, "SELECT $1", nan_v, 1, &r, &err));
    assert_null(r);
    /* Infinity is stored. */
    dbk_value inf_v[] = {dbk_double(INFINITY)};
    DBKT_OK(dbk_db_query(db, "SELECT $1", inf_v, 1, &r, &err), &err);
    double d = 0;
    DBKT_OK(dbk_result_get_double(r, 0, 0, &d, &err), &err);
    assert_true(isinf(d) && d > 0);
    dbk_result_free(r);
    /* A timestamp outside 0001..9999 is invalid input. */
    dbk_value ts_v[] = {dbk_timestamp(INT64_MAX)};
    DBKT_RC(DBK_EINVALID, dbk_db_query(db, "SELECT $1", ts_v, 1, &r, &err));
    /* Text with a NULL pointer but a length is misuse; with length 0 it is "". */
    dbk_value bad[] = {dbk_textn(NULL, 3)};
    DBKT_RC(DBK_EMISUSE, dbk_db_query(db, "SELECT $1", bad, 1, &r, &err));
    dbk_value empty[] = {dbk_textn(NULL, 0)};
    char buf[8];
    bool is_null = true;
    DBKT_OK(dbk_db_query_text(db, "SELECT $1", empty, 1, buf, sizeof buf, &is_null, &err), &err);
    assert_false(is_null);
    assert_string_equal(buf, "");
    /* Nine timestamps: more than the stack buffers. */
    dbk_value many[10];
    for (int k = 0; k < 10; k++)
        many[k] = dbk_timestamp((int64_t)k * 1000000);
    DBKT_OK(dbk_db_query(db, "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10", many, 10, &r,
                         &err),
            &err);
    for (int k = 0; k < 10; k++) {
        int64_t t = -1;
        DBKT_OK(dbk_result_get_timestamp(r, 0, k, &t, &err), &err);
        assert_int_equal(t, (int64_t)k * 1000000);
    }
    dbk_result_free(r);
    dbk_conn_close(c);
}

/* ---- rows, RETURNING, affected ---- */

static void sqlite_returning(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)");
    dbk_result *r = NULL;
    dbk_value p[] = {dbk_text("a@example.com")};
    DBKT_OK(dbk_db_query(db, "INSERT INTO users (email) VALUES ($1) RETURNING id, email", p, 1,
                         &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 1);
    assert_int_equal(dbk_result_ncols(r), 2);
    assert_string_equal(dbk_result_colname(r, 0), "id");
    assert_string_equal(dbk_result_colname(r, 1), "email");
    int64_t id = 0;
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "id", &id, &err), &err);
    assert_int_equal(id, 1);
    assert_int_equal(dbk_result_affected(r), 1);
    dbk_result_free(r);

    dbkt_exec(db, "INSERT INTO users (email) VALUES ('b'), ('c')");
    DBKT_OK(dbk_db_query(db, "UPDATE users SET email = upper(email) WHERE id > 1 RETURNING id",
                         NULL, 0, &r, &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 2);
    assert_int_equal(dbk_result_affected(r), 2);
    dbk_result_free(r);

    DBKT_OK(dbk_db_query(db, "DELETE FROM users RETURNING email", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_nrows(r), 3);
    assert_int_equal(dbk_result_affected(r), 3);
    dbk_result_free(r);
    dbk_conn_close(c);
}

static void sqlite_affected_counts(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    int64_t n = -1;
    DBKT_OK(dbk_db_exec(db, "CREATE TABLE t (x INTEGER)", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0);
    DBKT_OK(dbk_db_exec(db, "INSERT INTO t VALUES (1), (2), (3)", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 3);
    DBKT_OK(dbk_db_exec(db, "UPDATE t SET x = x + 1 WHERE x >= 2", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 2);
    /* A statement that changes nothing reports 0, not the previous count. */
    DBKT_OK(dbk_db_exec(db, "SELECT * FROM t", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0);
    DBKT_OK(dbk_db_exec(db, "CREATE INDEX t_x ON t (x)", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0);
    DBKT_OK(dbk_db_exec(db, "DELETE FROM t WHERE x > 100", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0);
    DBKT_OK(dbk_db_exec(db, "DELETE FROM t", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 3);

    /* A SELECT result has 0 affected; an INSERT without RETURNING gives an
     * empty, column-less result with its count. */
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "INSERT INTO t VALUES (9)", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 0);
    assert_int_equal(dbk_result_nrows(r), 0);
    assert_int_equal(dbk_result_affected(r), 1);
    dbk_result_free(r);
    DBKT_OK(dbk_db_query(db, "SELECT x FROM t WHERE x > 100", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 1);
    assert_int_equal(dbk_result_nrows(r), 0);
    assert_string_equal(dbk_result_colname(r, 0), "x");
    assert_int_equal(dbk_result_affected(r), 0);
    dbk_result_free(r);
    dbk_conn_close(c);
}

static void sqlite_result_outlives_connection(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_error err;
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(dbk_conn_db(c), "SELECT 'still here' AS s, 2.5 AS d, NULL AS n", NULL,
                         0, &r, &err),
            &err);
    dbk_conn_close(c);
    check_text(r, 0, 0, "still here", 10);
    assert_int_equal(dbk_result_type(r, 0, 1), DBK_TYPE_DOUBLE);
    assert_true(dbk_result_is_null(r, 0, 2));
    dbk_result_free(r);
}

static void sqlite_schema_change_reprepares(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE t (a INTEGER, b INTEGER); INSERT INTO t VALUES (1, 2)");
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT * FROM t", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 2);
    dbk_result_free(r);
    dbkt_exec(db, "ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'new'");
    DBKT_OK(dbk_db_query(db, "SELECT * FROM t", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 3);
    assert_string_equal(dbk_result_colname(r, 2), "c");
    check_text(r, 0, 2, "new", 3);
    dbk_result_free(r);
    dbk_conn_close(c);
}

/* ---- errors ---- */

static void sqlite_unique_violation(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE)");
    dbk_value p[] = {dbk_text("a@example.com")};
    DBKT_OK(dbk_db_exec(db, "INSERT INTO users (email) VALUES ($1)", p, 1, NULL, &err), &err);
    DBKT_RC(DBK_EUNIQUE, dbk_db_exec(db, "INSERT INTO users (email) VALUES ($1)", p, 1, NULL,
                                     &err));
    assert_int_equal(err.code, DBK_EUNIQUE);
    assert_string_equal(err.table_name, "users");
    assert_string_equal(err.constraint_name, "users.email");
    assert_non_null(strstr(err.message, "UNIQUE constraint failed"));
    assert_string_equal(err.sqlstate, "");

    /* The primary key too. */
    DBKT_RC(DBK_EUNIQUE, dbk_db_exec(db, "INSERT INTO users (id, email) VALUES (1, 'z')", NULL,
                                     0, NULL, &err));
    assert_string_equal(err.constraint_name, "users.id");

    /* A named expression index: the index name. */
    dbkt_exec(db, "CREATE UNIQUE INDEX users_lower_email ON users (lower(email))");
    DBKT_RC(DBK_EUNIQUE, dbk_db_exec(db, "INSERT INTO users (email) VALUES ('A@example.com')",
                                     NULL, 0, NULL, &err));
    assert_string_equal(err.constraint_name, "users_lower_email");
    dbk_conn_close(c);
}

static void sqlite_foreign_key_violation(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE a (id INTEGER PRIMARY KEY);"
              "CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a (id));"
              "INSERT INTO a VALUES (1); INSERT INTO b VALUES (1, 1);");
    DBKT_RC(DBK_EFOREIGN_KEY, dbk_db_exec(db, "INSERT INTO b VALUES (2, 99)", NULL, 0, NULL,
                                          &err));
    assert_true(err.hint[0] != '\0');
    DBKT_RC(DBK_EFOREIGN_KEY, dbk_db_exec(db, "DELETE FROM a WHERE id = 1", NULL, 0, NULL,
                                          &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM a"), 1);
    dbk_conn_close(c);
}

static void sqlite_not_null_violation(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)");
    dbk_value p[] = {dbk_null()};
    DBKT_RC(DBK_ENOT_NULL, dbk_db_exec(db, "INSERT INTO users (email) VALUES ($1)", p, 1, NULL,
                                       &err));
    assert_string_equal(err.table_name, "users");
    assert_string_equal(err.constraint_name, "users.email");
    dbk_conn_close(c);
}

static void sqlite_check_violation(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE items (price INTEGER CONSTRAINT price_positive CHECK (price > 0))");
    dbk_value p[] = {dbk_int64(-5)};
    DBKT_RC(DBK_ECHECK, dbk_db_exec(db, "INSERT INTO items (price) VALUES ($1)", p, 1, NULL,
                                    &err));
    assert_string_equal(err.constraint_name, "price_positive");
    dbk_conn_close(c);
}

static void sqlite_no_such_table(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r = NULL;
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT * FROM missing_table", NULL, 0, &r, &err));
    assert_null(r);
    assert_non_null(strstr(err.message, "no such table"));
    assert_string_equal(err.table_name, "missing_table");
    assert_non_null(strstr(err.hint, "migrat"));

    dbkt_exec(db, "CREATE TABLE t (a INTEGER)");
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT nope FROM t", NULL, 0, &r, &err));
    assert_non_null(strstr(err.message, "no such column"));
    assert_non_null(strstr(err.hint, "migrat"));

    DBKT_RC(DBK_ESQL, dbk_db_query(db, "SELEKT 1", NULL, 0, &r, &err));
    assert_non_null(strstr(err.message, "syntax error"));
    dbk_conn_close(c);
}

static void sqlite_busy_returns_ebusy(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("busy");
    dbk_conn *a = dbkt_open(url);
    dbkt_exec(dbk_conn_db(a), "CREATE TABLE t (x INTEGER)");
    char u2[1024];
    snprintf(u2, sizeof u2, "%s?busy_timeout=100", url);
    dbk_conn *b = dbkt_open(u2);
    dbk_error err;

    DBKT_OK(dbk_db_exec(dbk_conn_db(a), "BEGIN IMMEDIATE", NULL, 0, NULL, &err), &err);
    DBKT_OK(dbk_db_exec(dbk_conn_db(a), "INSERT INTO t VALUES (1)", NULL, 0, NULL, &err), &err);
    DBKT_RC(DBK_EBUSY, dbk_db_exec(dbk_conn_db(b), "INSERT INTO t VALUES (2)", NULL, 0, NULL,
                                   &err));
    assert_true(dbk_rc_is_retryable(err.code));
    assert_non_null(strstr(err.message, "100 ms"));
    assert_true(err.hint[0] != '\0');
    /* Readers are not blocked under WAL. */
    assert_int_equal(dbkt_int(dbk_conn_db(b), "SELECT count(*) FROM t"), 0);
    DBKT_OK(dbk_db_exec(dbk_conn_db(a), "COMMIT", NULL, 0, NULL, &err), &err);
    DBKT_OK(dbk_db_exec(dbk_conn_db(b), "INSERT INTO t VALUES (2)", NULL, 0, NULL, &err), &err);
    assert_int_equal(dbkt_int(dbk_conn_db(b), "SELECT count(*) FROM t"), 2);

    /* A read snapshot gone stale cannot be upgraded to a write: busy at
     * once (no waiting helps), retryable, with its own hint. */
    dbkt_exec(dbk_conn_db(b), "BEGIN");
    assert_int_equal(dbkt_int(dbk_conn_db(b), "SELECT count(*) FROM t"), 2);
    DBKT_OK(dbk_db_exec(dbk_conn_db(a), "INSERT INTO t VALUES (3)", NULL, 0, NULL, &err), &err);
    DBKT_RC(DBK_EBUSY, dbk_db_exec(dbk_conn_db(b), "INSERT INTO t VALUES (4)", NULL, 0, NULL,
                                   &err));
    assert_non_null(strstr(err.hint, "BEGIN IMMEDIATE"));
    dbkt_exec(dbk_conn_db(b), "ROLLBACK");
    dbk_conn_close(a);
    dbk_conn_close(b);
    free(url);
}

static void sqlite_statement_timeout(void **state)
{
    (void)state;
    static const char *const kv[] = {"statement_timeout", "100", NULL};
    dbk_conn *c = open_set("sqlite::memory:", kv);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    int64_t v = 0;
    const char *forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                          "SELECT count(*) FROM n";
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_ETIMEOUT, dbk_db_query_int64(db, forever, NULL, 0, &v, &err));
    int64_t took_ms = (dbk__now_ns() - t0) / 1000000;
    assert_true(took_ms < 60000); /* bounded: it did stop */
    assert_non_null(strstr(err.hint, "index"));
    assert_non_null(strstr(err.message, "100 ms"));
    /* A statement with rows to read is interrupted the same way. */
    dbk_result *r = NULL;
    DBKT_RC(DBK_ETIMEOUT, dbk_db_query(db, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT "
                                           "x + 1 FROM n) SELECT x FROM n WHERE x < 0",
                                       NULL, 0, &r, &err));
    assert_null(r);
    /* The connection is fine afterwards, and a quick statement is not hit. */
    assert_int_equal(dbkt_int(db, "SELECT 41 + 1"), 42);
    dbk_conn_close(c);
}

/* ---- statement cache ---- */

static void sqlite_statement_cache_reuse(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    for (int k = 0; k < 1000; k++) {
        char v[32];
        snprintf(v, sizeof v, "value-%d", k);
        dbk_value p[] = {dbk_int64(k), dbk_text(v)};
        DBKT_OK(dbk_db_exec(db, "INSERT INTO t (id, v) VALUES ($1, $2)", p, 2, NULL, &err),
                &err);
    }
    for (int k = 0; k < 1000; k++) {
        dbk_value p[] = {dbk_int64(k)};
        char buf[32], want[32];
        DBKT_OK(dbk_db_query_text(db, "SELECT v FROM t WHERE id = $1", p, 1, buf, sizeof buf,
                                  NULL, &err),
                &err);
        snprintf(want, sizeof want, "value-%d", k);
        assert_string_equal(buf, want);
    }
    /* INSERT and SELECT: one prepared statement each, however often run
     * (scripts are not cached). */
    assert_int_equal(dbk__sqlite_cached_statements(c->impl), 2);
    dbk_conn_close(c);
}

static void run_distinct(dbk_db *db, int n, int rounds)
{
    dbk_error err;
    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < n; k++) {
            char sql[96];
            snprintf(sql, sizeof sql, "SELECT $1 + %d AS v /* statement %d */", k, k);
            dbk_value p[] = {dbk_int64(round)};
            int64_t v = -1;
            DBKT_OK(dbk_db_query_int64(db, sql, p, 1, &v, &err), &err);
            assert_int_equal(v, round + k);
        }
    }
}

static void sqlite_statement_cache_bounded(void **state)
{
    (void)state;
    /* 300 distinct statements through a cache of 128, twice, then the
     * default size and a disabled cache. */
    static const char *const small[] = {"stmt_cache_size", "128", NULL};
    dbk_conn *c = open_set("sqlite::memory:", small);
    run_distinct(dbk_conn_db(c), 300, 2);
    assert_int_equal(dbk__sqlite_cached_statements(c->impl), 128);
    /* Interleave hot and cold statements. */
    for (int k = 0; k < 200; k++) {
        run_distinct(dbk_conn_db(c), 3, 1);
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT %d", k + 1000);
        assert_int_equal(dbkt_int(dbk_conn_db(c), sql), k + 1000);
    }
    assert_int_equal(dbk__sqlite_cached_statements(c->impl), 128);
    dbk_conn_close(c);

    static const char *const off[] = {"stmt_cache_size", "0", NULL};
    c = open_set("sqlite::memory:", off);
    run_distinct(dbk_conn_db(c), 20, 3);
    assert_int_equal(dbk__sqlite_cached_statements(c->impl), 0);
    dbk_error err;
    dbk_value p[] = {dbk_int64(1)};
    dbk_result *r = NULL;
    DBKT_RC(DBK_EMISUSE, dbk_db_query(dbk_conn_db(c), "SELECT $1, $2", p, 1, &r, &err));
    dbk_conn_close(c);
}

static void sqlite_two_statements_rejected(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE t (x INTEGER)");
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, "INSERT INTO t VALUES (1); DROP TABLE t", NULL, 0,
                                     NULL, &err));
    assert_non_null(strstr(err.hint, "dbk_db_exec_script"));
    /* Nothing ran. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    /* A trailing semicolon and comments are fine. */
    DBKT_OK(dbk_db_exec(db, "INSERT INTO t VALUES (1); -- done\n /* really */ ;\n", NULL, 0,
                        NULL, &err),
            &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1);
    /* Empty SQL is misuse too. */
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, "  -- nothing\n", NULL, 0, NULL, &err));
    dbk_conn_close(c);
}

static void sqlite_script_stops_at_error(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec_script(db,
                                            "CREATE TABLE a (x INTEGER);\n"
                                            "INSERT INTO a VALUES (1);\n"
                                            "INSERT INTO missing VALUES (2);\n"
                                            "CREATE TABLE b (y INTEGER);\n",
                                            &err));
    assert_non_null(strstr(err.message, "statement 3"));
    assert_non_null(strstr(err.message, "INSERT INTO missing"));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM a"), 1);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'b'"), 0);
    /* Semicolons inside strings and comments do not split statements. */
    DBKT_OK(dbk_db_exec_script(db,
                               "-- leading comment; with a semicolon\n"
                               "INSERT INTO a VALUES (length('x;y;z'));  /* ; */\n"
                               "SELECT 1;;\n",
                               &err),
            &err);
    assert_int_equal(dbkt_int(db, "SELECT max(x) FROM a"), 5);
    DBKT_OK(dbk_db_exec_script(db, "", &err), &err);
    dbk_conn_close(c);
}

static void sqlite_reset_rolls_back(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE t (x INTEGER)");
    assert_int_equal(c->drv->txstate(c->impl), DBK__TX_IDLE);
    dbkt_exec(db, "BEGIN; INSERT INTO t VALUES (1);");
    assert_int_equal(c->drv->txstate(c->impl), DBK__TX_OPEN);
    /* A failed statement leaves SQLite's transaction open (no FAILED state). */
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec(db, "INSERT INTO nope VALUES (1)", NULL, 0, NULL, &err));
    assert_int_equal(c->drv->txstate(c->impl), DBK__TX_OPEN);
    DBKT_OK(c->drv->reset(c->impl, &err), &err);
    assert_int_equal(c->drv->txstate(c->impl), DBK__TX_IDLE);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    DBKT_OK(c->drv->reset(c->impl, &err), &err); /* idle: nothing to do */
    dbk_conn_close(c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sqlite_open_file_persists),
    cmocka_unit_test(sqlite_open_memory_is_private),
    cmocka_unit_test(sqlite_open_readonly_refuses_writes),
    cmocka_unit_test(sqlite_open_readonly_missing_file),
    cmocka_unit_test(sqlite_open_missing_directory),
    cmocka_unit_test(sqlite_open_not_a_database),
    cmocka_unit_test(sqlite_pragmas_in_effect),
    cmocka_unit_test(sqlite_double_quoted_strings_rejected),
    cmocka_unit_test(sqlite_ping_and_version),
    cmocka_unit_test(sqlite_bind_by_name_out_of_order),
    cmocka_unit_test(sqlite_positional_placeholders),
    cmocka_unit_test(sqlite_param_count_mismatch),
    cmocka_unit_test(sqlite_values_round_trip),
    cmocka_unit_test(sqlite_value_edge_cases),
    cmocka_unit_test(sqlite_returning),
    cmocka_unit_test(sqlite_affected_counts),
    cmocka_unit_test(sqlite_result_outlives_connection),
    cmocka_unit_test(sqlite_schema_change_reprepares),
    cmocka_unit_test(sqlite_unique_violation),
    cmocka_unit_test(sqlite_foreign_key_violation),
    cmocka_unit_test(sqlite_not_null_violation),
    cmocka_unit_test(sqlite_check_violation),
    cmocka_unit_test(sqlite_no_such_table),
    cmocka_unit_test(sqlite_busy_returns_ebusy),
    cmocka_unit_test(sqlite_statement_timeout),
    cmocka_unit_test(sqlite_statement_cache_reuse),
    cmocka_unit_test(sqlite_statement_cache_bounded),
    cmocka_unit_test(sqlite_two_statements_rejected),
    cmocka_unit_test(sqlite_script_stops_at_error),
    cmocka_unit_test(sqlite_reset_rolls_back),
};

DBKT_MAIN(tests)
