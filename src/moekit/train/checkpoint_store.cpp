#include "moekit/train/checkpoint_store.h"

#include <ATen/CPUGeneratorImpl.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <utility>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors.h"

namespace moekit {
namespace {

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

}  // namespace

std::string CheckpointStore::serialize(torch::optim::Optimizer& optimizer) { return serialize_optimizer(optimizer); }

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

void CheckpointStore::save(const TrainerState& state, const Model& model, torch::optim::Optimizer& optimizer,
                           const std::function<void(const std::string&)>& save_assets, int64_t keep,
                           const OtherRanks& others) {
  // Staged in a temporary sibling and renamed into place complete.
  OutputDir staged(root_ + "/step_" + std::to_string(state.step), /*force=*/true);
  const std::string& dir = staged.path();
  if (others.weights != nullptr) {
    YAML::Node config;
    config["model_type"] = model.model_type();
    config["architecture"] = model.architecture();
    save_model_dir(dir, config, *others.weights);
  } else {
    save_model(dir, model);
  }
  save_assets(dir);
  write_file_atomic(dir + "/optimizer.pt", serialize_optimizer(optimizer));
  for (size_t r = 0; r < others.optimizers.size(); ++r)
    write_file_atomic(dir + "/optimizer.rank" + std::to_string(r + 1) + ".pt", others.optimizers[r]);
  TensorMap rng{{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  for (size_t r = 0; r < others.rng.size(); ++r) rng["cpu.rank" + std::to_string(r + 1)] = others.rng[r];
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
  write_yaml_file(dir + "/trainer_state.yaml", node);  // last: the checkpoint counts once renamed
  staged.commit();
  auto all = list();
  while (all.size() > static_cast<size_t>(std::max<int64_t>(keep, 1))) {
    remove_path(all.front());
    all.erase(all.begin());
  }
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
  return s;
}

TrainerState CheckpointStore::load(const std::string& dir, Model& model, torch::optim::Optimizer& optimizer, int rank,
                                   bool* rng_restored, const std::function<void()>& after_weights) const {
  const TrainerState state = read_state(dir);
  load_module_state(model, read_model_weights(dir), dir);
  if (after_weights) after_weights();
  const std::string rank_optimizer = dir + "/optimizer.rank" + std::to_string(rank) + ".pt";
  load_optimizer(optimizer, rank > 0 && state.ep_size > 1 ? rank_optimizer : dir + "/optimizer.pt");
  const TensorMap rng = read_safetensors(dir + "/rng.safetensors").tensors;
  MOEKIT_CHECK_ARG(rng.count("cpu"), dir, "/rng.safetensors: no 'cpu' generator state");
  const auto cpu = rng.find(rank == 0 ? std::string("cpu") : "cpu.rank" + std::to_string(rank));
  if (rng_restored != nullptr) *rng_restored = cpu != rng.end();
  if (cpu == rng.end()) return state;
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(cpu->second);
  return state;
}

}  // namespace moekit
