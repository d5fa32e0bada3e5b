#pragma once
// SentencePiece (BPE / unigram) units for ASR, as WeNet uses them: the
// transcript is split into pieces by a SentencePiece model, pieces map to
// ids through units.txt. Decoding needs only units.txt ("▁" = space).
// Optional component: without libsentencepiece these throw an error naming
// the package.
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/units.h"

namespace moekit {

bool have_sentencepiece();

class SentencePieceTokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer();
  SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept;

  // <blank>, <unk>, the model's pieces (controls and <unk> left out), <sos/eos>.
  Units units() const;
  // Pieces of `text` mapped through `units`; pieces without a unit become
  // <unk>, or raise an error naming them when `units` has none.
  std::vector<int64_t> encode(const std::string& text, const Units& units, const std::string& where) const;
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace moekit
