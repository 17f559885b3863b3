#!/usr/bin/env bash
# The scaling benchmark of issue 20: how requests/s and p99 of
# GET /users/{id} grow with the number of clients, for examples/shop (C,
# dbkit) and the two Node.js peers in bench/peer (Express + node-postgres +
# ioredis; Fastify + postgres.js + ioredis with auto-pipelining), without
# cache and with the Redis cache, at 1, 2, 4, ... 256 connections.
#
#   bench/scale.sh [BUILD_DIR]
#
# The services, the data (10,000 users, 1,000 accounts in dbkit_http_bench)
# and the wrk handling are bench/http_bench.sh's (bench/http_common.sh).
# Per variant (no cache, Redis) all sides are started once and kept running
# for the whole sweep, as a service runs in production; before the cached
# sweep Redis is flushed and every side's cache is filled by requesting each
# user once. Then, for each connection count, the sides take turns: a warm-up
# at that count, then the measured wrk run
#   wrk -t2 -cN -dSs --timeout Ts --latency -s bench/wrk/users_get.lua   (-t1 for N = 1)
# Each point records req/s, p99, and wrk's non-2xx answers and socket errors
# (connect, read, write, timeout): the saturation target is that past the knee
# throughput holds and p99 grows about linearly with the connections (the
# queue), with no timeouts and no errors. wrk's timeout (10 s) is above the
# shop's pool acquire timeout (DB_ACQUIRE_TIMEOUT_MS, 5 s by default), so a
# request the service gives up on shows as its error status, not as a wrk
# timeout.
#
# Output: a table per variant, a summary per side (peak, knee, how much of the
# peak holds past it, how p99 grows against the connections, errors) and one
# gnuplot SVG per variant (scaling-uncached.svg, scaling-cached.svg: req/s and
# p99 against connections, both axes log scale).
#
# env: DBKIT_TEST_PG_URL, DBKIT_TEST_REDIS_URL, BENCH_PEERS, BENCH_RAW_DIR as
#        for bench/http_bench.sh
#      BENCH_SCALE_SECONDS (5)          measured seconds per point and side
#      BENCH_SCALE_WARMUP_SECONDS (1)   warm-up seconds before each point
#      BENCH_SCALE_CONNECTIONS ("1 2 4 8 16 32 64 128 256")
#      BENCH_SCALE_VARIANTS ("off redis")
#      BENCH_SCALE_TIMEOUT (10)         wrk's --timeout in seconds
#      BENCH_DOCS      a markdown file whose section <!-- scale-bench:begin/end -->
#                      is rewritten with the tables; the plots then go to
#                      img/ beside it (docs/img/ for docs/benchmarks.md)
#      BENCH_SCALE_IMG_DIR  where the plots go instead (default: as above with
#                      BENCH_DOCS, else BENCH_RAW_DIR, else not kept)
#
# Every service this script starts is stopped by its PID on exit; every wait
# and loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build-bench}
BENCH_NAME=scale
# shellcheck source=bench/http_common.sh
source bench/http_common.sh

SECS=${BENCH_SCALE_SECONDS:-5}
WARM=${BENCH_SCALE_WARMUP_SECONDS:-1}
CONN_LIST=${BENCH_SCALE_CONNECTIONS:-1 2 4 8 16 32 64 128 256}
VARIANTS=${BENCH_SCALE_VARIANTS:-off redis}
WRK_TIMEOUT=${BENCH_SCALE_TIMEOUT:-10}
check_positive SECS WARM WRK_TIMEOUT
[ "$SECS" -le 120 ] && [ "$WARM" -le 60 ] && [ "$WRK_TIMEOUT" -le 60 ] ||
  die "BENCH_SCALE_SECONDS <= 120, BENCH_SCALE_WARMUP_SECONDS <= 60, BENCH_SCALE_TIMEOUT <= 60"
CONNS_ARR=()
for c in $CONN_LIST; do
  CONNS=$c
  check_positive CONNS
  [ "$c" -le 1000 ] || die "BENCH_SCALE_CONNECTIONS: at most 1000 connections a point"
  CONNS_ARR+=("$c")
done
[ ${#CONNS_ARR[@]} -gt 0 ] && [ ${#CONNS_ARR[@]} -le 20 ] || die "BENCH_SCALE_CONNECTIONS: 1 to 20 counts"
for v in $VARIANTS; do
  case "$v" in off | redis) ;; *) die "BENCH_SCALE_VARIANTS: unknown variant '$v' (off, redis)" ;; esac
done
command -v gnuplot >/dev/null 2>&1 || die "gnuplot not found (bash scripts/deps.sh bench)"

IMG_DIR=${BENCH_SCALE_IMG_DIR:-}
if [ -z "$IMG_DIR" ] && [ -n "${BENCH_DOCS:-}" ]; then
  IMG_DIR="$(dirname "$BENCH_DOCS")/img"
fi
[ -n "$IMG_DIR" ] || IMG_DIR=${BENCH_RAW_DIR:-}

SIDES=(dbkit "${PEERS[@]}")
declare -A SPID SPORT SCMD RPS P99 ERR DEAD
LOADS=()

variant_name() { [ "$1" = off ] && echo uncached || echo cached; }
variant_label() { [ "$1" = off ] && echo "GET /users/{id}, no cache" || echo "GET /users/{id}, Redis cache-aside"; }

# errors_cell: wrk's non-2xx answers and socket errors of the last run, "0"
# when there were none.
errors_cell() {
  local out="" n
  for n in "non-2xx:$W_NON2XX" "connect:$W_CONNECT" "read:$W_READ" "write:$W_WRITE" "timeout:$W_TIMEOUT"; do
    [ "${n#*:}" = 0 ] || out="$out${out:+, }${n%:*} ${n#*:}"
  done
  echo "${out:-0}"
}

# fill_cache SIDE: every user requested once (16 at a time, keep-alive),
# so the measured runs read a warm cache. Bounded: 10 s a request, 180 s in all.
fill_cache() {
  local side=$1 t0=$SECONDS ok
  ok=$(timeout 180 curl -s -S --parallel --parallel-max 16 -m 10 -o /dev/null -w '%{http_code}\n' \
    "http://127.0.0.1:${SPORT[$side]}/users/[$U1-$U2]" 2>>"$work/fill-$side.log" | grep -c '^200$' || true)
  echo "  $side: cache filled, $ok of $USERS users answered 200 in $((SECONDS - t0)) s"
  [ "$ok" -eq "$USERS" ] || { echo "$BENCH_NAME: $side answered $ok of $USERS users with 200 while filling its cache" >&2; exit 1; }
}

# sweep VARIANT: the services up, the cache filled, every point measured.
sweep() {
  local v=$1 side c
  echo
  echo "$(variant_label "$v"): starting ${SIDES[*]}"
  [ "$v" = redis ] && flush_redis
  for side in "${SIDES[@]}"; do
    start_service "$side" "$v"
    SPID[$side]=$SVC_PID SPORT[$side]=$SVC_PORT SCMD[$v,$side]=$SVC_CMD
    SVC_PID="" # kept running beside the others; stopped below by its PID
  done
  if [ "$v" = redis ]; then
    for side in "${SIDES[@]}"; do
      fill_cache "$side"
    done
  fi
  for c in "${CONNS_ARR[@]}"; do
    CONNS=$c
    THREADS=2
    [ "$c" -ge 2 ] || THREADS=1
    for side in "${SIDES[@]}"; do
      SVC_PORT=${SPORT[$side]}
      if ! kill -0 "${SPID[$side]}" 2>/dev/null; then
        DEAD[$v,$side]=${DEAD[$v,$side]:-$c}
        RPS[$v,$side,$c]=0 P99[$v,$side,$c]=0 ERR[$v,$side,$c]="service exited"
        continue
      fi
      run_wrk "$WARM" "$work/warm-$v-$side-$c.txt" bench/wrk/users_get.lua "$U1" "$U2"
      local load
      load=$(cut -d' ' -f1 /proc/loadavg)
      LOADS+=("$load")
      run_wrk "$SECS" "$work/scale-$v-$side-$c.txt" bench/wrk/users_get.lua "$U1" "$U2"
      RPS[$v,$side,$c]=$W_RPS P99[$v,$side,$c]=$W_P99 ERR[$v,$side,$c]=$(errors_cell)
      printf '  %-8s %-8s %4d connections: %8d req/s  p50 %8s ms  p99 %8s ms  errors %s (load %s)\n' \
        "$v" "$side" "$c" "$W_RPS" "$W_P50" "$W_P99" "${ERR[$v,$side,$c]}" "$load"
    done
  done
  for side in "${SIDES[@]}"; do
    if ! kill -0 "${SPID[$side]}" 2>/dev/null; then
      DEAD[$v,$side]=${DEAD[$v,$side]:-end}
      echo "$BENCH_NAME: $side ($v) exited during the sweep; its log:" >&2
      tail -20 "$work/$side-$v-${SPORT[$side]}.log" >&2 || true
    fi
    stop_pid "${SPID[$side]}"
    forget_pid "${SPID[$side]}"
  done
}

cell() {
  local v=$1 side=$2 c=$3
  if [ -n "${RPS[$v,$side,$c]:-}" ]; then
    echo "${RPS[$v,$side,$c]} | ${P99[$v,$side,$c]} ms"
  else
    echo "- | -"
  fi
}

# table VARIANT: markdown, a row per connection count.
table() {
  local v=$1 c side
  echo "| connections | dbkit req/s | dbkit p99 | Express req/s | Express p99 | Fastify req/s | Fastify p99 | dbkit / Express | dbkit / Fastify | errors: dbkit / Express / Fastify |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for c in "${CONNS_ARR[@]}"; do
    local ratios="" errs=""
    for side in express fastify; do
      if [ -n "${RPS[$v,$side,$c]:-}" ]; then
        ratios="$ratios$(ratio "${RPS[$v,dbkit,$c]}" "${RPS[$v,$side,$c]}") | "
      else
        ratios="$ratios- | "
      fi
    done
    for side in dbkit express fastify; do
      errs="$errs${errs:+ / }${ERR[$v,$side,$c]:--}"
    done
    printf '| %s | %s | %s | %s | %s%s |\n' "$c" "$(cell "$v" dbkit "$c")" "$(cell "$v" express "$c")" \
      "$(cell "$v" fastify "$c")" "$ratios" "$errs"
  done
}

# summary VARIANT: per side, the peak, the knee (the fewest connections
# reaching 90 % of the peak), the lowest throughput past the knee as a share
# of the peak, p99's growth from the knee to the last point against the
# growth of the connections (linear: the two about equal), and the errors.
# "graceful" when throughput past the knee stays >= 80 % of the peak, p99
# grows at most 1.5x as fast as the connections, and no point had an error.
summary() {
  local v=$1 side c
  for side in "${SIDES[@]}"; do
    local data=""
    for c in "${CONNS_ARR[@]}"; do
      local e=${ERR[$v,$side,$c]:-0}
      [ "$e" = 0 ] && e=0 || e=1
      data="$data$c ${RPS[$v,$side,$c]:-0} ${P99[$v,$side,$c]:-0} $e"$'\n'
    done
    printf '%s' "$data" | awk -v name="$(side_label "$side")" -v dead="${DEAD[$v,$side]:-}" '
      { c[NR] = $1; r[NR] = $2; p[NR] = $3; e[NR] = $4; if ($2 > peak) { peak = $2; at = $1 } }
      END {
        if (peak <= 0) { printf "- **%s**: no answers at any point.\n", name; exit }
        for (i = 1; i <= NR; i++) if (r[i] >= 0.9 * peak) { k = i; break }
        hold = 1; errs = 0
        for (i = 1; i <= NR; i++) { if (i >= k && peak > 0 && r[i] / peak < hold) hold = r[i] / peak; errs += e[i] }
        cg = c[NR] / c[k]; pg = (p[k] > 0) ? p[NR] / p[k] : 0
        ok = (dead == "" && errs == 0 && hold >= 0.8 && (cg == 1 || pg <= 1.5 * cg)) ? "yes" : "no"
        printf "- **%s**: peak %d req/s at %d connection%s; knee at %d connection%s; past it throughput stays at or above %d %% of the peak;", name, peak, at, (at == 1 ? "" : "s"), c[k], (c[k] == 1 ? "" : "s"), hold * 100
        if (cg > 1) printf " p99 %.2f -> %.2f ms (x%.1f) while the connections grow x%d;", p[k], p[NR], pg, cg
        printf " points with errors: %d%s. Graceful: %s.\n", errs, (dead != "" ? ", the service exited during the sweep" : ""), ok
      }'
  done
}

# plot VARIANT OUT_SVG: req/s and p99 against connections, side by side.
plot() {
  local v=$1 out=$2 dat c side col
  dat="$work/data-$(variant_name "$v").txt"
  {
    echo "# connections dbkit_rps dbkit_p99 express_rps express_p99 fastify_rps fastify_p99"
    for c in "${CONNS_ARR[@]}"; do
      printf '%s' "$c"
      for side in dbkit express fastify; do
        printf ' %s %s' "${RPS[$v,$side,$c]:-?}" "${P99[$v,$side,$c]:-?}"
      done
      echo
    done
  } >"$dat"
  local rps_plot="" p99_plot="" tics
  col=2
  for side in dbkit express fastify; do
    if [ -n "${RPS[$v,$side,${CONNS_ARR[0]}]:-}" ]; then
      local title
      case "$side" in
        dbkit) title="dbkit (examples/shop, C)" ;;
        express) title="Express + pg + ioredis" ;;
        fastify) title="Fastify + postgres.js + ioredis (auto-pipelining)" ;;
      esac
      rps_plot="$rps_plot${rps_plot:+, }'$dat' using 1:$col with linespoints ls $((col / 2)) title '$title'"
      p99_plot="$p99_plot${p99_plot:+, }'$dat' using 1:$((col + 1)) with linespoints ls $((col / 2)) title '$title'"
    fi
    col=$((col + 2))
  done
  tics=$(printf '%s,' "${CONNS_ARR[@]}")
  local lo hi
  lo=$(printf '%s\n' "${CONNS_ARR[@]}" | sort -n | head -1)
  hi=$(printf '%s\n' "${CONNS_ARR[@]}" | sort -n | tail -1)
  gnuplot >"$work/gnuplot-$v.log" 2>&1 <<GP || { cat "$work/gnuplot-$v.log" >&2; echo "$BENCH_NAME: gnuplot failed" >&2; exit 1; }
set terminal svg size 1000,430 noenhanced font 'sans,11' background rgb 'white'
set output '$out'
set datafile missing '?'
set style line 1 lc rgb '#1b6ac9' lw 2 pt 7 ps 0.6
set style line 2 lc rgb '#999999' lw 2 pt 5 ps 0.6
set style line 3 lc rgb '#d9730d' lw 2 pt 9 ps 0.7
set multiplot layout 1,2 title "$(variant_label "$v"), $(nproc) CPUs shared by wrk, the service, PostgreSQL and Redis"
set logscale x 2
set xtics (${tics%,})
set xrange [$lo / 1.3 : $hi * 1.3]
set xlabel 'connections (wrk)'
set grid
set key below Left reverse font 'sans,9'
set logscale y 10
set ylabel 'requests/s'
plot $rps_plot
set ylabel 'p99 latency (ms)'
plot $p99_plot
unset multiplot
GP
}

write_docs() {
  local sec="$work/scale-section.md" v lr load=$1
  lr=$(printf '%s\n' "${LOADS[@]}" | sort -n | sed -n '1p;$p' | paste -sd- -)
  {
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` (part \`scale\`, \`bench/scale.sh\`) on $(nproc) CPUs"
    echo "shared by wrk, the service under test, PostgreSQL and Redis (1-minute load average: $load before"
    echo "the run, $lr at the start of the measured runs). $(versions)."
    echo "Each point is one wrk run of ${SECS} s after a ${WARM} s warm-up at the same connection count, wrk"
    echo "\`-t2\` (\`-t1\` for 1 connection), \`--timeout ${WRK_TIMEOUT}s\`; per variant every service is started once"
    echo "and runs through the whole sweep, the sides taking turns point by point; before the cached sweep"
    echo "Redis is flushed and each service's cache filled by requesting every user once. dbkit: the shop"
    echo "with its defaults for HTTP threads and pool size ([example-service.md](example-service.md); its /metrics:"
    echo "a pool of ${SHOP_POOL_MAX:-?} connections); peers: one Node.js process each, a pool of at most ${PG_POOL_MAX:-20}"
    echo "connections; the two peers share their Redis keys. Errors: wrk's non-2xx answers and socket errors"
    echo "(connect, read, write, timeout) per point, \"0\" for none."
    for v in $VARIANTS; do
      echo
      echo "#### $(variant_label "$v")"
      echo
      echo "![$(variant_label "$v"): requests/s and p99 against connections](img/scaling-$(variant_name "$v").svg)"
      echo
      table "$v"
      echo
      summary "$v"
    done
    echo
    echo "Commands (\`\$DB\` = postgres://…/$DB, \`\$REDIS\` = redis://…/9, \`\$PORT\` a free loopback port):"
    echo
    echo '```sh'
    local seen="" side c
    for v in $VARIANTS; do
      for side in "${SIDES[@]}"; do
        c=${SCMD[$v,$side]:-}
        case "$seen" in *"|$c|"*) continue ;; esac
        seen="$seen|$c|"
        echo "$c"
      done
    done
    echo "# cached variant, once per service before the sweep"
    echo "curl -s --parallel --parallel-max 16 -o /dev/null \"http://127.0.0.1:\$PORT/users/[$U1-$U2]\""
    echo "# each point, N in ${CONNS_ARR[*]} (-t1 for N = 1), first a ${WARM} s warm-up with the same command"
    echo "wrk -t2 -c\$N -d${SECS}s --timeout ${WRK_TIMEOUT}s --latency -s bench/wrk/users_get.lua http://127.0.0.1:\$PORT -- $U1 $U2"
    echo '```'
  } >"$sec"
  replace_section "$BENCH_DOCS" scale-bench "$sec"
  echo "$BENCH_NAME: wrote the tables to $BENCH_DOCS"
}

main() {
  echo "$BENCH_NAME: preparing $DB ($USERS users, $ACCOUNTS accounts)"
  prepare_db
  if [ ${#PEERS[@]} -gt 0 ]; then
    echo "$BENCH_NAME: installing the peers (npm ci)"
    install_peers
  fi
  local load v
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "$BENCH_NAME: connections ${CONNS_ARR[*]}; ${SECS} s a point after ${WARM} s warm-up; sides ${SIDES[*]}; load $load"
  for v in $VARIANTS; do
    sweep "$v"
  done

  local failed=0
  for v in $VARIANTS; do
    echo
    echo "$(variant_label "$v"):"
    table "$v"
    summary "$v"
    if [ -n "$IMG_DIR" ]; then
      mkdir -p "$IMG_DIR"
      plot "$v" "$IMG_DIR/scaling-$(variant_name "$v").svg"
      echo "plot: $IMG_DIR/scaling-$(variant_name "$v").svg"
    else
      plot "$v" "$work/scaling-$(variant_name "$v").svg"
      echo "plot: drawn, not kept (set BENCH_SCALE_IMG_DIR, BENCH_RAW_DIR or BENCH_DOCS)"
    fi
    local side
    for side in "${SIDES[@]}"; do
      [ -z "${DEAD[$v,$side]:-}" ] || failed=1
    done
  done
  if [ -n "${BENCH_DOCS:-}" ]; then
    write_docs "$load"
  fi
  # A service that exited fails the run; slow or erroring points are figures.
  [ "$failed" = 0 ]
}

main
