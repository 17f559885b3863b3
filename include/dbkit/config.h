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
 * directory. Without DATABASE_URL, setting DB_HOST or DB_NAME selects
 * PostgreSQL built from the DB_* variables. The full table of settings,
 * variables, defaults and bounds is in docs/configuration.md.
 *
 * Units: durations are milliseconds everywhere except `connect_timeout` in
 * a URL or dbk_config_set(), which is in seconds like libpq's (decimals
 * allowed: "2.5"); DB_CONNECT_TIMEOUT_MS is in milliseconds.
 *
 * Accepted URLs:
 *   postgres://[user[:password]@][host][:port][,host2[:port2]...][/dbname][?k=v&...]
 *   postgresql://...                      (same)
 *   sqlite:relative/path.db   sqlite:///absolute/path.db   sqlite::memory:
 *   sqlite:path.db?mode=ro&busy_timeout=5000&journal_mode=wal
 * Hosts may be bracketed IPv6 literals ("[::1]", "[fe80::1%25eth0]"). User,
 * password, host, database and query parameters are percent-decoded ('+'
 * stays '+', as in libpq); a decoded NUL (%00) is an error. The userinfo
 * ends at the last '@' before the '?', so an unencoded '/' or '@' in a
 * password still parses. Several hosts ("h1:5432,h2:5433") become
 * libpq-style comma lists. Unknown query parameters of a postgres:// URL are
 * passed to libpq; unknown ones of a sqlite: URL are DBK_ECONFIG. A URL is
 * at most 8192 bytes.
 *
 * Secrets: the password is kept only in the config object, never printed;
 * dbk_config_redacted_url() and dbk_config_dump() show it as "***", and so
 * are the values of pass-through parameters whose name contains "password"
 * (sslpassword). Error messages never contain it, even for malformed URLs.
 * The password comes from the URL, DB_PASSWORD or DB_PASSWORD_FILE (the
 * file's content minus one trailing newline; setting both variables is
 * DBK_ECONFIG), never from dbk_config_set().
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

/* Where a setting's value came from. The DBK_SRC_* spellings are the names
 * before 0.2, deprecated (removed in 0.3): the same values. */
typedef enum dbk_config_source {
    DBK_CONFIG_SOURCE_DEFAULT = 0,
    DBK_CONFIG_SOURCE_ENV = 1,
    DBK_CONFIG_SOURCE_URL = 2,
    DBK_CONFIG_SOURCE_CODE = 3,
    DBK_SRC_DEFAULT DBK_DEPRECATED("use DBK_CONFIG_SOURCE_DEFAULT") = 0,
    DBK_SRC_ENV DBK_DEPRECATED("use DBK_CONFIG_SOURCE_ENV") = 1,
    DBK_SRC_URL DBK_DEPRECATED("use DBK_CONFIG_SOURCE_URL") = 2,
    DBK_SRC_CODE DBK_DEPRECATED("use DBK_CONFIG_SOURCE_CODE") = 3
} dbk_config_source;

typedef struct dbk_config dbk_config;

/* Builds a configuration from DATABASE_URL and the DB_* variables of the
 * process environment. On success *out is owned by the caller (free with
 * dbk_config_free). DBK_ECONFIG on malformed input, with a message naming
 * the bad part (and a hint where one helps); DBK_ENOMEM; DBK_EMISUSE when
 * out is NULL. *out is NULL on failure. Empty variables count as unset.
 * Reads the environment with getenv(): do not call while another thread
 * modifies it. */
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

/* Deep copy. *out is owned by the caller. DBK_EMISUSE (cfg or out NULL),
 * DBK_ENOMEM. */
DBK_API dbk_rc dbk_config_clone(const dbk_config *cfg, dbk_config **out, dbk_error *err);

/* Frees a configuration, wiping the password. Accepts NULL. */
DBK_API void dbk_config_free(dbk_config *cfg);

/* Sets one setting from code (highest precedence). Keys are the URL query
 * parameter names listed by dbk_config_dump(), e.g. "pool_max",
 * "statement_timeout", "application_name", plus "engine" ("sqlite" or
 * "postgres") and "path" (the SQLite file). Values are text in the key's
 * units, checked against the same bounds as the URL's. DBK_ECONFIG on an
 * unknown key, on "password" (never from code), on libpq pass-through
 * keywords (URL only), on a bad value, or when the result contradicts
 * another setting (pool_min_idle > pool_max); cfg is then unchanged.
 * DBK_EMISUSE when cfg, key or value is NULL; DBK_ENOMEM. */
DBK_API dbk_rc dbk_config_set(dbk_config *cfg, const char *key, const char *value,
                              dbk_error *err);

/* The engine; 0 when cfg is NULL. */
DBK_API dbk_engine dbk_config_engine(const dbk_config *cfg);

/* Writes the URL with the password replaced by "***" into buf (always
 * NUL-terminated, truncated to buflen-1; buf may be NULL when buflen is 0).
 * Returns the length it needed, like snprintf. The URL is rendered from the
 * effective settings: the components, then every setting whose source is
 * not the default as a query parameter, then the pass-through parameters.
 * It parses back to the same configuration (with "***" as the password).
 * Writes "" for a NULL cfg. Never allocates. */
DBK_API size_t dbk_config_redacted_url(const dbk_config *cfg, char *buf, size_t buflen);

/* Redacts any URL string the same way (even a malformed one: everything
 * between "://" [user] ":" and the last "@" before the host is hidden), and
 * the value of every "...password=" parameter, in a query or in libpq's
 * "key=value" form. When unsure it hides too much rather than too little
 * (an '@' inside a query value may hide the host). Same buffer contract as
 * dbk_config_redacted_url(); a NULL url gives "". Never allocates. */
DBK_API size_t dbk_redact_url(const char *url, char *buf, size_t buflen);

/* Calls fn once per effective setting that applies to the engine, in a
 * fixed order (the order of docs/configuration.md): key, value as text in
 * the key's units (the password as "***", or "" when unset), and its
 * source; then the libpq pass-through parameters with
 * DBK_CONFIG_SOURCE_URL. The
 * strings are borrowed for the duration of the call. No-op when cfg or fn
 * is NULL. */
typedef void (*dbk_config_visit_fn)(void *ctx, const char *key, const char *value,
                                    dbk_config_source source);
DBK_API void dbk_config_dump(const dbk_config *cfg, dbk_config_visit_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_CONFIG_H */
