/*
 * libFuzzer target: the migration file parser and the SQL statement
 * splitter (src/migrate/parse.c).
 *
 * Each input is used as a whole migration file (directives, sections,
 * checksum), as a seed file, as a bare script split with the SQLite and the
 * PostgreSQL rules, and its first line as a migration file name. Beyond
 * "no crash, no leak, no UB", the splitter's output is checked: every
 * statement lies inside the input, is non-empty, starts on a
 * non-whitespace byte, and statements and their line numbers only move
 * forward.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#include "migrate/migrate_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_split(const char *t, size_t len, dbk_engine engine)
{
    dbk__stmt *st = NULL;
    size_t n = 0;
    dbk_error err;
    if (dbk__sql_split(t, len, 1, engine, &st, &n, &err) != DBK_OK)
        return;
    size_t prev_end = 0;
    int prev_line = 1;
    for (size_t i = 0; i < n; i++) {
        if (st[i].off < prev_end || st[i].len == 0 || st[i].off + st[i].len > len)
            abort();
        if (isspace((unsigned char)t[st[i].off]))
            abort();
        if (st[i].line < prev_line)
            abort();
        (void)dbk__sql_is_tx_control(t + st[i].off, st[i].len);
        prev_end = st[i].off + st[i].len;
        prev_line = st[i].line;
    }
    free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    char *t = malloc(size + 1);
    if (!t)
        return 0;
    memcpy(t, data, size);
    t[size] = '\0';

    dbk__migfile f;
    dbk_error err;
    memset(&f, 0, sizeof f);
    f.path = "fuzz.sql";
    f.filename = "fuzz.sql";
    f.text = t;
    f.len = size;
    if (dbk__mig_parse(&f, &err) == DBK_OK) {
        /* Every section found must lie inside the file and split again. */
        for (size_t k = 0; k < f.nsec; k++) {
            if (f.sec[k].off > size || f.sec[k].len > size - f.sec[k].off)
                abort();
            check_split(t + f.sec[k].off, f.sec[k].len, f.sec[k].engine);
        }
        if (!dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_SQLITE) &&
            !dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_POSTGRES))
            abort();
    }
    memset(&f, 0, sizeof f);
    f.path = "seed.sql";
    f.filename = "seed.sql";
    f.text = t;
    f.len = size;
    (void)dbk__seed_parse(&f, &err);

    check_split(t, size, DBK_ENGINE_SQLITE);
    check_split(t, size, DBK_ENGINE_POSTGRES);

    char name[256];
    size_t nl = 0;
    while (nl < size && nl < sizeof name - 1 && t[nl] != '\n' && t[nl] != '\0')
        nl++;
    memcpy(name, t, nl);
    name[nl] = '\0';
    int64_t v;
    char mname[DBK__MIG_NAME_MAX];
    (void)dbk__mig_parse_filename(name, &v, mname, sizeof mname, &err);
    free(t);
    return 0;
}
