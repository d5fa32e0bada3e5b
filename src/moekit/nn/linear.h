#pragma once
// y = x W^T + b with a fast path for inference on very few rows (batch-1
// decoding): CPU float32, no autograd, at most kSmallRows rows. There the
// BLAS GEMV/GEMM call and its dispatch cost more than streaming W once, so
// the rows go through MoEKit's small-rows kernel (the MoE experts' kernel),
// threads splitting W's output rows. Everything else is torch's linear.
#include <torch/torch.h>

namespace moekit {

constexpr int64_t kSmallRows = 16;

// x [..., in], weight [out, in], bias [out] or undefined -> [..., out].
torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

}  // namespace moekit
