#!/usr/bin/python3
"""Runs the MoE layer benchmark side by side and prints a markdown table.

For every (threads, hidden, tokens) it alternates `moekit bench moe` (MoEKit,
equal-FLOPs dense FFN, per-expert loop in LibTorch) and bench/moe_pytorch.py
(the same loop in PyTorch eager), `--alternations` times each, and keeps the
fastest median of each variant, so machine noise hits all of them alike.
Then it times a stack of MoE layers at 16 tokens for the bandwidth bound.
"""
import argparse
import json
import os
import sys

from bench_env import bench_env, run_json as run_with_env

HERE = os.path.dirname(os.path.abspath(__file__))
ENVS = {}


def run_json(cmd, threads):
    return run_with_env(cmd, ENVS[threads])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moekit", default="build/moekit")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--hidden", default="1024,2048")
    p.add_argument("--tokens", default="16,256,4096")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--alternations", type=int, default=2)
    p.add_argument("--stack-layers", type=int, default=16)
    p.add_argument("--json", help="also write all raw results here")
    a = p.parse_args()

    rows, stacks = [], []
    for threads in [int(t) for t in a.threads.split(",")]:
        ENVS[threads] = bench_env(a.moekit, threads)
        for hidden in [int(h) for h in a.hidden.split(",")]:
            for tokens in [int(t) for t in a.tokens.split(",")]:
                best = {}
                for _ in range(a.alternations):
                    ours = run_json([a.moekit, "bench", "moe", "--bench-threads", str(threads), "--hidden", str(hidden),
                                     "--tokens", str(tokens), "--rounds", str(a.rounds)], threads)["layer"][0]
                    peer = run_json([sys.executable, os.path.join(HERE, "moe_pytorch.py"), "--threads", str(threads),
                                     "--hidden", str(hidden), "--tokens", str(tokens), "--rounds", str(a.rounds)],
                                    threads)
                    for mode in ("forward_ms", "forward_backward_ms"):
                        results = dict(ours[mode], pytorch=peer[mode])
                        for variant, ms in results.items():
                            key = (mode, variant)
                            best[key] = min(best.get(key, float("inf")), ms)
                rows.append((threads, hidden, tokens, best))
        stack = run_json([a.moekit, "bench", "moe", "--bench-threads", str(threads), "--hidden", "1024",
                          "--tokens", "16", "--rounds", str(a.rounds), "--variants", "moekit", "--forward-only",
                          "--stack-layers", str(a.stack_layers)], threads)["stack"][0]
        stacks.append(stack)

    print("| threads | H | tokens | mode | MoEKit ms | dense (kH) ms | loop LibTorch ms | loop PyTorch ms "
          "| MoEKit / dense | PyTorch / MoEKit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads, hidden, tokens, best in rows:
        for mode, label in (("forward_ms", "fwd"), ("forward_backward_ms", "fwd+bwd")):
            m, d, l, t = (best[(mode, v)] for v in ("moekit", "dense", "loop", "pytorch"))
            print(f"| {threads} | {hidden} | {tokens} | {label} | {m:.3f} | {d:.3f} | {l:.3f} | {t:.3f} "
                  f"| {m / d:.2f}x | {t / m:.2f}x |")
    print()
    print("| threads | layers | tokens | weight MB read / forward | ms / forward | GB/s | read bandwidth GB/s "
          "| fraction of bound |")
    print("|---|---|---|---|---|---|---|---|")
    for s in stacks:
        print(f"| {s['threads']} | {s['layers']} | {s['tokens']} | {s['weight_bytes_touched'] / 1e6:.1f} "
              f"| {s['ms_per_forward']:.3f} | {s['achieved_gb_per_s']:.1f} | {s['read_bandwidth_gb_per_s']:.1f} "
              f"| {s['fraction_of_bandwidth_bound']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"layer": [{"threads": t, "hidden": h, "tokens": n,
                                  "ms": {f"{k[0]}:{k[1]}": v for k, v in b.items()}} for t, h, n, b in rows],
                       "stack": stacks}, f, indent=2)


if __name__ == "__main__":
    main()
