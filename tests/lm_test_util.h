#pragma once
// Small LM configurations and helpers shared by the LM tests.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "moekit/models/lm/lm_model.h"
#include "test_util.h"

namespace moekit {

// 3 blocks of width 32, 4 query heads in 2 KV groups, QKV bias.
inline LmConfig tiny_lm_config(bool moe = false) {
  LmConfig c;
  c.vocab_size = 50;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.d_ffn = 48;
  c.max_seq_len = 40;
  c.qkv_bias = true;
  c.init_std = 0.1;
  if (moe) {
    c.moe.num_experts = 4;
    c.moe.top_k = 2;
  }
  return c;
}

// A learnable token stream for tiny_lm_config's 50 ids: a stride-7 cycle
// shifted every `run` tokens (training and validation take different runs).
inline std::vector<int64_t> patterned_tokens(size_t count, size_t run) {
  std::vector<int64_t> ids(count);
  for (size_t i = 0; i < count; ++i) ids[i] = static_cast<int64_t>((i * 7 + i / run) % 50);
  return ids;
}

inline torch::Tensor random_tokens(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {batch, length}, torch::kLong);
}

// max |a - b| / max |a|
inline double relative_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(a.abs().max().item<double>(), 1e-12);
}

}  // namespace moekit
