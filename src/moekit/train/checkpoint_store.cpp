#include "moekit/train/checkpoint_store.h"

#include <ATen/CPUGeneratorImpl.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <set>
#include <utility>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors.h"
#include "moekit/train/optimizer_state.h"

namespace moekit {
namespace {

constexpr const char* kMoments = "optimizer.safetensors";

void load_optimizer(torch::optim::Optimizer& optimizer, const std::string& path) {
  const std::string bytes = read_file(path);
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  optimizer.load(archive);
}

// Adam's moments of `model`'s parameters whose names `keep` accepts, by
// name: <name>.exp_avg, .exp_avg_sq, .max_exp_avg_sq (amsgrad) and .step.
// A parameter that never had a gradient has no state and no entry.
template <class Keep>
TensorMap adam_moments(const torch::optim::Optimizer& optimizer, const torch::nn::Module& model, Keep keep) {
  TensorMap out;
  for (const auto& p : model.named_parameters()) {
    if (!keep(p.key())) continue;
    const auto it = optimizer.state().find(optimizer_state_key(p.value()));
    if (it == optimizer.state().end()) continue;
    const auto* s = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get());
    MOEKIT_CHECK(s != nullptr, "checkpoint: the optimizer's state of ", p.key(), " is not Adam's");
    out[p.key() + ".exp_avg"] = s->exp_avg();
    out[p.key() + ".exp_avg_sq"] = s->exp_avg_sq();
    if (s->max_exp_avg_sq().defined()) out[p.key() + ".max_exp_avg_sq"] = s->max_exp_avg_sq();
    out[p.key() + ".step"] = torch::tensor({s->step()}, torch::kInt64);
  }
  return out;
}

// `optimizer`'s state made `moments` (as adam_moments writes them, whole
// tensors). Every entry must belong to a parameter of `model` with its
// shape; nothing is changed when one does not.
void set_adam_moments(torch::optim::Optimizer& optimizer, const torch::nn::Module& model, const TensorMap& moments,
                      const std::string& source) {
  std::vector<std::pair<torch::Tensor, std::unique_ptr<torch::optim::AdamParamState>>> states;
  size_t used = 0;
  auto moment = [&](const std::string& name, const char* what, const torch::Tensor& p, bool required) {
    const auto it = moments.find(name + what);
    if (it == moments.end()) {
      MOEKIT_CHECK_ARG(!required, source, ": '", name, what, "' is missing");
      return torch::Tensor();
    }
    MOEKIT_CHECK_ARG(it->second.sizes() == p.sizes(), source, ": '", name, what, "' has shape ", it->second.sizes(),
                     ", the parameter ", p.sizes());
    ++used;
    return it->second.to(p.options()).clone();
  };
  for (const auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    const std::string& name = p.key();
    const auto step = moments.find(name + ".step");
    if (step == moments.end()) continue;  // no gradient yet when it was written
    MOEKIT_CHECK_ARG(step->second.numel() == 1 && step->second.scalar_type() == torch::kInt64, source, ": '", name,
                     ".step' must be one int64");
    ++used;
    auto state = std::make_unique<torch::optim::AdamParamState>();
    state->step(step->second.item<int64_t>());
    state->exp_avg(moment(name, ".exp_avg", p.value(), true));
    state->exp_avg_sq(moment(name, ".exp_avg_sq", p.value(), true));
    state->max_exp_avg_sq(moment(name, ".max_exp_avg_sq", p.value(), false));
    states.emplace_back(p.value(), std::move(state));
  }
  if (used != moments.size()) {
    std::set<std::string> known;
    for (const auto& p : model.named_parameters()) known.insert(p.key());
    for (const auto& [key, t] : moments) {
      const std::string name = key.substr(0, key.rfind('.'));
      MOEKIT_CHECK_ARG(known.count(name), source, ": '", key, "' belongs to no parameter of the model");
    }
    MOEKIT_CHECK_ARG(false, source, ": moments without their step count");
  }
  optimizer.state().clear();
  for (auto& [p, state] : states) optimizer.state()[optimizer_state_key(p)] = std::move(state);
}

std::set<std::string> names_of(const dist::ShardManifest& manifest) {
  std::set<std::string> names;
  for (const auto& kv : manifest.sharded) names.insert(kv.first);
  return names;
}

}  // namespace

CheckpointStore::CheckpointStore(std::string root) : root_(std::move(root)) {
  make_dirs(root_);
  // What a killed run left: a step_N without its trainer_state.yaml (from
  // a writer older than the staged one below) and staging temporaries.
  if (DIR* d = opendir(root_.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      const bool incomplete = name.rfind("step_", 0) == 0 && !path_exists(root_ + "/" + name + "/trainer_state.yaml");
      const bool temporary = name.rfind(".step_", 0) == 0;
      if (incomplete || temporary) stale.push_back(root_ + "/" + name);
    }
    closedir(d);
    for (const auto& path : stale) remove_path(path);
  }
}

std::vector<std::string> CheckpointStore::list() const {
  std::vector<std::pair<int64_t, std::string>> found;
  if (DIR* d = opendir(root_.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind("step_", 0) == 0 && path_exists(root_ + "/" + name + "/trainer_state.yaml")) {
        try {
          found.emplace_back(std::stoll(name.substr(5)), root_ + "/" + name);
        } catch (const std::exception&) {
          // not a checkpoint of ours (step_abc)
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

std::string CheckpointStore::stage(int64_t step) {
  staged_step_ = step;
  staged_ = std::make_unique<OutputDir>(root_ + "/step_" + std::to_string(step), /*force=*/true);
  return staged_->path();
}

void CheckpointStore::write_expert_shard(const std::string& staged, int64_t shard, const Model& model,
                                         const torch::optim::Optimizer& optimizer,
                                         const dist::ShardManifest& sharded) {
  const std::set<std::string> names = names_of(sharded);
  TensorMap weights;
  for (const auto& p : model.named_parameters())
    if (names.count(p.key())) weights[p.key()] = p.value();
  MOEKIT_CHECK(weights.size() == names.size(), "checkpoint: the model lacks some of the sharded parameters");
  write_safetensors(dist::shard_path(staged, "experts", shard), weights);
  write_safetensors(dist::shard_path(staged, "optimizer", shard),
                    adam_moments(optimizer, model, [&](const std::string& n) { return names.count(n) > 0; }));
}

void CheckpointStore::save(const TrainerState& state, const Model& model, torch::optim::Optimizer& optimizer,
                           const std::function<void(const std::string&)>& save_assets, int64_t keep,
                           const OtherRanks& others) {
  // Staged in a temporary sibling and renamed into place complete.
  std::unique_ptr<OutputDir> staged = std::move(staged_);
  if (!staged) staged_step_ = state.step;
  if (!staged) staged = std::make_unique<OutputDir>(root_ + "/step_" + std::to_string(state.step), /*force=*/true);
  MOEKIT_CHECK(staged_step_ == state.step, "checkpoint: staged step ", staged_step_, ", saving step ", state.step);
  const std::string& dir = staged->path();
  const std::set<std::string> sharded = names_of(others.experts);
  if (others.experts.shards > 1) {
    YAML::Node config;
    config["model_type"] = model.model_type();
    config["architecture"] = model.architecture();
    TensorMap rest = module_state(model);
    for (const auto& name : sharded) rest.erase(name);
    save_model_dir(dir, config, rest);
    dist::write_shard_manifest(dir, others.experts);
  } else {
    save_model(dir, model);
  }
  save_assets(dir);
  write_safetensors(dir + "/" + kMoments,
                    adam_moments(optimizer, model, [&](const std::string& n) { return sharded.count(n) == 0; }));
  TensorMap rng{{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  for (size_t r = 0; r < others.rng.size(); ++r) rng["cpu.rank" + std::to_string(r + 1)] = others.rng[r];
  for (size_t r = 0; r < others.cuda_rng.size(); ++r)
    rng[r == 0 ? std::string("cuda") : "cuda.rank" + std::to_string(r)] = others.cuda_rng[r];
  write_file_atomic(dir + "/rng.safetensors", serialize_safetensors(rng));
  YAML::Node node;
  node["step"] = state.step;
  node["epoch"] = state.epoch;
  node["next_batch"] = state.next_batch;
  node["lr"] = state.lr;
  node["units_total"] = state.units_total;
  node["end_of_run"] = state.end_of_run;
  node["world_size"] = state.world_size;
  node["ep_size"] = state.ep_size;
  if (!state.moe_load_estimates.empty() || state.moe_budget_assignments > 0) {
    YAML::Node budgets;
    budgets["load_estimates"] = state.moe_load_estimates;
    budgets["reruns"] = state.moe_reruns;
    budgets["rows"] = state.moe_budget_rows;
    budgets["assignments"] = state.moe_budget_assignments;
    node["moe_row_budgets"] = budgets;
  }
  write_yaml_file(dir + "/trainer_state.yaml", node);  // last: the checkpoint counts once renamed
  staged->commit();
  auto all = list();
  while (all.size() > static_cast<size_t>(std::max<int64_t>(keep, 1))) {
    remove_path(all.front());
    all.erase(all.begin());
  }
}

bool CheckpointStore::has_named_moments(const std::string& dir) { return path_exists(dir + "/" + kMoments); }

TensorMap CheckpointStore::read_weights(const std::string& dir) {
  TensorMap weights = read_model_weights(dir);
  const auto manifest = dist::read_shard_manifest(dir);
  if (!manifest) return weights;
  return dist::merge_shards(dir, "experts", *manifest, std::move(weights), {""});
}

TrainerState CheckpointStore::read_state(const std::string& dir) {
  const std::string path = dir + "/trainer_state.yaml";
  const YAML::Node node = load_yaml_file(path);
  TrainerState s;
  s.step = yaml_get<int64_t>(node, "step", path);
  s.epoch = yaml_get<int64_t>(node, "epoch", path);
  s.next_batch = yaml_get<int64_t>(node, "next_batch", path);
  s.lr = yaml_get_or<double>(node, "lr", 0.0, path);
  s.units_total = yaml_get_or<int64_t>(node, "units_total", 0, path);
  s.end_of_run = yaml_get_or<bool>(node, "end_of_run", false, path);
  s.world_size = yaml_get_or<int64_t>(node, "world_size", 1, path);
  s.ep_size = yaml_get_or<int64_t>(node, "ep_size", 1, path);
  if (const YAML::Node budgets = node["moe_row_budgets"]) {
    MOEKIT_CHECK_ARG(budgets.IsMap(), path, ": field 'moe_row_budgets' is not a map");
    s.moe_load_estimates = yaml_get_or<std::vector<std::vector<double>>>(budgets, "load_estimates", {}, path);
    s.moe_reruns = yaml_get_or<int64_t>(budgets, "reruns", 0, path);
    s.moe_budget_rows = yaml_get_or<double>(budgets, "rows", 0.0, path);
    s.moe_budget_assignments = yaml_get_or<double>(budgets, "assignments", 0.0, path);
  }
  return s;
}

TrainerState CheckpointStore::load(const std::string& dir, Model& model, torch::optim::Optimizer& optimizer, int rank,
                                   bool* rng_restored, const std::function<void()>& after_weights) const {
  const TrainerState state = read_state(dir);
  load_module_state(model, read_weights(dir), dir);
  if (has_named_moments(dir)) {
    TensorMap moments = read_safetensors(dir + "/" + kMoments).tensors;
    if (const auto manifest = dist::read_shard_manifest(dir))
      moments = dist::merge_shards(dir, "optimizer", *manifest, std::move(moments),
                                   {".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq"}, {".step"});
    set_adam_moments(optimizer, model, moments, dir + "/" + kMoments);
    if (after_weights) after_weights();
  } else {
    // The earlier format: torch archives, one per rank of an expert-parallel run.
    if (after_weights) after_weights();
    const std::string rank_optimizer = dir + "/optimizer.rank" + std::to_string(rank) + ".pt";
    load_optimizer(optimizer, rank > 0 && state.ep_size > 1 ? rank_optimizer : dir + "/optimizer.pt");
  }
  const TensorMap rng = read_safetensors(dir + "/rng.safetensors").tensors;
  MOEKIT_CHECK_ARG(rng.count("cpu"), dir, "/rng.safetensors: no 'cpu' generator state");
  const std::string suffix = rank == 0 ? std::string() : ".rank" + std::to_string(rank);
  const auto params = model.parameters();
  const auto cuda = rng.find("cuda" + suffix);
  if (cuda != rng.end() && !params.empty() && params.front().is_cuda()) {
    at::Generator generator = at::globalContext().defaultGenerator(params.front().device());
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(cuda->second);
  }
  const auto cpu = rng.find("cpu" + suffix);
  if (rng_restored != nullptr) *rng_restored = cpu != rng.end();
  if (cpu == rng.end()) return state;
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(cpu->second);
  return state;
}

}  // namespace moekit
