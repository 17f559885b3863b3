/*
 * Configuration: DATABASE_URL, the DB_* environment variables and defaults.
 *
 * Every setting dbkit knows is one row of the `settings` table below: the
 * key (the URL query parameter, also the name dbk_config_set() and
 * dbk_config_dump() use), the environment variable, the kind of value, the
 * engine it applies to, the default, the bounds and the field it fills. The
 * defaults are applied by running each row's default text through the same
 * parser as every other source, so a default can never be something a user
 * could not have typed. Sources are applied in rising precedence (defaults,
 * then the environment, then the URL, later dbk_config_set()), each one
 * overwriting the field and recording itself in cfg->src[row].
 *
 * The URL parser is hand-written rather than general-purpose because the
 * rules that matter here are specific: the password is the only secret and
 * must never reach a message, so the userinfo is split off first (at the
 * last '@' before the query, which tolerates an unencoded '/' or '@' in a
 * password) and every error message quotes only the part it complains
 * about, never the userinfo, and nothing at all when the URL is ambiguous
 * enough that a password might sit outside the userinfo. Input is bounded
 * (URL_MAX) before any work is done. Multi-host URLs become libpq-style
 * comma lists in cfg->host / cfg->port. Unknown PostgreSQL parameters are
 * kept in cfg->extra for libpq; unknown SQLite parameters are errors.
 *
 * Rendering (dbk_config_redacted_url, dbk_redact_url, dbk_config_dump)
 * writes into caller buffers through a counting builder, so it never
 * allocates and reports the length it needed, like snprintf.
 *
 * Files. The settings table, construction, validation and copies are
 * here; parsing one value into a setting is config_value.c, the URL parser
 * config_url.c, the environment config_env.c and rendering
 * config_render.c, all through config_impl.h (the table and its helpers).
 */
#include "config_impl.h"
#include "config_int.h"
#include "internal.h"
#include "url.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>


static const char *const journal_modes[] = {"delete", "truncate", "persist", "memory",
                                            "wal",    "off",      NULL};
static const char *const sync_modes[] = {"off", "normal", "full", "extra", NULL};
static const char *const ssl_modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full", NULL};
static const char *const pooler_modes[] = {"none", "transaction", NULL};
static const char *const tsa_modes[] = {"any",     "read-write", "read-only",
                                        "primary", "standby",    "prefer-standby", NULL};

#define OFF(f) offsetof(struct dbk_config, f)
#define MS_MAX ((long long)INT_MAX)

const struct setting dbk__cfg_settings[S_COUNT_] = {
    [S_ENGINE] = {"engine", NULL, K_ENGINE, SC_ANY, F_COMPONENT | F_NOURL, "sqlite", 0, 0, 0, NULL},
    [S_PATH] = {"path", NULL, K_PATH, SC_SQLITE, F_COMPONENT | F_NOURL, "dbkit.db", 0, 0,
                OFF(sqlite_path), NULL},
    [S_MODE] = {"mode", "DB_SQLITE_MODE", K_MODE, SC_SQLITE, 0, "rwc", 0, 0, 0, NULL},
    [S_BUSY_TIMEOUT] = {"busy_timeout", "DB_SQLITE_BUSY_TIMEOUT_MS", K_MS, SC_SQLITE, 0, "5000", 0,
                        MS_MAX, OFF(busy_timeout_ms), NULL},
    [S_JOURNAL_MODE] = {"journal_mode", "DB_SQLITE_JOURNAL_MODE", K_ENUM, SC_SQLITE, 0, "wal", 0, 0,
                        OFF(journal_mode), journal_modes},
    [S_SYNCHRONOUS] = {"synchronous", "DB_SQLITE_SYNCHRONOUS", K_ENUM, SC_SQLITE, 0, "normal", 0, 0,
                       OFF(synchronous), sync_modes},
    /* KiB up to 1 TiB; MiB up to 1 TiB */
    [S_CACHE_SIZE] = {"cache_size", "DB_SQLITE_CACHE_SIZE_KIB", K_COUNT, SC_SQLITE, 0, "0", 0,
                      1073741824, OFF(sqlite_cache_kib), NULL},
    [S_MMAP_SIZE] = {"mmap_size", "DB_SQLITE_MMAP_SIZE_MIB", K_COUNT, SC_SQLITE, 0, "0", 0, 1048576,
                     OFF(sqlite_mmap_mib), NULL},
    [S_HOST] = {"host", "DB_HOST", K_HOSTS, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(host), NULL},
    [S_PORT] = {"port", "DB_PORT", K_PORTS, SC_PG, F_COMPONENT, "5432", 0, 0, OFF(port), NULL},
    [S_DBNAME] = {"dbname", "DB_NAME", K_TEXT, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(dbname), NULL},
    [S_USER] = {"user", "DB_USER", K_TEXT, SC_PG, F_COMPONENT, NULL, 0, 0, OFF(user), NULL},
    [S_PASSWORD] = {"password", "DB_PASSWORD", K_SECRET, SC_PG, F_COMPONENT | F_NOCODE, NULL, 0, 0,
                    OFF(password), NULL},
    [S_SSLMODE] = {"sslmode", "DB_SSLMODE", K_ENUM, SC_PG, 0, NULL, 0, 0, OFF(sslmode), ssl_modes},
    [S_APPLICATION_NAME] = {"application_name", "DB_APPLICATION_NAME", K_TEXT, SC_PG, 0, "dbkit", 0,
                            0, OFF(application_name), NULL},
    [S_TARGET_SESSION_ATTRS] = {"target_session_attrs", "DB_TARGET_SESSION_ATTRS", K_ENUM, SC_PG, 0,
                                NULL, 0, 0, OFF(target_session_attrs), tsa_modes},
    [S_CONNECT_TIMEOUT] = {"connect_timeout", "DB_CONNECT_TIMEOUT_MS", K_SEC, SC_ANY, 0, "5", 1,
                           3600000, OFF(connect_timeout_ms), NULL},
    [S_STATEMENT_TIMEOUT] = {"statement_timeout", "DB_STATEMENT_TIMEOUT_MS", K_MS, SC_ANY, 0,
                             "30000", 0, MS_MAX, OFF(statement_timeout_ms), NULL},
    [S_LOCK_TIMEOUT] = {"lock_timeout", "DB_LOCK_TIMEOUT_MS", K_MS, SC_PG, 0, "0", 0, MS_MAX,
                        OFF(lock_timeout_ms), NULL},
    [S_STMT_CACHE_SIZE] = {"stmt_cache_size", "DB_STMT_CACHE_SIZE", K_COUNT, SC_ANY, 0, "128", 0,
                           100000, OFF(stmt_cache_size), NULL},
    [S_PREPARED_STATEMENTS] = {"prepared_statements", "DB_PREPARED_STATEMENTS", K_BOOL_CACHE,
                               SC_ANY, F_ALIAS, NULL, 0, 0, OFF(stmt_cache_size), NULL},
    [S_POOL_MAX] = {"pool_max", "DB_POOL_MAX", K_COUNT, SC_ANY, 0, "10", 1, 10000,
                    OFF(pool.max_size), NULL},
    [S_POOL_MIN_IDLE] = {"pool_min_idle", "DB_POOL_MIN_IDLE", K_COUNT, SC_ANY, 0, "0", 0, 10000,
                         OFF(pool.min_idle), NULL},
    [S_ACQUIRE_TIMEOUT] = {"acquire_timeout", "DB_ACQUIRE_TIMEOUT_MS", K_MS, SC_ANY, 0, "5000", 1,
                           MS_MAX, OFF(pool.acquire_timeout_ms), NULL},
    [S_IDLE_TIMEOUT] = {"idle_timeout", "DB_IDLE_TIMEOUT_MS", K_MS, SC_ANY, 0, "600000", 0, MS_MAX,
                        OFF(pool.idle_timeout_ms), NULL},
    [S_MAX_LIFETIME] = {"max_lifetime", "DB_MAX_LIFETIME_MS", K_MS, SC_ANY, 0, "1800000", 0, MS_MAX,
                        OFF(pool.max_lifetime_ms), NULL},
    [S_VALIDATE_AFTER] = {"validate_after", "DB_POOL_VALIDATE_AFTER_MS", K_MS, SC_ANY, 0, "30000",
                          0, MS_MAX, OFF(pool.validate_after_ms), NULL},
    [S_VALIDATE_TIMEOUT] = {"validate_timeout", "DB_POOL_VALIDATE_TIMEOUT_MS", K_MS, SC_ANY, 0,
                            "1000", 1, MS_MAX, OFF(pool.validate_timeout_ms), NULL},
    [S_POOL_MAX_WAITERS] = {"pool_max_waiters", "DB_POOL_MAX_WAITERS", K_COUNT, SC_ANY, 0, "1000",
                            0, 1000000, OFF(pool.max_waiters), NULL},
    [S_LEAK_THRESHOLD] = {"leak_threshold", "DB_POOL_LEAK_THRESHOLD_MS", K_MS, SC_ANY, 0, "0", 0,
                          MS_MAX, OFF(pool.leak_threshold_ms), NULL},
    [S_REPLICAS] = {"replicas", "DATABASE_REPLICA_URLS", K_SECRET, SC_PG, F_NOURL, NULL, 0, 0,
                    OFF(replicas), NULL},
    [S_REPLICA_MAX_LAG] = {"replica_max_lag", "DB_REPLICA_MAX_LAG_MS", K_MS, SC_PG, 0, "1000", 1,
                           MS_MAX, OFF(replica_max_lag_ms), NULL},
    [S_READ_YOUR_WRITES_WAIT] = {"read_your_writes_wait", "DB_READ_YOUR_WRITES_WAIT_MS", K_MS,
                                 SC_PG, 0, "100", 0, MS_MAX, OFF(read_your_writes_wait_ms), NULL},
    [S_POOLER] = {"pooler", "DB_POOLER", K_ENUM, SC_PG, 0, "none", 0, 0, OFF(pooler), pooler_modes},
    [S_AUTO_PIPELINE] = {"auto_pipeline", "DB_AUTO_PIPELINE", K_COUNT, SC_PG, 0, "1", 0, 1,
                         OFF(auto_pipeline), NULL},
    [S_PIPELINE_CONNS] = {"pipeline_conns", "DB_PIPELINE_CONNS", K_COUNT, SC_PG, 0, "0", 0, 10000,
                          OFF(pipeline_conns), NULL},
};

int dbk__cfg_find_setting(const char *key)
{
    for (int i = 0; i < S_COUNT_; i++)
        if (strcmp(dbk__cfg_settings[i].key, key) == 0)
            return i;
    return -1;
}

bool dbk__cfg_is_secret_key(const char *key)
{
    return strcasestr(key, "password") != NULL;
}

char **dbk__cfg_str_slot(dbk_config *cfg, const struct setting *s)
{
    return (char **)(void *)((char *)cfg + s->off);
}

int *dbk__cfg_int_slot(dbk_config *cfg, const struct setting *s)
{
    return (int *)(void *)((char *)cfg + s->off);
}

const int *dbk__cfg_int_slot_c(const dbk_config *cfg, const struct setting *s)
{
    return (const int *)(const void *)((const char *)cfg + s->off);
}

const char *dbk__cfg_str_slot_c(const dbk_config *cfg, const struct setting *s)
{
    return *(char *const *)(const void *)((const char *)cfg + s->off);
}

bool dbk__cfg_applies(const dbk_config *cfg, const struct setting *s)
{
    if (s->scope == SC_PG)
        return cfg->engine == DBK_ENGINE_POSTGRES;
    if (s->scope == SC_SQLITE)
        return cfg->engine == DBK_ENGINE_SQLITE;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Construction, validation, copies                                          */
/* ------------------------------------------------------------------------ */

static dbk_rc apply_defaults(dbk_config *cfg, dbk_error *err)
{
    for (int i = 0; i < S_COUNT_; i++) {
        if (!dbk__cfg_settings[i].def)
            continue;
        struct origin o = {DBK_CONFIG_SOURCE_DEFAULT, dbk__cfg_settings[i].key, true};
        dbk_rc rc = dbk__cfg_apply(cfg, i, dbk__cfg_settings[i].def, &o, err);
        if (rc)
            return rc;
    }
    return DBK_OK;
}

/* Cross-setting checks, and the derived fields. */
static dbk_rc finalize(dbk_config *cfg, dbk_error *err)
{
    cfg->pool.connect_timeout_ms = cfg->connect_timeout_ms;
    if (cfg->pool.min_idle > cfg->pool.max_size) {
        dbk__err(err, DBK_ECONFIG, "pool_min_idle (%d) is larger than pool_max (%d)",
                 cfg->pool.min_idle, cfg->pool.max_size);
        dbk__err_hint(err, "raise pool_max (DB_POOL_MAX) or lower pool_min_idle "
                           "(DB_POOL_MIN_IDLE)");
        return DBK_ECONFIG;
    }
    if (cfg->engine == DBK_ENGINE_POSTGRES) {
        size_t nh = cfg->host ? dbk__cfg_count_list(cfg->host) : 1;
        size_t np = dbk__cfg_count_list(cfg->port);
        if (np > 1 && np != nh) {
            dbk__err(err, DBK_ECONFIG, "%zu ports for %zu host%s", np, nh, nh == 1 ? "" : "s");
            dbk__err_hint(err, "give one port for all hosts, or one port per host");
            return DBK_ECONFIG;
        }
    }
    return DBK_OK;
}

static const char *proc_getenv(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

DBK_API dbk_rc dbk_config_from(const char *url, dbk_getenv_fn getenv_fn, void *ctx,
                               dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_from: out is NULL");
    *out = NULL;
    dbk_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    dbk_rc rc = apply_defaults(cfg, err);
    if (rc == DBK_OK)
        rc = dbk__cfg_apply_env(cfg, getenv_fn, ctx, err);
    if (rc == DBK_OK && url && *url)
        rc = dbk__cfg_parse_url(cfg, url, err);
    if (rc == DBK_OK)
        rc = finalize(cfg, err);
    if (rc) {
        dbk_config_free(cfg);
        return rc;
    }
    *out = cfg;
    return DBK_OK;
}

DBK_API dbk_rc dbk_config_from_url(const char *url, dbk_config **out, dbk_error *err)
{
    return dbk_config_from(url, proc_getenv, NULL, out, err);
}

DBK_API dbk_rc dbk_config_from_env(dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_from_env: out is NULL");
    return dbk_config_from(getenv("DATABASE_URL"), proc_getenv, NULL, out, err);
}

DBK_API void dbk_config_free(dbk_config *cfg)
{
    if (!cfg)
        return;
    dbk__cfg_wipe_free(cfg->password);
    dbk__cfg_wipe_free(cfg->replicas);
    free(cfg->pooler);
    free(cfg->host);
    free(cfg->port);
    free(cfg->dbname);
    free(cfg->user);
    free(cfg->sslmode);
    free(cfg->application_name);
    free(cfg->target_session_attrs);
    free(cfg->sqlite_path);
    free(cfg->journal_mode);
    free(cfg->synchronous);
    for (size_t i = 0; i < cfg->nextra; i++) {
        free(cfg->extra[i].key);
        dbk__cfg_wipe_free(cfg->extra[i].value);
    }
    free(cfg->extra);
    explicit_bzero(cfg, sizeof *cfg);
    free(cfg);
}

static bool dup_field(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return true;
    }
    *dst = strdup(src);
    return *dst != NULL;
}

DBK_API dbk_rc dbk_config_clone(const dbk_config *cfg, dbk_config **out, dbk_error *err)
{
    if (!out)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_clone: out is NULL");
    *out = NULL;
    if (!cfg)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_clone: cfg is NULL");
    dbk_config *c = malloc(sizeof *c);
    if (!c)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    *c = *cfg;
    /* Detach every pointer first so a failure part-way frees only copies. */
    c->host = c->port = c->dbname = c->user = c->password = c->replicas = c->pooler = NULL;
    c->sslmode = c->application_name = c->target_session_attrs = NULL;
    c->sqlite_path = c->journal_mode = c->synchronous = NULL;
    c->extra = NULL;
    c->nextra = 0;
    bool ok = dup_field(&c->host, cfg->host) && dup_field(&c->port, cfg->port) &&
              dup_field(&c->dbname, cfg->dbname) && dup_field(&c->user, cfg->user) &&
              dup_field(&c->password, cfg->password) && dup_field(&c->replicas, cfg->replicas) &&
              dup_field(&c->pooler, cfg->pooler) &&
              dup_field(&c->sslmode, cfg->sslmode) &&
              dup_field(&c->application_name, cfg->application_name) &&
              dup_field(&c->target_session_attrs, cfg->target_session_attrs) &&
              dup_field(&c->sqlite_path, cfg->sqlite_path) &&
              dup_field(&c->journal_mode, cfg->journal_mode) &&
              dup_field(&c->synchronous, cfg->synchronous);
    if (ok && cfg->nextra) {
        c->extra = calloc(cfg->nextra, sizeof *c->extra);
        ok = c->extra != NULL;
        for (size_t i = 0; ok && i < cfg->nextra; i++) {
            c->nextra = i + 1;
            ok = dup_field(&c->extra[i].key, cfg->extra[i].key) &&
                 dup_field(&c->extra[i].value, cfg->extra[i].value);
        }
    }
    if (!ok) {
        dbk_config_free(c);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    *out = c;
    return DBK_OK;
}

DBK_API dbk_rc dbk_config_set(dbk_config *cfg, const char *key, const char *value,
                              dbk_error *err)
{
    if (!cfg || !key || !value)
        return dbk__err(err, DBK_EMISUSE, "dbk_config_set: %s is NULL",
                        !cfg ? "cfg" : !key ? "key" : "value");
    int idx = dbk__cfg_find_setting(key);
    if (idx < 0) {
        char ex[QUOTE_MAX + 8];
        dbk__err(err, DBK_ECONFIG, "unknown setting \"%s\"",
                 dbk__cfg_excerpt(ex, sizeof ex, key, strlen(key)));
        dbk__err_hint(err, "the settings are listed by `dbkit config` and in "
                           "docs/configuration.md");
        return DBK_ECONFIG;
    }
    if (dbk__cfg_settings[idx].flags & F_NOCODE) {
        dbk__err(err, DBK_ECONFIG, "the %s cannot be set from code", key);
        dbk__err_hint(err, "pass it in DATABASE_URL, DB_PASSWORD or DB_PASSWORD_FILE");
        return DBK_ECONFIG;
    }
    /* Work on a copy so that a value failing the cross-checks leaves cfg
     * exactly as it was. */
    dbk_config *c = NULL;
    dbk_rc rc = dbk_config_clone(cfg, &c, err);
    if (rc)
        return rc;
    struct origin o = {DBK_CONFIG_SOURCE_CODE, dbk__cfg_settings[idx].key, true};
    rc = dbk__cfg_apply(c, idx, value, &o, err);
    if (rc == DBK_OK)
        rc = finalize(c, err);
    if (rc == DBK_OK) {
        dbk_config tmp = *cfg;
        *cfg = *c;
        *c = tmp;
    }
    dbk_config_free(c);
    return rc;
}

DBK_API dbk_engine dbk_config_engine(const dbk_config *cfg)
{
    return cfg ? cfg->engine : (dbk_engine)0;
}
