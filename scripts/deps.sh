#!/usr/bin/env bash
# Installs the Debian 12 packages dbkit needs that are not installed yet.
#   scripts/deps.sh demo   build + run the demo (compiler, cmake, client libraries)
#   scripts/deps.sh test   everything the test suite needs (servers, cmocka, clang, valgrind)
#   scripts/deps.sh bench  the benchmark tools on top of test (wrk, Node.js, npm, gnuplot)
# Only missing packages are installed; with nothing missing no network is used.
set -euo pipefail

profile=${1:-test}

demo_pkgs=(gcc make cmake pkg-config libpq-dev libsqlite3-dev libhiredis-dev
           libmicrohttpd-dev libjansson-dev libsodium-dev libpg-query-dev ca-certificates curl)
test_pkgs=("${demo_pkgs[@]}" libcmocka-dev postgresql-15 postgresql-contrib-15
           postgresql-15-hypopg redis-server clang libclang-rt-14-dev valgrind git graphviz
           sqlite3 procps pgbouncer libjansson-dev libcurl4-openssl-dev
           libmongoc-dev nodejs npm postgresql-15-auto-failover libuv1-dev)
bench_pkgs=("${test_pkgs[@]}" wrk nodejs npm gnuplot-nox)

case "$profile" in
  demo) want=("${demo_pkgs[@]}") ;;
  test) want=("${test_pkgs[@]}") ;;
  bench) want=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 demo|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  # A package counts as present when dpkg says it is installed; node/npm may
  # come from elsewhere, so a working command also counts.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The MongoDB-compatible test server (tests/mongo-emulator) comes from npm,
# pinned by its committed package-lock.json; install scripts are skipped
# (none of them is needed, and one would download a real mongod).
mongo_emulator() {
  case "$profile" in test|bench) ;; *) return 0 ;; esac
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/mongo-emulator"
  [ -d "$dir/node_modules/@push.rocks/smartmongo" ] && return 0
  echo "deps: installing the MongoDB-compatible test server (npm ci in tests/mongo-emulator)"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
}

if [ ${#missing[@]} -eq 0 ]; then
  mongo_emulator
  exit 0
fi

echo "deps: installing missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "deps: not root and no sudo; install these packages: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The redis-server package may start a system instance; tests never use it.
mongo_emulator
