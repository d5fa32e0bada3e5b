#!/usr/bin/env python3
"""float32 against bfloat16 matrix products on this CPU, through LibTorch
(PyTorch from Debian's python3-torch: the same oneDNN as MoEKit's LibTorch).
Times [M, K] x [K, N] for a few row counts M, one thread, and prints the
GFLOPS of each: the rate the bf16 row GEMMs of `quantize --experts bf16`
(src/moekit/ops/grouped_linear.h) can reach against float32 GEMMs.

  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/bf16_gemm_probe.py [--k 256 --n 2048 --rows 4,16,64,512]
"""
import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rows", default="4,16,64,512")
    ap.add_argument("--seconds", type=float, default=0.5, help="timed per cell")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"[M, {a.k}] x [{a.k}, {a.n}], 1 thread, oneDNN available: {torch.backends.mkldnn.is_available()}\n")
    print("| rows | float32 GFLOPS | bf16 GFLOPS | bf16 / float32 |")
    print("|---:|---:|---:|---:|")
    for m in (int(r) for r in a.rows.split(",")):
        rate = {}
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(m, a.k).to(dtype), torch.randn(a.k, a.n).to(dtype)
            for _ in range(3):
                x @ w
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < a.seconds:
                x @ w
                n += 1
            rate[dtype] = 2 * m * a.k * a.n * n / (time.perf_counter() - start) / 1e9
        print(f"| {m} | {rate[torch.float32]:.0f} | {rate[torch.bfloat16]:.0f} | "
              f"{rate[torch.bfloat16] / rate[torch.float32]:.1f}x |")


if __name__ == "__main__":
    main()
