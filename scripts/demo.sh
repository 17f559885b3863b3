#!/usr/bin/env bash
# What `make demo` runs after building: the dbkit command against a fresh
# SQLite database in a temporary folder, using the example migrations and
# seeds of examples/db. Each command is printed before it runs.
#   bash scripts/demo.sh [BUILD_DIR]      (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
case "$build" in
  /*) bin="$build/dbkit" ;;
  *) bin="$PWD/$build/dbkit" ;;
esac
if [ ! -x "$bin" ]; then
  echo "demo: $bin not found: build first (make build)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/db"
cp -r examples/db/migrations examples/db/seeds "$work/db/"
cd "$work"

# The database is named by DATABASE_URL, as a service would be configured;
# the DB_* variables of the caller's shell must not redirect the demo.
unset DB_HOST DB_PORT DB_NAME DB_USER DB_PASSWORD DB_PASSWORD_FILE
export DATABASE_URL="sqlite:$work/demo.db"

dbkit() { "$bin" "$@"; }
bold="" plain=""
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
# Prints the command as one would type it (arguments with spaces or $ in
# single quotes), then runs it.
run() {
  local line="" a
  for a in "$@"; do
    if [[ "$a" =~ [^A-Za-z0-9_./=:-] ]]; then line+=" '${a//\'/\'\\\'\'}'"; else line+=" $a"; fi
  done
  printf '\n%s$%s%s\n' "$bold" "$line" "$plain"
  "$@"
}

echo "dbkit demo in $work (DATABASE_URL=$DATABASE_URL)"
run dbkit doctor
run dbkit migrate up
run dbkit seed
run dbkit seed --env dev
run dbkit migrate status
run dbkit query 'SELECT id, name, email FROM users WHERE id = $1' 1
run dbkit query 'SELECT u.name, count(p.id) AS posts FROM users u LEFT JOIN posts p ON p.user_id = u.id GROUP BY u.id, u.name ORDER BY u.id'
echo
echo "demo: ok"
