#!/usr/bin/env python3
"""Side-by-side ASR speed benchmark (U2++ MoE against dense and PyTorch).

One run, rounds interleaved, threads pinned (intra-op and OpenBLAS):
  moe        MoEKit, Conformer with 8-expert top-2 MoE FFNs
  dense      MoEKit, the same Conformer with dense FFNs of equal active FLOPs (FFN = top_k x H)
  moe_torch  bench/asr_pytorch.py: the MoE model (same weights) in PyTorch eager, WeNet's per-expert loop
  dense_torch  the dense model in PyTorch eager
  moe_int8   MoEKit, the MoE model after `moekit quantize --experts int8`
  moe_torch_int8  the MoE model in PyTorch eager with its experts through quantize_dynamic (qint8, oneDNN engine)
  moe_torch_int8_qnnpack  the same on the QNNPACK engine
Prints a markdown table of RTF (encoder + CTC) at full context and chunk by
chunk, the ratios the targets are stated in, and the MoE model's fraction of
the memory-bandwidth bound per chunk.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bench_env import bench_env, median, run_json as run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--kernel", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="timed repetitions inside each program call")
    ap.add_argument("--alternations", type=int, default=2, help="interleaved calls of every variant")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--input", choices=["speech", "noise"], default="speech",
                    help="speech: an espeak-ng utterance (both sides get the same fbank features); noise: random "
                         "input, on which a random model routes nearly every frame to the same two experts")
    a = ap.parse_args()
    env = bench_env(a.moekit, a.threads)
    # The saved models (1.1 GB at the default size) go when the run ends.
    tmp = tempfile.mkdtemp(prefix="moekit_asr_bench_")
    try:
        bench(a, env, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(a, env, tmp):
    shape = ["--d-model", str(a.d_model), "--blocks", str(a.blocks), "--kernel", str(a.kernel),
             "--seconds", str(a.seconds), "--chunk-size", str(a.chunk_size), "--rounds", str(a.rounds)]
    models = {"moe": ["--ffn", str(a.ffn), "--experts", str(a.experts), "--top-k", str(a.top_k)],
              "dense": ["--ffn", str(a.ffn * a.top_k), "--experts", "0"]}
    feats = {}
    if a.input == "speech":
        wav = os.path.join(tmp, "speech.wav")
        text = " ".join(open("/usr/share/common-licenses/GPL-3").read().split()[:400])
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", wav, text], check=True)
        shape += ["--wav", wav]
    variants = ["moe", "dense", "moe_torch", "dense_torch", "moe_int8", "moe_torch_int8", "moe_torch_int8_qnnpack"]
    results = {k: [] for k in variants}

    def torch_cmd(name, *extra):
        cmd = [a.python, os.path.join(os.path.dirname(__file__), "asr_pytorch.py"), os.path.join(tmp, name),
               "--threads", str(a.threads), "--seconds", str(a.seconds), "--chunk-size", str(a.chunk_size),
               "--rounds", str(a.rounds)] + list(extra)
        if a.input == "speech":
            cmd += ["--feats", os.path.join(tmp, name + ".feats")]
        return cmd

    for alt in range(a.alternations):
        for name, extra in models.items():
            cmd = [a.moekit, "--threads", str(a.threads), "bench", "asr"] + shape + extra
            if alt == 0:
                cmd += ["--save-model", os.path.join(tmp, name), "--save-feats", os.path.join(tmp, name + ".feats")]
            results[name].append(run(cmd, env))
            results[name + "_torch"].append(run(torch_cmd(name), env))
            if name != "moe":
                continue
            # The same MoE model with int8 experts: MoEKit's and PyTorch's quantize_dynamic.
            q = os.path.join(tmp, "moe_int8")
            if alt == 0:
                subprocess.run([a.moekit, "quantize", os.path.join(tmp, "moe"), q, "--experts", "int8"], check=True,
                               env=env, stdout=subprocess.DEVNULL)
            results["moe_int8"].append(run([a.moekit, "--threads", str(a.threads), "bench", "asr", "--model-dir", q]
                                           + shape, env))
            results["moe_torch_int8"].append(run(torch_cmd("moe", "--quantize", "experts"), env))
            results["moe_torch_int8_qnnpack"].append(
                run(torch_cmd("moe", "--quantize", "experts", "--engine", "qnnpack"), env))
    def med(rows, key):
        return median(r[key] for r in rows)
    summary = {k: {"rtf_full": med(v, "rtf_full"), "rtf_chunk": med(v, "rtf_chunk")} for k, v in results.items()}
    for k in ("moe", "dense", "moe_int8"):
        for key in ("rtf_fbank", "rtf_full_with_fbank", "rtf_chunk_with_fbank", "chunk_fraction_of_bandwidth_bound",
                    "read_bandwidth_gb_per_s", "busiest_expert_share_full", "busiest_expert_share_chunk",
                    "expert_bytes_touched_per_chunk_fraction", "weight_bytes_per_chunk",
                    "chunk_fraction_of_all_weights_bound", "weight_bytes_all"):
            summary[k][key] = med(results[k], key)
        summary[k]["chunk_fraction_of_bandwidth_bound_calls"] = [
            r["chunk_fraction_of_bandwidth_bound"] for r in results[k]]
        summary[k]["parameters"] = results[k][0]["parameters"]
    if a.json:
        print(json.dumps(summary, indent=2))
        return
    print("Input: %s. MoE routing: the busiest expert takes %.0f%% (full context) / %.0f%% (chunks) of a layer's "
          "assignments (12.5%% = even, 50%% = all on two experts); a chunk touches %.0f%% of the expert weights." % (
              "an espeak-ng utterance" if a.input == "speech" else "noise",
              100 * summary["moe"]["busiest_expert_share_full"], 100 * summary["moe"]["busiest_expert_share_chunk"],
              100 * summary["moe"]["expert_bytes_touched_per_chunk_fraction"]))
    print("ASR encoder + CTC, %.0f s utterance, d=%d, %d blocks, FFN %d, %d experts top-%d, kernel %d, causal, "
          "%d thread(s), chunk %d; medians of %d x %d runs" % (a.seconds, a.d_model, a.blocks, a.ffn, a.experts,
                                                               a.top_k, a.kernel, a.threads, a.chunk_size,
                                                               a.alternations, a.rounds))
    print()
    print("| variant | RTF full | RTF chunk %d | RTF full + fbank | RTF chunk + fbank |" % a.chunk_size)
    print("|---|---|---|---|---|")
    for k in variants:
        s = summary[k]
        extra = ("%.4f | %.4f" % (s["rtf_full_with_fbank"], s["rtf_chunk_with_fbank"])) if "rtf_fbank" in s else "- | -"
        print("| %s | %.4f | %.4f | %s |" % (k, s["rtf_full"], s["rtf_chunk"], extra))
    m, d, mt = summary["moe"], summary["dense"], summary["moe_torch"]
    print()
    print("- MoE / equal-FLOPs dense, full context: %.2fx (target <= 1.10x)" % (m["rtf_full"] / d["rtf_full"]))
    print("- PyTorch reference / MoEKit MoE, full context: %.2fx (target >= 1.0x)" % (mt["rtf_full"] / m["rtf_full"]))
    print("- PyTorch reference / MoEKit MoE, chunk %d: %.2fx (target >= 2x)" % (a.chunk_size, mt["rtf_chunk"] / m["rtf_chunk"]))
    print("- MoE chunk %d: fraction of the memory-bandwidth bound %.2f (calls: %s; weights read %.1f MB per chunk: the "
          "experts the routing touched and every other parameter; read bandwidth %.1f GB/s; target >= 0.7)" % (
              a.chunk_size, m["chunk_fraction_of_bandwidth_bound"],
              ", ".join("%.2f" % f for f in m["chunk_fraction_of_bandwidth_bound_calls"]),
              m["weight_bytes_per_chunk"] / 1e6, m["read_bandwidth_gb_per_s"]))
    print("  (were every expert read every chunk, %.1f MB: %.2f of that bound)" % (
        m["weight_bytes_all"] / 1e6, m["chunk_fraction_of_all_weights_bound"]))
    print("- PyTorch reference, MoE / its dense: full %.2fx, chunk %.2fx" % (
        mt["rtf_full"] / summary["dense_torch"]["rtf_full"], mt["rtf_chunk"] / summary["dense_torch"]["rtf_chunk"]))
    q, qt = summary["moe_int8"], summary["moe_torch_int8"]
    print("- int8 experts, MoEKit fp32 / int8: full %.2fx, chunk %d %.2fx (target >= 1.8x at chunk 16)" % (
        m["rtf_full"] / q["rtf_full"], a.chunk_size, m["rtf_chunk"] / q["rtf_chunk"]))
    print("- int8 chunk %d: fraction of the memory-bandwidth bound %.2f (weights read %.1f MB per chunk, the experts "
          "as int8 + scales; read bandwidth %.1f GB/s)" % (a.chunk_size, q["chunk_fraction_of_bandwidth_bound"],
                                                           q["weight_bytes_per_chunk"] / 1e6,
                                                           q["read_bandwidth_gb_per_s"]))
    print("- PyTorch quantize_dynamic (experts, oneDNN) / MoEKit int8: full %.2fx, chunk %.2fx; QNNPACK: full %.2fx, "
          "chunk %.2fx" % (qt["rtf_full"] / q["rtf_full"], qt["rtf_chunk"] / q["rtf_chunk"],
                           summary["moe_torch_int8_qnnpack"]["rtf_full"] / q["rtf_full"],
                           summary["moe_torch_int8_qnnpack"]["rtf_chunk"] / q["rtf_chunk"]))
    print("- PyTorch, its own fp32 / its quantize_dynamic (oneDNN): full %.2fx, chunk %.2fx" % (
        mt["rtf_full"] / qt["rtf_full"], mt["rtf_chunk"] / qt["rtf_chunk"]))


if __name__ == "__main__":
    main()
