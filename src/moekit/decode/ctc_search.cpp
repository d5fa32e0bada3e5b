#include "moekit/decode/ctc_search.h"

#include <algorithm>
#include <cmath>

#include "moekit/core/check.h"

namespace moekit {

double log_add(double a, double b) {
  const double inf = std::numeric_limits<double>::infinity();
  if (a == -inf && b == -inf) return -inf;
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

std::vector<int64_t> ctc_greedy_search(const torch::Tensor& log_probs, int64_t blank) {
  MOEKIT_CHECK_ARG(log_probs.dim() == 2, "ctc greedy: log_probs must be [T, V], got ", log_probs.sizes());
  const torch::Tensor best = std::get<1>(log_probs.topk(1, 1)).view(-1).contiguous();
  const int64_t* ids = best.data_ptr<int64_t>();
  std::vector<int64_t> out;
  int64_t previous = -1;
  for (int64_t t = 0; t < best.numel(); ++t) {
    if (ids[t] != previous && ids[t] != blank) out.push_back(ids[t]);
    previous = ids[t];
  }
  return out;
}

CtcPrefixBeamSearch::CtcPrefixBeamSearch(int beam_size, int64_t blank) : beam_(beam_size), blank_(blank) {
  MOEKIT_CHECK_ARG(beam_size >= 1, "ctc prefix beam search: beam size must be >= 1, got ", beam_size);
  reset();
}

void CtcPrefixBeamSearch::reset() {
  hyps_.clear();
  frames_ = 0;
  PrefixScore empty;
  empty.s = 0.0;
  empty.v_s = empty.v_ns = 0.0;
  hyps_.emplace_back(std::vector<int64_t>{}, empty);
}

void CtcPrefixBeamSearch::advance(const torch::Tensor& log_probs_in) {
  MOEKIT_CHECK_ARG(log_probs_in.dim() == 2, "ctc prefix beam search: log_probs must be [T, V], got ",
                   log_probs_in.sizes());
  const torch::Tensor log_probs = log_probs_in.to(torch::kFloat).contiguous();
  const int64_t frames = log_probs.size(0), vocab = log_probs.size(1);
  const int k = static_cast<int>(std::min<int64_t>(beam_, vocab));
  auto [top_values, top_ids] = log_probs.topk(k, 1);
  top_ids = top_ids.contiguous();
  const auto ids = top_ids.accessor<int64_t, 2>();
  const float* lp = log_probs.data_ptr<float>();
  // Beside the prefix scores, the Viterbi alignment of each prefix and its
  // token frames, by the rules of WeNet's runtime (ctc_prefix_beam_search.cc).
  for (int64_t t = 0; t < frames; ++t, ++frames_) {
    // Insertion-ordered map of the next prefixes, as WeNet's defaultdict.
    std::vector<std::pair<std::vector<int64_t>, PrefixScore>> next;
    std::map<std::vector<int64_t>, size_t> index;
    auto slot = [&](const std::vector<int64_t>& prefix) -> PrefixScore& {
      auto it = index.find(prefix);
      if (it != index.end()) return next[it->second].second;
      index.emplace(prefix, next.size());
      next.emplace_back(prefix, PrefixScore{});
      return next.back().second;
    };
    for (int j = 0; j < k; ++j) {
      const int64_t u = ids[t][j];
      const double prob = lp[t * vocab + u];
      for (const auto& [prefix, score] : hyps_) {
        const int64_t last = prefix.empty() ? -1 : prefix.back();
        if (u == blank_) {
          PrefixScore& ns = slot(prefix);
          ns.s = log_add(ns.s, score.score() + prob);
          ns.v_s = score.viterbi() + prob;
          ns.times_s = score.times();
        } else if (u == last) {
          PrefixScore& same = slot(prefix);
          same.ns = log_add(same.ns, score.ns + prob);
          if (same.v_ns < score.v_ns + prob) {
            same.v_ns = score.v_ns + prob;
            if (same.cur_token_prob < prob && !score.times_ns.empty()) {
              same.cur_token_prob = prob;
              same.times_ns = score.times_ns;
              same.times_ns.back() = frames_;
            }
          }
          std::vector<int64_t> extended = prefix;
          extended.push_back(u);
          PrefixScore& grown = slot(extended);
          grown.ns = log_add(grown.ns, score.s + prob);
          if (grown.v_ns < score.v_s + prob) {
            grown.v_ns = score.v_s + prob;
            grown.cur_token_prob = prob;
            grown.times_ns = score.times_s;
            grown.times_ns.push_back(frames_);
          }
        } else {
          std::vector<int64_t> extended = prefix;
          extended.push_back(u);
          PrefixScore& grown = slot(extended);
          grown.ns = log_add(grown.ns, score.score() + prob);
          if (grown.v_ns < score.viterbi() + prob) {
            grown.v_ns = score.viterbi() + prob;
            grown.cur_token_prob = prob;
            grown.times_ns = score.times();
            grown.times_ns.push_back(frames_);
          }
        }
      }
    }
    // Prefixes no alignment reaches (log-probability -inf) are dropped; WeNet
    // keeps them at the end of its list, where they never win.
    next.erase(std::remove_if(next.begin(), next.end(),
                              [](const auto& h) { return h.second.score() == -std::numeric_limits<double>::infinity(); }),
               next.end());
    std::stable_sort(next.begin(), next.end(),
                     [](const auto& a, const auto& b) { return a.second.score() > b.second.score(); });
    if (static_cast<int>(next.size()) > beam_) next.resize(beam_);
    hyps_ = std::move(next);
  }
}

std::vector<Hypothesis> CtcPrefixBeamSearch::nbest() const {
  std::vector<Hypothesis> out;
  for (const auto& [prefix, score] : hyps_) out.push_back({prefix, score.score(), score.times()});
  return out;
}

std::vector<Hypothesis> ctc_prefix_beam_search(const torch::Tensor& log_probs, int beam_size, int64_t blank) {
  CtcPrefixBeamSearch search(beam_size, blank);
  search.advance(log_probs);
  return search.nbest();
}

}  // namespace moekit
