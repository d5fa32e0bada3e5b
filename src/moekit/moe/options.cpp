#include "moekit/moe/options.h"

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/limits.h"

namespace moekit {

Routing parse_routing(const std::string& name) {
  if (name == "token") return Routing::Token;
  if (name == "sentence") return Routing::Sentence;
  if (name == "task") return Routing::Task;
  throw std::invalid_argument(str_cat("unknown routing '", name, "' (expected token, sentence or task)"));
}

std::string routing_name(Routing routing) {
  switch (routing) {
    case Routing::Token: return "token";
    case Routing::Sentence: return "sentence";
    case Routing::Task: return "task";
  }
  return "?";
}

Gating parse_gating(const std::string& name) {
  if (name == "topk_softmax") return Gating::TopKSoftmax;
  if (name == "softmax_topk") return Gating::SoftmaxTopK;
  throw std::invalid_argument(str_cat("unknown gating '", name, "' (expected topk_softmax or softmax_topk)"));
}

std::string gating_name(Gating gating) {
  return gating == Gating::TopKSoftmax ? "topk_softmax" : "softmax_topk";
}

namespace {

const FieldTable<MoEOptions>& moe_fields() {
  using O = MoEOptions;
  static const auto table =
      FieldTable<O>("MoE")
          .field("d_model", &O::d_model, "input/output width").required().in_range(1, limits::kWidth)
          .field("d_hidden", &O::d_hidden, "hidden width of each expert").required().in_range(1, limits::kHidden)
          .field("num_experts", &O::num_experts, "E, the experts of the layer").in_range(1, limits::kExperts)
          .field("top_k", &O::top_k, "experts per token, 1 <= k <= E")
          .named("activation", &O::activation, parse_activation, activation_name, "expert activation")
          .named("routing", &O::routing, parse_routing, routing_name, "router input: token | sentence | task")
          .named("gating", &O::gating, parse_gating, gating_name, "gate weights: topk_softmax | softmax_topk")
          .field("renormalize", &O::renormalize, "softmax_topk only: rescale the k weights to sum to 1")
          .field("num_tasks", &O::num_tasks, "task routing only: the number of task ids")
          .field("capacity_factor", &O::capacity_factor, "0 = dropless; else capacity = ceil(cf * N * k / E)")
          .non_negative()
          .field("eval_capacity_factor", &O::eval_capacity_factor,
                 "the same in eval mode (0 = dropless inference); < 0 = capacity_factor")
          .write_if([](const O& o) { return o.eval_capacity_factor >= 0.0; })
          .field("aux_loss_coef", &O::aux_loss_coef, "Switch load-balancing loss coefficient").non_negative()
          .field("z_loss_coef", &O::z_loss_coef, "router z-loss coefficient").non_negative()
          .field("expert_bias", &O::expert_bias, "biases in the expert FFNs")
          .rule([](const O& o) {
            return o.top_k >= 1 && o.top_k <= o.num_experts
                       ? std::string()
                       : str_cat("top_k must be in [1, num_experts=", o.num_experts, "], got ", o.top_k);
          })
          .rule([](const O& o) {
            return o.routing != Routing::Task || o.num_tasks > 0
                       ? std::string()
                       : str_cat("routing 'task' needs num_tasks > 0, got ", o.num_tasks);
          });
  return table;
}

}  // namespace

const FieldTable<MoEOptions>& MoEOptions::fields() { return moe_fields(); }
void MoEOptions::validate() const { moe_fields().validate(*this); }
std::string MoEOptions::to_string() const { return moe_fields().to_string(*this); }
YAML::Node MoEOptions::to_yaml() const { return moe_fields().write(*this); }
MoEOptions MoEOptions::from_yaml(const YAML::Node& node, const std::string& where) {
  MOEKIT_CHECK_ARG(node.IsMap(), where, ": MoE options must be a mapping");
  return moe_fields().parse(node, where);
}

}  // namespace moekit
