#include "moekit/nn/conv_module.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/kernels/row_kernels.h"
#include "moekit/kernels/silu_kernel.h"
#include "moekit/nn/norm.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {

ConvModuleImpl::ConvModuleImpl(const ConvModuleOptions& o) : options_(o) {
  MOEKIT_CHECK_ARG(o.channels > 0 && o.kernel_size > 0, "conv module: channels ", o.channels, ", kernel ",
                   o.kernel_size);
  MOEKIT_CHECK_ARG(o.causal || (o.kernel_size - 1) % 2 == 0, "conv module: a non-causal kernel must be odd, got ",
                   o.kernel_size);
  namespace nn = torch::nn;
  const int64_t c = o.channels;
  pointwise_conv1 = register_module("pointwise_conv1", PackedPointwiseConv1d(nn::Conv1dOptions(c, 2 * c, 1).bias(o.bias)));
  depthwise_conv = register_module(
      "depthwise_conv", nn::Conv1d(nn::Conv1dOptions(c, c, o.kernel_size)
                                       .groups(c)
                                       .padding(o.causal ? 0 : (o.kernel_size - 1) / 2)
                                       .bias(o.bias)));
  if (o.layer_norm)
    layer_norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({c}).eps(o.norm_eps)));
  else
    batch_norm = register_module("norm", nn::BatchNorm1d(nn::BatchNormOptions(c).eps(o.norm_eps)));
  pointwise_conv2 = register_module("pointwise_conv2", PackedPointwiseConv1d(nn::Conv1dOptions(c, c, 1).bias(o.bias)));
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

bool ConvModuleImpl::inference_cpu_applies(const torch::Tensor& x, const torch::Tensor& mask_pad) const {
  if (torch::GradMode::is_enabled() || left_context() == 0 || (mask_pad.defined() && mask_pad.numel() > 0)) {
    return false;
  }
  if (!x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.dim() != 3) return false;
  if (!cpu_float_inference({&pointwise_conv1->weight, &pointwise_conv1->bias, &depthwise_conv->weight,
                            &depthwise_conv->bias, &pointwise_conv2->weight, &pointwise_conv2->bias})) {
    return false;
  }
  if (layer_norm && !cpu_float_inference({&layer_norm->weight, &layer_norm->bias})) return false;
  if (batch_norm && !cpu_float_inference({&batch_norm->weight, &batch_norm->bias, &batch_norm->running_mean,
                                          &batch_norm->running_var})) {
    return false;
  }
  // Batch norm in eval mode is a per-channel affine map of its running statistics.
  return !batch_norm || (!batch_norm->is_training() && batch_norm->running_mean.defined() &&
                         batch_norm->running_var.defined());
}

ConvModuleImpl::DepthwiseMap ConvModuleImpl::depthwise_map() const {
  // out[b, i, ch] = bias[ch] + sum_k w[ch, k] frames[b, i + k, ch], then
  // batch norm's affine map folded into one scale and shift per channel.
  const int64_t c = options_.channels, kernel = options_.kernel_size;
  DepthwiseMap m;
  m.w.resize(static_cast<size_t>(kernel * c));
  m.scale.assign(static_cast<size_t>(c), 1.f);
  m.shift.assign(static_cast<size_t>(c), 0.f);
  const float* wsrc = depthwise_conv->weight.data_ptr<float>();
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t k = 0; k < kernel; ++k) m.w[k * c + ch] = wsrc[ch * kernel + k];
  }
  if (depthwise_conv->bias.defined()) {
    std::memcpy(m.shift.data(), depthwise_conv->bias.data_ptr<float>(), static_cast<size_t>(c) * sizeof(float));
  }
  if (batch_norm) {
    const float* mean = batch_norm->running_mean.data_ptr<float>();
    const float* var = batch_norm->running_var.data_ptr<float>();
    const float* gamma = batch_norm->weight.defined() ? batch_norm->weight.data_ptr<float>() : nullptr;
    const float* beta = batch_norm->bias.defined() ? batch_norm->bias.data_ptr<float>() : nullptr;
    const double eps = batch_norm->options.eps();
    for (int64_t ch = 0; ch < c; ++ch) {
      const float g = static_cast<float>((gamma ? gamma[ch] : 1.0) / std::sqrt(static_cast<double>(var[ch]) + eps));
      m.scale[ch] = g;
      m.shift[ch] = (m.shift[ch] - mean[ch]) * g + (beta ? beta[ch] : 0.f);
    }
  }
  return m;
}

void ConvModuleImpl::depthwise_cpu(const float* h, int64_t batch, int64_t t, torch::Tensor* cache,
                                   const DepthwiseMap& map, float* out) {
  const int64_t c = options_.channels, lorder = left_context(), span = lorder + t;
  // frames [B, lorder + T, C]: the left context, then the GLU outputs.
  torch::Tensor frames = torch::empty({batch, span, c}, torch::kFloat);
  float* fp = frames.data_ptr<float>();
  if (cache && cache->defined() && cache->numel() > 0) {
    MOEKIT_CHECK_ARG(cache->dim() == 3 && cache->size(0) == batch && cache->size(1) == c && cache->size(2) == lorder,
                     "conv module: cache of shape ", cache->sizes(), " for ", batch, " x ", t, " frames");
    const torch::Tensor left = cache->transpose(1, 2).to(torch::kFloat).contiguous();  // [B, lorder, C]
    for (int64_t b = 0; b < batch; ++b) {
      std::memcpy(fp + b * span * c, left.data_ptr<float>() + b * lorder * c,
                  static_cast<size_t>(lorder * c) * sizeof(float));
    }
  } else {
    // WeNet's zero input frames: pointwise_conv1 makes them its bias, GLU glu(bias).
    std::vector<float> row(static_cast<size_t>(c), 0.f);
    if (pointwise_conv1->bias.defined()) {
      detail::glu_rows(pointwise_conv1->bias.data_ptr<float>(), 1, c, 2 * c, row.data(), c);
    }
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < lorder; ++i) {
        std::memcpy(fp + (b * span + i) * c, row.data(), static_cast<size_t>(c) * sizeof(float));
      }
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    detail::glu_rows(h + b * t * 2 * c, t, c, 2 * c, fp + (b * span + lorder) * c, c);
  }
  if (cache) *cache = frames.slice(1, t).transpose(1, 2);  // the last lorder frames, [B, C, lorder]
  for (int64_t b = 0; b < batch; ++b) {
    detail::depthwise_rows(fp + b * span * c, t, c, map.w.data(), options_.kernel_size,
                           batch_norm ? map.scale.data() : nullptr, map.shift.data(), out + b * t * c);
  }
}

torch::Tensor ConvModuleImpl::finish_cpu(torch::Tensor out) {
  if (layer_norm) out = fast_layer_norm(layer_norm, out, &out);  // in place here
  if (options_.activation == Activation::Swish && out.is_contiguous()) {
    detail::silu(out.data_ptr<float>(), nullptr, out.data_ptr<float>(), out.numel());
  } else {
    out = apply_activation(options_.activation, out, {});
  }
  return pointwise_conv2->linear(out);
}

torch::Tensor ConvModuleImpl::inference_cpu(const torch::Tensor& input, torch::Tensor* cache) {
  MOEKIT_FAST_PATH("conv_module.inference_cpu");
  const int64_t batch = input.size(0), t = input.size(1);
  const torch::Tensor h = pointwise_conv1->linear(input);  // [B, T, 2C]
  torch::Tensor out = torch::empty({batch, t, options_.channels}, input.options());
  depthwise_cpu(h.data_ptr<float>(), batch, t, cache, depthwise_map(), out.data_ptr<float>());
  return finish_cpu(out);
}

torch::Tensor ConvModuleImpl::forward_streams(const torch::Tensor& x, const std::vector<int64_t>& lengths,
                                              const std::vector<torch::Tensor*>& caches) {
  MOEKIT_CHECK_ARG(x.dim() == 3 && x.size(0) == 1 && lengths.size() == caches.size(),
                   "conv module streams: x must be [1, rows, C] with a length and cache per stream");
  int64_t rows = 0;
  for (int64_t n : lengths) rows += n;
  MOEKIT_CHECK_ARG(rows == x.size(1), "conv module streams: lengths sum to ", rows, ", x has ", x.size(1), " rows");
  if (!inference_cpu_applies(x, {})) {
    std::vector<torch::Tensor> parts;
    int64_t start = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      parts.push_back(forward(x.narrow(1, start, lengths[i]), {}, caches[i]));
      start += lengths[i];
    }
    return torch::cat(parts, 1);
  }
  // The pointwise maps, norm and activation over every stream's rows at
  // once; the depthwise convolution per stream over its own left context.
  MOEKIT_FAST_PATH("conv_module.streams");
  const int64_t c = options_.channels;
  const torch::Tensor h = pointwise_conv1->linear(x);  // [1, rows, 2C]
  torch::Tensor out = torch::empty({1, rows, c}, x.options());
  const DepthwiseMap map = depthwise_map();
  int64_t start = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    depthwise_cpu(h.data_ptr<float>() + start * 2 * c, 1, lengths[i], caches[i], map, out.data_ptr<float>() + start * c);
    start += lengths[i];
  }
  return finish_cpu(out);
}

torch::Tensor ConvModuleImpl::forward(const torch::Tensor& input, const torch::Tensor& mask_pad,
                                      torch::Tensor* cache) {
  // Pointwise convolutions run as linear maps on [B, T, C] (a kernel-1
  // Conv1d is one, and LibTorch's CPU conv path costs more: the module's
  // perf samples in chunk streaming fell from 90 to 64); only the depthwise
  // convolution works on [B, C, T].
  if (inference_cpu_applies(input, mask_pad)) return inference_cpu(input, cache);
  const bool masked = mask_pad.defined() && mask_pad.numel() > 0;
  const torch::Tensor blocked = masked ? mask_pad.unsqueeze(2).logical_not() : torch::Tensor();  // [B, T, 1]
  torch::Tensor x = masked ? input.masked_fill(blocked, 0.0) : input;
  const int64_t channels = options_.channels;
  x = torch::glu(pointwise_conv1->linear(x), -1);
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
    MOEKIT_FAST_PATH("conv_module.depthwise_time_major");
    x = depthwise_time_major(x, depthwise_conv->weight, depthwise_conv->bias);  // [B, T, C]
  } else {
    x = depthwise_conv->forward(x);
    if (batch_norm) x = batch_norm->forward(x);
    x = x.transpose(1, 2);  // [B, T, C]
  }
  if (layer_norm) x = layer_norm->forward(x);
  x = pointwise_conv2->linear(apply_activation(options_.activation, x, {}));
  if (masked) x = x.masked_fill(blocked, 0.0);
  return x;
}

}  // namespace moekit
