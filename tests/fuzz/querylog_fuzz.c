/*
 * libFuzzer target for the query-log reader (dbk_diag_parse_line) and the
 * writer it must agree with.
 *
 * A query log is a file anyone may have edited, and `dbkit advise --log`
 * reads it. Each input is used twice:
 *   1. as a log line: dbk_diag_parse_line must accept or refuse it without
 *      reading or writing outside the line and the buffer (ASan), and an
 *      accepted line's SQL must fit and be NUL-terminated;
 *   2. as an SQL text (up to its first NUL) observed by a hub with log_all:
 *      the line the hub writes must parse back to exactly that text - or,
 *      when the writer had to cut it, to a prefix of it followed by "...".
 * Checks trap, so a broken invariant is a crash libFuzzer keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a copy
 * of tests/fuzz/corpus/querylog so new inputs stay out of git.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/diag.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char last[2048];
static int nlines;

static void capture(void *ctx, dbk_log_level level, const char *msg)
{
    (void)ctx;
    (void)level;
    size_t n = strlen(msg);
    if (n >= sizeof last)
        __builtin_trap(); /* the hook's lines are at most 1023 bytes */
    memcpy(last, msg, n + 1);
    nlines++;
}

static dbk_diag *hub;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    if (!hub) {
        dbk_diag_opts o = {.log_all = true, .slow_ms = -1};
        dbk_error err;
        if (dbk_diag_new(&o, &hub, &err) != DBK_OK)
            abort();
        dbk_set_log(capture, NULL, DBK_LOG_DEBUG);
    }
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t len = strlen(text);

    /* 1. the input as a line */
    char *buf = malloc(len + 1);
    if (!buf) {
        free(text);
        return 0;
    }
    dbk_diag_line dl;
    dbk_rc rc = dbk_diag_parse_line(text, &dl, buf, len + 1);
    if (rc != DBK_OK && rc != DBK_EINVALID)
        __builtin_trap();
    if (rc == DBK_OK && (dl.sql != buf || dl.sql_len > len || buf[dl.sql_len] != '\0'))
        __builtin_trap();
    free(buf);

    /* 2. the input as SQL, written by the hub and read back */
    nlines = 0;
    dbk_query_event ev = {.sql = text, .duration_ns = (int64_t)size * 1000,
                          .rows = (int64_t)size, .rc = (dbk_rc)(size % 34),
                          .engine = DBK_ENGINE_SQLITE};
    dbk_diag_observe(hub, &ev);
    if (nlines != 1)
        __builtin_trap();
    char back[2048];
    rc = dbk_diag_parse_line(last, &dl, back, sizeof back);
    if (rc != DBK_OK || dl.rows != (int64_t)size || dl.rc != ev.rc || dl.slow)
        __builtin_trap();
    if (dl.sql_len == len && memcmp(dl.sql, text, len) == 0) {
        /* the whole text came back */
    } else if (!dl.truncated || dl.sql_len - 3 >= len ||
               memcmp(dl.sql, text, dl.sql_len - 3) != 0) {
        __builtin_trap();
    }
    free(text);
    return 0;
}
