#pragma once
// A closed vocabulary for the CTC prefix beam search. Tasks with a fixed
// word list (commands, digits, names) are decoded with a lexicon in WeNet's
// runtime (its TLG graph); here the beam search keeps only prefixes whose
// finished words are lexicon words and whose unfinished last word begins
// one, so a model that spells "seon" for "seven" is held to words that
// exist. Works on the units' text ("▁" is the word boundary), so character
// and SentencePiece units alike.
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/units.h"

namespace moekit {

class Lexicon {
 public:
  // Throws std::invalid_argument (naming `where`) for an empty list, a word
  // with white space, or a word the units cannot spell.
  Lexicon(const Units& units, std::vector<std::string> words, const std::string& where = "lexicon");
  // A word list: the first field of each line (so WeNet's words.txt and
  // lexicon.txt both work); <eps>, <s>, </s>, <unk> and #0-style
  // disambiguation symbols are skipped.
  static std::shared_ptr<const Lexicon> read(const std::string& path, const Units& units);

  // `word` (the unfinished last word of a hypothesis) followed by unit `u`:
  // true and the new unfinished word in `next` when every word it finishes
  // is a lexicon word and what remains begins one; false otherwise (and for
  // special units such as <unk>). `finished`, where given, gets the words
  // that u finishes, in order.
  bool extend(const std::string& word, int64_t u, std::string* next,
              std::vector<std::string>* finished = nullptr) const;
  // Whether a hypothesis whose unfinished last word is `word` may end here.
  bool may_end(const std::string& word) const { return word.empty() || is_word(word); }
  // How many of `tokens` (a prefix the search formed) spell only finished
  // words: up to and with its last boundary, or before the unit that opens
  // its unfinished last word.
  size_t finished_length(const std::vector<int64_t>& tokens) const;
  bool is_word(const std::string& word) const;
  bool is_prefix(const std::string& text) const;
  size_t size() const { return words_.size(); }

 private:
  bool spellable(const std::string& word) const;
  std::vector<std::string> words_;  // sorted, unique
  // Per unit: its text split at the word boundaries; empty for special units.
  struct UnitText {
    bool special = false;
    std::vector<std::string> pieces;  // pieces.size() - 1 boundaries inside
  };
  std::vector<UnitText> units_;
};

}  // namespace moekit
