/*
 * pg_io.c - the PostgreSQL driver's I/O: every wait has a deadline.
 *
 * The connection is non-blocking: sends flush under the deadline, results
 * are awaited with poll() + PQconsumeInput + PQisBusy, and a statement past
 * its client deadline gets a bounded cancel (see "cancel with a bound") and
 * its connection closed. Errors from the server are mapped here too
 * (result_error), so every file reports them the same way.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

/* ---- small helpers ---- */

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

locale_t dbk__pg_get_c_locale(void)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale;
}

/* Copies a libpq message into dst, folding newlines and tabs into single
 * spaces, dropping a leading "ERROR:  " / "FATAL:  " and trailing blanks. */
void dbk__pg_clean_message(char *dst, size_t size, const char *src)
{
    if (!size)
        return;
    if (!src)
        src = "";
    static const char *const prefixes[] = {"ERROR:  ", "FATAL:  ", "PANIC:  "};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(src, prefixes[i], strlen(prefixes[i])) == 0)
            src += strlen(prefixes[i]);
    size_t o = 0;
    bool space = false;
    for (const char *p = src; *p && o + 1 < size; p++) {
        char ch = *p;
        if (ch == '\n' || ch == '\t' || ch == '\r' || ch == ' ') {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < size)
            dst[o++] = ' ';
        space = false;
        dst[o++] = ch;
    }
    dst[o] = '\0';
}

/* A malloc'd copy of src with every occurrence of `secret` replaced by
 * "***" (NULL on ENOMEM). libpq never puts the password in a message; this
 * is the belt to its braces, applied before any truncation. */
char *dbk__pg_redact_dup(const char *src, const char *secret)
{
    if (!src)
        src = "";
    size_t sl = secret ? strlen(secret) : 0;
    size_t n = 0;
    if (sl)
        for (const char *p = strstr(src, secret); p; p = strstr(p + sl, secret))
            n++;
    size_t len = strlen(src);
    char *out = malloc(len + n * 3 + 1);
    if (!out)
        return NULL;
    char *o = out;
    const char *p = src;
    if (sl) {
        for (const char *m = strstr(p, secret); m; m = strstr(p, secret)) {
            memcpy(o, p, (size_t)(m - p));
            o += m - p;
            memcpy(o, "***", 3);
            o += 3;
            p = m + sl;
        }
    }
    size_t rest = strlen(p);
    memcpy(o, p, rest + 1);
    return out;
}

/* Waits for `events` on fd until the deadline. Returns the revents (> 0),
 * 0 on timeout, -1 on a poll failure. */
int dbk__pg_wait_fd(int fd, short events, int64_t deadline_ns)
{
    if (fd < 0)
        return -1;
    for (;;) {
        int64_t left = deadline_ns - dbk__now_ns();
        if (left <= 0)
            return 0;
        int ms = (int)((left + 999999) / 1000000);
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, ms);
        if (n > 0)
            return pfd.revents ? pfd.revents : events;
        if (n == 0)
            continue; /* re-check the clock; poll may wake a little early */
        if (errno != EINTR)
            return -1;
    }
}

int64_t dbk__pg_deadline_after_ms(int64_t ms)
{
    return dbk__now_ns() + ms * 1000000LL;
}

/* Client-side bound for one statement. */
int64_t dbk__pg_stmt_deadline(const pg_conn *pc)
{
    if (pc->statement_timeout_ms > 0)
        return dbk__pg_deadline_after_ms((int64_t)pc->statement_timeout_ms + PG_DEADLINE_GRACE_MS);
    return dbk__pg_deadline_after_ms(PG_NO_LIMIT_DEADLINE_MS);
}

/* ---- cancel with a bound ----
 *
 * A statement whose client deadline passed gets a cancel request and its
 * connection is closed; the caller has its error at once and never waits
 * for the cancel. The request goes from a detached helper thread, and the
 * helpers are bounded three ways:
 *
 *  - in number: at most PG_CANCEL_MAX attempts are outstanding in the
 *    process; a timeout past that sends none (the connection is closed
 *    anyway; the server ends the statement when it next writes to the
 *    closed socket, or at its own statement_timeout);
 *  - in time: each attempt has PG_CANCEL_WAIT_MS from its start to connect,
 *    send and see the server close, then closes its socket and ends;
 *  - in sockets: one per attempt, closed by then.
 *
 * libpq 15's PQcancel cannot be bounded (blocking connect, send and recv
 * with no timeout), so the driver sends the CancelRequest itself: 16 bytes
 * (length 16, code 80877102, backend PID, secret key) on a non-blocking
 * socket to the connection's peer address. libpq keeps the secret key
 * private; PQgetCancel's PGcancel begins, in every libpq from 9.x to 17,
 * with the server address followed by the PID and the key, and the driver
 * reads the key from there only after checking that the address and the
 * PID it finds are the ones getpeername() and PQbackendPID() report for
 * the same connection. If they are not (another libpq layout), it falls
 * back to PQcancel on the helper thread: still never waited for and still
 * counted against PG_CANCEL_MAX, but such a thread may then block for as
 * long as the network stays silent.
 */

/* The start of libpq's PGcancel (libpq-int.h: SockAddr raddr; int be_pid;
 * int be_key; ...). Read only after the checks in cancel_prepare(). */
struct pg_cancel_head {
    struct {
        struct sockaddr_storage addr;
        socklen_t salen;
    } raddr;
    int be_pid;
    int be_key;
};

static atomic_int cancels_outstanding;

struct cancel_job {
    struct sockaddr_storage peer;
    socklen_t peer_len;
    uint32_t pid, key;
    PGcancel *fallback; /* non-NULL: use PQcancel */
    int64_t deadline_ns;
};

static bool same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    if (a->ss_family == AF_UNIX) {
        const struct sockaddr_un *x = (const void *)a, *y = (const void *)b;
        return strncmp(x->sun_path, y->sun_path, sizeof x->sun_path) == 0;
    }
    return false;
}

/* Fills j with what the cancel needs: the key read from PGcancel after
 * the checks above, or the PGcancel itself for the fallback. */
static bool cancel_prepare(PGconn *conn, struct cancel_job *j)
{
    PGcancel *c = PQgetCancel(conn);
    if (!c)
        return false;
    j->peer_len = sizeof j->peer;
    int pid = PQbackendPID(conn);
    const struct pg_cancel_head *h = (const void *)c;
    if (pid > 0 &&
        getpeername(PQsocket(conn), (struct sockaddr *)&j->peer, &j->peer_len) == 0 &&
        h->be_pid == pid && same_peer(&h->raddr.addr, &j->peer)) {
        j->pid = (uint32_t)pid;
        j->key = (uint32_t)h->be_key;
        PQfreeCancel(c);
        return true;
    }
    j->fallback = c;
    return true;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Connects, sends the CancelRequest and waits for the server to close the
 * connection (which it does once the request is processed), all before
 * j->deadline_ns. */
static void cancel_send(const struct cancel_job *j)
{
    int fd = socket(j->peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    unsigned char msg[16];
    put_be32(msg, 16);
    put_be32(msg + 4, 80877102); /* CancelRequest code: 1234 << 16 | 5678 */
    put_be32(msg + 8, j->pid);
    put_be32(msg + 12, j->key);
    if (connect(fd, (const struct sockaddr *)&j->peer, j->peer_len) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN)
            goto done;
        if (dbk__pg_wait_fd(fd, POLLOUT, j->deadline_ns) <= 0)
            goto done;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
            goto done;
    }
    if (send(fd, msg, sizeof msg, MSG_NOSIGNAL) != (ssize_t)sizeof msg)
        goto done;
    for (;;) {
        int ev = dbk__pg_wait_fd(fd, POLLIN, j->deadline_ns);
        if (ev <= 0)
            break;
        char b[64];
        ssize_t n = recv(fd, b, sizeof b, 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            break;
    }
done:
    close(fd);
}

static void *cancel_main(void *arg)
{
    struct cancel_job *j = arg;
    if (j->fallback) {
        char errbuf[256];
        (void)PQcancel(j->fallback, errbuf, (int)sizeof errbuf);
        PQfreeCancel(j->fallback);
    } else {
        cancel_send(j);
    }
    free(j);
    atomic_fetch_sub(&cancels_outstanding, 1);
    return NULL;
}

/* Starts a cancel request for the statement running on conn and returns
 * at once (see above). */
static void cancel_bounded(PGconn *conn)
{
    if (atomic_fetch_add(&cancels_outstanding, 1) >= PG_CANCEL_MAX) {
        atomic_fetch_sub(&cancels_outstanding, 1);
        dbk__log(DBK_LOG_DEBUG, "no cancel request sent: %d already outstanding", PG_CANCEL_MAX);
        return;
    }
    struct cancel_job *j = calloc(1, sizeof *j);
    if (!j || !cancel_prepare(conn, j)) {
        free(j);
        atomic_fetch_sub(&cancels_outstanding, 1);
        return;
    }
    j->deadline_ns = dbk__pg_deadline_after_ms(PG_CANCEL_WAIT_MS);

    /* The thread inherits a fully blocked signal mask: process signals
     * never land there (and a SIGPIPE from the fallback's send() is
     * dropped with the thread). The caller's own mask is restored at once. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, cancel_main, j);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        if (j->fallback)
            PQfreeCancel(j->fallback);
        free(j);
        atomic_fetch_sub(&cancels_outstanding, 1);
    }
}

/* ---- connection state ---- */

void dbk__pg_mark_broken(pg_conn *pc)
{
    pc->broken = true;
    if (pc->conn && !dbk__owner_forked(&pc->owner)) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }
    /* The server session is gone and its statements with it. */
    dbk__pg_cache_clear(pc);
    pc->npending = 0;
    pc->pending_all = false;
}

dbk_rc dbk__pg_broken_err(dbk_error *err)
{
    dbk__err(err, DBK_ECONN_LOST,
             "the connection is broken (an earlier operation lost it or timed out)");
    dbk__err_hint(err, "close it and open a new one; a pool replaces broken connections itself");
    return DBK_ECONN_LOST;
}

/* The connection broke under us: record libpq's reason. */
dbk_rc dbk__pg_lost(pg_conn *pc, dbk_error *err)
{
    char msg[DBK_ERROR_MESSAGE_MAX - 64];
    dbk__pg_clean_message(msg, sizeof msg, pc->conn ? PQerrorMessage(pc->conn) : "");
    dbk__err(err, DBK_ECONN_LOST, "connection to the server was lost%s%s", msg[0] ? ": " : "",
             msg);
    dbk__err_default_hint(err);
    dbk__pg_mark_broken(pc);
    return DBK_ECONN_LOST;
}

/* The client deadline passed: cancel (bounded), close, DBK_ETIMEOUT. */
static dbk_rc timed_out(pg_conn *pc, bool cancel, int64_t waited_ms, dbk_error *err)
{
    if (cancel && pc->conn)
        cancel_bounded(pc->conn);
    dbk__pg_mark_broken(pc);
    dbk__err(err, DBK_ETIMEOUT,
             "no answer from the server within %" PRId64 " ms; a cancel was requested "
             "and the connection closed",
             waited_ms);
    dbk__err_hint(err, "the server is overloaded, stuck or unreachable, or the statement is "
                       "slower than statement_timeout allows: check the server (`dbkit doctor`), "
                       "optimize the statement (`dbkit explain`) or raise "
                       "DB_STATEMENT_TIMEOUT_MS");
    return DBK_ETIMEOUT;
}

/* Sends whatever libpq has buffered, reading meanwhile so that a server
 * busy writing back to us cannot deadlock a large send. */
dbk_rc dbk__pg_flush_out(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                        dbk_error *err)
{
    for (;;) {
        int f = PQflush(pc->conn);
        if (f == 0)
            return DBK_OK;
        if (f < 0)
            return dbk__pg_lost(pc, err);
        int ev = dbk__pg_wait_fd(PQsocket(pc->conn), POLLIN | POLLOUT, deadline);
        if (ev == 0)
            return timed_out(pc, cancel, budget_ms, err);
        if (ev < 0)
            return dbk__pg_lost(pc, err);
        if ((ev & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(pc->conn))
            return dbk__pg_lost(pc, err);
    }
}

/* Waits until PQgetResult will not block. */
dbk_rc dbk__pg_await_ready(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                          dbk_error *err)
{
    while (PQisBusy(pc->conn)) {
        int ev = dbk__pg_wait_fd(PQsocket(pc->conn), POLLIN, deadline);
        if (ev == 0)
            return timed_out(pc, cancel, budget_ms, err);
        if (ev < 0)
            return dbk__pg_lost(pc, err);
        if (!PQconsumeInput(pc->conn)) {
            /* The server may have said why before closing (57P01...):
             * a parsed error result takes precedence over "lost". */
            if (!PQisBusy(pc->conn))
                break;
            return dbk__pg_lost(pc, err);
        }
    }
    return DBK_OK;
}

bool dbk__pg_is_error_status(ExecStatusType st)
{
    return st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR ||
           st == PGRES_PIPELINE_ABORTED;
}

/* Notices commands that drop our prepared statements behind our back. */
void dbk__pg_note_command(pg_conn *pc, const PGresult *r)
{
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return;
    const char *tag = PQcmdStatus((PGresult *)r);
    if (tag && (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0)) {
        dbk__pg_cache_clear(pc);
        pc->npending = 0;
        pc->pending_all = false;
    }
}

/* Reads COPY TO STDOUT data and throws it away (dbkit has no COPY API). */
static dbk_rc drain_copy_out(pg_conn *pc, int64_t deadline, int64_t budget_ms, dbk_error *err)
{
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(pc->conn, &buf, 1);
        if (buf)
            PQfreemem(buf);
        if (n > 0)
            continue;
        if (n == -1)
            return DBK_OK;
        if (n == -2)
            return dbk__pg_lost(pc, err);
        int ev = dbk__pg_wait_fd(PQsocket(pc->conn), POLLIN, deadline);
        if (ev == 0)
            return timed_out(pc, true, budget_ms, err);
        if (ev < 0 || !PQconsumeInput(pc->conn))
            return dbk__pg_lost(pc, err);
    }
}

/* Collects every result of the command in flight until libpq says the
 * command is complete. *out gets the first error, else the first result;
 * every other result is cleared. *copy_refused tells that a COPY was
 * refused (the caller reports misuse rather than the server's complaint). */
dbk_rc dbk__pg_collect(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                      PGresult **out, bool *copy_refused, dbk_error *err)
{
    PGresult *keep = NULL;
    *out = NULL;
    for (;;) {
        dbk_rc rc = dbk__pg_await_ready(pc, deadline, budget_ms, cancel, err);
        if (rc) {
            PQclear(keep);
            return rc;
        }
        PGresult *r = PQgetResult(pc->conn);
        if (!r)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(r);
            *copy_refused = true;
            if (st == PGRES_COPY_IN) {
                if (PQputCopyEnd(pc->conn, "dbkit does not support COPY FROM STDIN") < 0)
                    rc = dbk__pg_lost(pc, err);
                else
                    rc = dbk__pg_flush_out(pc, deadline, budget_ms, true, err);
            } else if (st == PGRES_COPY_OUT) {
                rc = drain_copy_out(pc, deadline, budget_ms, err);
            } else {
                dbk__pg_mark_broken(pc);
                rc = dbk__err(err, DBK_EMISUSE, "replication (COPY BOTH) is not supported");
            }
            if (rc) {
                PQclear(keep);
                return rc;
            }
            continue;
        }
        dbk__pg_note_command(pc, r);
        if (!keep) {
            keep = r;
        } else if (dbk__pg_is_error_status(st) && !dbk__pg_is_error_status(PQresultStatus(keep))) {
            PQclear(keep);
            keep = r;
        } else {
            PQclear(r);
        }
    }
    *out = keep;
    return DBK_OK;
}

/* Fills err from an error result. Marks the connection broken when the
 * error means it is gone. */
dbk_rc dbk__pg_result_error(pg_conn *pc, const PGresult *res, dbk_error *err)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    /* After FATAL or PANIC the server closes the session, even if libpq
     * has not read the end of the stream yet. */
    bool bad = !pc->conn || PQstatus(pc->conn) == CONNECTION_BAD ||
               (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0));
    dbk_rc rc;
    if (state && strlen(state) == 5)
        rc = dbk__rc_from_sqlstate(state);
    else
        rc = bad ? DBK_ECONN_LOST : DBK_EINTERNAL;
    if (bad)
        rc = DBK_ECONN_LOST;
    /* 08P01 on a live connection is the server refusing our Bind: the SQL
     * has more $N placeholders than parameters were passed. */
    if (!bad && state && strcmp(state, "08P01") == 0)
        rc = DBK_EMISUSE;
    if (rc == DBK_ETIMEOUT && primary &&
        strcmp(primary, "canceling statement due to user request") == 0)
        rc = DBK_ECANCELLED;

    char msg[DBK_ERROR_MESSAGE_MAX];
    if (primary)
        dbk__pg_clean_message(msg, sizeof msg, primary);
    else {
        const char *m = PQresultErrorMessage(res);
        if ((!m || !*m) && pc->conn)
            m = PQerrorMessage(pc->conn);
        dbk__pg_clean_message(msg, sizeof msg, m);
    }
    if (!msg[0])
        dbk__strlcpy(msg, "the server reported an error without a message", sizeof msg);
    /* DETAIL is left out on purpose: for a unique violation it carries
     * the duplicated value (an e-mail address, a token). */
    dbk__err(err, rc, "%s", msg);
    if (err) {
        if (state)
            dbk__strlcpy(err->sqlstate, state, sizeof err->sqlstate);
        const char *f = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        if (f)
            dbk__strlcpy(err->constraint_name, f, sizeof err->constraint_name);
        f = PQresultErrorField(res, PG_DIAG_TABLE_NAME);
        if (f)
            dbk__strlcpy(err->table_name, f, sizeof err->table_name);
        f = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
        if (f)
            dbk__pg_clean_message(err->hint, sizeof err->hint, f);
        if (!err->hint[0] && rc == DBK_EMISUSE)
            dbk__err_hint(err, "pass as many parameters as the SQL has $N placeholders");
        if (!err->hint[0] && state && strcmp(state, "42601") == 0 && primary &&
            strstr(primary, "multiple commands"))
            dbk__err_hint(err, "dbk_db_query/dbk_db_exec take one statement; run several "
                               "with dbk_db_exec_script()");
        if (!err->hint[0] && state && strcmp(state, "42P18") == 0)
            dbk__err_hint(err, "add a cast to the placeholder, e.g. $1::text");
        dbk__err_default_hint(err);
    }
    if (rc == DBK_ECONN_LOST)
        dbk__pg_mark_broken(pc);
    return rc;
}
