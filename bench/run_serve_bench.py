#!/usr/bin/env python3
"""Streaming server load: how many concurrent real-time streams `moekit
serve asr` holds, and the partial-result latency and CPU use at each load.

The models are the ASR benchmark's (`moekit bench asr --save-model`: d 256,
12 blocks, 8 experts top-2, CTC only, random weights) and its equal-FLOPs
dense twin (FFN 2 x 2048). Two server set-ups, side by side at each load:
`batched` (the encoder steps of streams whose chunks are ready together run
as one step: --batch-streams 64) and `unbatched` (each stream's chunk its
own step, as one recognizer per stream: --batch-streams 1); both run
--decode-threads steps at once (--threads of this script, one per core) on
one intra-op thread each, so only the batching differs. For each model, each number of streams N and
each set-up the server starts afresh, N clients in one asyncio loop each
send the same noise-burst audio in 100 ms messages at real time, staggered
over the first second, and the script records when each message went out
and when each partial result came back.

Latency of a partial result: its arrival minus the sending time of the
message that completed its chunk. The script knows which messages complete
a chunk from the front end's arithmetic (25 ms / 10 ms fbank frames, the
encoder's window of (chunk - 1) * subsampling + right context + 1 frames,
stride chunk * subsampling), and matches partial results to them in order
(a chunk whose partial would be empty sends none; then later partials are
matched to earlier messages, which overstates latency, never understates;
the "partials / chunks" column says how many chunks got a partial result:
below 1.00 some latencies are overstated).
CPU: the server process's user + system time over the run / wall time, and
the same for this script's clients (they share the machine). Memory: the
server's resident set (VmRSS) once it listens (model loaded, warmed up) and
when the streams have ended.
Prints a markdown table per model: streams, set-up, p50 / p95 / max partial
latency, final-result latency (end signal to final result), CPU use, resident memory, and
chunks per encoder step (from the server's closing log line); then, per
model and set-up, the most streams held with p95 partial latency under
--p95-limit seconds (of the loads tried).
Needs Debian's python3-websockets.
"""
import argparse
import asyncio
import json
import os
import shutil
import re
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import websockets
except ImportError:
    sys.exit("run_serve_bench.py: needs Debian's python3-websockets "
             "(bash scripts/setup-deps.sh --recipes installs it)")

from run_long_audio_bench import write_audio


def chunk_messages(total_samples, message, chunk, subsampling=4, right_context=6):
    """Indices of the messages after which the server runs >= 1 new chunk."""
    window = (chunk - 1) * subsampling + right_context + 1
    stride = chunk * subsampling
    done, k, out = 0, 0, []
    for m in range((total_samples + message - 1) // message):
        sent = min((m + 1) * message, total_samples)
        frames = 0 if sent < 400 else 1 + (sent - 400) // 160
        new = 0
        while frames >= window + k * stride:
            k += 1
            new += 1
        if new:
            out.append(m)
    return out


def resident_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(url, pcm, delay, message, completing, result):
    await asyncio.sleep(delay)
    sent_at = []
    partial_latency = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"signal": "start", "nbest": 1}))
        assert json.loads(await ws.recv())["type"] == "server_ready"

        async def send():
            start = time.monotonic()
            for i, offset in enumerate(range(0, len(pcm), 2 * message)):
                wait = start + i * message / 16000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sent_at.append(time.monotonic())
                await ws.send(pcm[offset:offset + 2 * message])
            sent_at.append(time.monotonic())
            await ws.send(json.dumps({"signal": "end"}))

        sender = asyncio.ensure_future(send())
        matched = 0
        final_latency = None
        async for raw in ws:
            reply = json.loads(raw)
            now = time.monotonic()
            if reply.get("status") != "ok":
                raise RuntimeError(reply.get("message"))
            if reply["type"] == "partial_result" and matched < len(completing):
                partial_latency.append(now - sent_at[min(completing[matched], len(sent_at) - 1)])
                matched += 1
            elif reply["type"] == "final_result":
                final_latency = now - sent_at[-1]
            elif reply["type"] == "speech_end":
                break
        await sender
    result["partial"].extend(partial_latency)
    result["final"].append(final_latency)
    result["chunks"] += len(completing)


async def load(url, pcm, streams, message, completing):
    result = {"partial": [], "final": [], "chunks": 0}
    await asyncio.gather(*[one_stream(url, pcm, i / max(streams, 1), message, completing, result)
                           for i in range(streams)])
    return result


def start_server(moekit, model, threads, decode_threads, batch_streams, chunk, window_ms=None):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([moekit, "--threads", str(threads), "serve", "asr", model, "--host", "127.0.0.1",
                             "--port", "0", "--chunk-size", str(chunk), "--decode-threads", str(decode_threads),
                             "--batch-streams", str(batch_streams), "--max-connections", "1000"] +
                            ([] if window_ms is None else ["--batch-window-ms", str(window_ms)]), stderr=log)
    for _ in range(600):
        time.sleep(0.1)
        text = open(log.name).read()
        m = re.search(r"on port (\d+)", text)
        if m:
            return proc, int(m.group(1)), log.name
        if proc.poll() is not None:
            raise RuntimeError(text)
    raise RuntimeError("server did not start")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--streams", default="1,2,4,8,16", help="comma-separated loads")
    ap.add_argument("--seconds", type=float, default=10, help="audio per stream")
    ap.add_argument("--threads", type=int, default=2,
                    help="cores for the server: encoder steps running at once (--decode-threads)")
    ap.add_argument("--p95-limit", type=float, default=0.5)
    ap.add_argument("--setups", default="",
                    help="instead of the two default set-ups: 'name=threads,decode_threads,batch_streams[,window_ms];...'")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--models", default="moe,dense", help="of moe, dense, moe_int8, moe_bf16 (the MoE model after "
                    "`moekit quantize --experts int8` / `bf16`), moe_balanced, moe_balanced_bf16 (its routers "
                    "spread by bench/balance_routers.py first)")
    ap.add_argument("--bench-args", default="", help="extra `bench asr` shape options, e.g. '--blocks 2'")
    ap.add_argument("--perf", default="", help="a folder: record each server with `perf record --call-graph "
                    "dwarf` into <folder>/<model>_<streams>_<set-up>.data (bench/serve_profile.py reads them)")
    a = ap.parse_args()
    # The saved models (1.1 GB each at the default size) go when the run ends.
    work = tempfile.mkdtemp(prefix="serve_bench_")
    try:
        run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    shapes = {"moe": ["--experts", "8", "--top-k", "2", "--ffn", "2048"], "dense": ["--experts", "0", "--ffn", "4096"]}
    wav = os.path.join(work, "a.wav")
    write_audio(wav, a.seconds / 60)
    with open(wav, "rb") as f:
        pcm = f.read()[44:]
    message = 1600
    completing = chunk_messages(len(pcm) // 2, message, a.chunk_size)
    setups = {"batched": (1, a.threads, 64), "unbatched": (1, a.threads, 1)}  # threads, decode threads, batch
    if a.setups:
        setups = {k: tuple(int(x) for x in v.split(",")) for k, v in (e.split("=") for e in a.setups.split(";"))}
    print(f"`serve asr`, {a.seconds:.0f} s real-time streams in 100 ms messages, chunk {a.chunk_size}, "
          f"--threads 1 --decode-threads {a.threads}; batched: --batch-streams 64, unbatched: --batch-streams 1")
    held = {}
    for name in a.models.split(","):
        model = os.path.join(work, name)
        # moe_int8, moe_bf16: moe after `quantize --experts int8 / bf16`;
        # moe_balanced[_bf16]: its routers spread by balance_routers.py (on
        # the benchmark's 10 s of noise features) before that.
        base, *steps = name.split("_")
        stored = steps[-1] if steps and steps[-1] in ("int8", "bf16") else ""
        floats = os.path.join(work, base + "_float")
        feats = os.path.join(work, "feats.safetensors")
        subprocess.run([a.moekit, "--threads", "1", "bench", "asr", "--rounds", "1", "--seconds", "10",
                        "--save-model", floats, "--save-feats", feats] + shapes[base] + a.bench_args.split(),
                       check=True, stdout=subprocess.DEVNULL)
        if "balanced" in steps:
            here = os.path.dirname(os.path.abspath(__file__))
            subprocess.run([sys.executable, os.path.join(here, "balance_routers.py"), floats, floats + "_balanced",
                            "--feats", feats], check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(floats)
            os.rename(floats + "_balanced", floats)
        if stored:
            subprocess.run([a.moekit, "quantize", floats, model, "--experts", stored],
                           check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(floats)
        else:
            os.rename(floats, model)
        print(f"\n{name}\n\n| streams | set-up | partial p50 (s) | p95 (s) | max (s) | final p95 (s) "
              f"| server CPU (cores) | client CPU (cores) | chunks per step | partials / chunks | server RSS listening / after (MB) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for streams in [int(s) for s in a.streams.split(",")]:
            for setup, (threads, decode_threads, batch, *window) in setups.items():
                proc, port, log = start_server(a.moekit, model, threads, decode_threads, batch, a.chunk_size,
                                               *window)
                perf = None
                try:
                    if a.perf:
                        os.makedirs(a.perf, exist_ok=True)
                        perf = subprocess.Popen(["perf", "record", "-F", "149", "--call-graph", "dwarf,16384", "-o",
                                                 os.path.join(a.perf, f"{name}_{streams}_{setup}.data"), "-p",
                                                 str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    rss0 = resident_mb(proc.pid)
                    cpu0, t0, client0 = cpu_seconds(proc.pid), time.monotonic(), time.process_time()
                    result = asyncio.run(load(f"ws://127.0.0.1:{port}", pcm, streams, message, completing))
                    cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
                    client_cpu = (time.process_time() - client0) / (time.monotonic() - t0)
                    rss1 = resident_mb(proc.pid)
                finally:
                    if perf:
                        perf.send_signal(2)
                        perf.wait()
                    proc.terminate()
                    proc.wait()
                m = re.search(r"\((\d+) chunks in (\d+) encoder steps\)", open(log).read())
                per_step = int(m.group(1)) / max(int(m.group(2)), 1) if m else float("nan")
                p = result["partial"]
                p95 = percentile(p, 0.95)
                if p95 < a.p95_limit:
                    held[(name, setup)] = max(held.get((name, setup), 0), streams)
                print(f"| {streams} | {setup} | {statistics.median(p):.3f} | {p95:.3f} | {max(p):.3f} | "
                      f"{percentile(result['final'], 0.95):.3f} | {cpu:.2f} | {client_cpu:.2f} | {per_step:.1f} | "
                      f"{len(p) / max(result['chunks'], 1):.2f} | {rss0:.0f} / {rss1:.0f} |", flush=True)
    print(f"\nMost streams held with p95 partial latency < {a.p95_limit} s (of the loads tried; 0: none):\n")
    names = list(setups)
    with_ratio = "unbatched" in setups and len(names) > 1
    print("| model | " + " | ".join(names) + (" | ratio to unbatched |" if with_ratio else " |"))
    print("|---|" + "---:|" * (len(names) + with_ratio))
    for name in a.models.split(","):
        counts = [held.get((name, setup), 0) for setup in names]
        row = f"| {name} | " + " | ".join(str(c) for c in counts) + " |"
        if with_ratio:
            u = held.get((name, "unbatched"), 0)
            best = max(c for s, c in zip(names, counts) if s != "unbatched")
            row += f" {best / u:.2f}x |" if u else " - |"
        print(row)


if __name__ == "__main__":
    main()
