/*
 * The COPY text-format encoder (PostgreSQL's COPY ... FROM STDIN), shared
 * by dbk_db_copy_from and the repository's create_many: one encoder, one
 * set of limits.
 */
#ifndef DBK_COPY_INT_H
#define DBK_COPY_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "dbkit/db.h"

/* One encoded row being built and then handed out (off: bytes already
 * handed out). Owns p; free(p) when done. */
typedef struct dbk__copy_row {
    char *p;
    size_t len, off, cap;
} dbk__copy_row;

/* Copies what is left of the encoded row into buf (at most cap bytes) and
 * returns how many; the row is drained when r->off == r->len. */
size_t dbk__copy_row_drain(dbk__copy_row *r, char *buf, size_t cap);

/* Appends n raw bytes (a separator); false when out of memory. */
bool dbk__copy_put(dbk__copy_row *r, const char *s, size_t n);

/* Appends one value in COPY text format (escaping, bytea hex, \N for
 * NULL). DBK_EINVALID for text with a NUL byte, a value over 1 GiB or a
 * row that would be over 1 GiB encoded (checked from lengths before the
 * value is read or anything is allocated), a timestamp outside 1..9999;
 * DBK_ENOMEM; DBK_EMISUSE for a NULL pointer with a length. `column` names
 * the value in messages. */
dbk_rc dbk__copy_value(dbk__copy_row *r, dbk_value v, const char *column, dbk_error *err);

#endif
