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
# Topologies, for running things by hand and for the benchmarks (options go
# before `--` / `--start-only`; each adds servers next to the default ones,
# on free loopback ports, stopped by PID / data directory with the rest):
#   --pg-replica      a streaming replica of the test PostgreSQL
#                     (pg_basebackup -R): DBKIT_TEST_PG_REPLICA_URL
#   --pgbouncer       PgBouncer, pool_mode=transaction, in front of the test
#                     PostgreSQL: DBKIT_TEST_PGBOUNCER_URL
#   --redis-sentinel  a replica of the test Redis and three sentinels
#                     watching it as `mymaster`:
#                     DBKIT_TEST_REDIS_SENTINEL_URL=redis-sentinel://.../mymaster
#   --redis-cluster   six new Redis nodes joined by `redis-cli --cluster
#                     create` (three masters, a replica each):
#                     DBKIT_TEST_REDIS_CLUSTER_URL=redis-cluster://...
# Without options the script starts exactly the servers above.
#
# PostgreSQL (and PgBouncer) refuse to run as root: when run as root, the
# cluster, its replica and the PgBouncer belong to the unprivileged
# `postgres` user (created by the Debian package).
set -euo pipefail

want_replica=0
want_bouncer=0
want_sentinel=0
want_cluster=0
start_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pg-replica) want_replica=1 ;;
    --pgbouncer) want_bouncer=1 ;;
    --redis-sentinel) want_sentinel=1 ;;
    --redis-cluster) want_cluster=1 ;;
    --start-only) start_only=1; break ;;
    --) break ;;
    --*) echo "testenv: unknown option $1 (--pg-replica --pgbouncer --redis-sentinel --redis-cluster, then -- COMMAND or --start-only)" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
if [ $want_bouncer -eq 1 ]; then
  command -v pgbouncer >/dev/null || { echo "testenv: pgbouncer not found (apt-get install pgbouncer)" >&2; exit 1; }
fi
if [ $want_cluster -eq 1 ] || [ $want_sentinel -eq 1 ]; then
  command -v redis-cli >/dev/null || { echo "testenv: redis-cli not found (apt-get install redis-tools)" >&2; exit 1; }
fi

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
extra_redis_pids=()
stop_all() {
  local rc=$?
  # The topologies first: PgBouncer and the replica before their primary.
  if [ -f "$base/bouncer/pgbouncer.pid" ]; then
    kill "$(cat "$base/bouncer/pgbouncer.pid")" 2>/dev/null || true
  fi
  if [ -f "$base/replica/postmaster.pid" ]; then
    "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$base/replica" -m immediate -w -t 30 stop >/dev/null 2>&1 \
      || kill "$(head -1 "$base/replica/postmaster.pid" 2>/dev/null)" 2>/dev/null || true
  fi
  local p
  for p in "${extra_redis_pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${extra_redis_pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
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

# ---- topologies (only with their options) ----
topo_lines=()  # export lines of the topologies
topo_info=()   # what was started, for the summary line
extra_stop=""  # their part of the printed stop command, run before the rest

# waits (at most $2 tries of 0.1 s) until `$1` succeeds
wait_until() {
  local cmd=$1 tries=$2
  for _ in $(seq 1 "$tries"); do
    # no pipefail here: `grep -q` may close the pipe before the writer is done
    if (set +o pipefail; eval "$cmd") >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

if [ $want_replica -eq 1 ]; then
  # A standby needs at least the primary's max_connections (300 above).
  "${as_pg[@]}" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pg_port" -U postgres -D "$base/replica" -R \
    -X stream --no-sync -c fast >"$base/basebackup.log" 2>&1 \
    || { cat "$base/basebackup.log" >&2; echo "testenv: pg_basebackup failed" >&2; exit 1; }
  replica_port=""
  for _ in 1 2 3 4 5; do
    p=$(free_port)
    if "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$base/replica" -l "$base/replica.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$p -c unix_socket_directories=$base -c max_connections=300 -c hot_standby=on -c fsync=off -c shared_preload_libraries=pg_stat_statements" \
        start >/dev/null 2>&1; then
      replica_port=$p; break
    fi
  done
  [ -n "$replica_port" ] || { cat "$base/replica.log" >&2; echo "testenv: the PostgreSQL replica did not start" >&2; exit 1; }
  export DBKIT_TEST_PG_REPLICA_URL="postgres://postgres@127.0.0.1:$replica_port/postgres"
  topo_lines+=("export DBKIT_TEST_PG_REPLICA_URL=$DBKIT_TEST_PG_REPLICA_URL")
  topo_info+=("PostgreSQL replica on 127.0.0.1:$replica_port (pid $(head -1 "$base/replica/postmaster.pid"))")
  extra_stop+="${as_pg[*]} $PGBIN/pg_ctl -D $base/replica -m fast stop; "
fi

if [ $want_bouncer -eq 1 ]; then
  mkdir -p "$base/bouncer"
  printf '"postgres" ""\n' >"$base/bouncer/users.txt"
  bouncer_port=""
  for _ in 1 2 3 4 5; do
    p=$(free_port)
    cat >"$base/bouncer/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $p
unix_socket_dir =
auth_type = trust
auth_file = $base/bouncer/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,options,statement_timeout,TimeZone,DateStyle,lock_timeout
logfile = $base/bouncer/pgbouncer.log
pidfile = $base/bouncer/pgbouncer.pid
INI
    [ -n "${as_pg[*]}" ] && chown -R postgres "$base/bouncer"
    "${as_pg[@]}" pgbouncer -d -q "$base/bouncer/pgbouncer.ini" >/dev/null 2>&1 || continue
    if wait_until "'$PGBIN/psql' -Atq 'postgres://postgres@127.0.0.1:$p/postgres' -c 'SELECT 1'" 100; then
      bouncer_port=$p; break
    fi
    [ -f "$base/bouncer/pgbouncer.pid" ] && kill "$(cat "$base/bouncer/pgbouncer.pid")" 2>/dev/null
    rm -f "$base/bouncer/pgbouncer.pid"
  done
  [ -n "$bouncer_port" ] || { cat "$base/bouncer/pgbouncer.log" >&2 2>/dev/null; echo "testenv: PgBouncer did not start" >&2; exit 1; }
  bouncer_pid=$(cat "$base/bouncer/pgbouncer.pid")
  export DBKIT_TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$bouncer_port/postgres"
  topo_lines+=("export DBKIT_TEST_PGBOUNCER_URL=$DBKIT_TEST_PGBOUNCER_URL")
  topo_info+=("PgBouncer (transaction pooling) on 127.0.0.1:$bouncer_port (pid $bouncer_pid)")
  extra_stop="kill $bouncer_pid; $extra_stop"
fi

# start_redis LOG BUS CONF_TEMPLATE ARGS...: a redis-server on a free port
# (with BUS=1 one whose cluster bus port, +10000, is free too), answering
# PING; sets got_port / got_pid. A CONF_TEMPLATE (sentinels) is written to
# a file with PORT replaced and passed first. At most 5 ports tried.
start_redis() {
  local log=$1 bus=$2 tmpl=$3 p pid conf=()
  shift 3
  for _ in 1 2 3 4 5; do
    p=$(free_port)
    if [ "$bus" = 1 ] && { [ "$p" -gt 55535 ] || (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; }; then
      continue
    fi
    if [ -n "$tmpl" ]; then
      printf '%s\n' "${tmpl//PORT/$p}" >"$base/redis-extra/sentinel-$p.conf"
      conf=("$base/redis-extra/sentinel-$p.conf")
    fi
    redis-server "${conf[@]}" "$@" --port "$p" >>"$base/redis-extra/$log.log" 2>&1 &
    pid=$!
    if wait_until "redis-cli -h 127.0.0.1 -p $p PING | grep -q PONG" 50; then
      got_port=$p; got_pid=$pid; extra_redis_pids+=("$pid"); return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "testenv: a redis-server ($log) did not start:" >&2
  tail -20 "$base/redis-extra/$log.log" >&2 || true
  return 1
}

if [ $want_sentinel -eq 1 ] || [ $want_cluster -eq 1 ]; then
  mkdir -p "$base/redis-extra"
fi

if [ $want_sentinel -eq 1 ]; then
  # The replica follows the test Redis, which the sentinels watch as
  # `mymaster`: redis:// and redis-sentinel:// reach the same server.
  start_redis sentinel 0 "" --bind 127.0.0.1 --save "" --appendonly no --dir "$base/redis-extra" \
    --replicaof 127.0.0.1 "$redis_port" || exit 1
  sreplica_port=$got_port; sreplica_pid=$got_pid
  sentinel_ports=()
  for i in 1 2 3; do
    start_redis sentinel 0 "port PORT
bind 127.0.0.1
dir $base/redis-extra
sentinel monitor mymaster 127.0.0.1 $redis_port 2
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1" --sentinel || exit 1
    sentinel_ports+=("$got_port")
  done
  wait_until "redis-cli -p $sreplica_port INFO replication | grep -q master_link_status:up" 300 \
    || { tail -20 "$base/redis-extra/sentinel.log" >&2; echo "testenv: the Redis replica did not sync" >&2; exit 1; }
  # every sentinel sees the other two and the replica (hello messages, every 2 s)
  for sp in "${sentinel_ports[@]}"; do
    wait_until "redis-cli -p $sp SENTINEL master mymaster | grep -A1 -x num-other-sentinels | grep -qx 2 && redis-cli -p $sp SENTINEL replicas mymaster | grep -qx $sreplica_port" 450 \
      || { tail -20 "$base/redis-extra/sentinel.log" >&2; echo "testenv: the sentinels did not find each other" >&2; exit 1; }
  done
  export DBKIT_TEST_REDIS_SENTINEL_URL="redis-sentinel://127.0.0.1:${sentinel_ports[0]},127.0.0.1:${sentinel_ports[1]},127.0.0.1:${sentinel_ports[2]}/mymaster"
  topo_lines+=("export DBKIT_TEST_REDIS_SENTINEL_URL=$DBKIT_TEST_REDIS_SENTINEL_URL")
  topo_info+=("Redis replica on 127.0.0.1:$sreplica_port (pid $sreplica_pid) and sentinels on ${sentinel_ports[*]}")
fi

if [ $want_cluster -eq 1 ]; then
  cluster_addrs=()
  for i in 1 2 3 4 5 6; do
    start_redis cluster 1 "" --bind 127.0.0.1 --save "" --appendonly no --dir "$base/redis-extra" \
      --cluster-enabled yes --cluster-config-file "nodes-$i.conf" --cluster-node-timeout 5000 || exit 1
    cluster_addrs+=("127.0.0.1:$got_port")
  done
  timeout 60 redis-cli --cluster create "${cluster_addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$base/redis-extra/cluster-create.log" 2>&1 \
    || { cat "$base/redis-extra/cluster-create.log" >&2; echo "testenv: redis-cli --cluster create failed" >&2; exit 1; }
  for a in "${cluster_addrs[@]}"; do
    wait_until "redis-cli -p ${a#*:} CLUSTER INFO | grep -q cluster_state:ok && redis-cli -p ${a#*:} ROLE | grep -qx -e master -e connected" 300 \
      || { tail -20 "$base/redis-extra/cluster.log" >&2; echo "testenv: cluster node $a not ready" >&2; exit 1; }
  done
  export DBKIT_TEST_REDIS_CLUSTER_URL="redis-cluster://${cluster_addrs[0]},${cluster_addrs[1]}"
  topo_lines+=("export DBKIT_TEST_REDIS_CLUSTER_URL=$DBKIT_TEST_REDIS_CLUSTER_URL")
  topo_info+=("Redis Cluster on ${cluster_addrs[*]}")
fi
if [ ${#extra_redis_pids[@]} -gt 0 ]; then
  extra_stop+="kill ${extra_redis_pids[*]}; "
fi

export DBKIT_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export DBKIT_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export DBKIT_TEST_PGBIN="$PGBIN"
export DBKIT_TEST_PGDATA="$base/pg"
echo "testenv: PostgreSQL on 127.0.0.1:$pg_port (pid $pg_pid), Redis on 127.0.0.1:$redis_port (pid $redis_pid)${mongo_pid:+, MongoDB-compatible on 127.0.0.1:$mongo_port (pid $mongo_pid)}"

for line in "${topo_info[@]}"; do
  echo "testenv: $line"
done

if [ $start_only -eq 1 ]; then
  trap - EXIT
  echo "export DBKIT_TEST_PG_URL=$DBKIT_TEST_PG_URL"
  echo "export DBKIT_TEST_REDIS_URL=$DBKIT_TEST_REDIS_URL"
  echo "export DBKIT_TEST_PGBIN=$DBKIT_TEST_PGBIN"
  echo "export DBKIT_TEST_PGDATA=$DBKIT_TEST_PGDATA"
  [ -n "$mongo_pid" ] && echo "export DBKIT_TEST_MONGO_URL=$DBKIT_TEST_MONGO_URL"
  for line in "${topo_lines[@]}"; do
    echo "$line"
  done
  echo "# stop with: ${extra_stop}${as_pg[*]} $PGBIN/pg_ctl -D $base/pg -m fast stop; kill $redis_pid${mongo_pid:+ $mongo_pid}; rm -rf $base"
  exit 0
fi
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 -- COMMAND [ARGS...] | --start-only" >&2; exit 2; }
"$@"
