# MoEKit: `make demo` runs the main job, `make test` the tests, `make bench`
# the side-by-side benchmarks. Each installs its own Debian dependencies.
BUILD ?= build
JOBS ?= $(shell nproc)
PYTHON ?= /usr/bin/python3

.PHONY: deps configure build demo test bench check-layers fuzz sanitize clean

deps:
	@bash scripts/setup-deps.sh

# Ninja where the build directory is new (it rebuilds the precompiled header
# only when its inputs change; the Makefile generator's dependency stamp
# rebuilt it, and with it every object, after a reconfigure); an existing
# build directory keeps its generator.
GENERATOR := $(if $(wildcard $(BUILD)/CMakeCache.txt),,$(if $(shell command -v ninja),-G Ninja,))

configure: deps
	@cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release -DMOEKIT_UNITY_BUILD=ON > $(BUILD).cmake.log 2>&1 || (cat $(BUILD).cmake.log; exit 1)

build: configure
	@cmake --build $(BUILD) -j$(JOBS)

# The demo needs the command-line tool only (not the tests).
demo: configure
	@cmake --build $(BUILD) -j$(JOBS) --target moekit_cli
	@bash scripts/setup-deps.sh --recipes
	@bash scripts/demo.sh $(BUILD)

test: build
	@bash scripts/setup-deps.sh --browser
	@$(PYTHON) scripts/check_layers.py
	@bash scripts/make_tokenizer_testdata.sh $(BUILD)/tokenizer-testdata
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

check-layers:
	@$(PYTHON) scripts/check_layers.py

# libFuzzer targets (clang, ASan + UBSan) run FUZZ_SECONDS each (default 60).
fuzz: deps
	@bash scripts/fuzz.sh $(BUILD)-fuzz

# The test suite built with ASan + UBSan (its own build directory, -O1).
sanitize: deps
	@bash scripts/sanitize.sh $(BUILD)-sanitize

bench: build
	@$(PYTHON) bench/run_moe_bench.py --moekit $(BUILD)/moekit

clean:
	rm -rf $(BUILD) $(BUILD).cmake.log $(BUILD)-fuzz $(BUILD)-fuzz.cmake.log $(BUILD)-sanitize $(BUILD)-sanitize.cmake.log
