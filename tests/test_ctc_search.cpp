// CTC decoding against brute force: every alignment enumerated.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "moekit/decode/ctc_search.h"

using namespace moekit;

namespace {

// log P(labels) for every label sequence, by summing over all V^T alignments.
std::map<std::vector<int64_t>, double> brute_force(const torch::Tensor& log_probs) {
  const int64_t t_max = log_probs.size(0), v = log_probs.size(1);
  std::map<std::vector<int64_t>, double> out;
  std::vector<int64_t> path(t_max, 0);
  const auto lp = log_probs.accessor<float, 2>();
  while (true) {
    double logp = 0;
    std::vector<int64_t> labels;
    int64_t previous = -1;
    for (int64_t t = 0; t < t_max; ++t) {
      logp += lp[t][path[t]];
      if (path[t] != previous && path[t] != 0) labels.push_back(path[t]);
      previous = path[t];
    }
    auto it = out.find(labels);
    out[labels] = it == out.end() ? logp : log_add(it->second, logp);
    int64_t t = 0;
    while (t < t_max && ++path[t] == v) path[t++] = 0;
    if (t == t_max) break;
  }
  return out;
}

}  // namespace

TEST(CtcSearch, GreedyCollapsesRepeatsAndBlanks) {
  // argmax path: 1 1 0 1 2 2 0 0 -> 1 1 2
  const std::vector<int64_t> path = {1, 1, 0, 1, 2, 2, 0, 0};
  torch::Tensor lp = torch::full({8, 3}, -5.0f);
  for (size_t t = 0; t < path.size(); ++t) lp[static_cast<int64_t>(t)][path[t]] = -0.1f;
  EXPECT_EQ(ctc_greedy_search(lp), (std::vector<int64_t>{1, 1, 2}));
}

TEST(CtcSearch, FullBeamEqualsBruteForce) {
  torch::manual_seed(3);
  for (int trial = 0; trial < 5; ++trial) {
    const torch::Tensor lp = torch::log_softmax(torch::randn({6, 4}) * 2, 1);
    const auto exact = brute_force(lp);
    // A beam as wide as the number of prefixes makes the search exact.
    const auto nbest = ctc_prefix_beam_search(lp, 100000);
    ASSERT_FALSE(nbest.empty());
    for (const auto& h : nbest) {
      auto it = exact.find(h.tokens);
      ASSERT_NE(it, exact.end());
      EXPECT_NEAR(h.score, it->second, 1e-5);
    }
    // The best hypothesis is the most probable label sequence.
    double best = -1e30;
    for (const auto& [labels, logp] : exact) best = std::max(best, logp);
    EXPECT_NEAR(nbest.front().score, best, 1e-5);
    for (size_t i = 1; i < nbest.size(); ++i) EXPECT_LE(nbest[i].score, nbest[i - 1].score);
  }
}

TEST(CtcSearch, IncrementalEqualsWhole) {
  torch::manual_seed(4);
  const torch::Tensor lp = torch::log_softmax(torch::randn({30, 7}) * 3, 1);
  CtcPrefixBeamSearch stream(5);
  stream.advance(lp.slice(0, 0, 7));
  stream.advance(lp.slice(0, 7, 8));
  stream.advance(lp.slice(0, 8, 30));
  const auto a = stream.nbest(), b = ctc_prefix_beam_search(lp, 5);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_DOUBLE_EQ(a[i].score, b[i].score);
  }
}

// Token frames as WeNet's runtime tracks them: where the best alignment
// emits each token, a repeated label's run ending at its last frame.
TEST(CtcSearch, TimesFollowTheBestAlignment) {
  // Nearly one-hot frames spelling: blank a a blank b blank blank c.
  const std::vector<int64_t> path = {0, 1, 1, 0, 2, 0, 0, 3};
  torch::Tensor logits = torch::full({8, 5}, -8.0);
  for (int64_t t = 0; t < 8; ++t) logits[t][path[t]] = 8.0;
  const torch::Tensor lp = torch::log_softmax(logits, 1);
  const auto nbest = ctc_prefix_beam_search(lp, 4);
  ASSERT_EQ(nbest.front().tokens, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(nbest.front().times, (std::vector<int64_t>{2, 4, 7}));
  // Every hypothesis of a random search: one frame per token, increasing,
  // inside the utterance; fed in pieces, the same frames.
  torch::manual_seed(9);
  const torch::Tensor random = torch::log_softmax(torch::randn({40, 6}) * 3, 1);
  CtcPrefixBeamSearch pieces(6);
  pieces.advance(random.slice(0, 0, 13));
  pieces.advance(random.slice(0, 13, 40));
  const auto whole = ctc_prefix_beam_search(random, 6), split = pieces.nbest();
  ASSERT_EQ(whole.size(), split.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    const Hypothesis& h = whole[i];
    ASSERT_EQ(h.times.size(), h.tokens.size());
    for (size_t j = 0; j < h.times.size(); ++j) {
      EXPECT_GE(h.times[j], 0);
      EXPECT_LT(h.times[j], 40);
      if (j > 0) EXPECT_GT(h.times[j], h.times[j - 1]);
    }
    EXPECT_EQ(split[i].times, h.times);
  }
  pieces.reset();
  pieces.advance(lp);
  EXPECT_EQ(pieces.nbest().front().times, (std::vector<int64_t>{2, 4, 7})) << "reset restarts the frame count";
}

TEST(CtcSearch, RejectsBadInput) {
  EXPECT_THROW(ctc_prefix_beam_search(torch::zeros({3}), 4), std::invalid_argument);
  EXPECT_THROW(ctc_prefix_beam_search(torch::zeros({3, 4}), 0), std::invalid_argument);
  EXPECT_THROW(ctc_greedy_search(torch::zeros({3})), std::invalid_argument);
}
