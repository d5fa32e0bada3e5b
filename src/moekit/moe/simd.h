#pragma once
// GCC vector-extension helpers shared by the CPU kernels (small_rows_kernel,
// panel_kernel). Each kernel body is compiled per instruction set with a
// target attribute; these inline into it.
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace moekit::detail {

template <int Lanes>
struct Vec {
  typedef float type __attribute__((vector_size(Lanes * sizeof(float))));
};

// Unaligned vector load (memcpy: no aliasing or alignment assumption).
template <int Lanes>
__attribute__((always_inline)) inline typename Vec<Lanes>::type load(const float* p) {
  typename Vec<Lanes>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// A kernel's variants this CPU can run, fastest first: "avx512" (needs
// AVX-512F and VL), "avx2" (AVX2 and FMA), "generic". avx512 and avx2 may be
// null where they are not compiled (non-x86 builds).
template <class Fn>
std::vector<std::pair<std::string, Fn>> cpu_variants(Fn avx512, Fn avx2, Fn generic) {
  std::vector<std::pair<std::string, Fn>> variants;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (avx512 != nullptr && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) {
    variants.emplace_back("avx512", avx512);
  }
  if (avx2 != nullptr && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    variants.emplace_back("avx2", avx2);
  }
#endif
  variants.emplace_back("generic", generic);
  return variants;
}

}  // namespace moekit::detail
