#include "moekit/models/ffn_stack/ffn_stack.h"

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/limits.h"

namespace moekit {

namespace {

const FieldTable<FfnStackOptions>& ffn_stack_fields() {
  using O = FfnStackOptions;
  // The MoE section: MoEOptions' fields but the widths and activation,
  // which are the stack's.
  static const auto moe_table = MoEOptions::fields().without({"d_model", "d_hidden", "activation"}, "ffn_stack moe");
  static const auto table =
      FieldTable<O>("ffn_stack")
          .field("d_model", &O::d_model, "width").required().in_range(1, limits::kWidth)
          .field("num_layers", &O::num_layers, "blocks").required().in_range(1, limits::kLayers)
          .field("d_hidden", &O::d_hidden, "FFN hidden width (per expert in MoE layers)").required().in_range(1, limits::kHidden)
          .named("activation", &O::activation, parse_activation, activation_name, "FFN activation")
          .section("moe", &O::moe_options, moe_table, "MoE FFNs: num_experts, top_k, routing... (absent: dense)")
          .write_if([](const O& o) { return o.moe; })
          .field("moe_every", &O::moe_every, "every n-th block is MoE (1 = all)").at_least(1)
          .write_if([](const O& o) { return o.moe; })
          .rule([](const O& o) {
            if (!o.moe) return std::string();
            try {
              o.layer_moe_options().validate();
            } catch (const std::invalid_argument& e) {
              return std::string(e.what());
            }
            return std::string();
          });
  return table;
}

}  // namespace

const FieldTable<FfnStackOptions>& FfnStackOptions::fields() { return ffn_stack_fields(); }
void FfnStackOptions::validate() const { ffn_stack_fields().validate(*this); }

MoEOptions FfnStackOptions::layer_moe_options() const {
  MoEOptions m = moe_options;
  m.d_model = d_model;
  m.d_hidden = d_hidden;
  m.activation = activation;
  return m;
}

YAML::Node FfnStackOptions::to_yaml() const { return ffn_stack_fields().write(*this); }

FfnStackOptions FfnStackOptions::from_yaml(const YAML::Node& node, const std::string& where) {
  MOEKIT_CHECK_ARG(node.IsMap(), where, ": architecture must be a mapping");
  FfnStackOptions o;
  o.moe = node["moe"].IsDefined() && !node["moe"].IsNull();
  return ffn_stack_fields().parse(node, where, o);
}

FfnStack::FfnStack(const FfnStackOptions& options) : options_(options) {
  options_.validate();
  auto layers = register_module("layers", torch::nn::ModuleList());  // names: layers.<i>.norm, layers.<i>.ffn
  for (int64_t i = 0; i < options_.num_layers; ++i) {
    auto block = std::make_shared<torch::nn::Module>();
    layers->push_back(block);
    norms_.push_back(block->register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({options_.d_model}))));
    const bool is_moe = options_.moe && i % options_.moe_every == options_.moe_every - 1;
    if (is_moe) {
      moe_ffns_.push_back(block->register_module("ffn", MoELayer(options_.layer_moe_options())));
      dense_ffns_.emplace_back(nullptr);
    } else {
      dense_ffns_.push_back(block->register_module(
          "ffn", FeedForward(FeedForwardOptions{options_.d_model, options_.d_hidden, options_.activation, true})));
      moe_ffns_.emplace_back(nullptr);
    }
  }
}

torch::Tensor FfnStack::forward(torch::Tensor x, const RouteInput& route) {
  for (size_t i = 0; i < norms_.size(); ++i) {
    const torch::Tensor h = norms_[i]->forward(x);
    x = x + (moe_ffns_[i] ? moe_ffns_[i]->forward(h, route) : dense_ffns_[i]->forward(h));
  }
  return x;
}

}  // namespace moekit
