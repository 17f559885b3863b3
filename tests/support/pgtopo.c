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
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
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
};

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
static void stop_all(dbkt_pgtopo *t, const char *mode)
{
    char pf[400];
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

dbkt_pgtopo *dbkt_pgtopo_start(int nreplicas)
{
    assert_true(nreplicas >= 0 && nreplicas < TOPO_MAX_NODES);
    char bindir[256], dir[256];
    dbkt_pg_prepare_dir("dbkt-topo", bindir, sizeof bindir, dir, sizeof dir);
    dbkt_pgtopo *t = calloc(1, sizeof *t);
    assert_non_null(t);
    snprintf(t->bindir, sizeof t->bindir, "%s", bindir);
    snprintf(t->dir, sizeof t->dir, "%s", dir);
    char initdb[300];
    bin_path(t, "initdb", initdb, sizeof initdb);
    snprintf(t->cmdlog, sizeof t->cmdlog, "%s/cmd.log", t->dir);
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

void dbkt_pgtopo_stop(dbkt_pgtopo *t)
{
    if (!t)
        return;
    stop_all(t, "fast");
    close(t->pipe_w);
    waitpid(t->watchdog, NULL, 0);
    free(t);
}
