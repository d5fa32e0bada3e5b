#pragma once
// A Conformer/decoder feed-forward position that holds either a dense FFN or
// an MoE layer, registered under the parent's name for it (so checkpoint
// names read `feed_forward.w1.weight` or `feed_forward.experts.w1`).
#include <torch/torch.h>

#include <string>

#include "moekit/models/asr/asr_config.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/nn/ffn.h"

namespace moekit {

struct FfnSlot {
  FeedForward dense{nullptr};
  MoELayer moe{nullptr};

  void create(torch::nn::Module& parent, const std::string& name, int64_t d_model, const FfnConfig& config) {
    if (config.moe) {
      MoEOptions o;
      o.d_model = d_model;
      o.d_hidden = config.hidden;
      o.num_experts = config.n_expert;
      o.top_k = config.n_expert_activated;
      o.activation = config.activation;
      o.gating = Gating::TopKSoftmax;  // WeNet: top-k logits, softmax over them
      o.expert_bias = config.bias;
      moe = parent.register_module(name, MoELayer(o));
    } else {
      FeedForwardOptions o;
      o.d_model = d_model;
      o.d_hidden = config.hidden;
      o.activation = config.activation;
      o.bias = config.bias;
      dense = parent.register_module(name, FeedForward(o));
    }
  }
  bool defined() const { return dense || moe; }
  // x [B, T, D]; mask bool [B, T] (true = real frame) or undefined: padding is not routed.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    if (dense) return dense->forward(x);
    RouteInput route;
    route.mask = mask;
    return moe->forward(x, route);
  }
};

}  // namespace moekit
