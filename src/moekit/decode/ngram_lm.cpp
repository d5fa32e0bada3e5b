#include "moekit/decode/ngram_lm.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/utf8.h"

namespace moekit {
namespace {

constexpr double kLn10 = 2.302585092994046;

bool parse_float(const std::string& s, float* out) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = static_cast<float>(v);
  return true;
}

// A whole non-negative number, spaces around it allowed (std::stoll alone
// would read "5x" as 5).
bool parse_count(const std::string& s, int64_t* out) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return false;
  const std::string digits = s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::stoll(digits);
  return true;
}

}  // namespace

std::shared_ptr<const NgramLm> NgramLm::read(const std::string& path) { return parse(read_file(path), path); }

std::shared_ptr<const NgramLm> NgramLm::parse(const std::string& text, const std::string& where) {
  auto lm = std::make_shared<NgramLm>();
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  auto fail_at = [&](const std::string& what) {
    throw std::invalid_argument(where + ":" + std::to_string(line_no) + ": " + what);
  };
  auto next_line = [&]() -> bool {
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) return true;
    }
    return false;
  };
  // Header: anything before \data\ is ignored (ARPA allows comments there).
  bool found = false;
  while (next_line())
    if (line == "\\data\\") {
      found = true;
      break;
    }
  MOEKIT_CHECK_ARG(found, where, ": not an ARPA language model (no \\data\\ line)");
  std::vector<int64_t> counts;
  while (next_line() && line.rfind("ngram ", 0) == 0) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) fail_at("expected 'ngram N=count', got '" + printable(line) + "'");
    int64_t n = 0, count = 0;
    if (!parse_count(line.substr(6, eq - 6), &n) || !parse_count(line.substr(eq + 1), &count))
      fail_at("expected 'ngram N=count', got '" + printable(line) + "'");
    if (n != static_cast<int64_t>(counts.size()) + 1 || n > 10)
      fail_at("ngram counts must be listed for 1, 2, ... (at most 10), got '" + printable(line) + "'");
    counts.push_back(count);
  }
  MOEKIT_CHECK_ARG(!counts.empty(), where, ": no 'ngram N=count' lines after \\data\\");
  lm->order_ = static_cast<int>(counts.size());
  for (int n = 1; n <= lm->order_; ++n) {
    const std::string header = "\\" + std::to_string(n) + "-grams:";
    if (line != header) fail_at("expected '" + header + "', got '" + printable(line) + "'");
    int64_t seen = 0;
    while (next_line() && line[0] != '\\') {
      std::istringstream fields(line);
      std::vector<std::string> f;
      for (std::string s; fields >> s;) f.push_back(s);
      if (f.size() != static_cast<size_t>(n) + 1 && f.size() != static_cast<size_t>(n) + 2)
        fail_at("a " + std::to_string(n) + "-gram line needs a probability, " + std::to_string(n) +
                " words and an optional backoff, got '" + printable(line) + "'");
      Entry e;
      if (!parse_float(f[0], &e.log10_prob)) fail_at("bad log10 probability '" + printable(f[0]) + "'");
      if (f.size() == static_cast<size_t>(n) + 2 && !parse_float(f.back(), &e.log10_backoff))
        fail_at("bad log10 backoff '" + printable(f.back()) + "'");
      std::vector<int32_t> ngram;
      for (int i = 1; i <= n; ++i) {
        auto [it, added] = lm->ids_.emplace(f[static_cast<size_t>(i)], static_cast<int32_t>(lm->ids_.size()));
        if (n > 1 && added) fail_at("word '" + printable(f[static_cast<size_t>(i)]) + "' has no unigram");
        ngram.push_back(it->second);
      }
      // A second entry for an n-gram would silently replace the first (and
      // still match the section's count): the file is damaged or was
      // concatenated.
      if (!lm->ngrams_.emplace(std::move(ngram), e).second) {
        std::string words = f[1];
        for (int i = 2; i <= n; ++i) words += " " + f[static_cast<size_t>(i)];
        fail_at("the " + std::to_string(n) + "-gram '" + printable(words) + "' is listed twice");
      }
      ++seen;
    }
    if (seen != counts[static_cast<size_t>(n - 1)])
      fail_at("\\data\\ says " + std::to_string(counts[static_cast<size_t>(n - 1)]) + " " + std::to_string(n) +
              "-grams, the section has " + std::to_string(seen));
  }
  if (line != "\\end\\") fail_at("expected '\\end\\', got '" + printable(line) + "'");
  auto id_of = [&](const char* w) {
    auto it = lm->ids_.find(w);
    return it == lm->ids_.end() ? -1 : it->second;
  };
  lm->bos_ = id_of("<s>");
  lm->eos_ = id_of("</s>");
  lm->unk_ = id_of("<unk>");
  MOEKIT_CHECK_ARG(lm->bos_ >= 0 && lm->eos_ >= 0, where, ": the model has no <s> or no </s> unigram");
  return lm;
}

int32_t NgramLm::id(const std::string& word) const {
  auto it = ids_.find(word);
  return it == ids_.end() ? unk_ : it->second;
}

const NgramLm::Entry* NgramLm::find(const std::vector<int32_t>& ngram) const {
  auto it = ngrams_.find(ngram);
  return it == ngrams_.end() ? nullptr : &it->second;
}

double NgramLm::log_prob(const std::vector<int32_t>& history, int32_t word) const {
  if (word < 0) return kUnknownLogProb;
  // The longest n-gram the model has, plus the backoffs of the contexts
  // that were too long.
  const size_t keep = std::min(history.size(), static_cast<size_t>(order_ - 1));
  std::vector<int32_t> context(history.end() - static_cast<std::ptrdiff_t>(keep), history.end());
  double backoff = 0;
  while (true) {
    std::vector<int32_t> ngram = context;
    ngram.push_back(word);
    if (const Entry* e = find(ngram)) return (backoff + e->log10_prob) * kLn10;
    if (context.empty()) return kUnknownLogProb;  // a word with no unigram (cannot happen for known ids)
    if (const Entry* c = find(context)) backoff += c->log10_backoff;
    context.erase(context.begin());
  }
}

}  // namespace moekit
