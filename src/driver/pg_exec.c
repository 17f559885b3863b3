/*
 * pg_exec.c - the PostgreSQL driver running statements: one statement with
 * the statement cache (a hit is Bind/Execute/Sync, a miss prepares and
 * executes in one pipelined round trip), scripts, ping, the transaction
 * state and the reset.
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

/* ---- running statements ---- */

bool dbk__pg_conn_usable(const pg_conn *pc)
{
    return pc && pc->conn && !pc->broken && !dbk__owner_forked(&pc->owner);
}

/* Why conn_usable() said no: used in a forked child, or broken. */
dbk_rc dbk__pg_unusable_err(const pg_conn *pc, dbk_error *err)
{
    if (pc && dbk__owner_forked(&pc->owner))
        return dbk__owner_error(&pc->owner, "PostgreSQL connection", err);
    return dbk__pg_broken_err(err);
}

int64_t dbk__pg_budget_of(int64_t deadline)
{
    int64_t ms = (deadline - dbk__now_ns()) / 1000000;
    return ms > 0 ? ms : 0;
}

/* One statement, unnamed (cache off, or ping). */
static dbk_rc exec_unnamed(pg_conn *pc, const char *sql, const struct pg_params *pp,
                           int64_t deadline, PGresult **res, bool *copy_refused, dbk_error *err)
{
    int64_t budget = dbk__pg_budget_of(deadline);
    if (!PQsendQueryParams(pc->conn, sql, pp->n, pp->types, pp->values, pp->lengths, pp->formats,
                           0))
        return dbk__pg_lost(pc, err);
    dbk_rc rc = dbk__pg_flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    return dbk__pg_collect(pc, deadline, budget, true, res, copy_refused, err);
}

/* A cached statement: Bind/Execute/Sync, one round trip. */
static dbk_rc exec_prepared(pg_conn *pc, const struct pg_stmt *s, const struct pg_params *pp,
                            int64_t deadline, PGresult **res, bool *copy_refused, dbk_error *err)
{
    int64_t budget = dbk__pg_budget_of(deadline);
    if (!PQsendQueryPrepared(pc->conn, s->name, pp->n, pp->values, pp->lengths, pp->formats, 0))
        return dbk__pg_lost(pc, err);
    dbk_rc rc = dbk__pg_flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    return dbk__pg_collect(pc, deadline, budget, true, res, copy_refused, err);
}

/* Next pipeline result (NULL separators skipped). */
dbk_rc dbk__pg_pipeline_next(pg_conn *pc, int64_t deadline, int64_t budget, PGresult **r,
                            dbk_error *err)
{
    for (int guard = 0; guard < 1000000; guard++) {
        dbk_rc rc = dbk__pg_await_ready(pc, deadline, budget, true, err);
        if (rc)
            return rc;
        *r = PQgetResult(pc->conn);
        if (*r)
            return DBK_OK;
        if (PQstatus(pc->conn) == CONNECTION_BAD)
            return dbk__pg_lost(pc, err);
    }
    dbk__pg_mark_broken(pc);
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
    int64_t budget = dbk__pg_budget_of(deadline);
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
    if ((rc = dbk__pg_flush_out(pc, deadline, budget, true, err)))
        goto fail;

    /* The DEALLOCATE group: one result each, then its Sync. */
    size_t ok_upto = 0; /* leading pending names that are gone for sure */
    bool all_ok = true;
    for (size_t i = 0; i < nsent; i++) {
        if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &r, err)))
            goto fail;
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (ok && all_ok)
            ok_upto = i + 1;
        else
            all_ok = false;
    }
    if (nsent) {
        if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &r, err)))
            goto fail;
        PQclear(r); /* PGRES_PIPELINE_SYNC */
        if (dealloc_all) {
            if (ok_upto) {
                /* Statements cached since DEALLOCATE ALL was queued are
                 * gone as well. */
                dbk__pg_cache_clear(pc);
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
    if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &prep, err)))
        goto fail;
    for (int n = 0;; n++) {
        if ((rc = dbk__pg_pipeline_next(pc, deadline, budget, &r, err)))
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
            dbk__pg_mark_broken(pc);
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
        dbk__pg_mark_broken(pc);
        rc = dbk__err(err, DBK_EINTERNAL, "could not leave pipeline mode");
        goto fail;
    }
    if (PQresultStatus(prep) == PGRES_COMMAND_OK) {
        PQclear(prep);
        if (!dbk__pg_cache_insert(pc, s)) {
            dbk__pg_pending_push(pc, s->name); /* cannot track it: have it dropped */
            free(s);
        }
        if (exec)
            dbk__pg_note_command(pc, exec);
        *res = exec;
    } else {
        free(s);
        PQclear(exec); /* PGRES_PIPELINE_ABORTED */
        *res = prep;
    }
    return DBK_OK;

lost_conn:
    rc = dbk__pg_lost(pc, err);
fail:
    PQclear(prep);
    PQclear(exec);
    free(s);
    return rc;
}

/* True when the statement's first keyword is COPY (after blanks and
 * comments). COPY FROM STDIN / TO STDOUT need a streaming API dbkit does
 * not have; refusing it before sending keeps the connection clean. */
bool dbk__pg_is_copy(const char *sql)
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

/* A cached statement is gone (26000) or a name we never used already
 * exists (42P05) although nothing of ours dropped or made it: the session
 * is not ours alone, i.e. a transaction-mode pooler (PgBouncer) hands our
 * statements to other backends between transactions. Unique names already
 * keep a name from meaning another client's statement; from here on this
 * connection prepares nothing (unnamed statements), so it stops failing.
 * One WARN per process. Evicted names are not deallocated any more: on a
 * shared backend that could only hit someone else. */
static void go_unnamed(pg_conn *pc, const char *sqlstate)
{
    static atomic_bool warned;
    if (pc->pooler_txn)
        return;
    pc->pooler_txn = true;
    dbk__pg_cache_clear(pc);
    pc->cache_cap = 0;
    pc->npending = 0;
    pc->pending_all = false;
    if (!atomic_exchange(&warned, true))
        dbk__log(DBK_LOG_WARN,
                 "SQLSTATE %s on a prepared statement between transactions: a transaction-mode "
                 "pooler (PgBouncer?) sits in front of the server; connections that see this "
                 "switch to unnamed statements; set pooler=transaction (DB_POOLER) to start that "
                 "way",
                 sqlstate);
}

static bool sqlstate_is(const PGresult *res, const char *want)
{
    if (!res || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return false;
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return st && strcmp(st, want) == 0;
}

/* The connection can take a new statement: usable, nothing in flight. */
dbk_rc dbk__pg_ready(pg_conn *pc, dbk_error *err)
{
    if (!dbk__pg_conn_usable(pc))
        return dbk__pg_unusable_err(pc, err);
    if (PQtransactionStatus(pc->conn) == PQTRANS_ACTIVE) {
        dbk__pg_mark_broken(pc);
        return dbk__err(err, DBK_EINTERNAL, "a previous statement is still in flight");
    }
    return DBK_OK;
}

dbk_rc dbk__pg_run(void *impl, const char *sql, const dbk_value *params, size_t nparams,
                     dbk_result **out, int64_t *affected, dbk_error *err)
{
    pg_conn *pc = impl;
    dbk_rc rc0 = dbk__pg_ready(pc, err);
    if (rc0)
        return rc0;
    if (dbk__pg_is_copy(sql))
        return dbk__pg_copy_refused_err(err);

    const char *sv[PG_STACK_PARAMS];
    int sl[PG_STACK_PARAMS], sf[PG_STACK_PARAMS];
    Oid st[PG_STACK_PARAMS];
    char ssig[PG_STACK_PARAMS + 1];
    char scratch[PG_STACK_SCRATCH];
    struct pg_params pp = {0, sv, sl, sf, st, ssig};
    if (nparams > PG_STACK_PARAMS) {
        if (!dbk__pg_grow_param_arrays(pc, nparams))
            return dbk__err(err, DBK_ENOMEM, "out of memory binding %zu parameters", nparams);
        pp.values = pc->pvals;
        pp.lengths = pc->plens;
        pp.formats = pc->pfmts;
        pp.types = pc->ptypes;
        pp.sig = pc->psig;
    }
    dbk_rc rc = dbk__pg_bind_params(pc, params, nparams, &pp, scratch, err);
    if (rc)
        return rc;

    int64_t deadline = dbk__pg_stmt_deadline(pc);
    PGresult *res = NULL;
    bool copy_refused = false;
    if (pc->cache_cap == 0) {
        rc = exec_unnamed(pc, sql, &pp, deadline, &res, &copy_refused, err);
        if (rc)
            return rc;
        return dbk__pg_finish(pc, res, copy_refused, out, affected, err);
    }

    size_t len = strlen(sql);
    uint64_t h = dbk__pg_hash_key(sql, len, pp.sig, nparams);
    for (int attempt = 0;; attempt++) {
        struct pg_stmt *s = dbk__pg_cache_find(pc, h, sql, len, pp.sig, nparams);
        if (s) {
            dbk__lru_touch(&pc->lru, &s->lru);
            rc = exec_prepared(pc, s, &pp, deadline, &res, &copy_refused, err);
            if (rc)
                return rc;
            bool all_gone = false;
            if (attempt == 0 && stale_statement(res, &all_gone)) {
                bool idle = PQtransactionStatus(pc->conn) == PQTRANS_IDLE;
                if (all_gone) {
                    /* Whatever dropped it probably dropped the others. */
                    dbk__pg_cache_clear(pc);
                    pc->npending = 0;
                    pc->pending_all = true;
                    go_unnamed(pc, "26000");
                } else {
                    dbk__pg_pending_push(pc, s->name);
                    dbk__pg_cache_remove(pc, s);
                    free(s);
                }
                if (idle) {
                    PQclear(res);
                    res = NULL;
                    if (pc->cache_cap == 0) {
                        rc = exec_unnamed(pc, sql, &pp, deadline, &res, &copy_refused, err);
                        if (rc)
                            return rc;
                        return dbk__pg_finish(pc, res, copy_refused, out, affected, err);
                    }
                    continue;
                }
            }
            return dbk__pg_finish(pc, res, copy_refused, out, affected, err);
        }
        dbk__pg_cache_make_room(pc);
        s = dbk__pg_stmt_new(pc, h, sql, len, pp.sig, nparams);
        if (!s)
            return dbk__err(err, DBK_ENOMEM, "out of memory caching a statement");
        rc = exec_miss(pc, s, &pp, deadline, &res, err); /* takes s */
        if (rc)
            return rc;
        if (attempt == 0 && sqlstate_is(res, "42P05")) {
            go_unnamed(pc, "42P05");
            if (PQtransactionStatus(pc->conn) == PQTRANS_IDLE) {
                PQclear(res);
                res = NULL;
                rc = exec_unnamed(pc, sql, &pp, deadline, &res, &copy_refused, err);
                if (rc)
                    return rc;
                return dbk__pg_finish(pc, res, copy_refused, out, affected, err);
            }
        }
        return dbk__pg_finish(pc, res, false, out, affected, err);
    }
}

dbk_rc dbk__pg_run_script(pg_conn *pc, const char *sql, int64_t deadline, dbk_error *err)
{
    int64_t budget = dbk__pg_budget_of(deadline);
    if (!PQsendQuery(pc->conn, sql))
        return dbk__pg_lost(pc, err);
    dbk_rc rc = dbk__pg_flush_out(pc, deadline, budget, true, err);
    if (rc)
        return rc;
    PGresult *res = NULL;
    bool copy_refused = false;
    rc = dbk__pg_collect(pc, deadline, budget, true, &res, &copy_refused, err);
    if (rc)
        return rc;
    if (!res && !copy_refused)
        return DBK_OK; /* an empty script */
    return dbk__pg_finish(pc, res, copy_refused, NULL, NULL, err);
}

dbk_rc dbk__pg_script(void *impl, const char *sql, int timeout_ms, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!dbk__pg_conn_usable(pc))
        return dbk__pg_unusable_err(pc, err);
    /* The statement deadline, like any statement (BEGIN with its SET
     * LOCALs comes this way); only a caller that says so (migrations) waits
     * longer, and never less than the statement deadline. */
    int64_t deadline = dbk__pg_stmt_deadline(pc);
    if (timeout_ms > 0) {
        int64_t asked = dbk__pg_deadline_after_ms(timeout_ms);
        if (asked > deadline)
            deadline = asked;
    }
    return dbk__pg_run_script(pc, sql, deadline, err);
}

dbk_rc dbk__pg_ping(void *impl, int timeout_ms, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!dbk__pg_conn_usable(pc))
        return dbk__pg_unusable_err(pc, err);
    int64_t deadline = dbk__pg_deadline_after_ms(timeout_ms > 0 ? timeout_ms : 1000);
    int64_t budget = dbk__pg_budget_of(deadline);
    if (!PQsendQueryParams(pc->conn, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0))
        return dbk__pg_lost(pc, err);
    dbk_rc rc = dbk__pg_flush_out(pc, deadline, budget, false, err);
    if (rc)
        return rc;
    PGresult *res = NULL;
    bool copy_refused = false;
    rc = dbk__pg_collect(pc, deadline, budget, false, &res, &copy_refused, err);
    if (rc)
        return rc;
    return dbk__pg_finish(pc, res, copy_refused, NULL, NULL, err);
}

dbk__txstate dbk__pg_txstate(void *impl)
{
    pg_conn *pc = impl;
    if (!dbk__pg_conn_usable(pc) || PQstatus(pc->conn) != CONNECTION_OK)
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
void dbk__pg_session_sets(const pg_conn *pc, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    if (pc->sets_via_sql) {
        if (!pc->user_datestyle)
            o += (size_t)snprintf(buf + o, size - o, "SET DateStyle = 'ISO'; ");
        if (!pc->user_timezone && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET TimeZone = 'UTC'; ");
        /* Behind a transaction-mode pooler a session SET would land in
         * whichever server session serves it and stay there for other
         * clients (PgBouncer carries DateStyle and TimeZone per client
         * itself, not these two); transactions get statement_timeout with
         * SET LOCAL at BEGIN instead (see tx.c). */
        if (pc->statement_timeout_ms > 0 && !pc->pooler_txn && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET statement_timeout = %d; ",
                                  pc->statement_timeout_ms);
        if (pc->lock_timeout_ms > 0 && !pc->pooler_txn && o < size)
            o += (size_t)snprintf(buf + o, size - o, "SET lock_timeout = %d; ",
                                  pc->lock_timeout_ms);
    }
    /* Before PostgreSQL 12, float output was rounded to 15 digits unless
     * extra_float_digits was raised. */
    if (pc->server_version_num > 0 && pc->server_version_num < 120000 && o < size)
        snprintf(buf + o, size - o, "SET extra_float_digits = 3; ");
}

dbk_rc dbk__pg_reset(void *impl, dbk_error *err)
{
    pg_conn *pc = impl;
    if (!dbk__pg_conn_usable(pc))
        return dbk__pg_unusable_err(pc, err);
    PGTransactionStatusType ts = PQtransactionStatus(pc->conn);
    if (ts == PQTRANS_ACTIVE || ts == PQTRANS_UNKNOWN) {
        dbk__pg_mark_broken(pc);
        return dbk__pg_broken_err(err);
    }
    /* What DISCARD ALL does, spelled out: DISCARD ALL itself refuses to run
     * in a transaction block, and a multi-statement query is one, so it
     * could not share this single round trip with the ROLLBACK. RESET ALL
     * goes back to the startup values, which include dbkit's own settings;
     * it leaves ROLE and SESSION AUTHORIZATION alone, hence their own
     * RESETs. DEALLOCATE ALL drops the borrower's prepared statements and
     * dbkit's own with them, so the statement cache is emptied below. */
    char sets[256];
    dbk__pg_session_sets(pc, sets, sizeof sets);
    char sql[640];
    snprintf(sql, sizeof sql,
             "%sRESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; CLOSE ALL; UNLISTEN *; "
             "SELECT pg_advisory_unlock_all(); DEALLOCATE ALL; DISCARD PLANS; DISCARD TEMP; "
             "DISCARD SEQUENCES; %s",
             ts == PQTRANS_IDLE ? "" : "ROLLBACK; ", sets);
    dbk_rc rc = dbk__pg_run_script(pc, sql, dbk__pg_stmt_deadline(pc), err);
    /* On success every statement is gone; on failure some may be: forget
     * them all, and have the next prepare start with DEALLOCATE ALL. */
    dbk__pg_cache_clear(pc);
    pc->npending = 0;
    pc->pending_all = rc != DBK_OK;
    if (rc == DBK_OK && PQtransactionStatus(pc->conn) != PQTRANS_IDLE) {
        dbk__pg_mark_broken(pc);
        return dbk__err(err, DBK_EINTERNAL, "the session is still in a transaction after reset");
    }
    return rc;
}

const char *dbk__pg_server_version(void *impl)
{
    pg_conn *pc = impl;
    return pc ? pc->server_version : NULL;
}

int dbk__pg_statement_timeout_ms(void *impl)
{
    pg_conn *pc = impl;
    return pc ? pc->statement_timeout_ms : 0;
}
