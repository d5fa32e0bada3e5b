#!/usr/bin/env python3
"""Training throughput for 1 and 2 processes: data and expert parallelism.

Trains the same MoE language model (8 experts, top-2) for a fixed number of
optimizer steps with the same global batch in three layouts, one thread per
process, interleaved (every layout once per alternation):
  1 process     accum_grad 2
  DP 2          `moekit launch -n 2`, accum_grad 1 (data parallel, Gloo)
  DP 2 + EP 2   the same with train_conf.ep_size 2 (each process holds 4 of
                every layer's 8 experts; tokens move by all-to-all)
and the two 2-process layouts again with the gradient all-reduce after the
backward pass instead of overlapped with it (overlap_grad_reduce: false),
and reports, from each run's metrics.jsonl (the steps after the first log
interval): tokens/s of the run, per process, and the share of the time
the processes spent inside c10d collectives (waiting for the slower peer
included). The corpus is the LM recipe's (recipes/lm/local/make_corpus.py,
Debian's fortunes); the tokenizer a SentencePiece model trained on it.

  bench/run_dist_bench.py [--moekit build/moekit] [--steps 40] [--alternations 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench_env import bench_env, median


def config(args, accum, ep, overlap):
    return (f"model: {{d_model: {args.d_model}, n_layers: {args.layers}, n_heads: 4, n_kv_heads: 2, "
            f"d_ffn: {args.ffn}, max_seq_len: {args.seq}, moe: {{num_experts: {args.experts}, top_k: 2}}}}\n"
            f"data: {{seq_len: {args.seq}, batch_size: {args.batch}, max_valid_windows: 4}}\n"
            f"train_conf: {{epochs: 100, lr: 0.001, warmup_steps: 10, total_steps: {args.steps}, "
            f"log_interval: {args.log_interval}, average_last: 1, keep_checkpoints: 1, accum_grad: {accum}"
            f"{', ep_size: %d' % ep if ep > 1 else ''}, bucket_mb: {args.bucket_mb}, "
            f"overlap_grad_reduce: {'true' if overlap else 'false'}}}\n")


def run_layout(args, env, tmp, name, processes, accum, ep, overlap, round_index):
    conf = os.path.join(tmp, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(config(args, accum, ep, overlap))
    exp = os.path.join(tmp, f"exp_{name}_{round_index}")
    train = [args.moekit, "--threads", "1", "train", "lm", "--config", conf, "--train-text",
             os.path.join(tmp, "corpus", "train.txt"), "--valid-text", os.path.join(tmp, "corpus", "valid.txt"),
             "--tokenizer", os.path.join(tmp, "tok.model"), "--exp-dir", exp]
    cmd = train if processes == 1 else [args.moekit, "launch", "-n", str(processes), "--", *train]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in open(os.path.join(exp, "metrics.jsonl")) if '"tokens_per_s"' in line]
    timed = records[1:] or records  # the first interval includes start-up
    tokens_per_s = median([r["tokens_per_s"] for r in timed])
    comm = median([r["comm"] for r in timed]) if "comm" in timed[0] else 0.0
    return tokens_per_s, comm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=344)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="sequences per batch (one process's share of a step)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--alternations", type=int, default=2)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="train_conf.bucket_mb (DDP's bucket_cap_mb)")
    args = ap.parse_args()
    env = bench_env(args.moekit, 1)
    here = os.path.dirname(os.path.abspath(__file__))
    # (name, processes, accum_grad, ep_size, gradient all-reduce overlapped with the backward pass)
    layouts = [("1 process", 1, 2, 1, True), ("DP 2", 2, 1, 1, True), ("DP 2, reduce after backward", 2, 1, 1, False),
               ("DP 2 + EP 2", 2, 1, 2, True), ("DP 2 + EP 2, reduce after backward", 2, 1, 2, False)]
    results = {name: [] for name, *_ in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        subprocess.run([sys.executable, os.path.join(here, "..", "recipes", "lm", "local", "make_corpus.py"), corpus],
                       check=True, capture_output=True)
        subprocess.run([args.moekit, "tokenizer", "train", "--input", os.path.join(corpus, "train.txt"), "--output",
                        os.path.join(tmp, "tok.model"), "--vocab-size", "2000"], check=True, capture_output=True)
        for alt in range(args.alternations):
            for name, processes, accum, ep, overlap in layouts:
                tag = name.replace(" ", "_").replace("+", "").replace(",", "")
                results[name].append(run_layout(args, env, tmp, tag, processes, accum, ep, overlap, alt))
    base = median([t for t, _ in results["1 process"]])
    print(f"MoE LM d_model {args.d_model}, {args.layers} layers, {args.experts} experts top-2, "
          f"global batch {2 * args.batch} x {args.seq} tokens, {args.steps} steps, 1 thread per process, "
          f"buckets of {args.bucket_mb:g} MB; medians of {args.alternations} interleaved runs\n")
    print("| layout | tokens/s (run) | tokens/s per process | vs 1 process | time in collectives |")
    print("|---|---|---|---|---|")
    for name, processes, *_ in layouts:
        tps = median([t for t, _ in results[name]])
        comm = median([c for _, c in results[name]])
        print(f"| {name} | {tps:.0f} | {tps / processes:.0f} | {tps / base:.2f}x | {100 * comm:.0f}% |")


if __name__ == "__main__":
    main()
