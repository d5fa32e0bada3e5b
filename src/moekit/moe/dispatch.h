#pragma once
// Sort-based token dispatch: which rows each expert processes, in which order.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace moekit {

struct DispatchPlan {
  torch::Tensor token_of_row;              // [M] int64: routed-token index of each grouped row
  torch::Tensor slot_of_row;               // [M] int64: index into the flattened [N, k] gate weights
  std::vector<int64_t> tokens_per_expert;  // [E] rows per expert (after capacity), sums to M
  int64_t capacity = 0;                    // rows allowed per expert; 0 = dropless
  int64_t dropped_assignments = 0;         // (token, expert) pairs over capacity
  int64_t dropped_tokens = 0;              // tokens that lost all their k assignments
};

// Capacity GShard/Megatron style: ceil(capacity_factor * N * k / E); 0 when dropless.
int64_t expert_capacity(int64_t num_tokens, int64_t top_k, int64_t num_experts, double capacity_factor);

// expert_index: [N, k] int64. Rows are grouped by expert; inside an expert,
// all first choices come before second choices, each in token order. With a
// capacity, the assignments past it are dropped in that priority order (GShard).
DispatchPlan make_dispatch_plan(const torch::Tensor& expert_index, int64_t num_experts, double capacity_factor);

// The CPU core of make_dispatch_plan, on raw expert choices (choice: [N, k]
// row-major): row_of_slot[n * k + j] is the grouped row of token n's j-th
// choice, -1 when it is dropped over `capacity` (0 = dropless). Checks that
// every choice names an expert.
struct DispatchRows {
  std::vector<int64_t> row_of_slot;        // [N * k]
  std::vector<int64_t> tokens_per_expert;  // [E]
  int64_t dropped_assignments = 0;
};
DispatchRows dispatch_rows_cpu(const int64_t* choice, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                               int64_t capacity);

namespace detail {
// Device-side ranking of assignments, no host sync: by_priority [A] int64
// holds each assignment's expert (in [0, buckets)) in priority order.
// order: a stable sort of them by expert; sorted_expert: their experts in
// that order; counts [buckets]: assignments per expert; rank: each sorted
// assignment's place among its expert's (0 = its highest priority).
struct ExpertRanks {
  torch::Tensor order, sorted_expert, counts, rank;
};
ExpertRanks rank_within_expert(const torch::Tensor& by_priority, int64_t buckets);

// The ATen-ops implementation (used for non-CPU tensors); same result as the
// CPU loop. Exposed so tests can compare the two on CPU.
DispatchPlan make_dispatch_plan_tensor_ops(const torch::Tensor& expert_index, int64_t num_experts, int64_t capacity);
}  // namespace detail

}  // namespace moekit
