#pragma once
// LayerNorm through the row kernel where it applies (inference on CPU
// float32), LibTorch's module everywhere else.
#include <torch/torch.h>

namespace moekit {

// LayerNorm over the last dimension: for CPU float32 with no gradient
// recorded, the row kernel (kernels/row_kernels.h) writes into `out` when given
// (contiguous, x's shape; it may be x) or a new tensor; otherwise torch's
// LayerNorm, the result returned (out untouched).
torch::Tensor fast_layer_norm(torch::nn::LayerNorm& norm, const torch::Tensor& x, torch::Tensor* out = nullptr);

}  // namespace moekit
