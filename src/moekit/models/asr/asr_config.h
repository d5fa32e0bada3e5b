#pragma once
// Hyperparameters of the U2++ speech recognizer: a Conformer encoder, a CTC
// head and left-to-right / right-to-left Transformer decoders. Field names
// are WeNet's train.yaml names, so a WeNet config reads almost unchanged.
#include <yaml-cpp/yaml.h>

#include <string>

#include "moekit/audio/fbank.h"
#include "moekit/moe/options.h"
#include "moekit/ops/activation.h"

namespace moekit {

template <class Options>
class FieldTable;

// One feed-forward block: dense (WeNet "position_wise_feed_forward") or MoE.
struct FfnConfig {
  bool moe = false;                 // mlp_type: moe
  int64_t hidden = 2048;            // linear_units (per expert for MoE)
  int64_t n_expert = 8;             // MoE only
  int64_t n_expert_activated = 2;   // MoE only
  Activation activation = Activation::Swish;
  bool bias = true;                 // mlp_bias
};

struct ConformerEncoderConfig {
  int64_t input_dim = 80;
  int64_t output_size = 256;
  int64_t attention_heads = 4;
  int64_t num_blocks = 12;
  FfnConfig ffn;
  double dropout_rate = 0.1;
  double positional_dropout_rate = 0.1;
  double attention_dropout_rate = 0.0;
  int64_t subsampling_rate = 4;     // input_layer conv2d | conv2d6 | conv2d8
  bool rel_pos = true;              // pos_enc_layer_type rel_pos | abs_pos
  bool normalize_before = true;
  bool macaron_style = true;
  bool use_cnn_module = true;
  int64_t cnn_module_kernel = 15;
  bool cnn_layer_norm = false;      // cnn_module_norm layer_norm | batch_norm
  bool causal = false;
  bool use_dynamic_chunk = false;
  bool use_dynamic_left_chunk = false;
  int64_t static_chunk_size = 0;
  double norm_eps = 1e-5;
};

struct TransformerDecoderConfig {
  int64_t attention_heads = 4;
  int64_t num_blocks = 6;           // left-to-right decoder layers
  int64_t r_num_blocks = 0;         // right-to-left decoder layers (0 = no R2L decoder)
  FfnConfig ffn;                    // activation relu by default, as in WeNet
  double dropout_rate = 0.1;
  double positional_dropout_rate = 0.1;
  double self_attention_dropout_rate = 0.0;
  double src_attention_dropout_rate = 0.0;
  bool normalize_before = true;
  // WeNet's tie_word_embedding: each decoder's output projection uses its
  // token embedding's weight (one tensor, trained by both uses); only the
  // projection's bias is a parameter of its own.
  bool tie_word_embedding = false;
};

struct AsrConfig {
  int64_t vocab_size = 0;           // includes <blank> = 0 and <sos/eos> = vocab_size - 1
  ConformerEncoderConfig encoder;
  TransformerDecoderConfig decoder;
  double ctc_weight = 0.3;
  double reverse_weight = 0.3;
  double lsm_weight = 0.1;
  bool length_normalized_loss = false;
  // WeNet's model_conf.apply_non_blank_embedding: the attention decoders
  // attend only to the encoder frames whose CTC argmax is not blank, in
  // training and in attention rescoring (AsrModel::non_blank_frames).
  bool apply_non_blank_embedding = false;
  FbankOptions fbank;

  int64_t blank_id() const { return 0; }
  int64_t sos_id() const { return vocab_size - 1; }
  int64_t eos_id() const { return vocab_size - 1; }

  // The field table (core/fields.h) behind the functions below; YAML names
  // are WeNet's train.yaml names.
  static const FieldTable<AsrConfig>& fields();
  void validate() const;
  YAML::Node to_yaml() const;
  // Unknown keys in any section are refused (naming the closest known one).
  static AsrConfig from_yaml(const YAML::Node& node, const std::string& where);
};

}  // namespace moekit
