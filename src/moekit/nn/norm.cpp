#include "moekit/nn/norm.h"

#include "moekit/kernels/row_kernels.h"
#include "moekit/ops/fast_path.h"

namespace moekit {

torch::Tensor fast_layer_norm(torch::nn::LayerNorm& norm, const torch::Tensor& x, torch::Tensor* out) {
  const auto& shape = norm->options.normalized_shape();
  const torch::Tensor& gamma = norm->weight;
  const torch::Tensor& beta = norm->bias;
  const bool out_usable = out == nullptr || (out->defined() && out->sizes() == x.sizes() &&
                                              out->scalar_type() == torch::kFloat && out->is_contiguous());
  const bool raw = cpu_float_inference({&x, &gamma, &beta}) && shape.size() == 1 && shape[0] > 0 &&
                   x.defined() && x.dim() >= 1 && x.size(-1) == shape[0] && out_usable;
  if (!raw) return norm->forward(x);
  MOEKIT_FAST_PATH("layer_norm.row_kernel");
  torch::Tensor y = out != nullptr ? *out : torch::empty_like(x);
  const int64_t n = shape[0];
  detail::layer_norm_rows(x.data_ptr<float>(), x.numel() / n, n, n,
                          gamma.defined() ? gamma.data_ptr<float>() : nullptr,
                          beta.defined() ? beta.data_ptr<float>() : nullptr, static_cast<float>(norm->options.eps()),
                          y.data_ptr<float>(), n);
  return y;
}

}  // namespace moekit
