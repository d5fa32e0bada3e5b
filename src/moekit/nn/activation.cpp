#include "moekit/nn/activation.h"

#include "moekit/core/check.h"

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

torch::Tensor apply_activation(Activation activation, const torch::Tensor& h1, const torch::Tensor& h3) {
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
