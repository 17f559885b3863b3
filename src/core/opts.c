/*
 * Versioned option structs: the one check every consumer makes, and the
 * body of every dbk_<name>_init().
 *
 * Each public option struct starts with `unsigned int version`. A program
 * compiled against newer headers may pass a struct larger than the one this
 * library knows; reading it would be harmless, but silently ignoring the
 * fields the caller set is not, so a version above the library's is refused
 * with DBK_EMISUSE. Version 0 is what a zero-initialized struct written
 * before versioning holds: it is read as version 1, so such programs keep
 * working. The compare itself is inline (internal.h) because dbk_tx_opts
 * is read once per transaction; only the refusal, which fills the message,
 * lives here.
 */
#include <string.h>

#include "internal.h"

dbk_rc dbk__opts_refuse(unsigned got, unsigned current, const char *type, dbk_error *err)
{
    dbk__err(err, DBK_EMISUSE, "%s version %u is newer than this library's (%u)", type, got,
             current);
    dbk__err_hint(err, "the program was built against newer dbkit headers than the library it "
                       "runs with: rebuild it against this library's headers or install the "
                       "newer library");
    return DBK_EMISUSE;
}

dbk_rc dbk__opts_init(void *opts, size_t size, unsigned version, unsigned current, const char *type,
                      dbk_error *err)
{
    if (!opts)
        return dbk__err(err, DBK_EMISUSE, "%s_init: opts is NULL", type);
    if (version == 0) {
        dbk__err(err, DBK_EMISUSE, "%s_init: version 0", type);
        dbk__err_hint(err, "pass the version macro of the headers you build with");
        return DBK_EMISUSE;
    }
    if (version > current)
        return dbk__opts_refuse(version, current, type, err);
    memset(opts, 0, size);
    /* version is the first member of every option struct: a pointer to the
     * struct, converted, points to it. */
    *(unsigned int *)opts = version;
    return DBK_OK;
}
