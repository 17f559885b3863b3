/*
 * pg_connect.c - connecting the PostgreSQL driver, and its vtable.
 *
 * PQconnectStartParams + PQconnectPoll + poll() against a monotonic deadline
 * per host (with several hosts the driver tries them one by one itself,
 * because libpq's per-host connect_timeout only applies to its blocking
 * connect). Session settings travel in the startup packet's `options`; a
 * pooler that refuses or ignores them gets them with SET (see pg_int.h).
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
#include "../core/rand.h"
#include "../core/result_int.h"
#include "driver.h"
#include "pg_int.h"

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

/* A per-connection nonce for statement names: unique across the clients
 * of one pooler (processes, hosts, connections), not a secret. splitmix64
 * over the clock, the PID, the address and a process-wide counter. */
static uint64_t name_nonce(const void *pc)
{
    static _Atomic uint64_t counter;
    uint64_t x = (uint64_t)dbk__now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)pc ^
                 (atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ULL);
    return dbk__mix64(x);
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
    int64_t deadline = dbk__pg_deadline_after_ms(timeout_ms);
    PostgresPollingStatusType st =
        PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int ev = dbk__pg_wait_fd(PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
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
    char *safe = dbk__pg_redact_dup(m, password);
    dbk__pg_clean_message(a->msg, sizeof a->msg, safe ? safe : "connection failed");
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
    dbk__pg_cache_clear(pc);
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
    if (cfg->pooler && strcmp(cfg->pooler, "transaction") == 0) {
        pc->pooler_txn = true;
        pc->cache_cap = 0;
    }
    pc->name_nonce = name_nonce(pc);

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
        rc = dbk__pg_lost(pc, err);
        goto fail;
    }
    char sets[256];
    dbk__pg_session_sets(pc, sets, sizeof sets);
    if (sets[0]) {
        if (!options_ok)
            dbk__log(DBK_LOG_WARN, "the server or pooler refused startup options; session "
                                   "settings are applied with SET");
        rc = dbk__pg_run_script(pc, sets, dbk__pg_deadline_after_ms(pc->connect_timeout_ms), err);
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
    .run = dbk__pg_run,
    .script = dbk__pg_script,
    .ping = dbk__pg_ping,
    .txstate = dbk__pg_txstate,
    .reset = dbk__pg_reset,
    .server_version = dbk__pg_server_version,
    .statement_timeout_ms = dbk__pg_statement_timeout_ms,
    .batch = dbk__pg_batch,
    .pipeline = dbk__pg_pipeline,
    .copy_in = dbk__pg_copy_in,
};
