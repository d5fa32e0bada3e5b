#pragma once
// The one training loop of MoEKit: a task supplies batches and losses; the
// trainer runs Adam with a warmup schedule, gradient accumulation and
// clipping, periodic validation, atomic checkpoints and exact resume
// (weights, optimizer moments, RNG state, schedule step and data position),
// and averages the last checkpoints into the final model.
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>
#include <string>

#include "moekit/models/model.h"

namespace moekit {

template <class Options>
class FieldTable;

struct TrainerOptions {
  int64_t epochs = 10;
  double lr = 1e-3;
  int64_t warmup_steps = 1000;  // WeNet's WarmupLR: lr * w^0.5 * min(s^-0.5, s * w^-1.5)
  double weight_decay = 0.0;
  double grad_clip = 5.0;       // max global grad norm (<= 0: off)
  int64_t accum_grad = 1;       // batches per optimizer step
  int64_t log_interval = 10;    // optimizer steps between progress lines
  int64_t save_interval = 0;    // optimizer steps between mid-epoch checkpoints (0: epoch ends only)
  int64_t keep_checkpoints = 5; // newest kept (at least average_last)
  int64_t average_last = 5;     // final model = mean of the last N checkpoints' weights
  uint64_t seed = 777;
  int64_t max_steps = 0;        // pause (with a checkpoint) after this many optimizer steps in total (0: no limit)
  std::string scheduler = "warmuplr";  // warmuplr (WeNet) | cosine (linear warmup, cosine decay to min_lr)
  double min_lr = 0.0;          // cosine: the final learning rate
  int64_t total_steps = 0;      // the run ends after this many optimizer steps (0: after `epochs`); cosine's horizon
  int64_t eval_interval = 0;    // optimizer steps between validations (0: epoch ends only)
  bool validate_first = false;  // validate once before the first step (step 0 of a fresh run)
  double peak_flops = 0.0;      // FLOP/s that MFU is relative to (0: measure a GEMM at start)
  int64_t ep_size = 1;          // distributed runs: processes each MoE layer's experts are sharded over
  double bucket_mb = 25.0;      // distributed runs: gradient all-reduce bucket size (DDP's bucket_cap_mb)
  bool overlap_grad_reduce = true;  // distributed runs: all-reduce buckets during the backward pass
  std::string autocast = "none";  // none | bf16: the forward pass under CUDA bfloat16 autocast (fp32 master weights)
  std::string moe_dispatch = "auto";  // auto | sorted | padded: every MoE layer's MoEDispatch (moe/moe_layer.h)
  double moe_row_margin = 1.5;  // padded dropless training: each expert's rows = this x its recent peak load

  // The field table (core/fields.h) behind the functions below.
  static const FieldTable<TrainerOptions>& fields();
  void validate() const;
  YAML::Node to_yaml() const;
  // Unknown keys are refused (naming the closest known one); calls validate().
  static TrainerOptions from_yaml(const YAML::Node& node, const std::string& where);
};

struct BatchLoss {
  torch::Tensor loss;                   // to minimise (scaled by the trainer for accumulation)
  std::map<std::string, double> parts;  // logged
  int64_t units = 0;                    // e.g. feature frames, for throughput
};

class TrainTask {
 public:
  virtual ~TrainTask() = default;
  // Where the model is and the batches go (the trainer moves the model
  // there and tells the task).
  void set_device(const torch::Device& device) { device_ = device; }
  const torch::Device& device() const { return device_; }
  virtual Model& model() = 0;
  virtual int64_t num_batches(int64_t epoch) = 0;  // deterministic per epoch
  virtual BatchLoss train_batch(int64_t epoch, int64_t index) = 0;
  virtual std::map<std::string, double> validate() = 0;  // must contain "loss"
  virtual void save_assets(const std::string& model_dir) = 0;  // units.txt etc.
  virtual std::string units_name() const { return "frames"; }
  // Training FLOPs (forward + backward) per unit, for MFU in the progress line (0: not reported).
  virtual double flops_per_unit() const { return 0.0; }

 protected:
  torch::Device device_ = torch::kCPU;
};

struct TrainSummary {
  int64_t steps = 0;
  bool completed = false;  // all epochs or total_steps done (false when max_steps paused it)
  std::map<std::string, double> last_validation;
  std::string final_dir;
  int64_t moe_reruns = 0;  // batches run again because an expert's load exceeded its row budget
};

// Trains in `exp_dir` (checkpoints/, metrics.jsonl, final/) on `device`
// (the model, its optimizer state and every batch there; checkpoints are
// device-independent). With `resume`, continues from the newest complete
// checkpoint there, whichever device wrote it.
TrainSummary train(TrainTask& task, const TrainerOptions& options, const std::string& exp_dir, bool resume,
                   const torch::Device& device = torch::kCPU);

// Mean of the weights of several model directories (same architecture), saved to `out_dir`.
void average_model_dirs(const std::vector<std::string>& dirs, const std::string& out_dir);

}  // namespace moekit
