#!/usr/bin/env python3
"""Tables and curves of scale_out_study.sh from each run's metrics.jsonl.

  scale_out_study.py EXP_DIR --seeds 1 2 3 --out study.md --plot study.png

For each seed: the dense and the upcycled arm's validation loss at the
start, at the end, and at every FLOP count both reached (the curves'
common points); over seeds: the mean and the spread (max - min) of the
final losses and of their difference.
"""
import argparse
import os
import statistics

from results import plot_curves, validations

ARMS = [("study_dense_seed{}", "(a) dense, continued"), ("study_upcycled_seed{}", "(b) upcycled MoE")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exp")
    ap.add_argument("--seeds", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args()
    small = validations(args.exp, "small")
    lines = []
    if small:
        lines += [f"Dense checkpoint: validation loss {small[-1]['cv_loss']:.3f} after {small[-1]['step']} steps.", ""]
    lines += ["| seed | run | val. loss at step 0 | final val. loss | steps | training FLOPs |",
              "|---|---|---|---|---|---|"]
    finals = {label: [] for _, label in ARMS}
    curves = []
    for seed in args.seeds:
        for pattern, label in ARMS:
            v = validations(args.exp, pattern.format(seed))
            if not v:
                continue
            first = v[0]["cv_loss"] if v[0]["step"] == 0 else float("nan")
            lines.append(f"| {seed} | {label} | {first:.3f} | {v[-1]['cv_loss']:.3f} | {v[-1]['step']} | "
                         f"{v[-1].get('train_flops', 0):.3g} |")
            finals[label].append(v[-1]["cv_loss"])
            curves.append((f"{label}, seed {seed}", [(r.get("train_flops", 0), r["cv_loss"]) for r in v]))
    # Equal tokens: the dense arm's loss at the MoE arm's last step (same
    # batches up to there), where it was validated.
    equal_tokens = []
    for seed in args.seeds:
        d = {r["step"]: r["cv_loss"] for r in validations(args.exp, ARMS[0][0].format(seed))}
        m = validations(args.exp, ARMS[1][0].format(seed))
        if m and m[-1]["step"] in d:
            equal_tokens.append(d[m[-1]["step"]] - m[-1]["cv_loss"])
    dense, moe = (finals[label] for _, label in ARMS)
    if dense and len(dense) == len(moe):
        gaps = [d - m for d, m in zip(dense, moe)]
        lines += ["", "| over seeds | (a) dense | (b) upcycled MoE | (a) - (b) |", "|---|---|---|---|",
                  f"| mean final val. loss | {statistics.mean(dense):.3f} | {statistics.mean(moe):.3f} | "
                  f"{statistics.mean(gaps):+.3f} |",
                  f"| spread (max - min) | {max(dense) - min(dense):.3f} | {max(moe) - min(moe):.3f} | "
                  f"{max(gaps) - min(gaps):.3f} |",
                  f"| seeds where (b) is lower | | | {sum(g > 0 for g in gaps)} of {len(gaps)} |"]
        if len(equal_tokens) == len(gaps):
            lines.append(f"| (a) - (b) at equal tokens ((a) at (b)'s last step), mean | | | "
                         f"{statistics.mean(equal_tokens):+.3f} |")
    with open(args.out + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".tmp", args.out)
    if args.plot and curves:
        # Dense runs solid, upcycled dashed, one colour per arm.
        plot_curves(curves, args.plot, "Scale-Out from one dense checkpoint, equal FLOPs, every seed",
                    style=lambda i: f"lines lw 2 dt {1 + i % 2} lc {1 + i % 2}")

if __name__ == "__main__":
    main()
