/*
 * The cost of read routing: primary-key lookups on a streaming replica,
 * through the cluster's read executors (dbk_cluster_read_db: one routing
 * decision per statement; dbk_cluster_read_db_after with a token the
 * replica has replayed: one decision per "request" of one lookup), next to
 * the baseline of a plain pool opened on the same replica, in the same run.
 * The statement, the server and the connection count are the same; only the
 * executor differs, so the ratio is the routing's overhead (target: the
 * router at >= 0.95 of the plain pool, i.e. <= 5 % overhead). Each side
 * also prints the calling thread's CPU time per lookup (best round): on a
 * busy machine the wall-clock rate moves with everything else running,
 * while the client's own CPU per lookup is where routing costs show.
 *
 * usage: replica_bench --primary URL --replica URL [--rows N] [--seconds S]
 *                      [--rounds R] [--only plain|router|after]
 * (--only runs one executor, for a profiler: perf stat, callgrind.)
 * The table is created on the primary and read on the replica once it has
 * replayed it. Rounds alternate the three executors; the best round of
 * each is printed. bench/topo_bench.sh starts the replica and runs this.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "benchutil.h"

static const char *SQL = "SELECT id, name, email FROM replica_bench WHERE id = $1";

static uint64_t rng;
static int64_t next_id(int64_t rows)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % (uint64_t)rows) + 1;
}

static volatile size_t sink;

static int lookup(dbk_db *db, int64_t id)
{
    dbk_value p = dbk_int64(id);
    dbk_result *r;
    dbk_error err;
    if (dbk_db_query(db, SQL, &p, 1, &r, &err) != DBK_OK)
        die("lookup", err.message);
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

typedef enum { PLAIN, ROUTER, AFTER } mode;

struct target {
    dbk_db *plain;
    dbk_cluster *cl;
    const char *token;
};

static long last_n; /* lookups of the last measure() */

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Lookups until `seconds` pass; queries per second, and this thread's CPU
 * microseconds per lookup in *cpu_us (may be NULL). */
static double measure(struct target *t, mode m, int64_t rows, double seconds, double *cpu_us)
{
    rng = 88172645463325252ULL;
    long n = 0;
    double c0 = thread_cpu_s();
    double t0 = now_s(), now;
    do {
        for (int i = 0; i < 256; i++) {
            dbk_db *db = m == PLAIN ? t->plain : dbk_cluster_read_db(t->cl);
            if (m == AFTER) {
                dbk_error err;
                if (dbk_cluster_read_db_after(t->cl, t->token, &db, &err) != DBK_OK)
                    die("read_db_after", err.message);
            }
            if (lookup(db, next_id(rows)) != 0)
                die("lookup", "wrong row");
        }
        n += 256;
        now = now_s();
    } while (now - t0 < seconds);
    if (cpu_us)
        *cpu_us = (thread_cpu_s() - c0) * 1e6 / (double)n;
    last_n = n;
    return (double)n / (now - t0);
}

static dbk_config *config(const char *url)
{
    dbk_config *cfg;
    dbk_error err;
    if (dbk_config_from_url(url, &cfg, &err) != DBK_OK)
        die("config", err.message);
    return cfg;
}

int main(int argc, char **argv)
{
    bench_prog = "replica_bench";
    const char *primary = NULL, *replica = NULL;
    int64_t rows = 100000;
    double seconds = 2;
    int rounds = 3;
    int only = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--primary") && i + 1 < argc)
            primary = argv[++i];
        else if (!strcmp(argv[i], "--replica") && i + 1 < argc)
            replica = argv[++i];
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = strtoll(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            i++;
            only = !strcmp(argv[i], "plain")    ? PLAIN
                   : !strcmp(argv[i], "router") ? ROUTER
                   : !strcmp(argv[i], "after")  ? AFTER
                                                : -2;
        } else {
            fprintf(stderr,
                    "usage: %s --primary URL --replica URL [--rows N] [--seconds S] "
                    "[--rounds R] [--only plain|router|after]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!primary || !replica || rows < 1 || rows > 10000000 || seconds <= 0 || seconds > 60 ||
        rounds < 1 || rounds > 20 || only == -2) {
        fprintf(stderr, "replica_bench: --primary and --replica are required; 1 <= rows <= 1e7, "
                        "0 < seconds <= 60, 1 <= rounds <= 20\n");
        return 2;
    }
    dbk_set_log(dbk_log_stderr, NULL, DBK_LOG_WARN);
    dbk_error err;

    /* The table, on the primary. */
    PGconn *pg = PQconnectdb(primary);
    if (PQstatus(pg) != CONNECTION_OK)
        die("primary", PQerrorMessage(pg));
    char ddl[512];
    snprintf(ddl, sizeof ddl,
             "DROP TABLE IF EXISTS replica_bench; CREATE TABLE replica_bench (id BIGINT PRIMARY "
             "KEY, name TEXT NOT NULL, email TEXT NOT NULL); INSERT INTO replica_bench SELECT g, "
             "'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, %lld) g; "
             "ANALYZE replica_bench",
             (long long)rows);
    PGresult *res = PQexec(pg, ddl);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("populate", PQerrorMessage(pg));
    PQclear(res);

    /* The cluster: the primary, the replica; wait (30 s) until the replica
     * is in the rotation and has replayed the table. */
    dbk_config *pcfg = config(primary);
    const char *urls[1] = {replica};
    dbk_cluster_opts co = DBK_CLUSTER_OPTS_INIT;
    co.replica_urls = urls;
    co.nreplicas = 1;
    dbk_cluster *cl;
    if (dbk_cluster_open(pcfg, &co, &cl, &err) != DBK_OK)
        die("cluster", err.message);
    dbk_config_free(pcfg);
    char token[DBK_TOKEN_MAX];
    if (dbk_cluster_token(cl, token, sizeof token, &err) != DBK_OK)
        die("token", err.message);
    uint64_t want = 0;
    dbk_token_parse(token, &want);
    dbk_cluster_stats st;
    int ready = 0;
    for (int i = 0; i < 3000 && !ready; i++) {
        if (dbk_cluster_get_stats(cl, &st, &err) != DBK_OK)
            die("stats", err.message);
        ready = st.replica[0].state == DBK_REPLICA_UP && st.replica[0].replay_lsn >= want;
        if (!ready) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    if (!ready)
        die("replica", "not in the rotation after 30 s (is it a streaming replica of --primary?)");

    /* The baseline: a plain pool on the same replica. */
    dbk_config *rcfg = config(replica);
    dbk_pool *pool;
    if (dbk_pool_open(rcfg, NULL, &pool, &err) != DBK_OK)
        die("pool", err.message);
    dbk_config_free(rcfg);

    struct target t = {dbk_pool_db(pool), cl, token};
    printf("primary-key lookup on a streaming replica, %lld rows, random ids, one thread, best of "
           "%d x %.1fs\n",
           (long long)rows, rounds, seconds);
    if (only >= 0) {
        double cpu = 0;
        double q = measure(&t, (mode)only, rows, seconds, &cpu);
        printf("%.0f q/s, %.2f us CPU per lookup, %ld lookups\n", q, cpu, last_n);
        dbk_pool_close(pool, 1000);
        PQfinish(pg);
        dbk_cluster_close(cl, 1000);
        return 0;
    }
    /* Warm both executors' connections and the replica's cache. */
    measure(&t, PLAIN, rows, 0.2, NULL);
    measure(&t, ROUTER, rows, 0.2, NULL);
    double best[3] = {0, 0, 0}, cpu[3] = {1e9, 1e9, 1e9};
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < 3; m++) {
            double c = 0;
            double q = measure(&t, (mode)m, rows, seconds, &c);
            best[m] = q > best[m] ? q : best[m];
            cpu[m] = c < cpu[m] ? c : cpu[m];
        }
    if (dbk_cluster_get_stats(cl, &st, &err) != DBK_OK)
        die("stats", err.message);
    printf("%-44s %9.0f q/s %7.2f us CPU/lookup\n", "plain pool on the replica (dbk_pool_db)",
           best[PLAIN], cpu[PLAIN]);
    printf("%-44s %9.0f q/s %7.2f us CPU/lookup   ratio %.3f, CPU %+.1f%% (target: "
           "ratio >= 0.95)\n",
           "cluster read router (dbk_cluster_read_db)", best[ROUTER], cpu[ROUTER],
           best[ROUTER] / best[PLAIN], (cpu[ROUTER] / cpu[PLAIN] - 1) * 100);
    printf("%-44s %9.0f q/s %7.2f us CPU/lookup   ratio %.3f, CPU %+.1f%%\n",
           "read_db_after(token) + one lookup", best[AFTER], cpu[AFTER], best[AFTER] / best[PLAIN],
           (cpu[AFTER] / cpu[PLAIN] - 1) * 100);
    printf("(the cluster's reads: %llu on the replica, %llu on the primary)\n",
           (unsigned long long)st.replica[0].reads, (unsigned long long)st.primary_reads);

    dbk_pool_close(pool, 1000);
    res = PQexec(pg, "DROP TABLE IF EXISTS replica_bench");
    PQclear(res);
    PQfinish(pg);
    dbk_cluster_close(cl, 1000);
    return 0;
}
