#!/usr/bin/env bash
# The main job: a small U2++ MoE speech recognition pipeline end to end on
# this machine (recipes/asr with DEMO=1): a synthetic corpus spoken by
# espeak-ng/flite voices, a dense Conformer and its 8-expert top-2 MoE
# counterpart trained for streaming and full context, then WER/CER on
# voices never heard in training, full context and chunk 16, with RTF,
# decoding freely and held to the grammar's words with a word trigram model.
# Then the EfficientScale language-model recipe (recipes/lm with DEMO=1):
# a small dense LLaMA-style model on Debian text, grown to 2x width and depth
# by five methods, and upcycled into an 8-expert MoE compared at equal
# training FLOPs with continued dense training and an MoE from scratch.
# Then the task-level MoE translation recipe (recipes/seq2seq with DEMO=1):
# English into 6 languages from Debian's gettext catalogs, a dense model, a
# token-routed and a token/task-routed MoE, BLEU/chrF per language, and the
# per-language sub-networks extracted from the task-routed model.
# `make bench` runs the MoE layer benchmarks.
set -euo pipefail
build=${1:-build}
moekit="$build/moekit"
echo "== moekit info --system"
"$moekit" info --system
echo
start=$(date +%s)
echo "== U2++ ASR recipe, demo size (recipes/asr/run.sh with DEMO=1)"
DEMO=1 MOEKIT="$(cd "$(dirname "$moekit")" && pwd)/moekit" WORK="$(cd "$build" && pwd)/demo_asr" bash recipes/asr/run.sh
echo
echo "== EfficientScale LM recipe, demo size (recipes/lm/run.sh with DEMO=1)"
DEMO=1 MOEKIT="$(cd "$(dirname "$moekit")" && pwd)/moekit" WORK="$(cd "$build" && pwd)/demo_lm" bash recipes/lm/run.sh
echo
echo "== Task-level MoE translation recipe, demo size (recipes/seq2seq/run.sh with DEMO=1)"
DEMO=1 MOEKIT="$(cd "$(dirname "$moekit")" && pwd)/moekit" WORK="$(cd "$build" && pwd)/demo_seq2seq" bash recipes/seq2seq/run.sh
echo
echo "demo finished in $(( $(date +%s) - start )) s"
