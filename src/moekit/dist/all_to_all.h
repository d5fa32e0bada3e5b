#pragma once
// The differentiable token exchange of expert parallelism: rows sent to the
// members of a group, and in the backward pass their gradients sent back by
// the reverse exchange (send and receive counts swapped).
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "moekit/dist/process_group.h"

namespace moekit::dist {

// Group::all_to_all with autograd: rows [sum(send_counts), ...] ->
// [sum(recv_counts), ...]; gradients flow back to `input`.
torch::Tensor all_to_all_rows(const Group& group, const torch::Tensor& input, const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& recv_counts);

}  // namespace moekit::dist
