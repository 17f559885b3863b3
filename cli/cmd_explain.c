/*
 * `dbkit explain [--analyze] "SQL" [ARG ...]`: the statement's plan, what in
 * it is likely slow, and which index would help.
 *
 * PostgreSQL: EXPLAIN (FORMAT JSON) runs with the arguments bound as text
 * parameters like `dbkit query`. Rather than parsing JSON in C, the plan
 * document is handed back to the server, which flattens the node tree with
 * its own JSON functions into one row per node (depth-first order). A
 * statement whose $n placeholders have no arguments gets a generic plan:
 * EXPLAIN (GENERIC_PLAN) from PostgreSQL 16, before that PREPARE + EXPLAIN
 * EXECUTE with NULL arguments under plan_cache_mode = force_generic_plan
 * (the generic plan does not look at the NULLs).
 *
 * SQLite: EXPLAIN QUERY PLAN. Its rows say "SCAN t" (whole table) or
 * "SEARCH t USING INDEX ...", and "USE TEMP B-TREE FOR ORDER BY" for a sort;
 * they do not name the filter columns, so those come from a small tokenizer
 * over the statement's WHERE / ON / ORDER BY clauses.
 *
 * Findings: (a) a whole-table scan with a filter on a table over the
 * threshold; (b) a sort fed by such a scan; (c) with ANALYZE, a node whose
 * estimated rows are 10x off the actual ones. For (a) and (b) a CREATE INDEX
 * is suggested, built only from columns that the catalog confirms exist;
 * anything inside a function call or an expression is left out on purpose.
 * On PostgreSQL each suggestion is tried as a HypoPG hypothetical index and
 * kept only when the planner's total cost at least halves.
 *
 * The command is also a library used by `dbkit advise` (dg_explain), split
 * into explain_sql.c (the tokenizer), explain_plan.c (reading plans and
 * catalog facts), explain_findings.c, explain_pg.c and explain_sqlite.c
 * (the analysis per engine, HypoPG); this file prints and runs it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "explain.h"

static const char HELP[] =
    "usage: dbkit explain [--analyze [--analyze-writes]] [--min-rows N] [--no-verify]\n"
    "                     [--exit-code] SQL [ARG ...]\n"
    "\n"
    "Prints the plan of SQL and its findings: a whole-table scan with a filter on a\n"
    "table of more than N rows (default 1000), a sort not served by an index, and with\n"
    "--analyze (PostgreSQL) estimated vs actual rows off by 10x or more. Scans and sorts\n"
    "come with a suggested CREATE INDEX; on PostgreSQL with the HypoPG extension each\n"
    "suggestion is checked with a hypothetical index and kept only if it halves the\n"
    "planner's cost. ARGs are bound to $1.. as text; placeholders without ARGs give a\n"
    "generic plan.\n"
    "  --analyze          run the statement (EXPLAIN ANALYZE, BUFFERS); SELECT only\n"
    "  --analyze-writes   also ANALYZE writes, inside a transaction that is rolled back\n"
    "  --min-rows N       table size threshold for scan findings (default 1000)\n"
    "  --no-verify        do not try HypoPG\n"
    "  --exit-code        exit 6 when there are findings\n";

/* ---- output ---- */

static void print_plan(const plan *p, bool pg, const char *ind)
{
    printf("%sPlan:\n", ind);
    for (size_t i = 0; i < p->nn; i++) {
        const pnode *x = &p->n[i];
        /* psql's layout: children "->  " six columns deeper. */
        int at = x->depth ? (x->depth - 1) * 6 + 2 : 0;
        printf("%s  %*s%s", ind, at, "", x->depth ? "->  " : "");
        if (!pg) {
            printf("%s\n", x->detail ? x->detail : "");
            continue;
        }
        printf("%s", x->type);
        if (x->index)
            printf(" using %s", x->index);
        if (x->rel) {
            printf(" on %s", x->rel);
            if (x->alias && strcmp(x->alias, x->rel) != 0)
                printf(" %s", x->alias);
        }
        printf("  (cost=%.2f rows=%.0f", x->cost, x->est_rows);
        if (x->has_act)
            printf(") (actual rows=%.0f loops=%.0f", x->act_rows, x->loops);
        printf(")\n");
        int pad = x->depth * 6 + 2;
        if (x->cond)
            printf("%s  %*sCond: %s\n", ind, pad, "", x->cond);
        if (x->filter)
            printf("%s  %*sFilter: %s\n", ind, pad, "", x->filter);
        if (x->sortkey) {
            printf("%s  %*sSort Key: ", ind, pad, "");
            for (const char *k = x->sortkey; *k; k++)
                fputs(*k == '\x1f' ? ", " : (char[2]){*k, 0}, stdout);
            printf("\n");
        }
    }
    if (pg && p->has_exec)
        printf("%s  Execution time: %.3f ms\n", ind, p->exec_ms);
}

static const char *kind_name(int k)
{
    return k == F_SCAN ? "seq_scan" : k == F_SORT ? "sort" : "misestimate";
}

static const char *verdict_name(int v)
{
    return v == V_KEPT ? "verified" : v == V_REJECTED ? "rejected" : "unverified";
}

static void print_findings(const findings *fs, const char *verification, bool pg,
                           const char *ind)
{
    if (!fs->n) {
        printf("%sNo findings.\n", ind);
        return;
    }
    printf("%sFindings:\n", ind);
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->v[i];
        printf("%s  %zu. [%s] %s\n", ind, i + 1, kind_name(f->kind), f->msg);
        if (f->verdict == V_KEPT)
            printf("%s     suggestion: %s;\n%s     verified with HypoPG: cost %.2f -> %.2f "
                   "(-%.0f%%)\n",
                   ind, f->sugg, ind, f->before, f->after,
                   f->before > 0 ? 100.0 * (f->before - f->after) / f->before : 0.0);
        else if (f->verdict == V_REJECTED)
            printf("%s     not suggested: %s would not halve the cost (%.2f -> %.2f, HypoPG)\n",
                   ind, f->sugg, f->before, f->after);
        else if (f->verdict == V_UNVERIFIED)
            printf("%s     suggestion: %s;  (unverified%s)\n", ind, f->sugg,
                   !pg ? ": SQLite has no hypothetical indexes"
                   : strncmp(verification, "off", 3) == 0 ? ": --no-verify"
                                                           : ": HypoPG not available");
        if (f->note[0])
            printf("%s     hint: %s\n", ind, f->note);
    }
    if (pg && strncmp(verification, "unavailable", 11) == 0)
        printf("%sHypoPG %s\n", ind, verification);
}

static void json_out(jw *w, const plan *p, bool pg, const findings *fs, const char *verification)
{
    jw_key(w, "plan");
    jw_arr(w);
    for (size_t i = 0; i < p->nn; i++) {
        const pnode *x = &p->n[i];
        jw_obj(w);
        jw_kint(w, "depth", x->depth);
        jw_kstr(w, pg ? "node" : "detail", pg ? x->type : (x->detail ? x->detail : ""));
        if (x->rel)
            jw_kstr(w, "relation", x->rel);
        if (x->alias)
            jw_kstr(w, "alias", x->alias);
        if (x->index)
            jw_kstr(w, "index", x->index);
        if (x->filter)
            jw_kstr(w, "filter", x->filter);
        if (x->cond)
            jw_kstr(w, "condition", x->cond);
        if (x->sortkey) {
            jw_key(w, "sort_key");
            jw_arr(w);
            for (const char *k = x->sortkey; *k;) {
                size_t n = strcspn(k, "\x1f");
                jw_strn(w, k, n);
                k += n + (k[n] ? 1 : 0);
            }
            jw_end_arr(w);
        }
        if (pg) {
            jw_key(w, "cost");
            jw_double(w, x->cost);
            jw_key(w, "estimated_rows");
            jw_double(w, x->est_rows);
            if (x->has_act) {
                jw_key(w, "actual_rows");
                jw_double(w, x->act_rows);
                jw_key(w, "loops");
                jw_double(w, x->loops);
            }
        }
        jw_end_obj(w);
    }
    jw_end_arr(w);
    if (pg) {
        jw_key(w, "total_cost");
        jw_double(w, p->cost);
        if (p->has_exec) {
            jw_key(w, "execution_ms");
            jw_double(w, p->exec_ms);
        }
    }
    jw_key(w, "findings");
    jw_arr(w);
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->v[i];
        jw_obj(w);
        jw_kstr(w, "kind", kind_name(f->kind));
        if (f->table[0])
            jw_kstr(w, "table", f->table);
        jw_kstr(w, "message", f->msg);
        if (f->verdict != V_NONE) {
            jw_key(w, "suggestion");
            if (f->verdict == V_REJECTED)
                jw_null(w);
            else
                jw_str(w, f->sugg);
            jw_kstr(w, "candidate", f->sugg);
            jw_kstr(w, "verdict", verdict_name(f->verdict));
            if (f->verdict == V_KEPT || f->verdict == V_REJECTED) {
                jw_key(w, "cost_before");
                jw_double(w, f->before);
                jw_key(w, "cost_after");
                jw_double(w, f->after);
            }
        }
        if (f->note[0])
            jw_kstr(w, "hint", f->note);
        jw_end_obj(w);
    }
    jw_end_arr(w);
    jw_kstr(w, "verification", verification);
}

/* ---- the analysis ---- */

dbk_rc dg_explain(const cli *c, dbk_db *db, const char *sql, const dbk_value *params,
                  size_t nparams, const dg_explain_opts *o, jw *w, const char *indent,
                  size_t *nfindings, dbk_error *err)
{
    (void)c;
    bool pg = dbk_db_engine(db) == DBK_ENGINE_POSTGRES;
    xctx x = {sql, params, nparams, dg_sql_max_param(sql) - (int)nparams, o->analyze, 0, NULL};
    plan p = {0};
    findings fs = {0};
    char verification[512] = "";
    dbk_rc rc = DBK_OK;
    *nfindings = 0;
    dbk_error_clear(err);
    bool read = dg_sql_is_read(sql);
    if (o->analyze && x.missing > 0) {
        snprintf(err->message, sizeof err->message,
                 "--analyze runs the statement: it has %d placeholder(s) without arguments",
                 dg_sql_max_param(sql) - (int)nparams);
        snprintf(err->hint, sizeof err->hint, "pass a value for each $n, or drop --analyze");
        return DBK_EINVALID;
    }
    if (pg && o->analyze && !read && !o->analyze_writes) {
        snprintf(err->message, sizeof err->message,
                 "--analyze would run this statement, and it is not a SELECT");
        snprintf(err->hint, sizeof err->hint,
                 "add --analyze-writes to run it in a transaction that is rolled back");
        return DBK_EINVALID;
    }
    if (pg) {
        const char *ver = NULL;
        char vbuf[32] = "";
        if (dbk_db_query_text(db, "SHOW server_version_num", NULL, 0, vbuf, sizeof vbuf, NULL,
                              err) == DBK_OK)
            ver = vbuf;
        int64_t num = 0;
        x.pg_major = ver && cli_parse_i64(ver, &num) && num > 0 && num < 10000000
                         ? (int)(num / 10000)
                         : 15;
        if (o->analyze && !read) {
            rc = dbk_tx_run(db, dgx_tx_explain, &x, NULL, err);
            if (rc == DBK_ECANCELLED && x.json) {
                dbk_error_clear(err);
                rc = DBK_OK;
            }
        } else {
            rc = dgx_pg_explain_doc(db, &x, err);
        }
        if (!rc)
            rc = dgx_pg_flatten(db, x.json, &p, err);
        if (!rc)
            rc = dgx_pg_findings(db, &p, o, &fs, err);
        if (!rc) {
            if (o->no_verify) {
                snprintf(verification, sizeof verification, "off (--no-verify)");
            } else {
                rc = dgx_hypo_verify(db, &x, p.cost, &fs, verification, sizeof verification, err);
            }
        }
    } else {
        rc = dgx_sqlite_plan(db, &x, &p, err);
        if (!rc)
            rc = dgx_sqlite_findings(db, sql, &p, o, &fs, err);
        snprintf(verification, sizeof verification,
                 "unavailable on SQLite: suggestions are unverified");
    }
    if (!rc) {
        *nfindings = fs.n;
        if (w) {
            jw_kstr(w, "engine", pg ? "postgres" : "sqlite");
            jw_kbool(w, "analyze", pg && o->analyze);
            jw_kbool(w, "generic_plan", x.missing > 0);
            json_out(w, &p, pg, &fs, verification);
        } else if (!c->quiet) {
            if (!pg && o->analyze)
                printf("%s(--analyze has no SQLite equivalent: plan only)\n", indent);
            if (x.missing > 0)
                printf(pg ? "%s(generic plan: %d placeholder(s) without a value)\n"
                          : "%s(%d placeholder(s) without a value, planned as NULL)\n",
                       indent, x.missing);
            print_plan(&p, pg, indent);
            print_findings(&fs, verification, pg, indent);
        }
    }
    free(x.json);
    dgx_plan_free(&p);
    free(fs.v);
    return rc;
}

int dg_explain_opt(const cli *c, int argc, char **argv, int *i, dg_explain_opts *o)
{
    const char *v = NULL;
    if (strcmp(argv[*i], "--no-verify") == 0) {
        o->no_verify = true;
        return 1;
    }
    int r = cli_opt_value(c, argc, argv, i, "--min-rows", &v);
    if (r <= 0)
        return r;
    if (!cli_parse_i64(v, &o->min_rows)) {
        cli_usage(c, "--min-rows takes a number of rows, got '%s'", v);
        return -1;
    }
    return 1;
}

int cmd_explain(cli *c, int argc, char **argv)
{
    dg_explain_opts o = {0};
    bool exit_code = false;
    const char *sql = NULL;
    int first_arg = argc;
    bool dashdash = false;
    for (int i = 1; i < argc; i++) {
        int r;
        if (!dashdash && strcmp(argv[i], "--") == 0) {
            dashdash = true;
            continue;
        }
        if (!dashdash && !sql) {
            if (cli_is_help(argv[i])) {
                fputs(HELP, stdout);
                return CLI_OK;
            } else if (strcmp(argv[i], "--analyze") == 0) {
                o.analyze = true;
                continue;
            } else if (strcmp(argv[i], "--analyze-writes") == 0) {
                o.analyze = o.analyze_writes = true;
                continue;
            } else if (strcmp(argv[i], "--exit-code") == 0) {
                exit_code = true;
                continue;
            } else if ((r = dg_explain_opt(c, argc, argv, &i, &o)) != 0) {
                if (r < 0)
                    return CLI_USAGE;
                continue;
            } else if (argv[i][0] == '-' && argv[i][1] == '-') {
                return cli_usage(c, "unknown option '%s'", argv[i]);
            }
        }
        if (!sql) {
            sql = argv[i];
            first_arg = i + 1;
            break;
        }
    }
    if (!sql)
        return cli_usage(c, "explain needs SQL, e.g. dbkit explain 'SELECT * FROM posts WHERE "
                            "user_id = $1' 42");
    {
        toks v = dgx_tokenize(sql);
        bool is_explain = v.n > 0 && dgx_kw(&v.t[0], "explain");
        free(v.t);
        if (is_explain)
            return cli_usage(c, "give the statement without EXPLAIN; use --analyze for ANALYZE");
    }
    int nargs = 0;
    dbk_value *params = calloc((size_t)argc + 1, sizeof *params);
    if (!params)
        return CLI_ERROR;
    for (int i = first_arg; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0 && i == first_arg && !dashdash)
            continue;
        params[nargs++] = dbk_text(argv[i]);
    }
    dbk_conn *conn = NULL;
    int code = cli_connect(c, false, NULL, 0, &conn);
    if (code) {
        free(params);
        return code;
    }
    dbk_error err;
    dbk_error_clear(&err);
    size_t nf = 0;
    jw w;
    if (c->json) {
        /* Built in memory: an error after the first member must still give
         * one well-formed document. */
        char *mem = NULL;
        size_t memlen = 0;
        FILE *mf = open_memstream(&mem, &memlen);
        if (!mf) {
            free(params);
            dbk_conn_close(conn);
            return CLI_ERROR;
        }
        jw_init(&w, mf);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        dbk_rc rc = dg_explain(c, dbk_conn_db(conn), sql, params, (size_t)nargs, &o, &w, "",
                               &nf, &err);
        jw_kint(&w, "finding_count", (int64_t)nf);
        jw_end_obj(&w);
        fclose(mf);
        free(params);
        dbk_conn_close(conn);
        if (rc) {
            free(mem);
            return cli_fail(c, rc, &err);
        }
        fwrite(mem, 1, memlen, stdout);
        free(mem);
    } else {
        dbk_rc rc = dg_explain(c, dbk_conn_db(conn), sql, params, (size_t)nargs, &o, NULL, "",
                               &nf, &err);
        free(params);
        dbk_conn_close(conn);
        if (rc)
            return cli_fail(c, rc, &err);
    }
    return exit_code && nf > 0 ? CLI_FINDINGS : CLI_OK;
}
