#include "moekit/dist/grad_sync.h"

#include "moekit/core/check.h"

namespace moekit::dist {

namespace {

// Consecutive runs of same-dtype tensors of at most `bucket_bytes` together
// (a larger tensor alone); `visit` gets each run.
template <class Visit>
void for_each_bucket(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes, Visit visit) {
  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  for (const torch::Tensor& t : tensors) {
    const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    if (!bucket.empty() && (bytes + size > bucket_bytes || bucket.front().scalar_type() != t.scalar_type())) {
      visit(bucket);
      bucket.clear();
      bytes = 0;
    }
    bucket.push_back(t);
    bytes += size;
  }
  if (!bucket.empty()) visit(bucket);
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  flat.reserve(tensors.size());
  for (const torch::Tensor& t : tensors) flat.push_back(t.detach().reshape(-1));
  return torch::cat(flat);
}

void unflatten_into(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  int64_t offset = 0;
  for (const torch::Tensor& t : tensors) {
    t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

// Each tensor summed over `group` and divided by `divisor`, in place, in buckets.
void all_reduce_divided(const Group& group, const std::vector<torch::Tensor>& tensors, double divisor,
                        int64_t bucket_bytes) {
  for_each_bucket(tensors, bucket_bytes, [&](const std::vector<torch::Tensor>& bucket) {
    std::vector<torch::Tensor> flat{flatten(bucket)};
    group.all_reduce_sum(flat);
    flat[0].div_(divisor);
    unflatten_into(flat[0], bucket);
  });
}

}  // namespace

void broadcast_parameters(const Group& group, const std::vector<torch::Tensor>& params, int root) {
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  for_each_bucket(params, 25 << 20, [&](const std::vector<torch::Tensor>& bucket) {
    std::vector<torch::Tensor> flat{flatten(bucket)};
    group.broadcast(flat, root);
    unflatten_into(flat[0], bucket);
  });
}

void all_reduce_gradients(const Group& group, const std::vector<torch::Tensor>& params, double divisor,
                          int64_t bucket_bytes) {
  MOEKIT_CHECK_ARG(divisor > 0, "dist: gradients divided by ", divisor);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  grads.reserve(params.size());
  for (const torch::Tensor& p : params) {
    torch::Tensor& g = const_cast<torch::Tensor&>(p).mutable_grad();
    if (!g.defined()) g = torch::zeros_like(p);
    grads.push_back(g);
  }
  if (group.size() == 1) {
    if (divisor != 1.0)
      for (torch::Tensor& g : grads) g.div_(divisor);
    return;
  }
  all_reduce_divided(group, grads, divisor, bucket_bytes);
}

void all_reduce_mean(const Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  all_reduce_divided(group, tensors, static_cast<double>(group.size()), bucket_bytes);
}

}  // namespace moekit::dist
