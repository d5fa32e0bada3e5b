#!/usr/bin/env python3
"""Builds the LM corpus from text shipped in Debian packages.

Sources: every fortune database in /usr/share/games/fortunes (package
`fortunes`, `%`-separated entries) and, with --gcide-mb, the first megabytes
of the GNU Collaborative International Dictionary of English
(/usr/share/dictd/gcide.dict.dz, package `dict-gcide`), one entry per line.
Documents are whitespace-normalised, exact duplicates dropped, and split by a
hash of their text (stable across runs and machines) into train / valid.

  make_corpus.py OUT_DIR [--gcide-mb N] [--valid-percent P]
writes OUT_DIR/train.txt, OUT_DIR/valid.txt (one document per line) and
prints the counts.
"""
import argparse
import gzip
import hashlib
import os
import re
import sys

FORTUNES = "/usr/share/games/fortunes"
GCIDE = "/usr/share/dictd/gcide.dict.dz"


def fortune_docs():
    names = sorted(n for n in os.listdir(FORTUNES) if "." not in n and os.path.isfile(os.path.join(FORTUNES, n)))
    for name in names:
        with open(os.path.join(FORTUNES, name), encoding="utf-8", errors="replace") as f:
            for entry in re.split(r"\n%\n", f.read()):
                yield entry


def gcide_docs(megabytes):
    # Entries start at a line holding the headword alone; the markup is
    # plain text, so entries are taken as paragraphs.
    budget = megabytes * 1_000_000
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read(budget)
    for para in re.split(r"\n\s*\n", text):
        yield para


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--gcide-mb", type=int, default=0, help="megabytes of dict-gcide text to add (0: none)")
    ap.add_argument("--valid-percent", type=float, default=3.0)
    args = ap.parse_args()
    if not os.path.isdir(FORTUNES):
        sys.exit(f"make_corpus: {FORTUNES} missing: install the fortunes package (scripts/setup-deps.sh --recipes)")
    sources = [fortune_docs()]
    if args.gcide_mb > 0:
        if not os.path.exists(GCIDE):
            sys.exit(f"make_corpus: {GCIDE} missing: install dict-gcide")
        sources.append(gcide_docs(args.gcide_mb))
    seen = set()
    train, valid = [], []
    for source in sources:
        for doc in source:
            doc = re.sub(r"\s+", " ", doc).strip()
            if len(doc) < 20 or doc in seen:
                continue
            seen.add(doc)
            bucket = int(hashlib.sha1(doc.encode("utf-8")).hexdigest(), 16) % 10000
            (valid if bucket < args.valid_percent * 100 else train).append(doc)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, docs in (("train.txt", train), ("valid.txt", valid)):
        tmp = os.path.join(args.out_dir, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(docs) + "\n")
        os.replace(tmp, os.path.join(args.out_dir, name))
    chars = sum(len(d) for d in train)
    print(f"corpus: {len(train)} train / {len(valid)} valid documents, {chars / 1e6:.2f} M training characters")


if __name__ == "__main__":
    main()
