#!/usr/bin/env python3
"""Batch-1 decoding of an LLaMA-style LM with its weight matrices in float32
and in bfloat16, MoEKit and PyTorch eager side by side.

One run, program calls interleaved (for each alternation, each model, each
dtype: MoEKit, then PyTorch), threads pinned (intra-op and OpenBLAS):
  moekit   `moekit bench lm --steps 0 --dtype D`: generation only; bf16 keeps
           the matrices in bf16 (LmModel::set_weight_dtype) and reads them
           through bf16 weight panels, activations in float32
  pytorch  bench/lm_pytorch.py generate --dtype D on the same weights (HF
           layout): HF transformers' computation in eager mode, the whole
           model cast to bf16 as torch_dtype=torch.bfloat16 loads it
for a dense model and an MoE model (8 experts, top-2) of a shape whose
weights do not fit in the caches, so decoding is bound by memory bandwidth.
Prints a markdown table: decode tokens/s per side and dtype, the bf16/fp32
speed-up, and MoEKit's fraction of the memory-bandwidth bound (the bytes of
weights one token reads over the read bandwidth the same program measured).
"""
import argparse
import os
import tempfile

from bench_env import bench_env, median, run_json as run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=2816, help="dense FFN width")
    ap.add_argument("--expert-ffn", type=int, default=1408, help="FFN width of each expert")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed repetitions inside each program call")
    ap.add_argument("--alternations", type=int, default=2, help="interleaved calls of every variant")
    ap.add_argument("--models", default="dense,moe")
    args = ap.parse_args()
    env = bench_env(args.moekit, args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    models = {"dense": (0, args.ffn), "moe": (args.experts, args.expert_ffn)}
    names = [m for m in args.models.split(",") if m]
    dtypes = ("fp32", "bf16")
    ours = {(m, d): [] for m in names for d in dtypes}
    theirs = {(m, d): [] for m in names for d in dtypes}
    with tempfile.TemporaryDirectory() as tmp:
        for alt in range(args.alternations):
            for name in names:
                experts, ffn = models[name]
                hf = os.path.join(tmp, name)
                for dtype in dtypes:
                    cmd = [args.moekit, "--threads", str(args.threads), "bench", "lm", "--d-model", str(args.d_model),
                           "--layers", str(args.layers), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
                           "--ffn", str(ffn), "--experts", str(experts), "--top-k", str(args.top_k),
                           "--vocab", str(args.vocab), "--steps", "0", "--tokens", str(args.new_tokens),
                           "--rounds", str(args.rounds), "--dtype", dtype]
                    if not os.path.exists(hf):
                        cmd += ["--save-hf", hf]  # the same seed: the same weights every call
                    ours[(name, dtype)].append(run(cmd, env))
                    theirs[(name, dtype)].append(run(
                        [args.python, os.path.join(here, "lm_pytorch.py"), "generate", hf, "--threads",
                         str(args.threads), "--rounds", str(args.rounds), "--new-tokens", str(args.new_tokens),
                         "--dtype", dtype], env)["generate_tokens_per_s"])
    print(f"threads {args.threads}; d_model {args.d_model}, {args.layers} layers, {args.heads} heads / "
          f"{args.kv_heads} KV, vocab {args.vocab}; dense FFN {args.ffn}; MoE: {args.experts} experts of FFN "
          f"{args.expert_ffn}, top-{args.top_k}; batch 1, {args.new_tokens} tokens after a 16-token prompt\n")
    print("| model | params total / active | weights | MoEKit generate tok/s | PyTorch | MoEKit / PyTorch "
          "| MoEKit bf16 / fp32 | PyTorch bf16 / fp32 | MoEKit decode fraction of bandwidth bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        gen = {d: median([o["generate_tokens_per_s"] for o in ours[(name, d)]]) for d in dtypes}
        ref = {d: median(theirs[(name, d)]) for d in dtypes}
        for d in dtypes:
            o = ours[(name, d)]
            p = o[0]["parameters"]
            frac = median([x["decode_fraction_of_bandwidth_bound"] for x in o])
            speedup = f"{gen[d] / gen['fp32']:.2f}x" if d != "fp32" else ""
            ref_speedup = f"{ref[d] / ref['fp32']:.2f}x" if d != "fp32" else ""
            print(f"| {name} | {p['total'] / 1e6:.1f}M / {p['active'] / 1e6:.1f}M | {d} | {gen[d]:.1f} | {ref[d]:.1f} "
                  f"| {gen[d] / ref[d]:.2f}x | {speedup} | {ref_speedup} | {frac:.2f} |")


if __name__ == "__main__":
    main()
