#pragma once
// FFN activations shared by dense FFNs and MoE experts.
#include <torch/torch.h>

#include <string>

namespace moekit {

enum class Activation {
  Relu,
  Gelu,    // exact (erf) GELU, torch.nn.GELU()'s default
  Swish,   // x * sigmoid(x), a.k.a. SiLU (WeNet's "swish")
  SwiGLU,  // silu(x W1) * (x W3): gated, needs a third weight
};

// "relu" | "gelu" | "swish" (also "silu") | "swiglu"; throws std::invalid_argument otherwise.
Activation parse_activation(const std::string& name);
std::string activation_name(Activation activation);
inline bool is_gated(Activation activation) { return activation == Activation::SwiGLU; }

// act(h1) for ungated activations, silu(h1) * h3 for SwiGLU (h3 unused otherwise).
torch::Tensor apply_activation(Activation activation, const torch::Tensor& h1, const torch::Tensor& h3);

// Gradients of apply_activation: fills grad_h1 (and grad_h3 for SwiGLU) given
// the gradient of its output.
void activation_backward(Activation activation, const torch::Tensor& grad_out, const torch::Tensor& h1,
                         const torch::Tensor& h3, torch::Tensor* grad_h1, torch::Tensor* grad_h3);

}  // namespace moekit
