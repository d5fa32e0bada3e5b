#pragma once
// int8 weights against float rows, for inference: per-output-channel
// symmetric int8 weights, each row quantized on the fly to 8 bits, products
// summed exactly in int32 (AVX-512 VNNI / AVX-VNNI vpdpbusd: 64 multiply-adds
// per instruction where float32 FMAs do 16), one float scale per row and per
// output channel applied at the end. This is the scheme of PyTorch's
// quantize_dynamic (asymmetric uint8 rows, symmetric int8 weights), with a
// scale and zero point per row instead of one per tensor.
//
//   out[r, o] = x_scale[r] * w_scale[o] * sum_k (xq[r, k] - x_zero[r]) * wq[o, k] + bias[o]
//
// Rows: xq[r, k] = round(x[r, k] / x_scale[r]) + x_zero[r] in [0, 255]
// (uint8: vpdpbusd multiplies unsigned by signed bytes), the scale spreading
// the row's range (widened to include 0, which stays exact) over 255 steps:
// a row of SiLU outputs, nearly all positive, keeps all 8 bits. The kernel
// removes the zero point with each channel's weight sum, so the int32 sums
// are exact.
//
// Weights are packed into panels of kPanelWidth (32) output channels. A
// panel of a weight [out, in] (in4 = in rounded up to a multiple of 4) is
// int8_panel_bytes(in) bytes:
//   [in4 / 4][32][4] int8   weights: 4 consecutive inputs of each output
//                           channel side by side (one int32 lane of vpdpbusd)
//   [32] int32              sum_k wq[o, k] (removes the rows' zero points)
//   [32] float              w_scale[o]
// zero past `out` and past `in`.
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moekit/kernels/panel_kernel.h"

namespace moekit::detail {

// Inputs rounded up to a multiple of 4 (the quantized rows' width too).
inline int64_t int8_padded_inputs(int64_t in) { return (in + 3) / 4 * 4; }
// Bytes of one packed panel of a weight with `in` inputs.
inline int64_t int8_panel_bytes(int64_t in) {
  return int8_padded_inputs(in) * kPanelWidth + kPanelWidth * 8;
}

// Packs w [out, in] int8 (row-major) and its scales [out] into
// ceil(out / kPanelWidth) panels at `panels`.
void pack_int8_panels(const int8_t* w, const float* w_scale, int64_t out, int64_t in, int8_t* panels);

// One quantized row's scale and zero point.
struct RowQuant {
  float scale;
  int32_t zero;
};

// Quantizes rows x [rows, in] (row stride ld_x) to xq [rows, int8_padded_inputs(in)]
// (row stride ld_xq >= that; padding holds the zero point) and their scales
// and zero points. A row of zeros gets scale 0 and zero point 0.
void quantize_rows_u8(const float* x, int64_t rows, int64_t ld_x, int64_t in, uint8_t* xq, int64_t ld_xq,
                      RowQuant* quant);

// out[r, o] as in the file comment for r < rows, o in [o_begin, o_end);
// o_begin a multiple of kPanelWidth; panels: the whole weight's panels.
void int8_panel_linear(const uint8_t* xq, const RowQuant* quant, int64_t rows, int64_t ld_xq, int64_t in,
                       const int8_t* panels, const float* bias, int64_t o_begin, int64_t o_end, float* out,
                       int64_t ld_out);

// Every variant this CPU can run, fastest first ("avx512vnni", "avxvnni",
// "avx2": int16 products by vpmaddwd, for CPUs without VNNI; "generic");
// int8_panel_linear uses the first. All compute the same exact int32 sums.
// For tests and benchmarks.
using Int8PanelFn = void (*)(const uint8_t*, const RowQuant*, int64_t, int64_t, int64_t, const int8_t*, const float*,
                             int64_t, int64_t, float*, int64_t);
std::vector<std::pair<std::string, Int8PanelFn>> int8_panel_variants();

}  // namespace moekit::detail
