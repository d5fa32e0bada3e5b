#!/usr/bin/env python3
"""The recipe's table from `moekit eval --json` and `moekit info --json`
outputs: BLEU and chrF per language and averaged, total and active
parameters per model, and for task-routed models the extracted
sub-networks (their size and whether they score as the full model does).

  results.py EVAL_DIR --models NAME... --langs de,fr,... --out results.md
"""
import argparse
import json
import os


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def millions(n):
    return f"{n / 1e6:.1f}M"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_dir")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--langs", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    langs = args.langs.split(",")
    lines = ["## Test set, BLEU (13a) / chrF per task; averages; CER over characters (IPA symbols for g2p)", ""]
    head = ("| model | routing (enc/dec) | params total | active per token | " + " | ".join(langs) +
            " | avg BLEU | avg chrF | avg CER |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    subs = []
    for name in args.models:
        info = load(os.path.join(args.eval_dir, name + ".info.json"))
        ev = load(os.path.join(args.eval_dir, name + ".json"))
        by_task = {t["task"]: t for t in ev["tasks"]}
        routing = "dense"
        if info["moe_layers"]:
            enc = [l["routing"] for l in info["moe_layers"] if l["name"].startswith("encoder")]
            dec = [l["routing"] for l in info["moe_layers"] if l["name"].startswith("decoder")]
            routing = f"{enc[0] if enc else '-'}/{dec[0] if dec else '-'}"
        cells = [f"{by_task[l]['bleu']:.1f} / {by_task[l]['chrf']:.1f}" if l in by_task else "-" for l in langs]
        lines.append(f"| {name} | {routing} | {millions(info['parameters']['total'])} | "
                     f"{millions(info['parameters']['active_per_token'])} | " + " | ".join(cells) +
                     f" | {ev['bleu_avg']:.2f} | {ev['chrf_avg']:.2f} | {100 * ev['cer_avg']:.1f}% |")
        for l in langs:
            path = os.path.join(args.eval_dir, f"{name}_sub_{l}.json")
            if os.path.exists(path):
                sub = load(path)["tasks"][0]
                sub_info = load(os.path.join(args.eval_dir, f"{name}_sub_{l}.info.json"))
                same = abs(sub["bleu"] - by_task[l]["bleu"]) < 1e-9 and abs(sub["chrf"] - by_task[l]["chrf"]) < 1e-9
                subs.append(f"| {name} | {l} | {millions(sub_info['parameters']['total'])} | "
                            f"{millions(info['parameters']['total'])} | {sub['bleu']:.2f} | {by_task[l]['bleu']:.2f} | "
                            f"{'yes' if same else 'NO'} |")
    if subs:
        lines += ["", "## Extracted task sub-networks", "",
                  "| model | task | sub-network params | full model params | BLEU (sub) | BLEU (full) | identical |",
                  "|---|---|---|---|---|---|---|"] + subs
    text = "\n".join(lines) + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
