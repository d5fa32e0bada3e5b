#include "moekit/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <set>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/runtime.h"
#include "moekit/core/safetensors.h"
#include "moekit/dist/grad_sync.h"
#include "moekit/dist/process_group.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/train/adamw.h"
#include "moekit/train/checkpoint_store.h"
#include "moekit/train/metrics_log.h"
#include "moekit/train/optimizer_state.h"
#include "moekit/train/schedule.h"

namespace moekit {

void average_model_dirs(const std::vector<std::string>& dirs, const std::string& out_dir) {
  MOEKIT_CHECK_ARG(!dirs.empty(), "average: no model directories");
  YAML::Node config = read_model_config(dirs.front());
  MOEKIT_CHECK_ARG(!config["quantization"], "average: ", dirs.front(), " is quantized; average the float models");
  TensorMap sum;
  for (const auto& dir : dirs) {
    const TensorMap w = CheckpointStore::read_weights(dir);
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
  const TensorMap first = CheckpointStore::read_weights(dirs.front());
  for (auto& [name, t] : sum)
    if (t.is_floating_point()) t = (t / static_cast<double>(dirs.size())).to(first.at(name).scalar_type());
  save_model_dir(out_dir, config, sum);
}

namespace {

// torch.autocast("cuda", dtype=torch.bfloat16) for one forward pass: ops on
// CUDA tensors run in bfloat16 where autocast's lists say so (matmuls,
// convolutions), in float32 where precision needs it (softmax, losses); the
// weights stay float32 and the backward pass follows the forward's dtypes.
class CudaBf16Autocast {
 public:
  explicit CudaBf16Autocast(bool on) : on_(on) {
    if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    was_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    was_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
#else
    was_enabled_ = at::autocast::is_enabled();
    was_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
#endif
    at::autocast::increment_nesting();
  }
  ~CudaBf16Autocast() {
    if (!on_) return;
    // The casts cached for this pass are dropped when the outermost one ends.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, was_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, was_dtype_);
#else
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(was_dtype_);
#endif
  }
  CudaBf16Autocast(const CudaBf16Autocast&) = delete;
  CudaBf16Autocast& operator=(const CudaBf16Autocast&) = delete;

 private:
  bool on_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kHalf;
};

// The training loop's state and its pieces: the optimizer, the checkpoint
// store, the metrics log and the schedule's horizon.
//
// Data parallel over dist::world() when it has several ranks: every rank
// holds the whole model; an epoch's batches are dealt out (batch b of the
// epoch to rank b mod W, so one optimizer step sees W consecutive batches per
// accumulation slot, as one process with W times accum_grad would);
// gradients are averaged over the ranks before clipping (BatchNorm's running
// statistics before each validation and checkpoint); logged losses and
// throughput are the run's; rank 0 alone writes checkpoints, metrics and
// the final model, with every rank's generator state in the checkpoint.
//
// With ep_size P > 1 the MoE layers' experts are sharded over groups of P
// consecutive ranks (expert parallelism, moe/moe_layer.h), the rest stays
// data parallel: dense gradients are averaged over every rank, an expert's
// over the ranks holding it; the clipping norm is the run's; checkpoints
// are sharded (each of the first EP group's ranks writes its experts and
// their moments, rank 0 the rest) and resume on any layout.
class TrainLoop {
 public:
  TrainLoop(TrainTask& task, const TrainerOptions& o, const std::string& exp_dir, bool resume,
            const torch::Device& device)
      : task_(task),
        o_(o),
        model_(task.model()),
        world_(dist::world()),
        lead_(world_->rank() == 0),
        device_(device),
        store_(exp_dir + "/checkpoints") {
    MOEKIT_CHECK_ARG(o.autocast == "none" || device.is_cuda(), "train_conf.autocast ", o.autocast,
                     " needs --device cuda (training on the CPU runs in float32)");
    model_.to(device);
    task.set_device(device);
    MOEKIT_CHECK_ARG(o.moe_dispatch != "padded" || o.ep_size == 1,
                     "train_conf.moe_dispatch padded keeps every expert in one process: it cannot run with ep_size ",
                     o.ep_size);
    const MoEDispatch dispatch = o.moe_dispatch == "sorted"   ? MoEDispatch::Sorted
                                 : o.moe_dispatch == "padded" ? MoEDispatch::Padded
                                                              : MoEDispatch::Auto;
    for (MoELayerImpl* moe : moe_layers(model_)) moe->set_dispatch(dispatch);
    // Dropless training on the padded dispatch (a GPU's, or asked for) runs
    // under row budgets: the first batch with N rows per expert (none can
    // exceed it), then each expert's block sized from its recent loads.
    if (o.ep_size == 1 && o.moe_dispatch != "sorted" && (device.is_cuda() || o.moe_dispatch == "padded")) {
      for (MoELayerImpl* moe : moe_layers(model_)) {
        moe->set_row_budget(static_cast<double>(moe->options().num_experts) / moe->options().top_k);
        budgeted_layers_.push_back(moe);
      }
    }
    if (lead_) metrics_ = std::make_unique<MetricsLog>(exp_dir + "/metrics.jsonl");
    for (auto& p : model_.parameters())
      if (p.requires_grad()) params_.push_back(p);
    optimizer_ = std::make_unique<AdamW>(params_, o.lr, o.weight_decay);
    MOEKIT_CHECK_ARG(!store_.list().empty() || !path_exists(exp_dir + "/final"), exp_dir,
                     ": holds a finished model (final/) and no checkpoints to resume from; use a new directory");
    const auto found = store_.list();
    MOEKIT_CHECK_ARG(resume || found.empty(), exp_dir,
                     ": holds checkpoints already; pass --resume to continue, or use a new directory");
    // Every rank has looked at the directory before rank 0 writes into it.
    world_->barrier();
    make_expert_groups();
    if (resume && !found.empty()) {
      const TrainerState saved = CheckpointStore::read_state(found.back());
      // The earlier format's per-rank optimizer archives fit one layout.
      MOEKIT_CHECK_ARG(CheckpointStore::has_named_moments(found.back()) ||
                           (saved.ep_size == 1 && o.ep_size == 1) ||
                           (saved.ep_size == o.ep_size && saved.world_size == world_->size()),
                       found.back(), ": written by ", saved.world_size, " processes with ep_size ", saved.ep_size,
                       "; a checkpoint of this format resumes on the same layout (this run: ", world_->size(),
                       " processes, ep_size ", o.ep_size, ")");
      bool rng_restored = true;
      state_ = store_.load(found.back(), model_, *optimizer_, world_->rank(), &rng_restored, [&] { shard(); });
      if (!rng_restored) torch::manual_seed(o.seed + static_cast<uint64_t>(world_->rank()) * 1000003u + state_.step);
      if (lead_)
        std::cerr << "resumed from " << found.back() << " (step " << state_.step << ", epoch " << state_.epoch + 1
                  << ", batch " << state_.next_batch << ")\n";
      restore_row_budgets(found.back());
    } else {
      // The same starting weights on every rank (rank 0's), then a
      // generator of its own per rank (dropout masks differ across ranks).
      dist::broadcast_parameters(*world_, model_.parameters());
      std::vector<torch::Tensor> buffers = model_.buffers();
      if (!buffers.empty()) dist::broadcast_parameters(*world_, buffers);
      shard();
      torch::manual_seed(o.seed + static_cast<uint64_t>(world_->rank()));
    }
    if (world_->size() > 1) {
      const auto bucket = static_cast<int64_t>(o.bucket_mb * (1 << 20));
      reducer_ = std::make_unique<dist::GradientReducer>(world_, ep_group_ ? dense_params_ : params_, bucket,
                                                         std::min<int64_t>(bucket, 1 << 20));
    }
    state_.world_size = world_->size();
    state_.ep_size = o.ep_size;
    // What a killed run logged after its last checkpoint is logged again.
    if (metrics_) metrics_->keep_through_step(state_.step);
    if (world_->size() > 1 && lead_)
      std::cerr << "data parallel over " << world_->size() << " processes (c10d Gloo)"
                << (o.ep_size > 1 ? str_cat(", experts sharded over groups of ", o.ep_size) : "") << "\n";
    // The cosine schedule's horizon: total_steps, else every epoch's optimizer steps.
    horizon_ = o.total_steps;
    if (horizon_ == 0 && o.scheduler == "cosine")
      for (int64_t e = 0; e < o.epochs; ++e)
        horizon_ += (task.num_batches(e) / world_->size() + o.accum_grad - 1) / o.accum_grad;
    flops_per_unit_ = task.flops_per_unit();
    peak_flops_ = flops_per_unit_ > 0 ? (o.peak_flops > 0 ? o.peak_flops : gemm_gflops(768, 0.3) * 1e9) : 0.0;
    peak_flops_ *= world_->size();  // the run's units against the run's peak
    if (peak_flops_ > 0 && lead_)
      std::cerr << "MFU relative to " << std::fixed << std::setprecision(1) << peak_flops_ / 1e9 << " GFLOP/s ("
                << (o.peak_flops > 0 ? "peak_flops" : "a measured fp32 GEMM") << ")\n";
  }

  TrainSummary run(const std::string& exp_dir);

 private:
  // The default generators' states (the CPU's and the training device's),
  // to run a batch again with the same random draws.
  struct GeneratorStates {
    explicit GeneratorStates(const torch::Device& device) : cpu(at::detail::getDefaultCPUGenerator().get_state()) {
      if (!device.is_cpu()) {
        device_generator = at::globalContext().defaultGenerator(device);
        on_device = device_generator.get_state();
      }
    }
    void restore() {
      at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();  // shares the default's state
      cpu_generator.set_state(cpu);
      if (on_device.defined()) device_generator.set_state(on_device);
    }
    torch::Tensor cpu, on_device;
    at::Generator device_generator;
  };

  // One batch's forward and its loss, read from the device with the MoE
  // layers' row-budget records: one wait for the device per batch. A batch
  // in which an expert was sent more than its rows dropped assignments;
  // it runs again from the same generator states with the budgets raised
  // to what it needed (the same routing then fits). Every layer's budget
  // follows its recent batches.
  double forward_batch(int64_t epoch, int64_t index, BatchLoss& loss) {
    std::optional<GeneratorStates> start;
    if (!budgeted_layers_.empty()) start.emplace(device_);
    for (int attempt = 1;; ++attempt) {
      {
        CudaBf16Autocast autocast(o_.autocast == "bf16");
        loss = task_.train_batch(epoch, index);
      }
      MOEKIT_CHECK(loss.loss.defined(), "train: task returned no loss");
      if (budgeted_layers_.empty()) return loss.loss.item<double>();
      std::vector<std::pair<MoELayerImpl*, RowBudgetRecord>> records;
      std::vector<torch::Tensor> read{loss.loss.detach().reshape({1}).to(torch::kDouble)};
      for (MoELayerImpl* moe : budgeted_layers_) {
        for (RowBudgetRecord& r : moe->take_row_budget_records()) {
          read.push_back(r.load.to(torch::kDouble));
          records.emplace_back(moe, std::move(r));
        }
      }
      const torch::Tensor host = torch::cat(read).to(torch::kCPU);
      const double* value = host.data_ptr<double>();
      bool exceeded = false;
      // Per layer and expert: the load over the mean load, the largest over
      // the layer's forwards in this batch.
      std::map<MoELayerImpl*, std::vector<double>> needed;
      const double* load = value + 1;
      for (auto& [moe, r] : records) {
        const int64_t experts = moe->options().num_experts;
        const double mean = static_cast<double>(moe->options().top_k * r.positions) / static_cast<double>(experts);
        std::vector<double>& f = needed[moe];
        f.resize(experts, 0.0);
        for (int64_t e = 0; e < experts; ++e) {
          exceeded = exceeded || load[e] > static_cast<double>(r.rows[e]);
          budget_rows_ += static_cast<double>(r.rows[e]);
          budget_assignments_ += load[e];
          if (mean > 0) f[e] = std::max(f[e], load[e] / mean);
        }
        load += experts;
      }
      // Each expert's budget follows its recent loads: the largest of this
      // batch's and the last estimate decayed by 2% a batch (at least half
      // the mean load), so the busier batches of the last few dozen keep it
      // up (fewer reruns) without holding it there for the run.
      for (auto& [moe, f] : needed) {
        std::vector<double>& estimate = load_estimate_[moe];
        estimate.resize(f.size(), 0.0);
        for (size_t e = 0; e < f.size(); ++e) {
          estimate[e] = std::max({f[e], 0.98 * estimate[e], 0.5});
          f[e] = o_.moe_row_margin * estimate[e];
        }
        moe->set_row_budgets(f);
      }
      if (!exceeded) return value[0];
      // Routing repeats exactly on the CPU; a GPU's reductions may round a
      // near tie the other way, so a second miss is possible, not a third.
      MOEKIT_CHECK(attempt < 3, "train: MoE row budgets still exceeded after ", attempt,
                   " runs of batch ", index, " (set train_conf.moe_dispatch: sorted)");
      start->restore();
      ++summary_.moe_reruns;
    }
  }

  // The row budgets a checkpoint recorded, so the resumed run's experts get
  // the blocks the uninterrupted run's would (a checkpoint of a run without
  // budgets, or this run without them, leaves the defaults).
  void restore_row_budgets(const std::string& checkpoint) {
    summary_.moe_reruns = state_.moe_reruns;
    budget_rows_ = state_.moe_budget_rows;
    budget_assignments_ = state_.moe_budget_assignments;
    const auto& saved = state_.moe_load_estimates;
    if (budgeted_layers_.empty() || saved.empty()) return;
    MOEKIT_CHECK_ARG(saved.size() == budgeted_layers_.size(), checkpoint, ": row budgets for ", saved.size(),
                     " MoE layers; the model has ", budgeted_layers_.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      MoELayerImpl* moe = budgeted_layers_[i];
      if (saved[i].empty()) continue;
      MOEKIT_CHECK_ARG(static_cast<int64_t>(saved[i].size()) == moe->options().num_experts, checkpoint,
                       ": row budgets for ", saved[i].size(), " experts in MoE layer ", i, "; it has ",
                       moe->options().num_experts);
      std::vector<double> budgets = saved[i];
      for (double& b : budgets) {
        MOEKIT_CHECK_ARG(std::isfinite(b) && b > 0, checkpoint, ": MoE layer ", i, " has a row budget estimate ", b);
        b *= o_.moe_row_margin;
      }
      load_estimate_[moe] = saved[i];
      moe->set_row_budgets(std::move(budgets));
    }
  }

  void save_checkpoint(int64_t at_epoch, int64_t at_batch, bool end_of_run) {
    sync_units();
    sync_buffers();
    TrainerState s = state_;
    s.moe_reruns = summary_.moe_reruns;
    s.moe_budget_rows = budget_rows_;
    s.moe_budget_assignments = budget_assignments_;
    s.moe_load_estimates.clear();
    for (MoELayerImpl* moe : budgeted_layers_) {
      const auto it = load_estimate_.find(moe);
      s.moe_load_estimates.push_back(it != load_estimate_.end() ? it->second : std::vector<double>());
    }
    s.epoch = at_epoch;
    s.next_batch = at_batch * world_->size();  // stored as the epoch's global batch position
    s.lr = scheduled_lr(o_, state_.step, horizon_);
    s.end_of_run = end_of_run;
    // Every rank's generator state goes into rank 0's checkpoint; with
    // expert parallelism the first EP group's ranks write their experts'
    // shards into the directory rank 0 staged.
    CheckpointStore::OtherRanks others;
    others.rng = world_->all_gather(at::detail::getDefaultCPUGenerator().get_state());
    others.rng.erase(others.rng.begin());
    if (device_.is_cuda()) others.cuda_rng = world_->all_gather(at::globalContext().defaultGenerator(device_).get_state());
    if (ep_group_) {
      others.experts.shards = o_.ep_size;
      for (const auto& [name, t] : expert_names_) {
        std::vector<int64_t> whole = t.sizes().vec();
        whole[0] *= o_.ep_size;
        others.experts.sharded[name] = whole;
      }
      const std::string staged = broadcast_string(lead_ ? store_.stage(s.step) : std::string());
      if (world_->rank() < o_.ep_size)
        CheckpointStore::write_expert_shard(staged, world_->rank(), model_, *optimizer_, others.experts);
      world_->barrier();  // every shard is in place before rank 0 completes the checkpoint
    }
    if (!lead_) return;
    store_.save(s, model_, *optimizer_, [&](const std::string& dir) { task_.save_assets(dir); },
                std::max(o_.keep_checkpoints, o_.average_last), others);
  }
  // `text` as rank 0 has it, on every rank.
  std::string broadcast_string(const std::string& text) const {
    std::vector<torch::Tensor> length{torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64)};
    world_->broadcast(length, 0);
    std::vector<torch::Tensor> bytes{torch::zeros({length[0].item<int64_t>()}, torch::kUInt8)};
    if (lead_) std::memcpy(bytes[0].data_ptr<uint8_t>(), text.data(), text.size());
    world_->broadcast(bytes, 0);
    return std::string(reinterpret_cast<const char*>(bytes[0].data_ptr<uint8_t>()),
                       static_cast<size_t>(bytes[0].numel()));
  }
  // The run's units so far into state_.units_total (a collective: every
  // rank calls it at the same points).
  void sync_units() {
    std::vector<torch::Tensor> t{torch::tensor({pending_units_}, torch::kInt64)};
    world_->all_reduce_sum(t);
    state_.units_total += t[0].item<int64_t>();
    pending_units_ = 0;
  }
  // Buffers a training forward updates per rank (BatchNorm's running
  // statistics) made equal again before they are used or saved: floating
  // ones averaged over the ranks, integer ones (batch counters) rank 0's.
  void sync_buffers() {
    if (world_->size() == 1) return;
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> floating, integral;
    for (const auto& b : model_.buffers()) (b.is_floating_point() ? floating : integral).push_back(b);
    dist::all_reduce_mean(*world_, floating);
    if (!integral.empty()) dist::broadcast_parameters(*world_, integral);
  }
  void validate_and_log(int64_t at_epoch) {
    sync_units();
    sync_buffers();
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
    if (!lead_) return;  // every rank validates the same model on the same data; one reports
    std::cerr << validation_line(state_.step, summary_.last_validation) << "\n";
    metrics_->write(j);
  }
  // One optimizer step on the accumulated gradients; returns the gradient norm.
  double step(double lr) {
    double grad_norm = 0;
    if (ep_group_) {
      reducer_->finish(world_->size());
      dist::all_reduce_gradients(expert_dp_group_ ? *expert_dp_group_ : *dist::Group::single(), expert_params_,
                                 world_->size());
      if (o_.grad_clip > 0) grad_norm = clip_sharded(o_.grad_clip);
    } else {
      if (reducer_) reducer_->finish(world_->size());
      if (o_.grad_clip > 0) grad_norm = torch::nn::utils::clip_grad_norm_(params_, o_.grad_clip);
    }
    for (auto& group : optimizer_->param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    if (std::isfinite(grad_norm)) optimizer_->step();
    zero_gradients();
    return grad_norm;
  }
  // Every gradient zeroed for the next step. Under data parallelism the
  // dense gradients are views of the reducer's buckets, zeroed in place
  // (LibTorch 1.13's Optimizer::zero_grad detaches in place, which views
  // refuse; later ones set gradients to none, which would make the reducer
  // copy them into its buckets again each step).
  void zero_gradients() {
    if (!reducer_) {
      optimizer_->zero_grad();
      return;
    }
    torch::NoGradGuard no_grad;
    for (auto& p : params_)
      if (p.grad().defined()) p.mutable_grad().zero_();
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

  // Expert parallelism's groups: ranks [k P, (k + 1) P) share their
  // experts (the EP group); ranks r, r + P, ... hold the same experts (the
  // group their gradients are averaged over).
  void make_expert_groups() {
    const int64_t ep = o_.ep_size, ranks = world_->size(), rank = world_->rank();
    if (ep == 1) return;
    MOEKIT_CHECK_ARG(ranks % ep == 0, "train_conf.ep_size ", ep, " does not divide the run's ", ranks, " processes");
    std::vector<int> ep_ranks, same_experts;
    const int64_t block = rank / ep;
    for (int64_t r = block * ep; r < (block + 1) * ep; ++r) ep_ranks.push_back(static_cast<int>(r));
    for (int64_t r = rank % ep; r < ranks; r += ep) same_experts.push_back(static_cast<int>(r));
    ep_group_ = world_->subgroup(ep_ranks, "ep" + std::to_string(block));
    if (same_experts.size() > 1) expert_dp_group_ = world_->subgroup(same_experts, "experts" + std::to_string(rank % ep));
  }
  // Shards the (full, identical) model's experts over the EP group.
  void shard() {
    if (!ep_group_) return;
    std::map<const void*, std::string> names;
    for (const auto& p : model_.named_parameters()) names[p.value().unsafeGetTensorImpl()] = p.key();
    MOEKIT_CHECK_ARG(shard_experts(model_, ep_group_) > 0, "train_conf.ep_size ", o_.ep_size,
                     ": the model has no MoE layer to shard");
    expert_params_ = sharded_expert_parameters(model_);
    // Adam's moments loaded whole from a checkpoint: this rank's slices.
    const int64_t members = ep_group_->size(), member = ep_group_->rank();
    for (const auto& p : expert_params_) {
      const auto it = optimizer_->state().find(optimizer_state_key(p));
      if (it == optimizer_->state().end()) continue;
      auto& state = static_cast<torch::optim::AdamParamState&>(*it->second);
      const int64_t local = p.size(0);
      MOEKIT_CHECK(state.exp_avg().size(0) == local * members, "train: the optimizer's moments of an expert "
                   "parameter have ", state.exp_avg().size(0), " rows, not ", local * members);
      auto slice = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, member * local, local).clone() : t; };
      state.exp_avg(slice(state.exp_avg()));
      state.exp_avg_sq(slice(state.exp_avg_sq()));
      state.max_exp_avg_sq(slice(state.max_exp_avg_sq()));
    }
    std::set<const void*> sharded;
    for (const auto& p : expert_params_) {
      sharded.insert(p.unsafeGetTensorImpl());
      expert_names_.emplace_back(names.at(p.unsafeGetTensorImpl()), p);
    }
    dense_params_.clear();
    for (const auto& p : params_)
      if (!sharded.count(p.unsafeGetTensorImpl())) dense_params_.push_back(p);
  }
  // torch's clip_grad_norm_ over the whole run's gradients: the dense ones
  // are equal on every rank, the experts' norm is summed over the EP group.
  double clip_sharded(double max_norm) {
    torch::NoGradGuard no_grad;
    torch::Tensor dense_sq = torch::zeros({}, torch::kDouble);
    for (const auto& p : dense_params_)
      if (p.grad().defined()) dense_sq += p.grad().to(torch::kDouble).pow(2).sum();
    std::vector<torch::Tensor> expert_sq{torch::zeros({1}, torch::kDouble)};
    for (const auto& p : expert_params_)
      if (p.grad().defined()) expert_sq[0] += p.grad().to(torch::kDouble).pow(2).sum();
    ep_group_->all_reduce_sum(expert_sq);
    const double norm = std::sqrt(dense_sq.item<double>() + expert_sq[0].item<double>());
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0)
      for (const auto& p : params_)
        if (p.grad().defined()) p.grad().mul_(coef);
    return norm;
  }
  // Sums of the running values over the ranks (in key order; every rank
  // logs the same keys), and of the units and batch counts.
  void reduce_running(std::map<std::string, double>& running, int64_t& running_n, int64_t& units) const {
    if (world_->size() == 1) return;
    std::vector<double> values;
    for (const auto& [k, v] : running) values.push_back(v);
    values.push_back(static_cast<double>(running_n));
    values.push_back(static_cast<double>(units));
    std::vector<torch::Tensor> t{torch::tensor(values, torch::kDouble)};
    world_->all_reduce_sum(t);
    const double* sum = t[0].data_ptr<double>();
    size_t i = 0;
    for (auto& kv : running) kv.second = sum[i++];
    running_n = static_cast<int64_t>(sum[i++]);
    units = static_cast<int64_t>(sum[i]);
  }

  TrainTask& task_;
  const TrainerOptions& o_;
  Model& model_;
  std::shared_ptr<dist::Group> world_;
  bool lead_;  // rank 0: writes checkpoints, metrics and the final model
  torch::Device device_;
  std::shared_ptr<const dist::Group> ep_group_, expert_dp_group_;  // expert parallelism (null: none)
  std::vector<torch::Tensor> dense_params_, expert_params_;
  std::vector<std::pair<std::string, torch::Tensor>> expert_names_;  // sharded parameters by checkpoint name
  CheckpointStore store_;
  std::unique_ptr<MetricsLog> metrics_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<dist::GradientReducer> reducer_;  // data parallelism: the dense gradients' all-reduce
  std::vector<MoELayerImpl*> budgeted_layers_;  // MoE layers under row budgets (forward_batch)
  std::map<const MoELayerImpl*, std::vector<double>> load_estimate_;  // recent load over the mean, per expert
  double budget_rows_ = 0, budget_assignments_ = 0;  // rows the experts computed, assignments routed to them
  TrainerState state_;
  int64_t horizon_ = 0;
  int64_t pending_units_ = 0;  // this rank's units not yet in state_.units_total
  double flops_per_unit_ = 0, peak_flops_ = 0;
  TrainSummary summary_;
};

TrainSummary TrainLoop::run(const std::string& exp_dir) {
  const TrainerOptions& o = o_;
  // The checkpoint's global batch position as this rank's (rounded up: a
  // run resumed on another number of processes repeats no batch).
  int64_t epoch = state_.epoch, next_batch = (state_.next_batch + world_->size() - 1) / world_->size();
  const auto start = std::chrono::steady_clock::now();
  auto last_log = start;
  double last_comm_s = dist::collective_seconds();
  int64_t units_done = 0;
  bool stopped = false, stopped_mid_epoch = false, run_end = false;
  int64_t run_end_batch = 0;
  // A finished run: only the final model is left.
  if (o.total_steps > 0 && state_.step >= o.total_steps) epoch = o.epochs;
  if (o.validate_first && state_.step == 0) validate_and_log(0);
  const int64_t ranks = world_->size(), rank = world_->rank();
  for (; epoch < o.epochs; ++epoch, next_batch = 0) {
    model_.train();
    // This rank's share of the epoch: batches rank, rank + W, ... (the
    // last global_batches mod W are left out, so every rank steps alike).
    const int64_t global_batches = task_.num_batches(epoch);
    const int64_t batches = global_batches / ranks;
    MOEKIT_CHECK_ARG(batches > 0, "train: epoch ", epoch + 1, " has no batches",
                     ranks > 1 ? str_cat(" for each of ", ranks, " processes (", global_batches, " in all)") : "");
    std::map<std::string, double> running;
    int64_t running_n = 0;
    zero_gradients();
    for (int64_t b = next_batch; b < batches; ++b) {
      const bool boundary = (b + 1) % o.accum_grad == 0 || b + 1 == batches;
      // The step's last backward pass all-reduces the gradients as it goes.
      if (boundary && reducer_ && o.overlap_grad_reduce) reducer_->arm();
      BatchLoss loss;
      const double value = forward_batch(epoch, b * ranks + rank, loss);
      if (!std::isfinite(value)) {
        std::cerr << "warning: non-finite loss at epoch " << epoch + 1 << " batch " << b * ranks + rank
                  << ", batch skipped\n";
        if (ranks == 1) {
          zero_gradients();
          continue;
        }
        // The other ranks step at this batch's boundary: this rank takes
        // part without this batch's gradient.
      } else {
        (loss.loss / static_cast<double>(o.accum_grad)).backward();
        units_done += loss.units;
        pending_units_ += loss.units;
        for (const auto& [k, v] : loss.parts) running[k] += v;
        running["loss"] += value;
        ++running_n;
      }
      if (!boundary) continue;
      ++state_.step;
      const double lr = scheduled_lr(o, state_.step, horizon_);
      const double grad_norm = step(lr);
      if (state_.step % o.log_interval == 0) {
        reduce_running(running, running_n, units_done);
        const auto now = std::chrono::steady_clock::now();
        const double interval = std::max(std::chrono::duration<double>(now - last_log).count(), 1e-9);
        last_log = now;
        ProgressReport r;
        r.epoch = epoch + 1;
        r.epochs = o.epochs;
        r.batch = b + 1;
        r.batches = batches;
        r.step = state_.step;
        for (const auto& [k, v] : running) r.means[k] = v / std::max<int64_t>(running_n, 1);
        r.lr = lr;
        r.grad_norm = grad_norm;
        r.units_name = task_.units_name();
        r.units_per_s = units_done / interval;
        if (peak_flops_ > 0) r.mfu = flops_per_unit_ * static_cast<double>(units_done) / interval / peak_flops_;
        if (ranks > 1) {
          const double comm_s = dist::collective_seconds();
          r.comm = std::min(1.0, (comm_s - last_comm_s) / interval);
          last_comm_s = comm_s;
        }
        r.elapsed_s = std::chrono::duration<double>(now - start).count();
        r.done = o.total_steps > 0 ? static_cast<double>(state_.step) / static_cast<double>(o.total_steps)
                                   : (epoch + static_cast<double>(b + 1) / batches) / o.epochs;
        if (lead_) {
          std::cerr << progress_line(r) << "\n";
          metrics_->write(progress_record(r));
        }
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
  if (lead_ && budget_assignments_ > 0) {
    std::cerr << "MoE row budgets: the experts computed " << std::fixed << std::setprecision(2)
              << budget_rows_ / budget_assignments_ << " rows per routed assignment; " << summary_.moe_reruns
              << " batch forward(s) ran again with more rows\n";
  }
  summary_.completed = epoch >= o.epochs && !stopped_mid_epoch;
  if (!summary_.completed) {
    if (lead_)
      std::cerr << "stopped at step " << state_.step << " (max_steps); --resume continues from the checkpoint\n";
    return summary_;
  }
  if (lead_) average_final(exp_dir);
  // The final model is complete before any rank reports the run done.
  world_->barrier();
  if (!lead_) summary_.final_dir = exp_dir + "/final";
  return summary_;
}

}  // namespace

TrainSummary train(TrainTask& task, const TrainerOptions& o, const std::string& exp_dir, bool resume,
                   const torch::Device& device) {
  o.validate();
  TrainLoop loop(task, o, exp_dir, resume, device);
  return loop.run(exp_dir);
}

}  // namespace moekit
