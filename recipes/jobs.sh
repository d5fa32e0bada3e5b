# Sourced by the recipes: runs independent steps (trainings, evaluations)
# side by side, one single-threaded process per core. Small models' ops
# scale poorly over threads, so on 2 cores two 1-thread runs side by side
# finish well before two 2-thread runs one after the other.
#
#   jobs_plan THREADS       # sets job_slots and job_threads: THREADS jobs of one
#                           # thread each, or with PARALLEL= (or one thread) one
#                           # job at a time on THREADS threads
#   jobs_init SLOTS         # at most SLOTS jobs at once (1: one after the other)
#   job NAME CMD...         # runs CMD once a slot is free; its output lines,
#                           # prefixed "  NAME: ", go to stderr as they come
#   jobs_wait_for NAME      # waits for the job NAME (the others go on);
#                           # fails if it did (jobs_wait then names it)
#   jobs_need NAME          # waits for the job NAME; if it failed, waits for
#                           # the others, names the failures and exits 1
#   jobs_wait               # waits for every job; fails if one did
#
# A failed job does not stop the others (they are independent, and a
# training stopped midway would only resume later); jobs_wait then names it
# and fails, which stops the recipe.

jobs_plan() {
  if [[ -n ${PARALLEL-1} && $1 -ge 2 ]]; then job_slots=$1 job_threads=1; else job_slots=1 job_threads=$1; fi
}

jobs_init() {
  _job_slots=$1
  _job_failed=()
  declare -gA _job_names=()
}

job() {
  local name=$1
  shift
  while ((${#_job_names[@]} >= _job_slots)); do _job_reap; done
  (
    set -o pipefail
    "$@" 2>&1 | { grep --line-buffered -v "^epoch .* step" || true; } | sed -u "s/^/  $name: /" >&2
  ) &
  _job_names[$!]=$name
}

_job_reap() {
  local pid=""
  if ! wait -n -p pid "${!_job_names[@]}"; then
    [[ -n $pid ]] || return 0
    _job_failed+=("${_job_names[$pid]}")
  fi
  [[ -n $pid ]] && unset "_job_names[$pid]"
  return 0
}

jobs_wait_for() {
  local pid
  while :; do
    for pid in "${!_job_names[@]}"; do
      [[ ${_job_names[$pid]} == "$1" ]] && { _job_reap; continue 2; }
    done
    break
  done
  local failed
  for failed in "${_job_failed[@]}"; do
    [[ $failed == "$1" ]] && return 1
  done
  return 0
}

jobs_need() {
  jobs_wait_for "$1" || { jobs_wait || true; exit 1; }
}

jobs_wait() {
  while ((${#_job_names[@]} > 0)); do _job_reap; done
  if ((${#_job_failed[@]} > 0)); then
    echo "failed: ${_job_failed[*]}" >&2
    return 1
  fi
}
