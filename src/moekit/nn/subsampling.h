#pragma once
// Conv2d front ends of WeNet (Conv2dSubsampling4/6/8): strided 3x3 (and 5x5
// for x6) convolutions with ReLU, then a linear projection to d_model.
// Names follow WeNet: conv.0/conv.2(/conv.4), then out.0 (x4) or linear (x6, x8).
#include <torch/torch.h>

#include <mutex>

#include "moekit/moe/packed_weights.h"

namespace moekit {

// One Conv2d's weight in oneDNN's blocked layout, for inference. LibTorch's
// conv2d reorders the weight on every call (0.3-0.4 ms for the 256-channel
// 3x3 of a d = 256 front end on the VM of bench/README.md, "Session 12",
// about a sixth of the convolution); this keeps the reordered copy, rebuilt
// when the weight changes (other memory, an in-place write, another shape,
// as PanelCache tells). Thread-safe.
class ConvWeightCache {
 public:
  // conv(x) through oneDNN with the kept weight: no gradient, CPU float32,
  // zero padding given as numbers, one group, LibTorch built with oneDNN.
  // Otherwise (or if oneDNN refuses it once) an undefined tensor: the caller
  // runs the module.
  torch::Tensor forward(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

 private:
  std::mutex mutex_;
  bool unavailable_ = false;
  WeightStamp stamp_;  // what packed_ was made from
  torch::Tensor packed_;
};

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
  torch::nn::Linear linear{nullptr};   // x6, x8

 private:
  // No gradient, CPU float32: the first convolution by the row kernel.
  bool inference_cpu_applies(const torch::Tensor& x) const;
  int64_t rate_;
  PanelCache proj_panels_;  // fast_linear's, for the output projection (chunk-sized inputs)
  ConvWeightCache conv_weights_[2];  // the convolutions after the first (one for x4 and x6, two for x8)
};
TORCH_MODULE(Conv2dSubsampling);

}  // namespace moekit
