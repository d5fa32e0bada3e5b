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

namespace {

// The causal depthwise convolution on time-major frames, for CPU float32
// inference: x [B, L + K - 1, C] (left context first) -> [B, L, C], out[b, t,
// c] = bias[c] + sum_k w[c, k] x[b, t + k, c]. Vectorized over channels, it
// skips the two transposes and LibTorch's convolution dispatch, which cost
// more than the arithmetic on a streaming chunk's few frames.
torch::Tensor depthwise_time_major(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t batch = x.size(0), frames = x.size(1), channels = x.size(2), kernel = weight.size(2);
  const int64_t out_frames = frames - kernel + 1;
  const torch::Tensor xc = x.contiguous();
  const torch::Tensor w = weight.reshape({channels, kernel}).t().contiguous();  // [K, C]
  torch::Tensor out = torch::empty({batch, out_frames, channels}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < out_frames; ++t) {
      float* dst = op + (b * out_frames + t) * channels;
      for (int64_t c = 0; c < channels; ++c) dst[c] = bp ? bp[c] : 0.f;
      for (int64_t k = 0; k < kernel; ++k) {
        const float* src = xp + (b * frames + t + k) * channels;
        const float* wk = wp + k * channels;
        for (int64_t c = 0; c < channels; ++c) dst[c] += wk[c] * src[c];
      }
    }
  }
  return out;
}

}  // namespace

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
  // CPU float32 inference on a causal kernel: the depthwise convolution runs
  // on time-major frames; otherwise LibTorch's Conv1d on [B, C, T].
  const bool time_major = lorder > 0 && !batch_norm && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
                          (!torch::GradMode::is_enabled() ||
                           (!x.requires_grad() && !depthwise_conv->weight.requires_grad()));
  if (lorder > 0) {
    // The causal left context, after the pointwise map: the cached frames,
    // or WeNet's zero input frames, which pointwise_conv1 + GLU turn into
    // glu(bias). Each frame is mapped once, not again in the next chunk. The
    // cache is [B, C, lorder] (a view when the frames are time-major).
    const int64_t batch = x.size(0);
    torch::Tensor left;
    if (cache && cache->defined() && cache->numel() > 0) {
      MOEKIT_CHECK_ARG(cache->size(0) == batch && cache->size(1) == channels && cache->size(2) == lorder,
                       "conv module: cache of shape ", cache->sizes(), " for input ", x.sizes());
      left = *cache;
    } else if (pointwise_conv1->bias.defined()) {
      left = torch::glu(pointwise_conv1->bias, 0).view({1, channels, 1}).expand({batch, channels, lorder});
    } else {
      left = torch::zeros({batch, channels, lorder}, x.options());
    }
    if (time_major) {
      x = torch::cat({left.transpose(1, 2), x}, 1);  // [B, lorder + T, C]
      if (cache) *cache = x.slice(1, x.size(1) - lorder).transpose(1, 2);
    } else {
      x = torch::cat({left, x.transpose(1, 2)}, 2);  // [B, C, lorder + T]
      if (cache) *cache = x.slice(2, x.size(2) - lorder);
    }
  } else {
    x = x.transpose(1, 2);  // [B, C, T]
  }
  if (time_major) {
    x = depthwise_time_major(x, depthwise_conv->weight, depthwise_conv->bias);  // [B, T, C]
  } else {
    x = depthwise_conv->forward(x);
    if (batch_norm) x = batch_norm->forward(x);
    x = x.transpose(1, 2);  // [B, T, C]
  }
  if (layer_norm) x = layer_norm->forward(x);
  x = fast_linear(apply_activation(options_.activation, x, {}), pointwise_conv2->weight.view({channels, channels}),
                  pointwise_conv2->bias, &pointwise2_panels_);
  if (masked) x = x.masked_fill(blocked, 0.0);
  return x;
}

}  // namespace moekit
