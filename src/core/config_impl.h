/*
 * config_impl.h - what the files of the configuration share (config.c: the
 * settings table, construction, validation and copies; config_value.c:
 * parsing one value into one setting; config_url.c: DATABASE_URL;
 * config_env.c: the DB_* environment; config_render.c: redacted URLs and
 * the dump). Every part finds a setting's row in the one table and records
 * cfg->src[row], so the table, its row indexes and the helpers over it are
 * declared here. Internal to src/core/config*.c.
 */
#ifndef DBK_CONFIG_IMPL_H
#define DBK_CONFIG_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "config_int.h"
#include "internal.h"
#include "url.h"

#define URL_MAX 8192           /* longest URL accepted, in bytes */
#define VALUE_MAX 8192         /* longest environment or code value */
#define PASSWORD_FILE_MAX 4096 /* largest DB_PASSWORD_FILE accepted */
#define QUOTE_MAX 48           /* longest piece of input quoted in a message */

/* ------------------------------------------------------------------------ */
/* The settings table                                                        */
/* ------------------------------------------------------------------------ */

enum kind {
    K_ENGINE,  /* "sqlite" | "postgres" */
    K_PATH,    /* SQLite file path or ":memory:" */
    K_MODE,    /* SQLite open mode: ro | rw | rwc */
    K_HOSTS,   /* comma list of hosts */
    K_PORTS,   /* comma list of ports */
    K_TEXT,    /* free text without control characters */
    K_SECRET,  /* a secret (the password, the replica URLs): any bytes, never shown */
    K_ENUM,    /* one of `choices`, stored in canonical lower case */
    K_COUNT,   /* whole number */
    K_MS,      /* milliseconds everywhere */
    K_SEC,     /* seconds in the URL and from code, milliseconds in the env */
    K_BOOL_CACHE /* prepared_statements: false sets stmt_cache_size to 0 */
};

enum scope { SC_ANY, SC_PG, SC_SQLITE };

#define F_COMPONENT 1u /* part of the URL body, not rendered as a query parameter */
#define F_NOURL 2u     /* not accepted as a URL query parameter */
#define F_NOCODE 4u    /* not accepted from dbk_config_set() */
#define F_ALIAS 8u     /* writes another row's field; not dumped */

enum {
    S_ENGINE,
    S_PATH,
    S_MODE,
    S_BUSY_TIMEOUT,
    S_JOURNAL_MODE,
    S_SYNCHRONOUS,
    S_CACHE_SIZE,
    S_MMAP_SIZE,
    S_HOST,
    S_PORT,
    S_DBNAME,
    S_USER,
    S_PASSWORD,
    S_SSLMODE,
    S_APPLICATION_NAME,
    S_TARGET_SESSION_ATTRS,
    S_CONNECT_TIMEOUT,
    S_STATEMENT_TIMEOUT,
    S_LOCK_TIMEOUT,
    S_STMT_CACHE_SIZE,
    S_PREPARED_STATEMENTS,
    S_POOL_MAX,
    S_POOL_MIN_IDLE,
    S_ACQUIRE_TIMEOUT,
    S_IDLE_TIMEOUT,
    S_MAX_LIFETIME,
    S_VALIDATE_AFTER,
    S_VALIDATE_TIMEOUT,
    S_POOL_MAX_WAITERS,
    S_LEAK_THRESHOLD,
    S_REPLICAS,
    S_REPLICA_MAX_LAG,
    S_READ_YOUR_WRITES_WAIT,
    S_POOLER,
    S_AUTO_PIPELINE,
    S_PIPELINE_CONNS,
    S_COUNT_
};

_Static_assert(S_COUNT_ <= sizeof(((struct dbk_config *)0)->src), "dbk_config.src is too small");

struct setting {
    const char *key;
    const char *env;       /* NULL: no environment variable */
    unsigned char kind;    /* enum kind */
    unsigned char scope;   /* enum scope */
    unsigned char flags;   /* F_* */
    const char *def;       /* default, as text in the key's units; NULL = unset */
    long long min, max;    /* bounds, in stored units (milliseconds for durations) */
    size_t off;            /* offset of the field it fills */
    const char *const *choices;
};

extern const struct setting dbk__cfg_settings[S_COUNT_];

/* Where a value came from, for messages. */
struct origin {
    dbk_config_source src;
    const char *name; /* "DB_POOL_MAX", "URL parameter pool_max", "pool_max" */
    bool quote;       /* the value may be quoted in a message */
};

/* Counting string builder over a caller buffer: writes what fits, always
 * terminates, and counts everything so the caller learns the length needed. */
struct dbk__cfg_sb {
    char *buf;
    size_t cap;
    size_t len;
};

/* ---- config.c ---- */

int dbk__cfg_find_setting(const char *key);

bool dbk__cfg_is_secret_key(const char *key);

char **dbk__cfg_str_slot(dbk_config *cfg, const struct setting *s);

int *dbk__cfg_int_slot(dbk_config *cfg, const struct setting *s);

const int *dbk__cfg_int_slot_c(const dbk_config *cfg, const struct setting *s);

const char *dbk__cfg_str_slot_c(const dbk_config *cfg, const struct setting *s);

bool dbk__cfg_applies(const dbk_config *cfg, const struct setting *s);

/* ---- config_value.c ---- */

void dbk__cfg_wipe_free(char *s);

bool dbk__cfg_has_ctrl(const char *s);

/* A printable excerpt of s[0..n) for a message: at most QUOTE_MAX bytes,
 * control characters as '?', "..." when cut. */
const char *dbk__cfg_excerpt(char *out, size_t outlen, const char *s, size_t n);

enum {
    PCT_OK = DBK__PCT_OK,
    PCT_BAD = DBK__PCT_BAD,
    PCT_NUL = DBK__PCT_NUL,
    PCT_NOMEM = DBK__PCT_NOMEM
};

/* Percent-decodes s[0..n) into a new string. On PCT_BAD/PCT_NUL, *bad is
 * the offset of the offending '%'. '+' stays '+' (as in libpq). */
int dbk__cfg_pct_decode(const char *s, size_t n, char **out, size_t *bad);

void dbk__cfg_sb_putn(struct dbk__cfg_sb *b, const char *s, size_t n);

void dbk__cfg_sb_puts(struct dbk__cfg_sb *b, const char *s);

/* Appends s percent-encoded: unreserved characters and those in `keep`
 * stay as they are. */
void dbk__cfg_sb_enc(struct dbk__cfg_sb *b, const char *s, const char *keep);

size_t dbk__cfg_sb_finish(struct dbk__cfg_sb *b);

size_t dbk__cfg_count_list(const char *s);

/* Checks an IPv6 literal (without brackets), optionally followed by
 * "%zone" (an interface name). */
bool dbk__cfg_valid_ipv6(const char *h);

bool dbk__cfg_port_number(const char *s, size_t n, int *out);

/* Parses `value` for row `idx` and stores it with its source. The config
 * is left unchanged on error. */
dbk_rc dbk__cfg_apply(dbk_config *cfg, int idx, const char *value, const struct origin *o,
                      dbk_error *err);

bool dbk__cfg_valid_param_name(const char *k);

dbk_rc dbk__cfg_extra_set(dbk_config *cfg, const char *key, const char *value, dbk_error *err);

/* ---- config_url.c ---- */

dbk_rc dbk__cfg_parse_url(dbk_config *cfg, const char *url, dbk_error *err);

/* ---- config_env.c ---- */

dbk_rc dbk__cfg_apply_env(dbk_config *cfg, dbk_getenv_fn fn, void *ctx, dbk_error *err);

#endif
