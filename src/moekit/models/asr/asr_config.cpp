#include "moekit/models/asr/asr_config.h"

#include <set>

#include "moekit/core/check.h"
#include "moekit/core/config.h"

namespace moekit {

namespace {

void check_known_keys(const YAML::Node& node, const std::set<std::string>& known, const std::string& where) {
  if (!node.IsDefined() || node.IsNull()) return;
  MOEKIT_CHECK_ARG(node.IsMap(), where, " must be a mapping");
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    MOEKIT_CHECK_ARG(known.count(key), where, ": unknown option '", key, "'");
  }
}

FfnConfig ffn_from_yaml(const YAML::Node& n, Activation default_activation, const std::string& where) {
  FfnConfig f;
  const std::string mlp = yaml_get_or<std::string>(n, "mlp_type", "position_wise_feed_forward", where);
  MOEKIT_CHECK_ARG(mlp == "position_wise_feed_forward" || mlp == "dense" || mlp == "moe", where,
                   ": unsupported mlp_type '", mlp, "' (position_wise_feed_forward | moe)");
  f.moe = mlp == "moe";
  f.hidden = yaml_get_or<int64_t>(n, "linear_units", 2048, where);
  f.n_expert = yaml_get_or<int64_t>(n, "n_expert", 8, where);
  f.n_expert_activated = yaml_get_or<int64_t>(n, "n_expert_activated", 2, where);
  f.activation = n["activation_type"].IsDefined()
                     ? parse_activation(yaml_get<std::string>(n, "activation_type", where))
                     : default_activation;
  f.bias = yaml_get_or<bool>(n, "mlp_bias", true, where);
  return f;
}

void ffn_to_yaml(const FfnConfig& f, YAML::Node& n) {
  n["linear_units"] = f.hidden;
  n["activation_type"] = activation_name(f.activation);
  n["mlp_type"] = f.moe ? "moe" : "position_wise_feed_forward";
  if (f.moe) {
    n["n_expert"] = f.n_expert;
    n["n_expert_activated"] = f.n_expert_activated;
  }
  n["mlp_bias"] = f.bias;
}

void validate_ffn(const FfnConfig& f, const std::string& where) {
  MOEKIT_CHECK_ARG(f.hidden > 0, where, ": linear_units must be positive, got ", f.hidden);
  MOEKIT_CHECK_ARG(!is_gated(f.activation), where, ": activation_type swiglu is not a WeNet FFN activation");
  if (f.moe)
    MOEKIT_CHECK_ARG(f.n_expert >= 1 && f.n_expert_activated >= 1 && f.n_expert_activated <= f.n_expert, where,
                     ": need 1 <= n_expert_activated <= n_expert, got ", f.n_expert_activated, " of ", f.n_expert);
}

}  // namespace

void AsrConfig::validate() const {
  MOEKIT_CHECK_ARG(vocab_size >= 3, "asr config: vocab_size must be >= 3 (blank, a unit, sos/eos), got ",
                   vocab_size);
  const auto& e = encoder;
  MOEKIT_CHECK_ARG(e.input_dim > 0 && e.output_size > 0 && e.num_blocks > 0, "asr config: encoder sizes must be positive");
  MOEKIT_CHECK_ARG(e.output_size % e.attention_heads == 0, "asr config: encoder output_size ", e.output_size,
                   " is not divisible by attention_heads ", e.attention_heads);
  MOEKIT_CHECK_ARG(e.subsampling_rate == 4 || e.subsampling_rate == 6 || e.subsampling_rate == 8,
                   "asr config: subsampling rate must be 4, 6 or 8");
  MOEKIT_CHECK_ARG(!e.use_cnn_module || e.cnn_module_kernel > 0, "asr config: cnn_module_kernel must be positive");
  MOEKIT_CHECK_ARG(!e.use_cnn_module || e.causal || e.cnn_module_kernel % 2 == 1,
                   "asr config: a non-causal cnn_module_kernel must be odd, got ", e.cnn_module_kernel);
  validate_ffn(e.ffn, "asr config: encoder_conf");
  const auto& d = decoder;
  MOEKIT_CHECK_ARG(d.num_blocks >= 0 && d.r_num_blocks >= 0, "asr config: decoder num_blocks must be >= 0");
  MOEKIT_CHECK_ARG(d.num_blocks == 0 || e.output_size % d.attention_heads == 0, "asr config: decoder attention_heads ",
                   d.attention_heads, " does not divide ", e.output_size);
  if (d.num_blocks > 0) validate_ffn(d.ffn, "asr config: decoder_conf");
  MOEKIT_CHECK_ARG(ctc_weight >= 0 && ctc_weight <= 1, "asr config: ctc_weight must be in [0, 1]");
  MOEKIT_CHECK_ARG(reverse_weight >= 0 && reverse_weight <= 1, "asr config: reverse_weight must be in [0, 1]");
  MOEKIT_CHECK_ARG(reverse_weight == 0 || d.r_num_blocks > 0,
                   "asr config: reverse_weight > 0 needs a right-to-left decoder (r_num_blocks > 0)");
  MOEKIT_CHECK_ARG(fbank.num_mel_bins == e.input_dim, "asr config: fbank num_mel_bins ", fbank.num_mel_bins,
                   " differs from input_dim ", e.input_dim);
  fbank.validate();
}

YAML::Node AsrConfig::to_yaml() const {
  YAML::Node n;
  n["vocab_size"] = vocab_size;
  n["input_dim"] = encoder.input_dim;
  YAML::Node e;
  const auto& ec = encoder;
  e["output_size"] = ec.output_size;
  e["attention_heads"] = ec.attention_heads;
  e["num_blocks"] = ec.num_blocks;
  ffn_to_yaml(ec.ffn, e);
  e["dropout_rate"] = ec.dropout_rate;
  e["positional_dropout_rate"] = ec.positional_dropout_rate;
  e["attention_dropout_rate"] = ec.attention_dropout_rate;
  e["input_layer"] = ec.subsampling_rate == 4 ? "conv2d" : ec.subsampling_rate == 6 ? "conv2d6" : "conv2d8";
  e["pos_enc_layer_type"] = ec.rel_pos ? "rel_pos" : "abs_pos";
  e["normalize_before"] = ec.normalize_before;
  e["macaron_style"] = ec.macaron_style;
  e["use_cnn_module"] = ec.use_cnn_module;
  e["cnn_module_kernel"] = ec.cnn_module_kernel;
  e["cnn_module_norm"] = ec.cnn_layer_norm ? "layer_norm" : "batch_norm";
  e["causal"] = ec.causal;
  e["use_dynamic_chunk"] = ec.use_dynamic_chunk;
  e["use_dynamic_left_chunk"] = ec.use_dynamic_left_chunk;
  e["static_chunk_size"] = ec.static_chunk_size;
  e["norm_eps"] = ec.norm_eps;
  n["encoder_conf"] = e;
  YAML::Node d;
  const auto& dc = decoder;
  d["attention_heads"] = dc.attention_heads;
  d["num_blocks"] = dc.num_blocks;
  d["r_num_blocks"] = dc.r_num_blocks;
  ffn_to_yaml(dc.ffn, d);
  d["dropout_rate"] = dc.dropout_rate;
  d["positional_dropout_rate"] = dc.positional_dropout_rate;
  d["self_attention_dropout_rate"] = dc.self_attention_dropout_rate;
  d["src_attention_dropout_rate"] = dc.src_attention_dropout_rate;
  d["normalize_before"] = dc.normalize_before;
  if (dc.tie_word_embedding) d["tie_word_embedding"] = true;  // older readers stay able to load the rest
  n["decoder_conf"] = d;
  YAML::Node m;
  m["ctc_weight"] = ctc_weight;
  m["reverse_weight"] = reverse_weight;
  m["lsm_weight"] = lsm_weight;
  m["length_normalized_loss"] = length_normalized_loss;
  if (apply_non_blank_embedding) m["apply_non_blank_embedding"] = true;  // older readers stay able to load the rest
  n["model_conf"] = m;
  n["fbank_conf"] = fbank.to_yaml();
  return n;
}

AsrConfig AsrConfig::from_yaml(const YAML::Node& n, const std::string& where) {
  check_known_keys(n, {"vocab_size", "input_dim", "encoder_conf", "decoder_conf", "model_conf", "fbank_conf"}, where);
  AsrConfig c;
  c.vocab_size = yaml_get<int64_t>(n, "vocab_size", where);
  auto& e = c.encoder;
  e.input_dim = yaml_get_or<int64_t>(n, "input_dim", 80, where);
  const YAML::Node en = n["encoder_conf"];
  const std::string ew = where + ": encoder_conf";
  check_known_keys(en,
                   {"output_size", "attention_heads", "linear_units", "num_blocks", "dropout_rate",
                    "positional_dropout_rate", "attention_dropout_rate", "input_layer", "pos_enc_layer_type",
                    "normalize_before", "macaron_style", "use_cnn_module", "cnn_module_kernel", "cnn_module_norm",
                    "causal", "use_dynamic_chunk", "use_dynamic_left_chunk", "static_chunk_size", "activation_type",
                    "mlp_type", "n_expert", "n_expert_activated", "mlp_bias", "norm_eps"},
                   ew);
  e.output_size = yaml_get_or<int64_t>(en, "output_size", 256, ew);
  e.attention_heads = yaml_get_or<int64_t>(en, "attention_heads", 4, ew);
  e.num_blocks = yaml_get_or<int64_t>(en, "num_blocks", 12, ew);
  e.ffn = ffn_from_yaml(en, Activation::Swish, ew);
  e.dropout_rate = yaml_get_or<double>(en, "dropout_rate", 0.1, ew);
  e.positional_dropout_rate = yaml_get_or<double>(en, "positional_dropout_rate", 0.1, ew);
  e.attention_dropout_rate = yaml_get_or<double>(en, "attention_dropout_rate", 0.0, ew);
  const std::string layer = yaml_get_or<std::string>(en, "input_layer", "conv2d", ew);
  MOEKIT_CHECK_ARG(layer == "conv2d" || layer == "conv2d6" || layer == "conv2d8", ew, ": unsupported input_layer '",
                   layer, "' (conv2d | conv2d6 | conv2d8)");
  e.subsampling_rate = layer == "conv2d" ? 4 : layer == "conv2d6" ? 6 : 8;
  const std::string pos = yaml_get_or<std::string>(en, "pos_enc_layer_type", "rel_pos", ew);
  MOEKIT_CHECK_ARG(pos == "rel_pos" || pos == "abs_pos", ew, ": unsupported pos_enc_layer_type '", pos,
                   "' (rel_pos | abs_pos)");
  e.rel_pos = pos == "rel_pos";
  e.normalize_before = yaml_get_or<bool>(en, "normalize_before", true, ew);
  e.macaron_style = yaml_get_or<bool>(en, "macaron_style", true, ew);
  e.use_cnn_module = yaml_get_or<bool>(en, "use_cnn_module", true, ew);
  e.cnn_module_kernel = yaml_get_or<int64_t>(en, "cnn_module_kernel", 15, ew);
  const std::string norm = yaml_get_or<std::string>(en, "cnn_module_norm", "batch_norm", ew);
  MOEKIT_CHECK_ARG(norm == "batch_norm" || norm == "layer_norm", ew, ": unsupported cnn_module_norm '", norm,
                   "' (batch_norm | layer_norm)");
  e.cnn_layer_norm = norm == "layer_norm";
  e.causal = yaml_get_or<bool>(en, "causal", false, ew);
  e.use_dynamic_chunk = yaml_get_or<bool>(en, "use_dynamic_chunk", false, ew);
  e.use_dynamic_left_chunk = yaml_get_or<bool>(en, "use_dynamic_left_chunk", false, ew);
  e.static_chunk_size = yaml_get_or<int64_t>(en, "static_chunk_size", 0, ew);
  e.norm_eps = yaml_get_or<double>(en, "norm_eps", 1e-5, ew);

  auto& d = c.decoder;
  const YAML::Node dn = n["decoder_conf"];
  const std::string dw = where + ": decoder_conf";
  check_known_keys(dn,
                   {"attention_heads", "linear_units", "num_blocks", "r_num_blocks", "dropout_rate",
                    "positional_dropout_rate", "self_attention_dropout_rate", "src_attention_dropout_rate",
                    "normalize_before", "activation_type", "mlp_type", "n_expert", "n_expert_activated", "mlp_bias",
                    "tie_word_embedding"},
                   dw);
  d.attention_heads = yaml_get_or<int64_t>(dn, "attention_heads", 4, dw);
  d.num_blocks = yaml_get_or<int64_t>(dn, "num_blocks", 6, dw);
  d.r_num_blocks = yaml_get_or<int64_t>(dn, "r_num_blocks", 0, dw);
  d.ffn = ffn_from_yaml(dn, Activation::Relu, dw);
  d.dropout_rate = yaml_get_or<double>(dn, "dropout_rate", 0.1, dw);
  d.positional_dropout_rate = yaml_get_or<double>(dn, "positional_dropout_rate", 0.1, dw);
  d.self_attention_dropout_rate = yaml_get_or<double>(dn, "self_attention_dropout_rate", 0.0, dw);
  d.src_attention_dropout_rate = yaml_get_or<double>(dn, "src_attention_dropout_rate", 0.0, dw);
  d.normalize_before = yaml_get_or<bool>(dn, "normalize_before", true, dw);
  d.tie_word_embedding = yaml_get_or<bool>(dn, "tie_word_embedding", false, dw);

  const YAML::Node mn = n["model_conf"];
  const std::string mw = where + ": model_conf";
  check_known_keys(mn, {"ctc_weight", "reverse_weight", "lsm_weight", "length_normalized_loss",
                        "apply_non_blank_embedding"},
                   mw);
  c.ctc_weight = yaml_get_or<double>(mn, "ctc_weight", 0.3, mw);
  c.reverse_weight = yaml_get_or<double>(mn, "reverse_weight", d.r_num_blocks > 0 ? 0.3 : 0.0, mw);
  c.lsm_weight = yaml_get_or<double>(mn, "lsm_weight", 0.1, mw);
  c.length_normalized_loss = yaml_get_or<bool>(mn, "length_normalized_loss", false, mw);
  c.apply_non_blank_embedding = yaml_get_or<bool>(mn, "apply_non_blank_embedding", false, mw);
  c.fbank = n["fbank_conf"].IsDefined() ? FbankOptions::from_yaml(n["fbank_conf"], where + ": fbank_conf") : FbankOptions{};
  if (!n["fbank_conf"].IsDefined()) c.fbank.num_mel_bins = static_cast<int>(e.input_dim);
  c.validate();
  return c;
}

}  // namespace moekit
