/*
 * The migration trace: run a migration's statements for real, inside one
 * transaction that is rolled back, and record what each one locked and
 * whether it rewrote a table.
 *
 * Why. The linter reasons from the statement's text; some answers depend on
 * the schema it runs against (varchar(20) -> varchar(50) is free, int ->
 * bigint rewrites). PostgreSQL itself knows: after each statement the
 * backend's own rows in pg_locks show the locks the transaction holds (a
 * lock taken is kept until the end of the transaction, so the difference
 * from the previous statement is what this one added), and a table whose
 * pg_class.relfilenode changed was written anew. The caller runs this on a
 * throwaway database (`dbkit migrate trace` builds one from the already
 * applied migrations), so nothing of the real one is touched.
 *
 * Sections marked transaction:false are not run: their statements
 * (CONCURRENTLY) cannot run in a transaction, and outside one the locks are
 * gone before they can be read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "../db/db_int.h"
#include "lint_int.h"
#include "migrate_int.h"

typedef struct relfile {
    int64_t oid, node;
    char name[128];
} relfile;

static const char SNAP_SQL[] =
    "SELECT c.oid::bigint, c.relname::text, c.relfilenode::bigint FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1";

static const char LOCKS_SQL[] =
    "SELECT c.relname::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE l.pid = pg_backend_pid() "
    "AND l.locktype = 'relation' AND l.granted AND c.relkind IN ('r', 'p', 'm') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2";

static dbk_rc snapshot(dbk_db *db, relfile **out, size_t *n, dbk_error *err)
{
    dbk_result *r = NULL;
    *out = NULL;
    *n = 0;
    dbk_rc rc = dbk_db_query(db, SNAP_SQL, NULL, 0, &r, err);
    if (rc)
        return rc;
    size_t rows = dbk_result_nrows(r);
    relfile *v = calloc(rows ? rows : 1, sizeof *v);
    if (!v) {
        dbk_result_free(r);
        return dbk__err(err, DBK_ENOMEM, "out of memory tracing");
    }
    for (size_t i = 0; i < rows; i++) {
        const char *name = NULL;
        dbk_result_get_int64(r, i, 0, &v[i].oid, err);
        dbk_result_get_text(r, i, 1, &name, NULL, err);
        dbk_result_get_int64(r, i, 2, &v[i].node, err);
        dbk__strlcpy(v[i].name, name ? name : "", sizeof v[i].name);
    }
    dbk_result_free(r);
    *out = v;
    *n = rows;
    return DBK_OK;
}

static void append(char *buf, size_t n, const char *sep, const char *s)
{
    size_t o = strlen(buf);
    if (o + strlen(sep) + strlen(s) + 1 >= n)
        return;
    snprintf(buf + o, n - o, "%s%s", o ? sep : "", s);
}

/* Locks held now that were not in `seen`; adds them to it. */
static dbk_rc new_locks(dbk_db *db, dbk__names *seen, dbk_trace_step *st, dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, LOCKS_SQL, NULL, 0, &r, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < dbk_result_nrows(r); i++) {
        const char *rel = NULL, *mode = NULL;
        dbk_result_get_text(r, i, 0, &rel, NULL, err);
        dbk_result_get_text(r, i, 1, &mode, NULL, err);
        char k[128];
        snprintf(k, sizeof k, "%.60s %.60s", rel ? rel : "?", mode ? mode : "?");
        append(st->held, sizeof st->held, ", ", k);
        if (dbk__names_has(seen, k))
            continue;
        /* keep the case of the mode names in the output */
        append(st->locks, sizeof st->locks, ", ", k);
        if (mode && strcmp(mode, "AccessExclusiveLock") == 0)
            st->access_exclusive = true;
        if (!dbk__names_add(seen, k)) {
            dbk_result_free(r);
            return dbk__err(err, DBK_ENOMEM, "out of memory tracing");
        }
    }
    dbk_result_free(r);
    return DBK_OK;
}

static dbk_rc trace_section(dbk_db *db, const dbk__migfile *f, const dbk__section *sec,
                            dbk_trace *t, size_t *cap, bool *stop, dbk_error *err)
{
    dbk__stmt *st = NULL;
    size_t n = 0;
    dbk_rc rc = dbk__sql_split(f->text + sec->off, sec->len, sec->line, DBK_ENGINE_POSTGRES, &st,
                               &n, err);
    if (rc)
        return rc;
    dbk__names seen;
    memset(&seen, 0, sizeof seen);
    char *buf = NULL;
    for (size_t i = 0; i < n && rc == DBK_OK; i++) {
        if (t->count == *cap) {
            size_t nc = *cap ? *cap * 2 : 16;
            void *p = realloc(t->steps, nc * sizeof *t->steps);
            if (!p) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory tracing");
                break;
            }
            t->steps = p;
            *cap = nc;
        }
        dbk_trace_step *s = &t->steps[t->count++];
        memset(s, 0, sizeof *s);
        s->line = st[i].line;
        dbk__lint_one_line(s->statement, sizeof s->statement, f->text + sec->off + st[i].off,
                           st[i].len, false);
        if (!sec->transactional || *stop)
            continue;
        free(buf);
        buf = malloc(st[i].len + 1);
        if (!buf) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory tracing");
            break;
        }
        memcpy(buf, f->text + sec->off + st[i].off, st[i].len);
        buf[st[i].len] = '\0';
        relfile *before = NULL, *after = NULL;
        size_t nb = 0, na = 0;
        rc = snapshot(db, &before, &nb, err);
        if (rc)
            break;
        dbk_error e;
        if (dbk__db_exec_script_within(db, buf, DBK__MIGRATION_WAIT_MS, &e) != DBK_OK) {
            dbk__strlcpy(s->error, e.message, sizeof s->error);
            *stop = true;
            free(before);
            continue;
        }
        s->traced = true;
        rc = new_locks(db, &seen, s, err);
        if (rc == DBK_OK)
            rc = snapshot(db, &after, &na, err);
        for (size_t a = 0; rc == DBK_OK && a < na; a++)
            for (size_t b = 0; b < nb; b++)
                if (after[a].oid == before[b].oid && after[a].node != before[b].node)
                    append(s->rewritten, sizeof s->rewritten, ", ", after[a].name);
        free(before);
        free(after);
    }
    free(buf);
    free(st);
    dbk__names_free(&seen);
    return rc;
}

dbk_rc dbk_migrate_trace(dbk_db *db, const char *filename, const char *contents, size_t len,
                         dbk_trace **out, dbk_error *err)
{
    if (!db || !filename || !contents || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_trace: arguments must not be NULL");
    *out = NULL;
    if (dbk__db_in_tx(db) || dbk_db_engine(db) != DBK_ENGINE_POSTGRES)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_migrate_trace needs a PostgreSQL connection outside a transaction");
    if (len == 0)
        len = strlen(contents);
    dbk__migfile f;
    memset(&f, 0, sizeof f);
    dbk_rc rc = DBK_ENOMEM;
    dbk_trace *t = calloc(1, sizeof *t);
    f.path = strdup(filename);
    f.filename = strdup(filename);
    f.text = malloc(len + 1);
    if (!t || !f.path || !f.filename || !f.text) {
        dbk__err(err, DBK_ENOMEM, "out of memory tracing %s", filename);
        goto out;
    }
    memcpy(f.text, contents, len);
    f.text[len] = '\0';
    f.len = len;
    rc = dbk__mig_parse(&f, err);
    if (rc)
        goto out;
    rc = dbk_db_exec(db, "BEGIN", NULL, 0, NULL, err);
    if (rc)
        goto out;
    size_t cap = 0;
    bool stop = false;
    for (size_t s = 0; s < f.nsec && rc == DBK_OK; s++) {
        const dbk__section *sec = &f.sec[s];
        if (sec->dir == DBK__DIR_UP && (!sec->engine || sec->engine == DBK_ENGINE_POSTGRES))
            rc = trace_section(db, &f, sec, t, &cap, &stop, err);
    }
    dbk_error e;
    dbk__db_exec_script_within(db, "ROLLBACK", DBK__MIGRATION_WAIT_MS, &e);
out:
    free(f.path);
    free(f.filename);
    free(f.text);
    if (rc) {
        dbk_trace_free(t);
        return rc;
    }
    *out = t;
    return DBK_OK;
}

void dbk_trace_free(dbk_trace *t)
{
    if (!t)
        return;
    free(t->steps);
    free(t);
}

/* Does the comma-separated list name `table`? */
static bool lists(const char *list, const char *table, const char *mode_prefix)
{
    size_t tl = strlen(table);
    for (const char *p = list; p && *p;) {
        const char *e = strstr(p, ", ");
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l >= tl && strncmp(p, table, tl) == 0 && (l == tl || p[tl] == ' ')) {
            if (!mode_prefix)
                return true;
            const char *m = p + tl + 1;
            for (const char *const *mp = (const char *const[]){"ShareLock", "ShareRowExclusiveLock",
                                                               "ExclusiveLock",
                                                               "AccessExclusiveLock", NULL};
                 *mp; mp++)
                if ((size_t)(l - tl - 1) == strlen(*mp) && strncmp(m, *mp, strlen(*mp)) == 0)
                    return true;
        }
        p = e ? e + 2 : NULL;
    }
    return false;
}

int dbk_trace_judge(const dbk_trace *t, const dbk_lint_finding *f, char *why, size_t n)
{
    char scratch[8];
    if (!why) {
        why = scratch;
        n = sizeof scratch;
    }
    why[0] = '\0';
    if (!t || !f || !f->rule || !f->table[0])
        return -1;
    const char *id = f->rule->id;
    bool rewrite_rule =
        strcmp(id, "column-type-rewrite") == 0 || strcmp(id, "add-column-volatile-default") == 0;
    bool lock_rule = strcmp(id, "index-not-concurrent") == 0 ||
                     strcmp(id, "add-unique-constraint") == 0 ||
                     strcmp(id, "constraint-not-valid") == 0 ||
                     strcmp(id, "set-not-null") == 0 || strcmp(id, "vacuum-full-cluster") == 0;
    if (!rewrite_rule && !lock_rule)
        return -1;
    for (size_t i = 0; i < t->count; i++) {
        const dbk_trace_step *s = &t->steps[i];
        if (s->line != f->line)
            continue;
        if (!s->traced)
            return -1;
        if (rewrite_rule) {
            if (lists(s->rewritten, f->table, NULL)) {
                snprintf(why, n, "trace: rewrote %s", f->table);
                return 1;
            }
            snprintf(why, n, "trace: %s was not rewritten", f->table);
            return 0;
        }
        if (lists(s->held, f->table, "")) {
            snprintf(why, n, "trace: held %s", s->held);
            return 1;
        }
        snprintf(why, n, "trace: no lock blocking writes on %s", f->table);
        return 0;
    }
    return -1;
}
