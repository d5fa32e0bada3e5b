#include "moekit/moe/options.h"

#include "moekit/core/check.h"
#include "moekit/core/config.h"

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

void MoEOptions::validate() const {
  MOEKIT_CHECK_ARG(d_model > 0, "MoE d_model must be positive, got ", d_model);
  MOEKIT_CHECK_ARG(d_hidden > 0, "MoE d_hidden must be positive, got ", d_hidden);
  MOEKIT_CHECK_ARG(num_experts > 0, "MoE num_experts must be positive, got ", num_experts);
  MOEKIT_CHECK_ARG(top_k >= 1 && top_k <= num_experts, "MoE top_k must be in [1, num_experts=",
                   num_experts, "], got ", top_k);
  MOEKIT_CHECK_ARG(routing != Routing::Task || num_tasks > 0,
                   "MoE routing 'task' needs num_tasks > 0, got ", num_tasks);
  MOEKIT_CHECK_ARG(capacity_factor >= 0.0, "MoE capacity_factor must be >= 0 (0 = dropless), got ",
                   capacity_factor);
  MOEKIT_CHECK_ARG(aux_loss_coef >= 0.0, "MoE aux_loss_coef must be >= 0, got ", aux_loss_coef);
  MOEKIT_CHECK_ARG(z_loss_coef >= 0.0, "MoE z_loss_coef must be >= 0, got ", z_loss_coef);
}

std::string MoEOptions::to_string() const {
  return str_cat("d_model=", d_model, " d_hidden=", d_hidden, " num_experts=", num_experts,
                 " top_k=", top_k, " activation=", activation_name(activation),
                 " routing=", routing_name(routing), " gating=", gating_name(gating),
                 " renormalize=", renormalize, " num_tasks=", num_tasks,
                 " capacity_factor=", capacity_factor, " aux_loss_coef=", aux_loss_coef,
                 " z_loss_coef=", z_loss_coef, " expert_bias=", expert_bias);
}

YAML::Node MoEOptions::to_yaml() const {
  YAML::Node node;
  node["d_model"] = d_model;
  node["d_hidden"] = d_hidden;
  node["num_experts"] = num_experts;
  node["top_k"] = top_k;
  node["activation"] = activation_name(activation);
  node["routing"] = routing_name(routing);
  node["gating"] = gating_name(gating);
  node["renormalize"] = renormalize;
  node["num_tasks"] = num_tasks;
  node["capacity_factor"] = capacity_factor;
  node["aux_loss_coef"] = aux_loss_coef;
  node["z_loss_coef"] = z_loss_coef;
  node["expert_bias"] = expert_bias;
  return node;
}

MoEOptions MoEOptions::from_yaml(const YAML::Node& node, const std::string& where) {
  MOEKIT_CHECK_ARG(node.IsMap(), where, ": MoE options must be a mapping");
  MoEOptions o;
  o.d_model = yaml_get<int64_t>(node, "d_model", where);
  o.d_hidden = yaml_get<int64_t>(node, "d_hidden", where);
  o.num_experts = yaml_get_or<int64_t>(node, "num_experts", o.num_experts, where);
  o.top_k = yaml_get_or<int64_t>(node, "top_k", o.top_k, where);
  o.activation = parse_activation(yaml_get_or<std::string>(node, "activation", activation_name(o.activation), where));
  o.routing = parse_routing(yaml_get_or<std::string>(node, "routing", routing_name(o.routing), where));
  o.gating = parse_gating(yaml_get_or<std::string>(node, "gating", gating_name(o.gating), where));
  o.renormalize = yaml_get_or<bool>(node, "renormalize", o.renormalize, where);
  o.num_tasks = yaml_get_or<int64_t>(node, "num_tasks", o.num_tasks, where);
  o.capacity_factor = yaml_get_or<double>(node, "capacity_factor", o.capacity_factor, where);
  o.aux_loss_coef = yaml_get_or<double>(node, "aux_loss_coef", o.aux_loss_coef, where);
  o.z_loss_coef = yaml_get_or<double>(node, "z_loss_coef", o.z_loss_coef, where);
  o.expert_bias = yaml_get_or<bool>(node, "expert_bias", o.expert_bias, where);
  try {
    o.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(str_cat(where, ": ", e.what()));
  }
  return o;
}

}  // namespace moekit
