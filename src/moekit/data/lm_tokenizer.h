#pragma once
// The language models' tokenizer: a SentencePiece model (BPE or unigram,
// byte fallback) whose piece ids are the token ids. Trained and run through
// SentencePiece's command-line tools (see sentencepiece.h for why).
#include <string>
#include <vector>

namespace moekit {

struct TokenizerTrainOptions {
  std::string input;                 // text file, one sentence/document per line
  std::string output;                // the tokenizer.model to write (atomically)
  int64_t vocab_size = 8000;         // pieces, specials included
  std::string model_type = "bpe";    // bpe | unigram
  double character_coverage = 1.0;   // characters covered by pieces; the rest fall back to bytes
  bool byte_fallback = true;         // unknown characters become <0xNN> byte pieces
  int64_t input_sentence_size = 0;   // sample this many lines (0 = all)
  uint64_t seed = 0;                 // sampling seed (spm's --random_seed)
  std::vector<std::string> user_defined_symbols;  // pieces kept whole (e.g. the task tags <2de>)

  void validate() const;
};

// Runs spm_train; throws std::invalid_argument with the reason when it fails.
void train_tokenizer(const TokenizerTrainOptions& options);

class LmTokenizer {
 public:
  explicit LmTokenizer(const std::string& model_path);  // validates the model

  int64_t vocab_size() const { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const { return bos_; }  // <s>, -1 if none
  int64_t eos_id() const { return eos_; }  // </s>, -1 if none
  const std::string& piece(int64_t id) const { return pieces_.at(static_cast<size_t>(id)); }
  // The id of a piece, or -1 when the vocabulary has no such piece.
  int64_t id_of(const std::string& piece) const;
  const std::string& path() const { return path_; }

  // Token ids of each text (no line breaks inside a text).
  std::vector<std::vector<int64_t>> encode(const std::vector<std::string>& texts) const;
  // Every line of a text file, each followed by </s>, as one stream.
  std::vector<int64_t> encode_file(const std::string& path) const;
  // Text of ids: "▁" -> space, <0xNN> pieces -> bytes, control pieces dropped.
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  std::string path_;
  std::vector<std::string> pieces_;
  int64_t bos_ = -1, eos_ = -1;
};

}  // namespace moekit
