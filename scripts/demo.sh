#!/usr/bin/env bash
# What `make demo` runs after building: the example shop service
# (examples/shop) on a fresh SQLite database in a temporary folder, in the
# foreground. Its migrations and seeds are built into the binary and applied
# at start-up; it prints the URL and a few curl lines to try. Ctrl-C stops
# it (gracefully) and removes the folder.
#   bash scripts/demo.sh [BUILD_DIR]      (default: build)
# PORT and HOST are honoured (default 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
case "$build" in
  /*) ;;
  *) build="$PWD/$build" ;;
esac
tool="$build/dbkit"
shop="$build/examples/shop/shop"
for bin in "$tool" "$shop"; do
  if [ ! -x "$bin" ]; then
    echo "demo: $bin not found: build first (make build)" >&2
    exit 1
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dbkit-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The database is named by DATABASE_URL, as a service would be configured;
# the DB_* variables of the caller's shell must not redirect the demo, and
# the cache is the in-process one whatever REDIS_URL says.
unset DB_HOST DB_PORT DB_NAME DB_USER DB_PASSWORD DB_PASSWORD_FILE DB_POOL_MAX
export DATABASE_URL="sqlite:$work/shop.db"
export CACHE_URL=memory

bold="" plain=""
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
echo "${bold}dbkit demo${plain}: the example shop service on SQLite ($work/shop.db)"
echo "  (while it runs, the CLI reads the same database: $tool --url $DATABASE_URL migrate status)"
echo
# Not exec: the trap must run after the service stops.
"$shop"
