#pragma once
// Row-wise kernels of a streaming Conformer's CPU inference (LayerNorm, GLU,
// scaled residual add, the causal depthwise convolution, the subsampling's
// first convolution) on float rows, vectorized per instruction set and
// picked at run time as the panel kernel is. A streaming chunk has 16
// frames: there each LibTorch op's dispatch and temporaries cost more than
// its arithmetic, and a chunk took about 1,000 of them (bench/results/2026-11-26.md,
// "Streaming inference without most LibTorch ops").
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

// A causal depthwise convolution on time-major rows of n channels:
// out[i, c] = (sum_k w[k, c] x[i + k, c]) * scale[c] + shift[c] for i < t,
// x holding t + kernel - 1 rows (the left context first), w [kernel, n].
// scale: [n] or null (1); shift: [n] or null (0). Rows are contiguous.
void depthwise_rows(const float* x, int64_t t, int64_t n, const float* w, int64_t kernel, const float* scale,
                    const float* shift, float* out);

// The subsampling's first convolution (one input channel, 3x3, stride 2)
// with its ReLU: out[c, i, j] = max(0, bias[c] + sum_{a,b} w[c, a, b]
// x[2i + a, 2j + b]) for i < (rows - 1) / 2, j < (cols - 1) / 2 (row-major
// x [rows, cols], out [channels, out_rows, out_cols], w [channels, 3, 3],
// bias [channels] or null).
void conv3x3s2_relu(const float* x, int64_t rows, int64_t cols, const float* w, const float* bias, int64_t channels,
                    float* out);

// The variants this CPU can run, fastest first ("avx512", "avx2",
// "generic"), each a table of the functions. For tests.
struct RowKernels {
  void (*layer_norm_rows)(const float*, int64_t, int64_t, int64_t, const float*, const float*, float, float*,
                          int64_t);
  void (*glu_rows)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  void (*add_scaled)(const float*, float, float*, int64_t);
  void (*depthwise_rows)(const float*, int64_t, int64_t, const float*, int64_t, const float*, const float*, float*);
  void (*conv3x3s2_relu)(const float*, int64_t, int64_t, const float*, const float*, int64_t, float*);
};
std::vector<std::pair<std::string, RowKernels>> row_kernel_variants();

}  // namespace moekit::detail
