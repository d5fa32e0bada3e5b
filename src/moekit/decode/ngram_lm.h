#pragma once
// A word n-gram language model in ARPA format (as SRILM, KenLM and IRSTLM
// write it) with Katz-style backoff, for shallow fusion in the CTC prefix
// beam search: WeNet's runtime decodes closed-vocabulary and domain tasks
// with such a model compiled into its TLG graph; here it scores each word a
// hypothesis finishes. The n-grams are held in an ordered map (about 100
// bytes each): task and domain models of up to a few million n-grams.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace moekit {

class NgramLm {
 public:
  // Throws std::invalid_argument naming the file and line for anything that
  // is not ARPA: a missing \data\ header or \end\, counts that disagree with
  // the sections, a malformed or non-finite probability, an n-gram longer
  // than its section, no <s> or </s>.
  static std::shared_ptr<const NgramLm> read(const std::string& path);
  static std::shared_ptr<const NgramLm> parse(const std::string& text, const std::string& where);

  int order() const { return order_; }
  // The id of a word; the id of <unk> (or -1 where the model has none) for
  // a word it does not know.
  int32_t id(const std::string& word) const;
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  // Natural-log probability of `word` after `history` (oldest first; only
  // its last order() - 1 words count), with backoff. A word the model does
  // not know and no <unk>: kUnknownLogProb.
  double log_prob(const std::vector<int32_t>& history, int32_t word) const;
  static constexpr double kUnknownLogProb = -230.0;  // ln(1e-100)

 private:
  struct Entry {
    float log10_prob = 0;
    float log10_backoff = 0;
  };
  const Entry* find(const std::vector<int32_t>& ngram) const;
  int order_ = 0;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  std::unordered_map<std::string, int32_t> ids_;
  std::map<std::vector<int32_t>, Entry> ngrams_;
};

}  // namespace moekit
