/*
 * `dbkit doctor`: is the database reachable and ready?
 *
 * Connects with the effective configuration, runs the seed's
 * testConnection query (SELECT now() on PostgreSQL, datetime('now') on
 * SQLite), and prints the server version, the redacted URL, the pool
 * settings a service would use, and the migration state of
 * --migrations-dir. Exit 0 when connected (pending migrations are reported,
 * not failed: `dbkit migrate status --exit-code` is the gate for that),
 * 5 when the database cannot be reached, 1 on other errors.
 *
 * On PostgreSQL it also looks for a transaction-mode pooler (PgBouncer)
 * in front of the server: a second connection holds a transaction open
 * while the first asks for its server backend again. A direct server or a
 * session-mode pooler keeps the first connection on its own backend; a
 * transaction-mode pooler has to hand it another one. The report says
 * whether pooler=transaction is set to match.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit doctor\n"
    "\n"
    "Connects, runs SELECT now() (SQLite: datetime('now')), and prints the server\n"
    "version, the URL (password as ***), the pool settings and the migration state.\n"
    "Exit 0 when the database answers, 5 when it cannot be reached.\n";

static const char *const POOL_KEYS[] = {"pool_max",       "pool_min_idle",   "acquire_timeout",
                                        "idle_timeout",   "max_lifetime",    "validate_after",
                                        "validate_timeout", "pool_max_waiters", "leak_threshold",
                                        "connect_timeout", "statement_timeout", NULL};

typedef struct pool_vis {
    char keys[16][40];
    char values[16][64];
    const char *src[16];
    int n;
} pool_vis;

static const char *src_name(dbk_config_source s)
{
    return s == DBK_CONFIG_SOURCE_ENV    ? "env"
           : s == DBK_CONFIG_SOURCE_URL  ? "url"
           : s == DBK_CONFIG_SOURCE_CODE ? "code"
                                         : "default";
}

static void visit(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    pool_vis *p = ctx;
    for (int i = 0; POOL_KEYS[i]; i++)
        if (strcmp(key, POOL_KEYS[i]) == 0 && p->n < 16) {
            snprintf(p->keys[p->n], sizeof p->keys[0], "%s", key);
            snprintf(p->values[p->n], sizeof p->values[0], "%s", value ? value : "");
            p->src[p->n] = src_name(src);
            p->n++;
        }
}

/* The pooler probe (see the top of the file). Returns 1 when a
 * transaction-mode pooler was detected, 0 when not, -1 when it could not
 * tell (a server pool of one connection makes the first connection wait
 * behind the second: the short statement timeout ends that). */
static int probe_pooler(const dbk_config *base, dbk_conn *a)
{
    dbk_config *cfg = NULL;
    dbk_error err;
    if (dbk_config_clone(base, &cfg, &err) ||
        dbk_config_set(cfg, "statement_timeout", "1000", &err)) {
        dbk_config_free(cfg);
        return -1;
    }
    int64_t pid1 = 0, pid2 = 0;
    dbk_conn *b = NULL;
    int found = -1;
    if (dbk_db_query_int64(dbk_conn_db(a), "SELECT pg_backend_pid()", NULL, 0, &pid1, &err) ||
        dbk_conn_open(cfg, &b, &err))
        goto done;
    if (dbk_db_exec_script(dbk_conn_db(b), "BEGIN; SELECT 1", &err))
        goto done;
    if (dbk_db_query_int64(dbk_conn_db(a), "SELECT pg_backend_pid()", NULL, 0, &pid2, &err) == DBK_OK)
        found = pid2 != pid1;
    dbk_db_exec_script(dbk_conn_db(b), "ROLLBACK", &err);
done:
    dbk_conn_close(b);
    dbk_config_free(cfg);
    return found;
}

/* Whether the configuration says pooler=transaction. */
static void visit_pooler(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    (void)src;
    if (strcmp(key, "pooler") == 0)
        *(bool *)ctx = value && strcmp(value, "transaction") == 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int cmd_doctor(cli *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
        return cli_usage(c, "unexpected argument '%s'", argv[i]);
    }
    dbk_config *cfg = NULL;
    char url[512];
    int code = cli_config(c, false, url, sizeof url, &cfg);
    if (code)
        return code;
    dbk_engine engine = dbk_config_engine(cfg);
    const char *ename = engine == DBK_ENGINE_POSTGRES ? "postgres" : "sqlite";
    pool_vis pv;
    memset(&pv, 0, sizeof pv);
    dbk_config_dump(cfg, visit, &pv);

    bool human = !c->json && !c->quiet;
    if (human)
        printf("  url          %s\n  engine       %s\n", url, ename);
    dbk_error err;
    dbk_error_clear(&err);
    dbk_conn *conn = NULL;
    int64_t t0 = now_ms();
    dbk_rc rc = dbk_conn_open(cfg, &conn, &err);
    if (rc) {
        dbk_config_free(cfg);
        if (human)
            printf("  connect      FAILED\n");
        return cli_fail(c, rc, &err);
    }
    int64_t t_conn = now_ms() - t0;
    char now[64] = "";
    t0 = now_ms();
    rc = dbk_db_query_text(dbk_conn_db(conn),
                           engine == DBK_ENGINE_POSTGRES ? "SELECT now()::text"
                                                         : "SELECT datetime('now') || ' UTC'",
                           NULL, 0, now, sizeof now, NULL, &err);
    int64_t t_query = now_ms() - t0;
    if (rc) {
        dbk_conn_close(conn);
        dbk_config_free(cfg);
        if (human)
            printf("  connect      ok (%lld ms)\n  query        FAILED\n", (long long)t_conn);
        return cli_fail(c, rc, &err);
    }
    bool pooler_set = false;
    dbk_config_dump(cfg, visit_pooler, &pooler_set);
    int pooler = engine == DBK_ENGINE_POSTGRES ? probe_pooler(cfg, conn) : 0;
    dbk_config_free(cfg);
    const char *ver = dbk_conn_server_version(conn);
    char version[128];
    snprintf(version, sizeof version, "%s %s",
             engine == DBK_ENGINE_POSTGRES ? "PostgreSQL" : "SQLite", ver ? ver : "?");

    /* Migrations: only when the folder exists. */
    struct stat st;
    bool have_dir = stat(c->migrations_dir, &st) == 0 && S_ISDIR(st.st_mode);
    dbk_migration_status *ms = NULL;
    dbk_error merr;
    dbk_error_clear(&merr);
    dbk_rc mrc = DBK_OK;
    if (have_dir) {
        dbk_migrate_source src;
        memset(&src, 0, sizeof src);
        src.dir = c->migrations_dir;
        mrc = dbk_migrate_status(dbk_conn_db(conn), &src, &ms, &merr);
    }
    dbk_conn_close(conn);

    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "url", url);
        jw_kstr(&w, "engine", ename);
        jw_kint(&w, "connect_ms", t_conn);
        jw_kint(&w, "query_ms", t_query);
        jw_kstr(&w, "server_time", now);
        jw_kstr(&w, "server_version", version);
        jw_key(&w, "pool");
        jw_obj(&w);
        for (int i = 0; i < pv.n; i++)
            jw_kstr(&w, pv.keys[i], pv.values[i]);
        jw_end_obj(&w);
        jw_key(&w, "pooler");
        jw_obj(&w);
        jw_kstr(&w, "detected", pooler > 0 ? "transaction" : pooler == 0 ? "none" : "unknown");
        jw_kbool(&w, "pooler_transaction_set", pooler_set);
        jw_end_obj(&w);
        jw_key(&w, "migrations");
        jw_obj(&w);
        jw_kstr(&w, "dir", c->migrations_dir);
        jw_kbool(&w, "dir_exists", have_dir);
        if (ms) {
            jw_kint(&w, "current_version", ms->current_version);
            jw_kint(&w, "applied", (int64_t)ms->applied);
            jw_kint(&w, "pending", (int64_t)ms->pending);
            jw_kint(&w, "changed", (int64_t)ms->changed);
            jw_kint(&w, "missing", (int64_t)ms->missing);
            jw_kint(&w, "dirty", (int64_t)ms->dirty);
        } else if (mrc) {
            jw_kstr(&w, "error", merr.message);
        }
        jw_end_obj(&w);
        jw_end_obj(&w);
    } else if (human) {
        printf("  connect      ok (%lld ms)\n", (long long)t_conn);
        printf("  query        ok (%lld ms): server time %s\n", (long long)t_query, now);
        printf("  server       %s\n", version);
        printf("  pool        ");
        for (int i = 0; i < pv.n; i++)
            printf(" %s=%s%s%s%s", pv.keys[i], pv.values[i], strcmp(pv.src[i], "default") ? " (" : "",
                   strcmp(pv.src[i], "default") ? pv.src[i] : "",
                   strcmp(pv.src[i], "default") ? ")" : "");
        printf("\n");
        if (pooler > 0)
            printf("  pooler       a transaction-mode pooler is in front of the server (the backend "
                   "changed between transactions); pooler=transaction is %s\n",
                   pooler_set ? "set" : "NOT set: set it (DB_POOLER=transaction)");
        else if (pooler < 0)
            printf("  pooler       could not tell whether a transaction-mode pooler is in front\n");
        else if (engine == DBK_ENGINE_POSTGRES)
            printf("  pooler       none in transaction mode (one backend per session)%s\n",
                   pooler_set ? "; pooler=transaction is set anyway" : "");
        if (!have_dir)
            printf("  migrations   %s: no such folder\n", c->migrations_dir);
        else if (mrc)
            printf("  migrations   %s: %s\n", c->migrations_dir, merr.message);
        else {
            printf("  migrations   %s: version %lld, %zu applied, %zu pending", c->migrations_dir,
                   (long long)ms->current_version, ms->applied, ms->pending);
            if (ms->changed || ms->missing || ms->dirty)
                printf(", %zu changed, %zu missing, %zu dirty (run `dbkit migrate validate`)",
                       ms->changed, ms->missing, ms->dirty);
            else if (ms->pending)
                printf(" (run `dbkit migrate up`)");
            printf("\n");
        }
        printf("ok\n");
    }
    dbk_migrate_status_free(ms);
    return CLI_OK;
}
