#!/usr/bin/env bash
# Task-level MoE recipe: multilingual translation English -> 6 languages from
# the gettext catalogs Debian installs (the task is the target language); or
# grapheme-to-phoneme, or numbers in words (CORPUS=g2p | numbers).
#   stage 0: corpus (local/make_corpus.py) and a shared SentencePiece model
#            with a <2xx> tag piece per language
#   stage 1: the paper's Table 1 at this scale, equal training steps:
#            dense; token/token; sentence/sentence; task/task; token/task;
#            then a dense student distilled (word-level) from the token/task
#            model, at the same steps, so the distilled student and the
#            extracted sub-networks come from one teacher (DISTILL_TEACHER
#            picks another teacher; DISTILL_TEACHER= skips it)
#   stage 2: BLEU and chrF per language on the test set; every task-routed
#            model's sub-network extracted per language and scored too
#   stage 3: the table (work/results.md)
#
#   recipes/seq2seq/run.sh            # full recipe
#   DEMO=1 recipes/seq2seq/run.sh     # the short version `make demo` runs: numbers
#                                     # in words, 0-9999 (DEMO=1 CORPUS=mt: translation)
#   CORPUS=g2p recipes/seq2seq/run.sh # the second multi-task set: grapheme-to-phoneme
#                                     # in 9 languages (word lists + espeak-ng IPA), scored
#                                     # by CER over IPA symbols as well
#   CORPUS=numbers recipes/seq2seq/run.sh  # a number in digits to its words in the 6
#                                     # languages (ICU's CLDR spell-out rules), 0-999999
#
# STAGE / STOP_STAGE pick stages; MODELS the configs (conf/<name>.yaml). A
# killed run picks up where it stopped: trained models are kept, training
# resumes from its checkpoint. Independent trainings and scorings run side by
# side, one thread each, a model's scoring as soon as it is trained (PARALLEL=
# for one after the other on THREADS threads).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
moekit=${MOEKIT:-$root/build/moekit}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-2}
stage=${STAGE:-0}
stop_stage=${STOP_STAGE:-3}
corpus=${CORPUS:-mt}
[[ -n "${DEMO:-}" ]] && corpus=${CORPUS:-numbers}
langs=${LANGS:-de,fr,es,it,sv,ru}
case $corpus in
  mt | g2p | numbers) ;;
  *) echo "seq2seq recipe: CORPUS must be mt, g2p or numbers, got '$corpus'" >&2; exit 2 ;;
esac
spm_args=(--character-coverage 0.9995)
per_task=bleu

if [[ $corpus == g2p ]]; then
  langs=${LANGS:-en,fr,de,es,it,pt,nl,pl,da}
  work=${WORK:-$here/work_g2p}
  models=${MODELS:-g2p_dense g2p_token_token g2p_task_task g2p_token_task}
  vocab=${VOCAB:-600}
  beam=${BEAM:-4}
  dense=g2p_dense extracted=g2p_token_task distill_teacher=${DISTILL_TEACHER-g2p_token_task}
  per_task=cer
elif [[ -n "${DEMO:-}" ]]; then
  work=${WORK:-$root/build/demo_seq2seq}
  # Two models, trained side by side on 2 cores (MODELS=... adds
  # demo_token_token, the token-routed MoE of the same size).
  models=${MODELS:-demo_dense demo_token_task}
  corpus_args=(--max-train 2500 --test 60 --valid 50)
  [[ $corpus == numbers ]] && corpus_args=(--max-number 9999 --train 2500 --test 60 --valid 50)
  vocab=${VOCAB:-1000}
  beam=${BEAM:-1}
  dense=demo_dense extracted=demo_token_task distill_teacher=${DISTILL_TEACHER-}
else
  work=${WORK:-$here/work}
  models=${MODELS:-dense token_token sentence_sentence task_task token_task}
  corpus_args=()
  vocab=${VOCAB:-8000}
  beam=${BEAM:-4}
  dense=dense extracted=token_task distill_teacher=${DISTILL_TEACHER-token_task}
  if [[ $corpus == numbers ]]; then
    work=${WORK:-$here/work_numbers}
    corpus_args=(--train 20000 --test 500 --valid 300)
    vocab=${VOCAB:-1000}
  fi
fi
if [[ $corpus == numbers ]]; then
  # Every character its own piece (the alphabets are small) and every
  # digit: the model reads a number digit by digit.
  spm_args=(--character-coverage 1 --split-digits)
  per_task=exact
fi
student=${distill_teacher:+${distill_teacher}_distilled}
scored=$models${student:+ $student}
data=$work/data
exp=$work/exp
export OPENBLAS_NUM_THREADS=1  # LibTorch's own threads do the parallel work (--threads)

log() { echo "[seq2seq recipe $(date +%H:%M:%S)] $*" >&2; }
source "$root/recipes/jobs.sh"  # jobs_plan, jobs_init, job, jobs_need, jobs_wait
jobs_plan "$threads"

if [[ $stage -le 0 && $stop_stage -ge 0 ]]; then
  log "stage 0: corpus and tokenizer"
  if [[ $corpus == g2p ]]; then
    [[ -f $data/test.tsv ]] || "$python" "$here/local/make_g2p.py" "$data"
  elif [[ $corpus == numbers ]]; then
    [[ -f $data/test.tsv ]] || "$python" "$here/local/make_numbers.py" "$data" --langs "$langs" "${corpus_args[@]}"
  else
    [[ -f $data/test.tsv ]] || "$python" "$here/local/make_corpus.py" "$data" --langs "$langs" "${corpus_args[@]}"
  fi
  tags=()
  for l in ${langs//,/ }; do tags+=("<2$l>"); done
  [[ -f $data/tokenizer.model ]] ||
    "$moekit" tokenizer train --input "$data/spm_text.txt" --output "$data/tokenizer.model" --vocab-size "$vocab" \
      --model-type unigram "${spm_args[@]}" --user-symbols "${tags[@]}"
fi

train_one() {  # name
  local resume=()
  [[ -d $exp/$1/checkpoints ]] && resume=(--resume)
  log "stage 1: training $1 ($job_threads thread(s))"
  "$moekit" --threads "$job_threads" train seq2seq --config "$here/conf/$1.yaml" --train-data "$data/train.tsv" \
    --valid-data "$data/valid.tsv" --tokenizer "$data/tokenizer.model" --exp-dir "$exp/$1" "${resume[@]}"
}
score() {  # name: the model on the whole test set
  "$moekit" --threads "$job_threads" eval "$exp/$1/final" "$data/test.tsv" --beam "$beam" --json \
    --hyp-out "$work/eval/$1.hyp" > "$work/eval/$1.json"
}
score_sub() {  # name task: its sub-network for the task, on the task's test sentences
  local sub=$exp/$1/sub_$2
  [[ -f $sub/model.safetensors ]] || "$moekit" extract "$exp/$1/final" --task "$2" --out "$sub" > /dev/null
  "$moekit" --threads "$job_threads" info "$sub" --json > "$work/eval/${1}_sub_$2.info.json"
  "$moekit" --threads "$job_threads" eval "$sub" "$work/eval/test_$2.tsv" --beam "$beam" --json \
    > "$work/eval/${1}_sub_$2.json"
}
score_jobs() {  # name: jobs scoring the model and, if task-routed, each language's sub-network
  log "stage 2: scoring $1 (beam $beam)"
  "$moekit" --threads "$job_threads" info "$exp/$1/final" --json > "$work/eval/$1.info.json"
  job "score_$1" score "$1"
  if grep -q '"routing": *"task"' "$work/eval/$1.info.json"; then
    for l in ${langs//,/ }; do job "score_${1}_sub_$l" score_sub "$1" "$l"; done
  fi
}

# Stages 1 and 2 share one pool of jobs: a model is scored as soon as it is
# trained, beside the trainings still running. The MoE models, which take
# longest, train first.
order=$(for name in $models; do grep -q '^  moe:' "$here/conf/$name.yaml" 2>/dev/null && echo "$name"; done
        for name in $models; do grep -q '^  moe:' "$here/conf/$name.yaml" 2>/dev/null || echo "$name"; done)
if [[ $stage -le 2 && $stop_stage -ge 1 ]]; then
  jobs_init "$job_slots"
  if [[ $stage -le 1 && $stop_stage -ge 1 ]]; then
    for name in $order; do
      if [[ -f $exp/$name/final/model.safetensors ]]; then log "$name: already trained"; continue; fi
      job "$name" train_one "$name"
    done
  fi
  if [[ $stage -le 2 && $stop_stage -ge 2 ]]; then
    mkdir -p "$work/eval"
    for l in ${langs//,/ }; do grep -P "^$l\t" "$data/test.tsv" > "$work/eval/test_$l.tsv"; done
    for name in $order; do
      jobs_need "$name"
      score_jobs "$name"
    done
  fi
  if [[ -n $student ]]; then
    if [[ $stage -le 1 && $stop_stage -ge 1 ]]; then
      jobs_need "$distill_teacher"
      if [[ -f $exp/$student/final/model.safetensors ]]; then
        log "$student: already trained"
      else
        jobs_wait || exit 1  # the distillation runs alone, on every thread
        resume=()
        [[ -d $exp/$student/checkpoints ]] && resume=(--resume)
        log "stage 1: distilling $student from $distill_teacher"
        "$moekit" --threads "$threads" distill "$exp/$distill_teacher/final" --config "$here/conf/$dense.yaml" \
          --train-data "$data/train.tsv" --valid-data "$data/valid.tsv" --exp-dir "$exp/$student" \
          --word-weight "${WORD_WEIGHT:-0.5}" "${resume[@]}" 2> >(grep -v "^epoch .* step" >&2)
      fi
    fi
    if [[ $stage -le 2 && $stop_stage -ge 2 ]]; then score_jobs "$student"; fi
  fi
  jobs_wait
fi

if [[ $stage -le 3 && $stop_stage -ge 3 ]]; then
  log "stage 3: results"
  compare=()
  [[ -n $student && " $models " == *" $dense "* && " $models " == *" $extracted "* ]] &&
    compare=(--dense "$dense" --distill "$distill_teacher" "$student" --extracted "$extracted")
  "$python" "$here/local/results.py" "$work/eval" --models $scored --langs "$langs" --out "$work/results.md" \
    --per-task $per_task "${compare[@]}"
  cat "$work/results.md"
fi
