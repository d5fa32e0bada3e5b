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
# Then the task-level MoE recipe (recipes/seq2seq with DEMO=1) on a task
# its minutes can learn: numbers 0-9999 in words in 6 languages (ICU's
# spell-out rules; the task is the language), a dense model and a
# token/task-routed MoE, exact matches and CER per language, and the
# per-language sub-networks extracted from the task-routed model. The full
# recipe translates English into the same languages (gettext catalogs).
# `make bench` runs the MoE layer benchmarks.
set -euo pipefail
build=${1:-build}
moekit="$build/moekit"
echo "== moekit info --system"
"$moekit" info --system
echo
start=$(date +%s)
moekit_abs="$(cd "$(dirname "$moekit")" && pwd)/moekit"
build_abs=$(cd "$build" && pwd)
# The LM and seq2seq recipes' data (corpus and tokenizer, stage 0) and
# the LM recipe's small dense model (stage 1, one thread: two are no faster
# at its size) take one core for about a minute. They run in the background
# at idle priority (SCHED_IDLE: a CPU runs them only when nothing else wants
# it) while the speech recipe runs, in the time a core would otherwise idle
# (the speech corpus is built by processes that leave CPU free; one speech
# model finishes training before the other); their output is shown when
# their recipe's turn comes. In a process group of their own (set -m), so
# that the demo stopping early (an error, ^C) stops them too.
idle=(chrt --idle 0)
"${idle[@]}" true 2> /dev/null || idle=(nice -n 19)
set -m
(
  export DEMO=1 MOEKIT="$moekit_abs"
  WORK="$build_abs/demo_lm" STOP_STAGE=0 "${idle[@]}" bash recipes/lm/run.sh > "$build_abs/demo_lm.prep.log" 2>&1
  WORK="$build_abs/demo_seq2seq" STOP_STAGE=0 "${idle[@]}" bash recipes/seq2seq/run.sh \
    > "$build_abs/demo_seq2seq.prep.log" 2>&1
  WORK="$build_abs/demo_lm" STAGE=1 STOP_STAGE=1 THREADS=1 "${idle[@]}" bash recipes/lm/run.sh \
    >> "$build_abs/demo_lm.prep.log" 2>&1
) &
prep=$!
set +m
trap 'kill -- -$prep 2>/dev/null || true' EXIT
# What the background steps printed for RECIPE, or why they failed.
prepared() {  # recipe
  if ! wait $prep; then
    cat "$build_abs"/demo_*.prep.log >&2
    echo "demo: the LM and seq2seq recipes' background steps failed (logs above)" >&2
    exit 1
  fi
  cat "$build_abs/demo_$1.prep.log"
}

echo "== U2++ ASR recipe, demo size (recipes/asr/run.sh with DEMO=1)"
DEMO=1 MOEKIT="$moekit_abs" WORK="$build_abs/demo_asr" bash recipes/asr/run.sh
echo
echo "== EfficientScale LM recipe, demo size (recipes/lm/run.sh with DEMO=1)"
prepared lm
DEMO=1 MOEKIT="$moekit_abs" WORK="$build_abs/demo_lm" STAGE=2 bash recipes/lm/run.sh
echo
echo "== Task-level MoE recipe, demo size: numbers in words (recipes/seq2seq/run.sh with DEMO=1)"
prepared seq2seq
DEMO=1 MOEKIT="$moekit_abs" WORK="$build_abs/demo_seq2seq" STAGE=1 bash recipes/seq2seq/run.sh
echo
echo "demo finished in $(( $(date +%s) - start )) s"
