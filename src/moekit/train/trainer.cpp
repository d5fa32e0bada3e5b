#include "moekit/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <dirent.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/runtime.h"
#include "moekit/core/safetensors.h"

namespace moekit {

void TrainerOptions::validate() const {
  MOEKIT_CHECK_ARG(epochs >= 1, "train: epochs must be >= 1, got ", epochs);
  MOEKIT_CHECK_ARG(lr > 0, "train: lr must be positive, got ", lr);
  MOEKIT_CHECK_ARG(warmup_steps >= 0, "train: warmup_steps must be >= 0");
  MOEKIT_CHECK_ARG(accum_grad >= 1, "train: accum_grad must be >= 1, got ", accum_grad);
  MOEKIT_CHECK_ARG(log_interval >= 1, "train: log_interval must be >= 1");
  MOEKIT_CHECK_ARG(save_interval >= 0, "train: save_interval must be >= 0");
  MOEKIT_CHECK_ARG(max_steps >= 0, "train: max_steps must be >= 0");
  MOEKIT_CHECK_ARG(scheduler == "warmuplr" || scheduler == "cosine", "train: scheduler must be warmuplr or cosine, got '",
                   scheduler, "'");
  MOEKIT_CHECK_ARG(min_lr >= 0 && min_lr <= lr, "train: min_lr must be in [0, lr]");
  MOEKIT_CHECK_ARG(total_steps >= 0 && eval_interval >= 0 && peak_flops >= 0,
                   "train: total_steps, eval_interval and peak_flops must be >= 0");
  MOEKIT_CHECK_ARG(average_last >= 1 && keep_checkpoints >= 1, "train: average_last and keep_checkpoints must be >= 1");
}

YAML::Node TrainerOptions::to_yaml() const {
  YAML::Node n;
  n["epochs"] = epochs;
  n["lr"] = lr;
  n["warmup_steps"] = warmup_steps;
  n["weight_decay"] = weight_decay;
  n["grad_clip"] = grad_clip;
  n["accum_grad"] = accum_grad;
  n["log_interval"] = log_interval;
  n["save_interval"] = save_interval;
  n["keep_checkpoints"] = keep_checkpoints;
  n["average_last"] = average_last;
  n["seed"] = seed;
  n["max_steps"] = max_steps;
  n["scheduler"] = scheduler;
  n["min_lr"] = min_lr;
  n["total_steps"] = total_steps;
  n["eval_interval"] = eval_interval;
  n["peak_flops"] = peak_flops;
  n["validate_first"] = validate_first;
  return n;
}

TrainerOptions TrainerOptions::from_yaml(const YAML::Node& n, const std::string& where) {
  TrainerOptions o;
  if (n.IsDefined() && !n.IsNull()) {
    MOEKIT_CHECK_ARG(n.IsMap(), where, " must be a mapping");
    static const std::set<std::string> known = {"epochs", "lr", "warmup_steps", "weight_decay", "grad_clip",
                                                "accum_grad", "log_interval", "save_interval", "keep_checkpoints",
                                                "average_last", "seed", "max_steps", "scheduler", "min_lr",
                                                "total_steps", "eval_interval", "peak_flops", "validate_first"};
    for (const auto& kv : n)
      MOEKIT_CHECK_ARG(known.count(kv.first.as<std::string>()), where, ": unknown option '",
                       kv.first.as<std::string>(), "'");
    o.epochs = yaml_get_or<int64_t>(n, "epochs", o.epochs, where);
    o.lr = yaml_get_or<double>(n, "lr", o.lr, where);
    o.warmup_steps = yaml_get_or<int64_t>(n, "warmup_steps", o.warmup_steps, where);
    o.weight_decay = yaml_get_or<double>(n, "weight_decay", o.weight_decay, where);
    o.grad_clip = yaml_get_or<double>(n, "grad_clip", o.grad_clip, where);
    o.accum_grad = yaml_get_or<int64_t>(n, "accum_grad", o.accum_grad, where);
    o.log_interval = yaml_get_or<int64_t>(n, "log_interval", o.log_interval, where);
    o.save_interval = yaml_get_or<int64_t>(n, "save_interval", o.save_interval, where);
    o.keep_checkpoints = yaml_get_or<int64_t>(n, "keep_checkpoints", o.keep_checkpoints, where);
    o.average_last = yaml_get_or<int64_t>(n, "average_last", o.average_last, where);
    o.seed = yaml_get_or<uint64_t>(n, "seed", o.seed, where);
    o.max_steps = yaml_get_or<int64_t>(n, "max_steps", o.max_steps, where);
    o.scheduler = yaml_get_or<std::string>(n, "scheduler", o.scheduler, where);
    o.min_lr = yaml_get_or<double>(n, "min_lr", o.min_lr, where);
    o.total_steps = yaml_get_or<int64_t>(n, "total_steps", o.total_steps, where);
    o.eval_interval = yaml_get_or<int64_t>(n, "eval_interval", o.eval_interval, where);
    o.peak_flops = yaml_get_or<double>(n, "peak_flops", o.peak_flops, where);
    o.validate_first = yaml_get_or<bool>(n, "validate_first", o.validate_first, where);
  }
  try {
    o.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
  return o;
}

namespace {

// The learning rate of optimizer step `step` (1-based); `horizon` = the
// run's total steps (cosine only).
double scheduled_lr(const TrainerOptions& o, int64_t step, int64_t horizon) {
  if (o.scheduler == "cosine") {
    if (step <= o.warmup_steps) return o.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(o.warmup_steps, 1));
    const double span = static_cast<double>(std::max<int64_t>(horizon - o.warmup_steps, 1));
    const double progress = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  if (o.warmup_steps == 0) return o.lr;
  const double s = static_cast<double>(std::max<int64_t>(step, 1));
  const double w = static_cast<double>(o.warmup_steps);
  return o.lr * std::sqrt(w) * std::min(1.0 / std::sqrt(s), s * std::pow(w, -1.5));
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind("step_", 0) == 0 && path_exists(dir + "/" + name + "/trainer_state.yaml")) {
        try {
          found.emplace_back(std::stoll(name.substr(5)), dir + "/" + name);
        } catch (const std::exception&) {
        }
      }
    }
    closedir(d);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

void remove_tree(const std::string& path) {
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::remove((path + "/" + name).c_str());
    }
    closedir(d);
  }
  rmdir(path.c_str());
}

std::string serialize_optimizer(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void load_optimizer(torch::optim::Optimizer& optimizer, const std::string& path) {
  const std::string bytes = read_file(path);
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  optimizer.load(archive);
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  std::ostringstream out;
  out << s / 3600 << ":" << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ":" << std::setw(2)
      << std::setfill('0') << s % 60;
  return out.str();
}

}  // namespace

void average_model_dirs(const std::vector<std::string>& dirs, const std::string& out_dir) {
  MOEKIT_CHECK_ARG(!dirs.empty(), "average: no model directories");
  YAML::Node config = read_model_config(dirs.front());
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

TrainSummary train(TrainTask& task, const TrainerOptions& o, const std::string& exp_dir, bool resume) {
  o.validate();
  Model& model = task.model();
  const std::string ckpt_root = exp_dir + "/checkpoints";
  make_dirs(ckpt_root);
  std::vector<torch::Tensor> params;
  for (auto& p : model.parameters())
    if (p.requires_grad()) params.push_back(p);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(o.lr).weight_decay(o.weight_decay));

  int64_t step = 0, epoch = 0, next_batch = 0, resumed_units = 0;
  if (resume) {
    const auto found = list_checkpoints(ckpt_root);
    if (!found.empty()) {
      const std::string dir = found.back();
      const YAML::Node state = load_yaml_file(dir + "/trainer_state.yaml");
      step = state["step"].as<int64_t>();
      if (state["units_total"].IsDefined()) resumed_units = state["units_total"].as<int64_t>();
      epoch = state["epoch"].as<int64_t>();
      next_batch = state["next_batch"].as<int64_t>();
      load_module_state(model, read_model_weights(dir), dir);
      load_optimizer(optimizer, dir + "/optimizer.pt");
      const TensorMap rng = read_safetensors(dir + "/rng.safetensors").tensors;
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(rng.at("cpu"));
      std::cerr << "resumed from " << dir << " (step " << step << ", epoch " << epoch + 1 << ", batch " << next_batch
                << ")\n";
    }
  } else {
    MOEKIT_CHECK_ARG(list_checkpoints(ckpt_root).empty(), exp_dir,
                     ": holds checkpoints already; pass --resume to continue, or use a new directory");
    torch::manual_seed(o.seed);
  }

  // The cosine schedule's horizon: total_steps, else every epoch's optimizer steps.
  int64_t horizon = o.total_steps;
  if (horizon == 0 && o.scheduler == "cosine")
    for (int64_t e = 0; e < o.epochs; ++e) horizon += (task.num_batches(e) + o.accum_grad - 1) / o.accum_grad;
  const double flops_per_unit = task.flops_per_unit();
  const double peak_flops = flops_per_unit > 0 ? (o.peak_flops > 0 ? o.peak_flops : gemm_gflops(768, 0.3) * 1e9) : 0.0;
  if (peak_flops > 0)
    std::cerr << "MFU relative to " << std::fixed << std::setprecision(1) << peak_flops / 1e9 << " GFLOP/s ("
              << (o.peak_flops > 0 ? "peak_flops" : "a measured fp32 GEMM") << ")\n";

  std::ofstream metrics(exp_dir + "/metrics.jsonl", std::ios::app);
  TrainSummary summary;
  int64_t units_total = 0;  // units trained on over the whole run (resumed runs included)
  auto save_checkpoint = [&](int64_t at_epoch, int64_t at_batch, bool end_of_run) {
    const std::string dir = ckpt_root + "/step_" + std::to_string(step);
    // A checkpoint counts once trainer_state.yaml exists: it is written last.
    save_model(dir, model);
    task.save_assets(dir);
    write_file_atomic(dir + "/optimizer.pt", serialize_optimizer(optimizer));
    write_file_atomic(dir + "/rng.safetensors",
                      serialize_safetensors({{"cpu", at::detail::getDefaultCPUGenerator().get_state()}}));
    YAML::Node state;
    state["step"] = step;
    state["epoch"] = at_epoch;
    state["next_batch"] = at_batch;
    state["lr"] = scheduled_lr(o, step, horizon);
    state["units_total"] = units_total;
    state["end_of_run"] = end_of_run;
    write_yaml_file(dir + "/trainer_state.yaml", state);
    auto all = list_checkpoints(ckpt_root);
    const size_t keep = static_cast<size_t>(std::max(o.keep_checkpoints, o.average_last));
    while (all.size() > keep) {
      remove_tree(all.front());
      all.erase(all.begin());
    }
  };

  units_total = resumed_units;
  auto validate_and_log = [&](int64_t at_epoch) {
    const bool was_training = model.is_training();
    model.eval();
    {
      torch::NoGradGuard no_grad;
      summary.last_validation = task.validate();
    }
    if (was_training) model.train();
    nlohmann::json j = {{"epoch", at_epoch}, {"step", step}, {task.units_name(), units_total}};
    if (flops_per_unit > 0) j["train_flops"] = flops_per_unit * static_cast<double>(units_total);
    std::ostringstream line;
    line << "step " << step << " validation:";
    for (const auto& [k, v] : summary.last_validation) {
      j["cv_" + k] = v;
      line << " " << k << " " << std::fixed << std::setprecision(4) << v;
    }
    std::cerr << line.str() << "\n";
    metrics << j.dump() << "\n" << std::flush;
  };

  const auto start = std::chrono::steady_clock::now();
  auto last_log = start;
  int64_t units_done = 0;
  bool stopped = false, stopped_mid_epoch = false, run_end = false;
  int64_t run_end_batch = 0;
  // A finished run: only the final model is left.
  if (o.total_steps > 0 && step >= o.total_steps) epoch = o.epochs;
  if (o.validate_first && step == 0) validate_and_log(0);
  for (; epoch < o.epochs; ++epoch, next_batch = 0) {
    model.train();
    const int64_t batches = task.num_batches(epoch);
    MOEKIT_CHECK_ARG(batches > 0, "train: epoch ", epoch + 1, " has no batches");
    std::map<std::string, double> running;
    int64_t running_n = 0;
    optimizer.zero_grad();
    for (int64_t b = next_batch; b < batches; ++b) {
      BatchLoss loss = task.train_batch(epoch, b);
      MOEKIT_CHECK(loss.loss.defined(), "train: task returned no loss");
      const double value = loss.loss.item<double>();
      if (!std::isfinite(value)) {
        std::cerr << "warning: non-finite loss at epoch " << epoch + 1 << " batch " << b << ", batch skipped\n";
        optimizer.zero_grad();
        continue;
      }
      (loss.loss / static_cast<double>(o.accum_grad)).backward();
      units_done += loss.units;
      units_total += loss.units;
      for (const auto& [k, v] : loss.parts) running[k] += v;
      running["loss"] += value;
      ++running_n;
      const bool boundary = (b + 1) % o.accum_grad == 0 || b + 1 == batches;
      if (!boundary) continue;
      double grad_norm = 0;
      if (o.grad_clip > 0) grad_norm = torch::nn::utils::clip_grad_norm_(params, o.grad_clip);
      ++step;
      const double lr = scheduled_lr(o, step, horizon);
      for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      if (std::isfinite(grad_norm)) optimizer.step();
      optimizer.zero_grad();
      if (step % o.log_interval == 0) {
        const auto now = std::chrono::steady_clock::now();
        const double elapsed = std::chrono::duration<double>(now - start).count();
        const double interval = std::chrono::duration<double>(now - last_log).count();
        last_log = now;
        std::ostringstream line;
        line << "epoch " << epoch + 1 << "/" << o.epochs << " batch " << b + 1 << "/" << batches << " step " << step;
        nlohmann::json j = {{"step", step}, {"epoch", epoch + 1}, {"lr", lr}, {"grad_norm", grad_norm},
                            {task.units_name() + "_per_s", units_done / std::max(interval, 1e-9)}};
        for (const auto& [k, v] : running) {
          line << " " << k << " " << std::fixed << std::setprecision(3) << v / running_n;
          j[k] = v / running_n;
        }
        const double done = o.total_steps > 0 ? static_cast<double>(step) / static_cast<double>(o.total_steps)
                                              : (epoch + static_cast<double>(b + 1) / batches) / o.epochs;
        line << " lr " << std::scientific << std::setprecision(2) << lr << std::fixed << " " << task.units_name()
             << "/s " << std::setprecision(0) << units_done / std::max(interval, 1e-9);
        if (peak_flops > 0) {
          const double mfu = flops_per_unit * static_cast<double>(units_done) / std::max(interval, 1e-9) / peak_flops;
          line << " mfu " << std::setprecision(1) << 100 * mfu << "%";
          j["mfu"] = mfu;
        }
        line << " elapsed "
             << format_duration(elapsed);
        if (done > 0) line << " eta " << format_duration(elapsed / done * (1 - done));
        std::cerr << line.str() << "\n";
        metrics << j.dump() << "\n" << std::flush;
        running.clear();
        running_n = 0;
        units_done = 0;
      }
      if (o.total_steps > 0 && step >= o.total_steps) {
        run_end = true;  // the run's length: validate, checkpoint, final model
        run_end_batch = b + 1;
        break;
      }
      if (o.eval_interval > 0 && step % o.eval_interval == 0 && b + 1 < batches) validate_and_log(epoch + 1);
      if (o.max_steps > 0 && step >= o.max_steps) {
        // A step budget: stop here with a checkpoint a later --resume continues from.
        stopped = true;
        if (b + 1 < batches) {
          save_checkpoint(epoch, b + 1, false);
          stopped_mid_epoch = true;
          break;
        }
      }
      if (o.save_interval > 0 && step % o.save_interval == 0 && b + 1 < batches) save_checkpoint(epoch, b + 1, false);
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
  summary.steps = step;
  summary.completed = epoch >= o.epochs && !stopped_mid_epoch;
  if (!summary.completed) {
    std::cerr << "stopped at step " << step << " (max_steps); --resume continues from the checkpoint\n";
    return summary;
  }
  // Final model: the mean of the last epoch-end checkpoints.
  std::vector<std::string> epoch_ends;
  for (const auto& dir : list_checkpoints(ckpt_root)) {
    const YAML::Node state = load_yaml_file(dir + "/trainer_state.yaml");
    if (state["next_batch"].as<int64_t>() == 0 || (state["end_of_run"].IsDefined() && state["end_of_run"].as<bool>()))
      epoch_ends.push_back(dir);
  }
  const size_t n = std::min(epoch_ends.size(), static_cast<size_t>(o.average_last));
  MOEKIT_CHECK(n > 0, "train: no epoch-end checkpoint to build the final model from");
  std::vector<std::string> last(epoch_ends.end() - static_cast<std::ptrdiff_t>(n), epoch_ends.end());
  summary.final_dir = exp_dir + "/final";
  average_model_dirs(last, summary.final_dir);
  task.save_assets(summary.final_dir);
  std::cerr << "final model: mean of the last " << n << " epoch checkpoints -> " << summary.final_dir << "\n";
  return summary;
}

}  // namespace moekit
