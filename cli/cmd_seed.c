/*
 * `dbkit seed [--env ENV] [--force]`: runs the seed files of --seeds-dir
 * (default db/seeds) through dbk_seed_run(): new and changed seeds in name
 * order, each in its own transaction, tracked in dbkit_seeds.
 */
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit seed [--env ENV] [--force]\n"
    "\n"
    "Runs <seeds-dir>/*.sql (default db/seeds) in name order, then, with --env,\n"
    "<seeds-dir>/ENV/*.sql. Each seed runs in its own transaction and is recorded in\n"
    "the table dbkit_seeds with its SHA-256: it runs again only when the file changed.\n"
    "\n"
    "  --env ENV    also run the seeds of this environment (dev, test, prod, ...)\n"
    "  --force      run every seed, changed or not (seeds must be idempotent:\n"
    "               use upserts, see docs/migrations.md)\n";

int cmd_seed(cli *c, int argc, char **argv)
{
    const char *env = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
        if (strcmp(argv[i], "--force") == 0) {
            force = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--env", &env)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }
    dbk_migrate_opts envo = DBK_MIGRATE_OPTS_INIT;
    int envcode = cli_migrate_env(c, &envo);
    if (envcode)
        return envcode;
    dbk_conn *conn = NULL;
    char url[512];
    int code = cli_connect(c, true, url, sizeof url, &conn);
    if (code)
        return code;
    cli_report rep;
    cli_report_init(&rep, c);
    dbk_migrate_opts o = DBK_MIGRATE_OPTS_INIT;
    o.lock_timeout_ms = c->lock_timeout_ms;
    o.force = force;
    o.env = env;
    o.report = cli_report_event;
    o.report_ctx = &rep;
    o.statement_lock_timeout_ms = envo.statement_lock_timeout_ms;
    o.statement_timeout_ms = envo.statement_timeout_ms;
    dbk_migrate_source src;
    memset(&src, 0, sizeof src);
    src.dir = c->seeds_dir;
    dbk_error err;
    dbk_error_clear(&err);
    int ran = 0;
    cli_info(c, "seeding: %s\n", url);
    dbk_rc rc = dbk_seed_run(dbk_conn_db(conn), &src, &o, &ran, &err);
    dbk_conn_close(conn);
    if (rc) {
        cli_report_print_failure(&rep);
        code = cli_fail_ex(c, rc, &err, cli_report_json_extra, &rep);
        cli_report_free(&rep);
        return code;
    }
    size_t skipped = rep.nsteps - (size_t)ran;
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kint(&w, "ran", ran);
        jw_kint(&w, "skipped", (int64_t)skipped);
        cli_report_json(&w, &rep, "seeds");
        jw_end_obj(&w);
    } else if (!c->quiet) {
        printf("%d seed%s ran, %zu unchanged\n", ran, ran == 1 ? "" : "s", skipped);
    }
    cli_report_free(&rep);
    return CLI_OK;
}
