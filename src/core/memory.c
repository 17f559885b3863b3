/*
 * memory.c - dbk_free(), the one way to release memory the library
 * allocated for the caller.
 *
 * Why a function around free(): the library allocates with its own C
 * runtime's malloc, and a program that links another allocator, or runs
 * with one C runtime per module, must hand the block back to the runtime
 * that made it. Every public function that returns such memory names
 * dbk_free() in its header comment (docs/api-conventions.md).
 */
#include <stdlib.h>

#include "dbkit/error.h"

void dbk_free(void *p)
{
    free(p);
}
