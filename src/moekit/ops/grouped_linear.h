#pragma once
// The one linear primitive under every linear map of MoEKit's CPU inference:
// rows sorted into groups, each group multiplied by its own weight (ggml's
// mul_mat_id). The MoE experts are its E-group case (ops/grouped_ffn.h); a
// dense layer is its one-group case (fast_linear, ops/linear.h). Both take
// their kernel from the same predicate, so a dense projection and an expert
// of the same shape run the same code.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace moekit {

// Rows sorted by group: group g owns rows [offsets[g], offsets[g] + rows[g]).
struct RowGroups {
  std::vector<int64_t> rows;     // [G]
  std::vector<int64_t> offsets;  // [G + 1], offsets[G] = all rows
  static RowGroups from_counts(std::vector<int64_t> rows);
  int64_t size() const { return static_cast<int64_t>(rows.size()); }
};

// out[rows of g] = in[rows of g] W[g]^T (+ bias[g]) for every group g, no
// autograd. in [M, K] and out [M, N] contiguous (out preallocated), weight
// [G, N, K] contiguous, bias [G, N] or undefined, panels pack_panels(weight)
// or undefined. Groups with small_rows[g] run MoEKit's CPU kernel (on the
// panels when given: CPU float32 rows, float32 or bfloat16 panels), the
// others one BLAS GEMM each (several at once on CPU threads, each
// single-threaded). A bfloat16 weight under float32 rows needs its panels
// for every small-rows group; without panels it is widened per call, unless
// bf16_gemm: then its GEMM groups run as bf16 row GEMMs (below) and only
// the small-rows groups need the panels.
void grouped_linear_into(const torch::Tensor& in, const RowGroups& groups, const torch::Tensor& weight,
                         const torch::Tensor& bias, const torch::Tensor& panels, const std::vector<bool>& small_rows,
                         torch::Tensor& out, bool bf16_gemm = false);

// bf16 row GEMMs: a group's float32 rows rounded to bfloat16 and multiplied
// by its bfloat16 weight on the CPU's own bf16 instructions (LibTorch's
// oneDNN matmul: AMX tiles or AVX512-BF16 dot products, float32
// accumulation, the product rounded to bfloat16 once more). They serve
// experts stored as bf16 by `moekit quantize --experts bf16` in groups of at
// least kBf16GemmRows rows where cpu_has_native_bf16(); smaller groups stay
// on the bf16 panels with float32 rows, which are faster there (the chunk
// of one stream) and exact. On a 2-core Sapphire Rapids VM, 256 x 2048
// bf16 products at 64 rows ran 5x the float32 GEMM's FLOP rate; at 16 rows
// a whole streaming chunk was slower on GEMMs than on the panels. A GEMM's
// rows are padded to a multiple of kBf16GemmRows (oneDNN compiles one
// kernel per shape).
constexpr int64_t kBf16GemmRows = 32;
// AVX512-BF16 or AMX-BF16 on this CPU (x86-64; false elsewhere).
bool cpu_has_native_bf16();

// The predicate of the small-rows/panel kernel: whether it serves a group
// of `rows` CPU float32 rows better than a BLAS GEMM. With weight panels
// (inference) it does at any row count wherever a SIMD panel variant exists
// (experts of up to 1024 rows ran faster than on OpenBLAS's GEMM,
// bench/results/2026-11-24.md, "Weight panels"; a dense FFN at 4096 rows as
// fast as the experts, bench/README.md, "Kernel choice"). Without panels (training,
// panels off) up to 80 rows, unless the BLAS runs AVX-512 kernels
// (small_rows_beats_blas).
bool small_rows_serves(int64_t rows, bool with_panels);

// Whether the small-rows kernel beats the BLAS in training-sized GEMMs of up
// to 80 rows: yes, except where the BLAS is OpenBLAS with AVX-512 kernels.
// Against OpenBLAS's AVX2 kernels (AMD EPYC) the small-rows kernel was 1.2x
// faster at 64 rows; against its SkylakeX kernels (Intel family 6 model 207;
// D 256, H 1024, 8 experts, top-2, 1 thread, forward recording gradients) it
// was 1.25-2.9x slower at 4-64 rows per expert.
bool small_rows_beats_blas();

// Whether training's linear maps (dense and expert, forward and backward)
// run on the panel kernel, their weights packed per call, instead of BLAS
// GEMMs, for `rows` rows per weight matrix (per active expert, on
// average): where a SIMD panel variant exists, weight panels are on
// (MOEKIT_WEIGHT_PANELS), the BLAS runs no AVX-512 kernels
// (small_rows_beats_blas) and rows >= kTrainingPanelRows. Against
// OpenBLAS's AVX2 kernels on an AVX-512 core, a layer's forward + backward
// ran 1.65x faster at 1024 rows per weight, on par at 64 and slower at 16
// (the per-call packing); against OpenBLAS's AVX-512 kernels the BLAS was
// as fast or faster (bench/README.md, "Kernel choice").
// MOEKIT_TRAINING_PANELS=1 or 0 overrides the choice of BLAS (not the
// row threshold), for measuring it.
constexpr int64_t kTrainingPanelRows = 64;
bool panels_serve_training(int64_t rows);

// out = a b^T, no autograd, on the panel kernel with b packed here: a [M, K]
// and b [N, K] CPU float32 of any strides, out [M, N] contiguous and
// preallocated. The weight-gradient GEMMs of training (dW = dY^T X as
// (dY^T) (X^T)^T).
void panel_matmul_nt_into(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out);

namespace detail {

// Runs fn(0..num_items-1) on LibTorch's intra-op threads, each thread taking
// the next item when it finishes one (items come largest first, so this
// balances groups with uneven row counts). BLAS calls inside run
// single-threaded: the parallelism is across GEMMs, not within one.
void for_each_item_dynamic(int64_t num_items, const std::function<void(int64_t)>& fn);

// Groups with rows, largest first.
std::vector<int64_t> active_groups_by_size(const std::vector<int64_t>& rows);

}  // namespace detail
}  // namespace moekit
