#include "moekit/nn/conv_module.h"

#include "moekit/core/check.h"

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
  torch::Tensor x = input.transpose(1, 2);  // [B, C, T]
  const bool masked = mask_pad.defined() && mask_pad.numel() > 0;
  if (masked) x = x.masked_fill(mask_pad.unsqueeze(1).logical_not(), 0.0);
  const int64_t lorder = left_context();
  if (lorder > 0) {
    if (cache && cache->defined() && cache->numel() > 0) {
      MOEKIT_CHECK_ARG(cache->size(0) == x.size(0) && cache->size(1) == x.size(1) && cache->size(2) == lorder,
                       "conv module: cache of shape ", cache->sizes(), " for input ", x.sizes());
      x = torch::cat({*cache, x}, 2);
    } else {
      x = torch::nn::functional::pad(x, torch::nn::functional::PadFuncOptions({lorder, 0}));
    }
    if (cache) *cache = x.slice(2, x.size(2) - lorder);
  }
  x = torch::glu(pointwise_conv1->forward(x), 1);
  // WeNet masks only before pointwise_conv1, so padded frames become
  // glu(bias) and reach the last real frames through the depthwise kernel:
  // a batch then decodes differently from its utterances one by one. Masking
  // here too keeps padding out; unpadded input is unchanged.
  if (masked && lorder == 0) x = x.masked_fill(mask_pad.unsqueeze(1).logical_not(), 0.0);
  x = depthwise_conv->forward(x);
  if (layer_norm)
    x = layer_norm->forward(x.transpose(1, 2)).transpose(1, 2);
  else
    x = batch_norm->forward(x);
  x = pointwise_conv2->forward(apply_activation(options_.activation, x, {}));
  if (masked) x = x.masked_fill(mask_pad.unsqueeze(1).logical_not(), 0.0);
  return x.transpose(1, 2);
}

}  // namespace moekit
