/* dbkit:valgrind
 * Repositories on both engines: CRUD, unique violations, filters, pages,
 * keyset cursors, projections, includes (with exact query counts through
 * the observer), upsert, bulk insert, text keys, NULLs, unicode, 1 MiB
 * values, injection attempts, and use inside a transaction. Each test runs
 * on a fresh SQLite file and a fresh PostgreSQL database. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

struct post;
struct comment;

struct user {
    int64_t id;
    const char *email;
    const char *name;
    const char *password_hash;
    double score;
    bool score_null;
    bool active;
    dbk_bytes avatar;
    int64_t created_at;
    int64_t updated_at;
    struct post *posts;
    size_t nposts;
};

struct post {
    int64_t id;
    int64_t user_id;
    const char *title;
    struct user *author;
    struct comment *comments;
    size_t ncomments;
};

struct comment {
    int64_t id;
    int64_t post_id;
    const char *body;
};

struct member {
    int64_t id;
    int64_t user_id;
    const char *org;
    const char *role;
};

struct tag {
    const char *id;
    const char *label;
};

static const dbk_entity user_entity, post_entity, comment_entity;

static const dbk_field user_fields[] = {
    DBK_FIELD(struct user, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct user, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct user, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct user, password_hash, "password_hash", DBK_TYPE_TEXT,
              DBK_F_HIDDEN | DBK_F_NULLABLE),
    DBK_FIELD_NULL(struct user, score, score_null, "score", DBK_TYPE_DOUBLE, 0),
    DBK_FIELD(struct user, active, "active", DBK_TYPE_BOOL, 0),
    DBK_FIELD(struct user, avatar, "avatar", DBK_TYPE_BLOB, DBK_F_NULLABLE),
    DBK_FIELD(struct user, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
    DBK_FIELD(struct user, updated_at, "updated_at", DBK_TYPE_TIMESTAMP, DBK_F_UPDATED_AT),
};
static const dbk_relation user_rels[] = {
    DBK_HAS_MANY(struct user, "posts", posts, nposts, &post_entity, "user_id"),
};
static const dbk_entity user_entity = DBK_ENTITY("users", struct user, user_fields, user_rels);

static const dbk_field post_fields[] = {
    DBK_FIELD(struct post, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct post, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct post, title, "title", DBK_TYPE_TEXT, 0),
};
static const dbk_relation post_rels[] = {
    DBK_BELONGS_TO(struct post, "author", author, &user_entity, "user_id"),
    DBK_HAS_MANY(struct post, "comments", comments, ncomments, &comment_entity, "post_id"),
};
static const dbk_entity post_entity = DBK_ENTITY("posts", struct post, post_fields, post_rels);

static const dbk_field comment_fields[] = {
    DBK_FIELD(struct comment, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct comment, post_id, "post_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct comment, body, "body", DBK_TYPE_TEXT, 0),
};
static const dbk_entity comment_entity =
    DBK_ENTITY_PLAIN("comments", struct comment, comment_fields);

static const char *const member_key[] = {"org", "user_id"};
static const dbk_unique member_uniques[] = {{member_key, 2}};
static const dbk_field member_fields[] = {
    DBK_FIELD(struct member, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct member, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct member, org, "org", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct member, role, "role", DBK_TYPE_TEXT, 0),
};
static const dbk_entity member_entity = {"members", sizeof(struct member), member_fields, 4,
                                         NULL, 0, member_uniques, 1};

static const dbk_field tag_fields[] = {
    DBK_FIELD_CAST(struct tag, id, "id", DBK_TYPE_TEXT, DBK_F_PK | DBK_F_GENERATED, "uuid"),
    DBK_FIELD(struct tag, label, "label", DBK_TYPE_TEXT, DBK_F_UNIQUE),
};
static const dbk_entity tag_entity = DBK_ENTITY_PLAIN("tags", struct tag, tag_fields);

static const char *schema(dbk_engine e)
{
    return e == DBK_ENGINE_POSTGRES
               ? "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL "
                 "CONSTRAINT users_email_key UNIQUE, name TEXT NOT NULL, password_hash TEXT, "
                 "score DOUBLE PRECISION, active BOOLEAN NOT NULL, avatar BYTEA, "
                 "created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL);"
                 "CREATE TABLE posts (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL "
                 "REFERENCES users(id), title TEXT NOT NULL);"
                 "CREATE TABLE comments (id BIGSERIAL PRIMARY KEY, post_id BIGINT NOT NULL "
                 "REFERENCES posts(id), body TEXT NOT NULL);"
                 "CREATE TABLE members (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, "
                 "org TEXT NOT NULL, role TEXT NOT NULL, UNIQUE (user_id, org));"
                 "CREATE TABLE tags (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), "
                 "label TEXT NOT NULL UNIQUE)"
               : "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL "
                 "CONSTRAINT users_email_key UNIQUE, name TEXT NOT NULL, password_hash TEXT, "
                 "score REAL, active INTEGER NOT NULL, avatar BLOB, created_at TEXT NOT NULL, "
                 "updated_at TEXT NOT NULL);"
                 "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL "
                 "REFERENCES users(id), title TEXT NOT NULL);"
                 "CREATE TABLE comments (id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL "
                 "REFERENCES posts(id), body TEXT NOT NULL);"
                 "CREATE TABLE members (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
                 "org TEXT NOT NULL, role TEXT NOT NULL, UNIQUE (user_id, org));"
                 "CREATE TABLE tags (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))), "
                 "label TEXT NOT NULL UNIQUE)";
}

static dbk_conn *setup(const char *url, dbk_engine e)
{
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(dbk_conn_db(c), schema(e), &err), &err);
    return c;
}

static void release_entities(void)
{
    dbk_entity_release(&user_entity);
    dbk_entity_release(&post_entity);
    dbk_entity_release(&comment_entity);
    dbk_entity_release(&member_entity);
    dbk_entity_release(&tag_entity);
}

static int64_t mk_user(dbk_db *db, const char *email, const char *name, double score,
                       dbk_arena *a)
{
    dbk_error err;
    struct user u = {.email = email, .name = name, .score = score, .active = true,
                     .password_hash = "secret-hash"};
    struct user out;
    DBKT_OK(dbk_repo_create(db, &user_entity, &u, &out, a, &err), &err);
    return out.id;
}

static int64_t mk_post(dbk_db *db, int64_t uid, const char *title, dbk_arena *a)
{
    dbk_error err;
    struct post p = {.user_id = uid, .title = title};
    DBKT_OK(dbk_repo_create(db, &post_entity, &p, &p, a, &err), &err);
    return p.id;
}

/* ---- CRUD ---- */

static void crud(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;

    struct user in = {.email = "ada@example.com", .name = "Ada", .password_hash = "h1",
                      .score = 2.5, .active = true};
    struct user u;
    DBKT_OK(dbk_repo_create(db, &user_entity, &in, &u, a, &err), &err);
    assert_true(u.id > 0);
    assert_string_equal(u.email, "ada@example.com");
    assert_true(u.created_at > 1600000000LL * 1000000);
    assert_int_equal(u.created_at, u.updated_at);
    assert_null(u.password_hash); /* hidden: not returned */
    assert_true(u.active);
    assert_false(u.score_null);

    struct user f;
    DBKT_OK(dbk_repo_find_by_id(db, &user_entity, dbk_int64(u.id), &f, a, &err), &err);
    assert_int_equal(f.id, u.id);
    assert_string_equal(f.name, "Ada");
    assert_true(f.score == 2.5);
    assert_int_equal(f.created_at, u.created_at);
    assert_null(f.password_hash);

    DBKT_RC(DBK_ENOT_FOUND, dbk_repo_find_by_id(db, &user_entity, dbk_int64(999), &f, a, &err));
    assert_int_equal(err.code, DBK_ENOT_FOUND);

    DBKT_OK(dbk_repo_find_by(db, &user_entity, "email", dbk_text("ada@example.com"), &f, a, &err),
            &err);
    assert_int_equal(f.id, u.id);
    DBKT_RC(DBK_ENOT_FOUND,
            dbk_repo_find_by(db, &user_entity, "email", dbk_text("nobody@x"), &f, a, &err));
    DBKT_RC(DBK_EINVALID_COLUMN,
            dbk_repo_find_by(db, &user_entity, "name", dbk_text("Ada"), &f, a, &err));
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_repo_find_by(db, &user_entity, "email\" OR 1=1 --",
                                                  dbk_text("x"), &f, a, &err));

    /* Update with a mask: only name changes, updated_at moves. */
    struct user patch = {.name = "Ada L.", .email = "ignored@example.com"};
    const char *const mask[] = {"name"};
    struct user up;
    DBKT_OK(dbk_repo_update(db, &user_entity, dbk_int64(u.id), &patch, mask, 1, &up, a, &err),
            &err);
    assert_string_equal(up.name, "Ada L.");
    assert_string_equal(up.email, "ada@example.com");
    assert_true(up.updated_at >= u.updated_at);
    assert_int_equal(up.created_at, u.created_at);

    const char *const bad[] = {"name = 'x', email"};
    DBKT_RC(DBK_EINVALID_COLUMN,
            dbk_repo_update(db, &user_entity, dbk_int64(u.id), &patch, bad, 1, &up, a, &err));
    const char *const idm[] = {"id"};
    DBKT_RC(DBK_EINVALID_COLUMN,
            dbk_repo_update(db, &user_entity, dbk_int64(u.id), &patch, idm, 1, &up, a, &err));
    DBKT_RC(DBK_ENOT_FOUND,
            dbk_repo_update(db, &user_entity, dbk_int64(12345), &patch, mask, 1, &up, a, &err));

    /* Hidden field written and readable only when asked for. */
    const char *const sel[] = {"password_hash"};
    dbk_query q = {.select = sel, .nselect = 1};
    dbk_list l;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 1);
    assert_string_equal(((struct user *)l.items)[0].password_hash, "h1");
    assert_null(((struct user *)l.items)[0].name); /* not projected */

    int64_t n = -1;
    DBKT_OK(dbk_repo_count(db, &user_entity, NULL, 0, &n, &err), &err);
    assert_int_equal(n, 1);

    /* Delete returning the row, then not found. */
    struct user del;
    DBKT_OK(dbk_repo_delete(db, &user_entity, dbk_int64(u.id), &del, a, &err), &err);
    assert_string_equal(del.name, "Ada L.");
    DBKT_RC(DBK_ENOT_FOUND, dbk_repo_delete(db, &user_entity, dbk_int64(u.id), NULL, a, &err));
    int64_t id2 = mk_user(db, "b@x", "B", 1, a);
    DBKT_OK(dbk_repo_delete(db, &user_entity, dbk_int64(id2), NULL, NULL, &err), &err);
    DBKT_OK(dbk_repo_count(db, &user_entity, NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0);

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_crud(void **state)
{
    (void)state;
    dbkt_each_engine("repo_crud", crud);
    release_entities();
}

static void count_query(void *ctx, const dbk_query_event *ev);

/* dbk_repo_find_by_ids: with an integer key one statement for any number
 * of ids, each id its own row (repeated ids too), a missing or NULL id
 * DBK_ENOT_FOUND with its struct zeroed; a text key one lookup per id; a
 * failed statement gives every id its error; misuse reads nothing. */
static void find_by_ids(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    int64_t id[300];
    for (int i = 0; i < 300; i++) {
        char email[32], name[32];
        snprintf(email, sizeof email, "u%d@x", i);
        snprintf(name, sizeof name, "User %d", i);
        id[i] = mk_user(db, email, name, i, a);
    }
    /* 300 distinct ids, one of them 3 times, two missing, a NULL */
    enum { N = 305 };
    static dbk_value ids[N];
    static struct user rows[N];
    static void *outs[N];
    static dbk_rc rcs[N];
    int want[N];
    for (int i = 0; i < 300; i++) {
        want[i] = 299 - i;
        ids[i] = dbk_int64(id[299 - i]);
    }
    want[300] = 7, ids[300] = dbk_int64(id[7]);
    want[301] = 7, ids[301] = dbk_int64(id[7]);
    want[302] = -1, ids[302] = dbk_int64(id[299] + 1000);
    want[303] = -1, ids[303] = dbk_int64(-5);
    want[304] = -1, ids[304] = dbk_null();
    for (int i = 0; i < N; i++) {
        outs[i] = &rows[i];
        memset(&rows[i], 0x5a, sizeof rows[i]);
    }
    int queries = 0;
    dbk_db_set_observer(db, count_query, &queries);
    DBKT_OK(dbk_repo_find_by_ids(db, &user_entity, N, ids, outs, rcs, a, &err), &err);
    assert_int_equal(queries, 1);
    for (int i = 0; i < N; i++) {
        if (want[i] < 0) {
            assert_int_equal(rcs[i], DBK_ENOT_FOUND);
            assert_int_equal(rows[i].id, 0);
            assert_null(rows[i].name);
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, "User %d", want[i]);
        assert_int_equal(rcs[i], DBK_OK);
        assert_int_equal(rows[i].id, id[want[i]]);
        assert_string_equal(rows[i].name, name);
        assert_true(rows[i].score == want[i]);
        assert_null(rows[i].password_hash); /* hidden, as find_by_id */
    }
    /* the most ids one call takes, in one statement as well */
    {
        dbk_value *many = calloc(DBK_REPO_MAX_IN, sizeof *many);
        struct user *mrows = calloc(DBK_REPO_MAX_IN, sizeof *mrows);
        void **mouts = calloc(DBK_REPO_MAX_IN, sizeof *mouts);
        dbk_rc *mrcs = calloc(DBK_REPO_MAX_IN, sizeof *mrcs);
        assert_true(many && mrows && mouts && mrcs);
        for (int i = 0; i < DBK_REPO_MAX_IN; i++) {
            many[i] = dbk_int64(i < 300 ? id[i] : id[299] + i);
            mouts[i] = &mrows[i];
        }
        queries = 0;
        DBKT_OK(dbk_repo_find_by_ids(db, &user_entity, DBK_REPO_MAX_IN, many, mouts, mrcs, a,
                                     &err),
                &err);
        assert_int_equal(queries, 1);
        assert_int_equal(mrcs[299], DBK_OK);
        assert_int_equal(mrows[299].id, id[299]);
        assert_int_equal(mrcs[300], DBK_ENOT_FOUND);
        assert_int_equal(mrcs[DBK_REPO_MAX_IN - 1], DBK_ENOT_FOUND);
        free(many);
        free(mrows);
        free(mouts);
        free(mrcs);
    }
    /* n = 0: nothing run */
    queries = 0;
    DBKT_OK(dbk_repo_find_by_ids(db, &user_entity, 0, NULL, NULL, NULL, a, &err), &err);
    assert_int_equal(queries, 0);

    /* a text primary key: one lookup per id */
    struct tag t = {NULL, "one"}, to;
    DBKT_OK(dbk_repo_create(db, &tag_entity, &t, &to, a, &err), &err);
    dbk_value tids[2] = {dbk_text(to.id), dbk_text(eng == DBK_ENGINE_POSTGRES
                                                      ? "00000000-0000-0000-0000-000000000000"
                                                      : "none")};
    struct tag trows[2];
    void *touts[2] = {&trows[0], &trows[1]};
    queries = 0;
    DBKT_OK(dbk_repo_find_by_ids(db, &tag_entity, 2, tids, touts, rcs, a, &err), &err);
    assert_int_equal(queries, 2);
    assert_int_equal(rcs[0], DBK_OK);
    assert_string_equal(trows[0].label, "one");
    assert_int_equal(rcs[1], DBK_ENOT_FOUND);

    /* misuse: nothing read, the outcomes untouched */
    rcs[0] = DBK_EBUSY;
    outs[3] = NULL;
    queries = 0;
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_ids(db, &user_entity, 5, ids, outs, rcs, a, &err));
    outs[3] = &rows[3];
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_ids(db, &user_entity, DBK_REPO_MAX_IN + 1, ids, outs,
                                              rcs, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_ids(db, &user_entity, 5, NULL, outs, rcs, a, &err));
    assert_int_equal(queries, 0);
    assert_int_equal(rcs[0], DBK_EBUSY);

    /* the statement fails: every id gets its error, and it is returned */
    dbkt_exec(db, "ALTER TABLE users RENAME TO users_away");
    dbk_rc rc = dbk_repo_find_by_ids(db, &user_entity, 3, ids, outs, rcs, a, &err);
    assert_true(rc != DBK_OK && rc != DBK_ENOT_FOUND);
    assert_int_equal(err.code, rc);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rcs[i], rc);
    dbkt_exec(db, "ALTER TABLE users_away RENAME TO users");
    dbk_db_set_observer(db, NULL, NULL);
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_find_by_ids_one_statement(void **state)
{
    (void)state;
    dbkt_each_engine("repo_find_by_ids", find_by_ids);
    release_entities();
}

static void unique_violation(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    mk_user(db, "dup@example.com", "One", 1, a);
    struct user u = {.email = "dup@example.com", .name = "Two", .active = true};
    DBKT_RC(DBK_EUNIQUE, dbk_repo_create(db, &user_entity, &u, &u, a, &err));
    assert_int_equal(err.code, DBK_EUNIQUE);
    if (eng == DBK_ENGINE_POSTGRES)
        assert_string_equal(err.constraint_name, "users_email_key");
    else
        assert_non_null(strstr(err.constraint_name, "email"));
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_unique_violation_is_eunique(void **state)
{
    (void)state;
    dbkt_each_engine("repo_unique_violation_is_eunique", unique_violation);
    release_entities();
}

/* ---- filters, order, pages ---- */

static void seed_users(dbk_db *db, int n, dbk_arena *a)
{
    for (int i = 1; i <= n; i++) {
        char email[64], name[64];
        snprintf(email, sizeof email, "u%02d@example.com", i);
        snprintf(name, sizeof name, i % 2 ? "odd %02d" : "even %02d", i);
        struct user u = {.email = email, .name = name, .score = i, .active = i % 3 != 0,
                         .score_null = i == n};
        dbk_error err;
        DBKT_OK(dbk_repo_create(db, &user_entity, &u, NULL, a, &err), &err);
    }
}

static void filters(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    seed_users(db, 20, a);
    dbk_list l;

    dbk_filter f1[] = {DBK_WHERE("score", DBK_FILTER_GE, dbk_double(5)),
                       DBK_WHERE("score", DBK_FILTER_LT, dbk_double(10))};
    dbk_query q = {.filters = f1, .nfilters = 2, .order_by = "-score"};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 5);
    assert_true(((struct user *)l.items)[0].score == 9);
    assert_true(((struct user *)l.items)[4].score == 5);
    assert_int_equal(l.total, -1);

    dbk_value ids[] = {dbk_int64(2), dbk_int64(4), dbk_int64(99)};
    dbk_filter f2[] = {DBK_WHERE_IN("id", ids, 3)};
    q = (dbk_query){.filters = f2, .nfilters = 1};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 2);
    f2[0].nvalues = 0;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 0);

    dbk_filter f3[] = {DBK_WHERE("name", DBK_FILTER_LIKE, dbk_text("even%")),
                       DBK_WHERE("active", DBK_FILTER_EQ, dbk_bool(true))};
    q = (dbk_query){.filters = f3, .nfilters = 2};
    int64_t n = 0;
    DBKT_OK(dbk_repo_count(db, &user_entity, f3, 2, &n, &err), &err);
    assert_int_equal(n, 7); /* even 2..20 (10) minus multiples of 6 (6, 12, 18) */

    dbk_filter f4[] = {DBK_WHERE("score", DBK_FILTER_IS_NULL, dbk_null())};
    DBKT_OK(dbk_repo_count(db, &user_entity, f4, 1, &n, &err), &err);
    assert_int_equal(n, 1);
    f4[0].op = DBK_FILTER_IS_NOT_NULL;
    DBKT_OK(dbk_repo_count(db, &user_entity, f4, 1, &n, &err), &err);
    assert_int_equal(n, 19);
    q = (dbk_query){.filters = f4, .nfilters = 1, .order_by = "score", .has_limit = true,
                    .limit = 1};
    f4[0].op = DBK_FILTER_IS_NULL;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 1);
    assert_true(((struct user *)l.items)[0].score_null);

    /* Injection strings as values: just values. */
    const char *evil = "x'); DROP TABLE users; --";
    dbk_filter f5[] = {DBK_WHERE("email", DBK_FILTER_EQ, dbk_text(evil))};
    DBKT_OK(dbk_repo_count(db, &user_entity, f5, 1, &n, &err), &err);
    assert_int_equal(n, 0);
    /* ... and as field and sort names: refused. */
    dbk_filter f6[] = {DBK_WHERE("email = email OR 1", DBK_FILTER_EQ, dbk_text("x"))};
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_repo_count(db, &user_entity, f6, 1, &n, &err));
    q = (dbk_query){.filters = f6, .nfilters = 1};
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q = (dbk_query){.order_by = "name; DROP TABLE users"};
    DBKT_RC(DBK_EINVALID_SORT, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q = (dbk_query){.order_by = "-password_hash"};
    DBKT_RC(DBK_EINVALID_SORT, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    dbk_order bad_order[] = {{"nope", false}};
    q = (dbk_query){.order = bad_order, .norder = 1};
    DBKT_RC(DBK_EINVALID_SORT, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    const char *const badsel[] = {"name, password_hash"};
    q = (dbk_query){.select = badsel, .nselect = 1};
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    dbk_filter f7[] = {DBK_WHERE("name", DBK_FILTER_EQ, dbk_null())};
    DBKT_RC(DBK_EINVALID, dbk_repo_count(db, &user_entity, f7, 1, &n, &err));
    DBKT_OK(dbk_repo_count(db, &user_entity, NULL, 0, &n, &err), &err);
    assert_int_equal(n, 20); /* the table survived */

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_filters_order_and_injection(void **state)
{
    (void)state;
    dbkt_each_engine("repo_filters_order_and_injection", filters);
    release_entities();
}

static void pages(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    seed_users(db, 20, a);
    dbk_list l;

    dbk_query q = {.order_by = "-created_at", .limit = 5, .offset = 5,
                   .count = DBK_COUNT_EXACT};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 5);
    assert_int_equal(l.total, 20);
    assert_int_equal(((struct user *)l.items)[0].id, 15); /* same created_at: id desc breaks ties */

    q.offset = 100; /* past the end: empty page, total still right */
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 0);
    assert_int_equal(l.total, 20);

    q.offset = 0;
    q.limit = 0; /* the default page: all 20 fit, nothing more */
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 20);
    assert_int_equal(l.total, 20);
    assert_false(l.has_more);

    dbk_filter f[] = {DBK_WHERE("active", DBK_FILTER_EQ, dbk_bool(false))};
    q = (dbk_query){.filters = f, .nfilters = 1, .limit = 2,
                    .count = DBK_COUNT_EXACT};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 2);
    assert_int_equal(l.total, 6);

    /* Bad limits: clear code, a hint naming the accepted values. */
    q = (dbk_query){.limit = -2};
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    assert_non_null(strstr(err.message, "limit -2"));
    assert_non_null(strstr(err.hint, "DBK_REPO_LIMIT_ALL"));
    q.limit = DBK_REPO_MAX_LIMIT + 1;
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q.limit = INT64_MAX;
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q.limit = INT64_MIN;
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q = (dbk_query){.limit = DBK_REPO_LIMIT_ALL, .keyset = true};
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q = (dbk_query){.limit = 5, .offset = -3};
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));

    /* has-more: limit + 1 */
    q = (dbk_query){.limit = 10, .offset = 10, .count = DBK_COUNT_HAS_MORE};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 10);
    assert_false(l.has_more);
    assert_int_equal(l.total, -1);
    q.offset = 9;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 10);
    assert_true(l.has_more);

    /* estimated: PostgreSQL reads planner statistics (after ANALYZE: 20). */
    if (eng == DBK_ENGINE_POSTGRES)
        DBKT_OK(dbk_db_exec(db, "ANALYZE users", NULL, 0, NULL, &err), &err);
    q = (dbk_query){.limit = 3, .count = DBK_COUNT_ESTIMATED};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 3);
    assert_int_equal(l.total, 20);

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_pages_limits_and_totals(void **state)
{
    (void)state;
    dbkt_each_engine("repo_pages_limits_and_totals", pages);
    release_entities();
}

/* More rows than the default page: limit 0 cuts at DBK_REPO_DEFAULT_LIMIT
 * and says so (has_more), DBK_REPO_LIMIT_ALL returns them all. */
static void default_limit(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    const int n = DBK_REPO_DEFAULT_LIMIT + 5;
    seed_users(db, n, a);
    dbk_list l;

    DBKT_OK(dbk_repo_find_many(db, &user_entity, NULL, &l, a, &err), &err);
    assert_int_equal(l.count, DBK_REPO_DEFAULT_LIMIT);
    assert_true(l.has_more);
    assert_int_equal(l.total, -1);
    /* ordered by the primary key when no order is given: the first 100 */
    assert_int_equal(((struct user *)l.items)[0].id, 1);
    assert_int_equal(((struct user *)l.items)[DBK_REPO_DEFAULT_LIMIT - 1].id,
                     DBK_REPO_DEFAULT_LIMIT);

    dbk_query q = {.order_by = "-id", .count = DBK_COUNT_EXACT};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, DBK_REPO_DEFAULT_LIMIT);
    assert_true(l.has_more);
    assert_int_equal(l.total, n);
    assert_int_equal(((struct user *)l.items)[0].id, n);

    q.offset = 5; /* exactly the default page left: no more */
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, DBK_REPO_DEFAULT_LIMIT);
    assert_false(l.has_more);

    q = (dbk_query){.limit = DBK_REPO_LIMIT_ALL};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, n);
    assert_false(l.has_more);

    q = (dbk_query){.limit = 7};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 7);
    assert_false(l.has_more); /* an explicit limit reports has_more only when asked */

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_default_limit_and_limit_all(void **state)
{
    (void)state;
    dbkt_each_engine("repo_default_limit_and_limit_all", default_limit);
    release_entities();
}

/* The names deprecated in 0.2 keep working for one release: the has_limit
 * member with its 0.1 meaning and the filter operators without FILTER_. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static void deprecated_names(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    seed_users(db, 20, a);
    dbk_list l;

    dbk_query q = {.has_limit = true, .limit = 0, .count = DBK_COUNT_EXACT};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 0); /* 0.1: an empty page with a valid total */
    assert_int_equal(l.total, 20);
    q.limit = 3;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 3);
    q.limit = -1; /* with has_limit, -1 is out of range as in 0.1 */
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    assert_non_null(strstr(err.hint, "has_limit"));

    assert_int_equal(DBK_EQ, DBK_FILTER_EQ);
    assert_int_equal(DBK_NE, DBK_FILTER_NE);
    assert_int_equal(DBK_LT, DBK_FILTER_LT);
    assert_int_equal(DBK_LE, DBK_FILTER_LE);
    assert_int_equal(DBK_GT, DBK_FILTER_GT);
    assert_int_equal(DBK_GE, DBK_FILTER_GE);
    assert_int_equal(DBK_IN, DBK_FILTER_IN);
    assert_int_equal(DBK_IS_NULL, DBK_FILTER_IS_NULL);
    assert_int_equal(DBK_IS_NOT_NULL, DBK_FILTER_IS_NOT_NULL);
    assert_int_equal(DBK_LIKE, DBK_FILTER_LIKE);
    dbk_filter f[] = {DBK_WHERE("score", DBK_GT, dbk_double(10)),
                      DBK_WHERE("name", DBK_LIKE, dbk_text("even%"))};
    int64_t n = 0;
    DBKT_OK(dbk_repo_count(db, &user_entity, f, 2, &n, &err), &err);
    assert_int_equal(n, 4); /* 12, 14, 16 and 18; 20's score is NULL */

    dbk_arena_free(a);
    dbk_conn_close(c);
}
#pragma GCC diagnostic pop

static void repo_deprecated_has_limit_and_filter_names(void **state)
{
    (void)state;
    dbkt_each_engine("repo_deprecated_has_limit_and_filter_names", deprecated_names);
    release_entities();
}

static void keyset(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    seed_users(db, 10, a);
    dbk_list l;

    /* Newest first by id; rows inserted between pages sort before the
     * cursor and must not shift the next page. */
    dbk_query q = {.order_by = "-id", .limit = 4, .keyset = true};
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 4);
    assert_int_equal(((struct user *)l.items)[3].id, 7);
    assert_non_null(l.next_cursor);
    assert_true(l.has_more);
    const char *cur = l.next_cursor;
    for (int i = 0; i < 3; i++) {
        char email[32];
        snprintf(email, sizeof email, "new%d@example.com", i);
        mk_user(db, email, "late", 100, a);
    }
    q.after = cur;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 4);
    assert_int_equal(((struct user *)l.items)[0].id, 6);
    assert_int_equal(((struct user *)l.items)[3].id, 3);
    q.after = l.next_cursor;
    assert_non_null(q.after);
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(l.count, 2);
    assert_null(l.next_cursor);
    assert_false(l.has_more);

    /* Two-key order with text: name asc, then id. */
    dbk_query q2 = {.order_by = "name", .limit = 3, .keyset = true};
    int64_t seen = 0;
    int pagesn = 0;
    do {
        DBKT_OK(dbk_repo_find_many(db, &user_entity, &q2, &l, a, &err), &err);
        seen += (int64_t)l.count;
        q2.after = l.next_cursor;
        pagesn++;
    } while (q2.after && pagesn < 20);
    assert_int_equal(seen, 13);

    /* Tampered, truncated, garbage and foreign cursors: DBK_EINVALID. */
    size_t len = strlen(cur);
    char *t = malloc(len + 1);
    memcpy(t, cur, len + 1);
    t[len / 2] = t[len / 2] == 'A' ? 'B' : 'A';
    q.after = t;
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    t[len / 2] = cur[len / 2];
    t[len - 3] = '\0';
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    free(t);
    const char *garbage[] = {"", "!!!!", "A", "AAAA", "' OR 1=1 --", "MS4w"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        q.after = garbage[i];
        DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    }
    q.after = cur;
    q.order_by = "id"; /* cursor made for "-id" */
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q.order_by = "-id";
    q.offset = 2;
    DBKT_RC(DBK_EINVALID, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    q = (dbk_query){.order_by = "score", .limit = 2, .keyset = true};
    DBKT_RC(DBK_EINVALID_SORT, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_keyset_cursor_stable_and_validated(void **state)
{
    (void)state;
    dbkt_each_engine("repo_keyset_cursor_stable_and_validated", keyset);
    release_entities();
}

/* ---- includes ---- */

static void count_query(void *ctx, const dbk_query_event *ev)
{
    (void)ev;
    (*(int *)ctx)++;
}

struct qcount {
    int queries, batched;
};

static void count_batched(void *ctx, const dbk_query_event *ev)
{
    struct qcount *q = ctx;
    q->queries++;
    if (ev->batch_size)
        q->batched++;
}

static void includes(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    int64_t u1 = mk_user(db, "a@x", "A", 1, a);
    int64_t u2 = mk_user(db, "b@x", "B", 2, a);
    int64_t u3 = mk_user(db, "c@x", "C", 3, a); /* no posts */
    int64_t p1 = mk_post(db, u1, "a1", a);
    mk_post(db, u2, "b1", a);
    mk_post(db, u1, "a2", a);
    mk_post(db, u2, "b2", a);
    mk_post(db, u1, "a3", a);
    struct comment cm = {.post_id = p1, .body = "first!"};
    DBKT_OK(dbk_repo_create(db, &comment_entity, &cm, NULL, NULL, &err), &err);
    cm.body = "second";
    DBKT_OK(dbk_repo_create(db, &comment_entity, &cm, NULL, NULL, &err), &err);

    int queries = 0;
    dbk_db_set_observer(db, count_query, &queries);
    const char *const inc[] = {"posts"};
    dbk_query q = {.include = inc, .ninclude = 1, .order_by = "id"};
    dbk_list l;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(queries, 2); /* users + posts, never one per user */
    assert_int_equal(l.count, 3);
    struct user *us = l.items;
    assert_int_equal(us[0].id, u1);
    assert_int_equal(us[0].nposts, 3);
    assert_string_equal(us[0].posts[0].title, "a1");
    assert_string_equal(us[0].posts[2].title, "a3");
    assert_int_equal(us[1].nposts, 2);
    assert_int_equal(us[2].id, u3);
    assert_int_equal(us[2].nposts, 0);
    assert_null(us[2].posts);

    /* Nested: users -> posts -> comments: 3 queries. */
    queries = 0;
    const char *const inc2[] = {"posts", "posts.comments"};
    q.include = inc2;
    q.ninclude = 2;
    DBKT_OK(dbk_repo_find_many(db, &user_entity, &q, &l, a, &err), &err);
    assert_int_equal(queries, 3);
    us = l.items;
    assert_int_equal(us[0].posts[0].ncomments, 2);
    assert_string_equal(us[0].posts[0].comments[0].body, "first!");
    assert_int_equal(us[0].posts[1].ncomments, 0);

    /* Belongs-to, with a projection that omits the foreign key. */
    queries = 0;
    const char *const inc3[] = {"author"};
    const char *const sel[] = {"title"};
    dbk_query pq = {.include = inc3, .ninclude = 1, .select = sel, .nselect = 1,
                    .order_by = "id"};
    DBKT_OK(dbk_repo_find_many(db, &post_entity, &pq, &l, a, &err), &err);
    assert_int_equal(queries, 2);
    struct post *ps = l.items;
    assert_int_equal(l.count, 5);
    assert_non_null(ps[1].author);
    assert_string_equal(ps[1].author->name, "B");
    assert_ptr_equal(ps[0].author, ps[2].author); /* one row per distinct author */

    /* Two relations on one level: one query each; on PostgreSQL the two go
     * out together in one batch. */
    struct qcount qc = {0, 0};
    dbk_db_set_observer(db, count_batched, &qc);
    const char *const inc4[] = {"author", "comments"};
    dbk_query pq2 = {.include = inc4, .ninclude = 2, .order_by = "id"};
    DBKT_OK(dbk_repo_find_many(db, &post_entity, &pq2, &l, a, &err), &err);
    assert_int_equal(qc.queries, 3);
    assert_int_equal(qc.batched, eng == DBK_ENGINE_POSTGRES ? 2 : 0);
    ps = l.items;
    assert_int_equal(ps[0].id, p1);
    assert_string_equal(ps[0].author->name, "A");
    assert_int_equal(ps[0].ncomments, 2);
    assert_string_equal(ps[1].author->name, "B");
    assert_int_equal(ps[1].ncomments, 0);
    dbk_db_set_observer(db, count_query, &queries);

    /* Include on rows found one by one. */
    queries = 0;
    struct user one;
    DBKT_OK(dbk_repo_find_by_id(db, &user_entity, dbk_int64(u2), &one, a, &err), &err);
    DBKT_OK(dbk_repo_include(db, &user_entity, &one, 1, inc, 1, a, &err), &err);
    assert_int_equal(queries, 2);
    assert_int_equal(one.nposts, 2);

    const char *const bad[] = {"posts.nope"};
    q.include = bad;
    q.ninclude = 1;
    queries = 0;
    DBKT_RC(DBK_EINVALID_COLUMN, dbk_repo_find_many(db, &user_entity, &q, &l, a, &err));
    assert_int_equal(queries, 0);
    dbk_db_set_observer(db, NULL, NULL);
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_include_one_query_per_relation(void **state)
{
    (void)state;
    dbkt_each_engine("repo_include_one_query_per_relation", includes);
    release_entities();
}

/* ---- upsert, bulk, text keys ---- */

static void upsert_bulk(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;

    struct user u = {.email = "up@x", .name = "First", .active = true};
    struct user o1, o2;
    const char *const conflict[] = {"email"};
    DBKT_OK(dbk_repo_upsert(db, &user_entity, conflict, 1, NULL, 0, &u, &o1, a, &err), &err);
    u.name = "Second";
    DBKT_OK(dbk_repo_upsert(db, &user_entity, conflict, 1, NULL, 0, &u, &o2, a, &err), &err);
    assert_int_equal(o1.id, o2.id);
    assert_string_equal(o2.name, "Second");
    assert_int_equal(o2.created_at, o1.created_at);
    const char *const notuniq[] = {"name"};
    DBKT_RC(DBK_EINVALID_COLUMN,
            dbk_repo_upsert(db, &user_entity, notuniq, 1, NULL, 0, &u, &o2, a, &err));
    const char *const evil[] = {"email) DO NOTHING; --"};
    DBKT_RC(DBK_EINVALID_COLUMN,
            dbk_repo_upsert(db, &user_entity, evil, 1, NULL, 0, &u, &o2, a, &err));

    /* Composite unique target, any order of the names. */
    struct member m = {.user_id = o1.id, .org = "acme", .role = "member"}, mo1, mo2;
    const char *const ck[] = {"user_id", "org"};
    DBKT_OK(dbk_repo_upsert(db, &member_entity, ck, 2, NULL, 0, &m, &mo1, a, &err), &err);
    m.role = "admin";
    DBKT_OK(dbk_repo_upsert(db, &member_entity, ck, 2, NULL, 0, &m, &mo2, a, &err), &err);
    assert_int_equal(mo1.id, mo2.id);
    assert_string_equal(mo2.role, "admin");

    /* Bulk: 2,500 rows in several batches, ids back in input order. */
    enum { N = 2500 };
    struct post *rows = calloc(N, sizeof *rows);
    char (*titles)[16] = calloc(N, 16);
    for (int i = 0; i < N; i++) {
        snprintf(titles[i], 16, "t%d", i);
        rows[i].user_id = o1.id;
        rows[i].title = titles[i];
    }
    DBKT_OK(dbk_repo_create_many(db, &post_entity, rows, N, rows, a, &err), &err);
    for (int i = 1; i < N; i++)
        assert_true(rows[i].id > rows[i - 1].id);
    assert_string_equal(rows[N - 1].title, "t2499");
    int64_t n = 0;
    DBKT_OK(dbk_repo_count(db, &post_entity, NULL, 0, &n, &err), &err);
    assert_int_equal(n, N);
    free(rows);
    free(titles);

    /* Text (uuid on PostgreSQL) primary key, generated by the database. */
    struct tag t = {.label = "red"}, to, tf;
    DBKT_OK(dbk_repo_create(db, &tag_entity, &t, &to, a, &err), &err);
    assert_non_null(to.id);
    assert_true(strlen(to.id) >= 32);
    DBKT_OK(dbk_repo_find_by_id(db, &tag_entity, dbk_text(to.id), &tf, a, &err), &err);
    assert_string_equal(tf.label, "red");
    t.label = "blue";
    const char *const lm[] = {"label"};
    DBKT_OK(dbk_repo_update(db, &tag_entity, dbk_text(to.id), &t, lm, 1, &tf, a, &err), &err);
    assert_string_equal(tf.label, "blue");
    DBKT_OK(dbk_repo_delete(db, &tag_entity, dbk_text(to.id), NULL, NULL, &err), &err);
    DBKT_RC(DBK_ENOT_FOUND, dbk_repo_find_by_id(db, &tag_entity, dbk_text(to.id), &tf, a, &err));

    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_upsert_bulk_and_text_keys(void **state)
{
    (void)state;
    dbkt_each_engine("repo_upsert_bulk_and_text_keys", upsert_bulk);
    release_entities();
}


/* Values over what the engine accepts: refused from their length before a
 * row is encoded or sent (the bytes are unreadable: touching them crashes
 * the test), on every bulk path, and nothing of the batch is written. */
static void bulk_huge(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    const size_t G = (size_t)1 << 30, maplen = 2 * G;
    unsigned char *huge = dbkt_unreadable(maplen);
    enum { N = 64 }; /* enough rows for the COPY path on PostgreSQL */
    struct user *u = calloc(N, sizeof *u), *out = calloc(N, sizeof *out);
    char (*emails)[32] = calloc(N, 32);
    for (int i = 0; i < N; i++) {
        snprintf(emails[i], 32, "h%d@example.com", i);
        u[i].email = emails[i];
        u[i].name = "plain";
    }
    /* Refused on every path: over 1 GiB - 5 on PostgreSQL, over
     * SQLITE_LIMIT_LENGTH on SQLite. */
    const size_t sizes[] = {eng == DBK_ENGINE_POSTGRES ? G - 3 : 1000000001, 2 * G};
    for (size_t k = 0; k < 2; k++) {
        u[N / 2].avatar = (dbk_bytes){huge, sizes[k]};
        /* nothing asked back (COPY on PostgreSQL, chunked VALUES on
         * SQLite), then rows asked back (INSERT ... RETURNING) */
        for (int back = 0; back < 2; back++) {
            memset(&err, 0, sizeof err);
            dbk_rc rc = dbk_repo_create_many(db, &user_entity, u, N, back ? out : NULL,
                                             back ? a : NULL, &err);
            if (rc != DBK_EINVALID)
                fail_msg("%zu-byte blob, rows back %d: expected DBK_EINVALID, got %s (%s)",
                         sizes[k], back, dbk_rc_name(rc), err.message);
            assert_true(err.hint[0] != '\0');
            dbk_arena_reset(a);
        }
    }
    if (eng == DBK_ENGINE_POSTGRES) {
        /* 600 MiB travels as one binary parameter, but hex-encoded in a
         * COPY row it is over the 1 GiB the server reads as one row: the
         * COPY path refuses it before encoding, naming the column. */
        u[N / 2].avatar = (dbk_bytes){huge, (size_t)600 << 20};
        DBKT_RC(DBK_EINVALID, dbk_repo_create_many(db, &user_entity, u, N, NULL, NULL, &err));
        assert_non_null(strstr(err.message, "avatar"));
        assert_non_null(strstr(err.message, "COPY"));
    }
    dbkt_unreadable_free(huge, maplen);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), 0);
    u[N / 2].avatar = (dbk_bytes){(const unsigned char *)"ok", 2};
    DBKT_OK(dbk_repo_create_many(db, &user_entity, u, N, NULL, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), N);
    free(emails);
    free(out);
    free(u);
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_create_many_refuses_huge_values(void **state)
{
    (void)state;
    dbkt_each_engine("repo_create_many_huge", bulk_huge);
}

/* ---- bulk insert: COPY on PostgreSQL, chunked VALUES, all or nothing ---- */

static void bulk(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    enum { N = 1500 };
    struct user *u = calloc(N, sizeof *u);
    char (*emails)[48] = calloc(N, 48);
    size_t big = 1024 * 1024;
    char *huge = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        huge[i] = (char)('a' + i % 26);
    huge[big] = '\0';
    static const unsigned char bin[] = {0, '\\', '\t', '\n', 255, 'x'};
    static const char awkward[] = "tab\there, newline\nthere, back\\slash, \\N, r\r, ünï 例";
    for (int i = 0; i < N; i++) {
        snprintf(emails[i], 48, "bulk%04d@example.com", i);
        u[i].email = emails[i];
        u[i].name = i == 7 ? awkward : i == 8 ? huge : "plain";
        u[i].password_hash = i % 3 ? NULL : "h\\a\tsh";
        u[i].score = i * 0.1;
        u[i].score_null = i % 5 == 0;
        u[i].active = i % 2;
        u[i].avatar = i % 4 ? (dbk_bytes){bin, sizeof bin} : (dbk_bytes){NULL, 0};
    }
    /* Nothing asked back: COPY on PostgreSQL, chunked VALUES on SQLite. */
    DBKT_OK(dbk_repo_create_many(db, &user_entity, u, N, NULL, NULL, &err), &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), N);
    for (int i = 0; i < N; i += i < 20 ? 1 : 97) {
        struct user f;
        DBKT_OK(dbk_repo_find_by(db, &user_entity, "email", dbk_text(emails[i]), &f, a, &err),
                &err);
        assert_string_equal(f.name, u[i].name);
        assert_int_equal(f.score_null, u[i].score_null);
        if (!u[i].score_null)
            assert_true(f.score == u[i].score || (eng == DBK_ENGINE_SQLITE &&
                                                  f.score - u[i].score < 1e-6 &&
                                                  u[i].score - f.score < 1e-6));
        assert_int_equal(f.active, u[i].active);
        assert_int_equal(f.avatar.len, u[i].avatar.len);
        if (u[i].avatar.len)
            assert_memory_equal(f.avatar.ptr, bin, sizeof bin);
        assert_true(f.created_at > 0);
        dbk_arena_reset(a);
    }
    char h[32];
    dbkt_text(db, "SELECT password_hash FROM users WHERE email = 'bulk0003@example.com'", h,
              sizeof h);
    assert_string_equal(h, "h\\a\tsh");
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users WHERE password_hash IS NULL"),
                     N - (N + 2) / 3);

    /* A duplicate near the end: nothing of the batch stays, on either path. */
    for (int i = 0; i < N; i++)
        snprintf(emails[i], 48, "again%04d@example.com", i);
    snprintf(emails[1400], 48, "bulk0001@example.com");
    struct user *out = calloc(N, sizeof *out);
    DBKT_RC(DBK_EUNIQUE, dbk_repo_create_many(db, &user_entity, u, N, NULL, NULL, &err));
    assert_non_null(strstr(err.constraint_name, "email")); /* SQLite: "users.email" */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), N);
    DBKT_RC(DBK_EUNIQUE, dbk_repo_create_many(db, &user_entity, u, N, out, a, &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), N);

    /* Without the duplicate, rows come back with their generated ids in
     * order; a row the server refuses (NULL in a NOT NULL column) in the
     * COPY path writes nothing. */
    snprintf(emails[1400], 48, "again1400@example.com");
    DBKT_OK(dbk_repo_create_many(db, &user_entity, u, N, out, a, &err), &err);
    for (int i = 1; i < N; i++)
        assert_true(out[i].id > out[i - 1].id);
    assert_string_equal(out[7].name, awkward);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), 2 * N);
    if (eng == DBK_ENGINE_POSTGRES) {
        for (int i = 0; i < N; i++)
            snprintf(emails[i], 48, "third%04d@example.com", i);
        u[1200].name = NULL; /* NOT NULL column */
        DBKT_RC(DBK_ENOT_NULL, dbk_repo_create_many(db, &user_entity, u, N, NULL, NULL, &err));
        assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), 2 * N);
        u[1200].name = "plain";
    }
    free(out);
    free(huge);
    free(emails);
    free(u);
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_create_many_bulk_paths(void **state)
{
    (void)state;
    dbkt_each_engine("repo_create_many_bulk_paths", bulk);
    release_entities();
}

/* ---- values ---- */

static void values(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;

    size_t big = 1024 * 1024;
    char *s = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        s[i] = (char)('a' + i % 26);
    s[big] = '\0';
    unsigned char bin[4] = {0, 255, 0, 7};
    struct user u = {.email = "ünïcødé@例え.jp", .name = s, .score_null = true, .active = false,
                     .avatar = {bin, sizeof bin}};
    struct user o;
    DBKT_OK(dbk_repo_create(db, &user_entity, &u, &o, a, &err), &err);
    assert_true(o.score_null);
    assert_true(o.score == 0);
    assert_false(o.active);
    assert_int_equal(strlen(o.name), big);
    assert_memory_equal(o.name, s, big);
    assert_string_equal(o.email, "ünïcødé@例え.jp");
    assert_int_equal(o.avatar.len, 4);
    assert_memory_equal(o.avatar.ptr, bin, 4);

    struct user f;
    DBKT_OK(dbk_repo_find_by(db, &user_entity, "email", dbk_text("ünïcødé@例え.jp"), &f, a, &err),
            &err);
    assert_int_equal(f.id, o.id);
    assert_true(f.score_null);

    /* NULL blob and a score set back from NULL. */
    struct user p = {.score = 4.25, .avatar = {NULL, 0}};
    const char *const m[] = {"score", "avatar"};
    DBKT_OK(dbk_repo_update(db, &user_entity, dbk_int64(o.id), &p, m, 2, &f, a, &err), &err);
    assert_false(f.score_null);
    assert_true(f.score == 4.25);
    assert_null(f.avatar.ptr);

    free(s);
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_nulls_unicode_and_large_values(void **state)
{
    (void)state;
    dbkt_each_engine("repo_nulls_unicode_and_large_values", values);
    release_entities();
}

/* ---- transactions ---- */

struct txctx {
    dbk_arena *a;
    int64_t id;
    bool fail;
};

static dbk_rc tx_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct txctx *t = ctx;
    struct user u = {.email = t->fail ? "rolled@back" : "kept@x", .name = "T", .active = true};
    dbk_rc rc = dbk_repo_create(tx, &user_entity, &u, &u, t->a, err);
    if (rc)
        return rc;
    t->id = u.id;
    struct user f;
    rc = dbk_repo_find_by_id(tx, &user_entity, dbk_int64(u.id), &f, t->a, err);
    if (rc)
        return rc;
    return t->fail ? dbk_repo_create(tx, &user_entity, &u, &u, t->a, err) /* EUNIQUE */
                   : DBK_OK;
}

static void in_tx(const char *url, dbk_engine eng)
{
    dbk_conn *c = setup(url, eng);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    struct txctx t = {a, 0, false};
    DBKT_OK(dbk_tx_run(db, tx_fn, &t, NULL, &err), &err);
    struct user f;
    DBKT_OK(dbk_repo_find_by_id(db, &user_entity, dbk_int64(t.id), &f, a, &err), &err);
    t.fail = true;
    DBKT_RC(DBK_EUNIQUE, dbk_tx_run(db, tx_fn, &t, NULL, &err));
    DBKT_RC(DBK_ENOT_FOUND,
            dbk_repo_find_by(db, &user_entity, "email", dbk_text("rolled@back"), &f, a, &err));
    dbk_arena_free(a);
    dbk_conn_close(c);
}

static void repo_works_inside_a_transaction(void **state)
{
    (void)state;
    dbkt_each_engine("repo_works_inside_a_transaction", in_tx);
    release_entities();
}

/* ---- misuse and descriptors ---- */

struct badrow {
    int32_t id;
};

static void repo_misuse_and_bad_descriptors(void **state)
{
    (void)state;
    dbk_error err;
    static const dbk_field bad_fields[] = {
        DBK_FIELD(struct badrow, id, "id", DBK_TYPE_INT64, DBK_F_PK)};
    const dbk_entity bad = DBK_ENTITY_PLAIN("bad", struct badrow, bad_fields);
    DBKT_RC(DBK_EMISUSE, dbk_entity_init(&bad, &err));
    assert_non_null(strstr(err.message, "id"));
    static const dbk_field nopk[] = {DBK_FIELD(struct comment, body, "body", DBK_TYPE_TEXT, 0)};
    const dbk_entity np = DBK_ENTITY_PLAIN("np", struct comment, nopk);
    DBKT_RC(DBK_EMISUSE, dbk_entity_init(&np, &err));
    DBKT_OK(dbk_entity_init(&user_entity, &err), &err);
    assert_int_equal(dbk_entity_field_index(&user_entity, "email"), 1);
    assert_int_equal(dbk_entity_field_index(&user_entity, "nope"), -1);

    char *url = dbkt_sqlite_url("repo_misuse");
    dbk_conn *c = setup(url, DBK_ENGINE_SQLITE);
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    struct user u;
    dbk_list l;
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_id(NULL, &user_entity, dbk_int64(1), &u, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_id(db, NULL, dbk_int64(1), &u, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_id(db, &user_entity, dbk_int64(1), NULL, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_by_id(db, &user_entity, dbk_int64(1), &u, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_create(db, &user_entity, NULL, &u, a, &err));
    DBKT_RC(DBK_EMISUSE, dbk_repo_find_many(db, &user_entity, NULL, NULL, a, &err));
    DBKT_OK(dbk_repo_find_many(db, &user_entity, NULL, &l, a, &err), &err);
    assert_int_equal(l.count, 0);
    DBKT_RC(DBK_EMISUSE, dbk_repo_count(db, &user_entity, NULL, 0, NULL, &err));
    dbk_arena_free(a);
    dbk_conn_close(c);
    free(url);
    release_entities();
}

static void repo_arena_basics(void **state)
{
    (void)state;
    dbk_arena *a = dbk_arena_new(300);
    assert_non_null(a);
    char *s = dbk_arena_strdup(a, "hello");
    assert_string_equal(s, "hello");
    void *big = dbk_arena_alloc(a, 100000);
    assert_non_null(big);
    char *t = dbk_arena_strndup(a, "abcdef", 3);
    assert_string_equal(t, "abc");
    assert_string_equal(s, "hello");
    assert_int_equal((uintptr_t)dbk_arena_alloc(a, 3) % _Alignof(max_align_t), 0);
    assert_true(dbk_arena_used(a) >= 100000);
    dbk_arena_reset(a);
    assert_int_equal(dbk_arena_used(a), 0);
    assert_null(dbk_arena_strdup(a, NULL));
    assert_null(dbk_arena_alloc(NULL, 4));
    dbk_arena_free(a);
    dbk_arena_free(NULL);
}

/* DBK_NELEMS_, renamed DBK_NELEMS in 0.2, still counts an array's elements
 * for one release, in a static initializer as the entity macros used it. */
static const int nelems_probe[] = {1, 2, 3};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static const size_t nelems_old = DBK_NELEMS_(nelems_probe);
#pragma GCC diagnostic pop

static void repo_deprecated_nelems_name_still_works(void **state)
{
    (void)state;
    assert_int_equal(nelems_old, 3);
    assert_int_equal(DBK_NELEMS(nelems_probe), 3);
}

static const struct CMUnitTest tests[] = {
        cmocka_unit_test(repo_crud),
        cmocka_unit_test(repo_find_by_ids_one_statement),
        cmocka_unit_test(repo_deprecated_nelems_name_still_works),
        cmocka_unit_test(repo_unique_violation_is_eunique),
        cmocka_unit_test(repo_filters_order_and_injection),
        cmocka_unit_test(repo_pages_limits_and_totals),
        cmocka_unit_test(repo_default_limit_and_limit_all),
        cmocka_unit_test(repo_deprecated_has_limit_and_filter_names),
        cmocka_unit_test(repo_keyset_cursor_stable_and_validated),
        cmocka_unit_test(repo_include_one_query_per_relation),
        cmocka_unit_test(repo_upsert_bulk_and_text_keys),
        cmocka_unit_test(repo_nulls_unicode_and_large_values),
        cmocka_unit_test(repo_create_many_bulk_paths),
        cmocka_unit_test(repo_create_many_refuses_huge_values),
        cmocka_unit_test(repo_works_inside_a_transaction),
        cmocka_unit_test(repo_misuse_and_bad_descriptors),
        cmocka_unit_test(repo_arena_basics),
};

DBKT_MAIN(tests)
