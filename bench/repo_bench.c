/*
 * Repository overhead and eager loading, next to hand-written baselines on
 * the same tables in the same run:
 *   1. find by id through dbk_repo_find_by_id (SQL from the entity cache,
 *      row mapped into a struct, strings copied into an arena that is reset
 *      each call) vs dbk_db_query with the same SQL text reading the same
 *      columns by hand.
 *   2. 1,000 users x 10 posts: find_many + include "posts" vs the N+1 loop
 *      (one posts query per user); times and query counts.
 *   3. PostgreSQL only: an exact page total as a count(*) OVER () column
 *      vs a separate COUNT query plus the page (the measurement behind
 *      find_many's choice of two queries; see src/repo/query.c).
 *   4. PostgreSQL only: the seed's findAll (page of 20 + exact total, and
 *      with include "posts") with the COUNT batched with the page (one
 *      round trip, the default) and sent before it.
 *
 * usage: repo_bench [--seconds S] [--sqlite-only]
 * PostgreSQL comes from DATABASE_URL or DBKIT_TEST_PG_URL (postgres://).
 * Rounds alternate baseline and repository; the best round of each counts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dbkit/dbkit.h>

#include "repo/repo_int.h" /* dbk__repo_find_many_flags: the batch path on/off */

struct bpost;
struct buser {
    int64_t id;
    const char *email;
    const char *name;
    int64_t created_at;
    struct bpost *posts;
    size_t nposts;
};
struct bpost {
    int64_t id;
    int64_t user_id;
    const char *title;
};

static const dbk_entity bpost_entity;
static const dbk_field buser_fields[] = {
    DBK_FIELD(struct buser, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct buser, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct buser, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct buser, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
static const dbk_relation buser_rels[] = {
    DBK_HAS_MANY(struct buser, "posts", posts, nposts, &bpost_entity, "user_id"),
};
static const dbk_entity buser_entity =
    DBK_ENTITY("rb_users", struct buser, buser_fields, buser_rels);
static const dbk_field bpost_fields[] = {
    DBK_FIELD(struct bpost, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct bpost, user_id, "user_id", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct bpost, title, "title", DBK_TYPE_TEXT, 0),
};
static const dbk_entity bpost_entity = DBK_ENTITY_PLAIN("rb_posts", struct bpost, bpost_fields);

static const char *FIND_SQL =
    "SELECT \"id\", \"email\", \"name\", \"created_at\" FROM \"rb_users\" WHERE \"id\" = $1";

#define NUSERS 1000
#define NPOSTS 10

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const dbk_error *err)
{
    fprintf(stderr, "repo_bench: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

static uint64_t rng = 88172645463325252ULL;
static int64_t next_id(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % NUSERS) + 1;
}

static volatile size_t sink;

static int by_hand(dbk_db *db, dbk_arena *a)
{
    (void)a;
    dbk_value p = dbk_int64(next_id());
    dbk_result *r;
    dbk_error err;
    if (dbk_db_query(db, FIND_SQL, &p, 1, &r, &err) != DBK_OK || dbk_result_nrows(r) != 1)
        return -1;
    int64_t id, ts;
    const char *email, *name;
    size_t l1 = 0, l2 = 0;
    int bad = dbk_result_get_int64(r, 0, 0, &id, &err) ||
              dbk_result_get_text(r, 0, 1, &email, &l1, &err) ||
              dbk_result_get_text(r, 0, 2, &name, &l2, &err) ||
              dbk_result_get_timestamp(r, 0, 3, &ts, &err);
    sink += l1 + l2 + (size_t)id;
    dbk_result_free(r);
    return bad ? -1 : 0;
}

static int by_repo(dbk_db *db, dbk_arena *a)
{
    struct buser u;
    dbk_error err;
    dbk_arena_reset(a);
    if (dbk_repo_find_by_id(db, &buser_entity, dbk_int64(next_id()), &u, a, &err) != DBK_OK)
        return -1;
    sink += (size_t)u.id + strlen(u.email);
    return 0;
}

static double measure(int (*fn)(dbk_db *, dbk_arena *), dbk_db *db, dbk_arena *a, double secs)
{
    rng = 88172645463325252ULL;
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 128; i++)
            if (fn(db, a) != 0)
                die("lookup failed", NULL);
        n += 128;
        t = now_s();
    } while (t - t0 < secs);
    return (double)n / (t - t0);
}

static void count_q(void *ctx, const dbk_query_event *ev)
{
    (void)ev;
    (*(long *)ctx)++;
}

struct seedctx {
    struct buser *users;
    struct bpost *posts;
    dbk_arena *a;
};

static dbk_rc seed_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    struct seedctx *s = ctx;
    dbk_rc rc = dbk_repo_create_many(tx, &buser_entity, s->users, NUSERS, s->users, s->a, err);
    if (rc)
        return rc;
    for (int i = 0; i < NUSERS * NPOSTS; i++)
        s->posts[i].user_id = s->users[i / NPOSTS].id;
    return dbk_repo_create_many(tx, &bpost_entity, s->posts, NUSERS * NPOSTS, NULL, NULL, err);
}

static void run(const char *label, const char *url, double secs)
{
    dbk_error err;
    dbk_config *cfg;
    dbk_conn *c = NULL;
    if (dbk_config_from_url(url, &cfg, &err) || dbk_conn_open(cfg, &c, &err))
        die("connect", &err);
    dbk_config_free(cfg);
    dbk_db *db = dbk_conn_db(c);
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    const char *ddl =
        pg ? "DROP TABLE IF EXISTS rb_posts; DROP TABLE IF EXISTS rb_users;"
             "CREATE TABLE rb_users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
             "name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL);"
             "CREATE TABLE rb_posts (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, "
             "title TEXT NOT NULL); CREATE INDEX ON rb_posts(user_id)"
           : "DROP TABLE IF EXISTS rb_posts; DROP TABLE IF EXISTS rb_users;"
             "CREATE TABLE rb_users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
             "name TEXT NOT NULL, created_at TEXT NOT NULL);"
             "CREATE TABLE rb_posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
             "title TEXT NOT NULL); CREATE INDEX rb_posts_user ON rb_posts(user_id)";
    if (dbk_db_exec_script(db, ddl, &err))
        die("schema", &err);

    struct seedctx s = {calloc(NUSERS, sizeof(struct buser)),
                        calloc(NUSERS * NPOSTS, sizeof(struct bpost)), dbk_arena_new(0)};
    char (*emails)[32] = calloc(NUSERS, 32);
    for (int i = 0; i < NUSERS; i++) {
        snprintf(emails[i], 32, "user%04d@example.com", i);
        s.users[i].email = emails[i];
        s.users[i].name = "A User Name";
    }
    for (int i = 0; i < NUSERS * NPOSTS; i++)
        s.posts[i].title = "a post title";
    double t0 = now_s();
    if (dbk_tx_run(db, seed_fn, &s, NULL, &err))
        die("seed", &err);
    double tseed = now_s() - t0;
    if (pg && dbk_db_exec(db, "ANALYZE rb_users; ", NULL, 0, NULL, &err) == DBK_OK)
        dbk_db_exec(db, "ANALYZE rb_posts", NULL, 0, NULL, &err);
    printf("\n== %s ==\n", label);
    printf("seed: create_many %d users + %d posts in one transaction: %.1f ms (%.0f rows/s)\n",
           NUSERS, NUSERS * NPOSTS, tseed * 1e3, (NUSERS * (NPOSTS + 1)) / tseed);

    /* 1. find by id */
    dbk_arena *a = dbk_arena_new(0);
    double best_hand = 0, best_repo = 0;
    for (int round = 0; round < 3; round++) {
        double h = measure(by_hand, db, a, secs);
        double r = measure(by_repo, db, a, secs);
        if (h > best_hand)
            best_hand = h;
        if (r > best_repo)
            best_repo = r;
    }
    printf("find by id:   hand-written dbk_db_query %9.0f q/s | repository %9.0f q/s | "
           "ratio %.2fx (target >= 0.90x)\n",
           best_hand, best_repo, best_repo / best_hand);

    /* 2. include vs N+1 */
    long queries = 0;
    dbk_db_set_observer(db, count_q, &queries);
    double best_inc = 1e9, best_n1 = 1e9;
    long q_inc = 0, q_n1 = 0;
    size_t posts_inc = 0, posts_n1 = 0;
    for (int round = 0; round < 3; round++) {
        dbk_list l;
        dbk_arena_reset(a);
        queries = 0;
        const char *const inc[] = {"posts"};
        dbk_query q = {.include = inc, .ninclude = 1, .limit = NUSERS};
        t0 = now_s();
        if (dbk_repo_find_many(db, &buser_entity, &q, &l, a, &err))
            die("find_many include", &err);
        double ti = now_s() - t0;
        q_inc = queries;
        posts_inc = 0;
        for (size_t i = 0; i < l.count; i++)
            posts_inc += ((struct buser *)l.items)[i].nposts;
        if (ti < best_inc)
            best_inc = ti;

        dbk_arena_reset(a);
        queries = 0;
        dbk_query q2 = {.limit = NUSERS};
        t0 = now_s();
        if (dbk_repo_find_many(db, &buser_entity, &q2, &l, a, &err))
            die("find_many", &err);
        posts_n1 = 0;
        for (size_t i = 0; i < l.count; i++) {
            struct buser *u = &((struct buser *)l.items)[i];
            dbk_filter f[] = {DBK_WHERE("user_id", DBK_FILTER_EQ, dbk_int64(u->id))};
            dbk_query pq = {.filters = f, .nfilters = 1};
            dbk_list pl;
            if (dbk_repo_find_many(db, &bpost_entity, &pq, &pl, a, &err))
                die("n+1", &err);
            u->posts = pl.items;
            u->nposts = pl.count;
            posts_n1 += pl.count;
        }
        double tn = now_s() - t0;
        q_n1 = queries;
        if (tn < best_n1)
            best_n1 = tn;
    }
    dbk_db_set_observer(db, NULL, NULL);
    printf("%d users x %d posts: N+1 loop %8.2f ms, %ld queries, %zu posts | include %8.2f ms, "
           "%ld queries, %zu posts | include is %.1fx faster\n",
           NUSERS, NPOSTS, best_n1 * 1e3, q_n1, posts_n1, best_inc * 1e3, q_inc, posts_inc,
           best_n1 / best_inc);

    /* 3. window count vs two queries (PostgreSQL), same SQL shapes as find_many */
    if (pg) {
        static const char *WIN =
            "SELECT \"id\", \"email\", \"name\", \"created_at\", count(*) OVER () FROM "
            "\"rb_users\" WHERE \"name\" LIKE $1 ORDER BY \"created_at\" DESC, \"id\" DESC "
            "LIMIT $2 OFFSET $3";
        static const char *CNT = "SELECT count(*) FROM \"rb_users\" WHERE \"name\" LIKE $1";
        static const char *PAGE =
            "SELECT \"id\", \"email\", \"name\", \"created_at\" FROM \"rb_users\" WHERE "
            "\"name\" LIKE $1 ORDER BY \"created_at\" DESC, \"id\" DESC LIMIT $2 OFFSET $3";
        dbk_value p[] = {dbk_text("A%"), dbk_int64(20), dbk_int64(40)};
        double bw = 1e9, b2 = 1e9;
        int iters = 300;
        for (int round = 0; round < 3; round++) {
            t0 = now_s();
            for (int i = 0; i < iters; i++) {
                dbk_result *r;
                if (dbk_db_query(db, WIN, p, 3, &r, &err))
                    die("window page", &err);
                dbk_result_free(r);
            }
            double tw = (now_s() - t0) / iters;
            t0 = now_s();
            for (int i = 0; i < iters; i++) {
                dbk_result *r = NULL;
                int64_t total;
                if (dbk_db_query_int64(db, CNT, p, 1, &total, &err) ||
                    dbk_db_query(db, PAGE, p, 3, &r, &err))
                    die("two-query page", &err);
                dbk_result_free(r);
            }
            double t2 = (now_s() - t0) / iters;
            if (tw < bw)
                bw = tw;
            if (t2 < b2)
                b2 = t2;
        }
        printf("page of 20 + exact total over %d rows: count(*) OVER () %.1f us | COUNT then "
               "page %.1f us | two queries / window = %.2f\n",
               NUSERS, bw * 1e6, b2 * 1e6, b2 / bw);

        /* 4. the seed's findAll through the repository: page + exact
         * total, and page + total + include posts, with the COUNT sent
         * in one batch with the page (the default) and without. */
        const char *const inc[] = {"posts"};
        dbk_query fq = {.limit = 20, .offset = 40, .order_by = "-created_at",
                       .count = DBK_COUNT_EXACT};
        dbk_query fqi = fq;
        fqi.include = inc;
        fqi.ninclude = 1;
        double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}}; /* [batch][include] */
        for (int round = 0; round < 3; round++) {
            for (int batched = 0; batched < 2; batched++) {
                for (int with_inc = 0; with_inc < 2; with_inc++) {
                    t0 = now_s();
                    for (int i = 0; i < iters; i++) {
                        dbk_list l;
                        dbk_arena_reset(a);
                        if (dbk__repo_find_many_flags(db, &buser_entity, with_inc ? &fqi : &fq,
                                                      batched ? 0 : DBK__FIND_NO_BATCH, &l, a,
                                                      &err) ||
                            l.total != NUSERS || l.count != 20)
                            die("findAll", &err);
                    }
                    double t = (now_s() - t0) / iters;
                    if (t < best[batched][with_inc])
                        best[batched][with_inc] = t;
                }
            }
        }
        printf("findAll page of 20 + exact total: COUNT and page in one batch %.1f us | one "
               "after the other %.1f us | batch is %.2fx faster\n",
               best[1][0] * 1e6, best[0][0] * 1e6, best[0][0] / best[1][0]);
        printf("findAll page + total + include posts: batch %.1f us | one after the other "
               "%.1f us | batch is %.2fx faster\n",
               best[1][1] * 1e6, best[0][1] * 1e6, best[0][1] / best[1][1]);
    }
    dbk_arena_free(a);
    dbk_arena_free(s.a);
    free(s.users);
    free(s.posts);
    free(emails);
    dbk_entity_release(&buser_entity);
    dbk_entity_release(&bpost_entity);
    dbk_conn_close(c);
}

int main(int argc, char **argv)
{
    double secs = 1.0;
    int sqlite_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            secs = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--sqlite-only") == 0)
            sqlite_only = 1;
    }
    if (secs <= 0 || secs > 60)
        secs = 1.0;
    char path[] = "/tmp/repo_bench_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        die("mkstemp", NULL);
    close(fd);
    char url[128];
    snprintf(url, sizeof url, "sqlite:%s", path);
    run("SQLite (file)", url, secs);
    unlink(path);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", path);
    unlink(wal);
    if (!sqlite_only) {
        const char *pg = getenv("DATABASE_URL");
        if (!pg || strncmp(pg, "postgres", 8) != 0)
            pg = getenv("DBKIT_TEST_PG_URL");
        if (pg && strncmp(pg, "postgres", 8) == 0)
            run("PostgreSQL", pg, secs);
        else
            printf("\nPostgreSQL: skipped (set DATABASE_URL or DBKIT_TEST_PG_URL)\n");
    }
    return 0;
}
