/*
 * The PostgreSQL driver against a real server (DBKIT_TEST_PG_URL): opening
 * and its failure modes (refused port, a listener that never answers, an
 * unknown libpq keyword, several hosts with a dead first one), session
 * settings, every value type byte for byte, RETURNING and affected counts,
 * constraint and SQLSTATE mapping, the prepared-statement cache (reuse,
 * bound, switched off, statements dropped behind its back, DDL changing a
 * cached result), a terminated backend, a server that stops answering
 * mid-session (through an in-process TCP relay that can freeze), reset and
 * ping. Each test works in its own database.
 */
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pgserver.h"
#include "testutil.h"
#include "core/internal.h" /* dbk__now_ns */
#include "db/db_int.h"
#include "driver/driver.h" /* reset / txstate are internal */

/* ---- helpers ---- */

static dbk_rc try_open_set(const char *url, const char *const *kv, dbk_conn **c, dbk_error *err)
{
    dbk_config *cfg = NULL;
    *c = NULL;
    dbk_rc rc = dbk_config_from(url, NULL, NULL, &cfg, err);
    for (; rc == DBK_OK && kv && kv[0]; kv += 2)
        rc = dbk_config_set(cfg, kv[0], kv[1], err);
    if (rc == DBK_OK)
        rc = dbk_conn_open(cfg, c, err);
    dbk_config_free(cfg);
    return rc;
}

/* Opens url with settings applied from code: kv = {key, value, ..., NULL}. */
static dbk_conn *open_set(const char *url, const char *const *kv)
{
    dbk_error err;
    dbk_conn *c = NULL;
    DBKT_OK(try_open_set(url, kv, &c, &err), &err);
    return c;
}


static dbk__txstate txstate(dbk_conn *c)
{
    return c->drv->txstate(c->impl);
}

static dbk_rc reset(dbk_conn *c, dbk_error *err)
{
    return c->drv->reset(c->impl, err);
}

static double secs_since(int64_t t0)
{
    return (double)(dbk__now_ns() - t0) / 1e9;
}

/* Host and port of the test server, from its URL. */
static void server_addr(char *host, size_t hn, int *port)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(dbkt_pg_admin_url(), &errmsg);
    assert_non_null(opts);
    dbk__strlcpy(host, "127.0.0.1", hn);
    *port = 5432;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0 && o->val && *o->val)
            dbk__strlcpy(host, o->val, hn);
        if (strcmp(o->keyword, "port") == 0 && o->val && *o->val)
            *port = atoi(o->val);
    }
    PQconninfoFree(opts);
}

/* A URL for database dbkt_<name> at host:port (no password: trust). */
static char *url_at(const char *host, int port, const char *name, const char *query)
{
    char *u = malloc(512);
    assert_non_null(u);
    snprintf(u, 512, "postgres://postgres@%s:%d/dbkt_%s%s%s", host, port, name,
             query ? "?" : "", query ? query : "");
    return u;
}

/* A loopback TCP listener that accepts nothing: the handshake completes
 * (backlog), then silence. */
static int silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* A port nothing listens on (bound, then released). */
static int unused_port(void)
{
    int p;
    int fd = silent_listener(&p);
    close(fd);
    return p;
}

/* ---- a TCP relay that can stop relaying ---- */

#define RELAY_MAX 4
struct relay {
    int lfd, port;
    int up_port;
    char up_host[64];
    volatile int frozen;
    volatile int stop;
    int cfd[RELAY_MAX], ufd[RELAY_MAX];
    int n;
    pthread_t th;
};

static int connect_to(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (fd < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    char buf[65536];
    while (!r->stop) {
        struct pollfd p[1 + 2 * RELAY_MAX];
        int np = 0;
        if (!r->frozen)
            p[np++] = (struct pollfd){.fd = r->lfd, .events = POLLIN};
        for (int i = 0; i < r->n && !r->frozen; i++) {
            p[np++] = (struct pollfd){.fd = r->cfd[i], .events = POLLIN};
            p[np++] = (struct pollfd){.fd = r->ufd[i], .events = POLLIN};
        }
        if (poll(p, (nfds_t)np, 20) <= 0 || r->frozen)
            continue;
        for (int k = 0; k < np; k++) {
            if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (p[k].fd == r->lfd) {
                int c = accept(r->lfd, NULL, NULL);
                if (c < 0)
                    continue;
                int u = connect_to(r->up_host, r->up_port);
                if (u < 0 || r->n == RELAY_MAX) {
                    close(c);
                    if (u >= 0)
                        close(u);
                    continue;
                }
                r->cfd[r->n] = c;
                r->ufd[r->n] = u;
                r->n++;
                continue;
            }
            for (int i = 0; i < r->n; i++) {
                int from = -1, to = -1;
                if (p[k].fd == r->cfd[i])
                    from = r->cfd[i], to = r->ufd[i];
                else if (p[k].fd == r->ufd[i])
                    from = r->ufd[i], to = r->cfd[i];
                if (from < 0)
                    continue;
                ssize_t got = recv(from, buf, sizeof buf, 0);
                if (got <= 0) {
                    shutdown(to, SHUT_WR);
                    continue;
                }
                for (ssize_t off = 0; off < got;) {
                    ssize_t w = send(to, buf + off, (size_t)(got - off), MSG_NOSIGNAL);
                    if (w <= 0)
                        break;
                    off += w;
                }
            }
        }
    }
    return NULL;
}

static struct relay *relay_start(void)
{
    struct relay *r = calloc(1, sizeof *r);
    assert_non_null(r);
    server_addr(r->up_host, sizeof r->up_host, &r->up_port);
    r->lfd = silent_listener(&r->port);
    assert_int_equal(pthread_create(&r->th, NULL, relay_main, r), 0);
    return r;
}

static void relay_stop(struct relay *r)
{
    r->stop = 1;
    pthread_join(r->th, NULL);
    for (int i = 0; i < r->n; i++) {
        close(r->cfd[i]);
        close(r->ufd[i]);
    }
    close(r->lfd);
    free(r);
}

/* ---- opening ---- */

static void postgres_connect_and_server_version(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_connect");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbk_db_engine(db), DBK_ENGINE_POSTGRES);
    const char *v = dbk_conn_server_version(c);
    assert_non_null(v);
    int64_t num = dbkt_int(db, "SELECT current_setting('server_version_num')::int");
    char want[32];
    snprintf(want, sizeof want, "%d.%d", (int)(num / 10000), (int)(num % 10000));
    assert_string_equal(v, want);
    dbk_error err;
    DBKT_OK(dbk_conn_ping(c, 1000, &err), &err);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    dbk_conn_close(c);
    free(url);
}

static void postgres_session_settings_from_startup(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_settings");
    const char *kv[] = {"statement_timeout", "12345", "lock_timeout", "2500", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    char buf[64];
    dbkt_text(db, "SHOW TimeZone", buf, sizeof buf);
    assert_string_equal(buf, "UTC");
    dbkt_text(db, "SHOW DateStyle", buf, sizeof buf);
    assert_true(strncmp(buf, "ISO", 3) == 0);
    dbkt_text(db, "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'", buf,
           sizeof buf);
    assert_string_equal(buf, "12345");
    dbkt_text(db, "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'", buf, sizeof buf);
    assert_string_equal(buf, "2500");
    dbkt_text(db, "SHOW client_encoding", buf, sizeof buf);
    assert_string_equal(buf, "UTF8");
    dbk_conn_close(c);
    free(url);
}

static void postgres_refused_port_is_unavailable(void **state)
{
    (void)state;
    int port = unused_port();
    char *url = url_at("127.0.0.1", port, "nowhere", "password=zz-Secret-99");
    dbk_conn *c;
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_EUNAVAILABLE, try_open_set(url, NULL, &c, &err));
    assert_null(c);
    assert_true(secs_since(t0) < 3.0);
    assert_true(err.message[0] != '\0');
    assert_true(err.hint[0] != '\0');
    assert_null(strstr(err.message, "zz-Secret-99"));
    assert_null(strstr(err.hint, "zz-Secret-99"));
    free(url);
}

static void postgres_password_never_in_messages(void **state)
{
    (void)state;
    int port = unused_port();
    char url[256];
    snprintf(url, sizeof url, "postgres://someone:hunter2-Pa55@127.0.0.1:%d/db", port);
    dbk_conn *c;
    dbk_error err;
    DBKT_RC(DBK_EUNAVAILABLE, try_open_set(url, NULL, &c, &err));
    assert_null(strstr(err.message, "hunter2-Pa55"));
    assert_null(strstr(err.hint, "hunter2-Pa55"));
    /* Also against the real server (trust auth ignores the password). */
    char host[64];
    int sport;
    server_addr(host, sizeof host, &sport);
    snprintf(url, sizeof url, "postgres://no_such_role_dbkt:hunter2-Pa55@%s:%d/postgres", host,
             sport);
    dbk_rc rc = try_open_set(url, NULL, &c, &err);
    assert_int_not_equal(rc, DBK_OK);
    assert_int_equal(rc, DBK_EAUTH); /* role does not exist: authorization class */
    assert_null(strstr(err.message, "hunter2-Pa55"));
}

static void postgres_silent_listener_times_out(void **state)
{
    (void)state;
    int port;
    int lfd = silent_listener(&port);
    char *url = url_at("127.0.0.1", port, "silent", "connect_timeout=1");
    dbk_conn *c;
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    dbk_rc rc = try_open_set(url, NULL, &c, &err);
    double took = secs_since(t0);
    if (rc != DBK_EUNAVAILABLE && rc != DBK_ETIMEOUT)
        fail_msg("expected DBK_EUNAVAILABLE or DBK_ETIMEOUT, got %s: %s", dbk_rc_name(rc),
                 err.message);
    assert_true(took >= 0.9);
    assert_true(took < 3.0);
    assert_non_null(strstr(err.message, "1000 ms"));
    assert_true(err.hint[0] != '\0');
    close(lfd);
    free(url);
}

static void postgres_multi_host_skips_dead_host(void **state)
{
    (void)state;
    char *plain = dbkt_pg_fresh_db("pg_multihost");
    free(plain);
    char host[64];
    int sport, dead;
    server_addr(host, sizeof host, &sport);
    int lfd = silent_listener(&dead);
    char url[512];
    snprintf(url, sizeof url,
             "postgres://postgres@127.0.0.1:%d,%s:%d/dbkt_pg_multihost?connect_timeout=1&"
             "target_session_attrs=read-write",
             dead, host, sport);
    dbk_conn *c;
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    DBKT_OK(try_open_set(url, NULL, &c, &err), &err);
    assert_true(secs_since(t0) < 3.0);
    assert_int_equal(dbkt_int(dbk_conn_db(c), "SELECT 7"), 7);
    dbk_conn_close(c);

    /* Every host dead: one message naming each. */
    int dead2 = unused_port();
    snprintf(url, sizeof url, "postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/x?connect_timeout=1",
             dead, dead2);
    DBKT_RC(DBK_EUNAVAILABLE, try_open_set(url, NULL, &c, &err));
    char p1[16], p2[16];
    snprintf(p1, sizeof p1, ":%d:", dead);
    snprintf(p2, sizeof p2, ":%d:", dead2);
    assert_non_null(strstr(err.message, p1));
    assert_non_null(strstr(err.message, p2));
    close(lfd);
}

static void postgres_unknown_parameter_is_config_error(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_unknown_param");
    char u[600];
    snprintf(u, sizeof u, "%s?no_such_libpq_key=1", url);
    dbk_conn *c;
    dbk_error err;
    DBKT_RC(DBK_ECONFIG, try_open_set(u, NULL, &c, &err));
    assert_null(c);
    assert_non_null(strstr(err.message, "no_such_libpq_key"));
    /* A real libpq keyword passes through. */
    snprintf(u, sizeof u, "%s?keepalives_idle=20", url);
    DBKT_OK(try_open_set(u, NULL, &c, &err), &err);
    char buf[32];
    dbkt_text(dbk_conn_db(c), "SELECT 'ok'", buf, sizeof buf);
    assert_string_equal(buf, "ok");
    dbk_conn_close(c);
    /* A bad value for a known keyword is a configuration error too. */
    snprintf(u, sizeof u, "%s?sslmode=sometimes", url);
    dbk_rc rc = try_open_set(u, NULL, &c, &err);
    assert_int_equal(rc, DBK_ECONFIG);
    free(url);
}

static void postgres_user_options_are_kept(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_user_options");
    char u[700];
    snprintf(u, sizeof u, "%s?options=-c%%20TimeZone%%3DAsia/Tokyo%%20-c%%20work_mem%%3D3MB", url);
    dbk_conn *c = open_set(u, NULL);
    dbk_db *db = dbk_conn_db(c);
    char buf[64];
    dbkt_text(db, "SHOW TimeZone", buf, sizeof buf);
    assert_string_equal(buf, "Asia/Tokyo");
    dbkt_text(db, "SHOW work_mem", buf, sizeof buf);
    assert_string_equal(buf, "3MB");
    dbkt_text(db, "SHOW DateStyle", buf, sizeof buf);
    assert_true(strncmp(buf, "ISO", 3) == 0);
    /* timestamptz still reads back exactly: the text carries its offset. */
    dbk_value p = dbk_timestamp(1700000000654321LL);
    dbk_error err;
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT $1::timestamptz", &p, 1, &r, &err), &err);
    int64_t ts;
    DBKT_OK(dbk_result_get_timestamp(r, 0, 0, &ts, &err), &err);
    assert_true(ts == 1700000000654321LL);
    dbk_result_free(r);
    dbk_conn_close(c);
    free(url);
}

static void postgres_application_name_visible(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_appname");
    const char *kv[] = {"application_name", "dbkt-orders-api", NULL};
    dbk_conn *c = open_set(url, kv);
    char buf[64];
    dbkt_text(dbk_conn_db(c),
           "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()", buf,
           sizeof buf);
    assert_string_equal(buf, "dbkt-orders-api");
    dbk_conn_close(c);
    free(url);
}

/* A private server (its pg_hba.conf is ours to change) with password
 * authentication for one role: a wrong password is DBK_EAUTH and the
 * password appears in no message. */
static void postgres_wrong_password_is_auth_error(void **state)
{
    (void)state;
    dbkt_pgserver *srv = dbkt_pgserver_start();
    int port = dbkt_pgserver_port(srv);
    PGconn *adm = PQconnectdb(dbkt_pgserver_url(srv));
    assert_int_equal(PQstatus(adm), CONNECTION_OK);
    PGresult *r = PQexec(adm, "CREATE ROLE dbkt_app LOGIN PASSWORD 'Right-Pa55word'");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexec(adm, "SHOW hba_file");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    FILE *f = fopen(PQgetvalue(r, 0, 0), "w");
    PQclear(r);
    assert_non_null(f);
    fputs("local all all trust\n"
          "host all postgres 127.0.0.1/32 trust\n"
          "host all all 127.0.0.1/32 scram-sha-256\n",
          f);
    fclose(f);
    r = PQexec(adm, "SELECT pg_reload_conf()");
    PQclear(r);
    PQfinish(adm);

    char url[256];
    snprintf(url, sizeof url, "postgres://dbkt_app:Wrong-Pa55word@127.0.0.1:%d/postgres", port);
    dbk_conn *c = NULL;
    dbk_error err;
    dbk_rc rc = DBK_OK;
    /* The reload is asynchronous: wait (bounded) until it bites. */
    for (int i = 0; i < 50; i++) {
        rc = try_open_set(url, NULL, &c, &err);
        if (rc != DBK_OK)
            break;
        dbk_conn_close(c);
        c = NULL;
        usleep(100 * 1000);
    }
    DBKT_RC(DBK_EAUTH, rc);
    assert_non_null(strstr(err.message, "password authentication failed"));
    assert_null(strstr(err.message, "Wrong-Pa55word"));
    assert_null(strstr(err.hint, "Wrong-Pa55word"));
    assert_non_null(strstr(err.hint, "PASSWORD"));

    snprintf(url, sizeof url, "postgres://dbkt_app:Right-Pa55word@127.0.0.1:%d/postgres", port);
    DBKT_OK(try_open_set(url, NULL, &c, &err), &err);
    char buf[64];
    dbkt_text(dbk_conn_db(c), "SELECT current_user", buf, sizeof buf);
    assert_string_equal(buf, "dbkt_app");
    dbk_conn_close(c);
    dbkt_pgserver_stop(srv);
}

static void postgres_sslmode_require_without_tls_is_tls_error(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_tls");
    dbk_conn *c = dbkt_open(url);
    char ssl[8];
    dbkt_text(dbk_conn_db(c), "SHOW ssl", ssl, sizeof ssl);
    dbk_conn_close(c);
    if (strcmp(ssl, "on") == 0) {
        free(url);
        dbkt_skip(0, "the test server has TLS on; this test needs a server without it");
    }
    char u[600];
    snprintf(u, sizeof u, "%s?sslmode=require", url);
    dbk_error err;
    DBKT_RC(DBK_ETLS, try_open_set(u, NULL, &c, &err));
    assert_non_null(strstr(err.message, "SSL"));
    assert_non_null(strstr(err.hint, "sslmode"));
    free(url);
}

/* ---- through PgBouncer ---- */

/* Starts pgbouncer (transaction pooling, trust auth) in front of the test
 * server on a free port, as user postgres when we are root. The child dies
 * with this process (PR_SET_PDEATHSIG). Skips when pgbouncer is missing. */
static pid_t pgbouncer_start(int *port)
{
    const char *bin = access("/usr/sbin/pgbouncer", X_OK) == 0 ? "/usr/sbin/pgbouncer"
                      : access("/usr/bin/pgbouncer", X_OK) == 0 ? "/usr/bin/pgbouncer"
                                                                 : NULL;
    if (!bin)
        dbkt_skip(0, "pgbouncer is not installed (apt-get install pgbouncer)");
    char host[64];
    int sport;
    server_addr(host, sizeof host, &sport);
    *port = unused_port();
    char *dir = dbkt_tmpdir();
    char sub[600], ini[700], users[700];
    snprintf(sub, sizeof sub, "%s/pgbouncer", dir);
    free(dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    snprintf(ini, sizeof ini, "%s/pgbouncer.ini", sub);
    snprintf(users, sizeof users, "%s/users.txt", sub);
    FILE *f = fopen(users, "w");
    assert_non_null(f);
    fputs("\"postgres\" \"\"\n", f);
    fclose(f);
    f = fopen(ini, "w");
    assert_non_null(f);
    fprintf(f,
            "[databases]\n* = host=%s port=%d\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
            "listen_port = %d\nauth_type = trust\nauth_file = %s\npool_mode = transaction\n"
            "max_client_conn = 20\ndefault_pool_size = 2\nunix_socket_dir =\n"
            "logfile = %s/pgbouncer.log\npidfile = %s/pgbouncer.pid\n",
            host, sport, *port, users, sub, sub);
    fclose(f);
    struct passwd *pw = geteuid() == 0 ? getpwnam("postgres") : NULL;
    if (geteuid() == 0 && !pw)
        dbkt_skip(0, "running as root without a postgres user to run pgbouncer as");
    if (pw) {
        assert_int_equal(chown(sub, pw->pw_uid, pw->pw_gid), 0);
        assert_int_equal(chown(ini, pw->pw_uid, pw->pw_gid), 0);
        assert_int_equal(chown(users, pw->pw_uid, pw->pw_gid), 0);
        char *parent = dbkt_tmpdir();
        chmod(parent, 0755);
        free(parent);
    }
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (pw && (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0))
            _exit(127);
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* after the uid change, which clears it */
        execl(bin, bin, "-q", ini, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) { /* at most 5 s */
        int fd = connect_to("127.0.0.1", *port);
        if (fd >= 0) {
            close(fd);
            return pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            fail_msg("pgbouncer exited at start (see %s/pgbouncer.log)", sub);
        usleep(50 * 1000);
    }
    kill(pid, SIGTERM);
    fail_msg("pgbouncer did not listen on port %d within 5 s", *port);
    return -1;
}

static void pgbouncer_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) { /* at most 5 s, then SIGKILL */
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* PgBouncer in transaction mode refuses (< 1.20) or parses `options`; the
 * driver falls back to SET, and with stmt_cache_size=0 sends only unnamed
 * statements. */
static void postgres_through_pgbouncer_transaction_mode(void **state)
{
    (void)state;
    char *plain = dbkt_pg_fresh_db("pg_bouncer");
    free(plain);
    int port;
    pid_t pid = pgbouncer_start(&port);
    char *url = url_at("127.0.0.1", port, "pg_bouncer", "sslmode=disable");
    const char *kv[] = {"stmt_cache_size", "0", "statement_timeout", "7000", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    char buf[64];
    dbkt_text(db, "SHOW TimeZone", buf, sizeof buf);
    assert_string_equal(buf, "UTC");
    dbkt_text(db, "SHOW DateStyle", buf, sizeof buf);
    assert_true(strncmp(buf, "ISO", 3) == 0);
    dbkt_exec(db, "CREATE TABLE t (id bigserial PRIMARY KEY, ts timestamptz, b bytea)");
    dbk_error err;
    for (int i = 0; i < 200; i++) {
        dbk_value p[2] = {dbk_timestamp(1700000000000001LL + i), dbk_blob("\0\xff", 2)};
        DBKT_OK(dbk_db_exec(db, "INSERT INTO t (ts, b) VALUES ($1, $2)", p, 2, NULL, &err), &err);
    }
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 200);
    int64_t ts;
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT max(ts) FROM t", NULL, 0, &r, &err), &err);
    DBKT_OK(dbk_result_get_timestamp(r, 0, 0, &ts, &err), &err);
    assert_true(ts == 1700000000000200LL);
    dbk_result_free(r);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements"), 0);
    DBKT_OK(reset(c, &err), &err);
    dbkt_text(db, "SHOW TimeZone", buf, sizeof buf);
    assert_string_equal(buf, "UTC");
    DBKT_OK(dbk_conn_ping(c, 1000, &err), &err);
    dbk_conn_close(c);
    pgbouncer_stop(pid);
    free(url);
}

/* ---- timeouts ---- */

static void postgres_statement_timeout(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_stmt_timeout");
    const char *kv[] = {"statement_timeout", "200", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_ETIMEOUT, dbk_db_exec(db, "SELECT pg_sleep(5)", NULL, 0, NULL, &err));
    assert_true(secs_since(t0) < 2.0);
    assert_string_equal(err.sqlstate, "57014");
    assert_non_null(strstr(err.hint, "explain"));
    /* The server cancelled it: the connection is fine. */
    assert_int_equal(dbkt_int(db, "SELECT 1"), 1);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    dbk_conn_close(c);
    free(url);
}

static void postgres_lock_timeout_is_busy(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_lock_timeout");
    const char *kv[] = {"lock_timeout", "100", NULL};
    dbk_conn *a = open_set(url, kv);
    dbk_conn *b = open_set(url, kv);
    dbkt_exec(dbk_conn_db(a), "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    dbkt_exec(dbk_conn_db(a), "BEGIN; UPDATE t SET id = id WHERE id = 1");
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_EBUSY, dbk_db_exec(dbk_conn_db(b), "UPDATE t SET id = id WHERE id = 1", NULL, 0,
                                   NULL, &err));
    assert_true(secs_since(t0) < 2.0);
    assert_string_equal(err.sqlstate, "55P03");
    dbkt_exec(dbk_conn_db(a), "ROLLBACK");
    dbk_conn_close(a);
    dbk_conn_close(b);
    free(url);
}

/* A server that stops answering mid-session: the client deadline
 * (statement_timeout + grace) fires, the connection is marked broken. */
static void postgres_frozen_server_hits_client_deadline(void **state)
{
    (void)state;
    char *plain = dbkt_pg_fresh_db("pg_frozen");
    free(plain);
    struct relay *r = relay_start();
    char *url = url_at("127.0.0.1", r->port, "pg_frozen", "sslmode=disable");
    const char *kv[] = {"statement_timeout", "300", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(dbkt_int(db, "SELECT 41 + 1"), 42);
    r->frozen = 1;
    dbk_error err;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_ETIMEOUT, dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err));
    double took = secs_since(t0);
    assert_true(took >= 2.0);  /* 300 ms + 2 s grace */
    assert_true(took < 4.5);   /* + at most 1 s waiting for the cancel */
    assert_true(err.hint[0] != '\0');
    assert_int_equal(txstate(c), DBK__TX_BROKEN);
    DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err));
    dbk_conn_close(c);
    relay_stop(r);
    free(url);
}

static void postgres_ping_has_its_own_deadline(void **state)
{
    (void)state;
    char *plain = dbkt_pg_fresh_db("pg_ping_deadline");
    free(plain);
    struct relay *r = relay_start();
    char *url = url_at("127.0.0.1", r->port, "pg_ping_deadline", "sslmode=disable");
    dbk_conn *c = open_set(url, NULL);
    dbk_error err;
    DBKT_OK(dbk_conn_ping(c, 500, &err), &err);
    r->frozen = 1;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_ETIMEOUT, dbk_conn_ping(c, 300, &err));
    double took = secs_since(t0);
    assert_true(took >= 0.25 && took < 1.5);
    assert_int_equal(txstate(c), DBK__TX_BROKEN);
    dbk_conn_close(c);
    relay_stop(r);
    free(url);
}

/* ---- values ---- */

static void roundtrip_text(dbk_db *db, const char *s, size_t len)
{
    dbk_error err;
    dbk_value p = dbk_textn(s, len);
    DBKT_OK(dbk_db_exec(db, "INSERT INTO v (t) VALUES ($1)", &p, 1, NULL, &err), &err);
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT t, $1 FROM v ORDER BY id DESC LIMIT 1", &p, 1, &r, &err),
            &err);
    for (int col = 0; col < 2; col++) {
        const char *got;
        size_t glen;
        DBKT_OK(dbk_result_get_text(r, 0, col, &got, &glen, &err), &err);
        assert_int_equal(glen, len);
        assert_memory_equal(got, s, len);
        assert_int_equal(got[len], '\0');
    }
    dbk_result_free(r);
}

static void postgres_values_round_trip_byte_for_byte(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_values");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbkt_exec(db, "CREATE TABLE v (id bigserial PRIMARY KEY, t text, b bytea, i bigint, "
              "d double precision, f boolean, ts timestamptz, tsl timestamp, j jsonb)");

    static const char *texts[] = {
        "'); DROP TABLE v; --",
        "O'Reilly \"quoted\" `back`",
        "back\\slash \\x00 \\\\ end\\",
        "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
        "",
        "$1 $2 ? :name %s %n",
        "line1\nline2\r\n\ttab",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        roundtrip_text(db, texts[i], strlen(texts[i]));
    /* 1 MiB of text, not NUL-terminated at len in the caller's buffer. */
    size_t big = 1 << 20;
    char *s = malloc(big + 16);
    assert_non_null(s);
    for (size_t i = 0; i < big + 16; i++)
        s[i] = (char)('a' + (i * 7) % 26);
    roundtrip_text(db, s, big);
    free(s);

    /* Blobs: every byte value, NULs, 0xff, empty, 1 MiB. */
    unsigned char blob[512];
    for (int i = 0; i < 512; i++)
        blob[i] = (unsigned char)(255 - i % 256);
    size_t blens[] = {sizeof blob, 1, 0};
    for (size_t k = 0; k < 3; k++) {
        dbk_value p = dbk_blob(blob, blens[k]);
        dbk_result *r;
        DBKT_OK(dbk_db_query(db, "INSERT INTO v (b) VALUES ($1) RETURNING b", &p, 1, &r, &err),
                &err);
        const void *got;
        size_t glen;
        DBKT_OK(dbk_result_get_blob(r, 0, 0, &got, &glen, &err), &err);
        assert_int_equal(dbk_result_type(r, 0, 0), DBK_TYPE_BLOB);
        assert_int_equal(glen, blens[k]);
        if (glen)
            assert_memory_equal(got, blob, glen);
        dbk_result_free(r);
    }
    unsigned char *bb = malloc(big);
    assert_non_null(bb);
    for (size_t i = 0; i < big; i++)
        bb[i] = (unsigned char)(i * 131 + (i >> 8));
    dbk_value pb = dbk_blob(bb, big);
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT $1::bytea", &pb, 1, &r, &err), &err);
    const void *gb;
    size_t gbl;
    DBKT_OK(dbk_result_get_blob(r, 0, 0, &gb, &gbl, &err), &err);
    assert_int_equal(gbl, big);
    assert_memory_equal(gb, bb, big);
    dbk_result_free(r);
    free(bb);

    /* Integers at the edges, and either side of 18 digits (the driver reads
     * up to 18 digits itself and longer ones with strtoll). */
    int64_t ints[] = {INT64_MIN, INT64_MAX, 0, -1, 1, 4294967296LL,
                      999999999999999999LL, -999999999999999999LL, 1000000000000000000LL,
                      -1000000000000000000LL, 123456789012345678LL, INT64_MIN + 1};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        dbk_value p = dbk_int64(ints[k]);
        int64_t got;
        DBKT_OK(dbk_db_query_int64(db, "INSERT INTO v (i) VALUES ($1) RETURNING i", &p, 1, &got,
                                   &err),
                &err);
        assert_true(got == ints[k]);
    }

    /* Doubles, exactly. */
    double ds[] = {0.1, -0.0, 1.0 / 3.0, 1e308, 5e-324, -2.5e-300, 123456789.125,
                   INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        dbk_value p = dbk_double(ds[k]);
        DBKT_OK(dbk_db_query(db, "INSERT INTO v (d) VALUES ($1) RETURNING d", &p, 1, &r, &err),
                &err);
        double got;
        DBKT_OK(dbk_result_get_double(r, 0, 0, &got, &err), &err);
        assert_memory_equal(&got, &ds[k], sizeof got);
        dbk_result_free(r);
    }
    dbk_value pn = dbk_double(NAN);
    DBKT_OK(dbk_db_query(db, "SELECT $1::float8", &pn, 1, &r, &err), &err);
    double gn;
    DBKT_OK(dbk_result_get_double(r, 0, 0, &gn, &err), &err);
    assert_true(isnan(gn));
    dbk_result_free(r);

    /* Booleans. */
    for (int b = 0; b < 2; b++) {
        dbk_value p = dbk_bool(b);
        DBKT_OK(dbk_db_query(db, "INSERT INTO v (f) VALUES ($1) RETURNING f", &p, 1, &r, &err),
                &err);
        bool got;
        DBKT_OK(dbk_result_get_bool(r, 0, 0, &got, &err), &err);
        assert_int_equal(got, b);
        dbk_result_free(r);
    }

    /* Timestamps: microseconds, before 1970, the first and last years. */
    int64_t tss[] = {0, 1700000000123456LL, -1, -1234567890123457LL, -62135596800000000LL,
                     253402300799999999LL, 951782400000001LL /* 2000-02-29 */};
    for (size_t k = 0; k < sizeof tss / sizeof tss[0]; k++) {
        dbk_value p[2] = {dbk_timestamp(tss[k]), dbk_timestamp(tss[k])};
        DBKT_OK(dbk_db_query(db, "INSERT INTO v (ts, tsl) VALUES ($1, $2) RETURNING ts, tsl", p,
                             2, &r, &err),
                &err);
        for (int col = 0; col < 2; col++) {
            int64_t got;
            assert_int_equal(dbk_result_type(r, 0, col), DBK_TYPE_TIMESTAMP);
            DBKT_OK(dbk_result_get_timestamp(r, 0, col, &got, &err), &err);
            assert_true(got == tss[k]);
        }
        dbk_result_free(r);
    }
    dbk_value pbad = dbk_timestamp(253402300800000000LL); /* year 10000 */
    DBKT_RC(DBK_EINVALID, dbk_db_exec(db, "INSERT INTO v (ts) VALUES ($1)", &pbad, 1, NULL, &err));

    /* JSON, and NULL of every kind. */
    dbk_value pj = dbk_json("{\"k\": [1, \"two\", null], \"s\": \"it's \\\"x\\\"\"}");
    DBKT_OK(dbk_db_query(db, "INSERT INTO v (j) VALUES ($1) RETURNING j, j->>'s'", &pj, 1, &r,
                         &err),
            &err);
    assert_int_equal(dbk_result_type(r, 0, 0), DBK_TYPE_JSON);
    const char *js;
    DBKT_OK(dbk_result_get_text(r, 0, 1, &js, NULL, &err), &err);
    assert_string_equal(js, "it's \"x\"");
    dbk_result_free(r);
    dbk_value nulls[8] = {dbk_null(), dbk_null(), dbk_null(), dbk_null(),
                          dbk_null(), dbk_null(), dbk_null(), dbk_null()};
    DBKT_OK(dbk_db_query(db, "INSERT INTO v (t, b, i, d, f, ts, tsl, j) VALUES "
                             "($1, $2, $3, $4, $5, $6, $7, $8) RETURNING t, b, i, d, f, ts, tsl, j",
                         nulls, 8, &r, &err),
            &err);
    for (int col = 0; col < 8; col++)
        assert_true(dbk_result_is_null(r, 0, col));
    dbk_result_free(r);
    dbk_conn_close(c);
    free(url);
}

static void postgres_server_types_map_to_cells(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_types");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r;
    dbkt_exec(db, "CREATE DOMAIN posint AS bigint CHECK (VALUE > 0)");
    DBKT_OK(dbk_db_query(db, "SELECT 5::posint AS dom", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_type(r, 0, 0), DBK_TYPE_INT64); /* domains: their base type */
    dbk_result_free(r);
    DBKT_OK(dbk_db_query(db,
                         "SELECT 1::int2 AS a, 2::int4 AS b, 3::int8 AS c, 4::oid AS d, "
                         "1.5::float4 AS e, 'Infinity'::float8 AS f, 12.50::numeric AS g, "
                         "true AS h, '\\x00ff'::bytea AS i, "
                         "'2024-01-02 03:04:05.123456'::timestamp AS j, "
                         "'2024-01-02 03:04:05.123456+02'::timestamptz AS k, "
                         "'infinity'::timestamptz AS l, '{\"a\": 1}'::jsonb AS m, "
                         "'x'::varchar AS n, NULL::int AS o, '2024-01-02'::date AS p, "
                         "'{1,2}'::int[] AS q, '-infinity'::timestamp AS s",
                         NULL, 0, &r, &err),
            &err);
    static const dbk_type want[] = {
        DBK_TYPE_INT64,     DBK_TYPE_INT64,     DBK_TYPE_INT64, DBK_TYPE_INT64, DBK_TYPE_DOUBLE,
        DBK_TYPE_DOUBLE,    DBK_TYPE_TEXT,      DBK_TYPE_BOOL,  DBK_TYPE_BLOB,  DBK_TYPE_TIMESTAMP,
        DBK_TYPE_TIMESTAMP, DBK_TYPE_TEXT,      DBK_TYPE_JSON,  DBK_TYPE_TEXT,  DBK_TYPE_NULL,
        DBK_TYPE_TEXT,      DBK_TYPE_TEXT,      DBK_TYPE_TEXT};
    assert_int_equal(dbk_result_ncols(r), (int)(sizeof want / sizeof want[0]));
    for (int i = 0; i < dbk_result_ncols(r); i++)
        if (dbk_result_type(r, 0, i) != want[i])
            fail_msg("column %s: type %s, expected %s", dbk_result_colname(r, i),
                     dbk_type_name(dbk_result_type(r, 0, i)), dbk_type_name(want[i]));
    const char *t;
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "g", &t, NULL, &err), &err);
    assert_string_equal(t, "12.50");
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "l", &t, NULL, &err), &err);
    assert_string_equal(t, "infinity");
    int64_t ts;
    DBKT_RC(DBK_ETYPE, dbk_result_get_timestamp_by_name(r, 0, "l", &ts, &err));
    DBKT_OK(dbk_result_get_timestamp_by_name(r, 0, "k", &ts, &err), &err);
    assert_true(ts == 1704157445123456LL); /* 01:04:05.123456Z */
    DBKT_OK(dbk_result_get_timestamp_by_name(r, 0, "j", &ts, &err), &err);
    assert_true(ts == 1704164645123456LL);
    double d;
    DBKT_OK(dbk_result_get_double_by_name(r, 0, "f", &d, &err), &err);
    assert_true(isinf(d) && d > 0);
    const void *b;
    size_t bl;
    DBKT_OK(dbk_result_get_blob_by_name(r, 0, "i", &b, &bl, &err), &err);
    assert_int_equal(bl, 2);
    assert_memory_equal(b, "\x00\xff", 2);
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "p", &t, NULL, &err), &err);
    assert_string_equal(t, "2024-01-02");
    dbk_result_free(r);
    dbk_conn_close(c);
    free(url);
}

static void postgres_text_with_nul_is_rejected(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_nul");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (a text, b text)");
    dbk_error err;
    dbk_value p[2] = {dbk_text("fine"), dbk_textn("a\0b", 3)};
    DBKT_RC(DBK_EINVALID, dbk_db_exec(db, "INSERT INTO t VALUES ($1, $2)", p, 2, NULL, &err));
    assert_non_null(strstr(err.message, "$2"));
    assert_non_null(strstr(err.message, "NUL"));
    dbk_value pj = dbk_json("{}");
    pj.u.bytes.len = 3; /* includes the terminator */
    DBKT_RC(DBK_EINVALID, dbk_db_exec(db, "INSERT INTO t (a) VALUES ($1)", &pj, 1, NULL, &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    dbk_conn_close(c);
    free(url);
}

static void postgres_many_parameters(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_many_params");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    enum { N = 100 };
    char sql[N * 12 + 32];
    size_t o = (size_t)snprintf(sql, sizeof sql, "SELECT 0");
    dbk_value p[N];
    int64_t sum = 0;
    for (int i = 0; i < N; i++) {
        o += (size_t)snprintf(sql + o, sizeof sql - o, " + $%d", i + 1);
        p[i] = dbk_int64(i * 1000003LL);
        sum += i * 1000003LL;
    }
    dbk_error err;
    int64_t got;
    for (int round = 0; round < 3; round++) {
        DBKT_OK(dbk_db_query_int64(db, sql, p, N, &got, &err), &err);
        assert_true(got == sum);
    }
    /* Texts past the stack scratch buffer, mixed with small ones. */
    char big[3000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    dbk_value t[3] = {dbk_text("a"), dbk_text(big), dbk_int64(5)};
    DBKT_OK(dbk_db_query_int64(db, "SELECT length($1) + length($2) + $3", t, 3, &got, &err),
            &err);
    assert_int_equal(got, 1 + 2999 + 5);
    dbk_conn_close(c);
    free(url);
}

/* ---- statements and errors ---- */

static void postgres_returning_and_affected(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_returning");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE u (id bigserial PRIMARY KEY, name text NOT NULL)");
    dbk_error err;
    dbk_result *r;
    dbk_value p = dbk_text("ada");
    DBKT_OK(dbk_db_query(db, "INSERT INTO u (name) VALUES ($1) RETURNING id, name", &p, 1, &r,
                         &err),
            &err);
    assert_int_equal(dbk_result_nrows(r), 1);
    assert_int_equal(dbk_result_affected(r), 1);
    int64_t id;
    DBKT_OK(dbk_result_get_int64_by_name(r, 0, "id", &id, &err), &err);
    assert_int_equal(id, 1);
    dbk_result_free(r);
    int64_t n;
    DBKT_OK(dbk_db_exec(db, "INSERT INTO u (name) SELECT 'n' || g FROM generate_series(1, 5) g",
                        NULL, 0, &n, &err),
            &err);
    assert_int_equal(n, 5);
    dbk_value like = dbk_text("n%");
    DBKT_OK(dbk_db_exec(db, "UPDATE u SET name = name || '!' WHERE name LIKE $1", &like, 1, &n,
                        &err),
            &err);
    assert_int_equal(n, 5);
    DBKT_OK(dbk_db_query(db, "DELETE FROM u WHERE id > 3 RETURNING id", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_nrows(r), 3);
    assert_int_equal(dbk_result_affected(r), 3);
    dbk_result_free(r);
    DBKT_OK(dbk_db_exec(db, "SELECT * FROM u", NULL, 0, &n, &err), &err);
    assert_int_equal(n, 0); /* a SELECT affects nothing */
    DBKT_OK(dbk_db_query(db, "SELECT * FROM u WHERE false", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_nrows(r), 0);
    assert_int_equal(dbk_result_ncols(r), 2);
    assert_string_equal(dbk_result_colname(r, 1), "name");
    dbk_result_free(r);
    dbk_conn_close(c);
    free(url);
}

static void postgres_constraint_errors_name_constraint_and_table(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_constraints");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, "
              "age int CONSTRAINT age_positive CHECK (age > 0));"
              "CREATE TABLE orders (id bigserial PRIMARY KEY, "
              "user_id bigint NOT NULL REFERENCES users (id))");
    dbk_error err;
    dbk_value p[2] = {dbk_text("secret.person@example.com"), dbk_int64(30)};
    const char *ins = "INSERT INTO users (email, age) VALUES ($1, $2)";
    DBKT_OK(dbk_db_exec(db, ins, p, 2, NULL, &err), &err);
    DBKT_RC(DBK_EUNIQUE, dbk_db_exec(db, ins, p, 2, NULL, &err));
    assert_string_equal(err.sqlstate, "23505");
    assert_string_equal(err.constraint_name, "users_email_key");
    assert_string_equal(err.table_name, "users");
    assert_null(strstr(err.message, "secret.person")); /* DETAIL left out */
    /* The cached statement still works after failing on first use. */
    p[0] = dbk_text("other@example.com");
    DBKT_OK(dbk_db_exec(db, ins, p, 2, NULL, &err), &err);

    p[0] = dbk_text("third@example.com");
    p[1] = dbk_int64(-1);
    DBKT_RC(DBK_ECHECK, dbk_db_exec(db, ins, p, 2, NULL, &err));
    assert_string_equal(err.constraint_name, "age_positive");
    assert_string_equal(err.table_name, "users");

    p[0] = dbk_null();
    p[1] = dbk_int64(5);
    DBKT_RC(DBK_ENOT_NULL, dbk_db_exec(db, ins, p, 2, NULL, &err));
    assert_string_equal(err.sqlstate, "23502");
    assert_string_equal(err.table_name, "users");

    dbk_value uid = dbk_int64(999);
    DBKT_RC(DBK_EFOREIGN_KEY,
            dbk_db_exec(db, "INSERT INTO orders (user_id) VALUES ($1)", &uid, 1, NULL, &err));
    assert_string_equal(err.constraint_name, "orders_user_id_fkey");
    assert_string_equal(err.table_name, "orders");
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM users"), 2);
    dbk_conn_close(c);
    free(url);
}

static void postgres_schema_and_syntax_errors(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_schema_errors");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_result *r = NULL;
    DBKT_RC(DBK_ESCHEMA, dbk_db_query(db, "SELECT * FROM no_such_table", NULL, 0, &r, &err));
    assert_null(r);
    assert_string_equal(err.sqlstate, "42P01");
    assert_non_null(strstr(err.hint, "migrate"));
    dbkt_exec(db, "CREATE TABLE t (a int)");
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec(db, "SELECT nope FROM t", NULL, 0, NULL, &err));
    assert_string_equal(err.sqlstate, "42703");
    DBKT_RC(DBK_ESQL, dbk_db_exec(db, "SELEC 1", NULL, 0, NULL, &err));
    assert_string_equal(err.sqlstate, "42601");
    assert_true(err.message[0] != '\0');
    /* Several statements in one run: refused, with the way out. */
    DBKT_RC(DBK_ESQL, dbk_db_exec(db, "SELECT 1; SELECT 2", NULL, 0, NULL, &err));
    assert_non_null(strstr(err.hint, "exec_script"));
    /* More placeholders than parameters: misuse, the connection lives. */
    dbk_value one = dbk_int64(1);
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, "SELECT $1::int + $2::int", &one, 1, NULL, &err));
    assert_int_equal(dbkt_int(db, "SELECT 5"), 5);
    /* Bad input text for a typed column: a data exception. */
    dbk_value bad = dbk_text("not a number");
    DBKT_RC(DBK_EINVALID, dbk_db_exec(db, "INSERT INTO t VALUES ($1)", &bad, 1, NULL, &err));
    assert_string_equal(err.sqlstate, "22P02");
    dbk_conn_close(c);
    free(url);
}

static void postgres_sqlstate_mapping(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_sqlstates");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    static const struct {
        const char *state;
        dbk_rc rc;
    } cases[] = {
        {"40001", DBK_ESERIALIZATION}, {"40P01", DBK_EDEADLOCK}, {"25006", DBK_EREADONLY},
        {"57014", DBK_ETIMEOUT},       {"55P03", DBK_EBUSY},     {"23505", DBK_EUNIQUE},
        {"53300", DBK_EUNAVAILABLE},   {"XX000", DBK_EINTERNAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "DO $$ BEGIN RAISE EXCEPTION 'raised %s' USING ERRCODE = '%s'; END $$",
                 cases[i].state, cases[i].state);
        dbk_error err;
        dbk_rc rc = dbk_db_exec(db, sql, NULL, 0, NULL, &err);
        if (rc != cases[i].rc)
            fail_msg("%s: expected %s, got %s", cases[i].state, dbk_rc_name(cases[i].rc),
                     dbk_rc_name(rc));
        assert_string_equal(err.sqlstate, cases[i].state);
        assert_non_null(strstr(err.message, "raised"));
        assert_int_equal(txstate(c), DBK__TX_IDLE);
    }
    /* The same through a script (simple protocol). */
    dbk_error err;
    DBKT_RC(DBK_EDEADLOCK,
            dbk_db_exec_script(db, "SELECT 1; DO $$ BEGIN RAISE EXCEPTION 'x' USING "
                                   "ERRCODE = '40P01'; END $$; SELECT 2",
                               &err));
    assert_non_null(strstr(err.hint, "retry"));
    dbk_conn_close(c);
    free(url);
}

/* Two sessions take two row locks in opposite orders: one of them is the
 * deadlock victim. */
struct dl_arg {
    const char *url;
    int first, second;
    dbk_rc rc;
    pthread_barrier_t *barrier;
};

static void *deadlock_side(void *p)
{
    struct dl_arg *a = p;
    dbk_conn *c = NULL;
    dbk_error err;
    a->rc = try_open_set(a->url, NULL, &c, &err);
    pthread_barrier_wait(a->barrier);
    if (a->rc)
        return NULL;
    dbk_db *db = dbk_conn_db(c);
    dbk_value v1 = dbk_int64(a->first), v2 = dbk_int64(a->second);
    a->rc = dbk_db_exec_script(db, "BEGIN", &err);
    if (!a->rc)
        a->rc = dbk_db_exec(db, "UPDATE t SET n = n + 1 WHERE id = $1", &v1, 1, NULL, &err);
    pthread_barrier_wait(a->barrier);
    if (!a->rc)
        a->rc = dbk_db_exec(db, "UPDATE t SET n = n + 1 WHERE id = $1", &v2, 1, NULL, &err);
    dbk_error e2;
    dbk_db_exec_script(db, "ROLLBACK", &e2);
    dbk_conn_close(c);
    return NULL;
}

static void postgres_real_deadlock_is_detected(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_deadlock");
    dbk_conn *c = dbkt_open(url);
    dbkt_exec(dbk_conn_db(c), "CREATE TABLE t (id int PRIMARY KEY, n int);"
                          "INSERT INTO t VALUES (1, 0), (2, 0)");
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct dl_arg a = {url, 1, 2, DBK_OK, &bar}, b = {url, 2, 1, DBK_OK, &bar};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, deadlock_side, &a);
    pthread_create(&tb, NULL, deadlock_side, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&bar);
    /* Exactly one side loses (deadlock_timeout is 1 s by default). */
    assert_true((a.rc == DBK_EDEADLOCK) != (b.rc == DBK_EDEADLOCK));
    assert_true(a.rc == DBK_OK || b.rc == DBK_OK);
    dbk_conn_close(c);
    free(url);
}

/* ---- the statement cache ---- */

static int64_t prepared_count(dbk_db *db)
{
    return dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements");
}

static void postgres_stmt_cache_reuses_one_statement(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_cache_reuse");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    for (int i = 0; i < 1000; i++) {
        dbk_value p = dbk_int64(i);
        int64_t got;
        DBKT_OK(dbk_db_query_int64(db, "SELECT $1::bigint * 2", &p, 1, &got, &err), &err);
        assert_int_equal(got, 2 * i);
    }
    char buf[64];
    dbkt_text(db, "SELECT string_agg(statement, '|') FROM pg_prepared_statements "
               "WHERE statement LIKE '%* 2'",
           buf, sizeof buf);
    assert_string_equal(buf, "SELECT $1::bigint * 2");
    /* That statement plus the two counting/listing ones. */
    assert_int_equal(prepared_count(db), 3);
    /* The type signature is part of the key: a NULL is another statement. */
    dbk_value pn = dbk_null();
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT $1::bigint * 2", &pn, 1, &r, &err), &err);
    assert_true(dbk_result_is_null(r, 0, 0));
    dbk_result_free(r);
    assert_int_equal(prepared_count(db), 4);
    dbk_conn_close(c);
    free(url);
}

static void postgres_stmt_cache_is_bounded(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_cache_bound");
    dbk_conn *c = dbkt_open(url); /* default stmt_cache_size 128 */
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 300; i++) {
            char sql[64];
            snprintf(sql, sizeof sql, "SELECT %d + $1::int", i);
            dbk_value p = dbk_int64(round);
            int64_t got;
            DBKT_OK(dbk_db_query_int64(db, sql, &p, 1, &got, &err), &err);
            assert_int_equal(got, i + round);
            if (i % 50 == 49) {
                int64_t n = prepared_count(db);
                if (n > 128)
                    fail_msg("%lld prepared statements on the server, cache is 128",
                             (long long)n);
            }
        }
    }
    assert_true(prepared_count(db) >= 100);
    /* Inside a transaction evictions wait; they are caught up after. */
    dbkt_exec(db, "BEGIN");
    for (int i = 0; i < 40; i++) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT %d - $1::int", i);
        dbk_value p = dbk_int64(1);
        int64_t got;
        DBKT_OK(dbk_db_query_int64(db, sql, &p, 1, &got, &err), &err);
    }
    dbkt_exec(db, "COMMIT");
    int64_t got;
    dbk_value p = dbk_int64(1);
    DBKT_OK(dbk_db_query_int64(db, "SELECT 12345 + $1::int", &p, 1, &got, &err), &err);
    assert_true(prepared_count(db) <= 128);
    dbk_conn_close(c);
    free(url);
}

static void postgres_stmt_cache_off_sends_unnamed(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_cache_off");
    const char *kv[] = {"stmt_cache_size", "0", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    for (int i = 0; i < 50; i++) {
        dbk_value p = dbk_int64(i);
        int64_t got;
        DBKT_OK(dbk_db_query_int64(db, "SELECT $1::int + 1", &p, 1, &got, &err), &err);
        assert_int_equal(got, i + 1);
    }
    assert_int_equal(prepared_count(db), 0);
    dbk_conn_close(c);
    free(url);
}

static void postgres_stmt_dropped_behind_cache_is_reprepared(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_cache_stale");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    const char *sql = "SELECT 40 + $1::int";
    dbk_value p = dbk_int64(2);
    int64_t got;
    DBKT_OK(dbk_db_query_int64(db, sql, &p, 1, &got, &err), &err);
    char name[64];
    dbk_value ps = dbk_text(sql);
    DBKT_OK(dbk_db_query_text(db, "SELECT name FROM pg_prepared_statements WHERE statement = $1",
                              &ps, 1, name, sizeof name, NULL, &err),
            &err);
    char drop[96];
    snprintf(drop, sizeof drop, "DEALLOCATE %s", name);
    dbkt_exec(db, drop); /* behind the cache's back */
    DBKT_OK(dbk_db_query_int64(db, sql, &p, 1, &got, &err), &err);
    assert_int_equal(got, 42);
    /* DISCARD ALL through dbkit empties the cache and everything works on. */
    DBKT_OK(dbk_db_exec(db, "DISCARD ALL", NULL, 0, NULL, &err), &err);
    DBKT_OK(dbk_db_query_int64(db, sql, &p, 1, &got, &err), &err);
    assert_int_equal(got, 42);
    dbk_conn_close(c);
    free(url);
}

static void postgres_ddl_changing_cached_result_is_retried(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_cache_ddl");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (a int); INSERT INTO t VALUES (1)");
    dbk_error err;
    dbk_result *r;
    DBKT_OK(dbk_db_query(db, "SELECT * FROM t", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 1);
    dbk_result_free(r);
    dbkt_exec(db, "ALTER TABLE t ADD COLUMN b text DEFAULT 'new'");
    DBKT_OK(dbk_db_query(db, "SELECT * FROM t", NULL, 0, &r, &err), &err);
    assert_int_equal(dbk_result_ncols(r), 2);
    const char *b;
    DBKT_OK(dbk_result_get_text_by_name(r, 0, "b", &b, NULL, &err), &err);
    assert_string_equal(b, "new");
    dbk_result_free(r);
    dbk_conn_close(c);
    free(url);
}

/* ---- broken connections ---- */

static void postgres_terminated_backend_is_connection_lost(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill this test */
    char *url = dbkt_pg_fresh_db("pg_terminated");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    int64_t pid = dbkt_int(db, "SELECT pg_backend_pid()");
    dbkt_exec(db, "BEGIN");
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld, 5000)", (long long)pid);
    dbkt_pg_admin_exec(sql);
    usleep(100 * 1000); /* let the FIN/RST arrive */
    dbk_error err;
    dbk_value p = dbk_int64(1);
    DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(db, "SELECT $1::int", &p, 1, NULL, &err));
    assert_true(err.message[0] != '\0');
    assert_true(err.hint[0] != '\0');
    assert_int_equal(txstate(c), DBK__TX_BROKEN);
    for (int i = 0; i < 3; i++) {
        DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err));
        DBKT_RC(DBK_ECONN_LOST, dbk_db_exec_script(db, "SELECT 1", &err));
    }
    DBKT_RC(DBK_ECONN_LOST, dbk_conn_ping(c, 200, &err));
    DBKT_RC(DBK_ECONN_LOST, reset(c, &err));
    dbk_conn_close(c);
    free(url);
}

/* The server ends a session idle in a transaction too long (FATAL 25P03):
 * the next call sees a lost connection, not a plain SQL error. */
static void postgres_idle_in_transaction_timeout_is_connection_lost(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_idle_tx");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "SET idle_in_transaction_session_timeout = 100; BEGIN");
    usleep(600 * 1000);
    dbk_error err;
    DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err));
    assert_int_equal(txstate(c), DBK__TX_BROKEN);
    dbk_conn_close(c);
    free(url);
}

/* Cached statement, new connection, terminated while idle between calls,
 * with a send big enough to hit the dead socket. */
static void postgres_dead_socket_write_never_raises_sigpipe(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_DFL);
    char *url = dbkt_pg_fresh_db("pg_sigpipe");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    int64_t pid = dbkt_int(db, "SELECT pg_backend_pid()");
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld, 5000)", (long long)pid);
    dbkt_pg_admin_exec(sql);
    usleep(200 * 1000);
    size_t n = 4 << 20;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'z', n);
    dbk_value p = dbk_textn(big, n);
    dbk_error err;
    for (int i = 0; i < 3; i++)
        DBKT_RC(DBK_ECONN_LOST, dbk_db_exec(db, "SELECT length($1)", &p, 1, NULL, &err));
    free(big);
    dbk_conn_close(c);
    free(url);
}

/* ---- reset, transactions, scripts ---- */

static void postgres_reset_restores_session_defaults(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_reset");
    const char *kv[] = {"statement_timeout", "4321", NULL};
    dbk_conn *c = open_set(url, kv);
    dbk_db *db = dbk_conn_db(c);
    char wm[32], sp[64];
    dbkt_text(db, "SHOW work_mem", wm, sizeof wm);
    dbkt_text(db, "SHOW search_path", sp, sizeof sp);
    char user[64];
    dbkt_text(db, "SELECT current_user", user, sizeof user);
    dbkt_exec(db, "SET work_mem = '7MB'; SET search_path = nowhere; SET statement_timeout = 0; "
              "SET TimeZone = 'Asia/Tokyo'; CREATE TEMP TABLE scratch (x int); "
              "SET ROLE pg_monitor");
    /* Prepare something first: the reset deallocates it (DISCARD ALL's
     * effect) and dbkit's statement cache forgets it, so the next use
     * prepares it again. */
    dbk_value p = dbk_int64(1);
    int64_t got;
    dbk_error err;
    DBKT_OK(dbk_db_query_int64(db, "SELECT $1::int + 100", &p, 1, &got, &err), &err);
    DBKT_OK(reset(c, &err), &err);
    char buf[64];
    dbkt_text(db, "SHOW work_mem", buf, sizeof buf);
    assert_string_equal(buf, wm);
    dbkt_text(db, "SHOW search_path", buf, sizeof buf);
    assert_string_equal(buf, sp);
    dbkt_text(db, "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'", buf,
           sizeof buf);
    assert_string_equal(buf, "4321");
    dbkt_text(db, "SHOW TimeZone", buf, sizeof buf);
    assert_string_equal(buf, "UTC");
    dbkt_text(db, "SELECT current_user", buf, sizeof buf);
    assert_string_equal(buf, user);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"), 0);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements "
                               "WHERE statement = 'SELECT $1::int + 100'"),
                     0);
    DBKT_OK(dbk_db_query_int64(db, "SELECT $1::int + 100", &p, 1, &got, &err), &err);
    assert_int_equal(got, 101);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_prepared_statements "
                               "WHERE statement = 'SELECT $1::int + 100'"),
                     1);
    dbk_conn_close(c);
    free(url);
}

static void postgres_reset_rolls_back_open_transaction(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_reset_tx");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (a int)");
    dbkt_exec(db, "BEGIN; INSERT INTO t VALUES (1)");
    assert_int_equal(txstate(c), DBK__TX_OPEN);
    dbk_error err;
    DBKT_OK(reset(c, &err), &err);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 0);
    /* A failed transaction too. */
    dbkt_exec(db, "BEGIN");
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec(db, "SELECT * FROM missing", NULL, 0, NULL, &err));
    assert_int_equal(txstate(c), DBK__TX_FAILED);
    DBKT_RC(DBK_ESQL, dbk_db_exec(db, "SELECT 1", NULL, 0, NULL, &err));
    assert_string_equal(err.sqlstate, "25P02");
    DBKT_OK(reset(c, &err), &err);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    assert_int_equal(dbkt_int(db, "SELECT 3"), 3);
    dbk_conn_close(c);
    free(url);
}

static void postgres_script_stops_at_first_error(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_script");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    DBKT_OK(dbk_db_exec_script(db, "", &err), &err);
    DBKT_OK(dbk_db_exec_script(db, "CREATE TABLE a (x int); INSERT INTO a VALUES (1), (2); "
                                   "SELECT * FROM a; -- trailing comment\n",
                               &err),
            &err);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM a"), 2);
    DBKT_RC(DBK_ESCHEMA, dbk_db_exec_script(db, "INSERT INTO a VALUES (3); "
                                                "INSERT INTO missing VALUES (1); "
                                                "CREATE TABLE b (x int)",
                                            &err));
    assert_string_equal(err.sqlstate, "42P01");
    /* One implicit transaction: nothing of the script stayed. */
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM a"), 2);
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'b'"), 0);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    dbk_conn_close(c);
    free(url);
}

static void postgres_copy_is_refused_cleanly(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_copy");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbkt_exec(db, "CREATE TABLE t (a int); INSERT INTO t SELECT generate_series(1, 1000)");
    dbk_error err;
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, "COPY t FROM STDIN", NULL, 0, NULL, &err));
    assert_int_equal(dbkt_int(db, "SELECT count(*) FROM t"), 1000);
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, "COPY t TO STDOUT", NULL, 0, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_exec_script(db, "COPY t TO STDOUT", &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_exec_script(db, "SELECT 1; COPY t FROM STDIN", &err));
    DBKT_RC(DBK_EMISUSE, dbk_db_exec(db, " /* c */ -- x\n copy t to stdout", NULL, 0, NULL, &err));
    assert_int_equal(dbkt_int(db, "SELECT 9"), 9);
    assert_int_equal(txstate(c), DBK__TX_IDLE);
    dbk_conn_close(c);
    free(url);
}

static void postgres_result_outlives_connection(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("pg_outlive");
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_result *r;
    DBKT_OK(dbk_db_query(dbk_conn_db(c),
                         "SELECT g AS n, 'row ' || g AS s FROM generate_series(1, 500) g",
                         NULL, 0, &r, &err),
            &err);
    dbk_conn_close(c);
    assert_int_equal(dbk_result_nrows(r), 500);
    const char *s;
    DBKT_OK(dbk_result_get_text(r, 499, 1, &s, NULL, &err), &err);
    assert_string_equal(s, "row 500");
    dbk_result_free(r);
    free(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(postgres_connect_and_server_version),
    cmocka_unit_test(postgres_session_settings_from_startup),
    cmocka_unit_test(postgres_refused_port_is_unavailable),
    cmocka_unit_test(postgres_password_never_in_messages),
    cmocka_unit_test(postgres_silent_listener_times_out),
    cmocka_unit_test(postgres_multi_host_skips_dead_host),
    cmocka_unit_test(postgres_unknown_parameter_is_config_error),
    cmocka_unit_test(postgres_application_name_visible),
    cmocka_unit_test(postgres_user_options_are_kept),
    cmocka_unit_test(postgres_wrong_password_is_auth_error),
    cmocka_unit_test(postgres_sslmode_require_without_tls_is_tls_error),
    cmocka_unit_test(postgres_through_pgbouncer_transaction_mode),
    cmocka_unit_test(postgres_statement_timeout),
    cmocka_unit_test(postgres_lock_timeout_is_busy),
    cmocka_unit_test(postgres_frozen_server_hits_client_deadline),
    cmocka_unit_test(postgres_ping_has_its_own_deadline),
    cmocka_unit_test(postgres_values_round_trip_byte_for_byte),
    cmocka_unit_test(postgres_server_types_map_to_cells),
    cmocka_unit_test(postgres_text_with_nul_is_rejected),
    cmocka_unit_test(postgres_many_parameters),
    cmocka_unit_test(postgres_returning_and_affected),
    cmocka_unit_test(postgres_constraint_errors_name_constraint_and_table),
    cmocka_unit_test(postgres_schema_and_syntax_errors),
    cmocka_unit_test(postgres_sqlstate_mapping),
    cmocka_unit_test(postgres_real_deadlock_is_detected),
    cmocka_unit_test(postgres_stmt_cache_reuses_one_statement),
    cmocka_unit_test(postgres_stmt_cache_is_bounded),
    cmocka_unit_test(postgres_stmt_cache_off_sends_unnamed),
    cmocka_unit_test(postgres_stmt_dropped_behind_cache_is_reprepared),
    cmocka_unit_test(postgres_ddl_changing_cached_result_is_retried),
    cmocka_unit_test(postgres_terminated_backend_is_connection_lost),
    cmocka_unit_test(postgres_idle_in_transaction_timeout_is_connection_lost),
    cmocka_unit_test(postgres_dead_socket_write_never_raises_sigpipe),
    cmocka_unit_test(postgres_reset_restores_session_defaults),
    cmocka_unit_test(postgres_reset_rolls_back_open_transaction),
    cmocka_unit_test(postgres_script_stops_at_first_error),
    cmocka_unit_test(postgres_copy_is_refused_cleanly),
    cmocka_unit_test(postgres_result_outlives_connection),
};

DBKT_MAIN(tests)
