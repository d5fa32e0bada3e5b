// Dot-product kernel for few rows against a weight matrix streamed once.
// The body is compiled once per instruction set and picked at run time by CPU
// feature (not model name, so AMD CPUs with AVX-512/AVX2 get the fast
// versions too). Micro-kernels keep 4 to 8 independent accumulator chains so
// FMA latency does not cap the read rate.
#include <cstdint>

#include "moekit/moe/grouped_ffn.h"

namespace moekit::detail {
namespace {

// How many weight rows ahead to prefetch.
constexpr int64_t kPrefetchRows = 16;

// Inlined into each ISA-specific wrapper below and compiled with its ISA.
__attribute__((always_inline)) inline void small_rows_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                           const float* w, const float* bias, int64_t o_begin,
                                                           int64_t o_end, float* out, int64_t ld_out) {
  auto b = [bias](int64_t o) { return bias != nullptr ? bias[o] : 0.0f; };
  int64_t i = 0;
  // Four rows x two weight rows: 8 chains.
  for (; i + 4 <= rows; i += 4) {
    const float* x0 = x + (i + 0) * ld_x;
    const float* x1 = x + (i + 1) * ld_x;
    const float* x2 = x + (i + 2) * ld_x;
    const float* x3 = x + (i + 3) * ld_x;
    float* y = out + i * ld_out;
    int64_t o = o_begin;
    for (; o + 2 <= o_end; o += 2) {
      const float* wa = w + o * in;
      const float* wb = wa + in;
      // Stay ahead of DRAM: the hardware prefetcher alone left us at a third
      // of the read bandwidth.
      for (int64_t p = 0; p < 2 * in; p += 16) __builtin_prefetch(wa + kPrefetchRows * in + p, 0, 0);
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
      for (int64_t k = 0; k < in; ++k) {
        const float u = wa[k], v = wb[k];
        a0 += x0[k] * u;
        a1 += x1[k] * u;
        a2 += x2[k] * u;
        a3 += x3[k] * u;
        b0 += x0[k] * v;
        b1 += x1[k] * v;
        b2 += x2[k] * v;
        b3 += x3[k] * v;
      }
      y[0 * ld_out + o] = a0 + b(o), y[1 * ld_out + o] = a1 + b(o);
      y[2 * ld_out + o] = a2 + b(o), y[3 * ld_out + o] = a3 + b(o);
      y[0 * ld_out + o + 1] = b0 + b(o + 1), y[1 * ld_out + o + 1] = b1 + b(o + 1);
      y[2 * ld_out + o + 1] = b2 + b(o + 1), y[3 * ld_out + o + 1] = b3 + b(o + 1);
    }
    for (; o < o_end; ++o) {
      const float* wa = w + o * in;
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < in; ++k) {
        a0 += x0[k] * wa[k];
        a1 += x1[k] * wa[k];
        a2 += x2[k] * wa[k];
        a3 += x3[k] * wa[k];
      }
      y[0 * ld_out + o] = a0 + b(o), y[1 * ld_out + o] = a1 + b(o);
      y[2 * ld_out + o] = a2 + b(o), y[3 * ld_out + o] = a3 + b(o);
    }
  }
  // Remaining rows one at a time x four weight rows: 4 chains.
  for (; i < rows; ++i) {
    const float* xi = x + i * ld_x;
    float* y = out + i * ld_out;
    int64_t o = o_begin;
    for (; o + 4 <= o_end; o += 4) {
      const float* w0 = w + o * in;
      const float* w1 = w0 + in;
      const float* w2 = w1 + in;
      const float* w3 = w2 + in;
      for (int64_t p = 0; p < 4 * in; p += 16) __builtin_prefetch(w0 + kPrefetchRows * in + p, 0, 0);
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = 0; k < in; ++k) {
        s0 += xi[k] * w0[k];
        s1 += xi[k] * w1[k];
        s2 += xi[k] * w2[k];
        s3 += xi[k] * w3[k];
      }
      y[o] = s0 + b(o), y[o + 1] = s1 + b(o + 1), y[o + 2] = s2 + b(o + 2), y[o + 3] = s3 + b(o + 3);
    }
    for (; o < o_end; ++o) {
      const float* wo = w + o * in;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < in; ++k) s += xi[k] * wo[k];
      y[o] = s + b(o);
    }
  }
}

#define MOEKIT_SMALL_ROWS_WRAPPER(name, attributes)                                                  \
  attributes void name(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w,         \
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) { \
    small_rows_body(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);                          \
  }

#if defined(__x86_64__) && defined(__GNUC__)
MOEKIT_SMALL_ROWS_WRAPPER(small_rows_avx512, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
MOEKIT_SMALL_ROWS_WRAPPER(small_rows_avx2, __attribute__((target("avx2,fma"))))
#endif
MOEKIT_SMALL_ROWS_WRAPPER(small_rows_generic, )

using SmallRowsFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, const float*, int64_t, int64_t,
                             float*, int64_t);

SmallRowsFn pick_small_rows() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return small_rows_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return small_rows_avx2;
#endif
  return small_rows_generic;
}

}  // namespace

void small_rows_linear(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w, const float* bias,
                       int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  static const SmallRowsFn impl = pick_small_rows();
  impl(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}

}  // namespace moekit::detail
