/*
 * testdb_bench: what a fresh migrated database costs with dbk_testdb, next
 * to building one from scratch (create + apply the migrations) in the same
 * run, on the example migrations (examples/db/migrations, or argv[1]).
 *
 *   PostgreSQL  new + drop, median of N rounds, with CREATE DATABASE
 *               STRATEGY FILE_COPY and WAL_LOG (15+); target <= 50 ms median
 *   SQLite      new + drop, median of N rounds; target <= 5 ms median
 *   rebuild     the template's oid before and after N rounds: unchanged
 *
 * Prints figures; never fails on time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "benchutil.h"

#define ROUNDS 30

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

static double run_new(const dbk_config *cfg, const char *dir, dbk_testdb_strategy s,
                      double *new_ms)
{
    double t[ROUNDS], tn[ROUNDS];
    dbk_error err;
    dbk_testdb_opts o = DBK_TESTDB_OPTS_INIT;
    o.strategy = s;
    dbk_testdb *warm = NULL;
    if (dbk_testdb_new(cfg, dir, &o, &warm, &err)) /* builds the template once */
        die("testdb new", err.message);
    dbk_testdb_drop(warm, NULL);
    for (int i = 0; i < ROUNDS; i++) {
        dbk_testdb *x = NULL;
        double t0 = now_s();
        if (dbk_testdb_new(cfg, dir, &o, &x, &err))
            die("testdb new", err.message);
        double t1 = now_s();
        if (dbk_testdb_drop(x, &err))
            die("testdb drop", err.message);
        tn[i] = (t1 - t0) * 1e3;
        t[i] = (now_s() - t0) * 1e3;
    }
    *new_ms = median(tn, ROUNDS);
    return median(t, ROUNDS);
}

/* Baseline: an empty database (or file) and the migrations applied to it. */
static double run_scratch(const dbk_config *cfg, const char *dir)
{
    double t[ROUNDS / 3];
    dbk_error err;
    for (int i = 0; i < ROUNDS / 3; i++) {
        double t0 = now_s();
        dbk_testdb *x = NULL;
        if (dbk_testdb_new(cfg, NULL, NULL, &x, &err))
            die("testdb new (empty)", err.message);
        dbk_conn *c = NULL;
        dbk_migrate_source src = {.dir = dir};
        if (dbk_conn_open(dbk_testdb_config(x), &c, &err) ||
            dbk_migrate_up(dbk_conn_db(c), &src, NULL, NULL, &err))
            die("migrate", err.message);
        dbk_conn_close(c);
        if (dbk_testdb_drop(x, &err))
            die("testdb drop", err.message);
        t[i] = (now_s() - t0) * 1e3;
    }
    return median(t, ROUNDS / 3);
}

int main(int argc, char **argv)
{
    bench_prog = "testdb_bench";
    const char *dir = argc > 1 ? argv[1] : DBKIT_SOURCE_DIR "/examples/db/migrations";
    dbk_error err;
    dbk_config *cfg = NULL;
    printf("testdb_bench: migrations %s, %d rounds, medians (new + drop; new alone)\n", dir,
           ROUNDS);

    char sqlite_url[512];
    snprintf(sqlite_url, sizeof sqlite_url, "sqlite:/tmp/testdb_bench.%d/x.db", (int)getpid());
    char mk[600];
    snprintf(mk, sizeof mk, "/tmp/testdb_bench.%d", (int)getpid());
    if (mkdir(mk, 0700) != 0)
        die("mkdir", mk);
    if (dbk_config_from(sqlite_url, NULL, NULL, &cfg, &err))
        die("config", err.message);
    double n1, a = run_new(cfg, dir, 0, &n1);
    double b = run_scratch(cfg, dir);
    printf("  sqlite    testdb %7.2f ms (new %6.2f)  from scratch %7.2f ms  ratio %.2f  "
           "target <= 5 ms: %s\n",
           a, n1, b, a / b, n1 <= 5 ? "met" : "MISSED");
    dbk_config_free(cfg);
    char rm[700];
    snprintf(rm, sizeof rm, "rm -rf %s", mk);
    if (system(rm) != 0)
        fprintf(stderr, "testdb_bench: could not remove %s\n", mk);

    const char *url = bench_pg_url();
    if (!url)
        return 0;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err))
        die("config", err.message);
    double nf, f = run_new(cfg, dir, DBK_TESTDB_STRATEGY_FILE_COPY, &nf);
    double nw, w = run_new(cfg, dir, DBK_TESTDB_STRATEGY_WAL_LOG, &nw);
    double s = run_scratch(cfg, dir);
    printf("  postgres  FILE_COPY %7.2f ms (new %6.2f)  WAL_LOG %7.2f ms (new %6.2f)  "
           "from scratch %7.2f ms\n",
           f, nf, w, nw, s);
    double best = nf < nw ? nf : nw;
    printf("            faster: %s; default FILE_COPY; ratio to scratch %.2f; target <= 50 ms: "
           "%s\n",
           nf <= nw ? "FILE_COPY" : "WAL_LOG", (nf < nw ? f : w) / s,
           best <= 50 ? "met" : "MISSED");

    /* the template survives the rounds: built once */
    dbk_testdb *x = NULL, *y = NULL;
    if (dbk_testdb_new(cfg, dir, NULL, &x, &err))
        die("testdb new", err.message);
    dbk_conn *c = NULL;
    if (dbk_conn_open(cfg, &c, &err))
        die("connect", err.message);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT oid::bigint FROM pg_database WHERE datname = '%s'",
             dbk_testdb_template(x));
    int64_t o1 = 0, o2 = 0;
    dbk_db_query_int64(dbk_conn_db(c), sql, NULL, 0, &o1, &err);
    if (dbk_testdb_new(cfg, dir, NULL, &y, &err))
        die("testdb new", err.message);
    dbk_db_query_int64(dbk_conn_db(c), sql, NULL, 0, &o2, &err);
    printf("  template  %s oid %lld then %lld: %s\n", dbk_testdb_template(x), (long long)o1,
           (long long)o2, o1 == o2 && o1 ? "reused" : "REBUILT");
    dbk_conn_close(c);
    dbk_testdb_drop(x, NULL);
    dbk_testdb_drop(y, NULL);
    dbk_config_free(cfg);
    return 0;
}
