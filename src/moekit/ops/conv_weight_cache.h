#pragma once
// A convolution's weight kept in oneDNN's layout for inference.
#include <torch/torch.h>

#include <mutex>

#include "moekit/ops/packed_weights.h"

namespace moekit {

// One Conv2d's weight in oneDNN's blocked layout, for inference. LibTorch's
// conv2d reorders the weight on every call (0.3-0.4 ms for the 256-channel
// 3x3 of a d = 256 front end on the Intel VM of bench/results/2026-11-26.md, "An L1 prefetch in the panel kernel, kept oneDNN weights",
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

}  // namespace moekit
