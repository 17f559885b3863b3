/*
 * libFuzzer target for the cached-value decoder (dbk_cache_decode_row).
 *
 * A cached value is input: it comes back from a shared Redis that other
 * processes (and other builds) write. The target decodes every input with
 * the layout hash and field count the input itself claims (so the fuzzer
 * gets past the header checks), reads every decoded field in full (so ASan
 * sees any pointer or length that leaves the buffer), and checks a
 * round-trip invariant: bytes that decode must re-encode to exactly the same
 * bytes. The same input is also decoded with the wrong layout and count,
 * which must be refused. Checks trap, so a broken invariant is a crash.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a copy
 * of tests/fuzz/corpus/cache_value so new inputs stay out of git.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FIELDS 64

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t layout = size >= 12 ? rd64(data + 4) : 0;
    size_t n = size >= 16 ? (size_t)(data[12] | data[13] << 8) : 0;
    if (n > MAX_FIELDS)
        n = MAX_FIELDS;
    /* a private copy of exactly `size` bytes, so ASan catches over-reads */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    dbk_value vals[MAX_FIELDS];
    dbk_error err;
    dbk_rc rc = dbk_cache_decode_row(buf, size, layout, vals, n, &err);
    if (rc == DBK_OK) {
        volatile unsigned sink = 0;
        for (size_t i = 0; i < n; i++) {
            if (vals[i].type == DBK_TYPE_TEXT || vals[i].type == DBK_TYPE_JSON ||
                vals[i].type == DBK_TYPE_BLOB) {
                const uint8_t *p = vals[i].u.bytes.ptr;
                for (size_t j = 0; j < vals[i].u.bytes.len; j++)
                    sink += p[j];
                if (vals[i].type != DBK_TYPE_BLOB && p[vals[i].u.bytes.len] != 0)
                    __builtin_trap(); /* text must be NUL-terminated */
            }
        }
        (void)sink;
        void *again = NULL;
        size_t againlen = 0;
        if (dbk_cache_encode_row(layout, vals, n, &again, &againlen, &err) != DBK_OK)
            __builtin_trap();
        if (againlen != size || memcmp(again, buf, size) != 0)
            __builtin_trap(); /* decode accepted bytes encode would not write */
        dbk_free(again);
        /* another layout or count must be refused */
        if (dbk_cache_decode_row(buf, size, layout ^ 1, vals, n, &err) == DBK_OK)
            __builtin_trap();
        if (n < MAX_FIELDS && dbk_cache_decode_row(buf, size, layout, vals, n + 1, &err) == DBK_OK)
            __builtin_trap();
    } else if (rc != DBK_ETYPE && rc != DBK_EINVALID) {
        __builtin_trap();
    }
    free(buf);
    return 0;
}
