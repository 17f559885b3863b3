/*
 * `dbkit advise [--log FILE] [--top N]`: the statements that cost the most
 * time in total, each run through the `explain` analysis.
 *
 * Two sources. A query log written by the diagnostics module (diag.h fixes
 * its line format: `... query duration_ms=<ms> rows=<n> rc=<NAME>
 * sql="<escaped>"`, with any prefix before `query`), grouped here by exact
 * SQL text; or, on PostgreSQL without --log, pg_stat_statements, which
 * already groups by normalized statement. Either way the SQL has $n
 * placeholders without values, so plans are generic: EXPLAIN
 * (GENERIC_PLAN) from PostgreSQL 16, before that PREPARE + EXPLAIN EXECUTE
 * under plan_cache_mode = force_generic_plan (see cmd_explain.c); SQLite
 * plans them as NULL. Only reads are explained (EXPLAIN never runs them,
 * but the advice is about queries); a statement cut short in the log is
 * listed and not explained.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit advise [--log FILE] [--top N] [--reads-only] [--min-rows N] [--no-verify]\n"
    "                    [--exit-code]\n"
    "\n"
    "Ranks statements by total time and explains the top N (default 10) that are reads:\n"
    "plan, findings and index suggestions as `dbkit explain` gives them.\n"
    "  --log FILE   a dbkit query log (lines `... query duration_ms=... rows=... rc=...\n"
    "               sql=\"...\"`; `-` reads stdin). Without --log, PostgreSQL's\n"
    "               pg_stat_statements (the extension must be in shared_preload_libraries).\n"
    "  --top N      how many statements (default 10)\n"
    "  --reads-only rank only reads (SELECT / WITH / VALUES), leaving writes out\n"
    "  --min-rows N, --no-verify   as for explain\n"
    "  --exit-code  exit 6 when any statement has findings\n";

typedef struct stmt {
    char *sql;
    bool truncated;
    int64_t calls, rows, errors;
    double total_ms, max_ms;
    struct stmt *next; /* hash chain */
} stmt;

typedef struct stmts {
    stmt **bucket;
    size_t nbuckets;
    stmt **all;
    size_t n, cap;
} stmts;

static uint64_t fnv(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void stmts_free(stmts *v)
{
    for (size_t i = 0; i < v->n; i++) {
        free(v->all[i]->sql);
        free(v->all[i]);
    }
    free(v->all);
    free(v->bucket);
    memset(v, 0, sizeof *v);
}

static stmt *stmts_get(stmts *v, const char *sql)
{
    if (!v->bucket) {
        v->nbuckets = 4096;
        v->bucket = calloc(v->nbuckets, sizeof *v->bucket);
        if (!v->bucket)
            return NULL;
    }
    size_t b = fnv(sql) % v->nbuckets;
    for (stmt *s = v->bucket[b]; s; s = s->next)
        if (strcmp(s->sql, sql) == 0)
            return s;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        stmt **p = realloc(v->all, nc * sizeof *p);
        if (!p)
            return NULL;
        v->all = p;
        v->cap = nc;
    }
    stmt *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->sql = dg_strdup(sql);
    if (!s->sql) {
        free(s);
        return NULL;
    }
    s->next = v->bucket[b];
    v->bucket[b] = s;
    v->all[v->n++] = s;
    return s;
}

/* Parses one log line (dbk_diag_parse_line: the library's own reader of
 * its format); false when it is not a query line. *sql is malloc'd,
 * unescaped. */
static bool parse_line(const char *line, double *ms, int64_t *rows, bool *ok, char **sql,
                       bool *truncated)
{
    size_t cap = strlen(line) + 1;
    char *buf = malloc(cap);
    dbk_diag_line dl;
    if (!buf || dbk_diag_parse_line(line, &dl, buf, cap) != DBK_OK) {
        free(buf);
        return false;
    }
    *ms = dl.duration_ms;
    *rows = dl.rows;
    *ok = dl.rc == DBK_OK;
    *truncated = dl.truncated;
    *sql = buf;
    return true;
}

static int read_log(const cli *c, const char *path, stmts *v, size_t *nlines)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        dbk_error err;
        dbk_error_clear(&err);
        snprintf(err.message, sizeof err.message, "cannot open %.300s: %s", path,
                 strerror(errno));
        return cli_fail(c, DBK_EIO, &err);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    *nlines = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = '\0';
        double ms = 0;
        int64_t rows = 0;
        bool ok = true, truncated = false;
        char *sql = NULL;
        if (!parse_line(line, &ms, &rows, &ok, &sql, &truncated))
            continue;
        stmt *s = stmts_get(v, sql);
        free(sql);
        if (!s)
            break;
        (*nlines)++;
        s->calls++;
        s->total_ms += ms;
        if (ms > s->max_ms)
            s->max_ms = ms;
        s->rows += rows;
        s->errors += !ok;
        s->truncated = truncated;
    }
    free(line);
    if (f != stdin)
        fclose(f);
    return CLI_OK;
}

static const char PGSS_QUERY[] =
    "SELECT query, calls, total_exec_time::float8, max_exec_time::float8, rows "
    "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = "
    "current_database()) AND toplevel "
    "AND query !~* '^\\s*(EXPLAIN|PREPARE|EXECUTE|DEALLOCATE|SET|RESET|SHOW|BEGIN|COMMIT|"
    "ROLLBACK|SAVEPOINT|RELEASE|CREATE EXTENSION|ANALYZE|VACUUM)\\M' "
    "AND query !~ '\\m(pg_stat_statements\\w*|hypopg_\\w+|pg_class|pg_attribute|pg_constraint|"
    "pg_index|pg_namespace|dbkit_explain_stmt|dbkit_migrations|dbkit_seeds)\\M' "
    "ORDER BY total_exec_time DESC LIMIT $1";

static dbk_rc read_pgss(dbk_db *db, int64_t top, stmts *v, dbk_error *err)
{
    dbk_error e2;
    dbk_error_clear(&e2);
    dbk_db_exec(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", NULL, 0, NULL, &e2);
    char buf[32];
    /* More rows than asked for: --reads-only drops writes afterwards. */
    snprintf(buf, sizeof buf, "%lld", (long long)(top * 10 + 100));
    dbk_value p = dbk_text(buf);
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(db, PGSS_QUERY, &p, 1, &r, err);
    if (rc) {
        if (e2.message[0])
            snprintf(err->message, sizeof err->message,
                     "pg_stat_statements is not available: %.400s", e2.message);
        snprintf(err->hint, sizeof err->hint,
                 "add pg_stat_statements to shared_preload_libraries (server restart), or "
                 "pass --log FILE with a dbkit query log");
        return rc;
    }
    for (size_t i = 0; i < dbk_result_nrows(r); i++) {
        const char *q = NULL;
        dbk_result_get_text(r, i, 0, &q, NULL, NULL);
        stmt *s = stmts_get(v, q ? q : "");
        if (!s) {
            dbk_result_free(r);
            snprintf(err->message, sizeof err->message, "out of memory");
            return DBK_ENOMEM;
        }
        dbk_result_get_int64(r, i, 1, &s->calls, NULL);
        dbk_result_get_double(r, i, 2, &s->total_ms, NULL);
        dbk_result_get_double(r, i, 3, &s->max_ms, NULL);
        dbk_result_get_int64(r, i, 4, &s->rows, NULL);
    }
    dbk_result_free(r);
    return DBK_OK;
}

static int by_total(const void *a, const void *b)
{
    const stmt *x = *(stmt *const *)a, *y = *(stmt *const *)b;
    return x->total_ms < y->total_ms ? 1 : x->total_ms > y->total_ms ? -1 : 0;
}

int cmd_advise(cli *c, int argc, char **argv)
{
    const char *log = NULL;
    int64_t top = 10;
    bool exit_code = false, reads_only = false;
    dg_explain_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--log", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            log = v;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--top", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_i64(v, &top) || top < 1 || top > 1000)
                return cli_usage(c, "--top takes 1..1000, got '%s'", v);
        } else if ((r = dg_explain_opt(c, argc, argv, &i, &o)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else if (strcmp(argv[i], "--exit-code") == 0) {
            exit_code = true;
        } else if (strcmp(argv[i], "--reads-only") == 0) {
            reads_only = true;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }

    stmts v;
    memset(&v, 0, sizeof v);
    size_t nlines = 0;
    if (log) {
        int code = read_log(c, log, &v, &nlines);
        if (code) {
            stmts_free(&v);
            return code;
        }
    }
    dbk_conn *conn = NULL;
    int code = cli_connect(c, false, NULL, 0, &conn);
    if (code) {
        stmts_free(&v);
        return code;
    }
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    dbk_error_clear(&err);
    if (!log) {
        if (dbk_db_engine(db) != DBK_ENGINE_POSTGRES) {
            dbk_conn_close(conn);
            return cli_usage(c, "advise on SQLite needs --log FILE (pg_stat_statements is "
                                "PostgreSQL only)");
        }
        dbk_rc rc = read_pgss(db, top, &v, &err);
        if (rc) {
            dbk_conn_close(conn);
            stmts_free(&v);
            return cli_fail(c, rc, &err);
        }
    }
    if (v.n > 1)
        qsort(v.all, v.n, sizeof *v.all, by_total);
    size_t eligible = 0;
    for (size_t i = 0; i < v.n; i++)
        eligible += !reads_only || dg_sql_is_read(v.all[i]->sql);
    size_t n = eligible < (size_t)top ? eligible : (size_t)top;
    const char *source = log ? "log" : "pg_stat_statements";

    char *mem = NULL;
    size_t memlen = 0;
    FILE *mf = NULL;
    jw w;
    if (c->json) {
        mf = open_memstream(&mem, &memlen);
        if (!mf) {
            dbk_conn_close(conn);
            stmts_free(&v);
            return CLI_ERROR;
        }
        jw_init(&w, mf);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "source", source);
        if (log)
            jw_kint(&w, "log_lines", (int64_t)nlines);
        jw_kint(&w, "distinct_statements", (int64_t)v.n);
        jw_key(&w, "statements");
        jw_arr(&w);
    } else if (!c->quiet) {
        if (log)
            printf("%zu statement%s from %zu query log line%s in %s; top %zu by total time:\n",
                   v.n, v.n == 1 ? "" : "s", nlines, nlines == 1 ? "" : "s", log, n);
        else
            printf("top %zu statement%s by total time (pg_stat_statements):\n", n,
                   n == 1 ? "" : "s");
    }
    size_t total_findings = 0;
    for (size_t i = 0, k = 0; i < n && k < v.n; i++, k++) {
        while (k < v.n && reads_only && !dg_sql_is_read(v.all[k]->sql))
            k++;
        if (k >= v.n)
            break;
        stmt *s = v.all[k];
        double mean = s->calls ? s->total_ms / (double)s->calls : 0;
        const char *skip = NULL;
        if (s->truncated)
            skip = "the SQL text was cut in the log";
        else if (!dg_sql_is_read(s->sql))
            skip = "not a read (SELECT): not explained";
        if (mf) {
            jw_obj(&w);
            jw_kint(&w, "rank", (int64_t)i + 1);
            jw_kstr(&w, "sql", s->sql);
            jw_kint(&w, "calls", s->calls);
            jw_key(&w, "total_ms");
            jw_double(&w, s->total_ms);
            jw_key(&w, "mean_ms");
            jw_double(&w, mean);
            jw_key(&w, "max_ms");
            jw_double(&w, s->max_ms);
            jw_kint(&w, "rows", s->rows);
            if (log)
                jw_kint(&w, "errors", s->errors);
        } else if (!c->quiet) {
            printf("\n#%zu  total %.3f ms  calls %lld  mean %.3f ms  max %.3f ms  rows %lld",
                   i + 1, s->total_ms, (long long)s->calls, mean, s->max_ms,
                   (long long)s->rows);
            if (s->errors)
                printf("  errors %lld", (long long)s->errors);
            printf("\n    %s\n", s->sql);
        }
        if (skip) {
            if (mf) {
                jw_kbool(&w, "explained", false);
                jw_kstr(&w, "note", skip);
                jw_end_obj(&w);
            } else if (!c->quiet) {
                printf("    (%s)\n", skip);
            }
            continue;
        }
        size_t nf = 0;
        dbk_error e2;
        dbk_error_clear(&e2);
        if (mf)
            jw_kbool(&w, "explained", true);
        dbk_rc rc = dg_explain(c, db, s->sql, NULL, 0, &o, mf ? &w : NULL, "    ", &nf, &e2);
        if (rc) {
            if (mf) {
                jw_kstr(&w, "note", "could not explain");
                jw_kstr(&w, "error", e2.message);
            } else if (!c->quiet) {
                printf("    could not explain: %s\n", e2.message);
            }
        }
        if (mf)
            jw_end_obj(&w);
        total_findings += nf;
    }
    dbk_conn_close(conn);
    stmts_free(&v);
    if (mf) {
        jw_end_arr(&w);
        jw_kint(&w, "finding_count", (int64_t)total_findings);
        jw_end_obj(&w);
        fclose(mf);
        fwrite(mem, 1, memlen, stdout);
        free(mem);
    } else if (!c->quiet) {
        printf("\n%zu finding%s in the top %zu statement%s\n", total_findings,
               total_findings == 1 ? "" : "s", n, n == 1 ? "" : "s");
    }
    return exit_code && total_findings > 0 ? CLI_FINDINGS : CLI_OK;
}
