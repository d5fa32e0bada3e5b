#!/usr/bin/env bash
# On a GPU machine with a CUDA PyTorch (no apt, no network): builds MoEKit
# against that PyTorch's LibTorch with the libraries scripts/device-deps.sh
# unpacked into .devdeps/, runs the CUDA tests, the GPU benchmarks and then
# the whole test suite. Logs go to $OUT (default /tmp/moekit-device).
# QUICK=1: bfloat16 MoE benchmarks only (no float32, ASR or LM ones).
set -u
OUT=${OUT:-/tmp/moekit-device}
mkdir -p "$OUT"
step() { echo; echo "== $* ($(date +%T))"; }
D=$PWD/.devdeps/root/usr
[ -d "$D" ] || { echo "device-check: no .devdeps/ (run scripts/device-deps.sh on a Debian machine first)"; exit 2; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
(g++ --version | head -1; cmake --version | head -1; nvcc --version | tail -1; nproc) 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)'
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')

step configure
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$D" \
  -Dyaml-cpp_DIR="$D/lib/x86_64-linux-gnu/cmake/yaml-cpp" -DGTest_DIR="$D/lib/x86_64-linux-gnu/cmake/GTest" \
  -Dnlohmann_json_DIR="$D/share/cmake/nlohmann_json" -DCLI11_DIR="$D/share/cmake/CLI11" \
  -DTORCH_CUDA_ARCH_LIST=9.0 >/tmp/configure.txt 2>&1 || { tail -40 /tmp/configure.txt; exit 1; }
grep -E "MoEKit|CMake Warning" -A2 /tmp/configure.txt | head -20

step build
start=$(date +%s)
timeout 300 cmake --build build-gpu -j "$(nproc)" -- -k 0 >/tmp/build.txt 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s; warnings: $(grep -c 'warning:' /tmp/build.txt)"
grep -E "warning:" /tmp/build.txt | head -10
grep -E "error:|FAILED:|undefined reference" -A3 /tmp/build.txt | head -60
if [ "$rc" != 0 ] && grep -q "grouped_ffn.cpp" /tmp/build.txt; then
  step "build again without at::_grouped_mm"
  cp /tmp/build.txt "$OUT/build_failed.txt"
  cmake build-gpu -DCMAKE_CXX_FLAGS=-DMOEKIT_HAVE_GROUPED_MM=0 >/dev/null &&
    timeout 300 cmake --build build-gpu -j "$(nproc)" -- -k 0 >/tmp/build.txt 2>&1
  rc=$?
  grep -E "error:|FAILED:|undefined reference" -A3 /tmp/build.txt | head -30
fi
[ "$rc" = 0 ] || { cp /tmp/build.txt /tmp/configure.txt "$OUT"/; exit 1; }

M=build-gpu/moekit
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 MOEKIT_FIXTURES=$PWD/.devdeps/fixtures
step info
$M --version; $M info --system

step cuda tests
timeout 120 build-gpu/tests/moekit_tests --gtest_filter='Cuda*:Device*' >"$OUT/cuda_tests.txt" 2>&1
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]" "$OUT/cuda_tests.txt" | sort -u
grep -B1 -A3 "Failure" "$OUT/cuda_tests.txt" | head -40

step "bench kernels on this machine's CPU (1 thread)"
lscpu | grep -E "Model name|^CPU\(s\)" | tr -s ' '
OPENBLAS_NUM_THREADS=1 timeout 60 $M --threads 1 bench kernels --rounds 2 --megabytes 256 >"$OUT/bench_kernels.json" 2>&1
python3 - "$OUT/bench_kernels.json" <<'PY'
import json, sys
from collections import defaultdict
d = json.load(open(sys.argv[1]))
print("silu G floats/s: " + " ".join("%s %.2f" % (r["variant"], r["g_floats_per_s"]) for r in d["silu"]["results"]))
d = d["panels"]
print("read bandwidth %.1f GB/s" % d["read_bandwidth_gb_per_s"])
t = defaultdict(dict)
for r in d["results"]:
    t[(r["variant"], r["pages"])][r["rows"]] = r["gb_per_s"]
for k, v in t.items():
    print("%-18s %-13s %s" % (k[0], k[1], " ".join("%d:%.1f" % kv for kv in sorted(v.items()))))
PY

step bench moe, MoEKit on the GPU
DTYPES="float32 bfloat16"
[ "${QUICK:-0}" = 1 ] && DTYPES=bfloat16
for dtype in $DTYPES; do
  variants=moekit,dense,loop
  [ "$dtype" = bfloat16 ] && variants=moekit,moekit_gemm,dense,loop
  timeout 120 $M --device cuda bench moe --dtype "$dtype" --hidden 1024,2048 --tokens 16,256,4096 --rounds 5 \
    --variants $variants --stack-layers 16 >"$OUT/bench_moe_cuda_$dtype.json" 2>&1
  python3 - "$OUT/bench_moe_cuda_$dtype.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["layer"]:
    f, b = r["forward_ms"], r["forward_backward_ms"]
    print("%s H=%d N=%4d fwd ms: %s | fwd+bwd ms: %s" % (r["dtype"], r["d_hidden"], r["tokens"],
        " ".join("%s %.3f" % kv for kv in f.items()), " ".join("%s %.3f" % kv for kv in b.items())))
for s in d.get("stack", []):
    print("stack H=%d N=%d: %.3f ms per forward, %.0f GB/s of expert weights" % (
        s["d_hidden"], s["tokens"], s["ms_per_forward"], s["achieved_gb_per_s"]))
PY
done

step bench moe, PyTorch eager loop on the GPU
for dtype in $DTYPES; do
  for n in 16 256 4096; do
    for h in 1024 2048; do
      timeout 60 python3 bench/moe_pytorch.py --device cuda --dtype $dtype --tokens $n --hidden $h --rounds 5
    done
  done
done >"$OUT/bench_moe_pytorch_cuda.txt" 2>&1
python3 - "$OUT/bench_moe_pytorch_cuda.txt" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        print(line.rstrip()[:200]); continue
    print("pytorch %s H=%d N=%4d fwd ms %.3f | fwd+bwd ms %.3f" % (
        r["dtype"], r["d_hidden"], r["tokens"], r["forward_ms"], r["forward_backward_ms"]))
PY

if [ "${QUICK:-0}" != 1 ]; then
step bench asr on the GPU, MoE and equal-FLOPs dense
(timeout 120 $M --device cuda bench asr --rounds 5
 timeout 120 $M --device cuda bench asr --rounds 5 --ffn 4096 --experts 0) >"$OUT/bench_asr_cuda.json" 2>&1
grep -hE '"(rtf_full|rtf_chunk|device|experts)"|error' "$OUT"/bench_asr_cuda.json

step bench lm on the GPU
timeout 90 $M --device cuda bench lm --experts 8 >"$OUT/bench_lm_cuda.json" 2>&1
grep -E "tokens_per_s|parameters|device|error" "$OUT/bench_lm_cuda.json"
fi

step whole test suite, one process
timeout 300 build-gpu/tests/moekit_tests --gtest_brief=1 >"$OUT/tests.txt" 2>&1
echo "tests rc=$?"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]" "$OUT/tests.txt" | sort | uniq | head -40
