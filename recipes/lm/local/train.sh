# Sourced by the LM recipe's scripts. Needs: moekit, threads, data, exp,
# log_name.
log() { echo "[$log_name $(date +%H:%M:%S)] $*" >&2; }

# train NAME ARGS...: trains into $exp/NAME unless its final model exists; resumes a killed run.
train() {
  local name=$1
  shift
  if [[ -f $exp/$name/final/model.safetensors ]]; then log "$name: already trained"; return; fi
  local resume=()
  [[ -d $exp/$name/checkpoints ]] && resume=(--resume)
  log "training $name"
  "$moekit" --threads "$threads" train lm --train-text "$data/train.txt" --valid-text "$data/valid.txt" \
    --exp-dir "$exp/$name" "${resume[@]}" "$@" 2> >(grep --line-buffered -v "^epoch .* step" >&2)
}

# train_with THREADS NAME ARGS...: train on THREADS threads.
train_with() {
  local threads=$1
  shift
  train "$@"
}
