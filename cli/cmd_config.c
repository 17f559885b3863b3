/*
 * `dbkit config`: the effective configuration, one setting per line with
 * where its value came from (default, env, url, code), as
 * dbk_config_dump() reports it. The password is always shown as ***.
 */
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit config\n"
    "\n"
    "Prints every setting of the effective configuration (from --url or\n"
    "DATABASE_URL, the DB_* variables and the defaults) with its source.\n"
    "The password is shown as ***. Connects to nothing.\n";

typedef struct vis {
    const cli *c;
    jw *w;
} vis;

static const char *src_name(dbk_config_source s)
{
    return s == DBK_CONFIG_SOURCE_ENV    ? "env"
           : s == DBK_CONFIG_SOURCE_URL  ? "url"
           : s == DBK_CONFIG_SOURCE_CODE ? "code"
                                         : "default";
}

static void visit(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    vis *v = ctx;
    if (v->w) {
        jw_obj(v->w);
        jw_kstr(v->w, "key", key);
        jw_kstr(v->w, "value", value ? value : "");
        jw_kstr(v->w, "source", src_name(src));
        jw_end_obj(v->w);
    } else {
        printf("  %-22s %-40s %s\n", key, value && *value ? value : "-", src_name(src));
    }
}

int cmd_config(cli *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
        return cli_usage(c, "unexpected argument '%s'", argv[i]);
    }
    dbk_config *cfg = NULL;
    int code = cli_config(c, false, NULL, 0, &cfg);
    if (code)
        return code;
    /* Show the configuration as the user set it: no CLI adjustments. */
    dbk_config_free(cfg);
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = c->url ? dbk_config_from_url(c->url, &cfg, &err) : dbk_config_from_env(&cfg, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    char url[512];
    cli_redacted(cfg, url, sizeof url);
    vis v = {c, NULL};
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "url", url);
        jw_kstr(&w, "engine", dbk_config_engine(cfg) == DBK_ENGINE_POSTGRES ? "postgres"
                                                                             : "sqlite");
        jw_key(&w, "settings");
        jw_arr(&w);
        v.w = &w;
        dbk_config_dump(cfg, visit, &v);
        jw_end_arr(&w);
        jw_end_obj(&w);
    } else if (!c->quiet) {
        printf("url: %s\n\n  %-22s %-40s %s\n", url, "SETTING", "VALUE", "SOURCE");
        dbk_config_dump(cfg, visit, &v);
    }
    dbk_config_free(cfg);
    return CLI_OK;
}
