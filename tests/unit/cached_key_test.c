/* dbkit:valgrind
 * Cache keys of the cached repository (src/cache/cached_repo.c: the key
 * builders are file-local, so they are reached through the smallest public
 * calls that need no server: dbk_cached_repo_find_by_id / dbk_cached_repo_find_by on
 * SQLite :memory: with the memory cache). A lookup stores its row under
 * "<table>:<column>:" + the value as the column stores it, which the test
 * reads back with dbk_cache_get; lookups without such a key store nothing. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

struct item {
    int64_t id;
    char *name;
    char *label;
};

static const dbk_field item_fields[] = {
    DBK_FIELD(struct item, id, "id", DBK_TYPE_INT64, DBK_F_PK),
    DBK_FIELD(struct item, name, "name", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct item, label, "label", DBK_TYPE_TEXT, DBK_F_UNIQUE),
};
static dbk_entity item_entity = DBK_ENTITY_PLAIN("items", struct item, item_fields);

struct fx {
    dbk_conn *conn;
    dbk_db *db;
    dbk_cache *cache;
    dbk_cached_repo *r;
    dbk_arena *arena;
};

static void fx_open(struct fx *f)
{
    dbk_error err = {0};
    f->conn = dbkt_open("sqlite::memory:");
    f->db = dbk_conn_db(f->conn);
    /* label compares case-insensitively: it has no byte key */
    DBKT_OK(dbk_db_exec_script(f->db,
                               "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
                               "label TEXT COLLATE NOCASE UNIQUE)",
                               &err),
            &err);
    dbk_cache_opts o;
    memset(&o, 0, sizeof o);
    o.url = "memory:";
    o.key_prefix = "t:";
    DBKT_OK(dbk_cache_open(&o, &f->cache, &err), &err);
    DBKT_OK(dbk_cached_repo_new(f->cache, &item_entity, NULL, &f->r, &err), &err);
    f->arena = dbk_arena_new(0);
    assert_non_null(f->arena);
}

static void fx_close(struct fx *f)
{
    dbk_arena_free(f->arena);
    dbk_cached_repo_free(f->r);
    dbk_cache_close(f->cache);
    dbk_conn_close(f->conn);
}

static void insert(struct fx *f, int64_t id, const char *name, size_t namelen, const char *label)
{
    dbk_error err = {0};
    dbk_value p[3] = {dbk_int64(id), dbk_textn(name, namelen), dbk_text(label)};
    DBKT_OK(dbk_db_exec(f->db, "INSERT INTO items (id, name, label) VALUES (?, ?, ?)", p, 3, NULL,
                        &err),
            &err);
}

/* True when the cache holds a value under key[0..len). */
static bool cached(struct fx *f, const void *key, size_t len)
{
    void *val = NULL;
    size_t vlen = 0;
    dbk_error err = {0};
    dbk_rc rc = dbk_cache_get(f->cache, key, len, &val, &vlen, &err);
    dbk_free(val);
    if (rc != DBK_OK && rc != DBK_ENOT_FOUND)
        fail_msg("dbk_cache_get: %s", err.message);
    return rc == DBK_OK;
}

static void forget(struct fx *f, const char *key, size_t len)
{
    dbk_error err = {0};
    DBKT_OK(dbk_cache_delete(f->cache, key, len, &err), &err);
}

static void cached_key_int_id_in_decimal(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    dbk_error err = {0};
    struct item it;
    insert(&f, 5, "five", 4, "Five");
    insert(&f, -9223372036854775807LL - 1, "min", 3, "Min");
    assert_false(cached(&f, "items:id:5", 10));
    DBKT_OK(dbk_cached_repo_find_by_id(f.r, f.db, dbk_int64(5), &it, f.arena, &err), &err);
    assert_true(cached(&f, "items:id:5", 10));
    DBKT_OK(dbk_cached_repo_find_by_id(f.r, f.db, dbk_int64(INT64_MIN), &it, f.arena, &err), &err);
    assert_true(cached(&f, "items:id:-9223372036854775808", 29));
    /* a text of decimal digits is looked up as the same int64 key */
    const char *spellings[] = {"5", "0005", "+5"};
    for (size_t i = 0; i < 3; i++) {
        forget(&f, "items:id:5", 10);
        DBKT_OK(dbk_cached_repo_find_by_id(f.r, f.db, dbk_text(spellings[i]), &it, f.arena, &err),
                &err);
        assert_true(it.id == 5);
        if (!cached(&f, "items:id:5", 10))
            fail_msg("lookup by \"%s\" not stored under items:id:5", spellings[i]);
        assert_false(cached(&f, "items:id:0005", 13));
    }
    fx_close(&f);
}

static void cached_key_text_bytes_as_stored(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    dbk_error err = {0};
    struct item it;
    /* ':' inside, invalid UTF-8, an empty name */
    const char odd[] = "a:b\xff\xfe";
    insert(&f, 1, odd, 5, "one");
    insert(&f, 2, "", 0, "two");
    DBKT_OK(dbk_cached_repo_find_by(f.r, f.db, "name", dbk_textn(odd, 5), &it, f.arena, &err),
            &err);
    assert_true(cached(&f, "items:name:a:b\xff\xfe", 16));
    DBKT_OK(dbk_cached_repo_find_by(f.r, f.db, "name", dbk_textn("", 0), &it, f.arena, &err), &err);
    assert_true(it.id == 2);
    assert_true(cached(&f, "items:name:", 11));
    fx_close(&f);
}

static void cached_key_none_for_unkeyable_lookups(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    dbk_error err = {0};
    struct item it;
    /* a name just over the key limit (1 KiB with the prefix) */
    size_t n = 1100;
    char *huge = malloc(n + 1);
    assert_non_null(huge);
    memset(huge, 'h', n);
    huge[n] = '\0';
    insert(&f, 3, huge, n, "Three");
    dbk_cache_stats before, after;
    DBKT_OK(dbk_cache_get_stats(f.cache, &before, &err), &err);
    DBKT_OK(dbk_cached_repo_find_by(f.r, f.db, "name", dbk_textn(huge, n), &it, f.arena, &err),
            &err);
    assert_true(it.id == 3);
    /* a NOCASE column: 'three' finds 'Three', so no byte key may hold it */
    DBKT_OK(dbk_cached_repo_find_by(f.r, f.db, "label", dbk_text("three"), &it, f.arena, &err),
            &err);
    assert_true(it.id == 3);
    /* an id text that is not a canonical integer */
    DBKT_RC(DBK_ENOT_FOUND,
            dbk_cached_repo_find_by_id(f.r, f.db, dbk_text("3x"), &it, f.arena, &err));
    DBKT_OK(dbk_cache_get_stats(f.cache, &after, &err), &err);
    assert_true(after.entries == before.entries);
    assert_true(after.loads == before.loads);
    assert_false(cached(&f, "items:label:three", 17));
    assert_false(cached(&f, "items:label:Three", 17));
    free(huge);
    fx_close(&f);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cached_key_int_id_in_decimal),
    cmocka_unit_test(cached_key_text_bytes_as_stored),
    cmocka_unit_test(cached_key_none_for_unkeyable_lookups),
};

DBKT_MAIN(tests)
