/* dbkit:valgrind
 * The engine dialects (src/driver/dialect.h) without a server: the SQL
 * text each engine's table writes for what the layers above ask of it
 * (upsert tails, quoted identifiers, placeholders with casts, key lists,
 * savepoints, BEGIN, the document layer's JSON reads), and that every piece a new engine must provide is
 * there on both engines. A repository or transaction test fails only when
 * the server refuses the text; these pin the text itself. */
#include <stdlib.h>
#include <string.h>

#include "driver/dialect.h"
#include "testutil.h"

static const dbk__dialect *pg(void)
{
    return dbk__dialect_of(DBK_ENGINE_POSTGRES);
}

static const dbk__dialect *sq(void)
{
    return dbk__dialect_of(DBK_ENGINE_SQLITE);
}

static void dialect_every_piece_on_both_engines(void **state)
{
    (void)state;
    const dbk__dialect *d[2] = {pg(), sq()};
    for (int i = 0; i < 2; i++) {
        assert_non_null(d[i]->name);
        assert_non_null(d[i]->quote_ident);
        assert_non_null(d[i]->placeholder);
        assert_true(d[i]->max_params >= 999);
        assert_non_null(d[i]->returning);
        assert_non_null(d[i]->upsert_sql);
        assert_non_null(d[i]->key_list_open);
        assert_non_null(d[i]->key_list_close);
        assert_non_null(d[i]->key_list_text);
        assert_non_null(d[i]->in_key_list);
        assert_non_null(d[i]->begin_sql);
        assert_non_null(d[i]->savepoint_sql);
        assert_non_null(d[i]->offset_without_limit);
        assert_non_null(d[i]->table_exists_sql);
        assert_non_null(d[i]->list_tables_sql);
        assert_non_null(d[i]->dump_preamble);
        assert_true(d[i]->ndump_parts > 0);
        for (size_t k = 0; k < d[i]->ndump_parts; k++) {
            assert_non_null(d[i]->dump_parts[k].sql);
            assert_non_null(d[i]->dump_parts[k].sep);
        }
        assert_non_null(d[i]->type_name);
        assert_true((d[i]->timeouts_sql == NULL) == (d[i]->timeouts_reset_sql == NULL));
        /* a session lock comes with its release */
        assert_true((d[i]->lock_try_sql == NULL) == (d[i]->unlock_sql == NULL));
        assert_non_null(d[i]->doc_table_sql);
        assert_non_null(d[i]->json_path_sql);
        assert_non_null(d[i]->json_path_kind_sql);
        assert_non_null(d[i]->json_null);
        assert_non_null(d[i]->json_array_has_sql);
        assert_non_null(d[i]->json_param);
        assert_non_null(d[i]->false_sql);
        assert_non_null(d[i]->asc_nulls_first);
        assert_non_null(d[i]->desc_nulls_last);
        assert_non_null(d[i]->select_for_update);
        assert_true(d[i]->doc_backend);
        assert_non_null(d[i]->text_key_probe);
        assert_non_null(d[i]->text_key_read);
        assert_ptr_equal(dbk__dialect_find(d[i]->engine), d[i]);
        assert_int_equal(dbk__engine_slot(d[i]->engine), (int)d[i]->engine);
    }
    /* the checks that refuse an engine do not default one */
    assert_null(dbk__dialect_find((dbk_engine)0));
    assert_null(dbk__dialect_find((dbk_engine)99));
    assert_int_equal(dbk__engine_slot((dbk_engine)0), 0);
    assert_int_equal(dbk__engine_slot((dbk_engine)DBK__ENGINE_SLOTS), 0);
    assert_int_equal(dbk__engine_slot((dbk_engine)-1), 0);
    assert_int_equal(pg()->engine, DBK_ENGINE_POSTGRES);
    assert_int_equal(sq()->engine, DBK_ENGINE_SQLITE);
    assert_ptr_equal(dbk__dialect_of((dbk_engine)0), pg()); /* unknown: PostgreSQL */
    assert_int_equal(sq()->max_params, 999);
    assert_int_equal(pg()->max_params, 65535);
}

static void dialect_upsert_sql_per_engine(void **state)
{
    (void)state;
    const char *target[] = {"email"};
    const char *set[] = {"name", "odd\"col"};
    const dbk__dialect *d[2] = {pg(), sq()};
    for (int i = 0; i < 2; i++) {
        dbk__sb sb = {0};
        d[i]->upsert_sql(&sb, target, 1, set, 2);
        assert_false(sb.oom);
        assert_string_equal(sb.p, " ON CONFLICT (\"email\") DO UPDATE SET \"name\" = "
                                  "excluded.\"name\", \"odd\"\"col\" = excluded.\"odd\"\"col\"");
        dbk__sb_free(&sb);
        /* a composite target, one column set */
        const char *t2[] = {"a", "b"};
        d[i]->upsert_sql(&sb, t2, 2, t2, 1);
        assert_string_equal(sb.p, " ON CONFLICT (\"a\", \"b\") DO UPDATE SET \"a\" = excluded.\"a\"");
        dbk__sb_free(&sb);
        assert_string_equal(d[i]->returning, " RETURNING ");
    }
}

static void dialect_identifiers_and_placeholders(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    pg()->quote_ident(&sb, "we\"ird");
    sq()->quote_ident(&sb, "");
    assert_string_equal(sb.p, "\"we\"\"ird\"\"\"");
    dbk__sb_free(&sb);
    /* the cast is PostgreSQL's; SQLite has none and drops it */
    pg()->placeholder(&sb, 7, "uuid");
    dbk__sb_puts(&sb, " ");
    pg()->placeholder(&sb, 12, NULL);
    dbk__sb_puts(&sb, " ");
    sq()->placeholder(&sb, 7, "uuid");
    assert_string_equal(sb.p, "$7::uuid $12 $7");
    dbk__sb_free(&sb);
}

static void dialect_key_lists_escape_per_engine(void **state)
{
    (void)state;
    const char *key = "a\"b\\c\x01" "d\n";
    dbk__sb sb = {0};
    dbk__sb_puts(&sb, pg()->key_list_open);
    pg()->key_list_text(&sb, key);
    dbk__sb_puts(&sb, pg()->key_list_close);
    /* an array literal element: quote and backslash escaped, bytes kept */
    assert_string_equal(sb.p, "{\"a\\\"b\\\\c\x01" "d\n\"}");
    dbk__sb_free(&sb);
    dbk__sb_puts(&sb, sq()->key_list_open);
    sq()->key_list_text(&sb, key);
    dbk__sb_puts(&sb, sq()->key_list_close);
    /* JSON: control characters must be \u escapes or json_each refuses */
    assert_string_equal(sb.p, "[\"a\\\"b\\\\c\\u0001d\\u000a\"]");
    dbk__sb_free(&sb);
    pg()->in_key_list(&sb, 1, "bigint");
    sq()->in_key_list(&sb, 2, "bigint");
    assert_string_equal(sb.p, " = ANY($1::bigint[]) IN (SELECT value FROM json_each($2))");
    dbk__sb_free(&sb);
}

static void dialect_transactions(void **state)
{
    (void)state;
    char buf[512];
    const dbk__dialect *d[2] = {pg(), sq()};
    for (int i = 0; i < 2; i++) {
        d[i]->savepoint_sql(DBK__SP_SET, "dbk_sp_2", buf, sizeof buf);
        assert_string_equal(buf, "SAVEPOINT dbk_sp_2");
        d[i]->savepoint_sql(DBK__SP_RELEASE, "dbk_sp_2", buf, sizeof buf);
        assert_string_equal(buf, "RELEASE SAVEPOINT dbk_sp_2");
        d[i]->savepoint_sql(DBK__SP_ROLLBACK, "dbk_sp_2", buf, sizeof buf);
        assert_string_equal(buf, "ROLLBACK TO SAVEPOINT dbk_sp_2; RELEASE SAVEPOINT dbk_sp_2");
    }
    dbk__begin_opts o = {.isolation = 3, .read_only = true, .deferrable = true};
    pg()->begin_sql(&o, buf, sizeof buf);
    assert_string_equal(buf, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE");
    o = (dbk__begin_opts){.timeout_ms = 500, .idle_grace_ms = 1000};
    pg()->begin_sql(&o, buf, sizeof buf);
    assert_string_equal(buf, "BEGIN; SET LOCAL statement_timeout = 500; SET LOCAL "
                             "idle_in_transaction_session_timeout = 1500");
    /* a session statement_timeout below the transaction's is kept */
    o.session_stmt_timeout_ms = 200;
    pg()->begin_sql(&o, buf, sizeof buf);
    assert_string_equal(buf, "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 1500");
    o = (dbk__begin_opts){.read_only = true};
    sq()->begin_sql(&o, buf, sizeof buf);
    assert_string_equal(buf, "BEGIN DEFERRED; PRAGMA query_only = 1");
    assert_string_equal(sq()->read_only_end_sql, "PRAGMA query_only = 0");
    assert_true(sq()->read_only_unlocked);
    assert_null(pg()->read_only_end_sql);
    assert_false(pg()->read_only_unlocked);
    o.read_only = false;
    sq()->begin_sql(&o, buf, sizeof buf);
    assert_string_equal(buf, "BEGIN IMMEDIATE");
}

/* What migrate writes: its own tables' column types, the section timeouts. */
static void dialect_migration_pieces(void **state)
{
    (void)state;
    assert_string_equal(pg()->type_name(DBK_TYPE_INT64), "BIGINT");
    assert_string_equal(pg()->type_name(DBK_TYPE_TIMESTAMP), "TIMESTAMPTZ");
    assert_string_equal(pg()->type_name(DBK_TYPE_TEXT), "TEXT");
    /* an INTEGER PRIMARY KEY is SQLite's rowid: not BIGINT */
    assert_string_equal(sq()->type_name(DBK_TYPE_INT64), "INTEGER");
    assert_string_equal(sq()->type_name(DBK_TYPE_TIMESTAMP), "TEXT");
    assert_string_equal(sq()->type_name((dbk_type)99), "TEXT");
    char buf[160];
    pg()->timeouts_sql(true, 5000, 0, buf, sizeof buf);
    assert_string_equal(buf, "SET LOCAL lock_timeout = 5000; SET LOCAL statement_timeout = 0");
    pg()->timeouts_sql(false, 1, 600000, buf, sizeof buf);
    assert_string_equal(buf, "SET SESSION lock_timeout = 1; SET SESSION statement_timeout = 600000");
    assert_null(sq()->timeouts_sql);
    assert_true(pg()->migrate_via_script);
    assert_false(sq()->migrate_via_script);
    assert_non_null(pg()->lock_try_sql);
    assert_null(sq()->lock_try_sql); /* the migration transaction locks */
}

/* What the document layer writes over its JSON column: the table, path
 * reads typed or raw, the JSON null, array membership, JSON parameters,
 * sort and index directions, the row lock of find-and-update, no limit. */
static void dialect_document_pieces(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    pg()->doc_table_sql(&sb, "users");
    assert_string_equal(sb.p, "CREATE TABLE IF NOT EXISTS \"users\" (id text PRIMARY KEY, "
                              "doc jsonb NOT NULL);\n");
    dbk__sb_free(&sb);
    sq()->doc_table_sql(&sb, "users");
    assert_string_equal(sb.p, "CREATE TABLE IF NOT EXISTS \"users\" (id TEXT PRIMARY KEY, "
                              "doc TEXT NOT NULL CHECK (json_valid(doc)));\n");
    dbk__sb_free(&sb);

    /* PostgreSQL: #>> reads a scalar as text, then the cast; #> the jsonb */
    pg()->json_path_sql(&sb, "doc", "a.b_1", true, "bigint");
    dbk__sb_puts(&sb, " ");
    pg()->json_path_sql(&sb, "doc", "email", true, NULL);
    dbk__sb_puts(&sb, " ");
    pg()->json_path_sql(&sb, "doc", "meta.k", false, "bigint");
    assert_string_equal(sb.p,
                        "(doc #>> '{a,b_1}')::bigint (doc #>> '{email}') (doc #> '{meta,k}')");
    dbk__sb_free(&sb);
    /* SQLite: json_extract returns SQL values: one form */
    sq()->json_path_sql(&sb, "doc", "a.b_1", true, "bigint");
    dbk__sb_puts(&sb, " ");
    sq()->json_path_sql(&sb, "doc", "meta.k", false, NULL);
    assert_string_equal(sb.p, "json_extract(doc, '$.a.b_1') json_extract(doc, '$.meta.k')");
    dbk__sb_free(&sb);

    /* missing (NULL) versus JSON null */
    pg()->json_path_kind_sql(&sb, "doc", "a.b");
    dbk__sb_printf(&sb, " = %s ", pg()->json_null);
    sq()->json_path_kind_sql(&sb, "doc", "a.b");
    dbk__sb_printf(&sb, " = %s", sq()->json_null);
    assert_string_equal(sb.p, "(doc #> '{a,b}') = 'null'::jsonb json_type(doc, '$.a.b') = 'null'");
    dbk__sb_free(&sb);

    pg()->json_array_has_sql(&sb, "doc", "tags", 3);
    assert_string_equal(sb.p, "((doc #> '{tags}') @> $3::jsonb)");
    dbk__sb_free(&sb);
    sq()->json_array_has_sql(&sb, "doc", "tags", 3);
    assert_string_equal(sb.p, "EXISTS (SELECT 1 FROM json_each(doc, '$.tags') WHERE value = $3)");
    dbk__sb_free(&sb);

    pg()->json_param(&sb, 2);
    dbk__sb_puts(&sb, " ");
    sq()->json_param(&sb, 2);
    assert_string_equal(sb.p, "$2::jsonb json($2)");
    dbk__sb_free(&sb);

    assert_true(pg()->json_binary);
    assert_false(sq()->json_binary);
    assert_true(pg()->has_bool);
    assert_false(sq()->has_bool);
    assert_string_equal(pg()->false_sql, "false");
    assert_string_equal(sq()->false_sql, "0");
    /* NULLs (missing paths) first ascending: SQLite's own order */
    assert_string_equal(pg()->asc_nulls_first, " ASC NULLS FIRST");
    assert_string_equal(pg()->desc_nulls_last, " DESC NULLS LAST");
    assert_string_equal(sq()->asc_nulls_first, " ASC");
    assert_string_equal(sq()->desc_nulls_last, " DESC");
    assert_string_equal(pg()->select_for_update, " FOR UPDATE");
    assert_string_equal(sq()->select_for_update, "");
    /* LIMIT NULL and LIMIT -1: no limit */
    assert_int_equal(pg()->no_limit.type, DBK_TYPE_NULL);
    assert_int_equal(sq()->no_limit.type, DBK_TYPE_INT64);
    assert_int_equal(sq()->no_limit.u.i, -1);
}

/* The cached repository's question "does this text column compare
 * bytes?": the query text per engine, the cast that decides without a
 * query, and SQLite's answer read from a real in-memory database (binary,
 * NOCASE and RTRIM columns; no table yet: ask again). */
static void dialect_cached_repo_text_key_probe(void **state)
{
    (void)state;
    dbk__sb sb = {0};
    dbk_value p[2];
    int np = -1;
    assert_int_equal(pg()->text_key_probe(&sb, "users", "email", NULL, p, &np),
                     DBK__TEXT_KEY_ASK);
    assert_string_equal(
        sb.p, "SELECT t.typname::text, COALESCE((to_jsonb(c) ->> 'collisdeterministic')::boolean, "
              "true) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = "
              "a.atttypid LEFT JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation WHERE "
              "a.attrelid = to_regclass(quote_ident($1)) AND a.attname = $2 AND NOT "
              "a.attisdropped");
    assert_int_equal(np, 2);
    assert_string_equal(p[0].u.bytes.ptr, "users");
    assert_string_equal(p[1].u.bytes.ptr, "email");
    free(sb.p);
    /* a field read as another type never keys; uuid, text, varchar ask */
    static const char *const ask[] = {"uuid", "TEXT", "varchar"};
    for (int i = 0; i < 3; i++) {
        sb = (dbk__sb){0};
        assert_int_equal(pg()->text_key_probe(&sb, "t", "c", ask[i], p, &np), DBK__TEXT_KEY_ASK);
        free(sb.p);
    }
    sb = (dbk__sb){0};
    assert_int_equal(pg()->text_key_probe(&sb, "t", "c", "citext", p, &np),
                     DBK__TEXT_KEY_BYPASS);
    free(sb.p);

    sb = (dbk__sb){0};
    assert_int_equal(sq()->text_key_probe(&sb, "we\"ird", "e\"mail", "citext", p, &np),
                     DBK__TEXT_KEY_ASK);
    assert_string_equal(sb.p, "SELECT x = 'A', x = 'a ' FROM (SELECT \"e\"\"mail\" AS x FROM "
                              "\"we\"\"ird\" WHERE 0 UNION ALL SELECT 'a')");
    assert_int_equal(np, 0);
    free(sb.p);

    dbk_conn *conn = dbkt_open("sqlite::memory:");
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db,
                               "CREATE TABLE t (b TEXT, n TEXT COLLATE NOCASE, r TEXT COLLATE "
                               "RTRIM)",
                               &err),
            &err);
    static const struct {
        const char *table, *column;
        int mode;
    } cases[] = {
        {"t", "b", DBK__TEXT_KEY_BINARY},
        {"t", "n", DBK__TEXT_KEY_BYPASS},
        {"t", "r", DBK__TEXT_KEY_BYPASS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb = (dbk__sb){0};
        sq()->text_key_probe(&sb, cases[i].table, cases[i].column, NULL, p, &np);
        dbk_result *res = NULL;
        DBKT_OK(dbk_db_query(db, sb.p, p, (size_t)np, &res, &err), &err);
        assert_int_equal(sq()->text_key_read(res, NULL), cases[i].mode);
        dbk_result_free(res);
        free(sb.p);
    }
    /* no such table: the query fails, the caller asks again later */
    sb = (dbk__sb){0};
    sq()->text_key_probe(&sb, "missing", "b", NULL, p, &np);
    dbk_result *res = NULL;
    assert_int_not_equal(dbk_db_query(db, sb.p, p, (size_t)np, &res, &err), DBK_OK);
    free(sb.p);
    /* an empty result says nothing */
    DBKT_OK(dbk_db_query(db, "SELECT 1, 1 WHERE 0", NULL, 0, &res, &err), &err);
    assert_int_equal(sq()->text_key_read(res, NULL), DBK__TEXT_KEY_ASK);
    assert_int_equal(pg()->text_key_read(res, NULL), DBK__TEXT_KEY_ASK);
    dbk_result_free(res);
    dbk_conn_close(conn);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(dialect_every_piece_on_both_engines),
    cmocka_unit_test(dialect_upsert_sql_per_engine),
    cmocka_unit_test(dialect_identifiers_and_placeholders),
    cmocka_unit_test(dialect_key_lists_escape_per_engine),
    cmocka_unit_test(dialect_transactions),
    cmocka_unit_test(dialect_migration_pieces),
    cmocka_unit_test(dialect_document_pieces),
    cmocka_unit_test(dialect_cached_repo_text_key_probe),
};

DBKT_MAIN(tests)
