/*
 * libFuzzer target: the timestamp text reader (dbk_timestamp_parse,
 * dbkit/value.h), which reads every timestamp a PostgreSQL result or a
 * SQLite text cell carries.
 *
 * Each input is read as it is (NUL bytes included, the length passed).
 * Beyond "no crash, no UB, never past len":
 *   - the reader's shortcut for the common forms gives exactly what the
 *     general reader gives (the same code, the same microseconds);
 *   - a value it accepts, written back with dbk_timestamp_format() (when in
 *     the years that form covers), reads back to the same microseconds;
 *   - it only accepts text that starts with a date: four digits and '-'.
 * The checks trap, so a broken invariant is a crash libFuzzer keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a
 * copy of tests/fuzz/corpus/timestamp so new inputs stay out of git.
 */
#include <stdint.h>
#include <string.h>

#include "dbkit/value.h"
#include "core/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    int64_t fast = 0x5a5a, general = 0x5a5a;
    dbk_rc rf = dbk_timestamp_parse(s, size, &fast);
    dbk_rc rg = dbk__timestamp_parse_general(s, size, &general);
    if (rf != rg || (rf == DBK_OK && fast != general))
        __builtin_trap();
    if (rf != DBK_OK && rf != DBK_ETYPE)
        __builtin_trap();
    if (rf != DBK_OK)
        return 0;
    if (size < 10 || s[4] != '-')
        __builtin_trap();
    for (int i = 0; i < 4; i++)
        if (s[i] < '0' || s[i] > '9')
            __builtin_trap();
    char buf[40];
    if (dbk_timestamp_format(fast, buf, sizeof buf) == DBK_OK) {
        int64_t back = 0;
        if (dbk_timestamp_parse(buf, strlen(buf), &back) != DBK_OK || back != fast)
            __builtin_trap();
    }
    return 0;
}
