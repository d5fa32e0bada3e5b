// Laws the MoE layer must keep: equivalences with dense FFNs, conservation of
// routed tokens and gate weight, capacity limits, hand-worked router losses,
// and clear errors on bad input.
#include <gtest/gtest.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>

#include "moe_reference.h"
#include "test_util.h"
#include "moekit/ops/fast_path.h"
#include "moekit/moe/dispatch.h"
#include "moekit/moe/router.h"
#include "moekit/nn/ffn.h"

namespace moekit {
namespace {

using testing::max_abs_diff;

MoEOptions small_options(int64_t experts, int64_t k) {
  MoEOptions o;
  o.d_model = 16;
  o.d_hidden = 24;
  o.num_experts = experts;
  o.top_k = k;
  return o;
}

// Copies a dense FFN into expert e of an MoE layer.
void copy_ffn_into_expert(const FeedForwardImpl& ffn, ExpertsImpl& experts, int64_t e) {
  torch::NoGradGuard no_grad;
  experts.w1[e].copy_(ffn.w1->weight);
  experts.w2[e].copy_(ffn.w2->weight);
  if (experts.b1.defined()) experts.b1[e].copy_(ffn.w1->bias);
  if (experts.b2.defined()) experts.b2[e].copy_(ffn.w2->bias);
  if (experts.w3.defined()) experts.w3[e].copy_(ffn.w3->weight);
}

TEST(MoEInvariants, OneExpertTopOneIsAPlainFfn) {
  for (Activation act : {Activation::Swish, Activation::Gelu, Activation::SwiGLU}) {
    MoEOptions o = small_options(1, 1);
    o.activation = act;
    torch::manual_seed(1);
    MoELayer moe(o);
    FeedForward ffn(FeedForwardOptions{o.d_model, o.d_hidden, act, true});
    copy_ffn_into_expert(*ffn, *moe->experts, 0);
    const torch::Tensor x = torch::randn({2, 7, o.d_model});
    EXPECT_LE(max_abs_diff(moe->forward(x), ffn->forward(x)), 1e-5) << activation_name(act);
  }
}

TEST(MoEInvariants, IdenticalExpertsEqualTheDenseFfnForAnyRouter) {
  // The upcycling invariant: normalised gate weights over identical experts.
  for (Gating gating : {Gating::TopKSoftmax, Gating::SoftmaxTopK}) {
    for (Routing routing : {Routing::Token, Routing::Sentence, Routing::Task}) {
      for (int64_t k = 1; k <= 3; ++k) {
        MoEOptions o = small_options(8, k);
        o.gating = gating;
        o.renormalize = true;
        o.routing = routing;
        o.num_tasks = routing == Routing::Task ? 3 : 0;
        torch::manual_seed(10 + k);
        MoELayer moe(o);
        FeedForward ffn(FeedForwardOptions{o.d_model, o.d_hidden, o.activation, true});
        for (int64_t e = 0; e < o.num_experts; ++e) copy_ffn_into_expert(*ffn, *moe->experts, e);
        {
          torch::NoGradGuard no_grad;
          moe->gate->weight.normal_(0.0, 3.0);  // any router at all
        }
        const torch::Tensor x = torch::randn({3, 6, o.d_model});
        const torch::Tensor y = moe->forward(x, RouteInput{{}, torch::tensor({0, 2, 1}, torch::kInt64)});
        EXPECT_LE(max_abs_diff(y, ffn->forward(x)), 2e-5)
            << gating_name(gating) << " " << routing_name(routing) << " k=" << k;
      }
    }
  }
}

TEST(MoEInvariants, EveryRoutedTokenLandsExactlyKTimes) {
  torch::manual_seed(5);
  for (int64_t k = 1; k <= 3; ++k) {
    const torch::Tensor logits = torch::randn({50, 8});
    const GateDecision d = gate_top_k(logits, k, Gating::TopKSoftmax, false);
    const DispatchPlan plan = make_dispatch_plan(d.expert_index, 8, 0.0);
    const torch::Tensor landings = torch::bincount(plan.token_of_row, {}, 50);
    EXPECT_TRUE(landings.eq(k).all().item<bool>()) << "k=" << k;
    // Rows are grouped by expert, and each row's expert is what the router chose.
    const torch::Tensor chosen = d.expert_index.reshape(-1).index_select(0, plan.slot_of_row);
    int64_t row = 0;
    for (int64_t e = 0; e < 8; ++e) {
      for (int64_t i = 0; i < plan.tokens_per_expert[e]; ++i, ++row) {
        ASSERT_EQ(chosen[row].item<int64_t>(), e);
      }
    }
    EXPECT_EQ(row, 50 * k);
    // Each slot is used exactly once.
    EXPECT_TRUE(torch::bincount(plan.slot_of_row, {}, 50 * k).eq(1).all().item<bool>());
  }
}

TEST(MoEInvariants, CpuAndTensorOpDispatchAgree) {
  torch::manual_seed(9);
  for (double capacity_factor : {0.0, 0.5, 1.0, 1.5}) {
    for (int64_t k = 1; k <= 3; ++k) {
      const torch::Tensor logits = torch::randn({37, 6}) + torch::tensor({2.0, 0.0, 0.0, 0.0, 0.0, -1.0}).unsqueeze(0);
      const torch::Tensor index = gate_top_k(logits, k, Gating::TopKSoftmax, false).expert_index;
      const DispatchPlan cpu = make_dispatch_plan(index, 6, capacity_factor);
      const DispatchPlan ops = detail::make_dispatch_plan_tensor_ops(index, 6, cpu.capacity);
      EXPECT_TRUE(cpu.token_of_row.equal(ops.token_of_row)) << "cf=" << capacity_factor << " k=" << k;
      EXPECT_TRUE(cpu.slot_of_row.equal(ops.slot_of_row));
      EXPECT_EQ(cpu.tokens_per_expert, ops.tokens_per_expert);
      EXPECT_EQ(cpu.dropped_assignments, ops.dropped_assignments);
      EXPECT_EQ(cpu.dropped_tokens, ops.dropped_tokens);
    }
  }
  EXPECT_THROW(make_dispatch_plan(torch::tensor({0, 7}, torch::kInt64).reshape({2, 1}), 4, 0.0), std::invalid_argument);
}

TEST(MoEInvariants, PaddedDispatchEqualsSortedDispatchWithGradients) {
  // The GPU's sync-free dispatch (an [E, C, D] buffer, batched GEMMs) against
  // the sorted one, on the CPU: every routing, gating, capacity (dropless
  // included), padding, train and eval mode; outputs, statistics, router
  // losses and every gradient.
  struct Case {
    Routing routing;
    Gating gating;
    int64_t k;
    double capacity_factor;
    Activation activation;
    bool mask;
    bool train;
  };
  const Case cases[] = {
      {Routing::Token, Gating::TopKSoftmax, 2, 0.0, Activation::Swish, true, true},
      {Routing::Token, Gating::TopKSoftmax, 2, 1.0, Activation::Swish, true, true},
      {Routing::Token, Gating::SoftmaxTopK, 3, 0.5, Activation::SwiGLU, true, true},
      {Routing::Token, Gating::TopKSoftmax, 1, 1.25, Activation::Relu, false, true},
      {Routing::Token, Gating::TopKSoftmax, 2, 0.75, Activation::Gelu, true, false},
      {Routing::Sentence, Gating::TopKSoftmax, 2, 1.0, Activation::Gelu, true, true},
      {Routing::Task, Gating::SoftmaxTopK, 2, 0.5, Activation::Swish, true, true},
      {Routing::Task, Gating::TopKSoftmax, 2, 0.0, Activation::Relu, false, false},
  };
  for (const Case& c : cases) {
    MoEOptions o = small_options(6, c.k);
    o.routing = c.routing;
    o.gating = c.gating;
    o.renormalize = c.gating == Gating::SoftmaxTopK && c.k > 1;
    o.capacity_factor = c.capacity_factor;
    o.activation = c.activation;
    o.num_tasks = c.routing == Routing::Task ? 3 : 0;
    o.aux_loss_coef = 0.01;
    o.z_loss_coef = 0.001;
    torch::manual_seed(11);
    MoELayer sorted(o);
    torch::manual_seed(11);
    MoELayer padded(o);
    sorted->set_dispatch(MoEDispatch::Sorted);
    padded->set_dispatch(MoEDispatch::Padded);
    sorted->train(c.train);
    padded->train(c.train);
    torch::manual_seed(12);
    const torch::Tensor x = torch::randn({4, 9, o.d_model});
    const torch::Tensor mask =
        c.mask ? torch::arange(9).unsqueeze(0) < torch::tensor({9, 5, 1, 7}).unsqueeze(1) : torch::Tensor();
    const torch::Tensor task = torch::tensor({2, 0, 1, 2}, torch::kInt64);
    const torch::Tensor probe = torch::randn({4, 9, o.d_model});
    const torch::Tensor xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
    const int64_t before = fast_path_count("moe.padded_dispatch");
    const torch::Tensor ya = sorted->forward(xa, {mask, task});
    const torch::Tensor yb = padded->forward(xb, {mask, task});
    const std::string what = o.to_string() + (c.mask ? " masked" : "") + (c.train ? " train" : " eval");
    EXPECT_EQ(fast_path_count("moe.padded_dispatch") - before, 1) << what;
    EXPECT_LE(max_abs_diff(ya, yb), 1e-5) << what;
    const RouterStats sa = sorted->last_stats(), sb = padded->last_stats();
    EXPECT_EQ(sa.tokens_per_expert, sb.tokens_per_expert) << what;
    EXPECT_EQ(sa.routed_tokens, sb.routed_tokens) << what;
    EXPECT_EQ(sa.capacity, sb.capacity) << what;
    EXPECT_EQ(sa.dropped_assignments, sb.dropped_assignments) << what;
    EXPECT_EQ(sa.dropped_tokens, sb.dropped_tokens) << what;
    if (c.capacity_factor > 0 && c.capacity_factor < 1) {
      EXPECT_GT(sa.dropped_assignments, 0) << what;
    }
    ASSERT_TRUE(sa.load_balancing_loss.defined() && sb.load_balancing_loss.defined()) << what;
    EXPECT_LE(max_abs_diff(sa.load_balancing_loss, sb.load_balancing_loss), 1e-6) << what;
    EXPECT_LE(max_abs_diff(sa.z_loss, sb.z_loss), 1e-5) << what;
    ((ya * probe).sum() + sorted->aux_loss()).backward();
    ((yb * probe).sum() + padded->aux_loss()).backward();
    EXPECT_LE(max_abs_diff(xa.grad(), xb.grad()), 1e-5) << what;
    const auto pa = sorted->named_parameters(), pb = padded->named_parameters();
    for (const auto& item : pa) {
      const torch::Tensor ga = item.value().grad(), gb = pb[item.key()].grad();
      ASSERT_EQ(ga.defined(), gb.defined()) << what << " " << item.key();
      if (ga.defined()) {
        EXPECT_LE(max_abs_diff(ga, gb), 1e-5) << what << " " << item.key();
      }
    }
  }
  {  // every position padding: zero output, nothing counted, as the sorted dispatch
    MoEOptions o = small_options(4, 2);
    o.capacity_factor = 1.0;
    MoELayer sorted(o), padded(o);
    sorted->set_dispatch(MoEDispatch::Sorted);
    padded->set_dispatch(MoEDispatch::Padded);
    const torch::Tensor x = torch::randn({2, 3, o.d_model});
    const torch::Tensor none = torch::zeros({2, 3}, torch::kBool);
    EXPECT_EQ(padded->forward(x, {none}).abs().max().item<double>(), 0.0);
    sorted->forward(x, {none});
    const RouterStats sa = sorted->last_stats(), sb = padded->last_stats();
    EXPECT_EQ(sa.tokens_per_expert, sb.tokens_per_expert);
    EXPECT_EQ(sb.routed_tokens, 0);
    EXPECT_EQ(sa.capacity, sb.capacity);
    EXPECT_EQ(sb.dropped_assignments, 0);
    EXPECT_EQ(sb.dropped_tokens, 0);
  }
  MoELayer int8_layer(small_options(4, 2));
  int8_layer->eval();
  experts_to_int8(*int8_layer);
  EXPECT_NE(error_of([&] { int8_layer->set_dispatch(MoEDispatch::Padded); }).find("int8"),
            std::string::npos);
}

TEST(MoEInvariants, RowBudgetsGiveEachExpertItsBlockAndRecordTheLoads) {
  // Dropless training on the padded dispatch with row budgets: expert e
  // gets a block of budget[e] * k * N / E rows (a multiple of 8); the
  // forward records every expert's load for the caller. Under the load it
  // drops assignments (and says so); at the loads it is the sorted dispatch.
  MoEOptions o = small_options(6, 2);
  o.aux_loss_coef = 0.01;
  torch::manual_seed(21);
  MoELayer sorted(o);
  torch::manual_seed(21);
  MoELayer padded(o);
  sorted->set_dispatch(MoEDispatch::Sorted);
  padded->set_dispatch(MoEDispatch::Padded);
  torch::manual_seed(22);
  const int64_t batch = 4, time = 30, n = batch * time;
  const torch::Tensor x = torch::randn({batch, time, o.d_model});
  const torch::Tensor mask = torch::arange(time).unsqueeze(0) < torch::tensor({30, 21, 27, 25}).unsqueeze(1);
  const torch::Tensor probe = torch::randn({batch, time, o.d_model});
  const torch::Tensor xa = x.clone().requires_grad_(true);
  const torch::Tensor ya = sorted->forward(xa, {mask});
  const RouterStats sa = sorted->last_stats();
  const std::vector<int64_t>& load = sa.tokens_per_expert;
  const double mean = 2.0 * n / 6;  // k * N / E
  ASSERT_GT(*std::max_element(load.begin(), load.end()), 24);

  padded->set_row_budget(0.5);  // ceil(0.5 * 40) = 20 -> 24 rows each, under the busiest expert's load
  EXPECT_TRUE(padded->take_row_budget_records().empty());
  padded->forward(x, {mask});
  std::vector<RowBudgetRecord> records = padded->take_row_budget_records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].rows, std::vector<int64_t>(6, 24));
  EXPECT_EQ(records[0].positions, n);
  const torch::Tensor recorded = records[0].load.contiguous();
  EXPECT_EQ(std::vector<int64_t>(recorded.data_ptr<int64_t>(), recorded.data_ptr<int64_t>() + recorded.numel()), load);
  EXPECT_GT(padded->last_stats().dropped_assignments, 0);
  EXPECT_TRUE(padded->take_row_budget_records().empty());  // taking clears

  std::vector<double> exact;  // each expert's own load
  for (int64_t l : load) exact.push_back(static_cast<double>(l) / mean);
  padded->set_row_budgets(exact);
  const torch::Tensor xb = x.clone().requires_grad_(true);
  const int64_t before = fast_path_count("moe.padded_dispatch");
  const torch::Tensor yb = padded->forward(xb, {mask});
  EXPECT_EQ(fast_path_count("moe.padded_dispatch") - before, 1);
  records = padded->take_row_budget_records();
  ASSERT_EQ(records.size(), 1u);
  int64_t total = 0;
  for (size_t e = 0; e < load.size(); ++e) {
    EXPECT_GE(records[0].rows[e], load[e]) << e;
    EXPECT_LT(records[0].rows[e], load[e] + 8) << e;  // rounded up to a multiple of 8
    total += records[0].rows[e];
  }
  EXPECT_LT(total, 6 * n);  // the blocks hold far fewer rows than N per expert
  const RouterStats sb = padded->last_stats();
  EXPECT_EQ(sb.dropped_assignments, 0);
  EXPECT_EQ(sb.dropped_tokens, 0);
  EXPECT_EQ(sa.tokens_per_expert, sb.tokens_per_expert);
  EXPECT_LE(max_abs_diff(ya, yb), 1e-5);
  ((ya * probe).sum() + sorted->aux_loss()).backward();
  ((yb * probe).sum() + padded->aux_loss()).backward();
  EXPECT_LE(max_abs_diff(xa.grad(), xb.grad()), 1e-5);
  const auto pa = sorted->named_parameters(), pb = padded->named_parameters();
  for (const auto& item : pa) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_LE(max_abs_diff(item.value().grad(), pb[item.key()].grad()), 1e-5) << item.key();
  }

  // Evaluation is never budgeted (no caller checks it), nor is Auto on the CPU.
  padded->eval();
  padded->set_row_budget(0.5);
  EXPECT_LE(max_abs_diff(padded->forward(x, {mask}), ya), 1e-5);
  EXPECT_TRUE(padded->take_row_budget_records().empty());
  padded->train();
  padded->set_dispatch(MoEDispatch::Auto);
  const int64_t auto_before = fast_path_count("moe.padded_dispatch");
  padded->forward(x, {mask});
  EXPECT_EQ(fast_path_count("moe.padded_dispatch"), auto_before);
  EXPECT_TRUE(padded->take_row_budget_records().empty());
  for (double bad : {-1.0, std::nan("")}) {
    EXPECT_NE(error_of([&] { padded->set_row_budget(bad); }).find("row budget"), std::string::npos) << bad;
  }
  EXPECT_NE(error_of([&] { padded->set_row_budgets({1.0, 1.0}); }).find("one per expert"), std::string::npos);
}

TEST(MoEInvariants, PaddingIsNeverRoutedNorCounted) {
  MoEOptions o = small_options(4, 2);
  torch::manual_seed(2);
  MoELayer moe(o);
  torch::Tensor x = torch::randn({2, 5, o.d_model});
  const torch::Tensor mask = torch::tensor({1, 1, 1, 0, 0, 1, 0, 0, 0, 0}, torch::kBool).reshape({2, 5});
  const torch::Tensor y = moe->forward(x, {mask, {}});
  EXPECT_EQ(moe->last_stats().routed_tokens, 4);
  int64_t rows = 0;
  for (int64_t n : moe->last_stats().tokens_per_expert) rows += n;
  EXPECT_EQ(rows, 4 * 2);
  // Changing padded values changes nothing.
  torch::Tensor x2 = x.clone();
  x2.masked_fill_(~mask.unsqueeze(-1), 1e6);
  EXPECT_EQ(max_abs_diff(moe->forward(x2, {mask, {}}), y), 0.0);
  // All padding: zero output, zero routed.
  const torch::Tensor none = torch::zeros({2, 5}, torch::kBool);
  EXPECT_EQ(moe->forward(x, {none, {}}).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(moe->last_stats().routed_tokens, 0);
}

TEST(MoEInvariants, GateWeightsSumToOneWhereTheyShould) {
  torch::manual_seed(7);
  const torch::Tensor logits = torch::randn({40, 8});
  for (int64_t k = 1; k <= 3; ++k) {
    const auto ones = torch::ones({40});
    EXPECT_LE(max_abs_diff(gate_top_k(logits, k, Gating::TopKSoftmax, false).expert_weight.sum(1), ones), 1e-6);
    EXPECT_LE(max_abs_diff(gate_top_k(logits, k, Gating::SoftmaxTopK, true).expert_weight.sum(1), ones), 1e-6);
    // Without renormalisation the k weights are softmax probabilities: they sum to < 1.
    EXPECT_TRUE(gate_top_k(logits, k, Gating::SoftmaxTopK, false).expert_weight.sum(1).lt(1.0).all().item<bool>());
  }
  EXPECT_LE(max_abs_diff(gate_top_k(logits, 8, Gating::SoftmaxTopK, false).expert_weight.sum(1), torch::ones({40})),
            1e-6);
}

TEST(MoEInvariants, CapacityIsNeverExceededAndDropsAreCountedExactly) {
  // 6 tokens, 2 experts, top-1; everyone wants expert 0 except token 4.
  const torch::Tensor index = torch::tensor({0, 0, 0, 0, 1, 0}, torch::kInt64).reshape({6, 1});
  const DispatchPlan plan = make_dispatch_plan(index, 2, 1.0);  // capacity ceil(6 * 1 / 2) = 3
  EXPECT_EQ(plan.capacity, 3);
  EXPECT_EQ(plan.tokens_per_expert, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(plan.dropped_assignments, 2);  // tokens 3 and 5 lose expert 0
  EXPECT_EQ(plan.dropped_tokens, 2);
  EXPECT_TRUE(plan.token_of_row.equal(torch::tensor({0, 1, 2, 4}, torch::kInt64)));

  // Top-2 with priority to first choices: second choices are dropped first.
  const torch::Tensor index2 = torch::tensor({0, 1, 0, 1, 1, 0, 1, 0}, torch::kInt64).reshape({4, 2});
  const DispatchPlan plan2 = make_dispatch_plan(index2, 2, 0.5);  // capacity ceil(0.5 * 8 / 2) = 2
  EXPECT_EQ(plan2.capacity, 2);
  EXPECT_EQ(plan2.tokens_per_expert, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(plan2.dropped_assignments, 4);
  EXPECT_EQ(plan2.dropped_tokens, 0);  // every token keeps its first choice
  // Expert 0 holds the first choices of tokens 0 and 1; expert 1 those of 2 and 3.
  EXPECT_TRUE(plan2.token_of_row.equal(torch::tensor({0, 1, 2, 3}, torch::kInt64)));
  EXPECT_TRUE(plan2.slot_of_row.equal(torch::tensor({0, 2, 4, 6}, torch::kInt64)));

  // A dropped token gets zero from the MoE branch.
  MoEOptions o = small_options(2, 1);
  o.capacity_factor = 0.5;  // capacity ceil(0.5 * 6 / 2) = 2 < tokens wanting expert 0
  torch::manual_seed(4);
  MoELayer moe(o);
  {
    torch::NoGradGuard no_grad;
    moe->gate->weight.zero_();
    moe->gate->weight[0][0] = 1.0;  // logit of expert 0 = x[..., 0]
  }
  torch::Tensor x = torch::randn({1, 6, o.d_model});
  x.select(2, 0).fill_(5.0);  // all tokens choose expert 0
  const torch::Tensor y = moe->forward(x);
  EXPECT_EQ(moe->last_stats().dropped_tokens, 4);
  EXPECT_EQ(y[0].slice(0, 2).abs().max().item<float>(), 0.0f);
  EXPECT_GT(y[0].slice(0, 0, 2).abs().max().item<float>(), 0.0f);
}

// CPU bfloat16 autocast on (LibTorch 1.x and 2.x spell it differently),
// off again when it goes out of scope.
struct CpuBf16Autocast {
  CpuBf16Autocast() { set(true); }
  ~CpuBf16Autocast() { set(false); }
  static void set(bool on) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, on);
#else
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(on);
#endif
  }
};

TEST(MoEInvariants, RouterComputesInFloat32UnderBfloat16Autocast) {
  // Autocast's cast policy runs linears in bfloat16; the router's logits
  // (the top-k choice, the balancing and z losses) stay float32, equal to
  // those without autocast, in every routing mode.
  for (const Routing routing : {Routing::Token, Routing::Sentence, Routing::Task}) {
    MoEOptions o;
    o.d_model = 16;
    o.d_hidden = 8;
    o.num_experts = 4;
    o.top_k = 2;
    o.routing = routing;
    o.num_tasks = 3;
    torch::manual_seed(3);
    MoELayer moe(o);
    const torch::Tensor x = torch::randn({2, 5, o.d_model}, torch::requires_grad());
    RouteInput route;
    if (routing == Routing::Task) route.task = torch::tensor({2, 0});
    const torch::Tensor plain = moe->router_logits(x, route);
    torch::Tensor under;
    {
      CpuBf16Autocast autocast;
      under = moe->router_logits(x, route);
    }
    ASSERT_EQ(under.scalar_type(), torch::kFloat32) << static_cast<int>(routing);
    EXPECT_TRUE(torch::allclose(under, plain, 1e-6, 1e-6)) << static_cast<int>(routing);
    EXPECT_NO_THROW(gate_top_k(under, o.top_k, o.gating, o.renormalize));
  }
}

TEST(MoEInvariants, RouterLossesEqualHandWorkedValues) {
  // Three tokens, two experts, top-1. Logits [ln3, 0], [ln3, 0], [0, ln3]:
  //   probs (.75 .25) (.75 .25) (.25 .75); choices e0, e0, e1
  //   f = (2/3, 1/3), P = (1.75/3, 1.25/3)
  //   balance = 2 * (2/3 * 1.75/3 + 1/3 * 1.25/3) = 9.5 / 9
  //   z = mean(logsumexp^2) = ln(4)^2
  const double ln3 = std::log(3.0);
  const torch::Tensor logits = torch::tensor({ln3, 0.0, ln3, 0.0, 0.0, ln3}, torch::kFloat32).reshape({3, 2});
  const GateDecision d = gate_top_k(logits, 1, Gating::TopKSoftmax, false);
  EXPECT_NEAR(load_balancing_loss(logits, d.expert_index).item<double>(), 9.5 / 9.0, 1e-6);
  EXPECT_NEAR(router_z_loss(logits).item<double>(), std::pow(std::log(4.0), 2), 1e-6);

  // The same through a layer whose router is the identity, with coefficients.
  MoEOptions o;
  o.d_model = 2;
  o.d_hidden = 4;
  o.num_experts = 2;
  o.top_k = 1;
  o.aux_loss_coef = 0.01;
  o.z_loss_coef = 0.001;
  MoELayer moe(o);
  {
    torch::NoGradGuard no_grad;
    moe->gate->weight.copy_(torch::eye(2));
  }
  moe->forward(logits.unsqueeze(0));
  const double expected = 0.01 * 9.5 / 9.0 + 0.001 * std::pow(std::log(4.0), 2);
  ASSERT_TRUE(moe->aux_loss().defined());
  EXPECT_NEAR(moe->aux_loss().item<double>(), expected, 1e-6);
  EXPECT_NEAR(collect_moe_aux_loss(*moe).item<double>(), expected, 1e-6);
  // The aux loss trains the router.
  moe->aux_loss().backward();
  EXPECT_GT(moe->gate->weight.grad().abs().sum().item<double>(), 0.0);
  // Off by default: no aux loss.
  MoELayer plain(small_options(4, 2));
  plain->forward(torch::randn({1, 3, 16}));
  EXPECT_FALSE(plain->aux_loss().defined());
}

TEST(MoEInvariants, BadInputIsRejectedWithAClearError) {
  MoEOptions o = small_options(4, 2);
  MoELayer moe(o);
  EXPECT_THROW(moe->forward(torch::randn({2, 3, 15})), std::invalid_argument);
  EXPECT_THROW(moe->forward(torch::randn({2, 3, 16}), {torch::ones({2, 4}, torch::kBool), {}}), std::invalid_argument);
  EXPECT_THROW(moe->forward(torch::randn({2, 3, 16}), {torch::ones({2, 3}), {}}), std::invalid_argument);

  MoEOptions task = o;
  task.routing = Routing::Task;
  task.num_tasks = 3;
  MoELayer by_task(task);
  EXPECT_THROW(by_task->forward(torch::randn({2, 3, 16})), std::invalid_argument);
  try {
    by_task->forward(torch::randn({2, 3, 16}), {{}, torch::tensor({0, 3}, torch::kInt64)});
    FAIL() << "task id 3 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("task id 3"), std::string::npos) << e.what();
  }

  MoEOptions bad = o;
  bad.top_k = 5;
  EXPECT_THROW(MoELayer{bad}, std::invalid_argument);
  bad = o;
  bad.routing = Routing::Task;
  EXPECT_THROW(MoELayer{bad}, std::invalid_argument);
  bad = o;
  bad.capacity_factor = -1;
  EXPECT_THROW(bad.validate(), std::invalid_argument);
}

TEST(MoEOptionsTest, YamlRoundTripKeepsEveryField) {
  MoEOptions o;
  o.d_model = 32;
  o.d_hidden = 64;
  o.num_experts = 6;
  o.top_k = 3;
  o.activation = Activation::SwiGLU;
  o.routing = Routing::Task;
  o.gating = Gating::SoftmaxTopK;
  o.renormalize = true;
  o.num_tasks = 4;
  o.capacity_factor = 1.25;
  o.aux_loss_coef = 0.001;
  o.z_loss_coef = 0.01;
  o.expert_bias = false;
  const MoEOptions back = MoEOptions::from_yaml(YAML::Load(YAML::Dump(o.to_yaml())), "test");
  EXPECT_EQ(back.to_string(), o.to_string());
  YAML::Node broken = o.to_yaml();
  broken["routing"] = "by_magic";
  EXPECT_THROW(MoEOptions::from_yaml(broken, "test"), std::invalid_argument);
}

}  // namespace
}  // namespace moekit
