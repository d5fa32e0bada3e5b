#pragma once
// The language models' tokenizer: a SentencePiece model (BPE or unigram,
// byte fallback) whose piece ids are the token ids, trained and run through
// SentencePiece's command-line tools (see sentencepiece.h for why); or a
// Hugging Face tokenizer.json (hf_tokenizer.h), as Hub models ship them.
#include <memory>
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
  bool split_digits = false;         // every digit its own piece (numbers read digit by digit)
  int64_t input_sentence_size = 0;   // sample this many lines (0 = all)
  uint64_t seed = 0;                 // sampling seed (spm's --random_seed)
  std::vector<std::string> user_defined_symbols;  // pieces kept whole (e.g. the task tags <2de>)

  void validate() const;
};

// Runs spm_train; throws std::invalid_argument with the reason when it fails.
void train_tokenizer(const TokenizerTrainOptions& options);

class HfTokenizer;

// Files a model directory's tokenizer consists of, in the order looked for:
// tokenizer.model, or tokenizer.json (with tokenizer_config.json beside it).
// `override_path` (a --tokenizer flag) wins when not empty. Throws
// std::invalid_argument naming the directory when it has neither.
std::string find_lm_tokenizer(const std::string& model_dir, const std::string& override_path = "");
// Copies the tokenizer at `path` (.model, or .json with its config) into
// `dir` under the names find_lm_tokenizer looks for.
void copy_lm_tokenizer(const std::string& path, const std::string& dir);

class LmTokenizer {
 public:
  // A SentencePiece .model, or a tokenizer.json (by the .json extension).
  explicit LmTokenizer(const std::string& model_path);  // validates the model

  int64_t vocab_size() const { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const { return bos_; }  // <s>, -1 if none
  int64_t eos_id() const { return eos_; }  // </s>, -1 if none
  const std::string& piece(int64_t id) const { return pieces_.at(static_cast<size_t>(id)); }
  // The id of a piece, or -1 when the vocabulary has no such piece.
  int64_t id_of(const std::string& piece) const;
  const std::string& path() const { return path_; }

  // Token ids of each text (no line breaks inside a text), without BOS/EOS.
  std::vector<std::vector<int64_t>> encode(const std::vector<std::string>& texts) const;
  // Every line of a text file, each followed by </s>, as one stream.
  std::vector<int64_t> encode_file(const std::string& path) const;
  // Text of ids: "▁" -> space, <0xNN> pieces -> bytes, control pieces
  // dropped (a tokenizer.json: through its decoder, special tokens dropped).
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  std::string path_;
  std::shared_ptr<const HfTokenizer> hf_;  // a tokenizer.json; else SentencePiece
  std::vector<std::string> pieces_;
  int64_t bos_ = -1, eos_ = -1;
};

// Throws std::invalid_argument naming `path` when the tokenizer has ids the
// model's vocabulary lacks. A model with more rows than the tokenizer has
// ids (Hub models pad their embeddings, Qwen2 to 151936 for 151665 ids) is
// fine: the extra rows are never fed, and generation never chooses them.
void check_tokenizer_fits(const LmTokenizer& tokenizer, const std::string& path, int64_t model_vocab);

}  // namespace moekit
