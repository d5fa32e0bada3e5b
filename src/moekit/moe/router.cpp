#include "moekit/moe/router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "moekit/core/check.h"

namespace moekit {

void gate_row(const float* logits, int64_t num_experts, int64_t k, Gating gating, bool renormalize,
              int64_t* expert, float* weight, std::vector<float>& value, std::vector<char>& taken) {
  value.resize(static_cast<size_t>(num_experts));
  taken.assign(static_cast<size_t>(num_experts), 0);
  if (gating == Gating::TopKSoftmax) {
    std::copy(logits, logits + num_experts, value.begin());
  } else {  // softmax over all experts first
    const float max = *std::max_element(logits, logits + num_experts);
    float sum = 0.0f;
    for (int64_t e = 0; e < num_experts; ++e) sum += value[e] = std::exp(logits[e] - max);
    for (float& v : value) v /= sum;
  }
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < num_experts; ++e) {
      // NaN never wins over a number (topk puts NaN first; a NaN logit is a
      // broken model either way).
      if (!taken[e] && (best < 0 || value[e] > value[best])) best = e;
    }
    taken[best] = 1;
    expert[j] = best;
    weight[j] = value[best];
  }
  if (gating == Gating::TopKSoftmax) {  // softmax over the k chosen logits
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += weight[j] = std::exp(weight[j] - value[expert[0]]);
    for (int64_t j = 0; j < k; ++j) weight[j] /= sum;
  } else if (renormalize) {
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += weight[j];
    for (int64_t j = 0; j < k; ++j) weight[j] /= sum;
  }
}

GateDecision gate_top_k(const torch::Tensor& logits, int64_t top_k, Gating gating, bool renormalize) {
  MOEKIT_CHECK_ARG(logits.dim() == 2 && logits.scalar_type() == torch::kFloat32,
                   "router logits must be fp32 [tokens, experts], got ", logits.scalar_type(), " ",
                   logits.sizes());
  MOEKIT_CHECK_ARG(top_k >= 1 && top_k <= logits.size(1), "router: top_k ", top_k, " of ", logits.size(1),
                   " experts");
  GateDecision d;
  if (logits.device().is_cpu() && !(torch::GradMode::is_enabled() && logits.requires_grad())) {
    // No gradient to carry: the scalar rule row by row.
    const torch::Tensor l = logits.contiguous();
    const int64_t n = l.size(0), e = l.size(1);
    d.expert_index = torch::empty({n, top_k}, torch::kLong);
    d.expert_weight = torch::empty({n, top_k}, torch::kFloat);
    const float* lp = l.data_ptr<float>();
    int64_t* ip = d.expert_index.data_ptr<int64_t>();
    float* wp = d.expert_weight.data_ptr<float>();
    std::vector<float> value;
    std::vector<char> taken;
    for (int64_t t = 0; t < n; ++t) {
      gate_row(lp + t * e, e, top_k, gating, renormalize, ip + t * top_k, wp + t * top_k, value, taken);
    }
    return d;
  }
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

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_index,
                                  const torch::Tensor& valid) {
  const int64_t num_tokens = logits.size(0), num_experts = logits.size(1);
  if (num_tokens == 0) return torch::zeros({}, logits.options());
  if (valid.defined()) {
    const torch::Tensor weight = valid.to(logits.scalar_type());                          // [N]
    const torch::Tensor count = weight.sum().clamp_min(1.0);                              // routed tokens
    const torch::Tensor assignments =
        torch::zeros({num_experts}, logits.options())
            .index_add_(0, expert_index.reshape(-1),
                        weight.unsqueeze(1).expand(expert_index.sizes()).reshape(-1));  // [E]
    const torch::Tensor fraction_routed = assignments / (count * static_cast<double>(expert_index.size(1)));
    const torch::Tensor mean_prob = (logits.softmax(1) * weight.unsqueeze(1)).sum(0) / count;  // [E]
    return (fraction_routed * mean_prob).sum() * static_cast<double>(num_experts);
  }
  const torch::Tensor assignments =
      torch::zeros({num_experts}, logits.options())
          .index_add_(0, expert_index.reshape(-1),
                      torch::ones({expert_index.numel()}, logits.options()));  // [E]
  const torch::Tensor fraction_routed = assignments / static_cast<double>(expert_index.numel());
  const torch::Tensor mean_prob = logits.softmax(1).mean(0);  // [E]
  return (fraction_routed * mean_prob).sum() * static_cast<double>(num_experts);
}

torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& valid) {
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  if (valid.defined()) {
    const torch::Tensor weight = valid.to(logits.scalar_type());
    return (logits.logsumexp(1).square() * weight).sum() / weight.sum().clamp_min(1.0);
  }
  return logits.logsumexp(1).square().mean();
}

}  // namespace moekit
