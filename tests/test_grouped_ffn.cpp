// The grouped expert FFN: both CPU kernels against a per-expert loop, the
// custom backward against central finite differences.
#include <gtest/gtest.h>

#include "moe_reference.h"
#include "moekit/core/runtime.h"
#include "moekit/kernels/small_rows_kernel.h"
#include "moekit/ops/grouped_ffn.h"
#include "test_util.h"

namespace moekit {
namespace {

using testing::max_abs_diff;

ExpertWeights random_weights(int64_t E, int64_t D, int64_t H, bool gated, bool bias, torch::Dtype dtype) {
  auto opts = torch::TensorOptions().dtype(dtype);
  ExpertWeights w;
  w.w1 = torch::randn({E, H, D}, opts) * 0.3;
  w.w2 = torch::randn({E, D, H}, opts) * 0.3;
  if (gated) w.w3 = torch::randn({E, H, D}, opts) * 0.3;
  if (bias) {
    w.b1 = torch::randn({E, H}, opts) * 0.1;
    w.b2 = torch::randn({E, D}, opts) * 0.1;
  }
  return w;
}

// Per-expert loop with plain LibTorch ops.
torch::Tensor loop_reference(const torch::Tensor& x, const std::vector<int64_t>& counts, const ExpertWeights& w,
                             Activation act) {
  std::vector<torch::Tensor> parts;
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const torch::Tensor xe = x.narrow(0, row, counts[e]);
    torch::Tensor h1 = xe.matmul(w.w1[e].t());
    if (w.b1.defined()) h1 = h1 + w.b1[e];
    const torch::Tensor h3 = w.w3.defined() ? xe.matmul(w.w3[e].t()) : torch::Tensor();
    torch::Tensor y = testing::reference_activation(act, h1, h3).matmul(w.w2[e].t());
    if (w.b2.defined()) y = y + w.b2[e];
    parts.push_back(y);
    row += counts[e];
  }
  return torch::cat(parts);
}

TEST(GroupedFfn, BothKernelsMatchAPerExpertLoop) {
  // Counts cover empty experts, row counts that are not multiples of 4 and
  // (with Auto) experts split between the two kernels.
  const std::vector<std::vector<int64_t>> count_sets = {{3, 0, 5, 1}, {0, 0, 7, 0}, {1, 1, 1, 1}, {90, 2, 0, 9}};
  for (Activation act : {Activation::Relu, Activation::Gelu, Activation::Swish, Activation::SwiGLU}) {
    for (const auto& counts : count_sets) {
      for (bool bias : {true, false}) {
        torch::manual_seed(11);
        const int64_t D = 20, H = 70;  // H not a multiple of the kernel's tile
        const ExpertWeights w = random_weights(4, D, H, is_gated(act), bias, torch::kFloat32);
        int64_t rows = 0;
        for (int64_t c : counts) rows += c;
        const torch::Tensor x = torch::randn({rows, D});
        const torch::Tensor expected = loop_reference(x, counts, w, act);
        for (int threads : {1, 2}) {  // serial and thread-parallel paths
          set_num_threads(threads);
          // Auto with {90, 2, 0, 9}: a GEMM for the first expert, the
          // small-rows kernel for the others, in one call.
          for (GroupedFfnKernel kernel :
               {GroupedFfnKernel::PerExpertGemm, GroupedFfnKernel::SmallRows, GroupedFfnKernel::Auto}) {
            const torch::Tensor y = grouped_ffn(x, counts, w, {act, kernel});
            EXPECT_LE(max_abs_diff(y, expected), 1e-5) << activation_name(act) << " kernel="
                                                       << static_cast<int>(kernel) << " bias=" << bias
                                                       << " threads=" << threads;
          }
        }
      }
    }
  }
}

TEST(GroupedFfn, AutoPicksSmallRowsPerExpertForFewRows) {
  const torch::Tensor few = torch::zeros({16, 8});
  const torch::Tensor many = torch::zeros({4096, 8});
  const torch::Tensor uneven = torch::zeros({300, 8});
  using Picks = std::vector<bool>;
  // Without panels, few rows take the small-rows kernel unless the BLAS has AVX-512 kernels.
  const bool s = small_rows_beats_blas();
  EXPECT_EQ(grouped_ffn_small_rows_experts(few, {4, 4, 4, 4}, GroupedFfnKernel::Auto), Picks(4, s));
  EXPECT_EQ(grouped_ffn_small_rows_experts(few, {16, 0, 0, 0}, GroupedFfnKernel::Auto), Picks(4, s));
  EXPECT_EQ(grouped_ffn_small_rows_experts(many, {1024, 1024, 1024, 1024}, GroupedFfnKernel::Auto), Picks(4, false));
  // One heavily loaded expert takes a GEMM; the lightly loaded ones do not.
  EXPECT_EQ(grouped_ffn_small_rows_experts(uneven, {280, 10, 0, 10}, GroupedFfnKernel::Auto),
            (Picks{false, s, s, s}));
  EXPECT_EQ(grouped_ffn_small_rows_experts(uneven, {280, 10, 0, 10}, GroupedFfnKernel::SmallRows), Picks(4, true));
  EXPECT_EQ(grouped_ffn_small_rows_experts(few, {4, 4, 4, 4}, GroupedFfnKernel::PerExpertGemm), Picks(4, false));
  EXPECT_EQ(grouped_ffn_small_rows_experts(few.to(torch::kFloat64), {4, 4, 4, 4}, GroupedFfnKernel::Auto),
            Picks(4, false));
  EXPECT_THROW(grouped_ffn_small_rows_experts(few.to(torch::kFloat64), {4, 4, 4, 4}, GroupedFfnKernel::SmallRows),
               std::invalid_argument);
}

// Central differences in float64 on every input of the custom function, with
// the serial and the thread-parallel backward.
TEST(GroupedFfn, BackwardMatchesFiniteDifferences) {
  for (int threads : {1, 2})
  for (Activation act : {Activation::Relu, Activation::Gelu, Activation::Swish, Activation::SwiGLU}) {
    set_num_threads(threads);
    torch::manual_seed(21);
    const std::vector<int64_t> counts = {2, 0, 3};
    const int64_t D = 4, H = 5;
    ExpertWeights w = random_weights(3, D, H, is_gated(act), true, torch::kFloat64);
    torch::Tensor x = torch::randn({5, D}, torch::kFloat64);
    std::vector<torch::Tensor*> inputs = {&x, &w.w1, &w.b1, &w.w2, &w.b2};
    if (w.w3.defined()) inputs.push_back(&w.w3);
    for (torch::Tensor* t : inputs) t->requires_grad_(true);
    const torch::Tensor probe = torch::randn({5, D}, torch::kFloat64);
    auto objective = [&] { return (grouped_ffn(x, counts, w, {act, GroupedFfnKernel::Auto}) * probe).sum(); };

    std::vector<torch::Tensor> vars;
    for (torch::Tensor* t : inputs) vars.push_back(*t);
    const auto grads = torch::autograd::grad({objective()}, vars);
    const double eps = 1e-6;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < inputs.size(); ++i) {
      torch::Tensor flat = inputs[i]->view(-1);
      torch::Tensor numeric = torch::zeros_like(flat);
      for (int64_t j = 0; j < flat.numel(); ++j) {
        const double saved = flat[j].item<double>();
        flat[j] = saved + eps;
        const double plus = objective().item<double>();
        flat[j] = saved - eps;
        const double minus = objective().item<double>();
        flat[j] = saved;
        numeric[j] = (plus - minus) / (2 * eps);
      }
      // ReLU's kink makes finite differences unreliable right at zero; the
      // random inputs keep pre-activations well away from it.
      EXPECT_LE(max_abs_diff(grads[i].view(-1), numeric), 1e-6) << activation_name(act) << " input " << i << " threads " << threads;
    }
  }
}

// Training on the panel kernel (Auto where panels_serve_training says so):
// output and every gradient equal the per-expert BLAS GEMM path (itself
// checked against finite differences above), with idle experts, uneven
// rows and widths that are not whole panels; and the panel path ran.
TEST(GroupedFfn, TrainingOnPanelsEqualsTheGemmPath) {
  if (!panels_serve_training(1 << 20)) {
    GTEST_SKIP() << "training keeps the BLAS here (panels_serve_training is false, BLAS " << openblas_core() << ")";
  }
  for (Activation act : {Activation::Gelu, Activation::SwiGLU}) {
    for (bool bias : {true, false}) {
      for (int threads : {1, 2}) {
        set_num_threads(threads);
        torch::manual_seed(31);
        const std::vector<int64_t> counts = {100, 0, 130, 5};  // 78 rows per active expert on average
        const ExpertWeights w0 = random_weights(4, 40, 70, is_gated(act), bias, torch::kFloat32);
        const torch::Tensor x0 = torch::randn({235, 40});
        const torch::Tensor probe_grad = torch::randn({235, 40});
        auto run = [&](GroupedFfnKernel kernel) {
          ExpertWeights w = w0;
          std::vector<torch::Tensor*> params = {&w.w1, &w.w2, &w.w3, &w.b1, &w.b2};
          for (torch::Tensor* t : params) {
            if (t->defined()) *t = t->clone().requires_grad_(true);
          }
          torch::Tensor x = x0.clone().requires_grad_(true);
          const torch::Tensor y = grouped_ffn(x, counts, w, {act, kernel});
          (y * probe_grad).sum().backward();
          std::vector<torch::Tensor> out = {y.detach(), x.grad()};
          for (torch::Tensor* t : params) out.push_back(t->defined() ? t->grad() : torch::Tensor());
          return out;
        };
        const FastPathProbe probe;
        const auto got = run(GroupedFfnKernel::Auto);
        EXPECT_EQ(probe.ran("grouped_ffn.training_panels"), 1);
        const auto want = run(GroupedFfnKernel::PerExpertGemm);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(got[i].defined(), want[i].defined()) << i;
          if (want[i].defined()) {
            EXPECT_LT(max_abs_diff(got[i], want[i]), 2e-4) << activation_name(act) << " bias " << bias << " threads "
                                                            << threads << " output/grad " << i;
          }
        }
      }
    }
  }
  // Experts with few rows on average keep the BLAS (packing every expert
  // per call would cost more than it saves).
  ExpertWeights w = random_weights(4, 40, 70, false, true, torch::kFloat32);
  w.w1.requires_grad_(true);
  const FastPathProbe probe;
  grouped_ffn(torch::randn({35, 40}), {10, 0, 20, 5}, w, {Activation::Gelu, GroupedFfnKernel::Auto}).sum().backward();
  EXPECT_EQ(probe.ran("grouped_ffn.training_panels"), 0);
}

TEST(GroupedFfn, ExpertsWithoutRowsGetZeroGradient) {
  torch::manual_seed(2);
  ExpertWeights w = random_weights(3, 6, 8, false, true, torch::kFloat32);
  w.w1.requires_grad_(true);
  w.w2.requires_grad_(true);
  const torch::Tensor x = torch::randn({4, 6});
  grouped_ffn(x, {4, 0, 0}, w, {Activation::Swish, GroupedFfnKernel::Auto}).sum().backward();
  EXPECT_EQ(w.w1.grad()[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(w.w2.grad()[2].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(w.w1.grad()[0].abs().sum().item<float>(), 0.0f);
}

// An expert-parallel rank can receive no rows at all in a training step:
// the backward of a gated FFN over zero rows gives zero weight gradients.
TEST(GroupedFfn, BackwardOverNoRowsAtAll) {
  torch::manual_seed(3);
  ExpertWeights w = random_weights(2, 6, 8, true, false, torch::kFloat32);
  for (torch::Tensor* t : {&w.w1, &w.w3, &w.w2}) t->requires_grad_(true);
  const torch::Tensor x = torch::randn({0, 6}, torch::requires_grad());
  const torch::Tensor y = grouped_ffn(x, {0, 0}, w, {Activation::SwiGLU, GroupedFfnKernel::Auto});
  EXPECT_EQ(y.size(0), 0);
  y.sum().backward();
  for (torch::Tensor* t : {&w.w1, &w.w3, &w.w2}) {
    ASSERT_TRUE(t->grad().defined());
    EXPECT_EQ(t->grad().abs().sum().item<float>(), 0.0f);
  }
}

TEST(GroupedFfn, RejectsInconsistentShapes) {
  const ExpertWeights w = random_weights(2, 6, 8, false, true, torch::kFloat32);
  EXPECT_THROW(grouped_ffn(torch::randn({4, 5}), {2, 2}, w, {}), std::invalid_argument);
  EXPECT_THROW(grouped_ffn(torch::randn({4, 6}), {2, 1}, w, {}), std::invalid_argument);
  EXPECT_THROW(grouped_ffn(torch::randn({4, 6}), {2, 2}, w, {Activation::SwiGLU, GroupedFfnKernel::Auto}),
               std::invalid_argument);
}

}  // namespace
}  // namespace moekit

// Each instruction-set variant of the small-rows kernel (not only the one
// this CPU picks), in both forms (dot: x as it is; packed: x transposed by
// small_rows_pack), against a double-precision loop: row counts around the
// blocks of both forms (dot 1-4, packed 8/16/24 with padding), input widths
// around the vector widths, output ranges that start mid-matrix and leave
// remainders, strided rows, with and without bias.
TEST(SmallRowsKernel, EveryVariantEqualsANaiveLoop) {
  torch::manual_seed(3);
  const auto variants = moekit::detail::small_rows_variants();
  ASSERT_FALSE(variants.empty());
  EXPECT_EQ(variants.back().first, "generic");
  for (const auto& [name, kernel] : variants) {
    for (int64_t in : {1, 5, 16, 37, 256}) {
      for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 24, 25, 31, 33, 40, 41}) {
        for (bool packed : {false, true}) {
          for (bool with_bias : {false, true}) {
            const int64_t out_features = 23, o_begin = 2, o_end = 21, ld_x = in + 3, ld_out = out_features + 5;
            const torch::Tensor x = torch::randn({rows, ld_x});
            const torch::Tensor w = torch::randn({out_features, in});
            const torch::Tensor b = torch::randn({out_features});
            std::vector<float> xt(static_cast<size_t>(moekit::detail::small_rows_packed_floats(rows, in)));
            moekit::detail::small_rows_pack(x.data_ptr<float>(), rows, ld_x, in, xt.data());
            ASSERT_EQ(xt.empty(), rows <= 4) << "packed copy for " << rows << " rows";
            torch::Tensor y = torch::full({rows, ld_out}, 7.0f);
            kernel(x.data_ptr<float>(), packed && !xt.empty() ? xt.data() : nullptr, rows, ld_x, in,
                   w.data_ptr<float>(), with_bias ? b.data_ptr<float>() : nullptr, o_begin, o_end,
                   y.data_ptr<float>(), ld_out);
            const auto xa = x.accessor<float, 2>();
            const auto wa = w.accessor<float, 2>();
            const auto ba = b.accessor<float, 1>();
            const auto ya = y.accessor<float, 2>();
            double worst = 0.0;
            for (int64_t i = 0; i < rows; ++i) {
              for (int64_t o = 0; o < ld_out; ++o) {
                if (o < o_begin || o >= o_end) {
                  ASSERT_EQ(ya[i][o], 7.0f) << name << ": wrote outside [o_begin, o_end) at " << i << "," << o;
                  continue;
                }
                double want = with_bias ? ba[o] : 0.0;
                for (int64_t k = 0; k < in; ++k) want += static_cast<double>(xa[i][k]) * wa[o][k];
                worst = std::max(worst, std::abs(want - ya[i][o]));
              }
            }
            EXPECT_LT(worst, 1e-4) << name << " in " << in << " rows " << rows << " packed " << packed << " bias "
                                   << with_bias;
          }
        }
      }
    }
  }
}
