#pragma once
// Perplexity of an LM on a token stream, as Hugging Face's perplexity recipe
// computes it for models of fixed context: windows of `window` tokens that
// start every `stride` tokens; each window scores only the tokens the
// previous one did not (its last end - previous end labels), predicted from
// everything before them in the window. A stride below the window gives each
// scored token at least window - stride tokens of context; stride == window
// is plain disjoint chunks. The stream's first token has no context and is
// never scored.
#include <cstdint>
#include <vector>

#include "moekit/models/lm/lm_model.h"

namespace moekit {

struct PerplexityOptions {
  int64_t window = 0;      // tokens per window (0: the model's max_seq_len)
  int64_t stride = 0;      // tokens between window starts (0: half the window)
  int64_t batch_size = 4;  // windows of full length run together

  // Throws std::invalid_argument naming the flag: window outside
  // [2, max_seq_len], stride outside [1, window], batch size below 1.
  void validate(const LmConfig& config) const;
  // The window and stride that 0 stands for.
  PerplexityOptions resolved(const LmConfig& config) const;
};

struct PerplexityResult {
  double nll = 0;          // mean negative log-likelihood per scored token (nats)
  double perplexity = 0;   // exp(nll)
  int64_t tokens = 0;      // scored tokens (the stream's length - 1; less the window count when stride == window)
  int64_t windows = 0;
  int64_t window = 0, stride = 0;  // as resolved
  double seconds = 0;      // wall time of the forward passes
};

// `ids`: at least 2 tokens, each in the model's vocabulary (else
// std::invalid_argument).
PerplexityResult lm_perplexity(LmModel& model, const std::vector<int64_t>& ids, const PerplexityOptions& options);

}  // namespace moekit
