/*
 * Repository internals shared by the files of src/repo: the per-entity private state
 * (validated descriptor facts + SQL cache), a small string builder, and
 * the row <-> struct mapping.
 */
#ifndef DBK_REPO_INT_H
#define DBK_REPO_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dbkit/repo.h"
#include "../core/sb.h"

/* Cached SQL kinds. */
enum dbk__repo_op {
    DBK__OP_FIND_BY = 1, /* a = field index */
    DBK__OP_CREATE = 2,
    DBK__OP_UPDATE = 3,  /* a = mask of SET fields */
    DBK__OP_DELETE = 4,  /* a = 1 with RETURNING */
    DBK__OP_UPSERT = 5,  /* a = conflict mask, b = update mask */
    DBK__OP_BULK = 6,    /* a = rows in the statement */
    DBK__OP_COUNT = 7,
    DBK__OP_INCLUDE = 8  /* a = index of the matched field */
};

/* One cached statement. Immutable once published; lives until release. */
struct dbk__sql {
    struct dbk__sql *next;
    int op;
    int engine;
    uint64_t a, b;
    char *sql;
    int ncols;  /* result columns mapped by `cols` (field indexes) */
    int *cols;
    int nparams; /* per row for inserts */
    int *pfields; /* parameter i <- field pfields[i] (-1: "now") */
};

/* Derived facts and the SQL cache of one descriptor (entity.c keeps them in
 * a registry keyed by its address, so the descriptor can be const). */
struct dbk__entity_priv {
    pthread_mutex_t mu;   /* serializes writers of `cache` */
    int pk;               /* index of the PK field */
    uint64_t all_mask;    /* every field */
    uint64_t default_mask; /* non-hidden fields */
    struct dbk__sql *cache; /* atomic head; readers take no lock */
};

/* SQL pieces appended to the core string builder (core/sb.h). */
/* An identifier, quoted in the engine's dialect. */
void dbk__sb_ident(dbk__sb *sb, dbk_engine engine, const char *id);
/* Parameter n in the engine's dialect, with the field's cast where the
 * engine has casts (field < 0: none). */
void dbk__sb_param(dbk__sb *sb, const dbk_entity *e, int field, int n, dbk_engine engine);
/* Comma-separated quoted columns of `mask`, in field order. */
void dbk__sb_columns(dbk__sb *sb, dbk_engine engine, const dbk_entity *e, uint64_t mask);

/* Initializes the entity if needed. */
dbk_rc dbk__entity_ready(const dbk_entity *e, dbk_error *err);

/* The private state of an initialized entity, from the registry keyed by
 * the descriptor's address (lock-free); NULL when not initialized. */
struct dbk__entity_priv *dbk__priv(const dbk_entity *e);

/* Looks up a cached statement; NULL when absent. */
const struct dbk__sql *dbk__sql_get(const dbk_entity *e, int op, int engine, uint64_t a,
                                    uint64_t b);
/* Publishes `s` (built by the caller, heap-allocated) and returns the one in
 * the cache (another thread may have won the race: `s` is then freed). */
const struct dbk__sql *dbk__sql_put(const dbk_entity *e, struct dbk__sql *s);
void dbk__sql_free(struct dbk__sql *s);
/* Fills s->cols/ncols from a mask. */
dbk_rc dbk__sql_set_cols(struct dbk__sql *s, const dbk_entity *e, uint64_t mask);

/* Field lookup by column name; -1 when unknown (NULL name included). */
int dbk__field(const dbk_entity *e, const char *name);

/* The parameter value of field `fi` of struct `in` (borrows its memory). */
dbk_value dbk__field_value(const dbk_entity *e, int fi, const void *in);

/* Maps result row `row` (columns col0.. mapped to fields cols[]) into
 * `out`; strings copied into arena. Fields not mapped are left as they are. */
dbk_rc dbk__map_row(const dbk_entity *e, const dbk_result *r, size_t row, const int *cols,
                    int ncols, void *out, dbk_arena *arena, dbk_error *err);

/* Current time in microseconds since the epoch (CLOCK_REALTIME). */
int64_t dbk__now_us(void);

/* Common argument checks. */
dbk_rc dbk__repo_check(dbk_db *db, const dbk_entity *e, dbk_arena *arena, bool need_arena,
                       const char *fn, dbk_error *err);

/* Flags of the internal find-many and include calls. */
enum { DBK__FIND_NO_BATCH = 1u };

/* Loads include paths for `n` structs at `items` (see dbk_repo_include);
 * flags as dbk__repo_find_many_flags (DBK__FIND_NO_BATCH: no prefetch of
 * several relations in one batch). */
dbk_rc dbk__repo_include(dbk_db *db, const dbk_entity *e, void *items, size_t n, unsigned flags,
                         const char *const *paths, size_t npaths, dbk_arena *arena,
                         dbk_error *err);

/* dbk_repo_find_many with internal flags (0: what the public call does).
 * DBK__FIND_NO_BATCH sends an exact total's COUNT as its own round trip
 * instead of in one batch with the page on PostgreSQL: bench/repo_bench.c
 * measures the difference with it. */
dbk_rc dbk__repo_find_many_flags(dbk_db *db, const dbk_entity *e, const dbk_query *q,
                                 unsigned flags, dbk_list *out, dbk_arena *arena,
                                 dbk_error *err);

#endif
