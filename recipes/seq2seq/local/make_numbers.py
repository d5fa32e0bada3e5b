#!/usr/bin/env python3
"""Builds a multi-task number verbalization corpus: a number written in
digits to its cardinal in words, in several languages; the task is the
language. The words come from the CLDR spell-out rules of ICU (Debian's
python3-icu), the rules a text-to-speech or speech-recognition front end
uses to say numbers.

Distinct numbers are drawn log-uniformly from 0 to --max-number by a
stable hash, so short numbers are not one in a thousand (of the demo's
2610 numbers up to 9999, all 100 of one or two digits are drawn, and 717
of three); the first drawn are the test set, then validation, then
training, so no number is in two splits. The digits are zero-padded to the
width of --max-number ("0013" for 13 up to 9999), as on a form or a meter:
a digit's position then gives its place value, which a small model learns
in minutes; unpadded, it must first learn to count the digits from the
end, and does not in the same steps (the demo's token/task model at
learning rate 0.004: chrF 64 against 95). ICU's soft hyphens (U+00AD, the
break points it marks inside compounds such as German "neun-hundert") are
removed.

  make_numbers.py OUT_DIR [--langs de,fr,...] [--max-number N] [--train N] [--test N] [--valid N]

writes OUT_DIR/{train,valid,test}.tsv (task<TAB>digits<TAB>words) and
OUT_DIR/spm_text.txt, and prints the counts per language.
"""
import argparse
import math
import os
import sys

from corpus_io import stable, write_lines, write_splits

def numbers(count, largest, salt):
    """count distinct numbers in 0..largest, log-uniform, fixed by salt."""
    chosen, seen, i = [], set(), 0
    while len(chosen) < count:
        u = int(stable(f"{salt}:{i}")[:12], 16) / float(16 ** 12)
        i += 1
        n = int(math.exp(u * math.log(largest + 2))) - 1
        if n not in seen:
            seen.add(n)
            chosen.append(n)
    return chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--langs", default="de,fr,es,it,sv,ru", help="comma-separated ICU locales, one task each")
    ap.add_argument("--max-number", type=int, default=999999, help="the largest number drawn")
    ap.add_argument("--train", type=int, default=2500, help="training numbers per language")
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--valid", type=int, default=50)
    args = ap.parse_args()
    for name in ("train", "test", "valid"):
        if getattr(args, name) < 1:
            sys.exit(f"make_numbers: --{name} must be at least 1, got {getattr(args, name)}")
    total = args.train + args.test + args.valid
    if not 9 <= args.max_number <= 10 ** 15:
        sys.exit(f"make_numbers: --max-number must be between 9 and 10^15, got {args.max_number}")
    if total > (args.max_number + 1) // 2:
        sys.exit(f"make_numbers: {total} numbers per language is more than half of 0-{args.max_number}")
    try:
        import icu
    except ImportError:
        sys.exit("make_numbers: python3-icu is missing (scripts/setup-deps.sh --recipes installs it)")
    langs = [l for l in args.langs.split(",") if l]
    available = {str(loc) for loc in icu.Locale.getAvailableLocales()}
    os.makedirs(args.out_dir, exist_ok=True)
    # One draw of numbers for every language, split by number: the test
    # numbers are unseen in training in every language.
    drawn = numbers(total, args.max_number, "numbers")
    split_of = {}
    for n in drawn:
        split_of[n] = "test" if len(split_of) < args.test else (
            "valid" if len(split_of) < args.test + args.valid else "train")
    width = len(str(args.max_number))
    rows = {"train": [], "valid": [], "test": []}
    print(f"{'lang':6} {'train':>7} {'valid':>7} {'test':>7}")
    for lang in langs:
        if lang not in available:
            sys.exit(f"make_numbers: ICU has no locale '{lang}'")
        spell = icu.RuleBasedNumberFormat(icu.URBNFRuleSetTag.SPELLOUT, icu.Locale(lang))
        counts = {"train": 0, "valid": 0, "test": 0}
        for n in drawn:
            words = spell.format(n).replace("\u00ad", "").strip()
            if not words or "\t" in words or "\n" in words:
                sys.exit(f"make_numbers: ICU spelled {n} in '{lang}' as {words!r}")
            rows[split_of[n]].append((lang, str(n).zfill(width), words))
            counts[split_of[n]] += 1
        print(f"{lang:6} {counts['train']:7d} {counts['valid']:7d} {counts['test']:7d}")
    write_splits(args.out_dir, rows)
    write_lines(os.path.join(args.out_dir, "spm_text.txt"),
                [line for _, digits, words in rows["train"] for line in (digits, words)])

if __name__ == "__main__":
    main()
