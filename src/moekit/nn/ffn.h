#pragma once
// Dense position-wise feed-forward: w2(act(w1 x)) (SwiGLU: w2(silu(w1 x) * w3 x)).
// Parameter names w1, w2, w3 match the MoE experts', so one expert of an MoE
// layer and a dense FFN convert into each other by indexing dim 0.
#include <torch/torch.h>

#include "moekit/ops/packed_linear.h"

#include "moekit/ops/activation.h"

namespace moekit {

struct FeedForwardOptions {
  int64_t d_model = 0;                        // input/output width
  int64_t d_hidden = 0;                       // hidden width
  Activation activation = Activation::Swish;  // relu | gelu | swish | swiglu
  bool bias = true;                           // biases on w1/w2 (w3 never has one)
};

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const FeedForwardOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., D] -> [..., D]
  const FeedForwardOptions& options() const { return options_; }

  PackedLinear w1{nullptr}, w2{nullptr}, w3{nullptr};

 private:
  FeedForwardOptions options_;
};
TORCH_MODULE(FeedForward);

}  // namespace moekit
