#pragma once
// The LLaMA-style decoder-only language model (`model_type: lm`).
//
//   h = embed_tokens(tokens)                                   [B, T, D]
//   per block: h += o_proj(attn(rope(q), rope(k), v; causal))   GQA: query head
//                   on input_layernorm(h)                       j uses KV head j / G
//              h += mlp(post_attention_layernorm(h))            SwiGLU, dense or MoE
//   logits = lm_head(norm(h))                                  [B, T, V] fp32
//
// Checkpoint names follow HF LLaMA without the "model." prefix
// (embed_tokens.weight, layers.N.self_attn.q_proj.weight, ...); a dense FFN
// is mlp.w1/w3/w2 (HF gate_proj/up_proj/down_proj), an MoE FFN mlp.gate.weight
// [E, D] and mlp.experts.w1/w3 [E, H, D], w2 [E, D, H].
#include <torch/torch.h>

#include <vector>

#include "moekit/core/safetensors.h"
#include "moekit/models/lm/lm_config.h"
#include "moekit/models/model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/nn/ffn.h"
#include "moekit/ops/packed_linear.h"

namespace moekit {

// y = x / sqrt(mean(x^2) + eps) * weight, statistics in fp32.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // [D]

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary tables for positions [offset, offset + length): cos and sin [length, head_dim],
// HF layout (the two halves of each head rotate together).
struct RotaryTables {
  torch::Tensor cos, sin;
};
RotaryTables rotary_tables(int64_t offset, int64_t length, int64_t head_dim, double theta);
// x [B, heads, T, head_dim] rotated by the tables: x * cos + rotate_half(x) * sin.
torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables);

// Key/value cache of every layer for incremental decoding; buffers are
// allocated once for `capacity` positions: k/v [B, n_kv_heads, capacity, head_dim].
struct LmKvCache {
  std::vector<torch::Tensor> k, v;
  int64_t length = 0;    // positions filled
  int64_t capacity = 0;
};

class LmAttentionImpl : public torch::nn::Module {
 public:
  explicit LmAttentionImpl(const LmConfig& config);
  // x [B, T, D] at positions [offset, offset + T); with k_cache/v_cache
  // (buffers of LmKvCache), the new keys/values are written at `offset` and
  // attention covers [0, offset + T).
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, int64_t offset, torch::Tensor* k_cache,
                        torch::Tensor* v_cache);
  PackedLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  torch::Tensor attend_one_step(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                                int64_t keys) const;
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(LmAttention);

class LmBlockImpl : public torch::nn::Module {
 public:
  LmBlockImpl(const LmConfig& config, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const RotaryTables& rope, int64_t offset, torch::Tensor* k_cache,
                        torch::Tensor* v_cache);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LmAttention self_attn{nullptr};
  FeedForward dense_mlp{nullptr};  // registered as "mlp" when dense
  MoELayer moe_mlp{nullptr};       // registered as "mlp" when MoE
};
TORCH_MODULE(LmBlock);

struct LmLoss {
  torch::Tensor loss;  // ce + aux, to minimise
  torch::Tensor ce;    // mean next-token cross-entropy (nats)
  torch::Tensor aux;   // weighted MoE router losses (0 for dense)
};

class LmModel : public Model {
 public:
  // initialize = false skips the random initialization (reset_parameters)
  // for a model whose weights are loaded next.
  explicit LmModel(const LmConfig& config, bool initialize = true);
  std::string model_type() const override { return "lm"; }
  YAML::Node architecture() const override { return config_.to_yaml(); }
  const LmConfig& config() const { return config_; }

  // tokens [B, T] int64 -> logits [B, T, V] fp32 (only the last position's,
  // [B, 1, V], with last_only). With `cache`, the tokens continue the cached
  // positions and the cache grows by T.
  torch::Tensor forward(const torch::Tensor& tokens, LmKvCache* cache = nullptr, bool last_only = false);
  // tokens [B, T + 1]: predicts tokens[:, 1:] from tokens[:, :-1].
  LmLoss loss(const torch::Tensor& tokens);
  // An empty cache for `batch` sequences of up to `capacity` positions (<= max_seq_len).
  LmKvCache make_cache(int64_t batch, int64_t capacity) const;
  // Fills every weight as a fresh model: normal(0, init_std) matrices, zero biases, unit norms.
  void reset_parameters();
  // Stores the weight matrices (embedding, attention and FFN projections,
  // experts, output layer) in `dtype`, float32 or bfloat16; norms, biases
  // and routers stay float32, as do activations, the KV cache and logits.
  // For inference on the CPU: each bf16 matrix is read by the panel kernel
  // from bf16 panels and widened in registers, so a decoded token streams
  // half the bytes, and the result equals the float32 model holding the
  // same bf16-rounded weights up to float summation order. Elsewhere (a
  // forward recording gradients, another device, panels off) a bf16 matrix
  // is widened per call.
  void set_weight_dtype(torch::ScalarType dtype);
  // The dtype the matrices are stored in.
  torch::ScalarType weight_dtype() const { return embed_tokens->weight.scalar_type(); }

  PackedEmbedding embed_tokens{nullptr};  // also the output map when tied
  std::vector<LmBlock> layers;
  RMSNorm norm{nullptr};
  PackedLinear lm_head{nullptr};  // absent when tie_embeddings

 private:
  LmConfig config_;
  torch::nn::ModuleList layer_list_{nullptr};
};

// An LM's architecture and weights (checkpoint names), as the scale and
// conversion tools pass them around.
struct LmWeights {
  LmConfig config;
  TensorMap weights;
};

// Reads a model directory that must hold an LM ("<dir> holds an asr model,
// not an lm" otherwise) in float weights: a quantized one is refused by name
// (grow, upcycle and export work on the float model).
LmWeights read_lm_dir(const std::string& dir);
// Builds the model (which checks every tensor's name and shape, naming each
// mismatch) and saves it as a model directory.
void save_lm_dir(const LmWeights& model, const std::string& dir);
// Loads a model directory as a ready LmModel (eval mode), its matrices in
// weight_dtype (LmModel::set_weight_dtype): float32 or bfloat16; by default
// bfloat16 where the directory stores them so (a bf16 Hub checkpoint
// imported as it is), float32 otherwise.
// WeightStorage::kMap for inference only (model_dir.h).
std::shared_ptr<LmModel> load_lm_model(const std::string& dir,
                                       c10::optional<torch::ScalarType> weight_dtype = c10::nullopt,
                                       WeightStorage storage = WeightStorage::kCopy);

}  // namespace moekit
