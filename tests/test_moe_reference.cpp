// MoE layer vs the naive per-token reference: outputs and gradients, every
// routing mode, both gating orders, k = 1..3, E = 1..16, with padding, both
// CPU kernels.
#include <gtest/gtest.h>

#include <tuple>

#include "moe_reference.h"

namespace moekit {
namespace {

using testing::max_abs_diff;
using testing::reference_moe_forward;

struct Case {
  Routing routing;
  Gating gating;
  bool renormalize;
  int64_t top_k;
  int64_t num_experts;
  GroupedFfnKernel kernel;
  double capacity_factor = 0.0;
};

constexpr Activation kActivations[] = {Activation::Swish, Activation::Relu, Activation::Gelu, Activation::SwiGLU};

struct Inputs {
  torch::Tensor x, mask, task;
};

Inputs make_inputs(const MoEOptions& o, int64_t seed) {
  torch::manual_seed(seed);
  const int64_t B = 3, T = 5;
  Inputs in;
  in.x = torch::randn({B, T, o.d_model}).requires_grad_(true);
  // Sequence lengths 5, 3, 1: padding at the end of the second and third rows.
  in.mask = torch::arange(T).unsqueeze(0) < torch::tensor({5, 3, 1}).unsqueeze(1);
  in.task = torch::tensor({1, 0, 1}, torch::kInt64);
  return in;
}

std::vector<torch::Tensor> differentiable_inputs(MoELayerImpl& moe, const torch::Tensor& x) {
  std::vector<torch::Tensor> v{x};
  for (auto& p : moe.parameters()) v.push_back(p);
  return v;
}

void check_against_reference(const Case& c, int64_t seed) {
  MoEOptions o;
  o.d_model = 8;
  o.d_hidden = 12;
  o.num_experts = c.num_experts;
  o.top_k = c.top_k;
  o.routing = c.routing;
  o.gating = c.gating;
  o.renormalize = c.renormalize;
  o.num_tasks = c.routing == Routing::Task ? 2 : 0;
  o.capacity_factor = c.capacity_factor;
  o.activation = kActivations[seed % 4];
  o.expert_bias = seed % 3 != 0;
  torch::manual_seed(seed);
  MoELayer moe(o);
  moe->set_kernel(c.kernel);
  const Inputs in = make_inputs(o, seed + 1000);
  const RouteInput route{in.mask, in.task};

  const torch::Tensor y = moe->forward(in.x, route);
  int64_t ref_dropped = 0;
  const torch::Tensor y_ref = reference_moe_forward(*moe, in.x, route, &ref_dropped);
  ASSERT_EQ(y.sizes(), y_ref.sizes());
  EXPECT_LE(max_abs_diff(y, y_ref), 1e-5) << o.to_string();
  EXPECT_EQ(moe->last_stats().routed_tokens, 9);
  EXPECT_EQ(moe->last_stats().dropped_assignments, ref_dropped);
  // Padding gets exactly zero.
  EXPECT_EQ(y.masked_select(~in.mask.unsqueeze(-1)).abs().max().item<float>(), 0.0f);
  {  // Inference (weight panels, the fused combine) computes the same.
    torch::NoGradGuard no_grad;
    const torch::Tensor y_inference = moe->forward(in.x.detach(), route);
    EXPECT_LE(max_abs_diff(y_inference, y_ref), 1e-5) << "inference, " << o.to_string();
    EXPECT_EQ(y_inference.masked_select(~in.mask.unsqueeze(-1)).abs().max().item<float>(), 0.0f);
  }
  if (c.routing == Routing::Token && c.capacity_factor <= 0.0) {
    // Evaluation without padding: the CPU loops of cpu_inference_forward.
    const RouteInput unmasked{torch::Tensor(), in.task};
    const torch::Tensor want = reference_moe_forward(*moe, in.x, unmasked, nullptr).detach();
    torch::NoGradGuard no_grad;
    moe->eval();
    const torch::Tensor got = moe->forward(in.x.detach(), unmasked);
    moe->train();
    EXPECT_LE(max_abs_diff(got, want), 1e-5) << "evaluation, no mask, " << o.to_string();
    EXPECT_EQ(moe->last_stats().routed_tokens, 15);
  }

  // Gradients of a random projection of the output.
  const torch::Tensor probe = torch::randn_like(y);
  const auto inputs = differentiable_inputs(*moe, in.x);
  const auto grads = torch::autograd::grad({(y * probe).sum()}, inputs, {}, false, false, /*allow_unused=*/true);
  const auto grads_ref =
      torch::autograd::grad({(y_ref * probe).sum()}, inputs, {}, false, false, /*allow_unused=*/true);
  const auto names = moe->named_parameters().keys();
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string name = i == 0 ? "x" : names[i - 1];
    ASSERT_EQ(grads[i].defined(), grads_ref[i].defined()) << name;
    if (!grads[i].defined()) continue;
    const double scale = std::max(1.0, grads_ref[i].abs().max().item<double>());
    EXPECT_LE(max_abs_diff(grads[i], grads_ref[i]), 1e-5 * scale) << "gradient of " << name << ", " << o.to_string();
  }
}

class MoEReferenceTest
    : public ::testing::TestWithParam<std::tuple<Routing, int, int64_t, int64_t, GroupedFfnKernel>> {};

TEST_P(MoEReferenceTest, OutputAndGradientsMatchNaiveLoop) {
  const auto [routing, gating_mode, top_k, num_experts, kernel] = GetParam();
  Case c{routing, gating_mode == 0 ? Gating::TopKSoftmax : Gating::SoftmaxTopK, gating_mode == 2, top_k,
         num_experts, kernel};
  check_against_reference(c, 17 * num_experts + 5 * top_k + gating_mode + 3 * static_cast<int>(routing));
}

// Every routing x gating x k = 1..3 x E in {1, 2, 5, 8, 16} with k <= E x kernel.
std::vector<std::tuple<Routing, int, int64_t, int64_t, GroupedFfnKernel>> all_modes() {
  std::vector<std::tuple<Routing, int, int64_t, int64_t, GroupedFfnKernel>> cases;
  for (Routing routing : {Routing::Token, Routing::Sentence, Routing::Task}) {
    for (int gating = 0; gating < 3; ++gating) {  // topk_softmax, softmax_topk, softmax_topk + renormalize
      for (int64_t k = 1; k <= 3; ++k) {
        for (int64_t experts : {1, 2, 5, 8, 16}) {
          if (k > experts) continue;
          for (GroupedFfnKernel kernel : {GroupedFfnKernel::PerExpertGemm, GroupedFfnKernel::SmallRows}) {
            cases.emplace_back(routing, gating, k, experts, kernel);
          }
        }
      }
    }
  }
  return cases;
}

std::string mode_name(const ::testing::TestParamInfo<MoEReferenceTest::ParamType>& info) {
  const auto [routing, gating, k, experts, kernel] = info.param;
  static const char* gatings[] = {"TopkSoftmax", "SoftmaxTopk", "SoftmaxTopkRenorm"};
  return routing_name(routing) + "_" + gatings[gating] + "_k" + std::to_string(k) + "_E" + std::to_string(experts) +
         (kernel == GroupedFfnKernel::SmallRows ? "_SmallRows" : "_Gemm");
}

INSTANTIATE_TEST_SUITE_P(AllModes, MoEReferenceTest, ::testing::ValuesIn(all_modes()), mode_name);

class MoECapacityReferenceTest : public ::testing::TestWithParam<std::tuple<Routing, double, int64_t, int64_t>> {};

std::string capacity_name(const ::testing::TestParamInfo<MoECapacityReferenceTest::ParamType>& info) {
  const auto [routing, cf, k, experts] = info.param;
  return routing_name(routing) + "_cf" + std::to_string(static_cast<int>(cf * 100)) + "_k" + std::to_string(k) +
         "_E" + std::to_string(experts);
}

TEST_P(MoECapacityReferenceTest, DropsExactlyWhatGShardDrops) {
  const auto [routing, capacity_factor, top_k, num_experts] = GetParam();
  Case c{routing, Gating::SoftmaxTopK, false, top_k, num_experts, GroupedFfnKernel::Auto, capacity_factor};
  check_against_reference(c, 101 + static_cast<int>(capacity_factor * 8) + top_k * 7 + num_experts);
}

INSTANTIATE_TEST_SUITE_P(Capacity, MoECapacityReferenceTest,
                         ::testing::Combine(::testing::Values(Routing::Token, Routing::Sentence, Routing::Task),
                                            ::testing::Values(0.5, 1.0, 1.25), ::testing::Values(1, 2),
                                            ::testing::Values(4, 8)),
                         capacity_name);

TEST(MoEReferenceDouble, Float64MatchesReference) {
  MoEOptions o;
  o.d_model = 6;
  o.d_hidden = 10;
  o.num_experts = 4;
  o.top_k = 2;
  torch::manual_seed(3);
  MoELayer moe(o);
  moe->to(torch::kFloat64);
  const torch::Tensor x = torch::randn({2, 4, 6}, torch::kFloat64);
  const torch::Tensor y = moe->forward(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat64);
  EXPECT_LE(max_abs_diff(y, reference_moe_forward(*moe, x, {})), 1e-6);
}

}  // namespace
}  // namespace moekit
