/*
 * libFuzzer target for the migration linter's hand-written parts: the
 * `-- lint:ignore RULE reason` directive parser and the walk over the
 * comments between statements (libpg_query parses the SQL itself).
 *
 * Each input is used twice:
 *   1. as the text of one comment: dbk__lint_directive_parse must classify
 *      it without reading outside it (ASan), an IGNORE must name a known
 *      rule, and a BAD one must say why;
 *   2. as a whole migration file: dbk_lint_file must lint it or refuse it,
 *      and every finding must carry a rule and a line within the file.
 * Checks trap, so a broken invariant is a crash libFuzzer keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a copy
 * of tests/fuzz/corpus/lint_directive so new inputs stay out of git.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dbkit/lint.h"
#include "migrate/lint_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    /* 1: one comment, in an exactly sized heap copy so ASan sees overreads */
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    dbk__lint_dir d;
    dbk__lint_directive_parse(copy, size, &d);
    if (d.kind == DBK__LINT_DIR_IGNORE && (!d.rule || !dbk_lint_rule_find(d.rule->id)))
        __builtin_trap();
    if (d.kind == DBK__LINT_DIR_BAD && d.problem[0] == '\0')
        __builtin_trap();
    if (d.kind == DBK__LINT_DIR_NONE && d.rule)
        __builtin_trap();
    free(copy);

    /* 2: a whole file */
    size_t lines = 1;
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    dbk_lint_report *r = NULL;
    dbk_error err;
    if (size > 0 && dbk_lint_file("20240101000000_fuzz.sql", (const char *)data, size, NULL, &r,
                                  &err) == DBK_OK) {
        for (size_t i = 0; i < r->count; i++)
            if (!r->items[i].rule || r->items[i].line < 1 || (size_t)r->items[i].line > lines)
                __builtin_trap();
        dbk_lint_report_free(r);
    }
    return 0;
}
