// The trainer's optimizer against LibTorch's own: moekit::AdamW takes
// torch::optim::AdamW's steps on matrices, plain Adam's on one-dimensional
// parameters (biases, norm gains: not decayed), and Adam's exactly without
// decay; its state is Adam's, as the checkpoint store reads it.
#include <gtest/gtest.h>

#include <vector>

#include "moekit/train/adamw.h"
#include "moekit/train/optimizer_state.h"

namespace moekit {
namespace {

// Parameters [3, 4] and [4] (values from a seeded generator) under a loss
// whose gradient for each depends on that parameter alone (so decay changes
// it, and each parameter can be compared with a reference on its own).
struct Problem {
  std::vector<torch::Tensor> params;
  explicit Problem(uint64_t seed) {
    torch::manual_seed(seed);
    params = {torch::randn({3, 4}).requires_grad_(), torch::randn({4}).requires_grad_()};
  }
  void step(torch::optim::Optimizer& opt) {
    opt.zero_grad();
    torch::Tensor loss = (params[0].pow(2) * 0.7 + params[0] * 0.3).sum() + (params[1].pow(3) * 0.2).sum();
    loss.backward();
    opt.step();
  }
};

TEST(AdamW, MatricesTakeTorchAdamWStepsAndOneDimensionalParametersTakeAdams) {
  const double lr = 0.05, wd = 0.1;
  Problem ours(1), want_w(1), want_b(1);
  AdamW opt(ours.params, lr, wd);
  torch::optim::AdamW ref_w(want_w.params, torch::optim::AdamWOptions(lr).weight_decay(wd));
  torch::optim::Adam ref_b(want_b.params, torch::optim::AdamOptions(lr));
  for (int s = 0; s < 20; ++s) {
    ours.step(opt);
    want_w.step(ref_w);
    want_b.step(ref_b);
  }
  EXPECT_TRUE(torch::allclose(ours.params[0], want_w.params[0], 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(ours.params[1], want_b.params[1], 1e-5, 1e-6));
  // Decay did something: the matrix differs from Adam's without it.
  EXPECT_GT((ours.params[0] - want_b.params[0]).abs().max().item<float>(), 1e-3);
  // Adam's state, as the checkpoint store reads it.
  const auto it = opt.state().find(optimizer_state_key(ours.params[0]));
  ASSERT_NE(it, opt.state().end());
  const auto* state = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get());
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->step(), 20);
}

TEST(AdamW, WithoutDecayItIsAdamExactly) {
  Problem ours(2), want(2);
  AdamW opt(ours.params, 0.01, 0.0);
  torch::optim::Adam ref(want.params, torch::optim::AdamOptions(0.01));
  for (int s = 0; s < 5; ++s) {
    ours.step(opt);
    want.step(ref);
  }
  EXPECT_TRUE(torch::equal(ours.params[0], want.params[0]));
  EXPECT_TRUE(torch::equal(ours.params[1], want.params[1]));
}

TEST(AdamW, TheLearningRateSetOnTheGroupScalesTheDecay) {
  // The trainer sets each step's scheduled lr on the group: the decay uses it.
  torch::Tensor w = torch::ones({2, 2}).requires_grad_();
  AdamW opt({w}, 1.0, 0.5);
  static_cast<torch::optim::AdamOptions&>(opt.param_groups()[0].options()).lr(0.1);
  w.mutable_grad() = torch::zeros({2, 2});  // Adam's update is 0 for a zero gradient
  opt.step();
  EXPECT_TRUE(torch::allclose(w, torch::full({2, 2}, 1 - 0.1 * 0.5)));
}

TEST(AdamW, ANegativeWeightDecayIsRefused) {
  torch::Tensor w = torch::ones({2, 2}).requires_grad_();
  EXPECT_THROW(AdamW({w}, 0.1, -0.01), std::invalid_argument);
}

}  // namespace
}  // namespace moekit
