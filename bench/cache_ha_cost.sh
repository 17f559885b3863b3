#!/usr/bin/env bash
# What a cache hit costs the client through Sentinel and Cluster, next to a
# hit on plain redis:// (issue 16's target: >= 0.95x plain).
#
# Wall clock first (cache_bench ha: hits/s, best of ROUNDS). On a machine
# with few cores that figure is mostly the servers': a Cluster is six
# redis-server processes, a Sentinel set five, competing with the client
# for the same CPUs. So the client's own cost is counted too, where load
# does not skew it: instructions per hit under valgrind's callgrind, the
# Ir of `cache_bench ha --hits N URL` minus that of `--hits 0 URL`, divided
# by N; through the cached repository (dbk_cached_repo_find_by_id, decoding
# included) and through dbk_cache_get alone. Only the hit loop is counted
# (--toggle-collect on ha_hits): the set-up before it (connecting, loading
# the hot rows, a store a fresh node epoch refuses) differs from run to
# run. The cache's own threads are left out with it: the Sentinel
# subscriber wakes from poll every 100 ms and costs next to nothing per hit
# (counting the whole process instead gave the same figures within a few
# instructions per hit once the set-up was the same).
#
# Without DBKIT_TEST_REDIS_SENTINEL_URL and DBKIT_TEST_REDIS_CLUSTER_URL the
# script runs itself under `scripts/testenv.sh --redis-sentinel
# --redis-cluster`, which starts the servers and stops them on exit.
#
# usage: bench/cache_ha_cost.sh [BUILD_DIR]     (default: build)
# env:   CG_HITS (5000) hits per callgrind run, BENCH_SECONDS (2), ROUNDS (3),
#        CG_KEEP_DIR: keep the callgrind output files there (for
#        callgrind_annotate --inclusive=yes: where the instructions go)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
HITS=${CG_HITS:-5000}
SECS=${BENCH_SECONDS:-2}
ROUNDS=${ROUNDS:-3}
BENCH=$BUILD/bench/cache_bench

[ -x "$BENCH" ] || { echo "cache_ha_cost: $BENCH not built" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "cache_ha_cost: valgrind not installed (apt-get install valgrind)" >&2; exit 2; }
if [ -z "${DBKIT_TEST_REDIS_SENTINEL_URL:-}" ] || [ -z "${DBKIT_TEST_REDIS_CLUSTER_URL:-}" ]; then
  exec bash scripts/testenv.sh --redis-sentinel --redis-cluster -- bash bench/cache_ha_cost.sh "$BUILD"
fi

if [ -n "${CG_KEEP_DIR:-}" ]; then
  out=$CG_KEEP_DIR
  mkdir -p "$out"
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-cache-ha-cost.XXXXXX")
  trap 'rm -rf "$out"' EXIT
fi

echo "== wall clock (cache_bench ha)"
"$BENCH" ha --seconds "$SECS" --rounds "$ROUNDS"

# ir NAME HITS [--get] URL: callgrind's total instruction count of one run
ir() {
  local name=$1
  shift
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='ha_hits*' \
    --callgrind-out-file="$out/$name.cg" "$BENCH" ha --hits "$@" \
    >"$out/$name.out" 2>"$out/$name.err" \
    || { cat "$out/$name.err" >&2; echo "cache_ha_cost: callgrind run $name failed" >&2; exit 1; }
  awk '/Collected :/ { print $NF }' "$out/$name.err"
}

echo
echo "== client instructions per hit (callgrind, the hit loop: $HITS hits minus 0 hits)"
printf '%-20s %22s %10s %22s %10s\n' "" "cached repo Ir/hit" "vs plain" "dbk_cache_get Ir/hit" "vs plain"
names=(plain sentinel cluster)
labels=("redis:// (plain)" "redis-sentinel://" "redis-cluster://")
urls=("$DBKIT_TEST_REDIS_URL" "$DBKIT_TEST_REDIS_SENTINEL_URL" "$DBKIT_TEST_REDIS_CLUSTER_URL")
base_repo=""
base_get=""
for k in 0 1 2; do
  n=${names[$k]}
  repo_n=$(ir "$n-repo-$HITS" "$HITS" "${urls[$k]}")
  repo_0=$(ir "$n-repo-0" 0 "${urls[$k]}")
  get_n=$(ir "$n-get-$HITS" "$HITS" --get "${urls[$k]}")
  get_0=$(ir "$n-get-0" 0 --get "${urls[$k]}")
  per_repo=$(( (repo_n - repo_0) / HITS ))
  per_get=$(( (get_n - get_0) / HITS ))
  [ -n "$base_repo" ] || { base_repo=$per_repo; base_get=$per_get; }
  printf '%-20s %22d %9sx %22d %9sx\n' "${labels[$k]}" "$per_repo" \
    "$(awk -v a="$per_repo" -v b="$base_repo" 'BEGIN { printf "%.3f", a / b }')" "$per_get" \
    "$(awk -v a="$per_get" -v b="$base_get" 'BEGIN { printf "%.3f", a / b }')"
done
echo "(vs plain: the client's instructions per hit over plain's; <= 1.05 meets the target;"
echo " kernel time of the system calls is not counted)"
[ -z "${CG_KEEP_DIR:-}" ] || echo "(callgrind files in $out)"
