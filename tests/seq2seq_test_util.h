#pragma once
// Small seq2seq configs and batches for the tests.
#include <torch/torch.h>

#include "moekit/models/seq2seq/seq2seq_model.h"

namespace moekit {

// A 2+2-layer model of width 32 over 40 ids (0 pad, 1 bos, 2 eos); layer 1
// of each stack is MoE (4 experts, top-2) with the given routing, 3 tasks.
inline Seq2seqConfig tiny_seq2seq_config(Routing encoder = Routing::Token, Routing decoder = Routing::Token,
                                         int64_t num_experts = 4) {
  Seq2seqConfig c;
  c.vocab_size = 40;
  c.d_model = 32;
  c.heads = 4;
  c.ffn_hidden = 48;
  c.encoder_layers = 2;
  c.decoder_layers = 2;
  c.dropout = 0.0;
  c.pad_id = 0;
  c.bos_id = 1;
  c.eos_id = 2;
  c.tasks = {"de", "fr", "es"};
  c.moe.num_experts = num_experts;
  c.moe.top_k = 2;
  c.moe.d_hidden = 24;
  c.moe.every = 2;
  c.moe.encoder_routing = encoder;
  c.moe.decoder_routing = decoder;
  return c;
}

struct Seq2seqBatch {
  torch::Tensor src, src_lens, task, tgt, tgt_lens;
};

// Random sources of lengths `lens` (padding 0 past them, ids >= 3) with
// tasks 0, 1, 2, 0, ... and targets of lengths lens + 1 ending with eos.
inline Seq2seqBatch random_seq2seq_batch(const std::vector<int64_t>& lens, int64_t vocab = 40, uint64_t seed = 3) {
  torch::manual_seed(seed);
  const int64_t batch = static_cast<int64_t>(lens.size());
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  Seq2seqBatch b;
  b.src = torch::randint(3, vocab, {batch, longest}, torch::kLong);
  b.tgt = torch::randint(3, vocab, {batch, longest + 1}, torch::kLong);
  b.src_lens = torch::tensor(lens, torch::kLong);
  b.tgt_lens = b.src_lens + 1;
  b.task = torch::arange(batch, torch::kLong).remainder(3);
  for (int64_t i = 0; i < batch; ++i) {
    b.src.index_put_({i, torch::indexing::Slice(lens[i], torch::indexing::None)}, 0);
    b.tgt.index_put_({i, lens[i]}, 2);
    b.tgt.index_put_({i, torch::indexing::Slice(lens[i] + 1, torch::indexing::None)}, 0);
  }
  return b;
}

}  // namespace moekit
