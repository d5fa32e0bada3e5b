#include "moekit/eval/mt_metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <unordered_map>

#include "moekit/core/check.h"

namespace moekit {
namespace {

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

// Code points of UTF-8 text; an invalid byte stands for itself (as one
// "character"), so no input is refused.
std::vector<std::string> characters(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + n > s.size()) n = 1;
    for (size_t j = 1; j < n; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) & 0xC0) != 0x80) {
        n = 1;
        break;
      }
    }
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// Whether a code point (as its UTF-8 bytes) is whitespace to Python's str.split().
bool is_space(const std::string& ch) {
  if (ch.size() == 1) {
    const char c = ch[0];
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1C && c <= 0x1F);
  }
  static const char* const kSpaces[] = {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                        "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (const char* s : kSpaces) if (ch == s) return true;
  // U+2000 .. U+200A
  return ch.size() == 3 && ch[0] == '\xE2' && ch[1] == '\x80' && static_cast<unsigned char>(ch[2]) >= 0x80 &&
         static_cast<unsigned char>(ch[2]) <= 0x8A;
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> words;
  std::string word;
  for (const std::string& ch : characters(s)) {
    if (is_space(ch)) {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += ch;
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

// The code points of a line with its whitespace removed (chrF, CER).
std::vector<std::string> characters_without_spaces(const std::string& s) {
  std::vector<std::string> chars;
  for (const std::string& w : split_words(s)) {
    for (std::string& c : characters(w)) chars.push_back(std::move(c));
  }
  return chars;
}

using NgramCounts = std::map<std::vector<std::string>, int64_t>;

NgramCounts word_ngrams(const std::vector<std::string>& words, size_t n) {
  NgramCounts counts;
  for (size_t i = 0; i + n <= words.size(); ++i) {
    ++counts[std::vector<std::string>(words.begin() + static_cast<std::ptrdiff_t>(i),
                                      words.begin() + static_cast<std::ptrdiff_t>(i + n))];
  }
  return counts;
}

std::unordered_map<std::string, int64_t> char_ngrams(const std::vector<std::string>& chars, size_t n) {
  std::unordered_map<std::string, int64_t> counts;
  for (size_t i = 0; i + n <= chars.size(); ++i) {
    std::string gram;
    for (size_t j = i; j < i + n; ++j) gram += chars[j];
    ++counts[gram];
  }
  return counts;
}

}  // namespace

std::string tokenize_13a(const std::string& input) {
  std::string line = input;
  replace_all(line, "<skipped>", "");
  replace_all(line, "-\n", "");
  replace_all(line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    replace_all(line, "&quot;", "\"");
    replace_all(line, "&amp;", "&");
    replace_all(line, "&lt;", "<");
    replace_all(line, "&gt;", ">");
  }
  line = " " + line + " ";
  // mteval-v13a's rules, each a left-to-right pass of non-overlapping matches
  // (std::regex_replace as Python's re.sub). The classes are ASCII, and a
  // UTF-8 continuation byte is never a digit, period or comma, so matching
  // bytes gives what matching code points gives.
  static const std::regex symbols(R"(([\{-\~\[-\` -\&\(-\+\:-\@\/]))");
  static const std::regex period_after(R"(([^0-9])([\.,]))");
  static const std::regex period_before(R"(([\.,])([^0-9]))");
  static const std::regex dash_after_digit(R"(([0-9])(-))");
  line = std::regex_replace(line, symbols, " $1 ");
  line = std::regex_replace(line, period_after, "$1 $2 ");
  line = std::regex_replace(line, period_before, " $1 $2");
  line = std::regex_replace(line, dash_after_digit, "$1 $2 ");
  std::string out;
  for (const std::string& w : split_words(line)) out += (out.empty() ? "" : " ") + w;
  return out;
}

void BleuStats::add(const BleuStats& o) {
  for (int n = 0; n < 4; ++n) {
    matches[n] += o.matches[n];
    totals[n] += o.totals[n];
  }
  hyp_length += o.hyp_length;
  ref_length += o.ref_length;
}

double BleuStats::precision(int n) const {
  return totals.at(static_cast<size_t>(n)) > 0 ? 100.0 * static_cast<double>(matches[n]) / static_cast<double>(totals[n])
                                               : 0.0;
}

double BleuStats::brevity_penalty() const {
  if (hyp_length >= ref_length) return 1.0;
  return hyp_length > 0 ? std::exp(1.0 - static_cast<double>(ref_length) / static_cast<double>(hyp_length)) : 0.0;
}

double BleuStats::score() const {
  // sacreBLEU's compute_bleu with smooth_method='exp': an order with no
  // match gets 100 / (2^k * total) for the k-th such order; an order with
  // no n-grams at all ends the sum with log(0) (score 0).
  double smooth = 1.0, log_sum = 0.0;
  for (int n = 0; n < 4; ++n) {
    if (totals[n] == 0) return 0.0;
    double p;
    if (matches[n] == 0) {
      smooth *= 2.0;
      p = 100.0 / (smooth * static_cast<double>(totals[n]));
    } else {
      p = 100.0 * static_cast<double>(matches[n]) / static_cast<double>(totals[n]);
    }
    log_sum += std::log(p);
  }
  return brevity_penalty() * std::exp(log_sum / 4.0);
}

BleuStats bleu_stats(const std::string& hypothesis, const std::vector<std::string>& references, bool tokenize) {
  MOEKIT_CHECK_ARG(!references.empty(), "BLEU: no reference");
  const std::vector<std::string> hyp = split_words(tokenize ? tokenize_13a(hypothesis) : hypothesis);
  BleuStats s;
  s.hyp_length = static_cast<int64_t>(hyp.size());
  // The closest reference length, the shorter one on a tie (sacreBLEU).
  int64_t closest = -1;
  std::vector<std::vector<std::string>> refs;
  for (const std::string& r : references) {
    refs.push_back(split_words(tokenize ? tokenize_13a(r) : r));
    const int64_t len = static_cast<int64_t>(refs.back().size());
    const int64_t diff = std::llabs(len - s.hyp_length), best = std::llabs(closest - s.hyp_length);
    if (closest < 0 || diff < best || (diff == best && len < closest)) closest = len;
  }
  s.ref_length = closest;
  for (size_t n = 1; n <= 4; ++n) {
    const NgramCounts h = word_ngrams(hyp, n);
    NgramCounts max_ref;  // per n-gram, its largest count in any reference
    for (const auto& r : refs) {
      for (const auto& [gram, count] : word_ngrams(r, n)) max_ref[gram] = std::max(max_ref[gram], count);
    }
    for (const auto& [gram, count] : h) {
      const auto it = max_ref.find(gram);
      if (it != max_ref.end()) s.matches[n - 1] += std::min(count, it->second);
    }
    s.totals[n - 1] = std::max<int64_t>(0, s.hyp_length - static_cast<int64_t>(n) + 1);
  }
  return s;
}

BleuStats corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references) {
  MOEKIT_CHECK_ARG(!references.empty(), "BLEU: no reference stream");
  for (size_t r = 0; r < references.size(); ++r) {
    MOEKIT_CHECK_ARG(references[r].size() == hypotheses.size(), "BLEU: reference stream ", r + 1, " has ",
                     references[r].size(), " lines, the hypotheses ", hypotheses.size());
  }
  BleuStats total;
  std::vector<std::string> refs(references.size());
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    for (size_t r = 0; r < references.size(); ++r) refs[r] = references[r][i];
    total.add(bleu_stats(hypotheses[i], refs));
  }
  return total;
}

void ChrfStats::add(const ChrfStats& o) {
  for (int n = 0; n < kOrder; ++n) {
    hyp[n] += o.hyp[n];
    ref[n] += o.ref[n];
    match[n] += o.match[n];
  }
}

double ChrfStats::score(double beta, bool eps_smoothing) const {
  const double eps = 1e-16, factor = beta * beta;
  double f_sum = 0.0, avg_prec = 0.0, avg_rec = 0.0;
  int effective = 0;
  for (int n = 0; n < kOrder; ++n) {
    const double prec = hyp[n] > 0 ? static_cast<double>(match[n]) / static_cast<double>(hyp[n]) : eps;
    const double rec = ref[n] > 0 ? static_cast<double>(match[n]) / static_cast<double>(ref[n]) : eps;
    const double denom = factor * prec + rec;
    f_sum += denom > 0 ? (1 + factor) * prec * rec / denom : eps;
    if (hyp[n] > 0 && ref[n] > 0) {
      avg_prec += prec;
      avg_rec += rec;
      ++effective;
    }
  }
  if (eps_smoothing) return 100.0 * f_sum / kOrder;
  if (effective == 0) return 0.0;
  avg_prec /= effective;
  avg_rec /= effective;
  if (avg_prec + avg_rec == 0.0) return 0.0;
  return 100.0 * (1 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec);
}

ChrfStats chrf_stats(const std::string& hypothesis, const std::string& reference) {
  const std::vector<std::string> h = characters_without_spaces(hypothesis), r = characters_without_spaces(reference);
  ChrfStats s;
  for (int n = 0; n < ChrfStats::kOrder; ++n) {
    const auto hc = char_ngrams(h, static_cast<size_t>(n + 1));
    const auto rc = char_ngrams(r, static_cast<size_t>(n + 1));
    for (const auto& [gram, count] : hc) {
      s.hyp[n] += count;
      const auto it = rc.find(gram);
      if (it != rc.end()) s.match[n] += std::min(count, it->second);
    }
    for (const auto& [gram, count] : rc) s.ref[n] += count;
  }
  return s;
}

EditStats char_edit_stats(const std::string& hypothesis, const std::string& reference) {
  const std::vector<std::string> h = characters_without_spaces(hypothesis), r = characters_without_spaces(reference);
  std::vector<int64_t> row(r.size() + 1), next(r.size() + 1);
  for (size_t j = 0; j <= r.size(); ++j) row[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= h.size(); ++i) {
    next[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= r.size(); ++j) {
      next[j] = std::min({row[j] + 1, next[j - 1] + 1, row[j - 1] + (h[i - 1] == r[j - 1] ? 0 : 1)});
    }
    std::swap(row, next);
  }
  return {row[r.size()], static_cast<int64_t>(r.size())};
}

ChrfStats corpus_chrf(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references) {
  MOEKIT_CHECK_ARG(hypotheses.size() == references.size(), "chrF: ", hypotheses.size(), " hypotheses but ",
                   references.size(), " references");
  ChrfStats total;
  for (size_t i = 0; i < hypotheses.size(); ++i) total.add(chrf_stats(hypotheses[i], references[i]));
  return total;
}

}  // namespace moekit
