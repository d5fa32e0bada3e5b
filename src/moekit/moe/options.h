#pragma once
// Hyperparameters of one MoE feed-forward layer (stored in the model config).
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>

#include "moekit/ops/activation.h"

namespace moekit {

template <class Options>
class FieldTable;

// What the router looks at.
enum class Routing {
  Token,     // each token is gated on its own state
  Sentence,  // each sequence is gated once on the masked mean of its token states
  Task,      // each sequence is gated on a learned vector of its task id
};

// How gate weights are formed from router logits.
enum class Gating {
  TopKSoftmax,  // top-k logits, softmax over those k (U2++ MoE, Mixtral, AquilaMoE)
  SoftmaxTopK,  // softmax over all experts, then top-k (GShard, Switch); see renormalize
};

Routing parse_routing(const std::string& name);  // token | sentence | task
std::string routing_name(Routing routing);
Gating parse_gating(const std::string& name);    // topk_softmax | softmax_topk
std::string gating_name(Gating gating);

struct MoEOptions {
  int64_t d_model = 0;                          // input/output width
  int64_t d_hidden = 0;                         // hidden width of each expert
  int64_t num_experts = 8;                      // E
  int64_t top_k = 2;                            // experts per token, 1 <= k <= E
  Activation activation = Activation::Swish;    // expert activation
  Routing routing = Routing::Token;             // router input granularity
  Gating gating = Gating::TopKSoftmax;          // how gate weights are formed
  bool renormalize = false;                     // SoftmaxTopK only: rescale the k weights to sum to 1
  int64_t num_tasks = 0;                        // Task routing only: number of task ids
  double capacity_factor = 0.0;                 // 0 = dropless; else capacity = ceil(cf * N * k / E)
  double eval_capacity_factor = -1.0;           // the same in eval mode; < 0 = capacity_factor
  double aux_loss_coef = 0.0;                   // Switch load-balancing loss coefficient
  double z_loss_coef = 0.0;                     // router z-loss coefficient
  bool expert_bias = true;                      // biases in the expert FFNs

  // The field table (core/fields.h) behind the functions below.
  static const FieldTable<MoEOptions>& fields();
  // Throws std::invalid_argument naming the first field that is out of range.
  void validate() const;
  // One line, every field: "d_model=256 d_hidden=1024 num_experts=8 ...".
  std::string to_string() const;
  YAML::Node to_yaml() const;
  // Reads the fields present in `node` over the defaults; `where` names the
  // file/section in errors; unknown keys are refused, naming the closest
  // known one. Calls validate().
  static MoEOptions from_yaml(const YAML::Node& node, const std::string& where);

  // The capacity factor a forward uses: capacity_factor in training, else
  // eval_capacity_factor unless that is negative.
  double capacity_factor_for(bool training) const {
    return training || eval_capacity_factor < 0.0 ? capacity_factor : eval_capacity_factor;
  }

  // Whether the gate weights of a token always sum to one.
  bool weights_sum_to_one() const {
    return gating == Gating::TopKSoftmax || renormalize || top_k == num_experts;
  }
};

}  // namespace moekit
