#!/usr/bin/env bash
# U2++ MoE recipe: a synthetic English speech corpus built on this machine
# (open-vocabulary sentences; at demo size, spoken commands from a closed
# 81-word grammar; TASK=fortunes|commands), a dense Conformer and its MoE
# counterpart (same d_model, 8 experts, top-2 in every FFN) trained for
# streaming + full context, and a WER/CER table
# for CTC greedy, CTC prefix beam and attention rescoring at full context and
# chunk 16 (for commands also the beam searches held to the grammar's
# lexicon, and with a word trigram model), with parameter counts and
# real-time factors.
#
#   recipes/asr/run.sh                 # full recipe (about 1 h 50 min on 2 cores)
#   DEMO=1 recipes/asr/run.sh          # the small version `make demo` runs
#
# Both sizes train their models side by side, one thread each, and evaluate
# a model as soon as it is trained, beside the training still running
# (PARALLEL= runs everything one after the other, training on THREADS
# threads).
#
# Stages (STAGE / STOP_STAGE): 0 data, 1 train, 2 evaluate + table.
# A killed run picks up where it stopped: data is reused, training resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
moekit=${MOEKIT:-$root/build/moekit}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-2}
stage=${STAGE:-0}
stop_stage=${STOP_STAGE:-3}

if [[ -n "${DEMO:-}" ]]; then
  work=${WORK:-$root/build/demo_asr}
  task=${TASK:-commands}
  # slt, the only female flite voice, speaks in training here: held out, it
  # left the demo's 800 utterances without a voice like it (82% WER on it
  # against 21-41% on the unseen espeak accents).
  held_out_flite=${HELD_OUT_FLITE:-rms}
  num_train=${NUM_TRAIN:-800} num_cv=${NUM_CV:-60} num_test=${NUM_TEST:-60} max_words=${MAX_WORDS:-6}
  # The synthesizers' silence before and after each command cut to 0.1 s:
  # frames that cost training time and teach nothing (the 800 training
  # utterances hold 1,454 s of audio with the cut, 1,592 s without).
  edge_silence=${EDGE_SILENCE-0.1}
  confs=${CONFS:-"demo_dense demo_moe"}
else
  work=${WORK:-$here/work}
  task=${TASK:-fortunes}
  held_out_flite=${HELD_OUT_FLITE:-slt}
  num_train=${NUM_TRAIN:-8000} num_cv=${NUM_CV:-300} num_test=${NUM_TEST:-300} max_words=${MAX_WORDS:-10}
  edge_silence=${EDGE_SILENCE-}
  confs=${CONFS:-"dense moe"}
fi
data=$work/data
# Shallow fusion of the word trigram (closed-vocabulary tasks): the weight
# of its log-probability and a bonus per word, chosen on the demo's cv set
# (the lowest mean WER of both models, full context and chunk 16, over
# lm_weight 0.3-2.0 x word_bonus 0-2).
lm_weight=${LM_WEIGHT:-1.2} word_bonus=${WORD_BONUS:-2}
lm_fusion=(--lm-weight "$lm_weight" --word-bonus "$word_bonus")
export OPENBLAS_NUM_THREADS=1  # LibTorch's own threads do the parallel work (--threads)

log() { echo "[asr recipe $(date +%H:%M:%S)] $*" >&2; }

if [[ $stage -le 0 && $stop_stage -ge 0 ]]; then
  log "stage 0: $task corpus ($num_train train / $num_cv cv / $num_test test utterances, test voices unseen)"
  "$python" "$here/local/make_corpus.py" "$data" --task "$task" --held-out-flite "$held_out_flite" --train "$num_train" --cv "$num_cv" --test "$num_test" \
    --max-words "$max_words" ${edge_silence:+--edge-silence "$edge_silence"}
  if [[ -f $data/words.txt ]]; then
    # A closed-vocabulary task: a word trigram model of the training
    # transcripts (IRSTLM, Witten-Bell smoothing) for the beam searches.
    log "stage 0: word trigram model of the training transcripts (IRSTLM tlm)"
    "$python" -c 'import json, sys
for line in open(sys.argv[1], encoding="utf-8"): print("<s> %s </s>" % json.loads(line)["txt"])' \
      "$data/train/data.list" > "$data/lm_text.txt"
    /usr/lib/irstlm/bin/tlm -tr="$data/lm_text.txt" -n=3 -lm=wb -o="$data/lm.arpa.tmp" > "$data/tlm.log" 2>&1 ||
      { cat "$data/tlm.log" >&2; exit 1; }
    mv "$data/lm.arpa.tmp" "$data/lm.arpa"
  fi
fi

train_one() {  # conf threads: its output in exp/<conf>/train.log (the tail on stderr if it fails)
  local exp=$work/exp/$1 resume=()
  [[ -d $exp/checkpoints ]] && resume=(--resume)
  log "stage 1: training $1 ($2 thread(s), log in exp/$1/train.log)"
  "$moekit" --threads "$2" train asr --config "$here/conf/$1.yaml" \
    --train-data "$data/train/data.list" --cv-data "$data/cv/data.list" --exp-dir "$exp" "${resume[@]}" \
    >> "$exp/train.log" 2>&1 || { tail -n 5 "$exp/train.log" >&2; return 1; }
}
# While a model trains (job PID), a line per validation from its log.
follow_training() {  # conf pid
  tail -n +1 -F --pid="$2" "$work/exp/$1/train.log" 2>/dev/null |
    grep --line-buffered -E "validation|final model" | sed -u "s/^/  $1: /" >&2 &
}

# The test set decoded by EXP/MODEL (final or final_int8) at one chunk size
# on one thread (RTF is per thread), every decoding mode, into
# EXP/PREFIXchunkCHUNK.json; for the float model of a closed-vocabulary task
# also held to its lexicon, and with its word trigram model.
evaluate() {  # exp model prefix chunk
  local exp=$1 model=$2 prefix=$3 chunk=$4
  "$moekit" --threads 1 eval "$exp/$model" "$data/test/data.list" --chunk-size "$chunk" --json \
    --mode ctc_greedy_search ctc_prefix_beam_search attention_rescoring > "$exp/${prefix}chunk$chunk.json"
  if [[ $prefix == eval_ && -f $data/words.txt ]]; then
    "$moekit" --threads 1 eval "$exp/$model" "$data/test/data.list" --chunk-size "$chunk" --json \
      --lexicon "$data/words.txt" --mode ctc_prefix_beam_search attention_rescoring > "$exp/eval_lexicon_chunk$chunk.json"
    "$moekit" --threads 1 eval "$exp/$model" "$data/test/data.list" --chunk-size "$chunk" --json \
      --lexicon "$data/words.txt" --lm "$data/lm.arpa" "${lm_fusion[@]}" --mode ctc_prefix_beam_search \
      attention_rescoring > "$exp/eval_lm_chunk$chunk.json"
  fi
}

# Stages 1 and 2 share one pool of jobs (recipes/jobs.sh): the models train
# side by side, one thread each, and a model's evaluations start as soon as
# it is trained, beside the trainings still running (PARALLEL= runs
# everything one after the other, training on THREADS threads).
source "$root/recipes/jobs.sh"  # jobs_plan, jobs_init, job, jobs_need, jobs_wait
jobs_plan "$threads"
if [[ $stage -le 2 && $stop_stage -ge 1 ]]; then
  jobs_init "$job_slots"
  if [[ $stage -le 1 ]]; then
    for conf in $confs; do
      if [[ -f $work/exp/$conf/final/model.safetensors ]]; then log "stage 1: $conf already trained"; continue; fi
      mkdir -p "$work/exp/$conf"
      : > "$work/exp/$conf/train.log"
      job "train_$conf" train_one "$conf" "$job_threads"
      follow_training "$conf" $!
    done
  fi
  if [[ $stop_stage -ge 2 ]]; then
    for conf in $confs; do
      exp=$work/exp/$conf
      jobs_need "train_$conf"
      log "stage 2: evaluating $conf on unseen voices"
      "$moekit" --threads 1 info "$exp/final" --json > "$exp/info.json"
      # An MoE model again with its experts in int8 (moekit quantize), scored the same way.
      models=(final)
      if grep -q '"top_k"' "$exp/info.json"; then
        log "stage 2: $conf with int8 experts (moekit quantize)"
        "$moekit" quantize "$exp/final" "$exp/final_int8" --experts int8 --force
        models+=(final_int8)
      fi
      for model in "${models[@]}"; do
        prefix=eval_
        [[ $model == final_int8 ]] && prefix=eval_int8_
        for chunk in -1 16; do job "eval_${conf}_${model}_chunk$chunk" evaluate "$exp" "$model" "$prefix" "$chunk"; done
      done
    done
  fi
  jobs_wait || exit 1
  if [[ $stop_stage -ge 2 ]]; then
    LM_FUSION="weight $lm_weight, word bonus $word_bonus" \
      "$python" "$here/local/results_table.py" "$work/exp" $confs | tee "$work/results.md"
  fi
fi

if [[ $stage -le 3 && $stop_stage -ge 3 ]]; then
  # The last model behind `moekit serve asr`: one test utterance streamed in
  # real time over WeNet's WebSocket protocol, the partial results as they
  # arrive, then SIGTERM.
  conf=${confs##* }
  exp=$work/exp/$conf
  wav=$(head -n 1 "$data/test/data.list" | "$python" -c \
    'import json, os, sys; print(os.path.normpath(os.path.join(sys.argv[1], json.loads(sys.stdin.read())["wav"])))' \
    "$data/test")
  ref=$(head -n 1 "$data/test/data.list" | "$python" -c 'import json, sys; print(json.loads(sys.stdin.read())["txt"])')
  log "stage 3: serving $conf (serve asr, chunk 16) and streaming $(basename "$wav") to it"
  lexicon=()
  [[ -f $data/words.txt ]] && lexicon=(--lexicon "$data/words.txt" --lm "$data/lm.arpa" "${lm_fusion[@]}" --mode ctc_prefix_beam_search)
  "$moekit" --threads 1 serve asr "$exp/final" --host 127.0.0.1 --port 0 --chunk-size 16 "${lexicon[@]}" 2> "$exp/serve.log" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  port=
  for _ in $(seq 600); do
    port=$(sed -n 's/.* on port \([0-9]*\):.*/\1/p' "$exp/serve.log")
    [[ -n $port ]] && break
    kill -0 $server 2>/dev/null || { cat "$exp/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $port ]] || { log "stage 3: the server did not start"; cat "$exp/serve.log" >&2; exit 1; }
  echo "reference: $ref"
  "$python" "$root/scripts/asr_ws_client.py" "ws://127.0.0.1:$port" "$wav" --realtime 1
  kill -TERM $server
  wait $server
  trap - EXIT
  tail -n 1 "$exp/serve.log" >&2
fi
