#include "moekit/models/ffn_stack/ffn_stack.h"

#include "moekit/core/check.h"
#include "moekit/core/config.h"

namespace moekit {

void FfnStackOptions::validate() const {
  MOEKIT_CHECK_ARG(d_model > 0 && d_hidden > 0, "ffn_stack widths must be positive");
  MOEKIT_CHECK_ARG(num_layers > 0, "ffn_stack num_layers must be positive, got ", num_layers);
  MOEKIT_CHECK_ARG(moe_every >= 1, "ffn_stack moe_every must be >= 1, got ", moe_every);
  if (moe) layer_moe_options().validate();
}

MoEOptions FfnStackOptions::layer_moe_options() const {
  MoEOptions m = moe_options;
  m.d_model = d_model;
  m.d_hidden = d_hidden;
  m.activation = activation;
  return m;
}

YAML::Node FfnStackOptions::to_yaml() const {
  YAML::Node node;
  node["d_model"] = d_model;
  node["num_layers"] = num_layers;
  node["d_hidden"] = d_hidden;
  node["activation"] = activation_name(activation);
  if (moe) {
    YAML::Node m = moe_options.to_yaml();
    m.remove("d_model");
    m.remove("d_hidden");
    m.remove("activation");
    node["moe"] = m;
    node["moe_every"] = moe_every;
  }
  return node;
}

FfnStackOptions FfnStackOptions::from_yaml(const YAML::Node& node, const std::string& where) {
  MOEKIT_CHECK_ARG(node.IsMap(), where, ": architecture must be a mapping");
  FfnStackOptions o;
  o.d_model = yaml_get<int64_t>(node, "d_model", where);
  o.num_layers = yaml_get<int64_t>(node, "num_layers", where);
  o.d_hidden = yaml_get<int64_t>(node, "d_hidden", where);
  o.activation = parse_activation(yaml_get_or<std::string>(node, "activation", "swish", where));
  o.moe = node["moe"].IsDefined() && !node["moe"].IsNull();
  if (o.moe) {
    YAML::Node m = YAML::Clone(node["moe"]);
    m["d_model"] = o.d_model;
    m["d_hidden"] = o.d_hidden;
    m["activation"] = activation_name(o.activation);
    o.moe_options = MoEOptions::from_yaml(m, where + ": moe");
    o.moe_every = yaml_get_or<int64_t>(node, "moe_every", 1, where);
  }
  o.validate();
  return o;
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
