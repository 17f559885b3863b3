/*
 * Loading a migration or seed set from its source: a directory on disk or
 * an in-memory array compiled into a service.
 *
 * Both sources end up as the same sorted array of parsed files, so the
 * migrator never cares where a file came from. Files are read whole (they
 * are small, and the checksum covers the whole file) with a size limit, and
 * every file is parsed before anything touches the database: a malformed
 * file stops a run before its first statement, naming the file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"
#include "migrate_int.h"

dbk_rc dbk__read_file(const char *path, char **out, size_t *len, dbk_error *err)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dbk__err(err, DBK_EIO, "cannot open %s: %s", path, strerror(errno));
    dbk_rc rc = DBK_OK;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = dbk__err(err, DBK_EIO, "cannot stat %s: %s", path, strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = dbk__err(err, DBK_EIO, "%s is not a regular file", path);
        goto close_fd;
    }
    if ((uintmax_t)st.st_size > DBK__MIG_MAX_FILE) {
        rc = dbk__err(err, DBK_EINVALID, "%s is larger than %u bytes", path, DBK__MIG_MAX_FILE);
        goto close_fd;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory reading %s", path);
        goto close_fd;
    }
    for (;;) {
        if (n + 1 >= cap) {
            /* The file grew while we read it: keep the limit. */
            if (cap > DBK__MIG_MAX_FILE) {
                rc = dbk__err(err, DBK_EINVALID, "%s is larger than %u bytes", path,
                              DBK__MIG_MAX_FILE);
                goto free_buf;
            }
            char *p = realloc(buf, cap * 2);
            if (!p) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory reading %s", path);
                goto free_buf;
            }
            buf = p;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = dbk__err(err, DBK_EIO, "cannot read %s: %s", path, strerror(errno));
            goto free_buf;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
free_buf:
    free(buf);
close_fd:
    close(fd);
    return rc;
}

void dbk__migset_free(dbk__migset *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++) {
        free(set->files[i].path);
        free(set->files[i].filename);
        free(set->files[i].text);
    }
    free(set->files);
    set->files = NULL;
    set->n = 0;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Appends an empty file record; NULL on out of memory. */
static dbk__migfile *append(dbk__migset *set, size_t *cap)
{
    if (set->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        dbk__migfile *p = realloc(set->files, ncap * sizeof *p);
        if (!p)
            return NULL;
        set->files = p;
        *cap = ncap;
    }
    dbk__migfile *f = &set->files[set->n++];
    memset(f, 0, sizeof *f);
    return f;
}

static bool ends_with_sql(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".sql") == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the .sql regular files of a directory (malloc'd array of
 * malloc'd strings). A missing directory is DBK_EIO unless missing_ok, in
 * which case *n is 0 and *found false. */
static dbk_rc list_sql(const char *dir, bool missing_ok, char ***names, size_t *n, bool *found,
                       dbk_error *err)
{
    *names = NULL;
    *n = 0;
    if (found)
        *found = false;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT && missing_ok)
            return DBK_OK;
        int e = errno;
        dbk__err(err, DBK_EIO, "cannot open directory %s: %s", dir, strerror(e));
        if (e == ENOENT)
            dbk__err_hint(err, "run from the project root, point --migrations-dir / --seeds-dir "
                               "at the folder, or create it with `dbkit migrate new NAME`");
        return DBK_EIO;
    }
    if (found)
        *found = true;
    dbk_rc rc = DBK_OK;
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !ends_with_sql(de->d_name))
            continue;
        char path[4096];
        int pl = snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (pl < 0 || (size_t)pl >= sizeof path) {
            rc = dbk__err(err, DBK_EINVALID, "path too long: %s/%s", dir, de->d_name);
            goto fail;
        }
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            char **p = realloc(v, ncap * sizeof *p);
            if (!p) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory listing %s", dir);
                goto fail;
            }
            v = p;
            cap = ncap;
        }
        if (!(v[cnt] = dup_str(de->d_name))) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory listing %s", dir);
            goto fail;
        }
        cnt++;
    }
    closedir(d);
    if (cnt)
        qsort(v, cnt, sizeof *v, cmp_str);
    *names = v;
    *n = cnt;
    return DBK_OK;
fail:
    closedir(d);
    for (size_t i = 0; i < cnt; i++)
        free(v[i]);
    free(v);
    return rc;
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Fills path/filename/text of f from a directory file. */
static dbk_rc fill_from_dir(dbk__migfile *f, const char *dir, const char *rel, dbk_error *err)
{
    size_t n = strlen(dir) + strlen(rel) + 2;
    f->path = malloc(n);
    f->filename = dup_str(rel);
    if (!f->path || !f->filename)
        return dbk__err(err, DBK_ENOMEM, "out of memory loading %s", rel);
    snprintf(f->path, n, "%s/%s", dir, rel);
    return dbk__read_file(f->path, &f->text, &f->len, err);
}

static dbk_rc fill_from_memory(dbk__migfile *f, const dbk_migration_file *m, dbk_error *err)
{
    if (!m->filename || !m->contents)
        return dbk__err(err, DBK_EMISUSE, "an in-memory migration file has a NULL %s",
                        m->filename ? "contents" : "filename");
    size_t len = m->len ? m->len : strlen(m->contents);
    if (len > DBK__MIG_MAX_FILE)
        return dbk__err(err, DBK_EINVALID, "%s is larger than %u bytes", m->filename,
                        DBK__MIG_MAX_FILE);
    f->path = dup_str(m->filename);
    f->filename = dup_str(m->filename);
    f->text = malloc(len + 1);
    if (!f->path || !f->filename || !f->text)
        return dbk__err(err, DBK_ENOMEM, "out of memory loading %s", m->filename);
    memcpy(f->text, m->contents, len);
    f->text[len] = '\0';
    f->len = len;
    return DBK_OK;
}

static dbk_rc check_source(const dbk_migrate_source *src, dbk_error *err)
{
    if (!src)
        return dbk__err(err, DBK_EMISUSE, "migration source must not be NULL");
    if (src->dir && src->files)
        return dbk__err(err, DBK_EMISUSE, "migration source: set dir or files, not both");
    if (!src->dir && !src->files)
        return dbk__err(err, DBK_EMISUSE, "migration source: set dir or files");
    if (src->dir && !*src->dir)
        return dbk__err(err, DBK_EMISUSE, "migration source: empty directory name");
    return DBK_OK;
}

static int cmp_version(const void *a, const void *b)
{
    const dbk__migfile *x = a, *y = b;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    return strcmp(x->filename, y->filename);
}

dbk_rc dbk__migset_load(const dbk_migrate_source *src, dbk__migset *out, dbk_error *err)
{
    memset(out, 0, sizeof *out);
    dbk_rc rc = check_source(src, err);
    if (rc)
        return rc;
    size_t cap = 0;
    if (src->dir) {
        char **names = NULL;
        size_t n = 0;
        rc = list_sql(src->dir, false, &names, &n, NULL, err);
        if (rc)
            return rc;
        for (size_t i = 0; i < n && rc == DBK_OK; i++) {
            dbk__migfile *f = append(out, &cap);
            if (!f) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory loading migrations");
                break;
            }
            rc = fill_from_dir(f, src->dir, names[i], err);
        }
        free_names(names, n);
    } else {
        for (size_t i = 0; i < src->nfiles && rc == DBK_OK; i++) {
            const dbk_migration_file *m = &src->files[i];
            if (m->filename && strchr(m->filename, '/')) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%s: an in-memory migration name must not contain '/'",
                              m->filename);
                break;
            }
            dbk__migfile *f = append(out, &cap);
            if (!f) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory loading migrations");
                break;
            }
            rc = fill_from_memory(f, m, err);
        }
    }
    for (size_t i = 0; i < out->n && rc == DBK_OK; i++) {
        dbk__migfile *f = &out->files[i];
        rc = dbk__mig_parse_filename(f->filename, &f->version, f->name, sizeof f->name, err);
        if (rc == DBK_EINVALID && src->dir) {
            /* Name the file with its directory, as everywhere else. */
            char msg[DBK_ERROR_MESSAGE_MAX];
            dbk__strlcpy(msg, err ? err->message : "", sizeof msg);
            if (err && strncmp(msg, f->filename, strlen(f->filename)) == 0) {
                size_t o = dbk__strlcpy(err->message, src->dir, sizeof err->message);
                if (o + 1 < sizeof err->message) {
                    err->message[o] = '/';
                    dbk__strlcpy(err->message + o + 1, msg, sizeof err->message - o - 1);
                }
            }
        }
        if (rc == DBK_OK)
            rc = dbk__mig_parse(f, err);
    }
    if (rc == DBK_OK && out->n > 1) {
        qsort(out->files, out->n, sizeof *out->files, cmp_version);
        for (size_t i = 1; i < out->n; i++) {
            if (out->files[i].version == out->files[i - 1].version) {
                rc = dbk__err(err, DBK_EINVALID, "duplicate migration version %lld: %s and %s",
                              (long long)out->files[i].version, out->files[i - 1].path,
                              out->files[i].path);
                dbk__err_hint(err, "every migration needs its own version: rename one of them "
                                   "(`dbkit migrate new` uses the current UTC time)");
                break;
            }
        }
    }
    if (rc)
        dbk__migset_free(out);
    return rc;
}

static bool env_ok(const char *env)
{
    if (!*env || strlen(env) > 64)
        return false;
    for (const char *p = env; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_'))
            return false;
    return true;
}

static int cmp_filename(const void *a, const void *b)
{
    return strcmp(((const dbk__migfile *)a)->filename, ((const dbk__migfile *)b)->filename);
}

dbk_rc dbk__seedset_load(const dbk_migrate_source *src, const char *env, dbk__migset *out,
                         dbk_error *err)
{
    memset(out, 0, sizeof *out);
    dbk_rc rc = check_source(src, err);
    if (rc)
        return rc;
    if (env && !env_ok(env))
        return dbk__err(err, DBK_EINVALID,
                        "bad seed environment name '%.64s': use letters, digits, '-' and '_'",
                        env);
    size_t cap = 0, ntop = 0;
    if (src->dir) {
        for (int group = 0; group < (env ? 2 : 1) && rc == DBK_OK; group++) {
            char sub[4096];
            if (group == 0)
                snprintf(sub, sizeof sub, "%s", src->dir);
            else
                snprintf(sub, sizeof sub, "%s/%s", src->dir, env);
            char **names = NULL;
            size_t n = 0;
            rc = list_sql(sub, group == 1, &names, &n, NULL, err);
            if (rc)
                break;
            for (size_t i = 0; i < n && rc == DBK_OK; i++) {
                dbk__migfile *f = append(out, &cap);
                if (!f) {
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory loading seeds");
                    break;
                }
                char rel[512];
                snprintf(rel, sizeof rel, "%s%s%s", group ? env : "", group ? "/" : "",
                         names[i]);
                rc = fill_from_dir(f, src->dir, rel, err);
            }
            free_names(names, n);
            if (group == 0)
                ntop = out->n;
        }
    } else {
        size_t plen = env ? strlen(env) : 0;
        for (int group = 0; group < (env ? 2 : 1) && rc == DBK_OK; group++) {
            for (size_t i = 0; i < src->nfiles && rc == DBK_OK; i++) {
                const dbk_migration_file *m = &src->files[i];
                if (!m->filename)
                    return dbk__err(err, DBK_EMISUSE, "an in-memory seed has a NULL filename");
                const char *slash = strchr(m->filename, '/');
                bool take = group == 0 ? !slash
                                       : (slash && (size_t)(slash - m->filename) == plen &&
                                          strncmp(m->filename, env, plen) == 0 &&
                                          !strchr(slash + 1, '/'));
                if (!take)
                    continue;
                if (!ends_with_sql(m->filename)) {
                    rc = dbk__err(err, DBK_EINVALID, "%s: a seed file name must end in .sql",
                                  m->filename);
                    break;
                }
                dbk__migfile *f = append(out, &cap);
                if (!f) {
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory loading seeds");
                    break;
                }
                rc = fill_from_memory(f, m, err);
            }
            if (group == 0)
                ntop = out->n;
        }
    }
    for (size_t i = 0; i < out->n && rc == DBK_OK; i++) {
        dbk__migfile *f = &out->files[i];
        const char *base = strrchr(f->filename, '/');
        dbk__strlcpy(f->name, base ? base + 1 : f->filename, sizeof f->name);
        rc = dbk__seed_parse(f, err);
    }
    if (rc == DBK_OK) {
        /* Each group in name order; the top level first. */
        if (ntop > 1)
            qsort(out->files, ntop, sizeof *out->files, cmp_filename);
        if (out->n - ntop > 1)
            qsort(out->files + ntop, out->n - ntop, sizeof *out->files, cmp_filename);
    }
    if (rc)
        dbk__migset_free(out);
    return rc;
}
