#pragma once
// GCC vector-extension helpers shared by the CPU kernels (small_rows_kernel,
// panel_kernel, silu_kernel, attention_kernel). Each kernel body is compiled
// per instruction set with a target attribute; these inline into it.
#include <cstdint>
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

template <int L>
struct IntVec {
  typedef int32_t type __attribute__((vector_size(L * sizeof(int32_t))));
};

// exp(v) for v in [-87, 87] (callers clamp): v = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by Cephes' expf polynomial, 2^n put into the exponent bits.
template <int L>
__attribute__((always_inline)) inline typename Vec<L>::type exp_clamped(typename Vec<L>::type v) {
  using V = typename Vec<L>::type;
  using I = typename IntVec<L>::type;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V t = v * 1.44269504088896341f + magic;
  const V n = t - magic;
  const I ni = (I)t - (I)magic;  // vector casts reinterpret the bits
  V r = v - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const V r2 = r * r;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const I scale_bits = (ni + 127) << 23;
  return p * (V)scale_bits;
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
