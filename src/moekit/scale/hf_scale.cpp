#include "moekit/scale/hf_scale.h"

#include <nlohmann/json.hpp>

#include <map>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_checkpoint.h"

namespace moekit {
namespace {

using json = nlohmann::json;

// The input's config.json with `edit` applied (and the dtype, if converted), written to out_dir.
void write_config(const std::string& in_dir, const std::string& out_dir, const HfWriteOptions& write,
                  const std::function<void(json&)>& edit) {
  json config;
  try {
    config = json::parse(read_file(in_dir + "/config.json"));
  } catch (const json::exception& e) {
    throw std::invalid_argument(in_dir + "/config.json: invalid JSON: " + json_error_reason(e));
  }
  edit(config);
  if (write.dtype) config["torch_dtype"] = hf_dtype_name(*write.dtype);
  write_file_atomic(out_dir + "/config.json", config.dump(2) + "\n");
}

HfScaleReport write_weights(const std::string& out_dir, const LmConfig& config, const std::vector<PlannedTensor>& plan,
                            const HfWriteOptions& write) {
  HfScaleReport report;
  report.config = config;
  report.tensors = static_cast<int64_t>(plan.size());
  for (const PlannedTensor& t : plan) {
    uint64_t n = c10::elementSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    report.bytes += n;
  }
  report.files = write_sharded_safetensors(out_dir, plan, write.max_shard_bytes);
  read_hf_config(out_dir);  // what was written reads back as the model planned
  return report;
}

}  // namespace

bool is_hf_model_dir(const std::string& dir) {
  return path_exists(dir + "/config.json") && !path_exists(dir + "/config.yaml");
}

HfScaleReport upcycle_hf_dir(const std::string& in_dir, const std::string& out_dir, const UpcycleOptions& o,
                             const HfWriteOptions& write) {
  const HfConfig hf = read_hf_config(in_dir);
  const LmConfig moe = upcycled_config(hf.config, o);
  MOEKIT_CHECK_ARG(!moe.qkv_bias, "upcycle: ", in_dir, " is a ", hf.model_type,
                   " model with QKV biases; Mixtral, the Hugging Face MoE layout written here, has none");
  MOEKIT_CHECK_ARG(moe.all_layers_moe(), "upcycle: Mixtral has MoE in every layer; --first-layer ", o.first_layer,
                   " --every ", o.every, " would leave some dense");
  const HfCheckpoint in(in_dir);

  // The plan, in the MoE model's order: each dense FFN matrix feeds its E
  // expert copies one after the other and is released after the last.
  const std::map<int64_t, torch::Tensor> routers = upcycled_routers(moe, o);
  auto dtype_of = [&](const std::string& source) { return write.dtype.value_or(in.dtype(source)); };
  auto release = [&in](const std::string& name) -> std::function<void()> { return [&in, name] { in.release(name); }; };
  std::vector<PlannedTensor> plan;
  static const std::string marker = ".block_sparse_moe.";
  for (const auto& [name, shape] : hf_tensor_shapes(moe)) {
    const size_t at = name.find(marker);
    if (at == std::string::npos) {
      plan.push_back({name, dtype_of(name), shape, [&in, name = name] { return in.view(name); }, release(name)});
      continue;
    }
    if (name.compare(at + marker.size(), std::string::npos, "gate.weight") != 0) continue;  // experts: with the gate
    const std::string layer = name.substr(0, at);
    const int64_t l = std::stoll(layer.substr(layer.rfind('.') + 1));
    plan.push_back({name, dtype_of(layer + ".mlp.gate_proj.weight"), shape, [router = routers.at(l)] { return router; },
                    nullptr});
    for (const auto& [w, proj] :
         std::vector<std::pair<std::string, std::string>>{{"w1", "gate_proj"}, {"w3", "up_proj"}, {"w2", "down_proj"}}) {
      const std::string source = layer + ".mlp." + proj + ".weight";
      const bool down = w == "w2";
      const int64_t H = moe.expert_hidden(), D = moe.d_model;
      for (int64_t e = 0; e < moe.moe.num_experts; ++e) {
        plan.push_back({layer + marker + "experts." + std::to_string(e) + "." + w + ".weight", dtype_of(source),
                        down ? std::vector<int64_t>{D, H} : std::vector<int64_t>{H, D},
                        [&in, source, down, e, G = o.granularity] {
                          return upcycled_expert(in.view(source), down, e, G);
                        },
                        e + 1 == moe.moe.num_experts ? release(source) : nullptr});
      }
    }
  }
  write_config(in_dir, out_dir, write, [&](json& config) {
    config["architectures"] = {"MixtralForCausalLM"};
    config["model_type"] = "mixtral";
    config["intermediate_size"] = moe.expert_hidden();
    config["num_local_experts"] = moe.moe.num_experts;
    config["num_experts_per_tok"] = moe.moe.top_k;
    config["router_aux_loss_coef"] = moe.moe.aux_loss_coef;
    config["output_router_logits"] = false;
    if (!config.contains("sliding_window")) config["sliding_window"] = nullptr;
  });
  return write_weights(out_dir, moe, plan, write);
}

HfScaleReport grow_hf_dir(const std::string& in_dir, const std::string& out_dir, const GrowOptions& o,
                          const HfWriteOptions& write) {
  const HfConfig hf = read_hf_config(in_dir);
  const GrowPlan grow(hf.config, o);
  const LmConfig& c = grow.config();
  const HfCheckpoint in(in_dir);
  // A source can feed several grown tensors far apart (stacked blocks): its
  // pages are handed back after every use, as soon as the grown tensor (a
  // copy) is made, and read again from the page cache when next needed; so
  // what is resident is one grown tensor and, while it is made, its sources.
  std::vector<PlannedTensor> plan;
  for (const auto& [name, shape] : hf_tensor_shapes(c)) {
    const std::string ours = moekit_tensor_name(name);
    std::vector<std::string> sources;
    for (const std::string& s : grow.sources(ours)) sources.push_back(hf_tensor_name(s));
    plan.push_back({name, write.dtype.value_or(in.dtype(sources[0])), shape,
                    [&in, &grow, ours, sources] {
                      std::vector<torch::Tensor> views;
                      for (const std::string& s : sources) views.push_back(in.view(s));
                      torch::Tensor grown = grow.make(ours, views);
                      views.clear();
                      for (const std::string& s : sources) in.release(s);
                      return grown;
                    },
                    nullptr});
  }
  write_config(in_dir, out_dir, write, [&](json& config) {
    config["hidden_size"] = c.d_model;
    config["intermediate_size"] = c.d_ffn;
    config["num_hidden_layers"] = c.n_layers;
    config["num_attention_heads"] = c.n_heads;
    config["num_key_value_heads"] = c.kv_heads();
    if (config.contains("head_dim") && !config["head_dim"].is_null()) config["head_dim"] = c.head_dim();
  });
  return write_weights(out_dir, c, plan, write);
}

}  // namespace moekit
