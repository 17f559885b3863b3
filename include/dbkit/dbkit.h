/*
 * dbkit/dbkit.h - the whole public API in one include.
 */
#ifndef DBKIT_DBKIT_H
#define DBKIT_DBKIT_H

#include "error.h"
#include <dbkit/version.h>
#include "value.h"
#include "config.h"
#include "result.h"
#include "sqlscan.h"
#include "db.h"
#include "pool.h"
#include "replica.h"
#include "tx.h"
#include "arena.h"
#include "repo.h"
#include "doc.h"
#include "cache.h"
#include "cache_doc.h"
#include "migrate.h"
#include "testdb.h"
#include "gen.h"
#include "lint.h"
#include "batch.h"
#include "parallel.h"
#include "diag.h"
#include "async.h"

#endif
