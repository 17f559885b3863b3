/*
 * Versioned option structs (src/core/opts.c and every consumer): each
 * dbk_<name>_init() keeps its contract, and each call that reads an option
 * struct accepts version 0 (a zero-initialized struct from before
 * versioning) and the current version, and refuses one above the library's
 * with DBK_EMISUSE before it opens, runs or writes anything. No server:
 * SQLite files, the memory cache, and a PostgreSQL URL that is never
 * dialled (a cluster opens its pools lazily).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

/* ---- helpers ---- */

/* rc must be the refusal of a too-new `type`: DBK_EMISUSE, a message naming
 * the struct and both versions, the hint about mismatched headers. */
static void expect_refused(dbk_rc rc, const dbk_error *err, const char *type, unsigned got,
                           unsigned current)
{
    if (rc != DBK_EMISUSE)
        fail_msg("%s version %u: expected DBK_EMISUSE, got %s (%s)", type, got, dbk_rc_name(rc),
                 err->message);
    char want[160];
    snprintf(want, sizeof want, "%s version %u is newer than this library's (%u)", type, got,
             current);
    if (!strstr(err->message, want))
        fail_msg("message \"%s\" does not say \"%s\"", err->message, want);
    if (!strstr(err->hint, "newer dbkit headers"))
        fail_msg("hint \"%s\" does not name the header mismatch", err->hint);
}

/* The contract of one dbk_<name>_init(). */
#define CHECK_INIT(T, M)                                                                           \
    do {                                                                                           \
        T o_, z_;                                                                                  \
        dbk_error e_ = {0};                                                                        \
        unsigned char junk_[sizeof(T)];                                                            \
        memset(junk_, 0xab, sizeof junk_);                                                         \
        memcpy(&o_, junk_, sizeof o_);                                                             \
        DBKT_RC(DBK_EMISUSE, T##_init(NULL, M##_VERSION, &e_));                                    \
        assert_non_null(strstr(e_.message, #T));                                                   \
        DBKT_RC(DBK_EMISUSE, T##_init(&o_, 0, &e_));                                               \
        assert_memory_equal(&o_, junk_, sizeof o_); /* nothing written on failure */               \
        expect_refused(T##_init(&o_, M##_VERSION + 1, &e_), &e_, #T, M##_VERSION + 1,              \
                       M##_VERSION);                                                               \
        assert_memory_equal(&o_, junk_, sizeof o_);                                                \
        DBKT_RC(DBK_EMISUSE, T##_init(&o_, 0xffffffffu, NULL)); /* err may be NULL */              \
        DBKT_OK(T##_init(&o_, M##_VERSION, &e_), &e_);                                             \
        memset(&z_, 0, sizeof z_);                                                                 \
        z_.version = M##_VERSION;                                                                  \
        assert_memory_equal(&o_, &z_, sizeof o_); /* zeroed, version set */                        \
        T i_ = M##_INIT;                                                                           \
        assert_int_equal(i_.version, M##_VERSION);                                                 \
        assert_int_equal(M##_VERSION, 1);                                                          \
    } while (0)

/* ---- the _init functions and macros ---- */

static void opts_init_contract(void **state)
{
    (void)state;
    CHECK_INIT(dbk_async_opts, DBK_ASYNC_OPTS);
    CHECK_INIT(dbk_cache_opts, DBK_CACHE_OPTS);
    CHECK_INIT(dbk_cached_repo_opts, DBK_CACHED_REPO_OPTS);
    CHECK_INIT(dbk_cached_doc_opts, DBK_CACHED_DOC_OPTS);
    CHECK_INIT(dbk_diag_opts, DBK_DIAG_OPTS);
    CHECK_INIT(dbk_doc_mongo_opts, DBK_DOC_MONGO_OPTS);
    CHECK_INIT(dbk_doc_find_opts, DBK_DOC_FIND_OPTS);
    CHECK_INIT(dbk_gen_opts, DBK_GEN_OPTS);
    CHECK_INIT(dbk_lint_opts, DBK_LINT_OPTS);
    CHECK_INIT(dbk_migrate_opts, DBK_MIGRATE_OPTS);
    CHECK_INIT(dbk_pool_opts, DBK_POOL_OPTS);
    CHECK_INIT(dbk_cluster_opts, DBK_CLUSTER_OPTS);
    CHECK_INIT(dbk_testdb_opts, DBK_TESTDB_OPTS);
    CHECK_INIT(dbk_tx_opts, DBK_TX_OPTS);
}

/* The version is the first member: a struct from older headers (which had
 * none) was all fields; zero-initialized, it reads as version 0. */
static void opts_version_is_first_member(void **state)
{
    (void)state;
    assert_int_equal(offsetof(dbk_pool_opts, version), 0);
    assert_int_equal(offsetof(dbk_tx_opts, version), 0);
    assert_int_equal(offsetof(dbk_cache_opts, version), 0);
    assert_int_equal(offsetof(dbk_cluster_opts, version), 0);
    assert_int_equal(offsetof(dbk_async_opts, version), 0);
    assert_int_equal(offsetof(dbk_diag_opts, version), 0);
    assert_int_equal(offsetof(dbk_migrate_opts, version), 0);
    assert_int_equal(offsetof(dbk_lint_opts, version), 0);
    assert_int_equal(offsetof(dbk_testdb_opts, version), 0);
    assert_int_equal(offsetof(dbk_gen_opts, version), 0);
    assert_int_equal(offsetof(dbk_doc_find_opts, version), 0);
    assert_int_equal(offsetof(dbk_doc_mongo_opts, version), 0);
    assert_int_equal(offsetof(dbk_cached_repo_opts, version), 0);
    assert_int_equal(offsetof(dbk_cached_doc_opts, version), 0);
}

/* ---- consumers ---- */

static void opts_pool_open_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    char *url = dbkt_sqlite_url("opts_pool");
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool *p = NULL;
    for (unsigned v = 0; v <= DBK_POOL_OPTS_VERSION; v++) {
        dbk_pool_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.max_size = 3;
        DBKT_OK(dbk_pool_open(cfg, &o, &p, &err), &err);
        dbk_pool_opts got;
        DBKT_OK(dbk_pool_get_opts(p, &got, &err), &err);
        assert_int_equal(got.max_size, 3);
        assert_int_equal(got.version, DBK_POOL_OPTS_VERSION);
        dbk_pool_close(p, 1000);
    }
    dbk_pool_opts o = DBK_POOL_OPTS_INIT;
    o.version = DBK_POOL_OPTS_VERSION + 1;
    p = (dbk_pool *)&err; /* must be reset */
    expect_refused(dbk_pool_open(cfg, &o, &p, &err), &err, "dbk_pool_opts",
                   DBK_POOL_OPTS_VERSION + 1, DBK_POOL_OPTS_VERSION);
    assert_null(p);
    dbk_config_free(cfg);
    free(url);
}

/* "0 means the default": a pool field left 0 takes the configuration's
 * value; DBK_POOL_OFF turns off what the configuration turned on, and
 * dbk_pool_get_opts() reports off as DBK_POOL_OFF (so it round-trips). */
static void opts_pool_off_overrides_configuration(void **state)
{
    (void)state;
    dbk_error err = {0};
    char *file = dbkt_sqlite_url("opts_pool_off");
    char url[600];
    snprintf(url, sizeof url,
             "%s?pool_min_idle=1&idle_timeout=60000&max_lifetime=60000&validate_after=60000"
             "&pool_max_waiters=50&leak_threshold=60000",
             file);
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool *p = NULL;
    dbk_pool_opts got;

    dbk_pool_opts o = DBK_POOL_OPTS_INIT; /* every field: the configuration's */
    DBKT_OK(dbk_pool_open(cfg, &o, &p, &err), &err);
    DBKT_OK(dbk_pool_get_opts(p, &got, &err), &err);
    assert_int_equal(got.min_idle, 1);
    assert_int_equal(got.idle_timeout_ms, 60000);
    assert_int_equal(got.max_lifetime_ms, 60000);
    assert_int_equal(got.validate_after_ms, 60000);
    assert_int_equal(got.max_waiters, 50);
    assert_int_equal(got.leak_threshold_ms, 60000);
    dbk_pool_close(p, 1000);

    o.min_idle = DBK_POOL_OFF;
    o.idle_timeout_ms = DBK_POOL_OFF;
    o.max_lifetime_ms = DBK_POOL_OFF;
    o.validate_after_ms = DBK_POOL_OFF;
    o.max_waiters = DBK_POOL_OFF;
    o.leak_threshold_ms = DBK_POOL_OFF;
    DBKT_OK(dbk_pool_open(cfg, &o, &p, &err), &err);
    DBKT_OK(dbk_pool_get_opts(p, &got, &err), &err);
    assert_int_equal(got.min_idle, DBK_POOL_OFF);
    assert_int_equal(got.idle_timeout_ms, DBK_POOL_OFF);
    assert_int_equal(got.max_lifetime_ms, DBK_POOL_OFF);
    assert_int_equal(got.validate_after_ms, DBK_POOL_OFF);
    assert_int_equal(got.max_waiters, DBK_POOL_OFF);
    assert_int_equal(got.leak_threshold_ms, DBK_POOL_OFF);
    dbk_pool_close(p, 1000);

    /* the reported options open the same pool on a configuration that
     * turns everything on */
    DBKT_OK(dbk_pool_open(cfg, &got, &p, &err), &err);
    dbk_pool_opts again;
    DBKT_OK(dbk_pool_get_opts(p, &again, &err), &err);
    assert_memory_equal(&again, &got, sizeof got);
    dbk_pool_close(p, 1000);

    /* another negative min_idle is still a configuration error */
    o.min_idle = -2;
    DBKT_RC(DBK_ECONFIG, dbk_pool_open(cfg, &o, &p, &err));
    dbk_config_free(cfg);
    free(file);
}

static void opts_cluster_open_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_config *cfg = NULL;
    /* never dialled: the cluster's pools open lazily and it has no replica */
    DBKT_OK(dbk_config_from_url("postgres://u@127.0.0.1:1/x", &cfg, &err), &err);
    dbk_cluster *c = NULL;
    for (unsigned v = 0; v <= DBK_CLUSTER_OPTS_VERSION; v++) {
        dbk_cluster_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_cluster_open(cfg, &o, &c, &err), &err);
        dbk_cluster_close(c, 0);
        c = NULL;
    }
    dbk_cluster_opts o = DBK_CLUSTER_OPTS_INIT;
    o.version = DBK_CLUSTER_OPTS_VERSION + 1;
    expect_refused(dbk_cluster_open(cfg, &o, &c, &err), &err, "dbk_cluster_opts",
                   DBK_CLUSTER_OPTS_VERSION + 1, DBK_CLUSTER_OPTS_VERSION);
    assert_null(c);
    /* the primary's pool options are checked too, before anything opens */
    dbk_pool_opts po = DBK_POOL_OPTS_INIT;
    po.version = DBK_POOL_OPTS_VERSION + 1;
    o.version = DBK_CLUSTER_OPTS_VERSION;
    o.pool_opts = &po;
    expect_refused(dbk_cluster_open(cfg, &o, &c, &err), &err, "dbk_pool_opts",
                   DBK_POOL_OPTS_VERSION + 1, DBK_POOL_OPTS_VERSION);
    assert_null(c);
    /* a SQLite configuration would be DBK_ECONFIG: the version is checked first */
    dbk_config *sq = NULL;
    DBKT_OK(dbk_config_from_url("sqlite::memory:", &sq, &err), &err);
    o.pool_opts = NULL;
    o.version = DBK_CLUSTER_OPTS_VERSION + 1;
    expect_refused(dbk_cluster_open(sq, &o, &c, &err), &err, "dbk_cluster_opts",
                   DBK_CLUSTER_OPTS_VERSION + 1, DBK_CLUSTER_OPTS_VERSION);
    dbk_config_free(sq);
    dbk_config_free(cfg);
}

static dbk_rc count_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)tx, (void)err;
    (*(int *)ctx)++;
    return DBK_OK;
}

struct nested {
    dbk_tx_opts o;
    dbk_rc rc;
    dbk_error err;
    int runs;
};

static dbk_rc nested_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)err;
    struct nested *n = ctx;
    n->rc = dbk_tx_run(tx, count_fn, &n->runs, &n->o, &n->err);
    return DBK_OK;
}

static void opts_tx_run_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(conn);
    int runs = 0;
    for (unsigned v = 0; v <= DBK_TX_OPTS_VERSION; v++) {
        dbk_tx_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_tx_run(db, count_fn, &runs, &o, &err), &err);
    }
    assert_int_equal(runs, DBK_TX_OPTS_VERSION + 1);
    dbk_tx_opts o = DBK_TX_OPTS_INIT;
    o.version = DBK_TX_OPTS_VERSION + 1;
    expect_refused(dbk_tx_run(db, count_fn, &runs, &o, &err), &err, "dbk_tx_opts",
                   DBK_TX_OPTS_VERSION + 1, DBK_TX_OPTS_VERSION);
    assert_int_equal(runs, DBK_TX_OPTS_VERSION + 1); /* the closure never ran */
    /* nested: the options are ignored, but a too-new struct is still refused */
    struct nested n = {.o = o};
    DBKT_OK(dbk_tx_run(db, nested_fn, &n, NULL, &err), &err);
    expect_refused(n.rc, &n.err, "dbk_tx_opts", DBK_TX_OPTS_VERSION + 1, DBK_TX_OPTS_VERSION);
    assert_int_equal(n.runs, 0);
    dbk_conn_close(conn);
}

static void opts_cache_open_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_cache *c = NULL;
    for (unsigned v = 0; v <= DBK_CACHE_OPTS_VERSION; v++) {
        dbk_cache_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.url = "memory:";
        DBKT_OK(dbk_cache_open(&o, &c, &err), &err);
        dbk_cache_close(c);
    }
    dbk_cache_opts o = DBK_CACHE_OPTS_INIT;
    o.url = "memory:";
    o.version = DBK_CACHE_OPTS_VERSION + 1;
    c = (dbk_cache *)&err;
    expect_refused(dbk_cache_open(&o, &c, &err), &err, "dbk_cache_opts", DBK_CACHE_OPTS_VERSION + 1,
                   DBK_CACHE_OPTS_VERSION);
    assert_null(c);
}

struct item {
    int64_t id;
    char *name;
};

static const dbk_field item_fields[] = {
    DBK_FIELD(struct item, id, "id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(struct item, name, "name", DBK_TYPE_TEXT, 0),
};
static dbk_entity item_entity = DBK_ENTITY_PLAIN("opts_items", struct item, item_fields);

/* The calls that fill an option struct from the environment read it too. */
static void opts_from_env_calls_check_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_cache_env *env = NULL;
    for (unsigned v = 0; v <= DBK_CACHE_OPTS_VERSION; v++) {
        dbk_cache_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.url = "memory:";
        DBKT_OK(dbk_cache_opts_from_env(&o, &env, &err), &err);
        assert_int_equal(o.version, v);
        dbk_cache_env_free(env);
    }
    dbk_cache_opts co = DBK_CACHE_OPTS_INIT;
    co.version = DBK_CACHE_OPTS_VERSION + 1;
    co.url = "memory:";
    env = (dbk_cache_env *)&err;
    expect_refused(dbk_cache_opts_from_env(&co, &env, &err), &err, "dbk_cache_opts",
                   DBK_CACHE_OPTS_VERSION + 1, DBK_CACHE_OPTS_VERSION);
    assert_null(env);

    for (unsigned v = 0; v <= DBK_MIGRATE_OPTS_VERSION; v++) {
        dbk_migrate_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_migrate_opts_from_env(&o, &err), &err);
        assert_int_equal(o.version, v);
    }
    dbk_migrate_opts mo = DBK_MIGRATE_OPTS_INIT;
    mo.version = DBK_MIGRATE_OPTS_VERSION + 1;
    mo.statement_timeout_ms = 1234;
    expect_refused(dbk_migrate_opts_from_env(&mo, &err), &err, "dbk_migrate_opts",
                   DBK_MIGRATE_OPTS_VERSION + 1, DBK_MIGRATE_OPTS_VERSION);
    assert_int_equal(mo.statement_timeout_ms, 1234); /* untouched */
}

static void opts_cached_repo_new_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_cache_opts co = DBK_CACHE_OPTS_INIT;
    co.url = "memory:";
    dbk_cache *cache = NULL;
    DBKT_OK(dbk_cache_open(&co, &cache, &err), &err);
    dbk_cached_repo *r = NULL;
    for (unsigned v = 0; v <= DBK_CACHED_REPO_OPTS_VERSION; v++) {
        dbk_cached_repo_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.ttl_ms = 1000;
        DBKT_OK(dbk_cached_repo_new(cache, &item_entity, &o, &r, &err), &err);
        dbk_cached_repo_free(r);
    }
    dbk_cached_repo_opts o = DBK_CACHED_REPO_OPTS_INIT;
    o.version = DBK_CACHED_REPO_OPTS_VERSION + 1;
    r = (dbk_cached_repo *)&err;
    expect_refused(dbk_cached_repo_new(cache, &item_entity, &o, &r, &err), &err,
                   "dbk_cached_repo_opts", DBK_CACHED_REPO_OPTS_VERSION + 1,
                   DBK_CACHED_REPO_OPTS_VERSION);
    assert_null(r);
    dbk_cache_close(cache);
}

static const dbk_doc_field note_fields[] = {{"title", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL}};
static const dbk_doc_schema note_schema = {
    .collection = "opts_notes", .fields = note_fields, .nfields = 1};

static void opts_doc_calls_check_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_doc_coll *coll = NULL;
    DBKT_OK(dbk_doc_coll_open(dbk_conn_db(conn), &note_schema, &coll, &err), &err);
    DBKT_OK(dbk_doc_coll_ensure(coll, &err), &err);
    const char *doc = "{\"_id\":\"a\",\"title\":\"x\"}";
    DBKT_OK(dbk_doc_create(coll, doc, strlen(doc), NULL, &err), &err);

    /* dbk_doc_find */
    for (unsigned v = 0; v <= DBK_DOC_FIND_OPTS_VERSION; v++) {
        dbk_doc_find_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.with_total = true;
        dbk_doc_page page;
        DBKT_OK(dbk_doc_find(coll, &o, &page, &err), &err);
        assert_int_equal(page.count, 1);
        dbk_doc_page_free(&page);
    }
    dbk_doc_find_opts fo = DBK_DOC_FIND_OPTS_INIT;
    fo.version = DBK_DOC_FIND_OPTS_VERSION + 1;
    dbk_doc_page page;
    expect_refused(dbk_doc_find(coll, &fo, &page, &err), &err, "dbk_doc_find_opts",
                   DBK_DOC_FIND_OPTS_VERSION + 1, DBK_DOC_FIND_OPTS_VERSION);
    assert_int_equal(page.count, 0);
    assert_null(page.docs);

    /* dbk_cached_doc_new */
    dbk_cache_opts co = DBK_CACHE_OPTS_INIT;
    co.url = "memory:";
    dbk_cache *cache = NULL;
    DBKT_OK(dbk_cache_open(&co, &cache, &err), &err);
    dbk_cached_doc *cd = NULL;
    for (unsigned v = 0; v <= DBK_CACHED_DOC_OPTS_VERSION; v++) {
        dbk_cached_doc_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_cached_doc_new(cache, coll, &o, &cd, &err), &err);
        dbk_cached_doc_free(cd);
    }
    dbk_cached_doc_opts cdo = DBK_CACHED_DOC_OPTS_INIT;
    cdo.version = DBK_CACHED_DOC_OPTS_VERSION + 1;
    cd = (dbk_cached_doc *)&err;
    expect_refused(dbk_cached_doc_new(cache, coll, &cdo, &cd, &err), &err, "dbk_cached_doc_opts",
                   DBK_CACHED_DOC_OPTS_VERSION + 1, DBK_CACHED_DOC_OPTS_VERSION);
    assert_null(cd);
    dbk_cache_close(cache);
    dbk_doc_coll_close(coll);
    dbk_conn_close(conn);

    /* dbk_doc_mongo_open: with or without the MongoDB backend, a too-new
     * struct is refused first; version 0 gets as far as the backend */
    dbk_doc_mongo_opts mo = DBK_DOC_MONGO_OPTS_INIT;
    mo.version = DBK_DOC_MONGO_OPTS_VERSION + 1;
    dbk_doc_mongo *m = NULL;
    expect_refused(dbk_doc_mongo_open("mongodb://127.0.0.1:1/x", &mo, &m, &err), &err,
                   "dbk_doc_mongo_opts", DBK_DOC_MONGO_OPTS_VERSION + 1,
                   DBK_DOC_MONGO_OPTS_VERSION);
    assert_null(m);
    mo.version = 0;
    dbk_rc rc = dbk_doc_mongo_open("mongodb://127.0.0.1:1/x", &mo, &m, &err);
    if (dbk_doc_mongo_available()) {
        DBKT_OK(rc, &err);
        dbk_doc_mongo_close(m);
    } else {
        DBKT_RC(DBK_ECONFIG, rc);
    }
}

static void opts_diag_new_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_diag *d = NULL;
    for (unsigned v = 0; v <= DBK_DIAG_OPTS_VERSION; v++) {
        dbk_diag_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_diag_new(&o, &d, &err), &err);
        dbk_diag_free(d);
    }
    dbk_diag_opts o = DBK_DIAG_OPTS_INIT;
    o.version = DBK_DIAG_OPTS_VERSION + 1;
    d = (dbk_diag *)&err;
    expect_refused(dbk_diag_new(&o, &d, &err), &err, "dbk_diag_opts", DBK_DIAG_OPTS_VERSION + 1,
                   DBK_DIAG_OPTS_VERSION);
    assert_null(d);
}

static void opts_async_open_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_async *a = NULL;
    for (unsigned v = 0; v <= DBK_ASYNC_OPTS_VERSION; v++) {
        dbk_async_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_async_open(dbk_conn_db(conn), &o, &a, &err), &err);
        dbk_async_close(a);
    }
    dbk_async_opts o = DBK_ASYNC_OPTS_INIT;
    o.version = DBK_ASYNC_OPTS_VERSION + 1;
    a = (dbk_async *)&err;
    expect_refused(dbk_async_open(dbk_conn_db(conn), &o, &a, &err), &err, "dbk_async_opts",
                   DBK_ASYNC_OPTS_VERSION + 1, DBK_ASYNC_OPTS_VERSION);
    assert_null(a);
    dbk_conn_close(conn);
}

static const dbk_migration_file mig_files[] = {
    {"20240101000000_t.sql",
     "-- migrate:up\nCREATE TABLE opts_t (id INTEGER PRIMARY KEY);\n"
     "-- migrate:down\nDROP TABLE opts_t;\n",
     0},
};
static const dbk_migrate_source mig_src = {.files = mig_files, .nfiles = 1};

static const dbk_migration_file seed_files[] = {
    {"10_t.sql", "CREATE TABLE opts_seeded (id INTEGER);\n", 0},
};
static const dbk_migrate_source seed_src = {.files = seed_files, .nfiles = 1};

static int64_t tables_named(dbk_db *db, const char *name)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE name = '%s'", name);
    return dbkt_int(db, sql);
}

static void opts_migrate_calls_check_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(conn);
    dbk_migrate_opts bad = DBK_MIGRATE_OPTS_INIT;
    bad.version = DBK_MIGRATE_OPTS_VERSION + 1;
    const unsigned nv = DBK_MIGRATE_OPTS_VERSION + 1, cur = DBK_MIGRATE_OPTS_VERSION;
    int n = -1;

    /* refused: nothing applied, nothing run */
    expect_refused(dbk_migrate_up(db, &mig_src, &bad, &n, &err), &err, "dbk_migrate_opts", nv, cur);
    assert_int_equal(n, 0);
    assert_int_equal(tables_named(db, "opts_t"), 0);
    expect_refused(dbk_seed_run(db, &seed_src, &bad, &n, &err), &err, "dbk_migrate_opts", nv, cur);
    assert_int_equal(tables_named(db, "opts_seeded"), 0);

    for (unsigned v = 0; v <= DBK_MIGRATE_OPTS_VERSION; v++) {
        dbk_migrate_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_migrate_up(db, &mig_src, &o, &n, &err), &err);
        assert_int_equal(n, 1);
        assert_int_equal(tables_named(db, "opts_t"), 1);
        expect_refused(dbk_migrate_down(db, &mig_src, &bad, &n, &err), &err, "dbk_migrate_opts", nv,
                       cur);
        assert_int_equal(n, 0);
        expect_refused(dbk_migrate_redo(db, &mig_src, &bad, &err), &err, "dbk_migrate_opts", nv,
                       cur);
        assert_int_equal(tables_named(db, "opts_t"), 1);
        DBKT_OK(dbk_migrate_redo(db, &mig_src, &o, &err), &err);
        DBKT_OK(dbk_migrate_down(db, &mig_src, &o, &n, &err), &err);
        assert_int_equal(n, 1);
        assert_int_equal(tables_named(db, "opts_t"), 0);
    }
    expect_refused(dbk_migrate_repair(db, 20240101000000, true, &bad, &err), &err,
                   "dbk_migrate_opts", nv, cur);
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    DBKT_OK(dbk_seed_run(db, &seed_src, &o, &n, &err), &err);
    assert_int_equal(n, 1);
    dbk_conn_close(conn);
}

static void opts_lint_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    dbk_lint_report *rep = NULL;
    for (unsigned v = 0; v <= DBK_LINT_OPTS_VERSION; v++) {
        dbk_lint_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        DBKT_OK(dbk_lint_file(mig_files[0].filename, mig_files[0].contents, 0, &o, &rep, &err),
                &err);
        dbk_lint_report_free(rep);
        DBKT_OK(dbk_lint_source(&mig_src, &o, &rep, &err), &err);
        dbk_lint_report_free(rep);
    }
    dbk_lint_opts o = DBK_LINT_OPTS_INIT;
    o.version = DBK_LINT_OPTS_VERSION + 1;
    rep = (dbk_lint_report *)&err;
    expect_refused(dbk_lint_file(mig_files[0].filename, mig_files[0].contents, 0, &o, &rep, &err),
                   &err, "dbk_lint_opts", DBK_LINT_OPTS_VERSION + 1, DBK_LINT_OPTS_VERSION);
    assert_null(rep);
    rep = (dbk_lint_report *)&err;
    expect_refused(dbk_lint_source(&mig_src, &o, &rep, &err), &err, "dbk_lint_opts",
                   DBK_LINT_OPTS_VERSION + 1, DBK_LINT_OPTS_VERSION);
    assert_null(rep);
}

static void opts_testdb_new_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    char *url = dbkt_sqlite_url("opts_testdb_base");
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_testdb *t = NULL;
    for (unsigned v = 0; v <= DBK_TESTDB_OPTS_VERSION; v++) {
        dbk_testdb_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.no_prune = true;
        DBKT_OK(dbk_testdb_new(cfg, NULL, &o, &t, &err), &err);
        DBKT_OK(dbk_testdb_drop(t, &err), &err);
    }
    dbk_testdb_opts o = DBK_TESTDB_OPTS_INIT;
    o.version = DBK_TESTDB_OPTS_VERSION + 1;
    t = (dbk_testdb *)&err;
    expect_refused(dbk_testdb_new(cfg, NULL, &o, &t, &err), &err, "dbk_testdb_opts",
                   DBK_TESTDB_OPTS_VERSION + 1, DBK_TESTDB_OPTS_VERSION);
    assert_null(t);
    dbk_config_free(cfg);
    free(url);
}

static void opts_gen_run_checks_version(void **state)
{
    (void)state;
    dbk_error err = {0};
    char *dir = dbkt_tmpdir();
    char mig[512], q[512], out[512], base[600];
    snprintf(mig, sizeof mig, "%s/migrations", dir);
    snprintf(q, sizeof q, "%s/queries", dir);
    snprintf(out, sizeof out, "%s/gen", dir);
    snprintf(base, sizeof base, "sqlite:%s/base.db", dir);
    assert_int_equal(mkdir(mig, 0700), 0);
    assert_int_equal(mkdir(q, 0700), 0);
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from_url(base, &cfg, &err), &err);
    dbk_gen_report rep;
    for (unsigned v = 0; v <= DBK_GEN_OPTS_VERSION; v++) {
        dbk_gen_opts o;
        memset(&o, 0, sizeof o);
        o.version = v;
        o.cfg = cfg;
        o.migrations_dir = mig;
        o.queries_dir = q;
        o.out_dir = out;
        DBKT_OK(dbk_gen_run(&o, &rep, &err), &err);
    }
    dbk_gen_opts o = DBK_GEN_OPTS_INIT;
    o.version = DBK_GEN_OPTS_VERSION + 1;
    o.cfg = cfg;
    o.migrations_dir = mig;
    o.queries_dir = q;
    o.out_dir = out;
    expect_refused(dbk_gen_run(&o, &rep, &err), &err, "dbk_gen_opts", DBK_GEN_OPTS_VERSION + 1,
                   DBK_GEN_OPTS_VERSION);
    assert_int_equal(rep.files, 0);
    dbk_config_free(cfg);
    free(dir);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(opts_init_contract),
        cmocka_unit_test(opts_version_is_first_member),
        cmocka_unit_test(opts_pool_open_checks_version),
        cmocka_unit_test(opts_pool_off_overrides_configuration),
        cmocka_unit_test(opts_cluster_open_checks_version),
        cmocka_unit_test(opts_tx_run_checks_version),
        cmocka_unit_test(opts_cache_open_checks_version),
        cmocka_unit_test(opts_from_env_calls_check_version),
        cmocka_unit_test(opts_cached_repo_new_checks_version),
        cmocka_unit_test(opts_doc_calls_check_version),
        cmocka_unit_test(opts_diag_new_checks_version),
        cmocka_unit_test(opts_async_open_checks_version),
        cmocka_unit_test(opts_migrate_calls_check_version),
        cmocka_unit_test(opts_lint_checks_version),
        cmocka_unit_test(opts_testdb_new_checks_version),
        cmocka_unit_test(opts_gen_run_checks_version),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
