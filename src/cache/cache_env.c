/*
 * The cache's settings from the process environment
 * (dbk_cache_opts_from_env).
 *
 * Why a call of its own: dbk_cache_open() reads only its arguments, as
 * dbk_pool_open() does, and the environment is read where the program
 * asks for it, the way dbk_config_from_env() does for the database. A
 * library call that consults getenv() behind the caller's back surprises a
 * program that builds its options in code (a test that sets CACHE_URL for
 * a child process changes every cache the parent opens) and races with a
 * thread that calls setenv().
 *
 * Shape. The variables map onto what the options already express:
 * CACHE_URL (then REDIS_URL) becomes opts->url, and CACHE_AUTO_PIPELINE
 * becomes the URL's own auto_pipeline= parameter, so the precedence stays
 * the one the URL documents (a parameter written in the URL wins). The URL
 * is copied into a small owned object, wiped when freed (it may hold a
 * password), and opts->url borrows it until then; dbk_cache_open() copies
 * what it keeps, so the object may be freed right after the open.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/internal.h"
#include "cache_int.h"

/* Longest URL taken from the environment; redis URLs are far shorter. */
#define ENV_URL_MAX 4096

struct dbk_cache_env {
    char *url; /* NUL-terminated, wiped on free */
    size_t cap;
};

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* A 0/1 switch (also false/true, off/on, no/yes): *out is -1 when unset or
 * empty. The message names the variable, never its value. */
static dbk_rc env_switch(const char *name, int *out, dbk_error *err)
{
    const char *v = env_nonempty(name);
    *out = -1;
    if (!v)
        return DBK_OK;
    static const char *const no[] = {"0", "false", "off", "no"};
    static const char *const yes[] = {"1", "true", "on", "yes"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, no[i]) == 0)
            *out = 0;
        else if (strcasecmp(v, yes[i]) == 0)
            *out = 1;
    }
    if (*out >= 0)
        return DBK_OK;
    dbk__err(err, DBK_ECONFIG, "%s must be 0 or 1", name);
    dbk__err_hint(err, "also accepted: off/on, false/true, no/yes; or set auto_pipeline=0|1 "
                       "in the cache url, which takes precedence");
    return DBK_ECONFIG;
}

static bool is_redis_url(const char *u)
{
    return strncmp(u, "redis://", 8) == 0 || strncmp(u, "redis-sentinel://", 17) == 0 ||
           strncmp(u, "redis-cluster://", 16) == 0;
}

/* Whether the URL's query already names auto_pipeline. */
static bool has_auto_pipeline(const char *u)
{
    const char *q = strchr(u, '?');
    if (!q)
        return false;
    for (const char *p = q; p; p = strchr(p + 1, '&'))
        if (strncmp(p + 1, "auto_pipeline=", 14) == 0)
            return true;
    return false;
}

void dbk_cache_env_free(dbk_cache_env *env)
{
    if (!env)
        return;
    if (env->url)
        explicit_bzero(env->url, env->cap);
    free(env->url);
    free(env);
}

dbk_rc dbk_cache_opts_from_env(dbk_cache_opts *opts, dbk_cache_env **env, dbk_error *err)
{
    if (env)
        *env = NULL;
    if (!opts || !env)
        return dbk__err(err, DBK_EMISUSE, "dbk_cache_opts_from_env: %s is NULL",
                        !opts ? "opts" : "env");
    if (dbk__opts_check(opts->version, DBK_CACHE_OPTS_VERSION, "dbk_cache_opts", err))
        return DBK_EMISUSE;
    const char *from = "CACHE_URL";
    const char *url = env_nonempty("CACHE_URL");
    if (!url) {
        from = "REDIS_URL";
        url = env_nonempty("REDIS_URL");
    }
    int ap;
    dbk_rc rc = env_switch("CACHE_AUTO_PIPELINE", &ap, err);
    if (rc != DBK_OK)
        return rc;
    if (opts->url) {
        from = "dbk_cache_opts.url";
        url = opts->url;
    }
    dbk_cache_env *e = calloc(1, sizeof *e);
    if (!e)
        return dbk__err(err, DBK_ENOMEM, "out of memory reading the cache environment");
    if (url) {
        size_t n = strnlen(url, ENV_URL_MAX + 1);
        if (n > ENV_URL_MAX) {
            dbk_cache_env_free(e);
            dbk__err(err, DBK_ECONFIG, "%s is longer than %d bytes", from, ENV_URL_MAX);
            dbk__err_hint(err, "a cache url is redis://[[user]:password@]host[:port][/db]");
            return DBK_ECONFIG;
        }
        bool add = ap >= 0 && is_redis_url(url) && !has_auto_pipeline(url);
        e->cap = n + (add ? sizeof "&auto_pipeline=0" : 1);
        e->url = malloc(e->cap);
        if (!e->url) {
            dbk_cache_env_free(e);
            return dbk__err(err, DBK_ENOMEM, "out of memory reading the cache environment");
        }
        memcpy(e->url, url, n);
        e->url[n] = '\0';
        if (add) {
            char *p = e->url + n;
            *p++ = strchr(e->url, '?') ? '&' : '?';
            memcpy(p, "auto_pipeline=", 14);
            p[14] = ap ? '1' : '0';
            p[15] = '\0';
        }
        opts->url = e->url;
    }
    *env = e;
    return DBK_OK;
}
