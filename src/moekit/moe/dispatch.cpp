#include "moekit/moe/dispatch.h"

#include <cmath>

#include "moekit/core/check.h"

namespace moekit {

int64_t expert_capacity(int64_t num_tokens, int64_t top_k, int64_t num_experts, double capacity_factor) {
  if (capacity_factor <= 0.0) return 0;
  const double exact = capacity_factor * static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(exact - 1e-9)));
}

DispatchPlan make_dispatch_plan(const torch::Tensor& expert_index, int64_t num_experts, double capacity_factor) {
  MOEKIT_CHECK_ARG(expert_index.dim() == 2 && expert_index.scalar_type() == torch::kInt64,
                   "expert_index must be int64 [tokens, k], got ", expert_index.scalar_type(), " ",
                   expert_index.sizes());
  const int64_t num_tokens = expert_index.size(0), top_k = expert_index.size(1);
  DispatchPlan plan;
  plan.capacity = expert_capacity(num_tokens, top_k, num_experts, capacity_factor);
  if (num_tokens == 0) {
    plan.token_of_row = torch::empty({0}, expert_index.options());
    plan.slot_of_row = torch::empty({0}, expert_index.options());
    plan.tokens_per_expert.assign(num_experts, 0);
    return plan;
  }

  // Slot-major order: assignment s = j * N + n is token n's j-th choice.
  const torch::Tensor by_priority = expert_index.t().reshape(-1);                      // [k*N]
  auto [sorted_expert, order] = by_priority.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);  // [k*N]
  torch::Tensor counts = torch::bincount(by_priority, /*weights=*/{}, num_experts);   // [E]
  if (plan.capacity > 0) {
    const torch::Tensor starts = counts.cumsum(0) - counts;                            // [E]
    const torch::Tensor rank = torch::arange(by_priority.numel(), order.options()) -
                               starts.index_select(0, sorted_expert);                  // [k*N]
    const torch::Tensor keep = rank < plan.capacity;
    order = order.masked_select(keep);
    counts = counts.clamp_max(plan.capacity);
    plan.dropped_assignments = by_priority.numel() - order.numel();
    if (plan.dropped_assignments > 0) {
      const torch::Tensor kept_per_token =
          torch::zeros({num_tokens}, order.options()).index_add_(0, order.remainder(num_tokens),
                                                                 torch::ones_like(order));  // [N]
      plan.dropped_tokens = (kept_per_token == 0).sum().item<int64_t>();
    }
  }
  plan.token_of_row = order.remainder(num_tokens);                                    // [M]
  plan.slot_of_row = plan.token_of_row * top_k + order.div(num_tokens, "floor");      // [M]
  const torch::Tensor counts_cpu = counts.to(torch::kCPU);
  plan.tokens_per_expert.assign(counts_cpu.data_ptr<int64_t>(), counts_cpu.data_ptr<int64_t>() + num_experts);
  return plan;
}

}  // namespace moekit
