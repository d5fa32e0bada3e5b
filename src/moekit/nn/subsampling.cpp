#include "moekit/nn/subsampling.h"

#include <variant>

#include "moekit/core/check.h"
#include "moekit/nn/linear.h"
#include "moekit/nn/row_kernels.h"

namespace moekit {

torch::Tensor ConvWeightCache::forward(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  // LibTorch's option variants are c10::variant in 1.13 and std::variant in
  // 2.x: unqualified calls find either (argument-dependent lookup).
  using std::get;
  using std::holds_alternative;
  const auto& o = conv.options;
  const torch::Tensor& w = conv.weight;
  const bool applies = !torch::GradMode::is_enabled() && at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() &&
                       x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4 && x.is_contiguous() &&
                       w.device().is_cpu() && w.scalar_type() == torch::kFloat && w.is_contiguous() &&
                       (!conv.bias.defined() || conv.bias.scalar_type() == torch::kFloat) && o.groups() == 1 &&
                       holds_alternative<torch::ExpandingArray<2>>(o.padding()) &&
                       holds_alternative<torch::enumtype::kZeros>(o.padding_mode());
  if (!applies) return {};
  const torch::IntArrayRef padding = get<torch::ExpandingArray<2>>(o.padding());
  const torch::IntArrayRef stride = o.stride(), dilation = o.dilation();
  torch::Tensor packed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (unavailable_) return {};
    if (!packed_.defined() || !stamp_.matches(w)) {
      try {
        packed_ = at::mkldnn_reorder_conv2d_weight(w.to_mkldnn(), padding, stride, dilation, 1);
      } catch (const c10::Error&) {
        unavailable_ = true;  // this LibTorch's oneDNN does not take it: LibTorch's own conv2d from now on
        return {};
      }
      stamp_.take(w);
    }
    packed = packed_;
  }
  const c10::optional<torch::Tensor> bias =
      conv.bias.defined() ? c10::optional<torch::Tensor>(conv.bias) : c10::nullopt;
  try {
    return at::mkldnn_convolution(x, packed, bias, padding, stride, dilation, 1);
  } catch (const c10::Error&) {
    std::lock_guard<std::mutex> lock(mutex_);
    unavailable_ = true;
    return {};
  }
}

Conv2dSubsamplingImpl::Conv2dSubsamplingImpl(int64_t idim, int64_t odim, int64_t rate) : rate_(rate) {
  namespace nn = torch::nn;
  MOEKIT_CHECK_ARG(rate == 4 || rate == 6 || rate == 8, "subsampling: rate must be 4, 6 or 8, got ", rate);
  conv = nn::Sequential();
  conv->push_back(nn::Conv2d(nn::Conv2dOptions(1, odim, 3).stride(2)));
  conv->push_back(nn::ReLU());
  int64_t f = (idim - 1) / 2;
  if (rate == 6) {
    conv->push_back(nn::Conv2d(nn::Conv2dOptions(odim, odim, 5).stride(3)));
    f = (f - 2) / 3;
  } else {
    conv->push_back(nn::Conv2d(nn::Conv2dOptions(odim, odim, 3).stride(2)));
    f = (f - 1) / 2;
  }
  conv->push_back(nn::ReLU());
  if (rate == 8) {
    conv->push_back(nn::Conv2d(nn::Conv2dOptions(odim, odim, 3).stride(2)));
    conv->push_back(nn::ReLU());
    f = (f - 1) / 2;
  }
  MOEKIT_CHECK_ARG(f > 0, "subsampling: input_dim ", idim, " is too small for x", rate, " subsampling");
  register_module("conv", conv);
  if (rate == 4) {
    out = register_module("out", nn::Sequential(nn::Linear(odim * f, odim)));
  } else {
    linear = register_module("linear", nn::Linear(odim * f, odim));
  }
}

bool Conv2dSubsamplingImpl::inference_cpu_applies(const torch::Tensor& x) const {
  if (torch::GradMode::is_enabled() || !x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.dim() != 3 ||
      x.size(1) < 3 || x.size(2) < 3) {
    return false;
  }
  const auto& first = *conv->ptr<torch::nn::Conv2dImpl>(0);
  const auto usable = [](const torch::Tensor& p) {
    return !p.defined() || (p.scalar_type() == torch::kFloat && p.device().is_cpu() && p.is_contiguous());
  };
  // The first convolution as every rate builds it: one input channel, 3x3, stride 2, no padding.
  return usable(first.weight) && usable(first.bias) && first.weight.size(1) == 1 && first.weight.size(2) == 3 &&
         first.weight.size(3) == 3;
}

torch::Tensor Conv2dSubsamplingImpl::forward(const torch::Tensor& x) {
  torch::Tensor h;  // [B, C, T', F'] before the last ReLU
  if (inference_cpu_applies(x)) {
    // Inference: the first convolution and its ReLU in a loop (one input
    // channel: LibTorch's path was an im2col, a GEMM and a ReLU pass), the
    // last ReLU in the transposing copy below.
    auto& first = *conv->ptr<torch::nn::Conv2dImpl>(0);
    const torch::Tensor xc = x.contiguous();
    const int64_t batch = x.size(0), frames = x.size(1), bins = x.size(2), channels = first.weight.size(0);
    const int64_t rows = (frames - 1) / 2, cols = (bins - 1) / 2;
    h = torch::empty({batch, channels, rows, cols}, x.options());
    for (int64_t b = 0; b < batch; ++b) {
      detail::conv3x3s2_relu(xc.data_ptr<float>() + b * frames * bins, frames, bins, first.weight.data_ptr<float>(),
                             first.bias.defined() ? first.bias.data_ptr<float>() : nullptr, channels,
                             h.data_ptr<float>() + b * channels * rows * cols);
    }
    // conv[1] is the first ReLU; the last module is a ReLU too. The other
    // convolutions with their weights kept in oneDNN's layout.
    size_t convs = 0;
    for (auto it = conv->begin() + 2; it + 1 < conv->end(); ++it) {
      torch::Tensor y;
      if (const auto* c = it->ptr()->as<torch::nn::Conv2dImpl>(); c != nullptr && convs < 2) {
        y = conv_weights_[convs++].forward(*c, h);
      }
      h = y.defined() ? y : it->forward(h);
    }
    const int64_t b = h.size(0), c = h.size(1), t = h.size(2), f = h.size(3);
    const torch::Tensor hc = h.contiguous();
    torch::Tensor flat = torch::empty({b, t, c * f}, x.options());
    const float* src = hc.data_ptr<float>();
    float* dst = flat.data_ptr<float>();
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t ci = 0; ci < c; ++ci) {
        for (int64_t ti = 0; ti < t; ++ti) {
          const float* in = src + ((bi * c + ci) * t + ti) * f;
          float* o = dst + (bi * t + ti) * c * f + ci * f;
          for (int64_t fi = 0; fi < f; ++fi) o[fi] = in[fi] > 0.f ? in[fi] : 0.f;
        }
      }
    }
    h = flat;
  } else {
    h = conv->forward(x.unsqueeze(1));  // [B, C, T', F']
    const int64_t b = h.size(0), c = h.size(1), t = h.size(2), f = h.size(3);
    h = h.transpose(1, 2).contiguous().view({b, t, c * f});
  }
  // The projection by fast_linear: a streaming chunk's 16 rows stream its
  // weights through the panel kernel instead of an OpenBLAS GEMM.
  torch::nn::LinearImpl& proj = out ? *out[0]->as<torch::nn::LinearImpl>() : *linear;
  return fast_linear(h, proj.weight, proj.bias, &proj_panels_);
}

int64_t Conv2dSubsamplingImpl::output_length(int64_t frames) const {
  auto step = [](int64_t n, int64_t k, int64_t s) { return n < k ? 0 : (n - k) / s + 1; };
  int64_t t = step(frames, 3, 2);
  t = rate_ == 6 ? step(t, 5, 3) : step(t, 3, 2);
  if (rate_ == 8) t = step(t, 3, 2);
  return t;
}

torch::Tensor Conv2dSubsamplingImpl::subsample_mask(const torch::Tensor& mask) const {
  using torch::indexing::None;
  using torch::indexing::Slice;
  torch::Tensor m = mask.index({Slice(), Slice(2, None, 2)});
  m = rate_ == 6 ? m.index({Slice(), Slice(4, None, 3)}) : m.index({Slice(), Slice(2, None, 2)});
  if (rate_ == 8) m = m.index({Slice(), Slice(2, None, 2)});
  return m;
}

}  // namespace moekit
