#!/usr/bin/env python3
"""Side-by-side LM speed benchmark (issue: EfficientScale speed targets).

One run, program calls interleaved, threads pinned (intra-op and OpenBLAS):
  moekit   `moekit bench lm`: training step (forward, backward, Adam) and
           batch-1 generation with the KV cache
  pytorch  bench/lm_pytorch.py on the same weights (exported HF layout):
           HF transformers' computation in PyTorch eager, Mixtral's
           per-expert loop for the MoE model
for a dense model and an MoE model (8 experts, top-2) of the same shape.
Prints a markdown table of tokens/s, the MoEKit/PyTorch ratios and
MoEKit's decode fraction of the memory-bandwidth bound.
"""
import argparse
import json
import os
import subprocess
import tempfile

from bench_env import bench_env, median, run_json as run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed repetitions inside each program call")
    ap.add_argument("--alternations", type=int, default=2, help="interleaved calls of every variant")
    args = ap.parse_args()
    env = bench_env(args.moekit, args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for alt in range(args.alternations):
            for name, experts in (("dense", 0), ("moe", args.experts)):
                hf = os.path.join(tmp, name)
                ours = run([args.moekit, "--threads", str(args.threads), "bench", "lm", "--d-model", str(args.d_model),
                            "--layers", str(args.layers), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
                            "--ffn", str(args.ffn), "--experts", str(experts), "--top-k", str(args.top_k),
                            "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq),
                            "--steps", str(args.steps), "--tokens", str(args.new_tokens), "--rounds", str(args.rounds),
                            "--save-hf", hf], env)
                common = [hf, "--threads", str(args.threads), "--rounds", str(args.rounds)]
                theirs_train = run([args.python, os.path.join(here, "lm_pytorch.py"), "train", *common, "--batch",
                                    str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)], env)
                theirs_gen = run([args.python, os.path.join(here, "lm_pytorch.py"), "generate", *common,
                                  "--new-tokens", str(args.new_tokens)], env)
                r = results.setdefault(name, {"ours": [], "train": [], "gen": []})
                r["ours"].append(ours)
                r["train"].append(theirs_train["train_tokens_per_s"])
                r["gen"].append(theirs_gen["generate_tokens_per_s"])
    print(f"threads {args.threads}; d_model {args.d_model}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV, "
          f"FFN {args.ffn}, vocab {args.vocab}; MoE: {args.experts} experts top-{args.top_k}; "
          f"training batch {args.batch} x {args.seq}; generation batch 1, {args.new_tokens} tokens\n")
    print("| model | params total / active | train tok/s MoEKit | PyTorch | ratio | generate tok/s MoEKit | PyTorch | ratio "
          "| decode fraction of bandwidth bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("dense", "moe"):
        r = results[name]
        ours_train = median([o["train_tokens_per_s"] for o in r["ours"]])
        ours_gen = median([o["generate_tokens_per_s"] for o in r["ours"]])
        frac = median([o["decode_fraction_of_bandwidth_bound"] for o in r["ours"]])
        p = r["ours"][0]["parameters"]
        print(f"| {name} | {p['total'] / 1e6:.2f}M / {p['active'] / 1e6:.2f}M | {ours_train:.0f} | {median(r['train']):.0f} | "
              f"{ours_train / median(r['train']):.2f}x | {ours_gen:.0f} | {median(r['gen']):.0f} | "
              f"{ours_gen / median(r['gen']):.2f}x | {frac:.2f} |")


if __name__ == "__main__":
    main()
