/*
 * What batch.c and parallel.c share.
 */
#ifndef DBK_BATCH_INT_H
#define DBK_BATCH_INT_H

#include <stddef.h>

#include "dbkit/error.h"

/* err->message = "<what> <i>: <msg>" (msg may be err->message itself). */
void dbk__batch_prefix(dbk_error *err, const char *what, size_t i, const char *msg);

#endif
