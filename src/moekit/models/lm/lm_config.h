#pragma once
// Hyperparameters of the LLaMA-style decoder-only language model
// (`model_type: lm`): RMSNorm, rotary positions (HF rotate-half layout),
// SwiGLU FFNs, grouped-query attention, optional QKV bias, tied or untied
// embeddings, and FFNs that are dense or MoE in all layers or an interval.
#include <yaml-cpp/yaml.h>

#include <string>

namespace moekit {

template <class Options>
class FieldTable;

// The MoE FFNs of an LM (num_experts == 0: every FFN is dense).
struct LmMoeConfig {
  int64_t num_experts = 0;       // E (0 = dense model)
  int64_t top_k = 2;             // experts per token; weights = softmax over the top-k logits
  int64_t d_hidden = 0;          // hidden width of each expert (0 = the dense d_ffn)
  int64_t first_layer = 0;       // the first MoE layer
  int64_t every = 1;             // then every n-th layer (1 = all layers from first_layer)
  double aux_loss_coef = 0.001;  // Switch load-balancing loss (AquilaMoE: 0.001)
  double z_loss_coef = 0.01;     // router z-loss (AquilaMoE: 0.01)

  bool enabled() const { return num_experts > 0; }
};

struct LmConfig {
  int64_t vocab_size = 0;        // tokenizer pieces
  int64_t d_model = 512;         // residual width
  int64_t n_layers = 8;          // decoder blocks
  int64_t n_heads = 8;           // query heads; head_dim = d_model / n_heads
  int64_t n_kv_heads = 0;        // key/value heads (KV groups); 0 = n_heads (plain MHA)
  int64_t d_ffn = 1376;          // SwiGLU hidden width of the dense FFN
  int64_t max_seq_len = 512;     // longest context (prompt + generated tokens)
  double rope_theta = 10000.0;   // rotary base
  double norm_eps = 1e-5;        // RMSNorm epsilon
  bool qkv_bias = false;         // biases on the q/k/v projections (AquilaMoE: yes)
  bool tie_embeddings = false;   // lm_head shares embed_tokens' weight
  double init_std = 0.02;        // normal init of every weight matrix
  LmMoeConfig moe;

  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t expert_hidden() const { return moe.d_hidden > 0 ? moe.d_hidden : d_ffn; }
  // Whether block `layer` has an MoE FFN.
  bool is_moe_layer(int64_t layer) const {
    return moe.enabled() && layer >= moe.first_layer && (layer - moe.first_layer) % moe.every == 0;
  }
  bool all_layers_moe() const { return moe.enabled() && moe.first_layer == 0 && moe.every == 1; }
  // Forward FLOPs per token at context length `context` (multiply-adds x 2,
  // active experts only, attention scores included).
  double forward_flops_per_token(int64_t context) const;

  // The field table (core/fields.h) behind the functions below.
  static const FieldTable<LmConfig>& fields();
  // Throws std::invalid_argument naming the first field out of range.
  void validate() const;
  std::string to_string() const;
  YAML::Node to_yaml() const;
  // Unknown keys are refused by name; calls validate().
  static LmConfig from_yaml(const YAML::Node& node, const std::string& where);
};

}  // namespace moekit
