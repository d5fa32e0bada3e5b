#!/usr/bin/env python3
"""float32 against bfloat16 matrix products on this CPU, through LibTorch
(PyTorch from Debian's python3-torch: the same oneDNN as MoEKit's LibTorch).
Times [M, K] x [K, N] for a few row counts M, one thread, and prints the
GFLOPS of each: the rate the bf16 row GEMMs of `quantize --experts bf16`
(src/moekit/ops/grouped_linear.h) can reach against float32 GEMMs.

Then what a new row count costs: oneDNN builds and JIT-compiles a matmul
primitive per shape and caches 1024 of them. An expert FFN's two bf16
products ([M, K] x [K, N], [M, N] x [N, K]) for --shapes row counts from 32
up, each met once, against the same rows padded to a multiple of 32 (as
the bf16 row GEMMs pad them), twice each, interleaved; GFLOPS count the
unpadded rows only.

  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/bf16_gemm_probe.py [--k 256 --n 2048 --rows 4,16,64,512 --shapes 600]
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
    ap.add_argument("--shapes", type=int, default=600, help="distinct row counts of the shape test (0: skip it)")
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
    if a.shapes > 0:
        shapes(a)


def shapes(a):
    w1 = torch.randn(a.k, a.n).to(torch.bfloat16)
    w2 = torch.randn(a.n, a.k).to(torch.bfloat16)
    exact = list(range(32, 32 + a.shapes))
    xs = {m: torch.randn(m, a.k) for m in exact}

    def run(pad):
        start = time.perf_counter()
        for m in exact:
            rows = (m + 31) // 32 * 32 if pad else m
            x = torch.zeros(rows, a.k, dtype=torch.bfloat16)
            x[:m] = xs[m]
            (x @ w1) @ w2
        return time.perf_counter() - start

    useful = sum(4 * m * a.k * a.n for m in exact)
    print(f"\nAn FFN's two bf16 products for {a.shapes} row counts ({exact[0]}..{exact[-1]}), each once, 1 thread:\n")
    print("| rows | pass | ms per FFN | GFLOPS |")
    print("|---|---:|---:|---:|")
    for p in (1, 2):
        for pad in (False, True):
            t = run(pad)
            print(f"| {'padded to 32' if pad else 'exact'} | {p} | {t / len(exact) * 1e3:.2f} | {useful / t / 1e9:.0f} |")


if __name__ == "__main__":
    main()
