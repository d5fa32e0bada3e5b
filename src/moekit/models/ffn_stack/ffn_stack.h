#pragma once
// `ffn_stack`: a stack of pre-norm residual FFN blocks, x += ffn(LN(x)),
// each FFN dense or MoE. The smallest complete model on the MoE core: used by
// the layer benchmarks (a stack whose weights exceed the last-level cache)
// and by the model-directory tests.
#include "moekit/models/model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/nn/ffn.h"

namespace moekit {

struct FfnStackOptions {
  int64_t d_model = 256;                      // width
  int64_t num_layers = 4;                     // blocks
  int64_t d_hidden = 1024;                    // FFN hidden width (per expert in MoE layers)
  Activation activation = Activation::Swish;  // FFN activation
  bool moe = true;                            // MoE FFNs (else dense)
  int64_t moe_every = 1;                      // every n-th block is MoE (1 = all), when moe
  MoEOptions moe_options;                     // num_experts, top_k, routing, ...; widths filled in

  // The field table (core/fields.h) behind validate / to_yaml / from_yaml.
  static const FieldTable<FfnStackOptions>& fields();
  void validate() const;
  MoEOptions layer_moe_options() const;  // moe_options with the widths and activation filled in
  YAML::Node to_yaml() const;
  static FfnStackOptions from_yaml(const YAML::Node& node, const std::string& where);
};

class FfnStack : public Model {
 public:
  explicit FfnStack(const FfnStackOptions& options);
  std::string model_type() const override { return "ffn_stack"; }
  YAML::Node architecture() const override { return options_.to_yaml(); }
  // x [B, T, D] -> [B, T, D]
  torch::Tensor forward(torch::Tensor x, const RouteInput& route = {});
  const FfnStackOptions& options() const { return options_; }

 private:
  FfnStackOptions options_;
  std::vector<torch::nn::LayerNorm> norms_;
  std::vector<MoELayer> moe_ffns_;       // null where dense
  std::vector<FeedForward> dense_ffns_;  // null where MoE
};

}  // namespace moekit
