#include "moekit/moe/dispatch.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "moekit/core/check.h"

namespace moekit {

int64_t expert_capacity(int64_t num_tokens, int64_t top_k, int64_t num_experts, double capacity_factor) {
  if (capacity_factor <= 0.0) return 0;
  const double exact = capacity_factor * static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(exact - 1e-9)));
}

DispatchRows dispatch_rows_cpu(const int64_t* choice, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                               int64_t capacity) {
  DispatchRows d;
  d.tokens_per_expert.assign(static_cast<size_t>(num_experts), 0);
  for (int64_t i = 0; i < num_tokens * top_k; ++i) {
    const int64_t e = choice[i];
    MOEKIT_CHECK_ARG(e >= 0 && e < num_experts, "expert index ", e, " outside [0, ", num_experts, ")");
    ++d.tokens_per_expert[e];
  }
  if (capacity > 0) {
    for (int64_t& n : d.tokens_per_expert) n = std::min(n, capacity);
  }
  std::vector<int64_t> fill(static_cast<size_t>(num_experts), 0), end(static_cast<size_t>(num_experts), 0);
  int64_t rows = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    fill[e] = rows;
    rows += d.tokens_per_expert[e];
    end[e] = rows;
  }
  d.row_of_slot.assign(static_cast<size_t>(num_tokens * top_k), -1);
  for (int64_t j = 0; j < top_k; ++j) {  // first choices before second choices
    for (int64_t n = 0; n < num_tokens; ++n) {
      const int64_t e = choice[n * top_k + j];
      if (fill[e] == end[e]) {
        ++d.dropped_assignments;
        continue;
      }
      d.row_of_slot[n * top_k + j] = fill[e]++;
    }
  }
  return d;
}

namespace {

// CPU: one counting-sort pass in plain loops. For decode-sized batches the
// ~10 ATen ops of the tensor version cost more than the experts' math.
DispatchPlan make_dispatch_plan_cpu(const torch::Tensor& expert_index, int64_t num_experts, int64_t capacity) {
  const torch::Tensor index = expert_index.contiguous();
  const int64_t num_tokens = index.size(0), top_k = index.size(1);
  DispatchRows d = dispatch_rows_cpu(index.data_ptr<int64_t>(), num_tokens, top_k, num_experts, capacity);
  DispatchPlan plan;
  plan.capacity = capacity;
  plan.dropped_assignments = d.dropped_assignments;
  plan.tokens_per_expert = std::move(d.tokens_per_expert);
  const int64_t rows = num_tokens * top_k - d.dropped_assignments;
  plan.token_of_row = torch::empty({rows}, index.options());
  plan.slot_of_row = torch::empty({rows}, index.options());
  int64_t* token_of_row = plan.token_of_row.data_ptr<int64_t>();
  int64_t* slot_of_row = plan.slot_of_row.data_ptr<int64_t>();
  for (int64_t n = 0; n < num_tokens; ++n) {
    bool kept = false;
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = n * top_k + j, row = d.row_of_slot[slot];
      if (row < 0) continue;
      token_of_row[row] = n;
      slot_of_row[row] = slot;
      kept = true;
    }
    plan.dropped_tokens += capacity > 0 && !kept;
  }
  return plan;
}

}  // namespace

DispatchPlan make_dispatch_plan(const torch::Tensor& expert_index, int64_t num_experts, double capacity_factor) {
  MOEKIT_CHECK_ARG(expert_index.dim() == 2 && expert_index.scalar_type() == torch::kInt64,
                   "expert_index must be int64 [tokens, k], got ", expert_index.scalar_type(), " ",
                   expert_index.sizes());
  const int64_t capacity = expert_capacity(expert_index.size(0), expert_index.size(1), num_experts, capacity_factor);
  if (expert_index.device().is_cpu()) return make_dispatch_plan_cpu(expert_index, num_experts, capacity);
  return detail::make_dispatch_plan_tensor_ops(expert_index, num_experts, capacity);
}

namespace detail {

ExpertRanks rank_within_expert(const torch::Tensor& by_priority, int64_t buckets) {
  ExpertRanks r;
  std::tie(r.sorted_expert, r.order) = by_priority.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  // Not torch::bincount: on CUDA it reads the input's min and max on the
  // host to size its output, a wait for the device the padded dispatch avoids.
  r.counts = torch::zeros({buckets}, by_priority.options()).scatter_add_(0, by_priority, torch::ones_like(by_priority));
  const torch::Tensor starts = r.counts.cumsum(0) - r.counts;  // each expert's first sorted place
  r.rank = torch::arange(by_priority.numel(), r.order.options()) - starts.index_select(0, r.sorted_expert);
  return r;
}

// Device-agnostic version: ATen ops only (sort, bincount, ...), for GPUs.
DispatchPlan make_dispatch_plan_tensor_ops(const torch::Tensor& expert_index, int64_t num_experts, int64_t capacity) {
  const int64_t num_tokens = expert_index.size(0), top_k = expert_index.size(1);
  DispatchPlan plan;
  plan.capacity = capacity;
  if (num_tokens == 0) {
    plan.token_of_row = torch::empty({0}, expert_index.options());
    plan.slot_of_row = torch::empty({0}, expert_index.options());
    plan.tokens_per_expert.assign(num_experts, 0);
    return plan;
  }

  // Slot-major order: assignment s = j * N + n is token n's j-th choice.
  const torch::Tensor by_priority = expert_index.t().reshape(-1);  // [k*N]
  ExpertRanks ranked = rank_within_expert(by_priority, num_experts);
  torch::Tensor order = ranked.order, counts = ranked.counts;     // [k*N], [E]
  if (plan.capacity > 0) {
    const torch::Tensor keep = ranked.rank < plan.capacity;
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

}  // namespace detail
}  // namespace moekit
