#pragma once
// The smallest useful U2++ MoE configuration, shared by tests that need a
// real (but instant) speech model: 1 encoder block of width 16 with a
// 4-expert MoE FFN, causal kernel 3, dynamic chunks, 1 + 1 decoder blocks.
#include <cmath>
#include <string>
#include <vector>

#include "moekit/audio/audio_file.h"
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

// `moekit train asr` config sections (everything but train_conf) for a
// 2-block Conformer of width 32 on 20 mel bins with no randomness in its
// loss (no dropout, dither, SpecAugment or dynamic chunks), so two runs that
// see the same batches log the same losses. moe: 4-expert top-2 FFNs.
inline std::string deterministic_asr_train_yaml(bool moe) {
  const std::string experts = moe ? ", mlp_type: moe, n_expert: 4, n_expert_activated: 2" : "";
  return "encoder_conf: {output_size: 32, attention_heads: 2, linear_units: 48, num_blocks: 2, dropout_rate: 0.0,"
         " positional_dropout_rate: 0.0, attention_dropout_rate: 0.0, input_layer: conv2d, pos_enc_layer_type: rel_pos,"
         " normalize_before: true, use_cnn_module: true, cnn_module_kernel: 3, causal: true, use_dynamic_chunk: false" +
         experts +
         "}\n"
         "decoder_conf: {attention_heads: 2, linear_units: 48, num_blocks: 1, r_num_blocks: 1, dropout_rate: 0.0,"
         " positional_dropout_rate: 0.0" +
         experts +
         "}\n"
         "model_conf: {ctc_weight: 0.3, reverse_weight: 0.3, lsm_weight: 0.1}\n"
         "dataset_conf: {fbank_conf: {num_mel_bins: 20, dither: 0.0}, batch_size: 2, spec_aug: false}\n";
}

// A 16 kHz wav "speaking" text made of the letters a-d: each letter a
// 120 ms tone of its own frequency and 50 ms of silence, each space 100 ms
// more silence. A speech task a few training steps can start to learn.
inline void write_tone_wav(const std::string& path, const std::string& text) {
  std::vector<float> samples;
  for (char c : text) {
    if (c == ' ') {
      samples.insert(samples.end(), 1600, 0.0f);
      continue;
    }
    const double hz = 300.0 + 250.0 * (c - 'a');
    for (int n = 0; n < 1920; ++n) samples.push_back(0.3f * static_cast<float>(std::sin(2 * M_PI * hz * n / 16000.0)));
    samples.insert(samples.end(), 800, 0.0f);
  }
  write_wav16(path, samples, 16000);
}

}  // namespace moekit
