// Kernels for few rows against a weight matrix streamed once.
//
// Two forms, both reading each weight once per block of rows:
// - packed (more than four rows): the rows are transposed once per call site
//   into [in, rows rounded up to 8]; for each input k, one vector load holds
//   8 rows' x[., k] and each weight w[o, k] is broadcast into it, so R x O
//   vector accumulators run with no horizontal sums at all. Near the GEMM
//   peak at 8-40 rows (bench/results/2026-11-24.md).
// - dot (one to four rows, or no packed copy): R x O vector accumulators run
//   over the input dimension and are summed horizontally at the end.
// The bodies are compiled per instruction set (GCC vector extensions; AVX-512
// runs the packed form on 8-lane vectors, where it has 32 registers for the
// accumulators and is no slower than 16 lanes on the CPUs measured) and picked at run time by CPU
// feature, not model name, so AMD CPUs get the fast versions too.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "moekit/kernels/simd.h"
#include "moekit/kernels/small_rows_kernel.h"

namespace moekit::detail {
namespace {

// Up to this many rows the dot form runs (faster there: the packed form
// computes at least 8).
constexpr int64_t kDotMaxRows = 4;
constexpr int64_t small_rows_ld(int64_t rows) { return (rows + 7) / 8 * 8; }
// The packed form prefetches the weight rows this many blocks ahead.
constexpr int64_t kPackedPrefetchBlocks = 2;

// How many weight rows ahead to prefetch: the hardware prefetcher alone left
// the kernel at a third of the read bandwidth.
constexpr int64_t kPrefetchRows = 4;

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
__attribute__((always_inline)) inline void dot_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
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

// Packed form. xt holds the rows transposed: xt[k * ld_t + r], ld_t = rows
// rounded up to 8, zero padding. out[r0 + r, o + j] for r < RV * L, j < O.
template <int L, int RV, int O>
__attribute__((always_inline)) inline void packed_micro_kernel(const float* xt, int64_t ld_t, int64_t rows, int64_t r0,
                                                               int64_t in, const float* w, const float* bias, int64_t o,
                                                               float* out, int64_t ld_out) {
  using V = typename Vec<L>::type;
  V acc[RV][O];
  for (int i = 0; i < RV; ++i)
    for (int j = 0; j < O; ++j) acc[i][j] = V{};
  const float* w_rows = w + o * in;
  // Eight weight rows at most: their addresses must stay in general-purpose
  // registers (twelve spilled them and ran at half speed).
  static_assert(O <= 8, "at most 8 weight rows per block");
  for (int64_t k = 0; k < in; ++k) {
    // Each weight row here moves on by one cache line every 16 inputs;
    // fetch the same line of the rows two blocks ahead meanwhile (a burst
    // of prefetches up front streamed from memory 20% slower).
    if ((k & 15) == 0) {
      for (int j = 0; j < O; ++j) __builtin_prefetch(w_rows + (kPackedPrefetchBlocks * O + j) * in + k, 0, 0);
    }
    V xv[RV];
    for (int i = 0; i < RV; ++i) xv[i] = load<L>(xt + k * ld_t + r0 + i * L);
    for (int j = 0; j < O; ++j) {
      const float wk = w_rows[j * in + k];
      for (int i = 0; i < RV; ++i) acc[i][j] += xv[i] * wk;
    }
  }
  float lanes[O][RV * L];
  for (int j = 0; j < O; ++j)
    for (int i = 0; i < RV; ++i) std::memcpy(&lanes[j][i * L], &acc[i][j], sizeof(V));
  const int64_t n = std::min<int64_t>(rows - r0, RV * L);
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < O; ++j) out[(r0 + r) * ld_out + o + j] = lanes[j][r] + (bias != nullptr ? bias[o + j] : 0.f);
  }
}

template <int L, int RV, int O>
__attribute__((always_inline)) inline void packed_row_block(const float* xt, int64_t ld_t, int64_t rows, int64_t r0,
                                                            int64_t in, const float* w, const float* bias,
                                                            int64_t o_begin, int64_t o_end, float* out,
                                                            int64_t ld_out) {
  int64_t o = o_begin;
  for (; o + O <= o_end; o += O) packed_micro_kernel<L, RV, O>(xt, ld_t, rows, r0, in, w, bias, o, out, ld_out);
  for (; o < o_end; ++o) packed_micro_kernel<L, RV, 1>(xt, ld_t, rows, r0, in, w, bias, o, out, ld_out);
}

// Row blocks of 8, 16 (8 lanes) or 24 (Wide: 32 vector registers), whole
// multiples of 8 so that no block reads past the padding: 17-24 rows as one block, 25-32
// as two of 16, more by 24 at a time.
template <int L, bool Wide>
__attribute__((always_inline)) inline void packed_body(const float* xt, int64_t rows, int64_t in, const float* w,
                                                       const float* bias, int64_t o_begin, int64_t o_end, float* out,
                                                       int64_t ld_out) {
  const int64_t ld_t = small_rows_ld(rows);
  for (int64_t r0 = 0; r0 < ld_t;) {
    const int64_t left = ld_t - r0;
    if constexpr (Wide) {
      if (left == 24 || left > 32) {
        packed_row_block<L, 24 / L, 8>(xt, ld_t, rows, r0, in, w, bias, o_begin, o_end, out, ld_out);
        r0 += 24;
        continue;
      }
    }
    if (L == 8 && left >= 16) {
      packed_row_block<L, 16 / L, (Wide ? 8 : 4)>(xt, ld_t, rows, r0, in, w, bias, o_begin, o_end, out, ld_out);
      r0 += 16;
    } else {
      packed_row_block<L, 8 / L, (L == 8 ? 8 : 4)>(xt, ld_t, rows, r0, in, w, bias, o_begin, o_end, out, ld_out);
      r0 += 8;
    }
  }
}

template <int DotLanes, int PackedLanes, bool Wide>
__attribute__((always_inline)) inline void small_rows_body(const float* x, const float* xt, int64_t rows, int64_t ld_x,
                                                           int64_t in, const float* w, const float* bias,
                                                           int64_t o_begin, int64_t o_end, float* out,
                                                           int64_t ld_out) {
  if (xt != nullptr && rows > kDotMaxRows) {
    packed_body<PackedLanes, Wide>(xt, rows, in, w, bias, o_begin, o_end, out, ld_out);
  } else {
    dot_body<DotLanes>(x, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void small_rows_avx512(
    const float* x, const float* xt, int64_t rows, int64_t ld_x, int64_t in, const float* w, const float* bias,
    int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<16, 8, true>(x, xt, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}
__attribute__((target("avx2,fma"))) void small_rows_avx2(const float* x, const float* xt, int64_t rows, int64_t ld_x,
                                                         int64_t in, const float* w, const float* bias, int64_t o_begin,
                                                         int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<8, 8, false>(x, xt, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}
#endif
void small_rows_generic(const float* x, const float* xt, int64_t rows, int64_t ld_x, int64_t in, const float* w,
                        const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  small_rows_body<4, 4, false>(x, xt, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}

// The packing transposes 8 x 8 blocks in registers (a scalar transpose
// cost 10-18% of the kernel time at in = 2048).
using V8 = Vec<8>::type;
__attribute__((always_inline)) inline void transpose8(V8 r[8]) {
  V8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  // u[0..3] hold rows 0-3 of columns {0,4}, {1,5}, {2,6}, {3,7}; u[4..7] rows 4-7.
  for (int c = 0; c < 4; ++c) {
    r[c] = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[c + 4] = __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

__attribute__((always_inline)) inline void pack_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                     float* xt) {
  const int64_t ld_t = small_rows_ld(rows);
  for (int64_t r0 = 0; r0 < ld_t; r0 += 8) {
    const int64_t n = std::min<int64_t>(8, rows - r0);
    int64_t k = 0;
    for (; k + 8 <= in; k += 8) {
      V8 r[8];
      for (int i = 0; i < 8; ++i) r[i] = i < n ? load<8>(x + (r0 + i) * ld_x + k) : V8{};
      transpose8(r);
      for (int c = 0; c < 8; ++c) std::memcpy(xt + (k + c) * ld_t + r0, &r[c], sizeof(V8));
    }
    for (; k < in; ++k) {
      for (int64_t i = 0; i < 8; ++i) xt[k * ld_t + r0 + i] = i < n ? x[(r0 + i) * ld_x + k] : 0.f;
    }
  }
}

using PackFn = void (*)(const float*, int64_t, int64_t, int64_t, float*);
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void pack_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                   float* xt) {
  pack_body(x, rows, ld_x, in, xt);
}
#endif
void pack_generic(const float* x, int64_t rows, int64_t ld_x, int64_t in, float* xt) {
  pack_body(x, rows, ld_x, in, xt);
}
PackFn pack_variant() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return pack_avx2;
#endif
  return pack_generic;
}

}  // namespace

std::vector<std::pair<std::string, SmallRowsFn>> small_rows_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_variants<SmallRowsFn>(small_rows_avx512, small_rows_avx2, small_rows_generic);
#else
  return cpu_variants<SmallRowsFn>(nullptr, nullptr, small_rows_generic);
#endif
}

int64_t small_rows_packed_floats(int64_t rows, int64_t in) {
  return rows > kDotMaxRows ? small_rows_ld(rows) * in : 0;
}

void small_rows_pack(const float* x, int64_t rows, int64_t ld_x, int64_t in, float* xt) {
  if (rows <= kDotMaxRows) return;
  static const PackFn impl = pack_variant();
  impl(x, rows, ld_x, in, xt);
}

void small_rows_linear(const float* x, const float* xt, int64_t rows, int64_t ld_x, int64_t in, const float* w,
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  static const SmallRowsFn impl = small_rows_variants().front().second;
  impl(x, xt, rows, ld_x, in, w, bias, o_begin, o_end, out, ld_out);
}

}  // namespace moekit::detail
