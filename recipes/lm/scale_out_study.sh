#!/usr/bin/env bash
# Scale-Out at a budget that can show a difference: continued dense training
# against the upcycled MoE (8 experts, top-2) from one dense checkpoint, at
# equal training FLOPs, five times the full recipe's budget (1000 MoE steps),
# three seeds.
#
# The rule, the same for both arms: training continues from the learning
# rate the dense pretraining ended at (small.yaml's min_lr, 3e-4), after 10
# warmup steps, with a cosine decay to a tenth of it (3e-5) over the arm's
# own steps (conf/scale_out_study.yaml); nothing restarts at a higher rate.
# Seed s sets the upcycled router's initialisation and the order of the
# training windows, which is then the same for both arms (the dense arm,
# taking more steps for the same FLOPs, sees the MoE arm's batches first,
# then more of the same stream).
#
#   recipes/lm/scale_out_study.sh              # corpus, small model, 3 seeds x 2 arms
#   SEEDS="1" MOE_STEPS=200 recipes/lm/scale_out_study.sh   # shorter
# Results: $WORK/study.md (table, mean and spread over seeds) and
# $WORK/study.png (validation loss against training FLOPs, every run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
moekit=${MOEKIT:-$root/build/moekit}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-2}
work=${WORK:-$here/work/study}
seeds=${SEEDS:-1 2 3}
moe_steps=${MOE_STEPS:-1000}
export OPENBLAS_NUM_THREADS=1

# The corpus, tokenizer and small dense model of the full recipe (600 steps).
WORK=$work STOP_STAGE=1 THREADS=$threads MOEKIT=$moekit PYTHON=$python bash "$here/run.sh"
data=$work/data
exp=$work/exp

log_name="scale-out study"
source "$here/local/train.sh"  # log, train

for seed in $seeds; do
  conf=$exp/study_seed$seed.yaml
  sed "s/^  seed: .*/  seed: $seed/" "$here/conf/scale_out_study.yaml" > "$conf.tmp" && mv "$conf.tmp" "$conf"
  [[ -f $exp/study_upcycled_seed$seed.init/model.safetensors ]] ||
    "$moekit" upcycle "$exp/small/final" "$exp/study_upcycled_seed$seed.init" --experts 8 --top-k 2 --seed "$seed"
  train "study_upcycled_seed$seed" --config "$conf" --init "$exp/study_upcycled_seed$seed.init" \
    --total-steps "$moe_steps"
  budget=$("$python" -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if 'train_flops' in l][-1]['train_flops'])" \
    "$exp/study_upcycled_seed$seed/metrics.jsonl")
  log "seed $seed: budget $budget training FLOPs"
  train "study_dense_seed$seed" --config "$conf" --init "$exp/small/final" --flops-budget "$budget"
done
"$python" "$here/local/scale_out_study.py" "$exp" --seeds $seeds --out "$work/study.md" --plot "$work/study.png"
cat "$work/study.md"
