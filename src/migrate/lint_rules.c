/*
 * The linter's rules: one table of what each rule means and how to write
 * the statement safely, then the checks over PostgreSQL parse trees and
 * over SQLite statements.
 *
 * PostgreSQL. Each statement arrives as libpg_query's JSON tree (a jansson
 * value): {"AlterTableStmt": {...}}. The checks read only the nodes they
 * need; anything they do not recognise is left alone, because a false
 * positive on a safe statement teaches people to ignore the linter. Context
 * from earlier statements lives in dbk__lint_ctx: tables created in this
 * file (or run) are new and empty, so everything on them is cheap; the
 * lock_timeout in effect starts at what `dbkit migrate up` sets and follows
 * SET / SET LOCAL / RESET in the file (SET LOCAL has no effect in a
 * transaction:false section, as on the server).
 *
 * SQLite. dbkit does not parse SQLite's dialect: the few SQLite rules need
 * only the top-level words of a statement (strings, quoted names,
 * comments and parenthesized parts skipped), which is what sq_words()
 * gives.
 *
 * Size. The file is a little over 900 lines on purpose: the rule table and
 * the check of each rule sit together so a reader sees a rule's text next to
 * the code that raises it; each check is short and independent, and
 * splitting them apart would only scatter the table.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "../core/internal.h"
#include "lint_int.h"

/* ---- the rule table ---- */

static const dbk_lint_rule RULES[] = {
    {"add-column-volatile-default", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "a column added with a volatile default (random(), gen_random_uuid(), clock_timestamp(), "
     "nextval() through serial, an identity or a stored generated column) rewrites the whole "
     "table under an ACCESS EXCLUSIVE lock",
     "add the column without a default (or with a constant one), set the default in a second "
     "statement, and backfill existing rows in batches"},
    {"add-column-not-null", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "a NOT NULL column without a default cannot be added to a table that has rows: the "
     "migration fails in production although it passed on an empty database",
     "add the column with a DEFAULT, or nullable; backfill; then add NOT NULL as described for "
     "set-not-null"},
    {"set-not-null", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock, unless a validated "
     "CHECK (column IS NOT NULL) constraint already proves it",
     "ADD CONSTRAINT c CHECK (column IS NOT NULL) NOT VALID; in a later migration VALIDATE "
     "CONSTRAINT c, then SET NOT NULL (instant), then DROP CONSTRAINT c"},
    {"index-not-concurrent", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "CREATE INDEX / DROP INDEX without CONCURRENTLY blocks every write to the table (and DROP "
     "INDEX every read) for as long as it takes",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS / DROP INDEX CONCURRENTLY IF EXISTS in a section "
     "marked `-- migrate:up transaction:false`"},
    {"concurrently-in-transaction", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "CONCURRENTLY cannot run inside a transaction block, and dbkit runs every section in one "
     "unless it says otherwise: the migration fails",
     "put the statement in its own migration whose directive is `-- migrate:up "
     "transaction:false`"},
    {"constraint-not-valid", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "a FOREIGN KEY or CHECK constraint added to an existing table is validated by a full scan "
     "while the table is locked (a foreign key also locks the referenced table); a VALIDATE in "
     "the same transaction as its NOT VALID add holds that lock through the scan too",
     "ADD CONSTRAINT ... NOT VALID (instant), then VALIDATE CONSTRAINT in a later migration: "
     "validation takes only a SHARE UPDATE EXCLUSIVE lock"},
    {"add-unique-constraint", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "ADD PRIMARY KEY / UNIQUE / EXCLUDE builds its index while the table is locked against "
     "reads and writes",
     "CREATE UNIQUE INDEX CONCURRENTLY (transaction:false), then ADD CONSTRAINT ... UNIQUE USING "
     "INDEX (or PRIMARY KEY USING INDEX)"},
    {"column-type-rewrite", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE "
     "lock (except to text or unbounded varchar, binary-compatible changes that `dbkit migrate "
     "trace` shows as no rewrite)",
     "add a new column of the new type, write both from the code, backfill in batches, switch "
     "reads, drop the old column (expand/contract)"},
    {"rename-or-drop", 0, DBK_LINT_SEVERITY_WARNING,
     "renaming or dropping a table or column that the running code still uses breaks every "
     "instance not yet deployed (old code and new schema run side by side during a deploy)",
     "expand/contract: deploy code that no longer uses the name first, then drop it in a later "
     "migration; for a rename, add the new name, write both, backfill, then drop the old one"},
    {"lock-timeout", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "a statement that takes a strong lock with no lock_timeout in effect waits behind any long "
     "transaction on the table, and every query that arrives after it queues behind it: the "
     "table is down until the long transaction ends",
     "keep dbkit's lock_timeout (DB_MIGRATION_LOCK_TIMEOUT_MS, default 5 s) or SET LOCAL "
     "lock_timeout = '5s' before the statement; dbkit retries a statement that timed out on its "
     "lock"},
    {"unbounded-backfill", 0, DBK_LINT_SEVERITY_ERROR,
     "an UPDATE or DELETE without WHERE on an existing table touches every row in one "
     "transaction: row locks on the whole table, bloat, and replication lag",
     "backfill in batches from the application or a script (WHERE id BETWEEN ... AND ...), "
     "outside the schema migration"},
    {"int-primary-key", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "an int (or serial) primary key runs out at 2^31 - 1 and changing it later rewrites the "
     "table and every referencing one",
     "use bigint (BIGINT GENERATED BY DEFAULT AS IDENTITY, or bigserial)"},
    {"vacuum-full-cluster", DBK_ENGINE_POSTGRES, DBK_LINT_SEVERITY_ERROR,
     "VACUUM FULL and CLUSTER rewrite the table under an ACCESS EXCLUSIVE lock for the whole "
     "duration",
     "plain VACUUM (transaction:false) or an online tool such as pg_repack, outside migrations"},
    {"sqlite-table-rebuild", DBK_ENGINE_SQLITE, DBK_LINT_SEVERITY_ERROR,
     "dropping an existing table (the last step of a SQLite table rebuild) with foreign keys "
     "on, which dbkit always sets, deletes its rows first: ON DELETE CASCADE empties child "
     "tables, and PRAGMA foreign_keys = OFF has no effect inside a transaction",
     "do the rebuild in a section marked transaction:false: PRAGMA foreign_keys = OFF; BEGIN; "
     "create, copy, drop, rename; PRAGMA foreign_key_check; COMMIT; PRAGMA foreign_keys = ON"},
    {"sqlite-add-column-not-null", DBK_ENGINE_SQLITE, DBK_LINT_SEVERITY_ERROR,
     "SQLite refuses ADD COLUMN ... NOT NULL without a non-NULL DEFAULT: the migration fails",
     "give the column a DEFAULT, or add it nullable"},
    {"sqlite-pragma-in-transaction", DBK_ENGINE_SQLITE, DBK_LINT_SEVERITY_ERROR,
     "PRAGMA foreign_keys and PRAGMA journal_mode do nothing inside a transaction, and dbkit "
     "runs the section in one",
     "put the PRAGMA in a section marked transaction:false"},
    {"syntax", 0, DBK_LINT_SEVERITY_ERROR, "the section does not parse: it will fail when applied",
     "fix the SQL (the message says where)"},
    {"lint-directive", 0, DBK_LINT_SEVERITY_ERROR,
     "a lint:ignore directive that names no known rule or gives no reason suppresses nothing",
     "write `-- lint:ignore RULE why this is safe here` on its own line right above the "
     "statement"},
};

const dbk_lint_rule *dbk_lint_rules(size_t *n)
{
    if (n)
        *n = sizeof RULES / sizeof RULES[0];
    return RULES;
}

const dbk_lint_rule *dbk_lint_rule_find(const char *id)
{
    if (!id)
        return NULL;
    for (size_t i = 0; i < sizeof RULES / sizeof RULES[0]; i++)
        if (strcmp(RULES[i].id, id) == 0)
            return &RULES[i];
    return NULL;
}

/* ---- JSON helpers ---- */

#define J(o, k) json_object_get((o), (k))

static const char *jstr(const json_t *o, const char *k)
{
    return json_string_value(J(o, k));
}

static bool jtrue(const json_t *o, const char *k)
{
    return json_is_true(J(o, k));
}

/* {"Kind": body} -> body when the kind matches, else NULL. */
static json_t *node(const json_t *n, const char *kind)
{
    return json_is_object(n) ? J(n, kind) : NULL;
}

/* The only key of a node, e.g. "AlterTableStmt". */
static const char *node_kind(const json_t *n, json_t **body)
{
    const char *key;
    json_t *v;
    *body = NULL;
    if (!json_is_object(n))
        return "";
    json_object_foreach((json_t *)n, key, v)
    {
        *body = v;
        return key;
    }
    return "";
}

static bool streq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Last String of a list of {"String":{"sval":...}} nodes. */
static const char *last_sval(const json_t *list)
{
    size_t n = json_array_size(list);
    if (n == 0)
        return NULL;
    return jstr(node(json_array_get(list, n - 1), "String"), "sval");
}

static const char *relname(const json_t *rangevar)
{
    const char *r = jstr(rangevar, "relname");
    return r ? r : "";
}

static bool is_new(const dbk__lint_ctx *c, const char *table)
{
    return table && table[0] && dbk__names_has(c->new_tables, table);
}

static void mark_new(dbk__lint_ctx *c, const char *table)
{
    if (table && table[0] && !dbk__names_add(c->new_tables, table))
        c->oom = true;
}

static void names_add(dbk__lint_ctx *c, dbk__names *s, const char *a, const char *b)
{
    char k[128];
    snprintf(k, sizeof k, "%.60s%s%.60s", a ? a : "", b ? "." : "", b ? b : "");
    if (!dbk__names_add(s, k))
        c->oom = true;
}

static bool names_has2(const dbk__names *s, const char *a, const char *b)
{
    char k[128];
    snprintf(k, sizeof k, "%.60s.%.60s", a ? a : "", b ? b : "");
    return dbk__names_has(s, k);
}

/* ---- shared checks ---- */

static void need_lock_timeout(dbk__lint_ctx *c, const char *table, const char *what)
{
    if (c->lock_timeout_ms > 0)
        return;
    dbk__lint_add(c, "lock-timeout", table,
                  "%s on \"%s\" with no lock_timeout in effect (dbkit's is off, or the file set "
                  "it to 0)",
                  what, table);
}

/* ---- types and expressions ---- */

static bool is_int_type(const json_t *type_name)
{
    const char *t = last_sval(J(type_name, "names"));
    return streq(t, "int4") || streq(t, "int2") || streq(t, "serial") || streq(t, "serial4") ||
           streq(t, "smallserial") || streq(t, "serial2") || streq(t, "int") ||
           streq(t, "integer") || streq(t, "smallint");
}

static bool is_serial_type(const json_t *type_name)
{
    const char *t = last_sval(J(type_name, "names"));
    return streq(t, "serial") || streq(t, "serial4") || streq(t, "bigserial") ||
           streq(t, "serial8") || streq(t, "smallserial") || streq(t, "serial2");
}

static const char *const VOLATILE_FUNCS[] = {
    "random",          "random_normal", "gen_random_uuid", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "clock_timestamp", "timeofday",
    "nextval",         "setseed",       "txid_current",    "pg_current_xact_id",
};

/* The name of a volatile function called anywhere in expr, or NULL. */
static const char *volatile_call(const json_t *expr)
{
    if (json_is_array(expr)) {
        for (size_t i = 0; i < json_array_size(expr); i++) {
            const char *v = volatile_call(json_array_get(expr, i));
            if (v)
                return v;
        }
        return NULL;
    }
    if (!json_is_object(expr))
        return NULL;
    json_t *fc = J(expr, "FuncCall");
    if (fc) {
        const char *fn = last_sval(J(fc, "funcname"));
        for (size_t i = 0; fn && i < sizeof VOLATILE_FUNCS / sizeof VOLATILE_FUNCS[0]; i++)
            if (strcmp(fn, VOLATILE_FUNCS[i]) == 0)
                return VOLATILE_FUNCS[i];
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)expr, key, v)
    {
        const char *r = volatile_call(v);
        if (r)
            return r;
    }
    return NULL;
}

/* "column" when expr is `column IS NOT NULL`, else NULL. */
static const char *is_not_null_test(const json_t *expr)
{
    json_t *nt = node(expr, "NullTest");
    if (!nt || !streq(jstr(nt, "nulltesttype"), "IS_NOT_NULL"))
        return NULL;
    json_t *cr = node(J(nt, "arg"), "ColumnRef");
    return cr ? last_sval(J(cr, "fields")) : NULL;
}

/* ---- CREATE TABLE ---- */

static json_t *find_coldef(const json_t *elts, const char *col)
{
    for (size_t i = 0; i < json_array_size(elts); i++) {
        json_t *cd = node(json_array_get(elts, i), "ColumnDef");
        if (cd && streq(jstr(cd, "colname"), col))
            return cd;
    }
    return NULL;
}

static void check_int_pk_col(dbk__lint_ctx *c, const char *table, const json_t *cd)
{
    if (!cd || !is_int_type(J(cd, "typeName")))
        return;
    dbk__lint_add(c, "int-primary-key", table,
                  "primary key \"%s\".\"%s\" is %s: it runs out at 2147483647", table,
                  jstr(cd, "colname") ? jstr(cd, "colname") : "?",
                  last_sval(J(J(cd, "typeName"), "names")));
}

static bool coldef_has(const json_t *cd, const char *contype)
{
    json_t *cons = J(cd, "constraints");
    for (size_t i = 0; i < json_array_size(cons); i++)
        if (streq(jstr(node(json_array_get(cons, i), "Constraint"), "contype"), contype))
            return true;
    return false;
}

static void lint_create(dbk__lint_ctx *c, const json_t *s)
{
    const char *table = relname(J(s, "relation"));
    json_t *elts = J(s, "tableElts");
    for (size_t i = 0; i < json_array_size(elts); i++) {
        json_t *e = json_array_get(elts, i);
        json_t *cd = node(e, "ColumnDef");
        if (cd && coldef_has(cd, "CONSTR_PRIMARY"))
            check_int_pk_col(c, table, cd);
        json_t *con = node(e, "Constraint");
        if (con && streq(jstr(con, "contype"), "CONSTR_PRIMARY") &&
            json_array_size(J(con, "keys")) == 1)
            check_int_pk_col(c, table, find_coldef(elts, last_sval(J(con, "keys"))));
    }
    mark_new(c, table);
}

/* ---- ALTER TABLE ---- */

static void lint_add_column(dbk__lint_ctx *c, const char *table, bool isnew, const json_t *cd)
{
    const char *col = jstr(cd, "colname") ? jstr(cd, "colname") : "?";
    json_t *cons = J(cd, "constraints");
    bool has_default = false, not_null = false, pk = false;
    const char *rewrite = NULL;
    char why[96] = "";
    if (is_serial_type(J(cd, "typeName"))) {
        rewrite = "a serial type";
        snprintf(why, sizeof why, "its serial type fills every row from nextval()");
    }
    for (size_t i = 0; i < json_array_size(cons); i++) {
        json_t *k = node(json_array_get(cons, i), "Constraint");
        const char *t = jstr(k, "contype");
        if (streq(t, "CONSTR_DEFAULT")) {
            has_default = true;
            const char *fn = volatile_call(J(k, "raw_expr"));
            if (fn && !rewrite) {
                rewrite = fn;
                snprintf(why, sizeof why, "its default calls %s(), evaluated for every row", fn);
            }
        } else if (streq(t, "CONSTR_IDENTITY") && !rewrite) {
            rewrite = "identity";
            snprintf(why, sizeof why, "an identity column fills every row");
        } else if (streq(t, "CONSTR_GENERATED") && !rewrite) {
            rewrite = "generated";
            snprintf(why, sizeof why, "a stored generated column is computed for every row");
        } else if (streq(t, "CONSTR_NOTNULL")) {
            not_null = true;
        } else if (streq(t, "CONSTR_PRIMARY") || streq(t, "CONSTR_UNIQUE")) {
            pk = pk || streq(t, "CONSTR_PRIMARY");
            if (!isnew)
                dbk__lint_add(c, "add-unique-constraint", table,
                              "column \"%s\" is added with a %s constraint to existing table "
                              "\"%s\": its index is built under an ACCESS EXCLUSIVE lock",
                              col, streq(t, "CONSTR_PRIMARY") ? "PRIMARY KEY" : "UNIQUE",
                              table);
        }
    }
    if (pk)
        check_int_pk_col(c, table, cd);
    if (isnew)
        return;
    if (rewrite)
        dbk__lint_add(c, "add-column-volatile-default", table,
                      "column \"%s\" added to existing table \"%s\": %s, so the table is "
                      "rewritten",
                      col, table, why);
    if (not_null && !has_default && !rewrite)
        dbk__lint_add(c, "add-column-not-null", table,
                      "column \"%s\" is added NOT NULL without a default to existing table "
                      "\"%s\": fails when the table has rows",
                      col, table);
}

/* True for a type change PostgreSQL makes without a rewrite whatever the
 * old type was among the common ones: to text or to varchar without a
 * length, with no USING. */
static bool type_change_is_cheap(const json_t *cd)
{
    if (J(cd, "raw_default"))
        return false; /* USING expression */
    json_t *tn = J(cd, "typeName");
    const char *t = last_sval(J(tn, "names"));
    if (json_array_size(J(tn, "arrayBounds")) > 0)
        return false;
    if (streq(t, "text"))
        return true;
    if (streq(t, "varchar") && json_array_size(J(tn, "typmods")) == 0)
        return true;
    return false;
}

static void lint_constraint(dbk__lint_ctx *c, const char *table, bool isnew, const json_t *k)
{
    const char *t = jstr(k, "contype");
    const char *name = jstr(k, "conname");
    bool not_valid = jtrue(k, "skip_validation");
    if (streq(t, "CONSTR_FOREIGN") || streq(t, "CONSTR_CHECK")) {
        const char *col = streq(t, "CONSTR_CHECK") ? is_not_null_test(J(k, "raw_expr")) : NULL;
        if (not_valid) {
            if (name)
                names_add(c, &c->not_valid, table, name);
            if (col && name) {
                /* remembered so that VALIDATE of this name proves NOT NULL */
                char key[128];
                snprintf(key, sizeof key, "%.40s.%.40s=%.40s", table, name, col);
                if (!dbk__names_add(&c->not_valid, key))
                    c->oom = true;
            }
            return;
        }
        if (col)
            names_add(c, &c->notnull_checked, table, col);
        if (!isnew)
            dbk__lint_add(c, "constraint-not-valid", table,
                          "%s constraint %s%s%sadded to existing table \"%s\" without NOT "
                          "VALID: validated by a full scan under lock",
                          streq(t, "CONSTR_FOREIGN") ? "FOREIGN KEY" : "CHECK", name ? "\"" : "",
                          name ? name : "", name ? "\" " : "", table);
        return;
    }
    if ((streq(t, "CONSTR_PRIMARY") || streq(t, "CONSTR_UNIQUE") ||
         streq(t, "CONSTR_EXCLUSION")) &&
        !isnew && !jstr(k, "indexname"))
        dbk__lint_add(c, "add-unique-constraint", table,
                      "%s constraint added to existing table \"%s\" builds its index under an "
                      "ACCESS EXCLUSIVE lock",
                      streq(t, "CONSTR_PRIMARY")  ? "PRIMARY KEY"
                      : streq(t, "CONSTR_UNIQUE") ? "UNIQUE"
                                                  : "EXCLUDE",
                      table);
}

/* VALIDATE CONSTRAINT name: proves NOT NULL for a remembered check. */
static void lint_validate(dbk__lint_ctx *c, const char *table, const char *name)
{
    if (!name)
        return;
    if (!dbk__names_add(&c->validated, table))
        c->oom = true;
    char pfx[128];
    int pl = snprintf(pfx, sizeof pfx, "%.40s.%.40s=", table, name);
    for (size_t i = 0; i < c->not_valid.n; i++)
        if (pl > 0 && strncmp(c->not_valid.v[i], pfx, (size_t)pl) == 0)
            names_add(c, &c->notnull_checked, table, c->not_valid.v[i] + pl);
    if (c->transactional && names_has2(&c->not_valid, table, name))
        dbk__lint_add(c, "constraint-not-valid", table,
                      "constraint \"%s\" is validated in the same transaction that added it NOT "
                      "VALID: the add's lock on \"%s\" is held through the validating scan",
                      name, table);
}

static void lint_alter(dbk__lint_ctx *c, const json_t *s)
{
    const char *objtype = jstr(s, "objtype");
    if (objtype && !streq(objtype, "OBJECT_TABLE"))
        return;
    const char *table = relname(J(s, "relation"));
    bool isnew = is_new(c, table);
    json_t *cmds = J(s, "cmds");
    for (size_t i = 0; i < json_array_size(cmds); i++) {
        json_t *cmd = node(json_array_get(cmds, i), "AlterTableCmd");
        const char *sub = jstr(cmd, "subtype");
        const char *col = jstr(cmd, "name");
        if (streq(sub, "AT_AddColumn")) {
            json_t *cd = node(J(cmd, "def"), "ColumnDef");
            if (cd)
                lint_add_column(c, table, isnew, cd);
        } else if (streq(sub, "AT_SetNotNull")) {
            if (!isnew && !names_has2(&c->notnull_checked, table, col) &&
                !dbk__names_has(&c->validated, table))
                dbk__lint_add(c, "set-not-null", table,
                              "SET NOT NULL on \"%s\".\"%s\" with no validated CHECK (%s IS NOT "
                              "NULL) before it: full scan under ACCESS EXCLUSIVE",
                              table, col ? col : "?", col ? col : "?");
        } else if (streq(sub, "AT_AddConstraint")) {
            json_t *k = node(J(cmd, "def"), "Constraint");
            if (k)
                lint_constraint(c, table, isnew, k);
        } else if (streq(sub, "AT_ValidateConstraint")) {
            lint_validate(c, table, col);
        } else if (streq(sub, "AT_AlterColumnType")) {
            json_t *cd = node(J(cmd, "def"), "ColumnDef");
            if (!isnew && cd && !type_change_is_cheap(cd))
                dbk__lint_add(c, "column-type-rewrite", table,
                              "\"%s\".\"%s\" changes type to %s: the table is rewritten", table,
                              col ? col : "?", last_sval(J(J(cd, "typeName"), "names")));
        } else if (streq(sub, "AT_DropColumn")) {
            if (!isnew)
                dbk__lint_add(c, "rename-or-drop", table,
                              "column \"%s\".\"%s\" is dropped: code still reading it fails", table,
                              col ? col : "?");
        }
    }
    if (!isnew)
        need_lock_timeout(c, table, "ALTER TABLE");
}

/* ---- other statements ---- */

static void lint_index(dbk__lint_ctx *c, const json_t *s)
{
    const char *table = relname(J(s, "relation"));
    bool conc = jtrue(s, "concurrent");
    if (conc && c->transactional)
        dbk__lint_add(c, "concurrently-in-transaction", table,
                      "CREATE INDEX CONCURRENTLY on \"%s\" in a section that runs in a "
                      "transaction",
                      table);
    if (is_new(c, table)) {
        if (jstr(s, "idxname") && !dbk__names_add(&c->new_indexes, jstr(s, "idxname")))
            c->oom = true;
        return;
    }
    if (!conc) {
        dbk__lint_add(c, "index-not-concurrent", table,
                      "CREATE INDEX on existing table \"%s\" without CONCURRENTLY blocks its "
                      "writes until the index is built",
                      table);
        need_lock_timeout(c, table, "CREATE INDEX");
    }
}

static void lint_drop(dbk__lint_ctx *c, const json_t *s)
{
    const char *type = jstr(s, "removeType");
    json_t *objs = J(s, "objects");
    bool conc = jtrue(s, "concurrent");
    for (size_t i = 0; i < json_array_size(objs); i++) {
        json_t *list = node(json_array_get(objs, i), "List");
        const char *name = list ? last_sval(J(list, "items")) : NULL;
        if (!name)
            continue;
        if (streq(type, "OBJECT_INDEX")) {
            if (conc && c->transactional)
                dbk__lint_add(c, "concurrently-in-transaction", NULL,
                              "DROP INDEX CONCURRENTLY \"%s\" in a section that runs in a "
                              "transaction",
                              name);
            if (!conc && !dbk__names_has(&c->new_indexes, name)) {
                dbk__lint_add(c, "index-not-concurrent", NULL,
                              "DROP INDEX \"%s\" without CONCURRENTLY locks its table against "
                              "reads and writes",
                              name);
                need_lock_timeout(c, name, "DROP INDEX");
            }
            dbk__names_del(&c->new_indexes, name);
        } else if (streq(type, "OBJECT_TABLE")) {
            if (!is_new(c, name)) {
                dbk__lint_add(c, "rename-or-drop", name,
                              "table \"%s\" is dropped: code still using it fails", name);
                need_lock_timeout(c, name, "DROP TABLE");
            }
            dbk__names_del(c->new_tables, name);
        }
    }
}

static void lint_rename(dbk__lint_ctx *c, const json_t *s)
{
    const char *type = jstr(s, "renameType");
    const char *table = relname(J(s, "relation"));
    const char *newname = jstr(s, "newname");
    if (!streq(type, "OBJECT_TABLE") && !streq(type, "OBJECT_COLUMN"))
        return;
    if (is_new(c, table)) {
        if (streq(type, "OBJECT_TABLE")) {
            dbk__names_del(c->new_tables, table);
            mark_new(c, newname);
        }
        return;
    }
    if (streq(type, "OBJECT_TABLE"))
        dbk__lint_add(c, "rename-or-drop", table,
                      "table \"%s\" is renamed to \"%s\": code using the old name fails", table,
                      newname ? newname : "?");
    else
        dbk__lint_add(c, "rename-or-drop", table,
                      "column \"%s\".\"%s\" is renamed to \"%s\": code using the old name fails",
                      table, jstr(s, "subname") ? jstr(s, "subname") : "?",
                      newname ? newname : "?");
    need_lock_timeout(c, table, "RENAME");
}

/* lock_timeout value: an integer is milliseconds; a string may carry a
 * unit (us, ms, s, min, h, d). -1 when it cannot be read. */
static int64_t timeout_value(const json_t *aconst)
{
    json_t *iv = J(aconst, "ival");
    if (iv)
        return json_is_integer(J(iv, "ival")) ? json_integer_value(J(iv, "ival")) : 0;
    const char *sv = jstr(J(aconst, "sval"), "sval");
    if (!sv)
        return -1;
    char *end = NULL;
    double v = strtod(sv, &end);
    if (end == sv)
        return -1;
    while (*end == ' ')
        end++;
    double mult = 1;
    if (*end == '\0' || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "us") == 0)
        mult = 0.001;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "min") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return -1;
    double ms = v * mult;
    if (ms > 0 && ms < 1)
        ms = 1;
    return ms < 0 ? -1 : (int64_t)ms;
}

static void lint_set(dbk__lint_ctx *c, const json_t *s)
{
    if (!streq(jstr(s, "name"), "lock_timeout"))
        return;
    if (jtrue(s, "is_local") && !c->transactional)
        return; /* SET LOCAL outside a transaction block does nothing */
    const char *kind = jstr(s, "kind");
    if (streq(kind, "VAR_SET_VALUE")) {
        int64_t v = timeout_value(node(json_array_get(J(s, "args"), 0), "A_Const"));
        if (v >= 0)
            c->lock_timeout_ms = v;
    } else if (streq(kind, "VAR_SET_DEFAULT") || streq(kind, "VAR_RESET") ||
               streq(kind, "VAR_RESET_ALL")) {
        c->lock_timeout_ms = 0; /* the server default: no timeout */
    }
}

static void lint_dml(dbk__lint_ctx *c, const json_t *s, const char *what)
{
    const char *table = relname(J(s, "relation"));
    if (J(s, "whereClause") || is_new(c, table))
        return;
    dbk__lint_add(c, "unbounded-backfill", table,
                  "%s of every row of existing table \"%s\" in one statement", what, table);
}

static void lint_vacuum(dbk__lint_ctx *c, const json_t *s)
{
    json_t *opts = J(s, "options");
    bool full = false;
    for (size_t i = 0; i < json_array_size(opts); i++)
        if (streq(jstr(node(json_array_get(opts, i), "DefElem"), "defname"), "full"))
            full = true;
    if (!full)
        return;
    json_t *rels = J(s, "rels");
    const char *table = "";
    if (json_array_size(rels) > 0)
        table = relname(J(node(json_array_get(rels, 0), "VacuumRelation"), "relation"));
    if (table[0] && is_new(c, table))
        return;
    dbk__lint_add(c, "vacuum-full-cluster", table[0] ? table : NULL,
                  "VACUUM FULL%s%s%s rewrites under ACCESS EXCLUSIVE", table[0] ? " \"" : "",
                  table, table[0] ? "\"" : "");
}

void dbk__lint_pg_stmt(dbk__lint_ctx *c, const void *json)
{
    json_t *s = NULL;
    const char *kind = node_kind(json, &s);
    if (!s)
        return;
    if (streq(kind, "CreateStmt"))
        lint_create(c, s);
    else if (streq(kind, "CreateTableAsStmt"))
        mark_new(c, relname(J(J(s, "into"), "rel")));
    else if (streq(kind, "AlterTableStmt"))
        lint_alter(c, s);
    else if (streq(kind, "IndexStmt"))
        lint_index(c, s);
    else if (streq(kind, "DropStmt"))
        lint_drop(c, s);
    else if (streq(kind, "RenameStmt"))
        lint_rename(c, s);
    else if (streq(kind, "VariableSetStmt"))
        lint_set(c, s);
    else if (streq(kind, "UpdateStmt"))
        lint_dml(c, s, "UPDATE");
    else if (streq(kind, "DeleteStmt"))
        lint_dml(c, s, "DELETE");
    else if (streq(kind, "VacuumStmt"))
        lint_vacuum(c, s);
    else if (streq(kind, "ClusterStmt")) {
        const char *table = relname(J(s, "relation"));
        if (!is_new(c, table))
            dbk__lint_add(c, "vacuum-full-cluster", table[0] ? table : NULL,
                          "CLUSTER%s%s%s rewrites under ACCESS EXCLUSIVE", table[0] ? " \"" : "",
                          table, table[0] ? "\"" : "");
    } else if (streq(kind, "CreateTrigStmt")) {
        const char *table = relname(J(s, "relation"));
        if (!is_new(c, table))
            need_lock_timeout(c, table, "CREATE TRIGGER");
    }
}

/* ---- SQLite ---- */

#define SQ_MAX_WORDS 48

/* The top-level words of a statement (quoted names lose their quotes), at most SQ_MAX_WORDS; parenthesized parts,
 * strings, numbers and comments are skipped. Returns how many; *words_total
 * gets how many there were at top level in all. "(" is recorded as a word
 * of its own so that positions stay meaningful. */
static size_t sq_words(const char *s, size_t len, char (*w)[64], size_t *total)
{
    size_t n = 0, all = 0, i = 0;
    int depth = 0;
    while (i < len) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '-' && i + 1 < len && s[i + 1] == '-') {
            while (i < len && s[i] != '\n')
                i++;
        } else if (ch == '/' && i + 1 < len && s[i + 1] == '*') {
            i += 2;
            while (i + 1 < len && !(s[i] == '*' && s[i + 1] == '/'))
                i++;
            i += 2;
        } else if (ch == '\'') {
            i++;
            while (i < len && s[i] != '\'')
                i++;
            i++;
        } else if (ch == '(') {
            if (depth == 0) {
                if (n < SQ_MAX_WORDS)
                    memcpy(w[n++], "(", 2);
                all++;
            }
            depth++;
            i++;
        } else if (ch == ')') {
            if (depth > 0)
                depth--;
            i++;
        } else if (ch == '"' || ch == '`' || ch == '[') {
            char close = ch == '[' ? ']' : (char)ch;
            size_t st = ++i;
            while (i < len && s[i] != close)
                i++;
            if (depth == 0) {
                if (n < SQ_MAX_WORDS) {
                    size_t l = i - st < 63 ? i - st : 63;
                    memcpy(w[n], s + st, l);
                    w[n++][l] = '\0';
                }
                all++;
            }
            i++;
        } else if (isalpha(ch) || ch == '_') {
            size_t st = i;
            while (i < len && (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '$'))
                i++;
            if (depth == 0) {
                if (n < SQ_MAX_WORDS) {
                    size_t l = i - st < 63 ? i - st : 63;
                    memcpy(w[n], s + st, l);
                    w[n++][l] = '\0';
                }
                all++;
            }
        } else {
            i++;
        }
    }
    *total = all;
    return n;
}

static bool weq(const char *w, const char *kw)
{
    return strcasecmp(w, kw) == 0;
}

/* The table after ALTER TABLE / DROP TABLE [IF EXISTS] / UPDATE [OR x] /
 * DELETE FROM, skipping a schema prefix: word index or -1. */
static int sq_table_at(char (*w)[64], size_t n, size_t from)
{
    size_t i = from;
    if (i + 1 < n && weq(w[i], "IF") && weq(w[i + 1], "EXISTS"))
        i += 2;
    if (i >= n)
        return -1;
    return (int)i;
}

void dbk__lint_sqlite_stmt(dbk__lint_ctx *c)
{
    char w[SQ_MAX_WORDS][64];
    size_t total = 0;
    size_t n = sq_words(c->stmt, c->stmt_len, w, &total);
    if (n == 0)
        return;
    if (weq(w[0], "CREATE") && n >= 3) {
        size_t i = 1;
        if (weq(w[i], "TEMP") || weq(w[i], "TEMPORARY"))
            i++;
        if (i < n && weq(w[i], "TABLE")) {
            int t = sq_table_at(w, n, i + 1);
            if (t >= 0 && i + 3 < n && weq(w[i + 1], "IF") && weq(w[i + 2], "NOT"))
                t = (int)i + 4 < (int)n ? (int)i + 4 : -1;
            if (t >= 0)
                mark_new(c, w[t]);
        }
        return;
    }
    if (weq(w[0], "PRAGMA") && n >= 2) {
        if ((weq(w[1], "FOREIGN_KEYS") || weq(w[1], "JOURNAL_MODE")) && c->transactional)
            dbk__lint_add(c, "sqlite-pragma-in-transaction", NULL,
                          "PRAGMA %s in a section that runs in a transaction has no effect",
                          w[1]);
        if (weq(w[1], "FOREIGN_KEYS") && !c->transactional && n >= 3)
            c->fk_checks_off = weq(w[2], "OFF") || weq(w[2], "FALSE") || weq(w[2], "NO");
        return;
    }
    if (weq(w[0], "ALTER") && n >= 4 && weq(w[1], "TABLE")) {
        const char *table = w[2];
        bool isnew = is_new(c, table);
        if (weq(w[3], "RENAME")) {
            bool to_table = n >= 6 && weq(w[4], "TO");
            if (isnew) {
                if (to_table) {
                    dbk__names_del(c->new_tables, table);
                    mark_new(c, w[5]);
                }
                return;
            }
            dbk__lint_add(c, "rename-or-drop", table, "%s \"%s\" is renamed: code using the old "
                          "name fails",
                          to_table ? "table" : "a column of", table);
        } else if (weq(w[3], "DROP")) {
            if (!isnew)
                dbk__lint_add(c, "rename-or-drop", table,
                              "a column of \"%s\" is dropped: code still reading it fails", table);
        } else if (weq(w[3], "ADD")) {
            bool nn = false, def = false;
            for (size_t i = 4; i + 1 < n; i++) {
                if (weq(w[i], "NOT") && weq(w[i + 1], "NULL"))
                    nn = true;
            }
            for (size_t i = 4; i < n; i++)
                if (weq(w[i], "DEFAULT") && !(i + 1 < n && weq(w[i + 1], "NULL")))
                    def = true;
            if (nn && !def)
                dbk__lint_add(c, "sqlite-add-column-not-null", table,
                              "ADD COLUMN ... NOT NULL without a DEFAULT on \"%s\": SQLite "
                              "refuses it",
                              table);
        }
        return;
    }
    if (weq(w[0], "DROP") && n >= 3 && weq(w[1], "TABLE")) {
        int t = sq_table_at(w, n, 2);
        if (t < 0)
            return;
        const char *table = w[t];
        if (is_new(c, table)) {
            dbk__names_del(c->new_tables, table);
            return;
        }
        dbk__lint_add(c, "rename-or-drop", table,
                      "table \"%s\" is dropped: code still using it fails", table);
        if (c->transactional || !c->fk_checks_off)
            dbk__lint_add(c, "sqlite-table-rebuild", table,
                          "DROP TABLE \"%s\" with foreign keys on deletes its rows first (ON "
                          "DELETE CASCADE reaches child tables)",
                          table);
        return;
    }
    if ((weq(w[0], "UPDATE") || (weq(w[0], "DELETE") && n >= 2 && weq(w[1], "FROM")))) {
        size_t i = 1;
        if (weq(w[0], "UPDATE") && i + 1 < n && weq(w[i], "OR"))
            i += 2;
        else if (weq(w[0], "DELETE"))
            i = 2;
        if (i >= n)
            return;
        const char *table = w[i];
        for (size_t k = i; k < n; k++)
            if (weq(w[k], "WHERE"))
                return;
        if (total > n)
            return; /* too long to be sure: stay quiet */
        if (!is_new(c, table))
            dbk__lint_add(c, "unbounded-backfill", table,
                          "%s of every row of existing table \"%s\" in one statement (holds the "
                          "database's write lock throughout)",
                          w[0], table);
    }
}
