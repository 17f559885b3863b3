/*
 * config_env.c - the DB_* environment variables (through a caller-supplied
 * getenv so tests and embedders control it) and DB_PASSWORD_FILE, read
 * with a size bound, one trailing newline removed and NUL bytes refused.
 * Each variable is the `env` column of a settings-table row and is applied
 * through dbk__cfg_apply() like every other source.
 */
#include "config_impl.h"
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

/* ------------------------------------------------------------------------ */
/* Environment                                                               */
/* ------------------------------------------------------------------------ */

/* Reads DB_PASSWORD_FILE: at most PASSWORD_FILE_MAX bytes, one trailing
 * newline ("\n" or "\r\n") removed, no NUL bytes. */
static dbk_rc read_password_file(const char *path, char **out, dbk_error *err)
{
    char ex[QUOTE_MAX + 8];
    dbk__cfg_excerpt(ex, sizeof ex, path, strlen(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: cannot open \"%s\": %s", ex, strerror(e));
        dbk__err_hint(err, "point DB_PASSWORD_FILE at a readable file holding only the password");
        return DBK_ECONFIG;
    }
    char *buf = malloc(PASSWORD_FILE_MAX + 2);
    if (!buf) {
        close(fd);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    size_t len = 0;
    dbk_rc rc = DBK_OK;
    for (;;) {
        ssize_t r = read(fd, buf + len, PASSWORD_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: cannot read \"%s\": %s", ex,
                          strerror(e));
            goto done;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > PASSWORD_FILE_MAX) {
            rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: \"%s\" is larger than %d bytes",
                          ex, PASSWORD_FILE_MAX);
            dbk__err_hint(err, "the file must hold only the password");
            goto done;
        }
    }
    if (len && buf[len - 1] == '\n') {
        len--;
        if (len && buf[len - 1] == '\r')
            len--;
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        rc = dbk__err(err, DBK_ECONFIG, "DB_PASSWORD_FILE: \"%s\" contains a NUL byte", ex);
        goto done;
    }
    *out = buf;
    buf = NULL;
done:
    close(fd);
    if (buf) {
        explicit_bzero(buf, PASSWORD_FILE_MAX + 2);
        free(buf);
    }
    return rc;
}

static const char *env_get(dbk_getenv_fn fn, void *ctx, const char *name)
{
    if (!fn || !name)
        return NULL;
    const char *v = fn(ctx, name);
    return v && *v ? v : NULL;
}

dbk_rc dbk__cfg_apply_env(dbk_config *cfg, dbk_getenv_fn fn, void *ctx, dbk_error *err)
{
    if (!fn)
        return DBK_OK;
    for (int i = 0; i < S_COUNT_; i++) {
        const char *v = env_get(fn, ctx, dbk__cfg_settings[i].env);
        if (!v)
            continue;
        struct origin o = {DBK_CONFIG_SOURCE_ENV, dbk__cfg_settings[i].env,
                           dbk__cfg_settings[i].kind != K_SECRET};
        dbk_rc rc = dbk__cfg_apply(cfg, i, v, &o, err);
        if (rc)
            return rc;
    }
    const char *pf = env_get(fn, ctx, "DB_PASSWORD_FILE");
    if (pf) {
        if (env_get(fn, ctx, "DB_PASSWORD")) {
            dbk__err(err, DBK_ECONFIG, "both DB_PASSWORD and DB_PASSWORD_FILE are set");
            dbk__err_hint(err, "set only one of them");
            return DBK_ECONFIG;
        }
        char *pw = NULL;
        dbk_rc rc = read_password_file(pf, &pw, err);
        if (rc)
            return rc;
        struct origin o = {DBK_CONFIG_SOURCE_ENV, "DB_PASSWORD_FILE", false};
        rc = dbk__cfg_apply(cfg, S_PASSWORD, pw, &o, err);
        dbk__cfg_wipe_free(pw);
        if (rc)
            return rc;
    }
    if (env_get(fn, ctx, "DB_HOST") || env_get(fn, ctx, "DB_NAME")) {
        cfg->engine = DBK_ENGINE_POSTGRES;
        cfg->src[S_ENGINE] = DBK_CONFIG_SOURCE_ENV;
    }
    return DBK_OK;
}
