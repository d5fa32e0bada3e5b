#include "moekit/decode/lexicon.h"

#include <algorithm>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/utf8.h"

namespace moekit {
namespace {

const std::string kBoundary = "\xe2\x96\x81";  // ▁

std::vector<std::string> split_at_boundaries(const std::string& s) {
  std::vector<std::string> pieces(1);
  for (size_t pos = 0; pos < s.size();) {
    if (s.compare(pos, kBoundary.size(), kBoundary) == 0) {
      pieces.emplace_back();
      pos += kBoundary.size();
    } else {
      pieces.back() += s[pos++];
    }
  }
  return pieces;
}

bool is_special(const std::string& s) { return s.size() > 2 && s.front() == '<' && s.back() == '>'; }

}  // namespace

Lexicon::Lexicon(const Units& units, std::vector<std::string> words, const std::string& where) {
  units_.resize(static_cast<size_t>(units.size()));
  for (int64_t u = 0; u < units.size(); ++u) {
    UnitText& t = units_[static_cast<size_t>(u)];
    t.special = is_special(units.symbol(u));
    if (!t.special) t.pieces = split_at_boundaries(units.symbol(u));
  }
  for (const std::string& w : words) {
    MOEKIT_CHECK_ARG(!w.empty() && w.find_first_of(" \t\r\n") == std::string::npos &&
                         w.find(kBoundary) == std::string::npos,
                     where, ": '", printable(w), "' is not a word (empty, or with white space or '▁')");
    MOEKIT_CHECK_ARG(spellable(w), where, ": the model's units cannot spell '", printable(w), "'");
  }
  MOEKIT_CHECK_ARG(!words.empty(), where, ": no words");
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  words_ = std::move(words);
}

std::shared_ptr<const Lexicon> Lexicon::read(const std::string& path, const Units& units) {
  std::istringstream in(read_file(path));
  std::vector<std::string> words;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string word;
    if (!(fields >> word)) continue;
    if (word == "<eps>" || word == "<s>" || word == "</s>" || word == "<unk>" || word == "<UNK>") continue;
    if (word.size() > 1 && word[0] == '#' && std::all_of(word.begin() + 1, word.end(), ::isdigit)) continue;
    words.push_back(word);
  }
  return std::make_shared<const Lexicon>(units, std::move(words), "lexicon " + path);
}

bool Lexicon::is_word(const std::string& word) const { return std::binary_search(words_.begin(), words_.end(), word); }

bool Lexicon::is_prefix(const std::string& text) const {
  auto it = std::lower_bound(words_.begin(), words_.end(), text);
  return it != words_.end() && it->compare(0, text.size(), text) == 0;
}

bool Lexicon::extend(const std::string& word, int64_t u, std::string* next,
                     std::vector<std::string>* finished) const {
  if (u < 0 || u >= static_cast<int64_t>(units_.size())) return false;
  const UnitText& t = units_[static_cast<size_t>(u)];
  if (t.special) return false;
  if (finished) finished->clear();
  std::string current = word + t.pieces[0];
  for (size_t i = 1; i < t.pieces.size(); ++i) {  // a boundary finishes the word before it
    if (!may_end(current)) return false;
    if (finished && !current.empty()) finished->push_back(current);
    current = t.pieces[i];
  }
  if (!current.empty() && !is_prefix(current)) return false;
  *next = std::move(current);
  return true;
}

size_t Lexicon::finished_length(const std::vector<int64_t>& tokens) const {
  for (size_t j = tokens.size(); j-- > 0;) {
    const int64_t u = tokens[j];
    if (u < 0 || u >= static_cast<int64_t>(units_.size())) continue;
    const UnitText& t = units_[static_cast<size_t>(u)];
    if (t.pieces.size() > 1) return t.pieces.back().empty() ? j + 1 : j;
  }
  return 0;
}

bool Lexicon::spellable(const std::string& word) const {
  // Units whose text lies inside one word: a boundary at most at its start
  // or end. reach[i]: some sequence of them spells word[0, i).
  std::vector<char> reach(word.size() + 1, 0);
  reach[0] = 1;
  for (size_t i = 0; i < word.size(); ++i) {
    if (!reach[i]) continue;
    for (const UnitText& t : units_) {
      if (t.special) continue;
      std::vector<std::string> inner = t.pieces;
      if (inner.size() > 1 && inner.front().empty()) inner.erase(inner.begin());
      if (inner.size() > 1 && inner.back().empty()) inner.pop_back();
      if (inner.size() != 1 || inner[0].empty()) continue;
      if (word.compare(i, inner[0].size(), inner[0]) == 0) reach[i + inner[0].size()] = 1;
    }
  }
  return reach[word.size()] != 0;
}

}  // namespace moekit
