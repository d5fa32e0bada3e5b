#include "moekit/models/lm/hf_llama.h"

#include <nlohmann/json.hpp>

#include <regex>
#include <set>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/models/lm/lm_model.h"

namespace moekit {
namespace {

using json = nlohmann::json;

// MoEKit name -> HF name for one tensor that maps one to one (nullopt-like "" otherwise).
std::string hf_name(const std::string& name) {
  static const std::vector<std::pair<std::string, std::string>> ffn = {
      {".mlp.w1.weight", ".mlp.gate_proj.weight"},
      {".mlp.w3.weight", ".mlp.up_proj.weight"},
      {".mlp.w2.weight", ".mlp.down_proj.weight"},
      {".mlp.gate.weight", ".block_sparse_moe.gate.weight"},
  };
  if (name == "lm_head.weight") return name;
  for (const auto& [ours, theirs] : ffn) {
    const size_t at = name.size() >= ours.size() ? name.size() - ours.size() : std::string::npos;
    if (at != std::string::npos && name.compare(at, ours.size(), ours) == 0) return "model." + name.substr(0, at) + theirs;
  }
  return "model." + name;
}

}  // namespace

void export_hf_llama(const LmWeights& model, const std::string& dir) {
  const LmConfig& c = model.config;
  const bool moe = c.moe.enabled();
  MOEKIT_CHECK_ARG(!moe || c.all_layers_moe(), "export hf: Mixtral has MoE in every layer; this model has MoE from layer ",
                   c.moe.first_layer, " every ", c.moe.every, " layers");
  MOEKIT_CHECK_ARG(!moe || !c.qkv_bias, "export hf: Mixtral has no QKV bias; this MoE model has one");
  json j;
  j["architectures"] = {moe ? "MixtralForCausalLM" : c.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = moe ? "mixtral" : c.qkv_bias ? "qwen2" : "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.d_model;
  j["intermediate_size"] = moe ? c.expert_hidden() : c.d_ffn;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.kv_heads();
  j["head_dim"] = c.head_dim();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_seq_len;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["initializer_range"] = c.init_std;
  j["torch_dtype"] = "float32";
  if (!c.qkv_bias) {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  }
  if (moe) {
    j["num_local_experts"] = c.moe.num_experts;
    j["num_experts_per_tok"] = c.moe.top_k;
    j["router_aux_loss_coef"] = c.moe.aux_loss_coef;
    j["output_router_logits"] = false;
    j["sliding_window"] = nullptr;
  }
  TensorMap out;
  for (const auto& [name, t] : model.weights) {
    static const std::regex experts(R"(^layers\.(\d+)\.mlp\.experts\.(w[123])$)");
    std::smatch m;
    if (std::regex_match(name, m, experts)) {
      for (int64_t e = 0; e < t.size(0); ++e)
        out["model.layers." + m[1].str() + ".block_sparse_moe.experts." + std::to_string(e) + "." + m[2].str() +
            ".weight"] = t[e].contiguous();
      continue;
    }
    out[hf_name(name)] = t;
  }
  make_dirs(dir);
  write_file_atomic(dir + "/config.json", j.dump(2) + "\n");
  write_safetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
}

LmWeights import_hf_llama(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  MOEKIT_CHECK_ARG(path_exists(config_path), dir, ": no config.json (expected a Hugging Face model directory)");
  json j;
  try {
    j = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    throw std::invalid_argument(config_path + ": invalid JSON: " + e.what());
  }
  MOEKIT_CHECK_ARG(j.is_object(), config_path, ": not a JSON object");
  const std::string type = j.value("model_type", "");
  MOEKIT_CHECK_ARG(type == "llama" || type == "mistral" || type == "mixtral" || type == "qwen2", config_path,
                   ": model_type '", type, "' is not supported (llama, mistral, mixtral, qwen2)");
  auto get_int = [&](const char* key) -> int64_t {
    MOEKIT_CHECK_ARG(j.contains(key) && j[key].is_number_integer(), config_path, ": missing or non-integer '", key, "'");
    return j[key].get<int64_t>();
  };
  auto refuse_if = [&](bool cond, const std::string& what) {
    MOEKIT_CHECK_ARG(!cond, config_path, ": ", what, " is not supported");
  };
  LmConfig c;
  c.vocab_size = get_int("vocab_size");
  c.d_model = get_int("hidden_size");
  c.n_layers = get_int("num_hidden_layers");
  c.n_heads = get_int("num_attention_heads");
  c.n_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                     ? get_int("num_key_value_heads") : c.n_heads;
  c.max_seq_len = get_int("max_position_embeddings");
  c.rope_theta = j.value("rope_theta", 10000.0);
  c.norm_eps = j.value("rms_norm_eps", 1e-6);
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.init_std = j.value("initializer_range", 0.02);
  c.qkv_bias = type == "qwen2";
  refuse_if(j.value("hidden_act", std::string("silu")) != "silu", "hidden_act '" + j.value("hidden_act", std::string()) + "'");
  refuse_if(j.contains("rope_scaling") && !j["rope_scaling"].is_null(), "rope_scaling");
  refuse_if(j.value("attention_bias", false), "attention_bias (biases on every projection)");
  refuse_if(j.value("mlp_bias", false), "mlp_bias");
  if (j.contains("head_dim") && !j["head_dim"].is_null())
    refuse_if(get_int("head_dim") * c.n_heads != c.d_model, "head_dim other than hidden_size / num_attention_heads");
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() && type != "qwen2")
    refuse_if(get_int("sliding_window") < c.max_seq_len, "sliding_window attention");
  if (type == "qwen2") refuse_if(j.value("use_sliding_window", false), "use_sliding_window");
  if (type == "mixtral") {
    c.moe.num_experts = get_int("num_local_experts");
    c.moe.top_k = get_int("num_experts_per_tok");
    c.moe.aux_loss_coef = j.value("router_aux_loss_coef", 0.001);
    c.moe.d_hidden = get_int("intermediate_size");
    c.d_ffn = c.moe.d_hidden;
  } else {
    c.d_ffn = get_int("intermediate_size");
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(config_path + ": " + e.what());
  }
  // Weights: one file or the shards an index names.
  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (path_exists(dir + "/model.safetensors")) {
    files.push_back(dir + "/model.safetensors");
  } else {
    MOEKIT_CHECK_ARG(path_exists(index_path), dir, ": neither model.safetensors nor model.safetensors.index.json");
    json index;
    try {
      index = json::parse(read_file(index_path));
    } catch (const json::exception& e) {
      throw std::invalid_argument(index_path + ": invalid JSON: " + e.what());
    }
    MOEKIT_CHECK_ARG(index.contains("weight_map") && index["weight_map"].is_object(), index_path, ": no weight_map");
    std::set<std::string> shards;
    for (const auto& item : index["weight_map"].items()) shards.insert(item.value().get<std::string>());
    for (const auto& s : shards) {
      MOEKIT_CHECK_ARG(s.find('/') == std::string::npos, index_path, ": shard name '", s, "' is not a plain file name");
      files.push_back(dir + "/" + s);
    }
  }
  TensorMap hf;
  for (const auto& f : files)
    for (auto& [name, t] : read_safetensors(f).tensors) hf[name] = t;

  LmWeights out;
  out.config = c;
  static const std::regex expert(R"(^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$)");
  std::map<std::string, std::map<int64_t, torch::Tensor>> experts;  // our name -> expert -> tensor
  std::map<std::string, std::string> ours_of;                         // HF name -> ours, for one-to-one tensors
  {
    LmModel reference_names(c);  // the names this architecture has
    for (const auto& [name, t] : module_state(reference_names))
      if (name.find(".mlp.experts.") == std::string::npos) ours_of[hf_name(name)] = name;
  }
  std::vector<std::string> unexpected;
  for (auto& [name, t] : hf) {
    std::smatch m;
    if (std::regex_match(name, m, expert)) {
      experts["layers." + m[1].str() + ".mlp.experts." + m[3].str()][std::stoll(m[2].str())] = t;
    } else if (auto it = ours_of.find(name); it != ours_of.end()) {
      out.weights[it->second] = t;
    } else if (name.find("rotary_emb.inv_freq") == std::string::npos) {
      unexpected.push_back(name);
    }
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i ? ", " : "") + unexpected[i];
    throw std::invalid_argument(str_cat(dir, ": ", unexpected.size(), " tensors this ", type,
                                        " architecture does not have: ", list));
  }
  for (auto& [name, by_expert] : experts) {
    std::vector<torch::Tensor> stack;
    for (int64_t e = 0; e < c.moe.num_experts; ++e) {
      auto it = by_expert.find(e);
      MOEKIT_CHECK_ARG(it != by_expert.end(), dir, ": expert ", e, " of ", name, " is missing");
      stack.push_back(it->second);
    }
    MOEKIT_CHECK_ARG(static_cast<int64_t>(by_expert.size()) == c.moe.num_experts, dir, ": ", name, " has ",
                     by_expert.size(), " experts, config.json says ", c.moe.num_experts);
    out.weights[name] = torch::stack(stack);
  }
  return out;
}

}  // namespace moekit
