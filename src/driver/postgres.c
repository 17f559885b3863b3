/* Placeholder until the postgres driver lands: every call fails clearly. */
#include "driver.h"
#include "../core/internal.h"

static dbk_rc open_(const struct dbk_config *cfg, void **impl, dbk_error *err)
{
    (void)cfg;
    *impl = NULL;
    return dbk__err(err, DBK_EINTERNAL, "the postgres driver is not built yet");
}
static void close_(void *impl) { (void)impl; }

const dbk__driver dbk__driver_postgres = {.engine = 0, .name = "postgres", .open = open_, .close = close_};
