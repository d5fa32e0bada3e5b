// See panel_kernel.h. One body, compiled per instruction set and picked at
// run time by CPU feature (as small_rows_kernel.cpp does).
#include "moekit/kernels/panel_kernel.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moekit/kernels/simd.h"

namespace moekit::detail {
namespace {

// How far ahead of its reads the kernel asks for weights (floats; 32 KiB),
// into L2. The hardware prefetcher alone keeps too few lines in flight once
// each 128 bytes of weights carry several rows of FMAs: on the Intel VM of
// bench/results/2026-11-26.md ("Weight prefetch, huge pages, SiLU"; `moekit bench kernels`) streaming 8 rows
// went from 9.2 to 14.0 GB/s with it, 16 rows from 7.5 to 10.6.
#ifndef MOEKIT_PANEL_PREFETCH_FLOATS
#define MOEKIT_PANEL_PREFETCH_FLOATS 8192
#endif
constexpr int64_t kPrefetchFloats = MOEKIT_PANEL_PREFETCH_FLOATS;

// A second, shorter prefetch into L1 (floats ahead; 0 turns it off). The
// L2 prefetch above gets the weights out of memory, but the loads then
// still wait on L2 while the FMAs need them: asking for them a few
// kilobytes ahead into L1 streamed 16 rows 12.5 -> 13.3 GB/s and 8 rows
// 15.2 -> 16.8 on the Intel VM of bench/results/2026-11-26.md ("An L1 prefetch in the panel
// kernel, kept oneDNN weights").
#ifndef MOEKIT_PANEL_L1_PREFETCH_FLOATS
#define MOEKIT_PANEL_L1_PREFETCH_FLOATS 1024
#endif
constexpr int64_t kL1PrefetchFloats = MOEKIT_PANEL_L1_PREFETCH_FLOATS;

// L weights of one panel row as floats: float32 as stored; bfloat16 (the
// upper half of a float32) zero-extended to 32 bits and shifted up, which
// is exact, so a bf16 panel gives the float32 kernel's sums on the same
// rounded weights, bit for bit.
template <int L>
__attribute__((always_inline)) inline typename Vec<L>::type load_weights(const float* p) {
  return load<L>(p);
}
template <int L>
__attribute__((always_inline)) inline typename Vec<L>::type load_weights(const uint16_t* p) {
  typedef uint16_t Half __attribute__((vector_size(L * sizeof(uint16_t))));
  using I = typename IntVec<L>::type;
  Half h;
  std::memcpy(&h, p, sizeof(h));
  return (typename Vec<L>::type)(__builtin_convertvector(h, I) << 16);
}

// Bytes of one panel row, and its 64-byte cache lines.
template <class W>
constexpr int64_t kRowBytes = kPanelWidth * static_cast<int64_t>(sizeof(W));
template <class W>
constexpr int64_t kRowLines = (kRowBytes<W> + 63) / 64;

// Asks for the cache lines of panel row `wk`, `ahead` bytes on (locality:
// 2 into L2, 3 into L1).
template <class W, int Locality>
__attribute__((always_inline)) inline void prefetch_row(const W* wk, int64_t ahead) {
  const char* p = reinterpret_cast<const char*>(wk) + ahead;
  for (int64_t line = 0; line < kRowLines<W>; ++line) __builtin_prefetch(p + line * 64, 0, Locality);
}

// R rows against one panel: acc[r][v] holds out[r, v * L .. v * L + L).
// Prefetch: the panel comes from memory (the first row group), so ask for
// the weights kPrefetchFloats ahead; later groups find it in cache.
template <int L, int R, bool Prefetch, class W>
__attribute__((always_inline)) inline void panel_micro_kernel(const float* x, int64_t ld_x, int64_t in,
                                                              const W* panel, const float* bias, int64_t cols,
                                                              float* out, int64_t ld_out) {
  constexpr int NV = static_cast<int>(kPanelWidth) / L;
  using V = typename Vec<L>::type;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < in; ++k) {
    const W* wk = panel + k * kPanelWidth;
    if constexpr (Prefetch && kPrefetchFloats > 0) prefetch_row<W, 2>(wk, kPrefetchFloats * 4);
    if constexpr (Prefetch && kL1PrefetchFloats > 0) prefetch_row<W, 3>(wk, kL1PrefetchFloats * 4);
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load_weights<L>(wk + v * L);
    for (int r = 0; r < R; ++r) {
      const float xs = x[r * ld_x + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += xs * w[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    float row[kPanelWidth];
    for (int v = 0; v < NV; ++v) std::memcpy(row + v * L, &acc[r][v], sizeof(V));
    float* dst = out + r * ld_out;
    if (bias != nullptr) {
      for (int64_t j = 0; j < cols; ++j) dst[j] = row[j] + bias[j];
    } else {
      std::memcpy(dst, row, static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

// n (1..R) rows: the micro-kernel for exactly n, so no lanes are wasted.
template <int L, int R, bool Prefetch, class W>
__attribute__((always_inline)) inline void panel_rows(int64_t n, const float* x, int64_t ld_x, int64_t in,
                                                      const W* panel, const float* bias, int64_t cols, float* out,
                                                      int64_t ld_out) {
  if constexpr (R > 1) {
    if (n < R) {
      panel_rows<L, R - 1, Prefetch, W>(n, x, ld_x, in, panel, bias, cols, out, ld_out);
      return;
    }
  }
  panel_micro_kernel<L, R, Prefetch, W>(x, ld_x, in, panel, bias, cols, out, ld_out);
}

// Inputs per block when row groups take turns: 16 panel rows, 2 KiB.
constexpr int64_t kBlockInputs = 16;

#ifndef MOEKIT_PANEL_BLOCK_PREFETCH_FLOATS
#define MOEKIT_PANEL_BLOCK_PREFETCH_FLOATS 4096
#endif
constexpr int64_t kBlockPrefetchFloats = MOEKIT_PANEL_BLOCK_PREFETCH_FLOATS;

// Row groups that take turns on one panel: inputs [k0, k1) of R rows, the
// accumulators carried between blocks in acc ([R][kPanelWidth], zeroed by
// the caller). When it prefetches, one line of each panel row
// (pf_line: which of its 64-byte lines; none past the row's last):
// kBlockPrefetchFloats * 4 bytes ahead into L2 and one block ahead into L1.
template <int L, int R, bool Prefetch, class W>
__attribute__((always_inline)) inline void panel_block_kernel(const float* x, int64_t ld_x, int64_t k0, int64_t k1,
                                                              const W* panel, float* acc_io, int64_t pf_line) {
  constexpr int NV = static_cast<int>(kPanelWidth) / L;
  using V = typename Vec<L>::type;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load<L>(acc_io + r * kPanelWidth + v * L);
  for (int64_t k = k0; k < k1; ++k) {
    const W* wk = panel + k * kPanelWidth;
    const char* line = reinterpret_cast<const char*>(wk) + pf_line * 64;
    if constexpr (Prefetch && kBlockPrefetchFloats > 0) {
      if (pf_line < kRowLines<W>) __builtin_prefetch(line + kBlockPrefetchFloats * 4, 0, 2);
    }
    // Into L1: the next block (kBlockInputs panel rows), while this one computes.
    if constexpr (Prefetch && kL1PrefetchFloats > 0) {
      if (pf_line < kRowLines<W>) __builtin_prefetch(line + kBlockInputs * kRowBytes<W>, 0, 3);
    }
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load_weights<L>(wk + v * L);
    for (int r = 0; r < R; ++r) {
      const float xs = x[r * ld_x + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += xs * w[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(acc_io + r * kPanelWidth + v * L, &acc[r][v], sizeof(V));
}

template <int L, int R, bool Prefetch, class W>
__attribute__((always_inline)) inline void panel_block_rows(int64_t n, const float* x, int64_t ld_x, int64_t k0,
                                                            int64_t k1, const W* panel, float* acc_io,
                                                            int64_t pf_line) {
  if constexpr (R > 1) {
    if (n < R) {
      panel_block_rows<L, R - 1, Prefetch, W>(n, x, ld_x, k0, k1, panel, acc_io, pf_line);
      return;
    }
  }
  panel_block_kernel<L, R, Prefetch, W>(x, ld_x, k0, k1, panel, acc_io, pf_line);
}

// Up to this many row groups take turns per block; more stream the panel
// once per group (their arithmetic then hides the memory time anyway).
constexpr int64_t kMaxInterleavedGroups = 3;

// Rows in near-equal groups of at most MaxRows (the accumulators that fit
// in the vector registers).
// - One group streams each panel once, from memory.
// - Up to kMaxInterleavedGroups groups take turns on blocks of
//   kBlockInputs panel rows: the first group's pass brings a block in, the
//   others find it in L1. Running the groups one after the other over the
//   whole panel would leave memory idle while the later groups compute; in
//   turns, each group asks for a share of the lines ahead, so the weights
//   keep streaming (16 rows: 11.2 -> 11.9 GB/s, 13 rows: 11.7 -> 12.9 on the
//   VM of bench/results/2026-11-26.md, "Interleaved row groups, fused attention,
//   leaner MoE evaluation").
// - More groups run one after the other, each over the whole panel.
template <int L, int MaxRows, bool Prefetch = true, class W>
__attribute__((always_inline)) inline void panel_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                      const W* panels, const float* bias, int64_t o_begin,
                                                      int64_t o_end, float* out, int64_t ld_out) {
  const int64_t groups = (rows + MaxRows - 1) / MaxRows;
  const int64_t group_rows = groups > 0 ? (rows + groups - 1) / groups : 0;
  for (int64_t o = o_begin; o < o_end; o += kPanelWidth) {
    const W* panel = panels + (o / kPanelWidth) * in * kPanelWidth;
    const int64_t cols = std::min(kPanelWidth, o_end - o);
    const float* b = bias != nullptr ? bias + o : nullptr;
    if (groups == 1 || groups > kMaxInterleavedGroups) {
      if constexpr (std::is_same_v<W, uint16_t>) {
        if (groups > 1) {
          // Many row groups, each over the whole panel: widen the bf16
          // panel to float32 once (exact) and let every group read that,
          // instead of widening it again per group. With few rows per
          // weight load (AVX2: 3) the widening is a third of the
          // instructions, so a compute-bound bf16 step ran about 1.5x
          // slower than float32 (bench/results/2026-12-05.md, "bf16
          // experts without native bf16"); the sums are the same, bit for
          // bit, as the order of the FMAs does not change.
          thread_local std::vector<float> wide;
          wide.resize(static_cast<size_t>(in * kPanelWidth));
          for (int64_t i = 0; i < in * kPanelWidth; i += L) {
            const auto v = load_weights<L>(panel + i);
            std::memcpy(wide.data() + i, &v, sizeof(v));
          }
          for (int64_t r = 0; r < rows; r += group_rows) {
            const int64_t n = std::min(group_rows, rows - r);
            panel_rows<L, MaxRows, false, float>(n, x + r * ld_x, ld_x, in, wide.data(), b, cols,
                                                 out + r * ld_out + o, ld_out);
          }
          continue;
        }
      }
      for (int64_t r = 0; r < rows; r += group_rows) {
        const int64_t n = std::min(group_rows, rows - r);
        if (r == 0) {
          panel_rows<L, MaxRows, Prefetch, W>(n, x, ld_x, in, panel, b, cols, out + o, ld_out);
        } else {
          panel_rows<L, MaxRows, false, W>(n, x + r * ld_x, ld_x, in, panel, b, cols, out + r * ld_out + o, ld_out);
        }
      }
      continue;
    }
    alignas(64) float acc[kMaxInterleavedGroups * MaxRows * kPanelWidth] = {};
    for (int64_t k0 = 0; k0 < in; k0 += kBlockInputs) {
      const int64_t k1 = std::min(in, k0 + kBlockInputs);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t r = g * group_rows, n = std::min(group_rows, rows - r);
        float* acc_g = acc + g * MaxRows * kPanelWidth;
        // Groups 0 and 1 ask for one line of each panel row each (a bf16
        // row is one line: group 0 alone).
        if (g < 2) {
          panel_block_rows<L, MaxRows, Prefetch, W>(n, x + r * ld_x, ld_x, k0, k1, panel, acc_g, g);
        } else {
          panel_block_rows<L, MaxRows, false, W>(n, x + r * ld_x, ld_x, k0, k1, panel, acc_g, 0);
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = acc + (r / group_rows) * MaxRows * kPanelWidth + (r % group_rows) * kPanelWidth;
      float* dst = out + r * ld_out + o;
      if (b != nullptr) {
        for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] + b[j];
      } else {
        std::memcpy(dst, src, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
}

// One set of entry points per weight type W (float, bf16 as uint16_t):
// the variants compiled per instruction set, and the dispatch to the best.
#define MOEKIT_PANEL_ARGS(W)                                                                                        \
  const float *x, int64_t rows, int64_t ld_x, int64_t in, const W *panels, const float *bias, int64_t o_begin, \
      int64_t o_end, float *out, int64_t ld_out
#define MOEKIT_PANEL_CALL x, rows, ld_x, in, panels, bias, o_begin, o_end, out, ld_out

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512: 2 vectors per panel row, 12 rows = 24 accumulators of 32 registers.
// AVX2: 4 vectors per panel row, 3 rows = 12 accumulators of 16 registers.
// The "-noprefetch" forms, without software prefetch, are for `moekit bench
// kernels` and the tests.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void panel_avx512(MOEKIT_PANEL_ARGS(float)) {
  panel_body<16, 12>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx2,fma"))) void panel_avx2(MOEKIT_PANEL_ARGS(float)) { panel_body<8, 3>(MOEKIT_PANEL_CALL); }
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void panel_avx512_noprefetch(MOEKIT_PANEL_ARGS(float)) {
  panel_body<16, 12, false>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx2,fma"))) void panel_avx2_noprefetch(MOEKIT_PANEL_ARGS(float)) {
  panel_body<8, 3, false>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void panel_bf16_avx512(MOEKIT_PANEL_ARGS(uint16_t)) {
  panel_body<16, 12>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx2,fma"))) void panel_bf16_avx2(MOEKIT_PANEL_ARGS(uint16_t)) {
  panel_body<8, 3>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void panel_bf16_avx512_noprefetch(
    MOEKIT_PANEL_ARGS(uint16_t)) {
  panel_body<16, 12, false>(MOEKIT_PANEL_CALL);
}
__attribute__((target("avx2,fma"))) void panel_bf16_avx2_noprefetch(MOEKIT_PANEL_ARGS(uint16_t)) {
  panel_body<8, 3, false>(MOEKIT_PANEL_CALL);
}
#endif
void panel_generic(MOEKIT_PANEL_ARGS(float)) { panel_body<4, 1>(MOEKIT_PANEL_CALL); }
void panel_bf16_generic(MOEKIT_PANEL_ARGS(uint16_t)) { panel_body<4, 1>(MOEKIT_PANEL_CALL); }

// The variants this CPU runs, each SIMD one also without prefetch, then generic.
template <class Fn>
std::vector<std::pair<std::string, Fn>> with_noprefetch(std::vector<std::pair<std::string, Fn>> variants,
                                                        Fn avx512_noprefetch, Fn avx2_noprefetch) {
  const auto generic = variants.back();
  variants.pop_back();
  const size_t simd = variants.size();
  for (size_t i = 0; i < simd; ++i) {
    variants.emplace_back(variants[i].first + "-noprefetch",
                          variants[i].first == "avx512" ? avx512_noprefetch : avx2_noprefetch);
  }
  variants.push_back(generic);
  return variants;
}

}  // namespace

std::vector<std::pair<std::string, PanelFn>> panel_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return with_noprefetch(cpu_variants<PanelFn>(panel_avx512, panel_avx2, panel_generic), panel_avx512_noprefetch,
                         panel_avx2_noprefetch);
#else
  return cpu_variants<PanelFn>(nullptr, nullptr, panel_generic);
#endif
}

std::vector<std::pair<std::string, PanelBf16Fn>> panel_bf16_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return with_noprefetch(cpu_variants<PanelBf16Fn>(panel_bf16_avx512, panel_bf16_avx2, panel_bf16_generic),
                         panel_bf16_avx512_noprefetch, panel_bf16_avx2_noprefetch);
#else
  return cpu_variants<PanelBf16Fn>(nullptr, nullptr, panel_bf16_generic);
#endif
}

void panel_linear(MOEKIT_PANEL_ARGS(float)) {
  static const PanelFn impl = panel_variants().front().second;
  impl(MOEKIT_PANEL_CALL);
}

void panel_linear_bf16(MOEKIT_PANEL_ARGS(uint16_t)) {
  static const PanelBf16Fn impl = panel_bf16_variants().front().second;
  impl(MOEKIT_PANEL_CALL);
}

}  // namespace moekit::detail
