/*
 * query_impl.h - what the files of repository queries share (query.c:
 * filters, ordering, counts and find-many; cursor.c: keyset cursors;
 * include.c: eager loading of relations): the parameter list being built,
 * a sort key and the functions one file calls in another.
 */
#ifndef DBK_QUERY_IMPL_H
#define DBK_QUERY_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/internal.h"
#include "repo_int.h"

#define BIT(i) (UINT64_C(1) << (i))
#define MAX_ORDER 8

#define MAX_CURSOR 8192

struct qs {
    const dbk_entity *e;
    dbk_engine eng;
    dbk_value *params;
    size_t np, cap;
};

struct okey {
    int field;
    bool desc;
};

dbk_rc dbk__q_oom(dbk_error *err);

dbk_rc dbk__q_encode_cursor(const dbk_entity *e, const struct okey *k, int n, const void *row,
                            dbk_arena *arena, const char **out, dbk_error *err);

dbk_rc dbk__q_decode_cursor(const dbk_entity *e, const struct okey *k, int n, const char *c,
                            dbk_arena *arena, dbk_value *vals, dbk_error *err);

const dbk_relation *dbk__q_find_rel(const dbk_entity *e, const char *name, size_t len);

dbk_rc dbk__q_check_path(const dbk_entity *e, const char *path, dbk_error *err);

#endif
