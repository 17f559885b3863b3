#!/usr/bin/env bash
# Builds and runs the test suite; what `make test` calls.
#   scripts/run-tests.sh            all stages below, in order
#   scripts/run-tests.sh STAGE...   only these stages
# Stages:
#   layers    scripts/check-layers.sh: no file uses a layer below its own
#             (docs/architecture.md's table); a couple of seconds, first
#   install   installs dbkit into a temporary prefix and builds and runs a
#             small consumer (tests/install/) through pkg-config and through
#             find_package(dbkit CONFIG) + dbkit::dbkit
#   plain     RelWithDebInfo build, every test (ctest -j2), the topology
#             suites (programs marked dbkit:topology) included
#   asan      ASan + UBSan build, every test but the topology suites
#   tsan      TSan build, the thread-heavy tests (pool, pipeline, cache, cache_doc, doc, tx, batch, diag, async, entity)
#   valgrind  memcheck over the tests that need no server and a PostgreSQL subset
#   fuzz      each libFuzzer target for FUZZ_SECONDS (default 20) on its corpus
# Servers come from scripts/testenv.sh (one PostgreSQL + Redis for the run).
# Under CI=true a test that cannot reach its server fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(layers install plain asan tsan valgrind fuzz)
JOBS=${JOBS:-2}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

inner() {
  local failed=0
  for s in "${stages[@]}"; do
    echo "==== stage: $s ===="
    case "$s" in
      layers)
        bash scripts/check-layers.sh || failed=1
        ;;
      install)
        cmake -S . -B build-install -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDBKIT_TESTS=OFF -DDBKIT_BENCH=OFF >/dev/null
        cmake --build build-install -j"$JOBS"
        prefix=$(mktemp -d)
        if cmake --install build-install --prefix "$prefix" >/dev/null &&
          libdir=$(ls -d "$prefix"/lib*/pkgconfig | head -1 | xargs dirname) &&
          cc -o "$prefix/consumer-pc" tests/install/consumer.c \
            $(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs dbkit) &&
          LD_LIBRARY_PATH="$libdir" "$prefix/consumer-pc" &&
          cmake -S tests/install -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null &&
          cmake --build "$prefix/consumer-build" >/dev/null &&
          "$prefix/consumer-build/consumer"; then
          echo "install: pkg-config and find_package consumers built and ran"
        else
          echo "install: consuming the installed dbkit failed"; failed=1
        fi
        rm -rf "$prefix"
        ;;
      plain)
        cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
        cmake --build build -j"$JOBS"
        ctest --test-dir build -j"$JOBS" --output-on-failure || failed=1
        ;;
      asan)
        cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDBKIT_SANITIZE=address,undefined -DDBKIT_BENCH=OFF -DDBKIT_TOPOLOGY_TESTS=OFF >/dev/null
        cmake --build build-asan -j"$JOBS"
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
          ctest --test-dir build-asan -j"$JOBS" --output-on-failure || failed=1
        ;;
      tsan)
        cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DDBKIT_SANITIZE=thread -DDBKIT_BENCH=OFF -DDBKIT_TOPOLOGY_TESTS=OFF \
          -DDBKIT_TEST_FILTER='^(pool|pipeline|cache|cache_doc|doc|tx|batch|diag|async|entity)_test$' >/dev/null
        cmake --build build-tsan -j"$JOBS"
        if [ -n "$(ctest --test-dir build-tsan -N | grep -E 'Test +#')" ]; then
          TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
            ctest --test-dir build-tsan -j"$JOBS" --output-on-failure || failed=1
        fi
        ;;
      valgrind)
        # Programs marked /* dbkit:valgrind */ run under memcheck; a definite leak or
        # an invalid access fails the test (exit 99).
        cmake -S . -B build-valgrind -DCMAKE_BUILD_TYPE=Debug -DDBKIT_BENCH=OFF -DDBKIT_VALGRIND=ON -DDBKIT_TOPOLOGY_TESTS=OFF >/dev/null
        cmake --build build-valgrind -j"$JOBS"
        ctest --test-dir build-valgrind -j"$JOBS" -L valgrind --output-on-failure || failed=1
        ;;
      fuzz)
        if ! command -v clang >/dev/null; then echo "fuzz: clang missing" >&2; failed=1; continue; fi
        cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON -DDBKIT_TESTS=ON -DDBKIT_BENCH=OFF \
          -DDBKIT_TEST_FILTER='^$' >/dev/null
        cmake --build build-fuzz -j"$JOBS"
        for f in build-fuzz/tests/*_fuzz; do
          [ -x "$f" ] || continue
          name=$(basename "$f" _fuzz)
          work=$(mktemp -d)
          cp -r "tests/fuzz/corpus/$name/." "$work/" 2>/dev/null || true
          echo "fuzz: $name for ${FUZZ_SECONDS}s"
          "$f" -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 "$work" >build-fuzz/$name.log 2>&1 \
            || { echo "fuzz: $name found a crash"; tail -50 build-fuzz/$name.log; failed=1; }
          rm -rf "$work"
        done
        ;;
      *) echo "unknown stage $s" >&2; failed=1 ;;
    esac
  done
  return $failed
}

if [ -z "${DBKIT_TEST_PG_URL:-}" ]; then
  export -f inner
  export JOBS FUZZ_SECONDS
  stages_str="${stages[*]}"
  exec bash scripts/testenv.sh -- bash -c "stages=($stages_str); $(declare -f inner); inner"
else
  inner
fi
