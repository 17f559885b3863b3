/*
 * Primary-key lookup through dbk_db on one connection, next to the
 * hand-written baseline on the same table in the same run:
 *   PostgreSQL: a libpq PQprepare-once / PQexecPrepared loop;
 *   SQLite:     a sqlite3 prepare-once / reset / bind / step loop.
 * Both sides read every column of the row (id, name, email, created_at).
 * On PostgreSQL a second pair inserts one row per statement with two text
 * parameters (dbk_db_exec vs PQexecPrepared of the same INSERT), the
 * write-side counterpart: a command with no rows and an affected count.
 *
 * usage: pk_bench [--rows N] [--seconds S] [--rounds R] [--sqlite-only]
 * PostgreSQL comes from DATABASE_URL or DBKIT_TEST_PG_URL (a postgres:// URL).
 * Rounds alternate baseline and dbkit; the best round of each is printed.
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dbkit/dbkit.h>

static const char *SQL = "SELECT id, name, email, created_at FROM users WHERE id = $1";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;
static int64_t next_id(int64_t rows)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % (uint64_t)rows) + 1;
}

static void die(const char *what, const dbk_error *err)
{
    fprintf(stderr, "pk_bench: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

/* Runs fn until `seconds` pass; returns queries per second. */
typedef int (*lookup_fn)(void *ctx, int64_t id);
static double measure(lookup_fn fn, void *ctx, int64_t rows, double seconds)
{
    rng = 88172645463325252ULL;
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 256; i++)
            if (fn(ctx, next_id(rows)) != 0) {
                fprintf(stderr, "pk_bench: lookup failed\n");
                exit(1);
            }
        n += 256;
        t = now_s();
    } while (t - t0 < seconds);
    return (double)n / (t - t0);
}

static volatile size_t sink;

static int dbkit_lookup(void *ctx, int64_t id)
{
    dbk_db *db = ctx;
    dbk_value p = dbk_int64(id);
    dbk_result *r;
    dbk_error err;
    if (dbk_db_query(db, SQL, &p, 1, &r, &err) != DBK_OK || dbk_result_nrows(r) != 1)
        return -1;
    int64_t rid, ts;
    const char *name, *email;
    size_t l1, l2;
    if (dbk_result_get_int64(r, 0, 0, &rid, &err) || dbk_result_get_text(r, 0, 1, &name, &l1, &err) ||
        dbk_result_get_text(r, 0, 2, &email, &l2, &err) ||
        dbk_result_get_timestamp(r, 0, 3, &ts, &err))
        return -1;
    sink += (size_t)rid + l1 + l2 + (size_t)ts;
    dbk_result_free(r);
    return rid == id ? 0 : -1;
}

static int pq_lookup(void *ctx, int64_t id)
{
    PGconn *c = ctx;
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    const char *vals[1] = {buf};
    PGresult *r = PQexecPrepared(c, "pk", 1, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        PQclear(r);
        return -1;
    }
    int64_t rid = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    sink += (size_t)rid + strlen(PQgetvalue(r, 0, 1)) + strlen(PQgetvalue(r, 0, 2)) +
            strlen(PQgetvalue(r, 0, 3));
    PQclear(r);
    return rid == id ? 0 : -1;
}

static int sq_lookup(void *ctx, int64_t id)
{
    sqlite3_stmt *st = ctx;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW)
        return -1;
    int64_t rid = sqlite3_column_int64(st, 0);
    const unsigned char *a = sqlite3_column_text(st, 1);
    const unsigned char *b = sqlite3_column_text(st, 2);
    const unsigned char *c = sqlite3_column_text(st, 3);
    sink += (size_t)rid + strlen((const char *)a) + strlen((const char *)b) +
            strlen((const char *)c);
    sqlite3_reset(st);
    return rid == id ? 0 : -1;
}

static const char *INS_SQL = "INSERT INTO pk_bench_ins (name, email) VALUES ($1, $2)";
static long ins_seq;

static int dbkit_insert(void *ctx, int64_t id)
{
    (void)id;
    char name[32], email[48];
    long n = ++ins_seq;
    snprintf(name, sizeof name, "user %ld", n);
    snprintf(email, sizeof email, "user%ld@example.com", n);
    dbk_value p[2] = {dbk_text(name), dbk_text(email)};
    int64_t affected = 0;
    dbk_error err;
    if (dbk_db_exec(ctx, INS_SQL, p, 2, &affected, &err) != DBK_OK)
        return -1;
    return affected == 1 ? 0 : -1;
}

static int pq_insert(void *ctx, int64_t id)
{
    (void)id;
    char name[32], email[48];
    long n = ++ins_seq;
    snprintf(name, sizeof name, "user %ld", n);
    snprintf(email, sizeof email, "user%ld@example.com", n);
    const char *vals[2] = {name, email};
    PGresult *r = PQexecPrepared(ctx, "ins", 2, vals, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    return ok ? 0 : -1;
}

static void populate(dbk_db *db, int64_t rows, int pg)
{
    dbk_error err;
    const char *ddl =
        pg ? "DROP TABLE IF EXISTS users; CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT "
             "NOT NULL, email TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now()); "
             "INSERT INTO users (id, name, email) SELECT g, 'user ' || g, 'user' || g || "
             "'@example.com' FROM generate_series(1, %lld) g; ANALYZE users;"
           : "DROP TABLE IF EXISTS users; CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT "
             "NOT NULL, email TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT "
             "(strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))); "
             "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < %lld) "
             "INSERT INTO users (id, name, email) SELECT i, 'user ' || i, 'user' || i || "
             "'@example.com' FROM g;";
    char sql[1024];
    snprintf(sql, sizeof sql, ddl, (long long)rows);
    if (dbk_db_exec_script(db, sql, &err) != DBK_OK)
        die("populate", &err);
}

static void report(const char *engine, const char *baseline, double base, double mine,
                   double target)
{
    printf("%-10s  %-34s %10.0f q/s\n", engine, baseline, base);
    printf("%-10s  %-34s %10.0f q/s   ratio %.3f (target >= %.2f)\n", engine, "dbkit dbk_db_query",
           mine, mine / base, target);
}

int main(int argc, char **argv)
{
    int64_t rows = 100000;
    double seconds = 2.0;
    int rounds = 3, sqlite_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = strtoll(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--sqlite-only"))
            sqlite_only = 1;
        else {
            fprintf(stderr, "usage: %s [--rows N] [--seconds S] [--rounds R] [--sqlite-only]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rows < 1 || seconds <= 0 || seconds > 60 || rounds < 1 || rounds > 20) {
        fprintf(stderr, "pk_bench: rows >= 1, 0 < seconds <= 60, 1 <= rounds <= 20\n");
        return 2;
    }
    dbk_error err;
    printf("primary-key lookup, %lld rows, random ids, one connection, best of %d x %.1fs\n",
           (long long)rows, rounds, seconds);

    /* SQLite on a temporary file. */
    char path[] = "/tmp/pk_bench.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        die("mkstemp", NULL);
    close(fd);
    char url[600];
    snprintf(url, sizeof url, "sqlite:%s", path);
    dbk_config *cfg;
    dbk_conn *conn = NULL;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err) || dbk_conn_open(cfg, &conn, &err))
        die("sqlite open", &err);
    dbk_config_free(cfg);
    populate(dbk_conn_db(conn), rows, 0);
    sqlite3 *raw;
    sqlite3_stmt *st;
    if (sqlite3_open(path, &raw) != SQLITE_OK ||
        sqlite3_prepare_v2(raw, "SELECT id, name, email, created_at FROM users WHERE id = ?1", -1,
                           &st, NULL) != SQLITE_OK)
        die("raw sqlite", NULL);
    double best_raw = 0, best_dbk = 0;
    for (int r = 0; r < rounds; r++) {
        double a = measure(sq_lookup, st, rows, seconds);
        double b = measure(dbkit_lookup, dbk_conn_db(conn), rows, seconds);
        best_raw = a > best_raw ? a : best_raw;
        best_dbk = b > best_dbk ? b : best_dbk;
    }
    report("sqlite", "raw sqlite3 prepare/reset/bind/step", best_raw, best_dbk, 0.9);
    sqlite3_finalize(st);
    sqlite3_close(raw);
    dbk_conn_close(conn);
    unlink(path);
    char side[700];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);

    if (sqlite_only)
        return 0;
    const char *pg = getenv("DATABASE_URL");
    if (!pg || strncmp(pg, "postgres", 8) != 0)
        pg = getenv("DBKIT_TEST_PG_URL");
    if (!pg) {
        printf("postgres    skipped: set DATABASE_URL or DBKIT_TEST_PG_URL to a postgres:// URL\n");
        return 0;
    }
    if (dbk_config_from(pg, NULL, NULL, &cfg, &err) || dbk_conn_open(cfg, &conn, &err))
        die("postgres open", &err);
    dbk_config_free(cfg);
    populate(dbk_conn_db(conn), rows, 1);
    PGconn *pq = PQconnectdb(pg);
    if (PQstatus(pq) != CONNECTION_OK)
        die("raw libpq connect", NULL);
    PGresult *pr = PQprepare(pq, "pk", SQL, 1, NULL);
    if (PQresultStatus(pr) != PGRES_COMMAND_OK)
        die("raw libpq prepare", NULL);
    PQclear(pr);
    best_raw = best_dbk = 0;
    for (int r = 0; r < rounds; r++) {
        double a = measure(pq_lookup, pq, rows, seconds);
        double b = measure(dbkit_lookup, dbk_conn_db(conn), rows, seconds);
        best_raw = a > best_raw ? a : best_raw;
        best_dbk = b > best_dbk ? b : best_dbk;
    }
    report("postgres", "raw libpq PQexecPrepared", best_raw, best_dbk, 0.95);

    /* Single-row INSERT, the same statement on both sides. */
    if (dbk_db_exec_script(dbk_conn_db(conn),
                           "DROP TABLE IF EXISTS pk_bench_ins; CREATE TABLE pk_bench_ins (id "
                           "BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)",
                           &err) != DBK_OK)
        die("insert table", &err);
    pr = PQprepare(pq, "ins", INS_SQL, 2, NULL);
    if (PQresultStatus(pr) != PGRES_COMMAND_OK)
        die("raw libpq prepare insert", NULL);
    PQclear(pr);
    best_raw = best_dbk = 0;
    for (int r = 0; r < rounds; r++) {
        double a = measure(pq_insert, pq, 1, seconds);
        double b = measure(dbkit_insert, dbk_conn_db(conn), 1, seconds);
        best_raw = a > best_raw ? a : best_raw;
        best_dbk = b > best_dbk ? b : best_dbk;
    }
    printf("%-10s  %-34s %10.0f q/s\n", "postgres", "raw libpq INSERT PQexecPrepared", best_raw);
    printf("%-10s  %-34s %10.0f q/s   ratio %.3f (target >= %.2f)\n", "postgres",
           "dbkit dbk_db_exec INSERT", best_dbk, best_dbk / best_raw, 0.9);
    if (dbk_db_exec_script(dbk_conn_db(conn), "DROP TABLE pk_bench_ins", &err) != DBK_OK)
        die("drop insert table", &err);
    PQfinish(pq);
    dbk_conn_close(conn);
    return 0;
}
