#!/usr/bin/env python3
"""Builds a multilingual translation corpus (English -> several languages)
from the gettext catalogs that Debian packages install.

Every /usr/share/locale/<lang>/LC_MESSAGES/*.mo holds English messages and
their translations. Pairs are cleaned of what is not a sentence: format
strings (%s, %1$d, {0}, ${var}), markup and entities, mnemonic markers
(_File, &Open), line breaks, plural and context entries, untranslated or
very short/long messages; whitespace is normalised and duplicates dropped.
The English source decides the split (a stable hash), so no source sentence
is shared between train, valid and test, whatever the target language.

  make_corpus.py OUT_DIR [--langs de,fr,...] [--max-train N] [--test N] [--valid N]

writes OUT_DIR/{train,valid,test}.tsv (task<TAB>source<TAB>target, the task
being the target language), OUT_DIR/spm_text.txt (sources and targets for
the shared SentencePiece model) and prints the counts per language.
"""
import argparse
import os
import re
import struct
import sys

from corpus_io import stable, write_lines, write_splits

LOCALE = "/usr/share/locale"

FORMAT = re.compile(r"%[-+ #0-9.*$lhLqjzt]*[a-zA-Z%]|\{[^}]*\}|\$\{|\$[A-Za-z_]|\\[nt]")
MARKUP = re.compile(r"<[^>]*>|&[a-zA-Z#0-9]+;")
MNEMONIC = re.compile(r"(?<![\w&])[_&](?=\w)")


def read_mo(path):
    """The (msgid, msgstr) pairs of a GNU .mo file (either byte order)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 28:
        return
    for order in ("<", ">"):
        magic, _, count, ids_at, strs_at = struct.unpack(order + "5I", data[:20])
        if magic == 0x950412DE:
            break
    else:
        return
    if ids_at + 8 * count > len(data) or strs_at + 8 * count > len(data):
        return
    for i in range(count):
        id_len, id_off = struct.unpack(order + "2I", data[ids_at + 8 * i: ids_at + 8 * i + 8])
        str_len, str_off = struct.unpack(order + "2I", data[strs_at + 8 * i: strs_at + 8 * i + 8])
        if id_off + id_len > len(data) or str_off + str_len > len(data):
            continue
        yield data[id_off: id_off + id_len], data[str_off: str_off + str_len]


def clean(text):
    """A one-line sentence, or None when the message is not one."""
    if "\n" in text or "\t" in text or "\r" in text:
        return None
    if FORMAT.search(text) or MARKUP.search(text):
        return None
    text = MNEMONIC.sub("", text)
    text = " ".join(text.split())
    return text


def usable(source, target):
    if not source or not target or source == target:
        return False
    if not 8 <= len(source) <= 160 or not 2 <= len(target) <= 240:
        return False
    if len(source.split()) < 2:  # single words are mostly menu labels
        return False
    if not re.search(r"[A-Za-z]{2}", source) or source.isupper():
        return False
    ratio = len(target) / len(source)
    return 0.3 <= ratio <= 3.5


def pairs_for(lang):
    seen = {}
    folder = os.path.join(LOCALE, lang, "LC_MESSAGES")
    if not os.path.isdir(folder):
        return seen
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".mo"):
            continue
        for raw_id, raw_str in read_mo(os.path.join(folder, name)):
            if not raw_id or b"\x00" in raw_id or b"\x04" in raw_id or b"\x00" in raw_str:
                continue  # the header, plural forms, messages with a context
            try:
                source, target = raw_id.decode("utf-8"), raw_str.decode("utf-8")
            except UnicodeDecodeError:
                continue
            source, target = clean(source), clean(target)
            if source is None or target is None or not usable(source, target):
                continue
            seen.setdefault(source, target)  # the first translation of a source wins
    return seen


def split_of(source, test_pct, valid_pct):
    h = int(stable(source)[:8], 16) % 10000
    if h < test_pct * 100:
        return "test"
    if h < (test_pct + valid_pct) * 100:
        return "valid"
    return "train"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--langs", default="de,fr,es,it,sv,ru")
    ap.add_argument("--max-train", type=int, default=0, help="training pairs per language at most (0: all)")
    ap.add_argument("--test", type=int, default=400, help="test pairs per language at most")
    ap.add_argument("--valid", type=int, default=200, help="validation pairs per language at most")
    args = ap.parse_args()
    langs = [l for l in args.langs.split(",") if l]
    os.makedirs(args.out_dir, exist_ok=True)
    splits = {"train": [], "valid": [], "test": []}
    limits = {"train": args.max_train, "valid": args.valid, "test": args.test}
    print(f"{'lang':6} {'train':>7} {'valid':>7} {'test':>7}")
    for lang in langs:
        pairs = pairs_for(lang)
        if not pairs:
            sys.exit(f"make_corpus: no usable catalog entries for '{lang}' under {LOCALE}/{lang}")
        counts = {}
        # Sources in hash order: a stable, shuffled selection under the limits.
        ordered = sorted(pairs, key=lambda s: stable(lang + s))
        for split in splits:
            rows = [s for s in ordered if split_of(s, 3, 2) == split]
            if limits[split] > 0:
                rows = rows[: limits[split]]
            counts[split] = len(rows)
            splits[split] += [(lang, s, pairs[s]) for s in rows]
        print(f"{lang:6} {counts['train']:7d} {counts['valid']:7d} {counts['test']:7d}")
    write_splits(args.out_dir, splits)
    spm_text, sources = [], set()
    for _, s, t in splits["train"]:
        if s not in sources:
            sources.add(s)
            spm_text.append(s)
        spm_text.append(t)
    write_lines(os.path.join(args.out_dir, "spm_text.txt"), spm_text)
    # The promise of the split: no English source in two splits.
    seen = {split: {s for _, s, _ in rows} for split, rows in splits.items()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["valid"]) and not (seen["valid"] & seen["test"])


if __name__ == "__main__":
    main()
