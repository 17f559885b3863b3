#!/usr/bin/env bash
# The topology benchmarks, on the servers of scripts/testenv.sh --pg-replica
# --pgbouncer:
#
#   replica_bench    the streaming replica of the test server: PK lookups
#                    through the cluster's read executors vs a plain pool on
#                    the same replica (target: routing overhead <= 5 %)
#   pgbouncer_bench  the PgBouncer (pool_mode=transaction) in front of it: PK
#                    lookups with pooler=transaction vs libpq PQexecParams
#                    (unnamed statements) through the same PgBouncer
#                    (target >= 0.9)
#
# Both alternate their rounds and print the best of each next to its
# baseline. When DBKIT_TEST_PG_REPLICA_URL and DBKIT_TEST_PGBOUNCER_URL are
# not both set, the script runs itself again under
# `scripts/testenv.sh --pg-replica --pgbouncer`, which starts a primary, its
# replica and the PgBouncer and stops them (by PID / data directory) on exit,
# whatever happens.
#
# usage: bench/topo_bench.sh [BUILD_DIR]     (default: build)
# env:   DBKIT_TEST_PG_URL, DBKIT_TEST_PG_REPLICA_URL, DBKIT_TEST_PGBOUNCER_URL
#        (scripts/testenv.sh), BENCH_SECONDS (2)  ROUNDS (3)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
SECS=${BENCH_SECONDS:-2}
ROUNDS=${ROUNDS:-3}

for prog in replica_bench pgbouncer_bench; do
  [ -x "$BUILD/bench/$prog" ] || { echo "topo_bench: $BUILD/bench/$prog not built" >&2; exit 2; }
done

if [ -z "${DBKIT_TEST_PG_REPLICA_URL:-}" ] || [ -z "${DBKIT_TEST_PGBOUNCER_URL:-}" ]; then
  exec bash scripts/testenv.sh --pg-replica --pgbouncer -- bash bench/topo_bench.sh "$BUILD"
fi
PRIMARY=${DBKIT_TEST_PG_URL:?topo_bench: DBKIT_TEST_PG_URL not set}

echo "== replica_bench (replica $DBKIT_TEST_PG_REPLICA_URL)"
"$BUILD/bench/replica_bench" --primary "$PRIMARY" --replica "$DBKIT_TEST_PG_REPLICA_URL" \
  --seconds "$SECS" --rounds "$ROUNDS"

echo
echo "== pgbouncer_bench (PgBouncer $DBKIT_TEST_PGBOUNCER_URL)"
"$BUILD/bench/pgbouncer_bench" --bouncer "$DBKIT_TEST_PGBOUNCER_URL" \
  --direct "$PRIMARY" --seconds "$SECS" --rounds "$ROUNDS"
