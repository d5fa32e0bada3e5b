#pragma once
// Corpus metrics of machine translation, computed as sacreBLEU 2.x computes
// them with its defaults, so scores compare with published ones:
//   BLEU: 13a tokenization, n-grams up to 4, clipped counts summed over the
//         corpus, brevity penalty against the closest reference length,
//         'exp' smoothing of n-gram orders with no match.
//   chrF: character n-grams up to 6 of each line with whitespace removed,
//         precision and recall averaged over the orders that occur (the
//         default) or eps-smoothed F per order (chrF++.py, NLTK), F-beta
//         with beta 2.
// Lines are UTF-8; chrF counts code points.
#include <array>
#include <string>
#include <vector>

namespace moekit {

// sacreBLEU's "13a" tokenization (mteval-v13a.pl): unescapes &quot; &amp;
// &lt; &gt;, splits off ASCII punctuation and symbols, periods and commas
// unless between digits, a dash after a digit; single spaces.
std::string tokenize_13a(const std::string& line);

struct BleuStats {
  std::array<int64_t, 4> matches{};  // clipped n-gram matches, n = 1..4
  std::array<int64_t, 4> totals{};   // hypothesis n-grams
  int64_t hyp_length = 0, ref_length = 0;

  void add(const BleuStats& other);
  // BLEU in [0, 100].
  double score() const;
  // Precision of n-grams of order n + 1, in [0, 100] (no smoothing).
  double precision(int n) const;
  double brevity_penalty() const;
};

// Statistics of one hypothesis against its references (already tokenized
// or not: `tokenize` applies 13a to both).
BleuStats bleu_stats(const std::string& hypothesis, const std::vector<std::string>& references, bool tokenize = true);

// references[r][i]: reference r of line i (each stream as long as hypotheses).
BleuStats corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references);

struct ChrfStats {
  static constexpr int kOrder = 6;
  std::array<int64_t, kOrder> hyp{}, ref{}, match{};

  void add(const ChrfStats& other);
  // chrF in [0, 100]; beta weighs recall beta times as much as precision.
  double score(double beta = 2.0, bool eps_smoothing = false) const;
};

// Statistics of one hypothesis against its reference (single reference,
// whitespace removed before n-grams).
ChrfStats chrf_stats(const std::string& hypothesis, const std::string& reference);

ChrfStats corpus_chrf(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references);

// Character error rate: Levenshtein distance between the code points of
// hypothesis and reference with whitespace removed, over the reference's
// length. On IPA transcriptions (grapheme-to-phoneme) it is the phoneme
// error rate over IPA symbols, a length or stress mark counting as one.
struct EditStats {
  int64_t errors = 0, length = 0;
  void add(const EditStats& other) {
    errors += other.errors;
    length += other.length;
  }
  double rate() const { return length > 0 ? static_cast<double>(errors) / static_cast<double>(length) : 0.0; }
};
EditStats char_edit_stats(const std::string& hypothesis, const std::string& reference);

}  // namespace moekit
