#!/usr/bin/env bash
# The main job until a model family lands: show the system MoEKit runs on,
# then benchmark the MoE layer side by side with a dense FFN of equal active
# FLOPs and WeNet's per-expert loop (LibTorch and PyTorch eager), and a stack
# of MoE layers against the machine's memory bandwidth.
set -euo pipefail
build=${1:-build}
moekit="$build/moekit"
echo "== moekit info --system"
"$moekit" info --system
echo
echo "== MoE layer benchmark (D=256, H=1024, E=8, top-2; 2 threads; medians, ms)"
/usr/bin/python3 bench/run_moe_bench.py --moekit "$moekit" --threads 2 --hidden 1024 --tokens 16,256,4096 \
  --rounds 3 --alternations 1 --stack-layers 16
