#include "moekit/nn/linear.h"

#include <ATen/Parallel.h>

#include <vector>

#include "moekit/moe/grouped_ffn.h"
#include "moekit/moe/panel_kernel.h"
#include "moekit/nn/row_kernels.h"

namespace moekit {

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          PanelCache* panels) {
  if (panels != nullptr && torch::GradMode::is_enabled()) panels->clear();
  const int64_t in = weight.size(1), out = weight.size(0);
  const bool small = !torch::GradMode::is_enabled() && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
                     weight.scalar_type() == torch::kFloat && weight.is_contiguous() && x.size(-1) == in &&
                     x.numel() / std::max<int64_t>(in, 1) <= kSmallRows && x.numel() > 0 &&
                     (!bias.defined() || (bias.scalar_type() == torch::kFloat && bias.is_contiguous()));
  if (!small) return torch::nn::functional::linear(x, weight, bias);
  // A contiguous x is read in place and y made in its final shape: a
  // streaming chunk makes several calls per layer, each op a dispatch.
  const torch::Tensor rows = x.is_contiguous() ? x : x.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  torch::Tensor y = torch::empty(shape, x.options());
  const float* xp = rows.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t n = rows.numel() / in;
  if (panels != nullptr && weight_panels_enabled()) {
    const torch::Tensor packed = panels->get(weight);
    const float* pp = packed.data_ptr<float>();
    // Two panels (64 output rows) per task at least.
    at::parallel_for(0, packed.size(0), 2, [&](int64_t begin, int64_t end) {
      detail::panel_linear(xp, n, in, in, pp, bp, begin * detail::kPanelWidth,
                           std::min(end * detail::kPanelWidth, out), yp, out);
    });
    return y;
  }
  const float* wp = weight.data_ptr<float>();
  std::vector<float> packed(static_cast<size_t>(detail::small_rows_packed_floats(n, in)));
  detail::small_rows_pack(xp, n, in, in, packed.data());
  const float* xt = packed.empty() ? nullptr : packed.data();
  // Tiles of 64 output rows: enough work per task, W streamed once in total.
  at::parallel_for(0, out, 64, [&](int64_t begin, int64_t end) {
    detail::small_rows_linear(xp, xt, n, in, in, wp, bp, begin, end, yp, out);
  });
  return y;
}

}  // namespace moekit

namespace moekit {

torch::Tensor fast_layer_norm(torch::nn::LayerNorm& norm, const torch::Tensor& x, torch::Tensor* out) {
  const auto& shape = norm->options.normalized_shape();
  const torch::Tensor& gamma = norm->weight;
  const torch::Tensor& beta = norm->bias;
  const auto usable = [](const torch::Tensor& p) {
    return !p.defined() || (p.scalar_type() == torch::kFloat && p.is_contiguous() && p.device().is_cpu());
  };
  const bool out_usable = out == nullptr || (out->defined() && out->sizes() == x.sizes() &&
                                              out->scalar_type() == torch::kFloat && out->is_contiguous());
  const bool raw = !torch::GradMode::is_enabled() && shape.size() == 1 && shape[0] > 0 && x.dim() >= 1 &&
                   x.size(-1) == shape[0] && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
                   x.is_contiguous() && usable(gamma) && usable(beta) && out_usable;
  if (!raw) return norm->forward(x);
  torch::Tensor y = out != nullptr ? *out : torch::empty_like(x);
  const int64_t n = shape[0];
  detail::layer_norm_rows(x.data_ptr<float>(), x.numel() / n, n, n,
                          gamma.defined() ? gamma.data_ptr<float>() : nullptr,
                          beta.defined() ? beta.data_ptr<float>() : nullptr, static_cast<float>(norm->options.eps()),
                          y.data_ptr<float>(), n);
  return y;
}

}  // namespace moekit
