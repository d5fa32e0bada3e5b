#!/usr/bin/env python3
"""Long audio: time and peak memory of `moekit transcribe` on 1, 10 and 60
minutes of audio, whole-file and streaming, with the default segment length
(--max-segment 30) and, where it stays affordable, without segmenting
(--max-segment 0), side by side in one run.

The model is the ASR benchmark's (`moekit bench asr` defaults: d 256,
12 blocks, 8 experts top-2, CTC only, random weights; CTC prefix beam
search); the audio alternates 0.2-2 s bursts of noise with 0.3 s pauses,
like speech between breaths. Each command runs in its own process under
GNU time, which reports its peak RSS.
Prints a markdown table: seconds, seconds per audio minute, peak RSS.
"""
import argparse
import os
import random
import struct
import subprocess
import tempfile
import time
import wave

from bench_env import bench_env


def write_audio(path, minutes, rate=16000, channels=1, seed=1):
    rng = random.Random(seed)
    frame = 2 * channels
    noise = bytes(b for _ in range(rate * 2 * channels) for b in struct.pack("<h", rng.randint(-3000, 3000)))
    pause = bytes(frame * int(0.3 * rate))
    total = int(minutes * 60 * rate) * frame
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        written = 0
        while written < total:
            burst = noise[: frame * int(rng.uniform(0.2, 2.0) * rate)] + pause
            burst = burst[: total - written]
            w.writeframes(burst)
            written += len(burst)


def run_measured(cmd, env):
    """Wall seconds, peak RSS (MB, GNU time's %M: the child's own, not the
    high-water mark a forked copy of this Python process would report),
    exit code and the last line of stderr."""
    start = time.monotonic()
    res = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - start
    lines = res.stderr.strip().splitlines()
    rss = [float(l.split()[1]) / 1024.0 for l in lines if l.startswith("MAXRSS ")]
    other = [l for l in lines if not l.startswith("MAXRSS ") and not l.startswith("Command ")]
    return seconds, rss[-1] if rss else float("nan"), res.returncode, other[-1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moekit", default="build/moekit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--unsegmented-up-to", type=float, default=10,
                    help="run --max-segment 0 only up to this many minutes (longer needs tens of GB)")
    ap.add_argument("--cd-minutes", type=float, nargs="*", default=[60],
                    help="also decode recordings of this many minutes as 44.1 kHz stereo (read, mixed down and "
                         "resampled block by block)")
    args = ap.parse_args()
    env = bench_env(args.moekit, args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([args.moekit, "--threads", "1", "bench", "asr", "--seconds", "1", "--rounds", "1",
                        "--save-model", model], env=env, check=True, capture_output=True)
        cases = [(m, 16000, 1) for m in args.minutes] + [(m, 44100, 2) for m in args.cd_minutes]
        for minutes, rate, channels in cases:
            wav = f"{tmp}/{minutes:g}min_{rate}_{channels}.wav"
            write_audio(wav, minutes, rate, channels)
            audio = f"{minutes:g} min" + (f" ({rate / 1000:g} kHz stereo)" if channels == 2 else "")
            # The benchmark model has CTC only (no attention decoder).
            for mode, extra in (("whole file", ["--mode", "ctc_prefix_beam_search"]),
                                ("streaming, chunk 16", ["--mode", "ctc_prefix_beam_search", "--chunk-size", "16",
                                                         "--streaming"])):
                unsegmented = channels == 1 and minutes <= args.unsegmented_up_to
                for segment in (["30"] + (["0"] if unsegmented else [])):
                    cmd = [args.moekit, "--threads", str(args.threads), "transcribe", model, wav, "--max-segment",
                           segment] + extra
                    seconds, rss_mb, rc, err = run_measured(cmd, env)
                    rows.append((audio, minutes, mode, segment, seconds, rss_mb, rc, err))
                    print(f"{audio}, {mode}, --max-segment {segment}: {seconds:.1f} s, {rss_mb:.0f} MB, "
                          f"exit {rc} {' '.join(err) if rc else ''}", flush=True)
            os.remove(wav)
    print(f"\nthreads {args.threads}; model: `moekit bench asr` defaults (random weights)\n")
    print("| audio | decoding | --max-segment | seconds | s per audio minute | peak RSS MB | exit |")
    print("|---|---|---|---|---|---|---|")
    for audio, minutes, mode, segment, seconds, rss_mb, rc, _ in rows:
        print(f"| {audio} | {mode} | {segment} | {seconds:.1f} | {seconds / minutes:.2f} | {rss_mb:.0f} | {rc} |")


if __name__ == "__main__":
    main()
