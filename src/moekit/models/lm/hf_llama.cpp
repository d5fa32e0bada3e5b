#include "moekit/models/lm/hf_llama.h"

#include <nlohmann/json.hpp>

#include <regex>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_config.h"
#include "moekit/models/lm/lm_model.h"

namespace moekit {
namespace {

using json = nlohmann::json;

// The FFN tensors whose last name parts differ: (MoEKit, HF); every other
// name differs only by HF's "model." prefix (lm_head.weight not even that).
const std::vector<std::pair<std::string, std::string>>& renamed_ffn() {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {".mlp.w1.weight", ".mlp.gate_proj.weight"},
      {".mlp.w3.weight", ".mlp.up_proj.weight"},
      {".mlp.w2.weight", ".mlp.down_proj.weight"},
      {".mlp.gate.weight", ".block_sparse_moe.gate.weight"},
  };
  return names;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// MoEKit name -> HF name for one tensor that maps one to one.
std::string hf_name(const std::string& name) {
  if (name == "lm_head.weight") return name;
  for (const auto& [ours, theirs] : renamed_ffn())
    if (ends_with(name, ours)) return "model." + name.substr(0, name.size() - ours.size()) + theirs;
  return "model." + name;
}

}  // namespace

std::string hf_tensor_name(const std::string& moekit_name) { return hf_name(moekit_name); }

std::string moekit_tensor_name(const std::string& name) {
  if (name == "lm_head.weight") return name;
  MOEKIT_CHECK_ARG(name.rfind("model.", 0) == 0, "'", name, "' is not a tensor name of the Hugging Face LLaMA layout");
  const std::string rest = name.substr(6);
  for (const auto& [ours, theirs] : renamed_ffn())
    if (ends_with(rest, theirs)) return rest.substr(0, rest.size() - theirs.size()) + ours;
  return rest;
}

torch::ScalarType parse_hf_dtype(const std::string& text) {
  if (text == "bf16" || text == "bfloat16") return torch::kBFloat16;
  if (text == "fp16" || text == "float16") return torch::kFloat16;
  if (text == "fp32" || text == "float32") return torch::kFloat32;
  throw std::invalid_argument(str_cat("dtype '", text, "' is not one of bf16, fp16, fp32"));
}

std::string hf_dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    default: throw std::invalid_argument(str_cat("dtype ", c10::toString(dtype), " is not a weight dtype"));
  }
}

std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const LmConfig& c) {
  const int64_t D = c.d_model, q = c.n_heads * c.head_dim(), kv = c.kv_heads() * c.head_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> out = {{"model.embed_tokens.weight", {c.vocab_size, D}}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {D}});
    out.push_back({p + "self_attn.q_proj.weight", {q, D}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, D}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, D}});
    if (c.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}});
      out.push_back({p + "self_attn.k_proj.bias", {kv}});
      out.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    out.push_back({p + "self_attn.o_proj.weight", {D, q}});
    out.push_back({p + "post_attention_layernorm.weight", {D}});
    if (c.is_moe_layer(l)) {
      const int64_t H = c.expert_hidden();
      out.push_back({p + "block_sparse_moe.gate.weight", {c.moe.num_experts, D}});
      for (int64_t e = 0; e < c.moe.num_experts; ++e) {
        const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        out.push_back({x + "w1.weight", {H, D}});
        out.push_back({x + "w2.weight", {D, H}});
        out.push_back({x + "w3.weight", {H, D}});
      }
    } else {
      out.push_back({p + "mlp.gate_proj.weight", {c.d_ffn, D}});
      out.push_back({p + "mlp.up_proj.weight", {c.d_ffn, D}});
      out.push_back({p + "mlp.down_proj.weight", {D, c.d_ffn}});
    }
  }
  out.push_back({"model.norm.weight", {D}});
  if (!c.tie_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, D}});
  return out;
}

void export_hf_llama(const LmWeights& model, const std::string& dir, const HfWriteOptions& options) {
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
  j["torch_dtype"] = hf_dtype_name(options.dtype.value_or(torch::kFloat32));
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
            ".weight"] = t[e];
      continue;
    }
    out[hf_name(name)] = t;
  }
  std::vector<PlannedTensor> plan;
  for (const auto& [name, t] : out) {
    const torch::ScalarType dtype = options.dtype.value_or(t.scalar_type());
    plan.push_back({name, dtype, t.sizes().vec(), [t = t] { return t; }, nullptr});
  }
  make_dirs(dir);
  write_file_atomic(dir + "/config.json", j.dump(2) + "\n");
  write_sharded_safetensors(dir, plan, options.max_shard_bytes);
}

LmWeights import_hf_llama(const std::string& dir) {
  const HfConfig hf_config = read_hf_config(dir);
  const LmConfig& c = hf_config.config;
  const std::string& type = hf_config.model_type;
  const std::vector<std::string> files = hf_weight_files(dir);
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
      const std::string index = m[2].str();
      MOEKIT_CHECK_ARG(index.size() <= 6 && std::stoll(index) < c.moe.num_experts, dir, ": tensor '", name,
                       "' names expert ", index.substr(0, 12), " of a model with ", c.moe.num_experts, " experts");
      experts["layers." + m[1].str() + ".mlp.experts." + m[3].str()][std::stoll(index)] = t;
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
