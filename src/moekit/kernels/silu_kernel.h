#pragma once
// SiLU (x * sigmoid(x)) over float arrays, vectorized per instruction set and
// picked at run time (as the panel kernel is). On one core of the Intel VM
// of bench/results/2026-11-26.md ("Weight prefetch, huge pages, SiLU") the AVX-512 variant ran at 3.2 G floats/s
// against ATen 1.13's silu at 1.5 (the generic SSE one at 0.7, so callers
// keep ATen's where only that one exists). apply_activation uses it wherever
// no gradient is recorded: decoding, and the MoE experts' own forward inside
// their autograd function in training.
// Accuracy: within 4 ulp of the exact value (the exponential is Cephes'
// degree-6 polynomial after range reduction), except that x <= -87, where
// |silu(x)| < 1e-35, gives 0; tests compare with a double reference and
// torch::silu.
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moekit::detail {

// y[i] = silu(x[i]) * (gate ? gate[i] : 1) for i < n. y may alias x or gate.
void silu(const float* x, const float* gate, float* y, int64_t n);

// Every variant this CPU can run, fastest first ("avx512", "avx2",
// "generic"); silu uses the first. For tests and benchmarks.
using SiluFn = void (*)(const float*, const float*, float*, int64_t);
std::vector<std::pair<std::string, SiluFn>> silu_variants();

}  // namespace moekit::detail
