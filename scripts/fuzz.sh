#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (build directory $1,
# default build-fuzz) and runs each for $FUZZ_SECONDS seconds (default 60)
# from its seed corpus in fuzz/corpus/<name> (read only; what a run adds goes
# to <build>/corpus/<name>). A crash, leak, sanitizer report or time-out
# fails with the reproducer's path; otherwise one line per target says how
# many inputs ran.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
bash scripts/setup-deps.sh --fuzz
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DMOEKIT_FUZZ=ON \
    > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
fi
cmake --build "$build" -j"$(nproc)"
# Leaks inside LibTorch's zip reader are its own (fuzz/lsan.supp says which).
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# The targets that need files write them under TMPDIR: one directory for
# this run, removed afterwards.
TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/moekit_fuzz.XXXXXX")"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
status=0
for name in safetensors pickle audio yaml_configs hf_config hf_tokenizer decode_words asr_data asr_protocol; do
  mkdir -p "$build/corpus/$name" "$build/artifacts/$name"
  log="$build/fuzz_$name.log"
  if "$build/fuzz/fuzz_$name" "$build/corpus/$name" "fuzz/corpus/$name" -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$name/" > "$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz_$name: ${runs:-?} inputs in ${seconds} s, no finding"
  else
    echo "fuzz_$name: FINDING (log $log):" >&2
    grep -m 5 -E "ERROR|SUMMARY|Test unit written|deadly signal|timeout" "$log" >&2 || tail -20 "$log" >&2
    status=1
  fi
done
exit $status
