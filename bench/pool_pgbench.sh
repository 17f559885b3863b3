#!/usr/bin/env bash
# Primary-key lookups through the pool's dbk_db, next to pgbench running the
# same SELECT on the same table, in the same run:
#
#   pgbench -n -M prepared -c 8 -j 2 -T <seconds> -f <pk.sql>
#   pool_bench pk --threads 8 --seconds <seconds> --pool-only
#
# plus, for context, the same 8 threads on raw libpq (one connection each,
# PQexecPrepared): the blocking thread-per-connection model without dbkit.
# Creates database dbkit_pool_bench with a users table of 100,000 rows
# (dropped again at the end), alternates the three for ROUNDS rounds and
# prints the best queries/s of each and the ratios (target >= 0.9 of pgbench).
#
# usage: bench/pool_pgbench.sh [BUILD_DIR]     (default: build)
# env:   DBKIT_BENCH_PG_URL or DBKIT_TEST_PG_URL  admin URL (postgres://.../postgres)
#        BENCH_SECONDS (10)  ROUNDS (2)  CLIENTS (8)  PGBIN (/usr/lib/postgresql/15/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
ADMIN=${DBKIT_BENCH_PG_URL:-${DBKIT_TEST_PG_URL:-}}
SECS=${BENCH_SECONDS:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROWS=100000
DB=dbkit_pool_bench

if [ -z "$ADMIN" ]; then
  echo "pool_pgbench: set DBKIT_BENCH_PG_URL or DBKIT_TEST_PG_URL to an admin postgres:// URL" >&2
  exit 2
fi
case "$ADMIN" in
  *\?*) echo "pool_pgbench: the admin URL must not carry ?parameters" >&2; exit 2 ;;
esac
BENCH=$BUILD/bench/pool_bench
[ -x "$BENCH" ] || { echo "pool_pgbench: $BENCH not built (cmake --build $BUILD)" >&2; exit 2; }
PSQL=$PGBIN/psql
PGBENCH=$PGBIN/pgbench
[ -x "$PGBENCH" ] || { echo "pool_pgbench: $PGBENCH not found (set PGBIN)" >&2; exit 2; }

URL="${ADMIN%/*}/$DB"
work=$(mktemp -d)
cleanup() {
  "$PSQL" -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$PSQL" -q -v ON_ERROR_STOP=1 "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
  -c "CREATE DATABASE $DB" >/dev/null
"$PSQL" -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL
CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL DEFAULT now());
INSERT INTO users (id, name, email)
  SELECT g, 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE users;
SQL

cat >"$work/pk.sql" <<SQL
\\set id random(1, $ROWS)
SELECT id, name, email, created_at FROM users WHERE id = :id;
SQL

best_pg=0
best_pool=0
best_raw=0
for r in $(seq 1 "$ROUNDS"); do
  pg=$("$PGBENCH" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/pk.sql" "$URL" 2>&1 |
       awk '/^tps = / {print int($3)}' | tail -1)
  pool=$("$BENCH" pk --pg-url "$URL" --threads "$CLIENTS" --seconds "$SECS" --rows "$ROWS" \
         --pool-only | awk '/^pool_qps / {print $2}')
  raw=$("$BENCH" pk --pg-url "$URL" --threads "$CLIENTS" --seconds "$SECS" --rows "$ROWS" \
        --raw-only | awk '/^raw_qps / {print $2}')
  echo "round $r: pgbench ${pg:-?} q/s, dbkit pool ${pool:-?} q/s, raw libpq threads ${raw:-?} q/s"
  [ -n "$pg" ] && [ "$pg" -gt "$best_pg" ] && best_pg=$pg
  [ -n "$pool" ] && [ "$pool" -gt "$best_pool" ] && best_pool=$pool
  [ -n "$raw" ] && [ "$raw" -gt "$best_raw" ] && best_raw=$raw
done

echo "primary-key lookups, $ROWS rows, $CLIENTS clients/threads, best of $ROUNDS x ${SECS}s, $(nproc) CPUs"
printf '  %-52s %9d q/s\n' "baseline: pgbench -n -M prepared -c $CLIENTS -j 2" "$best_pg"
if [ "$best_pg" -gt 0 ] && [ "$best_raw" -gt 0 ]; then
  ratio=$(awk -v a="$best_pool" -v b="$best_pg" 'BEGIN {printf "%.3f", a / b}')
  rraw=$(awk -v a="$best_raw" -v b="$best_pg" 'BEGIN {printf "%.3f", a / b}')
  rpool=$(awk -v a="$best_pool" -v b="$best_raw" 'BEGIN {printf "%.3f", a / b}')
  printf '  %-52s %9d q/s   ratio %s\n' "raw libpq PQexecPrepared, $CLIENTS threads" "$best_raw" "$rraw"
  printf '  %-52s %9d q/s   ratio %s (target >= 0.90); %s of raw libpq\n' \
    "dbkit pool dbk_db_query, $CLIENTS threads" "$best_pool" "$ratio" "$rpool"
else
  echo "pool_pgbench: pgbench produced no figure" >&2
  exit 1
fi
