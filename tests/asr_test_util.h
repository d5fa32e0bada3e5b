#pragma once
// The smallest useful U2++ MoE configuration, shared by tests that need a
// real (but instant) speech model: 1 encoder block of width 16 with a
// 4-expert MoE FFN, causal kernel 3, dynamic chunks, 1 + 1 decoder blocks.
#include "moekit/models/asr/asr_config.h"

namespace moekit {

inline AsrConfig tiny_asr_config(int64_t vocab_size) {
  AsrConfig c;
  c.vocab_size = vocab_size;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 1;
  c.encoder.ffn.hidden = 16;
  c.encoder.ffn.moe = true;
  c.encoder.ffn.n_expert = 4;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.causal = true;
  c.encoder.use_dynamic_chunk = true;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn.hidden = 16;
  return c;
}

// tiny_asr_config grown to 2 encoder blocks on 20 mel bins, with MoE decoders.
inline AsrConfig small_asr_config() {
  AsrConfig c = tiny_asr_config(12);
  c.encoder.input_dim = 20;
  c.fbank.num_mel_bins = 20;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.ffn.moe = true;
  c.decoder.ffn.n_expert = 3;
  c.decoder.ffn.n_expert_activated = 2;
  return c;
}

}  // namespace moekit
