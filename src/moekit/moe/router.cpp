#include "moekit/moe/router.h"

#include "moekit/core/check.h"

namespace moekit {

GateDecision gate_top_k(const torch::Tensor& logits, int64_t top_k, Gating gating, bool renormalize) {
  MOEKIT_CHECK_ARG(logits.dim() == 2 && logits.scalar_type() == torch::kFloat32,
                   "router logits must be fp32 [tokens, experts], got ", logits.scalar_type(), " ",
                   logits.sizes());
  GateDecision d;
  if (gating == Gating::TopKSoftmax) {
    auto [values, index] = logits.topk(top_k, /*dim=*/1);  // [N, k]
    d.expert_index = index;
    d.expert_weight = values.softmax(1);
  } else {
    auto [values, index] = logits.softmax(1).topk(top_k, /*dim=*/1);  // [N, k]
    d.expert_index = index;
    d.expert_weight = renormalize ? values / values.sum(1, /*keepdim=*/true) : values;
  }
  return d;
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_index) {
  const int64_t num_tokens = logits.size(0), num_experts = logits.size(1);
  if (num_tokens == 0) return torch::zeros({}, logits.options());
  const torch::Tensor assignments =
      torch::zeros({num_experts}, logits.options())
          .index_add_(0, expert_index.reshape(-1),
                      torch::ones({expert_index.numel()}, logits.options()));  // [E]
  const torch::Tensor fraction_routed = assignments / static_cast<double>(expert_index.numel());
  const torch::Tensor mean_prob = logits.softmax(1).mean(0);  // [E]
  return (fraction_routed * mean_prob).sum() * static_cast<double>(num_experts);
}

torch::Tensor router_z_loss(const torch::Tensor& logits) {
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  return logits.logsumexp(1).square().mean();
}

}  // namespace moekit
