/*
 * A private throwaway PostgreSQL for tests (see pgserver.h).
 *
 * Commands run through fork/exec with argument vectors (no shell), as user
 * postgres via runuser when we are root, with their output appended to
 * <dir>/cmd.log. Every command is bounded: pg_ctl waits at most 60 s by its
 * own -t, and the runner kills anything still running after 120 s.
 */
#include "pgserver.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

struct dbkt_pgserver {
    char dir[256];
    char data[320];
    char cmdlog[320];
    char srvlog[320];
    char bindir[256];
    char url[128];
    int port;
    pid_t watchdog;
    int pipe_w;
};

void dbkt_pg_bindir(char *out, size_t n)
{
    out[0] = '\0';
    const char *env = getenv("DBKIT_PG_BINDIR");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return;
    }
    FILE *f = popen("pg_config --bindir 2>/dev/null", "r");
    if (f) {
        char line[256];
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            char probe[300];
            snprintf(probe, sizeof probe, "%s/initdb", line);
            if (access(probe, X_OK) == 0)
                snprintf(out, n, "%s", line);
        }
        pclose(f);
        if (out[0])
            return;
    }
    if (access("/usr/lib/postgresql/15/bin/initdb", X_OK) == 0)
        snprintf(out, n, "/usr/lib/postgresql/15/bin");
}

static void bin_path(const dbkt_pgserver *s, const char *prog, char *out, size_t n)
{
    if (s->bindir[0])
        snprintf(out, n, "%s/%s", s->bindir, prog);
    else
        snprintf(out, n, "%s", prog);
}

int dbkt_run_as_postgres(const char *cmdlog, char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(cmdlog, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, 0);
            close(null);
        }
        if (geteuid() == 0) {
            char *full[40];
            int i = 0;
            full[i++] = "runuser";
            full[i++] = "-u";
            full[i++] = "postgres";
            full[i++] = "--";
            for (int j = 0; argv[j] && i < 39; j++)
                full[i++] = argv[j];
            full[i] = NULL;
            execvp("runuser", full);
        } else {
            execvp(argv[0], argv);
        }
        _exit(127);
    }
    /* Bounded wait: 120 s, then kill. */
    for (int i = 0; i < 120 * 50; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0 && errno != EINTR)
            return -1;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int run(const dbkt_pgserver *s, char *const argv[])
{
    return dbkt_run_as_postgres(s->cmdlog, argv);
}

void dbkt_dump_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", path);
    char line[512];
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

static void dump_logs(const dbkt_pgserver *s)
{
    dbkt_dump_file(s->cmdlog);
    dbkt_dump_file(s->srvlog);
}

int dbkt_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int pg_ctl(const dbkt_pgserver *s, const char *action, const char *mode)
{
    char prog[300];
    bin_path(s, "pg_ctl", prog, sizeof prog);
    char opts[512];
    snprintf(opts, sizeof opts,
             "-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off "
             "-c full_page_writes=off -c synchronous_commit=off -c max_connections=100",
             s->port, s->dir);
    char *argv[16];
    int i = 0;
    argv[i++] = prog;
    argv[i++] = "-D";
    argv[i++] = (char *)s->data;
    argv[i++] = "-l";
    argv[i++] = (char *)s->srvlog;
    argv[i++] = "-w";
    argv[i++] = "-t";
    argv[i++] = "60";
    if (strcmp(action, "start") == 0) {
        argv[i++] = "-o";
        argv[i++] = opts;
    }
    if (mode) {
        argv[i++] = "-m";
        argv[i++] = (char *)mode;
    }
    argv[i++] = (char *)action;
    argv[i] = NULL;
    return run(s, argv);
}

/* The watchdog: waits for EOF on the pipe (the test process is gone or
 * called stop), then stops the server and removes the directory. */
static void watchdog_main(dbkt_pgserver *s, int rfd)
{
    setpgid(0, 0); /* outlive a Ctrl-C or a kill of the test's process group */
    for (int fd = 3; fd < 1024; fd++)
        if (fd != rfd)
            close(fd);
    char b;
    for (;;) {
        ssize_t r = read(rfd, &b, 1);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    char pidfile[400];
    snprintf(pidfile, sizeof pidfile, "%s/postmaster.pid", s->data);
    if (access(pidfile, F_OK) == 0)
        pg_ctl(s, "stop", "immediate");
    if (!getenv("DBKIT_TEST_KEEP"))
        nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    _exit(0);
}

void dbkt_pg_prepare_dir(const char *prefix, char *bindir, size_t bn, char *dir, size_t dn)
{
    dbkt_pg_bindir(bindir, bn);
    char initdb[300];
    if (bindir[0]) {
        snprintf(initdb, sizeof initdb, "%s/initdb", bindir);
        if (access(initdb, X_OK) != 0)
            dbkt_skip(1, "initdb not found (set DBKIT_PG_BINDIR)");
    }
    uid_t pg_uid = 0;
    gid_t pg_gid = 0;
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw)
            dbkt_skip(1, "running as root but there is no postgres user to run PostgreSQL as");
        pg_uid = pw->pw_uid;
        pg_gid = pw->pw_gid;
    }
    snprintf(dir, dn, "/tmp/%s.XXXXXX", prefix);
    assert_non_null(mkdtemp(dir));
    if (geteuid() == 0 && chown(dir, pg_uid, pg_gid) != 0)
        fail_msg("chown %s: %s", dir, strerror(errno));
}

dbkt_pgserver *dbkt_pgserver_start(void)
{
    char bindir[256], dir[256];
    dbkt_pg_prepare_dir("dbkt-pg", bindir, sizeof bindir, dir, sizeof dir);
    dbkt_pgserver *s = calloc(1, sizeof *s);
    assert_non_null(s);
    snprintf(s->bindir, sizeof s->bindir, "%s", bindir);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    char initdb[300];
    bin_path(s, "initdb", initdb, sizeof initdb);
    snprintf(s->data, sizeof s->data, "%s/data", s->dir);
    snprintf(s->cmdlog, sizeof s->cmdlog, "%s/cmd.log", s->dir);
    snprintf(s->srvlog, sizeof s->srvlog, "%s/server.log", s->dir);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t wd = fork();
    assert_true(wd >= 0);
    if (wd == 0) {
        close(fds[1]);
        watchdog_main(s, fds[0]);
    }
    close(fds[0]);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    s->watchdog = wd;
    s->pipe_w = fds[1];

    char *iargv[] = {initdb, "-D", s->data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--no-sync", "--no-instructions", NULL};
    if (run(s, iargv) != 0) {
        dump_logs(s);
        dbkt_pgserver_stop(s);
        fail_msg("initdb failed");
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = dbkt_free_port();
        assert_true(s->port > 0);
        if (pg_ctl(s, "start", NULL) == 0) {
            snprintf(s->url, sizeof s->url, "postgres://postgres@127.0.0.1:%d/postgres", s->port);
            return s;
        }
    }
    dump_logs(s);
    dbkt_pgserver_stop(s);
    fail_msg("pg_ctl start failed five times");
    return NULL;
}

const char *dbkt_pgserver_url(const dbkt_pgserver *s)
{
    return s->url;
}

int dbkt_pgserver_port(const dbkt_pgserver *s)
{
    return s->port;
}

int dbkt_pgserver_restart(dbkt_pgserver *s, const char *mode)
{
    if (pg_ctl(s, "restart", mode ? mode : "fast") != 0) {
        dump_logs(s);
        return -1;
    }
    return 0;
}

int dbkt_pgserver_pause(dbkt_pgserver *s)
{
    if (pg_ctl(s, "stop", "fast") != 0) {
        dump_logs(s);
        return -1;
    }
    return 0;
}

int dbkt_pgserver_resume(dbkt_pgserver *s)
{
    /* The options live in postmaster.opts after the first start, but a
     * plain start does not read them: pass them again. */
    if (pg_ctl(s, "start", NULL) != 0) {
        dump_logs(s);
        return -1;
    }
    return 0;
}

void dbkt_pgserver_stop(dbkt_pgserver *s)
{
    if (!s)
        return;
    char pidfile[400];
    snprintf(pidfile, sizeof pidfile, "%s/postmaster.pid", s->data);
    if (access(pidfile, F_OK) == 0)
        pg_ctl(s, "stop", "fast");
    close(s->pipe_w);
    waitpid(s->watchdog, NULL, 0); /* it removes the directory */
    free(s);
}
