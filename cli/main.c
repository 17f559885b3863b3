/*
 * dbkit - the command-line tool: migrations, seeds, diagnostics and ad-hoc
 * queries against the database that DATABASE_URL (or --url) names.
 *
 * main() only separates the global options (accepted anywhere before
 * "--") from the command and its arguments, then hands over to one
 * cmd_*() per command group. Every command uses the public API only, so
 * the tool is also a worked example of using libdbkit.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char USAGE[] =
    "usage: dbkit [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  migrate new NAME                  write db/migrations/<UTC timestamp>_NAME.sql\n"
    "  migrate up [--to VERSION]         apply pending migrations\n"
    "  migrate down [--steps N | --to VERSION]\n"
    "                                    revert applied migrations (default: the last one)\n"
    "  migrate redo                      revert the last migration and apply it again\n"
    "  migrate status [--exit-code]      applied, pending, changed, missing, dirty\n"
    "  migrate validate                  check applied files against their checksums\n"
    "  migrate dump [--output FILE]      write the schema to db/schema.sql\n"
    "  migrate repair [--mark-applied V | --mark-pending V]\n"
    "                                    resolve an interrupted non-transactional migration\n"
    "  seed [--env ENV] [--force]        run new or changed seeds from db/seeds\n"
    "  doctor                            check the connection, server, pool settings, migrations\n"
    "  query SQL [ARG ...]               run one parameterized query ($1.. bound as text)\n"
    "  explain [--analyze] SQL [ARG ...] the plan, with findings and index suggestions\n"
    "  advise [--log FILE] [--top N]     the slowest statements (query log or\n"
    "                                    pg_stat_statements), explained\n"
    "  check [--repo DIR]                migrations committed, no hard-coded passwords,\n"
    "                                    indexed foreign keys, primary keys\n"
    "  erd [--format mermaid|dot]        the ER diagram of the live schema\n"
    "  gen [--check]                     typed C functions from db/queries/*.sql\n"
    "  testdb new|drop URL|prune         fresh migrated databases for tests (print the URL)\n"
    "  doc migration SCHEMA.json         the migration of a document collection (table, indexes)\n"
    "  config                            the effective configuration and where each value "
    "came from\n"
    "  version                           print the version\n"
    "\n"
    "Global options (anywhere before `--`):\n"
    "  --url URL              database URL (default: DATABASE_URL, then DB_* variables,\n"
    "                         then sqlite:dbkit.db)\n"
    "  --migrations-dir DIR   migration files (default: db/migrations)\n"
    "  --seeds-dir DIR        seed files (default: db/seeds)\n"
    "  --lock-timeout MS      longest wait for the migration lock (default: 60000)\n"
    "  --json                 print one JSON document on stdout\n"
    "  -q, --quiet            print errors only\n"
    "  -h, --help             help (for a command: dbkit COMMAND --help)\n"
    "\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 3 pending migrations (status --exit-code),\n"
    "4 changed/missing/dirty migrations, 5 cannot connect, 6 findings (check; explain and\n"
    "advise with --exit-code). See docs/cli.md.\n";

static int print_version(cli *c)
{
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "version", dbk_version());
        jw_end_obj(&w);
    } else {
        printf("dbkit %s\n", dbk_version());
    }
    return CLI_OK;
}

int main(int argc, char **argv)
{
    cli c;
    memset(&c, 0, sizeof c);
    c.migrations_dir = "db/migrations";
    c.seeds_dir = "db/seeds";

    /* Global options out; the rest (command + its arguments) in order. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        fprintf(stderr, "dbkit: out of memory\n");
        return CLI_ERROR;
    }
    int nrest = 0;
    bool help = false, dashdash = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        int r;
        if (dashdash) {
            rest[nrest++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            dashdash = true;
            rest[nrest++] = argv[i];
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            c.json = true;
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            c.quiet = true;
        } else if (cli_is_help(a) && nrest == 0) {
            help = true;
        } else if ((r = cli_opt_value(&c, argc, argv, &i, "--url", &v)) != 0) {
            if (r < 0)
                goto usage;
            c.url = v;
        } else if ((r = cli_opt_value(&c, argc, argv, &i, "--migrations-dir", &v)) != 0) {
            if (r < 0)
                goto usage;
            c.migrations_dir = v;
        } else if ((r = cli_opt_value(&c, argc, argv, &i, "--seeds-dir", &v)) != 0) {
            if (r < 0)
                goto usage;
            c.seeds_dir = v;
        } else if ((r = cli_opt_value(&c, argc, argv, &i, "--lock-timeout", &v)) != 0) {
            int64_t ms = 0;
            if (r < 0)
                goto usage;
            if (!cli_parse_i64(v, &ms) || ms > 86400000) {
                cli_usage(&c, "--lock-timeout takes milliseconds, got '%s'", v);
                goto usage;
            }
            c.lock_timeout_ms = (int)ms;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    int code;
    if (nrest == 0) {
        fputs(USAGE, help ? stdout : stderr);
        code = help ? CLI_OK : CLI_USAGE;
        goto done;
    }
    const char *cmd = rest[0];
    if (help) {
        /* "dbkit --help migrate" reads as "dbkit migrate --help". */
        rest[nrest++] = "--help";
    }
    c.cmd = cmd;
    if (strcmp(cmd, "migrate") == 0)
        code = cmd_migrate(&c, nrest, rest);
    else if (strcmp(cmd, "seed") == 0)
        code = cmd_seed(&c, nrest, rest);
    else if (strcmp(cmd, "query") == 0)
        code = cmd_query(&c, nrest, rest);
    else if (strcmp(cmd, "doctor") == 0)
        code = cmd_doctor(&c, nrest, rest);
    else if (strcmp(cmd, "config") == 0)
        code = cmd_config(&c, nrest, rest);
    else if (strcmp(cmd, "explain") == 0)
        code = cmd_explain(&c, nrest, rest);
    else if (strcmp(cmd, "advise") == 0)
        code = cmd_advise(&c, nrest, rest);
    else if (strcmp(cmd, "check") == 0)
        code = cmd_check(&c, nrest, rest);
    else if (strcmp(cmd, "erd") == 0)
        code = cmd_erd(&c, nrest, rest);
    else if (strcmp(cmd, "testdb") == 0)
        code = cmd_testdb(&c, nrest, rest);
    else if (strcmp(cmd, "gen") == 0)
        code = cmd_gen(&c, nrest, rest);
    else if (strcmp(cmd, "doc") == 0)
        code = cmd_doc(&c, nrest, rest);
    else if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        code = print_version(&c);
    else if (strcmp(cmd, "help") == 0) {
        fputs(USAGE, stdout);
        code = CLI_OK;
    } else {
        c.cmd = NULL;
        code = cli_usage(&c, "unknown command '%s'", cmd);
    }
done:
    free(rest);
    return code;
usage:
    free(rest);
    return CLI_USAGE;
}
