#pragma once
// Text generation with an LM and its KV cache: the prompt is run once, then
// one token per step (greedy, or sampled with temperature, top-k, top-p).
#include <cstdint>
#include <functional>
#include <vector>

#include "moekit/models/lm/lm_model.h"

namespace moekit {

struct SamplingOptions {
  int64_t max_new_tokens = 64;  // generated tokens at most (also bounded by max_seq_len)
  double temperature = 0.0;     // 0 = greedy (argmax)
  int64_t top_k = 0;            // sample among the k most likely tokens (0 = all)
  double top_p = 1.0;           // nucleus: the smallest set whose probability reaches top_p
  uint64_t seed = 0;            // sampling RNG
  bool stop_at_eos = true;      // stop after </s>
  // Ids at or past this are never chosen (0 = none): the rows a Hub model
  // pads its embedding with beyond its tokenizer's vocabulary.
  int64_t vocab_limit = 0;

  void validate() const;
};

// Generates a continuation of `prompt` (ids, non-empty, shorter than the
// context). `on_token` is called with each new id as soon as it is chosen.
// eos_id < 0: no end token. Throws std::invalid_argument for a prompt that
// does not fit the context or holds ids outside the vocabulary.
std::vector<int64_t> generate(LmModel& model, const std::vector<int64_t>& prompt, const SamplingOptions& options,
                              int64_t eos_id, const std::function<void(int64_t)>& on_token = nullptr);

// Throws std::invalid_argument unless `prompt` is non-empty, in the
// vocabulary and leaves room for one more token in the context.
void check_prompt(const LmConfig& config, const std::vector<int64_t>& prompt);

// Picks the next token from logits [V] fp32 (exposed for tests).
int64_t sample_token(const torch::Tensor& logits, const SamplingOptions& options, at::Generator& generator);

}  // namespace moekit
