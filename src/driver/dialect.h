/*
 * The SQL dialect of an engine: what differs in the SQL text that the
 * layers above the driver write (transactions, repository queries, the
 * migrator, the code generator). Each
 * engine has one constant dialect; a layer asks dbk__dialect_of(engine)
 * instead of branching on the engine, so a third engine is one more
 * dialect (and its driver), not edits in every module.
 *
 * docs/architecture.md ("Engine dialect") lists what a new engine
 * implements: identifiers and placeholders, the parameter limit,
 * RETURNING and the upsert form, key lists, the BEGIN round trip and
 * savepoints, the COUNT estimate, catalog queries (a table's existence,
 * the tables, the schema dump), the column types of dbkit's own tables,
 * the migration lock and section timeouts, the document layer's JSON
 * reads and table. Pieces that are the
 * same on both engines today are still asked for here (one function each),
 * so the third engine is where they may differ. What still branches on the
 * engine above the driver is listed in that section too.
 */
#ifndef DBK_DIALECT_H
#define DBK_DIALECT_H

#include <stdbool.h>
#include <stddef.h>

#include "dbkit/config.h"
#include "dbkit/result.h"
#include "dbkit/value.h"
#include "../core/sb.h"

/* What a transaction asks BEGIN for. */
typedef struct dbk__begin_opts {
    int isolation;               /* 0 the server's default, 1 read committed,
                                  * 2 repeatable read, 3 serializable */
    bool read_only;
    bool deferrable;
    int timeout_ms;              /* the transaction's deadline (0: none) */
    int session_stmt_timeout_ms; /* the session's statement_timeout (0: none) */
    int idle_grace_ms;           /* how long after timeout_ms the server ends an
                                  * idle transaction */
} dbk__begin_opts;

/* Whether a BEGIN for o bounds each statement on the server by the
 * transaction's timeout (PostgreSQL's begin_sql sets statement_timeout to
 * it): not when the session's own statement_timeout is smaller, which is
 * kept. */
static inline bool dbk__begin_bounds_statements(const dbk__begin_opts *o)
{
    return o->timeout_ms > 0 &&
           (o->session_stmt_timeout_ms <= 0 || o->session_stmt_timeout_ms > o->timeout_ms);
}

/* The savepoint statements (savepoint_sql). */
enum dbk__sp_op {
    DBK__SP_SET = 0,      /* open the savepoint */
    DBK__SP_RELEASE = 1,  /* keep its work */
    DBK__SP_ROLLBACK = 2, /* undo its work and drop it (one round trip) */
};

/* dbk_engine values are 1 .. DBK__ENGINE_SLOTS - 1: what a layer keeps per
 * engine (the cached repository's column modes) is an array indexed by
 * dbk__engine_slot(), 0 for a value that is no engine. */
#define DBK__ENGINE_SLOTS 3

static inline int dbk__engine_slot(dbk_engine engine)
{
    int e = (int)engine;
    return e > 0 && e < DBK__ENGINE_SLOTS ? e : 0;
}

/* How the cached repository may key a lookup on a text column
 * (text_key_probe, text_key_read). */
enum dbk__text_key {
    DBK__TEXT_KEY_ASK = 0,    /* not known yet: run the probe query (again) */
    DBK__TEXT_KEY_BINARY = 1, /* equality is byte equality: key = the bytes */
    DBK__TEXT_KEY_UUID = 2,   /* a uuid: only its canonical spelling is keyed */
    DBK__TEXT_KEY_BYPASS = 3  /* equality the key space cannot mirror */
};

/* One part of a schema dump: the first column of every row of `sql`,
 * each followed by `sep`, under "-- heading" (NULL: no heading). */
typedef struct dbk__dump_part {
    const char *heading;
    const char *sql;
    const char *sep;
} dbk__dump_part;

typedef struct dbk__dialect {
    dbk_engine engine;
    const char *name; /* "PostgreSQL", "SQLite": dump headers, messages */

    /* ---- identifiers, parameters ---- */
    /* Appends id as a quoted identifier (embedded quotes doubled). */
    void (*quote_ident)(dbk__sb *sb, const char *id);
    /* Appends the placeholder of parameter n (1-based). cast: the
     * PostgreSQL type name the value is read as, or NULL; an engine
     * without casts ignores it. */
    void (*placeholder)(dbk__sb *sb, int n, const char *cast);
    /* The most parameters one statement may carry. */
    size_t max_params;

    /* ---- writes ---- */
    /* What goes before the returned columns of INSERT/UPDATE/DELETE. */
    const char *returning;
    /* Appends an upsert's tail after INSERT ... VALUES (...): on a
     * conflict over the columns target[0..ntarget), each column of
     * set[0..nset) (nset >= 1) takes the proposed row's value. Columns are
     * quoted here. */
    void (*upsert_sql)(dbk__sb *sb, const char *const *target, size_t ntarget,
                       const char *const *set, size_t nset);
    /* A bulk load (dbk_db_copy_from) beats multi-row INSERTs for a large
     * create_many that returns no rows. */
    bool bulk_copy;
    /* A batch is one round trip (a pipeline): worth sending a page's
     * COUNT, or several includes, with the page. */
    bool batch_one_trip;

    /* ---- key lists (one parameter holding many keys) ---- */
    const char *key_list_open, *key_list_close; /* "{" "}", "[" "]" */
    /* Appends one text key, quoted for the list. */
    void (*key_list_text)(dbk__sb *sb, const char *s);
    /* Appends " <match parameter n's list>" after a column: elem is the
     * PostgreSQL element type ("bigint", "text", a cast). */
    void (*in_key_list)(dbk__sb *sb, int n, const char *elem);

    /* ---- transactions ---- */
    /* The BEGIN round trip (possibly several statements) into buf. */
    void (*begin_sql)(const dbk__begin_opts *o, char *buf, size_t len);
    /* A savepoint statement for savepoint `name` into buf. */
    void (*savepoint_sql)(enum dbk__sp_op op, const char *name, char *buf, size_t len);
    /* A read-only BEGIN takes no write lock (its control statements need
     * not queue on a pool's write gate), and what puts the session back
     * after it ends (NULL: nothing to undo). */
    bool read_only_unlocked;
    const char *read_only_end_sql;
    /* A query of one int64: the table's estimated row count, -1 when
     * unknown, with the quoted table name as $1. NULL: no estimate (the
     * caller counts exactly). */
    const char *count_estimate_sql;
    /* What a page query needs before OFFSET when it has no LIMIT ("" when
     * OFFSET alone is valid; SQLite wants " LIMIT -1"). */
    const char *offset_without_limit;

    /* ---- catalog ---- */
    /* One int64: how many tables are named $1 (0 or 1). */
    const char *table_exists_sql;
    /* The tables and views a code generator models, one name a row,
     * sorted, without the engine's and dbkit's own. */
    const char *list_tables_sql;
    /* The schema dump: preamble text, then each part in order. */
    const char *dump_preamble;
    const dbk__dump_part *dump_parts;
    size_t ndump_parts;
    /* The statement describer types parameters itself and numbers them by
     * position; false: numbered by first use ($N in order of appearance),
     * typed from the columns they are compared with. */
    bool describes_params;

    /* The column type of a dbk_type in the DDL of dbkit's own tables (the
     * migration history, the seeds): BIGINT or INTEGER, TIMESTAMPTZ or
     * TEXT, ... */
    const char *(*type_name)(dbk_type t);

    /* ---- migrations ---- */
    /* The lock and statement timeouts of one migration section into buf
     * (local: for the section's transaction only, else the session's), and
     * what puts the session's back. NULL: the engine has none (SQLite
     * waits in its busy handler). */
    void (*timeouts_sql)(bool local, int lock_ms, int stmt_ms, char *buf, size_t len);
    const char *timeouts_reset_sql;
    /* A migration statement goes through the script path (PostgreSQL's
     * simple protocol takes any utility command unprepared); false: one
     * prepared statement, whose errors are plain. */
    bool migrate_via_script;

    /* ---- the migration lock ---- */
    /* One bool: took the session lock $1 without waiting; and its release.
     * NULL: no session lock (the engine's migration transaction is
     * exclusive by itself: BEGIN EXCLUSIVE on SQLite, and dbkit's own
     * tables are then created inside it). */
    const char *lock_try_sql;
    const char *unlock_sql;

    /* ---- documents (src/doc: one JSON column per row) ---- */
    /* Appends the DDL of a collection's table `table` (id, doc), ending
     * ";\n": jsonb, or text checked by json_valid(). */
    void (*doc_table_sql)(dbk__sb *sb, const char *table);
    /* Appends the expression that reads dotted path `path` (segments
     * [A-Za-z0-9_], checked by the caller) of JSON column `col`: with
     * `scalar` the value as SQL text, then read as `cast` (a PostgreSQL
     * type name, or NULL); else the JSON value itself. An engine whose
     * path reader returns SQL values (SQLite's json_extract) writes one
     * form for both. */
    void (*json_path_sql)(dbk__sb *sb, const char *col, const char *path, bool scalar,
                          const char *cast);
    /* Appends an expression that is NULL when the path is missing and
     * equals json_null when it holds JSON null. */
    void (*json_path_kind_sql)(dbk__sb *sb, const char *col, const char *path);
    const char *json_null;
    /* Appends "<the array at path holds the value of parameter n>". With
     * json_binary, parameter n is a one-element JSON array (containment);
     * else the element's SQL value. */
    void (*json_array_has_sql)(dbk__sb *sb, const char *col, const char *path, int n);
    /* Appends parameter n holding JSON text, read as a JSON value. */
    void (*json_param)(dbk__sb *sb, int n);
    /* The column is a binary JSON type compared as JSON: a value compared
     * with an untyped path is bound as JSON text (json_param); false: the
     * path reader returns SQL values, bound as such (containers as JSON
     * text). */
    bool json_binary;
    /* The engine has a boolean type (false: booleans are 0 and 1), and its
     * false literal. */
    bool has_bool;
    const char *false_sql;
    /* ORDER BY / index key directions with NULLs (a missing path) first
     * ascending and last descending, as SQLite and MongoDB order them. */
    const char *asc_nulls_first;
    const char *desc_nulls_last;
    /* What locks the rows a SELECT reads until the transaction ends ("":
     * the engine's write transaction locks the whole database). */
    const char *select_for_update;
    /* The value of a LIMIT parameter that means "no limit" (PostgreSQL:
     * NULL; SQLite: a negative number). */
    dbk_value no_limit;
    /* Which engines have a document backend (a collection as a table of
     * JSON rows): dbk_doc_coll_open() and dbk_doc_migration_sql() refuse
     * the others with DBK_ECONFIG. */
    bool doc_backend;

    /* ---- the cached repository (src/cache/cached_repo.c) ---- */
    /* Does equality on text column `column` of `table` compare bytes, so a
     * lookup may be cached under the value's bytes? text_key_probe decides
     * from the field's cast alone (the PostgreSQL type name it is read as,
     * or NULL) and returns the mode, or returns DBK__TEXT_KEY_ASK after
     * writing into sb the query that asks the database, its parameters in
     * p[0..*np) (at most 2; text values borrowing table and column).
     * text_key_read reads that query's result: the mode, or
     * DBK__TEXT_KEY_ASK when the result says nothing (no such column yet). */
    int (*text_key_probe)(dbk__sb *sb, const char *table, const char *column, const char *cast,
                          dbk_value p[2], int *np);
    int (*text_key_read)(const dbk_result *res, const char *cast);
} dbk__dialect;

/* The dialect of an engine (PostgreSQL for any unknown engine). */
const dbk__dialect *dbk__dialect_of(dbk_engine engine);

/* The dialect of an engine, or NULL when `engine` is no engine dbkit has
 * (for the checks that refuse an engine rather than default one). */
const dbk__dialect *dbk__dialect_find(dbk_engine engine);

#endif
