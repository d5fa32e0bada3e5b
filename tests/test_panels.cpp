// Weight panels (kernels/panel_kernel.h, ops/packed_weights.h): the kernel in
// every instruction-set variant against a naive loop, the packing layout,
// the cache's invalidation, and the MoE forward with and without panels.
#include <gtest/gtest.h>

#include <tuple>

#include "moe_reference.h"
#include "moekit/core/runtime.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/ops/grouped_ffn.h"
#include "moekit/ops/linear.h"
#include "moekit/ops/packed_weights.h"
#include "test_util.h"

namespace moekit {
namespace {

using detail::kPanelWidth;
using testing::max_abs_diff;

TEST(PackPanels, LayoutIsPanelInputLaneWithZeroPadding) {
  const torch::Tensor w = torch::randn({3, 70, 5});  // 70 = 2 whole panels + 6 rows
  const torch::Tensor p = pack_panels(w);
  ASSERT_EQ(p.sizes(), torch::IntArrayRef({3, 3, 5, kPanelWidth}));
  ASSERT_TRUE(p.is_contiguous());
  const auto wa = w.accessor<float, 3>();
  const auto pa = p.accessor<float, 4>();
  for (int64_t e = 0; e < 3; ++e)
    for (int64_t o = 0; o < 3 * kPanelWidth; ++o)
      for (int64_t k = 0; k < 5; ++k) {
        const float want = o < 70 ? wa[e][o][k] : 0.f;
        ASSERT_EQ(pa[e][o / kPanelWidth][k][o % kPanelWidth], want) << e << "," << o << "," << k;
      }
  EXPECT_EQ(pack_panels(torch::randn({64, 7})).sizes(), torch::IntArrayRef({2, 7, kPanelWidth}));
  // bfloat16 keeps its bits; a transposed (non-contiguous) weight packs as
  // its contiguous copy; a weight with no rows packs empty.
  const torch::Tensor wb = torch::randn({2, 45, 130}).to(torch::kBFloat16);
  const torch::Tensor wt = torch::randn({130, 45}).t();
  for (const torch::Tensor& x : {wb, wt}) {
    const torch::Tensor padded = torch::constant_pad_nd(x.contiguous(), {0, 0, 0, 2 * kPanelWidth - 45});
    std::vector<int64_t> shape = x.sizes().vec();
    shape.pop_back();
    shape.pop_back();
    shape.insert(shape.end(), {2, kPanelWidth, 130});
    const torch::Tensor want = padded.reshape(shape).transpose(-1, -2).contiguous();
    const torch::Tensor got = pack_panels(x);
    EXPECT_EQ(got.scalar_type(), x.scalar_type());
    EXPECT_TRUE(got.equal(want)) << x.sizes();
  }
  EXPECT_EQ(pack_panels(torch::randn({0, 7})).sizes(), torch::IntArrayRef({0, 7, kPanelWidth}));
  EXPECT_THROW(pack_panels(torch::randn({64})), std::invalid_argument);
  EXPECT_THROW(pack_panels(torch::randn({64, 7}, torch::kFloat64)), std::invalid_argument);
}

TEST(PanelKernel, EveryVariantEqualsANaiveLoop) {
  const auto variants = detail::panel_variants();
  ASSERT_FALSE(variants.empty());
  EXPECT_EQ(variants.back().first, "generic");
  const int64_t out_features = 70;
  // Output ranges: everything, one whole panel, the partial last panel.
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 70}, {32, 64}, {64, 70}};
  for (const auto& [name, kernel] : variants) {
    for (int64_t in : {1, 5, 16, 37, 256}) {
      const torch::Tensor w = torch::randn({out_features, in});
      const torch::Tensor b = torch::randn({out_features});
      const torch::Tensor panels = pack_panels(w);
      for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 16, 17, 24, 25, 40, 41, 80}) {
        const int64_t ld_x = in + 3, ld_out = out_features + 5;
        const torch::Tensor x = torch::randn({rows, ld_x});
        const torch::Tensor expected_all = torch::mm(x.narrow(1, 0, in).to(torch::kFloat64), w.to(torch::kFloat64).t());
        for (const auto& [o_begin, o_end] : ranges) {
          for (bool with_bias : {false, true}) {
            torch::Tensor y = torch::full({rows, ld_out}, 7.0f);
            kernel(x.data_ptr<float>(), rows, ld_x, in, panels.data_ptr<float>(),
                   with_bias ? b.data_ptr<float>() : nullptr, o_begin, o_end, y.data_ptr<float>(), ld_out);
            torch::Tensor expected = torch::full({rows, ld_out}, 7.0, torch::kFloat64);
            torch::Tensor part = expected_all.narrow(1, o_begin, o_end - o_begin);
            if (with_bias) part = part + b.narrow(0, o_begin, o_end - o_begin).to(torch::kFloat64);
            expected.narrow(1, o_begin, o_end - o_begin).copy_(part);
            // Outside [o_begin, o_end) the sentinel must survive exactly.
            EXPECT_LT(max_abs_diff(y.to(torch::kFloat64), expected), 1e-4)
                << name << " in " << in << " rows " << rows << " outputs [" << o_begin << ", " << o_end << ") bias "
                << with_bias;
          }
        }
      }
    }
  }
}

TEST(PanelCache, RepacksExactlyWhenTheWeightChanges) {
  torch::Tensor w = torch::randn({2, 40, 8});
  PanelCache cache;
  const torch::Tensor first = cache.get(w);
  EXPECT_TRUE(first.equal(pack_panels(w)));
  EXPECT_EQ(cache.get(w).data_ptr(), first.data_ptr()) << "unchanged weight repacked";
  {
    torch::NoGradGuard no_grad;
    w.mul_(2.0);  // in place, as an optimizer step or load_state_dict does
  }
  const torch::Tensor after_update = cache.get(w);
  EXPECT_TRUE(after_update.equal(pack_panels(w))) << "stale panels after an in-place update";
  w.set_data(torch::randn({2, 40, 8}));  // same tensor, new storage, same version counter
  EXPECT_TRUE(cache.get(w).equal(pack_panels(w))) << "stale panels after set_data";
  w.set_data(torch::randn({2, 33, 8}));
  EXPECT_EQ(cache.get(w).sizes(), torch::IntArrayRef({2, 2, 8, kPanelWidth}));
  const torch::Tensor other = torch::randn({2, 40, 8});
  EXPECT_TRUE(cache.get(other).equal(pack_panels(other))) << "another tensor served the old panels";
  cache.clear();
  EXPECT_TRUE(cache.get(other).equal(pack_panels(other)));
}

TEST(GroupedFfn, PanelsGiveTheSameResultAsPlainWeights) {
  // {300, ...}: with panels every expert takes the panel kernel, also one
  // with more rows than the small-rows kernel serves without them.
  const std::vector<std::vector<int64_t>> count_sets = {{3, 0, 5, 1}, {1, 1, 1, 1}, {90, 2, 0, 13}, {300, 0, 17, 1}};
  for (Activation act : {Activation::Relu, Activation::Swish, Activation::SwiGLU}) {
    for (bool bias : {true, false}) {
      torch::manual_seed(5);
      const int64_t E = 4, D = 20, H = 70;
      ExpertWeights w;
      w.w1 = torch::randn({E, H, D}) * 0.3;
      w.w2 = torch::randn({E, D, H}) * 0.3;
      if (is_gated(act)) w.w3 = torch::randn({E, H, D}) * 0.3;
      if (bias) {
        w.b1 = torch::randn({E, H}) * 0.1;
        w.b2 = torch::randn({E, D}) * 0.1;
      }
      ExpertWeights packed = w;
      packed.w1_panels = pack_panels(w.w1);
      packed.w2_panels = pack_panels(w.w2);
      if (w.w3.defined()) packed.w3_panels = pack_panels(w.w3);
      for (const auto& counts : count_sets) {
        int64_t rows = 0;
        for (int64_t c : counts) rows += c;
        const torch::Tensor x = torch::randn({rows, D});
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          torch::NoGradGuard no_grad;
          const torch::Tensor plain = grouped_ffn(x, counts, w, {act, GroupedFfnKernel::PerExpertGemm});
          for (GroupedFfnKernel kernel : {GroupedFfnKernel::Auto, GroupedFfnKernel::SmallRows}) {
            EXPECT_LE(max_abs_diff(grouped_ffn(x, counts, packed, {act, kernel}), plain), 1e-5)
                << activation_name(act) << " bias " << bias << " threads " << threads << " rows " << rows;
          }
        }
      }
      ExpertWeights wrong = packed;
      wrong.w2_panels = pack_panels(w.w1);
      torch::NoGradGuard no_grad;
      EXPECT_THROW(grouped_ffn(torch::randn({4, D}), {1, 1, 1, 1}, wrong, {act}), std::invalid_argument);
    }
  }
  set_num_threads(1);
}

TEST(GroupedFfn, WithPanelsAutoPicksThePanelKernelForEveryExpert) {
  const torch::Tensor many = torch::zeros({4096, 8});
  const bool simd = detail::panel_variants().front().first != "generic";
  using Picks = std::vector<bool>;
  EXPECT_EQ(grouped_ffn_small_rows_experts(many, {1024, 1024, 1024, 1024}, GroupedFfnKernel::Auto, true),
            Picks(4, simd));
  EXPECT_EQ(grouped_ffn_small_rows_experts(many, {1024, 1024, 1024, 1024}, GroupedFfnKernel::Auto, false),
            Picks(4, false));
  EXPECT_EQ(grouped_ffn_small_rows_experts(many, {1024, 1024, 1024, 1024}, GroupedFfnKernel::PerExpertGemm, true),
            Picks(4, false));
  EXPECT_EQ(grouped_ffn_small_rows_experts(many.to(torch::kFloat64), {1024, 1024, 1024, 1024},
                                           GroupedFfnKernel::Auto, true),
            Picks(4, false));
}

MoEOptions panel_moe_options() {
  MoEOptions o;
  o.d_model = 24;
  o.d_hidden = 40;
  o.num_experts = 4;
  o.top_k = 2;
  return o;
}

// Inference packs the experts on first use and must follow every later
// change of the weights: a training step, loading other weights.
TEST(MoELayer, InferenceWithPanelsFollowsWeightUpdates) {
  torch::manual_seed(3);
  MoELayer moe(panel_moe_options());
  moe->eval();
  const torch::Tensor x = torch::randn({2, 5, 24});
  auto reference = [&] {
    // The naive per-token MoE (tests/moe_reference.h) on the current weights.
    torch::NoGradGuard no_grad;
    return testing::reference_moe_forward(*moe, x, RouteInput{});
  };
  auto infer = [&] {
    torch::NoGradGuard no_grad;
    const FastPathProbe probe;
    torch::Tensor y = moe->forward(x);
    EXPECT_EQ(probe.ran("moe.cpu_inference"), 1);
    return y;
  };
  EXPECT_LE(max_abs_diff(infer(), reference()), 1e-5);
  EXPECT_LE(max_abs_diff(infer(), reference()), 1e-5) << "second forward (cached panels)";

  // A training step changes the experts in place.
  moe->train();
  torch::optim::SGD sgd(moe->parameters(), torch::optim::SGDOptions(0.5));
  moe->forward(x).pow(2).sum().backward();
  sgd.step();
  moe->eval();
  EXPECT_LE(max_abs_diff(infer(), reference()), 1e-5) << "stale panels after an optimizer step";

  // Other weights loaded in place.
  MoELayer other(panel_moe_options());
  {
    torch::NoGradGuard no_grad;
    const auto source = other->named_parameters();
    for (auto& item : moe->named_parameters()) item.value().copy_(source[item.key()]);
  }
  EXPECT_LE(max_abs_diff(infer(), reference()), 1e-5) << "stale panels after loading weights";

  // Panels off: the same outputs.
  const torch::Tensor with_panels = infer();
  set_weight_panels(false);
  EXPECT_LE(max_abs_diff(infer(), with_panels), 1e-5);
  set_weight_panels(true);
}

}  // namespace
}  // namespace moekit

namespace moekit {
namespace {

// fast_linear with a panel cache: torch's linear up to rounding, in every
// shape the fast path takes, and still after the weight changes in place.
TEST(FastLinear, WithPanelsEqualsTorchLinearAndFollowsTheWeight) {
  PanelCache cache;
  torch::Tensor w = torch::randn({131, 37});
  // Up to kSmallRows rows (decoding) and past it (full-context inference,
  // which takes the panels wherever small_rows_serves says so).
  for (int64_t rows : {1, 3, 4, 7, 16, 17, 100, 300}) {
    for (bool with_bias : {false, true}) {
      torch::NoGradGuard no_grad;
      const torch::Tensor x = torch::randn({1, rows, 37});
      const torch::Tensor b = with_bias ? torch::randn({131}) : torch::Tensor();
      const FastPathProbe probe;
      const torch::Tensor got = fast_linear(x, w, b, &cache);
      if (rows <= kSmallRows || small_rows_serves(rows, true)) {
        EXPECT_EQ(probe.ran("linear.panels"), 1) << rows;
      }
      EXPECT_EQ(got.sizes(), (std::vector<int64_t>{1, rows, 131}));
      EXPECT_LT(max_abs_diff(got, torch::nn::functional::linear(x, w, b)), 1e-4) << rows;
      w.add_(0.5);  // the next call must see the new weight
    }
  }
  // A view made per call (as the convolution module's 1x1 weights) hits the cache.
  torch::NoGradGuard no_grad;
  const torch::Tensor conv_weight = torch::randn({64, 16, 1});
  const torch::Tensor x = torch::randn({2, 16});
  const torch::Tensor first = fast_linear(x, conv_weight.view({64, 16}), {}, &cache);
  const torch::Tensor panels = cache.get(conv_weight.view({64, 16}));
  EXPECT_EQ(cache.get(conv_weight.view({64, 16})).data_ptr(), panels.data_ptr());
  EXPECT_LT(max_abs_diff(first, torch::mm(x, conv_weight.view({64, 16}).t())), 1e-4);
}

}  // namespace
}  // namespace moekit

namespace moekit {
namespace {

// Training's linear maps on the panel kernel: the forward and the three
// gradients equal LibTorch's linear (itself checked by LibTorch), for shapes
// that are not whole panels, with and without bias, frozen weights and a
// non-contiguous input; and the panel path really ran where the predicate
// says it serves this machine.
TEST(FastLinear, TrainingOnPanelsEqualsTorchLinearWithGradients) {
  if (!panels_serve_training(1 << 20)) {
    GTEST_SKIP() << "training keeps the BLAS here (panels_serve_training is false: BLAS " << openblas_core()
                 << ", panel variant " << detail::panel_variants().front().first << ")";
  }
  torch::manual_seed(7);
  for (int64_t rows : {kTrainingPanelRows, kTrainingPanelRows + 1, int64_t{100}, int64_t{300}}) {
    for (bool with_bias : {false, true}) {
      for (bool frozen : {false, true}) {
        const torch::Tensor w0 = torch::randn({70, 37}) * 0.3, b0 = torch::randn({70});
        const torch::Tensor x0 = torch::randn({37, rows}).t().unsqueeze(0);  // [1, rows, 37], not contiguous
        const torch::Tensor probe_grad = torch::randn({1, rows, 70});
        auto run = [&](bool panels) {
          torch::Tensor x = x0.clone().requires_grad_(true);
          torch::Tensor w = w0.clone().requires_grad_(!frozen);
          torch::Tensor b = with_bias ? b0.clone().requires_grad_(true) : torch::Tensor();
          const torch::Tensor input = x.transpose(1, 2).transpose(1, 2);  // a view autograd must see through
          const torch::Tensor y = panels ? fast_linear(input, w, b) : torch::nn::functional::linear(input, w, b);
          (y * probe_grad).sum().backward();
          return std::vector<torch::Tensor>{y.detach(), x.grad(), frozen ? torch::Tensor() : w.grad(),
                                            with_bias ? b.grad() : torch::Tensor()};
        };
        const FastPathProbe probe;
        const auto got = run(true);
        EXPECT_EQ(probe.ran("linear.training_panels"), 1) << rows;
        const auto want = run(false);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(got[i].defined(), want[i].defined()) << i;
          if (want[i].defined()) {
            EXPECT_LT(max_abs_diff(got[i], want[i]), 2e-4) << rows << " output/grad " << i;
          }
        }
      }
    }
  }
  // Fewer rows keep LibTorch's linear (packing per call would cost more).
  const torch::Tensor w = torch::randn({70, 37}, torch::requires_grad());
  const FastPathProbe probe;
  fast_linear(torch::randn({kTrainingPanelRows - 1, 37}), w).sum().backward();
  EXPECT_EQ(probe.ran("linear.training_panels"), 0);
}

TEST(PanelMatmul, EqualsMatmulForTransposedOperands) {
  torch::manual_seed(8);
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {70, 37, 300}, {256, 33, 17}, {5, 64, 0}}) {
    const torch::Tensor a = torch::randn({k, m}).t(), b = torch::randn({k, n}).t();  // strided views
    torch::Tensor out = torch::full({m, n}, 7.0f);
    panel_matmul_nt_into(a, b, out);
    EXPECT_LT(max_abs_diff(out, torch::mm(a, b.t())), 1e-4) << m << "x" << n << "x" << k;
  }
  torch::Tensor wrong = torch::empty({3, 4});
  EXPECT_THROW(panel_matmul_nt_into(torch::randn({3, 5}), torch::randn({4, 6}), wrong), std::invalid_argument);
}

}  // namespace
}  // namespace moekit
