/* The version the library was built as (compare with DBKIT_VERSION_STRING). */
#include "dbkit/version.h"

const char *dbk_version(void)
{
    return DBKIT_VERSION_STRING;
}
