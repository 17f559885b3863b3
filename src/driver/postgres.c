/*
 * The PostgreSQL driver: dbk__driver on top of libpq.
 *
 * Every statement goes through the extended protocol with parameters; SQL
 * text never carries a value. A connection keeps a bounded LRU cache of
 * named prepared statements keyed by the SQL text plus the parameter type
 * signature (a NULL and a text value are both "unknown" to the server, an
 * int64 is bigint, ...). A cache hit is one round trip (Bind/Execute/Sync);
 * a miss prepares and executes in one pipelined round trip, preceded in the
 * same pipeline by the DEALLOCATE of whatever the LRU evicted, so the
 * server never holds more than stmt_cache_size of our statements while no
 * transaction is open. With stmt_cache_size 0 every statement is sent
 * unnamed (PQsendQueryParams), which is what PgBouncer's transaction mode
 * needs.
 *
 * Nothing waits without a deadline. Connecting uses PQconnectStartParams +
 * PQconnectPoll + poll() against a monotonic deadline per host (with several
 * hosts the driver tries them one by one itself, because libpq's own
 * per-host connect_timeout only applies to its blocking connect). The
 * connection is non-blocking: sends flush under the deadline, results are
 * awaited with poll() + PQconsumeInput + PQisBusy. A statement's client
 * deadline is statement_timeout + 2 s (the server normally cancels first
 * and reports 57014); past it the driver closes the connection and
 * returns DBK_ETIMEOUT at once, leaving a cancel request to a short-lived
 * helper thread that is bounded in number, time and sockets (see "cancel
 * with a bound" below). Scripts get the same deadline unless their caller
 * passes a longer one (migrations do). libpq itself sends with MSG_NOSIGNAL on Linux
 * (plain and TLS sockets alike, TLS writes go through its own socket BIO),
 * so no process-wide SIGPIPE handler is installed.
 *
 * Session settings (statement_timeout, lock_timeout, DateStyle=ISO,
 * TimeZone=UTC) travel in the startup packet through the libpq `options`
 * keyword, which makes them the session defaults: RESET ALL in reset()
 * restores them for free and costs no extra round trip at connect. A
 * pooler that refuses `options` (older PgBouncer) is retried without it;
 * one that silently ignores it is detected from the reported DateStyle /
 * TimeZone; in both cases the settings are applied with SET after connect
 * and after every reset.
 *
 * Results are fetched in text format and converted by column type into an
 * owned dbk_result; the PGresult is always cleared before returning.
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

/* Type OIDs (src/include/catalog/pg_type.dat). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_TIMESTAMP 1114
#define OID_TIMESTAMPTZ 1184
#define OID_JSONB 3802

#define PG_STACK_PARAMS 16        /* parameters handled without any allocation */
#define PG_STACK_SCRATCH 1024     /* bytes of parameter text kept on the stack */
#define PG_DEADLINE_GRACE_MS 2000 /* client deadline = statement_timeout + this */
#define PG_NO_LIMIT_DEADLINE_MS (10 * 60 * 1000) /* when statement_timeout is 0 */
#define PG_CANCEL_WAIT_MS 1000    /* a cancel attempt's own deadline (the caller never waits) */
#define PG_CANCEL_MAX 4           /* cancel attempts outstanding in the process at most */
#define PG_NAME_MAX 24

/* ---- the connection ---- */

struct pg_stmt {
    struct pg_stmt *hnext;      /* hash chain */
    struct pg_stmt *prev, *next; /* LRU list, head = most recent */
    uint64_t hash;
    size_t sql_len;
    size_t nsig;
    char *sql; /* these two point into the same allocation */
    char *sig;
    char name[PG_NAME_MAX];
};

typedef struct pg_conn {
    PGconn *conn; /* NULL once broken and closed */
    bool broken;
    dbk__owner owner; /* the process that opened it: a forked child never touches conn */
    bool sets_via_sql; /* the startup `options` were refused or ignored */
    bool user_datestyle, user_timezone; /* set by the caller's own `options` */
    int statement_timeout_ms;
    int lock_timeout_ms;
    int connect_timeout_ms;
    int server_version_num;
    char server_version[32];

    /* Prepared-statement cache: chained hash + LRU list. */
    size_t cache_cap;
    struct pg_stmt **buckets;
    size_t nbuckets; /* power of two */
    size_t nstmts;
    struct pg_stmt *lru_head, *lru_tail;
    uint64_t next_id;
    /* Evicted statements still to DEALLOCATE (sent with the next prepare
     * outside a transaction block), or all of them. */
    char (*pending)[PG_NAME_MAX];
    size_t npending, cap_pending;
    bool pending_all;

    /* Reused buffers for statements with many parameters or long texts. */
    char *scratch;
    size_t scratch_cap;
    const char **pvals;
    int *plens, *pfmts;
    Oid *ptypes;
    char *psig;
    size_t pcap;
} pg_conn;

/* ---- small helpers ---- */

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

static locale_t get_c_locale(void)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale;
}

/* Copies a libpq message into dst, folding newlines and tabs into single
 * spaces, dropping a leading "ERROR:  " / "FATAL:  " and trailing blanks. */
static void clean_message(char *dst, size_t size, const char *src)
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
static char *redact_dup(const char *src, const char *secret)
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
static int wait_fd(int fd, short events, int64_t deadline_ns)
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

static int64_t deadline_after_ms(int64_t ms)
{
    return dbk__now_ns() + ms * 1000000LL;
}

/* Client-side bound for one statement. */
static int64_t stmt_deadline(const pg_conn *pc)
{
    if (pc->statement_timeout_ms > 0)
        return deadline_after_ms((int64_t)pc->statement_timeout_ms + PG_DEADLINE_GRACE_MS);
    return deadline_after_ms(PG_NO_LIMIT_DEADLINE_MS);
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
        if (wait_fd(fd, POLLOUT, j->deadline_ns) <= 0)
            goto done;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
            goto done;
    }
    if (send(fd, msg, sizeof msg, MSG_NOSIGNAL) != (ssize_t)sizeof msg)
        goto done;
    for (;;) {
        int ev = wait_fd(fd, POLLIN, j->deadline_ns);
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
    j->deadline_ns = deadline_after_ms(PG_CANCEL_WAIT_MS);

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

/* ---- the statement cache ---- */

static uint64_t hash_key(const char *sql, size_t len, const char *sig, size_t nsig)
{
    /* FNV-1a, 64-bit: a few ns per byte, no tables, good enough for SQL
     * texts that differ anywhere. */
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)sql[i];
        h *= 1099511628211ULL;
    }
    h ^= 0xff;
    h *= 1099511628211ULL;
    for (size_t i = 0; i < nsig; i++) {
        h ^= (unsigned char)sig[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void lru_unlink(pg_conn *pc, struct pg_stmt *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        pc->lru_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        pc->lru_tail = s->prev;
    s->prev = s->next = NULL;
}

static void lru_push_front(pg_conn *pc, struct pg_stmt *s)
{
    s->prev = NULL;
    s->next = pc->lru_head;
    if (pc->lru_head)
        pc->lru_head->prev = s;
    pc->lru_head = s;
    if (!pc->lru_tail)
        pc->lru_tail = s;
}

static struct pg_stmt *cache_find(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                  const char *sig, size_t nsig)
{
    if (!pc->buckets)
        return NULL;
    for (struct pg_stmt *s = pc->buckets[h & (pc->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && s->sql_len == len && s->nsig == nsig &&
            memcmp(s->sql, sql, len) == 0 && memcmp(s->sig, sig, nsig) == 0)
            return s;
    return NULL;
}

static void cache_remove(pg_conn *pc, struct pg_stmt *s)
{
    struct pg_stmt **pp = &pc->buckets[s->hash & (pc->nbuckets - 1)];
    while (*pp && *pp != s)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = s->hnext;
    lru_unlink(pc, s);
    pc->nstmts--;
}

/* Forgets every cached statement without telling the server (it already
 * dropped them, or will with DEALLOCATE ALL). */
static void cache_clear(pg_conn *pc)
{
    struct pg_stmt *s = pc->lru_head;
    while (s) {
        struct pg_stmt *n = s->next;
        free(s);
        s = n;
    }
    pc->lru_head = pc->lru_tail = NULL;
    if (pc->buckets)
        memset(pc->buckets, 0, pc->nbuckets * sizeof *pc->buckets);
    pc->nstmts = 0;
}

/* Queues a statement name for DEALLOCATE. On ENOMEM the name is dropped
 * and DEALLOCATE ALL is queued instead, which is always correct. */
static void pending_push(pg_conn *pc, const char *name)
{
    if (pc->pending_all)
        return;
    if (pc->npending == pc->cap_pending) {
        size_t cap = pc->cap_pending ? pc->cap_pending * 2 : 8;
        void *p = realloc(pc->pending, cap * sizeof *pc->pending);
        if (!p) {
            pc->pending_all = true;
            return;
        }
        pc->pending = p;
        pc->cap_pending = cap;
    }
    dbk__strlcpy(pc->pending[pc->npending++], name, PG_NAME_MAX);
}

/* Makes room for one more statement; evicts the least recently used. */
static void cache_make_room(pg_conn *pc)
{
    while (pc->nstmts >= pc->cache_cap && pc->lru_tail) {
        struct pg_stmt *victim = pc->lru_tail;
        pending_push(pc, victim->name);
        cache_remove(pc, victim);
        free(victim);
    }
}

/* A new entry, not yet in the cache (inserted once PREPARE succeeded). */
static struct pg_stmt *stmt_new(pg_conn *pc, uint64_t h, const char *sql, size_t len,
                                const char *sig, size_t nsig)
{
    struct pg_stmt *s = malloc(sizeof *s + len + 1 + nsig + 1);
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s);
    s->hash = h;
    s->sql_len = len;
    s->nsig = nsig;
    s->sql = (char *)(s + 1);
    memcpy(s->sql, sql, len);
    s->sql[len] = '\0';
    s->sig = s->sql + len + 1;
    memcpy(s->sig, sig, nsig);
    s->sig[nsig] = '\0';
    snprintf(s->name, sizeof s->name, "dbk_%" PRIu64, ++pc->next_id);
    return s;
}

static bool cache_insert(pg_conn *pc, struct pg_stmt *s)
{
    if (!pc->buckets) {
        size_t n = 16;
        while (n < pc->cache_cap * 2)
            n *= 2;
        pc->buckets = calloc(n, sizeof *pc->buckets);
        if (!pc->buckets)
            return false;
        pc->nbuckets = n;
    }
    struct pg_stmt **b = &pc->buckets[s->hash & (pc->nbuckets - 1)];
    s->hnext = *b;
    *b = s;
    lru_push_front(pc, s);
    pc->nstmts++;
    return true;
}

/* ---- connection state ---- */

static void mark_broken(pg_conn *pc)
{
    pc->broken = true;
    if (pc->conn && !dbk__owner_forked(&pc->owner)) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }
    /* The server session is gone and its statements with it. */
    cache_clear(pc);
    pc->npending = 0;
    pc->pending_all = false;
}

static dbk_rc broken_err(dbk_error *err)
{
    dbk__err(err, DBK_ECONN_LOST,
             "the connection is broken (an earlier operation lost it or timed out)");
    dbk__err_hint(err, "close it and open a new one; a pool replaces broken connections itself");
    return DBK_ECONN_LOST;
}

/* The connection broke under us: record libpq's reason. */
static dbk_rc lost(pg_conn *pc, dbk_error *err)
{
    char msg[DBK_ERROR_MESSAGE_MAX - 64];
    clean_message(msg, sizeof msg, pc->conn ? PQerrorMessage(pc->conn) : "");
    dbk__err(err, DBK_ECONN_LOST, "connection to the server was lost%s%s", msg[0] ? ": " : "",
             msg);
    dbk__err_default_hint(err);
    mark_broken(pc);
    return DBK_ECONN_LOST;
}

/* The client deadline passed: cancel (bounded), close, DBK_ETIMEOUT. */
static dbk_rc timed_out(pg_conn *pc, bool cancel, int64_t waited_ms, dbk_error *err)
{
    if (cancel && pc->conn)
        cancel_bounded(pc->conn);
    mark_broken(pc);
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
static dbk_rc flush_out(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                        dbk_error *err)
{
    for (;;) {
        int f = PQflush(pc->conn);
        if (f == 0)
            return DBK_OK;
        if (f < 0)
            return lost(pc, err);
        int ev = wait_fd(PQsocket(pc->conn), POLLIN | POLLOUT, deadline);
        if (ev == 0)
            return timed_out(pc, cancel, budget_ms, err);
        if (ev < 0)
            return lost(pc, err);
        if ((ev & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(pc->conn))
            return lost(pc, err);
    }
}

/* Waits until PQgetResult will not block. */
static dbk_rc await_ready(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                          dbk_error *err)
{
    while (PQisBusy(pc->conn)) {
        int ev = wait_fd(PQsocket(pc->conn), POLLIN, deadline);
        if (ev == 0)
            return timed_out(pc, cancel, budget_ms, err);
        if (ev < 0)
            return lost(pc, err);
        if (!PQconsumeInput(pc->conn)) {
            /* The server may have said why before closing (57P01...):
             * a parsed error result takes precedence over "lost". */
            if (!PQisBusy(pc->conn))
                break;
            return lost(pc, err);
        }
    }
    return DBK_OK;
}

static bool is_error_status(ExecStatusType st)
{
    return st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR ||
           st == PGRES_PIPELINE_ABORTED;
}

/* Notices commands that drop our prepared statements behind our back. */
static void note_command(pg_conn *pc, const PGresult *r)
{
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return;
    const char *tag = PQcmdStatus((PGresult *)r);
    if (tag && (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0)) {
        cache_clear(pc);
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
            return lost(pc, err);
        int ev = wait_fd(PQsocket(pc->conn), POLLIN, deadline);
        if (ev == 0)
            return timed_out(pc, true, budget_ms, err);
        if (ev < 0 || !PQconsumeInput(pc->conn))
            return lost(pc, err);
    }
}

/* Collects every result of the command in flight until libpq says the
 * command is complete. *out gets the first error, else the first result;
 * every other result is cleared. *copy_refused tells that a COPY was
 * refused (the caller reports misuse rather than the server's complaint). */
static dbk_rc collect(pg_conn *pc, int64_t deadline, int64_t budget_ms, bool cancel,
                      PGresult **out, bool *copy_refused, dbk_error *err)
{
    PGresult *keep = NULL;
    *out = NULL;
    for (;;) {
        dbk_rc rc = await_ready(pc, deadline, budget_ms, cancel, err);
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
                    rc = lost(pc, err);
                else
                    rc = flush_out(pc, deadline, budget_ms, true, err);
            } else if (st == PGRES_COPY_OUT) {
                rc = drain_copy_out(pc, deadline, budget_ms, err);
            } else {
                mark_broken(pc);
                rc = dbk__err(err, DBK_EMISUSE, "replication (COPY BOTH) is not supported");
            }
            if (rc) {
                PQclear(keep);
                return rc;
            }
            continue;
        }
        note_command(pc, r);
        if (!keep) {
            keep = r;
        } else if (is_error_status(st) && !is_error_status(PQresultStatus(keep))) {
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
static dbk_rc result_error(pg_conn *pc, const PGresult *res, dbk_error *err)
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
        clean_message(msg, sizeof msg, primary);
    else {
        const char *m = PQresultErrorMessage(res);
        if ((!m || !*m) && pc->conn)
            m = PQerrorMessage(pc->conn);
        clean_message(msg, sizeof msg, m);
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
            clean_message(err->hint, sizeof err->hint, f);
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
        mark_broken(pc);
    return rc;
}

/* ---- results ---- */

enum col_kind { K_TEXT, K_INT, K_DOUBLE, K_BOOL, K_BYTEA, K_TS, K_JSON };

static unsigned char kind_of(Oid t)
{
    switch (t) {
    case OID_INT8:
    case OID_INT4:
    case OID_INT2:
    case OID_OID:
        return K_INT;
    case OID_FLOAT4:
    case OID_FLOAT8:
        return K_DOUBLE;
    case OID_BOOL:
        return K_BOOL;
    case OID_BYTEA:
        return K_BYTEA;
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
        return K_TS;
    case OID_JSON:
    case OID_JSONB:
        return K_JSON;
    default:
        return K_TEXT;
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes bytea text output: hex ("\x0aff") or the old escape format. */
static dbk_rc decode_bytea(dbk_result *r, struct dbk__cell *c, const char *v, size_t len)
{
    if (len >= 2 && v[0] == '\\' && v[1] == 'x') {
        if ((len - 2) % 2)
            return DBK_EINTERNAL;
        size_t n = (len - 2) / 2;
        unsigned char *d = (unsigned char *)dbk__result_alloc_bytes(r, c, DBK_TYPE_BLOB, n);
        if (!d)
            return DBK_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            int hi = hexval((unsigned char)v[2 + 2 * i]), lo = hexval((unsigned char)v[3 + 2 * i]);
            if (hi < 0 || lo < 0)
                return DBK_EINTERNAL;
            d[i] = (unsigned char)(hi << 4 | lo);
        }
        return DBK_OK;
    }
    /* Escape format: "\\\\" is a backslash, "\\ooo" an octal byte. */
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        if (v[i] != '\\') {
            i++;
        } else if (i + 1 < len && v[i + 1] == '\\') {
            i += 2;
        } else {
            if (i + 4 > len || v[i + 1] < '0' || v[i + 1] > '3' || v[i + 2] < '0' ||
                v[i + 2] > '7' || v[i + 3] < '0' || v[i + 3] > '7')
                return DBK_EINTERNAL;
            i += 4;
        }
    }
    unsigned char *d = (unsigned char *)dbk__result_alloc_bytes(r, c, DBK_TYPE_BLOB, n);
    if (!d)
        return DBK_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (v[i] != '\\') {
            d[o++] = (unsigned char)v[i++];
        } else if (v[i + 1] == '\\') {
            d[o++] = '\\';
            i += 2;
        } else {
            d[o++] = (unsigned char)((v[i + 1] - '0') * 64 + (v[i + 2] - '0') * 8 +
                                     (v[i + 3] - '0'));
            i += 4;
        }
    }
    return DBK_OK;
}

static bool parse_int(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return false;
    *out = (int64_t)x;
    return true;
}

static bool parse_double(const char *v, double *out)
{
    char *end;
    locale_t loc = get_c_locale();
    errno = 0;
    double d = loc ? strtod_l(v, &end, loc) : strtod(v, &end);
    if (end == v || *end)
        return false;
    /* ERANGE for subnormals is fine: the value is still the closest one. */
    *out = d;
    return true;
}

static int64_t affected_of(PGresult *res)
{
    const char *tag = PQcmdStatus(res);
    if (!tag)
        return 0;
    if (strncmp(tag, "INSERT ", 7) && strncmp(tag, "UPDATE ", 7) && strncmp(tag, "DELETE ", 7) &&
        strncmp(tag, "MERGE ", 6) && strncmp(tag, "COPY ", 5))
        return 0;
    int64_t n;
    return parse_int(PQcmdTuples(res), &n) ? n : 0;
}

/* Converts a successful PGresult into an owned dbk_result. */
static dbk_rc build_result(PGresult *res, dbk_result **out, dbk_error *err)
{
    int nf = PQnfields(res);
    int nt = PQntuples(res);
    const char *stack_names[16];
    unsigned char stack_kinds[64];
    const char **names = nf <= 16 ? stack_names : malloc((size_t)nf * sizeof *names);
    unsigned char *kinds = nf <= 64 ? stack_kinds : malloc((size_t)nf);
    dbk_result *r = NULL;
    dbk_rc rc = DBK_ENOMEM;
    if (!names || !kinds)
        goto done;
    for (int i = 0; i < nf; i++) {
        names[i] = PQfname(res, i);
        kinds[i] = kind_of(PQftype(res, i));
    }
    r = dbk__result_new(nf, names, NULL);
    if (!r)
        goto done;
    r->affected = affected_of(res);
    if (nf == 0) {
        r->nrows = (size_t)nt; /* SELECT with no columns still counts rows */
        rc = DBK_OK;
        goto done;
    }
    size_t bytes = 0;
    for (int j = 0; j < nf; j++)
        if (kinds[j] == K_TEXT || kinds[j] == K_JSON || kinds[j] == K_BYTEA || kinds[j] == K_TS)
            for (int i = 0; i < nt; i++)
                bytes += (size_t)PQgetlength(res, i, j) + 1;
    if (dbk__result_reserve(r, (size_t)nt, bytes) != DBK_OK)
        goto done;
    int bad_col = 0;
    for (int i = 0; i < nt; i++) {
        struct dbk__cell *row = dbk__result_add_row(r);
        if (!row)
            goto done;
        for (int j = 0; j < nf; j++) {
            if (PQgetisnull(res, i, j))
                continue; /* cells start as NULL */
            struct dbk__cell *c = row + j;
            bad_col = j;
            const char *v = PQgetvalue(res, i, j);
            size_t len = (size_t)PQgetlength(res, i, j);
            switch (kinds[j]) {
            case K_INT:
                if (!parse_int(v, &c->v.i)) {
                    rc = DBK_EINTERNAL;
                    goto bad_value;
                }
                c->type = DBK_TYPE_INT64;
                break;
            case K_DOUBLE:
                if (!parse_double(v, &c->v.d)) {
                    rc = DBK_EINTERNAL;
                    goto bad_value;
                }
                c->type = DBK_TYPE_DOUBLE;
                break;
            case K_BOOL:
                c->type = DBK_TYPE_BOOL;
                c->v.i = v[0] == 't';
                break;
            case K_BYTEA: {
                dbk_rc brc = decode_bytea(r, c, v, len);
                if (brc == DBK_EINTERNAL) {
                    rc = brc;
                    goto bad_value;
                }
                if (brc)
                    goto done; /* rc is still DBK_ENOMEM */
                break;
            }
            case K_TS:
                /* 'infinity', BC dates and years past 9999 stay text. */
                if (dbk_timestamp_parse(v, len, &c->v.i) == DBK_OK) {
                    c->type = DBK_TYPE_TIMESTAMP;
                    break;
                }
                if (dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, v, len))
                    goto done;
                break;
            case K_JSON:
                if (dbk__result_set_bytes(r, c, DBK_TYPE_JSON, v, len))
                    goto done;
                break;
            default:
                if (dbk__result_set_bytes(r, c, DBK_TYPE_TEXT, v, len))
                    goto done;
                break;
            }
        }
    }
    rc = DBK_OK;
    goto done;
bad_value:
    dbk__err(err, rc, "cannot read a value of column \"%s\" (type oid %u) sent by the server",
             PQfname(res, bad_col), (unsigned)PQftype(res, bad_col));
    dbk_result_free(r);
    r = NULL;
    if (names != stack_names)
        free(names);
    if (kinds != stack_kinds)
        free(kinds);
    return rc;
done:
    if (names != stack_names)
        free(names);
    if (kinds != stack_kinds)
        free(kinds);
    if (rc != DBK_OK) {
        dbk_result_free(r);
        return dbk__err(err, DBK_ENOMEM, "out of memory reading a result");
    }
    *out = r;
    return DBK_OK;
}

static dbk_rc copy_refused_err(dbk_error *err)
{
    dbk__err(err, DBK_EMISUSE, "COPY FROM STDIN / TO STDOUT is not supported");
    dbk__err_hint(err, "insert rows with parameterized INSERT statements (or a multi-row "
                       "INSERT ... SELECT FROM unnest($1::text[]))");
    return DBK_EMISUSE;
}

/* Turns the outcome of one statement into the driver's answer. Always
 * clears res. */
static dbk_rc finish(pg_conn *pc, PGresult *res, bool copy_refused, dbk_result **out,
                     int64_t *affected, dbk_error *err)
{
    if (copy_refused) {
        PQclear(res);
        if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD)
            return lost(pc, err);
        return copy_refused_err(err);
    }
    if (!res) {
        if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD)
            return lost(pc, err);
        return dbk__err(err, DBK_EINTERNAL, "the server sent no result");
    }
    ExecStatusType st = PQresultStatus(res);
    dbk_rc rc;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY ||
        st == PGRES_SINGLE_TUPLE) {
        if (out) {
            rc = build_result(res, out, err);
            if (rc == DBK_OK && affected)
                *affected = (*out)->affected;
        } else {
            rc = DBK_OK;
            if (affected)
                *affected = affected_of(res);
        }
    } else {
        rc = result_error(pc, res, err);
    }
    PQclear(res);
    return rc;
}

/* ---- parameters ---- */

struct pg_params {
    int n;
    const char **values;
    int *lengths;
    int *formats;
    Oid *types;
    char *sig; /* one character per parameter: the cache key's type part */
};

static char *fmt_double(double d, char *buf, size_t size)
{
    if (isnan(d) || isinf(d)) {
        dbk__strlcpy(buf, isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity", size);
        return buf;
    }
    locale_t loc = get_c_locale();
    locale_t old = loc ? uselocale(loc) : (locale_t)0;
    snprintf(buf, size, "%.17g", d);
    if (loc)
        uselocale(old);
    return buf;
}

/* Text sizes reserved in the scratch buffer per parameter type. */
static size_t scratch_need(const dbk_value *v)
{
    switch (v->type) {
    case DBK_TYPE_INT64:
        return 24;
    case DBK_TYPE_DOUBLE:
        return 32;
    case DBK_TYPE_TIMESTAMP:
        return 40;
    case DBK_TYPE_TEXT:
    case DBK_TYPE_JSON:
        return v->u.bytes.len + 1;
    default:
        return 0;
    }
}

static bool grow_param_arrays(pg_conn *pc, size_t n)
{
    if (n <= pc->pcap)
        return true;
    const char **v = realloc(pc->pvals, n * sizeof *v);
    if (!v)
        return false;
    pc->pvals = v;
    int *l = realloc(pc->plens, n * sizeof *l);
    if (!l)
        return false;
    pc->plens = l;
    int *f = realloc(pc->pfmts, n * sizeof *f);
    if (!f)
        return false;
    pc->pfmts = f;
    Oid *t = realloc(pc->ptypes, n * sizeof *t);
    if (!t)
        return false;
    pc->ptypes = t;
    char *s = realloc(pc->psig, n + 1);
    if (!s)
        return false;
    pc->psig = s;
    pc->pcap = n;
    return true;
}

static dbk_rc too_large(dbk_error *err)
{
    dbk__err_hint(err, "store large objects outside the database (a file or object store) and "
                       "keep their path or key in the row, or split the value");
    return DBK_EINVALID;
}

/* Everything that can be said about a statement's parameters without
 * touching the connection, checked before a byte is queued: lengths first,
 * from the length words alone (a value over the limit is refused without
 * being read, copied or allocated for), then NUL bytes in texts. Limits:
 * one value at most DBK__PG_MAX_VALUE bytes (the server's 1 GiB allocation
 * limit, less the 4-byte varlena header), and the whole Bind message at
 * most DBK__PG_MAX_MESSAGE; libpq itself would cut a text length to 32 bits
 * and send a prefix of the value as if it were all of it. */
static dbk_rc check_params(const dbk_value *params, size_t n, dbk_error *err)
{
    size_t total = 64 + 6 * n; /* names, counts, a format and a length word each */
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        if (v->type > DBK_TYPE_JSON)
            return dbk__err(err, DBK_EMISUSE, "parameter $%zu has an unknown type %d", i + 1,
                            (int)v->type);
        if (v->type != DBK_TYPE_TEXT && v->type != DBK_TYPE_JSON && v->type != DBK_TYPE_BLOB) {
            total += 40;
            continue;
        }
        if (!v->u.bytes.ptr && v->u.bytes.len)
            return dbk__err(err, DBK_EMISUSE, "parameter $%zu has a NULL pointer and length %zu",
                            i + 1, v->u.bytes.len);
        if (v->u.bytes.len > DBK__PG_MAX_VALUE) {
            dbk__err(err, DBK_EINVALID,
                     "%s parameter $%zu is %zu bytes; PostgreSQL accepts at most %zu bytes "
                     "(1 GiB) in one value",
                     dbk_type_name(v->type), i + 1, v->u.bytes.len, DBK__PG_MAX_VALUE);
            return too_large(err);
        }
        total += v->u.bytes.len;
        if (total > DBK__PG_MAX_MESSAGE) {
            dbk__err(err, DBK_EINVALID,
                     "parameters $1..$%zu add up to more than %zu bytes, the most PostgreSQL "
                     "accepts in one statement (1 GiB)",
                     i + 1, DBK__PG_MAX_MESSAGE);
            return too_large(err);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        if ((v->type == DBK_TYPE_TEXT || v->type == DBK_TYPE_JSON) && v->u.bytes.len &&
            memchr(v->u.bytes.ptr, '\0', v->u.bytes.len)) {
            dbk__err(err, DBK_EINVALID,
                     "%s parameter $%zu contains a NUL byte, which PostgreSQL cannot store",
                     v->type == DBK_TYPE_JSON ? "json" : "text", i + 1);
            dbk__err_hint(err, "store binary data as a blob (dbk_blob) in a bytea column");
            return DBK_EINVALID;
        }
    }
    return DBK_OK;
}

/* Converts dbk_values into libpq's parallel arrays. Text forms are written
 * into `scratch` (the stack buffer when it fits, else the connection's). */
static dbk_rc bind_params(pg_conn *pc, const dbk_value *params, size_t n, struct pg_params *pp,
                          char *stack_scratch, dbk_error *err)
{
    dbk_rc crc = check_params(params, n, err);
    if (crc)
        return crc;
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += scratch_need(&params[i]);
    char *scratch = stack_scratch;
    if (need > PG_STACK_SCRATCH) {
        if (need > pc->scratch_cap) {
            char *s = realloc(pc->scratch, need);
            if (!s)
                return dbk__err(err, DBK_ENOMEM, "out of memory binding %zu parameter bytes", need);
            pc->scratch = s;
            pc->scratch_cap = need;
        }
        scratch = pc->scratch;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const dbk_value *v = &params[i];
        char *p = scratch + off;
        pp->lengths[i] = 0;
        pp->formats[i] = 0;
        switch (v->type) {
        case DBK_TYPE_NULL:
            pp->values[i] = NULL;
            pp->types[i] = 0;
            pp->sig[i] = 'u';
            break;
        case DBK_TYPE_BOOL:
            pp->values[i] = v->u.b ? "t" : "f";
            pp->types[i] = OID_BOOL;
            pp->sig[i] = 'b';
            break;
        case DBK_TYPE_INT64:
            snprintf(p, 24, "%" PRId64, v->u.i);
            pp->values[i] = p;
            pp->types[i] = OID_INT8;
            pp->sig[i] = 'i';
            off += 24;
            break;
        case DBK_TYPE_DOUBLE:
            pp->values[i] = fmt_double(v->u.d, p, 32);
            pp->types[i] = OID_FLOAT8;
            pp->sig[i] = 'd';
            off += 32;
            break;
        case DBK_TYPE_TIMESTAMP:
            if (dbk_timestamp_format(v->u.i, p, 40) != DBK_OK)
                return dbk__err(err, DBK_EINVALID,
                                "timestamp parameter $%zu (%" PRId64
                                " us) is outside the years 1..9999",
                                i + 1, v->u.i);
            pp->values[i] = p;
            pp->types[i] = OID_TIMESTAMPTZ;
            pp->sig[i] = 's';
            off += 40;
            break;
        case DBK_TYPE_TEXT:
        case DBK_TYPE_JSON:
            /* libpq takes text parameters as C strings: copy to terminate.
             * Type "unknown" (0) lets the server infer it from context. */
            if (v->u.bytes.len)
                memcpy(p, v->u.bytes.ptr, v->u.bytes.len);
            p[v->u.bytes.len] = '\0';
            pp->values[i] = p;
            pp->types[i] = 0;
            pp->sig[i] = 'u';
            off += v->u.bytes.len + 1;
            break;
        case DBK_TYPE_BLOB: /* length checked by check_params() */
            pp->values[i] = v->u.bytes.ptr ? (const char *)v->u.bytes.ptr : "";
            pp->lengths[i] = (int)v->u.bytes.len;
            pp->formats[i] = 1;
            pp->types[i] = OID_BYTEA;
            pp->sig[i] = 'y';
            break;
        }
    }
    pp->sig[n] = '\0';
    pp->n = (int)n;
    return DBK_OK;
}

/* ---- running statements ---- */

static bool conn_usable(const pg_conn *pc)
{
    return pc && pc->conn && !pc->broken && !dbk__owner_forked(&pc->owner);
}

/* Why conn_usable() said no: used in a forked child, or broken. */
static dbk_rc unusable_err(const pg_conn *pc, dbk_error *err)
{
    if (pc && dbk__owner_forked(&pc->owner))
        return dbk__owner_error(&pc->owner, "PostgreSQL connection", err);
    return broken_err(err);
}

static int64_t budget_of(int64_t deadline)
{
    int64_t ms = (deadline - dbk__now_ns()) / 1000000;
    return ms > 0 ? ms : 0;
}

/* One statement, unnamed (cache off, or ping). */
static dbk_rc exec_unnamed(pg_conn *pc, const char *sql, const struct pg_params *pp,
                           int64_t deadline, PGresult **res, bool *copy_refused, dbk_error *err)
{
    int64_t budget = budget_of(deadline);
    if (!PQsendQueryParams(pc->conn, sql, pp->n, pp->types, pp->values, pp->lengths, pp->formats,
                           0))
        return lost(pc, err);
    dbk_rc rc = flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    return collect(pc, deadline, budget, true, res, copy_refused, err);
}

/* A cached statement: Bind/Execute/Sync, one round trip. */
static dbk_rc exec_prepared(pg_conn *pc, const struct pg_stmt *s, const struct pg_params *pp,
                            int64_t deadline, PGresult **res, bool *copy_refused, dbk_error *err)
{
    int64_t budget = budget_of(deadline);
    if (!PQsendQueryPrepared(pc->conn, s->name, pp->n, pp->values, pp->lengths, pp->formats, 0))
        return lost(pc, err);
    dbk_rc rc = flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    return collect(pc, deadline, budget, true, res, copy_refused, err);
}

/* Next pipeline result (NULL separators skipped). */
static dbk_rc pipeline_next(pg_conn *pc, int64_t deadline, int64_t budget, PGresult **r,
                            dbk_error *err)
{
    for (int guard = 0; guard < 1000000; guard++) {
        dbk_rc rc = await_ready(pc, deadline, budget, true, err);
        if (rc)
            return rc;
        *r = PQgetResult(pc->conn);
        if (*r)
            return DBK_OK;
        if (PQstatus(pc->conn) == CONNECTION_BAD)
            return lost(pc, err);
    }
    mark_broken(pc);
    return dbk__err(err, DBK_EINTERNAL, "the pipeline produced no result");
}

/* A statement not in the cache: one pipelined round trip of
 *   [DEALLOCATE evicted...; Sync] Parse(name)/Bind/Execute; Sync
 * The DEALLOCATEs get their own Sync, so their failure (a statement already
 * gone) cannot affect the statement; they are only sent outside a
 * transaction block, where a failure cannot abort the caller's transaction. */
static dbk_rc exec_miss(pg_conn *pc, struct pg_stmt *s, const struct pg_params *pp,
                        int64_t deadline, PGresult **res, dbk_error *err)
{
    int64_t budget = budget_of(deadline);
    PGresult *r = NULL, *prep = NULL, *exec = NULL;
    dbk_rc rc = DBK_OK;
    size_t ndealloc = 0;
    bool dealloc_all = false;
    if (PQtransactionStatus(pc->conn) == PQTRANS_IDLE) {
        if (pc->pending_all)
            dealloc_all = true;
        else
            ndealloc = pc->npending; /* all of them: a few bytes each */
    }
    if (!PQenterPipelineMode(pc->conn))
        goto lost_conn;
    size_t nsent = 0;
    if (dealloc_all) {
        if (!PQsendQueryParams(pc->conn, "DEALLOCATE ALL", 0, NULL, NULL, NULL, NULL, 0))
            goto lost_conn;
        nsent = 1;
    } else {
        for (size_t i = 0; i < ndealloc; i++) {
            char q[PG_NAME_MAX + 16];
            snprintf(q, sizeof q, "DEALLOCATE %s", pc->pending[i]);
            if (!PQsendQueryParams(pc->conn, q, 0, NULL, NULL, NULL, NULL, 0))
                goto lost_conn;
            nsent++;
        }
    }
    if (nsent && !PQpipelineSync(pc->conn))
        goto lost_conn;
    if (!PQsendPrepare(pc->conn, s->name, s->sql, pp->n, pp->types) ||
        !PQsendQueryPrepared(pc->conn, s->name, pp->n, pp->values, pp->lengths, pp->formats, 0) ||
        !PQpipelineSync(pc->conn))
        goto lost_conn;
    if ((rc = flush_out(pc, deadline, budget, true, err)))
        goto fail;

    /* The DEALLOCATE group: one result each, then its Sync. */
    size_t ok_upto = 0; /* leading pending names that are gone for sure */
    bool all_ok = true;
    for (size_t i = 0; i < nsent; i++) {
        if ((rc = pipeline_next(pc, deadline, budget, &r, err)))
            goto fail;
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (ok && all_ok)
            ok_upto = i + 1;
        else
            all_ok = false;
    }
    if (nsent) {
        if ((rc = pipeline_next(pc, deadline, budget, &r, err)))
            goto fail;
        PQclear(r); /* PGRES_PIPELINE_SYNC */
        if (dealloc_all) {
            if (ok_upto) {
                /* Statements cached since DEALLOCATE ALL was queued are
                 * gone as well. */
                cache_clear(pc);
                pc->pending_all = false;
                pc->npending = 0;
            }
        } else if (ok_upto) {
            /* Failed ones stay queued, in order, for a later attempt. */
            memmove(pc->pending, pc->pending + ok_upto,
                    (pc->npending - ok_upto) * sizeof *pc->pending);
            pc->npending -= ok_upto;
        }
    }

    /* Parse, then Bind/Execute (rows, an error, or "aborted" when Parse
     * failed), then the Sync. */
    if ((rc = pipeline_next(pc, deadline, budget, &prep, err)))
        goto fail;
    for (int n = 0;; n++) {
        if ((rc = pipeline_next(pc, deadline, budget, &r, err)))
            goto fail;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH || n > 8) {
            /* COPY slipped past the check in pg_run (libpq cannot leave
             * COPY in pipeline mode), or a protocol surprise. */
            PQclear(r);
            mark_broken(pc);
            rc = dbk__err(err, DBK_EMISUSE, "unexpected %s in a pipelined statement; the "
                                            "connection was closed",
                          PQresStatus(st));
            goto fail;
        }
        if (!exec)
            exec = r;
        else
            PQclear(r);
    }
    if (!PQexitPipelineMode(pc->conn)) {
        mark_broken(pc);
        rc = dbk__err(err, DBK_EINTERNAL, "could not leave pipeline mode");
        goto fail;
    }
    if (PQresultStatus(prep) == PGRES_COMMAND_OK) {
        PQclear(prep);
        if (!cache_insert(pc, s)) {
            pending_push(pc, s->name); /* cannot track it: have it dropped */
            free(s);
        }
        if (exec)
            note_command(pc, exec);
        *res = exec;
    } else {
        free(s);
        PQclear(exec); /* PGRES_PIPELINE_ABORTED */
        *res = prep;
    }
    return DBK_OK;

lost_conn:
    rc = lost(pc, err);
fail:
    PQclear(prep);
    PQclear(exec);
    free(s);
    return rc;
}

/* True when the statement's first keyword is COPY (after blanks and
 * comments). COPY FROM STDIN / TO STDOUT need a streaming API dbkit does
 * not have; refusing it before sending keeps the connection clean. */
static bool is_copy(const char *sql)
{
    const char *p = sql;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '(')
            p++;
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            if (!e)
                return false;
            p = e + 2;
        } else {
            break;
        }
    }
    return strncasecmp(p, "copy", 4) == 0 &&
           !((p[4] >= 'a' && p[4] <= 'z') || (p[4] >= 'A' && p[4] <= 'Z') ||
             (p[4] >= '0' && p[4] <= '9') || p[4] == '_' || p[4] == '$');
}

/* Statement vanished on the server (someone ran DEALLOCATE / DISCARD ALL),
 * or its result type changed under it after DDL: worth one transparent
 * retry when no transaction block is open. */
static bool stale_statement(const PGresult *res, bool *all_gone)
{
    if (!res || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return false;
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!st)
        return false;
    if (strcmp(st, "26000") == 0) {
        *all_gone = true;
        return true;
    }
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (strcmp(st, "0A000") == 0 && m && strstr(m, "cached plan must not change result type")) {
        *all_gone = false;
        return true;
    }
    return false;
}

/* The connection can take a new statement: usable, nothing in flight. */
static dbk_rc ready(pg_conn *pc, dbk_error *err)
{
    if (!conn_usable(pc))
        return unusable_err(pc, err);
    if (PQtransactionStatus(pc->conn) == PQTRANS_ACTIVE) {
        mark_broken(pc);
        return dbk__err(err, DBK_EINTERNAL, "a previous statement is still in flight");
    }
    return DBK_OK;
}

static dbk_rc pg_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    pg_conn *pc = impl;
    dbk_rc rc0 = ready(pc, err);
    if (rc0)
        return rc0;
    if (is_copy(sql))
        return copy_refused_err(err);

    const char *sv[PG_STACK_PARAMS];
    int sl[PG_STACK_PARAMS], sf[PG_STACK_PARAMS];
    Oid st[PG_STACK_PARAMS];
    char ssig[PG_STACK_PARAMS + 1];
    char scratch[PG_STACK_SCRATCH];
    struct pg_params pp = {0, sv, sl, sf, st, ssig};
    if (nparams > PG_STACK_PARAMS) {
        if (!grow_param_arrays(pc, nparams))
            return dbk__err(err, DBK_ENOMEM, "out of memory binding %zu parameters", nparams);
        pp.values = pc->pvals;
        pp.lengths = pc->plens;
        pp.formats = pc->pfmts;
        pp.types = pc->ptypes;
        pp.sig = pc->psig;
    }
    dbk_rc rc = bind_params(pc, params, nparams, &pp, scratch, err);
    if (rc)
        return rc;

    int64_t deadline = stmt_deadline(pc);
    PGresult *res = NULL;
    bool copy_refused = false;
    if (pc->cache_cap == 0) {
        rc = exec_unnamed(pc, sql, &pp, deadline, &res, &copy_refused, err);
        if (rc)
            return rc;
        return finish(pc, res, copy_refused, out, affected, err);
    }

    size_t len = strlen(sql);
    uint64_t h = hash_key(sql, len, pp.sig, nparams);
    for (int attempt = 0;; attempt++) {
        struct pg_stmt *s = cache_find(pc, h, sql, len, pp.sig, nparams);
        if (s) {
            if (pc->lru_head != s) {
                lru_unlink(pc, s);
                lru_push_front(pc, s);
            }
            rc = exec_prepared(pc, s, &pp, deadline, &res, &copy_refused, err);
            if (rc)
                return rc;
            bool all_gone = false;
            if (attempt == 0 && stale_statement(res, &all_gone)) {
                bool idle = PQtransactionStatus(pc->conn) == PQTRANS_IDLE;
                if (all_gone) {
                    /* Whatever dropped it probably dropped the others. */
                    cache_clear(pc);
                    pc->npending = 0;
                    pc->pending_all = true;
                } else {
                    pending_push(pc, s->name);
                    cache_remove(pc, s);
                    free(s);
                }
                if (idle) {
                    PQclear(res);
                    res = NULL;
                    continue;
                }
            }
            return finish(pc, res, copy_refused, out, affected, err);
        }
        cache_make_room(pc);
        s = stmt_new(pc, h, sql, len, pp.sig, nparams);
        if (!s)
            return dbk__err(err, DBK_ENOMEM, "out of memory caching a statement");
        rc = exec_miss(pc, s, &pp, deadline, &res, err); /* takes s */
        if (rc)
            return rc;
        return finish(pc, res, false, out, affected, err);
    }
}

/* ---- batches: many statements, one round trip ---- */

enum { B_SKIP = 0, B_UNNAMED = 1, B_HIT = 2, B_MISS = 3 };

struct bstate {
    unsigned char kind;
    uint64_t hash;
    char name[PG_NAME_MAX];
};

/* Forgets a statement this batch prepared whose Parse did not happen (it
 * may have been evicted again meanwhile: then there is nothing to do). */
static void cache_forget(pg_conn *pc, uint64_t h, const char *name)
{
    if (!pc->buckets)
        return;
    for (struct pg_stmt *s = pc->buckets[h & (pc->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && strcmp(s->name, name) == 0) {
            cache_remove(pc, s);
            free(s);
            return;
        }
}

/* The connection failed at item `from`: items from `from` on that were
 * sent (index < sent_end) have an unknown outcome, the others did not run.
 * The item at `from` gets rc itself when that is more precise (a timeout).
 * Items before `from` that were sent but never answered (the loss came
 * while the batch was still being sent) are unknown too. In an atomic
 * batch nothing is known to be committed, so the items that had answered
 * are unknown as well. */
static void batch_abandon(dbk__batch_item *items, const struct bstate *st, size_t from, size_t n,
                          size_t sent_end, bool atomic, dbk_rc rc, const dbk_error *why)
{
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        if (i < from) {
            if (atomic && it->rc == DBK_OK)
                dbk__batch_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the "
                                 "all-or-nothing batch committed (%s)",
                                 why->message);
            else if (it->rc == DBK_ENOT_RUN && !it->err) /* sent, never answered */
                dbk__batch_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the answer "
                                 "to this statement arrived (%s)",
                                 why->message);
        } else if (i < sent_end) {
            if (i == from && rc != DBK_ECONN_LOST)
                dbk__batch_fail(it, rc, why);
            else
                dbk__batch_failf(it, DBK_ECONN_LOST,
                                 "outcome unknown: the connection was lost before the answer "
                                 "to this statement arrived (%s)",
                                 why->message);
        } else {
            dbk__batch_failf(it, DBK_ENOT_RUN,
                             "not run: the connection was lost before it was sent (%s)",
                             why->message);
        }
    }
}

/* The batch's answer: the first statement that failed on its own. */
static dbk_rc batch_outcome(const dbk__batch_item *items, size_t n)
{
    dbk_rc any = DBK_OK;
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc != DBK_OK && items[i].rc != DBK_ENOT_RUN)
            return items[i].rc;
        if (items[i].rc == DBK_ENOT_RUN)
            any = DBK_ENOT_RUN;
    }
    return any;
}

/* How a pass over the batch is synced. */
enum bmode {
    BM_ATOMIC = 0,     /* one Sync: one implicit transaction, all or nothing */
    BM_OPTIMISTIC = 1, /* one Sync; on a failure the caller runs BM_EACH */
    BM_EACH = 2        /* a Sync after every statement: each stands alone */
};

/* One pass: sends the items not yet decided (kind != B_SKIP) in pipeline
 * mode - [Parse,] Bind/Execute [, Sync] each, Sync per mode - flushes once
 * and reads the answers in order. Statements come from the connection's
 * statement cache like single ones; a miss is prepared inside the
 * pipeline and cached at once, so a later entry with the same SQL reuses
 * it. *stmt_failed tells whether a statement failed on its own while the
 * connection stayed usable. */
static void pg_batch_pass(pg_conn *pc, dbk__batch_item *items, struct bstate *st, size_t n,
                          enum bmode mode, bool in_tx, bool mark_undone, bool *stmt_failed)
{
    dbk_error e;
    bool one_sync = mode != BM_EACH;
    bool atomic = mode == BM_ATOMIC;
    *stmt_failed = false;
    const char *sv[PG_STACK_PARAMS];
    int sl[PG_STACK_PARAMS], sf[PG_STACK_PARAMS];
    Oid sty[PG_STACK_PARAMS];
    char ssig[PG_STACK_PARAMS + 1];
    char scratch[PG_STACK_SCRATCH];
    struct pg_params pp = {0, sv, sl, sf, sty, ssig};
    size_t maxp = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].nparams > maxp)
            maxp = items[i].nparams;
    if (maxp > PG_STACK_PARAMS) {
        if (!grow_param_arrays(pc, maxp)) {
            dbk__err(&e, DBK_ENOMEM, "out of memory binding %zu parameters", maxp);
            for (size_t i = 0; i < n; i++)
                if (st[i].kind != B_SKIP)
                    dbk__batch_fail(&items[i], DBK_ENOMEM, &e);
            return;
        }
        pp.values = pc->pvals;
        pp.lengths = pc->plens;
        pp.formats = pc->pfmts;
        pp.types = pc->ptypes;
        pp.sig = pc->psig;
    }
    dbk_rc rc;
    if (!PQenterPipelineMode(pc->conn)) {
        lost(pc, &e);
        batch_abandon(items, st, 0, n, 0, one_sync, DBK_ECONN_LOST, &e);
        return;
    }
    size_t nsent = 0;
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        pp.n = 0;
        rc = bind_params(pc, it->params, it->nparams, &pp, scratch, &e);
        if (rc) {
            dbk__batch_fail(it, rc, &e);
            st[i].kind = B_SKIP;
            if (atomic) {
                for (size_t k = 0; k < n; k++)
                    if (k != i)
                        dbk__batch_failf(&items[k], DBK_ENOT_RUN,
                                         "not run: statement %zu of the all-or-nothing batch "
                                         "has a bad parameter",
                                         i);
                /* The statements before it sit unsynced in libpq's
                 * buffer and cannot be taken back: the connection is
                 * closed rather than sent on. */
                mark_broken(pc);
                return;
            }
            continue;
        }
        int ok;
        st[i].kind = B_UNNAMED;
        if (pc->cache_cap == 0) {
            ok = PQsendQueryParams(pc->conn, it->sql, pp.n, pp.types, pp.values, pp.lengths,
                                   pp.formats, 0);
        } else {
            size_t len = strlen(it->sql);
            uint64_t h = hash_key(it->sql, len, pp.sig, it->nparams);
            struct pg_stmt *s = cache_find(pc, h, it->sql, len, pp.sig, it->nparams);
            if (s) {
                if (pc->lru_head != s) {
                    lru_unlink(pc, s);
                    lru_push_front(pc, s);
                }
                st[i].kind = B_HIT;
                ok = PQsendQueryPrepared(pc->conn, s->name, pp.n, pp.values, pp.lengths,
                                         pp.formats, 0);
            } else {
                cache_make_room(pc);
                s = stmt_new(pc, h, it->sql, len, pp.sig, it->nparams);
                if (s && cache_insert(pc, s)) {
                    st[i].kind = B_MISS;
                    st[i].hash = h;
                    memcpy(st[i].name, s->name, sizeof st[i].name);
                    ok = PQsendPrepare(pc->conn, s->name, s->sql, pp.n, pp.types) &&
                         PQsendQueryPrepared(pc->conn, s->name, pp.n, pp.values, pp.lengths,
                                             pp.formats, 0);
                } else {
                    free(s);
                    ok = PQsendQueryParams(pc->conn, it->sql, pp.n, pp.types, pp.values,
                                           pp.lengths, pp.formats, 0);
                }
            }
        }
        if (!ok || (!one_sync && !PQpipelineSync(pc->conn))) {
            lost(pc, &e);
            batch_abandon(items, st, i, n, i, one_sync, DBK_ECONN_LOST, &e);
            return;
        }
        nsent++;
    }
    if (nsent == 0) {
        if (!PQexitPipelineMode(pc->conn))
            mark_broken(pc);
        return;
    }
    if (one_sync && !PQpipelineSync(pc->conn)) {
        lost(pc, &e);
        batch_abandon(items, st, 0, n, n, one_sync, DBK_ECONN_LOST, &e);
        return;
    }
    int64_t deadline = stmt_deadline(pc);
    rc = flush_out(pc, deadline, budget_of(deadline), true, &e);
    if (rc) {
        batch_abandon(items, st, 0, n, n, one_sync, rc, &e);
        return;
    }

    /* Answers, in order: [Parse,] the statement's result [, Sync]. */
    size_t failed_at = n;
    for (size_t i = 0; i < n; i++) {
        dbk__batch_item *it = &items[i];
        if (st[i].kind == B_SKIP)
            continue;
        PGresult *r = NULL, *prep = NULL;
        deadline = stmt_deadline(pc);
        int64_t budget = budget_of(deadline);
        if (st[i].kind == B_MISS && (rc = pipeline_next(pc, deadline, budget, &prep, &e))) {
            batch_abandon(items, st, i, n, n, one_sync, rc, &e);
            return;
        }
        if ((rc = pipeline_next(pc, deadline, budget, &r, &e))) {
            PQclear(prep);
            batch_abandon(items, st, i, n, n, one_sync, rc, &e);
            return;
        }
        it->done_ns = dbk__now_ns();
        /* A failed Parse explains the statement's failure. */
        PGresult *ans = r;
        if (prep && PQresultStatus(prep) != PGRES_COMMAND_OK) {
            cache_forget(pc, st[i].hash, st[i].name);
            ans = prep;
        }
        ExecStatusType s = PQresultStatus(ans);
        const char *state = is_error_status(s) ? PQresultErrorField(ans, PG_DIAG_SQLSTATE) : NULL;
        if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK || s == PGRES_EMPTY_QUERY) {
            note_command(pc, r);
            rc = build_result(r, &it->res, &e);
            if (rc == DBK_OK) {
                it->rc = DBK_OK;
                size_t nr = dbk_result_nrows(it->res);
                it->affected = nr ? (int64_t)nr : it->res->affected;
            } else {
                dbk__batch_fail(it, rc, &e);
            }
        } else if (s == PGRES_PIPELINE_ABORTED) {
            rc = DBK_ENOT_RUN;
            dbk__batch_failf(it, rc, "not run: statement %zu of the all-or-nothing batch failed",
                             failed_at);
        } else if (state && strcmp(state, "25P02") == 0 && failed_at < n) {
            rc = DBK_ENOT_RUN;
            dbk__batch_failf(it, rc,
                             "not run: statement %zu of the batch failed and aborted the "
                             "transaction",
                             failed_at);
        } else if (is_error_status(s)) {
            rc = result_error(pc, ans, &e);
            dbk__batch_fail(it, rc, &e);
        } else {
            /* COPY got past is_copy, or a protocol surprise: libpq cannot
             * leave this state in pipeline mode. */
            PQclear(r);
            PQclear(prep);
            mark_broken(pc);
            dbk__err(&e, DBK_EINTERNAL, "unexpected %s in a batch; the connection was closed",
                     PQresStatus(s));
            batch_abandon(items, st, i, n, n, one_sync, DBK_EINTERNAL, &e);
            return;
        }
        PQclear(r);
        PQclear(prep);
        if (rc != DBK_OK && rc != DBK_ENOT_RUN && failed_at == n)
            failed_at = i;
        if (rc == DBK_ECONN_LOST) {
            batch_abandon(items, st, i + 1, n, n, one_sync, DBK_ECONN_LOST,
                          it->err ? it->err : &e);
            return;
        }
        if (!one_sync) {
            if ((rc = pipeline_next(pc, deadline, budget, &r, &e))) {
                batch_abandon(items, st, i + 1, n, n, one_sync, rc, &e);
                return;
            }
            PQclear(r); /* PGRES_PIPELINE_SYNC */
        }
    }
    if (one_sync) {
        PGresult *r = NULL;
        deadline = stmt_deadline(pc);
        if ((rc = pipeline_next(pc, deadline, budget_of(deadline), &r, &e))) {
            batch_abandon(items, st, n, n, n, one_sync, rc, &e);
            return;
        }
        PQclear(r); /* PGRES_PIPELINE_SYNC: the implicit transaction ended */
        for (size_t i = 0; mark_undone && i < failed_at && failed_at < n; i++)
            if (items[i].rc == DBK_OK)
                dbk__batch_failf(&items[i], DBK_ENOT_RUN,
                                 in_tx ? "undone: statement %zu of the all-or-nothing batch "
                                         "failed and aborted the transaction"
                                       : "rolled back: statement %zu of the all-or-nothing "
                                         "batch failed",
                                 failed_at);
    }
    if (!PQexitPipelineMode(pc->conn))
        mark_broken(pc);
    *stmt_failed = failed_at < n && conn_usable(pc);
}

/* A batch. Atomic: one pass with one Sync. Independent: outside a
 * transaction block the first pass is optimistic - one Sync, so the
 * server runs the batch as one implicit transaction instead of starting
 * and ending one per statement (about 4x the throughput measured on 100
 * lookups) - and only when a statement fails, which rolls that implicit
 * transaction back and leaves nothing of it behind, the batch is sent
 * again with a Sync after every statement, so that each outcome is the
 * statement's own. Inside a transaction block a failure aborts the block
 * anyway, so one pass with one Sync gives the same outcomes. */
static dbk_rc pg_batch(void *impl, dbk__batch_item *items, size_t n, bool atomic)
{
    pg_conn *pc = impl;
    dbk_error e;
    if (!conn_usable(pc)) {
        dbk_rc urc = unusable_err(pc, &e);
        for (size_t i = 0; i < n; i++)
            dbk__batch_fail(&items[i], i ? DBK_ENOT_RUN : urc, &e);
        return urc;
    }
    if (PQtransactionStatus(pc->conn) == PQTRANS_ACTIVE) {
        mark_broken(pc);
        dbk__err(&e, DBK_EINTERNAL, "a previous statement is still in flight");
        for (size_t i = 0; i < n; i++)
            dbk__batch_fail(&items[i], i ? DBK_ENOT_RUN : DBK_EINTERNAL, &e);
        return DBK_EINTERNAL;
    }
    bool in_tx = PQtransactionStatus(pc->conn) != PQTRANS_IDLE;
    struct bstate stack_st[32];
    struct bstate *st = n <= 32 ? stack_st : malloc(n * sizeof *st);
    if (!st) {
        dbk__err(&e, DBK_ENOMEM, "out of memory running a batch of %zu statements", n);
        for (size_t i = 0; i < n; i++)
            dbk__batch_fail(&items[i], i ? DBK_ENOT_RUN : DBK_ENOMEM, &e);
        return DBK_ENOMEM;
    }

    /* Refusals before anything is sent: in an atomic batch one refused
     * statement means none runs. */
    size_t refused = n;
    for (size_t i = 0; i < n; i++) {
        st[i].kind = B_UNNAMED;
        dbk_rc prc = DBK_OK;
        if (is_copy(items[i].sql))
            prc = copy_refused_err(&e);
        else
            prc = check_params(items[i].params, items[i].nparams, &e);
        if (prc) {
            dbk__batch_fail(&items[i], prc, &e);
            st[i].kind = B_SKIP;
            if (refused == n)
                refused = i;
        }
    }
    if (atomic && refused < n) {
        for (size_t i = 0; i < n; i++)
            if (i != refused)
                dbk__batch_failf(&items[i], DBK_ENOT_RUN,
                                 "not run: statement %zu of the all-or-nothing batch was refused",
                                 refused);
    } else if (atomic || in_tx) {
        bool failed;
        /* In a transaction an independent batch keeps the outcomes of
         * the statements before a failure: they ran, and go with the
         * transaction. */
        pg_batch_pass(pc, items, st, n, BM_ATOMIC, in_tx, atomic, &failed);
    } else {
        bool failed;
        pg_batch_pass(pc, items, st, n, BM_OPTIMISTIC, false, false, &failed);
        if (failed) {
            for (size_t i = 0; i < n; i++) {
                if (st[i].kind == B_SKIP)
                    continue;
                dbk_result_free(items[i].res);
                items[i].res = NULL;
                free(items[i].err);
                items[i].err = NULL;
                items[i].rc = DBK_ENOT_RUN;
                items[i].affected = -1;
            }
            pg_batch_pass(pc, items, st, n, BM_EACH, false, false, &failed);
        }
    }
    if (st != stack_st)
        free(st);
    return batch_outcome(items, n);
}

/* ---- COPY FROM STDIN (bulk insert) ---- */

/* Queues one piece of data, waiting (bounded) while libpq's buffer is full
 * in nonblocking mode. */
static dbk_rc copy_put(pg_conn *pc, const char *buf, int len, int64_t deadline, dbk_error *err)
{
    for (;;) {
        int r = PQputCopyData(pc->conn, buf, len);
        if (r == 1)
            return DBK_OK;
        if (r < 0)
            return lost(pc, err);
        dbk_rc rc = flush_out(pc, deadline, budget_of(deadline), true, err);
        if (rc)
            return rc;
    }
}

static dbk_rc copy_end(pg_conn *pc, const char *errmsg, int64_t deadline, dbk_error *err)
{
    for (;;) {
        int r = PQputCopyEnd(pc->conn, errmsg);
        if (r == 1)
            return flush_out(pc, deadline, budget_of(deadline), true, err);
        if (r < 0)
            return lost(pc, err);
        dbk_rc rc = flush_out(pc, deadline, budget_of(deadline), true, err);
        if (rc)
            return rc;
    }
}

static dbk_rc pg_copy_in(void *impl, const char *sql, dbk__copy_fill fill, void *ctx,
                         int64_t *rows, dbk_error *err)
{
    pg_conn *pc = impl;
    dbk_rc rc0 = ready(pc, err);
    if (rc0)
        return rc0;
    int64_t deadline = stmt_deadline(pc);
    if (!PQsendQueryParams(pc->conn, sql, 0, NULL, NULL, NULL, NULL, 0))
        return lost(pc, err);
    dbk_rc rc = flush_out(pc, deadline, budget_of(deadline), true, err);
    if (rc)
        return rc;
    if ((rc = await_ready(pc, deadline, budget_of(deadline), true, err)))
        return rc;
    PGresult *res = PQgetResult(pc->conn);
    if (!res)
        return lost(pc, err);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        /* Refused before any data (no such table, a column, ...): the
         * ordinary error, after the rest of the command's results. */
        PGresult *keep = res, *r;
        while (!(rc = await_ready(pc, deadline, budget_of(deadline), true, err)) &&
               (r = PQgetResult(pc->conn)))
            PQclear(r);
        if (rc) {
            PQclear(keep);
            return rc;
        }
        return finish(pc, keep, false, NULL, rows, err);
    }
    PQclear(res);
    enum { CHUNK = 256 * 1024 };
    char *buf = malloc(CHUNK);
    dbk_error fill_err;
    dbk_rc fill_rc = DBK_OK;
    if (!buf) {
        fill_rc = dbk__err(&fill_err, DBK_ENOMEM, "out of memory buffering COPY data");
    } else {
        for (;;) {
            long k = fill(ctx, buf, CHUNK, &fill_err);
            if (k < 0) {
                fill_rc = fill_err.code ? fill_err.code : DBK_EINTERNAL;
                break;
            }
            if (k == 0)
                break;
            deadline = stmt_deadline(pc);
            if ((rc = copy_put(pc, buf, (int)k, deadline, err))) {
                free(buf);
                return rc;
            }
        }
        free(buf);
    }
    /* On a fill error the server is told to abandon the COPY: nothing of
     * it is written. */
    deadline = stmt_deadline(pc);
    rc = copy_end(pc, fill_rc ? "dbkit: the data could not be encoded" : NULL, deadline, err);
    if (rc)
        return rc;
    bool copy_refused = false;
    if ((rc = collect(pc, deadline, budget_of(deadline), true, &res, &copy_refused, err)))
        return rc;
    if (fill_rc) {
        PQclear(res);
        if (err)
            *err = fill_err;
        return fill_rc;
    }
    return finish(pc, res, copy_refused, NULL, rows, err);
}

static dbk_rc run_script(pg_conn *pc, const char *sql, int64_t deadline, dbk_error *err)
{
    int64_t budget = budget_of(deadline);
    if (!PQsendQuery(pc->conn, sql))
        return lost(pc, err);
    dbk_rc rc = flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    PGresult *res = NULL;
    bool copy_refused = false;
    rc = collect(pc, deadline, budget, true, &res, &copy_refused, err);
    if (rc)
        return rc;
    if (!res && !copy_refused)
        return DBK_OK; /* an empty script */
    return finish(pc, res, copy_refused, NULL, NULL, err);
}

static dbk_rc pg_script(void *impl, const char *sql, int timeout_ms, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!conn_usable(pc))
        return unusable_err(pc, err);
    /* The statement deadline, like any statement (BEGIN with its SET
     * LOCALs comes this way); only a caller that says so (migrations) waits
     * longer, and never less than the statement deadline. */
    int64_t deadline = stmt_deadline(pc);
    if (timeout_ms > 0) {
        int64_t asked = deadline_after_ms(timeout_ms);
        if (asked > deadline)
            deadline = asked;
    }
    return run_script(pc, sql, deadline, err);
}

static dbk_rc pg_ping(void *impl, int timeout_ms, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!conn_usable(pc))
        return unusable_err(pc, err);
    int64_t deadline = deadline_after_ms(timeout_ms > 0 ? timeout_ms : 1000);
    int64_t budget = budget_of(deadline);
    if (!PQsendQueryParams(pc->conn, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0))
        return lost(pc, err);
    dbk_rc rc = flush_out(pc, deadline, budget, false, err);
    if (rc)
        return rc;
    PGresult *res = NULL;
    bool copy_refused = false;
    rc = collect(pc, deadline, budget, false, &res, &copy_refused, err);
    if (rc)
        return rc;
    return finish(pc, res, copy_refused, NULL, NULL, err);
}

static dbk__txstate pg_txstate(void *impl)
{
    pg_conn *pc = impl;
    if (!conn_usable(pc) || PQstatus(pc->conn) != CONNECTION_OK)
        return DBK__TX_BROKEN;
    switch (PQtransactionStatus(pc->conn)) {
    case PQTRANS_IDLE:
        return DBK__TX_IDLE;
    case PQTRANS_INTRANS:
        return DBK__TX_OPEN;
    case PQTRANS_INERROR:
        return DBK__TX_FAILED;
    default: /* ACTIVE between calls is a bug; UNKNOWN is a dead link */
        return DBK__TX_BROKEN;
    }
}

/* SET statements for settings the startup packet could not carry. */
static void session_sets(const pg_conn *pc, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    if (pc->sets_via_sql) {
        if (!pc->user_datestyle)
            o += (size_t)snprintf(buf + o, size - o, "SET DateStyle = 'ISO'; ");
        if (!pc->user_timezone && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET TimeZone = 'UTC'; ");
        if (pc->statement_timeout_ms > 0 && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET statement_timeout = %d; ",
                                  pc->statement_timeout_ms);
        if (pc->lock_timeout_ms > 0 && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET lock_timeout = %d; ",
                                  pc->lock_timeout_ms);
    }
    /* Before PostgreSQL 12, float output was rounded to 15 digits unless
     * extra_float_digits was raised. */
    if (pc->server_version_num > 0 && pc->server_version_num < 120000 && o < size)
        snprintf(buf + o, size - o, "SET extra_float_digits = 3; ");
}

static dbk_rc pg_reset(void *impl, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!conn_usable(pc))
        return unusable_err(pc, err);
    PGTransactionStatusType ts = PQtransactionStatus(pc->conn);
    if (ts == PQTRANS_ACTIVE || ts == PQTRANS_UNKNOWN) {
        mark_broken(pc);
        return broken_err(err);
    }
    /* What DISCARD ALL does, spelled out: DISCARD ALL itself refuses to run
     * in a transaction block, and a multi-statement query is one, so it
     * could not share this single round trip with the ROLLBACK. RESET ALL
     * goes back to the startup values, which include dbkit's own settings;
     * it leaves ROLE and SESSION AUTHORIZATION alone, hence their own
     * RESETs. DEALLOCATE ALL drops the borrower's prepared statements and
     * dbkit's own with them, so the statement cache is emptied below. */
    char sets[256];
    session_sets(pc, sets, sizeof sets);
    char sql[640];
    snprintf(sql, sizeof sql,
             "%sRESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; CLOSE ALL; UNLISTEN *; "
             "SELECT pg_advisory_unlock_all(); DEALLOCATE ALL; DISCARD PLANS; DISCARD TEMP; "
             "DISCARD SEQUENCES; %s",
             ts == PQTRANS_IDLE ? "" : "ROLLBACK; ", sets);
    dbk_rc rc = run_script(pc, sql, stmt_deadline(pc), err);
    /* On success every statement is gone; on failure some may be: forget
     * them all, and have the next prepare start with DEALLOCATE ALL. */
    cache_clear(pc);
    pc->npending = 0;
    pc->pending_all = rc != DBK_OK;
    if (rc == DBK_OK && PQtransactionStatus(pc->conn) != PQTRANS_IDLE) {
        mark_broken(pc);
        return dbk__err(err, DBK_EINTERNAL, "the session is still in a transaction after reset");
    }
    return rc;
}

static const char *pg_server_version(void *impl)
{
    pg_conn *pc = impl;
    return pc ? pc->server_version : NULL;
}

static int pg_statement_timeout_ms(void *impl)
{
    pg_conn *pc = impl;
    return pc ? pc->statement_timeout_ms : 0;
}

/* ---- connecting ---- */

static void on_notice(void *arg, const PGresult *res)
{
    (void)arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    dbk_log_level lvl = DBK_LOG_INFO;
    if (sev && strcmp(sev, "WARNING") == 0)
        lvl = DBK_LOG_WARN;
    else if (sev && (strncmp(sev, "DEBUG", 5) == 0 || strcmp(sev, "LOG") == 0))
        lvl = DBK_LOG_DEBUG;
    if (!dbk__log_enabled(lvl))
        return;
    dbk__log(lvl, "postgres %s: %s", sev ? sev : "NOTICE", msg ? msg : "");
}

/* Keyword/value arrays for PQconnectStartParams; a key set twice keeps the
 * last value. */
struct kv {
    const char **keys;
    const char **vals;
    size_t n, cap;
};

static void kv_set(struct kv *kv, const char *k, const char *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < kv->n; i++)
        if (strcmp(kv->keys[i], k) == 0) {
            kv->vals[i] = v;
            return;
        }
    if (kv->n + 1 < kv->cap) {
        kv->keys[kv->n] = k;
        kv->vals[kv->n] = v;
        kv->n++;
        kv->keys[kv->n] = NULL;
        kv->vals[kv->n] = NULL;
    }
}

static void kv_del(struct kv *kv, const char *k)
{
    for (size_t i = 0; i < kv->n; i++)
        if (strcmp(kv->keys[i], k) == 0) {
            memmove(kv->keys + i, kv->keys + i + 1, (kv->n - i) * sizeof *kv->keys);
            memmove(kv->vals + i, kv->vals + i + 1, (kv->n - i) * sizeof *kv->vals);
            kv->n--;
            return;
        }
}

static bool has_word(const char *msg, const char *w)
{
    return msg && strstr(msg, w) != NULL;
}

/* Sorts a libpq connection failure into a result code. */
static dbk_rc classify_connect_error(const char *msg)
{
    if (has_word(msg, "invalid connection option") || has_word(msg, "invalid port number") ||
        has_word(msg, "invalid integer value") || has_word(msg, "invalid sslmode value") ||
        has_word(msg, "invalid target_session_attrs value") ||
        has_word(msg, "invalid value for parameter") || has_word(msg, "could not match") ||
        has_word(msg, "unrecognized configuration parameter") ||
        has_word(msg, "invalid gssencmode value") || has_word(msg, "invalid channel_binding"))
        return DBK_ECONFIG;
    if (has_word(msg, "authentication failed") || has_word(msg, "no password supplied") ||
        has_word(msg, "no pg_hba.conf entry") || has_word(msg, "password is required") ||
        (has_word(msg, "role \"") && has_word(msg, "does not exist")) ||
        has_word(msg, "not permitted to log in") || has_word(msg, "SCRAM"))
        return DBK_EAUTH;
    if (has_word(msg, "SSL") || has_word(msg, "ssl") || has_word(msg, "certificate") ||
        has_word(msg, "TLS"))
        return DBK_ETLS;
    return DBK_EUNAVAILABLE;
}

static int rc_rank(dbk_rc rc)
{
    switch (rc) {
    case DBK_EAUTH:
        return 4;
    case DBK_ETLS:
        return 3;
    case DBK_ECONFIG:
        return 2;
    default:
        return 1;
    }
}

struct attempt {
    dbk_rc rc;
    char msg[DBK_ERROR_MESSAGE_MAX];
    bool options_refused;
};

/* One non-blocking connection attempt bounded by timeout_ms. */
static PGconn *connect_once(const struct kv *kv, int timeout_ms, const char *password,
                            struct attempt *a)
{
    a->rc = DBK_OK;
    a->msg[0] = '\0';
    a->options_refused = false;
    PGconn *c = PQconnectStartParams(kv->keys, kv->vals, 0);
    if (!c) {
        a->rc = DBK_ENOMEM;
        dbk__strlcpy(a->msg, "out of memory starting a connection", sizeof a->msg);
        return NULL;
    }
    PQsetNoticeReceiver(c, on_notice, NULL);
    int64_t deadline = deadline_after_ms(timeout_ms);
    PostgresPollingStatusType st =
        PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int ev = wait_fd(PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (ev == 0) {
            a->rc = DBK_EUNAVAILABLE;
            snprintf(a->msg, sizeof a->msg, "no answer within %d ms (connect_timeout)",
                     timeout_ms);
            PQfinish(c);
            return NULL;
        }
        if (ev < 0) {
            a->rc = DBK_EUNAVAILABLE;
            snprintf(a->msg, sizeof a->msg, "poll failed: %s", strerror(errno));
            PQfinish(c);
            return NULL;
        }
        st = PQconnectPoll(c);
    }
    if (st == PGRES_POLLING_OK && PQstatus(c) == CONNECTION_OK)
        return c;
    const char *m = PQerrorMessage(c);
    char *safe = redact_dup(m, password);
    clean_message(a->msg, sizeof a->msg, safe ? safe : "connection failed");
    free(safe);
    a->options_refused = has_word(m, "unsupported startup parameter") ||
                         has_word(m, "unsupported options startup parameter");
    a->rc = classify_connect_error(m);
    PQfinish(c);
    return NULL;
}

/* Splits "a,b,c" into at most max pieces (in place in buf). */
static size_t split_list(char *buf, char **out, size_t max)
{
    size_t n = 0;
    char *p = buf;
    while (n < max) {
        out[n++] = p;
        char *comma = strchr(p, ',');
        if (!comma)
            break;
        *comma = '\0';
        p = comma + 1;
    }
    return n;
}

#define PG_MAX_HOSTS 16

static void version_text(int v, char *buf, size_t size)
{
    if (v >= 100000)
        snprintf(buf, size, "%d.%d", v / 10000, v % 10000);
    else
        snprintf(buf, size, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
}

static void pg_close(void *impl)
{
    pg_conn *pc = impl;
    if (!pc)
        return;
    /* In a forked child the PGconn is the parent's session: PQfinish would
     * send it a Terminate message. Its memory is left to the child's exit. */
    if (pc->conn && !dbk__owner_forked(&pc->owner))
        PQfinish(pc->conn);
    pc->conn = NULL;
    cache_clear(pc);
    free(pc->buckets);
    free(pc->pending);
    free(pc->scratch);
    free(pc->pvals);
    free(pc->plens);
    free(pc->pfmts);
    free(pc->ptypes);
    free(pc->psig);
    free(pc);
}

/* Checks passthrough keywords against the ones this libpq knows. */
static dbk_rc check_extra(const struct dbk_config *cfg, dbk_error *err)
{
    if (!cfg->nextra)
        return DBK_OK;
    PQconninfoOption *defs = PQconndefaults();
    if (!defs)
        return dbk__err(err, DBK_ENOMEM, "out of memory reading libpq's connection options");
    dbk_rc rc = DBK_OK;
    for (size_t i = 0; i < cfg->nextra && rc == DBK_OK; i++) {
        const char *k = cfg->extra[i].key;
        bool known = false;
        for (PQconninfoOption *o = defs; o->keyword; o++)
            if (strcmp(o->keyword, k) == 0) {
                known = true;
                break;
            }
        if (!known || strcmp(k, "password") == 0) {
            rc = dbk__err(err, DBK_ECONFIG,
                          known ? "connection parameter \"%s\" may not be passed through; "
                                  "set the password in the URL or DB_PASSWORD"
                                : "unknown connection parameter \"%s\"",
                          k);
            dbk__err_hint(err, "dbkit passes URL query parameters it does not know itself to "
                               "libpq; check the spelling against libpq's connection "
                               "parameters (e.g. sslrootcert, keepalives_idle)");
        }
    }
    PQconninfoFree(defs);
    return rc;
}

static dbk_rc pg_open(const struct dbk_config *cfg, void **impl, dbk_error *err)
{
    *impl = NULL;
    if (!cfg)
        return dbk__err(err, DBK_EMISUSE, "configuration must not be NULL");
    dbk_rc rc = check_extra(cfg, err);
    if (rc)
        return rc;

    pg_conn *pc = calloc(1, sizeof *pc);
    if (!pc)
        return dbk__err(err, DBK_ENOMEM, "out of memory opening a connection");
    dbk__owner_init(&pc->owner);
    pc->statement_timeout_ms = cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms : 0;
    pc->lock_timeout_ms = cfg->lock_timeout_ms > 0 ? cfg->lock_timeout_ms : 0;
    pc->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 10000;
    pc->cache_cap = cfg->stmt_cache_size > 0 ? (size_t)cfg->stmt_cache_size : 0;

    size_t cap = 32 + cfg->nextra;
    struct kv kv = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(char *)), 0, cap};
    char *hostbuf = cfg->host ? strdup(cfg->host) : NULL;
    char *portbuf = cfg->port ? strdup(cfg->port) : NULL;
    char *options = NULL;
    if (!kv.keys || !kv.vals || (cfg->host && !hostbuf) || (cfg->port && !portbuf)) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory opening a connection");
        goto fail;
    }

    /* Startup-packet session settings: these become the session defaults,
     * so RESET ALL keeps them. */
    const char *user_options = NULL;
    for (size_t i = 0; i < cfg->nextra; i++)
        if (strcmp(cfg->extra[i].key, "options") == 0)
            user_options = cfg->extra[i].value;
    size_t olen = 160 + (user_options ? strlen(user_options) : 0);
    options = malloc(olen);
    if (!options) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory opening a connection");
        goto fail;
    }
    int on = snprintf(options, olen, "-c DateStyle=ISO -c TimeZone=UTC");
    if (pc->statement_timeout_ms > 0)
        on += snprintf(options + on, olen - (size_t)on, " -c statement_timeout=%d",
                       pc->statement_timeout_ms);
    if (pc->lock_timeout_ms > 0)
        on += snprintf(options + on, olen - (size_t)on, " -c lock_timeout=%d",
                       pc->lock_timeout_ms);
    if (user_options && *user_options)
        snprintf(options + on, olen - (size_t)on, " %s", user_options);

    char ctimeout[16];
    int secs = (pc->connect_timeout_ms + 999) / 1000;
    snprintf(ctimeout, sizeof ctimeout, "%d", secs < 2 ? 2 : secs);

    kv_set(&kv, "dbname", cfg->dbname);
    kv_set(&kv, "user", cfg->user);
    kv_set(&kv, "password", cfg->password);
    kv_set(&kv, "sslmode", cfg->sslmode);
    kv_set(&kv, "application_name", cfg->application_name);
    kv_set(&kv, "fallback_application_name", "dbkit");
    kv_set(&kv, "target_session_attrs", cfg->target_session_attrs);
    kv_set(&kv, "connect_timeout", ctimeout);
    kv_set(&kv, "client_encoding", "UTF8");
    kv_set(&kv, "keepalives", "1");
    kv_set(&kv, "keepalives_idle", "30");
    kv_set(&kv, "keepalives_interval", "10");
    kv_set(&kv, "keepalives_count", "3");
    for (size_t i = 0; i < cfg->nextra; i++)
        if (strcmp(cfg->extra[i].key, "options") != 0)
            kv_set(&kv, cfg->extra[i].key, cfg->extra[i].value);
    kv_set(&kv, "options", options);

    /* Several hosts: try each in turn with its own connect_timeout (libpq's
     * async connect would sit on a black-holed first host until our
     * deadline and never reach the second). prefer-standby takes two
     * passes, standbys first. */
    char *hosts[PG_MAX_HOSTS], *ports[PG_MAX_HOSTS];
    size_t nhosts = hostbuf ? split_list(hostbuf, hosts, PG_MAX_HOSTS) : 0;
    size_t nports = portbuf ? split_list(portbuf, ports, PG_MAX_HOSTS) : 0;
    bool has_hostaddr = false;
    for (size_t i = 0; i < cfg->nextra; i++)
        if (strcmp(cfg->extra[i].key, "hostaddr") == 0)
            has_hostaddr = true;
    bool per_host = nhosts > 1 && !has_hostaddr && (nports <= 1 || nports == nhosts);
    const char *tsa = cfg->target_session_attrs;
    int passes = per_host && tsa && strcmp(tsa, "prefer-standby") == 0 ? 2 : 1;
    if (!per_host) {
        /* One attempt with the lists as given (libpq reports mismatches). */
        kv_set(&kv, "host", cfg->host);
        kv_set(&kv, "port", cfg->port);
        nhosts = 1;
    }

    struct attempt a;
    dbk_rc best = DBK_OK;
    char summary[DBK_ERROR_MESSAGE_MAX] = "";
    size_t slen = 0;
    bool options_ok = true;
    PGconn *conn = NULL;
    for (int pass = 0; pass < passes && !conn; pass++) {
        if (passes == 2)
            kv_set(&kv, "target_session_attrs", pass == 0 ? "standby" : "any");
        for (size_t i = 0; i < nhosts && !conn; i++) {
            if (per_host) {
                kv_set(&kv, "host", hosts[i]);
                if (nports)
                    kv_set(&kv, "port", nports == 1 ? ports[0] : ports[i]);
            }
            conn = connect_once(&kv, pc->connect_timeout_ms, cfg->password, &a);
            if (!conn && a.options_refused && options_ok) {
                /* A pooler that refuses `options`: settings go by SET. */
                options_ok = false;
                kv_del(&kv, "options");
                if (user_options)
                    kv_set(&kv, "options", user_options);
                conn = connect_once(&kv, pc->connect_timeout_ms, cfg->password, &a);
            }
            if (conn)
                break;
            if (a.rc == DBK_ECONFIG || a.rc == DBK_ENOMEM) {
                best = a.rc;
                dbk__strlcpy(summary, a.msg, sizeof summary);
                nhosts = 0;
                passes = 0;
                break;
            }
            if (best == DBK_OK || rc_rank(a.rc) > rc_rank(best))
                best = a.rc;
            if (per_host) {
                const char *port = nports ? (nports == 1 ? ports[0] : ports[i]) : "5432";
                if (slen < sizeof summary)
                    slen += (size_t)snprintf(summary + slen, sizeof summary - slen, "%s%s:%s: %s",
                                             slen ? "; " : "", hosts[i], port, a.msg);
            } else {
                dbk__strlcpy(summary, a.msg, sizeof summary);
            }
        }
    }
    if (!conn) {
        rc = best == DBK_OK ? DBK_EUNAVAILABLE : best;
        if (per_host && rc != DBK_ECONFIG && rc != DBK_ENOMEM)
            dbk__err(err, rc, "could not connect to any of %zu hosts: %s", nhosts, summary);
        else
            dbk__err(err, rc, "could not connect to PostgreSQL: %s", summary);
        if (err) {
            if (rc == DBK_ETLS)
                dbk__err_hint(err, "check sslmode in DATABASE_URL (disable, prefer, require, "
                                   "verify-full) and the server's TLS setup");
            else if (rc == DBK_ECONFIG)
                dbk__err_hint(err, "check the connection settings in DATABASE_URL "
                                   "(`dbkit config` shows them)");
            else if (rc == DBK_EUNAVAILABLE && has_word(summary, "does not exist"))
                dbk__err_hint(err, "the database does not exist: create it (createdb) or fix "
                                   "the database name in DATABASE_URL");
            else if (rc == DBK_EUNAVAILABLE && has_word(summary, "connect_timeout"))
                dbk__err_hint(err, "nothing answered in time: check host and port, firewalls "
                                   "and that the server is up; DB_CONNECT_TIMEOUT_MS sets the "
                                   "wait");
            else if (rc == DBK_EUNAVAILABLE && tsa &&
                     (has_word(summary, "read-only") || has_word(summary, "standby") ||
                      has_word(summary, "hot standby")))
                dbk__err_hint(err, "no server matched target_session_attrs=%s (is a failover "
                                   "in progress?)",
                              tsa);
            dbk__err_default_hint(err);
        }
        goto fail;
    }
    pc->conn = conn;
    pc->sets_via_sql = !options_ok;
    /* A pooler that accepted but ignored `options` shows in the reported
     * parameters. */
    const char *ds = PQparameterStatus(conn, "DateStyle");
    const char *tz = PQparameterStatus(conn, "TimeZone");
    pc->user_datestyle = user_options && strcasestr(user_options, "datestyle");
    pc->user_timezone = user_options && strcasestr(user_options, "timezone");
    if ((!pc->user_datestyle && (!ds || strncmp(ds, "ISO", 3) != 0)) ||
        (!pc->user_timezone && (!tz || strcmp(tz, "UTC") != 0)))
        pc->sets_via_sql = true;
    pc->server_version_num = PQserverVersion(conn);
    version_text(pc->server_version_num, pc->server_version, sizeof pc->server_version);
    if (PQsetnonblocking(conn, 1) != 0) {
        rc = lost(pc, err);
        goto fail;
    }
    char sets[256];
    session_sets(pc, sets, sizeof sets);
    if (sets[0]) {
        if (!options_ok)
            dbk__log(DBK_LOG_WARN, "the server or pooler refused startup options; session "
                                   "settings are applied with SET");
        rc = run_script(pc, sets, deadline_after_ms(pc->connect_timeout_ms), err);
        if (rc)
            goto fail;
    }
    free(kv.keys);
    free(kv.vals);
    free(hostbuf);
    free(portbuf);
    free(options);
    *impl = pc;
    return DBK_OK;

fail:
    free(kv.keys);
    free(kv.vals);
    free(hostbuf);
    free(portbuf);
    free(options);
    pg_close(pc);
    return rc;
}

const dbk__driver dbk__driver_postgres = {
    .engine = DBK_ENGINE_POSTGRES,
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .run = pg_run,
    .script = pg_script,
    .ping = pg_ping,
    .txstate = pg_txstate,
    .reset = pg_reset,
    .server_version = pg_server_version,
    .statement_timeout_ms = pg_statement_timeout_ms,
    .batch = pg_batch,
    .copy_in = pg_copy_in,
};
