/*
 * A private primary + streaming replicas (+ PgBouncer) for tests (see
 * pgtopo.h).
 *
 * Built like pgserver.c: commands run through fork/exec with argument
 * vectors (no shell), as user postgres via runuser when we are root, their
 * output appended to <dir>/cmd.log, each bounded (pg_ctl -t 60, and the
 * runner kills anything still running after 120 s). Every node lives in
 * <dir>/n<i> with its server log in <dir>/n<i>.log, so the watchdog can
 * find and stop whatever is running from the directory alone, whichever
 * nodes were added, promoted or restarted since it was forked.
 */
#include "pgtopo.h"
#include "pgserver.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define TOPO_MAX_NODES 9

struct node {
    char data[320];
    char srvlog[320];
    char url[128];
    int port;
};

struct dbkt_pgtopo {
    char dir[256];
    char cmdlog[320];
    char bindir[256];
    int nnodes;
    struct node node[TOPO_MAX_NODES];
    char bouncer_url[128];
    char bouncer_pidfile[320];
    char bouncer_log[320];
    pid_t watchdog;
    int pipe_w;
    /* pg_auto_failover: `pg_autoctl run` of node 0, node 1 and the monitor
     * (0: not running), each the leader of its own process group. */
    char autoctl_bin[300];
    char monitor_data[320];
    int monitor_port;
    pid_t autoctl[3];
};

#define AUTOCTL_MONITOR 2

static void bin_path(const dbkt_pgtopo *t, const char *prog, char *out, size_t n)
{
    if (t->bindir[0])
        snprintf(out, n, "%s/%s", t->bindir, prog);
    else
        snprintf(out, n, "%s", prog);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Runs argv as postgres when root, output appended to the command log.
 * Returns the exit status, or -1. */
static int run(const dbkt_pgtopo *t, char *const argv[])
{
    return dbkt_run_as_postgres(t->cmdlog, argv);
}

static void dump_logs(const dbkt_pgtopo *t)
{
    dbkt_dump_file(t->cmdlog);
    for (int i = 0; i < t->nnodes; i++)
        dbkt_dump_file(t->node[i].srvlog);
    if (t->bouncer_log[0])
        dbkt_dump_file(t->bouncer_log);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int pg_ctl(const dbkt_pgtopo *t, int i, const char *action, const char *mode)
{
    const struct node *nd = &t->node[i];
    char prog[300];
    bin_path(t, "pg_ctl", prog, sizeof prog);
    char opts[600];
    snprintf(opts, sizeof opts,
             "-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off "
             "-c full_page_writes=on -c synchronous_commit=off -c max_connections=60 "
             "-c shared_buffers=16MB -c wal_level=replica -c max_wal_senders=12 "
             "-c hot_standby=on -c hot_standby_feedback=on -c wal_receiver_status_interval=1",
             nd->port, t->dir);
    char *argv[20];
    int k = 0;
    argv[k++] = prog;
    argv[k++] = "-D";
    argv[k++] = (char *)nd->data;
    argv[k++] = "-l";
    argv[k++] = (char *)nd->srvlog;
    argv[k++] = "-w";
    argv[k++] = "-t";
    argv[k++] = "60";
    if (strcmp(action, "start") == 0) {
        argv[k++] = "-o";
        argv[k++] = opts;
    }
    if (mode) {
        argv[k++] = "-m";
        argv[k++] = (char *)mode;
    }
    argv[k++] = (char *)action;
    argv[k] = NULL;
    return run(t, argv);
}

/* Stops whatever runs from t->dir: every n<i>/postmaster.pid, then the
 * bouncer's pidfile. Used by the watchdog and by stop(). */
static void stop_autoctl_all(dbkt_pgtopo *t);
static void pg_ctl_stop_dir(const dbkt_pgtopo *t, const char *data, const char *mode);

static void stop_all(dbkt_pgtopo *t, const char *mode)
{
    char pf[400];
    stop_autoctl_all(t);
    snprintf(pf, sizeof pf, "%s/bouncer.pid", t->dir);
    FILE *f = fopen(pf, "r");
    if (f) {
        long pid = 0;
        if (fscanf(f, "%ld", &pid) == 1 && pid > 0)
            kill((pid_t)pid, SIGTERM);
        fclose(f);
    }
    for (int i = 0; i < TOPO_MAX_NODES; i++) {
        snprintf(t->node[i].data, sizeof t->node[i].data, "%s/n%d", t->dir, i);
        snprintf(t->node[i].srvlog, sizeof t->node[i].srvlog, "%s/n%d.log", t->dir, i);
        snprintf(pf, sizeof pf, "%s/postmaster.pid", t->node[i].data);
        if (access(pf, F_OK) == 0)
            pg_ctl(t, i, "stop", mode);
    }
    snprintf(t->monitor_data, sizeof t->monitor_data, "%s/mon", t->dir);
    snprintf(pf, sizeof pf, "%s/postmaster.pid", t->monitor_data);
    if (access(pf, F_OK) == 0)
        pg_ctl_stop_dir(t, t->monitor_data, mode);
}

static void watchdog_main(dbkt_pgtopo *t, int rfd)
{
    setpgid(0, 0);
    for (int fd = 3; fd < 1024; fd++)
        if (fd != rfd)
            close(fd);
    char b;
    for (;;) {
        ssize_t r = read(rfd, &b, 1);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    stop_all(t, "immediate");
    if (!getenv("DBKIT_TEST_KEEP"))
        nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    _exit(0);
}

static PGconn *connect_node(const dbkt_pgtopo *t, int i)
{
    char ci[200];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=5",
             t->node[i].port);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* First column of the first row as text into buf; 0 on success. */
static int query_text(const dbkt_pgtopo *t, int i, const char *sql, char *buf, size_t n)
{
    PGconn *c = connect_node(t, i);
    if (!c)
        return -1;
    PGresult *r = PQexec(c, sql);
    int rc = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        snprintf(buf, n, "%s", PQgetvalue(r, 0, 0));
        rc = 0;
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

int dbkt_pgtopo_exec(dbkt_pgtopo *t, int node, const char *sql)
{
    PGconn *c = connect_node(t, node);
    if (!c) {
        fprintf(stderr, "pgtopo: cannot connect to node %d\n", node);
        return -1;
    }
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? 0 : -1;
    if (rc)
        fprintf(stderr, "pgtopo: node %d: %s: %s", node, sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return rc;
}

static void set_url(struct node *nd)
{
    snprintf(nd->url, sizeof nd->url, "postgres://postgres@127.0.0.1:%d/postgres", nd->port);
}

static int start_fresh_port(dbkt_pgtopo *t, int i)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        t->node[i].port = dbkt_free_port();
        if (t->node[i].port > 0 && pg_ctl(t, i, "start", NULL) == 0) {
            set_url(&t->node[i]);
            return 0;
        }
    }
    return -1;
}

static int add_replica(dbkt_pgtopo *t)
{
    int i = t->nnodes;
    char prog[300];
    bin_path(t, "pg_basebackup", prog, sizeof prog);
    char port[16];
    snprintf(port, sizeof port, "%d", t->node[0].port);
    char *argv[] = {prog,        "-h", "127.0.0.1",     "-p", port, "-U",
                    "postgres",  "-D", t->node[i].data, "-R", "-X", "stream",
                    "--no-sync", "-c", "fast",          NULL};
    if (run(t, argv) != 0)
        return -1;
    t->nnodes++;
    return start_fresh_port(t, i);
}

/* A fresh directory and the watchdog that cleans it up. */
static dbkt_pgtopo *topo_new(void)
{
    char bindir[256], dir[256];
    dbkt_pg_prepare_dir("dbkt-topo", bindir, sizeof bindir, dir, sizeof dir);
    dbkt_pgtopo *t = calloc(1, sizeof *t);
    assert_non_null(t);
    snprintf(t->bindir, sizeof t->bindir, "%s", bindir);
    snprintf(t->dir, sizeof t->dir, "%s", dir);
    snprintf(t->cmdlog, sizeof t->cmdlog, "%s/cmd.log", t->dir);
    snprintf(t->monitor_data, sizeof t->monitor_data, "%s/mon", t->dir);
    for (int i = 0; i < TOPO_MAX_NODES; i++) {
        snprintf(t->node[i].data, sizeof t->node[i].data, "%s/n%d", t->dir, i);
        snprintf(t->node[i].srvlog, sizeof t->node[i].srvlog, "%s/n%d.log", t->dir, i);
    }

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t wd = fork();
    assert_true(wd >= 0);
    if (wd == 0) {
        close(fds[1]);
        watchdog_main(t, fds[0]);
    }
    close(fds[0]);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    t->watchdog = wd;
    t->pipe_w = fds[1];
    return t;
}

dbkt_pgtopo *dbkt_pgtopo_start(int nreplicas)
{
    assert_true(nreplicas >= 0 && nreplicas < TOPO_MAX_NODES);
    dbkt_pgtopo *t = topo_new();
    char initdb[300];
    bin_path(t, "initdb", initdb, sizeof initdb);
    char *iargv[] = {initdb,  "-D", t->node[0].data, "-U",        "postgres",          "-A",
                     "trust", "-E", "UTF8",          "--no-sync", "--no-instructions", NULL};
    if (run(t, iargv) != 0) {
        dump_logs(t);
        dbkt_pgtopo_stop(t);
        fail_msg("initdb failed");
    }
    t->nnodes = 1;
    if (start_fresh_port(t, 0) != 0) {
        dump_logs(t);
        dbkt_pgtopo_stop(t);
        fail_msg("pg_ctl start of the primary failed five times");
    }
    for (int r = 0; r < nreplicas; r++) {
        if (add_replica(t) != 0) {
            dump_logs(t);
            dbkt_pgtopo_stop(t);
            fail_msg("replica %d: pg_basebackup or start failed", r + 1);
        }
    }
    /* Streaming before we return: every replica's walreceiver connected. */
    char want[16];
    snprintf(want, sizeof want, "%d", nreplicas);
    for (int i = 0; i < 1500; i++) {
        char got[32] = "";
        if (query_text(t, 0, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                       got, sizeof got) == 0 &&
            strcmp(got, want) == 0)
            return t;
        sleep_ms(20);
    }
    dump_logs(t);
    dbkt_pgtopo_stop(t);
    fail_msg("the replicas did not start streaming within 30 s");
    return NULL;
}

int dbkt_pgtopo_nodes(const dbkt_pgtopo *t)
{
    return t->nnodes;
}

const char *dbkt_pgtopo_url(const dbkt_pgtopo *t, int node)
{
    return t->node[node].url;
}

int dbkt_pgtopo_port(const dbkt_pgtopo *t, int node)
{
    return t->node[node].port;
}

int dbkt_pgtopo_stop_node(dbkt_pgtopo *t, int node, const char *mode)
{
    if (pg_ctl(t, node, "stop", mode ? mode : "fast") != 0) {
        dump_logs(t);
        return -1;
    }
    return 0;
}

int dbkt_pgtopo_kill_node(dbkt_pgtopo *t, int node)
{
    char pf[400];
    snprintf(pf, sizeof pf, "%s/postmaster.pid", t->node[node].data);
    FILE *f = fopen(pf, "r");
    if (!f)
        return -1;
    long pid = 0;
    int ok = fscanf(f, "%ld", &pid) == 1 && pid > 0;
    fclose(f);
    if (!ok || kill((pid_t)pid, SIGKILL) != 0)
        return -1;
    for (int i = 0; i < 1500; i++) {
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            return 0;
        sleep_ms(20);
    }
    return -1;
}

int dbkt_pgtopo_start_node(dbkt_pgtopo *t, int node)
{
    /* After a SIGKILL the old backends may still hold the shared memory for
     * a moment ("pre-existing shared memory block is still in use"). */
    for (int attempt = 0; attempt < 10; attempt++) {
        if (pg_ctl(t, node, "start", NULL) == 0)
            return 0;
        sleep_ms(200);
    }
    dump_logs(t);
    return -1;
}

int dbkt_pgtopo_promote(dbkt_pgtopo *t, int node)
{
    if (pg_ctl(t, node, "promote", NULL) != 0) {
        dump_logs(t);
        return -1;
    }
    return 0;
}

int dbkt_pgtopo_sync(dbkt_pgtopo *t, int timeout_ms)
{
    char lsn[64];
    /* The insert position, not pg_current_wal_lsn() (the write position):
     * with synchronous_commit=off a commit that has returned may still sit
     * in the WAL buffers, behind the write position. */
    if (query_text(t, 0, "SELECT pg_current_wal_insert_lsn()", lsn, sizeof lsn) != 0)
        return -1;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", lsn);
    for (int i = 1; i < t->nnodes; i++) {
        int waited = 0;
        for (;;) {
            char got[8] = "";
            if (query_text(t, i, sql, got, sizeof got) == 0 && strcmp(got, "t") == 0)
                break;
            if (waited >= timeout_ms)
                return -1;
            sleep_ms(20);
            waited += 20;
        }
    }
    return 0;
}

const char *dbkt_pgtopo_bouncer_start(dbkt_pgtopo *t, int node, int pool_size)
{
    char ini[400], users[400];
    snprintf(ini, sizeof ini, "%s/bouncer.ini", t->dir);
    snprintf(users, sizeof users, "%s/userlist.txt", t->dir);
    snprintf(t->bouncer_pidfile, sizeof t->bouncer_pidfile, "%s/bouncer.pid", t->dir);
    snprintf(t->bouncer_log, sizeof t->bouncer_log, "%s/bouncer.log", t->dir);
    FILE *u = fopen(users, "w");
    if (!u)
        return NULL;
    fputs("\"postgres\" \"\"\n", u);
    fclose(u);
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = dbkt_free_port();
        FILE *f = fopen(ini, "w");
        if (!f)
            return NULL;
        fprintf(f,
                "[databases]\n* = host=127.0.0.1 port=%d\n"
                "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n"
                "auth_type = trust\nauth_file = %s\npool_mode = transaction\n"
                "default_pool_size = %d\nmin_pool_size = 0\nreserve_pool_size = 0\n"
                "max_client_conn = 200\nserver_reset_query =\n"
                "ignore_startup_parameters = extra_float_digits,options,statement_timeout,"
                "TimeZone,DateStyle,lock_timeout\n"
                "logfile = %s\npidfile = %s\nadmin_users = postgres\n",
                t->node[node].port, port, users, pool_size, t->bouncer_log, t->bouncer_pidfile);
        fclose(f);
        char *argv[] = {"pgbouncer", "-d", "-q", ini, NULL};
        if (run(t, argv) != 0)
            continue;
        snprintf(t->bouncer_url, sizeof t->bouncer_url, "postgres://postgres@127.0.0.1:%d/postgres",
                 port);
        /* -d returns once daemonized; wait until it answers. */
        for (int i = 0; i < 500; i++) {
            char ci[160];
            snprintf(ci, sizeof ci,
                     "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2",
                     port);
            PGconn *c = PQconnectdb(ci);
            int ok = PQstatus(c) == CONNECTION_OK;
            PQfinish(c);
            if (ok)
                return t->bouncer_url;
            sleep_ms(20);
        }
    }
    dump_logs(t);
    return NULL;
}

/* ---- pg_auto_failover ---- */

static void pg_ctl_stop_dir(const dbkt_pgtopo *t, const char *data, const char *mode)
{
    char prog[300];
    bin_path(t, "pg_ctl", prog, sizeof prog);
    char *argv[] = {prog, "-D", (char *)data, "-w", "-t", "60", "-m", (char *)mode, "stop", NULL};
    run(t, argv);
}

static bool pid_gone(pid_t pid)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
        return true;
    return kill(pid, 0) != 0 && errno == ESRCH;
}

/* The `pg_autoctl run` PIDs still to stop, one per line in <dir>/autoctl.pids
 * (rewritten whenever one starts or is killed), so the watchdog finds them
 * from the directory alone. */
static void write_pids(const dbkt_pgtopo *t)
{
    char path[400], tmp[410];
    snprintf(path, sizeof path, "%s/autoctl.pids", t->dir);
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    for (int i = 0; i < 3; i++)
        if (t->autoctl[i] > 0)
            fprintf(f, "%ld\n", (long)t->autoctl[i]);
    fclose(f);
    rename(tmp, path);
}

/* SIGTERM to every `pg_autoctl run` (it stops its Postgres with a fast
 * shutdown), at most 20 s for them to go, then SIGKILL to their process
 * groups. */
static void stop_autoctl_all(dbkt_pgtopo *t)
{
    char path[400];
    snprintf(path, sizeof path, "%s/autoctl.pids", t->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    pid_t pids[3];
    int n = 0;
    long v;
    while (n < 3 && fscanf(f, "%ld", &v) == 1)
        if (v > 1)
            pids[n++] = (pid_t)v;
    fclose(f);
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGTERM);
    for (int k = 0; k < 1000; k++) {
        bool all = true;
        for (int i = 0; i < n; i++)
            if (pids[i] && pid_gone(pids[i]))
                pids[i] = 0;
            else if (pids[i])
                all = false;
        if (all)
            break;
        sleep_ms(20);
    }
    for (int i = 0; i < n; i++)
        if (pids[i]) {
            kill(-pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    remove(path);
    for (int i = 0; i < 3; i++)
        t->autoctl[i] = 0;
}

/* pg_autoctl's environment: its configuration and state files under the
 * topology's directory (XDG_*), the server programs first in PATH. */
struct autoctl_env {
    char cfg[400], data[400], run[400], home[300], path[600];
    char *envp[8];
};

static void autoctl_env_init(const dbkt_pgtopo *t, struct autoctl_env *e)
{
    snprintf(e->cfg, sizeof e->cfg, "XDG_CONFIG_HOME=%s/xdg/config", t->dir);
    snprintf(e->data, sizeof e->data, "XDG_DATA_HOME=%s/xdg/data", t->dir);
    snprintf(e->run, sizeof e->run, "XDG_RUNTIME_DIR=%s/xdg/run", t->dir);
    snprintf(e->home, sizeof e->home, "HOME=%s", t->dir);
    snprintf(e->path, sizeof e->path, "PATH=%s%s/usr/local/bin:/usr/bin:/bin", t->bindir,
             t->bindir[0] ? ":" : "");
    int k = 0;
    e->envp[k++] = e->cfg;
    e->envp[k++] = e->data;
    e->envp[k++] = e->run;
    e->envp[k++] = e->home;
    e->envp[k++] = e->path;
    e->envp[k++] = "LC_ALL=C";
    e->envp[k] = NULL;
}

/* Runs `pg_autoctl <args>` (NULL-terminated, at most 24) as postgres with
 * that environment, bounded like every command here; its exit status. */
static int autoctl(const dbkt_pgtopo *t, const char *const *args)
{
    struct autoctl_env e;
    autoctl_env_init(t, &e);
    char *argv[40];
    int k = 0;
    argv[k++] = "env";
    for (int i = 0; e.envp[i]; i++)
        argv[k++] = e.envp[i];
    argv[k++] = (char *)t->autoctl_bin;
    for (int i = 0; args[i] && k < 39; i++)
        argv[k++] = (char *)args[i];
    argv[k] = NULL;
    return run(t, argv);
}

/* Starts `pg_autoctl run --pgdata data` in the background as postgres, in
 * its own process group, output to log; its PID, or -1. */
static pid_t autoctl_spawn(dbkt_pgtopo *t, int slot, const char *data, const char *log)
{
    struct autoctl_env e;
    autoctl_env_init(t, &e);
    uid_t uid = 0;
    gid_t gid = 0;
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw)
            return -1;
        uid = pw->pw_uid;
        gid = pw->pw_gid;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setsid();
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
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
        if (geteuid() == 0 && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0))
            _exit(126);
        char *argv[] = {"pg_autoctl", "run", "--pgdata", (char *)data, NULL};
        execve(t->autoctl_bin, argv, e.envp);
        _exit(127);
    }
    t->autoctl[slot] = pid;
    write_pids(t);
    return pid;
}

static int monitor_query(const dbkt_pgtopo *t, const char *sql, char *buf, size_t n)
{
    char ci[200];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d user=postgres dbname=pg_auto_failover connect_timeout=5",
             t->monitor_port);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(c, sql);
    int rc = -1;
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) >= 1) {
        snprintf(buf, n, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
        rc = 0;
    } else if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (n)
            buf[0] = '\0';
        rc = 0;
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

int dbkt_pgtopo_monitor_query(dbkt_pgtopo *t, const char *sql, char *buf, size_t n)
{
    return monitor_query(t, sql, buf, n);
}

/* Polls the monitor (at most timeout_ms) until `sql` answers "t". */
static int monitor_wait(const dbkt_pgtopo *t, const char *sql, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        char got[16] = "";
        if (monitor_query(t, sql, got, sizeof got) == 0 && strcmp(got, "t") == 0)
            return 0;
        sleep_ms(100);
    }
    return -1;
}

static void find_autoctl(dbkt_pgtopo *t)
{
    const char *env = getenv("DBKIT_PG_AUTOCTL");
    if (env && *env) {
        snprintf(t->autoctl_bin, sizeof t->autoctl_bin, "%s", env);
        return;
    }
    const char *path = getenv("PATH");
    char dirs[2048];
    snprintf(dirs, sizeof dirs, "%s:%s:/usr/bin", t->bindir, path ? path : "");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(t->autoctl_bin, sizeof t->autoctl_bin, "%s/pg_autoctl", d);
        if (access(t->autoctl_bin, X_OK) == 0)
            return;
    }
    t->autoctl_bin[0] = '\0';
}

static void mkdir_pg(const char *path)
{
    mkdir(path, 0700);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (pw && chown(path, pw->pw_uid, pw->pw_gid) != 0)
            fprintf(stderr, "pgtopo: chown %s: %s\n", path, strerror(errno));
    }
}

static void af_fail(dbkt_pgtopo *t, const char *what)
{
    dump_logs(t);
    char log[400];
    snprintf(log, sizeof log, "%s/mon.log", t->dir);
    dbkt_dump_file(log);
    for (int i = 0; i < 2; i++) {
        snprintf(log, sizeof log, "%s/n%d.autoctl.log", t->dir, i);
        dbkt_dump_file(log);
    }
    dbkt_pgtopo_stop(t);
    fail_msg("pg_auto_failover: %s", what);
}

dbkt_pgtopo *dbkt_pgtopo_autofailover_start(void)
{
    dbkt_pgtopo *t = topo_new();
    find_autoctl(t);
    if (!t->autoctl_bin[0]) {
        dbkt_pgtopo_stop(t);
        dbkt_skip(1, "pg_autoctl not found (Debian: postgresql-15-auto-failover; or set "
                     "DBKIT_PG_AUTOCTL)");
    }
    char sub[400];
    snprintf(sub, sizeof sub, "%s/xdg", t->dir);
    mkdir_pg(sub);
    const char *parts[] = {"config", "data", "run"};
    for (int i = 0; i < 3; i++) {
        snprintf(sub, sizeof sub, "%s/xdg/%s", t->dir, parts[i]);
        mkdir_pg(sub);
    }

    /* The monitor. */
    char port[16], log[400];
    t->monitor_port = dbkt_free_port();
    snprintf(port, sizeof port, "%d", t->monitor_port);
    const char *mon[] = {
        "create",    "monitor",  "--pgdata",  t->monitor_data, "--pgport", port,       "--hostname",
        "127.0.0.1", "--listen", "127.0.0.1", "--auth",        "trust",    "--no-ssl", NULL};
    if (autoctl(t, mon) != 0)
        af_fail(t, "pg_autoctl create monitor failed");
    snprintf(log, sizeof log, "%s/mon.log", t->dir);
    if (autoctl_spawn(t, AUTOCTL_MONITOR, t->monitor_data, log) < 0)
        af_fail(t, "cannot start pg_autoctl run for the monitor");
    if (monitor_wait(t, "SELECT true", 60000) != 0)
        af_fail(t, "the monitor did not accept connections within 60 s");
    /* Health checks every second and a node unhealthy after 2 s without
     * a report (defaults 5 s and 20 s): a killed primary is noticed in
     * about 2 s instead of 20-30 s. */
    static const char *const tune[] = {
        "ALTER SYSTEM SET pgautofailover.health_check_period = 1000",
        "ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000",
        "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1",
        "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500",
        "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 2000",
        "SELECT pg_reload_conf()",
        NULL};
    char ignored[16];
    for (int i = 0; tune[i]; i++)
        if (monitor_query(t, tune[i], ignored, sizeof ignored) != 0)
            af_fail(t, "cannot tune the monitor's health checks");

    /* Two nodes: the first becomes the primary, the second its standby. */
    char monitor_uri[200];
    snprintf(monitor_uri, sizeof monitor_uri,
             "postgres://autoctl_node@127.0.0.1:%d/pg_auto_failover?sslmode=disable",
             t->monitor_port);
    for (int i = 0; i < 2; i++) {
        struct node *nd = &t->node[i];
        nd->port = dbkt_free_port();
        snprintf(port, sizeof port, "%d", nd->port);
        char name[8];
        snprintf(name, sizeof name, "n%d", i);
        const char *create[] = {"create",    "postgres",   "--pgdata",  nd->data,   "--pgport",
                                port,        "--hostname", "127.0.0.1", "--listen", "127.0.0.1",
                                "--auth",    "trust",      "--no-ssl",  "--name",   name,
                                "--monitor", monitor_uri,  NULL};
        if (autoctl(t, create) != 0)
            af_fail(t, "pg_autoctl create postgres failed");
        set_url(nd);
        t->nnodes = i + 1;
        snprintf(nd->srvlog, sizeof nd->srvlog, "%s/n%d.autoctl.log", t->dir, i);
        if (autoctl_spawn(t, i, nd->data, nd->srvlog) < 0)
            af_fail(t, "cannot start pg_autoctl run for a node");
        char sql[300];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) = 1 FROM pgautofailover.node WHERE nodename = 'n%d' AND "
                 "reportedstate = '%s' AND goalstate = reportedstate",
                 i, i == 0 ? "single" : "secondary");
        if (monitor_wait(t, sql, 90000) != 0)
            af_fail(t, "a node did not reach its state within 90 s");
    }
    if (monitor_wait(t,
                     "SELECT count(*) = 1 FROM pgautofailover.node WHERE nodename = 'n0' AND "
                     "reportedstate = 'primary' AND goalstate = 'primary'",
                     90000) != 0)
        af_fail(t, "node 0 did not become primary within 90 s");
    return t;
}

int dbkt_pgtopo_monitor_port(const dbkt_pgtopo *t)
{
    return t->monitor_port;
}

int dbkt_pgtopo_primary(dbkt_pgtopo *t)
{
    char got[16] = "";
    if (monitor_query(t,
                      "SELECT nodename FROM pgautofailover.node WHERE reportedstate IN "
                      "('primary', 'wait_primary', 'single') AND goalstate = reportedstate "
                      "ORDER BY nodeid LIMIT 1",
                      got, sizeof got) != 0 ||
        got[0] != 'n')
        return -1;
    return got[1] - '0';
}

int dbkt_pgtopo_perform_failover(dbkt_pgtopo *t)
{
    const char *args[] = {"perform", "failover", "--pgdata", t->monitor_data, NULL};
    if (autoctl(t, args) != 0) {
        dump_logs(t);
        return -1;
    }
    return 0;
}

int dbkt_pgtopo_kill_autoctl_node(dbkt_pgtopo *t, int node)
{
    pid_t pid = t->autoctl[node];
    if (pid <= 0)
        return -1;
    char pf[400];
    snprintf(pf, sizeof pf, "%s/postmaster.pid", t->node[node].data);
    long pm = 0;
    FILE *f = fopen(pf, "r");
    if (f) {
        if (fscanf(f, "%ld", &pm) != 1)
            pm = 0;
        fclose(f);
    }
    if (kill(-pid, SIGKILL) != 0)
        return -1;
    waitpid(pid, NULL, 0);
    t->autoctl[node] = 0;
    write_pids(t);
    /* The postmaster was in the group; wait (10 s) until it is gone. */
    for (int i = 0; pm > 1 && i < 500; i++) {
        if (kill((pid_t)pm, 0) != 0 && errno == ESRCH)
            return 0;
        sleep_ms(20);
    }
    return pm > 1 ? -1 : 0;
}

void dbkt_pgtopo_stop(dbkt_pgtopo *t)
{
    if (!t)
        return;
    stop_all(t, "fast");
    close(t->pipe_w);
    waitpid(t->watchdog, NULL, 0);
    free(t);
}
