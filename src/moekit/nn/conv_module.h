#pragma once
// The Conformer convolution module (WeNet's ConvolutionModule): pointwise
// conv to 2C, GLU, depthwise conv (causal: left-padded, with a streaming
// cache of the last kernel-1 frames after the GLU), layer_norm or
// batch_norm, activation, pointwise conv back to C. Names follow WeNet.
#include <torch/torch.h>

#include <vector>

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

  // Several streams at once: x [1, rows, C] holds stream i's lengths[i]
  // rows after those of the streams before it, each with its own cache.
  // Equals forward(x_i, {}, caches[i]) stream by stream; on the CPU fast
  // path the pointwise maps run once over every stream's rows.
  torch::Tensor forward_streams(const torch::Tensor& x, const std::vector<int64_t>& lengths,
                                const std::vector<torch::Tensor*>& caches);

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
  // Its parts: the depthwise weights laid out per tap with the batch norm
  // folded in; GLU, left context and depthwise kernel for `batch`
  // sequences of t rows of h ([B, T, 2C]) into out ([B, T, C]); then norm,
  // activation and pointwise_conv2.
  struct DepthwiseMap {
    std::vector<float> w, scale, shift;  // [K, C], [C], [C]
  };
  DepthwiseMap depthwise_map() const;
  void depthwise_cpu(const float* h, int64_t batch, int64_t t, torch::Tensor* cache, const DepthwiseMap& map,
                     float* out);
  torch::Tensor finish_cpu(torch::Tensor out);
  ConvModuleOptions options_;
};
TORCH_MODULE(ConvModule);

}  // namespace moekit
