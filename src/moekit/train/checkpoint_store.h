#pragma once
// The training checkpoints of one experiment directory.
//
// A checkpoint is a directory <root>/step_<N>: the model (model directory
// format) and the task's assets, the optimizer state (optimizer.pt), the
// CPU random generator (rng.safetensors) and trainer_state.yaml. It is
// written in a temporary sibling (.step_<N>.tmp.*) and renamed into place
// complete, so one killed while being written is never resumed from; the
// store removes such leftovers when it opens the directory.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moekit/models/model.h"

namespace moekit {

// Where a run stands: what trainer_state.yaml holds.
struct TrainerState {
  int64_t step = 0;         // optimizer steps taken
  int64_t epoch = 0;        // the epoch to continue in (0-based)
  int64_t next_batch = 0;   // the batch of that epoch to continue with
  double lr = 0.0;          // the learning rate of the last step (for reading, not resuming)
  int64_t units_total = 0;  // units trained on so far (frames, tokens)
  bool end_of_run = false;  // the run's last checkpoint (total_steps reached mid-epoch)

  // An epoch boundary or the run's end: a checkpoint the final average may use.
  bool averageable() const { return next_batch == 0 || end_of_run; }
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::string root);

  const std::string& root() const { return root_; }
  // Complete checkpoints, oldest (fewest steps) first.
  std::vector<std::string> list() const;
  // Writes step_<state.step>: the model, `save_assets` (the task's assets,
  // given the directory), the optimizer, the default CPU generator's state
  // and `state`; then removes the oldest until `keep` remain.
  // `other_ranks_rng`: the generator states of a data-parallel run's other
  // ranks (rank r's under "cpu.rank<r>"), saved beside this process's.
  void save(const TrainerState& state, const Model& model, torch::optim::Optimizer& optimizer,
            const std::function<void(const std::string&)>& save_assets, int64_t keep,
            const std::vector<torch::Tensor>& other_ranks_rng = {});
  // Reads `dir`'s state; loads its weights into `model`, its optimizer
  // state into `optimizer` and the generator state of `rank` into the
  // default CPU generator. Returns false (the generator untouched) when the
  // checkpoint has no state for that rank (a run resumed on more processes
  // than it was saved from).
  TrainerState load(const std::string& dir, Model& model, torch::optim::Optimizer& optimizer, int rank = 0,
                    bool* rng_restored = nullptr) const;
  // The state in `dir`'s trainer_state.yaml.
  static TrainerState read_state(const std::string& dir);

 private:
  std::string root_;
};

}  // namespace moekit
