/* A program that uses an installed dbkit: built by scripts/run-tests.sh
 * (stage install) once through pkg-config and once through
 * find_package(dbkit CONFIG). It opens an in-memory SQLite database, runs
 * one query and prints the library version. */
#include <stdio.h>

#include <dbkit/dbkit.h>

int main(void)
{
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *conn = NULL;
    int64_t v = 0;
    if (dbk_config_from_url("sqlite::memory:", &cfg, &err) != DBK_OK ||
        dbk_conn_open(cfg, &conn, &err) != DBK_OK ||
        dbk_db_query_int64(dbk_conn_db(conn), "SELECT 40 + 2", NULL, 0, &v, &err) != DBK_OK) {
        fprintf(stderr, "consumer: %s\n", err.message);
        return 1;
    }
    printf("dbkit %s: %lld\n", dbk_version(), (long long)v);
    dbk_conn_close(conn);
    dbk_config_free(cfg);
    return v == 42 ? 0 : 1;
}
