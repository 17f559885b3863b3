/*
 * Internal pieces of the migration linter shared by lint.c (files,
 * sections, directives, the report), lint_rules.c (the rules over
 * libpg_query's JSON tree and the SQLite list) and migrate.c (the tables a
 * statement names, for the lock-timeout message), and by the tests and the
 * directive fuzz target.
 */
#ifndef DBK_LINT_INT_H
#define DBK_LINT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbkit/lint.h"

/* ---- lint:ignore directives ---- */

typedef enum dbk__lint_dir_kind {
    DBK__LINT_DIR_NONE = 0, /* not a lint directive: an ordinary comment */
    DBK__LINT_DIR_IGNORE = 1,
    DBK__LINT_DIR_BAD = 2 /* "lint:" something malformed; `problem` says what */
} dbk__lint_dir_kind;

typedef struct dbk__lint_dir {
    dbk__lint_dir_kind kind;
    const dbk_lint_rule *rule; /* IGNORE: the rule */
    char rule_text[48];        /* the rule id as written (truncated) */
    char problem[160];         /* BAD: what is wrong */
    bool used;
    int line;
} dbk__lint_dir;

/* Parses the text of one `--` comment (the bytes after "--", up to the end
 * of the line, not NUL-terminated). Recognizes "lint:ignore RULE reason"
 * (spaces or tabs between the parts, the reason is the rest of the line and
 * must hold a non-blank character). Any other comment starting with "lint:"
 * is DBK__LINT_DIR_BAD. Never reads past text[len). */
void dbk__lint_directive_parse(const char *text, size_t len, dbk__lint_dir *out);

/* ---- names ---- */

/* A small set of lower-case names ("schema.table" or "table"). */
typedef struct dbk__names {
    char (*v)[128];
    size_t n, cap;
} dbk__names;

bool dbk__names_has(const dbk__names *s, const char *name);
bool dbk__names_add(dbk__names *s, const char *name); /* false: out of memory */
void dbk__names_del(dbk__names *s, const char *name);
void dbk__names_free(dbk__names *s);

/* ---- rules ---- */

/* What one section's statements are linted against. */
typedef struct dbk__lint_ctx {
    const dbk_lint_opts *opts;
    dbk_lint_report *rep;
    size_t cap;           /* rep->items capacity */
    const char *path;
    int64_t version;
    dbk_engine engine;    /* of this pass */
    bool transactional;
    int64_t lock_timeout_ms; /* in effect now; 0: none */
    dbk__names *new_tables;  /* created in this file or run (owned by the caller) */
    dbk__names new_indexes;
    dbk__names validated;    /* tables with a VALIDATE CONSTRAINT earlier in the file */
    dbk__names notnull_checked; /* "table.column" with a CHECK (column IS NOT NULL) */
    dbk__names not_valid;    /* "table.constraint" added NOT VALID in this file */
    bool fk_checks_off;      /* SQLite: PRAGMA foreign_keys = OFF seen (outside a tx) */
    bool count_stmts;        /* a portable section is counted in one pass only */
    /* the statement being linted */
    const char *stmt;
    size_t stmt_len;
    int line;
    dbk__lint_dir *dirs; /* directives right above it */
    size_t ndirs;
    bool oom;
} dbk__lint_ctx;

/* Adds a finding for the current statement unless a directive above it
 * ignores that rule. `table` may be NULL. */
void dbk__lint_add(dbk__lint_ctx *c, const char *rule_id, const char *table, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

/* Lints one PostgreSQL statement: `json` is libpg_query's tree of it (the
 * "stmt" member of one RawStmt, a jansson json_t*). */
void dbk__lint_pg_stmt(dbk__lint_ctx *c, const void *json);

/* Lints one SQLite statement (text in c->stmt). */
void dbk__lint_sqlite_stmt(dbk__lint_ctx *c);

/* The tables a PostgreSQL statement names (lower-case, "schema.table" when
 * qualified), at most `max`, each at most 127 bytes. Returns how many;
 * 0 when it does not parse. */
/* src[0, len) on one line into dst (n bytes): runs of white space become
 * one space, other control bytes '?'; cut to fit, with "..." when
 * `ellipsis` and something was cut. */
void dbk__lint_one_line(char *dst, size_t n, const char *src, size_t len, bool ellipsis);

size_t dbk__lint_relations(const char *sql, char (*names)[128], size_t max);

#endif
