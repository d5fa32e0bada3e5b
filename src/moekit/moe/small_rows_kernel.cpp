// Dot-product kernel for few rows against a weight matrix streamed once.
// Compiled with function multiversioning so one binary uses AVX-512 or AVX2
// where the CPU has them and plain SSE2 elsewhere.
#include <cstdint>

#include "moekit/moe/grouped_ffn.h"

namespace moekit::detail {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOEKIT_MULTIVERSION __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define MOEKIT_MULTIVERSION
#endif

MOEKIT_MULTIVERSION
void small_rows_linear(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* w,
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    const float* w_row = w + o * in;
    const float b = bias != nullptr ? bias[o] : 0.0f;
    int64_t i = 0;
    // Four rows share each weight load.
    for (; i + 4 <= rows; i += 4) {
      const float* x0 = x + (i + 0) * ld_x;
      const float* x1 = x + (i + 1) * ld_x;
      const float* x2 = x + (i + 2) * ld_x;
      const float* x3 = x + (i + 3) * ld_x;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = 0; k < in; ++k) {
        const float wk = w_row[k];
        s0 += x0[k] * wk;
        s1 += x1[k] * wk;
        s2 += x2[k] * wk;
        s3 += x3[k] * wk;
      }
      out[(i + 0) * ld_out + o] = s0 + b;
      out[(i + 1) * ld_out + o] = s1 + b;
      out[(i + 2) * ld_out + o] = s2 + b;
      out[(i + 3) * ld_out + o] = s3 + b;
    }
    for (; i < rows; ++i) {
      const float* xi = x + i * ld_x;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < in; ++k) s += xi[k] * w_row[k];
      out[i * ld_out + o] = s + b;
    }
  }
}

}  // namespace moekit::detail
