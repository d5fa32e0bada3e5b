#!/usr/bin/env python3
"""Prints the recipe's results table (markdown) from the eval/info JSON files."""
import json
import os
import sys

MODES = [("ctc_greedy_search", "CTC greedy"), ("ctc_prefix_beam_search", "CTC prefix beam"),
         ("attention_rescoring", "attention rescoring")]


def main():
    exp, confs = sys.argv[1], sys.argv[2:]
    rows = []
    lexicon_words = 0
    for conf in confs:
        d = os.path.join(exp, conf)
        info = json.load(open(os.path.join(d, "info.json")))
        metrics = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if "cv_loss" in l]
        for tag, name in (("", conf), ("lexicon_", conf + " + lexicon"), ("lm_", conf + " + lexicon + LM"),
                          ("int8_", conf + " int8")):
            evals = {}
            for chunk in ("-1", "16"):
                path = os.path.join(d, "eval_%schunk%s.json" % (tag, chunk))
                if os.path.exists(path):
                    for r in json.load(open(path)):
                        evals[(r["mode"], chunk)] = r
            if evals:
                rows.append((name, info, evals, metrics[-1] if metrics and not tag else {}))
                lexicon_words = max(lexicon_words, max(r.get("lexicon_words", 0) for r in evals.values()))
    print("| model | params total | active | decoding | WER full | WER chunk 16 | CER full | CER chunk 16 | RTF full | RTF chunk 16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for conf, info, evals, last in rows:
        total = info["parameters"]["total"] / 1e6
        active = info["parameters"]["active_per_token"] / 1e6
        for mode, name in MODES:
            if (mode, "-1") not in evals or (mode, "16") not in evals:
                continue
            full, chunk = evals[(mode, "-1")], evals[(mode, "16")]
            print("| %s | %.2fM | %.2fM | %s | %.1f%% | %.1f%% | %.1f%% | %.1f%% | %.3f | %.3f |" % (
                conf, total, active, name, 100 * full["wer"], 100 * chunk["wer"], 100 * full["cer"],
                100 * chunk["cer"], full["rtf"], chunk["rtf"]))
    print()
    for conf, info, evals, last in rows:
        if last:
            print("%s: %d optimizer steps, last validation loss %.2f, CER %.1f%% (CTC greedy, full context)" % (
                conf, last["step"], last["cv_loss"], 100 * last["cv_cer"]))
    by_name = {r[0]: r[2] for r in rows}
    for conf in confs:
        q = by_name.get(conf + " int8")
        if q is None:
            continue
        f = by_name[conf]
        # The largest change either way (a decrease is a change too).
        worst = max((((q[k]["cer"] - f[k]["cer"]) * 100, k) for k in f if k in q), key=lambda c: abs(c[0]))
        print("%s int8: the same model with its experts in int8 (moekit quantize --experts int8); the largest "
              "CER change is %+.2f points (%s, %s)" % (conf, worst[0], dict(MODES)[worst[1][0]],
                                                 "full context" if worst[1][1] == "-1" else "chunk 16"))
    if lexicon_words:
        print("\n\"+ lexicon\": the beam searches held to the task's %d-word lexicon (moekit eval --lexicon "
              "words.txt): every output word is one of them. \"+ LM\": with a word trigram model of the training "
              "transcripts fused in as well (--lm lm.arpa, %s)." % (lexicon_words, os.environ.get("LM_FUSION", "the CLI's weights")))
    utts = rows[0][2][("ctc_greedy_search", "-1")]["utterances"] if rows else 0
    print("\nTest set: %d utterances by voices never heard in training. RTF: decoding time / audio time, "
          "1 thread, fbank included." % utts)


if __name__ == "__main__":
    main()
