/*
 * Test support (see testutil.h). Talks to the admin PostgreSQL through
 * libpq directly so that database setup does not depend on the code under
 * test.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void dbkt_skip(int server_needed, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *ci = getenv("CI");
    if (server_needed && ci && strcmp(ci, "true") == 0) {
        fprintf(stderr, "FAIL (CI forbids skipping): %s\n", msg);
        exit(1);
    }
    fprintf(stderr, "SKIP: %s\n", msg);
    exit(77);
}

const char *dbkt_pg_admin_url(void)
{
    const char *u = getenv("DBKIT_TEST_PG_URL");
    if (!u || !*u)
        dbkt_skip(1, "DBKIT_TEST_PG_URL is not set: run the tests through `make test` "
                     "(scripts/testenv.sh starts a throwaway PostgreSQL)");
    return u;
}

static PGconn *admin_connect(void)
{
    PGconn *c = PQconnectdb(dbkt_pg_admin_url());
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "cannot reach test PostgreSQL: %s", PQerrorMessage(c));
        PQfinish(c);
        fail_msg("%s", msg);
    }
    return c;
}

void dbkt_pg_admin_exec(const char *sql)
{
    PGconn *c = admin_connect();
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "admin sql failed: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        fail_msg("%s", msg);
    }
    PQclear(r);
    PQfinish(c);
}

char *dbkt_pg_fresh_db(const char *name)
{
    /* The library's own test databases (dbk_testdb): "dbkt_<name>" cloned
     * from the empty template, an older one of that name dropped first. */
    char dbname[80];
    snprintf(dbname, sizeof dbname, "dbkt_%s", name);
    dbk_config *cfg = NULL;
    dbk_error err;
    DBKT_OK(dbk_config_from(dbkt_pg_admin_url(), NULL, NULL, &cfg, &err), &err);
    dbk_testdb_opts o;
    memset(&o, 0, sizeof o);
    o.name = dbname;
    dbk_testdb *t = NULL;
    DBKT_OK(dbk_testdb_new(cfg, NULL, &o, &t, &err), &err);
    char *url = strdup(dbk_testdb_url(t));
    assert_non_null(url);
    dbk_testdb_free(t); /* kept: the next run of the test drops it first */
    dbk_config_free(cfg);
    return url;
}

const char *dbkt_redis_url(void)
{
    const char *u = getenv("DBKIT_TEST_REDIS_URL");
    if (!u || !*u)
        dbkt_skip(1, "DBKIT_TEST_REDIS_URL is not set: run the tests through `make test` "
                     "(scripts/testenv.sh starts a throwaway redis-server)");
    return u;
}

static char *g_tmpdir;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tmpdir(void)
{
    if (g_tmpdir && !getenv("DBKIT_TEST_KEEP"))
        nftw(g_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(g_tmpdir);
    g_tmpdir = NULL;
}

char *dbkt_tmpdir(void)
{
    if (!g_tmpdir) {
        const char *base = getenv("TMPDIR");
        char tmpl[512];
        snprintf(tmpl, sizeof tmpl, "%s/dbkt.XXXXXX", base && *base ? base : "/tmp");
        char *d = mkdtemp(tmpl);
        assert_non_null(d);
        g_tmpdir = strdup(d);
        atexit(rm_tmpdir);
    }
    return strdup(g_tmpdir);
}

char *dbkt_sqlite_url(const char *name)
{
    char *dir = dbkt_tmpdir();
    size_t n = strlen(dir) + strlen(name) + 16;
    char *url = malloc(n);
    assert_non_null(url);
    snprintf(url, n, "sqlite:%s/%s.db", dir, name);
    free(dir);
    return url;
}

dbk_conn *dbkt_open(const char *url)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    DBKT_OK(dbk_conn_open(cfg, &c, &err), &err);
    dbk_config_free(cfg);
    return c;
}

void dbkt_each_engine(const char *name, void (*fn)(const char *url, dbk_engine engine))
{
    char *u = dbkt_sqlite_url(name);
    fn(u, DBK_ENGINE_SQLITE);
    free(u);
    u = dbkt_pg_fresh_db(name);
    fn(u, DBK_ENGINE_POSTGRES);
    free(u);
}

void dbkt_exec(dbk_db *db, const char *sql)
{
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db, sql, &err), &err);
}

int64_t dbkt_int(dbk_db *db, const char *sql)
{
    dbk_error err;
    int64_t v = -1;
    DBKT_OK(dbk_db_query_int64(db, sql, NULL, 0, &v, &err), &err);
    return v;
}

void dbkt_text(dbk_db *db, const char *sql, char *buf, size_t n)
{
    dbk_error err;
    DBKT_OK(dbk_db_query_text(db, sql, NULL, 0, buf, n, NULL, &err), &err);
}

/* ---- child processes ---- */

void dbkt_proc_free(dbkt_proc *p)
{
    free(p->out);
    free(p->err);
    memset(p, 0, sizeof *p);
}

int64_t dbkt_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void dbkt_append(char **buf, size_t *len, const char *p, size_t n)
{
    char *q = realloc(*buf, *len + n + 1);
    assert_non_null(q);
    memcpy(q + *len, p, n);
    *len += n;
    q[*len] = '\0';
    *buf = q;
}

pid_t dbkt_spawn(const char *exe, const char *cwd, const char *const *args,
                 const char *const *unset, const char *const *set, int *out_fd, int *err_fd)
{
    int o[2], e[2];
    assert_int_equal(pipe(o), 0);
    assert_int_equal(pipe(e), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Dies with the test process, even when a failed assertion skipped
         * the test's own kill: a service left running is never ours to
         * find later. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(o[1], 1);
        dup2(e[1], 2);
        close(o[0]);
        close(o[1]);
        close(e[0]);
        close(e[1]);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        for (int i = 0; unset && unset[i]; i++)
            unsetenv(unset[i]);
        for (int i = 0; set && set[i]; i++)
            putenv((char *)set[i]);
        const char *argv[64];
        int n = 0;
        argv[n++] = exe;
        for (int i = 0; args[i] && n < 63; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        if (strchr(exe, '/'))
            execv(exe, (char *const *)argv);
        else
            execvp(exe, (char *const *)argv);
        _exit(127);
    }
    close(o[1]);
    close(e[1]);
    *out_fd = o[0];
    *err_fd = e[0];
    return pid;
}

dbkt_proc dbkt_collect(pid_t pid, int out_fd, int err_fd, int timeout_ms, const char *what)
{
    dbkt_proc r = {0, NULL, NULL};
    size_t olen = 0, elen = 0;
    dbkt_append(&r.out, &olen, "", 0);
    dbkt_append(&r.err, &elen, "", 0);
    int64_t deadline = dbkt_mono_ms() + timeout_ms;
    bool oopen = true, eopen = true;
    while (oopen || eopen) {
        struct pollfd pf[2] = {{oopen ? out_fd : -1, POLLIN, 0}, {eopen ? err_fd : -1, POLLIN, 0}};
        int64_t left = deadline - dbkt_mono_ms();
        if (left <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            fail_msg("%s did not finish within %d ms", what, timeout_ms);
        }
        int pr = poll(pf, 2, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        char buf[4096];
        for (int i = 0; i < 2; i++) {
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(pf[i].fd, buf, sizeof buf);
            if (n > 0) {
                if (i == 0)
                    dbkt_append(&r.out, &olen, buf, (size_t)n);
                else
                    dbkt_append(&r.err, &elen, buf, (size_t)n);
            } else if (n == 0 || errno != EINTR) {
                if (i == 0)
                    oopen = false;
                else
                    eopen = false;
            }
        }
    }
    close(out_fd);
    close(err_fd);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

void *dbkt_unreadable(size_t len)
{
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        fail_msg("mmap of %zu unreadable bytes: %s", len, strerror(errno));
    return p;
}

void dbkt_unreadable_free(void *p, size_t len)
{
    if (p)
        munmap(p, len);
}

int dbkt_in_child(int (*fn)(void *ctx), void *ctx)
{
    fflush(NULL);
    pid_t child = fork();
    if (child < 0)
        fail_msg("fork: %s", strerror(errno));
    if (child == 0) {
        int code = fn(ctx) & 255;
        char cmd[32];
        snprintf(cmd, sizeof cmd, "exit %d", code);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(code);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            fail_msg("waitpid: %s", strerror(errno));
    if (!WIFEXITED(status))
        fail_msg("the child was killed by signal %d", WTERMSIG(status));
    return WEXITSTATUS(status);
}

int dbkt_tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}
