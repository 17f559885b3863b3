/*
 * `dbkit query "SQL" [ARG ...]`: one parameterized statement, printed as a
 * table (like psql) or as JSON.
 *
 * Arguments are bound to $1..$n as text parameters, never spliced into the
 * SQL: PostgreSQL converts them to the column's type as it would a quoted
 * literal ('42' for an integer column), and SQLite compares them with its
 * type affinity rules. The literal argument NULL is not special; use the
 * SQL NULL keyword in the statement instead.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit query SQL [ARG ...]\n"
    "\n"
    "Runs one statement. Each ARG is bound to $1, $2, ... as a text parameter (never\n"
    "pasted into the SQL). Rows are printed as a table, or with --json as\n"
    "{\"ok\":true,\"columns\":[...],\"rows\":[{...}],\"row_count\":N,\"affected\":N}.\n"
    "Statements without rows print the number of rows affected.\n"
    "An argument that starts with '-' must follow `--`:  dbkit query 'SELECT $1' -- -5\n";

static void print_table(const dbk_result *r)
{
    int nc = dbk_result_ncols(r);
    size_t nr = dbk_result_nrows(r);
    size_t *w = calloc((size_t)nc + 1, sizeof *w);
    if (!w)
        return;
    char buf[256];
    for (int j = 0; j < nc; j++)
        w[j] = strlen(dbk_result_colname(r, j));
    for (size_t i = 0; i < nr; i++)
        for (int j = 0; j < nc; j++) {
            size_t len = 0;
            bool is_null = false;
            cli_cell_text(r, i, j, buf, sizeof buf, &len, &is_null);
            if (len > 60)
                len = 60;
            if (len > w[j])
                w[j] = len;
        }
    for (int j = 0; j < nc; j++)
        printf("%s %-*s", j ? " |" : "", (int)w[j], dbk_result_colname(r, j));
    printf("\n");
    for (int j = 0; j < nc; j++) {
        printf("%s", j ? "-+-" : "-");
        for (size_t k = 0; k < w[j]; k++)
            putchar('-');
    }
    printf("-\n");
    for (size_t i = 0; i < nr; i++) {
        for (int j = 0; j < nc; j++) {
            size_t len = 0;
            bool is_null = false;
            const char *s = cli_cell_text(r, i, j, buf, sizeof buf, &len, &is_null);
            /* One line per row: newlines and tabs are shown escaped. */
            printf("%s ", j ? " |" : "");
            size_t shown = 0;
            for (size_t k = 0; k < len && shown < 60; k++, shown++) {
                char ch = s[k];
                if (ch == '\n' || ch == '\t' || ch == '\r') {
                    putchar('\\');
                    putchar(ch == '\n' ? 'n' : ch == '\t' ? 't' : 'r');
                    shown++;
                } else {
                    putchar(ch);
                }
            }
            if (len > 60) {
                fputs("...", stdout);
                shown += 3;
            }
            if (j + 1 < nc)
                for (size_t k = shown; k < w[j]; k++)
                    putchar(' ');
        }
        printf("\n");
    }
    printf("(%zu row%s)\n", nr, nr == 1 ? "" : "s");
    free(w);
}

int cmd_query(cli *c, int argc, char **argv)
{
    const char *sql = NULL;
    int first_arg = argc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            if (!sql && i + 1 < argc) {
                sql = argv[i + 1];
                first_arg = i + 2;
            } else {
                first_arg = sql ? i + 1 : argc;
            }
            break;
        }
        if (!sql && cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
        if (!sql) {
            sql = argv[i];
            first_arg = i + 1;
            continue;
        }
        /* Everything after SQL is an argument until "--". */
        if (strcmp(argv[i], "--") == 0)
            break;
    }
    if (!sql)
        return cli_usage(c, "query needs SQL, e.g. dbkit query 'SELECT * FROM users WHERE id = "
                            "$1' 1");
    /* Collect ARGs (skipping one "--" separator). */
    int nargs = 0;
    dbk_value *params = calloc((size_t)argc + 1, sizeof *params);
    if (!params)
        return CLI_ERROR;
    for (int i = first_arg; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0 && i == first_arg)
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
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(dbk_conn_db(conn), sql, params, (size_t)nargs, &r, &err);
    free(params);
    dbk_conn_close(conn);
    if (rc)
        return cli_fail(c, rc, &err);
    int nc = dbk_result_ncols(r);
    size_t nr = dbk_result_nrows(r);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_key(&w, "columns");
        jw_arr(&w);
        for (int j = 0; j < nc; j++)
            jw_str(&w, dbk_result_colname(r, j));
        jw_end_arr(&w);
        jw_key(&w, "rows");
        jw_arr(&w);
        for (size_t i = 0; i < nr; i++) {
            jw_obj(&w);
            for (int j = 0; j < nc; j++) {
                jw_key(&w, dbk_result_colname(r, j));
                cli_cell_json(&w, r, i, j);
            }
            jw_end_obj(&w);
        }
        jw_end_arr(&w);
        jw_kint(&w, "row_count", (int64_t)nr);
        jw_kint(&w, "affected", dbk_result_affected(r));
        jw_end_obj(&w);
    } else if (!c->quiet) {
        if (nc > 0)
            print_table(r);
        else
            printf("%lld row%s affected\n", (long long)dbk_result_affected(r),
                   dbk_result_affected(r) == 1 ? "" : "s");
    }
    dbk_result_free(r);
    return CLI_OK;
}
