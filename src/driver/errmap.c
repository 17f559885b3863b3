/*
 * The one table that turns engine error codes into dbk_rc.
 *
 * PostgreSQL reports a five-character SQLSTATE: exact codes are matched
 * first, then the two-character class. SQLite reports an extended result
 * code: the extended code is matched first, then the primary code (low
 * byte). Anything unknown is DBK_ESQL, never DBK_OK. tests/unit/error_test.c
 * walks this table.
 */
#include <sqlite3.h>
#include <string.h>

#include "../core/internal.h"
#include "driver.h"

static const struct {
    const char *state;
    dbk_rc rc;
} pg_exact[] = {
    {"23505", DBK_EUNIQUE},         {"23P01", DBK_EUNIQUE},
    {"23503", DBK_EFOREIGN_KEY},    {"23502", DBK_ENOT_NULL},
    {"23514", DBK_ECHECK},          {"40001", DBK_ESERIALIZATION},
    {"40P01", DBK_EDEADLOCK},       {"40003", DBK_ECOMMIT_UNKNOWN},
    {"57014", DBK_ETIMEOUT},        {"55P03", DBK_EBUSY},
    {"25006", DBK_EREADONLY},       {"08001", DBK_EUNAVAILABLE},
    {"08004", DBK_EUNAVAILABLE},    {"57P01", DBK_ECONN_LOST},
    {"57P02", DBK_ECONN_LOST},      {"57P03", DBK_EUNAVAILABLE},
    {"53100", DBK_EDISK_FULL},      {"53200", DBK_ENOMEM},
    {"53300", DBK_EUNAVAILABLE},    {"42P01", DBK_ESCHEMA},
    {"42703", DBK_ESCHEMA},         {"42883", DBK_ESCHEMA},
    {"3F000", DBK_ESCHEMA},         {"58030", DBK_EIO},
    {"XX001", DBK_EIO},             {"XX002", DBK_EIO},
};

static const struct {
    const char *cls;
    dbk_rc rc;
} pg_class[] = {
    {"08", DBK_ECONN_LOST}, /* connection exception */
    {"22", DBK_EINVALID},   /* data exception: bad input value */
    {"23", DBK_ECHECK},     /* other integrity violations */
    {"28", DBK_EAUTH},      /* invalid authorization */
    {"40", DBK_ESERIALIZATION},
    {"53", DBK_EUNAVAILABLE}, /* insufficient resources */
    {"57", DBK_ECANCELLED},   /* operator intervention */
    {"58", DBK_EIO},
    {"XX", DBK_EINTERNAL},
};

dbk_rc dbk__rc_from_sqlstate(const char *s)
{
    if (!s || strlen(s) != 5)
        return DBK_ESQL;
    for (size_t i = 0; i < sizeof pg_exact / sizeof pg_exact[0]; i++)
        if (memcmp(s, pg_exact[i].state, 5) == 0)
            return pg_exact[i].rc;
    for (size_t i = 0; i < sizeof pg_class / sizeof pg_class[0]; i++)
        if (memcmp(s, pg_class[i].cls, 2) == 0)
            return pg_class[i].rc;
    return DBK_ESQL;
}

static const struct {
    int code;
    dbk_rc rc;
} sq_extended[] = {
    {SQLITE_CONSTRAINT_UNIQUE, DBK_EUNIQUE},
    {SQLITE_CONSTRAINT_PRIMARYKEY, DBK_EUNIQUE},
    {SQLITE_CONSTRAINT_ROWID, DBK_EUNIQUE},
    {SQLITE_CONSTRAINT_FOREIGNKEY, DBK_EFOREIGN_KEY},
    {SQLITE_CONSTRAINT_NOTNULL, DBK_ENOT_NULL},
    {SQLITE_CONSTRAINT_CHECK, DBK_ECHECK},
    {SQLITE_CONSTRAINT_DATATYPE, DBK_ETYPE},
    {SQLITE_IOERR_NOMEM, DBK_ENOMEM},
    {SQLITE_READONLY_DBMOVED, DBK_EIO},
};

static const struct {
    int code;
    dbk_rc rc;
} sq_primary[] = {
    {SQLITE_OK, DBK_OK},           {SQLITE_ERROR, DBK_ESQL},
    {SQLITE_INTERNAL, DBK_EINTERNAL}, {SQLITE_PERM, DBK_EIO},
    {SQLITE_ABORT, DBK_ECANCELLED}, {SQLITE_BUSY, DBK_EBUSY},
    {SQLITE_LOCKED, DBK_EBUSY},    {SQLITE_NOMEM, DBK_ENOMEM},
    {SQLITE_READONLY, DBK_EREADONLY}, {SQLITE_INTERRUPT, DBK_ECANCELLED},
    {SQLITE_IOERR, DBK_EIO},       {SQLITE_CORRUPT, DBK_EIO},
    {SQLITE_NOTFOUND, DBK_EINTERNAL}, {SQLITE_FULL, DBK_EDISK_FULL},
    {SQLITE_CANTOPEN, DBK_EUNAVAILABLE}, {SQLITE_PROTOCOL, DBK_EIO},
    {SQLITE_SCHEMA, DBK_ESCHEMA},  {SQLITE_TOOBIG, DBK_EINVALID},
    {SQLITE_CONSTRAINT, DBK_ECHECK}, {SQLITE_MISMATCH, DBK_ETYPE},
    {SQLITE_MISUSE, DBK_EMISUSE},  {SQLITE_NOLFS, DBK_EIO},
    {SQLITE_AUTH, DBK_EAUTH},      {SQLITE_RANGE, DBK_EMISUSE},
    {SQLITE_NOTADB, DBK_EIO},
};

dbk_rc dbk__rc_from_sqlite(int code)
{
    for (size_t i = 0; i < sizeof sq_extended / sizeof sq_extended[0]; i++)
        if (sq_extended[i].code == code)
            return sq_extended[i].rc;
    int primary = code & 0xff;
    for (size_t i = 0; i < sizeof sq_primary / sizeof sq_primary[0]; i++)
        if (sq_primary[i].code == primary)
            return sq_primary[i].rc;
    return DBK_ESQL;
}
