#include "moekit/train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/runtime.h"
#include "moekit/core/safetensors.h"
#include "moekit/train/checkpoint_store.h"
#include "moekit/train/metrics_log.h"
#include "moekit/train/schedule.h"

namespace moekit {

void average_model_dirs(const std::vector<std::string>& dirs, const std::string& out_dir) {
  MOEKIT_CHECK_ARG(!dirs.empty(), "average: no model directories");
  YAML::Node config = read_model_config(dirs.front());
  MOEKIT_CHECK_ARG(!config["quantization"], "average: ", dirs.front(), " is quantized; average the float models");
  TensorMap sum;
  for (const auto& dir : dirs) {
    const TensorMap w = read_model_weights(dir);
    if (sum.empty()) {
      for (const auto& [name, t] : w) sum[name] = t.is_floating_point() ? t.to(torch::kDouble) : t.clone();
      continue;
    }
    MOEKIT_CHECK_ARG(w.size() == sum.size(), "average: ", dir, " holds different tensors than ", dirs.front());
    for (const auto& [name, t] : w) {
      auto it = sum.find(name);
      MOEKIT_CHECK_ARG(it != sum.end() && it->second.sizes() == t.sizes(), "average: ", dir, ": tensor ", name,
                       " does not match ", dirs.front());
      if (t.is_floating_point()) it->second += t.to(torch::kDouble);
    }
  }
  const TensorMap first = read_model_weights(dirs.front());
  for (auto& [name, t] : sum)
    if (t.is_floating_point()) t = (t / static_cast<double>(dirs.size())).to(first.at(name).scalar_type());
  save_model_dir(out_dir, config, sum);
}

namespace {

// The training loop's state and its pieces: the optimizer, the checkpoint
// store, the metrics log and the schedule's horizon.
class TrainLoop {
 public:
  TrainLoop(TrainTask& task, const TrainerOptions& o, const std::string& exp_dir, bool resume)
      : task_(task),
        o_(o),
        model_(task.model()),
        store_(exp_dir + "/checkpoints"),
        metrics_(exp_dir + "/metrics.jsonl") {
    for (auto& p : model_.parameters())
      if (p.requires_grad()) params_.push_back(p);
    optimizer_ = std::make_unique<torch::optim::Adam>(
        params_, torch::optim::AdamOptions(o.lr).weight_decay(o.weight_decay));
    MOEKIT_CHECK_ARG(!store_.list().empty() || !path_exists(exp_dir + "/final"), exp_dir,
                     ": holds a finished model (final/) and no checkpoints to resume from; use a new directory");
    if (resume) {
      const auto found = store_.list();
      if (!found.empty()) {
        state_ = store_.load(found.back(), model_, *optimizer_);
        std::cerr << "resumed from " << found.back() << " (step " << state_.step << ", epoch " << state_.epoch + 1
                  << ", batch " << state_.next_batch << ")\n";
      }
    } else {
      MOEKIT_CHECK_ARG(store_.list().empty(), exp_dir,
                       ": holds checkpoints already; pass --resume to continue, or use a new directory");
      torch::manual_seed(o.seed);
    }
    // What a killed run logged after its last checkpoint is logged again.
    metrics_.keep_through_step(state_.step);
    // The cosine schedule's horizon: total_steps, else every epoch's optimizer steps.
    horizon_ = o.total_steps;
    if (horizon_ == 0 && o.scheduler == "cosine")
      for (int64_t e = 0; e < o.epochs; ++e) horizon_ += (task.num_batches(e) + o.accum_grad - 1) / o.accum_grad;
    flops_per_unit_ = task.flops_per_unit();
    peak_flops_ = flops_per_unit_ > 0 ? (o.peak_flops > 0 ? o.peak_flops : gemm_gflops(768, 0.3) * 1e9) : 0.0;
    if (peak_flops_ > 0)
      std::cerr << "MFU relative to " << std::fixed << std::setprecision(1) << peak_flops_ / 1e9 << " GFLOP/s ("
                << (o.peak_flops > 0 ? "peak_flops" : "a measured fp32 GEMM") << ")\n";
  }

  TrainSummary run(const std::string& exp_dir);

 private:
  void save_checkpoint(int64_t at_epoch, int64_t at_batch, bool end_of_run) {
    TrainerState s = state_;
    s.epoch = at_epoch;
    s.next_batch = at_batch;
    s.lr = scheduled_lr(o_, state_.step, horizon_);
    s.end_of_run = end_of_run;
    store_.save(s, model_, *optimizer_, [&](const std::string& dir) { task_.save_assets(dir); },
                std::max(o_.keep_checkpoints, o_.average_last));
  }
  void validate_and_log(int64_t at_epoch) {
    const bool was_training = model_.is_training();
    model_.eval();
    {
      torch::NoGradGuard no_grad;
      summary_.last_validation = task_.validate();
    }
    if (was_training) model_.train();
    nlohmann::json j = {{"epoch", at_epoch}, {"step", state_.step}, {task_.units_name(), state_.units_total}};
    if (flops_per_unit_ > 0) j["train_flops"] = flops_per_unit_ * static_cast<double>(state_.units_total);
    for (const auto& [k, v] : summary_.last_validation) j["cv_" + k] = v;
    std::cerr << validation_line(state_.step, summary_.last_validation) << "\n";
    metrics_.write(j);
  }
  // One optimizer step on the accumulated gradients; returns the gradient norm.
  double step(double lr) {
    double grad_norm = 0;
    if (o_.grad_clip > 0) grad_norm = torch::nn::utils::clip_grad_norm_(params_, o_.grad_clip);
    for (auto& group : optimizer_->param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    if (std::isfinite(grad_norm)) optimizer_->step();
    optimizer_->zero_grad();
    return grad_norm;
  }
  // The final model: the mean of the last epoch-end checkpoints.
  void average_final(const std::string& exp_dir) {
    std::vector<std::string> epoch_ends;
    for (const auto& dir : store_.list())
      if (CheckpointStore::read_state(dir).averageable()) epoch_ends.push_back(dir);
    const size_t n = std::min(epoch_ends.size(), static_cast<size_t>(o_.average_last));
    MOEKIT_CHECK(n > 0, "train: no epoch-end checkpoint to build the final model from");
    std::vector<std::string> last(epoch_ends.end() - static_cast<std::ptrdiff_t>(n), epoch_ends.end());
    summary_.final_dir = exp_dir + "/final";
    // Written whole and renamed into place: a resumed run that finishes
    // again replaces the final model, never mixes two.
    OutputDir final_dir(summary_.final_dir, /*force=*/true);
    average_model_dirs(last, final_dir.path());
    task_.save_assets(final_dir.path());
    final_dir.commit();
    std::cerr << "final model: mean of the last " << n << " epoch checkpoints -> " << summary_.final_dir << "\n";
  }

  TrainTask& task_;
  const TrainerOptions& o_;
  Model& model_;
  CheckpointStore store_;
  MetricsLog metrics_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  TrainerState state_;
  int64_t horizon_ = 0;
  double flops_per_unit_ = 0, peak_flops_ = 0;
  TrainSummary summary_;
};

TrainSummary TrainLoop::run(const std::string& exp_dir) {
  const TrainerOptions& o = o_;
  int64_t epoch = state_.epoch, next_batch = state_.next_batch;
  const auto start = std::chrono::steady_clock::now();
  auto last_log = start;
  int64_t units_done = 0;
  bool stopped = false, stopped_mid_epoch = false, run_end = false;
  int64_t run_end_batch = 0;
  // A finished run: only the final model is left.
  if (o.total_steps > 0 && state_.step >= o.total_steps) epoch = o.epochs;
  if (o.validate_first && state_.step == 0) validate_and_log(0);
  for (; epoch < o.epochs; ++epoch, next_batch = 0) {
    model_.train();
    const int64_t batches = task_.num_batches(epoch);
    MOEKIT_CHECK_ARG(batches > 0, "train: epoch ", epoch + 1, " has no batches");
    std::map<std::string, double> running;
    int64_t running_n = 0;
    optimizer_->zero_grad();
    for (int64_t b = next_batch; b < batches; ++b) {
      BatchLoss loss = task_.train_batch(epoch, b);
      MOEKIT_CHECK(loss.loss.defined(), "train: task returned no loss");
      const double value = loss.loss.item<double>();
      if (!std::isfinite(value)) {
        std::cerr << "warning: non-finite loss at epoch " << epoch + 1 << " batch " << b << ", batch skipped\n";
        optimizer_->zero_grad();
        continue;
      }
      (loss.loss / static_cast<double>(o.accum_grad)).backward();
      units_done += loss.units;
      state_.units_total += loss.units;
      for (const auto& [k, v] : loss.parts) running[k] += v;
      running["loss"] += value;
      ++running_n;
      const bool boundary = (b + 1) % o.accum_grad == 0 || b + 1 == batches;
      if (!boundary) continue;
      ++state_.step;
      const double lr = scheduled_lr(o, state_.step, horizon_);
      const double grad_norm = step(lr);
      if (state_.step % o.log_interval == 0) {
        const auto now = std::chrono::steady_clock::now();
        const double interval = std::max(std::chrono::duration<double>(now - last_log).count(), 1e-9);
        last_log = now;
        ProgressReport r;
        r.epoch = epoch + 1;
        r.epochs = o.epochs;
        r.batch = b + 1;
        r.batches = batches;
        r.step = state_.step;
        for (const auto& [k, v] : running) r.means[k] = v / running_n;
        r.lr = lr;
        r.grad_norm = grad_norm;
        r.units_name = task_.units_name();
        r.units_per_s = units_done / interval;
        if (peak_flops_ > 0) r.mfu = flops_per_unit_ * static_cast<double>(units_done) / interval / peak_flops_;
        r.elapsed_s = std::chrono::duration<double>(now - start).count();
        r.done = o.total_steps > 0 ? static_cast<double>(state_.step) / static_cast<double>(o.total_steps)
                                   : (epoch + static_cast<double>(b + 1) / batches) / o.epochs;
        std::cerr << progress_line(r) << "\n";
        metrics_.write(progress_record(r));
        running.clear();
        running_n = 0;
        units_done = 0;
      }
      if (o.total_steps > 0 && state_.step >= o.total_steps) {
        run_end = true;  // the run's length: validate, checkpoint, final model
        run_end_batch = b + 1;
        break;
      }
      if (o.eval_interval > 0 && state_.step % o.eval_interval == 0 && b + 1 < batches) validate_and_log(epoch + 1);
      if (o.max_steps > 0 && state_.step >= o.max_steps) {
        // A step budget: stop here with a checkpoint a later --resume continues from.
        stopped = true;
        if (b + 1 < batches) {
          save_checkpoint(epoch, b + 1, false);
          stopped_mid_epoch = true;
          break;
        }
      }
      if (o.save_interval > 0 && state_.step % o.save_interval == 0 && b + 1 < batches)
        save_checkpoint(epoch, b + 1, false);
    }
    if (stopped_mid_epoch) break;
    validate_and_log(epoch + 1);
    if (run_end && run_end_batch < batches) {
      save_checkpoint(epoch, run_end_batch, true);
      epoch = o.epochs;
      break;
    }
    save_checkpoint(epoch + 1, 0, run_end);
    if (run_end) {
      epoch = o.epochs;
      break;
    }
    if (stopped) {
      ++epoch;
      break;
    }
  }
  summary_.steps = state_.step;
  summary_.completed = epoch >= o.epochs && !stopped_mid_epoch;
  if (!summary_.completed) {
    std::cerr << "stopped at step " << state_.step << " (max_steps); --resume continues from the checkpoint\n";
    return summary_;
  }
  average_final(exp_dir);
  return summary_;
}

}  // namespace

TrainSummary train(TrainTask& task, const TrainerOptions& o, const std::string& exp_dir, bool resume) {
  o.validate();
  TrainLoop loop(task, o, exp_dir, resume);
  return loop.run(exp_dir);
}

}  // namespace moekit
