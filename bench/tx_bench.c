/*
 * A transaction with one UPDATE through dbk_tx_run(), next to the same
 * BEGIN / UPDATE / COMMIT written by hand, on the same table in the same run:
 *   PostgreSQL: libpq, PQexec("BEGIN"), PQexecPrepared(UPDATE),
 *               PQexec("COMMIT") - three round trips;
 *               and, for reference, the same with libpq pipeline mode:
 *               BEGIN + UPDATE in one round trip then COMMIT (two), and
 *               all three in one round trip (what no closure API can do,
 *               since it cannot know the last statement in advance);
 *   SQLite:     prepared BEGIN IMMEDIATE / UPDATE / COMMIT statements
 *               stepped by hand (WAL, synchronous=NORMAL, like dbkit).
 * dbkit runs with its default options (5 s transaction timeout, which adds
 * the server-side timeout settings to the BEGIN round trip), without a
 * timeout (plain BEGIN), and through a pool's executor.
 *
 * Figures on the development VM (2 vCPUs, PostgreSQL 15 on loopback), ratio
 * to the hand-written baseline: SQLite defaults 0.95, no timeout 0.96;
 * PostgreSQL defaults 0.89-0.91 (the 5 s transaction timeout adds two
 * SET LOCAL statements to the BEGIN round trip), no timeout 0.95-0.97, on a
 * pool 0.89-0.91; libpq pipelining BEGIN+UPDATE 1.27-1.32, all three in one
 * round trip 2.1 (docs/transactions.md, "Performance").
 *
 * usage: tx_bench [--seconds S] [--rounds R] [--sqlite-only]
 * PostgreSQL comes from DATABASE_URL or DBKIT_TEST_PG_URL (a postgres:// URL).
 * The variants run interleaved in slices of 200 transactions for
 * rounds * seconds; each line gives the median slice rate and the ratio to
 * the engine's hand-written baseline (and the overall mean next to it).
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dbkit/dbkit.h>

#define ROWS 1000
static const char *UPD = "UPDATE bench_tx SET n = n + 1 WHERE id = $1";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;
static int64_t next_id(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % ROWS) + 1;
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "tx_bench: %s: %s\n", what, msg ? msg : "");
    exit(1);
}

typedef int (*tx_fn)(void *ctx, int64_t id);

/* Runs fn until `seconds` pass; returns transactions per second. */
static double measure(tx_fn fn, void *ctx, double seconds)
{
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 64; i++)
            if (fn(ctx, next_id()) != 0)
                die("transaction", "failed");
        n += 64;
        t = now_s();
    } while (t - t0 < seconds);
    return (double)n / (t - t0);
}

/* ---- dbkit ---- */

struct dk {
    dbk_db *db;
    dbk_tx_opts opts;
};

static dbk_rc upd_fn(dbk_db *tx, void *ctx, dbk_error *err)
{
    int64_t *id = ctx;
    dbk_value p = dbk_int64(*id);
    int64_t n = 0;
    dbk_rc rc = dbk_db_exec(tx, UPD, &p, 1, &n, err);
    if (rc == DBK_OK && n != 1)
        rc = DBK_ENOT_FOUND;
    return rc;
}

static int dk_tx(void *ctx, int64_t id)
{
    struct dk *d = ctx;
    dbk_error err;
    dbk_rc rc = dbk_tx_run(d->db, upd_fn, &id, &d->opts, &err);
    if (rc != DBK_OK)
        die("dbk_tx_run", err.message);
    return 0;
}

/* ---- libpq ---- */

static int pq_ok(PGresult *r, ExecStatusType want)
{
    int ok = PQresultStatus(r) == want;
    if (!ok)
        fprintf(stderr, "tx_bench: libpq: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static int pq_tx(void *ctx, int64_t id)
{
    PGconn *c = ctx;
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    const char *vals[1] = {buf};
    if (!pq_ok(PQexec(c, "BEGIN"), PGRES_COMMAND_OK))
        return -1;
    if (!pq_ok(PQexecPrepared(c, "upd", 1, vals, NULL, NULL, 0), PGRES_COMMAND_OK))
        return -1;
    return pq_ok(PQexec(c, "COMMIT"), PGRES_COMMAND_OK) ? 0 : -1;
}

/* Reads one query's result (and the NULL after it) in pipeline mode. */
static int pipe_result(PGconn *c, ExecStatusType want)
{
    PGresult *r = PQgetResult(c);
    if (!r || !pq_ok(r, want))
        return -1;
    r = PQgetResult(c);
    if (r) {
        PQclear(r);
        return -1;
    }
    return 0;
}

static int pipe_sync(PGconn *c)
{
    PGresult *r = PQgetResult(c);
    return r && pq_ok(r, PGRES_PIPELINE_SYNC) ? 0 : -1;
}

/* BEGIN + UPDATE in one round trip, COMMIT in a second. */
static int pq_pipe2(void *ctx, int64_t id)
{
    PGconn *c = ctx;
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    const char *vals[1] = {buf};
    if (!PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQsendQueryPrepared(c, "upd", 1, vals, NULL, NULL, 0) || !PQpipelineSync(c))
        return -1;
    if (pipe_result(c, PGRES_COMMAND_OK) || pipe_result(c, PGRES_COMMAND_OK) || pipe_sync(c))
        return -1;
    if (!PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c))
        return -1;
    return pipe_result(c, PGRES_COMMAND_OK) || pipe_sync(c) ? -1 : 0;
}

/* BEGIN + UPDATE + COMMIT in one round trip. */
static int pq_pipe1(void *ctx, int64_t id)
{
    PGconn *c = ctx;
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    const char *vals[1] = {buf};
    if (!PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQsendQueryPrepared(c, "upd", 1, vals, NULL, NULL, 0) ||
        !PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c))
        return -1;
    return pipe_result(c, PGRES_COMMAND_OK) || pipe_result(c, PGRES_COMMAND_OK) ||
                   pipe_result(c, PGRES_COMMAND_OK) || pipe_sync(c)
               ? -1
               : 0;
}

/* ---- sqlite3 ---- */

struct sq {
    sqlite3 *db;
    sqlite3_stmt *begin, *upd, *commit;
};

static int sq_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_tx(void *ctx, int64_t id)
{
    struct sq *s = ctx;
    if (sq_step(s->begin))
        return -1;
    sqlite3_bind_int64(s->upd, 1, id);
    if (sq_step(s->upd) || sqlite3_changes(s->db) != 1)
        return -1;
    return sq_step(s->commit);
}

/* ---- running and reporting ---- */

struct variant {
    const char *name;
    tx_fn fn;
    void *ctx;
    double best; /* median slice rate */
    double mean;
    double cpu_us; /* client CPU per transaction */
};

/*
 * The machine this runs on may be shared, and load changes from one second
 * to the next, which makes "round A then round B" comparisons swing by
 * 20%. So the variants are interleaved: slices of SLICE transactions, one
 * variant after the other, for rounds * seconds in all; each variant's
 * figure is the median of its slice rates (load spikes hit every variant
 * alike and fall out of the median), next to its overall mean.
 */
#define SLICE 200
#define MAX_SLICES 200000

struct variant_stats {
    double *rates;
    size_t n;
    double total_s;
    double cpu_s;
    long total_tx;
};

/* CPU time of this thread: the client's own cost, which the machine's
 * load does not change. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_variants(struct variant *v, int nv, int rounds, double seconds)
{
    for (int i = 0; i < nv; i++) /* warm-up: caches, prepared statements */
        measure(v[i].fn, v[i].ctx, 0.2);
    struct variant_stats st[16];
    memset(st, 0, sizeof st);
    for (int i = 0; i < nv; i++) {
        st[i].rates = calloc(MAX_SLICES, sizeof(double));
        if (!st[i].rates)
            die("calloc", "out of memory");
    }
    double end = now_s() + rounds * seconds;
    while (now_s() < end && st[0].n < MAX_SLICES) {
        for (int i = 0; i < nv; i++) {
            double c0 = cpu_s(), t0 = now_s();
            for (int k = 0; k < SLICE; k++)
                if (v[i].fn(v[i].ctx, next_id()) != 0)
                    die("transaction", "failed");
            double dt = now_s() - t0;
            st[i].cpu_s += cpu_s() - c0;
            st[i].rates[st[i].n++] = SLICE / dt;
            st[i].total_s += dt;
            st[i].total_tx += SLICE;
        }
    }
    for (int i = 0; i < nv; i++) {
        qsort(st[i].rates, st[i].n, sizeof(double), cmp_double);
        v[i].best = st[i].rates[st[i].n / 2];
        v[i].mean = (double)st[i].total_tx / st[i].total_s;
        v[i].cpu_us = st[i].cpu_s * 1e6 / (double)st[i].total_tx;
        free(st[i].rates);
    }
}

static void report(const char *engine, const struct variant *v, int nv)
{
    for (int i = 0; i < nv; i++)
        printf("%-9s %-42s %7.0f tx/s %.3fx  mean %7.0f tx/s %.3fx  client cpu %5.1f us/tx\n",
               engine, v[i].name, v[i].best, v[i].best / v[0].best, v[i].mean,
               v[i].mean / v[0].mean, v[i].cpu_us);
}

static void populate(dbk_db *db, int pg)
{
    dbk_error err;
    const char *sql =
        pg ? "DROP TABLE IF EXISTS bench_tx; CREATE TABLE bench_tx (id BIGINT PRIMARY KEY, "
             "n BIGINT NOT NULL); INSERT INTO bench_tx SELECT g, 0 FROM generate_series(1, 1000) g;"
             " ANALYZE bench_tx;"
           : "DROP TABLE IF EXISTS bench_tx; CREATE TABLE bench_tx (id INTEGER PRIMARY KEY, "
             "n INTEGER NOT NULL); WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM "
             "g WHERE i < 1000) INSERT INTO bench_tx SELECT i, 0 FROM g;";
    if (dbk_db_exec_script(db, sql, &err) != DBK_OK)
        die("populate", err.message);
}

static dbk_conn *open_conn(const char *url)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err) != DBK_OK)
        die("config", err.message);
    if (dbk_conn_open(cfg, &c, &err) != DBK_OK)
        die("connect", err.message);
    dbk_config_free(cfg);
    return c;
}

static dbk_pool *open_pool(const char *url)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_pool *p = NULL;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err) != DBK_OK)
        die("config", err.message);
    dbk_pool_opts o = DBK_POOL_OPTS_INIT;
    o.max_size = 1;
    if (dbk_pool_open(cfg, &o, &p, &err) != DBK_OK)
        die("pool", err.message);
    dbk_config_free(cfg);
    return p;
}

static void bench_sqlite(int rounds, double seconds)
{
    char dir[] = "/tmp/tx_bench.XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", "failed");
    char path[256], url[300];
    snprintf(path, sizeof path, "%s/bench.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", path);
    dbk_conn *conn = open_conn(url);
    populate(dbk_conn_db(conn), 0);

    struct sq s;
    if (sqlite3_open_v2(path, &s.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL))
        die("sqlite3_open", sqlite3_errmsg(s.db));
    sqlite3_exec(s.db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                       "PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON",
                 NULL, NULL, NULL);
    if (sqlite3_prepare_v2(s.db, "BEGIN IMMEDIATE", -1, &s.begin, NULL) ||
        sqlite3_prepare_v2(s.db, "UPDATE bench_tx SET n = n + 1 WHERE id = ?1", -1, &s.upd,
                           NULL) ||
        sqlite3_prepare_v2(s.db, "COMMIT", -1, &s.commit, NULL))
        die("sqlite3_prepare", sqlite3_errmsg(s.db));

    struct dk d_def = {dbk_conn_db(conn), DBK_TX_OPTS_INIT};
    struct dk d_nto = {dbk_conn_db(conn), DBK_TX_OPTS_INIT};
    d_nto.opts.timeout_ms = DBK_TX_NO_TIMEOUT;
    struct variant v[] = {
        {"sqlite3 BEGIN IMMEDIATE/UPDATE/COMMIT", sq_tx, &s, 0, 0, 0},
        {"dbk_tx_run (defaults)", dk_tx, &d_def, 0, 0, 0},
        {"dbk_tx_run (no timeout)", dk_tx, &d_nto, 0, 0, 0},
    };
    int nv = (int)(sizeof v / sizeof v[0]);
    run_variants(v, nv, rounds, seconds);
    report("sqlite", v, nv);

    sqlite3_finalize(s.begin);
    sqlite3_finalize(s.upd);
    sqlite3_finalize(s.commit);
    sqlite3_close(s.db);
    dbk_conn_close(conn);
    char f[300];
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(f, sizeof f, "%s%s", path, suffix[i]);
        unlink(f);
    }
    rmdir(dir);
}

static void bench_pg(const char *url, int rounds, double seconds)
{
    dbk_conn *conn = open_conn(url);
    populate(dbk_conn_db(conn), 1);
    dbk_pool *pool = open_pool(url);

    PGconn *pc = PQconnectdb(url);
    if (PQstatus(pc) != CONNECTION_OK)
        die("PQconnectdb", PQerrorMessage(pc));
    if (!pq_ok(PQprepare(pc, "upd", "UPDATE bench_tx SET n = n + 1 WHERE id = $1", 1, NULL),
               PGRES_COMMAND_OK))
        die("PQprepare", "");
    PGconn *pp = PQconnectdb(url); /* pipeline mode, its own connection */
    if (PQstatus(pp) != CONNECTION_OK)
        die("PQconnectdb", PQerrorMessage(pp));
    if (!pq_ok(PQprepare(pp, "upd", "UPDATE bench_tx SET n = n + 1 WHERE id = $1", 1, NULL),
               PGRES_COMMAND_OK) ||
        !PQenterPipelineMode(pp))
        die("pipeline", PQerrorMessage(pp));

    dbk_conn *conn2 = open_conn(url); /* each variant its own connection */
    struct dk d_def = {dbk_conn_db(conn), DBK_TX_OPTS_INIT};
    struct dk d_nto = {dbk_conn_db(conn2), DBK_TX_OPTS_INIT};
    d_nto.opts.timeout_ms = DBK_TX_NO_TIMEOUT;
    struct dk d_pool = {dbk_pool_db(pool), DBK_TX_OPTS_INIT};
    struct variant v[] = {
        {"libpq BEGIN/UPDATE/COMMIT (3 round trips)", pq_tx, pc, 0, 0, 0},
        {"dbk_tx_run (defaults)", dk_tx, &d_def, 0, 0, 0},
        {"dbk_tx_run (no timeout)", dk_tx, &d_nto, 0, 0, 0},
        {"dbk_tx_run on a pool (defaults)", dk_tx, &d_pool, 0, 0, 0},
        {"libpq pipeline BEGIN+UPDATE, COMMIT (2)", pq_pipe2, pp, 0, 0, 0},
        {"libpq pipeline BEGIN+UPDATE+COMMIT (1)", pq_pipe1, pp, 0, 0, 0},
    };
    int nv = (int)(sizeof v / sizeof v[0]);
    run_variants(v, nv, rounds, seconds);
    report("postgres", v, nv);
    dbk_pool_stats ps;
    dbk_error err;
    if (dbk_pool_get_stats(pool, &ps, &err) == DBK_OK)
        printf("postgres    (pool: %llu acquires, %llu session resets, %llu discarded)\n",
               (unsigned long long)ps.acquires, (unsigned long long)ps.resets,
               (unsigned long long)ps.discarded);

    PQfinish(pp);
    PQfinish(pc);
    dbk_pool_close(pool, 1000);
    dbk_conn_close(conn2);
    dbk_conn_close(conn);
}

int main(int argc, char **argv)
{
    double seconds = 2;
    int rounds = 3, sqlite_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--sqlite-only") == 0)
            sqlite_only = 1;
        else {
            fprintf(stderr, "usage: tx_bench [--seconds S] [--rounds R] [--sqlite-only]\n");
            return 2;
        }
    }
    if (seconds <= 0 || rounds < 1) {
        fprintf(stderr, "tx_bench: --seconds and --rounds must be positive\n");
        return 2;
    }
    printf("one-UPDATE transactions, variants interleaved for %.1f s per engine; median slice "
           "rate and ratio to the first line of each engine (target for dbkit >= 0.90x)\n",
           rounds * seconds);
    bench_sqlite(rounds, seconds);
    if (sqlite_only)
        return 0;
    const char *url = getenv("DATABASE_URL");
    if (!url || strncmp(url, "postgres", 8) != 0)
        url = getenv("DBKIT_TEST_PG_URL");
    if (!url || strncmp(url, "postgres", 8) != 0) {
        printf("postgres    skipped: set DATABASE_URL or DBKIT_TEST_PG_URL to a postgres:// URL\n");
        return 0;
    }
    bench_pg(url, rounds, seconds);
    return 0;
}
