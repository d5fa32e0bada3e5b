#include "moekit/nn/conv_module.h"

#include "moekit/core/check.h"
#include "moekit/nn/linear.h"

namespace moekit {

ConvModuleImpl::ConvModuleImpl(const ConvModuleOptions& o) : options_(o) {
  MOEKIT_CHECK_ARG(o.channels > 0 && o.kernel_size > 0, "conv module: channels ", o.channels, ", kernel ",
                   o.kernel_size);
  MOEKIT_CHECK_ARG(o.causal || (o.kernel_size - 1) % 2 == 0, "conv module: a non-causal kernel must be odd, got ",
                   o.kernel_size);
  namespace nn = torch::nn;
  const int64_t c = o.channels;
  pointwise_conv1 = register_module("pointwise_conv1", nn::Conv1d(nn::Conv1dOptions(c, 2 * c, 1).bias(o.bias)));
  depthwise_conv = register_module(
      "depthwise_conv", nn::Conv1d(nn::Conv1dOptions(c, c, o.kernel_size)
                                       .groups(c)
                                       .padding(o.causal ? 0 : (o.kernel_size - 1) / 2)
                                       .bias(o.bias)));
  if (o.layer_norm)
    layer_norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({c}).eps(o.norm_eps)));
  else
    batch_norm = register_module("norm", nn::BatchNorm1d(nn::BatchNormOptions(c).eps(o.norm_eps)));
  pointwise_conv2 = register_module("pointwise_conv2", nn::Conv1d(nn::Conv1dOptions(c, c, 1).bias(o.bias)));
}

torch::Tensor ConvModuleImpl::forward(const torch::Tensor& input, const torch::Tensor& mask_pad,
                                      torch::Tensor* cache) {
  // Pointwise convolutions run as linear maps on [B, T, C] (a kernel-1
  // Conv1d is one, and LibTorch's CPU conv path costs more: the module's
  // perf samples in chunk streaming fell from 90 to 64); only the depthwise
  // convolution works on [B, C, T].
  const bool masked = mask_pad.defined() && mask_pad.numel() > 0;
  const torch::Tensor blocked = masked ? mask_pad.unsqueeze(2).logical_not() : torch::Tensor();  // [B, T, 1]
  torch::Tensor x = masked ? input.masked_fill(blocked, 0.0) : input;
  const int64_t channels = options_.channels;
  x = torch::glu(fast_linear(x, pointwise_conv1->weight.view({2 * channels, channels}), pointwise_conv1->bias,
                              &pointwise1_panels_), -1);
  // WeNet masks only before pointwise_conv1, so padded frames become
  // glu(bias) and reach the last real frames through the depthwise kernel:
  // a batch then decodes differently from its utterances one by one. Masking
  // here too keeps padding out; unpadded input is unchanged.
  const int64_t lorder = left_context();
  if (masked && lorder == 0) x = x.masked_fill(blocked, 0.0);
  x = x.transpose(1, 2);  // [B, C, T]
  if (lorder > 0) {
    // The causal left context, after the pointwise map: the cached frames,
    // or WeNet's zero input frames, which pointwise_conv1 + GLU turn into
    // glu(bias). Each frame is mapped once, not again in the next chunk.
    torch::Tensor left;
    if (cache && cache->defined() && cache->numel() > 0) {
      MOEKIT_CHECK_ARG(cache->size(0) == x.size(0) && cache->size(1) == x.size(1) && cache->size(2) == lorder,
                       "conv module: cache of shape ", cache->sizes(), " for input ", x.sizes());
      left = *cache;
    } else if (pointwise_conv1->bias.defined()) {
      left = torch::glu(pointwise_conv1->bias, 0).view({1, channels, 1}).expand({x.size(0), channels, lorder});
    } else {
      left = torch::zeros({x.size(0), channels, lorder}, x.options());
    }
    x = torch::cat({left, x}, 2);
    if (cache) *cache = x.slice(2, x.size(2) - lorder);
  }
  x = depthwise_conv->forward(x);
  if (batch_norm) x = batch_norm->forward(x);
  x = x.transpose(1, 2);  // [B, T, C]
  if (layer_norm) x = layer_norm->forward(x);
  x = fast_linear(apply_activation(options_.activation, x, {}), pointwise_conv2->weight.view({channels, channels}),
                  pointwise_conv2->bias, &pointwise2_panels_);
  if (masked) x = x.masked_fill(blocked, 0.0);
  return x;
}

}  // namespace moekit
