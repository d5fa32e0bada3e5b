#pragma once
// SiLU (x * sigmoid(x)) over float arrays, vectorized per instruction set and
// picked at run time (as the panel kernel is). ATen 1.13's CPU silu ran at
// about 1.2 G floats/s on one core of the machines measured, a twentieth of
// this (bench/README.md, "SiLU"); every swish FFN and convolution module pays
// it. Accuracy: within 4 ulp of the exact value (the exponential is Cephes'
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
