#!/usr/bin/env python3
"""Streams a WAV file to `moekit serve asr` (or WeNet's runtime server) over
WeNet's WebSocket protocol and prints the results as they arrive.

Usage: scripts/asr_ws_client.py ws://127.0.0.1:10086 audio.wav
           [--realtime SPEED] [--continuous] [--chunk-ms 100]

The file must be 16-bit PCM mono at the model's rate. Each message sent is
--chunk-ms of audio, paced at SPEED x real time (0: as fast as the server
takes it). On a terminal partial results overwrite one line; final results
print on their own. Exits 1 with the server's message when it answers "failed".
Needs Debian's python3-websockets.
"""
import argparse
import asyncio
import json
import sys
import time
import wave

import websockets


async def stream(url, path, realtime, continuous, chunk_ms):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            sys.exit(f"{path}: need 16-bit mono PCM, got {8 * w.getsampwidth()}-bit x {w.getnchannels()} channels")
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    step = 2 * rate * chunk_ms // 1000
    finals = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"signal": "start", "nbest": 1, "continuous_decoding": continuous,
                                  "sample_rate": rate, "channels": 1}))

        async def send_audio():
            start = time.monotonic()
            for i, offset in enumerate(range(0, len(pcm), step)):
                if realtime > 0:
                    delay = start + i * chunk_ms / 1000 / realtime - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send(pcm[offset:offset + step])
            await ws.send(json.dumps({"signal": "end"}))

        sender = None
        started = time.monotonic()
        async for message in ws:
            reply = json.loads(message)
            if reply.get("status") != "ok":
                print(f"\nserver: {reply.get('message')}", file=sys.stderr)
                return 1
            kind = reply.get("type")
            if kind == "server_ready":
                sender = asyncio.ensure_future(send_audio())
            elif kind in ("partial_result", "final_result"):
                text = json.loads(reply["nbest"])[0]["sentence"]
                stamp = f"{time.monotonic() - started:5.1f} s"
                if kind == "partial_result" and sys.stdout.isatty():
                    print(f"\r  partial {stamp}: {text}"[:160].ljust(100), end="", flush=True)
                elif kind == "partial_result":
                    print(f"  partial {stamp}: {text}", flush=True)
                else:
                    finals.append(text)
                    print(f"\r  final   {stamp}: {text}".ljust(100) if sys.stdout.isatty()
                          else f"  final   {stamp}: {text}", flush=True)
            elif kind == "speech_end":
                break
        if sender is not None:
            await sender
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("wav")
    parser.add_argument("--realtime", type=float, default=1.0, help="pace: x real time (0 = unpaced)")
    parser.add_argument("--continuous", action="store_true", help="one final result per sentence")
    parser.add_argument("--chunk-ms", type=int, default=100)
    args = parser.parse_args()
    sys.exit(asyncio.run(stream(args.url, args.wav, args.realtime, args.continuous, args.chunk_ms)))


if __name__ == "__main__":
    main()
