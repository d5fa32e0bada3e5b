#pragma once
// The trainer's optimizer: Adam with decoupled weight decay.
#include <torch/torch.h>

#include <vector>

namespace moekit {

// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", as
// torch.optim.AdamW computes it): each step first shrinks every decayed
// parameter by lr * weight_decay of itself, then takes Adam's step on the
// unchanged gradient. (Adam's own weight_decay adds weight_decay * p to the
// gradient instead, and Adam's scaling then weakens it for parameters with
// large gradients.) Matrices and embeddings decay; biases and normalization
// gains (parameters of one dimension) do not, as in Megatron-LM and
// nanoGPT. The per-parameter state is Adam's (AdamParamState), so
// checkpoints and their moments are the same with or without decay.
class AdamW : public torch::optim::Adam {
 public:
  AdamW(std::vector<torch::Tensor> params, double lr, double weight_decay);
  torch::Tensor step(LossClosure closure = nullptr) override;
  double weight_decay() const { return weight_decay_; }

 private:
  double weight_decay_;
};

}  // namespace moekit
