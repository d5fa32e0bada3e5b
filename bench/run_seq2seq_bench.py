#!/usr/bin/env python3
"""Side-by-side seq2seq decoding benchmark (task-level MoE's speed claim).

One run, threads pinned (intra-op and OpenBLAS):
  moekit   `moekit bench seq2seq`: target tokens/s per batch size of four
           models of the same active width, interleaved inside the program:
           token-MoE, task-MoE (token encoder, task decoder), its extracted
           sub-network for one task, and the dense model
  pytorch  bench/seq2seq_pytorch.py on the same weights: the same model in
           PyTorch eager with fairseq's per-expert loop, at batches 1 and 32,
           its greedy output checked against MoEKit's first
  memory   `moekit bench seq2seq --only MODEL` per model, each in a process of
           its own that builds and decodes only that model (batch 1 and
           the largest batch): the process's resident memory after the
           runs, and its peak
Prints a markdown table: tokens/s, each model's ratio to the token-MoE, the
weights' size, and MoEKit / PyTorch per model; then the memory table.
"""
import argparse
import json
import subprocess
import tempfile

from bench_env import bench_env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64, 256])
    ap.add_argument("--peer-batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--source-len", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    env = bench_env(args.moekit, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [args.moekit, "--threads", str(args.threads), "bench", "seq2seq", "--experts", str(args.experts),
             "--steps", str(args.steps), "--source-len", str(args.source_len), "--rounds", str(args.rounds),
             "--save-dir", tmp, "--batch"] + [str(b) for b in args.batch],
            env=env, check=True, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        peer = {}
        for name in ("token_moe", "task_moe", "task_extracted", "dense"):
            res = subprocess.run([args.python, "bench/seq2seq_pytorch.py", f"{tmp}/{name}", "--threads",
                                  str(args.threads), "--steps", str(args.steps), "--source-len",
                                  str(args.source_len), "--rounds", str(args.rounds), "--batch"] +
                                 [str(b) for b in args.peer_batch], env=env, check=True, capture_output=True,
                                 text=True).stdout
            for line in res.splitlines():
                r = json.loads(line)
                peer[(name, r["batch"])] = r
    memory = {}
    for name in ("token_moe", "task_moe", "task_extracted", "dense"):
        out = subprocess.run(
            [args.moekit, "--threads", str(args.threads), "bench", "seq2seq", "--experts", str(args.experts),
             "--steps", str(args.steps), "--source-len", str(args.source_len), "--rounds", "1", "--only", name,
             "--batch", "1", str(max(args.batch))], env=env, check=True, capture_output=True, text=True).stdout
        memory[name] = [json.loads(line) for line in out.splitlines() if '"resident_mb"' in line][0]
    print(f"threads {args.threads}, {args.experts} experts top-2, {args.steps} target tokens per sentence\n")
    print("| batch | model | MoEKit tokens/s | vs token-MoE | weights MB | PyTorch eager tokens/s | MoEKit / PyTorch | greedy equal |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = peer.get((r["model"], r["batch"]))
        print(f"| {r['batch']} | {r['model']} | {r['tokens_per_s']:.0f} | {r['vs_token_moe']:.2f}x | "
              f"{r['weights_mb']:.0f} | " + (f"{p['tokens_per_s']:.0f} | {r['tokens_per_s'] / p['tokens_per_s']:.2f}x | "
                                            f"{p['greedy_matches_moekit']} |" if p else "- | - | - |"))
    weights = {r["model"]: r["weights_mb"] for r in rows}
    print(f"\nResident memory, one process per model (decoding batch 1 and {max(args.batch)}):\n")
    print("| model | weights MB | resident MB after the runs | peak resident MB |")
    print("|---|---|---|---|")
    for name, m in memory.items():
        print(f"| {name} | {weights.get(name, float('nan')):.0f} | {m['resident_mb']:.0f} | {m['peak_resident_mb']:.0f} |")


if __name__ == "__main__":
    main()
