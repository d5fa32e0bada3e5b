#include "moekit/models/lm/hf_config.h"

#include <nlohmann/json.hpp>

#include <set>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"

namespace moekit {

using json = nlohmann::json;

namespace {

json read_json_file(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw std::invalid_argument(path + ": invalid JSON: " + json_error_reason(e));
  }
}

}  // namespace

HfConfig read_hf_config(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  MOEKIT_CHECK_ARG(path_exists(config_path), dir, ": no config.json (expected a Hugging Face model directory)");
  const json j = read_json_file(config_path);
  MOEKIT_CHECK_ARG(j.is_object(), config_path, ": not a JSON object");
  const std::string type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
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
  try {
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
  } catch (const json::exception& e) {  // a field of the wrong type
    throw std::invalid_argument(config_path + ": " + json_error_reason(e));
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(config_path + ": " + e.what());
  }
  return {c, type};
}

std::vector<std::string> hf_weight_files(const std::string& dir) {
  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (path_exists(dir + "/model.safetensors")) {
    files.push_back(dir + "/model.safetensors");
  } else {
    MOEKIT_CHECK_ARG(path_exists(index_path), dir, ": neither model.safetensors nor model.safetensors.index.json");
    const json index = read_json_file(index_path);
    MOEKIT_CHECK_ARG(index.contains("weight_map") && index["weight_map"].is_object(), index_path, ": no weight_map");
    std::set<std::string> shards;
    for (const auto& item : index["weight_map"].items()) {
      MOEKIT_CHECK_ARG(item.value().is_string(), index_path, ": weight_map entry '", item.key(), "' is not a file name");
      shards.insert(item.value().get<std::string>());
    }
    for (const auto& s : shards) {
      MOEKIT_CHECK_ARG(!s.empty() && s.find('/') == std::string::npos && s != "." && s != "..", index_path,
                       ": shard name '", s, "' is not a plain file name");
      files.push_back(dir + "/" + s);
    }
  }
  for (const auto& f : files) check_inside_dir(f, dir);
  return files;
}

}  // namespace moekit
