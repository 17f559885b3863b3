/*
 * Batches on one PostgreSQL connection, next to hand-written libpq in the
 * same run, on the same table:
 *   raw pipeline   PQenterPipelineMode, 100 x PQsendQueryPrepared, one
 *                  PQpipelineSync, read the 100 results (the best a libpq
 *                  user can do by hand)
 *   dbk_batch      dbk_batch_clear + 100 x dbk_batch_add + dbk_batch_run,
 *                  independent mode (a Sync per statement) and atomic mode
 *                  (one Sync), reading the same column
 *   one by one     100 x dbk_db_query (a round trip each)
 *   raw one by one 100 x PQexecPrepared
 * Each variant reads the email of every row it fetched. Variants run in
 * interleaved slices; the best slice of each counts.
 *
 * usage: batch_bench [--seconds S]   (per variant, default 2)
 * PostgreSQL comes from DATABASE_URL or DBKIT_TEST_PG_URL.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dbkit/dbkit.h>

#include "benchutil.h"

#define ROWS 10000
#define PER_BATCH 100

static const char *SQL = "SELECT id, email FROM bb_users WHERE id = $1";

static uint64_t rng = 88172645463325252ULL;
static int64_t next_id(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % ROWS) + 1;
}

static volatile size_t sink;

/* ---- the variants: each does one batch of PER_BATCH lookups ---- */

static int sync_each;

static void raw_pipeline(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    (void)db;
    (void)b;
    char ids[PER_BATCH][24];
    if (!PQenterPipelineMode(pg))
        die("enter pipeline", PQerrorMessage(pg));
    for (int i = 0; i < PER_BATCH; i++) {
        snprintf(ids[i], sizeof ids[i], "%lld", (long long)next_id());
        const char *v[1] = {ids[i]};
        if (!PQsendQueryPrepared(pg, "bb_find", 1, v, NULL, NULL, 0))
            die("send", PQerrorMessage(pg));
        if (sync_each && !PQpipelineSync(pg))
            die("sync", PQerrorMessage(pg));
    }
    if (!sync_each && !PQpipelineSync(pg))
        die("sync", PQerrorMessage(pg));
    int got = 0, syncs = 0;
    for (;;) {
        PGresult *r = PQgetResult(pg);
        if (!r)
            continue; /* the NULL after each query's results */
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (!sync_each || ++syncs == PER_BATCH)
                break;
            continue;
        }
        if (st != PGRES_TUPLES_OK || PQntuples(r) != 1)
            die("pipeline result", PQresultErrorMessage(r));
        sink += strlen(PQgetvalue(r, 0, 1));
        got++;
        PQclear(r);
    }
    if (got != PER_BATCH || !PQexitPipelineMode(pg))
        die("exit pipeline", PQerrorMessage(pg));
}

static void raw_pipeline_sync_each(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    sync_each = 1;
    raw_pipeline(pg, db, b);
    sync_each = 0;
}

static void raw_one_by_one(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    (void)db;
    (void)b;
    for (int i = 0; i < PER_BATCH; i++) {
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)next_id());
        const char *v[1] = {id};
        PGresult *r = PQexecPrepared(pg, "bb_find", 1, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
            die("exec", PQresultErrorMessage(r));
        sink += strlen(PQgetvalue(r, 0, 1));
        PQclear(r);
    }
}

static void run_batch(dbk_db *db, dbk_batch *b, dbk_batch_mode mode)
{
    dbk_error err;
    dbk_batch_clear(b);
    for (int i = 0; i < PER_BATCH; i++) {
        dbk_value p = dbk_int64(next_id());
        if (dbk_batch_add(b, SQL, &p, 1, &err))
            die("add", err.message);
    }
    if (dbk_batch_run(db, b, mode, &err))
        die("run", err.message);
    for (int i = 0; i < PER_BATCH; i++) {
        const char *email;
        size_t len;
        if (dbk_result_get_text(dbk_batch_result(b, (size_t)i), 0, 1, &email, &len, &err))
            die("read", err.message);
        sink += len;
    }
}

static void dbk_independent(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    (void)pg;
    run_batch(db, b, DBK_BATCH_INDEPENDENT);
}

static void dbk_atomic(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    (void)pg;
    run_batch(db, b, DBK_BATCH_ATOMIC);
}

static void dbk_one_by_one(PGconn *pg, dbk_db *db, dbk_batch *b)
{
    (void)pg;
    (void)b;
    dbk_error err;
    for (int i = 0; i < PER_BATCH; i++) {
        dbk_value p = dbk_int64(next_id());
        dbk_result *r;
        const char *email;
        size_t len;
        if (dbk_db_query(db, SQL, &p, 1, &r, &err) ||
            dbk_result_get_text(r, 0, 1, &email, &len, &err))
            die("query", err.message);
        sink += len;
        dbk_result_free(r);
    }
}

struct variant {
    const char *name;
    void (*fn)(PGconn *, dbk_db *, dbk_batch *);
    double best; /* lookups per second */
};

int main(int argc, char **argv)
{
    bench_prog = "batch_bench";
    double secs = 2.0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            secs = strtod(argv[++i], NULL);
    if (secs <= 0 || secs > 60)
        die("--seconds", "between 0 and 60");
    const char *url = bench_pg_url();
    if (!url)
        return 0;
    dbk_error err;
    PGconn *pg;
    dbk_conn *c = bench_open(url,
                             "DROP TABLE IF EXISTS bb_users;"
                             "CREATE TABLE bb_users (id bigint PRIMARY KEY, email text NOT NULL);"
                             "INSERT INTO bb_users SELECT g, 'user' || g || '@example.com' "
                             "FROM generate_series(1, 10000) g; ANALYZE bb_users",
                             &pg);
    dbk_db *db = dbk_conn_db(c);
    PGresult *pr = PQprepare(pg, "bb_find", SQL, 1, NULL);
    if (PQresultStatus(pr) != PGRES_COMMAND_OK)
        die("prepare", PQresultErrorMessage(pr));
    PQclear(pr);
    dbk_batch *b;
    if (dbk_batch_new(&b, &err))
        die("batch", err.message);

    struct variant v[] = {
        {"raw libpq pipeline, 1 sync", raw_pipeline, 0},
        {"raw libpq pipeline, sync each", raw_pipeline_sync_each, 0},
        {"dbk_batch independent", dbk_independent, 0},
        {"dbk_batch atomic", dbk_atomic, 0},
        {"dbk_db_query x100", dbk_one_by_one, 0},
        {"raw PQexecPrepared x100", raw_one_by_one, 0},
    };
    size_t nv = sizeof v / sizeof v[0];
    int slices = 5;
    for (int s = 0; s < slices; s++) {
        for (size_t k = 0; k < nv; k++) {
            double t0 = now_s(), t;
            long n = 0;
            do {
                v[k].fn(pg, db, b);
                n++;
                t = now_s() - t0;
            } while (t < secs / slices && n < 1000000);
            double rate = (double)n * PER_BATCH / t;
            if (rate > v[k].best)
                v[k].best = rate;
        }
    }
    printf("== %d primary-key lookups per batch, one PostgreSQL connection ==\n", PER_BATCH);
    for (size_t k = 0; k < nv; k++)
        printf("%-30s %10.0f lookups/s  %.2fx raw pipeline\n", v[k].name, v[k].best,
               v[k].best / v[0].best);
    printf("dbk_batch independent / raw pipeline: %.2fx (target >= 0.80x); "
           "/ dbk_db_query one by one: %.1fx\n",
           v[2].best / v[0].best, v[2].best / v[4].best);
    dbk_db_exec(db, "DROP TABLE bb_users", NULL, 0, NULL, &err);
    dbk_batch_free(b);
    PQfinish(pg);
    dbk_conn_close(c);
    return 0;
}
