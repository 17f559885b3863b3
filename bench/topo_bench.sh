#!/usr/bin/env bash
# The topology benchmarks, on the throwaway server of scripts/testenv.sh:
#
#   replica_bench    a streaming replica of that server (pg_basebackup -R,
#                    started here on a free loopback port): PK lookups through
#                    the cluster's read executors vs a plain pool on the same
#                    replica (target: routing overhead <= 5 %)
#   pgbouncer_bench  a PgBouncer (pool_mode=transaction) in front of it: PK
#                    lookups with pooler=transaction vs libpq PQexecParams
#                    (unnamed statements) through the same PgBouncer
#                    (target >= 0.9)
#
# Both alternate their rounds and print the best of each next to its
# baseline. The replica and the PgBouncer are stopped by PID / data
# directory and their directory removed on exit, whatever happens.
#
# usage: bench/topo_bench.sh [BUILD_DIR]     (default: build)
# env:   DBKIT_BENCH_PG_URL or DBKIT_TEST_PG_URL  admin URL (postgres://...@127.0.0.1:port/postgres)
#        BENCH_SECONDS (2)  ROUNDS (3)  PGBIN (DBKIT_TEST_PGBIN, else /usr/lib/postgresql/15/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
ADMIN=${DBKIT_BENCH_PG_URL:-${DBKIT_TEST_PG_URL:-}}
SECS=${BENCH_SECONDS:-2}
ROUNDS=${ROUNDS:-3}
PGBIN=${PGBIN:-${DBKIT_TEST_PGBIN:-/usr/lib/postgresql/15/bin}}

if [ -z "$ADMIN" ]; then
  echo "topo_bench: set DBKIT_BENCH_PG_URL or DBKIT_TEST_PG_URL to an admin postgres:// URL" >&2
  exit 2
fi
case "$ADMIN" in
  *\?*) echo "topo_bench: the admin URL must not carry ?parameters" >&2; exit 2 ;;
esac
for prog in replica_bench pgbouncer_bench; do
  [ -x "$BUILD/bench/$prog" ] || { echo "topo_bench: $BUILD/bench/$prog not built" >&2; exit 2; }
done

as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
port=$("$PGBIN/psql" -Atq "$ADMIN" -c "SELECT inet_server_port()")
# A standby needs at least the primary's max_connections.
maxconn=$("$PGBIN/psql" -Atq "$ADMIN" -c "SHOW max_connections")
work=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-topo-bench.XXXXXX")
[ "$(id -u)" -eq 0 ] && chown postgres "$work"

cleanup() {
  if [ -f "$work/bouncer.pid" ]; then
    kill "$(cat "$work/bouncer.pid")" 2>/dev/null || true
  fi
  if [ -f "$work/replica/postmaster.pid" ]; then
    "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$work/replica" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "topo_bench: no free port found" >&2
  exit 1
}

# ---- the replica
"${as_pg[@]}" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$work/replica" -R \
  -X stream --no-sync -c fast >"$work/basebackup.log" 2>&1 \
  || { cat "$work/basebackup.log" >&2; exit 1; }
rport=
for _ in 1 2 3 4 5; do
  p=$(free_port)
  if "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$work/replica" -l "$work/replica.log" -w -t 60 \
    -o "-p $p -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c hot_standby=on -c max_connections=$maxconn" \
    start >/dev/null 2>&1; then
    rport=$p
    break
  fi
done
[ -n "$rport" ] || { cat "$work/replica.log" >&2; exit 1; }
REPLICA="postgres://postgres@127.0.0.1:$rport/postgres"
PRIMARY="postgres://postgres@127.0.0.1:$port/postgres"

echo "== replica_bench (replica on port $rport)"
"$BUILD/bench/replica_bench" --primary "$PRIMARY" --replica "$REPLICA" --seconds "$SECS" \
  --rounds "$ROUNDS"

# ---- PgBouncer
command -v pgbouncer >/dev/null || { echo "topo_bench: pgbouncer not installed" >&2; exit 1; }
printf '"postgres" ""\n' >"$work/users.txt"
bport=
for _ in 1 2 3 4 5; do
  p=$(free_port)
  cat >"$work/bouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $p
unix_socket_dir =
auth_type = trust
auth_file = $work/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
server_reset_query =
ignore_startup_parameters = extra_float_digits,options,statement_timeout,TimeZone,DateStyle,lock_timeout
logfile = $work/bouncer.log
pidfile = $work/bouncer.pid
INI
  [ "$(id -u)" -eq 0 ] && chown postgres "$work/bouncer.ini" "$work/users.txt"
  "${as_pg[@]}" pgbouncer -d -q "$work/bouncer.ini" >/dev/null 2>&1 || continue
  for _ in $(seq 1 250); do
    if "$PGBIN/psql" -Atq "postgres://postgres@127.0.0.1:$p/postgres" -c "SELECT 1" >/dev/null 2>&1; then
      bport=$p
      break
    fi
    sleep 0.02
  done
  [ -n "$bport" ] && break
done
[ -n "$bport" ] || { cat "$work/bouncer.log" >&2 2>/dev/null; exit 1; }

echo
echo "== pgbouncer_bench (PgBouncer on port $bport)"
"$BUILD/bench/pgbouncer_bench" --bouncer "postgres://postgres@127.0.0.1:$bport/postgres" \
  --direct "$PRIMARY" --seconds "$SECS" --rounds "$ROUNDS"
