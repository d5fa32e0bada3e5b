#pragma once
// The Conformer convolution module (WeNet's ConvolutionModule): pointwise
// conv to 2C, GLU, depthwise conv (causal: left-padded, with a streaming
// cache of the last kernel-1 frames after the GLU), layer_norm or
// batch_norm, activation, pointwise conv back to C. Names follow WeNet.
#include <torch/torch.h>

#include "moekit/ops/packed_linear.h"

#include "moekit/ops/activation.h"

namespace moekit {

struct ConvModuleOptions {
  int64_t channels = 256;
  int64_t kernel_size = 15;
  Activation activation = Activation::Swish;
  bool layer_norm = false;  // false: batch_norm
  bool causal = false;
  bool bias = true;
  double norm_eps = 1e-5;
};

class ConvModuleImpl : public torch::nn::Module {
 public:
  explicit ConvModuleImpl(const ConvModuleOptions& options);

  // x [B, T, C]; mask_pad bool [B, T] (true = real frame) or undefined.
  // cache: causal streaming only, [B, C, kernel-1]: the GLU outputs of the
  // frames before x (undefined = start of stream, where WeNet's zero input
  // frames give glu(bias)); updated in place.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask_pad, torch::Tensor* cache = nullptr);

  int64_t left_context() const { return options_.causal ? options_.kernel_size - 1 : 0; }

  PackedPointwiseConv1d pointwise_conv1{nullptr}, pointwise_conv2{nullptr};
  torch::nn::Conv1d depthwise_conv{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};
  torch::nn::BatchNorm1d batch_norm{nullptr};

 private:
  // CPU float32 inference of a causal kernel on unpadded frames: one
  // time-major buffer of left context + GLU outputs, the depthwise kernel,
  // norm and activation in loops (the cache becomes a view of that buffer).
  bool inference_cpu_applies(const torch::Tensor& x, const torch::Tensor& mask_pad) const;
  torch::Tensor inference_cpu(const torch::Tensor& x, torch::Tensor* cache);
  ConvModuleOptions options_;
};
TORCH_MODULE(ConvModule);

}  // namespace moekit
