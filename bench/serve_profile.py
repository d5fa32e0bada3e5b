#!/usr/bin/env python3
"""Where a streaming server's CPU time goes: reads `perf script` of a
recording made by `run_serve_bench.py --perf DIR` and counts each sample
once, in the first of these phases whose function appears on its stack:
final results (attention rescoring), the encoder step (the batched chunks),
the CTC output layer, the CTC prefix beam search, the filterbank, the rest
of a stream's decoding, WebSocket I/O. Samples perf could not unwind (no
frame of MoEKit's, mostly oneDNN's JIT-compiled GEMMs inside encoder steps)
are counted as "not unwound".

    perf script -i DIR/moe_bf16_40_b8.data | c++filt | bench/serve_profile.py
"""
import collections
import sys

PHASES = [
    ("final result (rescoring)", ["StreamingSession::finish"]),
    ("encoder step", ["forward_chunks"]),
    ("CTC output layer", ["ctc_log_probs"]),
    ("CTC prefix beam search", ["CtcPrefixBeamSearch"]),
    ("filterbank", ["compute_fbank"]),
    ("rest of a stream's decoding", ["Stream::decode_pending"]),
    ("WebSocket I/O", ["boost::beast", "boost::asio"]),
]


def phase(frames):
    for name, keys in PHASES:
        if any(k in f for f in frames for k in keys):
            return name
    return "other (kernel, allocator, threads)" if any("moekit" in f for f in frames) else "not unwound"


def main():
    counts = collections.Counter()
    frames = []
    for line in sys.stdin:
        if line.strip():
            frames.append(line)
            continue
        if frames:
            counts[phase(frames[1:])] += 1
        frames = []
    if frames:
        counts[phase(frames[1:])] += 1
    total = sum(counts.values()) or 1
    print(f"| phase | share of samples ({total}) |\n|---|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")


if __name__ == "__main__":
    main()
