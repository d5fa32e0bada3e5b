// See panel_kernel.h. One body, compiled per instruction set and picked at
// run time by CPU feature (as small_rows_kernel.cpp does).
#include "moekit/moe/panel_kernel.h"

#include <algorithm>
#include <cstring>

#include "moekit/moe/simd.h"

namespace moekit::detail {
namespace {

// R rows against one panel: acc[r][v] holds out[r, v * L .. v * L + L).
template <int L, int R>
__attribute__((always_inline)) inline void panel_micro_kernel(const float* x, int64_t ld_x, int64_t in,
                                                              const float* panel, const float* bias, int64_t cols,
                                                              float* out, int64_t ld_out) {
  constexpr int NV = static_cast<int>(kPanelWidth) / L;
  using V = typename Vec<L>::type;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < in; ++k) {
    const float* wk = panel + k * kPanelWidth;
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load<L>(wk + v * L);
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
template <int L, int R>
__attribute__((always_inline)) inline void panel_rows(int64_t n, const float* x, int64_t ld_x, int64_t in,
                                                      const float* panel, const float* bias, int64_t cols, float* out,
                                                      int64_t ld_out) {
  if constexpr (R > 1) {
    if (n < R) {
      panel_rows<L, R - 1>(n, x, ld_x, in, panel, bias, cols, out, ld_out);
      return;
    }
  }
  panel_micro_kernel<L, R>(x, ld_x, in, panel, bias, cols, out, ld_out);
}

// Rows in near-equal groups of at most MaxRows (the accumulators that fit
// in the vector registers); each group streams the panel once, the first
// from memory, the rest from cache.
template <int L, int MaxRows>
__attribute__((always_inline)) inline void panel_body(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                      const float* panels, const float* bias, int64_t o_begin,
                                                      int64_t o_end, float* out, int64_t ld_out) {
  const int64_t groups = (rows + MaxRows - 1) / MaxRows;
  const int64_t group_rows = groups > 0 ? (rows + groups - 1) / groups : 0;
  for (int64_t o = o_begin; o < o_end; o += kPanelWidth) {
    const float* panel = panels + (o / kPanelWidth) * in * kPanelWidth;
    const int64_t cols = std::min(kPanelWidth, o_end - o);
    const float* b = bias != nullptr ? bias + o : nullptr;
    for (int64_t r = 0; r < rows; r += group_rows) {
      panel_rows<L, MaxRows>(std::min(group_rows, rows - r), x + r * ld_x, ld_x, in, panel, b, cols,
                             out + r * ld_out + o, ld_out);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512: 2 vectors per panel row, 12 rows = 24 accumulators of 32 registers.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void panel_avx512(const float* x, int64_t rows, int64_t ld_x,
                                                                       int64_t in, const float* panels,
                                                                       const float* bias, int64_t o_begin,
                                                                       int64_t o_end, float* out, int64_t ld_out) {
  panel_body<16, 12>(x, rows, ld_x, in, panels, bias, o_begin, o_end, out, ld_out);
}
// AVX2: 4 vectors per panel row, 3 rows = 12 accumulators of 16 registers.
__attribute__((target("avx2,fma"))) void panel_avx2(const float* x, int64_t rows, int64_t ld_x, int64_t in,
                                                    const float* panels, const float* bias, int64_t o_begin,
                                                    int64_t o_end, float* out, int64_t ld_out) {
  panel_body<8, 3>(x, rows, ld_x, in, panels, bias, o_begin, o_end, out, ld_out);
}
#endif
void panel_generic(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* panels, const float* bias,
                   int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  panel_body<4, 1>(x, rows, ld_x, in, panels, bias, o_begin, o_end, out, ld_out);
}

}  // namespace

std::vector<std::pair<std::string, PanelFn>> panel_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_variants<PanelFn>(panel_avx512, panel_avx2, panel_generic);
#else
  return cpu_variants<PanelFn>(nullptr, nullptr, panel_generic);
#endif
}

void panel_linear(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* panels, const float* bias,
                  int64_t o_begin, int64_t o_end, float* out, int64_t ld_out) {
  static const PanelFn impl = panel_variants().front().second;
  impl(x, rows, ld_x, in, panels, bias, o_begin, o_end, out, ld_out);
}

}  // namespace moekit::detail
