#include "moekit/scale/hf_upcycle.h"

#include <nlohmann/json.hpp>

#include <map>
#include <memory>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_config.h"

namespace moekit {
namespace {

using json = nlohmann::json;

json read_json(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw std::invalid_argument(path + ": invalid JSON: " + json_error_reason(e));
  }
}

std::string shape_text(c10::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The input checkpoint: every tensor found in exactly one mapped shard.
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir) {
    for (const std::string& file : hf_weight_files(dir)) {
      shards_.push_back(std::make_unique<MappedSafetensors>(file));
      for (const auto& [name, entry] : shards_.back()->header().entries) {
        const auto [it, fresh] = where_.emplace(name, shards_.back().get());
        MOEKIT_CHECK_ARG(fresh, dir, ": tensor '", name, "' is in both ", it->second->path(), " and ", file);
      }
    }
    const std::string index_path = dir + "/model.safetensors.index.json";
    if (shards_.size() == 1 || !path_exists(index_path)) return;
    const json index = read_json(index_path);
    for (const auto& [name, shard] : index["weight_map"].items()) {
      const auto it = where_.find(name);
      MOEKIT_CHECK_ARG(it != where_.end() && it->second->path() == dir + "/" + shard.get<std::string>(), index_path,
                       ": names tensor '", name, "' in ", shard.get<std::string>(), ", which does not hold it");
    }
  }
  const MappedSafetensors& shard_of(const std::string& name) const { return *where_.at(name); }
  const std::map<std::string, const MappedSafetensors*>& tensors() const { return where_; }

 private:
  std::vector<std::unique_ptr<MappedSafetensors>> shards_;
  std::map<std::string, const MappedSafetensors*> where_;
};

}  // namespace

bool is_hf_model_dir(const std::string& dir) {
  return path_exists(dir + "/config.json") && !path_exists(dir + "/config.yaml");
}

HfUpcycleReport upcycle_hf_dir(const std::string& in_dir, const std::string& out_dir, const UpcycleOptions& o,
                               const HfWriteOptions& write) {
  const HfConfig hf = read_hf_config(in_dir);
  const LmConfig moe = upcycled_config(hf.config, o);
  MOEKIT_CHECK_ARG(!moe.qkv_bias, "upcycle: ", in_dir, " is a ", hf.model_type,
                   " model with QKV biases; Mixtral, the Hugging Face MoE layout written here, has none");
  MOEKIT_CHECK_ARG(moe.all_layers_moe(), "upcycle: Mixtral has MoE in every layer; --first-layer ", o.first_layer,
                   " --every ", o.every, " would leave some dense");
  const HfCheckpoint in(in_dir);

  // Every tensor the dense architecture has, present, in its shape, a float.
  const auto expected = hf_tensor_shapes(hf.config);
  std::map<std::string, std::vector<int64_t>> shape_of(expected.begin(), expected.end());
  std::vector<std::string> unexpected;
  for (const auto& [name, shard] : in.tensors()) {
    const auto it = shape_of.find(name);
    if (it == shape_of.end()) {
      if (name.find("rotary_emb.inv_freq") == std::string::npos) unexpected.push_back(name);
      continue;
    }
    const SafetensorsEntry& e = shard->entry(name);
    MOEKIT_CHECK_ARG(e.shape == it->second, shard->path(), ": tensor '", name, "' has shape ", shape_text(e.shape),
                     ", config.json says ", shape_text(it->second));
    MOEKIT_CHECK_ARG(e.dtype == torch::kBFloat16 || e.dtype == torch::kFloat16 || e.dtype == torch::kFloat32 ||
                         e.dtype == torch::kFloat64,
                     shard->path(), ": tensor '", name, "' is ", safetensors_dtype_name(e.dtype),
                     "; weights are floating point (F32, F16, BF16)");
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i ? ", " : "") + unexpected[i];
    throw std::invalid_argument(str_cat(in_dir, ": ", unexpected.size(), " tensors this ", hf.model_type,
                                        " architecture does not have: ", list));
  }
  for (const auto& [name, shape] : expected)
    MOEKIT_CHECK_ARG(in.tensors().count(name), in_dir, ": tensor '", name, "' is missing");

  // The plan, in the MoE model's order: each dense FFN matrix feeds its E
  // expert copies one after the other and is released after the last.
  const std::map<int64_t, torch::Tensor> routers = upcycled_routers(moe, o);
  auto dtype_of = [&](const std::string& source) {
    return write.dtype.value_or(in.shard_of(source).entry(source).dtype);
  };
  auto view = [&in](const std::string& name) { return [&in, name] { return in.shard_of(name).view(name); }; };
  auto release = [&in](const std::string& name) -> std::function<void()> {
    return [&in, name] { in.shard_of(name).release(name); };
  };
  std::vector<PlannedTensor> plan;
  for (const auto& [name, shape] : hf_tensor_shapes(moe)) {
    static const std::string marker = ".block_sparse_moe.";
    const size_t at = name.find(marker);
    if (at == std::string::npos) {
      plan.push_back({name, dtype_of(name), shape, view(name), release(name)});
      continue;
    }
    const std::string layer = name.substr(0, at), rest = name.substr(at + marker.size());
    const std::string gate_proj = layer + ".mlp.gate_proj.weight";
    if (rest == "gate.weight") {
      const int64_t l = std::stoll(layer.substr(layer.rfind('.') + 1));
      plan.push_back({name, dtype_of(gate_proj), shape, [router = routers.at(l)] { return router; }, nullptr});
      // The experts of this layer, grouped by their source matrix.
      for (const auto& [w, proj] : std::vector<std::pair<std::string, std::string>>{
               {"w1", "gate_proj"}, {"w3", "up_proj"}, {"w2", "down_proj"}}) {
        const std::string source = layer + ".mlp." + proj + ".weight";
        const bool down = w == "w2";
        for (int64_t e = 0; e < moe.moe.num_experts; ++e) {
          const std::string expert = layer + marker + "experts." + std::to_string(e) + "." + w + ".weight";
          const int64_t H = moe.expert_hidden(), D = moe.d_model;
          plan.push_back({expert, dtype_of(source), down ? std::vector<int64_t>{D, H} : std::vector<int64_t>{H, D},
                          [&in, source, down, e, G = o.granularity] {
                            return upcycled_expert(in.shard_of(source).view(source), down, e, G);
                          },
                          e + 1 == moe.moe.num_experts ? release(source) : nullptr});
        }
      }
    }
    // experts.* entries were planned with their layer's gate.
  }

  json config = read_json(in_dir + "/config.json");
  config["architectures"] = {"MixtralForCausalLM"};
  config["model_type"] = "mixtral";
  config["intermediate_size"] = moe.expert_hidden();
  config["num_local_experts"] = moe.moe.num_experts;
  config["num_experts_per_tok"] = moe.moe.top_k;
  config["router_aux_loss_coef"] = moe.moe.aux_loss_coef;
  config["output_router_logits"] = false;
  if (!config.contains("sliding_window")) config["sliding_window"] = nullptr;
  if (write.dtype) config["torch_dtype"] = hf_dtype_name(*write.dtype);
  write_file_atomic(out_dir + "/config.json", config.dump(2) + "\n");

  HfUpcycleReport report;
  report.config = moe;
  report.tensors = static_cast<int64_t>(plan.size());
  for (const PlannedTensor& t : plan) {
    uint64_t n = c10::elementSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    report.bytes += n;
  }
  report.files = write_sharded_safetensors(out_dir, plan, write.max_shard_bytes);
  read_hf_config(out_dir);  // what was written reads back as the MoE model
  return report;
}

}  // namespace moekit
