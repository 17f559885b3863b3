/*
 * The dialects of PostgreSQL and SQLite (see dialect.h). Each is a constant
 * table of the SQL text that differs between the engines, owned by the
 * driver layer next to the drivers that run it. Where both engines write
 * the same text today (quoting, upsert, savepoints) one `std_` function
 * serves both tables; a third engine with other rules brings its own.
 */
#include "dialect.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- identifiers, parameters (the same on both engines today) ---- */

static void std_quote_ident(dbk__sb *sb, const char *id)
{
    dbk__sb_putn(sb, "\"", 1);
    for (const char *q = id; *q; q++) {
        if (*q == '"')
            dbk__sb_putn(sb, "\"", 1);
        dbk__sb_putn(sb, q, 1);
    }
    dbk__sb_putn(sb, "\"", 1);
}

static void pg_placeholder(dbk__sb *sb, int n, const char *cast)
{
    dbk__sb_printf(sb, "$%d", n);
    if (cast)
        dbk__sb_printf(sb, "::%s", cast);
}

static void sq_placeholder(dbk__sb *sb, int n, const char *cast)
{
    (void)cast;
    dbk__sb_printf(sb, "$%d", n);
}

/* ---- upsert: INSERT ... ON CONFLICT (target) DO UPDATE SET c = excluded.c
 * (PostgreSQL 9.5, SQLite 3.24; the same text on both) ---- */

static void std_upsert_sql(dbk__sb *sb, const char *const *target, size_t ntarget,
                           const char *const *set, size_t nset)
{
    dbk__sb_puts(sb, " ON CONFLICT (");
    for (size_t i = 0; i < ntarget; i++) {
        if (i)
            dbk__sb_puts(sb, ", ");
        std_quote_ident(sb, target[i]);
    }
    dbk__sb_puts(sb, ") DO UPDATE SET ");
    for (size_t i = 0; i < nset; i++) {
        if (i)
            dbk__sb_puts(sb, ", ");
        std_quote_ident(sb, set[i]);
        dbk__sb_puts(sb, " = excluded.");
        std_quote_ident(sb, set[i]);
    }
}

/* ---- key lists: a PostgreSQL array literal, a JSON array on SQLite ---- */

static void pg_key_list_text(dbk__sb *sb, const char *s)
{
    dbk__sb_putn(sb, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            dbk__sb_putn(sb, "\\", 1);
        dbk__sb_putn(sb, p, 1);
    }
    dbk__sb_putn(sb, "\"", 1);
}

static void sq_key_list_text(dbk__sb *sb, const char *s)
{
    dbk__sb_putn(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            dbk__sb_putn(sb, "\\", 1);
            dbk__sb_putn(sb, (const char *)p, 1);
        } else if (*p < 0x20) {
            dbk__sb_printf(sb, "\\u%04x", *p);
        } else {
            dbk__sb_putn(sb, (const char *)p, 1);
        }
    }
    dbk__sb_putn(sb, "\"", 1);
}

static void pg_in_key_list(dbk__sb *sb, int n, const char *elem)
{
    dbk__sb_printf(sb, " = ANY($%d::%s[])", n, elem);
}

static void sq_in_key_list(dbk__sb *sb, int n, const char *elem)
{
    (void)elem;
    dbk__sb_printf(sb, " IN (SELECT value FROM json_each($%d))", n);
}

/* ---- type names of dbkit's own tables ---- */

static const char *pg_type_name(dbk_type t)
{
    switch (t) {
    case DBK_TYPE_BOOL:
        return "BOOLEAN";
    case DBK_TYPE_INT64:
        return "BIGINT";
    case DBK_TYPE_DOUBLE:
        return "DOUBLE PRECISION";
    case DBK_TYPE_BLOB:
        return "BYTEA";
    case DBK_TYPE_TIMESTAMP:
        return "TIMESTAMPTZ";
    case DBK_TYPE_JSON:
        return "JSONB";
    default:
        return "TEXT";
    }
}

static const char *sq_type_name(dbk_type t)
{
    switch (t) {
    case DBK_TYPE_BOOL:
    case DBK_TYPE_INT64:
        return "INTEGER"; /* an INTEGER PRIMARY KEY is the rowid */
    case DBK_TYPE_DOUBLE:
        return "REAL";
    case DBK_TYPE_BLOB:
        return "BLOB";
    default:
        return "TEXT"; /* timestamps and JSON as text */
    }
}

/* ---- migration sections' timeouts (PostgreSQL only) ---- */

static void pg_timeouts_sql(bool local, int lock_ms, int stmt_ms, char *buf, size_t len)
{
    snprintf(buf, len, "SET %s lock_timeout = %d; SET %s statement_timeout = %d",
             local ? "LOCAL" : "SESSION", lock_ms, local ? "LOCAL" : "SESSION", stmt_ms);
}

/* ---- savepoints (the same on both engines) ---- */

static void std_savepoint_sql(enum dbk__sp_op op, const char *name, char *buf, size_t len)
{
    switch (op) {
    case DBK__SP_SET:
        snprintf(buf, len, "SAVEPOINT %s", name);
        break;
    case DBK__SP_RELEASE:
        snprintf(buf, len, "RELEASE SAVEPOINT %s", name);
        break;
    case DBK__SP_ROLLBACK:
        snprintf(buf, len, "ROLLBACK TO SAVEPOINT %s; RELEASE SAVEPOINT %s", name, name);
        break;
    }
}

static void pg_begin_sql(const dbk__begin_opts *o, char *buf, size_t len)
{
    static const char *const levels[] = {"", " ISOLATION LEVEL READ COMMITTED",
                                         " ISOLATION LEVEL REPEATABLE READ",
                                         " ISOLATION LEVEL SERIALIZABLE"};
    int iso = o->isolation >= 0 && o->isolation <= 3 ? o->isolation : 0;
    int n = snprintf(buf, len, "BEGIN%s%s%s", levels[iso], o->read_only ? " READ ONLY" : "",
                     o->deferrable ? " DEFERRABLE" : "");
    if (o->timeout_ms <= 0 || n < 0 || (size_t)n >= len)
        return;
    /* The server-side bound for the same deadline, local to the
     * transaction and in the BEGIN round trip (SET LOCAL: utility
     * statements, no planning; measured at about 1 us against 8-25 us for
     * a set_config() SELECT). No statement runs longer than the whole
     * transaction may - unless the session's own statement_timeout is
     * smaller, which is kept: raising it would outlast the driver's client
     * deadline. A transaction left idle by a stalled client is ended by the
     * server a grace period after the client's own deadline, which
     * normally ends it first, cleanly. */
    if (dbk__begin_bounds_statements(o))
        n += snprintf(buf + n, len - (size_t)n, "; SET LOCAL statement_timeout = %d",
                      o->timeout_ms);
    if (n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, "; SET LOCAL idle_in_transaction_session_timeout = %lld",
                 (long long)o->timeout_ms + o->idle_grace_ms);
}

static void sq_begin_sql(const dbk__begin_opts *o, char *buf, size_t len)
{
    /* IMMEDIATE takes the write lock now: two writers can never both hold
     * read locks and deadlock on the upgrade. A read-only transaction takes
     * no lock up front and refuses writes. */
    snprintf(buf, len, "%s",
             o->read_only ? "BEGIN DEFERRED; PRAGMA query_only = 1" : "BEGIN IMMEDIATE");
}

/* ---- documents: jsonb on PostgreSQL, JSON text on SQLite ---- */

static void pg_doc_table_sql(dbk__sb *sb, const char *table)
{
    dbk__sb_puts(sb, "CREATE TABLE IF NOT EXISTS ");
    std_quote_ident(sb, table);
    dbk__sb_puts(sb, " (id text PRIMARY KEY, doc jsonb NOT NULL);\n");
}

static void sq_doc_table_sql(dbk__sb *sb, const char *table)
{
    dbk__sb_puts(sb, "CREATE TABLE IF NOT EXISTS ");
    std_quote_ident(sb, table);
    dbk__sb_puts(sb, " (id TEXT PRIMARY KEY, doc TEXT NOT NULL CHECK (json_valid(doc)));\n");
}

/* '{a,b}': a text[] literal of the path's segments */
static void pg_path_array(dbk__sb *sb, const char *path)
{
    dbk__sb_puts(sb, "'{");
    for (const char *p = path; *p; p++)
        dbk__sb_putn(sb, *p == '.' ? "," : p, 1);
    dbk__sb_puts(sb, "}'");
}

static void pg_json_path_sql(dbk__sb *sb, const char *col, const char *path, bool scalar,
                             const char *cast)
{
    dbk__sb_printf(sb, "(%s #>%s ", col, scalar ? ">" : "");
    pg_path_array(sb, path);
    dbk__sb_puts(sb, ")");
    if (scalar && cast)
        dbk__sb_printf(sb, "::%s", cast);
}

static void sq_json_path_sql(dbk__sb *sb, const char *col, const char *path, bool scalar,
                             const char *cast)
{
    (void)scalar, (void)cast;
    dbk__sb_printf(sb, "json_extract(%s, '$.%s')", col, path);
}

static void pg_json_path_kind_sql(dbk__sb *sb, const char *col, const char *path)
{
    dbk__sb_printf(sb, "(%s #> ", col);
    pg_path_array(sb, path);
    dbk__sb_puts(sb, ")");
}

static void sq_json_path_kind_sql(dbk__sb *sb, const char *col, const char *path)
{
    dbk__sb_printf(sb, "json_type(%s, '$.%s')", col, path);
}

static void pg_json_array_has_sql(dbk__sb *sb, const char *col, const char *path, int n)
{
    dbk__sb_puts(sb, "(");
    pg_json_path_sql(sb, col, path, false, NULL);
    dbk__sb_printf(sb, " @> $%d::jsonb)", n);
}

static void sq_json_array_has_sql(dbk__sb *sb, const char *col, const char *path, int n)
{
    dbk__sb_printf(sb, "EXISTS (SELECT 1 FROM json_each(%s, '$.%s') WHERE value = $%d)", col,
                   path, n);
}

static void pg_json_param(dbk__sb *sb, int n)
{
    dbk__sb_printf(sb, "$%d::jsonb", n);
}

static void sq_json_param(dbk__sb *sb, int n)
{
    dbk__sb_printf(sb, "json($%d)", n);
}

#define IN_PATH "n.nspname = ANY (current_schemas(false))"
#define NOT_EXT(cls, col)                                                                   \
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '" cls "'::regclass "          \
    "AND d.objid = " col " AND d.deptype = 'e')"

static const dbk__dump_part pg_dump_parts[] = {
    {"extensions",
     "SELECT format('CREATE EXTENSION IF NOT EXISTS %I WITH SCHEMA %I;', e.extname, n.nspname) "
     "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
     "WHERE e.extname <> 'plpgsql' ORDER BY e.extname", "\n\n"},
    {"types",
     "SELECT format('CREATE TYPE %I.%I AS ENUM (%s);', n.nspname, t.typname, "
     "(SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) "
     "FROM pg_enum e WHERE e.enumtypid = t.oid)) "
     "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
     "WHERE t.typtype = 'e' AND " IN_PATH " AND " NOT_EXT("pg_type", "t.oid")
     " ORDER BY n.nspname, t.typname", "\n\n"},
    {"sequences",
     "SELECT format('CREATE SEQUENCE %I.%I;', n.nspname, c.relname) "
     "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE c.relkind = 'S' AND " IN_PATH " AND " NOT_EXT("pg_class", "c.oid")
     " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
     "AND d.objid = c.oid AND d.deptype = 'i') ORDER BY n.nspname, c.relname", "\n\n"},
    {"functions",
     "SELECT pg_get_functiondef(p.oid) || ';' "
     "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
     "WHERE p.prokind IN ('f', 'p') AND " IN_PATH " AND " NOT_EXT("pg_proc", "p.oid")
     " ORDER BY n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)", "\n\n"},
    {"tables",
     "SELECT format(E'CREATE TABLE %I.%I (\\n    %s\\n);', n.nspname, c.relname, "
     "(SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)) "
     "|| CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY' "
     "WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END "
     "|| CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' "
     "|| pg_get_expr(ad.adbin, ad.adrelid) || ') STORED' "
     "WHEN ad.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid) "
     "ELSE '' END "
     "|| CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, E',\\n    ' ORDER BY a.attnum) "
     "FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid "
     "AND ad.adnum = a.attnum WHERE a.attrelid = c.oid AND a.attnum > 0 "
     "AND NOT a.attisdropped)) "
     "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND " IN_PATH
     " AND " NOT_EXT("pg_class", "c.oid") " ORDER BY n.nspname, c.relname", "\n\n"},
    {"constraints",
     "SELECT format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s;', n.nspname, c.relname, "
     "co.conname, pg_get_constraintdef(co.oid, true)) "
     "FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid "
     "JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE co.contype IN ('p', 'u', 'c', 'x', 'f') AND co.conislocal AND c.relkind IN "
     "('r', 'p') AND NOT c.relispartition AND " IN_PATH " AND " NOT_EXT("pg_class", "c.oid")
     " ORDER BY co.contype = 'f', n.nspname, c.relname, co.conname", "\n\n"},
    {"indexes",
     "SELECT pg_get_indexdef(i.indexrelid) || ';' "
     "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
     "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE " IN_PATH " AND NOT t.relispartition AND " NOT_EXT("pg_class", "t.oid")
     " AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid "
     "AND co.contype IN ('p', 'u', 'x')) ORDER BY n.nspname, t.relname, c.relname", "\n\n"},
    {"views",
     "SELECT format(E'CREATE %sVIEW %I.%I AS\\n%s;', "
     "CASE c.relkind WHEN 'm' THEN 'MATERIALIZED ' ELSE '' END, n.nspname, c.relname, "
     "rtrim(pg_get_viewdef(c.oid, true), ';')) "
     "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE c.relkind IN ('v', 'm') AND " IN_PATH " AND " NOT_EXT("pg_class", "c.oid")
     " ORDER BY c.oid", "\n\n"},
    {"triggers",
     "SELECT pg_get_triggerdef(t.oid, true) || ';' "
     "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
     "JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE NOT t.tgisinternal AND " IN_PATH " AND " NOT_EXT("pg_class", "c.oid")
     " ORDER BY n.nspname, c.relname, t.tgname", "\n\n"},
};

static const dbk__dump_part sq_dump_parts[] = {
    {NULL,
     "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
     "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
     "ORDER BY CASE type WHEN 'table' THEN 1 WHEN 'index' THEN 2 "
     "WHEN 'view' THEN 3 WHEN 'trigger' THEN 4 ELSE 5 END, name",
     ";\n\n"},
};

/* ---- the cached repository's text keys ---- */

static bool cast_is(const char *cast, const char *name)
{
    return cast && strcasecmp(cast, name) == 0;
}

/* PostgreSQL: the catalog says the column's type and whether its collation
 * is deterministic (collisdeterministic exists from PostgreSQL 12 on; read
 * through to_jsonb so that older servers give NULL: all deterministic).
 * A field read as another type than text, varchar or uuid never keys. */
static int pg_text_key_probe(dbk__sb *sb, const char *table, const char *column,
                             const char *cast, dbk_value p[2], int *np)
{
    if (cast && !cast_is(cast, "uuid") && !cast_is(cast, "text") && !cast_is(cast, "varchar"))
        return DBK__TEXT_KEY_BYPASS;
    dbk__sb_puts(sb, "SELECT t.typname::text, COALESCE((to_jsonb(c) ->> 'collisdeterministic')::"
                     "boolean, true) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON "
                     "t.oid = a.atttypid LEFT JOIN pg_catalog.pg_collation c ON c.oid = "
                     "a.attcollation WHERE a.attrelid = to_regclass(quote_ident($1)) AND "
                     "a.attname = $2 AND NOT a.attisdropped");
    p[0] = dbk_text(table);
    p[1] = dbk_text(column);
    *np = 2;
    return DBK__TEXT_KEY_ASK;
}

static int pg_text_key_read(const dbk_result *res, const char *cast)
{
    const char *typ = NULL;
    size_t tl = 0;
    bool det = false;
    if (dbk_result_nrows(res) != 1 || dbk_result_get_text(res, 0, 0, &typ, &tl, NULL) != DBK_OK ||
        dbk_result_get_bool(res, 0, 1, &det, NULL) != DBK_OK)
        return DBK__TEXT_KEY_ASK;
    if (strcmp(typ, "uuid") == 0)
        return DBK__TEXT_KEY_UUID;
    if ((strcmp(typ, "text") == 0 || strcmp(typ, "varchar") == 0) && det && !cast_is(cast, "uuid"))
        return DBK__TEXT_KEY_BINARY;
    return DBK__TEXT_KEY_BYPASS;
}

/* SQLite: does the column's collation make 'a' = 'A' or 'a' = 'a '? That
 * catches NOCASE and RTRIM, the only built-in non-binary collations. The
 * subquery column carries the column's collation (the leftmost term of a
 * compound decides it); its one row is 'a'. */
static int sq_text_key_probe(dbk__sb *sb, const char *table, const char *column,
                             const char *cast, dbk_value p[2], int *np)
{
    (void)cast;
    (void)p;
    dbk__sb_puts(sb, "SELECT x = 'A', x = 'a ' FROM (SELECT ");
    std_quote_ident(sb, column);
    dbk__sb_puts(sb, " AS x FROM ");
    std_quote_ident(sb, table);
    dbk__sb_puts(sb, " WHERE 0 UNION ALL SELECT 'a')");
    *np = 0;
    return DBK__TEXT_KEY_ASK;
}

static int sq_text_key_read(const dbk_result *res, const char *cast)
{
    (void)cast;
    int64_t ci = 1, rt = 1;
    if (dbk_result_nrows(res) != 1 || dbk_result_get_int64(res, 0, 0, &ci, NULL) != DBK_OK ||
        dbk_result_get_int64(res, 0, 1, &rt, NULL) != DBK_OK)
        return DBK__TEXT_KEY_ASK;
    return ci == 0 && rt == 0 ? DBK__TEXT_KEY_BINARY : DBK__TEXT_KEY_BYPASS;
}

static const dbk__dialect pg_dialect = {
    .engine = DBK_ENGINE_POSTGRES,
    .name = "PostgreSQL",
    .quote_ident = std_quote_ident,
    .placeholder = pg_placeholder,
    .max_params = 65535,
    .returning = " RETURNING ",
    .upsert_sql = std_upsert_sql,
    .bulk_copy = true,
    .batch_one_trip = true,
    .key_list_open = "{",
    .key_list_close = "}",
    .key_list_text = pg_key_list_text,
    .in_key_list = pg_in_key_list,
    .begin_sql = pg_begin_sql,
    .savepoint_sql = std_savepoint_sql,
    .read_only_unlocked = false,
    .read_only_end_sql = NULL,
    .count_estimate_sql = "SELECT COALESCE((SELECT reltuples::bigint FROM pg_class "
                          "WHERE oid = to_regclass($1)), -1)",
    .offset_without_limit = "",
    .table_exists_sql = "SELECT count(*) FROM (SELECT to_regclass($1) AS t) x WHERE t IS NOT NULL",
    .list_tables_sql = "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = "
                       "c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = "
                       "ANY (current_schemas(false)) AND c.relname NOT LIKE 'dbkit\\_%' ORDER BY 1",
    .dump_preamble = "SET check_function_bodies = false;\n",
    .dump_parts = pg_dump_parts,
    .ndump_parts = sizeof pg_dump_parts / sizeof pg_dump_parts[0],
    .describes_params = true,
    .type_name = pg_type_name,
    .timeouts_sql = pg_timeouts_sql,
    .timeouts_reset_sql = "RESET lock_timeout; RESET statement_timeout",
    .migrate_via_script = true,
    .lock_try_sql = "SELECT pg_try_advisory_lock($1)",
    .unlock_sql = "SELECT pg_advisory_unlock($1)",
    .doc_table_sql = pg_doc_table_sql,
    .json_path_sql = pg_json_path_sql,
    .json_path_kind_sql = pg_json_path_kind_sql,
    .json_null = "'null'::jsonb",
    .json_array_has_sql = pg_json_array_has_sql,
    .json_param = pg_json_param,
    .json_binary = true,
    .has_bool = true,
    .false_sql = "false",
    .asc_nulls_first = " ASC NULLS FIRST",
    .desc_nulls_last = " DESC NULLS LAST",
    .select_for_update = " FOR UPDATE",
    .no_limit = {.type = DBK_TYPE_NULL},
    .doc_backend = true,
    .text_key_probe = pg_text_key_probe,
    .text_key_read = pg_text_key_read,
};

static const dbk__dialect sq_dialect = {
    .engine = DBK_ENGINE_SQLITE,
    .name = "SQLite",
    .quote_ident = std_quote_ident,
    .placeholder = sq_placeholder,
    .max_params = 999,
    .returning = " RETURNING ",
    .upsert_sql = std_upsert_sql,
    .bulk_copy = false,
    .batch_one_trip = false,
    .key_list_open = "[",
    .key_list_close = "]",
    .key_list_text = sq_key_list_text,
    .in_key_list = sq_in_key_list,
    .begin_sql = sq_begin_sql,
    .savepoint_sql = std_savepoint_sql,
    .read_only_unlocked = true,
    .read_only_end_sql = "PRAGMA query_only = 0",
    .count_estimate_sql = NULL,
    .offset_without_limit = " LIMIT -1",
    .table_exists_sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
    .list_tables_sql = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name "
                       "NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'dbkit\\_%' "
                       "ESCAPE '\\' ORDER BY 1",
    .dump_preamble = "",
    .dump_parts = sq_dump_parts,
    .ndump_parts = 1,
    .describes_params = false,
    .type_name = sq_type_name,
    .timeouts_sql = NULL,
    .timeouts_reset_sql = NULL,
    .migrate_via_script = false,
    .lock_try_sql = NULL,
    .unlock_sql = NULL,
    .doc_table_sql = sq_doc_table_sql,
    .json_path_sql = sq_json_path_sql,
    .json_path_kind_sql = sq_json_path_kind_sql,
    .json_null = "'null'",
    .json_array_has_sql = sq_json_array_has_sql,
    .json_param = sq_json_param,
    .json_binary = false,
    .has_bool = false,
    .false_sql = "0",
    .asc_nulls_first = " ASC",
    .desc_nulls_last = " DESC",
    .select_for_update = "",
    .no_limit = {.type = DBK_TYPE_INT64, .u.i = -1},
    .doc_backend = true,
    .text_key_probe = sq_text_key_probe,
    .text_key_read = sq_text_key_read,
};

const dbk__dialect *dbk__dialect_of(dbk_engine engine)
{
    return engine == DBK_ENGINE_SQLITE ? &sq_dialect : &pg_dialect;
}

const dbk__dialect *dbk__dialect_find(dbk_engine engine)
{
    switch (engine) {
    case DBK_ENGINE_SQLITE: return &sq_dialect;
    case DBK_ENGINE_POSTGRES: return &pg_dialect;
    default: return NULL;
    }
}
