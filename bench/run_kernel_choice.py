#!/usr/bin/env python3
"""Dense against MoE on the same kernels: two moekit binaries side by side,
with the host's OPENBLAS_CORETYPE as given and unset.

Where OpenBLAS runs AVX2 kernels on an AVX-512 CPU (OPENBLAS_CORETYPE=Haswell,
which some hosts must set for OpenBLAS 0.3.21's correctness), a dense layer
whose projections go through OpenBLAS is slower than MoE experts that run
MoEKit's AVX-512 panel kernel. This driver measures, for each binary and each
setting, interleaved in one run, 1 thread:
  - `moekit bench moe` at --tokens (default 4096), forward and forward +
    backward (training): the MoE layer's time over the equal-FLOPs dense
    FFN's (MoEKit / dense);
  - `moekit bench asr`, full context, 10 s of noise: the U2++ MoE model's RTF
    over its equal-FLOPs dense twin's (MoE / dense), and both RTFs.
Usage: bench/run_kernel_choice.py --binary before=OLD/moekit --binary after=build/moekit
"""
import argparse
import os
import sys

from bench_env import median, run_json as run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True, help="name=path of a moekit binary (repeat)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--alternations", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--asr-blocks", type=int, default=12)
    ap.add_argument("--skip-asr", action="store_true")
    a = ap.parse_args()
    binaries = [b.split("=", 1) for b in a.binary]
    host = os.environ.get("OPENBLAS_CORETYPE")
    settings = [("OPENBLAS_CORETYPE=" + host, host)] if host else []
    settings.append(("OPENBLAS_CORETYPE unset", None))
    rows = {}
    for _ in range(a.alternations):
        for label, core in settings:
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            env.pop("OPENBLAS_CORETYPE", None)
            if core:
                env["OPENBLAS_CORETYPE"] = core
            for name, path in binaries:
                r = rows.setdefault((label, name), {"moe_ms": [], "dense_ms": [], "moe_train_ms": [],
                                                    "dense_train_ms": [], "asr_moe": [], "asr_dense": []})
                out = run([path, "--threads", "1", "bench", "moe", "--tokens", str(a.tokens),
                           "--variants", "moekit,dense", "--rounds", str(a.rounds)], env)
                ms = out["layer"][0]["forward_ms"]
                r["moe_ms"].append(ms["moekit"])
                r["dense_ms"].append(ms["dense"])
                ms = out["layer"][0]["forward_backward_ms"]
                r["moe_train_ms"].append(ms["moekit"])
                r["dense_train_ms"].append(ms["dense"])
                if a.skip_asr:
                    continue
                shape = ["--threads", "1", "bench", "asr", "--blocks", str(a.asr_blocks), "--rounds", "2"]
                r["asr_moe"].append(run([path] + shape + ["--experts", "8", "--ffn", "2048"], env)["rtf_full"])
                r["asr_dense"].append(run([path] + shape + ["--experts", "0", "--ffn", "4096"], env)["rtf_full"])
    print("1 thread; MoE layer D 256, H 1024, 8 experts top-2, %d tokens, forward and forward + backward; "
          "U2++ encoder d 256, %d blocks, "
          "FFN 2048 x 8 experts top-2 vs dense 4096, 10 s of noise, full context; medians of %d calls" % (
              a.tokens, a.asr_blocks, a.alternations))
    print()
    print("| OpenBLAS | binary | MoE layer ms | dense FFN ms | MoE / dense | MoE layer fwd+bwd ms | "
          "dense FFN fwd+bwd ms | ASR MoE RTF | ASR dense RTF | ASR MoE / dense |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (label, name), r in rows.items():
        moe, dense = median(r["moe_ms"]), median(r["dense_ms"])
        if r["asr_moe"]:
            am, ad = median(r["asr_moe"]), median(r["asr_dense"])
            asr = "%.4f | %.4f | %.2fx" % (am, ad, am / ad)
        else:
            asr = "- | - | -"
        train = "%.1f | %.1f" % (median(r["moe_train_ms"]), median(r["dense_train_ms"]))
        print("| %s | %s | %.2f | %.2f | %.2fx | %s | %s |" % (label, name, moe, dense, moe / dense, train, asr))


if __name__ == "__main__":
    sys.exit(main())
