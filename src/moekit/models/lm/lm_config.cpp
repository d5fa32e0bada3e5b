#include "moekit/models/lm/lm_config.h"

#include <set>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/config.h"

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

void LmConfig::validate() const {
  MOEKIT_CHECK_ARG(vocab_size >= 2, "lm: vocab_size must be >= 2, got ", vocab_size);
  MOEKIT_CHECK_ARG(d_model >= 1 && n_layers >= 1 && n_heads >= 1 && d_ffn >= 1,
                   "lm: d_model, n_layers, n_heads and d_ffn must be >= 1");
  MOEKIT_CHECK_ARG(d_model % n_heads == 0, "lm: d_model ", d_model, " is not divisible by n_heads ", n_heads);
  MOEKIT_CHECK_ARG(head_dim() % 2 == 0, "lm: head_dim (d_model / n_heads = ", head_dim(),
                   ") must be even for rotary positions");
  MOEKIT_CHECK_ARG(n_kv_heads >= 0, "lm: n_kv_heads must be >= 0");
  MOEKIT_CHECK_ARG(n_heads % kv_heads() == 0, "lm: n_heads ", n_heads, " is not divisible by n_kv_heads ",
                   kv_heads(), " (each KV group serves the same number of query heads)");
  MOEKIT_CHECK_ARG(max_seq_len >= 1, "lm: max_seq_len must be >= 1");
  MOEKIT_CHECK_ARG(rope_theta > 0 && norm_eps > 0 && init_std > 0, "lm: rope_theta, norm_eps, init_std must be > 0");
  if (moe.enabled()) {
    MOEKIT_CHECK_ARG(moe.top_k >= 1 && moe.top_k <= moe.num_experts, "lm: moe.top_k must be in [1, num_experts=",
                     moe.num_experts, "], got ", moe.top_k);
    MOEKIT_CHECK_ARG(moe.d_hidden >= 0, "lm: moe.d_hidden must be >= 0");
    MOEKIT_CHECK_ARG(moe.first_layer >= 0 && moe.first_layer < n_layers, "lm: moe.first_layer must be in [0, ",
                     n_layers, "), got ", moe.first_layer);
    MOEKIT_CHECK_ARG(moe.every >= 1, "lm: moe.every must be >= 1");
    MOEKIT_CHECK_ARG(moe.aux_loss_coef >= 0 && moe.z_loss_coef >= 0, "lm: moe loss coefficients must be >= 0");
  } else {
    MOEKIT_CHECK_ARG(moe.num_experts == 0, "lm: moe.num_experts must be >= 0");
  }
}

std::string LmConfig::to_string() const {
  std::ostringstream out;
  out << "vocab_size=" << vocab_size << " d_model=" << d_model << " n_layers=" << n_layers << " n_heads=" << n_heads
      << " n_kv_heads=" << kv_heads() << " d_ffn=" << d_ffn << " max_seq_len=" << max_seq_len
      << " rope_theta=" << rope_theta << " norm_eps=" << norm_eps << " qkv_bias=" << qkv_bias
      << " tie_embeddings=" << tie_embeddings;
  if (moe.enabled())
    out << " moe.num_experts=" << moe.num_experts << " moe.top_k=" << moe.top_k
        << " moe.d_hidden=" << expert_hidden() << " moe.first_layer=" << moe.first_layer
        << " moe.every=" << moe.every << " moe.aux_loss_coef=" << moe.aux_loss_coef
        << " moe.z_loss_coef=" << moe.z_loss_coef;
  return out.str();
}

YAML::Node LmConfig::to_yaml() const {
  YAML::Node n;
  n["vocab_size"] = vocab_size;
  n["d_model"] = d_model;
  n["n_layers"] = n_layers;
  n["n_heads"] = n_heads;
  n["n_kv_heads"] = kv_heads();
  n["d_ffn"] = d_ffn;
  n["max_seq_len"] = max_seq_len;
  n["rope_theta"] = rope_theta;
  n["norm_eps"] = norm_eps;
  n["qkv_bias"] = qkv_bias;
  n["tie_embeddings"] = tie_embeddings;
  n["init_std"] = init_std;
  if (moe.enabled()) {
    YAML::Node m;
    m["num_experts"] = moe.num_experts;
    m["top_k"] = moe.top_k;
    m["d_hidden"] = expert_hidden();
    m["first_layer"] = moe.first_layer;
    m["every"] = moe.every;
    m["aux_loss_coef"] = moe.aux_loss_coef;
    m["z_loss_coef"] = moe.z_loss_coef;
    n["moe"] = m;
  }
  return n;
}

namespace {

void check_keys(const YAML::Node& n, const std::set<std::string>& known, const std::string& where) {
  MOEKIT_CHECK_ARG(n.IsMap(), where, " must be a mapping");
  for (const auto& kv : n) {
    const std::string key = kv.first.as<std::string>();
    MOEKIT_CHECK_ARG(known.count(key), where, ": unknown option '", key, "'");
  }
}

}  // namespace

LmConfig LmConfig::from_yaml(const YAML::Node& n, const std::string& where) {
  LmConfig c;
  check_keys(n, {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ffn", "max_seq_len", "rope_theta",
                 "norm_eps", "qkv_bias", "tie_embeddings", "init_std", "moe"},
             where);
  c.vocab_size = yaml_get<int64_t>(n, "vocab_size", where);
  c.d_model = yaml_get_or<int64_t>(n, "d_model", c.d_model, where);
  c.n_layers = yaml_get_or<int64_t>(n, "n_layers", c.n_layers, where);
  c.n_heads = yaml_get_or<int64_t>(n, "n_heads", c.n_heads, where);
  c.n_kv_heads = yaml_get_or<int64_t>(n, "n_kv_heads", c.n_kv_heads, where);
  c.d_ffn = yaml_get_or<int64_t>(n, "d_ffn", c.d_ffn, where);
  c.max_seq_len = yaml_get_or<int64_t>(n, "max_seq_len", c.max_seq_len, where);
  c.rope_theta = yaml_get_or<double>(n, "rope_theta", c.rope_theta, where);
  c.norm_eps = yaml_get_or<double>(n, "norm_eps", c.norm_eps, where);
  c.qkv_bias = yaml_get_or<bool>(n, "qkv_bias", c.qkv_bias, where);
  c.tie_embeddings = yaml_get_or<bool>(n, "tie_embeddings", c.tie_embeddings, where);
  c.init_std = yaml_get_or<double>(n, "init_std", c.init_std, where);
  const YAML::Node m = n["moe"];
  if (m.IsDefined() && !m.IsNull()) {
    const std::string mw = where + ": moe";
    check_keys(m, {"num_experts", "top_k", "d_hidden", "first_layer", "every", "aux_loss_coef", "z_loss_coef"}, mw);
    c.moe.num_experts = yaml_get<int64_t>(m, "num_experts", mw);
    c.moe.top_k = yaml_get_or<int64_t>(m, "top_k", c.moe.top_k, mw);
    c.moe.d_hidden = yaml_get_or<int64_t>(m, "d_hidden", c.moe.d_hidden, mw);
    c.moe.first_layer = yaml_get_or<int64_t>(m, "first_layer", c.moe.first_layer, mw);
    c.moe.every = yaml_get_or<int64_t>(m, "every", c.moe.every, mw);
    c.moe.aux_loss_coef = yaml_get_or<double>(m, "aux_loss_coef", c.moe.aux_loss_coef, mw);
    c.moe.z_loss_coef = yaml_get_or<double>(m, "z_loss_coef", c.moe.z_loss_coef, mw);
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
  return c;
}

}  // namespace moekit
