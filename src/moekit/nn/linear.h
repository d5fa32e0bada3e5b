#pragma once
// y = x W^T + b with a fast path for inference on very few rows (batch-1
// decoding): CPU float32, no autograd, at most kSmallRows rows. There the
// BLAS GEMV/GEMM call and its dispatch cost more than streaming W once, so
// the rows go through MoEKit's small-rows kernel (the MoE experts' kernel),
// threads splitting W's output rows. Everything else is torch's linear.
// Given a PanelCache, the fast path runs on W packed into panels
// (moe/packed_weights.h), made once and kept until W changes.
#include <torch/torch.h>

#include "moekit/moe/packed_weights.h"

namespace moekit {

constexpr int64_t kSmallRows = 16;

// x [..., in], weight [out, in], bias [out] or undefined -> [..., out].
// panels: the cache for this weight, or null. A call that records gradients
// frees it (training would make it stale).
torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                          PanelCache* panels = nullptr);

}  // namespace moekit

namespace moekit {

// LayerNorm over the last dimension: for CPU float32 with no gradient
// recorded, the row kernel (nn/row_kernels.h) writes into `out` when given
// (contiguous, x's shape; it may be x) or a new tensor; otherwise torch's
// LayerNorm, the result returned (out untouched).
torch::Tensor fast_layer_norm(torch::nn::LayerNorm& norm, const torch::Tensor& x, torch::Tensor* out = nullptr);

}  // namespace moekit
