#pragma once
// CTC decoding: greedy (best path) and prefix beam search, the algorithms of
// WeNet's search.py, in double precision. The beam search is incremental
// (feed frames as a stream produces them) and keeps WeNet's tie order.
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moekit {

class Lexicon;
class NgramLm;

// Words for the CTC prefix beam search: a lexicon the prefixes keep to
// (decode/lexicon.h) and, optionally, a word n-gram model fused into the
// prefix scores: each word a prefix finishes adds
// lm_weight * ln P(word | the words before) + word_bonus, and a final
// result also its last word and </s> (shallow fusion, as in Hannun et al.'s
// prefix beam search and WeNet's TLG decoding). Then the scores are CTC
// log-probabilities plus these terms. The model needs the lexicon.
struct WordContext {
  std::shared_ptr<const Lexicon> lexicon;
  std::shared_ptr<const NgramLm> lm;
  double lm_weight = 0.5;
  double word_bonus = 0.0;
};

struct Hypothesis {
  std::vector<int64_t> tokens;
  double score = 0.0;  // log-probability (CTC prefix score, or the rescoring score)
  // The prefix beam search's frame (counted from the search's start or
  // reset) of each token: where the best (Viterbi) alignment of the prefix
  // emits it, as WeNet's runtime tracks it for word timestamps. Empty where
  // a search does not track times.
  std::vector<int64_t> times;
};

// log_probs [T, V]: argmax per frame, repeats merged, blanks removed.
std::vector<int64_t> ctc_greedy_search(const torch::Tensor& log_probs, int64_t blank = 0);

double log_add(double a, double b);

class CtcPrefixBeamSearch {
 public:
  // With a lexicon, prefixes that leave its words are never formed (see
  // WordContext).
  explicit CtcPrefixBeamSearch(int beam_size, int64_t blank = 0, WordContext words = {});
  void advance(const torch::Tensor& log_probs);  // [t, V], more frames of the same utterance
  // Best first; scores are log(P(prefix)) = logaddexp(blank-ending, non-blank-ending).
  // `final` (the search is over): with a lexicon, prefixes whose last word
  // is unfinished are left out while any other remains; with a language
  // model, the others' last word and </s> are scored, and the list re-ranked.
  std::vector<Hypothesis> nbest(bool final = false) const;
  void reset();

 private:
  struct PrefixScore {
    double s = -std::numeric_limits<double>::infinity();   // ending in blank
    double ns = -std::numeric_limits<double>::infinity();  // ending in a non-blank
    double score() const { return log_add(s, ns); }
    // The best single alignment ending in blank / non-blank, its token
    // frames, and the probability of the frame its last token was put at.
    double v_s = -std::numeric_limits<double>::infinity();
    double v_ns = -std::numeric_limits<double>::infinity();
    double cur_token_prob = -std::numeric_limits<double>::infinity();
    std::vector<int64_t> times_s, times_ns;
    std::string word;  // with a lexicon: the prefix's unfinished last word
    std::vector<int32_t> history;  // with a language model: its finished words' ids (last order - 1)
    double viterbi() const { return v_s > v_ns ? v_s : v_ns; }
    const std::vector<int64_t>& times() const { return v_s > v_ns ? times_s : times_ns; }
  };
  int beam_;
  int64_t blank_;
  // The language-model terms of the words `finished` after `history`; the
  // history grows by them.
  double word_terms(const std::vector<std::string>& finished, std::vector<int32_t>& history) const;
  WordContext words_;
  int64_t frames_ = 0;  // frames searched since the start or reset
  std::vector<std::pair<std::vector<int64_t>, PrefixScore>> hyps_;
};

// The whole search over log_probs; the final n-best.
std::vector<Hypothesis> ctc_prefix_beam_search(const torch::Tensor& log_probs, int beam_size, int64_t blank = 0,
                                               WordContext words = {});

}  // namespace moekit
