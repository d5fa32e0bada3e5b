#pragma once
// Linear maps that own their packed weights.
//
// PackedLinear is torch::nn::Linear (same parameters, names, options and
// initialisation, so checkpoints and random streams do not change) whose
// forward is fast_linear with the weight's own PanelCache: a layer built
// from it gets the inference fast path by construction, with no cache member
// to place beside the weight. PackedPointwiseConv1d does the same for a
// kernel-size-1 Conv1d (the Conformer conv module's pointwise convolutions),
// exposing the linear map it is on time-major rows. PackedEmbedding is an
// embedding table that is also the output map (tied embeddings), with the
// packed form of that map.
#include <torch/torch.h>

#include "moekit/ops/linear.h"
#include "moekit/ops/packed_weights.h"

namespace moekit {

class PackedLinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;

  // x [..., in] -> [..., out], as torch::nn::Linear (fast_linear's paths).
  torch::Tensor forward(const torch::Tensor& x) { return fast_linear(x, weight, bias, &panels_); }
  // The weight packed into panels (CPU float32), kept until it changes: for
  // callers that run the panel kernel on it directly.
  torch::Tensor panels() { return panels_.get(weight); }
  // Frees the packed copy (a forward recording gradients does it too).
  void release_panels() { panels_.clear(); }

 private:
  PanelCache panels_;
};
TORCH_MODULE(PackedLinear);

class PackedPointwiseConv1dImpl : public torch::nn::Conv1dImpl {
 public:
  using torch::nn::Conv1dImpl::Conv1dImpl;

  // The convolution as a linear map on time-major rows: x [..., in_channels]
  // -> [..., out_channels]; requires kernel size 1 and one group.
  torch::Tensor linear(const torch::Tensor& x) {
    return fast_linear(x, weight.view({weight.size(0), weight.size(1)}), bias, &panels_);
  }

 private:
  PanelCache panels_;
};
TORCH_MODULE(PackedPointwiseConv1d);

class PackedEmbeddingImpl : public torch::nn::EmbeddingImpl {
 public:
  using torch::nn::EmbeddingImpl::EmbeddingImpl;

  // The table as the output map: h [..., dim] -> h E^T [..., num_embeddings]
  // (fast_linear's paths, on the table's own panels).
  torch::Tensor as_output(const torch::Tensor& h) { return fast_linear(h, weight, {}, &panels_); }

 private:
  PanelCache panels_;
};
TORCH_MODULE(PackedEmbedding);

}  // namespace moekit
