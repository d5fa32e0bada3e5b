#include "moekit/ops/activation.h"

#include "moekit/core/check.h"
#include "moekit/kernels/silu_kernel.h"
#include "moekit/ops/fast_path.h"

namespace moekit {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "swish" || name == "silu") return Activation::Swish;
  if (name == "swiglu") return Activation::SwiGLU;
  throw std::invalid_argument(
      str_cat("unknown activation '", name, "' (expected relu, gelu, swish or swiglu)"));
}

std::string activation_name(Activation activation) {
  switch (activation) {
    case Activation::Relu: return "relu";
    case Activation::Gelu: return "gelu";
    case Activation::Swish: return "swish";
    case Activation::SwiGLU: return "swiglu";
  }
  return "?";
}

namespace {

// silu(h1) (* h3) through detail::silu where it applies: CPU float32
// contiguous tensors no gradient is recorded for, on a CPU with a SIMD
// variant (the generic one is slower than ATen's).
bool fast_silu_applies(const torch::Tensor& h1, const torch::Tensor& h3) {
  static const bool simd = detail::silu_variants().front().first != "generic";
  auto fits = [&](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
           (!torch::GradMode::is_enabled() || !t.requires_grad());
  };
  return simd && fits(h1) && (!h3.defined() || (fits(h3) && h3.sizes() == h1.sizes()));
}

torch::Tensor fast_silu(const torch::Tensor& h1, const torch::Tensor& h3) {
  MOEKIT_FAST_PATH("activation.silu_kernel");
  torch::Tensor y = torch::empty_like(h1);
  detail::silu(h1.data_ptr<float>(), h3.defined() ? h3.data_ptr<float>() : nullptr, y.data_ptr<float>(), h1.numel());
  return y;
}

}  // namespace

torch::Tensor apply_activation(Activation activation, const torch::Tensor& h1, const torch::Tensor& h3) {
  if (activation == Activation::Swish && fast_silu_applies(h1, {})) return fast_silu(h1, {});
  if (activation == Activation::SwiGLU && fast_silu_applies(h1, h3)) return fast_silu(h1, h3);
  switch (activation) {
    case Activation::Relu: return torch::relu(h1);
    case Activation::Gelu: return torch::gelu(h1);
    case Activation::Swish: return torch::silu(h1);
    case Activation::SwiGLU: return torch::silu(h1).mul_(h3);
  }
  throw std::logic_error("unhandled activation");
}

void activation_backward(Activation activation, const torch::Tensor& grad_out, const torch::Tensor& h1,
                         const torch::Tensor& h3, torch::Tensor* grad_h1, torch::Tensor* grad_h3) {
  switch (activation) {
    case Activation::Relu:
      *grad_h1 = torch::threshold_backward(grad_out, h1, 0);
      return;
    case Activation::Gelu:
      *grad_h1 = torch::gelu_backward(grad_out, h1);
      return;
    case Activation::Swish:
      *grad_h1 = torch::silu_backward(grad_out, h1);
      return;
    case Activation::SwiGLU:
      *grad_h3 = grad_out * torch::silu(h1);
      *grad_h1 = torch::silu_backward(grad_out * h3, h1);
      return;
  }
}

}  // namespace moekit
