# dbkit - the two commands:
#   make demo   install what is missing, build, serve the example shop on SQLite
#   make test   install what is missing, build, start throwaway PostgreSQL and
#               Redis, run every test (plain, ASan+UBSan, TSan, fuzz smoke)
# Other targets: build, bench, fuzz, valgrind, install, format, clean.

BUILD ?= build-demo
JOBS ?= 2
PREFIX ?= /usr/local

.PHONY: all demo test build deps-demo deps-test bench fuzz valgrind install format clean

all: build

deps-demo:
	@bash scripts/deps.sh demo

deps-test:
	@bash scripts/deps.sh test

build: deps-demo
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDBKIT_TESTS=OFF -DDBKIT_BENCH=OFF >/dev/null
	@cmake --build $(BUILD) -j$(JOBS) -- --no-print-directory

demo: build
	@bash scripts/demo.sh $(BUILD)

test: deps-test
	@bash scripts/run-tests.sh

bench: deps-test
	@bash scripts/deps.sh bench
	@bash scripts/run-bench.sh

fuzz: deps-test
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-60} bash scripts/run-tests.sh fuzz

valgrind: deps-test
	@bash scripts/run-tests.sh valgrind

install: build
	@cmake --install $(BUILD) --prefix $(PREFIX)

format:
	@clang-format -i include/dbkit/*.h src/*/*.c src/*/*.h cli/*.c tests/*/*.c tests/*/*.h

clean:
	@rm -rf build build-demo build-asan build-tsan build-fuzz build-valgrind
