/*
 * `dbkit gen [--queries DIR] [--out DIR] [--check]`: typed C functions from
 * the annotated queries of db/queries, with types from a throwaway database
 * built from the migrations (dbk_gen_run, dbkit/gen.h). --check writes
 * nothing and exits 6 when a generated file differs from what the current
 * migrations and queries give (for CI).
 */
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit gen [--queries DIR] [--out DIR] [--check]\n"
    "\n"
    "Reads <queries>/*.sql (default db/queries; sqlc's `-- name: Name :kind` format,\n"
    "kinds one, many, exec, execrows, batch, copyfrom; $1..$n, @name, sqlc.arg(name)),\n"
    "prepares every query on a throwaway database migrated from --migrations-dir\n"
    "(made on the server of --url / DATABASE_URL, dropped afterwards) and writes\n"
    "<out>/<file>.h and <out>/<file>.c per query file plus <out>/models.h\n"
    "(default out: db/gen). A query that does not prepare fails with file:line.\n"
    "\n"
    "  --queries DIR   the query files (default db/queries)\n"
    "  --out DIR       where the generated files go (default db/gen)\n"
    "  --check         write nothing; exit 6 when a generated file is missing or differs\n";

int cmd_gen(cli *c, int argc, char **argv)
{
    dbk_gen_opts o = DBK_GEN_OPTS_INIT;
    o.migrations_dir = c->migrations_dir;
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
        if (strcmp(argv[i], "--check") == 0) {
            o.check = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--queries", &o.queries_dir)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--out", &o.out_dir)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }
    dbk_config *cfg = NULL;
    int code = cli_config(c, true, NULL, 0, &cfg);
    if (code)
        return code;
    o.cfg = cfg;
    dbk_gen_report rep;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_gen_run(&o, &rep, &err);
    dbk_config_free(cfg);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", !(o.check && rep.drift));
        jw_kint(&w, "files", (int64_t)rep.files);
        jw_kint(&w, "queries", (int64_t)rep.queries);
        if (o.check) {
            jw_kint(&w, "drift", (int64_t)rep.drift);
            if (rep.drift)
                jw_kstr(&w, "first", rep.first_drift);
        } else {
            jw_kint(&w, "written", (int64_t)rep.written);
        }
        jw_end_obj(&w);
    } else if (o.check && rep.drift) {
        fprintf(stderr,
                "dbkit gen: %zu generated file%s out of date (first: %s)\n"
                "hint: run `dbkit gen` and commit the result\n",
                rep.drift, rep.drift == 1 ? "" : "s", rep.first_drift);
    } else if (!c->quiet) {
        if (o.check)
            printf("%zu queries, %zu files up to date\n", rep.queries, rep.files);
        else
            printf("%zu queries, %zu files (%zu written)\n", rep.queries, rep.files, rep.written);
    }
    return o.check && rep.drift ? CLI_FINDINGS : CLI_OK;
}
