#pragma once
// Gating (logits -> top-k experts and weights) and router losses. Pure
// functions on fp32 tensors; the learned parts live in MoELayer.
#include <torch/torch.h>

#include <vector>

#include "moekit/moe/options.h"

namespace moekit {

struct GateDecision {
  torch::Tensor expert_index;   // [N, k] int64, experts in descending logit order
  torch::Tensor expert_weight;  // [N, k] fp32 gate weights
};

// logits: [N, E] fp32. TopKSoftmax: softmax over the k largest logits.
// SoftmaxTopK: the k largest entries of softmax over all E, divided by their
// sum when `renormalize`. Experts come in descending order, the lower index
// first among equal values. On the CPU with no gradient to carry, gate_row
// row by row; otherwise ATen's topk and softmax (differentiable).
GateDecision gate_top_k(const torch::Tensor& logits, int64_t top_k, Gating gating, bool renormalize);

// The same rule for one token: its k experts and gate weights from its E
// fp32 logits (expert [k], weight [k]). value, taken: scratch of E entries,
// reused across calls.
void gate_row(const float* logits, int64_t num_experts, int64_t k, Gating gating, bool renormalize, int64_t* expert,
              float* weight, std::vector<float>& value, std::vector<char>& taken);

// Switch Transformer load-balancing loss generalised to top-k (as Megatron-LM):
//   E * sum_e f_e * P_e,  f_e = (assignments to e) / (N * k),  P_e = mean_n softmax(logits)_n,e
// 1.0 when routing is perfectly uniform. logits [N, E] fp32, expert_index [N, k].
// `valid` ([N] bool, optional): only those tokens count, as if the others
// were not in `logits` at all (with no sync: N stays the tensors' size).
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_index,
                                  const torch::Tensor& valid = {});

// ST-MoE router z-loss: mean_n (logsumexp_e logits_n,e)^2, over the `valid`
// tokens when given.
torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& valid = {});

}  // namespace moekit
