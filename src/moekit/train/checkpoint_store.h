#pragma once
// The training checkpoints of one experiment directory.
//
// A checkpoint is a directory <root>/step_<N>: the model (model directory
// format) and the task's assets, Adam's moments by parameter name
// (optimizer.safetensors: <name>.exp_avg, <name>.exp_avg_sq, <name>.step),
// the CPU random generators (rng.safetensors) and trainer_state.yaml.
// An expert-parallel run's checkpoint is sharded (dist/sharded_checkpoint.h):
// model.safetensors and optimizer.safetensors hold everything but the
// experts, each shard's rank writes its experts and their moments
// (experts.shard<k>.safetensors, optimizer.shard<k>.safetensors), and
// manifest.json names them; it loads into any number of processes and any
// ep_size, and `moekit consolidate` makes it one model directory. It is
// written in a temporary sibling (.step_<N>.tmp.*) and renamed into place
// complete, so one killed while being written is never resumed from; the
// store removes such leftovers when it opens the directory.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moekit/core/file_io.h"
#include "moekit/core/safetensors.h"
#include "moekit/dist/sharded_checkpoint.h"
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
  // MoE row budgets (dropless training on the padded dispatch): each
  // budgeted layer's recent load over the mean load, per expert, in model
  // order (rank 0's; empty for a layer that has not routed yet), and the
  // run's budget counters. A resumed run sizes the experts' blocks as the
  // uninterrupted run would and reports the whole run's figures.
  std::vector<std::vector<double>> moe_load_estimates;
  int64_t moe_reruns = 0;               // batch forwards run again with more rows
  double moe_budget_rows = 0;           // rows the experts computed
  double moe_budget_assignments = 0;    // assignments routed to them

  // An epoch boundary or the run's end: a checkpoint the final average may use.
  bool averageable() const { return next_batch == 0 || end_of_run; }
};

// What the other ranks of a distributed run add to rank 0's checkpoint.
struct CheckpointOtherRanks {
  std::vector<torch::Tensor> rng;  // rank r's generator state at r - 1 ("cpu.rank<r>")
  // A run on CUDA: every rank's CUDA generator state, rank 0's first ("cuda", "cuda.rank<r>").
  std::vector<torch::Tensor> cuda_rng;
  // Expert parallelism: the parameters sharded over the EP group (their
  // whole shapes) and the number of shards, which the shards' writers have
  // put into the staged directory (write_expert_shard); shards 1: none.
  dist::ShardManifest experts;
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::string root);

  const std::string& root() const { return root_; }
  // Complete checkpoints, oldest (fewest steps) first.
  std::vector<std::string> list() const;
  // A sharded checkpoint is written in three calls: rank 0 stages the
  // directory of step `step` (returned; every rank writes into it), each
  // shard's rank adds its shard (write_expert_shard), then rank 0 writes the
  // rest and renames it into place (save).
  std::string stage(int64_t step);
  // Shard `shard`'s files in `staged`: the parameters of `model` named in
  // `sharded` (this rank's slices) and their Adam moments.
  static void write_expert_shard(const std::string& staged, int64_t shard, const Model& model,
                                 const torch::optim::Optimizer& optimizer, const dist::ShardManifest& sharded);
  // Writes step_<state.step> (in the staged directory, if stage() made
  // one): the model (without the sharded experts, which their ranks wrote),
  // `save_assets` (the task's assets, given the directory), the optimizer's
  // moments, the default CPU generator's state and `state`; then removes the
  // oldest until `keep` remain.
  using OtherRanks = CheckpointOtherRanks;
  void save(const TrainerState& state, const Model& model, torch::optim::Optimizer& optimizer,
            const std::function<void(const std::string&)>& save_assets, int64_t keep,
            const OtherRanks& others = {});
  // Reads `dir`'s state; loads its whole weights into `model` and Adam's
  // moments into `optimizer`, then calls `after_weights` (expert parallelism
  // shards the model and the moments there), then loads `rank`'s generator
  // state into the default CPU generator (and, for a model on a CUDA device,
  // its CUDA generator's, where the checkpoint was written on CUDA). *rng_restored is false (the
  // generator untouched) when the checkpoint has no state for that rank (a
  // run resumed on more processes than it was saved from). Checkpoints of
  // the earlier format (optimizer.pt, optimizer.rank<r>.pt) load too: the
  // moments after `after_weights`, from `rank`'s archive.
  TrainerState load(const std::string& dir, Model& model, torch::optim::Optimizer& optimizer, int rank = 0,
                    bool* rng_restored = nullptr, const std::function<void()>& after_weights = {}) const;
  // The state in `dir`'s trainer_state.yaml.
  static TrainerState read_state(const std::string& dir);
  // Whether `dir` holds the moments by name (any layout resumes from it)
  // rather than per-rank archives of the earlier format.
  static bool has_named_moments(const std::string& dir);
  // The whole model's weights in a checkpoint (shards concatenated) or in
  // an ordinary model directory.
  static TensorMap read_weights(const std::string& dir);

 private:
  std::string root_;
  std::unique_ptr<OutputDir> staged_;
  int64_t staged_step_ = -1;
};

}  // namespace moekit
