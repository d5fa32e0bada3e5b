#!/usr/bin/env python3
"""Builds a multi-task grapheme-to-phoneme corpus: words of 9 languages from
Debian's word lists, their IPA from espeak-ng; the task is the language.

Words are lower-case alphabetic entries of 3-20 letters (German nouns keep
their capital), drawn by a stable hash; espeak-ng reads one word per line
(`espeak-ng -q --ipa -v <voice>`, deterministic) and lines holding '(' (a
language switch) or '?' (a sound without an IPA symbol) are dropped. The
word decides the split, so no word is in two of train/valid/test.

  make_g2p.py OUT_DIR [--words N] [--test N] [--valid N]

writes OUT_DIR/{train,valid,test}.tsv (task<TAB>word<TAB>ipa) and
OUT_DIR/spm_text.txt, and prints the counts per language.
"""
import argparse
import os
import subprocess
import sys

from corpus_io import stable, write_lines, write_splits

# task: (word list under /usr/share/dict, its encoding, espeak-ng voice)
LANGS = {
    "en": ("american-english", "utf-8", "en-us"),
    "fr": ("french", "utf-8", "fr"),
    "de": ("ngerman", "utf-8", "de"),
    "es": ("spanish", "utf-8", "es"),
    "it": ("italian", "utf-8", "it"),
    "pt": ("portuguese", "utf-8", "pt"),
    "nl": ("dutch", "utf-8", "nl"),
    "pl": ("polish", "utf-8", "pl"),
    "da": ("danish", "utf-8", "da"),
}


def words_of(task, path, encoding, count):
    with open(path, encoding=encoding, errors="replace") as f:
        words = {w.strip() for w in f}
    keep = [w for w in words if 3 <= len(w) <= 20 and w.isalpha() and
            (w == w.lower() or (task == "de" and w[1:] == w[1:].lower()))]
    keep.sort(key=lambda w: stable(task + w))
    return keep[:count]


def ipa_of(words, voice):
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice], input="\n".join(words) + "\n",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    if len(out) != len(words):
        sys.exit(f"make_g2p: espeak-ng -v {voice} returned {len(out)} lines for {len(words)} words")
    return [line.strip() for line in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--words", type=int, default=12000, help="words per language before the split")
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--valid", type=int, default=300)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    splits = {"train": [], "valid": [], "test": []}
    print(f"{'lang':6} {'train':>7} {'valid':>7} {'test':>7}")
    for task, (name, encoding, voice) in LANGS.items():
        path = os.path.join("/usr/share/dict", name)
        if not os.path.exists(path):
            sys.exit(f"make_g2p: no word list {path} (scripts/setup-deps.sh --recipes installs them)")
        words = words_of(task, path, encoding, args.words)
        pairs = [(w, p) for w, p in zip(words, ipa_of(words, voice)) if p and "(" not in p and "?" not in p]
        test, valid, train = pairs[: args.test], pairs[args.test: args.test + args.valid], pairs[args.test + args.valid:]
        for split, rows in (("train", train), ("valid", valid), ("test", test)):
            splits[split] += [(task, w, p) for w, p in rows]
        print(f"{task:6} {len(train):7d} {len(valid):7d} {len(test):7d}")
    write_splits(args.out_dir, splits)
    write_lines(os.path.join(args.out_dir, "spm_text.txt"), [line for _, w, p in splits["train"] for line in (w, p)])

if __name__ == "__main__":
    main()
