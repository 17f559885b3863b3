/*
 * Building results (drivers only). A result is a column header plus a
 * row-major array of cells; variable-length bytes live in one growable
 * buffer addressed by offset, each followed by a NUL byte.
 */
#ifndef DBK_RESULT_INT_H
#define DBK_RESULT_INT_H

#include "dbkit/result.h"

struct dbk__cell {
    uint8_t type;   /* dbk_type */
    uint32_t len;   /* TEXT/BLOB/JSON byte length */
    union {
        int64_t i;  /* INT64, BOOL, TIMESTAMP */
        double d;
        size_t off; /* offset into data */
    } v;
};

struct dbk_result {
    int ncols;
    size_t nrows;
    size_t cap_rows;
    int64_t affected;
    char **colnames;         /* ncols names, each its own allocation inside names */
    char *names;             /* all names, NUL-separated */
    struct dbk__cell *cells; /* cap_rows * ncols */
    char *data;
    size_t data_len;
    size_t data_cap;
    /* cells and data start inside the result's own allocation (room for
     * one row of a narrow result and DBK__RESULT_INLINE_DATA bytes), so a
     * point lookup is one malloc and one free; they move to their own
     * allocations when they outgrow it. */
    bool cells_inline;
    bool data_inline;
};

/* A new result with ncols columns (0 allowed for statements without rows).
 * names[i] of lens[i] bytes (lens may be NULL: strlen). NULL on ENOMEM. */
dbk_result *dbk__result_new(int ncols, const char *const *names, const size_t *lens);

/* Make room for `rows` more rows and `bytes` more data bytes. */
dbk_rc dbk__result_reserve(dbk_result *r, size_t rows, size_t bytes);

/* Appends a row of NULL cells; returns its cells or NULL on ENOMEM. */
struct dbk__cell *dbk__result_add_row(dbk_result *r);

/* Stores bytes for a cell (TEXT, BLOB, JSON). Re-fetch cell pointers after
 * this call only if you added rows in between; the data buffer may move but
 * cells hold offsets. */
dbk_rc dbk__result_set_bytes(dbk_result *r, struct dbk__cell *c, dbk_type type, const void *p,
                             size_t len);

/* Reserves len bytes (+NUL) for a cell and returns a pointer to write them
 * (valid until the next data allocation). */
char *dbk__result_alloc_bytes(dbk_result *r, struct dbk__cell *c, dbk_type type, size_t len);

#endif
