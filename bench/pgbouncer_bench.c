/*
 * Primary-key lookups through PgBouncer in transaction mode: dbkit with
 * pooler=transaction (one pooled connection, unnamed statements) next to
 * the hand-written baseline that is safe behind such a pooler, libpq
 * PQexecParams (an unnamed statement: Parse/Bind/Execute each time) on one
 * connection through the same PgBouncer, in the same run. Both read every
 * column of the row. Target: dbkit at >= 0.9 of the baseline.
 *
 * usage: pgbouncer_bench --bouncer URL --direct URL [--rows N] [--seconds S]
 *                        [--rounds R] [--only raw|dbkit]
 * (--only runs one side, for a profiler or PgBouncer's SHOW STATS.)
 * --direct is the server itself (the table is created there); --bouncer
 * the PgBouncer in front of it. Rounds alternate the two; the best round
 * of each is printed. bench/topo_bench.sh starts the PgBouncer and runs
 * this.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "benchutil.h"

static const char *SQL = "SELECT id, name, email FROM pgbouncer_bench WHERE id = $1";

static uint64_t rng;
static int64_t next_id(int64_t rows)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % (uint64_t)rows) + 1;
}

static volatile size_t sink;

static int dbkit_lookup(void *ctx, int64_t id)
{
    dbk_db *db = ctx;
    dbk_value p = dbk_int64(id);
    dbk_result *r;
    dbk_error err;
    if (dbk_db_query(db, SQL, &p, 1, &r, &err) != DBK_OK)
        die("dbkit lookup", err.message);
    int ok = dbk_result_nrows(r) == 1;
    int64_t rid = 0;
    const char *name = "", *email = "";
    size_t l1 = 0, l2 = 0;
    if (ok && (dbk_result_get_int64(r, 0, 0, &rid, &err) ||
               dbk_result_get_text(r, 0, 1, &name, &l1, &err) ||
               dbk_result_get_text(r, 0, 2, &email, &l2, &err)))
        ok = 0;
    sink += (size_t)rid + l1 + l2;
    dbk_result_free(r);
    return ok && rid == id ? 0 : -1;
}

static int pq_lookup(void *ctx, int64_t id)
{
    PGconn *c = ctx;
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    const char *vals[1] = {buf};
    PGresult *r = PQexecParams(c, SQL, 1, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "pgbouncer_bench: libpq lookup: %s", PQerrorMessage(c));
        PQclear(r);
        return -1;
    }
    int64_t rid = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    sink += (size_t)rid + strlen(PQgetvalue(r, 0, 1)) + strlen(PQgetvalue(r, 0, 2));
    PQclear(r);
    return rid == id ? 0 : -1;
}

typedef int (*lookup_fn)(void *ctx, int64_t id);

static long last_n; /* lookups of the last measure() */

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Lookups until `seconds` pass; queries per second, and this thread's CPU
 * microseconds per lookup in *cpu_us (may be NULL). */
static double measure(lookup_fn fn, void *ctx, int64_t rows, double seconds, double *cpu_us)
{
    rng = 88172645463325252ULL;
    long n = 0;
    double c0 = thread_cpu_s();
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 256; i++)
            if (fn(ctx, next_id(rows)) != 0)
                die("lookup", "wrong row");
        n += 256;
        t = now_s();
    } while (t - t0 < seconds);
    if (cpu_us)
        *cpu_us = (thread_cpu_s() - c0) * 1e6 / (double)n;
    last_n = n;
    return (double)n / (t - t0);
}

int main(int argc, char **argv)
{
    bench_prog = "pgbouncer_bench";
    const char *bouncer = NULL, *direct = NULL;
    int64_t rows = 100000;
    double seconds = 2;
    int rounds = 3;
    int only = -1; /* 0 raw, 1 dbkit */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bouncer") && i + 1 < argc)
            bouncer = argv[++i];
        else if (!strcmp(argv[i], "--direct") && i + 1 < argc)
            direct = argv[++i];
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = strtoll(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            i++;
            only = !strcmp(argv[i], "raw") ? 0 : !strcmp(argv[i], "dbkit") ? 1 : -2;
        } else {
            fprintf(stderr,
                    "usage: %s --bouncer URL --direct URL [--rows N] [--seconds S] "
                    "[--rounds R] [--only raw|dbkit]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!bouncer || !direct || strchr(bouncer, '?') || rows < 1 || rows > 10000000 ||
        seconds <= 0 || seconds > 60 || rounds < 1 || rounds > 20 || only == -2) {
        fprintf(stderr, "pgbouncer_bench: --bouncer (without ?parameters) and --direct are "
                        "required; 1 <= rows <= 1e7, 0 < seconds <= 60, 1 <= rounds <= 20\n");
        return 2;
    }
    dbk_set_log(dbk_log_stderr, NULL, DBK_LOG_WARN);

    PGconn *adm = PQconnectdb(direct);
    if (PQstatus(adm) != CONNECTION_OK)
        die("direct", PQerrorMessage(adm));
    char ddl[512];
    snprintf(ddl, sizeof ddl,
             "DROP TABLE IF EXISTS pgbouncer_bench; CREATE TABLE pgbouncer_bench (id BIGINT "
             "PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL); INSERT INTO pgbouncer_bench "
             "SELECT g, 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, "
             "%lld) g; ANALYZE pgbouncer_bench",
             (long long)rows);
    PGresult *res = PQexec(adm, ddl);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("populate", PQerrorMessage(adm));
    PQclear(res);

    /* dbkit: a pool of one through the bouncer, pooler=transaction. */
    char url[600];
    snprintf(url, sizeof url, "%s?pooler=transaction&pool_max=1", bouncer);
    dbk_error err;
    dbk_config *cfg;
    if (dbk_config_from_url(url, &cfg, &err) != DBK_OK)
        die("config", err.message);
    dbk_pool *pool;
    if (dbk_pool_open(cfg, NULL, &pool, &err) != DBK_OK)
        die("pool", err.message);
    dbk_config_free(cfg);
    PGconn *pg = PQconnectdb(bouncer);
    if (PQstatus(pg) != CONNECTION_OK)
        die("libpq through the bouncer", PQerrorMessage(pg));

    printf("primary-key lookup through PgBouncer (pool_mode=transaction), %lld rows, random ids, "
           "one client connection each, best of %d x %.1fs\n",
           (long long)rows, rounds, seconds);
    if (only >= 0) {
        double cpu = 0;
        double q = only ? measure(dbkit_lookup, dbk_pool_db(pool), rows, seconds, &cpu)
                        : measure(pq_lookup, pg, rows, seconds, &cpu);
        printf("%.0f q/s, %.2f us CPU per lookup, %ld lookups\n", q, cpu, last_n);
    } else {
        measure(pq_lookup, pg, rows, 0.2, NULL);
        measure(dbkit_lookup, dbk_pool_db(pool), rows, 0.2, NULL);
        double best_raw = 0, best_dbk = 0, cpu_raw = 1e9, cpu_dbk = 1e9;
        for (int r = 0; r < rounds; r++) {
            double ca = 0, cb = 0;
            double a = measure(pq_lookup, pg, rows, seconds, &ca);
            double b = measure(dbkit_lookup, dbk_pool_db(pool), rows, seconds, &cb);
            best_raw = a > best_raw ? a : best_raw;
            best_dbk = b > best_dbk ? b : best_dbk;
            cpu_raw = ca < cpu_raw ? ca : cpu_raw;
            cpu_dbk = cb < cpu_dbk ? cb : cpu_dbk;
        }
        printf("%-44s %9.0f q/s %7.2f us CPU/lookup\n",
               "raw libpq PQexecParams (unnamed statement)", best_raw, cpu_raw);
        printf("%-44s %9.0f q/s %7.2f us CPU/lookup   ratio %.3f (target >= 0.90)\n",
               "dbkit dbk_db_query, pooler=transaction", best_dbk, cpu_dbk, best_dbk / best_raw);
    }

    PQfinish(pg);
    dbk_pool_close(pool, 1000);
    res = PQexec(adm, "DROP TABLE IF EXISTS pgbouncer_bench");
    PQclear(res);
    PQfinish(adm);
    return 0;
}
