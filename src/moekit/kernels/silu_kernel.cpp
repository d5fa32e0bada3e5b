// See silu_kernel.h. One body, compiled per instruction set.
#include "moekit/kernels/silu_kernel.h"

#include <cstring>

#include "moekit/kernels/simd.h"

namespace moekit::detail {
namespace {

template <int L, bool Gated>
__attribute__((always_inline)) inline typename Vec<L>::type silu_vec(const float* x, const float* gate) {
  using V = typename Vec<L>::type;
  const V v = load<L>(x);
  V m = -v;
  m = m < 87.0f ? m : V{} + 87.0f;
  m = m > -87.0f ? m : V{} - 87.0f;
  V y = v / (1.0f + exp_clamped<L>(m));
  y = v > -87.0f ? y : V{};  // |silu(x)| < 1e-36 there: 0 (also for -inf)
  if constexpr (Gated) y *= load<L>(gate);
  return y;
}

template <int L, bool Gated>
__attribute__((always_inline)) inline void silu_body(const float* x, const float* gate, float* y, int64_t n) {
  using V = typename Vec<L>::type;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V r = silu_vec<L, Gated>(x + i, gate + (Gated ? i : 0));
    std::memcpy(y + i, &r, sizeof(V));
  }
  if (i < n) {  // the tail through one padded vector
    float xs[L] = {}, gs[L] = {};
    const int64_t rest = n - i;
    std::memcpy(xs, x + i, static_cast<size_t>(rest) * sizeof(float));
    if (Gated) std::memcpy(gs, gate + i, static_cast<size_t>(rest) * sizeof(float));
    const V r = silu_vec<L, Gated>(xs, gs);
    std::memcpy(y + i, &r, static_cast<size_t>(rest) * sizeof(float));
  }
}

template <int L>
__attribute__((always_inline)) inline void silu_dispatch(const float* x, const float* gate, float* y, int64_t n) {
  if (gate != nullptr) {
    silu_body<L, true>(x, gate, y, n);
  } else {
    silu_body<L, false>(x, nullptr, y, n);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void silu_avx512(const float* x, const float* gate, float* y,
                                                                      int64_t n) {
  silu_dispatch<16>(x, gate, y, n);
}
__attribute__((target("avx2,fma"))) void silu_avx2(const float* x, const float* gate, float* y, int64_t n) {
  silu_dispatch<8>(x, gate, y, n);
}
#endif
void silu_generic(const float* x, const float* gate, float* y, int64_t n) { silu_dispatch<4>(x, gate, y, n); }

}  // namespace

std::vector<std::pair<std::string, SiluFn>> silu_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_variants<SiluFn>(silu_avx512, silu_avx2, silu_generic);
#else
  return cpu_variants<SiluFn>(nullptr, nullptr, silu_generic);
#endif
}

void silu(const float* x, const float* gate, float* y, int64_t n) {
  static const SiluFn impl = silu_variants().front().second;
  impl(x, gate, y, n);
}

}  // namespace moekit::detail
