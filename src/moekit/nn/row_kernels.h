#pragma once
// Row-wise kernels of a streaming Conformer layer's CPU inference (LayerNorm,
// GLU, scaled residual add) on float rows, vectorized per instruction set and
// picked at run time as the panel kernel is. A streaming chunk has a few
// dozen frames: there LibTorch's dispatch, its temporaries and the cache
// misses its code takes after the expert weights have streamed through cost
// more than the arithmetic (bench/README.md, "Session 11").
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moekit::detail {

// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta for r < rows,
// mean and (biased) variance over the row's n values, as torch's LayerNorm
// (two passes in float). x and y have row strides ld_x, ld_y; y may be x.
// gamma, beta: [n] or null (1 and 0).
void layer_norm_rows(const float* x, int64_t rows, int64_t n, int64_t ld_x, const float* gamma, const float* beta,
                     float eps, float* y, int64_t ld_y);

// GLU over the last dimension: y[r, c] = x[r, c] * sigmoid(x[r, n + c]) for
// c < n; x rows hold 2n values (stride ld_x), y rows n (stride ld_y).
void glu_rows(const float* x, int64_t rows, int64_t n, int64_t ld_x, float* y, int64_t ld_y);

// y[i] += alpha * x[i] for i < n.
void add_scaled(const float* x, float alpha, float* y, int64_t n);

// The variants this CPU can run, fastest first ("avx512", "avx2",
// "generic"), each a table of the three functions. For tests.
struct RowKernels {
  void (*layer_norm_rows)(const float*, int64_t, int64_t, int64_t, const float*, const float*, float, float*,
                          int64_t);
  void (*glu_rows)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  void (*add_scaled)(const float*, float, float*, int64_t);
};
std::vector<std::pair<std::string, RowKernels>> row_kernel_variants();

}  // namespace moekit::detail
