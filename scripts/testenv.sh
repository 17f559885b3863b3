#!/usr/bin/env bash
# Throwaway PostgreSQL 15 and Redis for the tests, and the MongoDB-compatible
# test server of tests/mongo-emulator when it is installed (scripts/deps.sh
# test: npm ci), exported as DBKIT_TEST_MONGO_URL.
#
#   scripts/testenv.sh -- COMMAND [ARGS...]
#       starts both servers on free loopback ports, exports
#       DBKIT_TEST_PG_URL, DBKIT_TEST_REDIS_URL, DBKIT_TEST_PGBIN and
#       DBKIT_TEST_PGDATA (the server's data directory), runs
#       COMMAND, and stops both servers by PID on exit, also when COMMAND
#       fails or the script is interrupted. Exits with COMMAND's status.
#   scripts/testenv.sh --start-only
#       starts both and prints `export ...` lines plus the stop command
#       (for running single tests by hand).
#
# PostgreSQL refuses to run as root: when run as root, the cluster belongs
# to the unprivileged `postgres` user (created by the Debian package).
set -euo pipefail

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || dirname "$(command -v initdb)")}
[ -x "$PGBIN/initdb" ] || { echo "testenv: PostgreSQL 15 server not found (apt-get install postgresql-15)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "testenv: redis-server not found (apt-get install redis-server)" >&2; exit 1; }

base=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-testenv.XXXXXX")
chmod 755 "$base"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$base"
  as_pg=(runuser -u postgres --)
fi

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( (RANDOM % 20000) + 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "testenv: no free port" >&2; return 1
}

pg_pid=""
redis_pid=""
mongo_pid=""
stop_all() {
  local rc=$?
  # The server in our data directory, whatever its PID now: a benchmark may
  # have restarted it (pg_ctl restart gives the postmaster a new PID).
  local cur=""
  [ -f "$base/pg/postmaster.pid" ] && cur=$(head -1 "$base/pg/postmaster.pid" 2>/dev/null || true)
  if { [ -n "$cur" ] && kill -0 "$cur" 2>/dev/null; } || { [ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null; }; then
    "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$base/pg" -m immediate -w stop >/dev/null 2>&1 \
      || kill ${cur:+"$cur"} ${pg_pid:+"$pg_pid"} 2>/dev/null || true
  fi
  if [ -n "$mongo_pid" ] && kill -0 "$mongo_pid" 2>/dev/null; then
    kill "$mongo_pid" 2>/dev/null || true
    wait "$mongo_pid" 2>/dev/null || true
  fi
  if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$base"
  exit "$rc"
}

"${as_pg[@]}" "$PGBIN/initdb" -D "$base/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$base/initdb.log" 2>&1 \
  || { cat "$base/initdb.log" >&2; rm -rf "$base"; exit 1; }

started=0
for _ in 1 2 3 4 5; do
  pg_port=$(free_port)
  if "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$base/pg" -l "$base/pg.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$base -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_preload_libraries=pg_stat_statements" \
      start >/dev/null 2>&1; then
    started=1; break
  fi
done
if [ $started -ne 1 ]; then
  cat "$base/pg.log" >&2; rm -rf "$base"; echo "testenv: PostgreSQL did not start" >&2; exit 1
fi
pg_pid=$(head -1 "$base/pg/postmaster.pid")
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in 1 2 3 4 5; do
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$base" --logfile "$base/redis.log" --daemonize no &
  redis_pid=$!
  ok=0
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then ok=1; break; fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ $ok -eq 1 ] && break
  kill "$redis_pid" 2>/dev/null || true; redis_pid=""
done
[ -n "$redis_pid" ] || { echo "testenv: redis-server did not start" >&2; exit 1; }

mongo_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/mongo-emulator"
if [ -d "$mongo_dir/node_modules/@push.rocks/smartmongo" ] && command -v node >/dev/null; then
  for _ in 1 2 3 4 5; do
    mongo_port=$(free_port)
    (cd "$mongo_dir" && exec node start.mjs "$mongo_port") >"$base/mongo.log" 2>&1 &
    mongo_pid=$!
    ok=0
    for _ in $(seq 1 100); do
      if grep -q "^ready $mongo_port" "$base/mongo.log" 2>/dev/null; then ok=1; break; fi
      kill -0 "$mongo_pid" 2>/dev/null || break
      sleep 0.1
    done
    [ $ok -eq 1 ] && break
    kill "$mongo_pid" 2>/dev/null || true; mongo_pid=""
  done
  [ -n "$mongo_pid" ] || { echo "testenv: the MongoDB-compatible server did not start ($base/mongo.log)" >&2; exit 1; }
  export DBKIT_TEST_MONGO_URL="mongodb://127.0.0.1:$mongo_port"
else
  echo "testenv: tests/mongo-emulator not installed (scripts/deps.sh test); MongoDB tests will fail under CI=true" >&2
fi

export DBKIT_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export DBKIT_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export DBKIT_TEST_PGBIN="$PGBIN"
export DBKIT_TEST_PGDATA="$base/pg"
echo "testenv: PostgreSQL on 127.0.0.1:$pg_port (pid $pg_pid), Redis on 127.0.0.1:$redis_port (pid $redis_pid)${mongo_pid:+, MongoDB-compatible on 127.0.0.1:$mongo_port (pid $mongo_pid)}"

if [ "${1:-}" = "--start-only" ]; then
  trap - EXIT
  echo "export DBKIT_TEST_PG_URL=$DBKIT_TEST_PG_URL"
  echo "export DBKIT_TEST_REDIS_URL=$DBKIT_TEST_REDIS_URL"
  echo "export DBKIT_TEST_PGBIN=$DBKIT_TEST_PGBIN"
  echo "export DBKIT_TEST_PGDATA=$DBKIT_TEST_PGDATA"
  [ -n "$mongo_pid" ] && echo "export DBKIT_TEST_MONGO_URL=$DBKIT_TEST_MONGO_URL"
  echo "# stop with: ${as_pg[*]} $PGBIN/pg_ctl -D $base/pg -m fast stop; kill $redis_pid${mongo_pid:+ $mongo_pid}; rm -rf $base"
  exit 0
fi
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 -- COMMAND [ARGS...] | --start-only" >&2; exit 2; }
"$@"
