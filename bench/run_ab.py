#!/usr/bin/env python3
"""Two (or more) moekit binaries side by side on the benchmark suite: is a
change within noise, faster or slower?

Calls alternate between the binaries (a, b, then b, a, ...), 1 thread, the same
environment; each figure is the median over the calls. The suite:
  moe  `bench moe` at 16 and 256 tokens (forward, forward+backward) and the
       16-layer stack's fraction of the bandwidth bound at both;
  asr  `bench asr` on the U2++ MoE benchmark model (10 s of noise): RTF at
       full context and chunk 16, and the chunk's bandwidth fraction;
  lm   `bench lm` on the MoE LM: training and batch-1 generation tokens/s.
Usage: bench/run_ab.py --binary before=OLD/moekit --binary after=build/moekit [--alternations 3]
"""
import argparse
import os
import sys

from bench_env import median, run_json

SUITE = {
    "moe": (["bench", "moe", "--tokens", "16,256", "--rounds", "5", "--variants", "moekit", "--stack-layers", "16"],
            lambda j: dict(
                [("moe %s tok fwd ms" % l["tokens"], l["forward_ms"]["moekit"]) for l in j["layer"]] +
                [("moe %s tok fwd+bwd ms" % l["tokens"], l["forward_backward_ms"]["moekit"]) for l in j["layer"]] +
                [("moe stack %s tok bandwidth fraction" % s["tokens"], s["fraction_of_bandwidth_bound"])
                 for s in j.get("stack", [])])),
    "asr": (["bench", "asr", "--rounds", "3"],
            lambda j: {"asr RTF full": j["rtf_full"], "asr RTF chunk 16": j["rtf_chunk"],
                       "asr chunk bandwidth fraction": j["chunk_fraction_of_bandwidth_bound"]}),
    "lm": (["bench", "lm", "--experts", "8"],
           lambda j: {"lm train tok/s": j["train_tokens_per_s"], "lm generate tok/s": j["generate_tokens_per_s"]}),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True, help="name=path of a moekit binary (repeat)")
    ap.add_argument("--alternations", type=int, default=3)
    ap.add_argument("--suite", default="moe,asr,lm")
    a = ap.parse_args()
    binaries = [b.split("=", 1) for b in a.binary]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    figures = {}
    for alternation in range(a.alternations):
        for part in a.suite.split(","):
            args, extract = SUITE[part]
            # a, b then b, a: neither binary always runs right after the other.
            for name, path in (binaries if alternation % 2 == 0 else binaries[::-1]):
                for key, value in extract(run_json([path, "--threads", "1"] + args, env)).items():
                    figures.setdefault(key, {}).setdefault(name, []).append(value)
    names = [n for n, _ in binaries]
    print("1 thread, OPENBLAS_CORETYPE=%s; medians of %d alternating calls" % (
        os.environ.get("OPENBLAS_CORETYPE", "(unset)"), a.alternations))
    print()
    print("| figure | " + " | ".join(names) + " | %s / %s |" % (names[-1], names[0]))
    print("|---|" + "---|" * (len(names) + 1))
    for key, by_name in figures.items():
        values = [median(by_name[n]) for n in names]
        print("| %s | %s | %.3f |" % (key, " | ".join("%.4g" % v for v in values), values[-1] / values[0]))


if __name__ == "__main__":
    sys.exit(main())
