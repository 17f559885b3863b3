/* dbkit:valgrind
 * Entity descriptors declared `static const`: the library keeps their
 * prepared state in a registry keyed by the descriptor's address. These
 * tests use them from many threads at once (first use included, so the
 * lazy initialization races), release and reuse them, and register
 * hundreds of descriptors to make the registry grow while other threads
 * keep reading it. SQLite only (a file per thread): the registry does not
 * depend on the engine. This program runs in the TSan build as well
 * (scripts/run-tests.sh). Threads never call cmocka: they record what went
 * wrong and the main thread asserts. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repo/repo_int.h" /* dbk__priv(): what the registry holds */
#include "testutil.h"

struct note {
    int64_t id;
    const char *title;
    int64_t views;
    int64_t created_at;
};

static const dbk_field note_fields[] = {
    DBK_FIELD(struct note, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct note, title, "title", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct note, views, "views", DBK_TYPE_INT64, 0),
    DBK_FIELD(struct note, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
static const dbk_entity note_entity = DBK_ENTITY_PLAIN("notes", struct note, note_fields);

#define NOTE_DDL                                                                          \
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, views INTEGER NOT " \
    "NULL, created_at TEXT NOT NULL)"

#define NTHREADS 16
#define ROUNDS 40
#define NMANY 300

struct worker {
    const char *url;
    int id;
    int failures;
    char what[1100];
    const volatile int *stop; /* readers of the growth test: run until set */
    int *ready;               /* readers: counted up after the first round */
    long rounds;
};

static void worker_fail(struct worker *w, const char *step, const dbk_error *err)
{
    if (w->failures++ == 0)
        snprintf(w->what, sizeof w->what, "thread %d: %s: %s", w->id, step,
                 err ? err->message : "wrong value");
}

/* One round of create, find by id, update, count and page on note_entity. */
static void note_round(struct worker *w, dbk_db *db, dbk_arena *a, int round)
{
    dbk_error err;
    char title[64];
    snprintf(title, sizeof title, "t%d-%d", w->id, round);
    struct note in = {.title = title, .views = round}, out;
    if (dbk_repo_create(db, &note_entity, &in, &out, a, &err) != DBK_OK)
        return worker_fail(w, "create", &err);
    struct note got;
    if (dbk_repo_find_by_id(db, &note_entity, dbk_int64(out.id), &got, a, &err) != DBK_OK)
        return worker_fail(w, "find_by_id", &err);
    if (strcmp(got.title, title) != 0 || got.views != round)
        return worker_fail(w, "find_by_id", NULL);
    const char *const set[] = {"views"};
    in.views = round + 1000;
    if (dbk_repo_update(db, &note_entity, dbk_int64(out.id), &in, set, 1, &got, a, &err) !=
            DBK_OK ||
        got.views != round + 1000)
        return worker_fail(w, "update", &err);
    int64_t n = -1;
    if (dbk_repo_count(db, &note_entity, NULL, 0, &n, &err) != DBK_OK || n != round + 1)
        return worker_fail(w, "count", &err);
    dbk_filter f = DBK_WHERE("views", DBK_FILTER_GE, dbk_int64(1000));
    dbk_query q = {.filters = &f, .nfilters = 1, .order_by = "-id", .limit = 5};
    dbk_list l;
    if (dbk_repo_find_many(db, &note_entity, &q, &l, a, &err) != DBK_OK ||
        l.count != (size_t)(round + 1 < 5 ? round + 1 : 5) ||
        ((struct note *)l.items)[0].id != out.id)
        return worker_fail(w, "find_many", &err);
}

static void *note_worker(void *arg)
{
    struct worker *w = arg;
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    if (dbk_config_from_url(w->url, &cfg, &err) != DBK_OK ||
        dbk_conn_open(cfg, &c, &err) != DBK_OK) {
        worker_fail(w, "open", &err);
        dbk_config_free(cfg);
        return NULL;
    }
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    if (!a || dbk_db_exec(db, NOTE_DDL, NULL, 0, NULL, &err) != DBK_OK)
        worker_fail(w, "schema", a ? &err : NULL);
    for (int r = 0; r < ROUNDS && w->failures == 0; r++) {
        note_round(w, db, a, r);
        dbk_arena_reset(a);
    }
    dbk_arena_free(a);
    dbk_conn_close(c);
    dbk_config_free(cfg);
    return NULL;
}

static void run_workers(struct worker *ws, int n, void *(*fn)(void *))
{
    pthread_t th[NTHREADS];
    assert_true(n <= NTHREADS);
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&th[i], NULL, fn, &ws[i]), 0);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void entity_static_const_used_from_16_threads(void **state)
{
    (void)state;
    /* Not initialized beforehand: the first calls race to prepare it. */
    dbk_entity_release(&note_entity);
    struct worker ws[NTHREADS] = {0};
    char *urls[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        char name[32];
        snprintf(name, sizeof name, "threads%d", i);
        urls[i] = dbkt_sqlite_url(name);
        ws[i].url = urls[i];
        ws[i].id = i;
    }
    run_workers(ws, NTHREADS, note_worker);
    for (int i = 0; i < NTHREADS; i++) {
        if (ws[i].failures)
            fail_msg("%s", ws[i].what);
        free(urls[i]);
    }
    dbk_entity_release(&note_entity);
}

static void entity_release_then_reuse(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("reuse");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, NOTE_DDL);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    struct note in = {.title = "first", .views = 1}, out;
    DBKT_OK(dbk_entity_init(&note_entity, &err), &err);
    DBKT_OK(dbk_entity_init(&note_entity, &err), &err); /* idempotent */
    DBKT_OK(dbk_repo_create(db, &note_entity, &in, &out, a, &err), &err);
    dbk_entity_release(&note_entity);
    dbk_entity_release(&note_entity); /* twice: nothing left to free */
    dbk_entity_release(NULL);
    /* Used again after release: it re-initializes on first use. */
    struct note got;
    DBKT_OK(dbk_repo_find_by_id(db, &note_entity, dbk_int64(out.id), &got, a, &err), &err);
    assert_string_equal(got.title, "first");
    in.title = "second";
    DBKT_OK(dbk_repo_create(db, &note_entity, &in, &out, a, &err), &err);
    int64_t n = 0;
    DBKT_OK(dbk_repo_count(db, &note_entity, NULL, 0, &n, &err), &err);
    assert_int_equal(n, 2);
    dbk_entity_release(&note_entity);
    /* A bad descriptor is refused every time and never registered. */
    static const dbk_field nopk[] = {
        DBK_FIELD(struct note, title, "title", DBK_TYPE_TEXT, 0),
    };
    static const dbk_entity bad = DBK_ENTITY_PLAIN("bad", struct note, nopk);
    DBKT_RC(DBK_EMISUSE, dbk_entity_init(&bad, &err));
    assert_non_null(strstr(err.message, "DBK_F_PK"));
    DBKT_RC(DBK_EMISUSE, dbk_repo_count(db, &bad, NULL, 0, &n, &err));
    dbk_entity_release(&bad);
    DBKT_RC(DBK_EMISUSE, dbk_entity_init(NULL, &err));
    dbk_arena_free(a);
    dbk_conn_close(c);
    free(url);
}

/* Readers of the growth test: find_by_id on note_entity until told to stop
 * (at most 100000 rounds, so a lost stop flag cannot hang the test). */
static void *reader_worker(void *arg)
{
    struct worker *w = arg;
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    if (dbk_config_from_url(w->url, &cfg, &err) != DBK_OK ||
        dbk_conn_open(cfg, &c, &err) != DBK_OK) {
        worker_fail(w, "open", &err);
        dbk_config_free(cfg);
        return NULL;
    }
    dbk_db *db = dbk_conn_db(c);
    dbk_arena *a = dbk_arena_new(0);
    struct note in = {.title = "read me", .views = 7}, out, got;
    if (!a || dbk_db_exec(db, NOTE_DDL, NULL, 0, NULL, &err) != DBK_OK ||
        dbk_repo_create(db, &note_entity, &in, &out, a, &err) != DBK_OK)
        worker_fail(w, "setup", a ? &err : NULL);
    while (w->failures == 0 && w->rounds < 100000 &&
           !__atomic_load_n(w->stop, __ATOMIC_ACQUIRE)) {
        if (dbk_repo_find_by_id(db, &note_entity, dbk_int64(out.id), &got, a, &err) != DBK_OK)
            worker_fail(w, "find_by_id", &err);
        else if (got.views != 7 || strcmp(got.title, "read me") != 0)
            worker_fail(w, "find_by_id", NULL);
        dbk_arena_reset(a);
        if (w->rounds++ == 0)
            __atomic_add_fetch(w->ready, 1, __ATOMIC_RELEASE);
    }
    if (w->rounds == 0) /* failed before reading: do not keep the main thread waiting */
        __atomic_add_fetch(w->ready, 1, __ATOMIC_RELEASE);
    dbk_arena_free(a);
    dbk_conn_close(c);
    dbk_config_free(cfg);
    return NULL;
}

static void entity_registry_grows_while_read(void **state)
{
    (void)state;
    enum { NREADERS = 4 };
    static volatile int stop;
    static int ready;
    stop = 0;
    ready = 0;
    struct worker ws[NREADERS] = {0};
    char *urls[NREADERS];
    for (int i = 0; i < NREADERS; i++) {
        char name[32];
        snprintf(name, sizeof name, "grow%d", i);
        urls[i] = dbkt_sqlite_url(name);
        ws[i].url = urls[i];
        ws[i].id = i;
        ws[i].stop = &stop;
        ws[i].ready = &ready;
    }
    /* NMANY descriptors at distinct addresses, each naming its own table. */
    dbk_entity *many = calloc(NMANY, sizeof *many);
    char(*tables)[16] = calloc(NMANY, sizeof *tables);
    assert_non_null(many);
    assert_non_null(tables);
    char *url = dbkt_sqlite_url("many");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    for (int i = 0; i < NMANY; i++) {
        snprintf(tables[i], sizeof tables[i], "n%d", i);
        many[i] = (dbk_entity)DBK_ENTITY_PLAIN(tables[i], struct note, note_fields);
        char ddl[160];
        snprintf(ddl, sizeof ddl,
                 "CREATE TABLE n%d (id INTEGER PRIMARY KEY, title TEXT, views INTEGER, "
                 "created_at TEXT)",
                 i);
        dbkt_exec(db, ddl);
    }

    pthread_t th[NREADERS];
    for (int i = 0; i < NREADERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_worker, &ws[i]), 0);
    /* Register only once every reader is reading, so the growth happens
     * under their lookups (bounded: at most 30 s). */
    for (int i = 0; i < 3000 && __atomic_load_n(&ready, __ATOMIC_ACQUIRE) < NREADERS; i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    dbk_arena *a = dbk_arena_new(0);
    dbk_error err;
    bool ok = __atomic_load_n(&ready, __ATOMIC_ACQUIRE) == NREADERS;
    char why[1100] = "";
    if (!ok)
        snprintf(why, sizeof why, "the readers did not start within 30 s");
    for (int i = 0; i < NMANY && ok; i++) {
        const dbk_entity *e = &many[i];
        struct note in = {.title = tables[i], .views = i}, out;
        if (dbk_repo_create(db, e, &in, &out, a, &err) != DBK_OK) {
            ok = false;
            snprintf(why, sizeof why, "create in %s: %s", tables[i], err.message);
        }
        dbk_arena_reset(a);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < NREADERS; i++)
        pthread_join(th[i], NULL);
    if (!ok)
        fail_msg("%s", why);
    for (int i = 0; i < NREADERS; i++) {
        if (ws[i].failures)
            fail_msg("%s", ws[i].what);
        assert_true(ws[i].rounds > 0);
        free(urls[i]);
    }
    /* Each descriptor has its own state, none lost by the growth. */
    struct dbk__entity_priv **seen = calloc(NMANY, sizeof *seen);
    assert_non_null(seen);
    for (int i = 0; i < NMANY; i++) {
        seen[i] = dbk__priv(&many[i]);
        assert_non_null(seen[i]);
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(seen[i], seen[j]);
    }
    /* Every descriptor still maps to its own table after the growth. */
    for (int i = 0; i < NMANY; i++) {
        struct note got;
        DBKT_OK(dbk_repo_find_by_id(db, &many[i], dbk_int64(1), &got, a, &err), &err);
        assert_string_equal(got.title, tables[i]);
        assert_int_equal(got.views, i);
    }
    /* Release every other one, register them again, and use all of them. */
    for (int i = 0; i < NMANY; i += 2)
        dbk_entity_release(&many[i]);
    for (int i = 0; i < NMANY; i++) {
        if (i % 2 == 0)
            assert_null(dbk__priv(&many[i]));
        else
            assert_ptr_equal(dbk__priv(&many[i]), seen[i]);
    }
    free(seen);
    for (int i = 0; i < NMANY; i++) {
        int64_t n = 0;
        DBKT_OK(dbk_repo_count(db, &many[i], NULL, 0, &n, &err), &err);
        assert_int_equal(n, 1);
    }
    for (int i = 0; i < NMANY; i++) {
        assert_non_null(dbk__priv(&many[i]));
        dbk_entity_release(&many[i]);
        assert_null(dbk__priv(&many[i]));
    }
    dbk_entity_release(&note_entity);
    dbk_arena_free(a);
    dbk_conn_close(c);
    free(url);
    free(tables);
    free(many);
}

/* Descriptors created, used and released over and over at changing
 * addresses (as a program building them at run time would) while readers
 * use a long-lived one: released slots are reused, the long-lived entity
 * keeps its state throughout. */
static void entity_churn_reuses_released_slots(void **state)
{
    (void)state;
    enum { NREADERS = 2, NCHURN = 2000 };
    static volatile int stop;
    static int ready;
    stop = 0;
    ready = 0;
    struct worker ws[NREADERS] = {0};
    char *urls[NREADERS];
    for (int i = 0; i < NREADERS; i++) {
        char name[32];
        snprintf(name, sizeof name, "churn%d", i);
        urls[i] = dbkt_sqlite_url(name);
        ws[i].url = urls[i];
        ws[i].id = i;
        ws[i].stop = &stop;
        ws[i].ready = &ready;
    }
    char *url = dbkt_sqlite_url("churn");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, NOTE_DDL);
    dbk_error err;
    DBKT_OK(dbk_entity_init(&note_entity, &err), &err);
    struct dbk__entity_priv *keep = dbk__priv(&note_entity);
    assert_non_null(keep);

    pthread_t th[NREADERS];
    for (int i = 0; i < NREADERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_worker, &ws[i]), 0);
    for (int i = 0; i < 3000 && __atomic_load_n(&ready, __ATOMIC_ACQUIRE) < NREADERS; i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    bool ok = __atomic_load_n(&ready, __ATOMIC_ACQUIRE) == NREADERS;
    char why[1100] = "";
    if (!ok)
        snprintf(why, sizeof why, "the readers did not start within 30 s");
    dbk_entity *held[8] = {0}; /* a few alive at a time, at changing addresses */
    for (int i = 0; i < NCHURN && ok; i++) {
        int k = i % 8;
        if (held[k]) {
            dbk_entity_release(held[k]);
            if (dbk__priv(held[k])) {
                ok = false;
                snprintf(why, sizeof why, "round %d: released entity still registered", i);
            }
            free(held[k]);
        }
        held[k] = malloc(sizeof *held[k]);
        if (!held[k]) {
            ok = false;
            break;
        }
        *held[k] = (dbk_entity)DBK_ENTITY_PLAIN("notes", struct note, note_fields);
        int64_t n = -1;
        if (dbk_repo_count(db, held[k], NULL, 0, &n, &err) != DBK_OK || n != 0) {
            ok = false;
            snprintf(why, sizeof why, "round %d: count: %s", i, err.message);
        }
        if (dbk__priv(&note_entity) != keep) {
            ok = false;
            snprintf(why, sizeof why, "round %d: the long-lived entity lost its state", i);
        }
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < NREADERS; i++)
        pthread_join(th[i], NULL);
    for (int k = 0; k < 8; k++) {
        dbk_entity_release(held[k]);
        free(held[k]);
    }
    if (!ok)
        fail_msg("%s", why);
    for (int i = 0; i < NREADERS; i++) {
        if (ws[i].failures)
            fail_msg("%s", ws[i].what);
        free(urls[i]);
    }
    dbk_entity_release(&note_entity);
    dbk_conn_close(c);
    free(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(entity_static_const_used_from_16_threads),
    cmocka_unit_test(entity_release_then_reuse),
    cmocka_unit_test(entity_registry_grows_while_read),
    cmocka_unit_test(entity_churn_reuses_released_slots),
};

DBKT_MAIN(tests)
