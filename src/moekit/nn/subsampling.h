#pragma once
// Conv2d front ends of WeNet (Conv2dSubsampling4/6/8): strided 3x3 (and 5x5
// for x6) convolutions with ReLU, then a linear projection to d_model.
// Names follow WeNet: conv.0/conv.2(/conv.4), then out.0 (x4) or linear (x6, x8).
#include <torch/torch.h>

#include "moekit/ops/conv_weight_cache.h"
#include "moekit/ops/packed_linear.h"

namespace moekit {

class Conv2dSubsamplingImpl : public torch::nn::Module {
 public:
  Conv2dSubsamplingImpl(int64_t input_dim, int64_t d_model, int64_t rate);

  // x [B, T, F] -> [B, T', d_model] (not scaled, no positions).
  torch::Tensor forward(const torch::Tensor& x);
  // Output frames for T input frames (0 if too short).
  int64_t output_length(int64_t frames) const;
  // Subsampled padding mask: bool [B, T] -> [B, T'], as WeNet slices it.
  torch::Tensor subsample_mask(const torch::Tensor& mask) const;

  int64_t rate() const { return rate_; }
  // Input frames beyond the first that one output frame needs (WeNet's right_context).
  int64_t right_context() const { return rate_ == 4 ? 6 : rate_ == 6 ? 10 : 14; }

  torch::nn::Sequential conv{nullptr};
  torch::nn::Sequential out{nullptr};  // x4
  PackedLinear linear{nullptr};   // x6, x8

 private:
  // No gradient, CPU float32: the first convolution by the row kernel.
  bool inference_cpu_applies(const torch::Tensor& x) const;
  // Recording gradients, CPU float32, features without a gradient: the first
  // convolution and its ReLU by the row kernel, with a backward of its own.
  bool training_cpu_applies(const torch::Tensor& x) const;
  int64_t rate_;
  ConvWeightCache conv_weights_[2];  // the convolutions after the first (one for x4 and x6, two for x8)
};
TORCH_MODULE(Conv2dSubsampling);

}  // namespace moekit
