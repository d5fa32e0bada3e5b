#!/usr/bin/env bash
# AquilaMoE EfficientScale recipe on local text: a small dense LLaMA-style
# model is pretrained, then
#   Scale-Up:  grown to 2x width and 2x depth by random init, FPI-stack,
#              FPI-interpolate, AKI-stack and AKI-Pro (aki + interpolate),
#              each trained for the same number of steps;
#   Scale-Out: from the same dense checkpoint, at equal training FLOPs:
#              (a) continued dense training, (b) the upcycled MoE (8 experts,
#              top-2), (c) the same MoE from scratch.
# Results: work/results.md (tables) and work/scale_out.png (curves).
#
#   recipes/lm/run.sh            # full recipe
#   DEMO=1 recipes/lm/run.sh     # the short version `make demo` runs
#
# Stages (STAGE / STOP_STAGE): 0 corpus + tokenizer, 1 small dense model,
# 2 Scale-Up, 3 Scale-Out, 4 tables + plot. A killed run picks up where it
# stopped: finished models are kept, training resumes from checkpoints.
# Independent trainings run side by side, one thread each, the Scale-Up and
# Scale-Out runs in one pool (PARALLEL= for one after the other on THREADS
# threads).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
moekit=${MOEKIT:-$root/build/moekit}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-2}
stage=${STAGE:-0}
stop_stage=${STOP_STAGE:-4}

if [[ -n "${DEMO:-}" ]]; then
  work=${WORK:-$root/build/demo_lm}
  small_steps=${SMALL_STEPS:-150} grow_steps=${GROW_STEPS:-12} out_steps=${OUT_STEPS:-30}
else
  work=${WORK:-$here/work}
  small_steps=${SMALL_STEPS:-600} grow_steps=${GROW_STEPS:-100} out_steps=${OUT_STEPS:-200}
fi
data=$work/data
exp=$work/exp
export OPENBLAS_NUM_THREADS=1  # LibTorch's own threads do the parallel work (--threads)

log_name="lm recipe"
source "$here/local/train.sh"  # log, train
source "$root/recipes/jobs.sh"   # jobs_plan, jobs_init, job, jobs_need, jobs_wait
jobs_plan "$threads"

if [[ $stage -le 0 && $stop_stage -ge 0 ]]; then
  log "stage 0: corpus and tokenizer"
  "$python" "$here/local/make_corpus.py" "$data" ${GCIDE_MB:+--gcide-mb "$GCIDE_MB"}
  [[ -f $data/tokenizer.model ]] ||
    "$moekit" tokenizer train --input "$data/train.txt" --output "$data/tokenizer.model" --vocab-size 4000
fi

if [[ $stage -le 1 && $stop_stage -ge 1 ]]; then
  log "stage 1: small dense model ($small_steps steps)"
  train small --config "$here/conf/small.yaml" --tokenizer "$data/tokenizer.model" --total-steps "$small_steps"
fi

grow_and_train() {  # name width depth
  [[ -f $exp/$1.init/model.safetensors ]] ||
    "$moekit" grow "$exp/small/final" "$exp/$1.init" --d-model 256 --d-ffn 688 --n-layers 8 --width "$2" --depth "$3"
  train_with "$job_threads" "$1" --config "$here/conf/grow_train.yaml" --init "$exp/$1.init" --total-steps "$grow_steps"
}

upcycle_and_train() {
  [[ -f $exp/upcycled.init/model.safetensors ]] ||
    "$moekit" upcycle "$exp/small/final" "$exp/upcycled.init" --experts 8 --top-k 2 --seed 1
  train_with "$job_threads" out_upcycled --config "$here/conf/scale_out.yaml" --init "$exp/upcycled.init" \
    --total-steps "$out_steps"
}

# Stages 2 and 3 both start from the small model and share one pool of
# jobs: the upcycled MoE first (the other Scale-Out runs need its training
# FLOPs), the growth runs, then the other Scale-Out runs.
if [[ $stage -le 3 && $stop_stage -ge 2 ]]; then
  jobs_init "$job_slots"
  if [[ $stage -le 3 && $stop_stage -ge 3 ]]; then
    log "stage 3: Scale-Out at equal training FLOPs ($out_steps steps of the MoE)"
    job out_upcycled upcycle_and_train
  fi
  if [[ $stage -le 2 && $stop_stage -ge 2 ]]; then
    log "stage 2: Scale-Up to 2x width and depth ($grow_steps steps each)"
    job grow_random train_with "$job_threads" grow_random --config "$here/conf/big.yaml" \
      --tokenizer "$data/tokenizer.model" --total-steps "$grow_steps"
    for method in fpi:stack fpi:interpolate aki:stack aki:interpolate; do
      width=${method%:*} depth=${method#*:}
      job "grow_${width}_${depth}" grow_and_train "grow_${width}_${depth}" "$width" "$depth"
    done
  fi
  if [[ $stage -le 3 && $stop_stage -ge 3 ]]; then
    jobs_need out_upcycled
    budget=$("$python" -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if 'train_flops' in l][-1]['train_flops'])" \
      "$exp/out_upcycled/metrics.jsonl")
    log "stage 3: budget $budget training FLOPs (the upcycled MoE's) for dense and from-scratch runs"
    job out_dense train_with "$job_threads" out_dense --config "$here/conf/scale_out.yaml" --init "$exp/small/final" \
      --flops-budget "$budget"
    job out_scratch train_with "$job_threads" out_scratch --config "$here/conf/scale_out.yaml" \
      --tokenizer "$data/tokenizer.model" --flops-budget "$budget"
  fi
  jobs_wait
fi

if [[ $stage -le 4 && $stop_stage -ge 4 ]]; then
  log "stage 4: tables and curves"
  "$python" "$here/local/results.py" "$exp" --out "$work/results.md" --plot "$work/scale_out.png"
  cat "$work/results.md"
fi
