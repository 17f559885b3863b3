#!/usr/bin/env bash
# `make bench`: every benchmark of the project in one run, on throwaway
# PostgreSQL and Redis servers (scripts/testenv.sh), with the figures
# printed next to their baselines and the HTTP results written into
# docs/benchmarks.md.
#
#   1. a Release build in build-bench (library, tool, benchmarks, the shop)
#   2. scripts/testenv.sh starts PostgreSQL + Redis and runs the rest:
#   3. the library benchmarks (bench/*_bench, bench/pool_pgbench.sh)
#   4. the HTTP benchmark: examples/shop against the peers in bench/peer
#      (Express + node-postgres + ioredis; Fastify + postgres.js + ioredis
#      with auto-pipelining) with wrk, and the shop's access log on vs
#      off (bench/http_bench.sh table; BENCH_ROWS=access_log for only that)
#   5. the scaling run: GET /users/{id} uncached and Redis-cached at 1 to 256
#      connections, the shop against both peers, tables and gnuplot SVGs
#      (bench/scale.sh; the plots go to docs/img/)
#   6. the restart run: 64 connections against the shop with PostgreSQL
#      restarted in the middle (bench/http_bench.sh restart)
#
# env: BENCH_PARTS         which parts to run (default "lib http scale restart")
#      BENCH_SECONDS       wrk duration per measurement (15)
#      BENCH_SCALE_SECONDS wrk duration per point of the scaling run (5)
#      BENCH_RESTART_SECONDS  length of the restart run (60)
#      LIB_BENCH_SECONDS   duration of each library measurement (2)
#      BENCH_WRITE_DOCS    1 (default) rewrites the marked sections of docs/benchmarks.md;
#                          0 only prints
#      BENCH_CMAKE_ARGS    extra arguments for the cmake configure step
#      BENCH_BUILD_DIR     build directory (build-bench)
#      (bench/http_bench.sh and bench/scale.sh document the rest: BENCH_ROUNDS,
#      BENCH_ROWS, BENCH_PEERS, BENCH_SCALE_CONNECTIONS, ...)
# Logs of every step: build-bench/bench-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BENCH_BUILD_DIR:-build-bench}
PARTS=${BENCH_PARTS:-lib http scale restart}
LOGS=$BUILD/bench-logs

if [ "${1:-}" != --inner ]; then
  echo "bench: Release build in $BUILD"
  # shellcheck disable=SC2086
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDBKIT_TESTS=OFF -DDBKIT_BENCH=ON \
    ${BENCH_CMAKE_ARGS:-} >/dev/null
  cmake --build "$BUILD" -j2
  mkdir -p "$LOGS"
  exec bash scripts/testenv.sh -- bash scripts/run-bench.sh --inner
fi

# ---- inside scripts/testenv.sh: DBKIT_TEST_PG_URL / DBKIT_TEST_REDIS_URL are set

state=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-bench-state.XXXXXX")
failed=()

finish() {
  local rc=$?
  # The restart run replaces the postmaster testenv.sh started, so testenv.sh
  # no longer sees its PID alive and would leave the new one running: stop it
  # here, by its data directory, while the directory still exists.
  if [ -f "$state/pg_restarted" ]; then
    local datadir as_pg=()
    datadir=$(cat "$state/pg_restarted")
    if [ "$(id -u)" -eq 0 ] && [ "$(stat -c %U "$datadir" 2>/dev/null || echo root)" != root ]; then
      as_pg=(runuser -u "$(stat -c %U "$datadir")" --)
    fi
    "${as_pg[@]}" "$DBKIT_TEST_PGBIN/pg_ctl" -D "$datadir" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$state"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME COMMAND...: runs one benchmark, its output both shown and kept in
# $LOGS/NAME.log; a failing step is reported at the end, the others still run.
step() {
  local name=$1
  shift
  echo
  echo "==== $name: $*"
  if "$@" 2>&1 | tee "$LOGS/$name.log"; then
    return 0
  fi
  failed+=("$name")
}

LIB_SECS=${LIB_BENCH_SECONDS:-2}
mkdir -p "$LOGS"
echo "bench: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); parts: $PARTS"

if [[ " $PARTS " == *" lib "* ]]; then
  step pk_bench "$BUILD/bench/pk_bench" --seconds "$LIB_SECS" --rounds 3
  step pool_bench "$BUILD/bench/pool_bench" micro sqlite --seconds "$LIB_SECS"
  # The pool next to raw threads (PostgreSQL at 2, 8 and 64 threads; SQLite at 2, 4, 8 and
  # 64) and auto-pipelining: 64 threads on a pool of 2, on / off / hand-written libpq
  # pipelining.
  for t in 2 8 64; do
    step "pool_bench_pk_$t" "$BUILD/bench/pool_bench" pk --setup --rows 10000 --threads "$t" \
      --seconds "$LIB_SECS"
  done
  step pool_bench_pipe "$BUILD/bench/pool_bench" pipe --rows 10000 --threads 64 --seconds "$LIB_SECS"
  for t in 2 4 8 64; do
    step "pool_bench_sqpk_$t" "$BUILD/bench/pool_bench" sqpk --rows 10000 --threads "$t" --seconds 1
  done
  step async_bench "$BUILD/bench/async_bench" --seconds "$LIB_SECS"
  step pool_pgbench env BENCH_SECONDS="$((LIB_SECS * 3))" ROUNDS=2 PGBIN="$DBKIT_TEST_PGBIN" \
    bash bench/pool_pgbench.sh "$BUILD"
  step tx_bench "$BUILD/bench/tx_bench" --seconds "$LIB_SECS" --rounds 3
  step repo_bench "$BUILD/bench/repo_bench" --seconds "$LIB_SECS"
  step cache_bench "$BUILD/bench/cache_bench" --seconds "$LIB_SECS" --rounds 3
  step batch_bench "$BUILD/bench/batch_bench" --seconds "$LIB_SECS"
  step doc_bench "$BUILD/bench/doc_bench" --seconds "$LIB_SECS" --rounds 3
  step bulk_bench "$BUILD/bench/bulk_bench" --rows 100000
  step testdb_bench "$BUILD/bench/testdb_bench" # 30 rounds per engine and strategy
  # Read routing on a streaming replica and PK lookups through PgBouncer: the script starts
  # the replica and the PgBouncer next to the test server and stops them.
  step topo_bench env BENCH_SECONDS="$LIB_SECS" ROUNDS=3 PGBIN="$DBKIT_TEST_PGBIN" \
    bash bench/topo_bench.sh "$BUILD"
  # Redis hits through Sentinel and Cluster next to plain redis://: hits/s and the client's
  # instructions per hit under callgrind; the script starts the sentinels and the cluster
  # (scripts/testenv.sh --redis-sentinel --redis-cluster) and stops them.
  step cache_ha_cost env BENCH_SECONDS="$LIB_SECS" ROUNDS=3 bash bench/cache_ha_cost.sh "$BUILD"
  # A benchmark program added later runs only once its bounded flags are
  # listed above; say so instead of running it with unknown durations.
  for prog in "$BUILD"/bench/*_bench; do
    [ -x "$prog" ] || continue
    case "$(basename "$prog")" in
      pk_bench | pool_bench | tx_bench | repo_bench | cache_bench | batch_bench | bulk_bench | \
        testdb_bench | async_bench | doc_bench) ;;
      replica_bench | pgbouncer_bench) ;; # run by bench/topo_bench.sh above
      *) echo "bench: $(basename "$prog") is not run by scripts/run-bench.sh yet (add it with bounded flags)" ;;
    esac
  done
fi

docs=()
[ "${BENCH_WRITE_DOCS:-1}" = 1 ] && docs=(BENCH_DOCS=docs/benchmarks.md)

if [[ " $PARTS " == *" http "* ]]; then
  step http_bench env "${docs[@]}" BENCH_RAW_DIR="$LOGS/http" bash bench/http_bench.sh table "$BUILD"
fi

if [[ " $PARTS " == *" scale "* ]]; then
  step scale_bench env "${docs[@]}" BENCH_RAW_DIR="$LOGS/scale" bash bench/scale.sh "$BUILD"
fi

if [[ " $PARTS " == *" restart "* ]]; then
  step restart_load env "${docs[@]}" BENCH_ALLOW_PG_RESTART=1 BENCH_STATE_DIR="$state" \
    BENCH_RAW_DIR="$LOGS/restart" \
    BENCH_CONNECTIONS=64 bash bench/http_bench.sh restart "$BUILD"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]} (logs in $LOGS/)"
  exit 1
fi
echo "bench: done (logs in $LOGS/)"
