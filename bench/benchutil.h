/*
 * Small helpers shared by the newer benchmark programs: a monotonic clock,
 * fatal errors, the PostgreSQL URL (DATABASE_URL when it names PostgreSQL,
 * else DBKIT_TEST_PG_URL) and opening a dbkit connection plus a raw libpq
 * one for the baseline. Header-only: each program is one translation unit.
 */
#ifndef DBKIT_BENCHUTIL_H
#define DBKIT_BENCHUTIL_H

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dbkit/dbkit.h>

static const char *bench_prog = "bench";

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void die(const char *what, const char *msg)
{
    fprintf(stderr, "%s: %s: %s\n", bench_prog, what, msg ? msg : "");
    exit(1);
}

/* The PostgreSQL URL, or NULL (the program then says it skipped). */
static inline const char *bench_pg_url(void)
{
    const char *url = getenv("DATABASE_URL");
    if (!url || strncmp(url, "postgres", 8) != 0)
        url = getenv("DBKIT_TEST_PG_URL");
    if (!url)
        printf("%s: no PostgreSQL (set DATABASE_URL or DBKIT_TEST_PG_URL); skipped\n", bench_prog);
    return url;
}

/* A dbkit connection to url with `schema` run on it, and a raw libpq
 * connection to the same database. */
static inline dbk_conn *bench_open(const char *url, const char *schema, PGconn **pg)
{
    dbk_error err;
    dbk_config *cfg;
    dbk_conn *c = NULL;
    if (dbk_config_from_url(url, &cfg, &err) || dbk_conn_open(cfg, &c, &err))
        die("connect", err.message);
    dbk_config_free(cfg);
    if (schema && dbk_db_exec_script(dbk_conn_db(c), schema, &err))
        die("schema", err.message);
    *pg = PQconnectdb(url);
    if (PQstatus(*pg) != CONNECTION_OK)
        die("libpq connect", PQerrorMessage(*pg));
    return c;
}

#endif
