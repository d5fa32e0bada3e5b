#include "moekit/decode/ctc_search.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "moekit/core/check.h"
#include "moekit/decode/lexicon.h"
#include "moekit/decode/ngram_lm.h"

namespace moekit {

namespace {
// A prefix's hash (FNV-1a over its units), for the per-frame prefix index.
struct PrefixHash {
  size_t operator()(const std::vector<int64_t>& prefix) const {
    uint64_t h = 1469598103934665603ull;
    for (const int64_t u : prefix) h = (h ^ static_cast<uint64_t>(u)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
}  // namespace

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

CtcPrefixBeamSearch::CtcPrefixBeamSearch(int beam_size, int64_t blank, WordContext words)
    : beam_(beam_size), blank_(blank), words_(std::move(words)) {
  MOEKIT_CHECK_ARG(beam_size >= 1, "ctc prefix beam search: beam size must be >= 1, got ", beam_size);
  MOEKIT_CHECK_ARG(!words_.lm || words_.lexicon, "ctc prefix beam search: a language model needs a lexicon");
  MOEKIT_CHECK_ARG(std::isfinite(words_.lm_weight) && std::isfinite(words_.word_bonus),
                   "ctc prefix beam search: language model weight and word bonus must be finite");
  reset();
}

double CtcPrefixBeamSearch::word_terms(const std::vector<std::string>& finished, std::vector<int32_t>& history) const {
  double terms = 0;
  for (const std::string& w : finished) {
    terms += words_.word_bonus;
    if (!words_.lm) continue;
    const int32_t id = words_.lm->id(w);
    terms += words_.lm_weight * words_.lm->log_prob(history, id);
    history.push_back(id);
    if (history.size() >= static_cast<size_t>(words_.lm->order())) history.erase(history.begin());
  }
  return terms;
}

void CtcPrefixBeamSearch::reset() {
  hyps_.clear();
  frames_ = 0;
  PrefixScore empty;
  empty.s = 0.0;
  empty.v_s = empty.v_ns = 0.0;
  if (words_.lm) empty.history = {words_.lm->bos()};
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
    std::unordered_map<std::vector<int64_t>, size_t, PrefixHash> index;
    next.reserve(hyps_.size() * static_cast<size_t>(k + 2));
    index.reserve(hyps_.size() * static_cast<size_t>(k + 2));
    auto slot = [&](const std::vector<int64_t>& prefix, const std::string& word,
                    const std::vector<int32_t>& history) -> PrefixScore& {
      auto it = index.find(prefix);
      if (it != index.end()) return next[it->second].second;
      index.emplace(prefix, next.size());
      next.emplace_back(prefix, PrefixScore{});
      next.back().second.word = word;
      next.back().second.history = history;
      return next.back().second;
    };
    std::string word;                 // the unfinished word of a prefix extended by u,
    std::vector<std::string> finished;  // the words u finishes,
    std::vector<int32_t> history;     // and the language model's history after them
    // With a lexicon the blank is always tried, so every prefix lives on
    // when no top unit may extend it.
    std::vector<int64_t> candidates(&ids[t][0], &ids[t][0] + k);
    if (words_.lexicon && std::find(candidates.begin(), candidates.end(), blank_) == candidates.end())
      candidates.push_back(blank_);
    for (const int64_t u : candidates) {
      const double prob = lp[t * vocab + u];
      for (const auto& [prefix, score] : hyps_) {
        const int64_t last = prefix.empty() ? -1 : prefix.back();
        const bool may_grow = u == blank_ || !words_.lexicon || words_.lexicon->extend(score.word, u, &word, &finished);
        double terms = 0;  // the words u finishes, scored
        if (u != blank_ && may_grow && words_.lexicon) {
          history = score.history;
          terms = word_terms(finished, history);
        }
        if (u == blank_) {
          PrefixScore& ns = slot(prefix, score.word, score.history);
          ns.s = log_add(ns.s, score.score() + prob);
          ns.v_s = score.viterbi() + prob;
          ns.times_s = score.times();
        } else if (u == last) {
          PrefixScore& same = slot(prefix, score.word, score.history);
          same.ns = log_add(same.ns, score.ns + prob);
          if (same.v_ns < score.v_ns + prob) {
            same.v_ns = score.v_ns + prob;
            if (same.cur_token_prob < prob && !score.times_ns.empty()) {
              same.cur_token_prob = prob;
              same.times_ns = score.times_ns;
              same.times_ns.back() = frames_;
            }
          }
          if (!may_grow) continue;
          std::vector<int64_t> extended = prefix;
          extended.push_back(u);
          PrefixScore& grown = slot(extended, word, history);
          grown.ns = log_add(grown.ns, score.s + prob + terms);
          if (grown.v_ns < score.v_s + prob + terms) {
            grown.v_ns = score.v_s + prob + terms;
            grown.cur_token_prob = prob;
            grown.times_ns = score.times_s;
            grown.times_ns.push_back(frames_);
          }
        } else {
          if (!may_grow) continue;
          std::vector<int64_t> extended = prefix;
          extended.push_back(u);
          PrefixScore& grown = slot(extended, word, history);
          grown.ns = log_add(grown.ns, score.score() + prob + terms);
          if (grown.v_ns < score.viterbi() + prob + terms) {
            grown.v_ns = score.viterbi() + prob + terms;
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
    if (!next.empty()) hyps_ = std::move(next);  // empty only when a lexicon left no prefix a finite score
  }
}

std::vector<Hypothesis> CtcPrefixBeamSearch::nbest(bool final) const {
  const Lexicon* lexicon = words_.lexicon.get();
  const bool finished_only =
      final && lexicon &&
      std::any_of(hyps_.begin(), hyps_.end(), [&](const auto& h) { return lexicon->may_end(h.second.word); });
  std::vector<Hypothesis> out;
  for (const auto& [prefix, score] : hyps_) {
    if (finished_only && !lexicon->may_end(score.word)) continue;
    double total = score.score();
    if (finished_only) {  // the last word and the end of the sentence
      std::vector<int32_t> history = score.history;
      total += word_terms(score.word.empty() ? std::vector<std::string>{} : std::vector<std::string>{score.word},
                          history);
      if (words_.lm) total += words_.lm_weight * words_.lm->log_prob(history, words_.lm->eos());
    }
    out.push_back({prefix, total, score.times()});
  }
  if (final && lexicon && !finished_only) {
    // Every prefix ends inside a word (the audio stopped mid-word, or the
    // beam was narrow): each keeps only its finished words, the first
    // (best) of equal results stays.
    std::vector<Hypothesis> cut;
    for (size_t i = 0; i < out.size(); ++i) {
      Hypothesis h = out[i];
      const size_t n = lexicon->finished_length(h.tokens);
      h.tokens.resize(n);
      if (h.times.size() > n) h.times.resize(n);
      if (words_.lm) {
        std::vector<int32_t> history = hyps_[i].second.history;
        h.score += words_.lm_weight * words_.lm->log_prob(history, words_.lm->eos());
      }
      if (std::none_of(cut.begin(), cut.end(), [&](const Hypothesis& c) { return c.tokens == h.tokens; }))
        cut.push_back(std::move(h));
    }
    out = std::move(cut);
  }
  if (final && lexicon)
    std::stable_sort(out.begin(), out.end(), [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
  return out;
}

std::vector<Hypothesis> ctc_prefix_beam_search(const torch::Tensor& log_probs, int beam_size, int64_t blank,
                                               WordContext words) {
  CtcPrefixBeamSearch search(beam_size, blank, std::move(words));
  search.advance(log_probs);
  return search.nbest(/*final=*/true);
}

}  // namespace moekit
