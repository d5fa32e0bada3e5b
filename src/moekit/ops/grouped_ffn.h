#pragma once
// The grouped expert FFN: MoEKit's hot kernel.
//
// Rows of `x` arrive sorted by expert: the first tokens_per_expert[0] rows go
// to expert 0, the next tokens_per_expert[1] to expert 1, and so on. Each
// expert e computes  y = act(x W1[e]^T + b1[e]) W2[e]^T + b2[e]  (SwiGLU:
// silu(x W1^T) * (x W3^T)) on its own rows. Experts with no rows read none of
// their weights, which is what makes an MoE cheap at inference.
//
// A custom autograd function: backward runs the same grouped GEMMs instead of
// the autograd graph of E separate matmuls.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "moekit/ops/activation.h"
#include "moekit/ops/grouped_linear.h"
#include "moekit/ops/int8_weights.h"

namespace moekit {

// Stacked expert weights. b1, b2 and w3 may be undefined (no bias / not gated).
struct ExpertWeights {
  torch::Tensor w1;  // [E, H, D]
  torch::Tensor b1;  // [E, H] or undefined
  torch::Tensor w3;  // [E, H, D] (SwiGLU only) or undefined
  torch::Tensor w2;  // [E, D, H]
  torch::Tensor b2;  // [E, D] or undefined
  // Optional: the same w1, w3, w2 packed by pack_panels (packed_weights.h),
  // for the small-rows experts of a forward that needs no gradient. Faster
  // on few rows per expert; same results up to float rounding.
  torch::Tensor w1_panels, w3_panels, w2_panels;
  // int8 experts (ops/int8_weights.h): when defined, w1, w3 and w2 are int8
  // and these their per-output-channel scales ([E, H], [E, H], [E, D]); the
  // panels above are then pack_int8_panels of them. Inference only: on CPU
  // float32 rows the int8 kernel runs, elsewhere the weights are
  // dequantized per call.
  torch::Tensor w1_scale, w3_scale, w2_scale;
  bool int8() const { return w1_scale.defined(); }
  // bf16 experts of `moekit quantize --experts bf16`: inference on CPU
  // float32 rows runs each expert of at least kBf16GemmRows rows as bf16 row
  // GEMMs where cpu_has_native_bf16() (ops/grouped_linear.h: its rows
  // rounded to bf16), the others on the bf16 panels.
  bool bf16_gemm = false;
};

enum class GroupedFfnKernel {
  Auto,           // per expert: SmallRows for few rows on CPU float32, PerExpertGemm otherwise
  PerExpertGemm,  // one BLAS GEMM per expert (BLAS threads inside each GEMM)
  SmallRows,      // CPU float32: threads over (expert, weight-row tile), weights streamed once
  GroupedMm,      // CUDA bfloat16, LibTorch >= 2.8: at::_grouped_mm, one kernel per weight matrix
                  // for all experts (CUTLASS on Hopper and newer), autograd through ATen
};

struct GroupedFfnOptions {
  Activation activation = Activation::Swish;
  GroupedFfnKernel kernel = GroupedFfnKernel::Auto;
};

// x: [M, D] (any float dtype, any device), tokens_per_expert: E counts summing
// to M. Returns [M, D]. Differentiable w.r.t. x and every weight.
torch::Tensor grouped_ffn(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                          const ExpertWeights& weights, const GroupedFfnOptions& options);

// Whether the GroupedMm kernel can run on these inputs: a LibTorch with
// at::_grouped_mm (2.8+), CUDA, bfloat16 inputs and weights, widths that
// keep its 16-byte stride alignment (d_model and hidden multiples of 8),
// fewer than 1024 experts. Auto takes it whenever it can.
bool grouped_mm_applies(const torch::Tensor& x, const ExpertWeights& weights);

// The experts over rows sorted by expert, with each expert's end row in
// `offsets` ([E] integer, on x's device) instead of host counts: nothing
// waits for the device. Rows past the last offset are padding whose output
// is unspecified. Runs at::_grouped_mm (LibTorch >= 2.8) on CUDA bfloat16
// rows and weights, or on float32 ones under CUDA bfloat16 autocast (cast
// here: autocast does not cover at::_grouped_mm). Differentiable.
bool grouped_mm_offsets_applies(const torch::Tensor& x, const ExpertWeights& weights);
torch::Tensor grouped_mm_ffn_offsets(const torch::Tensor& x, const torch::Tensor& offsets,
                                     const ExpertWeights& weights, Activation activation);

// Which experts the small-rows kernel serves under `requested` (the others
// run a BLAS GEMM each): Auto asks small_rows_serves (ops/grouped_linear.h)
// per expert, CPU float32 only; with_panels: the weights' panels are at
// hand (inference). Exposed for tests and benchmarks.
std::vector<bool> grouped_ffn_small_rows_experts(const torch::Tensor& x,
                                                 const std::vector<int64_t>& tokens_per_expert,
                                                 GroupedFfnKernel requested, bool with_panels = false);

}  // namespace moekit
