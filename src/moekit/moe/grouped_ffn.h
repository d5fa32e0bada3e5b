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

#include "moekit/nn/activation.h"

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

// Which experts the small-rows kernel serves under `requested` (the others
// run a BLAS GEMM each): Auto picks it per expert, for few rows on CPU
// float32; with weight panels (with_panels) Auto picks it for every expert,
// as the panel form is also faster than OpenBLAS on many rows (1024 rows per
// expert: 2.5% at 1 thread, 7-12% at 2; bench/README.md, "Weight panels"),
// except where only the generic (non-SIMD) variant exists. Exposed for tests
// and benchmarks.
// Whether Auto gives experts of up to 80 rows the small-rows kernel when no
// weight panels are at hand (training, or panels off): yes, except where the
// BLAS is OpenBLAS with AVX-512 kernels. Against OpenBLAS's AVX2 kernels
// (AMD EPYC, session 5) the small-rows kernel was 1.2x faster at 64 rows;
// against its SkylakeX kernels (Intel family 6 model 207, session 8; D 256,
// H 1024, 8 experts, top-2, 1 thread, forward recording gradients) it was
// 1.25-2.9x slower at 4-64 rows per expert (3.14 against 1.37 ms at 16
// tokens, 12.3 against 4.2 ms at 256).
bool small_rows_beats_blas();

// Whether the GroupedMm kernel can run on these inputs: a LibTorch with
// at::_grouped_mm (2.8+), CUDA, bfloat16 inputs and weights, widths that
// keep its 16-byte stride alignment (d_model and hidden multiples of 8),
// fewer than 1024 experts. Auto takes it whenever it can.
bool grouped_mm_applies(const torch::Tensor& x, const ExpertWeights& weights);

std::vector<bool> grouped_ffn_small_rows_experts(const torch::Tensor& x,
                                                 const std::vector<int64_t>& tokens_per_expert,
                                                 GroupedFfnKernel requested, bool with_panels = false);

namespace detail {

// CPU float32 small-rows forward of one linear map on a block of rows:
// out[i, o] = dot(x[i, :], w[o, :]) (+ bias[o]) for i < rows, o in [o_begin, o_end).
// x: [rows, in] with row stride ld_x; w: [out_features, in] contiguous;
// out: row stride ld_out. bias may be null. xt: the rows packed by
// small_rows_pack, made once and shared by every call on the same rows
// (null when small_rows_packed_floats is 0; null also works, slower, for
// more rows).
void small_rows_linear(const float* x, const float* xt, int64_t rows, int64_t ld_x, int64_t in, const float* w,
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out);
// Size in floats of the packed copy of `rows` rows of width `in` (0: none needed).
int64_t small_rows_packed_floats(int64_t rows, int64_t in);
// Writes that packed copy (small_rows_packed_floats floats) to xt.
void small_rows_pack(const float* x, int64_t rows, int64_t ld_x, int64_t in, float* xt);

// Every variant of that kernel this CPU can run, fastest first, by
// instruction set ("avx512", "avx2", "generic"); small_rows_linear uses the
// first. For tests, which check each against a reference.
using SmallRowsFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                             int64_t, int64_t, float*, int64_t);
std::vector<std::pair<std::string, SmallRowsFn>> small_rows_variants();

}  // namespace detail
}  // namespace moekit
