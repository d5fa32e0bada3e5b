// Dot-product kernel for few rows against a weight matrix streamed once.
//
// For a block of R token rows and O weight rows, R x O vector accumulators run
// over the input dimension, so each weight vector loaded feeds R FMAs and each
// row vector O FMAs, and each weight row is read once per expert whatever
// the row count. The body is compiled per instruction set (GCC vector
// extensions: 16 lanes for AVX-512, 8 for AVX2, 4 otherwise) and picked at run
// time by CPU feature, not model name, so AMD CPUs get the fast versions too.
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "moekit/moe/grouped_ffn.h"

namespace moekit::detail {
namespace {

// How many weight rows ahead to prefetch: the hardware prefetcher alone left
// the kernel at a third of the read bandwidth.
constexpr int64_t kPrefetchRows = 4;

template <int Lanes>
struct Vec {
  typedef float type __attribute__((vector_size(Lanes * sizeof(float))));
};

template <int Lanes>
__attribute__((always_inline)) inline typename Vec<Lanes>::type load(const float* p) {
  typename Vec<Lanes>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Horizontal sums as shuffle trees. A serial lane-by-lane sum (strict IEEE
// order, so the compiler may not reorder it) cost more than the FMAs for
// in = 256: 16 accumulators x 15 dependent adds per 4 x 4 block.
using V4 = Vec<4>::type;
template <int Lanes>
__attribute__((always_inline)) inline V4 fold_to4(typename Vec<Lanes>::type v);
template <>
__attribute__((always_inline)) inline V4 fold_to4<4>(V4 v) {
  return v;
}
template <>
__attribute__((always_inline)) inline V4 fold_to4<8>(Vec<8>::type v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
}
template <>
__attribute__((always_inline)) inline V4 fold_to4<16>(Vec<16>::type v) {
  const Vec<8>::type half = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                            __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  return fold_to4<8>(half);
}
__attribute__((always_inline)) inline float sum4(V4 v) {
  const V4 s = v + __builtin_shufflevector(v, v, 2, 3, 0, 1);
  return s[0] + s[1];
}
// {sum(a), sum(b), sum(c), sum(d)}.
__attribute__((always_inline)) inline V4 sum4x4(V4 a, V4 b, V4 c, V4 d) {
  const V4 ab = __builtin_shufflevector(a, b, 0, 4, 1, 5) + __builtin_shufflevector(a, b, 2, 6, 3, 7);
  const V4 cd = __builtin_shufflevector(c, d, 0, 4, 1, 5) + __builtin_shufflevector(c, d, 2, 6, 3, 7);
  return __builtin_shufflevector(ab, cd, 0, 1, 4, 5) + __builtin_shufflevector(ab, cd, 2, 3, 6, 7);
}

// out[i, o + j] = dot(x[i, :], w[o + j, :]) + bias[o + j] for i < R, j < O.
template <int Lanes, int R, int O>
__attribute__((always_inline)) inline void micro_kernel(const float* x, int64_t ld_x, int64_t in, const float* w,
                                                        const float* bias, int64_t o, float* out, int64_t ld_out) {
  using V = typename Vec<Lanes>::type;
  V acc[R][O];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < O; ++j) acc[i][j] = V{};
  const float* w_rows = w + o * in;
  for (int64_t p = 0; p < O * in; p += 16) __builtin_prefetch(w_rows + kPrefetchRows * in + p, 0, 0);
  int64_t k = 0;
  for (; k + Lanes <= in; k += Lanes) {
    V wv[O];
    for (int j = 0; j < O; ++j) wv[j] = load<Lanes>(w_rows + j * in + k);
    for (int i = 0; i < R; ++i) {
      const V xv = load<Lanes>(x + i * ld_x + k);
      for (int j = 0; j < O; ++j) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < R; ++i) {
    float sums[O];
    if constexpr (O == 4) {
      const V4 s = sum4x4(fold_to4<Lanes>(acc[i][0]), fold_to4<Lanes>(acc[i][1]), fold_to4<Lanes>(acc[i][2]),
                          fold_to4<Lanes>(acc[i][3]));
      for (int j = 0; j < 4; ++j) sums[j] = s[j];
    } else {
      for (int j = 0; j < O; ++j) sums[j] = sum4(fold_to4<Lanes>(acc[i][j]));
    }
    for (int j = 0; j < O; ++j) {
      float s = sums[j];
      for (int64_t t = k; t < in; ++t) s += x[i * ld_x + t] * w_rows[j * in + t];
      out[i * ld_out + o + j] = s + (bias != nullptr ? bias[o + j] : 0.f);
    }
  }
}

// R rows against weight rows [o_begin, o_end), O at a time.
template <int Lanes, int R, int O>
__attribute__((always_inline)) inline void row_block(const float* x, int64_t ld_x, int64_t in, const float* w,
                                                     const float* bias, int64_t o_begin, int64_t o_end, float* out,
                                                     int64_t ld_out) {
  int64_t o = o_begin;
  for (; o + O <= o_end; o += O) micro_kernel<Lanes, R, O>(x, ld_x, in, w, bias, o, out, ld_out);
  for (; o < o_end; ++o) micro_kernel<Lanes, R, 1>(x, ld_x, in, w, bias, o, out, ld_out);
}

// Accumulator shapes per vector width keep the registers from spilling
// (AVX-512: 32 vector registers, AVX2 and SSE: 16).
template <int Lanes>
__attribute__((always_inline)) inline void small_rows_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                           const float* w, const float* bias, int64_t o_begin,
                                                           int64_t o_end, float* out, int64_t ld_out) {
  constexpr int kWide = Lanes == 16 ? 4 : 2;  // weight rows per block when 3-4 token rows share it
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    row_block<Lanes, 4, kWide>(x + i * ld_x, ld_x, in, w, bias, o_begin, o_end, out + i * ld_out, ld_out);
  }
  const float* xr = x + i * ld_x;
  float* yr = out + i * ld_out;
  switch (rows - i) {
    case 3: row_block<Lanes, 3, kWide>(xr, ld_x, in, w, bias, o_begin, o_end, yr, ld_out); break;
    case 2: row_block<Lanes, 2, 4>(xr, ld_x, in, w, bias, o_begin, o_end, yr, ld_out); break;
    case 1: row_block<Lanes, 1, 4>(xr, ld_x, in, w, bias, o_begin, o_end, yr, ld_out); break;
    default: break;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void small_rows_avx512(
    const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w, const float* bias, int64_t o_begin,
    int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<16>(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}
__attribute__((target("avx2,fma"))) void small_rows_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                         const float* w, const float* bias, int64_t o_begin,
                                                         int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<8>(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}
#endif
void small_rows_generic(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w, const float* bias,
                        int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<4>(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}

}  // namespace

std::vector<std::pair<std::string, SmallRowsFn>> small_rows_variants() {
  std::vector<std::pair<std::string, SmallRowsFn>> variants;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) {
    variants.emplace_back("avx512", small_rows_avx512);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) variants.emplace_back("avx2", small_rows_avx2);
#endif
  variants.emplace_back("generic", small_rows_generic);
  return variants;
}

void small_rows_linear(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w, const float* bias,
                       int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  static const SmallRowsFn impl = small_rows_variants().front().second;
  impl(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}

}  // namespace moekit::detail
