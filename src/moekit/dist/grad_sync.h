#pragma once
// Data parallelism's two collectives on parameters: the same starting
// weights everywhere, and gradients averaged over the replicas.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "moekit/dist/process_group.h"

namespace moekit::dist {

// Every member's `params` take `root`'s values (a fresh run's initial
// weights), in buckets of flattened tensors.
void broadcast_parameters(const Group& group, const std::vector<torch::Tensor>& params, int root = 0);

// Each parameter's gradient summed over `group` and divided by `divisor`
// (the number of replicas whose losses the step averages), in place. Small
// gradients travel together, flattened into buckets of about `bucket_bytes`
// (DDP's 25 MB default) per dtype, so a step makes a few large all-reduces
// rather than one per tensor. A parameter without a gradient this step (an
// expert no token reached) takes part as zeros, so every member reduces the
// same buckets.
void all_reduce_gradients(const Group& group, const std::vector<torch::Tensor>& params, double divisor,
                          int64_t bucket_bytes = 25 << 20);

// `tensors` (buffers such as BatchNorm's running statistics) averaged over
// `group` in place, bucketed as the gradients are.
void all_reduce_mean(const Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);

}  // namespace moekit::dist
