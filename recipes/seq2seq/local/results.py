#!/usr/bin/env python3
"""The recipe's table from `moekit eval --json` and `moekit info --json`
outputs: BLEU and chrF per language and averaged, total and active
parameters per model, and for task-routed models the extracted
sub-networks (their size and whether they score as the full model does),
and, with --distill, the paper's comparison at equal inference cost: the
share of a teacher's gain over the dense baseline that a distilled dense
student keeps, against the share an extracted task sub-network keeps.

  results.py EVAL_DIR --models NAME... --langs de,fr,... --out results.md
             [--dense NAME --distill TEACHER STUDENT --extracted MODEL]
"""
import argparse
import json
import os


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def percent(share):
    """A share as a percentage; "-" for evaluations written before eval reported it."""
    return "-" if share is None else f"{100 * share:.1f}%"


def millions(n):
    return f"{n / 1e6:.1f}M"


def averages(eval_dir, name, langs=None):
    """BLEU, chrF and CER (%) of a model averaged over its tasks, or, for
    `langs`, over the sub-network evaluations `<name>_sub_<lang>.json`."""
    if langs is None:
        ev = load(os.path.join(eval_dir, name + ".json"))
        return ev["bleu_avg"], ev["chrf_avg"], 100 * ev["cer_avg"]
    tasks = [load(os.path.join(eval_dir, f"{name}_sub_{l}.json"))["tasks"][0] for l in langs]
    return tuple(sum(t[m] for t in tasks) / len(tasks) * (100 if m == "cer" else 1) for m in ("bleu", "chrf", "cer"))


def kept(base, teacher, value, lower_is_better=False):
    gain = (base - teacher) if lower_is_better else (teacher - base)
    if abs(gain) < 1e-9:
        return "-"
    return f"{100 * ((base - value) if lower_is_better else (value - base)) / gain:.0f}%"


def shares(base, ref, value):
    return " / ".join([kept(base[0], ref[0], value[0]), kept(base[1], ref[1], value[1]),
                       kept(base[2], ref[2], value[2], lower_is_better=True)])


def gain_table(eval_dir, dense, teacher, student, extracted, langs):
    """Distillation against extraction at the dense model's inference cost:
    each small model's share of its own MoE model's gain over the dense
    baseline (the paper's comparison), and of the distillation teacher's."""
    base = averages(eval_dir, dense)
    teach = averages(eval_dir, teacher)
    full = averages(eval_dir, extracted)
    rows = [("dense baseline", dense, base, None),
            ("teacher" if teacher == extracted else "distillation teacher", teacher, teach, None),
            ("distilled dense student", student, averages(eval_dir, student), teach),
            ("task-routed model", extracted, full, None),
            ("its extracted sub-networks", extracted + "_sub_*", averages(eval_dir, extracted, langs), full)]
    same_teacher = teacher == extracted
    if same_teacher:
        rows = rows[:3] + rows[4:]
    out = ["## Distillation against task sub-networks (averages over tasks)", "",
           "Share kept: the fraction of a MoE model's gain over the dense baseline that the model "
           "of dense inference cost made from it keeps, in BLEU / chrF / CER" +
           ("." if same_teacher else "; the last column measures both small models against the "
            "distillation teacher."), "",
           "| | model | avg BLEU | avg chrF | avg CER | share of its MoE model's gain |" +
           ("" if same_teacher else " share of the teacher's gain |"),
           "|---|---|---|---|---|---|" + ("" if same_teacher else "---|")]
    for label, name, value, ref in rows:
        own = shares(base, ref, value) if ref is not None else "-"
        line = f"| {label} | {name} | {value[0]:.2f} | {value[1]:.2f} | {value[2]:.1f}% | {own} |"
        if not same_teacher:
            line += f" {shares(base, teach, value) if ref is not None else '-'} |"
        out.append(line)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_dir")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--langs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dense", help="the dense baseline the gains are measured from")
    ap.add_argument("--distill", nargs=2, metavar=("TEACHER", "STUDENT"),
                    help="a teacher and the dense student distilled from it")
    ap.add_argument("--extracted", help="the task-routed model whose sub-networks are compared")
    ap.add_argument("--per-task", choices=["bleu", "cer", "exact"], default="bleu",
                    help="per-task cells: BLEU / chrF (translation), chrF / CER (one-word outputs such as g2p, "
                         "where BLEU, needing 4-grams, is 0) or exact / CER (outputs with one right answer, "
                         "such as numbers in words: the share of outputs equal to the reference)")
    args = ap.parse_args()
    langs = args.langs.split(",")
    per_task = {"bleu": "BLEU (13a) / chrF", "cer": "chrF / CER", "exact": "exact / CER"}[args.per_task]
    lines = [f"## Test set, {per_task} per task; averages; CER over characters (IPA symbols for g2p); "
             "exact: outputs equal to their reference", ""]
    head = ("| model | routing (enc/dec) | params total | active per token | " + " | ".join(langs) +
            " | avg BLEU | avg chrF | avg CER | avg exact |")
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
        def cell(t):
            if args.per_task == "bleu":
                return f"{t['bleu']:.1f} / {t['chrf']:.1f}"
            if args.per_task == "exact":
                return f"{100 * t['exact']:.1f}% / {100 * t['cer']:.1f}%"
            return f"{t['chrf']:.1f} / {100 * t['cer']:.1f}%"
        cells = [cell(by_task[l]) if l in by_task else "-" for l in langs]
        lines.append(f"| {name} | {routing} | {millions(info['parameters']['total'])} | "
                     f"{millions(info['parameters']['active_per_token'])} | " + " | ".join(cells) +
                     f" | {ev['bleu_avg']:.2f} | {ev['chrf_avg']:.2f} | {100 * ev['cer_avg']:.1f}% | "
                     f"{percent(ev.get('exact_avg'))} |")
        for l in langs:
            path = os.path.join(args.eval_dir, f"{name}_sub_{l}.json")
            if os.path.exists(path):
                sub = load(path)["tasks"][0]
                sub_info = load(os.path.join(args.eval_dir, f"{name}_sub_{l}.info.json"))
                same = all(abs(sub[m] - by_task[l][m]) < 1e-9 for m in ("bleu", "chrf", "cer", "exact")
                           if m in sub and m in by_task[l])
                def scores(t):
                    return (f"{t['bleu']:.2f} / {t['chrf']:.2f} / {100 * t['cer']:.1f}% / "
                            f"{percent(t.get('exact'))}")
                subs.append(f"| {name} | {l} | {millions(sub_info['parameters']['total'])} | "
                            f"{millions(info['parameters']['total'])} | {scores(sub)} | {scores(by_task[l])} | "
                            f"{'yes' if same else 'NO'} |")
    if subs:
        lines += ["", "## Extracted task sub-networks", "",
                  "| model | task | sub-network params | full model params | BLEU / chrF / CER / exact (sub) | "
                  "BLEU / chrF / CER / exact (full) | identical |",
                  "|---|---|---|---|---|---|---|"] + subs
    if args.distill and args.dense and args.extracted:
        lines += ["", *gain_table(args.eval_dir, args.dense, *args.distill, args.extracted, langs)]
    text = "\n".join(lines) + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
