#pragma once
// The small-rows kernel on weights packed into panels, for inference.
//
// A weight W [out, in] packed into panels (pack_panels, packed_weights.h)
// is [ceil(out / kPanelWidth), in, kPanelWidth]: panel p holds
// W[p * kPanelWidth + j, k] at [p, k, j], zero past `out`. A panel is one
// contiguous stream, so the kernel reads the weights strictly in address
// order (the hardware prefetcher's best case) and, for each input k,
// broadcasts x[r, k] against kPanelWidth weights: no horizontal sums. On the
// machine measured this streamed weights from DRAM at 24-29 GB/s for 1-6
// rows where the unpacked dot form reached 14-19 GB/s at 1-4 rows
// (bench/results/2026-11-24.md, "Weight panels").
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moekit::detail {

constexpr int64_t kPanelWidth = 32;

// out[i, o] = dot(x[i, :], W[o, :]) (+ bias[o]) for i < rows and o in
// [o_begin, o_end). panels: W packed as above (all of it, not from o_begin);
// o_begin must be a multiple of kPanelWidth. x: row stride ld_x; out: row
// stride ld_out; bias: [out] or null.
void panel_linear(const float* x, int64_t rows, int64_t ld_x, int64_t in, const float* panels, const float* bias,
                  int64_t o_begin, int64_t o_end, float* out, int64_t ld_out);

// Every variant this CPU can run, fastest first ("avx512", "avx2"), then
// the same without software prefetch ("avx512-noprefetch", ...), then
// "generic"; panel_linear uses the first. For tests and benchmarks.
using PanelFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, const float*, int64_t, int64_t, float*,
                         int64_t);
std::vector<std::pair<std::string, PanelFn>> panel_variants();

// The same product with the panels in bfloat16 (pack_panels of a bf16
// weight: the same layout, 2-byte elements, each the upper half of a
// float32). The kernel streams half the bytes and widens each weight to
// float32 in registers (exactly), so the sums are panel_linear's on the
// same rounded weights, bit for bit; x, bias and out stay float32.
void panel_linear_bf16(const float* x, int64_t rows, int64_t ld_x, int64_t in, const uint16_t* panels,
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out);
using PanelBf16Fn = void (*)(const float*, int64_t, int64_t, int64_t, const uint16_t*, const float*, int64_t, int64_t,
                             float*, int64_t);
std::vector<std::pair<std::string, PanelBf16Fn>> panel_bf16_variants();

}  // namespace moekit::detail
