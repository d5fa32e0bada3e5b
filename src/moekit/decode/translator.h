#pragma once
// Text in, text out for a seq2seq model: tokenization with the model's
// SentencePiece model and task tag, batches of similar length through the
// beam search, detokenized output. A bad line (empty, invalid UTF-8, too
// long when refused) gets an error of its own; the others are translated.
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/lm_tokenizer.h"
#include "moekit/decode/seq2seq_search.h"
#include "moekit/models/seq2seq/seq2seq_model.h"

namespace moekit {

struct TranslateOptions {
  SearchOptions search;
  int64_t batch_size = 32;         // sentences per search batch
  int64_t max_input_tokens = 256;  // source pieces (tag and </s> included) at most ...
  bool truncate = true;            // ... longer inputs cut to it (with a warning), else refused
  // load_translator: the weight matrices in this dtype (float32 or bfloat16,
  // Seq2seqModel::set_weight_dtype), as stored when unset.
  c10::optional<torch::ScalarType> weight_dtype;
};

struct Translation {
  std::string text;                // the best hypothesis, detokenized
  std::vector<SeqHypothesis> nbest;   // every hypothesis returned, best first
  bool truncated = false;          // the input was cut to max_input_tokens
  std::string error;               // non-empty: the line was not translated, and why
};

class Translator {
 public:
  // Checks that the tokenizer fits the model (same vocabulary size, a tag
  // piece for every task the model can serve).
  Translator(std::shared_ptr<Seq2seqModel> model, std::shared_ptr<const LmTokenizer> tokenizer,
             TranslateOptions options);

  // The tasks this model translates into (one for an extracted model).
  std::vector<std::string> tasks() const;
  // Throws std::invalid_argument for a task the model cannot serve.
  void check_task(const std::string& task) const;
  // One result per line, in order.
  std::vector<Translation> translate(const std::vector<std::string>& lines, const std::string& task);

  const Seq2seqModel& model() const { return *model_; }
  const LmTokenizer& tokenizer() const { return *tokenizer_; }

 private:
  std::shared_ptr<Seq2seqModel> model_;
  std::shared_ptr<const LmTokenizer> tokenizer_;
  TranslateOptions options_;
};

// A model directory's model (moved to `device`) and tokenizer.model as a Translator.
Translator load_translator(const std::string& model_dir, const TranslateOptions& options,
                           const torch::Device& device = torch::kCPU);

}  // namespace moekit
