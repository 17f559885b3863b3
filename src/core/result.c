/*
 * Results: an owned, connection-independent copy of a statement's rows.
 *
 * Layout: a column header, a row-major array of fixed-size typed cells, and
 * one byte buffer for text and blobs addressed by offset (so growing it
 * never invalidates a cell). Every byte value is followed by a NUL so text
 * getters hand out C strings without copying. The header, the column
 * names, the first row's cells and the first bytes share one allocation,
 * so a point lookup costs one malloc and one free.
 *
 * Getters follow the strict conversion rules documented in result.h: a
 * value is returned only when the conversion is exact.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "result_int.h"

/* A result's first row and first bytes live in its own allocation:
 * results of at most INLINE_MAX_COLS columns get one row of cells there and
 * INLINE_DATA bytes of data. */
#define INLINE_MAX_COLS 64
#define INLINE_DATA 192

dbk_result *dbk__result_new(int ncols, const char *const *names, const size_t *lens)
{
    size_t ncells = 0, ndata = 0, nnames = 0;
    if (ncols > 0) {
        for (int i = 0; i < ncols; i++)
            nnames += (lens ? lens[i] : strlen(names[i])) + 1;
        if (ncols <= INLINE_MAX_COLS) {
            ncells = (size_t)ncols;
            ndata = INLINE_DATA;
        }
    }
    /* struct, column name pointers, inline cells (all 8-byte aligned
     * sizes), then the names and the inline data bytes */
    size_t ptrs = ncols > 0 ? (size_t)ncols * sizeof(char *) : 0;
    size_t size = sizeof(dbk_result) + ptrs + ncells * sizeof(struct dbk__cell) + nnames + ndata;
    dbk_result *r = malloc(size);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->ncols = ncols;
    char *tail = (char *)(r + 1);
    if (ncols > 0) {
        r->colnames = (char **)tail;
        tail += ptrs;
        if (ncells) {
            r->cells = (struct dbk__cell *)tail;
            r->cap_rows = 1;
            r->cells_inline = true;
            tail += ncells * sizeof(struct dbk__cell);
        }
        r->names = tail;
        for (int i = 0; i < ncols; i++) {
            size_t n = lens ? lens[i] : strlen(names[i]);
            memcpy(tail, names[i], n);
            tail[n] = '\0';
            r->colnames[i] = tail;
            tail += n + 1;
        }
        if (ndata) {
            r->data = tail;
            r->data_cap = ndata;
            r->data_inline = true;
        }
    }
    return r;
}

void dbk_result_free(dbk_result *r)
{
    if (!r)
        return;
    if (!r->cells_inline)
        free(r->cells);
    if (!r->data_inline)
        free(r->data);
    free(r);
}

/* Grows a buffer of *cap elements of `size` bytes, `used` of them in use,
 * to at least `want`; a buffer still inside the result is copied out. */
static void *grow(void *buf, bool *inside, size_t *cap, size_t used, size_t want, size_t first,
                  size_t size)
{
    size_t n = *cap > first ? *cap : first;
    while (n < want) {
        if (n > SIZE_MAX / 2 / size)
            return NULL;
        n *= 2;
    }
    void *nb;
    if (*inside) {
        nb = malloc(n * size);
        if (nb && used)
            memcpy(nb, buf, used * size);
    } else {
        nb = realloc(buf, n * size);
    }
    if (!nb)
        return NULL;
    *inside = false;
    *cap = n;
    return nb;
}

dbk_rc dbk__result_reserve(dbk_result *r, size_t rows, size_t bytes)
{
    if (r->ncols > 0 && r->nrows + rows > r->cap_rows) {
        size_t cap_cells = r->cap_rows * (size_t)r->ncols;
        size_t want = (r->nrows + rows) * (size_t)r->ncols;
        struct dbk__cell *c = grow(r->cells, &r->cells_inline, &cap_cells,
                                   r->nrows * (size_t)r->ncols, want, 4 * (size_t)r->ncols,
                                   sizeof *c);
        if (!c)
            return DBK_ENOMEM;
        r->cells = c;
        r->cap_rows = cap_cells / (size_t)r->ncols;
    }
    if (r->data_len + bytes > r->data_cap) {
        char *d = grow(r->data, &r->data_inline, &r->data_cap, r->data_len, r->data_len + bytes,
                       256, 1);
        if (!d)
            return DBK_ENOMEM;
        r->data = d;
    }
    return DBK_OK;
}

struct dbk__cell *dbk__result_add_row(dbk_result *r)
{
    if (r->ncols <= 0)
        return NULL;
    if (r->nrows == r->cap_rows && dbk__result_reserve(r, 1, 0) != DBK_OK)
        return NULL;
    struct dbk__cell *row = r->cells + r->nrows * (size_t)r->ncols;
    memset(row, 0, (size_t)r->ncols * sizeof *row);
    r->nrows++;
    return row;
}

char *dbk__result_alloc_bytes(dbk_result *r, struct dbk__cell *c, dbk_type type, size_t len)
{
    if (len > UINT32_MAX - 1)
        return NULL;
    if (dbk__result_reserve(r, 0, len + 1) != DBK_OK)
        return NULL;
    char *p = r->data + r->data_len;
    p[len] = '\0';
    c->type = (uint8_t)type;
    c->len = (uint32_t)len;
    c->v.off = r->data_len;
    r->data_len += len + 1;
    return p;
}

dbk_rc dbk__result_set_bytes(dbk_result *r, struct dbk__cell *c, dbk_type type, const void *p,
                             size_t len)
{
    char *dst = dbk__result_alloc_bytes(r, c, type, len);
    if (!dst)
        return DBK_ENOMEM;
    if (len)
        memcpy(dst, p, len);
    return DBK_OK;
}

size_t dbk_result_nrows(const dbk_result *r)
{
    return r ? r->nrows : 0;
}

int dbk_result_ncols(const dbk_result *r)
{
    return r ? r->ncols : 0;
}

int64_t dbk_result_affected(const dbk_result *r)
{
    return r ? r->affected : 0;
}

const char *dbk_result_colname(const dbk_result *r, int col)
{
    if (!r || col < 0 || col >= r->ncols)
        return NULL;
    return r->colnames[col];
}

int dbk_result_colindex(const dbk_result *r, const char *name)
{
    if (!r || !name)
        return -1;
    for (int i = 0; i < r->ncols; i++)
        if (strcmp(r->colnames[i], name) == 0)
            return i;
    return -1;
}

static const struct dbk__cell *cell_at(const dbk_result *r, size_t row, int col)
{
    if (!r || col < 0 || col >= r->ncols || row >= r->nrows)
        return NULL;
    return r->cells + row * (size_t)r->ncols + (size_t)col;
}

dbk_type dbk_result_type(const dbk_result *r, size_t row, int col)
{
    const struct dbk__cell *c = cell_at(r, row, col);
    return c ? (dbk_type)c->type : DBK_TYPE_NULL;
}

bool dbk_result_is_null(const dbk_result *r, size_t row, int col)
{
    const struct dbk__cell *c = cell_at(r, row, col);
    return !c || c->type == DBK_TYPE_NULL;
}

/* Looks up a cell for a getter, reporting misuse. */
static dbk_rc get_cell(const dbk_result *r, size_t row, int col, const void *out,
                       const struct dbk__cell **c, dbk_error *err)
{
    if (!r || !out)
        return dbk__err(err, DBK_EMISUSE, "result and output pointer must not be NULL");
    if (col < 0 || col >= r->ncols)
        return dbk__err(err, DBK_EMISUSE, "column %d out of range (result has %d columns)", col,
                        r->ncols);
    if (row >= r->nrows)
        return dbk__err(err, DBK_EMISUSE, "row %zu out of range (result has %zu rows)", row,
                        r->nrows);
    *c = r->cells + row * (size_t)r->ncols + (size_t)col;
    return DBK_OK;
}

static dbk_rc type_err(const dbk_result *r, int col, const struct dbk__cell *c, const char *want,
                       dbk_error *err)
{
    if (c->type == DBK_TYPE_NULL)
        return dbk__err(err, DBK_ETYPE, "column \"%s\" is null, not %s", r->colnames[col], want);
    return dbk__err(err, DBK_ETYPE, "column \"%s\" holds %s, not %s", r->colnames[col],
                    dbk_type_name((dbk_type)c->type), want);
}

dbk_rc dbk_result_get_int64(const dbk_result *r, size_t row, int col, int64_t *out,
                            dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    switch (c->type) {
    case DBK_TYPE_INT64:
    case DBK_TYPE_BOOL:
        *out = c->v.i;
        return DBK_OK;
    case DBK_TYPE_DOUBLE:
        /* Exact only: integral and inside the int64 range. */
        if (isfinite(c->v.d) && c->v.d == floor(c->v.d) && c->v.d >= -9223372036854775808.0 &&
            c->v.d < 9223372036854775808.0) {
            *out = (int64_t)c->v.d;
            return DBK_OK;
        }
        return dbk__err(err, DBK_ETYPE, "column \"%s\" holds %g, which is not an exact int64",
                        r->colnames[col], c->v.d);
    default:
        return type_err(r, col, c, "int64", err);
    }
}

dbk_rc dbk_result_get_double(const dbk_result *r, size_t row, int col, double *out,
                             dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    if (c->type == DBK_TYPE_DOUBLE) {
        *out = c->v.d;
        return DBK_OK;
    }
    if (c->type == DBK_TYPE_INT64) {
        *out = (double)c->v.i;
        return DBK_OK;
    }
    return type_err(r, col, c, "double", err);
}

dbk_rc dbk_result_get_bool(const dbk_result *r, size_t row, int col, bool *out, dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    if (c->type == DBK_TYPE_BOOL || (c->type == DBK_TYPE_INT64 && (c->v.i == 0 || c->v.i == 1))) {
        *out = c->v.i != 0;
        return DBK_OK;
    }
    return type_err(r, col, c, "bool", err);
}

dbk_rc dbk_result_get_text(const dbk_result *r, size_t row, int col, const char **out,
                           size_t *len, dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    if (c->type == DBK_TYPE_NULL) {
        *out = NULL;
        if (len)
            *len = 0;
        return DBK_OK;
    }
    if (c->type != DBK_TYPE_TEXT && c->type != DBK_TYPE_JSON)
        return type_err(r, col, c, "text", err);
    *out = r->data + c->v.off;
    if (len)
        *len = c->len;
    return DBK_OK;
}

dbk_rc dbk_result_get_blob(const dbk_result *r, size_t row, int col, const void **out,
                           size_t *len, dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    if (c->type == DBK_TYPE_NULL) {
        *out = NULL;
        if (len)
            *len = 0;
        return DBK_OK;
    }
    if (c->type != DBK_TYPE_BLOB && c->type != DBK_TYPE_TEXT && c->type != DBK_TYPE_JSON)
        return type_err(r, col, c, "blob", err);
    *out = r->data + c->v.off;
    if (len)
        *len = c->len;
    return DBK_OK;
}

dbk_rc dbk_result_get_timestamp(const dbk_result *r, size_t row, int col, int64_t *out,
                                dbk_error *err)
{
    const struct dbk__cell *c = NULL;
    dbk_rc rc = get_cell(r, row, col, out, &c, err);
    if (rc)
        return rc;
    if (c->type == DBK_TYPE_TIMESTAMP) {
        *out = c->v.i;
        return DBK_OK;
    }
    if (c->type == DBK_TYPE_TEXT) {
        if (dbk_timestamp_parse(r->data + c->v.off, c->len, out) == DBK_OK)
            return DBK_OK;
        return dbk__err(err, DBK_ETYPE, "column \"%s\" holds text that is not a timestamp",
                        r->colnames[col]);
    }
    return type_err(r, col, c, "timestamp", err);
}

static dbk_rc name_col(const dbk_result *r, const char *name, int *col, dbk_error *err)
{
    if (!r || !name)
        return dbk__err(err, DBK_EMISUSE, "result and column name must not be NULL");
    *col = dbk_result_colindex(r, name);
    if (*col < 0)
        return dbk__err(err, DBK_EINVALID_COLUMN, "result has no column \"%.64s\"", name);
    return DBK_OK;
}

#define BY_NAME(fn, T)                                                                      \
    dbk_rc fn##_by_name(const dbk_result *r, size_t row, const char *name, T *out,           \
                        dbk_error *err)                                                     \
    {                                                                                       \
        int col = -1;                                                                          \
        dbk_rc rc = name_col(r, name, &col, err);                                           \
        return rc ? rc : fn(r, row, col, out, err);                                         \
    }
BY_NAME(dbk_result_get_int64, int64_t)
BY_NAME(dbk_result_get_double, double)
BY_NAME(dbk_result_get_bool, bool)
BY_NAME(dbk_result_get_timestamp, int64_t)

dbk_rc dbk_result_get_text_by_name(const dbk_result *r, size_t row, const char *name,
                                   const char **out, size_t *len, dbk_error *err)
{
    int col = -1;
    dbk_rc rc = name_col(r, name, &col, err);
    return rc ? rc : dbk_result_get_text(r, row, col, out, len, err);
}

dbk_rc dbk_result_get_blob_by_name(const dbk_result *r, size_t row, const char *name,
                                   const void **out, size_t *len, dbk_error *err)
{
    int col = -1;
    dbk_rc rc = name_col(r, name, &col, err);
    return rc ? rc : dbk_result_get_blob(r, row, col, out, len, err);
}
