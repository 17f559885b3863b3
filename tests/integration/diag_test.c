/* dbkit:valgrind
 * Diagnostics on both engines: the N+1 detector (a loop of find-by-id
 * calls and the seed's users-then-posts loop are reported, the include
 * equivalent is not; thresholds, safelist, once per statement, nesting,
 * threads, transaction control), the query log (slow threshold, format and
 * escaping, parameters only when asked, sampling with a seeded generator)
 * and the counters with their Prometheus text parsed back line by line.
 * Log lines are captured through the logging hook. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ---- log capture ---- */

#define MAX_LINES 4096

static struct {
    pthread_mutex_t mu;
    size_t n;
    char *line[MAX_LINES];
    dbk_log_level level[MAX_LINES];
} cap = {PTHREAD_MUTEX_INITIALIZER, 0, {0}, {0}};

static void capture(void *ctx, dbk_log_level level, const char *msg)
{
    (void)ctx;
    pthread_mutex_lock(&cap.mu);
    if (cap.n < MAX_LINES) {
        cap.level[cap.n] = level;
        cap.line[cap.n++] = strdup(msg);
    }
    pthread_mutex_unlock(&cap.mu);
}

static void cap_reset(void)
{
    pthread_mutex_lock(&cap.mu);
    for (size_t i = 0; i < cap.n; i++)
        free(cap.line[i]);
    cap.n = 0;
    pthread_mutex_unlock(&cap.mu);
    dbk_set_log(capture, NULL, DBK_LOG_DEBUG);
}

/* Number of captured lines starting with `prefix` (and containing `needle`
 * when not NULL); *first gets the first such line. */
static size_t cap_count(const char *prefix, const char *needle, const char **first)
{
    size_t k = 0;
    if (first)
        *first = NULL;
    for (size_t i = 0; i < cap.n; i++) {
        if (strncmp(cap.line[i], prefix, strlen(prefix)) != 0)
            continue;
        if (needle && !strstr(cap.line[i], needle))
            continue;
        if (first && !*first)
            *first = cap.line[i];
        k++;
    }
    return k;
}

static void cap_dump(void)
{
    for (size_t i = 0; i < cap.n; i++)
        print_message("  log[%zu] %d: %s\n", i, (int)cap.level[i], cap.line[i]);
}

#define ASSERT_LINES(expected, prefix, needle)                                                \
    do {                                                                                      \
        size_t got_ = cap_count((prefix), (needle), NULL);                                    \
        if (got_ != (size_t)(expected)) {                                                     \
            cap_dump();                                                                       \
            fail_msg("expected %zu lines '%s' with '%s', got %zu", (size_t)(expected), (prefix), \
                     (needle) ? (needle) : "", got_);                                         \
        }                                                                                     \
    } while (0)

/* ---- entities: the seed's users and posts ---- */

struct post;
struct user {
    int64_t id;
    const char *name;
    const char *password;
    struct post *posts;
    size_t nposts;
};
struct post {
    int64_t id;
    int64_t user_id;
    const char *title;
};

static dbk_entity user_entity, post_entity;
static const dbk_field user_fields[] = {
    DBK_FIELD(struct user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct user, name, "name", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct user, password, "password", DBK_TYPE_TEXT, DBK_F_HIDDEN | DBK_F_NULLABLE),
};
static const dbk_relation user_rels[] = {
    DBK_HAS_MANY(struct user, "posts", posts, nposts, &post_entity, "user_id"),
};
static dbk_entity user_entity = DBK_ENTITY("users", struct user, user_fields, user_rels);
static const dbk_field post_fields[] = {
    DBK_FIELD(struct post, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct post, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct post, title, "title", DBK_TYPE_TEXT, 0),
};
static dbk_entity post_entity = DBK_ENTITY_PLAIN("posts", struct post, post_fields);

#define NUSERS 8

/* Opens url, creates users and posts (NUSERS users with 2 posts each). */
static dbk_conn *setup(const char *url, dbk_engine eng)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, eng == DBK_ENGINE_POSTGRES
                      ? "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                        "password TEXT);"
                        "CREATE TABLE posts (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL "
                        "REFERENCES users(id), title TEXT NOT NULL)"
                      : "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                        "password TEXT);"
                        "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL "
                        "REFERENCES users(id), title TEXT NOT NULL)");
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    for (int i = 1; i <= NUSERS; i++) {
        char name[32], title[32];
        snprintf(name, sizeof name, "user%d", i);
        struct user u = {.name = name}, out;
        DBKT_OK(dbk_repo_create(db, &user_entity, &u, &out, a, &err), &err);
        for (int k = 0; k < 2; k++) {
            snprintf(title, sizeof title, "post %d.%d", i, k);
            struct post p = {.user_id = out.id, .title = title};
            DBKT_OK(dbk_repo_create(db, &post_entity, &p, NULL, a, &err), &err);
        }
    }
    dbk_arena_free(a);
    return c;
}

static dbk_diag *mk_diag(const dbk_diag_opts *o)
{
    dbk_diag *d = NULL;
    dbk_error err;
    DBKT_OK(dbk_diag_new(o, &d, &err), &err);
    assert_non_null(d);
    return d;
}

/* A hub with options o (NULL: the defaults) observing db. */
static dbk_diag *mk_diag_on(const dbk_diag_opts *o, dbk_db *db)
{
    dbk_diag *d = mk_diag(o);
    dbk_diag_attach(d, db);
    return d;
}

/* Runs find_by_id for ids 1..n. */
static void find_loop(dbk_db *db, int n)
{
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    for (int i = 1; i <= n; i++) {
        struct user u;
        DBKT_OK(dbk_repo_find_by_id(db, &user_entity, dbk_int64(((i - 1) % NUSERS) + 1), &u, a,
                                    &err),
                &err);
    }
    dbk_arena_free(a);
}

/* Every user with its posts, loaded the include way (two statements). */
static dbk_rc users_with_posts(dbk_db *db, dbk_arena *a, dbk_list *users, dbk_error *err)
{
    const char *const inc[] = {"posts"};
    dbk_query q = {.include = inc, .ninclude = 1};
    return dbk_repo_find_many(db, &user_entity, &q, users, a, err);
}

/* Runs the same statement, not a keyed lookup, n times. */
static void count_loop(dbk_db *db, int n)
{
    for (int i = 0; i < n; i++)
        dbkt_int(db, "SELECT count(*) FROM posts");
}

/* find_loop(db, n) inside a scope `name` of hub d; returns what the end of
 * the scope returns, filling *err. */
static dbk_rc scoped_find_loop(dbk_diag *d, dbk_db *db, const char *name, int n, dbk_error *err)
{
    dbk_diag_scope_begin(d, name);
    find_loop(db, n);
    return dbk_diag_scope_end(d, err);
}

/* The last statement seen, through the chained observer. */
static char last_sql[512];
static int chained;
static void remember(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    chained++;
    snprintf(last_sql, sizeof last_sql, "%s", ev->sql);
}

/* ---- N+1 ---- */

static void n1_logged(const char *url, dbk_engine eng)
{
    cap_reset();
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag *d = mk_diag(NULL); /* defaults: LOG mode, threshold 5 */
    dbk_diag_attach(d, db);
    dbk_error err;

    int line = __LINE__ + 1;
    dbk_diag_scope_begin(d, "load users");
    find_loop(db, NUSERS);
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);

    const char *l;
    assert_int_equal(cap_count("n+1 ", NULL, &l), 1);
    assert_non_null(strstr(l, "count=8 "));
    assert_non_null(strstr(l, "total_ms="));
    assert_non_null(strstr(l, "scope=\"load users\""));
    char at[128];
    snprintf(at, sizeof at, "at=%s:%d (n1_logged)", __FILE__, line);
    if (!strstr(l, at))
        fail_msg("no call site '%s' in: %s", at, l);
    assert_non_null(strstr(l, "sql=\"SELECT "));
    assert_non_null(strstr(l, "FROM \\\"users\\\" WHERE \\\"id\\\" = $1"));
    assert_non_null(strstr(l, "hint=\"use an include: dbk_query.include"));
    for (size_t i = 0; i < cap.n; i++)
        if (strncmp(cap.line[i], "n+1 ", 4) == 0)
            assert_int_equal(cap.level[i], DBK_LOG_WARN);

    /* The seed's example: users, then posts per user. */
    cap_reset();
    dbk_arena *a = dbk_arena_new(0);
    dbk_diag_scope_begin(d, "users with posts");
    dbk_list users;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, NULL, &users, a, &err), &err);
    assert_int_equal(users.count, NUSERS);
    for (size_t i = 0; i < users.count; i++) {
        struct user *u = &((struct user *)users.items)[i];
        dbk_filter f = DBK_WHERE("user_id", DBK_FILTER_EQ, dbk_int64(u->id));
        dbk_query q = {.filters = &f, .nfilters = 1};
        dbk_list posts;
        DBKT_OK(dbk_repo_find_many(db, &post_entity, &q, &posts, a, &err), &err);
        assert_int_equal(posts.count, 2);
    }
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(1, "n+1 count=8 ", "FROM \\\"posts\\\"");
    ASSERT_LINES(1, "n+1 ", NULL);

    /* The include equivalent: two statements, nothing reported. */
    cap_reset();
    dbk_diag_scope_begin(d, "users with posts, included");
    DBKT_OK(users_with_posts(db, a, &users, &err), &err);
    assert_int_equal(users.count, NUSERS);
    assert_int_equal(((struct user *)users.items)[NUSERS - 1].nposts, 2);
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(0, "n+1 ", NULL);

    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.n_plus_one, 2);
    dbk_arena_free(a);
    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_n1_find_by_id_loop_is_logged(void **state)
{
    (void)state;
    dbkt_each_engine("diag_n1_logged", n1_logged);
}

static void n1_error(const char *url, dbk_engine eng)
{
    cap_reset();
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;

    DBKT_RC(DBK_EN_PLUS_ONE, scoped_find_loop(d, db, "request", 6, &err));
    assert_int_equal(err.code, DBK_EN_PLUS_ONE);
    if (!strstr(err.message, "run 6 times") || !strstr(err.message, "FROM \"users\"") ||
        !strstr(err.message, "scope \"request\""))
        fail_msg("message: %s", err.message);
    assert_non_null(strstr(err.hint, "load \"users\" by \"id\""));
    assert_non_null(strstr(err.hint, "dbk_query.include"));
    assert_non_null(strstr(err.hint, "dbk_repo_include()"));
    ASSERT_LINES(1, "n+1 count=6 ", NULL);

    /* The include equivalent in ERROR mode passes. */
    dbk_arena *a = dbk_arena_new(0);
    dbk_diag_scope_begin(d, "request");
    dbk_list users;
    DBKT_OK(users_with_posts(db, a, &users, &err), &err);
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);

    /* Two statements over the threshold: both reported, the message says so. */
    dbk_diag_scope_begin(d, "two");
    find_loop(db, 7);
    count_loop(db, 6);
    DBKT_RC(DBK_EN_PLUS_ONE, dbk_diag_scope_end(d, &err));
    assert_non_null(strstr(err.message, "run 7 times"));
    assert_non_null(strstr(err.message, "(and 1 more statements)"));
    dbk_error_clear(&err);

    /* A statement that is not a keyed lookup gets the general hint. */
    dbk_diag_scope_begin(d, "counts");
    count_loop(db, 6);
    DBKT_RC(DBK_EN_PLUS_ONE, dbk_diag_scope_end(d, &err));
    assert_non_null(strstr(err.hint, "load the related rows with an include"));
    ASSERT_LINES(2, "n+1 count=6 ", "SELECT count(*) FROM posts");

    /* No scope open: misuse. */
    DBKT_RC(DBK_EMISUSE, dbk_diag_scope_end(d, &err));
    dbk_arena_free(a);
    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_n1_error_mode_returns_en_plus_one(void **state)
{
    (void)state;
    dbkt_each_engine("diag_n1_error", n1_error);
}

static void diag_n1_threshold_edge(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_edge");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;

    DBKT_OK(scoped_find_loop(d, db, "exactly five", 5, &err), &err);
    DBKT_RC(DBK_EN_PLUS_ONE, scoped_find_loop(d, db, "six", 6, &err));
    dbk_diag_free(d);

    /* A custom threshold: 2 passes, 3 does not. */
    o.n1_threshold = 2;
    d = mk_diag_on(&o, db);
    DBKT_OK(scoped_find_loop(d, db, "two", 2, &err), &err);
    DBKT_RC(DBK_EN_PLUS_ONE, scoped_find_loop(d, db, "three", 3, &err));
    assert_non_null(strstr(err.message, "run 3 times"));
    dbk_diag_free(d);

    /* A total-time floor no loop reaches: counted, not reported. */
    o.n1_threshold = 0;
    o.n1_min_total_us = 60 * 1000000;
    d = mk_diag_on(&o, db);
    DBKT_OK(scoped_find_loop(d, db, "cheap", 20, &err), &err);
    dbk_diag_free(d);

    /* OFF: nothing. */
    o.n1_min_total_us = 0;
    o.n1_mode = DBK_N1_MODE_OFF;
    d = mk_diag_on(&o, db);
    DBKT_OK(scoped_find_loop(d, db, "off", 20, &err), &err);
    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.n_plus_one, 0);
    dbk_diag_free(d);
    ASSERT_LINES(2, "n+1 ", NULL);

    dbk_conn_close(c);
    free(url);
}

/* 0 is the default mode (log), and DBK_N1_MODE_LOG asks for the same by
 * name; the names renamed in 0.2 (DBK_N1_OFF, DBK_N1_LOG, DBK_N1_ERROR)
 * still work for one release with their old values and behaviour. */
static void diag_n1_modes_and_deprecated_names(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_modes");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_diag_stats s;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    const dbk_n1_mode logs[] = {DBK_N1_MODE_DEFAULT, DBK_N1_MODE_LOG, DBK_N1_LOG};
    assert_int_equal(DBK_N1_LOG, 0);
    assert_int_equal(DBK_N1_OFF, DBK_N1_MODE_OFF);
    assert_int_equal(DBK_N1_ERROR, DBK_N1_MODE_ERROR);
    for (size_t i = 0; i < sizeof logs / sizeof logs[0]; i++) {
        dbk_diag_opts o = {.n1_mode = logs[i]};
        dbk_diag *d = mk_diag_on(&o, db);
        DBKT_OK(scoped_find_loop(d, db, "logged", 6, &err), &err);
        dbk_diag_get_stats(d, &s);
        assert_int_equal(s.n_plus_one, 1);
        dbk_diag_stats old; /* the old name of dbk_diag_get_stats: the same snapshot */
        dbk_diag_stats_get(d, &old);
        assert_true(old.n_plus_one == s.n_plus_one && old.duration_count == s.duration_count);
        dbk_diag_free(d);
    }
    ASSERT_LINES(3, "n+1 ", NULL);
    dbk_diag_opts o = {.n1_mode = DBK_N1_ERROR};
    dbk_diag *d = mk_diag_on(&o, db);
    DBKT_RC(DBK_EN_PLUS_ONE, scoped_find_loop(d, db, "error", 6, &err));
    dbk_diag_free(d);
    o.n1_mode = DBK_N1_OFF;
#pragma GCC diagnostic pop
    d = mk_diag_on(&o, db);
    DBKT_OK(scoped_find_loop(d, db, "off", 6, &err), &err);
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.n_plus_one, 0);
    dbk_diag_free(d);
    ASSERT_LINES(4, "n+1 ", NULL);
    dbk_conn_close(c);
    free(url);
}

static void diag_n1_safelist_suppresses(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_safelist");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;

    /* Learn the statement's text through a chained observer. */
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR, .chain = remember};
    dbk_diag *d = mk_diag_on(&o, db);
    chained = 0;
    find_loop(db, 1);
    assert_int_equal(chained, 1);
    assert_non_null(strstr(last_sql, "\"users\""));
    dbk_diag_free(d);

    /* Exact text, and a prefix of it. */
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%.12s", last_sql);
    const char *const exact[] = {"SELECT nothing", last_sql, NULL};
    const char *const pre[] = {prefix, NULL};
    const char *const other[] = {"SELECT nothing", "", NULL};
    const char *const *lists[] = {exact, pre, other};
    for (int i = 0; i < 3; i++) {
        o.n1_safelist = lists[i];
        d = mk_diag_on(&o, db);
        dbk_rc rc = scoped_find_loop(d, db, "safelisted", 10, &err);
        assert_int_equal(rc, i < 2 ? DBK_OK : DBK_EN_PLUS_ONE);
        dbk_diag_free(d);
    }
    dbk_conn_close(c);
    free(url);
}

static void diag_n1_reported_once_per_statement_per_scope(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_once");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag *d = mk_diag_on(NULL, db);
    dbk_error err;

    DBKT_OK(scoped_find_loop(d, db, "many", 40, &err), &err);
    ASSERT_LINES(1, "n+1 ", NULL);
    ASSERT_LINES(1, "n+1 count=40 ", NULL);

    /* A new scope reports again. */
    DBKT_OK(scoped_find_loop(d, db, "again", 6, &err), &err);
    ASSERT_LINES(2, "n+1 ", NULL);

    /* Nested: one query per inner scope, the outer scope sees the loop;
     * an inner scope that reports is not reported again by the outer. */
    cap_reset();
    dbk_diag_scope_begin(d, "outer");
    for (int i = 0; i < 7; i++)
        DBKT_OK(scoped_find_loop(d, db, "inner", 1, &err), &err);
    ASSERT_LINES(0, "n+1 ", NULL);
    dbk_diag_scope_begin(d, "inner loop");
    count_loop(db, 6);
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(1, "n+1 count=6 ", "scope=\"inner loop\"");
    count_loop(db, 6);
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(1, "n+1 count=7 ", "scope=\"outer\"");
    ASSERT_LINES(2, "n+1 ", NULL);

    /* Transaction control statements are never an N+1. */
    cap_reset();
    dbk_diag_scope_begin(d, "transactions");
    for (int i = 0; i < 8; i++) {
        char sql[32];
        snprintf(sql, sizeof sql, "SELECT %d", i);
        dbkt_exec(db, "BEGIN");
        dbkt_int(db, sql);
        dbkt_exec(db, "COMMIT");
    }
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(0, "n+1 ", NULL);

    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.n_plus_one, 4);
    dbk_conn_close(c);
    dbk_diag_free(d);
    free(url);
}

/* Transaction control is exempt however the statement starts: after a
 * comment (an ORM's tag), a line comment or a newline, read with the
 * shared SQL scanner like every other module reads statements. */
static void diag_n1_control_after_a_comment_is_exempt(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_control_comment");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag *d = mk_diag_on(NULL, db);
    dbk_error err;
    dbk_diag_scope_begin(d, "tagged transactions");
    for (int i = 0; i < 8; i++) {
        char sql[32];
        snprintf(sql, sizeof sql, "SELECT %d", i);
        dbkt_exec(db, "/* app:checkout */ BEGIN");
        dbkt_int(db, sql);
        dbkt_exec(db, "-- app:checkout\nCOMMIT");
    }
    DBKT_OK(dbk_diag_scope_end(d, &err), &err);
    ASSERT_LINES(0, "n+1 ", NULL);
    dbk_conn_close(c);
    dbk_diag_free(d);
    free(url);
}

/* Runs fn(a) and fn(b) on two threads and waits for both. */
static void run_two(void *(*fn)(void *), void *a, void *b)
{
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, fn, a), 0);
    assert_int_equal(pthread_create(&tb, NULL, fn, b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
}

/* Two threads, one scope each, same statement: counts do not mix. */
struct worker {
    dbk_diag *d;
    const char *url;
    int n;
    pthread_barrier_t *bar;
    dbk_rc rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    dbk_conn *c = NULL;
    dbk_error err;
    dbk_config *cfg = NULL;
    w->rc = DBK_EINTERNAL;
    if (dbk_config_from_url(w->url, &cfg, &err) || dbk_conn_open(cfg, &c, &err)) {
        dbk_config_free(cfg);
        pthread_barrier_wait(w->bar);
        pthread_barrier_wait(w->bar);
        return NULL;
    }
    dbk_config_free(cfg);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_attach(w->d, db);
    dbk_diag_scope_begin(w->d, w->n > 5 ? "busy thread" : "quiet thread");
    pthread_barrier_wait(w->bar); /* both scopes open before any query */
    for (int i = 0; i < w->n; i++) {
        int64_t v = 0;
        dbk_db_query_int64(db, "SELECT count(*) FROM users", NULL, 0, &v, &err);
    }
    pthread_barrier_wait(w->bar); /* both loops done before either scope ends */
    w->rc = dbk_diag_scope_end(w->d, &err);
    dbk_conn_close(c);
    return NULL;
}

static void diag_n1_scopes_on_two_threads_do_not_mix(void **state)
{
    (void)state;
    cap_reset();
    char *url = dbkt_sqlite_url("n1_threads");
    dbk_conn_close(setup(url, DBK_ENGINE_SQLITE));
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR};
    dbk_diag *d = mk_diag(&o);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);

    /* 4 + 4 = 8 would cross the threshold if the scopes were shared. */
    struct worker a = {d, url, 4, &bar, DBK_OK}, b = {d, url, 4, &bar, DBK_OK};
    run_two(worker_main, &a, &b);
    assert_int_equal(a.rc, DBK_OK);
    assert_int_equal(b.rc, DBK_OK);

    /* 6 on one thread, 2 on the other: only the busy one reports. */
    a.n = 6;
    b.n = 2;
    run_two(worker_main, &a, &b);
    assert_int_equal(a.rc, DBK_EN_PLUS_ONE);
    assert_int_equal(b.rc, DBK_OK);
    ASSERT_LINES(1, "n+1 count=6 ", "scope=\"busy thread\"");
    ASSERT_LINES(1, "n+1 ", NULL);

    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.queries, 16);
    pthread_barrier_destroy(&bar);
    dbk_diag_free(d);
    free(url);
}

/* A pool shared by two threads, each with its own request scope, and a
 * transaction (which inherits the pool's observer) inside one of them. */
struct pool_worker {
    dbk_diag *d;
    dbk_db *db;
    bool n1;
    pthread_barrier_t *bar;
    dbk_rc rc;
    char msg[DBK_ERROR_MESSAGE_MAX];
};

static dbk_rc tx_body(dbk_db *tx, void *ctx, dbk_error *err)
{
    (void)ctx;
    (void)err;
    find_loop(tx, 3);
    return DBK_OK;
}

static void *pool_worker_main(void *arg)
{
    struct pool_worker *w = arg;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_arena *a = dbk_arena_new(0);
    dbk_diag_scope_begin(w->d, w->n1 ? "loop" : "include");
    pthread_barrier_wait(w->bar);
    if (w->n1) {
        find_loop(w->db, 3);
        dbk_tx_run(w->db, tx_body, NULL, NULL, &err); /* 3 more, BEGIN/COMMIT ignored */
    } else {
        for (int i = 0; i < 4; i++) { /* 4 x (users + posts): under the threshold */
            dbk_list users;
            users_with_posts(w->db, a, &users, &err);
        }
    }
    pthread_barrier_wait(w->bar);
    w->rc = dbk_diag_scope_end(w->d, &err);
    snprintf(w->msg, sizeof w->msg, "%s", err.message);
    dbk_arena_free(a);
    return NULL;
}

static void pool_threads(const char *url, dbk_engine eng)
{
    cap_reset();
    dbk_conn_close(setup(url, eng));
    dbk_config *cfg = NULL;
    dbk_pool *pool = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from_url(url, &cfg, &err), &err);
    dbk_pool_opts po = {.max_size = 2};
    DBKT_OK(dbk_pool_open(cfg, &po, &pool, &err), &err);
    dbk_config_free(cfg);
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR};
    dbk_diag *d = mk_diag_on(&o, dbk_pool_db(pool));
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct pool_worker a = {d, dbk_pool_db(pool), true, &bar, DBK_OK, ""};
    struct pool_worker b = {d, dbk_pool_db(pool), false, &bar, DBK_OK, ""};
    run_two(pool_worker_main, &a, &b);
    assert_int_equal(a.rc, DBK_EN_PLUS_ONE);
    if (!strstr(a.msg, "run 6 times") || !strstr(a.msg, "scope \"loop\""))
        fail_msg("message: %s", a.msg);
    assert_int_equal(b.rc, DBK_OK);
    ASSERT_LINES(1, "n+1 ", NULL);
    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.errors, 0);
    assert_true(s.queries >= 6 + 8 + 2); /* + BEGIN/COMMIT and driver statements */
    pthread_barrier_destroy(&bar);
    dbk_pool_close(pool, 1000);
    dbk_diag_free(d);
}

static void diag_n1_pool_threads_and_transactions(void **state)
{
    (void)state;
    dbkt_each_engine("diag_pool", pool_threads);
}

/* dbk_diag_tx_run: each attempt is a scope; an N+1 rolls it back. */
struct tx_case {
    int finds;
    dbk_rc own;
};

static dbk_rc tx_case_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct tx_case *c = ctx;
    struct user u = {.name = "in-tx"};
    dbk_rc rc = dbk_repo_create(tx, &user_entity, &u, NULL, NULL, err);
    if (rc)
        return rc;
    find_loop(tx, c->finds);
    if (c->own) {
        dbk_error_clear(err);
        err->code = c->own;
        snprintf(err->message, sizeof err->message, "own failure");
    }
    return c->own;
}

static void tx_scope(const char *url, dbk_engine eng)
{
    cap_reset();
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.n1_mode = DBK_N1_MODE_ERROR};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;

    struct tx_case k = {6, DBK_OK};
    DBKT_RC(DBK_EN_PLUS_ONE, dbk_diag_tx_run(d, "signup", db, tx_case_fn, &k, NULL, &err));
    assert_non_null(strstr(err.message, "run 6 times"));
    assert_non_null(strstr(err.message, "scope \"signup\""));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users WHERE name = 'in-tx'"), 0);

    k.own = DBK_EINVALID; /* fn's own error wins over the report */
    DBKT_RC(DBK_EINVALID, dbk_diag_tx_run(d, "signup", db, tx_case_fn, &k, NULL, &err));
    assert_string_equal(err.message, "own failure");
    /* the order deprecated in 0.2 (err before the call site) still works */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    DBKT_RC(DBK_EINVALID, dbk_diag_transaction(d, NULL, db, tx_case_fn, &k, NULL, &err));
#pragma GCC diagnostic pop
    assert_string_equal(err.message, "own failure");
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users WHERE name = 'in-tx'"), 0);

    k.finds = 5;
    k.own = DBK_OK;
    DBKT_OK(dbk_diag_tx_run(d, NULL, db, tx_case_fn, &k, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users WHERE name = 'in-tx'"), 1);
    DBKT_RC(DBK_EMISUSE, dbk_diag_scope_end(d, &err)); /* no scope left open */
    ASSERT_LINES(2, "n+1 count=6 ", "scope=\"signup\"");
    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_n1_transaction_is_a_scope(void **state)
{
    (void)state;
    dbkt_each_engine("diag_tx", tx_scope);
}

/* ---- the query log ---- */

/* duration_ms of a log line, or -1. */
static double line_ms(const char *l)
{
    const char *p = strstr(l, "duration_ms=");
    return p ? strtod(p + 12, NULL) : -1;
}

/* The duration of the last statement the hub saw (chained observer), so a
 * test can tell whether a "fast" statement really was fast on this run. */
static int64_t last_ns;
static void note_ns(void *ctx, const dbk_query_event *ev)
{
    (void)ctx;
    last_ns = ev->duration_ns;
}

static void slow(const char *url, dbk_engine eng)
{
    cap_reset();
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    /* Slow for sure: pg_sleep, or on SQLite a recursive CTE sized on this
     * run to take at least 60 ms (before the hub is attached): a fixed
     * million rows took over 30 s under valgrind on a loaded machine and
     * hit the statement timeout. */
    char sqlite_slow[160];
    dbk_error err;
    dbk_result *r = NULL;
    for (long n = 25000;; n *= 4) {
        snprintf(sqlite_slow, sizeof sqlite_slow,
                 "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %ld) "
                 "SELECT count(*) FROM c", n);
        if (eng == DBK_ENGINE_POSTGRES || n >= 25000L * 4 * 4 * 4 * 4)
            break;
        int64_t t0 = dbkt_mono_ms();
        DBKT_OK(dbk_db_query(db, sqlite_slow, NULL, 0, &r, &err), &err);
        dbk_result_free(r);
        if (dbkt_mono_ms() - t0 >= 60)
            break;
    }
    const char *slow_sql = eng == DBK_ENGINE_POSTGRES ? "SELECT pg_sleep(0.05)" : sqlite_slow;
    dbk_diag_opts o = {.slow_ms = 20, .chain = note_ns};
    dbk_diag *d = mk_diag_on(&o, db);
    DBKT_OK(dbk_db_query(db, slow_sql, NULL, 0, &r, &err), &err);
    dbk_result_free(r);
    assert_true(last_ns >= 20 * 1000000LL);
    /* A fast statement is logged only if it was not fast after all on this
     * run (a loaded machine, valgrind): the log must agree with the clock. */
    dbkt_int(db, "SELECT 1");
    bool fast_was_slow = last_ns >= 20 * 1000000LL;

    const char *l;
    assert_int_equal(cap_count("slow query ", NULL, &l), fast_was_slow ? 2 : 1);
    assert_int_equal(cap_count("query ", NULL, NULL), 0); /* log_all off: fast one not logged */
    char want[256];
    snprintf(want, sizeof want, " rows=1 rc=DBK_OK sql=\"%s\"", slow_sql);
    if (!strstr(l, want))
        fail_msg("'%s' not in: %s", want, l);
    double ms = line_ms(l);
    assert_true(ms >= 20.0);
    if (eng == DBK_ENGINE_POSTGRES)
        assert_true(ms >= 50.0);
    for (size_t i = 0; i < cap.n; i++)
        assert_int_equal(cap.level[i], DBK_LOG_WARN);

    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.slow, fast_was_slow ? 2 : 1);
    assert_int_equal(s.queries, 2);

    /* The threshold itself, without the clock: events of 19.999 and 20 ms. */
    cap_reset();
    dbk_query_event ev = {.sql = "SELECT 2", .duration_ns = 19999999, .rows = 1,
                          .engine = eng};
    dbk_diag_observe(d, &ev);
    ASSERT_LINES(0, "slow query ", NULL);
    ev.duration_ns = 20000000;
    dbk_diag_observe(d, &ev);
    ASSERT_LINES(1, "slow query ", "sql=\"SELECT 2\"");

    /* slow_ms < 0: never slow. */
    dbk_diag_free(d);
    o.slow_ms = -1;
    d = mk_diag_on(&o, db);
    cap_reset();
    DBKT_OK(dbk_db_query(db, slow_sql, NULL, 0, &r, &err), &err);
    dbk_result_free(r);
    assert_int_equal(cap.n, 0);
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.slow, 0);
    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_slow_query_is_logged_fast_one_not(void **state)
{
    (void)state;
    dbkt_each_engine("diag_slow", slow);
}

static void params(const char *url, dbk_engine eng)
{
    (void)eng;
    cap_reset();
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.log_all = true};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;
    const char *secret = "s3cr3t-\"token\"";
    dbk_value p[] = {dbk_text(secret), dbk_int64(3), dbk_null()};
    const char *sql = "UPDATE users SET password = $1 WHERE id = $2 AND $3::text IS NULL";
    if (eng == DBK_ENGINE_SQLITE)
        sql = "UPDATE users SET password = $1 WHERE id = $2 AND $3 IS NULL";
    int64_t n = 0;
    DBKT_OK(dbk_db_exec(db, sql, p, 3, &n, &err), &err);
    assert_int_equal(n, 1);
    /* The repository's own statements carry the value too. */
    struct user u = {.name = "user9", .password = secret};
    DBKT_OK(dbk_repo_create(db, &user_entity, &u, NULL, NULL, &err), &err);

    const char *l;
    assert_int_equal(cap_count("query ", "rows=1 rc=DBK_OK sql=\"UPDATE users", &l), 1);
    assert_int_equal(cap_count("query ", "INSERT INTO", NULL), 1);
    for (size_t i = 0; i < cap.n; i++) {
        assert_null(strstr(cap.line[i], "s3cr3t"));
        assert_null(strstr(cap.line[i], "params="));
        assert_int_equal(cap.level[i], DBK_LOG_DEBUG);
    }

    dbk_diag_free(d);
    o.log_params = true;
    d = mk_diag_on(&o, db);
    cap_reset();
    DBKT_OK(dbk_db_exec(db, sql, p, 3, &n, &err), &err);
    assert_int_equal(cap_count("query ", "UPDATE users", &l), 1);
    if (!strstr(l, "\" params=[\"s3cr3t-\\\"token\\\"\", 3, NULL]"))
        fail_msg("params not as expected: %s", l);
    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_log_params_only_when_asked(void **state)
{
    (void)state;
    dbkt_each_engine("diag_params", params);
}

static void diag_log_line_format_and_escaping(void **state)
{
    (void)state;
    cap_reset();
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.log_all = true};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;

    dbkt_int(db, "SELECT length('a\"b\\c')\n\t+ 1");
    const char *l;
    assert_int_equal(cap_count("query ", NULL, &l), 1);
    /* exact shape: prefix, 3 decimals, rows, rc name, escaped SQL */
    char ms[32];
    int rows = -1;
    char rc[32], tail[128];
    int k = sscanf(l, "query duration_ms=%31s rows=%d rc=%31s sql=%127[^\n]", ms, &rows, rc, tail);
    assert_int_equal(k, 4);
    assert_non_null(strchr(ms, '.'));
    assert_int_equal(strlen(strchr(ms, '.')), 4);
    assert_int_equal(rows, 1);
    assert_string_equal(rc, "DBK_OK");
    assert_string_equal(tail, "\"SELECT length('a\\\"b\\\\c')\\n\\x09+ 1\"");

    /* A failing statement: its code name. */
    cap_reset();
    DBKT_RC(DBK_ESQL, dbk_db_exec(db, "SELEKT 1", NULL, 0, NULL, &err));
    assert_int_equal(cap_count("query ", "rows=0 rc=DBK_ESQL sql=\"SELEKT 1\"", NULL), 1);

    /* A very long statement is cut inside the quotes and the line stays
     * within the hook's limit. */
    cap_reset();
    char big[3000];
    int n = snprintf(big, sizeof big, "SELECT 1");
    while (n < 2900)
        n += snprintf(big + n, sizeof big - (size_t)n, " + 1");
    int64_t v;
    DBKT_OK(dbk_db_query_int64(db, big, NULL, 0, &v, &err), &err);
    assert_int_equal(cap_count("query ", NULL, &l), 1);
    assert_true(strlen(l) <= 1023);
    size_t len = strlen(l);
    assert_string_equal(l + len - 4, "...\"");

    dbk_conn_close(c);
    dbk_diag_free(d);
}

/* Runs `n` fast statements with sampling rate `rate` and seed `seed`;
 * returns the number of lines logged. */
static size_t sample_run(dbk_db *db, double rate, uint64_t seed, int n)
{
    dbk_diag_opts o = {.log_all = true, .sample_rate = rate, .sample_seed = seed};
    dbk_diag *d = mk_diag_on(&o, db);
    cap_reset();
    for (int i = 0; i < n; i++)
        dbkt_int(db, "SELECT 1");
    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.logged, cap.n);
    dbk_db_set_observer(db, NULL, NULL);
    dbk_diag_free(d);
    return cap_count("query ", NULL, NULL);
}

static void diag_sampling_logs_about_the_fraction(void **state)
{
    (void)state;
    dbk_conn *c = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(c);
    const int n = 1000;

    size_t q = sample_run(db, 0.25, 42, n);
    /* expected 250, sd ~14: +-60 is over four sd */
    if (q < 190 || q > 310)
        fail_msg("sample_rate 0.25 logged %zu of %d", q, n);
    assert_int_equal(sample_run(db, 0.25, 42, n), q); /* reproducible from the seed */
    size_t t = sample_run(db, 0.1, 7, n);
    if (t < 50 || t > 150)
        fail_msg("sample_rate 0.1 logged %zu of %d", t, n);
    assert_int_equal(sample_run(db, 0.0, 0, 200), 200); /* 0: the default, all */
    assert_int_equal(sample_run(db, 1.0, 0, 200), 200);
    assert_int_equal(sample_run(db, -1.0, 0, 200), 0); /* negative: none */

    /* Slow statements are logged whatever the rate (and, with the rate
     * negative, only they are: a "SELECT 1" that took 1 ms or more on a
     * loaded run counts as slow too, which the chained clock tells). */
    dbk_diag_opts o = {.log_all = true, .sample_rate = -1, .slow_ms = 1, .chain = note_ns};
    dbk_diag *d = mk_diag_on(&o, db);
    cap_reset();
    dbkt_int(db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < "
                 "100000) SELECT count(*) FROM c");
    assert_true(last_ns >= 1000000);
    dbkt_int(db, "SELECT 1");
    size_t want = last_ns >= 1000000 ? 2 : 1;
    ASSERT_LINES(want, "slow query ", NULL);
    assert_int_equal(cap.n, want);
    dbk_conn_close(c);
    dbk_diag_free(d);
}

/* ---- metrics ---- */

static void metrics(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_diag_opts o = {.slow_ms = -1};
    dbk_diag *d = mk_diag_on(&o, db);
    dbk_error err;

    find_loop(db, 10);                                /* 10 ok */
    struct user dup = {.name = "user1"};
    DBKT_RC(DBK_EUNIQUE, dbk_repo_create(db, &user_entity, &dup, NULL, NULL, &err)); /* 1 */
    DBKT_RC(DBK_EUNIQUE, dbk_repo_create(db, &user_entity, &dup, NULL, NULL, &err)); /* 2 */
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec(db, "SELECT * FROM missing", NULL, 0, NULL, &err));
    int64_t v;
    dbk_value id = dbk_int64(12345);
    DBKT_RC(DBK_ENOT_FOUND, dbk_db_query_int64(db, "SELECT id FROM users WHERE id = $1", &id, 1,
                                               &v, &err)); /* an ok statement with no row */

    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.queries, 14);
    assert_int_equal(s.errors, 3);
    assert_int_equal(dbk_diag_stats_errors(&s, DBK_EUNIQUE), 2);
    assert_int_equal(dbk_diag_stats_errors(&s, DBK_ESCHEMA), 1);
    assert_int_equal(dbk_diag_stats_errors(&s, DBK_ENOT_FOUND), 0);
    /* The deprecated field, until it goes: the same counts, in an array of a
     * fixed capacity that holds every code. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    assert_int_equal(s.errors_by_code[DBK_EUNIQUE], 2);
    assert_int_equal(s.errors_by_code[DBK_ESCHEMA], 1);
    assert_int_equal(sizeof s.errors_by_code / sizeof s.errors_by_code[0], DBK_DIAG_MAX_CODES);
#pragma GCC diagnostic pop
    assert_true(DBK_DIAG_MAX_CODES > DBK_RC_MAX);
    assert_int_equal(dbk_diag_stats_errors(&s, DBK_OK), 0);
    assert_int_equal(dbk_diag_stats_errors(&s, (dbk_rc)(DBK_RC_MAX + 1)), 0);
    assert_int_equal(dbk_diag_stats_errors(&s, (dbk_rc)-1), 0);
    assert_int_equal(dbk_diag_stats_errors(NULL, DBK_EUNIQUE), 0);
    assert_int_equal(s.duration_count, 14);
    assert_int_equal(s.buckets[DBK_DIAG_NBUCKETS - 1], 14);
    assert_true(isinf(s.bucket_le_ms[DBK_DIAG_NBUCKETS - 1]));
    assert_true(s.bucket_le_ms[0] == 0.1 && s.bucket_le_ms[9] == 5000);
    for (int i = 1; i < DBK_DIAG_NBUCKETS; i++) {
        assert_true(s.buckets[i] >= s.buckets[i - 1]);
        assert_true(s.bucket_le_ms[i] > s.bucket_le_ms[i - 1]);
    }
    assert_true(s.duration_sum_ns > 0);
    assert_int_equal(s.slow, 0);

    /* Prometheus text, parsed back. */
    size_t need = dbk_diag_prometheus(d, NULL, 0);
    assert_true(need > 200);
    char *text = malloc(need + 1);
    assert_int_equal(dbk_diag_prometheus(d, text, need + 1), need);
    assert_int_equal(strlen(text), need);
    assert_int_equal(text[need - 1], '\n');

    int seen_queries = 0, seen_unique = 0, seen_schema = 0, nbuckets = 0, seen_sum = 0,
        seen_count = 0, seen_slow = 0, seen_n1 = 0;
    unsigned long long prev_bucket = 0, inf_bucket = 0;
    double prev_le = -1;
    const char *typed = "";
    char *save = NULL;
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        if (strncmp(ln, "# TYPE ", 7) == 0) {
            typed = ln + 7;
            continue;
        }
        if (strncmp(ln, "# HELP dbkit_", 13) == 0)
            continue;
        assert_true(ln[0] != '#');
        char name[128], labels[128] = "";
        double val;
        char *sp = strrchr(ln, ' ');
        assert_non_null(sp);
        val = strtod(sp + 1, NULL);
        size_t nl = (size_t)(sp - ln);
        char *brace = memchr(ln, '{', nl);
        size_t namelen = brace ? (size_t)(brace - ln) : nl;
        assert_true(namelen < sizeof name);
        memcpy(name, ln, namelen);
        name[namelen] = '\0';
        if (brace) {
            assert_int_equal(ln[nl - 1], '}');
            memcpy(labels, brace + 1, nl - namelen - 2);
            labels[nl - namelen - 2] = '\0';
        }
        /* every sample belongs to the family of the last # TYPE line */
        assert_int_equal(strncmp(name, typed, strcspn(typed, " ")), 0);
        if (strcmp(name, "dbkit_queries_total") == 0) {
            assert_true(val == 14);
            seen_queries++;
        } else if (strcmp(name, "dbkit_query_errors_total") == 0) {
            if (strcmp(labels, "code=\"DBK_EUNIQUE\"") == 0) {
                assert_true(val == 2);
                seen_unique++;
            } else if (strcmp(labels, "code=\"DBK_ESCHEMA\"") == 0) {
                assert_true(val == 1);
                seen_schema++;
            } else {
                fail_msg("unexpected error line: %s", ln);
            }
        } else if (strcmp(name, "dbkit_query_duration_seconds_bucket") == 0) {
            assert_int_equal(strncmp(labels, "le=\"", 4), 0);
            double le = strcmp(labels, "le=\"+Inf\"") == 0 ? INFINITY : strtod(labels + 4, NULL);
            assert_true(le > prev_le);
            assert_true(le == INFINITY || fabs(le * 1000 - s.bucket_le_ms[nbuckets]) < 1e-9);
            prev_le = le;
            unsigned long long b = (unsigned long long)val;
            assert_true(b >= prev_bucket);
            assert_int_equal(b, s.buckets[nbuckets]);
            prev_bucket = b;
            if (le == INFINITY)
                inf_bucket = b;
            nbuckets++;
        } else if (strcmp(name, "dbkit_query_duration_seconds_sum") == 0) {
            assert_true(fabs(val - (double)s.duration_sum_ns / 1e9) < 1e-6);
            seen_sum++;
        } else if (strcmp(name, "dbkit_query_duration_seconds_count") == 0) {
            assert_true(val == 14);
            seen_count++;
        } else if (strcmp(name, "dbkit_slow_queries_total") == 0) {
            assert_true(val == 0);
            seen_slow++;
        } else if (strcmp(name, "dbkit_n_plus_one_total") == 0) {
            assert_true(val == 0);
            seen_n1++;
        } else {
            fail_msg("unexpected metric line: %s", ln);
        }
    }
    assert_int_equal(seen_queries, 1);
    assert_int_equal(seen_unique, 1);
    assert_int_equal(seen_schema, 1);
    assert_int_equal(nbuckets, DBK_DIAG_NBUCKETS);
    assert_int_equal(inf_bucket, 14);
    assert_int_equal(seen_sum + seen_count + seen_slow + seen_n1, 4);
    free(text);

    /* snprintf-like truncation. */
    char small[64];
    memset(small, 'x', sizeof small);
    assert_int_equal(dbk_diag_prometheus(d, small, sizeof small), need);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(strncmp(small, "# HELP dbkit_queries_total", 26), 0);
    char one[1] = {'x'};
    assert_int_equal(dbk_diag_prometheus(d, one, 1), need);
    assert_int_equal(one[0], '\0');

    dbk_conn_close(c);
    dbk_diag_free(d);
}

static void diag_metrics_and_prometheus_text(void **state)
{
    (void)state;
    dbkt_each_engine("diag_metrics", metrics);
}

static void diag_options_and_misuse(void **state)
{
    (void)state;
    dbk_diag *d = NULL;
    dbk_error err;
    dbk_diag_opts o = {.n1_threshold = -1};
    DBKT_RC(DBK_EINVALID, dbk_diag_new(&o, &d, &err));
    assert_null(d);
    o = (dbk_diag_opts){.sample_rate = NAN};
    DBKT_RC(DBK_EINVALID, dbk_diag_new(&o, &d, &err));
    o = (dbk_diag_opts){.n1_mode = (dbk_n1_mode)4};
    DBKT_RC(DBK_EINVALID, dbk_diag_new(&o, &d, &err));
    DBKT_RC(DBK_EMISUSE, dbk_diag_new(NULL, NULL, &err));
    DBKT_OK(dbk_diag_new(NULL, &d, &err), &err);
    DBKT_RC(DBK_EMISUSE, dbk_diag_scope_end(d, &err));
    DBKT_RC(DBK_EMISUSE, dbk_diag_scope_end(NULL, &err));
    /* a scope of another hub is not ended by this one */
    dbk_diag *d2 = mk_diag(NULL);
    dbk_diag_scope_begin(d2, "other");
    DBKT_RC(DBK_EMISUSE, dbk_diag_scope_end(d, &err));
    DBKT_OK(dbk_diag_scope_end(d2, &err), &err);
    dbk_diag_stats s;
    dbk_diag_get_stats(d, &s);
    assert_int_equal(s.queries, 0);
    assert_int_equal(s.buckets[DBK_DIAG_NBUCKETS - 1], 0);
    dbk_diag_free(d);
    dbk_diag_free(d2);
    dbk_diag_free(NULL);
    dbk_diag_attach(NULL, NULL);
}

/* The log written by the hub reads back with dbk_diag_parse_line: SQL with
 * quotes, backslashes, newlines and control bytes, a hook's prefix, slow
 * lines; malformed lines are refused. */
static void diag_parse_line_reads_the_log_back(void **state)
{
    (void)state;
    cap_reset();
    dbk_diag_opts o = {.log_all = true, .slow_ms = -1};
    dbk_diag *d = mk_diag(&o);
    static const char sql[] = "SELECT \"a\\b\", 'x\ny', e'\\x01' /* \x01\x7f ünï */ FROM t";
    dbk_query_event ev = {.sql = sql, .duration_ns = 1234567, .rows = 42, .rc = DBK_EUNIQUE,
                          .engine = DBK_ENGINE_SQLITE};
    dbk_diag_observe(d, &ev);
    assert_int_equal(cap.n, 1);
    char buf[1100], line[1200];
    dbk_diag_line dl;
    DBKT_RC(DBK_OK, dbk_diag_parse_line(cap.line[0], &dl, buf, sizeof buf));
    assert_int_equal(dl.sql_len, strlen(sql));
    assert_string_equal(dl.sql, sql);
    assert_int_equal(dl.rows, 42);
    assert_int_equal(dl.rc, DBK_EUNIQUE);
    assert_false(dl.slow);
    assert_false(dl.truncated);
    assert_true(dl.duration_ms > 1.234 && dl.duration_ms < 1.236);

    /* A prefix from the hook, and a slow line. */
    snprintf(line, sizeof line, "dbkit warn: slow %s", cap.line[0]);
    DBKT_RC(DBK_OK, dbk_diag_parse_line(line, &dl, buf, sizeof buf));
    assert_true(dl.slow);
    assert_string_equal(dl.sql, sql);

    /* A text too long for one line comes back cut, marked truncated. */
    char longsql[3000];
    memset(longsql, 'x', sizeof longsql - 1);
    longsql[sizeof longsql - 1] = '\0';
    memcpy(longsql, "SELECT ", 7);
    ev.sql = longsql;
    ev.rc = DBK_OK;
    dbk_diag_observe(d, &ev);
    assert_int_equal(cap.n, 2);
    DBKT_RC(DBK_OK, dbk_diag_parse_line(cap.line[1], &dl, buf, sizeof buf));
    assert_true(dl.truncated);
    assert_int_equal(memcmp(dl.sql, longsql, dl.sql_len - 3), 0);

    /* Refused: not a record, unknown code, bad escape, no closing quote,
     * bad numbers; a buffer that could be too small. */
    static const char *bad[] = {
        "hello",
        "query duration_ms=1.000 rows=1 rc=DBK_NOPE sql=\"x\"",
        "query duration_ms=1.000 rows=1 rc=DBK_OK sql=\"a\\qb\"",
        "query duration_ms=1.000 rows=1 rc=DBK_OK sql=\"open",
        "query duration_ms=.5 rows=1 rc=DBK_OK sql=\"x\"",
        "query duration_ms=1. rows=1 rc=DBK_OK sql=\"x\"",
        "query duration_ms=1.000 rows=-1 rc=DBK_OK sql=\"x\"",
        "xquery duration_ms=1.000 rows=1 rc=DBK_OK sql=\"x\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (dbk_diag_parse_line(bad[i], &dl, buf, sizeof buf) != DBK_EINVALID)
            fail_msg("accepted: %s", bad[i]);
    DBKT_RC(DBK_EMISUSE, dbk_diag_parse_line(cap.line[0], &dl, buf, 8));
    DBKT_RC(DBK_EMISUSE, dbk_diag_parse_line(NULL, &dl, buf, sizeof buf));
    dbk_diag_free(d);
    cap_reset();
    dbk_set_log(NULL, NULL, DBK_LOG_DEBUG);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(diag_n1_find_by_id_loop_is_logged),
        cmocka_unit_test(diag_n1_error_mode_returns_en_plus_one),
        cmocka_unit_test(diag_n1_threshold_edge),
        cmocka_unit_test(diag_n1_modes_and_deprecated_names),
        cmocka_unit_test(diag_n1_safelist_suppresses),
        cmocka_unit_test(diag_n1_reported_once_per_statement_per_scope),
        cmocka_unit_test(diag_n1_control_after_a_comment_is_exempt),
        cmocka_unit_test(diag_n1_scopes_on_two_threads_do_not_mix),
        cmocka_unit_test(diag_n1_pool_threads_and_transactions),
        cmocka_unit_test(diag_n1_transaction_is_a_scope),
        cmocka_unit_test(diag_slow_query_is_logged_fast_one_not),
        cmocka_unit_test(diag_log_params_only_when_asked),
        cmocka_unit_test(diag_log_line_format_and_escaping),
        cmocka_unit_test(diag_sampling_logs_about_the_fraction),
        cmocka_unit_test(diag_metrics_and_prometheus_text),
        cmocka_unit_test(diag_options_and_misuse),
        cmocka_unit_test(diag_parse_line_reads_the_log_back),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dbk_set_log(NULL, NULL, DBK_LOG_ERROR);
    for (size_t i = 0; i < cap.n; i++)
        free(cap.line[i]);
    dbk_entity_release(&user_entity);
    dbk_entity_release(&post_entity);
    return rc;
}
