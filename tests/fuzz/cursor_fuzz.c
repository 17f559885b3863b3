/*
 * libFuzzer target for keyset cursors (dbk_query.after).
 *
 * A cursor is input: it comes back from a client (a `?after=` query
 * parameter). dbk_repo_find_many must answer any string with DBK_OK or
 * DBK_EINVALID and never read outside it. A cursor carries a checksum, so
 * random bytes almost never get past the framing; the target therefore
 * feeds each input twice: as the cursor string itself (base64 and framing
 * checks), and as the body of a well-formed cursor - the input placed
 * between the signature of a real cursor for the same query and a correct
 * checksum, then base64url-encoded - so the value parser (lengths,
 * integers, doubles, booleans, timestamps, texts) sees arbitrary bytes. A
 * body that parses is run as a real keyset query on an in-memory SQLite
 * table.
 *
 * The checksum is FNV-1a 64 with the seed in src/repo/query.c; if that
 * changes, this target's well-formed inputs stop being accepted
 * (CURSOR_FUZZ_STATS=1 prints how many were accepted at exit).
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a copy
 * of tests/fuzz/corpus/cursor so new inputs stay out of git.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/dbkit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct row {
    int64_t id;
    const char *name;
    double score;
    bool active;
    int64_t created_at;
};

static const dbk_field fields[] = {
    DBK_FIELD(struct row, id, "id", DBK_TYPE_INT64, DBK_F_PK | DBK_F_GENERATED),
    DBK_FIELD(struct row, name, "name", DBK_TYPE_TEXT, 0),
    DBK_FIELD(struct row, score, "score", DBK_TYPE_DOUBLE, 0),
    DBK_FIELD(struct row, active, "active", DBK_TYPE_BOOL, 0),
    DBK_FIELD(struct row, created_at, "created_at", DBK_TYPE_TIMESTAMP, 0),
};
static dbk_entity entity = DBK_ENTITY_PLAIN("fz", struct row, fields);

static const char ORDER[] = "name,-score,active,created_at";

static dbk_conn *conn;
static dbk_arena *arena;
static char sig[20]; /* "1.<16 hex>." of a real cursor for ORDER */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64val(unsigned char c)
{
    const char *p = c ? strchr(B64, c) : NULL;
    return p ? (int)(p - B64) : -1;
}

static void setup(void)
{
    dbk_error err;
    dbk_config *cfg;
    if (dbk_config_from_url("sqlite::memory:", &cfg, &err) || dbk_conn_open(cfg, &conn, &err))
        abort();
    dbk_config_free(cfg);
    dbk_db *db = dbk_conn_db(conn);
    if (dbk_db_exec_script(db,
                           "CREATE TABLE fz (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                           "score REAL NOT NULL, active INTEGER NOT NULL, created_at TEXT NOT "
                           "NULL);"
                           "INSERT INTO fz (name, score, active, created_at) VALUES "
                           "('a', 1.5, 1, '2024-01-01T00:00:00Z'), "
                           "('b', 2.5, 0, '2024-01-02T00:00:00Z'), "
                           "('c', 3.5, 1, '2024-01-03T00:00:00Z')",
                           &err))
        abort();
    arena = dbk_arena_new(0);
    dbk_query q = {.order_by = ORDER, .keyset = true, .limit = 1};
    dbk_list l;
    if (dbk_repo_find_many(db, &entity, &q, &l, arena, &err) || !l.next_cursor)
        abort();
    /* Decode the real cursor's first 19 bytes: "1.<sig16>." */
    const char *c = l.next_cursor;
    unsigned char d[32];
    size_t dl = 0;
    for (size_t i = 0; c[i] && i + 4 <= strlen(c) && dl < 21; i += 4) {
        uint32_t x = 0;
        for (int t = 0; t < 4; t++)
            x = (x << 6) | (uint32_t)b64val((unsigned char)c[i + t]);
        d[dl++] = (unsigned char)(x >> 16);
        d[dl++] = (unsigned char)(x >> 8);
        d[dl++] = (unsigned char)x;
    }
    if (dl < 19 || memcmp(d, "1.", 2) != 0 || d[18] != '.')
        abort();
    memcpy(sig, d, 19);
    sig[19] = '\0';
    dbk_arena_reset(arena);
}

static uint64_t fnv64(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

static unsigned long parsed; /* cursors that were accepted */

static void report(void)
{
    fprintf(stderr, "cursor_fuzz: %lu cursors accepted\n", parsed);
}

static void run_cursor(const char *cursor)
{
    dbk_error err;
    dbk_query q = {
        .order_by = ORDER, .keyset = true, .limit = 2, .after = cursor};
    dbk_list l;
    dbk_rc rc = dbk_repo_find_many(dbk_conn_db(conn), &entity, &q, &l, arena, &err);
    if (rc != DBK_OK && rc != DBK_EINVALID)
        __builtin_trap();
    if (rc == DBK_OK) {
        parsed++;
        size_t total = 0;
        for (size_t i = 0; i < l.count; i++)
            total += strlen(((struct row *)l.items)[i].name);
        if (l.count > 2 || total > 2) /* at most 2 rows of one-letter names */
            __builtin_trap();
    }
    dbk_arena_reset(arena);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!conn) {
        setup();
        if (getenv("CURSOR_FUZZ_STATS"))
            atexit(report);
    }
    if (size > 6000)
        return 0;
    /* 1. the input as the cursor string */
    char *raw = malloc(size + 1);
    if (!raw)
        return 0;
    memcpy(raw, data, size);
    raw[size] = '\0';
    run_cursor(raw);
    free(raw);

    /* 2. the input as the body of a well-formed cursor */
    size_t blen = 19 + size + 17;
    unsigned char *body = malloc(blen);
    char *enc = malloc((blen + 2) / 3 * 4 + 1);
    if (!body || !enc) {
        free(body);
        free(enc);
        return 0;
    }
    memcpy(body, sig, 19);
    memcpy(body + 19, data, size);
    char sum[18];
    snprintf(sum, sizeof sum, ".%016llx",
             (unsigned long long)fnv64(body, 19 + size, UINT64_C(0x6462b17c0125ab1e)));
    memcpy(body + 19 + size, sum, 17);
    size_t j = 0;
    for (size_t i = 0; i < blen; i += 3) {
        uint32_t x = (uint32_t)body[i] << 16;
        if (i + 1 < blen)
            x |= (uint32_t)body[i + 1] << 8;
        if (i + 2 < blen)
            x |= body[i + 2];
        enc[j++] = B64[(x >> 18) & 63];
        enc[j++] = B64[(x >> 12) & 63];
        if (i + 1 < blen)
            enc[j++] = B64[(x >> 6) & 63];
        if (i + 2 < blen)
            enc[j++] = B64[x & 63];
    }
    enc[j] = '\0';
    run_cursor(enc);
    free(body);
    free(enc);
    return 0;
}
