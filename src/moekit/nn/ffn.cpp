#include "moekit/nn/ffn.h"

#include "moekit/ops/linear.h"

#include "moekit/core/check.h"

namespace moekit {

FeedForwardImpl::FeedForwardImpl(const FeedForwardOptions& options) : options_(options) {
  MOEKIT_CHECK_ARG(options.d_model > 0 && options.d_hidden > 0, "FFN widths must be positive, got d_model=",
                   options.d_model, " d_hidden=", options.d_hidden);
  using Linear = PackedLinear;
  using torch::nn::LinearOptions;
  w1 = register_module("w1", Linear(LinearOptions(options.d_model, options.d_hidden).bias(options.bias)));
  if (is_gated(options.activation)) {
    w3 = register_module("w3", Linear(LinearOptions(options.d_model, options.d_hidden).bias(false)));
  }
  w2 = register_module("w2", Linear(LinearOptions(options.d_hidden, options.d_model).bias(options.bias)));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  const torch::Tensor h3 = w3 ? w3(x) : torch::Tensor();
  const torch::Tensor h1 = w1(x);
  return w2(apply_activation(options_.activation, h1, h3));
}

}  // namespace moekit
