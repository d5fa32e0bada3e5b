#pragma once
// GCC vector-extension helpers shared by the CPU kernels (small_rows_kernel,
// panel_kernel). Each kernel body is compiled per instruction set with a
// target attribute; these inline into it.
#include <cstring>

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

}  // namespace moekit::detail
