/*
 * Bulk insert of 100,000 rows on PostgreSQL, same table, same run:
 *   raw COPY      libpq COPY bulk_users FROM STDIN (text format, rows
 *                 escaped and sent in 64 KiB chunks) - the baseline
 *   create_many   dbk_repo_create_many, ids and timestamps returned into
 *                 the structs (out_rows), and without out_rows
 * Each variant runs into a freshly truncated table; the best of 3 rounds
 * counts.
 *
 * usage: bulk_bench [--rows N]   (default 100000)
 * PostgreSQL comes from DATABASE_URL or DBKIT_TEST_PG_URL.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dbkit/dbkit.h>

#include "benchutil.h"

struct buser {
    int64_t id;
    const char *email;
    const char *name;
    int64_t created_at;
};

static const dbk_field buser_fields[] = {
    DBK_FIELD(struct buser, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct buser, email, "email", DBK_TYPE_TEXT, DBK_F_UNIQUE),
    DBK_FIELD(struct buser, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct buser, created_at, "created_at", DBK_TYPE_TIMESTAMP, DBK_F_CREATED_AT),
};
static const dbk_entity buser_entity = DBK_ENTITY_PLAIN("bulk_users", struct buser, buser_fields);

static void reset(dbk_db *db)
{
    dbk_error err;
    if (dbk_db_exec(db, "TRUNCATE bulk_users RESTART IDENTITY", NULL, 0, NULL, &err))
        die("truncate", err.message);
}

static double raw_copy(PGconn *pg, struct buser *u, size_t n)
{
    double t0 = now_s();
    PGresult *r = PQexec(pg, "COPY bulk_users (email, name, created_at) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN)
        die("copy", PQresultErrorMessage(r));
    PQclear(r);
    char buf[65536];
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        /* The values hold no tab, newline or backslash: no escaping. */
        int k = snprintf(buf + used, sizeof buf - used, "%s\t%s\t2026-12-04 10:00:00+00\n",
                         u[i].email, u[i].name);
        if (k < 0 || (size_t)k >= sizeof buf - used) {
            if (PQputCopyData(pg, buf, (int)used) != 1)
                die("put", PQerrorMessage(pg));
            used = 0;
            i--;
            continue;
        }
        used += (size_t)k;
    }
    if ((used && PQputCopyData(pg, buf, (int)used) != 1) || PQputCopyEnd(pg, NULL) != 1)
        die("put", PQerrorMessage(pg));
    r = PQgetResult(pg);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("copy end", PQresultErrorMessage(r));
    PQclear(r);
    while ((r = PQgetResult(pg)))
        PQclear(r);
    return now_s() - t0;
}

static double create_many(dbk_db *db, struct buser *u, struct buser *out, size_t n, bool returning)
{
    dbk_error err;
    dbk_arena *a = dbk_arena_new(0);
    double t0 = now_s();
    if (dbk_repo_create_many(db, &buser_entity, u, n, returning ? out : NULL, returning ? a : NULL,
                             &err))
        die("create_many", err.message);
    double t = now_s() - t0;
    if (returning && (out[0].id != 1 || out[n - 1].id != (int64_t)n))
        die("create_many", "ids not returned in order");
    dbk_arena_free(a);
    return t;
}

int main(int argc, char **argv)
{
    bench_prog = "bulk_bench";
    size_t n = 100000;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
            n = (size_t)strtoul(argv[++i], NULL, 10);
    if (n == 0 || n > 10000000)
        die("--rows", "between 1 and 10000000");
    const char *url = bench_pg_url();
    if (!url)
        return 0;
    dbk_error err;
    PGconn *pg;
    dbk_conn *c = bench_open(url,
                             "DROP TABLE IF EXISTS bulk_users;"
                             "CREATE TABLE bulk_users (id bigserial PRIMARY KEY, email text NOT "
                             "NULL UNIQUE, name text NOT NULL, created_at timestamptz NOT NULL)",
                             &pg);
    dbk_db *db = dbk_conn_db(c);

    struct buser *u = calloc(n, sizeof *u), *out = calloc(n, sizeof *out);
    char(*emails)[40] = calloc(n, 40);
    if (!u || !out || !emails)
        die("memory", NULL);
    for (size_t i = 0; i < n; i++) {
        snprintf(emails[i], 40, "user%zu@example.com", i);
        u[i].email = emails[i];
        u[i].name = "A User Name";
    }
    double best_copy = 1e9, best_ret = 1e9, best_noret = 1e9;
    for (int round = 0; round < 3; round++) {
        reset(db);
        double t = raw_copy(pg, u, n);
        if (t < best_copy)
            best_copy = t;
        reset(db);
        t = create_many(db, u, out, n, true);
        if (t < best_ret)
            best_ret = t;
        reset(db);
        t = create_many(db, u, out, n, false);
        if (t < best_noret)
            best_noret = t;
    }
    printf("== bulk insert of %zu rows, PostgreSQL ==\n", n);
    printf("raw libpq COPY FROM STDIN           %8.1f ms  %9.0f rows/s\n", best_copy * 1e3,
           n / best_copy);
    printf("create_many, ids returned           %8.1f ms  %9.0f rows/s  %.2fx "
           "COPY\n",
           best_ret * 1e3, n / best_ret, best_copy / best_ret);
    printf("create_many, nothing returned       %8.1f ms  %9.0f rows/s  %.2fx COPY "
           "(target >= 0.70x)\n",
           best_noret * 1e3, n / best_noret, best_copy / best_noret);
    dbk_db_exec(db, "DROP TABLE bulk_users", NULL, 0, NULL, &err);
    dbk_entity_release(&buser_entity);
    free(u);
    free(out);
    free(emails);
    PQfinish(pg);
    dbk_conn_close(c);
    return 0;
}
