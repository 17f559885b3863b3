/*
 * `dbkit doc migration SCHEMA.json`: writes the migration that creates a
 * document collection (dbkit/doc.h) - its table and its indexes - for the
 * engine of --url (or --engine), as a new file in --migrations-dir named
 * like `dbkit migrate new` names them, or on stdout with --stdout.
 *
 * The schema file is the JSON form of dbk_doc_schema read by
 * dbk_doc_schema_parse(); the DDL is dbk_doc_migration_sql()'s, the same
 * text dbk_doc_coll_ensure() runs, so a service and its migrations agree.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit doc migration SCHEMA.json [--engine sqlite|postgres] [--stdout]\n"
    "\n"
    "  migration   write <migrations-dir>/<UTC timestamp>_doc_<collection>.sql with the\n"
    "              table and indexes of the document collection described in SCHEMA.json\n"
    "              (docs/documents.md shows the format)\n"
    "    --engine E   sqlite or postgres (default: the engine of --url / DATABASE_URL)\n"
    "    --stdout     print the SQL instead of writing a file\n";

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r < 4096)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int do_migration(cli *c, int argc, char **argv)
{
    const char *file = NULL, *engine_name = NULL;
    bool to_stdout = false;
    for (int i = 2; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--stdout") == 0) {
            to_stdout = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--engine", &engine_name)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage(c, "doc migration: unknown option %s", argv[i]);
        } else if (file) {
            return cli_usage(c, "doc migration takes one SCHEMA.json");
        } else {
            file = argv[i];
        }
    }
    if (!file)
        return cli_usage(c, "doc migration needs a SCHEMA.json");
    dbk_error err;
    dbk_error_clear(&err);
    dbk_engine engine;
    if (engine_name && strcmp(engine_name, "sqlite") == 0) {
        engine = DBK_ENGINE_SQLITE;
    } else if (engine_name && strcmp(engine_name, "postgres") == 0) {
        engine = DBK_ENGINE_POSTGRES;
    } else if (engine_name) {
        return cli_usage(c, "--engine is sqlite or postgres, got '%s'", engine_name);
    } else {
        dbk_config *cfg = NULL;
        dbk_rc rc = c->url ? dbk_config_from_url(c->url, &cfg, &err) : dbk_config_from_env(&cfg, &err);
        if (rc)
            return cli_fail(c, rc, &err);
        engine = dbk_config_engine(cfg);
        dbk_config_free(cfg);
    }
    size_t len = 0;
    char *text = slurp(file, &len);
    if (!text) {
        snprintf(err.message, sizeof err.message, "cannot read %.400s", file);
        err.code = DBK_EIO;
        return cli_fail(c, DBK_EIO, &err);
    }
    dbk_doc_schema *schema = NULL;
    dbk_rc rc = dbk_doc_schema_parse(text, len, &schema, &err);
    free(text);
    if (rc)
        return cli_fail(c, rc, &err);
    char *sql = NULL;
    rc = dbk_doc_migration_sql(schema, engine, &sql, &err);
    if (rc) {
        dbk_doc_schema_free(schema);
        return cli_fail(c, rc, &err);
    }
    /* the migration file: up creates, down drops the table (and so its
     * indexes) */
    size_t blen = strlen(sql) + 256;
    char *body = malloc(blen);
    if (!body) {
        dbk_free(sql);
        dbk_doc_schema_free(schema);
        err.code = DBK_ENOMEM;
        snprintf(err.message, sizeof err.message, "out of memory");
        return cli_fail(c, DBK_ENOMEM, &err);
    }
    snprintf(body, blen,
             "-- document collection \"%s\" (written by dbkit doc migration)\n"
             "-- migrate:up\n%s\n-- migrate:down\nDROP TABLE IF EXISTS \"%s\";\n",
             schema->collection, sql, schema->collection);
    dbk_free(sql);
    sql = body;
    int code = CLI_OK;
    if (to_stdout) {
        fputs(sql, stdout);
    } else {
        char name[128], path[4096];
        snprintf(name, sizeof name, "doc_%s", schema->collection);
        rc = dbk_migrate_create(c->migrations_dir, name, 0, path, sizeof path, &err);
        FILE *f = rc == DBK_OK ? fopen(path, "w") : NULL;
        if (rc == DBK_OK && (!f || fputs(sql, f) < 0)) {
            snprintf(err.message, sizeof err.message, "cannot write %.400s", path);
            err.code = rc = DBK_EIO;
        }
        if (f && fclose(f) != 0 && rc == DBK_OK) {
            snprintf(err.message, sizeof err.message, "cannot write %.400s", path);
            err.code = rc = DBK_EIO;
        }
        if (rc) {
            code = cli_fail(c, rc, &err);
        } else if (c->json) {
            jw w;
            jw_init(&w, stdout);
            jw_obj(&w);
            jw_kbool(&w, "ok", true);
            jw_kstr(&w, "file", path);
            jw_kstr(&w, "collection", schema->collection);
            jw_end_obj(&w);
        } else if (!c->quiet) {
            printf("created %s\n", path);
        }
    }
    free(sql);
    dbk_doc_schema_free(schema);
    return code;
}

int cmd_doc(cli *c, int argc, char **argv)
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
    if (strcmp(argv[1], "migration") == 0)
        return do_migration(c, argc, argv);
    return cli_usage(c, "doc: unknown subcommand '%s'", argv[1]);
}
