#pragma once
// Hyperparameters of the Transformer encoder-decoder (`model_type: seq2seq`)
// of task-level MoE (Kudugunta et al., 2021): pre-LN layers, one shared
// SentencePiece vocabulary with tied embeddings, and an MoE FFN in every
// n-th layer whose router looks at the token, the sentence or the task,
// chosen separately for the encoder and the decoder.
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "moekit/moe/options.h"
#include "moekit/ops/activation.h"

namespace moekit {

template <class Options>
class FieldTable;

// The MoE FFNs (num_experts == 0: a dense model).
struct Seq2seqMoeConfig {
  int64_t num_experts = 0;            // E (0 = dense model)
  int64_t top_k = 2;                  // experts per token (GShard: 2)
  int64_t d_hidden = 0;               // hidden width of each expert (0 = the dense ffn_hidden)
  int64_t every = 2;                  // layers every-1, 2*every-1, ... of each stack are MoE
  double capacity_factor = 1.25;      // training capacity (GShard); 0 = dropless
  double eval_capacity_factor = 0.0;  // in eval mode (0 = dropless inference)
  double aux_loss_coef = 0.01;        // load-balancing loss
  Routing encoder_routing = Routing::Token;
  Routing decoder_routing = Routing::Token;

  bool enabled() const { return num_experts > 0; }
};

struct Seq2seqConfig {
  int64_t vocab_size = 0;             // shared source/target pieces
  int64_t d_model = 256;              // residual width
  int64_t heads = 4;                  // attention heads
  int64_t ffn_hidden = 1024;          // hidden width of the dense FFNs
  int64_t encoder_layers = 6;
  int64_t decoder_layers = 6;
  Activation activation = Activation::Relu;
  double dropout = 0.1;               // residual and embedding dropout
  double attention_dropout = 0.0;     // on attention weights
  int64_t pad_id = 0;                 // id that pads batches (never attended, never predicted)
  int64_t bos_id = 1;                 // first decoder input
  int64_t eos_id = 2;                 // ends a target
  // Task names; task id i is tasks[i], and sources of task `xx` start with
  // the tag piece "<2xx>". Required by task routing.
  std::vector<std::string> tasks;
  Seq2seqMoeConfig moe;
  // Set in a model `moekit extract` wrote for one task: each task-routed MoE
  // layer is a dense FFN of width top_k * d_hidden holding that task's experts.
  std::string extracted_task;

  int64_t expert_hidden() const { return moe.d_hidden > 0 ? moe.d_hidden : ffn_hidden; }
  // Whether layer `layer` (0-based, either stack) has an MoE FFN.
  bool is_moe_layer(int64_t layer) const { return moe.enabled() && (layer + 1) % moe.every == 0; }
  bool uses_task_routing() const {
    return moe.enabled() && (moe.encoder_routing == Routing::Task || moe.decoder_routing == Routing::Task);
  }
  // Task id of `name`, or -1.
  int64_t task_id(const std::string& name) const;
  // "<2de>" for task "de".
  static std::string task_tag(const std::string& name) { return "<2" + name + ">"; }
  // The options of an MoE layer of the encoder or the decoder.
  MoEOptions moe_options(bool decoder) const;

  static const FieldTable<Seq2seqConfig>& fields();
  void validate() const;
  std::string to_string() const;
  YAML::Node to_yaml() const;
  // Unknown keys are refused by name; calls validate().
  static Seq2seqConfig from_yaml(const YAML::Node& node, const std::string& where);
};

}  // namespace moekit
