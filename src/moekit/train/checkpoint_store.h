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

#include "moekit/core/safetensors.h"
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
  // The process layout that wrote it; a checkpoint of an expert-parallel
  // run (ep_size > 1, each rank's optimizer moments for its own experts)
  // resumes on the same layout only.
  int64_t world_size = 1;
  int64_t ep_size = 1;

  // An epoch boundary or the run's end: a checkpoint the final average may use.
  bool averageable() const { return next_batch == 0 || end_of_run; }
};

// What the other ranks of a distributed run add to rank 0's checkpoint.
struct CheckpointOtherRanks {
  std::vector<torch::Tensor> rng;       // rank r's generator state at r - 1 ("cpu.rank<r>")
  std::vector<std::string> optimizers;  // expert parallelism: rank r's serialized optimizer (optimizer.rank<r>.pt)
  const TensorMap* weights = nullptr;   // written instead of the model's (experts gathered from every rank)
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
  using OtherRanks = CheckpointOtherRanks;
  void save(const TrainerState& state, const Model& model, torch::optim::Optimizer& optimizer,
            const std::function<void(const std::string&)>& save_assets, int64_t keep,
            const OtherRanks& others = {});
  // Reads `dir`'s state; loads its weights into `model`, then calls
  // `after_weights` (expert parallelism shards the model there), then loads
  // `rank`'s optimizer state into `optimizer` and its generator state into
  // the default CPU generator. *rng_restored is false (the generator
  // untouched) when the checkpoint has no state for that rank (a run resumed
  // on more processes than it was saved from).
  TrainerState load(const std::string& dir, Model& model, torch::optim::Optimizer& optimizer, int rank = 0,
                    bool* rng_restored = nullptr, const std::function<void()>& after_weights = {}) const;
  // A serialized optimizer (torch archive bytes), as save writes it.
  static std::string serialize(torch::optim::Optimizer& optimizer);
  // The state in `dir`'s trainer_state.yaml.
  static TrainerState read_state(const std::string& dir);

 private:
  std::string root_;
};

}  // namespace moekit
