#!/usr/bin/env python3
"""Builds a synthetic English speech corpus on this machine, deterministically.

Text (--task): `fortunes`, sentences from the Debian `fortunes` package,
lower-cased and reduced to letters, apostrophes and spaces, deduplicated (an
open vocabulary); or `commands`, spoken commands from a small grammar (alarms,
timers, calls, lights, tracks, weather, dialled digits: a closed vocabulary of
about 90 words that minutes of training can learn), each sentence once. Speech: espeak-ng voices and
variants with varied speed and pitch, some flite voices, and sox augmentation
(noise, tempo, telephone band). The test set is spoken only by voices that
never appear in training or validation, so it measures unseen speakers.

Writes <out>/{train,cv,test}/data.list (WeNet JSON lines: key, wav, txt) and
the 16 kHz mono 16-bit wavs under <out>/wav/; for `commands`, also the
grammar's words, one per line, in <out>/words.txt (the lexicon that
`moekit eval/transcribe/serve --lexicon` decode with).
"""
import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

FORTUNES = "/usr/share/games/fortunes"
VARIANT_DIR = "/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/!v"
# Accents heard in training; the test set uses the held-out ones only.
TRAIN_ACCENTS = ["en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
TEST_ACCENTS = ["en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd"]
FLITE_VOICES = ["kal16", "awb", "rms", "slt"]  # slt is the only female one


def sentences(min_words, max_words):
    seen, out = set(), []
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if "." in name or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="ignore") as f:
            text = f.read()
        for entry in text.split("\n%\n"):
            for s in re.split(r"[.!?;:]\s+", entry.replace("\n", " ")):
                s = s.lower().replace("`", "'")
                if re.search(r"[0-9@#$%&*_=+<>/\\|~\[\]{}]", s):
                    continue
                s = re.sub(r"[^a-z' ]", " ", s)
                s = re.sub(r"\s+", " ", s).strip(" '")
                words = s.split()
                if min_words <= len(words) <= max_words and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["twenty", "thirty", "forty", "fifty"]
NAMES = ["anna", "peter", "maria", "david", "sophie", "james", "laura", "michael"]
ROOMS = ["kitchen", "bedroom", "living room", "garage", "office", "bathroom"]
DEVICES = ["lights", "heater", "fan", "radio"]
CITIES = ["london", "paris", "berlin", "madrid", "tokyo", "boston"]
DIGITS = ["zero"] + ONES


def number(n):
    """English words for 1 <= n <= 59."""
    if n < 10:
        return ONES[n - 1]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + ONES[n % 10 - 1])


def clock(rng):
    hour = number(rng.randint(1, 12))
    minute = rng.choice([0, 15, 30, 45, rng.randint(1, 59)])
    return hour + (" o'clock" if minute == 0 else " oh " + ONES[minute - 1] if minute < 10 else " " + number(minute))


def command(rng):
    k = rng.randrange(8)
    if k == 0:
        return "set an alarm for " + clock(rng)
    if k == 1:
        n = rng.randint(1, 59)
        return "set a timer for %s %s" % (number(n), rng.choice(["minutes", "seconds"]) if n > 1 else rng.choice(["minute", "second"]))
    if k == 2:
        return "call " + rng.choice(NAMES) + (" at " + clock(rng) if rng.random() < 0.5 else "")
    if k == 3:
        return "turn %s the %s %s" % (rng.choice(["on", "off"]), rng.choice(ROOMS), rng.choice(DEVICES))
    if k == 4:
        return "play track " + number(rng.randint(1, 59))
    if k == 5:
        return "what is the weather in " + rng.choice(CITIES) + rng.choice(["", " today", " tomorrow"])
    if k == 6:
        return "dial " + " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 5)))
    return "turn the volume %s" % rng.choice(["up", "down"]) + rng.choice(["", " a little", " to " + number(rng.randint(1, 10))])


# Every word the command grammar speaks (its lexicon: words.txt).
COMMAND_WORDS = sorted(set(" ".join(
    ONES + TEENS + TENS + NAMES + ROOMS + DEVICES + CITIES + DIGITS + [
        "set an alarm for o'clock oh a timer minutes seconds minute second call at turn on off the play track",
        "what is weather in today tomorrow dial volume up down little to"]).split()))


def commands(rng, count):
    seen, out = set(), []
    for _ in range(count * 50):
        s = command(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == count:
                break
    unknown = set(" ".join(out).split()) - set(COMMAND_WORDS)
    assert not unknown, "COMMAND_WORDS lacks %s" % sorted(unknown)
    return out


def variants():
    names = [v for v in sorted(os.listdir(VARIANT_DIR)) if " " not in v]
    return names


def synthesize(job):
    text, path, spec = job
    if os.path.exists(path):
        return path
    tmp = path + ".tmp.wav"
    effects = spec.get("sox", [])
    if "edge_silence" in spec:
        # The synthesizers' leading and trailing silence cut (everything
        # under 0.5% of full scale), then EDGE seconds put back on each side.
        edge = "%.3f" % spec["edge_silence"]
        effects = ["silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
                   "pad", edge, edge] + effects
    if spec["engine"] == "espeak":
        voice = spec["voice"] + ("+" + spec["variant"] if spec.get("variant") else "")
        cmd = ["espeak-ng", "-v", voice, "-s", str(spec["speed"]), "-p", str(spec["pitch"]), "--stdout", text]
        src = subprocess.run(cmd, check=True, capture_output=True).stdout
        subprocess.run(["sox", "-q", "-V1", "-R", "-G", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", tmp] + effects,
                       input=src, check=True)
    else:
        raw = path + ".flite.wav"
        subprocess.run(["flite", "-voice", spec["voice"], "--setf", "duration_stretch=%.2f" % spec["stretch"],
                        "-t", text, "-o", raw], check=True, capture_output=True)
        subprocess.run(["sox", "-q", "-V1", "-R", "-G", raw, "-r", "16000", "-c", "1", "-b", "16", tmp] + effects, check=True)
        os.remove(raw)
    os.replace(tmp, path)
    return path


def speaker(rng, accents, flite_voices, variant_names):
    if rng.random() < 0.2:
        return {"engine": "flite", "voice": rng.choice(flite_voices), "stretch": rng.uniform(0.85, 1.25)}
    return {"engine": "espeak", "voice": rng.choice(accents), "variant": rng.choice(variant_names),
            "speed": rng.randint(130, 200), "pitch": rng.randint(25, 75)}


def augment(rng, spec):
    r = rng.random()
    if r < 0.15:
        spec["sox"] = ["tempo", "%.2f" % rng.uniform(0.9, 1.1)]
    elif r < 0.25:
        spec["sox"] = ["bandpass", "1800", "1400h"]
    elif r < 0.35:
        spec["sox"] = ["reverb", "30", "50", "60"]
    return spec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--task", choices=["fortunes", "commands"], default="fortunes")
    p.add_argument("--held-out-flite", choices=FLITE_VOICES, default="slt",
                   help="the flite voice heard only in the test set (the others speak in training)")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--cv", type=int, default=200)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--edge-silence", type=float, default=None, metavar="SECONDS",
                   help="cut the leading and trailing silence down to SECONDS on each side (default: keep it as "
                   "synthesized)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.edge_silence is not None and not 0 <= a.edge_silence <= 5:
        p.error("--edge-silence must be between 0 and 5 seconds, got %g" % a.edge_silence)

    rng = random.Random(a.seed)
    need = a.train + a.cv + a.test
    texts = sentences(a.min_words, a.max_words) if a.task == "fortunes" else commands(random.Random(a.seed), need)
    if len(texts) < need:
        sys.exit("make_corpus: only %d sentences available, %d needed" % (len(texts), need))
    rng.shuffle(texts)
    all_variants = variants()
    # Hold some variants out of training as well, so test speakers are unseen twice over.
    test_variants = all_variants[::5]
    train_variants = [v for v in all_variants if v not in test_variants]
    test_flite = [a.held_out_flite]
    train_flite = [v for v in FLITE_VOICES if v != a.held_out_flite]
    os.makedirs(os.path.join(a.out, "wav"), exist_ok=True)
    jobs, lists = [], {"train": [], "cv": [], "test": []}
    splits = [("train", a.train), ("cv", a.cv), ("test", a.test)]
    start = 0
    for split, count in splits:
        for i in range(count):
            text = texts[start + i]
            if split == "test":
                spec = speaker(rng, TEST_ACCENTS, test_flite, test_variants)
            else:
                spec = augment(rng, speaker(rng, TRAIN_ACCENTS, train_flite, train_variants))
            if a.edge_silence is not None:
                spec["edge_silence"] = a.edge_silence
            tag = hashlib.sha1((text + json.dumps(spec, sort_keys=True)).encode()).hexdigest()[:10]
            key = "%s_%05d_%s" % (split, i, tag)
            path = os.path.join(a.out, "wav", key + ".wav")
            jobs.append((text, path, spec))
            lists[split].append({"key": key, "wav": os.path.join("..", "wav", key + ".wav"), "txt": text})
        start += count
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for n, _ in enumerate(pool.map(synthesize, jobs), 1):
            if n % 500 == 0:
                print("make_corpus: %d/%d utterances" % (n, len(jobs)), file=sys.stderr)
    for split, rows in lists.items():
        os.makedirs(os.path.join(a.out, split), exist_ok=True)
        tmp = os.path.join(a.out, split, "data.list.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, os.path.join(a.out, split, "data.list"))
    if a.task == "commands":
        tmp = os.path.join(a.out, "words.txt.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(w + "\n" for w in COMMAND_WORDS))
        os.replace(tmp, os.path.join(a.out, "words.txt"))
    print("make_corpus: %d train, %d cv, %d test utterances in %s (%d sentences available)"
          % (a.train, a.cv, a.test, a.out, len(texts)), file=sys.stderr)


if __name__ == "__main__":
    main()
