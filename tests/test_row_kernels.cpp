// The row kernels (kernels/row_kernels.h), every variant, against double-precision
// loops and against torch's LayerNorm and GLU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "moekit/kernels/row_kernels.h"

namespace moekit {
namespace {

std::vector<float> values(int64_t n, float scale, int seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i + seed) + 0.1f * seed) + 0.3f;
  return v;
}

TEST(RowKernels, LayerNormMatchesADoubleLoopOnStridedRowsForEveryWidth) {
  for (const auto& [name, k] : detail::row_kernel_variants()) {
    for (int64_t n : {1, 5, 16, 37, 256, 259}) {
      const int64_t rows = 3, ld_x = n + 5, ld_y = n + 2;
      const std::vector<float> x = values(rows * ld_x, 4.f, static_cast<int>(n));
      const std::vector<float> gamma = values(n, 1.5f, 1), beta = values(n, 0.5f, 2);
      for (bool affine : {true, false}) {
        std::vector<float> y(static_cast<size_t>(rows * ld_y), 777.f);
        k.layer_norm_rows(x.data(), rows, n, ld_x, affine ? gamma.data() : nullptr, affine ? beta.data() : nullptr,
                          1e-5f, y.data(), ld_y);
        for (int64_t r = 0; r < rows; ++r) {
          double mean = 0, var = 0;
          for (int64_t i = 0; i < n; ++i) mean += x[r * ld_x + i];
          mean /= n;
          for (int64_t i = 0; i < n; ++i) var += (x[r * ld_x + i] - mean) * (x[r * ld_x + i] - mean);
          const double rstd = 1.0 / std::sqrt(var / n + 1e-5);
          for (int64_t i = 0; i < n; ++i) {
            double want = (x[r * ld_x + i] - mean) * rstd;
            if (affine) want = want * gamma[i] + beta[i];
            ASSERT_NEAR(y[r * ld_y + i], want, 2e-5) << name << " n=" << n << " row " << r << " col " << i;
          }
          for (int64_t i = n; i < ld_y && r * ld_y + i < static_cast<int64_t>(y.size()); ++i) {
            ASSERT_EQ(y[r * ld_y + i], 777.f) << name << ": wrote past the row";
          }
        }
      }
    }
  }
}

TEST(RowKernels, LayerNormInPlaceEqualsTorch) {
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({16, 256}) * 3 + 1;
  const torch::Tensor gamma = torch::randn({256}), beta = torch::randn({256});
  const torch::Tensor want = torch::layer_norm(x, {256}, gamma, beta, 1e-12);
  for (const auto& [name, k] : detail::row_kernel_variants()) {
    torch::Tensor y = x.clone();
    k.layer_norm_rows(y.data_ptr<float>(), 16, 256, 256, gamma.data_ptr<float>(), beta.data_ptr<float>(), 1e-12f,
                      y.data_ptr<float>(), 256);
    EXPECT_LT((y - want).abs().max().item<float>(), 1e-5) << name;
  }
}

TEST(RowKernels, GluMatchesADoubleLoopAndTorch) {
  for (const auto& [name, k] : detail::row_kernel_variants()) {
    for (int64_t n : {1, 7, 16, 33, 256}) {
      const int64_t rows = 4, ld_x = 2 * n + 3, ld_y = n + 1;
      std::vector<float> x = values(rows * ld_x, 30.f, static_cast<int>(n));
      x[n] = 200.f;   // row 0's first gate: sigmoid saturates at 1
      x[n + 1] = -200.f;  // and at 0
      std::vector<float> y(static_cast<size_t>(rows * ld_y), 777.f);
      k.glu_rows(x.data(), rows, n, ld_x, y.data(), ld_y);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < n; ++i) {
          const double a = x[r * ld_x + i], b = x[r * ld_x + n + i];
          const double want = a / (1.0 + std::exp(-b));
          ASSERT_NEAR(y[r * ld_y + i], want, 1e-6 * (1 + std::fabs(want))) << name << " n=" << n;
        }
        if (r * ld_y + n < static_cast<int64_t>(y.size())) {
          ASSERT_EQ(y[r * ld_y + n], 777.f) << name;
        }
      }
    }
    torch::manual_seed(6);
    const torch::Tensor t = torch::randn({5, 512}) * 4;
    torch::Tensor out = torch::empty({5, 256});
    k.glu_rows(t.data_ptr<float>(), 5, 256, 512, out.data_ptr<float>(), 256);
    EXPECT_LT((out - torch::glu(t, -1)).abs().max().item<float>(), 1e-6) << name;
  }
}

TEST(RowKernels, AddScaledMatchesALoop) {
  for (const auto& [name, k] : detail::row_kernel_variants()) {
    for (int64_t n : {0, 1, 15, 16, 17, 300}) {
      const std::vector<float> x = values(n, 2.f, 3);
      std::vector<float> y = values(n + 1, 1.f, 4), want = y;
      for (int64_t i = 0; i < n; ++i) want[i] += 0.5f * x[i];
      k.add_scaled(x.data(), 0.5f, y.data(), n);
      for (int64_t i = 0; i <= n; ++i) ASSERT_FLOAT_EQ(y[i], want[i]) << name << " n=" << n << " i=" << i;
    }
  }
}

TEST(RowKernels, DepthwiseMatchesADoubleLoop) {
  for (const auto& [name, k] : detail::row_kernel_variants()) {
    for (int64_t n : {3, 16, 37, 256}) {
      const int64_t kernel = 5, t = 6;
      const std::vector<float> x = values((t + kernel - 1) * n, 2.f, 7), w = values(kernel * n, 1.f, 8);
      const std::vector<float> scale = values(n, 1.5f, 9), shift = values(n, 0.5f, 10);
      for (bool affine : {true, false}) {
        std::vector<float> out(static_cast<size_t>(t * n + 1), 777.f);
        k.depthwise_rows(x.data(), t, n, w.data(), kernel, affine ? scale.data() : nullptr,
                         affine ? shift.data() : nullptr, out.data());
        for (int64_t i = 0; i < t; ++i) {
          for (int64_t c = 0; c < n; ++c) {
            double want = 0;
            for (int64_t j = 0; j < kernel; ++j) want += static_cast<double>(w[j * n + c]) * x[(i + j) * n + c];
            if (affine) want = want * scale[c] + shift[c];
            ASSERT_NEAR(out[i * n + c], want, 1e-5 * (1 + std::fabs(want))) << name << " n=" << n;
          }
        }
        ASSERT_EQ(out[t * n], 777.f) << name << ": wrote past the rows";
      }
    }
  }
}

TEST(RowKernels, Conv3x3Stride2ReluEqualsTorch) {
  torch::manual_seed(8);
  for (int64_t cols : {7, 39 * 2 + 2, 80, 83}) {
    const int64_t rows = 11, channels = 5;
    const torch::Tensor x = torch::randn({rows, cols});
    const torch::Tensor w = torch::randn({channels, 1, 3, 3}), bias = torch::randn({channels});
    for (bool with_bias : {true, false}) {
      const torch::Tensor want =
          torch::relu(torch::conv2d(x.view({1, 1, rows, cols}), w, with_bias ? bias : torch::Tensor(), 2))[0];
      for (const auto& [name, k] : detail::row_kernel_variants()) {
        torch::Tensor out = torch::full({want.numel() + 1}, 777.f);
        k.conv3x3s2_relu(x.data_ptr<float>(), rows, cols, w.data_ptr<float>(),
                         with_bias ? bias.data_ptr<float>() : nullptr, channels, out.data_ptr<float>());
        EXPECT_LT((out.narrow(0, 0, want.numel()).view(want.sizes()) - want).abs().max().item<float>(), 1e-5)
            << name << " cols " << cols;
        EXPECT_EQ(out[want.numel()].item<float>(), 777.f) << name << ": wrote past the output";
      }
    }
  }
}

}  // namespace
}  // namespace moekit
