#pragma once
// Multi-head attention as WeNet computes it: plain scaled dot-product
// attention, and the relative-position form of the Conformer encoder
// (Transformer-XL's u/v biases, positions projected by linear_pos; WeNet
// drops the rel_shift, so the position term is q . P(key position)).
// Module and parameter names follow WeNet (linear_q/k/v/out, linear_pos,
// pos_bias_u/v) so checkpoints map one to one.
#include <torch/torch.h>

#include "moekit/kernels/attention_kernel.h"
#include "moekit/nn/kv_cache.h"
#include "moekit/ops/packed_linear.h"

namespace moekit {

struct AttentionOptions {
  int64_t heads = 4;
  int64_t d_model = 256;
  double dropout = 0.0;      // on the attention weights
  bool rel_pos = false;      // Conformer relative-position attention
};

// Keys and values of a memory projected and split into heads once, for
// attention that reads the same memory at every step (a decoder's
// cross-attention while it generates): k, v [B, H, T, d_k].
struct ProjectedMemory {
  torch::Tensor k, v;
};

class MultiHeadedAttentionImpl : public torch::nn::Module {
 public:
  explicit MultiHeadedAttentionImpl(const AttentionOptions& options);

  // query [B, T1, D], key/value [B, T2, D]; mask: bool [B, 1 or T1, T2 (+cache)]
  // where true = may attend (undefined = attend everywhere); pos_emb
  // [1, cache + T2, D] for rel_pos. With `cache`, keys and values are
  // appended to it (and it is updated to hold them all).
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                        const torch::Tensor& mask, const torch::Tensor& pos_emb = {}, KvCache* cache = nullptr);

  // Self-attention of several streams at once: x [1, rows, D] holds stream
  // i's lengths[i] rows after those of the streams before it, with its
  // positions pos_embs[i] and its cache. Equals forward(x_i, x_i, x_i, {},
  // pos_embs[i], caches[i]) stream by stream; on the CPU fast path the
  // position-wise projections run once over every stream's rows.
  torch::Tensor self_attention_streams(const torch::Tensor& x, const std::vector<int64_t>& lengths,
                                       const std::vector<torch::Tensor>& pos_embs, const std::vector<KvCache*>& caches);

  // memory [B, T, D] -> its keys and values (plain attention only).
  ProjectedMemory project_memory(const torch::Tensor& memory);
  // Attention of query [B, T1, D] over projected keys and values; mask as
  // forward's (bool [B or 1, T1 or 1, T]). Equals forward(query, memory,
  // memory, mask).
  torch::Tensor attend(const torch::Tensor& query, const ProjectedMemory& memory, const torch::Tensor& mask);

  const AttentionOptions& options() const { return options_; }

  PackedLinear linear_q{nullptr}, linear_k{nullptr}, linear_v{nullptr}, linear_out{nullptr};
  PackedLinear linear_pos{nullptr};  // rel_pos only
  torch::Tensor pos_bias_u, pos_bias_v;   // [H, d_k], rel_pos only

 private:
  torch::Tensor split_heads(const torch::Tensor& x) const;  // [B, T, D] -> [B, H, T, d_k]
  // softmax(q k^T (+ q p^T) / sqrt(d_k)) v through linear_out: q [B, T1, H,
  // d_k], k, v [B, H, T2, d_k], p undefined without rel_pos.
  torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& p, const torch::Tensor& mask);
  // Inference on the CPU (float32, no gradient, no attention dropout): the
  // fused kernel of attention_kernel.h computes softmax(scores) v into
  // [B, T1, D] where the ATen form took ~20 ops. q [B, T1, H, d_k]; k, v, p
  // [B (p: or 1), H, T2, d_k] with contiguous rows; p undefined without rel_pos.
  bool fused_core_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& p, const torch::Tensor& mask) const;
  torch::Tensor fused_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& p, const torch::Tensor& mask, double scale) const;
  // Self-attention inference on a few CPU float32 rows (streaming chunks,
  // batch-1 decoding) with weight panels: q, k and v come from one buffer
  // the panel kernel writes, keys, values and positions go into the cache
  // row by row, and the fused kernel reads q, k and v where they lie: about
  // 10 LibTorch ops per call instead of about 40.
  bool self_attention_cpu_applies(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                  const torch::Tensor& mask, const torch::Tensor& pos_emb) const;
  torch::Tensor self_attention_cpu(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& pos_emb,
                                   KvCache* cache);
  // Its parts. q, k, v of x's `rows` rows side by side in qkv [rows, 3D].
  void project_qkv_cpu(const float* x, int64_t rows, float* qkv);
  // The kernel's problem for batch x t rows whose q, k, v lie in qkv
  // ([B, T, 3D]) and whose output goes to out ([B, T, D]): keys, values
  // and positions appended to the cache where there is one; `held` keeps
  // the tensors the kernel reads alive.
  detail::AttentionProblem self_attention_problem(float* qkv, int64_t batch, int64_t t, const torch::Tensor& mask,
                                                  const torch::Tensor& pos_emb, KvCache* cache, float* out,
                                                  std::vector<torch::Tensor>& held);
  AttentionOptions options_;
  int64_t d_k_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(MultiHeadedAttention);

// Sinusoidal position table [1, length, d] starting at position `offset`,
// computed as WeNet's PositionalEncoding does (fp32), with no length limit,
// on `device` (one table per device and width).
torch::Tensor sinusoid_positions(int64_t offset, int64_t length, int64_t d_model,
                                 const torch::Device& device = torch::kCPU);

}  // namespace moekit
