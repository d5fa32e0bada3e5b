// The SiLU kernel (kernels/silu_kernel.h) against a double-precision reference,
// every variant, and apply_activation's use of it against torch::silu.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "moekit/kernels/silu_kernel.h"
#include "moekit/ops/activation.h"
#include "test_util.h"

namespace moekit {
namespace {

TEST(SiluKernel, EveryVariantIsWithin4UlpOfExactIncludingTailsAndExtremes) {
  std::vector<float> x;
  for (float v = -110.f; v <= 110.f; v += 0.0137f) x.push_back(v);
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f, 86.9f, -86.9f, 87.f, -87.f, 88.f, -88.f, 200.f, -200.f, 1e30f, -1e30f}) {
    x.push_back(v);
  }
  std::vector<float> gate(x.size());
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = std::sin(static_cast<float>(i)) * 3.f;
  const double eps = std::numeric_limits<float>::epsilon();
  for (const auto& [name, fn] : detail::silu_variants()) {
    // Every length 0..40 exercises the padded tail of every vector width.
    for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{7}, size_t{15}, size_t{17}, size_t{33}, x.size()}) {
      for (bool gated : {false, true}) {
        std::vector<float> y(n + 1, 12345.f);
        fn(x.data(), gated ? gate.data() : nullptr, y.data(), static_cast<int64_t>(n));
        ASSERT_EQ(y[n], 12345.f) << name << ": wrote past n=" << n;
        for (size_t i = 0; i < n; ++i) {
          const double xi = x[i];
          double want = xi / (1.0 + std::exp(-xi));
          if (gated) want *= gate[i];
          // From x = -87 down the result is below 1e-35 and may be 0;
          // compare absolutely there.
          const double tol = 4 * eps * std::fabs(want) + (xi <= -87.0 ? 1e-30 : 1e-37);
          ASSERT_NEAR(y[i], want, tol) << name << " x=" << xi << (gated ? " gated" : "");
        }
      }
    }
  }
}

TEST(SiluKernel, InPlaceOutputIsAllowed) {
  for (const auto& [name, fn] : detail::silu_variants()) {
    std::vector<float> x = {-3.f, -1.f, 0.f,  0.5f, 2.f,  9.f, -0.25f, 1.f, 4.f,
                            -7.f, 3.f,  0.1f, 6.f,  -2.f, 5.f, 8.f,    -9.f};
    const std::vector<float> original = x;
    fn(x.data(), nullptr, x.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_NEAR(x[i], original[i] / (1.0 + std::exp(-static_cast<double>(original[i]))), 1e-6) << name;
    }
  }
}

TEST(SiluKernel, ApplyActivationMatchesTorchWithAndWithoutGradients) {
  torch::manual_seed(3);
  const torch::Tensor h1 = torch::randn({7, 333}) * 6;
  const torch::Tensor h3 = torch::randn({7, 333});
  {
    torch::NoGradGuard no_grad;
    const FastPathProbe probe;
    EXPECT_TRUE(torch::allclose(apply_activation(Activation::Swish, h1, {}), torch::silu(h1), 1e-6, 1e-6));
    EXPECT_TRUE(torch::allclose(apply_activation(Activation::SwiGLU, h1, h3), torch::silu(h1) * h3, 1e-6, 1e-6));
    // Where a SIMD variant exists, both went through the kernel.
    const bool simd = detail::silu_variants().front().first != "generic";
    EXPECT_EQ(probe.ran("activation.silu_kernel"), simd ? 2 : 0);
    // Non-contiguous input: the ATen path, same numbers.
    const torch::Tensor t = h1.t();
    EXPECT_TRUE(torch::allclose(apply_activation(Activation::Swish, t, {}), torch::silu(t), 1e-6, 1e-6));
  }
  // With gradients recorded the result must still carry them.
  const torch::Tensor leaf = h1.clone().requires_grad_(true);
  torch::Tensor y = apply_activation(Activation::Swish, leaf, {});
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  const torch::Tensor s = torch::sigmoid(h1);
  EXPECT_TRUE(torch::allclose(leaf.grad(), s * (1 + h1 * (1 - s)), 1e-5, 1e-5));
}

}  // namespace
}  // namespace moekit
