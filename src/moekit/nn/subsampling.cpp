#include "moekit/nn/subsampling.h"

#include "moekit/core/check.h"
#include "moekit/nn/linear.h"

namespace moekit {

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

torch::Tensor Conv2dSubsamplingImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = conv->forward(x.unsqueeze(1));  // [B, C, T', F']
  const int64_t b = h.size(0), c = h.size(1), t = h.size(2), f = h.size(3);
  h = h.transpose(1, 2).contiguous().view({b, t, c * f});
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
