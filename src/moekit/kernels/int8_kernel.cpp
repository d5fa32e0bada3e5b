// See int8_kernel.h. The VNNI bodies use intrinsics (vpdpbusd has no GCC
// vector-extension form); each is compiled for its instruction set and
// picked at run time by CPU feature.
#include "moekit/kernels/int8_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "moekit/kernels/simd.h"

namespace moekit::detail {
namespace {

constexpr int64_t kW = kPanelWidth;  // output channels per panel
// Bytes of weights per 4 inputs of a panel.
constexpr int64_t kGroupBytes = 4 * kW;

// Where a panel's footer (the bias sums, then the scales) starts.
inline const int32_t* panel_sums(const int8_t* panel, int64_t in4) {
  return reinterpret_cast<const int32_t*>(panel + in4 * kW);
}
inline const float* panel_scales(const int8_t* panel, int64_t in4) {
  return reinterpret_cast<const float*>(panel + in4 * kW + kW * 4);
}

// out[r, o_begin + j] for j < cols from the exact sums of one row.
inline void finish_row(const int32_t* sums, const int32_t* w_sums, const float* w_scale, RowQuant q,
                       const float* bias, int64_t cols, float* dst) {
  for (int64_t j = 0; j < cols; ++j) {
    const float v = static_cast<float>(sums[j] - q.zero * w_sums[j]) * (q.scale * w_scale[j]);
    dst[j] = bias != nullptr ? v + bias[j] : v;
  }
}

// Scalar: the reference every SIMD variant must equal.
void int8_generic(const uint8_t* xq, const RowQuant* quant, int64_t rows, int64_t ld_xq, int64_t in,
                  const int8_t* panels, const float* bias, int64_t o_begin, int64_t o_end, float* out,
                  int64_t ld_out) {
  const int64_t in4 = int8_padded_inputs(in), panel_bytes = int8_panel_bytes(in);
  for (int64_t o = o_begin; o < o_end; o += kW) {
    const int8_t* panel = panels + (o / kW) * panel_bytes;
    const int64_t cols = std::min(kW, o_end - o);
    for (int64_t r = 0; r < rows; ++r) {
      int32_t sums[kW] = {};
      const uint8_t* x = xq + r * ld_xq;
      for (int64_t g = 0; g < in4 / 4; ++g) {
        const int8_t* w = panel + g * kGroupBytes;
        for (int64_t j = 0; j < kW; ++j)
          for (int t = 0; t < 4; ++t) sums[j] += static_cast<int32_t>(x[g * 4 + t]) * w[j * 4 + t];
      }
      finish_row(sums, panel_sums(panel, in4), panel_scales(panel, in4), quant[r], bias ? bias + o : nullptr,
                 cols, out + r * ld_out + o);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)

// How far ahead the first row group asks for weights (bytes; 16 KiB, as the
// float panels' 32 KiB hold the same number of weights twice over).
constexpr int64_t kPrefetchBytes = 16384;

#define MOEKIT_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) inline
#define MOEKIT_AVXVNNI __attribute__((target("avx2,avxvnni"), always_inline)) inline

// R rows against one panel, 2 x 16 int32 lanes each: acc[r][v] holds the
// sums of outputs v * 16 .. v * 16 + 15.
template <int R, bool Prefetch>
MOEKIT_AVX512VNNI void vnni512_rows(const uint8_t* xq, int64_t ld_xq, int64_t in4, const int8_t* panel,
                                    int32_t* sums) {
  __m512i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  for (int64_t g = 0; g < in4 / 4; ++g) {
    const int8_t* w = panel + g * kGroupBytes;
    if constexpr (Prefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes + 64), _MM_HINT_T1);
    }
    const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
    for (int r = 0; r < R; ++r) {
      int32_t x4;
      std::memcpy(&x4, xq + r * ld_xq + g * 4, 4);
      const __m512i xb = _mm512_set1_epi32(x4);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xb, w0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xb, w1);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_si512(sums + r * kW, acc[r][0]);
    _mm512_storeu_si512(sums + r * kW + 16, acc[r][1]);
  }
}

// One row: two pairs of accumulators on alternate input groups, so the
// vpdpbusd chains overlap (two chains left it waiting on their latency:
// 31 against 40 G weights/s at 1 row, `moekit bench kernels`).
template <bool Prefetch>
MOEKIT_AVX512VNNI void vnni512_one_row(const uint8_t* xq, int64_t in4, const int8_t* panel, int32_t* sums) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, b0 = a0, b1 = a0;
  const int64_t groups = in4 / 4;
  int64_t g = 0;
  for (; g + 1 < groups; g += 2) {
    const int8_t* w = panel + g * kGroupBytes;
    if constexpr (Prefetch) {
      for (int line = 0; line < 4; ++line) {
        _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes + line * 64), _MM_HINT_T1);
      }
    }
    int32_t x4, y4;
    std::memcpy(&x4, xq + g * 4, 4);
    std::memcpy(&y4, xq + g * 4 + 4, 4);
    const __m512i xb = _mm512_set1_epi32(x4), yb = _mm512_set1_epi32(y4);
    a0 = _mm512_dpbusd_epi32(a0, xb, _mm512_loadu_si512(w));
    a1 = _mm512_dpbusd_epi32(a1, xb, _mm512_loadu_si512(w + 64));
    b0 = _mm512_dpbusd_epi32(b0, yb, _mm512_loadu_si512(w + 128));
    b1 = _mm512_dpbusd_epi32(b1, yb, _mm512_loadu_si512(w + 192));
  }
  if (g < groups) {
    const int8_t* w = panel + g * kGroupBytes;
    int32_t x4;
    std::memcpy(&x4, xq + g * 4, 4);
    const __m512i xb = _mm512_set1_epi32(x4);
    a0 = _mm512_dpbusd_epi32(a0, xb, _mm512_loadu_si512(w));
    a1 = _mm512_dpbusd_epi32(a1, xb, _mm512_loadu_si512(w + 64));
  }
  _mm512_storeu_si512(sums, _mm512_add_epi32(a0, b0));
  _mm512_storeu_si512(sums + 16, _mm512_add_epi32(a1, b1));
}

template <int R, bool Prefetch>
MOEKIT_AVX512VNNI void vnni512_dispatch(int64_t n, const uint8_t* xq, int64_t ld_xq, int64_t in4,
                                        const int8_t* panel, int32_t* sums) {
  if constexpr (R > 1) {
    if (n < R) return vnni512_dispatch<R - 1, Prefetch>(n, xq, ld_xq, in4, panel, sums);
  } else {
    return vnni512_one_row<Prefetch>(xq, in4, panel, sums);
  }
  vnni512_rows<R, Prefetch>(xq, ld_xq, in4, panel, sums);
}

// AVX-VNNI: 4 x 8 lanes per row, 2 rows = 8 accumulators, 4 weight vectors.
template <int R, bool Prefetch>
MOEKIT_AVXVNNI void vnni256_rows(const uint8_t* xq, int64_t ld_xq, int64_t in4, const int8_t* panel,
                                 int32_t* sums) {
  __m256i acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_si256();
  for (int64_t g = 0; g < in4 / 4; ++g) {
    const int8_t* w = panel + g * kGroupBytes;
    if constexpr (Prefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes + 64), _MM_HINT_T1);
    }
    __m256i wv[4];
    for (int v = 0; v < 4; ++v) wv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * 32));
    for (int r = 0; r < R; ++r) {
      int32_t x4;
      std::memcpy(&x4, xq + r * ld_xq + g * 4, 4);
      const __m256i xb = _mm256_set1_epi32(x4);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_dpbusd_avx_epi32(acc[r][v], xb, wv[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + r * kW + v * 8), acc[r][v]);
}

template <int R, bool Prefetch>
MOEKIT_AVXVNNI void vnni256_dispatch(int64_t n, const uint8_t* xq, int64_t ld_xq, int64_t in4, const int8_t* panel,
                                     int32_t* sums) {
  if constexpr (R > 1) {
    if (n < R) return vnni256_dispatch<R - 1, Prefetch>(n, xq, ld_xq, in4, panel, sums);
  }
  vnni256_rows<R, Prefetch>(xq, ld_xq, in4, panel, sums);
}

#define MOEKIT_AVX2_INT8 __attribute__((target("avx2,fma"), always_inline)) inline

// AVX2 without VNNI: weights widened to int16 in registers, products summed
// by vpmaddwd (pairs of int16 products into int32, exact: no saturation as
// vpmaddubsw would have). A quarter of the panel (8 channels) at a time,
// so R rows x 2 accumulators fit in the 16 registers; the lanes hold
// (channel, input pair) sums that the end adds pairwise.
template <int R, bool Prefetch>
MOEKIT_AVX2_INT8 void avx2_rows(const uint8_t* xq, int64_t ld_xq, int64_t in4, const int8_t* panel, int32_t* sums) {
  alignas(32) int32_t lanes[R][4 * 16];
  for (int q = 0; q < 4; ++q) {
    __m256i acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t g = 0; g < in4 / 4; ++g) {
      const int8_t* w = panel + g * kGroupBytes + q * 32;
      if constexpr (Prefetch) {
        if (q == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes + 64), _MM_HINT_T1);
        }
      }
      // Channels 0-3 and 4-7 of this quarter, 4 inputs each, as int16.
      const __m256i wa = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
      const __m256i wb = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
      for (int r = 0; r < R; ++r) {
        int32_t x4;
        std::memcpy(&x4, xq + r * ld_xq + g * 4, 4);
        const __m256i xb = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(x4)));
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(wa, xb));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(wb, xb));
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[r] + q * 16), acc[r][0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[r] + q * 16 + 8), acc[r][1]);
    }
  }
  // Lane 2c and 2c + 1 of a quarter hold channel c's two input pairs.
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < kW; ++o) sums[r * kW + o] = lanes[r][2 * o] + lanes[r][2 * o + 1];
}

template <int R, bool Prefetch>
MOEKIT_AVX2_INT8 void avx2_dispatch(int64_t n, const uint8_t* xq, int64_t ld_xq, int64_t in4, const int8_t* panel,
                                    int32_t* sums) {
  if constexpr (R > 1) {
    if (n < R) return avx2_dispatch<R - 1, Prefetch>(n, xq, ld_xq, in4, panel, sums);
  }
  avx2_rows<R, Prefetch>(xq, ld_xq, in4, panel, sums);
}

// Rows in groups of MaxRows per pass over a panel (the accumulators that
// fit in the vector registers), then each group's rows finished.
#define MOEKIT_INT8_BODY(DISPATCH, MAX_ROWS)                                                          \
  const int64_t in4 = int8_padded_inputs(in), panel_bytes = int8_panel_bytes(in);                    \
  alignas(64) int32_t sums[(MAX_ROWS) * kW];                                                          \
  for (int64_t o = o_begin; o < o_end; o += kW) {                                                     \
    const int8_t* panel = panels + (o / kW) * panel_bytes;                                            \
    const int64_t cols = std::min(kW, o_end - o);                                                     \
    for (int64_t r0 = 0; r0 < rows; r0 += (MAX_ROWS)) {                                               \
      const int64_t n = std::min<int64_t>((MAX_ROWS), rows - r0);                                     \
      if (r0 == 0) {                                                                                  \
        DISPATCH<MAX_ROWS, true>(n, xq, ld_xq, in4, panel, sums);                                     \
      } else {                                                                                        \
        DISPATCH<MAX_ROWS, false>(n, xq + r0 * ld_xq, ld_xq, in4, panel, sums);                       \
      }                                                                                               \
      for (int64_t r = 0; r < n; ++r) {                                                               \
        finish_row(sums + r * kW, panel_sums(panel, in4), panel_scales(panel, in4), quant[r0 + r],     \
                   bias ? bias + o : nullptr, cols, out + (r0 + r) * ld_out + o);                     \
      }                                                                                               \
    }                                                                                                 \
  }

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int8_avx512vnni(
    const uint8_t* xq, const RowQuant* quant, int64_t rows, int64_t ld_xq, int64_t in, const int8_t* panels,
    const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  MOEKIT_INT8_BODY(vnni512_dispatch, 12)
}

__attribute__((target("avx2,avxvnni"))) void int8_avxvnni(const uint8_t* xq, const RowQuant* quant, int64_t rows,
                                                          int64_t ld_xq, int64_t in, const int8_t* panels,
                                                          const float* bias, int64_t o_begin, int64_t o_end,
                                                          float* out, int64_t ld_out) {
  MOEKIT_INT8_BODY(vnni256_dispatch, 2)
}

__attribute__((target("avx2,fma"))) void int8_avx2(const uint8_t* xq, const RowQuant* quant, int64_t rows,
                                                   int64_t ld_xq, int64_t in, const int8_t* panels,
                                                   const float* bias, int64_t o_begin, int64_t o_end, float* out,
                                                   int64_t ld_out) {
  MOEKIT_INT8_BODY(avx2_dispatch, 6)
}

#undef MOEKIT_INT8_BODY
#endif

}  // namespace

void pack_int8_panels(const int8_t* w, const float* w_scale, int64_t out, int64_t in, int8_t* panels) {
  const int64_t in4 = int8_padded_inputs(in), panel_bytes = int8_panel_bytes(in);
  for (int64_t p = 0; p * kW < out; ++p) {
    int8_t* panel = panels + p * panel_bytes;
    std::memset(panel, 0, static_cast<size_t>(panel_bytes));
    int32_t w_sums[kW] = {};
    float scales[kW] = {};
    for (int64_t j = 0; j < kW && p * kW + j < out; ++j) {
      const int8_t* row = w + (p * kW + j) * in;
      int32_t sum = 0;
      for (int64_t k = 0; k < in; ++k) {
        panel[(k / 4) * kGroupBytes + j * 4 + k % 4] = row[k];
        sum += row[k];
      }
      w_sums[j] = sum;
      scales[j] = w_scale[p * kW + j];
    }
    std::memcpy(panel + in4 * kW, w_sums, sizeof(w_sums));
    std::memcpy(panel + in4 * kW + kW * 4, scales, sizeof(scales));
  }
}

namespace {

// quantize_rows_u8 in vectors of L floats: the row's range (with 0), then
// x / scale rounded to nearest even by the 1.5 * 2^23 trick (exact for
// |v| <= 2^22; here |v| <= 255), shifted by the zero point, clamped to
// [0, 255] and narrowed to bytes.
template <int L>
__attribute__((always_inline)) inline void quantize_rows_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                              uint8_t* xq, int64_t ld_xq, RowQuant* quant) {
  using V = typename Vec<L>::type;
  using I = typename IntVec<L>::type;
  typedef uint8_t B __attribute__((vector_size(L)));
  const int64_t in4 = int8_padded_inputs(in), vec_end = in / L * L;
  const V magic = V{} + 12582912.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * ld_x;
    uint8_t* dst = xq + r * ld_xq;
    V lo_v = V{}, hi_v = V{};
    for (int64_t k = 0; k < vec_end; k += L) {
      const V v = load<L>(src + k);
      lo_v = lo_v < v ? lo_v : v;
      hi_v = hi_v > v ? hi_v : v;
    }
    float lo = 0.0f, hi = 0.0f;
    for (int l = 0; l < L; ++l) {
      lo = std::min(lo, lo_v[l]);
      hi = std::max(hi, hi_v[l]);
    }
    for (int64_t k = vec_end; k < in; ++k) {
      lo = std::min(lo, src[k]);
      hi = std::max(hi, src[k]);
    }
    const float scale = (hi - lo) / 255.0f;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    const int32_t zero = scale > 0.0f ? std::min(255, std::max(0, static_cast<int32_t>(std::nearbyint(-lo * inv)))) : 0;
    for (int64_t k = 0; k < vec_end; k += L) {
      const V q = (load<L>(src + k) * inv + magic) - magic;
      I qi = __builtin_convertvector(q, I) + zero;
      qi = qi < 0 ? I{} : qi;
      qi = qi > 255 ? I{} + 255 : qi;
      const B b = __builtin_convertvector(qi, B);
      std::memcpy(dst + k, &b, sizeof(B));
    }
    for (int64_t k = vec_end; k < in; ++k) {
      const int32_t q = static_cast<int32_t>(std::nearbyint(src[k] * inv)) + zero;
      dst[k] = static_cast<uint8_t>(std::min(255, std::max(0, q)));
    }
    for (int64_t k = in; k < in4; ++k) dst[k] = static_cast<uint8_t>(zero);
    quant[r] = {scale, zero};
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void quantize_rows_avx512(
    const float* x, int64_t rows, int64_t ld_x, int64_t in, uint8_t* xq, int64_t ld_xq, RowQuant* quant) {
  quantize_rows_body<16>(x, rows, ld_x, in, xq, ld_xq, quant);
}
__attribute__((target("avx2,fma"))) void quantize_rows_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                            uint8_t* xq, int64_t ld_xq, RowQuant* quant) {
  quantize_rows_body<8>(x, rows, ld_x, in, xq, ld_xq, quant);
}
#endif
void quantize_rows_generic(const float* x, int64_t rows, int64_t ld_x, int64_t in, uint8_t* xq, int64_t ld_xq,
                           RowQuant* quant) {
  quantize_rows_body<4>(x, rows, ld_x, in, xq, ld_xq, quant);
}

using QuantizeRowsFn = void (*)(const float*, int64_t, int64_t, int64_t, uint8_t*, int64_t, RowQuant*);

}  // namespace

void quantize_rows_u8(const float* x, int64_t rows, int64_t ld_x, int64_t in, uint8_t* xq, int64_t ld_xq,
                      RowQuant* quant) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const QuantizeRowsFn impl =
      cpu_variants<QuantizeRowsFn>(quantize_rows_avx512, quantize_rows_avx2, quantize_rows_generic).front().second;
#else
  static const QuantizeRowsFn impl = quantize_rows_generic;
#endif
  impl(x, rows, ld_x, in, xq, ld_xq, quant);
}

std::vector<std::pair<std::string, Int8PanelFn>> int8_panel_variants() {
  std::vector<std::pair<std::string, Int8PanelFn>> variants;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
    variants.emplace_back("avx512vnni", int8_avx512vnni);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni")) {
    variants.emplace_back("avxvnni", int8_avxvnni);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) variants.emplace_back("avx2", int8_avx2);
#endif
  variants.emplace_back("generic", int8_generic);
  return variants;
}

void int8_panel_linear(const uint8_t* xq, const RowQuant* quant, int64_t rows, int64_t ld_xq, int64_t in,
                       const int8_t* panels, const float* bias, int64_t o_begin, int64_t o_end, float* out,
                       int64_t ld_out) {
  static const Int8PanelFn impl = int8_panel_variants().front().second;
  impl(xq, quant, rows, ld_xq, in, panels, bias, o_begin, o_end, out, ld_out);
}

}  // namespace moekit::detail
