#include "moekit/models/lm/lm_config.h"


#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/limits.h"

namespace moekit {

double LmConfig::forward_flops_per_token(int64_t context) const {
  const double d = static_cast<double>(d_model);
  const double kv = static_cast<double>(kv_heads() * head_dim());
  double flops = 0;
  for (int64_t l = 0; l < n_layers; ++l) {
    flops += 2 * d * (d + 2 * kv) + 2 * d * d;                      // q, k, v, o projections
    flops += 2 * 2 * static_cast<double>(context) * d;             // scores and weighted values
    if (is_moe_layer(l)) {
      flops += 2 * d * static_cast<double>(moe.num_experts);       // router
      flops += static_cast<double>(moe.top_k) * 2 * 3 * d * static_cast<double>(expert_hidden());
    } else {
      flops += 2 * 3 * d * static_cast<double>(d_ffn);             // w1, w3, w2
    }
  }
  return flops + 2 * d * static_cast<double>(vocab_size);          // lm_head
}

namespace {

const FieldTable<LmMoeConfig>& lm_moe_fields() {
  using M = LmMoeConfig;
  static const auto table =
      FieldTable<M>("lm moe")
          .field("num_experts", &M::num_experts, "E (0 = dense model)").required().in_range(0, limits::kExperts)
          .field("top_k", &M::top_k, "experts per token; weights = softmax over the top-k logits")
          .field("d_hidden", &M::d_hidden, "hidden width of each expert (0 = the dense d_ffn)").in_range(0, limits::kHidden)
          .field("first_layer", &M::first_layer, "the first MoE layer")
          .field("every", &M::every, "then every n-th layer (1 = all layers from first_layer)").at_least(1)
          .field("aux_loss_coef", &M::aux_loss_coef, "Switch load-balancing loss (AquilaMoE: 0.001)").non_negative()
          .field("z_loss_coef", &M::z_loss_coef, "router z-loss (AquilaMoE: 0.01)").non_negative()
          .rule([](const M& m) {
            return !m.enabled() || (m.top_k >= 1 && m.top_k <= m.num_experts)
                       ? std::string()
                       : str_cat("top_k must be in [1, num_experts=", m.num_experts, "], got ", m.top_k);
          });
  return table;
}

const FieldTable<LmConfig>& lm_fields() {
  using C = LmConfig;
  static const auto table =
      FieldTable<C>("lm")
          .field("vocab_size", &C::vocab_size, "tokenizer pieces").required().in_range(2, limits::kVocab)
          .field("d_model", &C::d_model, "residual width").in_range(1, limits::kWidth)
          .field("n_layers", &C::n_layers, "decoder blocks").in_range(1, limits::kLayers)
          .field("n_heads", &C::n_heads, "query heads; head_dim = d_model / n_heads").in_range(1, limits::kHeads)
          .field("n_kv_heads", &C::n_kv_heads, "key/value heads (KV groups); 0 = n_heads").in_range(0, limits::kHeads)
          .field("d_ffn", &C::d_ffn, "SwiGLU hidden width of the dense FFN").in_range(1, limits::kHidden)
          .field("max_seq_len", &C::max_seq_len, "longest context (prompt + generated tokens)").in_range(1, limits::kSeqLen)
          .field("rope_theta", &C::rope_theta, "rotary base").positive()
          .field("norm_eps", &C::norm_eps, "RMSNorm epsilon").positive()
          .field("qkv_bias", &C::qkv_bias, "biases on the q/k/v projections")
          .field("tie_embeddings", &C::tie_embeddings, "lm_head shares embed_tokens' weight")
          .field("init_std", &C::init_std, "normal init of every weight matrix").positive()
          .section("moe", &C::moe, lm_moe_fields(), "MoE FFNs (absent: dense)")
          .write_if([](const C& c) { return c.moe.enabled(); })
          .rule([](const C& c) {
            return c.d_model % c.n_heads == 0
                       ? std::string()
                       : str_cat("d_model ", c.d_model, " is not divisible by n_heads ", c.n_heads);
          })
          .rule([](const C& c) {
            return c.head_dim() % 2 == 0 ? std::string()
                                         : str_cat("head_dim (d_model / n_heads = ", c.head_dim(),
                                                   ") must be even for rotary positions");
          })
          .rule([](const C& c) {
            return c.n_heads % c.kv_heads() == 0
                       ? std::string()
                       : str_cat("n_heads ", c.n_heads, " is not divisible by n_kv_heads ", c.kv_heads(),
                                 " (each KV group serves the same number of query heads)");
          })
          .rule([](const C& c) {
            return !c.moe.enabled() || (c.moe.first_layer >= 0 && c.moe.first_layer < c.n_layers)
                       ? std::string()
                       : str_cat("moe.first_layer must be in [0, ", c.n_layers, "), got ", c.moe.first_layer);
          });
  return table;
}

// The config as written: defaults that depend on other fields resolved.
LmConfig resolved(const LmConfig& c) {
  LmConfig r = c;
  r.n_kv_heads = c.kv_heads();
  if (r.moe.enabled()) r.moe.d_hidden = c.expert_hidden();
  return r;
}

}  // namespace

const FieldTable<LmConfig>& LmConfig::fields() { return lm_fields(); }
void LmConfig::validate() const { lm_fields().validate(*this); }
std::string LmConfig::to_string() const { return lm_fields().to_string(resolved(*this)); }
YAML::Node LmConfig::to_yaml() const { return lm_fields().write(resolved(*this)); }
LmConfig LmConfig::from_yaml(const YAML::Node& n, const std::string& where) {
  MOEKIT_CHECK_ARG(n.IsMap(), where, " must be a mapping");
  return lm_fields().parse(n, where);
}

}  // namespace moekit
