/*
 * dbk_testdb: a fresh migrated database per test, made by copying a
 * template that is built once per set of migrations.
 *
 * Why a template. Applying the migrations costs what the migrations cost
 * (tens of statements, a transaction each, the history table); copying a
 * database that already holds the result costs one CREATE DATABASE on
 * PostgreSQL and one file copy on SQLite, whatever the schema. The template
 * is named after a SHA-256 of the migration files, so a changed file gives
 * a new template and an unchanged set reuses the old one across runs.
 *
 * Why the template never has connections during a clone. PostgreSQL refuses
 * CREATE DATABASE ... TEMPLATE t while another session is connected to t
 * ("source database is being accessed by other users"). Only the builder
 * ever connects to a template, and it does so under a session advisory lock
 * on the admin connection, on a database of another name ("dbkit_tpb_..."),
 * which it renames to "dbkit_tpl_..." after closing its connection. A
 * template that exists under its final name is therefore complete and has
 * no user connection; cloners need no lock at all.
 *
 * Why owner-tagged names. A test run killed halfway cannot drop what it
 * created. Each fresh database carries the host, the owner's process id and
 * the owner's start time, so a later run can tell a live owner from a dead
 * one (a reused pid has another start time) and drop only the dead ones.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dbkit/db.h"
#include "dbkit/migrate.h"
#include "dbkit/testdb.h"

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../core/url.h"
#include "../migrate/migrate_int.h"

#define NAME_MAX_LEN 63
#define PATH_LEN 4096
#define DIR_LEN 3072

struct dbk_testdb {
    dbk_engine engine;
    dbk_config *admin; /* the configuration given to new: where drop connects */
    dbk_config *cfg;   /* the fresh database */
    char *url;
    char name[PATH_LEN]; /* database name or file path */
    char tpl[PATH_LEN];  /* template name or file path */
};

static int g_seq;
static int g_pruned_pg, g_pruned_sqlite; /* the first new of the process prunes, per engine */

/* ---- names ---- */

static void host_tag(char out[9])
{
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0)
        host[0] = '\0';
    uint32_t h = 2166136261u;
    for (const char *p = host; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 16777619u;
    }
    snprintf(out, 9, "%08x", h);
}

/* Start time of a process in clock ticks since boot (field 22 of
 * /proc/<pid>/stat); 0 when the process does not exist or /proc cannot
 * tell. */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command may hold spaces and ')' */
    if (!p)
        return 0;
    p++;
    /* after ')' come fields 3..; the start time is field 22 */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p + 1, ' ');
    }
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static bool proc_alive(long pid, unsigned long long start)
{
    if (pid <= 0)
        return false;
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%ld", pid);
    if (stat(path, &st) != 0)
        return false;
    unsigned long long now = proc_start(pid);
    /* Without a start time on either side the pid alone decides. */
    return start == 0 || now == 0 || now == start;
}

/* Parses "dbkit_t_<host>_<pid>_<start>_<seq>" (an optional ".db" after);
 * false when `name` is not one. */
static bool parse_fresh_name(const char *name, char host[9], long *pid,
                             unsigned long long *start)
{
    if (strncmp(name, "dbkit_t_", 8) != 0)
        return false;
    const char *p = name + 8;
    if (strlen(p) < 9 || p[8] != '_')
        return false;
    for (int i = 0; i < 8; i++)
        if (!isxdigit((unsigned char)p[i]))
            return false;
    memcpy(host, p, 8);
    host[8] = '\0';
    char *end;
    errno = 0;
    *pid = strtol(p + 9, &end, 10);
    if (errno || *end != '_')
        return false;
    *start = strtoull(end + 1, &end, 10);
    if (*end != '_')
        return false;
    strtol(end + 1, &end, 10);
    return *end == '\0' || strcmp(end, ".db") == 0;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

/* ---- the migrations hash ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static dbk_rc hash_migrations(dbk_engine engine, const char *dir, char out[65], dbk_error *err)
{
    dbk__sha256 s;
    dbk__sha256_init(&s);
    dbk__sha256_update(&s, engine == DBK_ENGINE_POSTGRES ? "pg" : "sqlite", 3);
    dbk_rc rc = DBK_OK;
    char **names = NULL;
    size_t n = 0, cap = 0;
    if (dir) {
        DIR *d = opendir(dir);
        if (!d)
            return dbk__err(err, DBK_EIO, "cannot read migrations directory %.256s: %.256s", dir,
                            strerror(errno));
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".sql") != 0)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 32;
                char **nn = realloc(names, cap * sizeof *nn);
                if (!nn) {
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory hashing migrations");
                    break;
                }
                names = nn;
            }
            if (!(names[n] = strdup(e->d_name))) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory hashing migrations");
                break;
            }
            n++;
        }
        closedir(d);
        if (rc)
            goto out;
        if (n > 1) /* an empty directory leaves names NULL: qsort may not see it */
            qsort(names, n, sizeof *names, cmp_str);
        for (size_t i = 0; i < n; i++) {
            char path[PATH_LEN];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            FILE *f = fopen(path, "rb");
            if (!f) {
                rc = dbk__err(err, DBK_EIO, "cannot read %.256s: %.256s", path, strerror(errno));
                goto out;
            }
            dbk__sha256_update(&s, names[i], strlen(names[i]) + 1);
            char chunk[8192];
            size_t got;
            while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
                dbk__sha256_update(&s, chunk, got);
            fclose(f);
            dbk__sha256_update(&s, "", 1);
        }
    }
    unsigned char dig[32];
    dbk__sha256_final(&s, dig);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", dig[i]);
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ---- small helpers ---- */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int64_t mono_ms(void)
{
    return dbk__now_ns() / 1000000;
}

static dbk_rc open_with(const dbk_config *base, const char *key, const char *value,
                        dbk_conn **out, dbk_error *err)
{
    dbk_config *c = NULL;
    dbk_rc rc = dbk_config_clone(base, &c, err);
    if (!rc && key)
        rc = dbk_config_set(c, key, value, err);
    if (!rc)
        rc = dbk_conn_open(c, out, err);
    dbk_config_free(c);
    return rc;
}

static dbk_rc migrate_into(dbk_conn *conn, const char *dir, dbk_error *err)
{
    if (!dir)
        return DBK_OK;
    dbk_migrate_source src = {.dir = dir};
    return dbk_migrate_up(dbk_conn_db(conn), &src, NULL, NULL, err);
}

/* The URL of a configuration with its password in place of "***". */
static char *render_url(const dbk_config *cfg)
{
    size_t need = dbk_config_redacted_url(cfg, NULL, 0) + 1;
    char *red = malloc(need);
    if (!red)
        return NULL;
    dbk_config_redacted_url(cfg, red, need);
    if (cfg->engine != DBK_ENGINE_POSTGRES || !cfg->password)
        return red;
    char *star = strstr(red, ":***@");
    if (!star)
        return red;
    size_t plen = strlen(cfg->password);
    size_t cap = strlen(red) + 3 * plen + 1;
    char *u = malloc(cap);
    if (!u) {
        free(red);
        return NULL;
    }
    size_t k = (size_t)(star - red) + 1;
    memcpy(u, red, k);
    for (size_t i = 0; i < plen; i++) {
        unsigned char ch = (unsigned char)cfg->password[i];
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~')
            u[k++] = (char)ch;
        else
            k += (size_t)snprintf(u + k, cap - k, "%%%02X", ch);
    }
    snprintf(u + k, cap - k, "%s", star + 4);
    free(red);
    return u;
}

/* ---- PostgreSQL ---- */

static dbk_rc pg_exec(dbk_conn *c, const char *sql, dbk_error *err)
{
    return dbk_db_exec(dbk_conn_db(c), sql, NULL, 0, NULL, err);
}

static dbk_rc pg_exists(dbk_conn *c, const char *name, bool *out, dbk_error *err)
{
    dbk_value p = dbk_text(name);
    int64_t n = 0;
    dbk_rc rc = dbk_db_query_int64(dbk_conn_db(c),
                                   "SELECT count(*) FROM pg_database WHERE datname = $1", &p, 1,
                                   &n, err);
    *out = n > 0;
    return rc;
}

static dbk_rc pg_lock(dbk_conn *c, int64_t key, int timeout_ms, dbk_error *err)
{
    dbk_value p = dbk_int64(key);
    int64_t deadline = mono_ms() + timeout_ms;
    int wait = 5;
    for (;;) {
        int64_t got = 0;
        dbk_rc rc = dbk_db_query_int64(dbk_conn_db(c), "SELECT pg_try_advisory_lock($1)::int",
                                       &p, 1, &got, err);
        if (rc)
            return rc;
        if (got)
            return DBK_OK;
        if (mono_ms() >= deadline) {
            dbk__err(err, DBK_EBUSY,
                     "another process held the test template lock for over %d ms", timeout_ms);
            dbk__err_hint(err, "a template build may be stuck; see pg_locks for advisory locks");
            return DBK_EBUSY;
        }
        sleep_ms(wait);
        if (wait < 100)
            wait *= 2;
    }
}

static void pg_unlock(dbk_conn *c, int64_t key)
{
    dbk_value p = dbk_int64(key);
    dbk_error e;
    int64_t ignored;
    dbk_db_query_int64(dbk_conn_db(c), "SELECT pg_advisory_unlock($1)::int", &p, 1, &ignored,
                       &e);
}

static int64_t lock_key(const char *hash)
{
    /* A fixed high half keeps dbkit's keys apart from an application's. */
    return (int64_t)((0x64626b74ULL << 32) | strtoul(strndupa(hash, 8), NULL, 16));
}

static dbk_rc pg_prune(dbk_conn *admin, int *dropped, dbk_error *err)
{
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(dbk_conn_db(admin),
                             "SELECT datname::text FROM pg_database WHERE datname LIKE "
                             "'dbkit\\_t\\_%' ORDER BY 1",
                             NULL, 0, &r, err);
    if (rc)
        return rc;
    char mine[9];
    host_tag(mine);
    for (size_t i = 0; i < dbk_result_nrows(r) && !rc; i++) {
        const char *name = NULL;
        char host[9];
        long pid;
        unsigned long long start;
        if (dbk_result_get_text(r, i, 0, &name, NULL, err) != DBK_OK ||
            !parse_fresh_name(name, host, &pid, &start) || strcmp(host, mine) != 0 ||
            proc_alive(pid, start))
            continue;
        char sql[160];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
        rc = pg_exec(admin, sql, err);
        if (!rc && dropped)
            (*dropped)++;
    }
    dbk_result_free(r);
    return rc;
}

static int server_major(dbk_conn *c)
{
    /* "15.20", "16beta1": the digits before the first non-digit */
    const char *v = dbk_conn_server_version(c);
    long long major = 0;
    return v && dbk__parse_decimal(v, strspn(v, "0123456789"), 1, 1000, &major) ? (int)major : 0;
}

static dbk_rc pg_build_template(const dbk_config *cfg, dbk_conn *admin,
                                const dbk_testdb_opts *o, const char *hash, const char *dir,
                                const char *tpl, dbk_error *err)
{
    bool exists = false;
    dbk_rc rc = pg_exists(admin, tpl, &exists, err);
    if (rc || exists)
        return rc;
    int64_t key = lock_key(hash);
    rc = pg_lock(admin, key, o->lock_timeout_ms > 0 ? o->lock_timeout_ms : 120000, err);
    if (rc)
        return rc;
    rc = pg_exists(admin, tpl, &exists, err); /* built while we waited? */
    if (rc || exists)
        goto unlock;
    char tpb[NAME_MAX_LEN + 1], sql[256];
    snprintf(tpb, sizeof tpb, "dbkit_tpb_%.24s", hash);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", tpb);
    if ((rc = pg_exec(admin, sql, err)) != DBK_OK)
        goto unlock;
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", tpb);
    if ((rc = pg_exec(admin, sql, err)) != DBK_OK)
        goto unlock;
    dbk_conn *b = NULL;
    rc = open_with(cfg, "dbname", tpb, &b, err);
    if (!rc)
        rc = migrate_into(b, dir, err);
    /* Closed before the rename: the template must have no connection. */
    dbk_conn_close(b);
    if (rc)
        goto unlock;
    snprintf(sql, sizeof sql, "ALTER DATABASE \"%s\" RENAME TO \"%s\"", tpb, tpl);
    rc = pg_exec(admin, sql, err);
unlock:
    pg_unlock(admin, key);
    return rc;
}

static dbk_rc pg_new(dbk_testdb *t, const dbk_config *cfg, const char *dir,
                     const dbk_testdb_opts *o, const char *hash, dbk_error *err)
{
    dbk_conn *admin = NULL;
    dbk_rc rc = dbk_conn_open(cfg, &admin, err);
    if (rc)
        return rc;
    if (!o->no_prune && !__atomic_exchange_n(&g_pruned_pg, 1, __ATOMIC_ACQ_REL)) {
        dbk_error ignored;
        pg_prune(admin, NULL, &ignored); /* best effort: a failure must not fail the test */
    }
    char tpl[NAME_MAX_LEN + 1], sql[512];
    snprintf(tpl, sizeof tpl, "dbkit_tpl_%.24s", hash);
    dbk__strlcpy(t->tpl, tpl, sizeof t->tpl);
    rc = pg_build_template(cfg, admin, o, hash, dir, tpl, err);
    if (rc)
        goto out;
    if (o->name) {
        dbk__strlcpy(t->name, o->name, sizeof t->name);
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%.63s\" WITH (FORCE)", t->name);
        if ((rc = pg_exec(admin, sql, err)) != DBK_OK)
            goto out;
    } else {
        char host[9];
        host_tag(host);
        long pid = o->owner_pid > 0 ? o->owner_pid : (long)getpid();
        snprintf(t->name, sizeof t->name, "dbkit_t_%s_%ld_%llu_%d", host, pid, proc_start(pid),
                 __atomic_add_fetch(&g_seq, 1, __ATOMIC_RELAXED));
    }
    const char *strategy = "";
    if (server_major(admin) >= 15)
        strategy = o->strategy == DBK_TESTDB_STRATEGY_WAL_LOG ? " STRATEGY WAL_LOG"
                                                               : " STRATEGY FILE_COPY";
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%.63s\" TEMPLATE \"%s\"%s", t->name, tpl, strategy);
    rc = pg_exec(admin, sql, err);
    if (!rc)
        rc = dbk_config_clone(cfg, &t->cfg, err);
    if (!rc)
        rc = dbk_config_set(t->cfg, "dbname", t->name, err);
out:
    dbk_conn_close(admin);
    return rc;
}

static dbk_rc pg_drop_name(const dbk_config *cfg, const char *name, dbk_error *err)
{
    /* A longer name is not one PostgreSQL can hold (NAMEDATALEN 64):
     * refused rather than cut, which could name another database. */
    if (strlen(name) > 63 || strchr(name, '"'))
        return dbk__err(err, DBK_EINVALID, "not a test database name: \"%.63s...\"", name);
    dbk_conn *admin = NULL;
    dbk_rc rc = dbk_conn_open(cfg, &admin, err);
    if (rc)
        return rc;
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%.63s\" WITH (FORCE)", name);
    rc = pg_exec(admin, sql, err);
    dbk_conn_close(admin);
    return rc;
}

/* ---- SQLite ---- */

static dbk_rc sqlite_dir(const dbk_config *cfg, char *dir, size_t n, dbk_error *err)
{
    if (cfg->sqlite_memory || !cfg->sqlite_path)
        return dbk__err(err, DBK_EMISUSE,
                        "dbk_testdb_new: an in-memory SQLite database has no directory for "
                        "test databases; configure a file (sqlite:dir/any.db)");
    const char *slash = strrchr(cfg->sqlite_path, '/');
    if (!slash)
        dbk__strlcpy(dir, ".", n);
    else if (slash == cfg->sqlite_path)
        dbk__strlcpy(dir, "/", n);
    else
        snprintf(dir, n, "%.*s", (int)(slash - cfg->sqlite_path), cfg->sqlite_path);
    return DBK_OK;
}

static void unlink_db(const char *path)
{
    char p[PATH_LEN + 8];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-journal", path);
    unlink(p);
}

static dbk_rc copy_file(const char *from, const char *to, dbk_error *err)
{
    dbk_rc rc = DBK_OK;
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return dbk__err(err, DBK_EIO, "cannot read %.256s: %.256s", from, strerror(errno));
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = dbk__err(err, DBK_EIO, "cannot create %.256s: %.256s", to, strerror(errno));
        close(in);
        return rc;
    }
    char buf[65536];
    for (;;) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = dbk__err(err, DBK_EIO, "cannot read %.256s: %.256s", from, strerror(errno));
            break;
        }
        if (got == 0)
            break;
        for (ssize_t off = 0; off < got;) {
            ssize_t w = write(out, buf + off, (size_t)(got - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = dbk__err(err, errno == ENOSPC ? DBK_EDISK_FULL : DBK_EIO,
                              "cannot write %.256s: %.256s", to, strerror(errno));
                break;
            }
            off += w;
        }
        if (rc)
            break;
    }
    close(in);
    if (close(out) != 0 && !rc)
        rc = dbk__err(err, DBK_EIO, "cannot write %.256s: %.256s", to, strerror(errno));
    if (rc)
        unlink(to);
    return rc;
}

static dbk_rc sqlite_build_template(const dbk_config *cfg, const dbk_testdb_opts *o,
                                    const char *sdir, const char *hash, const char *dir,
                                    const char *tpl, dbk_error *err)
{
    if (access(tpl, F_OK) == 0)
        return DBK_OK;
    char lockp[PATH_LEN], tpb[PATH_LEN];
    snprintf(lockp, sizeof lockp, "%s/dbkit_tpl_%.24s.lock", sdir, hash);
    snprintf(tpb, sizeof tpb, "%s/dbkit_tpb_%.24s.db", sdir, hash);
    int fd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return dbk__err(err, DBK_EIO, "cannot create %.256s: %.256s", lockp, strerror(errno));
    int timeout = o->lock_timeout_ms > 0 ? o->lock_timeout_ms : 120000;
    int64_t deadline = mono_ms() + timeout;
    int wait = 2;
    dbk_rc rc = DBK_OK;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (mono_ms() >= deadline) {
            rc = dbk__err(err, DBK_EBUSY,
                          "another process held the test template lock %.256s for over %d ms", lockp,
                          timeout);
            close(fd);
            return rc;
        }
        sleep_ms(wait);
        if (wait < 100)
            wait *= 2;
    }
    if (access(tpl, F_OK) != 0) {
        unlink_db(tpb);
        dbk_conn *b = NULL;
        rc = open_with(cfg, "path", tpb, &b, err);
        if (!rc)
            rc = migrate_into(b, dir, err);
        if (!rc)
            rc = dbk_db_exec_script(dbk_conn_db(b), "PRAGMA wal_checkpoint(TRUNCATE)", err);
        dbk_conn_close(b);
        if (!rc && rename(tpb, tpl) != 0)
            rc = dbk__err(err, DBK_EIO, "cannot rename %.256s: %.256s", tpb, strerror(errno));
        if (rc)
            unlink_db(tpb);
    }
    flock(fd, LOCK_UN);
    close(fd);
    return rc;
}

static dbk_rc sqlite_prune_dir(const char *sdir, int *dropped, dbk_error *err)
{
    DIR *d = opendir(sdir);
    if (!d)
        return dbk__err(err, DBK_EIO, "cannot read %.256s: %.256s", sdir, strerror(errno));
    char mine[9];
    host_tag(mine);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char host[9];
        long pid;
        unsigned long long start;
        if (!parse_fresh_name(e->d_name, host, &pid, &start) || strcmp(host, mine) != 0 ||
            proc_alive(pid, start))
            continue;
        char p[PATH_LEN];
        snprintf(p, sizeof p, "%s/%s", sdir, e->d_name);
        unlink_db(p);
        if (dropped)
            (*dropped)++;
    }
    closedir(d);
    return DBK_OK;
}

static dbk_rc sqlite_new(dbk_testdb *t, const dbk_config *cfg, const char *dir,
                         const dbk_testdb_opts *o, const char *hash, dbk_error *err)
{
    char sdir[DIR_LEN], tpl[PATH_LEN];
    dbk_rc rc = sqlite_dir(cfg, sdir, sizeof sdir, err);
    if (rc)
        return rc;
    if (!o->no_prune && !__atomic_exchange_n(&g_pruned_sqlite, 1, __ATOMIC_ACQ_REL)) {
        dbk_error ignored;
        sqlite_prune_dir(sdir, NULL, &ignored);
    }
    snprintf(tpl, sizeof tpl, "%s/dbkit_tpl_%.24s.db", sdir, hash);
    dbk__strlcpy(t->tpl, tpl, sizeof t->tpl);
    rc = sqlite_build_template(cfg, o, sdir, hash, dir, tpl, err);
    if (rc)
        return rc;
    if (o->name) {
        snprintf(t->name, sizeof t->name, "%s/%s.db", sdir, o->name);
    } else {
        char host[9];
        host_tag(host);
        long pid = o->owner_pid > 0 ? o->owner_pid : (long)getpid();
        snprintf(t->name, sizeof t->name, "%s/dbkit_t_%s_%ld_%llu_%d.db", sdir, host, pid,
                 proc_start(pid), __atomic_add_fetch(&g_seq, 1, __ATOMIC_RELAXED));
    }
    unlink_db(t->name);
    rc = copy_file(tpl, t->name, err);
    if (!rc)
        rc = dbk_config_clone(cfg, &t->cfg, err);
    if (!rc)
        rc = dbk_config_set(t->cfg, "path", t->name, err);
    if (rc)
        unlink_db(t->name);
    return rc;
}

/* ---- public ---- */

DBK__OPTS_INIT_FN(dbk_testdb_opts, DBK_TESTDB_OPTS_VERSION)

DBK_API dbk_rc dbk_testdb_new(const dbk_config *cfg, const char *migrations_dir,
                              const dbk_testdb_opts *opts, dbk_testdb **out, dbk_error *err)
{
    if (!cfg || !out)
        return dbk__err(err, DBK_EMISUSE, "dbk_testdb_new: cfg and out must not be NULL");
    *out = NULL;
    if (opts && dbk__opts_check(opts->version, DBK_TESTDB_OPTS_VERSION, "dbk_testdb_opts", err))
        return DBK_EMISUSE;
    dbk_testdb_opts o = opts ? *opts : (dbk_testdb_opts){0};
    if (o.name && !valid_name(o.name))
        return dbk__err(err, DBK_EINVALID,
                        "dbk_testdb_new: the name must be 1 to 63 characters of a-z, 0-9 and _");
    char hash[65];
    dbk_rc rc = hash_migrations(cfg->engine, migrations_dir, hash, err);
    if (rc)
        return rc;
    dbk_testdb *t = calloc(1, sizeof *t);
    if (!t)
        return dbk__err(err, DBK_ENOMEM, "out of memory creating a test database");
    t->engine = cfg->engine;
    rc = dbk_config_clone(cfg, &t->admin, err);
    if (rc)
        goto fail;
    rc = cfg->engine == DBK_ENGINE_POSTGRES ? pg_new(t, cfg, migrations_dir, &o, hash, err)
                                            : sqlite_new(t, cfg, migrations_dir, &o, hash, err);
    if (rc)
        goto fail;
    if (!(t->url = render_url(t->cfg))) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory creating a test database");
        dbk_testdb_drop(t, NULL);
        return rc;
    }
    *out = t;
    return DBK_OK;
fail:
    dbk_testdb_free(t);
    return rc;
}

DBK_API const dbk_config *dbk_testdb_config(const dbk_testdb *t)
{
    return t ? t->cfg : NULL;
}

DBK_API const char *dbk_testdb_url(const dbk_testdb *t)
{
    return t ? t->url : NULL;
}

DBK_API const char *dbk_testdb_name(const dbk_testdb *t)
{
    return t ? t->name : NULL;
}

DBK_API const char *dbk_testdb_template(const dbk_testdb *t)
{
    return t ? t->tpl : NULL;
}

DBK_API void dbk_testdb_free(dbk_testdb *t)
{
    if (!t)
        return;
    dbk_config_free(t->admin);
    dbk_config_free(t->cfg);
    if (t->url)
        memset(t->url, 0, strlen(t->url)); /* may hold the password */
    free(t->url);
    free(t);
}

DBK_API dbk_rc dbk_testdb_drop(dbk_testdb *t, dbk_error *err)
{
    if (!t)
        return DBK_OK;
    dbk_error local;
    if (!err)
        err = &local;
    dbk_rc rc = DBK_OK;
    if (t->name[0]) {
        if (t->engine == DBK_ENGINE_POSTGRES)
            rc = pg_drop_name(t->admin, t->name, err);
        else
            unlink_db(t->name);
    }
    dbk_testdb_free(t);
    return rc;
}

DBK_API dbk_rc dbk_testdb_drop_url(const dbk_config *cfg, const char *url, dbk_error *err)
{
    if (!cfg || !url)
        return dbk__err(err, DBK_EMISUSE, "dbk_testdb_drop_url: arguments must not be NULL");
    dbk_config *u = NULL;
    dbk_rc rc = dbk_config_from(url, NULL, NULL, &u, err);
    if (rc)
        return rc;
    char host[9];
    long pid;
    unsigned long long start;
    if (u->engine == DBK_ENGINE_POSTGRES) {
        const char *name = u->dbname ? u->dbname : "";
        if (!parse_fresh_name(name, host, &pid, &start) || strchr(name, '.')) {
            rc = dbk__err(err, DBK_EINVALID, "%.256s is not a test database (dbkit_t_...)", name);
        } else if (cfg->engine != DBK_ENGINE_POSTGRES) {
            rc = dbk__err(err, DBK_EINVALID, "a PostgreSQL test database needs a PostgreSQL "
                                             "server configured to drop it");
        } else {
            rc = pg_drop_name(cfg, name, err);
        }
    } else {
        const char *path = u->sqlite_path ? u->sqlite_path : "";
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        if (!parse_fresh_name(base, host, &pid, &start) || !strstr(base, ".db"))
            rc = dbk__err(err, DBK_EINVALID, "%.256s is not a test database file (dbkit_t_...)",
                          base);
        else
            unlink_db(path);
    }
    dbk_config_free(u);
    return rc;
}

DBK_API dbk_rc dbk_testdb_prune(const dbk_config *cfg, int *dropped, dbk_error *err)
{
    if (!cfg)
        return dbk__err(err, DBK_EMISUSE, "dbk_testdb_prune: cfg must not be NULL");
    if (dropped)
        *dropped = 0;
    if (cfg->engine == DBK_ENGINE_SQLITE) {
        char sdir[DIR_LEN];
        dbk_rc rc = sqlite_dir(cfg, sdir, sizeof sdir, err);
        return rc ? rc : sqlite_prune_dir(sdir, dropped, err);
    }
    dbk_conn *admin = NULL;
    dbk_rc rc = dbk_conn_open(cfg, &admin, err);
    if (rc)
        return rc;
    rc = pg_prune(admin, dropped, err);
    dbk_conn_close(admin);
    return rc;
}
