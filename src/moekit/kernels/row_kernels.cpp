// See row_kernels.h. One body per function, compiled per instruction set.
#include "moekit/kernels/row_kernels.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "moekit/kernels/simd.h"

namespace moekit::detail {
namespace {

template <int L>
__attribute__((always_inline)) inline float horizontal_sum(typename Vec<L>::type v) {
  float s = 0.f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}

template <int L>
__attribute__((always_inline)) inline void store(float* p, typename Vec<L>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

template <int L>
__attribute__((always_inline)) inline void layer_norm_body(const float* x, int64_t rows, int64_t n, int64_t ld_x,
                                                           const float* gamma, const float* beta, float eps,
                                                           float* y, int64_t ld_y) {
  using V = typename Vec<L>::type;
  const int64_t whole = n / L * L;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    float* yr = y + r * ld_y;
    V acc{};
    for (int64_t i = 0; i < whole; i += L) acc += load<L>(xr + i);
    float sum = horizontal_sum<L>(acc);
    for (int64_t i = whole; i < n; ++i) sum += xr[i];
    const float mean = sum / static_cast<float>(n);
    V sq{};
    for (int64_t i = 0; i < whole; i += L) {
      const V d = load<L>(xr + i) - mean;
      sq += d * d;
    }
    float var = horizontal_sum<L>(sq);
    for (int64_t i = whole; i < n; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < whole; i += L) {
      V v = (load<L>(xr + i) - mean) * rstd;
      if (gamma != nullptr) v *= load<L>(gamma + i);
      if (beta != nullptr) v += load<L>(beta + i);
      store<L>(yr + i, v);
    }
    for (int64_t i = whole; i < n; ++i) {
      yr[i] = (xr[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
    }
  }
}

template <int L>
__attribute__((always_inline)) inline typename Vec<L>::type sigmoid_vec(typename Vec<L>::type b) {
  using V = typename Vec<L>::type;
  V m = -b;
  m = m < 87.0f ? m : V{} + 87.0f;
  m = m > -87.0f ? m : V{} - 87.0f;
  return 1.0f / (1.0f + exp_clamped<L>(m));
}

template <int L>
__attribute__((always_inline)) inline void glu_body(const float* x, int64_t rows, int64_t n, int64_t ld_x, float* y,
                                                    int64_t ld_y) {
  using V = typename Vec<L>::type;
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + r * ld_x;
    const float* b = a + n;
    float* yr = y + r * ld_y;
    int64_t i = 0;
    for (; i + L <= n; i += L) store<L>(yr + i, load<L>(a + i) * sigmoid_vec<L>(load<L>(b + i)));
    if (i < n) {  // the tail through one padded vector
      float as[L] = {}, bs[L] = {};
      const size_t rest = static_cast<size_t>(n - i) * sizeof(float);
      std::memcpy(as, a + i, rest);
      std::memcpy(bs, b + i, rest);
      const V v = load<L>(as) * sigmoid_vec<L>(load<L>(bs));
      std::memcpy(yr + i, &v, rest);
    }
  }
}

template <int L>
__attribute__((always_inline)) inline void add_scaled_body(const float* x, float alpha, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + L <= n; i += L) store<L>(y + i, load<L>(y + i) + alpha * load<L>(x + i));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

template <int L>
__attribute__((always_inline)) inline void depthwise_body(const float* x, int64_t t, int64_t n, const float* w,
                                                          int64_t kernel, const float* scale, const float* shift,
                                                          float* out) {
  using V = typename Vec<L>::type;
  const int64_t whole = n / L * L;
  for (int64_t i = 0; i < t; ++i) {
    float* dst = out + i * n;
    for (int64_t c = 0; c < whole; c += L) {
      V acc{};
      for (int64_t k = 0; k < kernel; ++k) acc += load<L>(w + k * n + c) * load<L>(x + (i + k) * n + c);
      if (scale != nullptr) acc *= load<L>(scale + c);
      if (shift != nullptr) acc += load<L>(shift + c);
      store<L>(dst + c, acc);
    }
    for (int64_t c = whole; c < n; ++c) {
      float acc = 0.f;
      for (int64_t k = 0; k < kernel; ++k) acc += w[k * n + c] * x[(i + k) * n + c];
      if (scale != nullptr) acc *= scale[c];
      if (shift != nullptr) acc += shift[c];
      dst[c] = acc;
    }
  }
}

// Vectorized over output columns j: the input rows split into even and odd
// columns, so x[2i + a, 2j + b] for L consecutive j is one contiguous load
// (b = 0: even[j], b = 1: odd[j], b = 2: even[j + 1]).
template <int L>
__attribute__((always_inline)) inline void conv3x3s2_body(const float* x, int64_t rows, int64_t cols, const float* w,
                                                          const float* bias, int64_t channels, float* out) {
  using V = typename Vec<L>::type;
  const int64_t out_rows = (rows - 1) / 2, out_cols = (cols - 1) / 2;
  if (out_rows <= 0 || out_cols <= 0) return;
  const int64_t vecs = (out_cols + L - 1) / L, width = vecs * L + 1;  // padded half rows
  std::vector<float> even(static_cast<size_t>(rows * width), 0.f), odd(static_cast<size_t>(rows * width), 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t m = 0; 2 * m < cols; ++m) even[r * width + m] = x[r * cols + 2 * m];
    for (int64_t m = 0; 2 * m + 1 < cols; ++m) odd[r * width + m] = x[r * cols + 2 * m + 1];
  }
  const int64_t tail = out_cols - (vecs - 1) * L;
  for (int64_t c = 0; c < channels; ++c) {
    const float* wc = w + c * 9;
    const float b = bias != nullptr ? bias[c] : 0.f;
    for (int64_t i = 0; i < out_rows; ++i) {
      float* dst = out + (c * out_rows + i) * out_cols;
      for (int64_t v = 0; v < vecs; ++v) {
        V acc = V{} + b;
        for (int64_t a = 0; a < 3; ++a) {
          const float* e = even.data() + (2 * i + a) * width + v * L;
          const float* o = odd.data() + (2 * i + a) * width + v * L;
          acc += wc[3 * a] * load<L>(e) + wc[3 * a + 1] * load<L>(o) + wc[3 * a + 2] * load<L>(e + 1);
        }
        acc = acc > 0.f ? acc : V{};
        std::memcpy(dst + v * L, &acc, static_cast<size_t>(v + 1 < vecs ? L : tail) * sizeof(float));
      }
    }
  }
}

#define MOEKIT_ROW_KERNELS(SUFFIX, L, TARGET)                                                                     \
  TARGET void layer_norm_##SUFFIX(const float* x, int64_t rows, int64_t n, int64_t ld_x, const float* gamma,      \
                                  const float* beta, float eps, float* y, int64_t ld_y) {                        \
    layer_norm_body<L>(x, rows, n, ld_x, gamma, beta, eps, y, ld_y);                                             \
  }                                                                                                               \
  TARGET void glu_##SUFFIX(const float* x, int64_t rows, int64_t n, int64_t ld_x, float* y, int64_t ld_y) {      \
    glu_body<L>(x, rows, n, ld_x, y, ld_y);                                                                       \
  }                                                                                                               \
  TARGET void add_scaled_##SUFFIX(const float* x, float alpha, float* y, int64_t n) {                             \
    add_scaled_body<L>(x, alpha, y, n);                                                                           \
  }                                                                                                               \
  TARGET void depthwise_##SUFFIX(const float* x, int64_t t, int64_t n, const float* w, int64_t kernel,            \
                                 const float* scale, const float* shift, float* out) {                            \
    depthwise_body<L>(x, t, n, w, kernel, scale, shift, out);                                                     \
  }                                                                                                               \
  TARGET void conv3x3s2_relu_##SUFFIX(const float* x, int64_t rows, int64_t cols, const float* w,                 \
                                      const float* bias, int64_t channels, float* out) {                          \
    conv3x3s2_body<L>(x, rows, cols, w, bias, channels, out);                                                     \
  }                                                                                                               \
  const RowKernels kRows_##SUFFIX = {layer_norm_##SUFFIX, glu_##SUFFIX, add_scaled_##SUFFIX, depthwise_##SUFFIX,   \
                                     conv3x3s2_relu_##SUFFIX};

#if defined(__x86_64__) && defined(__GNUC__)
MOEKIT_ROW_KERNELS(avx512, 16, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
MOEKIT_ROW_KERNELS(avx2, 8, __attribute__((target("avx2,fma"))))
#endif
MOEKIT_ROW_KERNELS(generic, 4, )
#undef MOEKIT_ROW_KERNELS

const RowKernels& best() {
  static const RowKernels kernels = row_kernel_variants().front().second;
  return kernels;
}

}  // namespace

std::vector<std::pair<std::string, RowKernels>> row_kernel_variants() {
  std::vector<std::pair<std::string, RowKernels>> out;
  // cpu_variants picks by CPU support; the tables follow the names it keeps.
#if defined(__x86_64__) && defined(__GNUC__)
  for (const auto& [name, fn] : cpu_variants<const RowKernels*>(&kRows_avx512, &kRows_avx2, &kRows_generic)) {
    out.emplace_back(name, *fn);
  }
#else
  out.emplace_back("generic", kRows_generic);
#endif
  return out;
}

void layer_norm_rows(const float* x, int64_t rows, int64_t n, int64_t ld_x, const float* gamma, const float* beta,
                     float eps, float* y, int64_t ld_y) {
  best().layer_norm_rows(x, rows, n, ld_x, gamma, beta, eps, y, ld_y);
}

void glu_rows(const float* x, int64_t rows, int64_t n, int64_t ld_x, float* y, int64_t ld_y) {
  best().glu_rows(x, rows, n, ld_x, y, ld_y);
}

void add_scaled(const float* x, float alpha, float* y, int64_t n) { best().add_scaled(x, alpha, y, n); }

void depthwise_rows(const float* x, int64_t t, int64_t n, const float* w, int64_t kernel, const float* scale,
                    const float* shift, float* out) {
  best().depthwise_rows(x, t, n, w, kernel, scale, shift, out);
}

void conv3x3s2_relu(const float* x, int64_t rows, int64_t cols, const float* w, const float* bias, int64_t channels,
                    float* out) {
  best().conv3x3s2_relu(x, rows, cols, w, bias, channels, out);
}

}  // namespace moekit::detail
