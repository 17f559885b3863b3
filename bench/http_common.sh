# The shared half of the HTTP benchmarks (bench/http_bench.sh, bench/scale.sh),
# sourced by both so they measure the same services on the same data, started
# and stopped the same way: the settings both read, the benchmark database and
# its rows, the services (the shop, the Express peer, the Fastify peer) on free
# loopback ports, wrk and the reading of its report, and the rewriting of a
# marked section of a markdown file.
#
# The sourcing script sets, before `source`:
#   BENCH_NAME  the prefix of its messages (http_bench, scale)
#   BUILD       the build directory holding examples/shop/shop and dbkit
# and gets: ADMIN URL REDIS_URL REDIS_HOST REDIS_PORT PGBIN PSQL SHOP DBKIT DB
# USERS ACCOUNTS, a work directory $work removed on exit, PIDS (every process
# started here, stopped by its PID on exit), PEERS (BENCH_PEERS: which peers
# run, "express fastify" by default) and the functions below.
#
# env: DBKIT_TEST_PG_URL (or DBKIT_BENCH_PG_URL)  admin postgres:// URL
#      DBKIT_TEST_REDIS_URL  redis://host:port[/db]; the benchmarks use db 9
#      DBKIT_TEST_PGBIN (/usr/lib/postgresql/15/bin)
#      BENCH_PEERS     the peers to run: express, fastify or both (default)
#      BENCH_RAW_DIR   where to keep wrk's and the services' raw output
#                      (default: not kept)
#
# Every wait and loop is bounded; no process is ended by name.

ADMIN=${DBKIT_BENCH_PG_URL:-${DBKIT_TEST_PG_URL:-}}
REDIS_BASE=${DBKIT_TEST_REDIS_URL:-}
PGBIN=${DBKIT_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
DB=dbkit_http_bench
USERS=10000
ACCOUNTS=1000

die() {
  echo "$BENCH_NAME: $*" >&2
  exit 2
}

[ -n "$ADMIN" ] || die "set DBKIT_TEST_PG_URL to an admin postgres:// URL"
[ -n "$REDIS_BASE" ] || die "set DBKIT_TEST_REDIS_URL to a redis:// URL"
case "$ADMIN" in *\?*) die "the admin URL must not carry ?parameters" ;; esac

PEERS=()
for p in ${BENCH_PEERS-express fastify}; do
  case "$p" in
    express | fastify) PEERS+=("$p") ;;
    *) die "BENCH_PEERS: unknown peer '$p' (express, fastify)" ;;
  esac
done

# check_positive NAME...: each variable holds a positive integer.
check_positive() {
  local n v
  for n in "$@"; do
    v=${!n}
    case "$v" in '' | *[!0-9]*) die "$n must be a positive integer" ;; esac
    [ "$v" -gt 0 ] || die "$n must be positive"
  done
}

SHOP=$BUILD/examples/shop/shop
UVHTTP=$BUILD/examples/uvhttp/uvhttp
DBKIT=$BUILD/dbkit
PSQL=$PGBIN/psql
command -v "$PSQL" >/dev/null 2>&1 || PSQL=psql
for tool in wrk curl jq node npm redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (bash scripts/deps.sh bench)"
done
[ -x "$SHOP" ] || die "$SHOP not built (cmake --build $BUILD)"
[ -x "$DBKIT" ] || die "$DBKIT not built (cmake --build $BUILD)"

URL="${ADMIN%/*}/$DB"
REDIS_URL="${REDIS_BASE%/*}"
case "$REDIS_URL" in redis://*/*) ;; redis://*) ;; *) REDIS_URL="redis://$REDIS_URL" ;; esac
REDIS_URL="$REDIS_URL/9"
redis_hostport=${REDIS_URL#redis://}
redis_hostport=${redis_hostport%%/*}
REDIS_HOST=${redis_hostport%:*}
REDIS_PORT=${redis_hostport##*:}

work=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-$BENCH_NAME.XXXXXX")
PIDS=()

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$BENCH_NAME: pid $pid ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# forget_pid PID: PID is stopped; drop it from PIDS.
forget_pid() {
  local keep=() pid
  for pid in "${PIDS[@]}"; do
    [ "$pid" = "$1" ] || keep+=("$pid")
  done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$?
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [ -n "${BENCH_RAW_DIR:-}" ]; then
    mkdir -p "$BENCH_RAW_DIR" && cp "$work"/*.txt "$work"/*.log "$BENCH_RAW_DIR"/ 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port below the kernel's ephemeral range, so no outgoing connection (wrk,
# PostgreSQL clients) can be holding it as its local end when a service binds.
free_port() {
  local p lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$lo" -gt 12000 ] 2>/dev/null || lo=32768
  for _ in $(seq 1 200); do
    p=$((lo - 10000 + RANDOM % 9000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "$BENCH_NAME: no free port" >&2; return 1
}

# ---- data ------------------------------------------------------------------

# prepare_db: database $DB (dropped and created again) with the example
# migrations, $USERS users and $ACCOUNTS accounts of 1,000,000 cents, each
# made by one generate_series statement; sets U1 U2 A1 A2 (their id ranges).
prepare_db() {
  "$PSQL" -q -v ON_ERROR_STOP=1 "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
    -c "CREATE DATABASE $DB" >/dev/null
  "$DBKIT" -q --url "$URL" --migrations-dir examples/db/migrations migrate up >/dev/null
  "$PSQL" -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL
INSERT INTO users (name, email, created_at)
  SELECT 'bench user ' || g, 'bench' || g || '@example.com', now() - g * interval '1 second'
  FROM generate_series(1, $USERS) g;
INSERT INTO accounts (name, balance_cents)
  SELECT 'bench-' || g, 1000000 FROM generate_series(1, $ACCOUNTS) g;
VACUUM ANALYZE;
SQL
  read -r U1 U2 < <("$PSQL" -Atq -F ' ' "$URL" -c "SELECT min(id), max(id) FROM users WHERE email LIKE 'bench%@example.com'")
  read -r A1 A2 < <("$PSQL" -Atq -F ' ' "$URL" -c "SELECT min(id), max(id) FROM accounts WHERE name LIKE 'bench-%'")
  if [ $((U2 - U1 + 1)) -ne "$USERS" ] || [ $((A2 - A1 + 1)) -ne "$ACCOUNTS" ]; then
    echo "$BENCH_NAME: the seeded ids are not contiguous (users $U1..$U2, accounts $A1..$A2)" >&2
    exit 1
  fi
}

balance_sum() {
  "$PSQL" -Atq "$URL" -c "SELECT sum(balance_cents) FROM accounts WHERE name LIKE 'bench-%'"
}

# install_peers: both peers live in bench/peer, installed by one `npm ci`
# from the committed package-lock.json.
install_peers() {
  (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error >"$work/npm.log" 2>&1) ||
    { cat "$work/npm.log" >&2; echo "$BENCH_NAME: npm ci failed in bench/peer" >&2; exit 1; }
}

# ---- services --------------------------------------------------------------

SVC_PID=""
SVC_PORT=""
SVC_CMD=""
SHOP_POOL_MAX="" # the shop's pool size as its /metrics reports it (shop_pool_max)
ACCESS_FILE=""   # side dbkit-log: the file the shop's stderr (the access log) ends in
ACCESS_READER="" # and the PID of the reader copying the pipe into it

# start_service dbkit|dbkit-log|express|fastify CACHE: CACHE is
# off|memory|redis (the peers know off|redis); dbkit-log is the shop with its
# access log on, its stderr a pipe copied to a file ($ACCESS_FILE, not kept:
# it grows by ~100 bytes a request). Sets SVC_PID, SVC_PORT and SVC_CMD (the
# command as the docs show it). Waits for /health to answer 200; a service
# that dies during start-up is tried once more on another port before the
# benchmark gives up.
start_service() {
  local attempt
  for attempt in 1 2; do
    start_service_once "$@" && return 0
    [ "$attempt" = 1 ] && echo "$BENCH_NAME: trying $1 ($2) once more" >&2
  done
  exit 1
}

start_service_once() {
  local side=$1 cache=$2 log
  SVC_PORT=$(free_port)
  log="$work/$side-$cache-$SVC_PORT.log"
  ACCESS_FILE=""
  local cache_url=$cache
  [ "$cache" = redis ] && cache_url=$REDIS_URL
  local kind=$side
  case "$side/$cache" in dbkit/uvhttp | dbkit/uvhttp-redis) kind=uvhttp ;; esac
  case "$kind" in
    uvhttp)
      # examples/uvhttp: GET /users/{id} on one libuv loop thread over
      # dbk_async, the lookups of one loop iteration in one statement (or,
      # cache uvhttp-redis, in one dbk_cached_repo_find_by_ids).
      [ -x "$UVHTTP" ] || { echo "$BENCH_NAME: $UVHTTP not built (libuv1-dev)" >&2; return 1; }
      local ucache=off
      [ "$cache" = uvhttp-redis ] && ucache=$REDIS_URL
      SVC_CMD="DATABASE_URL=\$DB CACHE_URL=${ucache/$REDIS_URL/\$REDIS} HOST=127.0.0.1 PORT=\$PORT $UVHTTP"
      env DATABASE_URL="$URL" CACHE_URL="$ucache" HOST=127.0.0.1 PORT="$SVC_PORT" "$UVHTTP" >"$log" 2>&1 &
      ;;
    dbkit)
      SVC_CMD="DATABASE_URL=\$DB CACHE_URL=${cache_url/$REDIS_URL/\$REDIS} ACCESS_LOG=off HOST=127.0.0.1 PORT=\$PORT $SHOP"
      env DATABASE_URL="$URL" CACHE_URL="$cache_url" ACCESS_LOG=off HOST=127.0.0.1 PORT="$SVC_PORT" \
        "$SHOP" >"$log" 2>&1 &
      ;;
    dbkit-log)
      # stderr is a pipe with a reader copying it to a file, as under
      # systemd (journald) or a container runtime: the case where a write
      # per line costs most, each one waking the reader.
      ACCESS_FILE="$work/access-$SVC_PORT.out"
      local fifo="$work/access-$SVC_PORT.fifo"
      rm -f "$fifo"
      mkfifo "$fifo"
      cat "$fifo" >"$ACCESS_FILE" &
      ACCESS_READER=$!
      PIDS+=("$ACCESS_READER")
      SVC_CMD="DATABASE_URL=\$DB CACHE_URL=${cache_url/$REDIS_URL/\$REDIS} ACCESS_LOG=on HOST=127.0.0.1 PORT=\$PORT $SHOP 2> >(cat >access.log)"
      env DATABASE_URL="$URL" CACHE_URL="$cache_url" ACCESS_LOG=on HOST=127.0.0.1 PORT="$SVC_PORT" \
        "$SHOP" >"$log" 2>"$fifo" &
      ;;
    express | fastify)
      local entry=server.js
      [ "$side" = fastify ] && entry=fastify.js
      SVC_CMD="DATABASE_URL=\$DB CACHE=$cache REDIS_URL=\$REDIS NODE_ENV=production HOST=127.0.0.1 PORT=\$PORT node bench/peer/$entry"
      env DATABASE_URL="$URL" CACHE="$cache" REDIS_URL="$REDIS_URL" NODE_ENV=production \
        HOST=127.0.0.1 PORT="$SVC_PORT" node "bench/peer/$entry" >"$log" 2>&1 &
      ;;
    *) echo "$BENCH_NAME: unknown side $side" >&2; exit 2 ;;
  esac
  SVC_PID=$!
  PIDS+=("$SVC_PID")
  local code="" deadline=$((SECONDS + 60))
  for _ in $(seq 1 150); do
    [ "$SECONDS" -lt "$deadline" ] || break
    if ! kill -0 "$SVC_PID" 2>/dev/null; then
      local rc=0
      wait "$SVC_PID" || rc=$?
      echo "$BENCH_NAME: $side ($cache) exited during start-up (status $rc):" >&2
      tail -20 "$log" ${ACCESS_FILE:+"$ACCESS_FILE"} >&2
      stop_service
      return 1
    fi
    code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$SVC_PORT/health" || true)
    if [ "$code" = 200 ]; then
      # The shop sizes its pool itself: the docs say what it chose.
      if [ "$side" = dbkit ] && [ -z "$SHOP_POOL_MAX" ]; then
        SHOP_POOL_MAX=$(curl -s -m 3 "http://127.0.0.1:$SVC_PORT/metrics" |
          awk '$1 == "shop_pool_max" { printf "%d", $2 }' || true)
      fi
      return 0
    fi
    sleep 0.2
  done
  echo "$BENCH_NAME: $side ($cache) not healthy within 60 s (last status ${code:-none}):" >&2
  tail -20 "$log" ${ACCESS_FILE:+"$ACCESS_FILE"} >&2
  stop_service
  return 1
}

# stop_service: stops the last service started and forgets it (a service
# kept running beside others is stopped with stop_pid and forget_pid).
stop_service() {
  [ -n "$SVC_PID" ] || return 0
  stop_pid "$SVC_PID"
  forget_pid "$SVC_PID"
  SVC_PID=""
}

flush_redis() {
  redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n 9 FLUSHDB >/dev/null
}

# side_label SIDE: the name a table shows.
side_label() {
  case "$1" in
    express) echo Express ;;
    fastify) echo Fastify ;;
    *) echo "$1" ;;
  esac
}

# ---- wrk -------------------------------------------------------------------

W_RPS=0 W_P50=0 W_P99=0 W_REQ=0 W_NON2XX=0 W_SOCKERR=0
W_CONNECT=0 W_READ=0 W_WRITE=0 W_TIMEOUT=0

# run_wrk SECONDS OUTFILE SCRIPT ARGS...: wrk with $THREADS threads and
# $CONNS connections against 127.0.0.1:$SVC_PORT, its timeout
# ${WRK_TIMEOUT:-5} s; fills W_* from its report.
run_wrk() {
  local secs=$1 out=$2 script=$3
  shift 3
  wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout "${WRK_TIMEOUT:-5}s" --latency -s "$script" \
    "http://127.0.0.1:$SVC_PORT" -- "$@" >"$out" 2>&1 || true
  parse_wrk "$out"
}

parse_wrk() {
  local out=$1 pct='
      function ms(v,   u) {
        u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
        return sprintf("%.2f", v) }'
  W_RPS=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$out")
  W_REQ=$(awk '/ requests in / {print $1}' "$out")
  W_P50=$(awk "$pct"' $1 == "50%" { print ms($2) }' "$out")
  W_P99=$(awk "$pct"' $1 == "99%" { print ms($2) }' "$out")
  W_NON2XX=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  read -r W_CONNECT W_READ W_WRITE W_TIMEOUT < <(awk '/Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
      END { print c + 0, r + 0, w + 0, t + 0 }' "$out")
  W_RPS=${W_RPS:-0} W_REQ=${W_REQ:-0} W_P50=${W_P50:-0} W_P99=${W_P99:-0} W_NON2XX=${W_NON2XX:-0}
  W_SOCKERR=$((W_CONNECT + W_READ + W_WRITE + W_TIMEOUT))
}

# ---- reports -----------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# versions: the servers', Node.js's, the peers' packages' and wrk's versions.
versions() {
  local pgv nodev wrkv pkgs
  pgv=$("$PSQL" -Atq "$URL" -c "SHOW server_version" | cut -d' ' -f1)
  nodev=$(node --version)
  wrkv=$(wrk --version 2>&1 | head -1 | awk '{print $2}')
  pkgs=$(cd bench/peer && node -e "for (const p of ['express','pg','fastify','postgres','ioredis']) process.stdout.write(p + ' ' + require('./node_modules/' + p + '/package.json').version + ', ')")
  echo "PostgreSQL $pgv, Redis $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO server | awk -F: '/^redis_version/ {print $2}' | tr -d '\r'), Node.js $nodev (${pkgs%, }), wrk $wrkv"
}

# replace_section FILE NAME CONTENT_FILE: puts CONTENT_FILE between
# <!-- NAME:begin --> and <!-- NAME:end --> (appended when the markers are missing).
replace_section() {
  local file=$1 name=$2 content=$3
  if ! grep -q "<!-- $name:begin -->" "$file" || ! grep -q "<!-- $name:end -->" "$file"; then
    { echo; echo "<!-- $name:begin -->"; echo "<!-- $name:end -->"; } >>"$file"
  fi
  awk -v f="$content" -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" '
    $0 == b { print; while ((getline line < f) > 0) print line; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' "$file" >"$work/docs.tmp"
  cat "$work/docs.tmp" >"$file"
}
