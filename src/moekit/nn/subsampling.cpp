#include "moekit/nn/subsampling.h"

#include "moekit/core/check.h"
#include "moekit/kernels/row_kernels.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {

namespace {

// The first convolution (one input channel, 3x3, stride 2, no padding) with
// its ReLU, for training when the features need no gradient: forward by the
// row kernel inference uses, backward to the weights as a batched GEMM of
// the masked output gradient with the input's 3x3 patches (9 columns).
// LibTorch's path ran oneDNN's convolution for one input channel, converted
// the output between oneDNN's blocked layout and NCHW, and made separate
// ReLU passes (bench/README.md, "Speech training: the first subsampling
// convolution").
class FirstConvReluFunction : public torch::autograd::Function<FirstConvReluFunction> {
 public:
  // x [B, T, F], weight [C, 1, 3, 3], bias [C] or [0] (none: LibTorch 1.13's
  // Function takes no undefined input) -> [B, C, (T-1)/2, (F-1)/2]
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias) {
    const torch::Tensor xc = x.contiguous(), wc = weight.contiguous();
    const torch::Tensor bc = bias.numel() > 0 ? bias.contiguous() : torch::Tensor();
    const int64_t batch = x.size(0), frames = x.size(1), bins = x.size(2), channels = weight.size(0);
    const int64_t rows = (frames - 1) / 2, cols = (bins - 1) / 2;
    torch::Tensor out = torch::empty({batch, channels, rows, cols}, x.options());
    const float* src = xc.data_ptr<float>();
    const float* w = wc.data_ptr<float>();
    const float* b = bc.defined() ? bc.data_ptr<float>() : nullptr;
    float* dst = out.data_ptr<float>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        detail::conv3x3s2_relu(src + i * frames * bins, frames, bins, w, b, channels, dst + i * channels * rows * cols);
      }
    });
    ctx->save_for_backward({xc, out});
    ctx->saved_data["bias"] = bc.defined();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& out = saved[1];
    const int64_t batch = x.size(0), frames = x.size(1), bins = x.size(2), channels = out.size(1);
    const int64_t rows = out.size(2), cols = out.size(3);
    // Through the ReLU: nothing where the output is 0.
    const torch::Tensor g = torch::threshold_backward(grads[0].contiguous(), out, 0);
    // Patches [B, rows * cols, 9]: tap (i, j) of output (r, c) is x[2r + i, 2c + j].
    const torch::Tensor patches =
        x.as_strided({batch, rows, cols, 3, 3}, {frames * bins, 2 * bins, 2, bins, 1}).reshape({batch, rows * cols, 9});
    const torch::Tensor dw = torch::bmm(g.view({batch, channels, rows * cols}), patches).sum(0).view({channels, 1, 3, 3});
    const torch::Tensor db = ctx->saved_data["bias"].toBool() ? g.sum({0, 2, 3}) : torch::Tensor();
    return {torch::Tensor(), dw, db};
  }
};

}  // namespace

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
    out = register_module("out", nn::Sequential(PackedLinear(odim * f, odim)));
  } else {
    linear = register_module("linear", PackedLinear(odim * f, odim));
  }
}

bool Conv2dSubsamplingImpl::training_cpu_applies(const torch::Tensor& x) const {
  if (!torch::GradMode::is_enabled() || x.requires_grad() || !x.device().is_cpu() ||
      x.scalar_type() != torch::kFloat || x.dim() != 3 || x.size(1) < 3 || x.size(2) < 3) {
    return false;
  }
  const auto& first = *conv->ptr<torch::nn::Conv2dImpl>(0);
  return first.weight.device().is_cpu() && first.weight.scalar_type() == torch::kFloat &&
         (!first.bias.defined() || first.bias.scalar_type() == torch::kFloat) && first.weight.size(1) == 1 &&
         first.weight.size(2) == 3 && first.weight.size(3) == 3;
}

bool Conv2dSubsamplingImpl::inference_cpu_applies(const torch::Tensor& x) const {
  if (torch::GradMode::is_enabled() || !x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.dim() != 3 ||
      x.size(1) < 3 || x.size(2) < 3) {
    return false;
  }
  const auto& first = *conv->ptr<torch::nn::Conv2dImpl>(0);
  // The first convolution as every rate builds it: one input channel, 3x3, stride 2, no padding.
  return cpu_float_inference({&first.weight, &first.bias}) && first.weight.size(1) == 1 &&
         first.weight.size(2) == 3 && first.weight.size(3) == 3;
}

torch::Tensor Conv2dSubsamplingImpl::forward(const torch::Tensor& x) {
  torch::Tensor h;  // [B, C, T', F'] before the last ReLU
  if (inference_cpu_applies(x)) {
    MOEKIT_FAST_PATH("subsampling.first_conv_rows");
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
    if (training_cpu_applies(x)) {
      MOEKIT_FAST_PATH("subsampling.first_conv_train");
      auto& first = *conv->ptr<torch::nn::Conv2dImpl>(0);
      h = FirstConvReluFunction::apply(x, first.weight,
                                       first.bias.defined() ? first.bias : torch::empty({0}, x.options()));
      for (auto it = conv->begin() + 2; it != conv->end(); ++it) h = it->forward(h);  // conv[1] is its ReLU
    } else {
      h = conv->forward(x.unsqueeze(1));  // [B, C, T', F']
    }
    const int64_t b = h.size(0), c = h.size(1), t = h.size(2), f = h.size(3);
    h = h.transpose(1, 2).contiguous().view({b, t, c * f});
  }
  // The projection by fast_linear: a streaming chunk's 16 rows stream its
  // weights through the panel kernel instead of an OpenBLAS GEMM.
  PackedLinearImpl& proj = out ? *out[0]->as<PackedLinearImpl>() : *linear;
  return proj.forward(h);
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
