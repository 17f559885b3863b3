/*
 * dbkit/config.h - configuration from DATABASE_URL, the environment and code.
 *
 * Where settings come from, highest precedence first:
 *   1. code: dbk_config_set() after the config is built;
 *   2. query parameters of DATABASE_URL (postgres://...?pool_max=20);
 *   3. the DB_* environment variables (DB_HOST, DB_POOL_MAX, ...);
 *   4. built-in defaults (one table in src/core/config.c, printed by
 *      `dbkit config`).
 * With nothing set at all, the engine is SQLite on "dbkit.db" in the working
 * directory.
 *
 * Accepted URLs:
 *   postgres://[user[:password]@][host][:port][,host2[:port2]...][/dbname][?k=v&...]
 *   postgresql://...                      (same)
 *   sqlite:relative/path.db   sqlite:///absolute/path.db   sqlite::memory:
 *   sqlite:path.db?mode=ro&busy_timeout=5000&journal_mode=wal
 * Hosts may be bracketed IPv6 literals ("[::1]"). User, password, host and
 * database are percent-decoded.
 *
 * Secrets: the password is kept only in the config object, never printed;
 * dbk_config_redacted_url() and dbk_config_dump() show it as "***".
 *
 * Thread safety: a dbk_config is immutable once handed to dbk_conn_open() or
 * dbk_pool_open() (those copy what they need); building and setting must
 * happen on one thread.
 */
#ifndef DBKIT_CONFIG_H
#define DBKIT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dbk_engine {
    DBK_ENGINE_SQLITE = 1,
    DBK_ENGINE_POSTGRES = 2
} dbk_engine;

/* Where a setting's value came from. */
typedef enum dbk_config_source {
    DBK_SRC_DEFAULT = 0,
    DBK_SRC_ENV = 1,
    DBK_SRC_URL = 2,
    DBK_SRC_CODE = 3
} dbk_config_source;

typedef struct dbk_config dbk_config;

/* Builds a configuration from DATABASE_URL and the DB_* variables of the
 * process environment. On success *out is owned by the caller (free with
 * dbk_config_free). DBK_ECONFIG on malformed input, with a message naming
 * the bad part; DBK_ENOMEM. */
DBK_API dbk_rc dbk_config_from_env(dbk_config **out, dbk_error *err);

/* Same as dbk_config_from_env() but with `url` in place of DATABASE_URL
 * (NULL or "" means "not set"); the DB_* variables still apply. */
DBK_API dbk_rc dbk_config_from_url(const char *url, dbk_config **out, dbk_error *err);

/* Same as dbk_config_from_url() but reads variables through `getenv_fn`
 * instead of the process environment (tests, embedding). With getenv_fn
 * NULL no variable is read at all: the URL and the defaults only. */
typedef const char *(*dbk_getenv_fn)(void *ctx, const char *name);
DBK_API dbk_rc dbk_config_from(const char *url, dbk_getenv_fn getenv_fn, void *ctx,
                               dbk_config **out, dbk_error *err);

/* Deep copy. */
DBK_API dbk_rc dbk_config_clone(const dbk_config *cfg, dbk_config **out, dbk_error *err);

/* Frees a configuration, wiping the password. Accepts NULL. */
DBK_API void dbk_config_free(dbk_config *cfg);

/* Sets one setting from code (highest precedence). Keys are the URL query
 * parameter names listed by dbk_config_dump(), e.g. "pool_max",
 * "statement_timeout", "application_name". DBK_ECONFIG on an unknown key or
 * a bad value. */
DBK_API dbk_rc dbk_config_set(dbk_config *cfg, const char *key, const char *value,
                              dbk_error *err);

DBK_API dbk_engine dbk_config_engine(const dbk_config *cfg);

/* Writes the URL with the password replaced by "***" into buf (always
 * NUL-terminated, truncated to buflen-1). Returns the length it needed. */
DBK_API size_t dbk_config_redacted_url(const dbk_config *cfg, char *buf, size_t buflen);

/* Redacts any URL string the same way (even a malformed one: everything
 * between "://" [user] ":" and the last "@" before the host is hidden). */
DBK_API size_t dbk_redact_url(const char *url, char *buf, size_t buflen);

/* Calls fn once per effective setting, in a fixed order: key, value as text
 * (the password as "***", or "" when unset), and its source. */
typedef void (*dbk_config_visit_fn)(void *ctx, const char *key, const char *value,
                                    dbk_config_source source);
DBK_API void dbk_config_dump(const dbk_config *cfg, dbk_config_visit_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_CONFIG_H */
