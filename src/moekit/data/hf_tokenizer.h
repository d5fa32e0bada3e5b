#pragma once
// Hugging Face `tokenizer.json` files, encoded as the `tokenizers` library
// encodes them: added (special) tokens split out first, then the
// normalizer, the pre-tokenizer, the BPE model (merges by rank, byte
// fallback, unknown token) and the post-processor's template. Covers the
// two BPE families the LLaMA line uses:
//   byte-level BPE (GPT-2, LLaMA-3, Qwen2): Split by a regex + ByteLevel;
//   SentencePiece-style BPE (LLaMA-2, Mistral): Prepend/Replace "▁"
//     normalizers, byte-fallback <0xNN> pieces.
// Any other component type is refused when the file is read, by name.
// Regexes run on PCRE2 (Unicode properties); tests compare the ids with
// Hugging Face's JavaScript implementation on a few thousand texts.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moekit {

class HfTokenizer {
 public:
  // `path`: a tokenizer.json; a tokenizer_config.json beside it names the
  // BOS and EOS tokens (else <s>/</s>, <|begin_of_text|>/<|end_of_text|>,
  // <|endoftext|> where the vocabulary has them).
  explicit HfTokenizer(const std::string& path);

  // Ids of `text` (any UTF-8, line breaks included). add_special_tokens:
  // the post-processor's template around them (e.g. LLaMA-2's <s>).
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const;
  // Text of ids, through the decoder; special tokens dropped unless asked
  // for. clean_up_spaces (default: tokenizer_config.json's
  // clean_up_tokenization_spaces) removes the space before punctuation and
  // contractions, as transformers does; without it byte-level decoding is
  // lossless.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true,
                     std::optional<bool> clean_up_spaces = std::nullopt) const;

  int64_t vocab_size() const;  // largest id + 1, added tokens included
  int64_t bos_id() const;      // -1 if none
  int64_t eos_id() const;      // -1 if none
  int64_t id_of(const std::string& token) const;  // -1 if absent
  const std::string& token(int64_t id) const;     // "" for an unused id

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace moekit
