#pragma once
// Search for the seq2seq model: greedy and batched beam search with the
// decoder's key/value caches (each step runs one target position for every
// hypothesis of every sentence at once).
#include <torch/torch.h>

#include <vector>

#include "moekit/models/seq2seq/seq2seq_model.h"

namespace moekit {

template <class Options>
class FieldTable;

struct SearchOptions {
  int64_t beam = 4;              // hypotheses per sentence (1 = greedy)
  double length_penalty = 1.0;   // finished score = log p / length^length_penalty (fairseq's lenpen)
  double max_length_ratio = 2.0; // target positions at most ratio * source length + max_length_offset ...
  int64_t max_length_offset = 10;
  int64_t max_length = 256;      // ... and never more than this (eos included)
  int64_t min_length = 0;        // eos not allowed before this many tokens (fairseq's min_len), unless the
                                 // length limit ends the hypothesis first
  int64_t nbest = 1;             // hypotheses returned per sentence (<= beam)

  static const FieldTable<SearchOptions>& fields();
  void validate() const;
};

struct SeqHypothesis {
  std::vector<int64_t> tokens;  // without bos and eos
  double score = 0;             // length-normalised log-probability
  double log_prob = 0;          // sum of token log-probabilities, eos included
  bool finished = false;        // ended with eos (false: stopped at the length limit)
};

// src [B, S] int64 (padding past src_lens), src_lens [B], task [B] or
// undefined. Returns, per sentence, up to nbest hypotheses, best first.
// The model should be in eval mode; runs without recording gradients.
std::vector<std::vector<SeqHypothesis>> translate_batch(Seq2seqModel& model, const torch::Tensor& src,
                                                     const torch::Tensor& src_lens, const torch::Tensor& task,
                                                     const SearchOptions& options);

}  // namespace moekit
