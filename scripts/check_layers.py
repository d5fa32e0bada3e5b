#!/usr/bin/env python3
"""Checks that includes inside src/moekit only point down the layers.

Each folder of src/moekit is a layer (README.md, "Layers"). A file may
include headers of its own folder and of the folders its layer stands on,
never of a layer above or beside it; kernels/ includes no LibTorch at all.
Prints one line per offending include (file:line: what and why) and exits 1
if there is any.

Usage: scripts/check_layers.py [repository root]
"""
import pathlib
import re
import sys

# What each layer stands on directly; the check closes it transitively.
STANDS_ON = {
    "core": [],
    "kernels": [],
    "ops": ["kernels", "core"],
    "nn": ["ops"],
    "moe": ["ops", "dist"],
    "audio": ["core"],
    "data": ["core"],
    "eval": ["core"],
    "models": ["nn", "moe", "audio", "data"],
    "dist": ["ops"],
    "decode": ["models", "eval"],
    "scale": ["models"],
    "train": ["decode", "dist"],
    "serve": ["decode"],
}
# Headers no kernels/ file may include: it is compiled with its own flags
# and links without LibTorch.
TORCH_HEADER = re.compile(r'#\s*include\s*[<"](torch|ATen|c10|caffe2)/')
MOEKIT_HEADER = re.compile(r'#\s*include\s*"moekit/([a-z_]+)/')


def allowed_layers():
    closed = {}

    def visit(layer, seen=()):
        if layer in seen:
            raise SystemExit(f"check_layers: the layer table has a cycle through {layer}")
        below = set()
        for lower in STANDS_ON[layer]:
            below |= {lower} | visit(lower, seen + (layer,))
        return below

    for layer in STANDS_ON:
        closed[layer] = visit(layer) | {layer}
    return closed


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    src = root / "src" / "moekit"
    allowed = allowed_layers()
    problems = []
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".h", ".cpp", ".cu", ".cuh", ".in") or not path.is_file():
            continue
        rel = path.relative_to(src)
        if len(rel.parts) < 2:
            continue  # top-level files (CMakeLists.txt) are not a layer
        layer = rel.parts[0]
        shown = path.relative_to(root)
        if layer not in allowed:
            problems.append(f"{shown}: folder '{layer}' is not in scripts/check_layers.py's layer table")
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if layer == "kernels" and TORCH_HEADER.search(line):
                problems.append(f"{shown}:{number}: kernels/ must not include LibTorch: {line.strip()}")
            match = MOEKIT_HEADER.search(line)
            if match is None:
                continue
            target = match.group(1)
            if target not in allowed[layer]:
                kind = "up" if target in allowed and layer in allowed[target] else "sideways"
                problems.append(f"{shown}:{number}: {layer}/ includes {target}/ ({kind} across the layers; "
                                f"{layer}/ may include {', '.join(sorted(allowed[layer]))}): {line.strip()}")
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_layers: {len(problems)} include(s) cross the layers the wrong way", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
