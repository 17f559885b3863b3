/*
 * Documents: find by id and insert through dbkit/doc.h next to hand-written
 * baselines doing the same work in the same run:
 *   PostgreSQL: libpq, prepared once, "SELECT doc FROM t WHERE id = $1" and
 *               "INSERT ... VALUES ($1, $2::jsonb)", the document parsed /
 *               written with jansson as dbkit does;
 *   MongoDB:    libmongoc (when dbkit was built with it and
 *               DBKIT_TEST_MONGO_URL or MONGODB_URI is set), find by _id
 *               with limit 1 and insert_one, converted from / to JSON text.
 * dbkit also checks every document against the schema; the baselines do
 * not. Rounds alternate baseline and dbkit; the best of each is printed
 * with the ratio dbkit / baseline (ops per second).
 *
 * usage: doc_bench [--seconds S] [--rounds R] [--only SIDE-OP]
 *   --only runs one side of one PostgreSQL pair for S seconds and nothing
 *   else (base-find, dbkit-find, base-insert, dbkit-insert), for profilers
 *   (valgrind --tool=callgrind, strace -c) that should see one loop.
 */
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"

#if defined(__has_include)
#if __has_include(<mongoc/mongoc.h>)
#include <mongoc/mongoc.h>
#define BENCH_MONGO 1
#endif
#endif

#define ROWS 2000

static const dbk_doc_field fields[] = {
    {"name", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL},
    {"email", DBK_DOC_STRING, DBK_DOC_REQUIRED, NULL},
    {"age", DBK_DOC_INT64, 0, NULL},
};
static const dbk_doc_schema schema = {.collection = "bench_docs", .fields = fields, .nfields = 3};

typedef int (*op_fn)(void *ctx, long i);

/* This process's CPU time (all threads: the drivers' own included), in
 * microseconds: what one side costs the client, which the server's and the
 * machine's load do not move the way they move the wall clock. */
static double cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static double last_cpu_per_op; /* of the last measure(), microseconds */

static double measure(op_fn fn, void *ctx, double seconds, long *counter)
{
    long n = 0;
    double t0 = now_s(), t, c0 = cpu_us();
    do {
        for (int k = 0; k < 64; k++)
            if (fn(ctx, (*counter)++) != 0)
                die("operation", "failed");
        n += 64;
        t = now_s();
    } while (t - t0 < seconds);
    last_cpu_per_op = (cpu_us() - c0) / (double)n;
    return (double)n / (t - t0);
}

static void doc_text(char *buf, size_t n, const char *idprefix, long i)
{
    snprintf(buf, n, "{\"_id\":\"%s%ld\",\"name\":\"user %ld\",\"email\":\"u%ld@example.com\",\"age\":%ld}",
             idprefix, i, i, i, i % 90);
}

/* ---- dbkit ---- */

static int dbk_find(void *ctx, long i)
{
    char id[32];
    snprintf(id, sizeof id, "seed%ld", i % ROWS);
    dbk_doc *d;
    dbk_error err;
    if (dbk_doc_find_by_id(ctx, id, &d, &err) != DBK_OK)
        return -1;
    dbk_doc_free(d);
    return 0;
}

static int dbk_insert(void *ctx, long i)
{
    char text[256];
    doc_text(text, sizeof text, "k", i);
    dbk_error err;
    return dbk_doc_create(ctx, text, strlen(text), NULL, &err) == DBK_OK ? 0 : -1;
}

/* ---- libpq ---- */

static int pg_find(void *ctx, long i)
{
    char id[32];
    snprintf(id, sizeof id, "seed%ld", i % ROWS);
    const char *v[1] = {id};
    PGresult *r = PQexecPrepared(ctx, "find", 1, v, NULL, NULL, 0);
    int rc = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        json_t *j = json_loadb(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0), 0, NULL);
        rc = j ? 0 : -1;
        json_decref(j);
    }
    PQclear(r);
    return rc;
}

static int pg_insert(void *ctx, long i)
{
    char text[256], id[32];
    doc_text(text, sizeof text, "b", i);
    json_t *j = json_loads(text, 0, NULL);
    char *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    snprintf(id, sizeof id, "b%ld", i);
    const char *v[2] = {id, out};
    PGresult *r = PQexecPrepared(ctx, "ins", 2, v, NULL, NULL, 0);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    PQclear(r);
    free(out);
    return rc;
}

static void report(const char *what, double base, double ours, double base_cpu, double our_cpu)
{
    printf("%-28s baseline %9.0f ops/s   dbkit %9.0f ops/s   ratio %.2f   client CPU/op "
           "%.1f vs %.1f us (%.2fx)\n",
           what, base, ours, ours / base, base_cpu, our_cpu, our_cpu / base_cpu);
}

static const char *only; /* --only: one side of one pair */

static void run_pair(const char *what, op_fn base_fn, void *base_ctx, op_fn our_fn, void *our_ctx,
                     double seconds, int rounds)
{
    if (only) {
        char side[64];
        long c = 0;
        int w = (int)strcspn(what, " "); /* "find by id" is "find" */
        snprintf(side, sizeof side, "base-%.*s", w, what);
        if (strcmp(only, side) == 0)
            printf("%-28s baseline %9.0f ops/s\n", what, measure(base_fn, base_ctx, seconds, &c));
        snprintf(side, sizeof side, "dbkit-%.*s", w, what);
        if (strcmp(only, side) == 0)
            printf("%-28s dbkit %9.0f ops/s\n", what, measure(our_fn, our_ctx, seconds, &c));
        return;
    }
    double best_b = 0, best_o = 0, cpu_b = 0, cpu_o = 0;
    long cb = 0, co = 0;
    for (int r = 0; r < rounds; r++) {
        double b = measure(base_fn, base_ctx, seconds, &cb);
        double bc = last_cpu_per_op;
        double o = measure(our_fn, our_ctx, seconds, &co);
        double oc = last_cpu_per_op;
        best_b = b > best_b ? b : best_b;
        best_o = o > best_o ? o : best_o;
        cpu_b = r == 0 || bc < cpu_b ? bc : cpu_b;
        cpu_o = r == 0 || oc < cpu_o ? oc : cpu_o;
    }
    report(what, best_b, best_o, cpu_b, cpu_o);
}

static void seed(dbk_doc_coll *c)
{
    dbk_error err;
    if (dbk_doc_coll_drop(c, &err) || dbk_doc_coll_ensure(c, &err))
        die("schema", err.message);
    for (long i = 0; i < ROWS; i++) {
        char text[256];
        doc_text(text, sizeof text, "seed", i);
        if (dbk_doc_create(c, text, strlen(text), NULL, &err))
            die("seed", err.message);
    }
}

static void bench_postgres(double seconds, int rounds)
{
    const char *url = bench_pg_url();
    if (!url)
        return;
    PGconn *pg;
    dbk_conn *conn = bench_open(url, NULL, &pg);
    dbk_doc_coll *c;
    dbk_error err;
    if (dbk_doc_coll_open(dbk_conn_db(conn), &schema, &c, &err))
        die("open", err.message);
    seed(c);
    PQclear(PQprepare(pg, "find", "SELECT doc FROM bench_docs WHERE id = $1", 1, NULL));
    PQclear(PQprepare(pg, "ins", "INSERT INTO bench_docs (id, doc) VALUES ($1, $2::jsonb)", 2,
                      NULL));
    printf("PostgreSQL (jsonb), %d documents\n", ROWS);
    run_pair("find by id", pg_find, pg, dbk_find, c, seconds, rounds);
    run_pair("insert", pg_insert, pg, dbk_insert, c, seconds, rounds);
    dbk_doc_coll_drop(c, &err);
    dbk_doc_coll_close(c);
    dbk_conn_close(conn);
    PQfinish(pg);
}

#ifdef BENCH_MONGO
typedef struct mctx {
    mongoc_client_t *client;
    mongoc_collection_t *coll;
} mctx;

static int mg_find(void *ctx, long i)
{
    mctx *m = ctx;
    char id[32];
    snprintf(id, sizeof id, "seed%ld", i % ROWS);
    bson_t q = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&q, "_id", id);
    BSON_APPEND_INT64(&opts, "limit", 1);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(m->coll, &q, &opts, NULL);
    const bson_t *d;
    int rc = -1;
    if (mongoc_cursor_next(cur, &d)) {
        size_t len;
        char *t = bson_as_relaxed_extended_json(d, &len);
        json_t *j = json_loadb(t, len, 0, NULL);
        rc = j ? 0 : -1;
        json_decref(j);
        bson_free(t);
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(&q);
    bson_destroy(&opts);
    return rc;
}

static int mg_insert(void *ctx, long i)
{
    mctx *m = ctx;
    char text[256];
    doc_text(text, sizeof text, "b", i);
    bson_error_t e;
    bson_t *b = bson_new_from_json((const uint8_t *)text, -1, &e);
    int rc = b && mongoc_collection_insert_one(m->coll, b, NULL, NULL, &e) ? 0 : -1;
    if (b)
        bson_destroy(b);
    return rc;
}

static void bench_mongo(double seconds, int rounds)
{
    const char *base = getenv("MONGODB_URI");
    if (!base || !*base)
        base = getenv("DBKIT_TEST_MONGO_URL");
    if (!base || !*base || !dbk_doc_mongo_available()) {
        printf("doc_bench: no MongoDB (set MONGODB_URI or DBKIT_TEST_MONGO_URL); skipped\n");
        return;
    }
    char url[512];
    snprintf(url, sizeof url, "%s/dbkit_bench", base);
    dbk_doc_mongo *dm;
    dbk_doc_coll *c;
    dbk_error err;
    if (dbk_doc_mongo_open(url, NULL, &dm, &err) || dbk_doc_coll_open_mongo(dm, &schema, &c, &err))
        die("mongo open", err.message);
    seed(c);
    mctx m;
    m.client = mongoc_client_new(url);
    m.coll = mongoc_client_get_collection(m.client, "dbkit_bench", "bench_docs");
    printf("MongoDB (libmongoc), %d documents\n", ROWS);
    run_pair("find by id", mg_find, &m, dbk_find, c, seconds, rounds);
    run_pair("insert", mg_insert, &m, dbk_insert, c, seconds, rounds);
    mongoc_collection_destroy(m.coll);
    mongoc_client_destroy(m.client);
    dbk_doc_coll_drop(c, &err);
    dbk_doc_coll_close(c);
    dbk_doc_mongo_close(dm);
}
#endif

int main(int argc, char **argv)
{
    bench_prog = "doc_bench";
    double seconds = 1.0;
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--only") == 0)
            only = argv[i + 1];
    }
    bench_postgres(seconds, rounds);
    if (only)
        return 0;
#ifdef BENCH_MONGO
    bench_mongo(seconds, rounds);
#else
    printf("doc_bench: built without libmongoc headers; MongoDB skipped\n");
#endif
    return 0;
}
