#pragma once
// Few rows against a weight matrix streamed once (kernels/small_rows_kernel.cpp
// says how): the MoE experts' kernel where no weight panels are at hand, and
// dense linear maps on a handful of rows.
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moekit {
namespace detail {

// CPU float32 small-rows forward of one linear map on a block of rows:
// out[i, o] = dot(x[i, :], w[o, :]) (+ bias[o]) for i < rows, o in [o_begin, o_end).
// x: [rows, in] with row stride ld_x; w: [out_features, in] contiguous;
// out: row stride ld_out. bias may be null. xt: the rows packed by
// small_rows_pack, made once and shared by every call on the same rows
// (null when small_rows_packed_floats is 0; null also works, slower, for
// more rows).
void small_rows_linear(const float* x, const float* xt, int64_t rows, int64_t ld_x, int64_t in, const float* w,
                       const float* bias, int64_t o_begin, int64_t o_end, float* out, int64_t ld_out);
// Size in floats of the packed copy of `rows` rows of width `in` (0: none needed).
int64_t small_rows_packed_floats(int64_t rows, int64_t in);
// Writes that packed copy (small_rows_packed_floats floats) to xt.
void small_rows_pack(const float* x, int64_t rows, int64_t ld_x, int64_t in, float* xt);

// Every variant of that kernel this CPU can run, fastest first, by
// instruction set ("avx512", "avx2", "generic"); small_rows_linear uses the
// first. For tests, which check each against a reference.
using SmallRowsFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                             int64_t, int64_t, float*, int64_t);
std::vector<std::pair<std::string, SmallRowsFn>> small_rows_variants();

}  // namespace detail
}  // namespace moekit
