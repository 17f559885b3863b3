#!/usr/bin/env bash
# The HTTP benchmark of issues 9 and 20: examples/shop (C, dbkit) against the
# two Node.js peers in bench/peer, Express + node-postgres + ioredis (the
# seeds' stack) and Fastify + postgres.js + ioredis with auto-pipelining (the
# fastest mainstream Node.js stack), all on the same PostgreSQL database and
# Redis on loopback, all driven by the same wrk command in the same run.
#
#   bench/http_bench.sh table   [BUILD_DIR]   requests/s and p99 per endpoint and
#                                             variant, the dbkit / peer ratios
#   bench/http_bench.sh restart [BUILD_DIR]   64 connections against GET /users/{id}
#                                             with PostgreSQL restarted in the middle
#
# BUILD_DIR (default build-bench) holds the shop at examples/shop/shop and the
# dbkit tool at dbkit (the migrations are applied with it). The peers are
# installed with `npm ci` from their committed package-lock.json.
#
# Data: database dbkit_http_bench (dropped and created again) with the example
# migrations, 10,000 users and 1,000 accounts of 1,000,000 cents, each made by
# one generate_series statement, so every service reads the same rows
# (bench/http_common.sh, shared with bench/scale.sh).
#
# env: DBKIT_TEST_PG_URL      admin postgres:// URL (or DBKIT_BENCH_PG_URL)
#      DBKIT_TEST_REDIS_URL   redis://host:port[/db]; the benchmark uses db 9 of that
#                             server and FLUSHes it before each cached variant
#      BENCH_SECONDS (15) BENCH_WARMUP_SECONDS (3) BENCH_CONNECTIONS (64)
#      BENCH_THREADS (2) BENCH_ROUNDS (2: the sides alternate, each keeps its best round)
#      BENCH_PEERS      the peers to run: "express fastify" (default), or one of them
#      BENCH_ROWS       which rows of the table to run (regex on the row key, default all:
#                       users_id_off users_id_uvhttp users_id_redis users_id_redis_uvhttp
#                       users_id_memory users_list transfers (*_uvhttp: the dbkit side is
#                       examples/uvhttp),
#                       and the shop alone with its access log on vs off:
#                       access_log_redis access_log_memory). With only access_log rows
#                       the peers are neither installed nor run.
#      BENCH_DOCS       a markdown file whose marked section is rewritten with the results
#                       (<!-- http-bench:begin/end -->, <!-- access-log-bench:begin/end -->
#                       or <!-- restart-bench:begin/end -->)
#      BENCH_RESTART_SECONDS (60)  restart mode: the run is split into three equal
#                       phases (before, during, after); PostgreSQL restarts 2 s into
#                       the second one
#      BENCH_ALLOW_PG_RESTART=1    restart mode refuses to run without it: it
#                       restarts the PostgreSQL server behind the admin URL, which
#                       must be a throwaway one (scripts/run-bench.sh sets it inside
#                       scripts/testenv.sh)
#      BENCH_RAW_DIR    where to keep wrk's and the services' raw output (default: not kept)
#      BENCH_STATE_DIR  restart mode writes pg_restarted there (the data directory) so
#                       the caller can stop the restarted server
#      DBKIT_TEST_PGBIN (/usr/lib/postgresql/15/bin)
#
# Every service this script starts is stopped by its PID on exit; every wait
# and loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-}
BUILD=${2:-build-bench}
case "$MODE" in
  table | restart) ;;
  *) echo "usage: $0 table|restart [BUILD_DIR]" >&2; exit 2 ;;
esac

BENCH_NAME=http_bench
# shellcheck source=bench/http_common.sh
source bench/http_common.sh

SECS=${BENCH_SECONDS:-15}
WARM=${BENCH_WARMUP_SECONDS:-3}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-2}
ROWS_RE=${BENCH_ROWS:-.}
RESTART_SECS=${BENCH_RESTART_SECONDS:-60}
LIST_MAX_OFFSET=1000

check_positive SECS WARM CONNS THREADS ROUNDS RESTART_SECS
[ "$SECS" -le 600 ] && [ "$RESTART_SECS" -le 1800 ] && [ "$ROUNDS" -le 10 ] ||
  die "BENCH_SECONDS <= 600, BENCH_RESTART_SECONDS <= 1800, BENCH_ROUNDS <= 10"

# ---- JSON shape check --------------------------------------------------------

# The set of leaf paths with their JSON types, array indexes folded: two
# services answering with the same shape print the same lines.
shape() {
  jq -c '[paths(scalars) as $p
          | ($p | map(if type == "number" then "[]" else . end) | join(".")) + ":" + (getpath($p) | type)]
         | unique'
}

SHAPES_NOTE=""
# check_shapes: every side answers the benchmarked requests (and their
# errors) with the shop's status codes and JSON shapes; GET /users/{id}
# also through the Redis cache, a miss and then a hit.
check_shapes() {
  local side a=$A1 b=$((A1 + 1)) u diffs=0
  for side in dbkit "${PEERS[@]}"; do
    start_service "$side" off
    u="http://127.0.0.1:$SVC_PORT"
    {
      echo "GET /users/{id} $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$u/users/$U1")"
      curl -s -m 5 "$u/users/$U1" | shape
      echo "GET /users/{missing} $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$u/users/$((U2 + 1000))")"
      curl -s -m 5 "$u/users/$((U2 + 1000))" | shape
      echo "GET /users $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$u/users?limit=2&offset=0&order=-created_at")"
      curl -s -m 5 "$u/users?limit=2&offset=0&order=-created_at" | shape
      echo "GET /users limit=0 $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$u/users?limit=0")"
      echo "POST /transfers $(curl -s -o "$work/t.json" -m 5 -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"from_account\":$a,\"to_account\":$b,\"amount_cents\":1}" "$u/transfers")"
      shape <"$work/t.json"
      echo "POST /transfers same account $(curl -s -o /dev/null -m 5 -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"from_account\":$a,\"to_account\":$a,\"amount_cents\":1}" "$u/transfers")"
      echo "POST /transfers overdraw $(curl -s -o /dev/null -m 5 -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"from_account\":$a,\"to_account\":$b,\"amount_cents\":1000000000}" "$u/transfers")"
    } >"$work/shape-$side.txt" 2>&1
    stop_service
    flush_redis
    start_service "$side" redis
    u="http://127.0.0.1:$SVC_PORT"
    {
      local i
      for i in miss hit; do
        echo "GET /users/{id} Redis $i $(curl -s -o "$work/u.json" -m 5 -w '%{http_code} %{content_type}' "$u/users/$U2")"
        shape <"$work/u.json"
      done
      echo "GET /users/{missing} Redis $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$u/users/$((U2 + 1000))")"
    } >>"$work/shape-$side.txt" 2>&1
    stop_service
  done
  for side in "${PEERS[@]}"; do
    # Content types are compared without their parameters' spelling.
    if ! diff -u <(sed 's/; *charset=[a-zA-Z0-9-]*//I' "$work/shape-dbkit.txt") \
      <(sed 's/; *charset=[a-zA-Z0-9-]*//I' "$work/shape-$side.txt") >"$work/shape-$side.diff"; then
      diffs=1
      echo "shape check: dbkit (-) and $(side_label "$side") (+) answer differently:" >&2
      cat "$work/shape-$side.diff" >&2
    fi
  done
  if [ "$diffs" = 0 ]; then
    SHAPES_NOTE="same status codes and JSON shapes (leaf paths and types) on every benchmarked endpoint, checked in this run"
    echo "shape check: $SHAPES_NOTE"
  else
    SHAPES_NOTE="the shapes differ (see the run's output); figures are still printed"
  fi
}

# ---- table mode ----------------------------------------------------------------

# key|label|wrk script|script args|dbkit cache|peers' cache|target ratio vs
# Express|vs Fastify (0: p99 only). Express targets from issue 9, Fastify
# targets from issue 20.
rows() {
  cat <<ROWS
users_id_off|GET /users/{id}, no cache|users_get.lua|$U1 $U2|off|off|4|2
users_id_uvhttp|GET /users/{id}, no cache, dbkit event loop (examples/uvhttp)|users_get.lua|$U1 $U2|uvhttp|off|4|2
users_id_redis|GET /users/{id}, Redis cache-aside|users_get.lua|$U1 $U2|redis|redis|4|2
users_id_redis_uvhttp|GET /users/{id}, Redis cache-aside, dbkit event loop (examples/uvhttp)|users_get.lua|$U1 $U2|uvhttp-redis|redis|4|2
users_id_memory|GET /users/{id}, dbkit in-process cache vs peers' Redis|users_get.lua|$U1 $U2|memory|redis|8|0
users_list|GET /users?limit=20&offset=0..$LIST_MAX_OFFSET&order=-created_at, with total|users_list.lua|$LIST_MAX_OFFSET 20|off|off|0|0
transfers|POST /transfers, random pair of $ACCOUNTS accounts, 1-10 cents|transfer.lua|$A1 $A2|off|off|2|0
ROWS
}

# The access log's cost: the shop alone, its access log on (to a file) vs
# off, both sides in the same run and alternating round by round.
# key|label|wrk script|script args|cache
access_rows() {
  cat <<ROWS
access_log_redis|GET /users/{id}, Redis cache-aside|users_get.lua|$U1 $U2|redis
access_log_memory|GET /users/{id}, in-process cache|users_get.lua|$U1 $U2|memory
ROWS
}

declare -A RPS P99 ERRS CMDS AL_LINES AL_REQS AL_BAD RPS_ROUND
LOADS=()

# measure_once KEY SIDE CACHE SCRIPT ARGS ROUND: a fresh service, the
# warm-up, the measured run; keeps the side's best round.
measure_once() {
  local key=$1 side=$2 cache=$3 script=$4 args=$5 round=$6
  case "$cache" in redis | *-redis) flush_redis ;; esac
  start_service "$side" "$cache"
  CMDS[$key,$side]=$SVC_CMD
  # shellcheck disable=SC2086
  run_wrk "$WARM" "$work/warm-$key-$side.txt" "bench/wrk/$script" $args
  local load warm_req=$W_REQ
  load=$(cut -d' ' -f1 /proc/loadavg)
  # shellcheck disable=SC2086
  run_wrk "$SECS" "$work/run-$key-$side-$round.txt" "bench/wrk/$script" $args
  stop_service
  LOADS+=("$load")
  printf '  %-9s %-17s round %d: %8d req/s  p99 %8s ms  %d requests, %d non-2xx, %d socket errors (load %s)\n' \
    "$side" "$key" "$round" "$W_RPS" "$W_P99" "$W_REQ" "$W_NON2XX" "$W_SOCKERR" "$load"
  if [ -n "$ACCESS_FILE" ]; then
    # After the graceful stop every line is out: at least one per request
    # wrk counted (plus the /health probes and requests wrk cut off), each
    # complete. Only counted, then removed. The reader ends at the pipe's
    # end of file, once the shop has exited (waited for up to 10 s).
    for _ in $(seq 1 100); do
      kill -0 "$ACCESS_READER" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$ACCESS_READER"
    forget_pid "$ACCESS_READER"
    ACCESS_READER=""
    local lines other
    lines=$(grep -c '^access ts=.* status=[0-9]* duration_ms=[0-9.]* queries=[0-9]*$' "$ACCESS_FILE" || true)
    other=$(grep -cv -e '^access ts=.* status=[0-9]* duration_ms=[0-9.]* queries=[0-9]*$' -e '^shop: ' -e '^dbkit ' "$ACCESS_FILE" || true)
    printf '  %-9s %-17s          access log: %d complete lines for %d requests counted by wrk, %d malformed\n' \
      "" "" "$lines" "$((warm_req + W_REQ))" "$other"
    AL_LINES[$key]=$(( ${AL_LINES[$key]:-0} + lines ))
    AL_REQS[$key]=$(( ${AL_REQS[$key]:-0} + warm_req + W_REQ ))
    AL_BAD[$key]=$(( ${AL_BAD[$key]:-0} + other ))
    rm -f "$ACCESS_FILE" "${ACCESS_FILE%.out}.fifo"
    ACCESS_FILE=""
  fi
  RPS_ROUND[$key,$side,$round]=$W_RPS
  if [ "$W_RPS" -gt "${RPS[$key,$side]:--1}" ]; then
    RPS[$key,$side]=$W_RPS
    P99[$key,$side]=$W_P99
    ERRS[$key,$side]=$((W_NON2XX + W_SOCKERR))
  fi
}

# measure_row KEY DBKIT_CACHE PEER_CACHE SCRIPT ARGS: the sides alternate
# run by run, round by round, so a change in the machine's load during the
# run hits all of them.
measure_row() {
  local key=$1 dc=$2 pc=$3 script=$4 args=$5 round side
  for round in $(seq 1 "$ROUNDS"); do
    measure_once "$key" dbkit "$dc" "$script" "$args" "$round"
    for side in "${PEERS[@]}"; do
      measure_once "$key" "$side" "$pc" "$script" "$args" "$round"
    done
  done
}

run_table() {
  echo "http_bench: preparing $DB ($USERS users, $ACCOUNTS accounts)"
  prepare_db
  local want_peer=0 key label script args dc pc target
  while IFS='|' read -r key label script args dc pc target; do
    [[ $key =~ $ROWS_RE ]] && want_peer=1
  done < <(rows)
  if [ "$want_peer" = 1 ]; then
    [ ${#PEERS[@]} -gt 0 ] || die "the rows chosen need a peer (BENCH_PEERS is empty)"
    echo "http_bench: installing the peers (npm ci)"
    install_peers
    check_shapes
  fi
  local before after
  before=$(balance_sum)
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  while IFS='|' read -r key label script args dc pc target target_f; do
    [[ $key =~ $ROWS_RE ]] || continue
    echo "$label"
    measure_row "$key" "$dc" "$pc" "$script" "$args"
  done < <(rows)
  local cache round
  while IFS='|' read -r key label script args cache; do
    [[ $key =~ $ROWS_RE ]] || continue
    echo "access log on vs off: $label"
    for round in $(seq 1 "$ROUNDS"); do
      measure_once "$key" dbkit-log "$cache" "$script" "$args" "$round"
      measure_once "$key" dbkit "$cache" "$script" "$args" "$round"
    done
  done < <(access_rows)
  after=$(balance_sum)

  local peer_ok=0 al_ok=0
  if [ "$want_peer" = 1 ]; then
    print_peer_table "$load" "$before" "$after" || peer_ok=1
  fi
  if access_table "$work/access.md"; then
    echo
    echo "Access log on vs off (the shop alone; wrk -t$THREADS -c$CONNS -d${SECS}s, best of $ROUNDS rounds):"
    cat "$work/access.md"
    if [ -n "${BENCH_DOCS:-}" ]; then
      write_access_docs "$work/access.md" "$load"
    fi
    # A malformed line (torn, interleaved) fails the run, as does a lost
    # one: the log must hold at least a line per request wrk counted.
    for key in "${!AL_BAD[@]}"; do
      [ "${AL_BAD[$key]}" -eq 0 ] && [ "${AL_LINES[$key]}" -ge "${AL_REQS[$key]}" ] || al_ok=1
    done
  fi
  [ "$peer_ok" = 0 ] && [ "$al_ok" = 0 ]
}

# access_table OUT: the access-log rows measured in this run, as markdown;
# false when none was.
access_table() {
  local out=$1 key label script args cache any=1
  {
    echo "| endpoint | log on req/s | log on p99 | log off req/s | log off p99 | on / off (best runs) | on / off per round (median) | target | log lines / requests |"
    echo "|---|---|---|---|---|---|---|---|---|"
    while IFS='|' read -r key label script args cache; do
      [[ $key =~ $ROWS_RE ]] || continue
      any=0
      local r met round per=() med
      r=$(ratio "${RPS[$key,dbkit-log]}" "${RPS[$key,dbkit]}")
      # Each round's on and off runs are next to each other in time, so
      # their ratio is the least affected by the machine's load drifting.
      for round in $(seq 1 "$ROUNDS"); do
        per+=("$(ratio "${RPS_ROUND[$key,dbkit-log,$round]}" "${RPS_ROUND[$key,dbkit,$round]}")")
      done
      med=$(printf '%s\n' "${per[@]}" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
      met=$(awk -v r="$med" 'BEGIN { print (r >= 0.95) ? "yes" : "no" }')
      printf '| %s | %s | %s ms | %s | %s ms | %s | %s (%s) | ≥ 0.95: %s | %s / %s, %s malformed |\n' "$label" \
        "${RPS[$key,dbkit-log]}" "${P99[$key,dbkit-log]}" "${RPS[$key,dbkit]}" "${P99[$key,dbkit]}" \
        "$r" "$(IFS=,; echo "${per[*]}" | sed 's/,/, /g')" "$med" "$met" "${AL_LINES[$key]}" "${AL_REQS[$key]}" "${AL_BAD[$key]}"
    done < <(access_rows)
  } >"$out"
  return $any
}

write_access_docs() {
  local table=$1 load=$2 sec="$work/access-section.md"
  {
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` on $(nproc) CPUs shared by wrk, the shop,"
    echo "PostgreSQL and Redis (1-minute load average before the run: $load). Each figure is the best of"
    echo "$ROUNDS wrk runs of ${SECS} s after a ${WARM} s warm-up on a freshly started shop; log on and log off"
    echo "alternate run by run; the target is judged on the median of the rounds' on / off ratios. With the"
    echo "log on, the shop's stderr is a pipe that \`cat\` copies into a file"
    echo "(as under journald or a container runtime); after each run the shop is stopped with SIGTERM and"
    echo "the file's complete access lines are counted against the"
    echo "requests wrk counted (warm-up and run; the file also holds the /health probes and the"
    echo "requests wrk cut off at its end), then the file is removed."
    echo
    cat "$table"
    echo
    echo '```sh'
    echo "DATABASE_URL=\$DB CACHE_URL=\$REDIS ACCESS_LOG=on HOST=127.0.0.1 PORT=\$PORT $SHOP 2> >(cat >access.log)"
    echo "DATABASE_URL=\$DB CACHE_URL=\$REDIS ACCESS_LOG=off HOST=127.0.0.1 PORT=\$PORT $SHOP"
    echo "# (and the same two with CACHE_URL=memory)"
    echo "wrk -t$THREADS -c$CONNS -d${SECS}s --timeout 5s --latency -s bench/wrk/users_get.lua http://127.0.0.1:\$PORT -- $U1 $U2"
    echo '```'
  } >"$sec"
  replace_section "$BENCH_DOCS" access-log-bench "$sec"
  echo "http_bench: wrote the access-log rows to $BENCH_DOCS"
}

# judge TARGET RATIO DBKIT_P99 PEER_P99: whether a row met its target
# against one peer (TARGET 0: a lower p99 only).
judge() {
  awk -v t="$1" -v r="$2" -v a="$3" -v b="$4" 'BEGIN {
    y = (a < b) ? "p99 yes" : "p99 no";
    if (t == 0) print y; else print ((r != "-" && r >= t) ? "ratio yes" : "ratio no") ", " y }'
}

# print_peer_table LOAD BEFORE AFTER: the dbkit / peers table, a column pair
# per peer ("-" for a peer not run), the ratios against each.
print_peer_table() {
  local load=$1 before=$2 after=$3 key label script args dc pc target target_f
  local table="$work/table.md"
  {
    echo "| endpoint | dbkit req/s | dbkit p99 | Express req/s | Express p99 | Fastify req/s | Fastify p99 | dbkit / Express | dbkit / Fastify | target | met |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    while IFS='|' read -r key label script args dc pc target target_f; do
      [[ $key =~ $ROWS_RE ]] || continue
      local side tgt met="" errs="" cells="" ratios=""
      declare -A tg=([express]=$target [fastify]=$target_f)
      tgt=""
      for side in express fastify; do
        local t=${tg[$side]} r
        [ "$t" = 0 ] || tgt="$tgt$(side_label "$side") ≥ ${t}×, "
        if [ -n "${RPS[$key,$side]:-}" ]; then
          r=$(ratio "${RPS[$key,dbkit]}" "${RPS[$key,$side]}")
          cells="$cells${RPS[$key,$side]} | ${P99[$key,$side]} ms | "
          ratios="$ratios$r | "
          met="$met$(side_label "$side"): $(judge "$t" "$r" "${P99[$key,dbkit]}" "${P99[$key,$side]}"); "
          [ "${ERRS[$key,$side]}" -gt 0 ] && errs="$errs; $(side_label "$side") ${ERRS[$key,$side]} errors"
        else
          cells="$cells- | - | "
          ratios="$ratios- | "
        fi
      done
      tgt="${tgt}lower p99 than both"
      [ "${ERRS[$key,dbkit]}" -gt 0 ] && errs="; dbkit ${ERRS[$key,dbkit]} errors$errs"
      printf '| %s | %s | %s ms | %s%s%s | %s%s |\n' "$label" "${RPS[$key,dbkit]}" "${P99[$key,dbkit]}" \
        "$cells" "$ratios" "$tgt" "${met%; }" "$errs"
    done < <(rows)
  } >"$table"

  echo
  echo "HTTP benchmark: wrk -t$THREADS -c$CONNS -d${SECS}s --latency (after ${WARM}s warm-up), $(nproc) CPUs, load before: $load"
  cat "$table"
  local conserved="yes"
  [ "$before" = "$after" ] || conserved="NO ($before before, $after after)"
  echo "transfers: total balance of the bench accounts conserved: $conserved"

  if [ -n "${BENCH_DOCS:-}" ]; then
    write_table_docs "$table" "$load" "$conserved"
  fi
  [ "$conserved" = yes ]
}

write_table_docs() {
  local table=$1 load=$2 conserved=$3 sec="$work/section.md"
  {
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` on $(nproc) CPUs shared by wrk, the"
    local lr
    lr=$(printf '%s\n' "${LOADS[@]}" | sort -n | sed -n '1p;$p' | paste -sd- -)
    echo "service under test, PostgreSQL and Redis (1-minute load average: $load before the run, $lr at the"
    echo "start of the measured runs; other work on the machine shows up here). $(versions)."
    echo "Each figure is the best of $ROUNDS wrk runs of ${SECS} s, each after a ${WARM} s warm-up on a freshly"
    echo "started service; dbkit and the peers ($(for p in "${PEERS[@]}"; do side_label "$p"; done | paste -sd, - | sed 's/,/, /g')) alternate run by run. Data: $USERS users, $ACCOUNTS accounts."
    echo "dbkit: the shop with its defaults for HTTP threads and pool size (its /metrics: a pool of ${SHOP_POOL_MAX:-?} connections),"
    echo "except the event-loop rows: examples/uvhttp with its defaults (one libuv thread, dbk_async; the lookups of one loop iteration in one statement, or in one dbk_cached_repo_find_by_ids through Redis);"
    echo "peers: one Node.js process each, a pool of at most ${PG_POOL_MAX:-20} connections (\`pg.Pool\` max, postgres.js \`max\`)."
    echo "wrk's timeout is 5 s (not its 2 s default), so slow answers count in the latency figures instead of"
    echo "being dropped as timeouts."
    echo
    cat "$table"
    echo
    echo "Transfers: the total balance of the benchmark accounts was conserved: $conserved."
    echo "Responses: $SHAPES_NOTE."
    echo
    echo "Commands (\`\$DB\` = postgres://…/$DB, \`\$REDIS\` = redis://…/9, \`\$PORT\` a free loopback port):"
    echo
    echo '```sh'
    echo "# services (one at a time; Redis is flushed before each cached variant)"
    local seen="" key side c
    for key in users_id_off users_id_uvhttp users_id_redis users_id_redis_uvhttp users_id_memory; do
      for side in dbkit express fastify; do
        c=${CMDS[$key,$side]:-}
        [ -n "$c" ] || continue
        case "$seen" in *"|$c|"*) continue ;; esac
        seen="$seen|$c|"
        echo "$c"
      done
    done
    echo "# load, the same for all (first a ${WARM} s warm-up with the same command)"
    echo "wrk -t$THREADS -c$CONNS -d${SECS}s --timeout 5s --latency -s bench/wrk/users_get.lua http://127.0.0.1:\$PORT -- $U1 $U2"
    echo "wrk -t$THREADS -c$CONNS -d${SECS}s --timeout 5s --latency -s bench/wrk/users_list.lua http://127.0.0.1:\$PORT -- $LIST_MAX_OFFSET 20"
    echo "wrk -t$THREADS -c$CONNS -d${SECS}s --timeout 5s --latency -s bench/wrk/transfer.lua http://127.0.0.1:\$PORT -- $A1 $A2"
    echo '```'
  } >"$sec"
  replace_section "$BENCH_DOCS" http-bench "$sec"
  echo "http_bench: wrote the table to $BENCH_DOCS"
}

# ---- restart mode --------------------------------------------------------------

run_restart() {
  if [ "${BENCH_ALLOW_PG_RESTART:-}" != 1 ]; then
    echo "http_bench: restart mode restarts the PostgreSQL server behind $ADMIN;" >&2
    echo "  run it on a throwaway server (scripts/run-bench.sh does) with BENCH_ALLOW_PG_RESTART=1" >&2
    exit 2
  fi
  local datadir as_pg=() phase=$((RESTART_SECS / 3))
  [ "$phase" -ge 3 ] || { echo "http_bench: BENCH_RESTART_SECONDS must be >= 9" >&2; exit 2; }
  datadir=$("$PSQL" -Atq "$ADMIN" -c "SHOW data_directory")
  [ -f "$datadir/postmaster.pid" ] || { echo "http_bench: no postmaster.pid in $datadir (not a local server?)" >&2; exit 1; }
  if [ "$(id -u)" -eq 0 ] && [ "$(stat -c %U "$datadir")" != root ]; then
    as_pg=(runuser -u "$(stat -c %U "$datadir")" --)
  fi

  echo "http_bench: restart run, preparing $DB"
  prepare_db
  start_service dbkit off
  local cmd=$SVC_CMD url="http://127.0.0.1:$SVC_PORT"
  run_wrk "$WARM" "$work/restart-warm.txt" bench/wrk/users_get.lua "$U1" "$U2"

  # A probe beside wrk: one request every 100 ms with a 1 s timeout, to time
  # the outage as a client sees it. Bounded by count.
  local probes=$((RESTART_SECS * 10 + 50))
  (
    for _ in $(seq 1 "$probes"); do
      c=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url/users/$U1" || true)
      echo "$(date +%s.%N | cut -c1-14) ${c:-000}"
      sleep 0.1
    done
  ) >"$work/probe.txt" 2>/dev/null &
  local probe_pid=$!
  PIDS+=("$probe_pid")

  local t_restart t_ready
  declare -A PH_RPS PH_P99 PH_REQ PH_NON2XX PH_SOCK
  run_wrk "$phase" "$work/restart-before.txt" bench/wrk/users_get.lua "$U1" "$U2"
  PH_RPS[before]=$W_RPS PH_P99[before]=$W_P99 PH_REQ[before]=$W_REQ PH_NON2XX[before]=$W_NON2XX PH_SOCK[before]=$W_SOCKERR

  wrk -t"$THREADS" -c"$CONNS" -d"${phase}s" --timeout 5s --latency -s bench/wrk/users_get.lua \
    "$url" -- "$U1" "$U2" >"$work/restart-during.txt" 2>&1 &
  local wrk_pid=$!
  PIDS+=("$wrk_pid")
  sleep 2
  t_restart=$(date +%s.%N | cut -c1-14)
  [ -n "${BENCH_STATE_DIR:-}" ] && echo "$datadir" >"$BENCH_STATE_DIR/pg_restarted"
  "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$datadir" -m fast -w -t 60 restart >"$work/pg_ctl.log" 2>&1 ||
    { cat "$work/pg_ctl.log" >&2; echo "http_bench: pg_ctl restart failed" >&2; exit 1; }
  t_ready=$(date +%s.%N | cut -c1-14)
  wait "$wrk_pid" || true
  parse_wrk "$work/restart-during.txt"
  PH_RPS[during]=$W_RPS PH_P99[during]=$W_P99 PH_REQ[during]=$W_REQ PH_NON2XX[during]=$W_NON2XX PH_SOCK[during]=$W_SOCKERR

  run_wrk "$phase" "$work/restart-after.txt" bench/wrk/users_get.lua "$U1" "$U2"
  PH_RPS[after]=$W_RPS PH_P99[after]=$W_P99 PH_REQ[after]=$W_REQ PH_NON2XX[after]=$W_NON2XX PH_SOCK[after]=$W_SOCKERR

  local health
  health=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url/health" || true)
  stop_pid "$probe_pid"
  stop_service

  # From the probe: the first failure after the restart began, the last
  # failure, and the first success after the last failure.
  local first_fail last_fail recovered outage
  first_fail=$(awk -v t="$t_restart" '$1 >= t && $2 != 200 { print $1; exit }' "$work/probe.txt")
  last_fail=$(awk '$2 != 200 { l = $1 } END { print l }' "$work/probe.txt")
  recovered=""
  outage="no failed probe"
  if [ -n "$last_fail" ]; then
    recovered=$(awk -v t="$last_fail" '$1 > t && $2 == 200 { print $1; exit }' "$work/probe.txt")
    outage=$(awk -v a="$t_restart" -v b="${recovered:-0}" 'BEGIN { if (b > 0) printf "%.1f s from the restart command to the first success after the last failure", b - a; else print "the probe never saw a success after the last failure" }')
  fi
  local probe_codes
  probe_codes=$(awk '$2 != 200 { n[$2]++ } END { for (c in n) printf "%s%s × %d", (k++ ? ", " : ""), c, n[c] }' "$work/probe.txt")
  [ -n "$probe_codes" ] || probe_codes="none"
  local pg_secs
  pg_secs=$(awk -v a="$t_restart" -v b="$t_ready" 'BEGIN { printf "%.1f", b - a }')

  local verdict="PASS"
  [ "${PH_NON2XX[after]}" -eq 0 ] && [ "${PH_SOCK[after]}" -eq 0 ] && [ "${PH_REQ[after]}" -gt 0 ] && [ "$health" = 200 ] || verdict="FAIL"
  local res="$work/restart.md"
  {
    echo "| phase | seconds | requests | req/s | p99 | non-2xx | socket errors |"
    echo "|---|---|---|---|---|---|---|"
    local p
    for p in before during after; do
      printf '| %s | %s | %s | %s | %s ms | %s | %s |\n' "$p" "$phase" "${PH_REQ[$p]}" "${PH_RPS[$p]}" \
        "${PH_P99[$p]}" "${PH_NON2XX[$p]}" "${PH_SOCK[$p]}"
    done
    echo
    echo "PostgreSQL restart (\`pg_ctl restart -m fast\`, 2 s into the \"during\" phase) took ${pg_secs} s;"
    echo "probe (one GET every 100 ms beside wrk): ${outage}; its failed answers by status: ${probe_codes}"
    echo "(000: no HTTP answer within 1 s)."
    echo "After recovery (the whole \"after\" phase): ${PH_NON2XX[after]} non-2xx and ${PH_SOCK[after]} socket errors"
    echo "in ${PH_REQ[after]} requests; /health afterwards: $health. Verdict: **$verdict**."
  } >"$res"
  echo
  echo "restart run: $CONNS connections, ${RESTART_SECS} s against GET /users/{id} (shop, no cache)"
  cat "$res"
  if [ -n "${BENCH_DOCS:-}" ]; then
    local sec="$work/restart-section.md"
    {
      echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` ($(nproc) CPUs shared by wrk, the shop and"
      echo "PostgreSQL). The shop runs without cache so every request needs PostgreSQL:"
      echo
      echo '```sh'
      echo "$cmd"
      echo "wrk -t$THREADS -c$CONNS -d${phase}s --timeout 5s --latency -s bench/wrk/users_get.lua http://127.0.0.1:\$PORT -- $U1 $U2   # three times: before, during, after"
      echo "pg_ctl -D \$PGDATA -m fast -w restart   # 2 s into the second run"
      echo '```'
      echo
      cat "$res"
    } >"$sec"
    replace_section "$BENCH_DOCS" restart-bench "$sec"
    echo "http_bench: wrote the restart run to $BENCH_DOCS"
  fi
  [ "$verdict" = PASS ]
}

case "$MODE" in
  table) run_table ;;
  restart) run_restart ;;
esac
