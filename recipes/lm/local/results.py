#!/usr/bin/env python3
"""Tables and curves of the LM recipe from each run's metrics.jsonl.

  results.py EXP_DIR --out results.md --plot scale_out.png
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

GROW = [("grow_random", "random init"), ("grow_fpi_stack", "FPI-stack"), ("grow_fpi_interpolate", "FPI-interpolate"),
        ("grow_aki_stack", "AKI-stack"), ("grow_aki_interpolate", "AKI-Pro (AKI + interpolate)")]
OUT = [("out_dense", "(a) dense, continued"), ("out_upcycled", "(b) upcycled MoE"), ("out_scratch", "(c) MoE from scratch")]


def validations(exp, name):
    path = os.path.join(exp, name, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path) if '"cv_loss"' in line]
    by_step = {}
    for r in rows:  # a resumed run may repeat a step: keep the latest
        by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args()
    lines = []
    small = validations(args.exp, "small")
    if small:
        lines += [f"Small dense model: validation loss {small[-1]['cv_loss']:.3f} "
                  f"(ppl {small[-1]['cv_ppl']:.1f}) after {small[-1]['step']} steps.", ""]
    lines += ["## Scale-Up (2x width, 2x depth)", "",
              "| method | val. loss at step 0 | val. loss after training | steps |", "|---|---|---|---|"]
    for name, label in GROW:
        v = validations(args.exp, name)
        if not v:
            continue
        first = v[0]["cv_loss"] if v[0]["step"] == 0 else float("nan")
        lines.append(f"| {label} | {first:.3f} | {v[-1]['cv_loss']:.3f} | {v[-1]['step']} |")
    lines += ["", "## Scale-Out at equal training FLOPs", "",
              "| run | val. loss at step 0 | final val. loss | steps | training FLOPs |", "|---|---|---|---|---|"]
    curves = []
    for name, label in OUT:
        v = validations(args.exp, name)
        if not v:
            continue
        first = v[0]["cv_loss"] if v[0]["step"] == 0 else float("nan")
        lines.append(f"| {label} | {first:.3f} | {v[-1]['cv_loss']:.3f} | {v[-1]['step']} | "
                     f"{v[-1].get('train_flops', 0):.3g} |")
        curves.append((label, [(r.get("train_flops", 0), r["cv_loss"]) for r in v]))
    with open(args.out + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".tmp", args.out)
    if args.plot and curves:
        plot_curves(curves, args.plot, "Scale-Out from one dense checkpoint, equal training FLOPs")


def plot_curves(curves, path, title, style=lambda i: "linespoints"):
    """Validation loss against training FLOPs, one line per (label, [(flops,
    loss), ...]), written to the PNG `path` with gnuplot (none without it);
    style(i) gives the gnuplot style of curve i."""
    if not shutil.which("gnuplot"):
        print("results: gnuplot not installed; no plot", file=sys.stderr)
        return
    data = path + ".dat"
    with open(data, "w") as f:
        for label, points in curves:
            f.write(f"# {label}\n")
            for x, y in points:
                f.write(f"{x / 1e12:.6f} {y:.6f}\n")
            f.write("\n\n")
    plots = ", ".join(f"'{data}' index {i} with {style(i)} title '{label}'" for i, (label, _) in enumerate(curves))
    script = (f"set terminal png size 900,550; set output '{path}.tmp';"
              "set xlabel 'training FLOPs (TFLOP)'; set ylabel 'validation loss (nats/token)';"
              f"set title '{title}'; set grid; plot {plots}")
    subprocess.run(["gnuplot", "-e", script], check=True)
    os.replace(path + ".tmp", path)
    os.remove(data)


if __name__ == "__main__":
    main()
