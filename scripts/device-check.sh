#!/usr/bin/env bash
# On a GPU machine with a CUDA PyTorch (no apt, no network): builds MoEKit
# against that PyTorch's LibTorch with the libraries scripts/device-deps.sh
# unpacked into .devdeps/, then runs, while time is left, the CUDA tests, LM
# training throughput (MoE against dense of equal active FLOPs, and PyTorch
# eager), the GPU MoE-layer benchmarks (MoEKit and the per-expert loop),
# the distributed tests and the MoE tests on the CPU. Logs go to $OUT
# (default /tmp/moekit-device).
#
#   BUDGET_S   seconds for the whole script (default 540); a stage that
#              would not fit is skipped and says so
#   STAGES     which stages, in order (default "cuda train bench dist cpu"; also gdb:
#              the tests matching GDB_FILTER under cuda-gdb)
#   TESTS      the test sources built (default: those the stages run)
set -u
OUT=${OUT:-/tmp/moekit-device}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-540} ))
STAGES=${STAGES:-"cuda train bench dist cpu"}
TESTS=${TESTS:-"test_cuda.cpp;test_dist.cpp;test_moe_invariants.cpp;test_grouped_ffn.cpp;test_train_parts.cpp;test_safetensors.cpp"}
left() { echo $(( DEADLINE - $(date +%s) )); }
step() { echo; echo "== $* ($(date +%T), $(left) s left)"; }
# fits SECONDS: true when that much time is left (else says the stage is skipped)
fits() { [ "$(left)" -ge "$1" ] || { echo "skipped: $(left) s left"; return 1; }; }
limit() { local l; l=$(( $(left) - 5 )); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
D=$PWD/.devdeps/root/usr
[ -d "$D" ] || { echo "device-check: no .devdeps/ (run scripts/device-deps.sh on a Debian machine first)"; exit 2; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
(g++ --version | head -1; cmake --version | head -1; nvcc --version | tail -1; echo "cores $(nproc)") 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)'
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_INC=$(python3 -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])')
[ -f "$TORCH_INC/gloo/context.h" ] && echo "gloo headers: in the wheel" || echo "gloo headers: not in the wheel"

step configure
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$D" \
  -Dyaml-cpp_DIR="$D/lib/x86_64-linux-gnu/cmake/yaml-cpp" -DGTest_DIR="$D/lib/x86_64-linux-gnu/cmake/GTest" \
  -Dnlohmann_json_DIR="$D/share/cmake/nlohmann_json" -DCLI11_DIR="$D/share/cmake/CLI11" \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DMOEKIT_BUILD_BENCH=OFF -DMOEKIT_TESTS="$TESTS" -DTORCH_CUDA_ARCH_LIST=9.0 >"$OUT/configure.txt" 2>&1 ||
  { tail -40 "$OUT/configure.txt"; exit 1; }
grep -E "MoEKit|CMake Warning|Gloo" -A2 "$OUT/configure.txt" | head -20

step build
start=$(date +%s)
timeout "$(limit 330)" cmake --build build-gpu -j "$(nproc)" --target moekit_tests -- -k 0 >/tmp/build.txt 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s; warnings: $(grep -c 'warning:' /tmp/build.txt)"
grep -E "error:|undefined reference" /tmp/build.txt | sort | uniq -c | sort -rn | head -40 >"$OUT/build_errors.txt"
grep -E "error:|FAILED:|undefined reference" -A4 /tmp/build.txt | head -150
gzip -c /tmp/build.txt >"$OUT/build.txt.gz"
[ "$rc" = 0 ] || exit 1

M=build-gpu/moekit
T=build-gpu/tests/moekit_tests
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 MOEKIT_FIXTURES=$PWD/.devdeps/fixtures
$M --version
summary() { grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|^\[  PASSED|tests? ran" "$1" | sed 's/ (.*ms)//' | sort -u | head -60; }
# run_tests NAME FILTER SECONDS: the tests matching FILTER, log in $OUT/NAME.txt
run_tests() {
  timeout "$(limit "$3")" $T --gtest_filter="$2" >"$OUT/$1.txt" 2>&1
  echo "rc=$?"; summary "$OUT/$1.txt"
  grep -B2 -A6 "Failure\|what()" "$OUT/$1.txt" | head -60
}

for stage in $STAGES; do
  case $stage in
  cuda)
    step "CUDA tests"
    fits 60 || continue
    run_tests cuda_tests 'Cuda*:Device*' 200 ;;
  train)
    step "LM training through the trainer: MoE (8 experts, top-2) against the dense LM of equal active FLOPs; PyTorch eager (HF Mixtral's loop)"
    fits 120 || continue
    shape="--d-model 1024 --layers 8 --heads 16 --kv-heads 4 --vocab 32000 --batch 16 --seq 512 --steps 10 --rounds 3"
    for autocast in bf16 none; do
      for model in moe dense; do
        arch="--experts 8 --ffn 2816"
        [ "$model" = dense ] && arch="--experts 0 --ffn 5632"
        timeout "$(limit 90)" $M --device cuda bench lm --trainer --autocast $autocast $shape $arch --tokens 8 \
          --save-hf /tmp/hf_$model >"$OUT/train_${model}_$autocast.json" 2>/tmp/train_${model}_$autocast.err ||
          tail -3 /tmp/train_${model}_$autocast.err
        timeout "$(limit 90)" python3 bench/lm_pytorch.py train /tmp/hf_$model --device cuda --autocast $autocast \
          --batch 16 --seq 512 --steps 10 --rounds 3 >"$OUT/train_pytorch_${model}_$autocast.json" 2>&1
      done
      python3 - "$OUT" $autocast <<'PY'
import json, sys
out, autocast = sys.argv[1], sys.argv[2]
def read(name):
    try:
        return json.load(open("%s/%s" % (out, name)))
    except (OSError, ValueError):
        return {}
m, d = read("train_moe_%s.json" % autocast), read("train_dense_%s.json" % autocast)
pm, pd = read("train_pytorch_moe_%s.json" % autocast), read("train_pytorch_dense_%s.json" % autocast)
tm, td = m.get("trainer", {}).get("tokens_per_s", 0), d.get("trainer", {}).get("tokens_per_s", 0)
print("autocast %s: tokens/s moekit MoE %.0f (reruns %s), dense %.0f, MoE / dense %.2f; pytorch MoE %.0f, dense %.0f; moekit / pytorch MoE %.2f" % (
    autocast, tm, m.get("trainer", {}).get("moe_reruns"), td, tm / td if td else 0,
    pm.get("train_tokens_per_s", 0), pd.get("train_tokens_per_s", 0),
    tm / pm["train_tokens_per_s"] if pm.get("train_tokens_per_s") else 0))
PY
    done
    rm -rf /tmp/hf_moe /tmp/hf_dense ;;
  bench)
    step "MoE layer on the GPU: MoEKit, dense of equal active FLOPs, per-expert loop; PyTorch eager loop"
    fits 60 || continue
    for dtype in bfloat16 float32; do
      variants=moekit,dense,loop
      [ "$dtype" = bfloat16 ] && variants=moekit,moekit_gemm,moekit_grouped_mm,dense,loop
      timeout "$(limit 45)" $M --device cuda bench moe --dtype "$dtype" --d-model 1024 --hidden 4096 --tokens 512,8192,32768 \
        --rounds 5 --variants $variants >"$OUT/bench_moe_cuda_$dtype.json" 2>&1
      python3 - "$OUT/bench_moe_cuda_$dtype.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError:
    print(open(sys.argv[1]).read()[-600:]); sys.exit()
for r in d["layer"]:
    f, b = r["forward_ms"], r["forward_backward_ms"]
    print("moekit %s H=%d N=%5d fwd ms: %s | fwd+bwd ms: %s" % (r["dtype"], r["d_hidden"], r["tokens"],
        " ".join("%s %.3f" % kv for kv in f.items()), " ".join("%s %.3f" % kv for kv in b.items())))
    print("  Auto ran: %s" % json.dumps(r.get("moekit_fast_paths", {})))
PY
      for n in 512 8192 32768; do
        timeout "$(limit 30)" python3 bench/moe_pytorch.py --device cuda --dtype $dtype --tokens $n --d-model 1024 --hidden 4096 --rounds 5
      done >"$OUT/bench_moe_pytorch_$dtype.txt" 2>&1
      python3 - "$OUT/bench_moe_pytorch_$dtype.txt" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        print(line.rstrip()[:200]); continue
    print("pytorch %s H=%d N=%5d fwd ms %.3f | fwd+bwd ms %.3f" % (
        r["dtype"], r["d_hidden"], r["tokens"], r["forward_ms"], r["forward_backward_ms"]))
PY
    done ;;
  dist)
    step "distributed tests (Gloo in this LibTorch; NCCL needs two GPUs)"
    fits 40 || continue
    run_tests dist_tests 'Dist.*' 150 ;;
  gdb)
    step "tests matching GDB_FILTER under cuda-gdb (a backtrace where one crashes)"
    fits 30 || continue
    timeout "$(limit 120)" cuda-gdb -q -batch -ex run -ex bt --args $T --gtest_filter="${GDB_FILTER:-CheckpointStore.*}" \
      >"$OUT/gdb.txt" 2>&1
    echo "rc=$?"; grep -vE "^\[New Thread|^\[Thread .* exited|^\[Detaching" "$OUT/gdb.txt" | tail -45 ;;
  cpu)
    step "MoE, grouped FFN and trainer-part tests on the CPU with this LibTorch"
    fits 30 || continue
    run_tests cpu_tests 'MoE*:GroupedFfn*:SmallRows*:CheckpointStore*:Schedule*:MetricsLog*:FileIo*' 120 ;;
  esac
done
step done
