#pragma once
// y = x W^T + b, the dense linear map: the one-group case of the grouped
// linear primitive (ops/grouped_linear.h) wherever MoEKit's CPU kernel
// serves it, LibTorch's linear everywhere else. Inference on CPU float32
// (no gradient recorded) takes MoEKit's kernel for up to kSmallRows rows
// (batch-1 decoding, streaming chunks: there a BLAS call's dispatch costs
// more than streaming W once) and for every row count the same predicate
// gives the MoE experts (small_rows_serves): with a PanelCache, on W packed
// into panels (ops/packed_weights.h), made once and kept until W changes.
// A call that records gradients takes the panel kernel for the forward and
// both backward GEMMs where panels_serve_training(rows) says it beats the
// BLAS (the weight packed per call), LibTorch's linear elsewhere.
#include <torch/torch.h>

#include "moekit/ops/packed_weights.h"

namespace moekit {

constexpr int64_t kSmallRows = 16;

// x [..., in], weight [out, in], bias [out] or undefined -> [..., out].
// panels: the cache for this weight, or null. A call that records gradients
// frees it (training would make it stale).
torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                          PanelCache* panels = nullptr);

// The predicate of fast_linear's training path: gradients are recorded,
// CPU float32 tensors, panels_serve_training(rows) (ops/grouped_linear.h).
bool training_panels_apply(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace moekit
