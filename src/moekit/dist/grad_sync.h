#pragma once
// Data parallelism's two collectives on parameters: the same starting
// weights everywhere, and gradients averaged over the replicas.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
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

// all_reduce_gradients overlapped with the backward pass, as PyTorch's DDP
// reducer does it: each parameter's gradient accumulator gets a hook; in an
// armed backward pass a bucket's all-reduce starts as soon as the last of
// its gradients is final, while the pass goes on computing the others.
// Buckets hold parameters in reverse order (about the order backward
// produces them; the first bucket `first_bucket_bytes`, so communication
// starts early, the rest about `bucket_bytes`) and start in bucket order on
// every member, whatever order the gradients arrive in, so the members'
// collectives always pair up. finish() waits for them, reduces the buckets
// not started (a parameter without a gradient in the pass takes part as
// zeros, as in all_reduce_gradients) and divides: the same values
// all_reduce_gradients gives. Each parameter's .grad becomes a view of its
// bucket the first time the bucket starts (DDP's gradient_as_bucket_view):
// while the optimizer zeroes gradients in place, backward accumulates
// straight into the buckets, with no copy in or out and no second copy of
// the gradients in memory; a gradient set to none or replaced is copied in
// once and becomes a view again.
class GradientReducer {
 public:
  GradientReducer(std::shared_ptr<const Group> group, std::vector<torch::Tensor> params,
                  int64_t bucket_bytes = 25 << 20, int64_t first_bucket_bytes = 1 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward pass is the last before an optimizer step (with
  // gradient accumulation, the earlier passes only accumulate).
  void arm();
  // Every gradient summed over the group and divided by `divisor`.
  void finish(double divisor);
  // Buckets whose all-reduce started during the backward pass of the last
  // finished step (0 when it was not armed), and all.
  int64_t started_in_backward() const { return started_in_backward_; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    torch::Tensor flat;          // the gradients, flattened (the all-reduce's buffer, .grad's storage)
    size_t waiting = 0;          // gradients not yet final in the armed pass
    std::unique_ptr<PendingCollective> pending;
  };
  void gradient_ready(size_t param);
  void reset();  // no bucket started, every gradient awaited
  void start(Bucket& bucket);

  std::shared_ptr<const Group> group_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;  // per parameter
  std::vector<Bucket> buckets_;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
  std::vector<bool> ready_;
  size_t next_ = 0;  // the first bucket not started
  bool armed_ = false;
  int64_t started_in_backward_ = 0;
};

// `tensors` (buffers such as BatchNorm's running statistics) averaged over
// `group` in place, bucketed as the gradients are.
void all_reduce_mean(const Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);

}  // namespace moekit::dist
