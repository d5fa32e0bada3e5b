#!/usr/bin/env bash
# The whole test suite built with AddressSanitizer and UndefinedBehaviorSanitizer
# (build directory $1, default build-sanitize): every MoEKit unit and the CLI
# the tests run are instrumented (LibTorch, OpenBLAS and the other Debian
# libraries are not). A sanitizer report fails the test that made it.
# -O1 keeps the instrumented build and run affordable on a small machine.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-sanitize}"
bash scripts/setup-deps.sh
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
    -DMOEKIT_SANITIZE=address,undefined -DMOEKIT_BUILD_BENCH=OFF > "$build.cmake.log" 2>&1 ||
    { cat "$build.cmake.log"; exit 1; }
fi
cmake --build "$build" -j"$(nproc)" --target moekit_cli moekit_tests
# halt_on_error: a UBSan report is a failure, not a line in the log.
# allocator_may_return_null: an impossible allocation throws std::bad_alloc
# as it would uninstrumented, instead of ASan aborting the process.
# Leaks inside LibTorch are its own (fuzz/lsan.supp says which).
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# The in-process SentencePiece module is loaded with RTLD_DEEPBIND, which the
# sanitizer runtime refuses (google/sanitizers#611): SentencePiece runs
# through its command-line tools here, and the module's own test skips.
export MOEKIT_SPM_MODULE=none
cd "$build" && ctest --output-on-failure -j"$(nproc)" --timeout 1800
