"""Writing a multi-task corpus as the recipe reads it, shared by the
make_*.py scripts: OUT_DIR/{train,valid,test}.tsv (task<TAB>source<TAB>
target, rows in a stable hashed order, so the files do not depend on the
order the rows were made in) and the text the shared SentencePiece model is
trained on. Every file is written to a temporary name and renamed, so a
killed run never leaves a half-written file behind for run.sh to skip to.
"""
import hashlib
import os


def stable(text):
    """A hash of text that is the same on every run and machine."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def write_lines(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def write_splits(out_dir, splits):
    """splits: {"train": [(task, source, target), ...], "valid": ..., "test": ...};
    each split's rows are sorted in place into the order they are written."""
    for split, rows in splits.items():
        rows.sort(key=lambda r: stable(r[0] + r[1]))
        write_lines(os.path.join(out_dir, split + ".tsv"), (f"{task}\t{s}\t{t}" for task, s, t in rows))
