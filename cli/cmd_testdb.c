/*
 * `dbkit testdb new|drop URL|prune`: fresh migrated databases for test
 * suites written in any language, through dbk_testdb (dbkit/testdb.h).
 *
 * `new` prints the URL of a database cloned from the template of
 * --migrations-dir (built on first use) and keeps it: the owner recorded in
 * its name is the parent process (the shell or runner that called us), so
 * `prune` drops it once that process is gone, if `drop` was never called.
 */
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit testdb new [--empty] [--name NAME]\n"
    "       dbkit testdb drop URL\n"
    "       dbkit testdb prune\n"
    "\n"
    "The server is --url (or DATABASE_URL): for PostgreSQL a database to connect to\n"
    "with CREATEDB rights (postgres), for SQLite a file whose directory holds the\n"
    "test databases.\n"
    "\n"
    "  new     clone a fresh database from the template of --migrations-dir (built\n"
    "          once per set of migration files) and print its URL (with the password,\n"
    "          if the server URL has one). Owned by the calling shell for `prune`.\n"
    "    --empty       no migrations: an empty database\n"
    "    --name NAME   this name instead of dbkit_t_<host>_<pid>_<start>_<n>\n"
    "                  (never pruned; an existing database of that name is dropped)\n"
    "  drop    drop a test database (only dbkit_t_... names)\n"
    "  prune   drop the test databases of this host whose owner process is gone\n";

static int do_new(cli *c, dbk_config *cfg, int argc, char **argv)
{
    dbk_testdb_opts o = DBK_TESTDB_OPTS_INIT;
    o.owner_pid = (long)getppid();
    o.lock_timeout_ms = c->lock_timeout_ms;
    bool empty = false;
    for (int i = 2; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--empty") == 0) {
            empty = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--name", &o.name)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }
    dbk_error err;
    dbk_error_clear(&err);
    dbk_testdb *t = NULL;
    dbk_rc rc = dbk_testdb_new(cfg, empty ? NULL : c->migrations_dir, &o, &t, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "url", dbk_testdb_url(t));
        jw_kstr(&w, "name", dbk_testdb_name(t));
        jw_end_obj(&w);
    } else {
        printf("%s\n", dbk_testdb_url(t));
    }
    dbk_testdb_free(t);
    return CLI_OK;
}

int cmd_testdb(cli *c, int argc, char **argv)
{
    if (argc < 2 || cli_is_help(argv[1])) {
        fputs(HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    for (int i = 2; i < argc; i++)
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
    const char *sub = argv[1];
    if (strcmp(sub, "new") != 0 && strcmp(sub, "drop") != 0 && strcmp(sub, "prune") != 0)
        return cli_usage(c, "unknown subcommand '%s' (new, drop, prune)", sub);
    if (strcmp(sub, "drop") == 0 && argc != 3)
        return cli_usage(c, "drop takes one URL");
    if (strcmp(sub, "prune") == 0 && argc != 2)
        return cli_usage(c, "unexpected argument '%s'", argv[2]);
    dbk_config *cfg = NULL;
    int code = cli_config(c, true, NULL, 0, &cfg);
    if (code)
        return code;
    dbk_error err;
    dbk_error_clear(&err);
    if (strcmp(sub, "new") == 0) {
        code = do_new(c, cfg, argc, argv);
    } else if (strcmp(sub, "drop") == 0) {
        dbk_rc rc = dbk_testdb_drop_url(cfg, argv[2], &err);
        if (rc) {
            code = cli_fail(c, rc, &err);
        } else if (c->json) {
            jw w;
            jw_init(&w, stdout);
            jw_obj(&w);
            jw_kbool(&w, "ok", true);
            jw_end_obj(&w);
        }
    } else {
        int dropped = 0;
        dbk_rc rc = dbk_testdb_prune(cfg, &dropped, &err);
        if (rc) {
            code = cli_fail(c, rc, &err);
        } else if (c->json) {
            jw w;
            jw_init(&w, stdout);
            jw_obj(&w);
            jw_kbool(&w, "ok", true);
            jw_kint(&w, "dropped", dropped);
            jw_end_obj(&w);
        } else {
            cli_info(c, "%d leftover test database%s dropped\n", dropped, dropped == 1 ? "" : "s");
        }
    }
    dbk_config_free(cfg);
    return code;
}
