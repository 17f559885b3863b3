/*
 * Configuration tests: every URL form, every malformed input (the message
 * names the bad part and never holds the password), precedence between
 * defaults, environment, URL and code, DB_PASSWORD_FILE, redaction, dump,
 * clone and dbk_config_set(). The environment is a table read through a
 * dbk_getenv_fn, so tests do not depend on the process environment except
 * where the process-environment entry points themselves are under test.
 */
#include "testutil.h"

#include "core/config_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PW "s3cretPW"

/* ---- helpers ----------------------------------------------------------- */

struct env {
    const char *k[16];
    const char *v[16];
};

static const char *env_get(void *ctx, const char *name)
{
    const struct env *e = ctx;
    for (int i = 0; i < 16 && e->k[i]; i++)
        if (strcmp(e->k[i], name) == 0)
            return e->v[i];
    return NULL;
}

static dbk_config *must(const char *url, struct env *env)
{
    dbk_config *cfg = NULL;
    dbk_error err;
    dbk_error_clear(&err);
    DBKT_OK(dbk_config_from(url, env ? env_get : NULL, env, &cfg, &err), &err);
    assert_non_null(cfg);
    return cfg;
}

/* Asserts DBK_ECONFIG, no config, a message containing `part`, and no
 * trace of the password. */
static void must_fail(const char *url, struct env *env, const char *part)
{
    dbk_config *cfg = (dbk_config *)(uintptr_t)1;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_config_from(url, env ? env_get : NULL, env, &cfg, &err);
    if (rc == DBK_OK)
        dbk_config_free(cfg);
    if (rc != DBK_ECONFIG)
        fail_msg("%s: expected DBK_ECONFIG, got %s (%s)", url, dbk_rc_name(rc), err.message);
    assert_null(cfg);
    assert_int_equal(err.code, DBK_ECONFIG);
    if (!strstr(err.message, part))
        fail_msg("%s: message \"%s\" does not name \"%s\"", url, err.message, part);
    if (strstr(err.message, PW) || strstr(err.hint, PW) || strstr(err.message, "s3cret") ||
        strstr(err.hint, "s3cret"))
        fail_msg("%s: password leaked into \"%s\" / \"%s\"", url, err.message, err.hint);
}

struct dumped {
    int n;
    char key[64][32];
    char val[64][256];
    dbk_config_source src[64];
};

static void collect(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    struct dumped *d = ctx;
    assert_true(d->n < 64);
    snprintf(d->key[d->n], sizeof d->key[0], "%s", key);
    snprintf(d->val[d->n], sizeof d->val[0], "%s", value);
    d->src[d->n] = src;
    d->n++;
}

static int dumped_find(const struct dumped *d, const char *key)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->key[i], key) == 0)
            return i;
    return -1;
}

static dbk_config_source src_of(const dbk_config *cfg, const char *key)
{
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
    int i = dumped_find(&d, key);
    if (i < 0)
        fail_msg("setting %s is not in the dump", key);
    return d.src[i];
}

static const char *redacted(const dbk_config *cfg, char *buf, size_t len)
{
    size_t need = dbk_config_redacted_url(cfg, buf, len);
    assert_true(need < len);
    assert_int_equal(strlen(buf), need);
    return buf;
}

static const char *redact(const char *url, char *buf, size_t len)
{
    size_t need = dbk_redact_url(url, buf, len);
    assert_true(need < len);
    assert_int_equal(strlen(buf), need);
    return buf;
}

/* ---- defaults ---------------------------------------------------------- */

static void config_defaults_without_anything(void **state)
{
    (void)state;
    dbk_config *cfg = must(NULL, NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_string_equal(cfg->sqlite_path, "dbkit.db");
    assert_false(cfg->sqlite_memory);
    assert_false(cfg->sqlite_readonly);
    assert_true(cfg->sqlite_create);
    assert_int_equal(cfg->busy_timeout_ms, 5000);
    assert_string_equal(cfg->journal_mode, "wal");
    assert_string_equal(cfg->synchronous, "normal");
    assert_null(cfg->host);
    assert_string_equal(cfg->port, "5432");
    assert_string_equal(cfg->application_name, "dbkit");
    assert_null(cfg->sslmode);
    assert_null(cfg->password);
    assert_int_equal(cfg->connect_timeout_ms, 5000);
    assert_int_equal(cfg->statement_timeout_ms, 30000);
    assert_int_equal(cfg->lock_timeout_ms, 0);
    assert_int_equal(cfg->stmt_cache_size, 128);
    assert_int_equal(cfg->pool.max_size, 10);
    assert_int_equal(cfg->pool.min_idle, 0);
    assert_int_equal(cfg->pool.acquire_timeout_ms, 5000);
    assert_int_equal(cfg->pool.connect_timeout_ms, 5000);
    assert_int_equal(cfg->pool.idle_timeout_ms, 600000);
    assert_int_equal(cfg->pool.max_lifetime_ms, 1800000);
    assert_int_equal(cfg->pool.validate_after_ms, 30000);
    assert_int_equal(cfg->pool.validate_timeout_ms, 1000);
    assert_int_equal(cfg->pool.max_waiters, 1000);
    assert_int_equal(cfg->pool.leak_threshold_ms, 0);
    for (size_t i = 0; i < sizeof cfg->src; i++)
        assert_int_equal(cfg->src[i], DBK_CONFIG_SOURCE_DEFAULT);
    dbk_config_free(cfg);

    /* "" means "not set" too. */
    cfg = must("", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_string_equal(cfg->sqlite_path, "dbkit.db");
    dbk_config_free(cfg);
}

/* ---- PostgreSQL URL forms ---------------------------------------------- */

static void config_pg_full_url(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://alice:" PW "@db.example.com:6543/appdb?sslmode=require"
                           "&application_name=billing",
                           NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_string_equal(cfg->user, "alice");
    assert_string_equal(cfg->password, PW);
    assert_string_equal(cfg->host, "db.example.com");
    assert_string_equal(cfg->port, "6543");
    assert_string_equal(cfg->dbname, "appdb");
    assert_string_equal(cfg->sslmode, "require");
    assert_string_equal(cfg->application_name, "billing");
    assert_int_equal(src_of(cfg, "host"), DBK_CONFIG_SOURCE_URL);
    assert_int_equal(src_of(cfg, "sslmode"), DBK_CONFIG_SOURCE_URL);
    assert_int_equal(src_of(cfg, "statement_timeout"), DBK_CONFIG_SOURCE_DEFAULT);
    assert_int_equal(cfg->nextra, 0);
    dbk_config_free(cfg);
}

/* The enumerators renamed in 0.2 (DBK_SRC_*, now DBK_CONFIG_SOURCE_*) still
 * compile for one release, with the same values, so code comparing the
 * sources a dump reports against them keeps working. */
static void config_deprecated_source_names_still_work(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = must("postgres://alice@db.example.com/appdb?sslmode=require", NULL);
    DBKT_OK(dbk_config_set(cfg, "statement_timeout", "1000", &err), &err);
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    assert_int_equal(d.src[dumped_find(&d, "host")], DBK_SRC_URL);
    assert_int_equal(d.src[dumped_find(&d, "statement_timeout")], DBK_SRC_CODE);
    assert_int_equal(src_of(cfg, "connect_timeout"), DBK_SRC_DEFAULT);
    assert_int_equal(DBK_SRC_DEFAULT, DBK_CONFIG_SOURCE_DEFAULT);
    assert_int_equal(DBK_SRC_ENV, DBK_CONFIG_SOURCE_ENV);
    assert_int_equal(DBK_SRC_URL, DBK_CONFIG_SOURCE_URL);
    assert_int_equal(DBK_SRC_CODE, DBK_CONFIG_SOURCE_CODE);
    dbk_config_source old = DBK_SRC_ENV;
#pragma GCC diagnostic pop
    assert_int_equal(old, 1);
    dbk_config_free(cfg);
}

static void config_pg_postgresql_scheme(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgresql://bob@localhost/db1", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_string_equal(cfg->user, "bob");
    assert_null(cfg->password);
    assert_string_equal(cfg->host, "localhost");
    assert_string_equal(cfg->port, "5432");
    assert_string_equal(cfg->dbname, "db1");
    dbk_config_free(cfg);

    cfg = must("POSTGRES://h/db", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_string_equal(cfg->host, "h");
    dbk_config_free(cfg);
}

static void config_pg_minimal_forms(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://h", NULL);
    assert_string_equal(cfg->host, "h");
    assert_null(cfg->dbname);
    assert_null(cfg->user);
    dbk_config_free(cfg);

    /* Empty authority: libpq's defaults (local socket). */
    cfg = must("postgres:///only_db", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_null(cfg->host);
    assert_string_equal(cfg->dbname, "only_db");
    dbk_config_free(cfg);

    cfg = must("postgres://", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_null(cfg->host);
    assert_null(cfg->dbname);
    dbk_config_free(cfg);

    /* User without a host: the socket, as that user. */
    cfg = must("postgres://carol@/db", NULL);
    assert_string_equal(cfg->user, "carol");
    assert_null(cfg->host);
    dbk_config_free(cfg);

    /* Password without a user. */
    cfg = must("postgres://:" PW "@h/db", NULL);
    assert_null(cfg->user);
    assert_string_equal(cfg->password, PW);
    dbk_config_free(cfg);

    /* Trailing slash: no database name. */
    cfg = must("postgres://h:5433/", NULL);
    assert_string_equal(cfg->port, "5433");
    assert_null(cfg->dbname);
    dbk_config_free(cfg);

    /* Query right after the host. */
    cfg = must("postgres://h?sslmode=disable", NULL);
    assert_string_equal(cfg->host, "h");
    assert_string_equal(cfg->sslmode, "disable");
    dbk_config_free(cfg);
}

static void config_pg_percent_decoding(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://us%20er:p%40ss%3Aw%2Fo%3Frd%25+x@h/my%20db"
                           "?application_name=a%26b%3Dc",
                           NULL);
    assert_string_equal(cfg->user, "us er");
    assert_string_equal(cfg->password, "p@ss:w/o?rd%+x"); /* '+' stays '+', as in libpq */
    assert_string_equal(cfg->dbname, "my db");
    assert_string_equal(cfg->application_name, "a&b=c");
    dbk_config_free(cfg);

    /* Upper- and lower-case hex both decode; UTF-8 passes through. */
    cfg = must("postgres://%c3%a9l%C3%A8ve@h/caf%C3%A9", NULL);
    assert_string_equal(cfg->user, "\xc3\xa9l\xc3\xa8ve");
    assert_string_equal(cfg->dbname, "caf\xc3\xa9");
    dbk_config_free(cfg);

    /* A socket directory as a percent-encoded host. */
    cfg = must("postgres://%2Fvar%2Frun%2Fpostgresql/db", NULL);
    assert_string_equal(cfg->host, "/var/run/postgresql");
    dbk_config_free(cfg);
}

static void config_pg_unencoded_password_characters(void **state)
{
    (void)state;
    /* The userinfo ends at the last '@' before the query, so generated
     * passwords with '/', '@' or ':' still parse. */
    dbk_config *cfg = must("postgres://u:ab/c+d=@e:f@h:5432/db", NULL);
    assert_string_equal(cfg->user, "u");
    assert_string_equal(cfg->password, "ab/c+d=@e:f");
    assert_string_equal(cfg->host, "h");
    assert_string_equal(cfg->port, "5432");
    assert_string_equal(cfg->dbname, "db");
    dbk_config_free(cfg);

    /* An '@' in a query value is not userinfo. */
    cfg = must("postgres://h/db?application_name=svc@host", NULL);
    assert_null(cfg->user);
    assert_string_equal(cfg->host, "h");
    assert_string_equal(cfg->application_name, "svc@host");
    dbk_config_free(cfg);
}

static void config_pg_ipv6(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://u@[::1]/db", NULL);
    assert_string_equal(cfg->host, "::1");
    assert_string_equal(cfg->port, "5432");
    dbk_config_free(cfg);

    cfg = must("postgres://u:" PW "@[2001:db8::42]:6000/db", NULL);
    assert_string_equal(cfg->host, "2001:db8::42");
    assert_string_equal(cfg->port, "6000");
    assert_string_equal(cfg->password, PW);
    dbk_config_free(cfg);

    cfg = must("postgres://[fe80::1%25eth0]:5433/db", NULL);
    assert_string_equal(cfg->host, "fe80::1%eth0");
    assert_string_equal(cfg->port, "5433");
    dbk_config_free(cfg);

    cfg = must("postgres://[::ffff:10.0.0.1]/db", NULL);
    assert_string_equal(cfg->host, "::ffff:10.0.0.1");
    dbk_config_free(cfg);
}

static void config_pg_multi_host(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://u:" PW "@h1:5432,h2:5433/db?target_session_attrs=read-write",
                           NULL);
    assert_string_equal(cfg->host, "h1,h2");
    assert_string_equal(cfg->port, "5432,5433");
    assert_string_equal(cfg->target_session_attrs, "read-write");
    assert_string_equal(cfg->password, PW);
    dbk_config_free(cfg);

    /* No ports at all: one port for every host. */
    cfg = must("postgres://h1,h2,h3/db", NULL);
    assert_string_equal(cfg->host, "h1,h2,h3");
    assert_string_equal(cfg->port, "5432");
    dbk_config_free(cfg);

    /* Some ports: the others take the default. */
    cfg = must("postgres://h1,h2:6000/db", NULL);
    assert_string_equal(cfg->host, "h1,h2");
    assert_string_equal(cfg->port, "5432,6000");
    dbk_config_free(cfg);

    /* ... or the single port from the environment. */
    struct env env = {{"DB_PORT"}, {"7000"}};
    cfg = must("postgres://h1:6000,h2/db", &env);
    assert_string_equal(cfg->port, "6000,7000");
    dbk_config_free(cfg);

    /* IPv6 in a list. */
    cfg = must("postgres://[::1]:5432,h2:5433,[::2]/db", NULL);
    assert_string_equal(cfg->host, "::1,h2,::2");
    assert_string_equal(cfg->port, "5432,5433,5432");
    dbk_config_free(cfg);

    /* Leading zeros are normalized. */
    cfg = must("postgres://h:05432/db", NULL);
    assert_string_equal(cfg->port, "5432");
    dbk_config_free(cfg);
}

static void config_pg_query_params(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://h/db?connect_timeout=12&statement_timeout=2500"
                           "&lock_timeout=700&stmt_cache_size=64&pool_max=20&pool_min_idle=3"
                           "&acquire_timeout=1500&idle_timeout=60000&max_lifetime=120000"
                           "&validate_after=2000&validate_timeout=300&pool_max_waiters=50"
                           "&leak_threshold=9000&sslmode=VERIFY-FULL",
                           NULL);
    assert_int_equal(cfg->connect_timeout_ms, 12000); /* seconds in the URL, like libpq */
    assert_int_equal(cfg->pool.connect_timeout_ms, 12000);
    assert_int_equal(cfg->statement_timeout_ms, 2500);
    assert_int_equal(cfg->lock_timeout_ms, 700);
    assert_int_equal(cfg->stmt_cache_size, 64);
    assert_int_equal(cfg->pool.max_size, 20);
    assert_int_equal(cfg->pool.min_idle, 3);
    assert_int_equal(cfg->pool.acquire_timeout_ms, 1500);
    assert_int_equal(cfg->pool.idle_timeout_ms, 60000);
    assert_int_equal(cfg->pool.max_lifetime_ms, 120000);
    assert_int_equal(cfg->pool.validate_after_ms, 2000);
    assert_int_equal(cfg->pool.validate_timeout_ms, 300);
    assert_int_equal(cfg->pool.max_waiters, 50);
    assert_int_equal(cfg->pool.leak_threshold_ms, 9000);
    assert_string_equal(cfg->sslmode, "verify-full"); /* canonical case */
    dbk_config_free(cfg);

    /* PgBouncer transaction mode: no prepared statements. */
    cfg = must("postgres://h/db?prepared_statements=false", NULL);
    assert_int_equal(cfg->stmt_cache_size, 0);
    dbk_config_free(cfg);
    cfg = must("postgres://h/db?stmt_cache_size=0&prepared_statements=true", NULL);
    assert_int_equal(cfg->stmt_cache_size, 128);
    dbk_config_free(cfg);

    /* Empty '&' pieces are ignored; the last duplicate wins. */
    cfg = must("postgres://h/db?&pool_max=3&&pool_max=4&", NULL);
    assert_int_equal(cfg->pool.max_size, 4);
    dbk_config_free(cfg);

    /* Fractional seconds. */
    cfg = must("postgres://h/db?connect_timeout=2.5", NULL);
    assert_int_equal(cfg->connect_timeout_ms, 2500);
    dbk_config_free(cfg);
}

static void config_pool_off_values(void **state)
{
    (void)state;
    /* 0 switches the optional pool behaviours off (the pool acts only on
     * values > 0); acquire and validate timeouts cannot be off. */
    dbk_config *cfg = must("sqlite:a.sqlite?idle_timeout=0&max_lifetime=0&validate_after=0"
                           "&pool_max_waiters=0&leak_threshold=0",
                           NULL);
    assert_int_equal(cfg->pool.idle_timeout_ms, 0);
    assert_int_equal(cfg->pool.max_lifetime_ms, 0);
    assert_int_equal(cfg->pool.validate_after_ms, 0);
    assert_int_equal(cfg->pool.max_waiters, 0);
    assert_int_equal(cfg->pool.leak_threshold_ms, 0);
    assert_int_equal(src_of(cfg, "idle_timeout"), DBK_CONFIG_SOURCE_URL);
    assert_true(cfg->pool.acquire_timeout_ms > 0);
    assert_true(cfg->pool.validate_timeout_ms > 0);
    assert_true(cfg->pool.connect_timeout_ms > 0);
    dbk_config_free(cfg);
}

static void config_pg_unknown_params_pass_through(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://h/db?keepalives=1&sslrootcert=%2Fetc%2Fca.pem"
                           "&keepalives=0&options=-c%20search_path%3Dapp",
                           NULL);
    assert_int_equal(cfg->nextra, 3);
    assert_string_equal(cfg->extra[0].key, "keepalives");
    assert_string_equal(cfg->extra[0].value, "0"); /* last one wins */
    assert_string_equal(cfg->extra[1].key, "sslrootcert");
    assert_string_equal(cfg->extra[1].value, "/etc/ca.pem");
    assert_string_equal(cfg->extra[2].key, "options");
    assert_string_equal(cfg->extra[2].value, "-c search_path=app");
    dbk_config_free(cfg);
}

static void config_pg_components_as_query_params(void **state)
{
    (void)state;
    /* libpq accepts the components as parameters too; they win over the
     * URL body because they come later. */
    dbk_config *cfg = must("postgres:///db?host=%2Ftmp&port=5440&user=dave&dbname=other"
                           "&password=" PW,
                           NULL);
    assert_string_equal(cfg->host, "/tmp");
    assert_string_equal(cfg->port, "5440");
    assert_string_equal(cfg->user, "dave");
    assert_string_equal(cfg->dbname, "other");
    assert_string_equal(cfg->password, PW);
    dbk_config_free(cfg);

    cfg = must("postgres://h/db?host=a,[::1]&port=1,2", NULL);
    assert_string_equal(cfg->host, "a,::1");
    assert_string_equal(cfg->port, "1,2");
    dbk_config_free(cfg);
}

/* ---- SQLite URL forms -------------------------------------------------- */

static void config_sqlite_relative_path(void **state)
{
    (void)state;
    dbk_config *cfg = must("sqlite:data/app.db", NULL);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_string_equal(cfg->sqlite_path, "data/app.db");
    assert_false(cfg->sqlite_memory);
    assert_int_equal(src_of(cfg, "engine"), DBK_CONFIG_SOURCE_URL);
    assert_int_equal(src_of(cfg, "path"), DBK_CONFIG_SOURCE_URL);
    assert_int_equal(src_of(cfg, "mode"), DBK_CONFIG_SOURCE_DEFAULT);
    dbk_config_free(cfg);

    cfg = must("sqlite:my%20file.db", NULL);
    assert_string_equal(cfg->sqlite_path, "my file.db");
    dbk_config_free(cfg);
}

static void config_sqlite_absolute_path(void **state)
{
    (void)state;
    dbk_config *cfg = must("sqlite:///var/lib/app/app.db", NULL);
    assert_string_equal(cfg->sqlite_path, "/var/lib/app/app.db");
    dbk_config_free(cfg);

    cfg = must("sqlite:/tmp/x.db", NULL);
    assert_string_equal(cfg->sqlite_path, "/tmp/x.db");
    dbk_config_free(cfg);

    cfg = must("SQLite:///tmp/y.db", NULL);
    assert_string_equal(cfg->sqlite_path, "/tmp/y.db");
    dbk_config_free(cfg);
}

static void config_sqlite_memory(void **state)
{
    (void)state;
    dbk_config *cfg = must("sqlite::memory:", NULL);
    assert_true(cfg->sqlite_memory);
    assert_string_equal(cfg->sqlite_path, ":memory:");
    dbk_config_free(cfg);

    cfg = must("sqlite::memory:?busy_timeout=10", NULL);
    assert_true(cfg->sqlite_memory);
    assert_int_equal(cfg->busy_timeout_ms, 10);
    dbk_config_free(cfg);
}

static void config_sqlite_options(void **state)
{
    (void)state;
    dbk_config *cfg = must("sqlite:a.db?mode=ro&busy_timeout=250&journal_mode=DELETE"
                           "&synchronous=full&pool_max=1&statement_timeout=100"
                           "&stmt_cache_size=16&cache_size=65536&mmap_size=256",
                           NULL);
    assert_true(cfg->sqlite_readonly);
    assert_false(cfg->sqlite_create);
    assert_int_equal(cfg->busy_timeout_ms, 250);
    assert_string_equal(cfg->journal_mode, "delete");
    assert_string_equal(cfg->synchronous, "full");
    assert_int_equal(cfg->pool.max_size, 1);
    assert_int_equal(cfg->statement_timeout_ms, 100);
    assert_int_equal(cfg->stmt_cache_size, 16);
    assert_int_equal(cfg->sqlite_cache_kib, 65536);
    assert_int_equal(cfg->sqlite_mmap_mib, 256);
    dbk_config_free(cfg);
    /* by default: SQLite's own (0 here) */
    cfg = must("sqlite:a.db", NULL);
    assert_int_equal(cfg->sqlite_cache_kib, 0);
    assert_int_equal(cfg->sqlite_mmap_mib, 0);
    dbk_config_free(cfg);

    cfg = must("sqlite:a.db?mode=rw", NULL);
    assert_false(cfg->sqlite_readonly);
    assert_false(cfg->sqlite_create);
    dbk_config_free(cfg);

    cfg = must("sqlite:a.db?mode=rwc&busy_timeout=0", NULL);
    assert_false(cfg->sqlite_readonly);
    assert_true(cfg->sqlite_create);
    assert_int_equal(cfg->busy_timeout_ms, 0);
    dbk_config_free(cfg);
}

/* ---- malformed input --------------------------------------------------- */

static void config_malformed_urls(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        const char *part; /* what the message must name */
    } cases[] = {
        {"mysql://u:" PW "@h/db", "\"mysql\""},
        {"http://u:" PW "@h/db", "unknown URL scheme"},
        {"pg2+x.y-z://u:" PW "@h/db", "\"pg2+x.y-z\""},
        {"no-scheme-here", "no scheme"},
        {":" PW "@h", "no scheme"},
        {"postgres:u:" PW "@h/db", "\"//\""},
        {"postgres:/u:" PW "@h/db", "\"//\""},
        {"postgres://u:" PW "@h:abc/db", "\"abc\""},
        {"postgres://u:" PW "@h:0/db", "port \"0\""},
        {"postgres://u:" PW "@h:65536/db", "\"65536\""},
        {"postgres://u:" PW "@h:99999999999999999999/db", "bad port"},
        {"postgres://u:" PW "@h:/db", "bad port"},
        {"postgres://u:" PW "@h:-1/db", "\"-1\""},
        {"postgres://u:" PW "@h1:5432,h2:x/db", "host 2"},
        {"postgres://u:s3cret%zzPW@h/db", "percent-encoding in the password"},
        {"postgres://u:s3cret%4PW@h/db", "percent-encoding in the password"},
        {"postgres://u:" PW "%@h/db", "percent-encoding in the password"},
        {"postgres://u%zz:" PW "@h/db", "user name"},
        {"postgres://u:" PW "@h/d%zzb", "\"%zz\" in the database name"},
        {"postgres://u:" PW "@h%2/db", "host 1"},
        {"postgres://u:" PW "@h/db?pool_max=1%G0", "pool_max"},
        {"postgres://u:" PW "@h/db?app%zz=1", "in a query parameter name"},
        {"postgres://u:s3cret%00PW@h/db", "NUL (%00) in the password"},
        {"postgres://u:" PW "@h/d%00b", "NUL (%00) in the database name"},
        {"postgres://u%00:" PW "@h/db", "NUL (%00) in the user name"},
        {"postgres://u:" PW "@h/db?application_name=a%00", "NUL"},
        {"postgres://u:" PW "@[::1/db", "unterminated '['"},
        {"postgres://u:" PW "@[::1:5432/db", "unterminated '['"},
        {"postgres://u:" PW "@h1,[::1/db", "unterminated '[' in host 2"},
        {"postgres://u:" PW "@[::1]x/db", "after ']'"},
        {"postgres://u:" PW "@[zz]/db", "IPv6"},
        {"postgres://u:" PW "@[db:5432]/db", "IPv6"},
        {"postgres://u:" PW "@[::1%25]/db", "IPv6"},
        {"postgres://u:" PW "@[::1%25a%2Fb]/db", "IPv6"},
        {"postgres://u:" PW "@[1::2::3]/db", "IPv6"},
        {"postgres://u:" PW "@[]/db", "empty host"},
        {"postgres://u:" PW "@::1/db", "without brackets"},
        {"postgres://u:" PW "@h::1/db", "bad port"},
        {"postgres://u:" PW "@h]/db", "bad host"},
        {"postgres://u:" PW "@:5432/db", "empty host"},
        {"postgres://user@:5432/db", "empty host before port \"5432\""},
        {"postgres://:5432/db", "empty host"},
        {"postgres://u:" PW "@h1,,h2/db", "empty host 2"},
        {"postgres://u:" PW "@h1,/db", "empty host 2"},
        {"postgres://u:" PW "@,h1/db", "empty host 1"},
        {"postgres://u:" PW "@h/db?pool_max=99999999999", "pool_max"},
        {"postgres://u:" PW "@h/db?pool_max=0", "pool_max"},
        {"postgres://u:" PW "@h/db?pool_max=abc", "pool_max"},
        {"postgres://u:" PW "@h/db?pool_max=", "pool_max"},
        {"postgres://u:" PW "@h/db?pool_max=1.5", "pool_max"},
        {"postgres://u:" PW "@h/db?pool_min_idle=20", "pool_min_idle"},
        {"postgres://u:" PW "@h/db?statement_timeout=-1", "statement_timeout"},
        {"postgres://u:" PW "@h/db?statement_timeout=2147483648", "statement_timeout"},
        {"postgres://u:" PW "@h/db?connect_timeout=0", "connect_timeout"},
        {"postgres://u:" PW "@h/db?connect_timeout=3601", "connect_timeout"},
        {"postgres://u:" PW "@h/db?connect_timeout=1.0001", "connect_timeout"},
        {"postgres://u:" PW "@h/db?idle_timeout=-1", "idle_timeout"},
        {"postgres://u:" PW "@h/db?acquire_timeout=0", "acquire_timeout"},
        {"postgres://u:" PW "@h/db?validate_timeout=0", "validate_timeout"},
        {"postgres://u:" PW "@h/db?pool_max_waiters=1000001", "pool_max_waiters"},
        {"postgres://u:" PW "@h/db?stmt_cache_size=100001", "stmt_cache_size"},
        {"postgres://u:" PW "@h/db?prepared_statements=maybe", "prepared_statements"},
        {"postgres://u:" PW "@h/db?sslmode=maybe", "sslmode"},
        {"postgres://u:" PW "@h/db?target_session_attrs=any-one", "target_session_attrs"},
        {"postgres://u:" PW "@h/db?noval", "\"noval\" has no value"},
        {"postgres://u:" PW "@h/db?=1", "not name=value"},
        {"postgres://u:" PW "@h/db?Bad-Name=1", "bad name"},
        {"postgres://u:" PW "@h/db?busy_timeout=5", "applies only to SQLite"},
        {"postgres://u:" PW "@h/db?journal_mode=wal", "applies only to SQLite"},
        {"postgres://u:" PW "@h/db?engine=sqlite", "\"engine\" is not accepted"},
        {"postgres://u:" PW "@h/db?password=x&pool_max=0", "pool_max"},
        {"postgres://u:" PW "@h/db?sslpassword=s3cret%zz", "percent-encoding"},
        {"postgres://u:" PW "@h/db?application_name=a%01b", "control character"},
        {"postgres://u:" PW "@h/db?keepalives=%01", "keepalives contains a control character"},
        /* An '@' after the '?' turns quoting off: the value is not shown. */
        {"postgres://u:" PW "@h/db?application_name=a@b&pool_max=x",
         "URL parameter pool_max: the value is not a whole number"},
        {"postgres://u:" PW "@h/db\n", "control character"},
        {"postgres://u:" PW "\t@h/db", "control character"},
        {"postgres://h/my@db", "ambiguous '@'"},
        /* A '?' in an unencoded password: the parser sees host "u" and port
         * "s3cret", and must not quote it. */
        {"postgres://u:s3cret?PW@h/db", "bad port for host 1"},
        {"postgres://u:" PW "@h1,h2,h3/db?port=1,2", "2 ports for 3 hosts"},
        {"sqlite:", "empty path"},
        {"sqlite:?mode=ro", "empty path"},
        {"sqlite://", "host part"},
        {"sqlite://host/x.sqlite", "host part"},
        {"sqlite://:memory:", "host part"},
        {"sqlite:x.sqlite?mode=rx", "mode"},
        {"sqlite:x.sqlite?foo=1", "\"foo\""},
        {"sqlite:x.sqlite?Bad-Name=1", "unknown SQLite URL parameter 1"},
        {"sqlite:x.sqlite?sslmode=require", "applies only to PostgreSQL"},
        {"sqlite:x.sqlite?host=h", "applies only to PostgreSQL"},
        {"sqlite:x.sqlite?busy_timeout=abc", "busy_timeout"},
        {"sqlite:x.sqlite?journal_mode=fast", "journal_mode"},
        {"sqlite:x.sqlite?synchronous=always", "synchronous"},
        {"sqlite:x.sqlite?cache_size=-1", "cache_size"},
        {"sqlite:x.sqlite?cache_size=1073741825", "out of range"},
        {"sqlite:x.sqlite?cache_size=2MB", "cache_size"},
        {"sqlite:x.sqlite?mmap_size=1048577", "out of range"},
        {"sqlite:x.sqlite?mmap_size=", "mmap_size"},
        {"postgres://h/d?mmap_size=1", "applies only to SQLite"},
        {"sqlite:x%zz.sqlite", "SQLite path"},
        {"sqlite:x%00.sqlite", "NUL"},
        {"sqlite:x.sqlite?path=y", "\"path\" is not accepted"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        must_fail(cases[i].url, NULL, cases[i].part);
}

static void config_malformed_hints(void **state)
{
    (void)state;
    dbk_config *cfg = NULL;
    dbk_error err;
    assert_int_equal(dbk_config_from("mysql://h/db", NULL, NULL, &cfg, &err), DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "postgres://"));
    assert_int_equal(dbk_config_from("postgres://u:p%zz@h", NULL, NULL, &cfg, &err),
                     DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "%40"));
    assert_int_equal(dbk_config_from("postgres://[::1/db", NULL, NULL, &cfg, &err), DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "[::1]"));
    assert_int_equal(dbk_config_from("postgres://::1/db", NULL, NULL, &cfg, &err), DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "brackets"));
    assert_int_equal(dbk_config_from("postgres://h/db?pool_max=0", NULL, NULL, &cfg, &err),
                     DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "1 to 10000"));
    assert_int_equal(dbk_config_from("postgres://h/db?sslmode=x", NULL, NULL, &cfg, &err),
                     DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "verify-full"));
    assert_int_equal(dbk_config_from("postgres://h/d%00b", NULL, NULL, &cfg, &err), DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "remove the %00"));
    assert_int_equal(dbk_config_from("sqlite:a?x=1", NULL, NULL, &cfg, &err), DBK_ECONFIG);
    assert_non_null(strstr(err.hint, "busy_timeout"));
    assert_null(cfg);
}

static void config_overlong_url(void **state)
{
    (void)state;
    size_t n = 9000;
    char *url = malloc(n + 1);
    assert_non_null(url);
    int p = snprintf(url, n + 1, "postgres://u:%s@h/db?application_name=", PW);
    memset(url + p, 'a', n - (size_t)p);
    url[n] = '\0';
    must_fail(url, NULL, "too long");

    /* Just under the limit parses: the bound is on the whole URL. */
    url[8192] = '\0';
    dbk_config *cfg = NULL;
    dbk_error err;
    assert_int_equal(dbk_config_from(url, NULL, NULL, &cfg, &err), DBK_OK);
    assert_int_equal(strlen(cfg->application_name), 8192 - (size_t)p);
    dbk_config_free(cfg);
    free(url);
}

/* ---- environment ------------------------------------------------------- */

static void config_env_builds_postgres(void **state)
{
    (void)state;
    struct env env = {{"DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE",
                       "DB_APPLICATION_NAME"},
                      {"pg.internal", "6432", "orders", "svc", PW, "require", "orders-api"}};
    dbk_config *cfg = must(NULL, &env);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_string_equal(cfg->host, "pg.internal");
    assert_string_equal(cfg->port, "6432");
    assert_string_equal(cfg->dbname, "orders");
    assert_string_equal(cfg->user, "svc");
    assert_string_equal(cfg->password, PW);
    assert_string_equal(cfg->sslmode, "require");
    assert_string_equal(cfg->application_name, "orders-api");
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(d.src[dumped_find(&d, "engine")], DBK_CONFIG_SOURCE_ENV);
    assert_int_equal(d.src[dumped_find(&d, "host")], DBK_CONFIG_SOURCE_ENV);
    assert_int_equal(d.src[dumped_find(&d, "password")], DBK_CONFIG_SOURCE_ENV);
    assert_int_equal(d.src[dumped_find(&d, "lock_timeout")], DBK_CONFIG_SOURCE_DEFAULT);
    dbk_config_free(cfg);

    /* DB_NAME alone selects PostgreSQL (local socket). */
    struct env env2 = {{"DB_NAME"}, {"orders"}};
    cfg = must(NULL, &env2);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_null(cfg->host);
    dbk_config_free(cfg);

    /* DB_PORT alone does not. */
    struct env env3 = {{"DB_PORT"}, {"5433"}};
    cfg = must(NULL, &env3);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    dbk_config_free(cfg);

    /* Multi-host lists from the environment. */
    struct env env4 = {{"DB_HOST", "DB_PORT"}, {"a,[::1],c", "1,2,3"}};
    cfg = must(NULL, &env4);
    assert_string_equal(cfg->host, "a,::1,c");
    assert_string_equal(cfg->port, "1,2,3");
    dbk_config_free(cfg);
}

static void config_env_pool_and_timeouts(void **state)
{
    (void)state;
    struct env env = {{"DB_POOL_MAX", "DB_POOL_MIN_IDLE", "DB_ACQUIRE_TIMEOUT_MS",
                       "DB_IDLE_TIMEOUT_MS", "DB_MAX_LIFETIME_MS", "DB_STATEMENT_TIMEOUT_MS",
                       "DB_CONNECT_TIMEOUT_MS", "DB_LOCK_TIMEOUT_MS", "DB_POOL_VALIDATE_AFTER_MS",
                       "DB_POOL_VALIDATE_TIMEOUT_MS", "DB_POOL_MAX_WAITERS",
                       "DB_POOL_LEAK_THRESHOLD_MS", "DB_STMT_CACHE_SIZE",
                       "DB_SQLITE_BUSY_TIMEOUT_MS", "DB_SQLITE_JOURNAL_MODE"},
                      {"25", "5", "1234", "45000", "90000", "777", "2500", "300", "111", "222",
                       "33", "4444", "12", "99", "truncate"}};
    dbk_config *cfg = must(NULL, &env);
    assert_int_equal(cfg->pool.max_size, 25);
    assert_int_equal(cfg->pool.min_idle, 5);
    assert_int_equal(cfg->pool.acquire_timeout_ms, 1234);
    assert_int_equal(cfg->pool.idle_timeout_ms, 45000);
    assert_int_equal(cfg->pool.max_lifetime_ms, 90000);
    assert_int_equal(cfg->statement_timeout_ms, 777);
    assert_int_equal(cfg->connect_timeout_ms, 2500); /* milliseconds in the environment */
    assert_int_equal(cfg->pool.connect_timeout_ms, 2500);
    assert_int_equal(cfg->lock_timeout_ms, 300);
    assert_int_equal(cfg->pool.validate_after_ms, 111);
    assert_int_equal(cfg->pool.validate_timeout_ms, 222);
    assert_int_equal(cfg->pool.max_waiters, 33);
    assert_int_equal(cfg->pool.leak_threshold_ms, 4444);
    assert_int_equal(cfg->stmt_cache_size, 12);
    assert_int_equal(cfg->busy_timeout_ms, 99);
    assert_string_equal(cfg->journal_mode, "truncate");
    dbk_config_free(cfg);

    struct env env2 = {{"DB_PREPARED_STATEMENTS", "DB_SQLITE_MODE", "DB_SQLITE_SYNCHRONOUS",
                        "DB_SQLITE_CACHE_SIZE_KIB", "DB_SQLITE_MMAP_SIZE_MIB"},
                       {"off", "ro", "OFF", "8192", "64"}};
    cfg = must(NULL, &env2);
    assert_int_equal(cfg->sqlite_cache_kib, 8192);
    assert_int_equal(cfg->sqlite_mmap_mib, 64);
    assert_int_equal(cfg->stmt_cache_size, 0);
    assert_true(cfg->sqlite_readonly);
    assert_string_equal(cfg->synchronous, "off");
    dbk_config_free(cfg);
}

static void config_env_empty_is_unset(void **state)
{
    (void)state;
    struct env env = {{"DB_HOST", "DB_NAME", "DB_POOL_MAX"}, {"", "", ""}};
    dbk_config *cfg = must(NULL, &env);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_int_equal(cfg->pool.max_size, 10);
    assert_int_equal(src_of(cfg, "pool_max"), DBK_CONFIG_SOURCE_DEFAULT);
    dbk_config_free(cfg);
}

static void config_env_bad_values(void **state)
{
    (void)state;
    struct env e1 = {{"DB_POOL_MAX"}, {"lots"}};
    must_fail(NULL, &e1, "DB_POOL_MAX: \"lots\"");
    struct env e2 = {{"DB_PORT"}, {"70000"}};
    must_fail(NULL, &e2, "DB_PORT");
    struct env e3 = {{"DB_CONNECT_TIMEOUT_MS"}, {"0"}};
    must_fail(NULL, &e3, "DB_CONNECT_TIMEOUT_MS");
    struct env e4 = {{"DB_SSLMODE"}, {"on"}};
    must_fail(NULL, &e4, "DB_SSLMODE");
    struct env e5 = {{"DB_HOST"}, {"a,,b"}};
    must_fail(NULL, &e5, "DB_HOST: host 2");
    struct env e6 = {{"DB_POOL_MAX", "DB_POOL_MIN_IDLE"}, {"2", "3"}};
    must_fail(NULL, &e6, "pool_min_idle (3) is larger than pool_max (2)");
    struct env e7 = {{"DB_HOST", "DB_PORT"}, {"a,b,c", "1,2"}};
    must_fail(NULL, &e7, "2 ports for 3 hosts");
    struct env e8 = {{"DB_STATEMENT_TIMEOUT_MS"}, {"99999999999999999999999"}};
    must_fail(NULL, &e8, "out of range");
    struct env e9 = {{"DB_HOST"}, {"[::1"}};
    must_fail(NULL, &e9, "unterminated '['");
    struct env e11 = {{"DB_HOST"}, {"db:5432"}};
    must_fail(NULL, &e11, "neither a host name nor an IPv6 address");
    struct env e12 = {{"DB_HOST"}, {"[zz]"}};
    must_fail(NULL, &e12, "bad IPv6 address \"zz\"");
    struct env e13 = {{"DB_HOST"}, {"[]"}};
    must_fail(NULL, &e13, "bad IPv6 address in host 1");
    struct env e14 = {{"DB_HOST"}, {"a]b"}};
    must_fail(NULL, &e14, "stray bracket");
    char *longval = malloc(9001);
    assert_non_null(longval);
    memset(longval, 'a', 9000);
    longval[9000] = '\0';
    struct env e15 = {{"DB_APPLICATION_NAME"}, {longval}};
    must_fail(NULL, &e15, "DB_APPLICATION_NAME: the value is too long");
    free(longval);
    struct env e10 = {{"DB_USER"}, {"a\nb"}};
    must_fail(NULL, &e10, "DB_USER");
}

static void config_env_getenv_null_reads_nothing(void **state)
{
    (void)state;
    setenv("DB_HOST", "should-not-be-read", 1);
    setenv("DB_POOL_MAX", "77", 1);
    dbk_config *cfg = must(NULL, NULL);
    unsetenv("DB_HOST");
    unsetenv("DB_POOL_MAX");
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_int_equal(cfg->pool.max_size, 10);
    dbk_config_free(cfg);
}

static void config_from_env_reads_process_environment(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = NULL;
    setenv("DATABASE_URL", "postgres://u:" PW "@envhost:5439/envdb?pool_max=7", 1);
    setenv("DB_STATEMENT_TIMEOUT_MS", "1500", 1);
    dbk_rc rc = dbk_config_from_env(&cfg, &err);
    unsetenv("DATABASE_URL");
    DBKT_OK(rc, &err);
    assert_string_equal(cfg->host, "envhost");
    assert_string_equal(cfg->port, "5439");
    assert_int_equal(cfg->pool.max_size, 7);
    assert_int_equal(cfg->statement_timeout_ms, 1500);
    dbk_config_free(cfg);

    /* dbk_config_from_url: the given URL, the process's DB_* variables. */
    rc = dbk_config_from_url("sqlite::memory:", &cfg, &err);
    unsetenv("DB_STATEMENT_TIMEOUT_MS");
    DBKT_OK(rc, &err);
    assert_true(cfg->sqlite_memory);
    assert_int_equal(cfg->statement_timeout_ms, 1500);
    dbk_config_free(cfg);

    /* No DATABASE_URL: SQLite on dbkit.db (unless DB_* says otherwise). */
    unsetenv("DB_HOST");
    unsetenv("DB_NAME");
    DBKT_OK(dbk_config_from_env(&cfg, &err), &err);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_string_equal(cfg->sqlite_path, "dbkit.db");
    dbk_config_free(cfg);

    setenv("DATABASE_URL", "mysql://u:" PW "@h/db", 1);
    rc = dbk_config_from_env(&cfg, &err);
    unsetenv("DATABASE_URL");
    assert_int_equal(rc, DBK_ECONFIG);
    assert_null(strstr(err.message, PW));
}

static char *write_temp(const char *content, size_t len)
{
    char *dir = dbkt_tmpdir();
    size_t n = strlen(dir) + 16;
    char *path = malloc(n);
    assert_non_null(path);
    snprintf(path, n, "%s/pwfile", dir);
    free(dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
    return path;
}

static void config_password_file(void **state)
{
    (void)state;
    static const struct {
        const char *content;
        size_t len;
        const char *expect;
    } cases[] = {
        {PW "\n", sizeof PW, PW},
        {PW "\r\n", sizeof PW + 1, PW},
        {PW, sizeof PW - 1, PW},
        {PW "\n\n", sizeof PW + 1, PW "\n"}, /* only one newline is removed */
        {" " PW " \n", sizeof PW + 2, " " PW " "},
        {"\n", 1, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = write_temp(cases[i].content, cases[i].len);
        struct env env = {{"DB_HOST", "DB_PASSWORD_FILE"}, {"h", path}};
        dbk_config *cfg = must(NULL, &env);
        assert_string_equal(cfg->password, cases[i].expect);
        struct dumped d = {0};
        dbk_config_dump(cfg, collect, &d);
        int k = dumped_find(&d, "password");
        assert_string_equal(d.val[k], "***");
        assert_int_equal(d.src[k], DBK_CONFIG_SOURCE_ENV);
        dbk_config_free(cfg);
        unlink(path);
        free(path);
    }

    /* The URL's password beats the file's; a URL without one uses it. */
    char *path = write_temp("frompwfile\n", 11);
    struct env env = {{"DB_PASSWORD_FILE"}, {path}};
    dbk_config *cfg = must("postgres://u:" PW "@h/db", &env);
    assert_string_equal(cfg->password, PW);
    dbk_config_free(cfg);
    cfg = must("postgres://u@h/db", &env);
    assert_string_equal(cfg->password, "frompwfile");
    dbk_config_free(cfg);

    /* Both variables: ambiguous. */
    struct env both = {{"DB_PASSWORD", "DB_PASSWORD_FILE"}, {PW, path}};
    must_fail(NULL, &both, "both DB_PASSWORD and DB_PASSWORD_FILE");
    unlink(path);
    free(path);

    /* Missing file: the message names the path and the variable. */
    struct env missing = {{"DB_PASSWORD_FILE"}, {"/nonexistent/dbkit-pw"}};
    must_fail(NULL, &missing, "DB_PASSWORD_FILE: cannot open \"/nonexistent/dbkit-pw\"");

    /* A directory opens but does not read. */
    char *dir = dbkt_tmpdir();
    struct env isdir = {{"DB_PASSWORD_FILE"}, {dir}};
    must_fail(NULL, &isdir, "DB_PASSWORD_FILE: cannot read");
    free(dir);

    /* A file far larger than a password. */
    char *big = malloc(10000);
    assert_non_null(big);
    memset(big, 'x', 10000);
    path = write_temp(big, 10000);
    free(big);
    struct env large = {{"DB_PASSWORD_FILE"}, {path}};
    must_fail(NULL, &large, "larger than");
    unlink(path);
    free(path);

    /* A NUL byte in the file. */
    path = write_temp("ab\0cd\n", 6);
    struct env nul = {{"DB_PASSWORD_FILE"}, {path}};
    must_fail(NULL, &nul, "NUL byte");
    unlink(path);
    free(path);
}

/* ---- precedence -------------------------------------------------------- */

static void config_precedence_default_env_url_code(void **state)
{
    (void)state;
    dbk_error err;
    struct dumped d;

    /* default */
    dbk_config *cfg = must("postgres://h/db", NULL);
    assert_int_equal(cfg->pool.max_size, 10);
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(d.src[dumped_find(&d, "pool_max")], DBK_CONFIG_SOURCE_DEFAULT);
    assert_string_equal(d.val[dumped_find(&d, "replicas")], "");
    assert_string_equal(d.val[dumped_find(&d, "replica_max_lag")], "1000");
    assert_string_equal(d.val[dumped_find(&d, "read_your_writes_wait")], "100");
    assert_string_equal(d.val[dumped_find(&d, "pooler")], "none");
    dbk_config_free(cfg);

    /* Replica URLs may carry passwords: shown as "***", never in clear. */
    struct env renv = {{"DATABASE_REPLICA_URLS"}, {"postgres://u:" PW "@r1/db,postgres://r2/db"}};
    cfg = must("postgres://h/db", &renv);
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    assert_string_equal(d.val[dumped_find(&d, "replicas")], "***");
    assert_int_equal(d.src[dumped_find(&d, "replicas")], DBK_CONFIG_SOURCE_ENV);
    char url[512];
    dbk_config_redacted_url(cfg, url, sizeof url);
    assert_null(strstr(url, PW));
    dbk_config *copy = NULL;
    DBKT_OK(dbk_config_clone(cfg, &copy, &err), &err);
    dbk_config_free(cfg);
    d = (struct dumped){0};
    dbk_config_dump(copy, collect, &d);
    assert_string_equal(d.val[dumped_find(&d, "replicas")], "***");
    dbk_config_free(copy);

    /* env beats default */
    struct env env = {{"DB_POOL_MAX", "DB_HOST", "DB_USER", "DB_PASSWORD",
                       "DB_CONNECT_TIMEOUT_MS", "DB_APPLICATION_NAME"},
                      {"20", "envhost", "envuser", "envpw", "1500", "envapp"}};
    cfg = must("postgres://h/db", &env);
    assert_int_equal(cfg->pool.max_size, 20);
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(d.src[dumped_find(&d, "pool_max")], DBK_CONFIG_SOURCE_ENV);
    /* ... and a URL component beats env */
    assert_string_equal(cfg->host, "h");
    assert_int_equal(d.src[dumped_find(&d, "host")], DBK_CONFIG_SOURCE_URL);
    /* ... while env fills what the URL leaves out */
    assert_string_equal(cfg->user, "envuser");
    assert_string_equal(cfg->password, "envpw");
    assert_int_equal(cfg->connect_timeout_ms, 1500);
    assert_string_equal(cfg->application_name, "envapp");
    dbk_config_free(cfg);

    /* url beats env */
    cfg = must("postgres://urluser:urlpw@urlhost/db?pool_max=30&connect_timeout=3"
               "&application_name=urlapp",
               &env);
    assert_int_equal(cfg->pool.max_size, 30);
    assert_string_equal(cfg->host, "urlhost");
    assert_string_equal(cfg->user, "urluser");
    assert_string_equal(cfg->password, "urlpw");
    assert_int_equal(cfg->connect_timeout_ms, 3000);
    assert_string_equal(cfg->application_name, "urlapp");
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(d.src[dumped_find(&d, "pool_max")], DBK_CONFIG_SOURCE_URL);
    assert_int_equal(d.src[dumped_find(&d, "password")], DBK_CONFIG_SOURCE_URL);
    assert_int_equal(d.src[dumped_find(&d, "connect_timeout")], DBK_CONFIG_SOURCE_URL);

    /* code beats url */
    DBKT_OK(dbk_config_set(cfg, "pool_max", "40", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "host", "codehost", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "application_name", "codeapp", &err), &err);
    assert_int_equal(cfg->pool.max_size, 40);
    assert_string_equal(cfg->host, "codehost");
    assert_string_equal(cfg->application_name, "codeapp");
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(d.src[dumped_find(&d, "pool_max")], DBK_CONFIG_SOURCE_CODE);
    assert_string_equal(d.val[dumped_find(&d, "pool_max")], "40");
    assert_int_equal(d.src[dumped_find(&d, "host")], DBK_CONFIG_SOURCE_CODE);
    assert_int_equal(d.src[dumped_find(&d, "user")], DBK_CONFIG_SOURCE_URL);
    dbk_config_free(cfg);
}

static void config_url_engine_beats_env(void **state)
{
    (void)state;
    struct env env = {{"DB_HOST", "DB_NAME"}, {"pg", "db"}};
    dbk_config *cfg = must("sqlite:local.sqlite", &env);
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_SQLITE);
    assert_string_equal(cfg->sqlite_path, "local.sqlite");
    /* The dump shows only what applies to the engine. */
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
    assert_int_equal(dumped_find(&d, "host"), -1);
    assert_true(dumped_find(&d, "busy_timeout") >= 0);
    assert_int_equal(d.src[dumped_find(&d, "engine")], DBK_CONFIG_SOURCE_URL);
    dbk_config_free(cfg);
}

/* ---- redaction --------------------------------------------------------- */

static void config_redacted_url_hides_password(void **state)
{
    (void)state;
    char buf[512];
    dbk_config *cfg = must("postgres://alice:" PW "@db.example.com:6543/app?sslmode=require", NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf),
                        "postgres://alice:***@db.example.com:6543/app?sslmode=require");
    dbk_config_free(cfg);

    /* Password from the environment is hidden as well. */
    struct env env = {{"DB_HOST", "DB_PASSWORD", "DB_NAME"}, {"h", PW, "d"}};
    cfg = must(NULL, &env);
    assert_string_equal(redacted(cfg, buf, sizeof buf), "postgres://:***@h:5432/d");
    dbk_config_free(cfg);

    cfg = must("postgres://u:" PW "@[::1]:5432,h2:5433/db?sslpassword=" PW "&keepalives=1", NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf),
                        "postgres://u:***@[::1]:5432,h2:5433/db?sslpassword=***&keepalives=1");
    dbk_config_free(cfg);

    cfg = must("postgres:///db?port=5440&statement_timeout=100", NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf),
                        "postgres:///db?port=5440&statement_timeout=100");
    dbk_config_free(cfg);

    cfg = must("sqlite:///tmp/a b.sqlite?mode=ro", NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf), "sqlite:///tmp/a%20b.sqlite?mode=ro");
    dbk_config_free(cfg);

    cfg = must("sqlite::memory:", NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf), "sqlite::memory:");
    dbk_config_free(cfg);

    cfg = must(NULL, NULL);
    assert_string_equal(redacted(cfg, buf, sizeof buf), "sqlite:dbkit.db");
    dbk_config_free(cfg);
}

/* Rendering into a buffer too small: the prefix that fits, terminated,
 * and the full length (as snprintf); a NULL buffer only counts. */
static void config_redacted_url_counts_without_room(void **state)
{
    (void)state;
    char full[512], small[12];
    dbk_config *cfg = must("postgres://alice:" PW "@[::1]:6543,h2/app?sslmode=require", NULL);
    size_t need = dbk_config_redacted_url(cfg, full, sizeof full);
    assert_string_equal(full, "postgres://alice:***@[::1]:6543,h2:5432/app?sslmode=require");
    assert_int_equal(need, strlen(full));
    memset(small, 'Z', sizeof small);
    assert_int_equal(dbk_config_redacted_url(cfg, small, sizeof small), need);
    assert_string_equal(small, "postgres://");
    assert_int_equal(dbk_config_redacted_url(cfg, NULL, 0), need);
    assert_int_equal(dbk_config_redacted_url(cfg, NULL, 40), need);
    char one[1] = {'Z'};
    assert_int_equal(dbk_config_redacted_url(cfg, one, 1), need);
    assert_int_equal(one[0], '\0');
    dbk_config_free(cfg);
    memset(small, 'Z', sizeof small);
    const char *url = "postgres://u:" PW "@h/d";
    need = dbk_redact_url(url, small, sizeof small);
    assert_int_equal(need, strlen("postgres://u:***@h/d"));
    assert_string_equal(small, "postgres://");
}

static void config_redacted_url_round_trips(void **state)
{
    (void)state;
    static const char *urls[] = {
        "postgres://u%40x:" PW "@h1:1,[fe80::1%25eth0]:2/d%2Fb?connect_timeout=2.5&pool_max=3"
        "&options=-c%20x%3Dy&prepared_statements=false",
        "postgres://%2Fvar%2Frun/db?application_name=a%26b&target_session_attrs=primary",
        "postgres://h?lock_timeout=5",
        "sqlite:rel/dir/x.sqlite?journal_mode=delete&mode=rw&idle_timeout=5",
        "sqlite:///abs/x%3Fy.sqlite",
        /* An empty dbname means libpq's default, the same as none (found
         * by the fuzzer: it rendered as a trailing "/" that read back as
         * no dbname and then rendered without it). */
        "postgres://db?dbname=&pool_min_idle=1",
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        char a[1024], b[1024];
        dbk_config *c1 = must(urls[i], NULL);
        redacted(c1, a, sizeof a);
        dbk_config *c2 = must(a, NULL);
        redacted(c2, b, sizeof b);
        assert_string_equal(a, b);
        assert_int_equal(c1->engine, c2->engine);
        assert_int_equal(c1->connect_timeout_ms, c2->connect_timeout_ms);
        assert_int_equal(c1->stmt_cache_size, c2->stmt_cache_size);
        assert_int_equal(c1->nextra, c2->nextra);
        if (c1->host)
            assert_string_equal(c1->host, c2->host);
        assert_string_equal(c1->dbname ? c1->dbname : "", c2->dbname ? c2->dbname : "");
        if (c1->user)
            assert_string_equal(c1->user, c2->user);
        if (c1->sqlite_path && c1->engine == DBK_ENGINE_SQLITE)
            assert_string_equal(c1->sqlite_path, c2->sqlite_path);
        assert_null(strstr(a, PW));
        dbk_config_free(c1);
        dbk_config_free(c2);
    }
}

static void config_redacted_url_truncates(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://u:" PW "@host/db", NULL);
    char full[128];
    size_t need = dbk_config_redacted_url(cfg, full, sizeof full);
    assert_string_equal(full, "postgres://u:***@host:5432/db");
    char small[10];
    memset(small, 'Z', sizeof small);
    assert_int_equal(dbk_config_redacted_url(cfg, small, sizeof small), need);
    assert_string_equal(small, "postgres:");
    assert_int_equal(dbk_config_redacted_url(cfg, NULL, 0), need);
    char one[1] = {'Z'};
    assert_int_equal(dbk_config_redacted_url(cfg, one, 1), need);
    assert_int_equal(one[0], '\0');
    assert_int_equal(dbk_config_redacted_url(NULL, small, sizeof small), 0);
    assert_string_equal(small, "");
    dbk_config_free(cfg);
}

static void config_redact_url_strings(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"postgres://u:" PW "@h:5432/db", "postgres://u:***@h:5432/db"},
        {"postgresql://u:" PW "@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"},
        {"postgres://u@h/db", "postgres://u@h/db"},
        {"postgres://h/db", "postgres://h/db"},
        {"postgres://:" PW "@h", "postgres://:***@h"},
        {"postgres://u:@h", "postgres://u:***@h"},
        {"postgres://u:p@ss/w" PW "@h/db", "postgres://u:***@h/db"},
        {"sqlite:app.db", "sqlite:app.db"},
        {"sqlite::memory:", "sqlite::memory:"},
        /* malformed, but still hidden */
        {"mysql://u:" PW "@h/db", "mysql://u:***@h/db"},
        {"postgres://u:" PW "@[::1/db", "postgres://u:***@[::1/db"},
        {"postgres:/u:" PW "@h", "postgres:***@h"},
        {"u:" PW "@h", "u:***@h"},
        {"postgres://u:p%zz" PW "@h:99999/db", "postgres://u:***@h:99999/db"},
        /* an unencoded '?' in the password: hide through the last '@' */
        {"postgres://u:a?" PW "@h/db", "postgres://u:***@h/db"},
        /* password parameters, in a query and in libpq key=value form */
        {"postgres://h/db?password=" PW "&sslmode=require",
         "postgres://h/db?password=***&sslmode=require"},
        {"postgres://h/db?sslpassword=" PW, "postgres://h/db?sslpassword=***"},
        {"host=h password=" PW " dbname=d", "host=h password=*** dbname=d"},
        {"host=h password='" PW " x' dbname=d", "host=h password=*** dbname=d"},
        {"postgres://h/db?x=1&PASSWORD=" PW, "postgres://h/db?x=1&PASSWORD=***"},
        /* not a password parameter */
        {"postgres://h/db?mypasswordhint=1", "postgres://h/db?mypasswordhint=1"},
        /* conservative: an '@' in a query value hides more than needed */
        {"postgres://h/db?app=x://u:p@q", "postgres://h/db?app=x:***@q"},
        {"", ""},
    };
    char buf[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        redact(cases[i].in, buf, sizeof buf);
        if (strcmp(buf, cases[i].out) != 0)
            fail_msg("redact(%s) = %s, expected %s", cases[i].in, buf, cases[i].out);
    }
    /* NULL input, NULL buffer, truncation. */
    assert_int_equal(dbk_redact_url(NULL, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    size_t need = dbk_redact_url("postgres://u:" PW "@h", NULL, 0);
    assert_int_equal(need, strlen("postgres://u:***@h"));
    char small[14];
    assert_int_equal(dbk_redact_url("postgres://u:" PW "@h", small, sizeof small), need);
    assert_string_equal(small, "postgres://u:");
}

/* ---- dump -------------------------------------------------------------- */

static void config_dump_lists_every_setting_with_source(void **state)
{
    (void)state;
    struct env env = {{"DB_POOL_MIN_IDLE"}, {"2"}};
    dbk_config *cfg = must("postgres://u:" PW "@h/db?statement_timeout=100&keepalives=1"
                           "&sslpassword=" PW,
                           &env);
    dbk_error err;
    DBKT_OK(dbk_config_set(cfg, "lock_timeout", "50", &err), &err);
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
    static const char *const order[] = {
        "engine", "host", "port", "dbname", "user", "password", "sslmode", "application_name",
        "target_session_attrs", "connect_timeout", "statement_timeout", "lock_timeout",
        "stmt_cache_size", "pool_max", "pool_min_idle", "acquire_timeout", "idle_timeout",
        "max_lifetime", "validate_after", "validate_timeout", "pool_max_waiters",
        "leak_threshold", "replicas", "replica_max_lag", "read_your_writes_wait", "pooler",
        "auto_pipeline", "pipeline_conns", "keepalives", "sslpassword"};
    assert_int_equal(d.n, (int)(sizeof order / sizeof order[0]));
    for (int i = 0; i < d.n; i++) {
        assert_string_equal(d.key[i], order[i]);
        assert_null(strstr(d.val[i], PW));
    }
    assert_string_equal(d.val[dumped_find(&d, "engine")], "postgres");
    assert_int_equal(d.src[dumped_find(&d, "engine")], DBK_CONFIG_SOURCE_URL);
    assert_string_equal(d.val[dumped_find(&d, "password")], "***");
    assert_string_equal(d.val[dumped_find(&d, "sslpassword")], "***");
    assert_string_equal(d.val[dumped_find(&d, "keepalives")], "1");
    assert_string_equal(d.val[dumped_find(&d, "sslmode")], "");
    assert_string_equal(d.val[dumped_find(&d, "connect_timeout")], "5");
    assert_string_equal(d.val[dumped_find(&d, "statement_timeout")], "100");
    assert_int_equal(d.src[dumped_find(&d, "statement_timeout")], DBK_CONFIG_SOURCE_URL);
    assert_int_equal(d.src[dumped_find(&d, "pool_min_idle")], DBK_CONFIG_SOURCE_ENV);
    assert_int_equal(d.src[dumped_find(&d, "lock_timeout")], DBK_CONFIG_SOURCE_CODE);
    assert_int_equal(d.src[dumped_find(&d, "pool_max")], DBK_CONFIG_SOURCE_DEFAULT);
    dbk_config_free(cfg);

    /* SQLite: its own settings, no PostgreSQL ones. */
    cfg = must("sqlite:x.sqlite?mode=ro", NULL);
    d = (struct dumped){0};
    dbk_config_dump(cfg, collect, &d);
    static const char *const sorder[] = {
        "engine", "path", "mode", "busy_timeout", "journal_mode", "synchronous", "cache_size",
        "mmap_size", "connect_timeout", "statement_timeout", "stmt_cache_size", "pool_max", "pool_min_idle",
        "acquire_timeout", "idle_timeout", "max_lifetime", "validate_after", "validate_timeout",
        "pool_max_waiters", "leak_threshold"};
    assert_int_equal(d.n, (int)(sizeof sorder / sizeof sorder[0]));
    for (int i = 0; i < d.n; i++)
        assert_string_equal(d.key[i], sorder[i]);
    assert_string_equal(d.val[dumped_find(&d, "mode")], "ro");
    assert_int_equal(d.src[dumped_find(&d, "mode")], DBK_CONFIG_SOURCE_URL);
    assert_string_equal(d.val[dumped_find(&d, "path")], "x.sqlite");
    dbk_config_free(cfg);

    /* No-ops on NULL. */
    dbk_config_dump(NULL, collect, &d);
    cfg = must(NULL, NULL);
    dbk_config_dump(cfg, NULL, NULL);
    dbk_config_free(cfg);
}

/* ---- clone, set, free -------------------------------------------------- */

static void config_clone_is_deep(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *a = must("postgres://u:" PW "@h1,h2:6000/db?keepalives=1&pool_max=4", NULL);
    dbk_config *b = NULL;
    DBKT_OK(dbk_config_clone(a, &b, &err), &err);
    assert_ptr_not_equal(a->host, b->host);
    assert_ptr_not_equal(a->password, b->password);
    assert_ptr_not_equal(a->extra, b->extra);
    DBKT_OK(dbk_config_set(b, "pool_max", "9", &err), &err);
    assert_int_equal(a->pool.max_size, 4);
    dbk_config_free(a);
    assert_string_equal(b->host, "h1,h2");
    assert_string_equal(b->port, "5432,6000");
    assert_string_equal(b->password, PW);
    assert_string_equal(b->extra[0].key, "keepalives");
    assert_int_equal(b->pool.max_size, 9);
    assert_int_equal(src_of(b, "pool_max"), DBK_CONFIG_SOURCE_CODE);
    dbk_config_free(b);

    DBKT_RC(DBK_EMISUSE, dbk_config_clone(NULL, &b, &err));
    assert_null(b);
    DBKT_RC(DBK_EMISUSE, dbk_config_clone(a, NULL, &err));
}

static void config_set_from_code(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = must(NULL, NULL);
    DBKT_OK(dbk_config_set(cfg, "statement_timeout", "1000", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "connect_timeout", "2.5", &err), &err); /* seconds */
    DBKT_OK(dbk_config_set(cfg, "prepared_statements", "false", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "journal_mode", "TRUNCATE", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "mode", "ro", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "path", ":memory:", &err), &err);
    assert_int_equal(cfg->statement_timeout_ms, 1000);
    assert_int_equal(cfg->connect_timeout_ms, 2500);
    assert_int_equal(cfg->pool.connect_timeout_ms, 2500);
    assert_int_equal(cfg->stmt_cache_size, 0);
    assert_string_equal(cfg->journal_mode, "truncate");
    assert_true(cfg->sqlite_readonly);
    assert_true(cfg->sqlite_memory);
    struct dumped d = {0};
    dbk_config_dump(cfg, collect, &d);
    assert_string_equal(d.val[dumped_find(&d, "connect_timeout")], "2.5");
    assert_int_equal(d.src[dumped_find(&d, "stmt_cache_size")], DBK_CONFIG_SOURCE_CODE);
    assert_int_equal(d.src[dumped_find(&d, "path")], DBK_CONFIG_SOURCE_CODE);

    /* Switching engine from code, then configuring it. */
    DBKT_OK(dbk_config_set(cfg, "engine", "postgres", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "host", "[::1],b", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "port", "5432,5433", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "dbname", "app", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "user", "me", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "sslmode", "verify-ca", &err), &err);
    /* Pass-through libpq keywords are URL-only. */
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "keepalives", "1", &err));
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_string_equal(cfg->host, "::1,b");
    char buf[256];
    assert_string_equal(redacted(cfg, buf, sizeof buf),
                        "postgres://me@[::1]:5432,b:5433/app?sslmode=verify-ca"
                        "&connect_timeout=2.5&statement_timeout=1000&stmt_cache_size=0");
    dbk_config_free(cfg);
}

static void config_set_rejects_bad_keys_and_values(void **state)
{
    (void)state;
    dbk_error err;
    dbk_config *cfg = must("postgres://u:" PW "@h/db", NULL);

    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "pool_maxx", "1", &err));
    assert_non_null(strstr(err.message, "unknown setting \"pool_maxx\""));
    assert_non_null(strstr(err.hint, "docs/configuration.md"));
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "", "1", &err));
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "POOL_MAX", "1", &err));

    /* Passwords never come from code. */
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "password", "x", &err));
    assert_non_null(strstr(err.hint, "DB_PASSWORD_FILE"));
    assert_string_equal(cfg->password, PW);

    static const struct {
        const char *key, *value, *part;
    } bad[] = {
        {"pool_max", "0", "pool_max"},
        {"pool_max", "99999999999", "out of range"},
        {"pool_max", "ten", "\"ten\""},
        {"pool_max", "", "not a whole number"},
        {"pool_max", " 5", "not a whole number"},
        {"pool_max", "5 ", "not a whole number"},
        {"pool_min_idle", "11", "larger than pool_max"},
        {"connect_timeout", "0", "connect_timeout"},
        {"connect_timeout", "1.", "not a number of seconds"},
        {"statement_timeout", "-5", "out of range"},
        {"sslmode", "sometimes", "sslmode"},
        {"engine", "mysql", "not an engine"},
        {"port", "0", "bad port"},
        {"port", "1,,2", "bad port"},
        {"host", "", "empty"},
        {"port", "1,2", "2 ports for 1 host"},
        {"path", "", "SQLite path"},
        {"mode", "rwx", "mode"},
        {"prepared_statements", "2", "not a boolean"},
        {"application_name", "a\tb", "control character"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dbk_rc rc = dbk_config_set(cfg, bad[i].key, bad[i].value, &err);
        if (rc != DBK_ECONFIG || !strstr(err.message, bad[i].part))
            fail_msg("set(%s, \"%s\"): %s \"%s\", expected ECONFIG naming \"%s\"", bad[i].key,
                     bad[i].value, dbk_rc_name(rc), err.message, bad[i].part);
        assert_null(strstr(err.message, PW));
    }
    /* Nothing changed. */
    assert_int_equal(cfg->pool.max_size, 10);
    assert_int_equal(cfg->pool.min_idle, 0);
    assert_string_equal(cfg->host, "h");
    assert_string_equal(cfg->port, "5432");
    assert_int_equal(dbk_config_engine(cfg), DBK_ENGINE_POSTGRES);
    assert_int_equal(src_of(cfg, "pool_max"), DBK_CONFIG_SOURCE_DEFAULT);

    /* NULL arguments are misuse. */
    DBKT_RC(DBK_EMISUSE, dbk_config_set(NULL, "pool_max", "1", &err));
    DBKT_RC(DBK_EMISUSE, dbk_config_set(cfg, NULL, "1", &err));
    DBKT_RC(DBK_EMISUSE, dbk_config_set(cfg, "pool_max", NULL, &err));
    assert_non_null(strstr(err.message, "value"));
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "pool_max", "0", NULL)); /* err optional */
    dbk_config_free(cfg);
}

/* Host and port lists go through one normalizer, item by item: every item
 * is checked (empty, spaces, brackets, control characters) and numbered in
 * the message, a long list is kept whole, and a failed set changes nothing. */
static void config_comma_lists_normalized_item_by_item(void **state)
{
    (void)state;
    dbk_config *cfg = must("postgres://u:" PW "@h/db", NULL);
    dbk_error err;
    dbk_error_clear(&err);

    DBKT_OK(dbk_config_set(cfg, "host", "a,[::1],b,fe80::1%eth0", &err), &err);
    assert_string_equal(cfg->host, "a,::1,b,fe80::1%eth0");
    DBKT_OK(dbk_config_set(cfg, "port", "1,0002,65535,5432", &err), &err);
    assert_string_equal(cfg->port, "1,2,65535,5432");

    /* A long list stays whole and in order. */
    DBKT_OK(dbk_config_set(cfg, "port", "5432", &err), &err);
    char hosts[4096], want[4096];
    size_t hl = 0, wl = 0;
    for (int i = 0; i < 200; i++) {
        hl += (size_t)snprintf(hosts + hl, sizeof hosts - hl, "%s[::%x]", i ? "," : "", i + 1);
        wl += (size_t)snprintf(want + wl, sizeof want - wl, "%s::%x", i ? "," : "", i + 1);
    }
    DBKT_OK(dbk_config_set(cfg, "host", hosts, &err), &err);
    assert_string_equal(cfg->host, want);
    DBKT_OK(dbk_config_set(cfg, "host", "a,b", &err), &err);
    DBKT_OK(dbk_config_set(cfg, "port", "1,2", &err), &err);

    static const struct {
        const char *key, *value, *part;
    } bad[] = {
        {"host", ",a", "host 1 of the list is empty"},
        {"host", "a,", "host 2 of the list is empty"},
        {"host", "a,,b", "host 2 of the list is empty"},
        {"host", ",", "host 1 of the list is empty"},
        {"host", "a,b\x01", "host 2 contains a control character"},
        {"host", "a,b\x7f", "host 2 contains a control character"},
        {"host", "a]b", "stray bracket"},
        {"host", "a,[::1", "unterminated '[' in host 2"},
        {"host", "[]", "bad IPv6 address in host 1"},
        {"host", "[", "unterminated '[' in host 1"},
        {"host", "[zz]", "bad IPv6 address"},
        {"host", "a,b:c", "host 2 is neither a host name nor an IPv6 address"},
        {"port", "1, 2", "bad port"},
        {"port", " 1,2", "bad port"},
        {"port", "1,", "bad port"},
        {"port", ",1", "bad port"},
        {"port", "1,+2", "bad port"},
        {"port", "1,-2", "bad port"},
        {"port", "1,65536", "bad port"},
        {"port", "1,99999999999999999999999", "bad port"},
        {"port", "1,2,3", "3 ports for 2 hosts"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dbk_rc rc = dbk_config_set(cfg, bad[i].key, bad[i].value, &err);
        if (rc != DBK_ECONFIG || !strstr(err.message, bad[i].part))
            fail_msg("set(%s, \"%s\"): %s \"%s\", expected ECONFIG naming \"%s\"", bad[i].key,
                     bad[i].value, dbk_rc_name(rc), err.message, bad[i].part);
        assert_null(strstr(err.message, PW));
        assert_string_equal(cfg->host, "a,b");
        assert_string_equal(cfg->port, "1,2");
    }
    /* Hints say how a list is written. */
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "host", "a,,b", &err));
    assert_non_null(strstr(err.hint, "host1,host2"));
    DBKT_RC(DBK_ECONFIG, dbk_config_set(cfg, "port", "x", &err));
    assert_non_null(strstr(err.hint, "1 to 65535"));

    /* The same lists from the environment. */
    struct env env = {{"DB_HOST", "DB_PORT"}, {"a,,b", "1,2"}};
    must_fail(NULL, &env, "host 2 of the list is empty");
    struct env env2 = {{"DB_HOST", "DB_PORT"}, {"a,b", "1,x"}};
    must_fail(NULL, &env2, "bad port");
    dbk_config_free(cfg);
}

static void config_null_arguments(void **state)
{
    (void)state;
    dbk_error err;
    DBKT_RC(DBK_EMISUSE, dbk_config_from("sqlite:x", NULL, NULL, NULL, &err));
    assert_non_null(strstr(err.message, "out"));
    DBKT_RC(DBK_EMISUSE, dbk_config_from_env(NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_config_from_url("sqlite:x", NULL, &err));
    assert_int_equal(dbk_config_engine(NULL), 0);
    dbk_config_free(NULL);
    dbk_config *cfg = NULL;
    /* err is optional everywhere. */
    DBKT_RC(DBK_ECONFIG, dbk_config_from("bad", NULL, NULL, &cfg, NULL));
    assert_null(cfg);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(config_defaults_without_anything),
    cmocka_unit_test(config_pg_full_url),
    cmocka_unit_test(config_deprecated_source_names_still_work),
    cmocka_unit_test(config_pg_postgresql_scheme),
    cmocka_unit_test(config_pg_minimal_forms),
    cmocka_unit_test(config_pg_percent_decoding),
    cmocka_unit_test(config_pg_unencoded_password_characters),
    cmocka_unit_test(config_pg_ipv6),
    cmocka_unit_test(config_pg_multi_host),
    cmocka_unit_test(config_comma_lists_normalized_item_by_item),
    cmocka_unit_test(config_pg_query_params),
    cmocka_unit_test(config_pool_off_values),
    cmocka_unit_test(config_pg_unknown_params_pass_through),
    cmocka_unit_test(config_pg_components_as_query_params),
    cmocka_unit_test(config_sqlite_relative_path),
    cmocka_unit_test(config_sqlite_absolute_path),
    cmocka_unit_test(config_sqlite_memory),
    cmocka_unit_test(config_sqlite_options),
    cmocka_unit_test(config_malformed_urls),
    cmocka_unit_test(config_malformed_hints),
    cmocka_unit_test(config_overlong_url),
    cmocka_unit_test(config_env_builds_postgres),
    cmocka_unit_test(config_env_pool_and_timeouts),
    cmocka_unit_test(config_env_empty_is_unset),
    cmocka_unit_test(config_env_bad_values),
    cmocka_unit_test(config_env_getenv_null_reads_nothing),
    cmocka_unit_test(config_from_env_reads_process_environment),
    cmocka_unit_test(config_password_file),
    cmocka_unit_test(config_precedence_default_env_url_code),
    cmocka_unit_test(config_url_engine_beats_env),
    cmocka_unit_test(config_redacted_url_hides_password),
    cmocka_unit_test(config_redacted_url_counts_without_room),
    cmocka_unit_test(config_redacted_url_round_trips),
    cmocka_unit_test(config_redacted_url_truncates),
    cmocka_unit_test(config_redact_url_strings),
    cmocka_unit_test(config_dump_lists_every_setting_with_source),
    cmocka_unit_test(config_clone_is_deep),
    cmocka_unit_test(config_set_from_code),
    cmocka_unit_test(config_set_rejects_bad_keys_and_values),
    cmocka_unit_test(config_null_arguments),
};

DBKT_MAIN(tests)
