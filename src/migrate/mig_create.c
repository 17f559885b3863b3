/*
 * mig_create.c - dbk_migrate_create: a new, empty migration file from the
 * template, named by the time and the given name, never overwriting one.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "migrate_int.h"
#include "migrate_impl.h"

/* ---- migrate new ---- */

static dbk_rc mkdir_p(const char *dir, dbk_error *err)
{
    char path[4096];
    size_t n = dbk__strlcpy(path, dir, sizeof path);
    if (n >= sizeof path)
        return dbk__err(err, DBK_EINVALID, "directory name too long");
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return dbk__err(err, DBK_EIO, "cannot create directory %s: %s", path, strerror(errno));
        path[i] = c;
    }
    return DBK_OK;
}

static const char TEMPLATE[] =
    "-- migrate:up\n"
    "-- The statements that make the change. dbkit runs them in one transaction\n"
    "-- (add transaction:false to the line above for CREATE INDEX CONCURRENTLY).\n"
    "\n"
    "\n"
    "-- migrate:down\n"
    "-- The statements that undo the up section, in reverse order.\n"
    "-- Leave empty if the migration cannot be undone.\n"
    "\n";

dbk_rc dbk_migrate_create(const char *dir, const char *name, int64_t now_unix, char *path_out,
                          size_t path_len, dbk_error *err)
{
    if (path_out && path_len)
        path_out[0] = '\0';
    if (!dir || !*dir || !name)
        return dbk__err(err, DBK_EMISUSE, "dbk_migrate_create: dir and name must be set");
    char clean[101];
    size_t n = 0;
    for (const char *p = name; *p; p++) {
        char c = *p == ' ' ? '_' : *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            dbk__err(err, DBK_EINVALID, "bad migration name '%.100s': use letters, digits, '_' "
                                        "and '-'", name);
            return DBK_EINVALID;
        }
        if (n >= 100)
            return dbk__err(err, DBK_EINVALID, "the migration name is longer than 100 bytes");
        clean[n++] = c;
    }
    clean[n] = '\0';
    if (n == 0)
        return dbk__err(err, DBK_EINVALID, "the migration name is empty");
    dbk_rc rc = mkdir_p(dir, err);
    if (rc)
        return rc;
    time_t t = now_unix ? (time_t)now_unix : time(NULL);
    for (int attempt = 0; attempt < 600; attempt++, t++) {
        struct tm tm;
        gmtime_r(&t, &tm);
        char version[32];
        snprintf(version, sizeof version, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        char path[4096];
        int pl = snprintf(path, sizeof path, "%s/%s_%s.sql", dir, version, clean);
        if (pl < 0 || (size_t)pl >= sizeof path)
            return dbk__err(err, DBK_EINVALID, "path too long");
        /* Another file with the same version (other name) counts as taken. */
        bool taken = false;
        char prefix[40];
        snprintf(prefix, sizeof prefix, "%s_", version);
        DIR *d = opendir(dir);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL)
                if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
                    taken = true;
            closedir(d);
        }
        if (taken)
            continue;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno == EEXIST)
            continue;
        if (fd < 0)
            return dbk__err(err, DBK_EIO, "cannot create %s: %s", path, strerror(errno));
        size_t off = 0, len = sizeof TEMPLATE - 1;
        while (off < len) {
            ssize_t w = write(fd, TEMPLATE + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = errno;
                close(fd);
                unlink(path);
                return dbk__err(err, DBK_EIO, "cannot write %s: %s", path, strerror(e));
            }
            off += (size_t)w;
        }
        if (close(fd) != 0)
            return dbk__err(err, DBK_EIO, "cannot write %s: %s", path, strerror(errno));
        if (path_out && path_len)
            dbk__strlcpy(path_out, path, path_len);
        return DBK_OK;
    }
    return dbk__err(err, DBK_EIO, "no free migration version in the next 10 minutes in %s", dir);
}
